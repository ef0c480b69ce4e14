"""Tab "Denoising animation": the trajectory streamed live, then a GIF, an MP4 and a scrubber that
shows each step's numbers."""
from __future__ import annotations

import gradio as gr
import numpy as np

from diffusion_core.explain import step_update
from diffusion_core.viz import save_gif, save_mp4, trajectory_frames

from .common import (ANY, FULL, LATEX, MAX_GUIDANCE, SCALE, App, Work, as_choice, as_float, as_int, explanation,
                     fresh_output_dir, guidance_slider, run_controls)

MAX_ANIMATION_IMAGES = 16
MAX_FRAMES = 120               # the GIF, MP4 and scrubber keep at most this many steps, evenly spaced
RESULT_TEXT = ("**The result**: the last step's $\\hat x_0$, clipped to the picture range. "
               "Move the scrubber back to see a step.")

EXPLANATION = r"""
Left: the noisy $x_t$ the sampler holds at each step. Right: the network's current guess of the clean
picture, $\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\hat\epsilon)/\sqrt{\bar\alpha_t}$. Early guesses are
blurry averages of many possible sprites; the coarse layout is decided first, the details last.
Move the scrubber to see one step's numbers: its timestep $t$, $\bar\alpha_t$ (how much of the picture
survives), the noise level $\sigma_t = \sqrt{1-\bar\alpha_t}$, and the update the sampler makes.
"""


def step_text(sampler: str, steps: int, index: int, app: App) -> str:
    """One step's numbers, for the panel under the scrubber."""
    step = step_update(sampler, app.pipe.schedule, steps, index)
    return (f"**Step {index + 1} of {steps}**: $t = {step.t}$, $\\bar\\alpha_t = {step.alpha_bar:.4f}$, "
            f"noise level $\\sigma_t = {step.noise_level:.3f}$. The {sampler} update:\n$${step.formula}$$")


def build(app: App) -> None:
    labels = app.pipe.labels

    def animate(class_name, sampler, steps, guidance, num_images, seed, progress=gr.Progress()):
        class_name = as_choice(class_name, "class", [ANY, *labels])
        guidance = as_float(guidance, "guidance", 0.0, MAX_GUIDANCE)
        guided = app.branches(guidance=guidance, conditioned=class_name != ANY)
        sampler, steps, num_images, seed = app.check_common(sampler, steps, num_images, seed, MAX_ANIMATION_IMAGES, guided)

        def show(index, frame):
            return frame, gr.skip(), gr.skip(), gr.skip(), gr.skip(), f"step {index + 1}/{steps}", gr.skip()

        out = yield from app.stream(progress, "denoising", Work(FULL, num_images, steps, guided), show,
                                    num_images=num_images, classes=None if class_name == ANY else [class_name],
                                    sampler=sampler, steps=steps, guidance=guidance if class_name != ANY else 1.0,
                                    seed=seed, return_trajectory=True)
        keep = np.unique(np.linspace(0, steps - 1, min(steps, MAX_FRAMES)).round().astype(int))  # bounded memory
        recorded = {"x_t": [out.trajectory.x_t[i] for i in keep], "x0_pred": [out.trajectory.x0_pred[i] for i in keep],
                    "final": out.images, "step": keep.tolist(), "sampler": sampler, "steps": steps}
        all_frames = trajectory_frames(recorded["x_t"], recorded["x0_pred"], final=out.images, scale=SCALE)
        folder = fresh_output_dir()
        gif = save_gif(all_frames, folder / "denoising.gif")
        mp4 = save_mp4(all_frames, folder / "denoising.mp4", fps=max(4, min(30, len(all_frames) // 4)))
        slider = gr.Slider(minimum=0, maximum=len(all_frames) - 1, value=len(all_frames) - 1, step=1, interactive=True)
        yield (all_frames[-1], str(gif), str(mp4), slider, recorded,
               f"{num_images} images, {steps} steps in {out.seconds:.2f} s. Left: x_t, right: predicted x_0.",
               RESULT_TEXT)

    def scrub(index, recorded):
        """The frame at ``index`` of the last animation (rebuilt from the small recorded arrays) and its numbers."""
        if not recorded:
            raise gr.Error("run the animation first")
        count = len(recorded["x_t"]) + 1
        index = as_int(index, "frame", 0, count - 1)
        if index == count - 1:
            return trajectory_frames([], [], final=recorded["final"], scale=SCALE)[0], RESULT_TEXT
        frame = trajectory_frames([recorded["x_t"][index]], [recorded["x0_pred"][index]], scale=SCALE)[0]
        return frame, step_text(recorded["sampler"], recorded["steps"], recorded["step"][index], app)

    with gr.Tab("Denoising animation"):
        with gr.Row():
            with gr.Column(scale=1):
                class_name = gr.Dropdown([ANY, *labels], value=labels[0], label="class")
                guidance = guidance_slider(app)
                sampler, steps, num, seed, button = run_controls(app, MAX_ANIMATION_IMAGES, 4, "Animate",
                                                                 default_steps=30)
            with gr.Column(scale=2):
                live = gr.Image(label="x_t (left) and predicted x_0 (right)", type="numpy", format="png")
                info = gr.Markdown()
                frame = gr.Slider(0, 1, value=0, step=1, label="scrub through the steps", interactive=True)
                explanation(EXPLANATION, label="How it works, step by step")
                step_numbers = gr.Markdown(latex_delimiters=LATEX)
                gif = gr.Image(label="animated GIF", type="filepath")
                mp4 = gr.File(label="MP4 download")
        recorded = gr.State(None)  # the sampled trajectory (a bounded number of steps), for the scrubber
        button.click(animate, [class_name, sampler, steps, guidance, num, seed],
                     [live, gif, mp4, frame, recorded, info, step_numbers], api_name="animate", preprocess=False)
        frame.change(scrub, [frame, recorded], [live, step_numbers], api_name="scrub", show_progress="hidden",
                     preprocess=False)
