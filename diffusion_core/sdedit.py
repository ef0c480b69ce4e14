"""Editing a picture with a trained denoiser: SDEdit's partial noising and RePaint's inpainting.

SDEdit (Meng et al. 2022, "SDEdit: Guided Image Synthesis and Editing with Stochastic Differential
Equations", sec. 3, Algorithm 1): noise the picture x_0 only part of the way, to t_0 = s·(T-1) for a
strength s in [0, 1], with the forward process q(x_t | x_0) (DDPM eq. 4),

    x_{t_0} = √ᾱ_{t_0} · x_0 + √(1 - ᾱ_{t_0}) · ε,   ε ~ N(0, I),

then run the reverse process from t_0 down to clean data. Small s keeps the strokes (faithful), large
s keeps only the colours and lets the model's prior decide the shapes (realistic): the
realism-faithfulness trade-off of their fig. 3. s = 1 is plain sampling from pure noise.

Inpainting (Lugmayr et al. 2022, "RePaint: Inpainting using Denoising Diffusion Probabilistic
Models", eq. 8): with a mask m (1 where the model may repaint), after each step to timestep t_prev the
kept pixels are replaced by the picture noised to that level, with fresh noise,

    x_{t_prev} = m ⊙ x_{t_prev} + (1 - m) ⊙ (√ᾱ_{t_prev} x_0 + √(1 - ᾱ_{t_prev}) ε'),

and the last step, onto clean data, lands on x_0 itself in the kept pixels. RePaint's resampling
jumps (going back up j steps and down again, their sec. 4.2) are not used: see docs/editing.md.
"""
from __future__ import annotations

import math

import torch

from .schedule import NoiseSchedule


def start_timestep(strength: float, num_timesteps: int) -> int:
    """t_0 = round(s·(T-1)): the timestep an edit of strength s starts from (0: no noise, T-1: pure noise)."""
    return int(round(float(strength) * (num_timesteps - 1)))


def max_steps(strength: float, num_timesteps: int) -> int:
    """The most denoising steps an edit of strength s can make: the t_0 + 1 timesteps t_0, ..., 0 of its
    shortened chain (0 at a strength whose chain is empty: the picture is returned as it is)."""
    t_start = start_timestep(strength, num_timesteps)
    return t_start + 1 if t_start > 0 else 0


def check_strength(strength) -> float:
    """s as a float in [0, 1], or a ValueError that says so."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not math.isfinite(strength) \
            or not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be a number in 0..1 (0 keeps the picture, 1 ignores it), got {strength!r}")
    return float(strength)


def edit_timesteps(schedule: NoiseSchedule, strength: float, steps: int) -> list[int]:
    """The timesteps an edit visits: ``steps`` of them on the chain t_0, ..., 0, trailing spacing, first t_0
    (``NoiseSchedule.respace(steps, start=t_0)``; at s = 1 exactly the full chain's). A ValueError names the
    most steps this strength allows when ``steps`` exceeds it."""
    T = schedule.num_timesteps
    t_start = start_timestep(strength, T)
    if isinstance(steps, int) and not isinstance(steps, bool) and steps > t_start + 1:
        raise ValueError(f"strength {strength:g} starts at t = {t_start} of {T}, a chain of {t_start + 1} timesteps: "
                         f"steps must be at most {t_start + 1}, got {steps}")
    return schedule.respace(steps, start=t_start).tolist()


def start_point(schedule: NoiseSchedule, x0: torch.Tensor, noise: torch.Tensor, t_start: int) -> torch.Tensor:
    """x_{t_0} = √ᾱ_{t_0} x_0 + √(1-ᾱ_{t_0}) ε (SDEdit, Algorithm 1). At t_0 = T-1 it is ε itself, the pure
    noise plain sampling starts from (which drops the sliver √ᾱ_{T-1} of signal), so s = 1 is plain sampling."""
    if t_start == schedule.num_timesteps - 1:
        return noise
    abar = schedule.alphas_cumprod[t_start].item()
    return math.sqrt(abar) * x0 + math.sqrt(1.0 - abar) * noise


def keep_known(x: torch.Tensor, x0: torch.Tensor, mask: torch.Tensor, alpha_bar: float, noise) -> torch.Tensor:
    """RePaint eq. 8: x ← m ⊙ x + (1 - m) ⊙ (√ᾱ x_0 + √(1-ᾱ) ε'), ε' a fresh draw of ``noise()``; at ᾱ = 1
    (clean data) the kept pixels are x_0 exactly. ``mask`` broadcasts against x: 1 (True) = repaint."""
    known = x0 if alpha_bar >= 1.0 else math.sqrt(alpha_bar) * x0 + math.sqrt(1.0 - alpha_bar) * noise()
    if mask.dtype == torch.bool:
        return torch.where(mask, x, known)
    return mask * x + (1.0 - mask) * known


def check_edit(shape: tuple[int, ...], init: torch.Tensor | None, strength, mask: torch.Tensor | None) -> float:
    """A ValueError naming what is wrong with an edit's inputs (``samplers.sample``'s init, strength, mask)."""
    strength = check_strength(strength)
    if init is None:
        if mask is not None:
            raise ValueError("a mask needs the picture it applies to: give init as well")
        if strength != 1.0:
            raise ValueError(f"strength {strength:g} needs a picture to start from (init); without one it must be 1")
        return strength
    if not isinstance(init, torch.Tensor) or not init.is_floating_point() or tuple(init.shape) != tuple(shape):
        got = f"{init.dtype} {tuple(init.shape)}" if isinstance(init, torch.Tensor) else type(init).__name__
        raise ValueError(f"init must be a float tensor of shape {tuple(shape)} in [-1, 1], got {got}")
    if not torch.isfinite(init).all():
        raise ValueError("init must hold finite numbers")
    if mask is not None:
        expected = (shape[0], 1, *shape[2:])
        if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != expected:
            got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ValueError(f"mask must have shape {expected} (True or 1 where the model may repaint), got {got}")
        if mask.dtype != torch.bool and (not mask.is_floating_point() or not ((mask >= 0) & (mask <= 1)).all()):
            raise ValueError(f"mask must be bool, or float in 0..1, got {mask.dtype}")
    return strength
