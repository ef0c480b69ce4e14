"""Tab "Train": train a small model here and watch it learn (the loss, and one fixed noise turning into
sprites), then draw from it and download it. The training is ``diffusion_core.train.train``, the same
function the CLI runs; this tab only chooses its config and data, and listens to its ``on_step``.

One training at a time for the whole server, each at most $TRAIN_MAX_MINUTES minutes; others wait in a
line and see their place. A training is a job of the app's scheduler (ui/scheduler.py), which answers the
other tabs' requests that wait in its line between two training steps.
"""
from __future__ import annotations

import os
import queue
import threading
import time
import zipfile
from collections import OrderedDict, deque
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd

from diffusion_core.data import EMOJI_CLASSES, EMOJI_STYLES, load_emoji, select_emoji
from diffusion_core.pipeline import MAX_IMAGES, DiffusionPipeline
from diffusion_core.schedule import NoiseSchedule
from diffusion_core.train import GRID_PER_CLASS, TrainConfig, draw_grid, train
from diffusion_core.uploads import load_picture_zip
from diffusion_core.viz import image_grid

from .common import LATEX, MAX_GUIDANCE, MAX_SEED, App, Work, as_choice, as_float, as_int, as_names, explanation, \
    fresh_output_dir, gallery_of, output_root, sprite_gallery, waiting_text

TRAIN_MAX_MINUTES = float(os.environ.get("TRAIN_MAX_MINUTES", "10"))  # the server's cap on one training's length
MAX_TRAIN_STEPS = 20_000
SERVED_PER_STEP = 8              # sampling requests answered between two training steps while a line waits
MAX_WAITING = 8                  # trainings that may wait in line (each holds a server thread while it waits)
EMOJI, UPLOAD = "emoji sprites", "my pictures (zip)"
DEFAULT_CLASSES = ["face", "flag"]  # learn fastest (faces and flags come out recognisable first: README.md, "Honest limits")
GRID_LABEL = "samples from one fixed noise (the EMA model)"
GRID_SAMPLING = dict(sampler="ddim", steps=20, guidance=3.0)
# Small U-Nets for two CPU cores: "small" is configs/emoji32.json's family at 3 levels (at 16 px its default
# run made 331 steps in 2 minutes, about 425 images/s beside a browser, and drew recognisable faces:
# benchmarks/results/app_load.md), "tiny" half as wide, for a first look in under a minute.
PRESETS = {
    "small": dict(base_channels=32, channel_mults=[1, 2, 2], num_heads=4, num_groups=16, batch_size=128, lr=1e-3,
                  ema_decay=0.99, warmup_steps=50),
    "tiny": dict(base_channels=16, channel_mults=[1, 2], num_heads=2, num_groups=8, batch_size=64, lr=2e-3,
                 ema_decay=0.99, warmup_steps=20),
}
DEFAULTS = dict(source=EMOJI, classes=DEFAULT_CLASSES, styles=list(EMOJI_STYLES), image_size=16, preset="small",
                steps=700, minutes=2.0, grid_every=50, seed=0)

EXPLANATION = r"""
**What it learns.** Each step takes a batch of training pictures $x_0$, a random noise level $t$ for each and
fresh noise $\epsilon$, makes the noisy $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon$ and asks
the network for the noise (DDPM, Ho et al. 2020, eq. 14):
$$L = \mathbb{E}_{x_0, t, \epsilon}\,\big\| \epsilon - \epsilon_\theta(x_t, t, c) \big\|^2$$
The curve plots $L$ of every step. Now and then the context $c$ is dropped to "nothing", so the same network
also learns the unconditional prediction that classifier-free guidance needs.

**Why the curve is noisy.** Each step's loss is measured on a different batch at different noise levels, and
the levels are not equally hard: at large $t$ the noise is nearly all of $x_t$ and easy to name, at small $t$ it
is a faint film on the picture and hard. A batch that drew more small $t$ scores worse without the model
being any worse. The darker line is the mean of the last steps; it falls slowly long after the pictures
stop changing much, because $L$ never reaches 0: at small $t$ no network can tell the noise from the picture.

**What the grid shows.** Every few steps the model's exponential moving average (EMA) of its weights, the
one that is saved, draws the same starting noise with the same sampler, {per} per class (fewer when there are
more than {fit} classes). The noise never
changes, so everything that changes in the grid is what the network learned since the last one: first
blobs of the right colour, then outlines, then faces and flags.

**The same `train` as the command line.** The button runs `diffusion_core.train.train(config)`, the function
behind `python -m diffusion_core train --config ...`; the tab only builds the config (shown under the
download) and listens to each step. Stop ends it at the next step and keeps what was learned: the state and
the exported model are written as at the end of a full run.
""".replace("{per}", str(GRID_PER_CLASS)).replace("{fit}", str(MAX_IMAGES // GRID_PER_CLASS))


class TrainingLine:
    """One training at a time for the whole server; the others wait in arrival order."""

    def __init__(self):
        self._cond = threading.Condition()
        self._line: deque[object] = deque()

    def join(self, job) -> None:
        with self._cond:
            if len(self._line) > MAX_WAITING:
                raise gr.Error(f"{len(self._line)} trainings are already waiting; try again later")
            self._line.append(job)

    def place(self, job) -> int:
        """1 when it is the job's turn, 2 for the next in line, ..."""
        with self._cond:
            return self._line.index(job) + 1

    def wait(self, job, seconds: float) -> int:
        with self._cond:
            self._cond.wait_for(lambda: self._line[0] is job, timeout=seconds)
            return self._line.index(job) + 1

    def leave(self, job) -> None:
        with self._cond:
            if job in self._line:
                self._line.remove(job)
            self._cond.notify_all()


LINE = TrainingLine()
JOBS: dict[str, "TrainingJob"] = {}  # the training each browser session has running or waiting (for Stop)


class TrainingJob:
    """One person's training: its stop switch and the events its steps report to the page."""

    def __init__(self, cfg: TrainConfig, data, grid_every: int, minutes: float):
        self.cfg, self.data, self.grid_every, self.minutes = cfg, data, grid_every, minutes
        self.stop = threading.Event()
        self.events: queue.Queue = queue.Queue()
        self.started = False


def run_job(app: App, job: TrainingJob) -> dict:
    """On the torch thread: ``train`` with a hook that reports each step, draws the grid, answers the
    sampling requests that arrived, and stops on request or at the time cap."""
    cfg, data = job.cfg, job.data
    viewer: dict = {}

    def on_step(progress) -> bool:
        job.events.put(("step", progress))
        if progress.step == 1 or progress.step % job.grid_every == 0:
            if "pipe" not in viewer:  # the live EMA model, drawn from without a copy
                viewer["pipe"] = DiffusionPipeline(progress.ema, NoiseSchedule(cfg.schedule, cfg.num_timesteps),
                                                   list(data.class_names), list(data.style_names), cfg.prediction_type,
                                                   device="cpu")
            images, per_class = draw_grid(viewer["pipe"], data.class_names, seed=cfg.seed, **{
                **GRID_SAMPLING, "guidance": GRID_SAMPLING["guidance"] if data.class_names else 1.0})
            job.events.put(("grid", progress.step, images, per_class))
        # other people's requests, between two steps: up to SERVED_PER_STEP of those waiting in the scheduler's
        # line, so a class pressing Generate is answered without stopping the training
        app.scheduler.serve_waiting(at_most=SERVED_PER_STEP)
        return job.stop.is_set() or progress.elapsed_s > job.minutes * 60

    try:
        job.started = True
        if job.stop.is_set():  # stopped (or its page closed) before its turn came
            return {"step": 0, "folder": None}
        summary = train(cfg, data=data, on_step=on_step, show_progress=False)
        return {**summary, "folder": cfg.export_dir}
    finally:
        LINE.leave(job)


def zip_folder(folder: Path, target: Path) -> Path:
    """The exported checkpoint's files at the zip's top level (unzip, then from_pretrained the folder)."""
    tmp = target.with_name(f".{target.name}.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(folder).as_posix())
    os.replace(tmp, target)
    return target


def loss_frame(steps: list[int], losses: list[float], window: int = 20, max_points: int = 400) -> pd.DataFrame:
    """Each step's loss and its running mean over ``window`` steps, thinned to at most max_points per line."""
    if not steps:
        return pd.DataFrame({"step": [], "loss": [], "series": []})
    loss = pd.Series(losses)
    mean = loss.rolling(window, min_periods=1).mean()
    keep = np.unique(np.linspace(0, len(steps) - 1, min(len(steps), max_points)).round().astype(int))
    step = np.asarray(steps)[keep]
    return pd.DataFrame({"step": np.concatenate([step, step]),
                         "loss": np.concatenate([loss.to_numpy()[keep], mean.to_numpy()[keep]]),
                         "series": ["each step"] * len(keep) + [f"mean of {window}"] * len(keep)})


def train_config(preset: str, image_size: int, steps: int, seed: int, run_dir: Path, data_name: str) -> TrainConfig:
    values = PRESETS[preset]
    levels = len(values["channel_mults"])
    return TrainConfig(data=data_name, image_size=image_size, attention_resolutions=[image_size // 2 ** (levels - 1)],
                       max_steps=steps, seed=seed, checkpoint_every=steps, log_every=10,
                       out_dir=str(run_dir / "run"), export_dir=str(run_dir / "model"),
                       default_sampling={"sampler": "dpmpp_2m", "steps": 20, "guidance": 3.0}, **values)


def build(app: App) -> None:
    models: OrderedDict[str, DiffusionPipeline] = OrderedDict()  # trained models drawn from, newest last

    def read_data(source, classes, styles, image_size, upload):
        if source == EMOJI:
            try:
                return select_emoji(load_emoji(image_size=image_size), classes or [], styles or []), "emoji"
            except ValueError as err:
                raise gr.Error(str(err))
        if not upload:
            raise gr.Error("upload a zip of pictures (one folder per class, or all side by side), or train on the emoji")
        try:
            return load_picture_zip(upload, image_size=image_size), "upload"
        except ValueError as err:
            raise gr.Error(f"upload: {err}")

    def train_model(source=EMOJI, classes=DEFAULT_CLASSES, styles=EMOJI_STYLES, image_size="16", upload=None,
                    preset="small", steps=DEFAULTS["steps"], minutes=DEFAULTS["minutes"], grid_every=DEFAULTS["grid_every"],
                    seed=0, request: gr.Request = None):
        """The defaults are the controls' (``upload=None`` tells API clients they may leave the upload out)."""
        classes = as_names(classes, "emoji classes", list(EMOJI_CLASSES))
        styles = as_names(styles, "emoji styles", list(EMOJI_STYLES))
        source = as_choice(source, "data", [EMOJI, UPLOAD])
        image_size = int(as_choice(str(image_size), "image size", ["16", "32"]))
        preset = as_choice(preset, "model", list(PRESETS))
        steps = as_int(steps, "training steps", 1, MAX_TRAIN_STEPS)
        minutes = as_float(minutes, "minutes", 0.05, TRAIN_MAX_MINUTES)
        grid_every = as_int(grid_every, "grid every", 1, MAX_TRAIN_STEPS)
        seed = as_int(seed, "seed", 0, MAX_SEED)
        data, data_name = read_data(source, classes, styles, image_size, upload)
        run_dir = fresh_output_dir()
        cfg = train_config(preset, image_size, steps, seed, run_dir, data_name)
        job = TrainingJob(cfg, data, grid_every, minutes)
        session = getattr(request, "session_hash", None) or f"job-{id(job)}"
        if session in JOBS:
            raise gr.Error("this page already has a training running or waiting; stop it first")
        LINE.join(job)
        JOBS[session] = job
        try:
            yield from wait_in_line(job)
            if job.stop.is_set():
                yield ("Stopped before it started.", *(gr.skip(),) * 6)
                return
            future = app.scheduler.submit(Work("train", what="a training"), run_job, app, job).future
            yield from follow(job, future, steps, minutes)
            summary = future.result()
        except ValueError as err:
            raise gr.Error(f"training failed: {err}")
        finally:
            job.stop.set()  # the page closed or the run ended: a running training stops at its next step
            JOBS.pop(session, None)
            if not job.started:
                LINE.leave(job)
        if summary["folder"] is None:
            yield ("Stopped before it started.", *(gr.skip(),) * 6)
            return
        folder = Path(summary["folder"])
        archive = zip_folder(folder, run_dir / "trained_model.zip")
        stopped = " (stopped early; what it learned is kept)" if summary["step"] < steps else ""
        note = (f"✅ Trained {summary['step']} steps on {len(data):,} pictures{stopped}. Draw from it below, or "
                f"download it: unzip, then `DiffusionPipeline.from_pretrained(\"folder\")`.\n\n"
                f"<details><summary>the config</summary>\n\n```json\n{cfg.to_json()}\n```\n</details>")
        labels = list(data.class_names)
        yield (note, gr.skip(), gr.skip(), str(archive), str(folder),
               gr.update(choices=labels, value=labels, visible=bool(labels)), gr.skip())

    def wait_in_line(job):
        while (place := LINE.wait(job, 1.0)) > 1 and not job.stop.is_set():
            yield (f"⏳ One training at a time on this server: you are number **{place}** in line "
                   f"({place - 1} ahead, each at most {job.minutes:g} minutes).", *(gr.skip(),) * 6)

    def follow(job, future, steps, minutes):
        step_list, losses, status, last_yield = [], [], "starting...", 0.0
        grid = None
        while True:
            done = future.done()
            changed = False
            while True:
                try:
                    kind, *payload = job.events.get_nowait()
                except queue.Empty:
                    break
                changed = True
                if kind == "step":
                    p = payload[0]
                    step_list.append(p.step)
                    losses.append(p.loss)
                    rate = p.step / max(p.elapsed_s, 1e-9)  # steps per second, this run
                    left = min((steps - p.step) / max(rate, 1e-9), minutes * 60 - p.elapsed_s)
                    status = (f"Step **{p.step} / {steps}**, {p.images_per_s:,.0f} images/s, about "
                              f"{max(left, 0):,.0f} s left. Loss (mean of the last 20 steps): "
                              f"**{np.mean(losses[-20:]):.4f}**")
                else:
                    step, images, per_class = payload
                    grid = gr.update(value=image_grid(images, nrow=per_class, scale=6),
                                     label=f"{GRID_LABEL}: step {step}")
            if changed and (done or time.monotonic() - last_yield > 0.5):
                last_yield = time.monotonic()
                yield (status, loss_frame(step_list, losses), grid if grid else gr.skip(), gr.skip(), gr.skip(),
                       gr.skip(), live_loss(losses))
            if done:
                return
            time.sleep(0.2)

    def live_loss(losses) -> str:
        if not losses:
            return ""
        return (rf"Now: $L \approx {np.mean(losses[-20:]):.4f}$ (the last 20 steps), first step "
                rf"${losses[0]:.3f}$. A network that predicted $\epsilon = 0$ would score $1$.")

    def stop_training(request: gr.Request = None):
        job = JOBS.get(getattr(request, "session_hash", None))
        if job is None:
            return gr.skip()
        job.stop.set()
        return "Stopping at the next step; what the model learned so far is being saved..."

    def draw(folder, classes, steps, guidance, num_images, seed, progress=gr.Progress()):
        if not folder:
            raise gr.Error("train a model first (the Train button above)")
        if not isinstance(folder, str) or not Path(folder).resolve().is_relative_to(output_root().resolve()):
            raise gr.Error("Draw takes only a model this tab trained (train one with the Train button above)")
        steps = as_int(steps, "steps", 1, 1000)
        guidance = as_float(guidance, "guidance", 0.0, MAX_GUIDANCE)
        num_images = as_int(num_images, "number of images", 1, 64)
        seed = as_int(seed, "seed", 0, MAX_SEED)
        classes = as_names(classes, "classes", None, most=MAX_IMAGES)  # the model's own names: checked once it is loaded
        branches = 2 if classes and guidance not in (0.0, 1.0) else 1  # classifier-free guidance: two rows

        def work():
            if folder not in models:
                models[folder] = DiffusionPipeline.from_pretrained(folder)
                while len(models) > 4:
                    models.popitem(last=False)
            pipe = models[folder]
            for name in classes or []:
                as_choice(name, "class", pipe.labels)
            wanted = list(classes or []) or None
            return pipe.generate(num_images=num_images, classes=wanted, sampler="dpmpp_2m", steps=steps,
                                 guidance=guidance if wanted else 1.0, seed=seed, callback=tick)

        def tick(step):
            app.scheduler.checkpoint()
            progress((step.index + 1, steps), desc="sampling")

        try:
            out = app.scheduler.run(Work("trained", num_images, steps, branches, what="this drawing"), work,
                                    on_wait=waiting_text(progress))
        except ValueError as err:
            raise gr.Error(str(err))
        return gallery_of(out.images), f"{num_images} images, {', '.join(classes or []) or 'unconditional'}, " \
                                       f"{steps} steps, guidance {guidance:g}: {out.seconds:.2f} s"

    with gr.Tab("Train"):
        gr.Markdown("Train a small diffusion model here and watch it learn: the loss falls, and the same noise "
                    "turns, grid after grid, from mush into sprites. One training at a time on this server "
                    f"(each at most {TRAIN_MAX_MINUTES:g} minutes).")
        with gr.Row():
            with gr.Column(scale=1):
                source = gr.Radio([EMOJI, UPLOAD], value=DEFAULTS["source"], label="data")
                classes = gr.CheckboxGroup(list(EMOJI_CLASSES), value=DEFAULTS["classes"], label="emoji classes")
                styles = gr.CheckboxGroup(list(EMOJI_STYLES), value=DEFAULTS["styles"], label="emoji styles")
                upload = gr.File(label="or a zip of pictures: one folder per class, or all side by side "
                                 "(unconditional)", file_types=[".zip"], type="filepath")
                image_size = gr.Radio(["16", "32"], value=str(DEFAULTS["image_size"]), label="image size (px)")
                preset = gr.Radio([("small (about 2 min to faces and flags at 16 px)", "small"),
                                   ("tiny (a first look)", "tiny")], value=DEFAULTS["preset"], label="model")
                with gr.Row():
                    steps = gr.Number(value=DEFAULTS["steps"], precision=0, minimum=1, maximum=MAX_TRAIN_STEPS,
                                      label="training steps (at most)")
                    minutes = gr.Number(value=DEFAULTS["minutes"], minimum=0.05, maximum=TRAIN_MAX_MINUTES,
                                        label=f"minutes (at most; server cap {TRAIN_MAX_MINUTES:g})")
                with gr.Row():
                    grid_every = gr.Number(value=DEFAULTS["grid_every"], precision=0, minimum=1, label="grid every (steps)")
                    seed = gr.Number(value=DEFAULTS["seed"], precision=0, minimum=0, maximum=MAX_SEED, label="seed")
                with gr.Row():
                    button = gr.Button("Train", variant="primary")
                    stop = gr.Button("Stop (keep what it learned)", variant="stop")
            with gr.Column(scale=2):
                status = gr.Markdown("Press **Train**: the default run learns faces and flags at 16 px.", elem_id="train-status")
                plot = gr.LinePlot(x="step", y="loss", color="series", x_title="training step", y_title="loss",
                                   label="training loss", height=260, elem_id="train-loss")
                grid = gr.Image(label=GRID_LABEL, type="numpy", format="png",
                                interactive=False, elem_id="train-grid")
                download = gr.File(label="the trained model (Hub layout, zip)", interactive=False)
                explanation(EXPLANATION)
                loss_now = gr.Markdown(latex_delimiters=LATEX)
        folder = gr.State("")
        with gr.Accordion("Draw from the trained model", open=True):
            with gr.Row():
                with gr.Column(scale=1):
                    draw_classes = gr.CheckboxGroup([], value=[], label="classes (none: unconditional)")
                    draw_steps = gr.Slider(1, 100, value=20, step=1, label="steps (DPM-Solver++ 2M)")
                    draw_guidance = gr.Slider(0, MAX_GUIDANCE, value=3.0, step=0.25, label="guidance w")
                    draw_num = gr.Slider(1, 64, value=16, step=1, label="number of images")
                    draw_seed = gr.Number(value=0, precision=0, minimum=0, maximum=MAX_SEED, label="seed")
                    draw_button = gr.Button("Draw", variant="primary")
                with gr.Column(scale=2):
                    gallery = sprite_gallery("drawn by the trained model")
                    draw_info = gr.Markdown()
        inputs = [source, classes, styles, image_size, upload, preset, steps, minutes, grid_every, seed]
        outputs = [status, plot, grid, download, folder, draw_classes, loss_now]
        button.click(train_model, inputs, outputs, api_name="train", concurrency_id="train",
                             concurrency_limit=MAX_WAITING + 1, show_progress="minimal")
        stop.click(stop_training, None, status, queue=False, api_name="train_stop")
        draw_button.click(draw, [folder, draw_classes, draw_steps, draw_guidance, draw_num, draw_seed],
                          [gallery, draw_info], api_name="train_draw")
