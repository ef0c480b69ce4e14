"""Tab "Generate": unconditional samples, the reverse process from pure noise."""
from __future__ import annotations

import gradio as gr

from diffusion_core.pipeline import MAX_IMAGES

from .common import MAX_GUIDANCE, App, as_float, explanation, gallery_of, run_controls, sprite_gallery

EXPLANATION = r"""
Training taught the network $\epsilon_\theta(x_t, t)$ to guess the noise $\epsilon$ that was added to a
clean sprite $x_0$ to make $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon$.
Sampling runs that backwards: start from pure noise $x_T \sim \mathcal N(0, I)$, and at each of the
**steps** remove a little of the predicted noise. From the guess one can always read off a guess of the
clean picture,
$$\hat x_0 = \frac{x_t - \sqrt{1-\bar\alpha_t}\,\epsilon_\theta(x_t, t)}{\sqrt{\bar\alpha_t}},$$
and the **sampler** decides how far to move towards it per step. Nothing tells the model what to draw
here, so it draws whatever is likely under the training data. The same **seed** gives the same pictures.
"""

AUTOGUIDANCE_EXPLANATION = r"""
**Autoguidance** (Karras et al. 2024). With nothing to ask for, classifier-free guidance has no condition
to contrast, and a model trained mostly *with* conditions draws vague pictures unconditionally. This
checkpoint carries a *bad version of itself*: a smaller network, trained for less time on the same
sprites. It makes the same kinds of mistakes, only worse, so stepping from its guess
through the main model's guess and beyond,
$$\hat x_0 = \hat x_0^{\text{guide}} + w\,\big(\hat x_0^{\text{main}} - \hat x_0^{\text{guide}}\big),$$
moves away from those mistakes. $w = 1$ is the main model alone; larger $w$ gives clearer, more typical
sprites, and too large a $w$ gives fewer kinds of them.
"""


def build(app: App) -> None:
    has_guide = app.pipe.guide is not None

    def generate(sampler, steps, num_images, seed, autoguidance=1.0, progress=gr.Progress()):
        w = as_float(autoguidance, "autoguidance w", 1.0, MAX_GUIDANCE)
        sampler, steps, num_images, seed = app.check_common(sampler, steps, num_images, seed,
                                                            branches=app.branches(autoguidance=w))
        out = app.run(progress, "sampling", num_images=num_images, sampler=sampler, steps=steps, guidance=1.0,
                      seed=seed, autoguidance=None if w == 1.0 else w)
        guided = f", autoguidance w {w:g}" if w != 1.0 else ""
        return gallery_of(out.images), f"{num_images} images, {sampler}, {steps} steps{guided}: {out.seconds:.2f} s"

    with gr.Tab("Generate"):
        with gr.Row():
            with gr.Column(scale=1):
                sampler, steps, num, seed, button = run_controls(app, MAX_IMAGES, 16, "Generate")
                autoguidance = gr.Slider(1, MAX_GUIDANCE, value=app.sampling.get("autoguidance", 1.0) if has_guide else 1.0,
                                         step=0.25, label="autoguidance w (1 = off)", visible=has_guide)
            with gr.Column(scale=2):
                gallery = sprite_gallery("samples")
                info = gr.Markdown()
                explanation(EXPLANATION + (AUTOGUIDANCE_EXPLANATION if has_guide else ""))
        button.click(generate, [sampler, steps, num, seed, autoguidance], [gallery, info], api_name="generate",
                     preprocess=False)
