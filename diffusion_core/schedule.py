"""The forward (noising) process q(x_t | x_0) and its noise schedules.

Conventions: integer timesteps t in 0..T-1, t = 0 the least noisy; ``alphas_cumprod[t]`` is ᾱ_t.
Sources: Ho et al. 2020, "Denoising Diffusion Probabilistic Models" (DDPM), eq. 4 and the linear
schedule of section 4; Nichol & Dhariwal 2021, "Improved DDPM", eq. 17 (cosine schedule); Lin et al.
2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed", table 2 (trailing spacing).
"""
from __future__ import annotations

import math

import torch

SCHEDULE_KINDS = ("linear", "cosine")


def linear_betas(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """DDPM's linear β schedule (1e-4 .. 0.02 at T = 1000), rescaled so other T keep the same ᾱ curve."""
    scale = 1000.0 / num_timesteps
    return torch.linspace(beta_start * scale, min(beta_end * scale, 0.999), num_timesteps, dtype=torch.float64)


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Improved DDPM eq. 17: ᾱ(t) = f(t)/f(0), f(t) = cos²(((t/T) + s)/(1 + s) · π/2); β clipped at 0.999."""
    def f(t: float) -> float:
        return math.cos((t / num_timesteps + s) / (1 + s) * math.pi / 2) ** 2

    betas = [min(1 - f(t + 1) / f(t), max_beta) for t in range(num_timesteps)]
    return torch.tensor(betas, dtype=torch.float64)


class NoiseSchedule:
    """β_t, α_t = 1 - β_t and ᾱ_t = ∏ α_s for t in 0..T-1, and the forward process built on them.

    >>> schedule = NoiseSchedule("cosine", num_timesteps=1000)
    >>> x_t = schedule.add_noise(x0, torch.randn_like(x0), t)
    """

    def __init__(self, kind: str = "cosine", num_timesteps: int = 1000):
        if kind not in SCHEDULE_KINDS:
            raise ValueError(f"schedule kind must be one of {SCHEDULE_KINDS}, got {kind!r}")
        if not isinstance(num_timesteps, int) or not 2 <= num_timesteps <= 100_000:
            raise ValueError(f"num_timesteps must be an integer in 2..100000, got {num_timesteps!r}")
        self.kind = kind
        self.num_timesteps = num_timesteps
        self.betas = linear_betas(num_timesteps) if kind == "linear" else cosine_betas(num_timesteps)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)  # ᾱ_t, float64 for exact coefficients

    def __repr__(self) -> str:
        return f"NoiseSchedule({self.kind!r}, num_timesteps={self.num_timesteps})"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "num_timesteps": self.num_timesteps}

    def _gather(self, values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """values[t] reshaped to broadcast over an (N, C, H, W) batch, in ``like``'s dtype and device."""
        t = torch.as_tensor(t, device=values.device).long()
        if t.min() < 0 or t.max() >= self.num_timesteps:
            raise ValueError(f"timesteps must lie in 0..{self.num_timesteps - 1}, got {t.min()}..{t.max()}")
        out = values[t].to(device=like.device, dtype=like.dtype)
        return out.reshape(-1, *([1] * (like.dim() - 1)))

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """q(x_t | x_0), DDPM eq. 4: x_t = √ᾱ_t · x_0 + √(1 - ᾱ_t) · ε."""
        abar = self._gather(self.alphas_cumprod, t, x0)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def velocity(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The v-prediction target (Salimans & Ho 2022, sec. 4): v = √ᾱ_t · ε - √(1 - ᾱ_t) · x_0."""
        abar = self._gather(self.alphas_cumprod, t, x0)
        return abar.sqrt() * noise - (1 - abar).sqrt() * x0

    def snr(self, t: torch.Tensor | None = None) -> torch.Tensor:
        """Signal-to-noise ratio SNR(t) = ᾱ_t / (1 - ᾱ_t) (Kingma et al. 2021, eq. 1); all t when None."""
        abar = self.alphas_cumprod if t is None else self.alphas_cumprod[torch.as_tensor(t).long()]
        return abar / (1 - abar)

    def respace(self, steps: int, start: int | None = None) -> torch.Tensor:
        """The ``steps`` timesteps a sampler visits, noisiest first, with trailing spacing (Lin et al.
        2023, table 2): round(L - k·L/n) - 1 for k = 0..n-1 on a chain of L = T timesteps. The first is
        always T-1; with n = T they are T-1, ..., 0. The step after the last one lands on clean data (ᾱ = 1).
        ``start`` shortens the chain to t_start, ..., 0 (L = t_start + 1 timesteps, at most L steps): an
        edit that starts from a partly noised picture (SDEdit, sdedit.py); None is the full chain."""
        T = self.num_timesteps
        if start is not None and (isinstance(start, bool) or not isinstance(start, int) or not 0 <= start < T):
            raise ValueError(f"start must be a timestep in 0..{T - 1}, got {start!r}")
        length = T if start is None else start + 1
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= length:
            raise ValueError(f"steps must be an integer in 1..{length}, got {steps!r}")
        ratio = length / steps
        timesteps = torch.round(length - torch.arange(steps, dtype=torch.float64) * ratio).long() - 1
        return timesteps
