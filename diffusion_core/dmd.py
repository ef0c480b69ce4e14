"""Distribution matching distillation: tune a few-step student so that the pictures it draws are
distributed as its guided teacher's, not only as the ends of the teacher's ODE paths.

Yin et al. 2024, "One-step Diffusion with Distribution Matching Distillation" (DMD), with the
backward simulation of Yin et al. 2024, "Improved Distribution Matching Distillation for Fast Image
Synthesis" (DMD2, sec. 4.4). A consistency student learns where the teacher's deterministic path
ends; that path is a weaker sampler than the teacher's stochastic one (``benchmarks/results/
distill_ode_ceiling.md``). DMD asks instead that the student's pictures x be distributed as the
teacher's, by following the gradient of KL(p_student ‖ p_teacher), the difference of two scores:

    x      = G_θ(x_t, t, c, w)                        (the student's x̂_0; x_t from its own earlier steps)
    x_τ    = √ᾱ_τ x + √(1-ᾱ_τ) ε,   τ ~ U[τ_lo, τ_hi)  (the forward process, DMD eq. 5)
    ∇_x KL ≈ (x̂_0^fake(x_τ) - x̂_0^real(x_τ)) / mean|x - x̂_0^real(x_τ)|    (DMD eq. 7-8 and its weighting)

with x̂_0^real the teacher's estimate, guided at the student's w (the real score), and x̂_0^fake that
of a critic: a copy of the teacher trained at the same time, by the teacher's own denoising loss, on
the student's pictures (the fake score, DMD eq. 6). The student's loss ½‖x - sg(x - ∇)‖² has the
gradient ∇. Each step trains both: L = L_DM(θ) + ‖ε̂_fake(x_τ, τ, c) - ε‖².

The student's inputs x_t are made as the multistep consistency sampler makes them at its step i
(i uniform): from pure noise, i steps of the student itself, without gradient (DMD2 sec. 4.4), so it
learns on what it will see when sampling.

Alone, the reverse KL seeks modes: here, in 100 steps, every class collapsed onto one style. Two remedies
are options of ``distill``: the consistency loss kept beside it with weight λ (``regression_weight``; DMD's
regression loss, sec. 3.3, which ties each noise to the teacher's picture for it), and a critic that
learns faster than the student (``critic_lr_scale``; DMD2's two time-scales, sec. 4.2), so that the fake
score follows what the student draws now.
"""
from __future__ import annotations

import torch
from torch import nn

from .samplers import predict_x0_and_eps


class StudentAndCritic(nn.Module):
    """The two networks DMD trains, as one module: one optimizer, one state file and one
    DistributedDataParallel forward serve both (the EMA averages the student alone). ``student`` takes w
    and predicts v; ``critic`` is the fake score, the teacher's architecture, predicting ε."""

    def __init__(self, student: nn.Module, critic: nn.Module):
        super().__init__()
        self.student, self.critic = student, critic

    def forward(self, x_t, t, context, tokens, w, alpha_bar_t, noise, tau, alpha_bar_tau):
        """The student's x̂_0 for every row (with gradient to the student); the first len(noise) rows, its
        pictures, noised to τ (no gradient); and the critic's ε̂ there (with gradient to the critic). Rows
        after those go through the student only (the consistency loss kept beside DMD's)."""
        v = self.student(x_t, t, context, tokens, w).float()
        x0, _ = predict_x0_and_eps(v, x_t, alpha_bar_t.view(-1, 1, 1, 1), "v", clip_x0=False)
        m, a = len(noise), alpha_bar_tau.view(-1, 1, 1, 1)
        x_tau = a.sqrt() * x0[:m].detach() + (1 - a).sqrt() * noise
        eps_fake = self.critic(x_tau, tau, context[:m], None if tokens is None else tokens[:m]).float()
        return x0, x_tau, eps_fake


@torch.no_grad()
def backward_simulation(student: nn.Module, noises: torch.Tensor, timesteps: list[int], alphas_cumprod: torch.Tensor,
                        context, tokens, w) -> torch.Tensor:
    """x_t at the consistency sampler's step i = len(noises) - 1, made as the sampler makes it (DMD2
    sec. 4.4): x from noises[0] at timesteps[0], then i times the student's clipped x̂_0 renoised to the
    next timestep with noises[1..i] (``samplers.consistency_step``)."""
    x = noises[0]
    for i, noise in enumerate(noises[1:]):
        a_t = alphas_cumprod[timesteps[i]].expand(len(x))
        t = torch.full((len(x),), timesteps[i], dtype=torch.long, device=x.device)
        x0, _ = predict_x0_and_eps(student(x, t, context, tokens, w).float(), x, a_t.view(-1, 1, 1, 1), "v", clip_x0=True)
        a_next = alphas_cumprod[timesteps[i + 1]]
        x = a_next.sqrt() * x0 + (1 - a_next).sqrt() * noise
    return x


def distribution_matching_loss(x0: torch.Tensor, x0_real: torch.Tensor, x0_fake: torch.Tensor) -> torch.Tensor:
    """½‖x - sg(x - ∇)‖² (mean over pixels), whose gradient in x is ∇ = (x̂_0^fake - x̂_0^real) / mean|x - x̂_0^real|,
    the normaliser per picture (DMD eq. 8, the weighting of its sec. 3.2)."""
    with torch.no_grad():
        scale = (x0 - x0_real).abs().mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-3)
        target = x0 - (x0_fake - x0_real) / scale
    return 0.5 * torch.nn.functional.mse_loss(x0, target)
