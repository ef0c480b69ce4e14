"""EDM's preconditioning, noise distribution and loss (Karras et al. 2022, "Elucidating the Design Space of
Diffusion-Based Generative Models", Table 1 "Ours" and sec. 5), on this project's VP schedule.

EDM writes a noisy picture as x = x_0 + σ n and trains a denoiser
    D(x; σ) = c_skip(σ) x + c_out(σ) F(c_in(σ) x; c_noise(σ)),
    c_skip = σ_d² / (σ² + σ_d²),  c_out = σ σ_d / √(σ² + σ_d²),  c_in = 1 / √(σ² + σ_d²),
with ln σ ~ N(P_mean, P_std²) and the loss λ(σ) ‖D - x_0‖², λ = 1 / c_out². Then F's input and its target
both have unit variance at every σ, and every noise level's error counts alike in F's units.

Our samplers run on x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε. The two meet at x = x_t / √ᾱ_t, σ_t = √((1-ᾱ_t)/ᾱ_t)
(EDM eq. 4 with s(t) = √ᾱ_t). Written in ᾱ, with k = ᾱ σ_d² + 1 - ᾱ (the variance of x_t for data of
variance σ_d²), every coefficient is finite at both ends of the schedule:
    c_in x = x_t / √k,   D = (σ_d² √ᾱ / k) x_t + (σ_d √(1-ᾱ) / √k) F,
    F's target = (√(1-ᾱ) x_0 - σ_d √ᾱ · σ_d ε) / (σ_d √k).
With σ_d = 1 this is v-prediction (F = -v, Salimans & Ho 2022). c_noise: the network keeps the integer
timestep t as its noise input, a monotone function of σ as EDM's VP row uses ((M-1) t), so a model trained
this way is a denoiser like any other here: ``prediction_type="edm"``, and every sampler reads its x̂_0.
"""
from __future__ import annotations

import torch

from .schedule import NoiseSchedule

SIGMA_DATA = 0.5          # σ_d, EDM's value for pictures in [-1, 1]
P_MEAN, P_STD = -1.2, 1.2  # the training noise levels, ln σ ~ N(P_mean, P_std²) (EDM Table 1)
# Our samplers start at t = T-1, σ ≈ 20,000 on the cosine schedule (EDM's start at σ_max = 80); the log-normal
# alone trains t > 950 (σ > 13) on 0.1% of pictures. This share of each batch draws t uniformly instead,
# so every level a sampler visits is trained.
UNIFORM_SHARE = 0.1


def coefficients(alpha_bar, like: torch.Tensor, sigma_data: float = SIGMA_DATA):
    """(c_in, c_skip, c_out) in VP terms for ᾱ (a number, or one per picture as a tensor), shaped to
    broadcast over ``like`` and in its dtype, computed in float64: with k = ᾱ σ_d² + 1 - ᾱ,
    c_in = 1/√k (on x_t), c_skip = σ_d² √ᾱ / k (on x_t), c_out = σ_d √(1-ᾱ) / √k."""
    a = torch.as_tensor(alpha_bar, dtype=torch.float64)
    k = a * sigma_data**2 + 1 - a
    shape = (-1, *([1] * (like.dim() - 1))) if a.dim() else ()
    return tuple(c.reshape(shape).to(device=like.device, dtype=like.dtype)
                 for c in (k.rsqrt(), sigma_data**2 * a.sqrt() / k, sigma_data * (1 - a).sqrt() / k.sqrt()))


def denoised(output: torch.Tensor, x_t: torch.Tensor, alpha_bar, sigma_data: float = SIGMA_DATA) -> torch.Tensor:
    """x̂_0 = D = c_skip x + c_out F, here (σ_d² √ᾱ / k) x_t + (σ_d √(1-ᾱ) / √k) F."""
    _, c_skip, c_out = coefficients(alpha_bar, x_t, sigma_data)
    return c_skip * x_t + c_out * output


def target(x0: torch.Tensor, noise: torch.Tensor, alpha_bar, sigma_data: float = SIGMA_DATA) -> torch.Tensor:
    """F's regression target (x_0 - c_skip x) / c_out = (√(1-ᾱ) x_0 - σ_d² √ᾱ ε) / (σ_d √k): unit variance
    at every noise level for data of variance σ_d²."""
    a = torch.as_tensor(alpha_bar, dtype=torch.float64)
    k = a * sigma_data**2 + 1 - a
    shape = (-1, *([1] * (x0.dim() - 1))) if a.dim() else ()
    on_x0, on_noise = ((1 - a).sqrt() / (sigma_data * k.sqrt()), -sigma_data * a.sqrt() / k.sqrt())
    on_x0, on_noise = (c.reshape(shape).to(device=x0.device, dtype=x0.dtype) for c in (on_x0, on_noise))
    return on_x0 * x0 + on_noise * noise


def schedule_sigmas(schedule: NoiseSchedule) -> torch.Tensor:
    """σ_t = √((1-ᾱ_t)/ᾱ_t) for t = 0..T-1, increasing with t."""
    abar = schedule.alphas_cumprod
    return ((1 - abar) / abar).sqrt()


def training_timesteps(schedule: NoiseSchedule, n: int, generator: torch.Generator,
                       p_mean: float = P_MEAN, p_std: float = P_STD, uniform_share: float = UNIFORM_SHARE) -> torch.Tensor:
    """n training timesteps whose σ_t follow EDM's ln σ ~ N(P_mean, P_std²): each drawn ln σ goes to the
    timestep with the nearest ln σ_t (the log-normal laid onto the schedule's T levels; draws beyond the
    schedule's ends go to t = 0 or T-1); a ``uniform_share`` of them is drawn uniformly over 0..T-1."""
    log_sigmas = schedule_sigmas(schedule).log()
    drawn = (p_mean + p_std * torch.randn(n, generator=generator)).double()
    above = torch.searchsorted(log_sigmas, drawn).clamp(1, len(log_sigmas) - 1)
    below = above - 1
    nearer_below = (drawn - log_sigmas[below]).abs() <= (log_sigmas[above] - drawn).abs()
    lognormal = torch.where(nearer_below, below, above)
    uniform = torch.randint(schedule.num_timesteps, (n,), generator=generator)
    return torch.where(torch.rand(n, generator=generator) < uniform_share, uniform, lognormal)


def edm_loss(model, schedule: NoiseSchedule, x0: torch.Tensor, context, t: torch.Tensor, noise: torch.Tensor,
             tokens: torch.Tensor | None = None, extra: dict | None = None,
             sigma_data: float = SIGMA_DATA) -> torch.Tensor:
    """λ(σ) ‖D(x; σ) - x_0‖² with λ = 1/c_out², i.e. ‖F - F's target‖² (EDM eq. 2 and 8), averaged over
    pixels and pictures. The network sees c_in x = x_t / √k and the timestep t."""
    x_t = schedule.add_noise(x0, noise, t)
    abar = schedule.alphas_cumprod[t.cpu()]
    network_input = x_t * coefficients(abar, x_t, sigma_data)[0]
    args = (network_input, t, context) if tokens is None else (network_input, t, context, tokens)
    output = model(*args, **(extra or {}))
    return torch.nn.functional.mse_loss(output.float(), target(x0, noise, abar, sigma_data))
