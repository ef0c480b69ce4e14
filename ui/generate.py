"""Tab "Generate": unconditional samples, the reverse process from pure noise."""
from __future__ import annotations

import gradio as gr

from diffusion_core.pipeline import MAX_IMAGES

from .common import App, explanation, gallery_of, run_controls, sprite_gallery

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


def build(app: App) -> None:
    def generate(sampler, steps, num_images, seed, progress=gr.Progress()):
        sampler, steps, num_images, seed = app.check_common(sampler, steps, num_images, seed)
        out = app.run(progress, "sampling", num_images=num_images, sampler=sampler, steps=steps, guidance=1.0,
                      seed=seed)
        return gallery_of(out.images), f"{num_images} images, {sampler}, {steps} steps: {out.seconds:.2f} s"

    with gr.Tab("Generate"):
        with gr.Row():
            with gr.Column(scale=1):
                sampler, steps, num, seed, button = run_controls(app, MAX_IMAGES, 16, "Generate")
            with gr.Column(scale=2):
                gallery = sprite_gallery("samples")
                info = gr.Markdown()
                explanation(EXPLANATION)
        button.click(generate, [sampler, steps, num, seed], [gallery, info], api_name="generate", preprocess=False)
