"""Tab "Forward process": q(x_t | x_0) on a training image or an upload, with the schedule's curves."""
from __future__ import annotations

import functools
import math
import os

import gradio as gr
import numpy as np
import pandas as pd
import torch

from diffusion_core.pipeline import to_uint8
from diffusion_core.schedule import NoiseSchedule
from diffusion_core.uploads import read_picture
from diffusion_core.viz import upscale

from .common import App, Work, as_choice, as_int, explanation

EXPLANATION = r"""
Training pictures are destroyed step by step with Gaussian noise. Thanks to a property of Gaussians one
can jump straight to any step $t$:
$$x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon,\qquad \epsilon \sim \mathcal N(0, I),\qquad \bar\alpha_t = \prod_{s \le t} (1 - \beta_s)$$
$\bar\alpha_t$ (blue) is the share of the picture's signal left at step $t$; the signal-to-noise ratio
$\mathrm{SNR}(t) = \bar\alpha_t / (1 - \bar\alpha_t)$ (orange, as $\log_{10}$ scaled by 1/10 to share the axis)
falls from about $10^{4}$ to about $10^{-4}$. The **linear** schedule (DDPM) destroys most of the picture
early; the **cosine** schedule (Improved DDPM) keeps it recognisable longer, so more of the steps teach
something. The network learns to undo one such picture at a time.
"""
CURVE_COLOURS = {"ᾱ_t (share of the picture left)": "#1f77b4", "log10(SNR) / 10": "#ff7f0e", "current t": "#d62728"}
# gradio 6.31's plot draws its legend's title without the entries, so the label names the colours
LEGEND = "blue: ᾱ_t (share of the picture left) · orange: log10(SNR) / 10 · red: the chosen t"


def read_upload(upload, size: int) -> np.ndarray:
    """An uploaded picture (gradio's file payload, already in its upload cache) as a uint8 size x size
    RGB image on white, through the one checked reader (``diffusion_core.uploads.read_picture``: its
    pixel count is checked from the header before it is decoded). The slider's redraws reuse the pictures
    last read (a 4,096 x 4,096 PNG takes a second or more to decode)."""
    path = upload.get("path") if isinstance(upload, dict) else None
    if not path or not isinstance(path, str):
        raise gr.Error("upload must be an image file")
    try:
        return _read_upload(path, os.stat(path).st_mtime_ns, size).copy()
    except (OSError, ValueError) as err:
        raise gr.Error(str(err) if isinstance(err, ValueError) else "upload must be an image file")


@functools.lru_cache(maxsize=16)
def _read_upload(path: str, _mtime_ns: int, size: int) -> np.ndarray:
    return read_picture(path, size, name="the upload")


def noisy_image(schedule: NoiseSchedule, x0_uint8: np.ndarray, t: int, seed: int = 0) -> np.ndarray:
    """q(x_t | x_0) for one uint8 image with fixed noise, back to uint8 (values outside [-1, 1] clipped)."""
    x0 = torch.from_numpy(x0_uint8).permute(2, 0, 1)[None].float() / 127.5 - 1
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    return to_uint8(schedule.add_noise(x0, noise, torch.tensor([t])))[0]


def schedule_curves(schedule: NoiseSchedule, t: int) -> pd.DataFrame:
    """ᾱ_t and log10 SNR over t for a line plot, with a vertical marker series at the current t."""
    ts = np.arange(schedule.num_timesteps)
    names = list(CURVE_COLOURS)
    frames = [pd.DataFrame({"t": ts, "value": schedule.alphas_cumprod.numpy(), "curve": names[0]}),
              pd.DataFrame({"t": ts, "value": np.log10(schedule.snr().numpy()) / 10, "curve": names[1]}),
              pd.DataFrame({"t": [t, t], "value": [-0.8, 1.0], "curve": names[2]})]
    return pd.concat(frames, ignore_index=True)


def build(app: App) -> None:
    def forward_process(image_index, upload, t, schedule_kind):
        schedule_kind = as_choice(schedule_kind, "schedule", ["linear", "cosine"])
        t = as_int(t, "t", 0, app.T - 1)
        if upload is not None:
            x0 = read_upload(upload, app.pipe.model.image_size)
        else:
            if app.real is None:
                raise gr.Error("upload an image: this model has no shipped training images")
            image_index = as_int(image_index, "image index", 0, len(app.real) - 1)
            x0 = app.real.images[image_index]

        def noise():  # the torch part, a job of the scheduler
            schedule = NoiseSchedule(schedule_kind, app.T)
            return schedule.alphas_cumprod[t].item(), noisy_image(schedule, x0, t), schedule_curves(schedule, t)

        abar, noisy, curves = app.scheduler.run(Work("forward", what="the noise picture"), noise)
        text = (f"**t = {t}:** $\\bar\\alpha_t = {abar:.4f}$, so $x_t = {math.sqrt(abar):.3f}\\,x_0 + "
                f"{math.sqrt(1 - abar):.3f}\\,\\epsilon$ and SNR $= {abar / (1 - abar):.3g}$")
        return upscale(x0[None], 8)[0], upscale(noisy[None], 8)[0], curves, text

    with gr.Tab("Forward process"):
        count = len(app.real) - 1 if app.real is not None else 0
        with gr.Row():
            with gr.Column(scale=1):
                index = gr.Slider(0, max(count, 1), value=min(100, count), step=1, label="training image",
                                  visible=app.real is not None)  # a model without shipped images: uploads only
                upload = gr.Image(label="or upload an image", type="filepath", sources=["upload"])
                t = gr.Slider(0, app.T - 1, value=250, step=1, label="t (noise step)")
                schedule = gr.Radio(["cosine", "linear"], value=app.pipe.schedule.kind, label="schedule")
                button = gr.Button("Show", variant="primary")
            with gr.Column(scale=2):
                with gr.Row():
                    clean = gr.Image(label="x_0", format="png")
                    noisy = gr.Image(label="x_t", format="png")
                info = gr.Markdown(latex_delimiters=[{"left": "$", "right": "$", "display": False}])
                plot = gr.LinePlot(x="t", y="value", color="curve", color_map=CURVE_COLOURS, color_title="curve",
                                   x_title="t", y_title="value", label=LEGEND, height=300)
                explanation(EXPLANATION)
        inputs, outputs = [index, upload, t, schedule], [clean, noisy, plot, info]
        button.click(forward_process, inputs, outputs, api_name="forward_process", preprocess=False)
        for control in (index, t):  # redraw while the slider moves; a newer position replaces a pending one
            control.input(forward_process, inputs, outputs, api_visibility="undocumented", preprocess=False,
                          show_progress="hidden", trigger_mode="always_last", concurrency_id="forward",
                          concurrency_limit=4)
        schedule.change(forward_process, inputs, outputs, api_visibility="undocumented", preprocess=False)
