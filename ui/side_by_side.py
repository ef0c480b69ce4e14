"""Tab "Side by side": two prompts or two contexts from the same noise, their predicted x_0 over time."""
from __future__ import annotations

import gradio as gr
import numpy as np
import pandas as pd

from diffusion_core.viz import parting_step, path_difference, paths_grid

from .common import (ANY, LATEX, MAX_GUIDANCE, App, as_choice, as_float, as_int, as_text, explanation, guidance_slider,
                     sampler_controls, seed_controls, unknown_note)

MAX_SIDE_IMAGES = 4
MAX_COLUMNS = 12

EXPLANATION = r"""
Both paths start from the **same noise** $x_T$ (same seed) and, for the stochastic samplers, receive the
same fresh noise at every step: only the condition differs. Each column is one step's guess of the clean
picture $\hat x_0$ for A and for B. At the start the two noisy states $x_t$ are identical, and the
first guesses are mostly amplified noise. The condition decides the picture's layout in the first few
steps: the paths "part" at the step from which each guess stays nearer its own final picture than the
other path's. Later steps only refine details. The plot shows how different the two guesses are at each
step (mean absolute pixel difference).
"""


def build(app: App) -> None:
    labels, styles = app.pipe.labels, app.pipe.styles
    class_b_default = "animal_nature" if "animal_nature" in labels else labels[-1]

    def side_by_side(prompt_a, class_a, prompt_b, class_b, style, guidance, sampler, steps, num_images, columns, seed,
                     progress=gr.Progress()):
        sides = {"A": (as_text(prompt_a, "prompt A"), as_choice(class_a, "class A", [ANY, *labels])),
                 "B": (as_text(prompt_b, "prompt B"), as_choice(class_b, "class B", [ANY, *labels]))}
        style = as_choice(style, "style", [ANY, *styles])
        guidance = as_float(guidance, "guidance", 0.0, MAX_GUIDANCE)
        sampler, steps, num_images, seed = app.check_common(sampler, steps, num_images, seed, MAX_SIDE_IMAGES,
                                                            branches=2 * app.branches(guidance=guidance))  # two paths
        columns = as_int(columns, "columns", 2, MAX_COLUMNS)
        for name, (prompt, class_name) in sides.items():
            if not prompt and class_name == ANY:
                raise gr.Error(f"side {name} needs a prompt or a class")
        if sides["A"] == sides["B"]:
            raise gr.Error("A and B are the same; change one of them")
        outs = {name: app.run(progress, f"path {name}", num_images=num_images, prompt=prompt or None,
                              classes=None if class_name == ANY else [class_name],
                              style=None if style == ANY else style,
                              sampler=sampler, steps=steps, guidance=guidance, seed=seed, return_trajectory=True)
                for name, (prompt, class_name) in sides.items()}
        shown = np.unique(np.linspace(0, steps - 1, min(columns, steps)).round().astype(int)).tolist()
        ts = outs["A"].trajectory.timesteps
        grid = paths_grid({name: [out.trajectory.x0_pred[k] for k in shown] for name, out in outs.items()},
                          [f"t={ts[k]}" for k in shown])
        x0_a, x0_b = outs["A"].trajectory.x0_pred, outs["B"].trajectory.x0_pred
        part = min(parting_step(x0_a, x0_b), steps - 1)  # 0-based step index
        plot = pd.DataFrame({"step": np.arange(1, steps + 1), "difference": path_difference(x0_a, x0_b)})
        describe = {name: " + ".join(filter(None, [f"“{p}”" if p else "", c if c != ANY else ""]))
                    for name, (p, c) in sides.items()}
        unknown = sorted(set(outs["A"].unknown_words) | set(outs["B"].unknown_words))
        dropped = sorted(set(outs["A"].dropped_words) | set(outs["B"].dropped_words))
        read_as = {**outs["A"].read_as, **outs["B"].read_as}
        info = (f"A = {describe['A']}, B = {describe['B']}: the paths part at step {part + 1} of {steps} "
                f"(t = {ts[part]}): from there on each guess is nearer its own final picture than the other's. "
                f"{sum(o.seconds for o in outs.values()):.2f} s."
                + unknown_note(unknown, dropped, read_as))
        return grid, plot, info

    with gr.Tab("Side by side"):
        with gr.Row():
            with gr.Column(scale=1):
                with gr.Row():
                    prompt_a = gr.Textbox("", placeholder="e.g. cat face", label="prompt A", visible=app.has_text, max_length=200)
                    class_a = gr.Dropdown([ANY, *labels], value=labels[0], label="class A")
                with gr.Row():
                    prompt_b = gr.Textbox("", placeholder="e.g. dog face", label="prompt B", visible=app.has_text, max_length=200)
                    class_b = gr.Dropdown([ANY, *labels], value=class_b_default, label="class B")
                style = gr.Radio([ANY, *styles], value=ANY, label="style (both)")
                guidance = guidance_slider(app)
                sampler, steps = sampler_controls(app)
                num = gr.Slider(1, MAX_SIDE_IMAGES, value=2, step=1, label="images per side")
                columns = gr.Slider(2, MAX_COLUMNS, value=8, step=1, label="steps shown")
                seed = seed_controls()
                button = gr.Button("Compare paths", variant="primary")
            with gr.Column(scale=2):
                gr.Markdown("Predicted $\\hat x_0$ over time (columns: timestep t), A above B for each image:",
                            latex_delimiters=LATEX)
                grid = gr.Image(show_label=False, format="png")
                info = gr.Markdown()
                plot = gr.LinePlot(x="step", y="difference", label="how far apart A and B are, per step", height=200,
                                   x_title="step", y_title="mean |A - B|")
                explanation(EXPLANATION)
        inputs = [prompt_a, class_a, prompt_b, class_b, style, guidance, sampler, steps, num, columns, seed]
        button.click(side_by_side, inputs, [grid, plot, info], api_name="side_by_side", preprocess=False)
