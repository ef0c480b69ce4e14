"""Tab "Compare samplers": the same seed and context through DDPM, DDIM and DPM-Solver++."""
from __future__ import annotations

import gradio as gr

from diffusion_core.pipeline import MAX_IMAGES

from .common import (ANY, MAX_GUIDANCE, MAX_SEED, MAX_WORK, App, as_choice, as_float, as_int, check_work, explanation,
                     gallery_of, guidance_slider, seed_controls, sprite_gallery)

EXPLANATION = r"""
All four walk from noise to picture along the same learned direction; they differ in how they take a step.
**DDPM** (Ho et al. 2020) samples from $p(x_{t-1} \mid x_t)$ with small Gaussian steps; its variance
formula assumes each step is tiny, so it needs all 1000. **DDIM** (Song et al. 2021) jumps:
$x_{prev} = \sqrt{\bar\alpha_{prev}}\,\hat x_0 + \sqrt{1-\bar\alpha_{prev}}\,\hat\epsilon$, a deterministic
move along the path, good in 25-50 steps. **DPM-Solver++** (Lu et al. 2022) sees sampling as solving an
ODE in $\lambda = \log(\alpha_t/\sigma_t)$ and integrates its linear part exactly; its second-order
multistep form reuses the previous step's $\hat x_0$ to correct the current one,
$D = (1 + \tfrac{1}{2r})\hat x_0^{(i)} - \tfrac{1}{2r}\hat x_0^{(i-1)}$, so its error falls like $h^2$
instead of $h$: 20 steps are enough. The **SDE** variant adds fresh noise each step, which hides
the small model's mistakes. Same network, same number of calls per step: fewer steps is faster.
"""


def build(app: App) -> None:
    labels = app.pipe.labels
    comparison = (("DDPM", "ddpm", app.T), ("DDIM", "ddim", 25), ("DPM-Solver++ 2M", "dpmpp_2m", 20),
                  ("DPM-Solver++ 2M SDE", "dpmpp_2m_sde", 20))
    all_steps = sum(steps for _, _, steps in comparison)
    max_images = min(MAX_IMAGES, MAX_WORK // (2 * all_steps))  # the work budget at guidance (two branches)

    def compare(class_name, guidance, num_images, seed, progress=gr.Progress()):
        class_name = as_choice(class_name, "class", [ANY, *labels])
        guidance = as_float(guidance, "guidance", 0.0, MAX_GUIDANCE)
        num_images = as_int(num_images, "number of images", 1, max_images)
        seed = as_int(seed, "seed", 0, MAX_SEED)
        check_work(num_images, all_steps, app.branches(guidance=guidance, conditioned=class_name != ANY))
        outputs = []
        for label, sampler, steps in comparison:
            out = app.run(progress, f"{label}, {steps} steps", num_images=num_images,
                          classes=None if class_name == ANY else [class_name], sampler=sampler, steps=steps,
                          guidance=guidance if class_name != ANY else 1.0, seed=seed)
            outputs += [gallery_of(out.images), f"**{label}, {steps} steps**: {out.seconds:.2f} s"]
        return tuple(outputs)

    with gr.Tab("Compare samplers"):
        gr.Markdown("The same seed and context through each sampler: "
                    + ", ".join(f"{label} ({steps} steps)" for label, _, steps in comparison) + ".")
        with gr.Row():
            class_name = gr.Dropdown([ANY, *labels], value=labels[0], label="class")
            guidance = guidance_slider(app)
            num = gr.Slider(1, max_images, value=1, step=1, label="number of images")
            seed = seed_controls()
        button = gr.Button("Compare", variant="primary")
        outputs = []
        with gr.Row():
            for name, _, _ in comparison:
                with gr.Column(min_width=160):  # four side by side, even on a laptop
                    outputs.append(sprite_gallery(name))
                    outputs.append(gr.Markdown())
        explanation(EXPLANATION, label="Why DPM-Solver++ needs fewer steps than DDPM")
        button.click(compare, [class_name, guidance, num, seed], outputs, api_name="compare", preprocess=False)
