"""Samplers: turn noise into data by running a denoiser backwards through a NoiseSchedule.

A denoiser is any callable ``model(x_t, t, context) -> prediction``: x_t (N,C,H,W), t (N,) long,
context (N,K) float or None. Each algorithm below is one pure function of (x_t, the model's x_0 and
ε estimates, ᾱ at this step and the next, a noise source); ``sample`` is the loop around them.

Sources: DDPM, Ho et al. 2020 (eq. 6, 7, 11); DDIM, Song et al. 2021 (eq. 12, 16);
DPM-Solver++(2M) and its stochastic twin SDE-DPM-Solver++(2M), Lu et al. 2022 ("DPM-Solver++",
Algorithm 2 and appendix); multistep consistency sampling, Song et al. 2023 ("Consistency
Models", Algorithm 1), the few-step sampler of a distilled student; classifier-free guidance,
Ho & Salimans 2022 (eq. 6); v-prediction, Salimans & Ho 2022 (sec. 4). Edits of a picture (SDEdit's
partial noising, RePaint's inpainting) are in sdedit.py; the loop below only calls them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from . import edm, sdedit
from .schedule import NoiseSchedule

SAMPLERS = ("ddpm", "ddim", "dpmpp_2m", "dpmpp_2m_sde", "consistency")
DEFAULT_SAMPLER = "dpmpp_2m_sde"  # best measured quality at 20 steps for the shipped model (docs/models.md)
PREDICTION_TYPES = ("epsilon", "v", "edm")
MAX_GUIDANCE = 50.0


@dataclass
class SamplerStep:
    """What a callback sees at each step: the step's index, its timestep t, the input x_t and the
    model's prediction of the clean image x0_pred (both float tensors in [-1, 1] space)."""
    index: int
    t: int
    x_t: torch.Tensor
    x0_pred: torch.Tensor


# ---------------------------------------------------------------------------------------------
# Per-image randomness: image i of a request with seed s draws from its own generator.
# ---------------------------------------------------------------------------------------------
class ImageNoise:
    """One torch.Generator per image, seeded from (seed, i), so image i's noise is the same whatever
    the batch size. Noise is drawn on the CPU in float32 and moved, so it is the same on any device."""

    def __init__(self, seed: int, num_images: int, image_shape: tuple[int, ...], device: torch.device):
        self.generators = [torch.Generator().manual_seed(image_seed(seed, i)) for i in range(num_images)]
        self.image_shape = tuple(image_shape)
        self.device = device

    def __call__(self) -> torch.Tensor:
        draws = [torch.randn(self.image_shape, generator=g) for g in self.generators]
        return torch.stack(draws).to(self.device)


def image_seed(seed: int, index: int) -> int:
    """A 63-bit seed for image ``index`` of a request seeded ``seed`` (numpy's SeedSequence mixing)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


# ---------------------------------------------------------------------------------------------
# From the network's output to the estimates every sampler uses.
# ---------------------------------------------------------------------------------------------
def predict_x0_and_eps(model_output, x_t, alpha_bar: float, prediction_type: str, clip_x0: bool):
    """x̂_0 and ε̂ from the network output. ε-prediction: x̂_0 = (x_t - √(1-ᾱ) ε̂)/√ᾱ (DDPM eq. 15);
    v-prediction: x̂_0 = √ᾱ x_t - √(1-ᾱ) v̂, ε̂ = √(1-ᾱ) x_t + √ᾱ v̂; EDM: x̂_0 = D = c_skip x + c_out F
    (edm.py; the denoiser scaled its input by c_in itself), ε̂ = (x_t - √ᾱ x̂_0)/√(1-ᾱ). With ``clip_x0``
    x̂_0 is clamped to the data range [-1, 1] and ε̂ recomputed from it, as DDPM's reference code does.
    ``alpha_bar`` is a number, or a tensor that broadcasts against x_t (one ᾱ per picture, as in distillation)."""
    a, s = alpha_bar ** 0.5, (1.0 - alpha_bar) ** 0.5
    if prediction_type == "epsilon":
        eps = model_output
        x0 = (x_t - s * eps) / a
    elif prediction_type == "edm":
        x0 = edm.denoised(model_output, x_t, alpha_bar)
        eps = (x_t - a * x0) / s
    else:
        x0 = a * x_t - s * model_output
        eps = s * x_t + a * model_output
    if clip_x0:
        x0 = x0.clamp(-1.0, 1.0)
        eps = (x_t - a * x0) / s
    return x0, eps


# ---------------------------------------------------------------------------------------------
# One step of each algorithm: x_t at ᾱ_t -> x_prev at ᾱ_prev (ᾱ_prev = 1 is clean data).
# ---------------------------------------------------------------------------------------------
def ddpm_step(x_t, x0, alpha_bar, alpha_bar_prev, noise):
    """Ancestral sampling from the posterior q(x_prev | x_t, x̂_0) (DDPM eq. 6-7; eq. 11 in ε form),
    on a respaced chain where β_t = 1 - ᾱ_t/ᾱ_prev:
    μ̃ = √ᾱ_prev β_t/(1-ᾱ_t) x̂_0 + √α_t (1-ᾱ_prev)/(1-ᾱ_t) x_t,  σ² = β̃_t = (1-ᾱ_prev)/(1-ᾱ_t) β_t."""
    beta_t = 1.0 - alpha_bar / alpha_bar_prev
    mean = (math.sqrt(alpha_bar_prev) * beta_t / (1 - alpha_bar)) * x0 \
        + (math.sqrt(1 - beta_t) * (1 - alpha_bar_prev) / (1 - alpha_bar)) * x_t
    variance = (1 - alpha_bar_prev) / (1 - alpha_bar) * beta_t
    return mean if variance == 0 else mean + math.sqrt(variance) * noise()


def ddim_step(x_t, x0, eps, alpha_bar, alpha_bar_prev, eta, noise):
    """DDIM eq. 12: x_prev = √ᾱ_prev x̂_0 + √(1-ᾱ_prev-σ²) ε̂ + σ z, with eq. 16's
    σ = η √((1-ᾱ_prev)/(1-ᾱ_t)) √(1-ᾱ_t/ᾱ_prev). η = 0 is deterministic, η = 1 is DDPM."""
    sigma = eta * math.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev))
    x_prev = math.sqrt(alpha_bar_prev) * x0 + math.sqrt(max(1 - alpha_bar_prev - sigma**2, 0.0)) * eps
    return x_prev if sigma == 0 else x_prev + sigma * noise()


def log_snr_step(alpha_bar, alpha_bar_prev):
    """h = λ_prev - λ_t with λ = log(α/σ) = ½ log(ᾱ/(1-ᾱ)), the step size of DPM-Solver."""
    return 0.5 * math.log(alpha_bar_prev / (1 - alpha_bar_prev)) - 0.5 * math.log(alpha_bar / (1 - alpha_bar))


def multistep_data(x0, x0_previous, h, h_previous):
    """DPM-Solver++(2M)'s data estimate D = (1 + 1/(2r)) x̂_0 - 1/(2r) x̂_0(previous step), r = h_previous/h:
    a linear extrapolation in λ to the middle of the step. First order (D = x̂_0) with no previous step."""
    if x0_previous is None:
        return x0
    r = h_previous / h
    return (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_previous


def dpmpp_2m_step(x_t, x0, x0_previous, alpha_bar, alpha_bar_prev, h_previous):
    """DPM-Solver++(2M), Lu et al. 2022, Algorithm 2, in data-prediction form with λ = log(α/σ):
    x_prev = (σ_prev/σ_t) x_t - α_prev (e^{-h} - 1) D,  h = λ_prev - λ_t, D from ``multistep_data``.
    The final step, onto clean data (σ_prev = 0, h = ∞), is first order and returns x̂_0 (the paper's
    "lower order final step"). Returns (x_prev, h) so the next step can form r."""
    if alpha_bar_prev >= 1.0:
        return x0, math.inf
    h = log_snr_step(alpha_bar, alpha_bar_prev)
    d = multistep_data(x0, x0_previous, h, h_previous)
    sigma_ratio = math.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar))
    return sigma_ratio * x_t - math.sqrt(alpha_bar_prev) * math.expm1(-h) * d, h


def dpmpp_2m_sde_step(x_t, x0, x0_previous, alpha_bar, alpha_bar_prev, h_previous, noise):
    """SDE-DPM-Solver++(2M) (Lu et al. 2022, appendix; the "DPM++ 2M SDE" of common tools): the same
    data estimate D integrated along the reverse SDE instead of the probability-flow ODE,
    x_prev = (σ_prev/σ_t) e^{-h} x_t + α_prev (1 - e^{-2h}) D + σ_prev √(1 - e^{-2h}) z.
    With D = x̂_0 this is exactly DDPM's posterior step; the fresh noise z corrects errors of earlier
    steps (Karras et al. 2022, sec. 4), which matters most for a small, imperfect model.
    Returns (x_prev, h) like ``dpmpp_2m_step``."""
    if alpha_bar_prev >= 1.0:
        return x0, math.inf
    h = log_snr_step(alpha_bar, alpha_bar_prev)
    d = multistep_data(x0, x0_previous, h, h_previous)
    sigma_ratio = math.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar))
    x_prev = (sigma_ratio * math.exp(-h)) * x_t - (math.sqrt(alpha_bar_prev) * math.expm1(-2 * h)) * d
    return x_prev + (math.sqrt(1 - alpha_bar_prev) * math.sqrt(-math.expm1(-2 * h))) * noise(), h


def consistency_step(x0, alpha_bar_prev, noise):
    """Multistep consistency sampling (Song et al. 2023, Algorithm 1; Luo et al. 2023, Algorithm 1):
    take the model's x̂_0 as the answer, then noise it afresh to the next level,
    x_prev = √ᾱ_prev x̂_0 + √(1-ᾱ_prev) z. Each step is a new guess from a less noisy start; it suits a
    consistency-distilled student, whose x̂_0 is already good from any noise level."""
    if alpha_bar_prev >= 1.0:
        return x0
    return math.sqrt(alpha_bar_prev) * x0 + math.sqrt(1 - alpha_bar_prev) * noise()


# ---------------------------------------------------------------------------------------------
# Classifier-free guidance: both branches in one batched call.
# ---------------------------------------------------------------------------------------------
def guided_denoiser(denoiser: Callable, context: torch.Tensor | None, guidance: float) -> Callable:
    """Returns f(x_t, t) = out_uncond + w (out_cond - out_uncond) (Ho & Salimans 2022, eq. 6, with
    w = 1 + their w). w = 1 calls only the conditional branch, w = 0 only the unconditional one (the
    all-zero context); otherwise both go through the network as one batch of 2N."""
    if context is None:
        return lambda x_t, t: denoiser(x_t, t, None)
    if guidance == 1.0:
        return lambda x_t, t: denoiser(x_t, t, context)
    null = torch.zeros_like(context)
    if guidance == 0.0:
        return lambda x_t, t: denoiser(x_t, t, null)
    both_contexts = torch.cat([context, null])

    def guided(x_t, t):
        out = denoiser(torch.cat([x_t, x_t]), torch.cat([t, t]), both_contexts)
        out_cond, out_uncond = out.chunk(2)
        return out_uncond + guidance * (out_cond - out_uncond)

    return guided


def in_guidance_interval(alpha_bar: float, interval: tuple[float, float] | None) -> bool:
    """Whether σ = √((1-ᾱ)/ᾱ), the noise level in EDM's units, lies in the interval (lo, hi]."""
    if interval is None:
        return True
    sigma = math.sqrt((1 - alpha_bar) / alpha_bar) if alpha_bar > 0 else math.inf
    return interval[0] < sigma <= interval[1]


def check_guidance_interval(interval) -> None:
    if interval is None:
        return
    try:
        lo, hi = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise ValueError(f"guidance_interval must be two noise levels (σ_lo, σ_hi), got {interval!r}") from None
    if not (0 <= lo < hi) or math.isnan(hi):
        raise ValueError(f"guidance_interval must satisfy 0 <= σ_lo < σ_hi, got {interval!r}")


# ---------------------------------------------------------------------------------------------
# The loop.
# ---------------------------------------------------------------------------------------------
def check_sampling_args(schedule, shape, sampler, steps, eta, guidance, context, prediction_type):
    """Raise ValueError naming the argument and its allowed range for anything a sampler can't use."""
    T = schedule.num_timesteps
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= T:
        raise ValueError(f"steps must be an integer in 1..{T}, got {steps!r}")
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    if not isinstance(eta, (int, float)) or not math.isfinite(eta) or not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be a number in 0..1, got {eta!r}")
    if not isinstance(guidance, (int, float)) or not math.isfinite(guidance) or not 0 <= guidance <= MAX_GUIDANCE:
        raise ValueError(f"guidance must be a finite number in 0..{MAX_GUIDANCE:g}, got {guidance!r}")
    if len(shape) != 4 or shape[0] < 1:
        raise ValueError(f"shape must be (N, C, H, W) with N >= 1, got {tuple(shape)!r}")
    if context is not None:
        if context.dim() != 2 or context.shape[0] != shape[0]:
            raise ValueError(f"context must have shape (N={shape[0]}, K), got {tuple(context.shape)}")
        if not torch.isfinite(context).all():
            raise ValueError("context must hold finite numbers")


@torch.no_grad()
def sample(
    denoiser: Callable,
    schedule: NoiseSchedule,
    shape: tuple[int, int, int, int],
    sampler: str = "ddim",
    steps: int = 25,
    eta: float = 0.0,
    guidance: float = 1.0,
    context: torch.Tensor | None = None,
    prediction_type: str = "epsilon",
    seed: int = 0,
    callback: Callable[[SamplerStep], None] | None = None,
    clip_x0: bool = False,
    device: torch.device | str | None = None,
    guidance_interval: tuple[float, float] | None = None,
    init: torch.Tensor | None = None,
    strength: float = 1.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Draw ``shape[0]`` samples in ``steps`` denoiser calls (per guidance branch).

    The chain starts from x ~ N(0, I) at t = T-1, visits ``schedule.respace(steps)`` and its last
    step lands on clean data. DDPM on fewer than T steps runs on the respaced chain (Improved DDPM,
    sec. 4). Returns x_0 as a float32 tensor (clamped to [-1, 1] only when ``clip_x0``).

    ``guidance_interval=(σ_lo, σ_hi)`` applies guidance only at steps whose noise level
    σ_t = √((1-ᾱ_t)/ᾱ_t) lies in (σ_lo, σ_hi], plain conditional sampling (one branch) elsewhere
    (Kynkäänniemi et al. 2024, "Applying guidance in a limited interval improves sample and
    distribution quality in diffusion models", sec. 3).

    Editing a picture ``init`` (N,C,H,W) in [-1, 1] (sdedit.py): ``strength`` s starts the chain at
    t_0 = round(s·(T-1)) from q(x_{t_0} | x_0 = init), built from the same first noise draw plain sampling
    starts from, and makes ``steps`` steps on t_0, ..., 0 (SDEdit); s = 1 is plain sampling exactly, s = 0
    returns init without calling the denoiser. ``mask`` (N,1,H,W), True or 1 where the model may repaint:
    after every step the other pixels are init noised to the next step's level with fresh noise, and init
    itself after the last (RePaint's replacement)."""
    check_sampling_args(schedule, shape, sampler, steps, eta, guidance, context, prediction_type)
    check_guidance_interval(guidance_interval)
    strength = sdedit.check_edit(shape, init, strength, mask)
    device = torch.device(device) if device is not None else (context.device if context is not None else torch.device("cpu"))
    num_images = shape[0]
    noise = ImageNoise(seed, num_images, shape[1:], device)
    context = None if context is None else context.to(device)
    guided, conditional = guided_denoiser(denoiser, context, float(guidance)), guided_denoiser(denoiser, context, 1.0)

    t_start = sdedit.start_timestep(strength, schedule.num_timesteps)
    if init is not None:
        init = init.to(device=device, dtype=torch.float32)
        mask = None if mask is None else mask.to(device)
        if t_start == 0:  # an empty chain: nothing to denoise
            return init.clamp(-1.0, 1.0) if clip_x0 else init.clone()
    timesteps = sdedit.edit_timesteps(schedule, strength, int(steps))
    alphas_cumprod = schedule.alphas_cumprod.tolist()
    x = noise() if init is None else sdedit.start_point(schedule, init, noise(), t_start)
    x0_previous, h_previous = None, None
    for index, t in enumerate(timesteps):
        alpha_bar = alphas_cumprod[t]
        alpha_bar_prev = alphas_cumprod[timesteps[index + 1]] if index + 1 < len(timesteps) else 1.0
        t_batch = torch.full((num_images,), t, dtype=torch.long, device=device)
        model = guided if in_guidance_interval(alpha_bar, guidance_interval) else conditional
        out = model(x, t_batch).float()
        x0, eps = predict_x0_and_eps(out, x, alpha_bar, prediction_type, clip_x0)
        if callback is not None:
            callback(SamplerStep(index=index, t=t, x_t=x, x0_pred=x0))
        if sampler == "ddpm":
            x = ddpm_step(x, x0, alpha_bar, alpha_bar_prev, noise)
        elif sampler == "ddim":
            x = ddim_step(x, x0, eps, alpha_bar, alpha_bar_prev, eta, noise)
        elif sampler == "dpmpp_2m":
            x, h_previous = dpmpp_2m_step(x, x0, x0_previous, alpha_bar, alpha_bar_prev, h_previous)
            x0_previous = x0
        elif sampler == "consistency":
            x = consistency_step(x0, alpha_bar_prev, noise)
        else:
            x, h_previous = dpmpp_2m_sde_step(x, x0, x0_previous, alpha_bar, alpha_bar_prev, h_previous, noise)
            x0_previous = x0
        if mask is not None:
            x = sdedit.keep_known(x, init, mask, alpha_bar_prev, noise)
    return x.clamp(-1.0, 1.0) if clip_x0 else x
