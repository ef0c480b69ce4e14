"""Watch a diffusion model draw: the Gradio app (interface only; the diffusion work is done by
diffusion_core.pipeline.DiffusionPipeline).

    python app.py [--model HUB_REPO_ID_OR_FOLDER] [--port 7860]

The weights come from --model or $HF_MODEL_ID (a Hub repo id or a folder), by default the shipped
checkpoints/emoji32. If they cannot be had (no network, unknown repo), the app falls back to the
shipped checkpoint and says so on the page.
"""
from __future__ import annotations

import argparse
import math
import os
import queue
import random
import shutil
import tempfile
import threading
import time
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd

from diffusion_core.data import load_emoji
from diffusion_core.pipeline import MAX_IMAGES, DiffusionPipeline, to_uint8
from diffusion_core.samplers import DEFAULT_SAMPLER
from diffusion_core.schedule import NoiseSchedule
from diffusion_core.viz import save_gif, save_mp4, trajectory_frames, upscale

ROOT = Path(__file__).resolve().parent
SHIPPED_MODEL = ROOT / "checkpoints" / "emoji32"
SAMPLER_CHOICES = [("DPM-Solver++ 2M SDE (stochastic)", "dpmpp_2m_sde"), ("DPM-Solver++ 2M (deterministic)", "dpmpp_2m"),
                   ("DDIM", "ddim"), ("DDPM", "ddpm")]
MAX_IMAGE_STEPS = 16_000       # cap on images x steps per request (16 images at 1000 DDPM steps)
MAX_ANIMATION_IMAGES = 16
MAX_FRAMES = 120               # the GIF, MP4 and scrubber keep at most this many steps, evenly spaced
MAX_GUIDANCE = 10.0
DEFAULT_GUIDANCE = 5.0  # measured for the shipped model with the default sampler (README, "Quality")
MAX_SEED = 2**31 - 1
ANY_STYLE = "any"
SCALE = 4                      # sprites are shown 4x larger, nearest-neighbour, so pixels stay crisp


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------
def load_pipeline(model: str | None) -> tuple[DiffusionPipeline, str]:
    """The pipeline and a note saying where its weights came from."""
    wanted = model or str(SHIPPED_MODEL)
    try:
        pipe = DiffusionPipeline.from_pretrained(wanted, dtype="auto")
        return pipe, f"Weights: `{wanted}`."
    except ValueError as err:
        if Path(wanted).resolve() == SHIPPED_MODEL.resolve():
            raise
        pipe = DiffusionPipeline.from_pretrained(SHIPPED_MODEL, dtype="auto")
        return pipe, (f"⚠️ Could not load `{wanted}` ({err}). Using the shipped checkpoint "
                      f"`checkpoints/emoji32` instead.")


# ---------------------------------------------------------------------------------------------
# Validation: the API can be called with anything, so every handler checks its inputs.
# ---------------------------------------------------------------------------------------------
def as_int(value, name: str, low: int, high: int) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise gr.Error(f"{name} must be a whole number in {low}..{high}, got {value!r}")
    if not math.isfinite(number) or number != int(number) or not low <= number <= high:
        raise gr.Error(f"{name} must be a whole number in {low}..{high}, got {value!r}")
    return int(number)


def as_float(value, name: str, low: float, high: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise gr.Error(f"{name} must be a number in {low:g}..{high:g}, got {value!r}")
    if not math.isfinite(number) or not low <= number <= high:
        raise gr.Error(f"{name} must be a number in {low:g}..{high:g}, got {value!r}")
    return number


def as_choice(value, name: str, choices: list[str]) -> str:
    if value not in choices:
        raise gr.Error(f"{name} must be one of {choices}, got {value!r}")
    return value


class App:
    """The handlers, bound to one pipeline. Each validates, calls the pipeline, formats."""

    def __init__(self, pipe: DiffusionPipeline, source_note: str):
        self.pipe, self.source_note = pipe, source_note
        self.T = pipe.schedule.num_timesteps
        self.samplers = [key for _, key in SAMPLER_CHOICES]
        # (label, sampler, steps) for the "Compare samplers" tab: the original and the fast ones
        self.comparison = (("DDPM", "ddpm", self.T), ("DDIM", "ddim", 25), ("DPM-Solver++ 2M", "dpmpp_2m", 20),
                           ("DPM-Solver++ 2M SDE", "dpmpp_2m_sde", 20))
        self.real = load_emoji(split="all") if pipe.model.image_size == 32 else None

    # ---- shared checks and calls ------------------------------------------------------------
    def check_common(self, sampler, steps, num_images, seed, max_images=MAX_IMAGES):
        sampler = as_choice(sampler, "sampler", self.samplers)
        steps = as_int(steps, "steps", 1, self.T)
        num_images = as_int(num_images, "number of images", 1, max_images)
        seed = as_int(seed, "seed", 0, MAX_SEED)
        if num_images * steps > MAX_IMAGE_STEPS:
            raise gr.Error(f"images x steps must be at most {MAX_IMAGE_STEPS} per request "
                           f"(asked {num_images} x {steps}); lower one of them")
        return sampler, steps, num_images, seed

    def run(self, progress, desc, **kwargs):
        steps = kwargs["steps"]

        def tick(step):
            progress((step.index + 1, steps), desc=desc)

        try:
            return self.pipe.generate(callback=tick, **kwargs)
        except ValueError as err:  # anything the pipeline rejects is the user's to fix
            raise gr.Error(str(err))

    def gallery(self, images: np.ndarray) -> list[np.ndarray]:
        return list(upscale(images, SCALE))

    def blend_from_sliders(self, weights) -> dict[str, float]:
        if len(weights) != len(self.pipe.labels):
            raise gr.Error(f"expected {len(self.pipe.labels)} class weights, got {len(weights)}")
        return {name: as_float(w, f"weight of {name}", 0.0, 1.0) for name, w in zip(self.pipe.labels, weights)}

    # ---- tab 1: unconditional ---------------------------------------------------------------
    def generate(self, sampler, steps, num_images, seed, progress=gr.Progress()):
        sampler, steps, num_images, seed = self.check_common(sampler, steps, num_images, seed)
        out = self.run(progress, "sampling", num_images=num_images, sampler=sampler, steps=steps, guidance=1.0, seed=seed)
        return self.gallery(out.images), f"{num_images} images, {sampler}, {steps} steps: {out.seconds:.2f} s"

    # ---- tab 2: context ---------------------------------------------------------------------
    def generate_context(self, *args, progress=gr.Progress()):
        *weights, style, guidance, sampler, steps, num_images, seed = args
        blend = self.blend_from_sliders(weights)
        styles = [ANY_STYLE, *self.pipe.styles]
        style = as_choice(style, "style", styles)
        guidance = as_float(guidance, "guidance", 0.0, MAX_GUIDANCE)
        sampler, steps, num_images, seed = self.check_common(sampler, steps, num_images, seed)
        if not any(blend.values()) and style == ANY_STYLE:
            raise gr.Error("set at least one class weight above 0 (or pick a style)")
        out = self.run(progress, "sampling", num_images=num_images, blend=blend,
                       style=None if style == ANY_STYLE else style, sampler=sampler, steps=steps,
                       guidance=guidance, seed=seed)
        mix = " + ".join(f"{w:g}·{n}" for n, w in blend.items() if w > 0) or "no class"
        return self.gallery(out.images), f"{mix}, style {style}, guidance {guidance:g}: {out.seconds:.2f} s"

    # ---- tab 3: denoising animation (streamed) ---------------------------------------------
    def animate(self, class_name, sampler, steps, guidance, num_images, seed, progress=gr.Progress()):
        classes = [ANY_STYLE, *self.pipe.labels]
        class_name = as_choice(class_name, "class", classes)
        guidance = as_float(guidance, "guidance", 0.0, MAX_GUIDANCE)
        sampler, steps, num_images, seed = self.check_common(sampler, steps, num_images, seed, MAX_ANIMATION_IMAGES)
        frames: queue.Queue = queue.Queue()
        result: dict = {}
        live_every = max(1, steps // 50)  # stream at most ~50 live frames

        def on_step(step):
            if step.index % live_every == 0 or step.index == steps - 1:
                frames.put((step.index, trajectory_frames([to_uint8(step.x_t)], [to_uint8(step.x0_pred)], scale=SCALE)[0]))

        def work():
            try:
                result["out"] = self.pipe.generate(
                    num_images=num_images, classes=None if class_name == ANY_STYLE else [class_name],
                    sampler=sampler, steps=steps, guidance=guidance if class_name != ANY_STYLE else 1.0, seed=seed,
                    return_trajectory=True, callback=on_step)
            except Exception as err:  # surfaced below as a visible error
                result["error"] = err
            frames.put(None)

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        while (item := frames.get()) is not None:
            index, frame = item
            progress((index + 1, steps), desc="denoising")
            yield frame, gr.skip(), gr.skip(), gr.skip(), gr.skip(), f"step {index + 1}/{steps}"
        thread.join()
        if "error" in result:
            raise gr.Error(str(result["error"]))
        out = result["out"]
        keep = np.unique(np.linspace(0, steps - 1, min(steps, MAX_FRAMES)).round().astype(int))  # bounded memory
        recorded = {"x_t": [out.trajectory.x_t[i] for i in keep], "x0_pred": [out.trajectory.x0_pred[i] for i in keep],
                    "final": out.images}
        all_frames = trajectory_frames(recorded["x_t"], recorded["x0_pred"], final=out.images, scale=SCALE)
        folder = fresh_output_dir()
        gif = save_gif(all_frames, folder / "denoising.gif")
        mp4 = save_mp4(all_frames, folder / "denoising.mp4", fps=max(4, min(30, len(all_frames) // 4)))
        slider = gr.Slider(minimum=0, maximum=len(all_frames) - 1, value=len(all_frames) - 1, step=1, interactive=True)
        yield (all_frames[-1], str(gif), str(mp4), slider, recorded,
               f"{num_images} images, {steps} steps in {out.seconds:.2f} s. Left: x_t, right: predicted x_0.")

    def scrub(self, index, recorded):
        """The frame at ``index`` of the last animation, rebuilt from the small recorded arrays."""
        if not recorded:
            raise gr.Error("run the animation first")
        count = len(recorded["x_t"]) + 1
        index = as_int(index, "frame", 0, count - 1)
        if index == count - 1:
            return trajectory_frames([], [], final=recorded["final"], scale=SCALE)[0]
        return trajectory_frames([recorded["x_t"][index]], [recorded["x0_pred"][index]], scale=SCALE)[0]

    # ---- tab 4: forward process -------------------------------------------------------------
    def forward_process(self, image_index, upload, t, schedule_kind):
        schedule_kind = as_choice(schedule_kind, "schedule", ["linear", "cosine"])
        t = as_int(t, "t", 0, self.T - 1)
        if upload is not None:
            x0 = read_upload(upload, self.pipe.model.image_size)
        else:
            if self.real is None:
                raise gr.Error("upload an image: this model has no shipped training images")
            image_index = as_int(image_index, "image index", 0, len(self.real) - 1)
            x0 = self.real.images[image_index]
        schedule = NoiseSchedule(schedule_kind, self.T)
        noisy = noisy_image(schedule, x0, t)
        curve = schedule_curves(schedule, t)
        abar = schedule.alphas_cumprod[t].item()
        text = (f"t = {t}: ᾱ_t = {abar:.4f}, x_t = {math.sqrt(abar):.3f}·x_0 + {math.sqrt(1 - abar):.3f}·ε, "
                f"SNR = {abar / (1 - abar):.3g}")
        return upscale(x0[None], 8)[0], upscale(noisy[None], 8)[0], curve, text

    # ---- tab 5: compare samplers ------------------------------------------------------------
    def compare(self, class_name, guidance, num_images, seed, progress=gr.Progress()):
        class_name = as_choice(class_name, "class", [ANY_STYLE, *self.pipe.labels])
        guidance = as_float(guidance, "guidance", 0.0, MAX_GUIDANCE)
        num_images = as_int(num_images, "number of images", 1, MAX_IMAGE_STEPS // self.T)
        seed = as_int(seed, "seed", 0, MAX_SEED)
        outputs = []
        for label, sampler, steps in self.comparison:
            out = self.run(progress, f"{label}, {steps} steps", num_images=num_images,
                           classes=None if class_name == ANY_STYLE else [class_name], sampler=sampler, steps=steps,
                           guidance=guidance if class_name != ANY_STYLE else 1.0, seed=seed)
            outputs += [self.gallery(out.images), f"**{label}, {steps} steps**: {out.seconds:.2f} s"]
        return tuple(outputs)

    # ---- tab 6: about -----------------------------------------------------------------------
    def about(self) -> str:
        card_path = self.pipe.folder / "README.md" if self.pipe.folder else None
        card = card_path.read_text() if card_path and card_path.exists() else "(no model card found)"
        if card.startswith("---"):
            card = card.split("---", 2)[2]  # drop the YAML front matter
        return (f"{self.source_note}\n\nDevice: `{self.pipe.device}`, network precision: `{self.pipe.dtype}`, "
                f"labels: {', '.join(self.pipe.labels)}; styles: {', '.join(self.pipe.styles) or 'none'}.\n\n---\n{card}")


def read_upload(upload, size: int) -> np.ndarray:
    """An uploaded picture (gradio's file payload, already in its upload cache) as a uint8 size x size
    RGB image on white."""
    from PIL import Image, UnidentifiedImageError

    path = upload.get("path") if isinstance(upload, dict) else None
    if not path:
        raise gr.Error("upload must be an image file")
    try:
        with Image.open(path) as image:
            rgba = image.convert("RGBA")
    except (OSError, UnidentifiedImageError):
        raise gr.Error("upload must be an image file (PNG, JPEG, ...); this one could not be read")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(white, rgba).convert("RGB").resize((size, size), Image.LANCZOS))


def fresh_output_dir(keep_seconds: float = 3600.0) -> Path:
    """A new folder for one request's files, under one app folder whose hour-old entries are removed."""
    root = Path(tempfile.gettempdir()) / "diffusion_app"
    root.mkdir(exist_ok=True)
    for old in root.iterdir():
        if time.time() - old.stat().st_mtime > keep_seconds:
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(dir=root))


def noisy_image(schedule: NoiseSchedule, x0_uint8: np.ndarray, t: int, seed: int = 0) -> np.ndarray:
    """q(x_t | x_0) for one uint8 image with fixed noise, back to uint8 (values outside [-1, 1] clipped)."""
    import torch

    x0 = torch.from_numpy(x0_uint8).permute(2, 0, 1)[None].float() / 127.5 - 1
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    return to_uint8(schedule.add_noise(x0, noise, torch.tensor([t])))[0]


def schedule_curves(schedule: NoiseSchedule, t: int) -> pd.DataFrame:
    """ᾱ_t and log10 SNR over t for a line plot, with a vertical marker series at the current t."""
    ts = np.arange(schedule.num_timesteps)
    abar = schedule.alphas_cumprod.numpy()
    log_snr = np.log10(schedule.snr().numpy()) / 10  # scaled to share the axis with ᾱ
    frames = [pd.DataFrame({"t": ts, "value": abar, "curve": "ᾱ_t"}),
              pd.DataFrame({"t": ts, "value": log_snr, "curve": "log10(SNR) / 10"}),
              pd.DataFrame({"t": [t, t], "value": [-0.8, 1.0], "curve": "current t"})]
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------------------------------------
# Layout: one small function per tab.
# ---------------------------------------------------------------------------------------------
def sampler_controls(default_steps: int, T: int):
    sampler = gr.Dropdown(SAMPLER_CHOICES, value=DEFAULT_SAMPLER, label="sampler")
    steps = gr.Slider(1, T, value=default_steps, step=1, label="steps")
    return sampler, steps


def seed_controls():
    with gr.Row():
        seed = gr.Number(value=0, precision=0, minimum=0, maximum=MAX_SEED, label="seed")
        dice = gr.Button("🎲 random seed", size="sm")
    dice.click(lambda: random.randint(0, MAX_SEED), None, seed, api_name="random_seed")
    return seed


def run_controls(app: App, default_steps: int, max_images: int, default_images: int, button_label: str):
    """Sampler, steps, number of images, seed and the run button: the controls every sampling tab has."""
    sampler, steps = sampler_controls(default_steps, app.T)
    num = gr.Slider(1, max_images, value=default_images, step=1, label="number of images")
    seed = seed_controls()
    return sampler, steps, num, seed, gr.Button(button_label, variant="primary")


def sprite_gallery(label: str):
    return gr.Gallery(label=label, columns=6, height="auto", format="png", object_fit="contain", preview=False)


def generate_tab(app: App):
    with gr.Tab("Generate"):
        gr.Markdown("Unconditional samples: the model draws whatever it likes, starting from pure noise.")
        with gr.Row():
            with gr.Column(scale=1):
                sampler, steps, num, seed, button = run_controls(app, 20, MAX_IMAGES, 16, "Generate")
            with gr.Column(scale=2):
                gallery = sprite_gallery("samples")
                info = gr.Markdown()
        button.click(app.generate, [sampler, steps, num, seed], [gallery, info], api_name="generate", preprocess=False)


def context_tab(app: App):
    with gr.Tab("Context"):
        gr.Markdown("Mix classes with the sliders (e.g. 0.6 food + 0.4 animal) and steer with "
                    "classifier-free guidance: 0 ignores the context, 1 is plain conditional, more pushes harder.")
        with gr.Row():
            with gr.Column(scale=1):
                # the first class starts at 1, so Generate draws pictures from the tab's default state
                weights = [gr.Slider(0, 1, value=float(i == 0), step=0.05, label=name)
                           for i, name in enumerate(app.pipe.labels)]
                style = gr.Radio([ANY_STYLE, *app.pipe.styles], value=ANY_STYLE, label="style")
                guidance = gr.Slider(0, MAX_GUIDANCE, value=DEFAULT_GUIDANCE, step=0.25, label="guidance")
                sampler, steps, num, seed, button = run_controls(app, 20, MAX_IMAGES, 16, "Generate")
            with gr.Column(scale=2):
                gallery = sprite_gallery("samples")
                info = gr.Markdown()
        inputs = [*weights, style, guidance, sampler, steps, num, seed]
        button.click(app.generate_context, inputs, [gallery, info], api_name="generate_context", preprocess=False)
        labels = app.pipe.labels

        def preset(mix: dict, style_value=ANY_STYLE, w=DEFAULT_GUIDANCE):
            return [mix.get(name, 0.0) for name in labels] + [style_value, w, DEFAULT_SAMPLER, 20, 16, 0]

        examples, names = [preset({name: 1.0}) for name in labels], list(labels)
        for a, b in (("food_drink", "animal_nature"), ("face", "animal_nature"), ("travel_places", "flag")):
            if a in labels and b in labels:
                examples.append(preset({a: 0.6, b: 0.4}))
                names.append(f"0.6 {a} + 0.4 {b}")
        for style_name in app.pipe.styles:
            examples.append(preset({labels[0]: 1.0}, style_name))
            names.append(f"{labels[0]}, {style_name} style")
        gr.Examples(examples, inputs, label="presets (click one, then Generate)", example_labels=names,
                    cache_examples=False)


def animation_tab(app: App):
    with gr.Tab("Denoising animation"):
        gr.Markdown("Watch the noise turn into pictures. Left: the noisy x_t at each step; right: the model's "
                    "current guess of the clean image x_0.")
        with gr.Row():
            with gr.Column(scale=1):
                class_name = gr.Dropdown([ANY_STYLE, *app.pipe.labels], value=app.pipe.labels[0], label="class")
                guidance = gr.Slider(0, MAX_GUIDANCE, value=DEFAULT_GUIDANCE, step=0.25, label="guidance")
                sampler, steps, num, seed, button = run_controls(app, 30, MAX_ANIMATION_IMAGES, 4, "Animate")
            with gr.Column(scale=2):
                live = gr.Image(label="x_t (left) and predicted x_0 (right)", type="numpy", format="png")
                info = gr.Markdown()
                gif = gr.Image(label="animated GIF", type="filepath")
                mp4 = gr.File(label="MP4 download")
                frame = gr.Slider(0, 1, value=0, step=1, label="scrub through the steps", interactive=True)
        recorded = gr.State(None)  # the sampled trajectory (a bounded number of steps), for the scrubber
        button.click(app.animate, [class_name, sampler, steps, guidance, num, seed],
                     [live, gif, mp4, frame, recorded, info], api_name="animate", preprocess=False)
        frame.change(app.scrub, [frame, recorded], live, api_name="scrub", show_progress="hidden", preprocess=False)


def forward_tab(app: App):
    with gr.Tab("Forward process"):
        gr.Markdown("The forward process q(x_t | x_0) adds Gaussian noise: x_t = √ᾱ_t·x_0 + √(1-ᾱ_t)·ε. "
                    "Pick a training image (or upload one) and slide t.")
        count = len(app.real) - 1 if app.real is not None else 0
        with gr.Row():
            with gr.Column(scale=1):
                index = gr.Slider(0, count, value=min(100, count), step=1, label="training image")
                upload = gr.Image(label="or upload an image", type="filepath", sources=["upload"])
                t = gr.Slider(0, app.T - 1, value=250, step=1, label="t")
                schedule = gr.Radio(["cosine", "linear"], value=app.pipe.schedule.kind, label="schedule")
                button = gr.Button("Show", variant="primary")
            with gr.Column(scale=2):
                with gr.Row():
                    clean = gr.Image(label="x_0", format="png")
                    noisy = gr.Image(label="x_t", format="png")
                info = gr.Markdown()
                plot = gr.LinePlot(x="t", y="value", color="curve", label="ᾱ_t and SNR", height=260)
        inputs = [index, upload, t, schedule]
        outputs = [clean, noisy, plot, info]
        button.click(app.forward_process, inputs, outputs, api_name="forward_process", preprocess=False)
        for slider in (index, t):
            slider.release(app.forward_process, inputs, outputs, api_name=False, preprocess=False)
        schedule.change(app.forward_process, inputs, outputs, api_name=False, preprocess=False)


def compare_tab(app: App):
    with gr.Tab("Compare samplers"):
        gr.Markdown("The same seed and context through each sampler: "
                    + ", ".join(f"{label} ({steps} steps)" for label, _, steps in app.comparison) + ".")
        with gr.Row():
            class_name = gr.Dropdown([ANY_STYLE, *app.pipe.labels], value=app.pipe.labels[0], label="class")
            guidance = gr.Slider(0, MAX_GUIDANCE, value=DEFAULT_GUIDANCE, step=0.25, label="guidance")
            num = gr.Slider(1, MAX_IMAGE_STEPS // app.T, value=2, step=1, label="number of images")
            seed = seed_controls()
        button = gr.Button("Compare", variant="primary")
        outputs = []
        with gr.Row():
            for name, _, _ in app.comparison:
                with gr.Column(min_width=160):  # four side by side, even on a laptop
                    outputs.append(sprite_gallery(name))
                    outputs.append(gr.Markdown())
        button.click(app.compare, [class_name, guidance, num, seed], outputs, api_name="compare", preprocess=False)


def about_tab(app: App):
    with gr.Tab("About"):
        gr.Markdown(app.about())


def build_app(pipe: DiffusionPipeline, source_note: str) -> gr.Blocks:
    app = App(pipe, source_note)
    with gr.Blocks(title="Watch a diffusion model draw") as demo:
        gr.Markdown("# Watch a diffusion model draw\nA small U-Net turns noise into 32x32 emoji sprites. "
                    "Built on `diffusion_core`, for learners of *How Diffusion Models Work*.")
        if source_note.startswith("⚠️"):
            gr.Markdown(source_note)
        generate_tab(app)
        context_tab(app)
        animation_tab(app)
        forward_tab(app)
        compare_tab(app)
        about_tab(app)
    demo.queue(default_concurrency_limit=1, max_size=32)
    return demo


def main() -> None:
    parser = argparse.ArgumentParser(description="Watch a diffusion model draw (Gradio app).")
    parser.add_argument("--model", default=os.environ.get("HF_MODEL_ID"), help="Hub repo id or checkpoint folder")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    args = parser.parse_args()
    pipe, note = load_pipeline(args.model)
    print(note.replace("`", ""), f"Device {pipe.device}, precision {pipe.dtype}.", flush=True)
    build_app(pipe, note).launch(server_name=args.host, server_port=args.port, css=CSS, show_error=True)


CSS = ".gallery img, img { image-rendering: pixelated; }"

if __name__ == "__main__":
    main()
