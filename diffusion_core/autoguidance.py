"""Autoguidance: guide a model with a bad version of itself (Karras et al. 2024, "Guiding a Diffusion
Model with a Bad Version of Itself", eq. 2):

    D_w(x; σ, c) = D_0(x; σ, c) + w · (D_1(x; σ, c) - D_0(x; σ, c))

D_1 is the main model and D_0 the guide: a smaller model trained for less time on the same data and
task. Both err in similar ways, the guide more; stepping from the guide's prediction through the
main one (w > 1) moves away from those errors, towards sharper, more typical pictures. Unlike
classifier-free guidance (which contrasts a condition with no condition) it needs no condition at
all, so it is the guidance an unconditional sampler can use.

Both networks predict the same thing (ε or v) for the same x_t, and x̂_0 is an affine function of
that prediction with the same coefficients for both, so mixing the predictions mixes the D's.
"""
from __future__ import annotations

from typing import Callable


def autoguided_denoiser(model: Callable, guide: Callable, w: float) -> Callable:
    """A denoiser ``f(x_t, t, context) = guide + w (model - guide)``; w = 1 calls only ``model``."""
    if w == 1.0:
        return model

    def autoguided(x_t, t, context):
        out, out_guide = model(x_t, t, context), guide(x_t, t, context)
        return out_guide + w * (out - out_guide)

    return autoguided
