"""Each sampler's update for one step, with its numbers: what the app shows beside a denoising step.

The coefficients are those of the step functions in ``samplers.py`` (same papers, same symbols), for
the step from timestep t (ᾱ_t) to the next timestep of the respaced chain (ᾱ_prev; 1 after the last).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .samplers import log_snr_step
from .schedule import NoiseSchedule


@dataclass
class StepUpdate:
    index: int            # 0-based step number
    t: int                # timestep of x_t
    t_prev: int | None    # timestep reached by this step (None: clean data)
    alpha_bar: float      # ᾱ_t
    alpha_bar_prev: float
    formula: str          # the update as LaTeX, numbers plugged in

    @property
    def noise_level(self) -> float:
        """σ_t = √(1 - ᾱ_t): how much of x_t is noise."""
        return math.sqrt(1 - self.alpha_bar)


def step_update(sampler: str, schedule: NoiseSchedule, steps: int, index: int) -> StepUpdate:
    """The update of step ``index`` (0..steps-1) of ``sampler`` on ``schedule.respace(steps)``."""
    timesteps = schedule.respace(steps).tolist()
    if not 0 <= index < len(timesteps):
        raise ValueError(f"step must be in 0..{len(timesteps) - 1}, got {index}")
    t = timesteps[index]
    t_prev = timesteps[index + 1] if index + 1 < len(timesteps) else None
    a = schedule.alphas_cumprod[t].item()
    a_prev = schedule.alphas_cumprod[t_prev].item() if t_prev is not None else 1.0
    target = rf"x_{{{t_prev}}}" if t_prev is not None else r"x_0"
    if t_prev is None:  # every sampler's last step returns the clean estimate
        formula = rf"{target} = \hat x_0"
    elif sampler == "ddim":  # DDIM eq. 12, η = 0
        formula = (rf"{target} = \sqrt{{\bar\alpha_{{prev}}}}\,\hat x_0 + \sqrt{{1-\bar\alpha_{{prev}}}}\,\hat\epsilon"
                   rf" = {math.sqrt(a_prev):.3f}\,\hat x_0 + {math.sqrt(1 - a_prev):.3f}\,\hat\epsilon")
    elif sampler == "consistency":  # Song et al. 2023, Algorithm 1: re-noise the clean guess
        formula = (rf"{target} = \sqrt{{\bar\alpha_{{prev}}}}\,\hat x_0 + \sqrt{{1-\bar\alpha_{{prev}}}}\,z"
                   rf" = {math.sqrt(a_prev):.3f}\,\hat x_0 + {math.sqrt(1 - a_prev):.3f}\,z")
    elif sampler == "ddpm":  # DDPM eq. 6-7 on the respaced chain
        beta = 1 - a / a_prev
        c0 = math.sqrt(a_prev) * beta / (1 - a)
        ct = math.sqrt(1 - beta) * (1 - a_prev) / (1 - a)
        sigma = math.sqrt((1 - a_prev) / (1 - a) * beta)
        formula = (rf"{target} = \tilde\mu(x_t, \hat x_0) + \tilde\beta^{{1/2}} z"
                   rf" = {c0:.3f}\,\hat x_0 + {ct:.3f}\,x_{{{t}}} + {sigma:.3f}\,z")
    else:  # DPM-Solver++(2M), Lu et al. 2022, Algorithm 2 (and its SDE variant)
        h = log_snr_step(a, a_prev)
        ratio = math.sqrt((1 - a_prev) / (1 - a))
        if sampler == "dpmpp_2m":
            formula = (rf"{target} = \tfrac{{\sigma_{{prev}}}}{{\sigma_t}} x_t - \alpha_{{prev}}(e^{{-h}}-1)\,D"
                       rf" = {ratio:.3f}\,x_{{{t}}} + {-math.sqrt(a_prev) * math.expm1(-h):.3f}\,D,\quad h = {h:.3f}")
        else:
            formula = (rf"{target} = \tfrac{{\sigma_{{prev}}}}{{\sigma_t}}e^{{-h}} x_t + \alpha_{{prev}}(1-e^{{-2h}})\,D"
                       rf" + \sigma_{{prev}}\sqrt{{1-e^{{-2h}}}}\,z = {ratio * math.exp(-h):.3f}\,x_{{{t}}}"
                       rf" + {-math.sqrt(a_prev) * math.expm1(-2 * h):.3f}\,D"
                       rf" + {math.sqrt(1 - a_prev) * math.sqrt(-math.expm1(-2 * h)):.3f}\,z,\quad h = {h:.3f}")
    return StepUpdate(index, t, t_prev, a, a_prev, formula)
