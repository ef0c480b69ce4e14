"""What every tab shares: input checks (the API can be called with anything), the pipeline the handlers
call, and the controls most tabs have (sampler, steps, seed, a gallery, an explanation panel)."""
from __future__ import annotations

import math
import queue
import random
import shutil
import tempfile
import time
from pathlib import Path

import gradio as gr
import numpy as np

from diffusion_core.data import load_emoji
from diffusion_core.pipeline import MAX_IMAGES, DiffusionPipeline, to_uint8
from diffusion_core.viz import trajectory_frames, upscale

from .scheduler import MAX_WORK, Work, check_work, scheduler

SAMPLER_CHOICES = [("DPM-Solver++ 2M SDE (stochastic)", "dpmpp_2m_sde"),
                   ("DPM-Solver++ 2M (deterministic)", "dpmpp_2m"), ("DDIM", "ddim"), ("DDPM", "ddpm"),
                   ("Consistency (for the fast, distilled model)", "consistency")]
FULL, FAST = "full", "fast"    # the model choice: the checkpoint, or its distilled few-step student
MAX_IMAGE_STEPS = MAX_WORK // 2  # images x steps of the heaviest (guided) request
MAX_GUIDANCE = 10.0
MAX_SEED = 2**31 - 1
MAX_TEXT = 200                 # characters of one prompt or name (a text box's max_length is only the browser's)
ANY = "any"
SCALE = 4                      # sprites are shown 4x larger, nearest-neighbour, so pixels stay crisp
LATEX = [{"left": "$$", "right": "$$", "display": True}, {"left": "$", "right": "$", "display": False}]


# ---------------------------------------------------------------------------------------------
# Checks: each raises gr.Error (a visible message) naming the field.
# ---------------------------------------------------------------------------------------------
def as_int(value, name: str, low: int, high: int) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise gr.Error(f"{name} must be a whole number in {low}..{high}, got {shown(value)}")
    if not math.isfinite(number) or number != int(number) or not low <= number <= high:
        raise gr.Error(f"{name} must be a whole number in {low}..{high}, got {shown(value)}")
    return int(number)


def as_float(value, name: str, low: float, high: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise gr.Error(f"{name} must be a number in {low:g}..{high:g}, got {shown(value)}")
    if not math.isfinite(number) or not low <= number <= high:
        raise gr.Error(f"{name} must be a number in {low:g}..{high:g}, got {shown(value)}")
    return number


def as_choice(value, name: str, choices: list[str]) -> str:
    if value not in choices:
        raise gr.Error(f"{name} must be one of {choices}, got {shown(value)}")
    return value


def as_text(value, name: str, max_chars: int = MAX_TEXT) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > max_chars:
        raise gr.Error(f"{name} must be text of at most {max_chars:,} characters"
                       + (f", got {len(value):,}" if isinstance(value, str) else ""))
    return value.strip()


def as_names(value, name: str, choices: list[str] | None, most: int | None = None) -> list[str]:
    """A list of at most ``most`` names (by default as many as ``choices``), each one of ``choices`` (None:
    any text of at most MAX_TEXT characters, checked later); None is the empty list."""
    if value is None:
        return []
    most = len(choices) if most is None else most
    if not isinstance(value, (list, tuple)) or len(value) > most or not all(
            isinstance(v, str) and (v in choices if choices is not None else len(v) <= MAX_TEXT) for v in value):
        raise gr.Error(f"{name} must be a list of names" + (f" from {choices}" if choices is not None else "")
                       + f" (at most {most}), got {shown(value)}")
    return list(value)


def shown(value, most: int = 60) -> str:
    """``value`` as an error message shows it: its repr, cut to about ``most`` characters (a message never
    echoes a 10 MB input back)."""
    if isinstance(value, dict) or isinstance(value, (list, tuple)) and len(value) > 8:
        return f"a {type(value).__name__} of {len(value):,} items"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(shown(v, 20) for v in value) + "]"
    if isinstance(value, str) and len(value) > most:
        return f"{value[:most]!r}... ({len(value):,} characters)"
    text = repr(value)
    return text if len(text) <= most else text[:most] + "..."


class App:
    """The pipeline and what the handlers share: checks of the common controls and a sampling call
    whose errors become visible messages."""

    def __init__(self, pipe: DiffusionPipeline, source_note: str, fast: DiffusionPipeline | None = None):
        self.pipe, self.source_note = pipe, source_note
        self.fast = fast  # the distilled student of pipe (few steps, guidance as an input), if there is one
        self.T = pipe.schedule.num_timesteps
        self.samplers = [key for _, key in SAMPLER_CHOICES]
        self.sampling = dict(pipe.default_sampling)  # the checkpoint's measured default (config.json)
        self.has_text = pipe.vocabulary is not None
        self.real = load_emoji(split="all") if pipe.model.image_size == 32 else None
        self.scheduler = scheduler()  # the one line and thread of all torch work (ui/scheduler.py)

    def check_common(self, sampler, steps, num_images, seed, max_images=MAX_IMAGES, branches=1):
        """The common controls, and the request's work (``num_images`` x ``steps`` x ``branches``, see
        ``branches``) against the budget."""
        sampler = as_choice(sampler, "sampler", self.samplers)
        steps = as_int(steps, "steps", 1, self.T)
        num_images = as_int(num_images, "number of images", 1, max_images)
        seed = as_int(seed, "seed", 0, MAX_SEED)
        check_work(num_images, steps, branches)
        return sampler, steps, num_images, seed

    def branches(self, model=FULL, guidance=1.0, conditioned=True, autoguidance=None) -> int:
        """Network rows per image and step: 2 under classifier-free guidance (a condition and w not 0 or 1)
        on a model without w as an input, or under autoguidance (the model and its guide); else 1."""
        if autoguidance is not None and autoguidance != 1.0:
            return 2
        distilled = model == FAST and self.fast is not None and self.fast.guidance_distilled
        return 2 if conditioned and guidance not in (0.0, 1.0) and not distilled else 1

    def pipe_for(self, model) -> DiffusionPipeline:
        """The pipeline the model choice names (FULL or FAST)."""
        model = as_choice(model, "model", [FULL, FAST])
        if model == FAST and self.fast is None:
            raise gr.Error("this app has no fast model (start it with --fast-model FOLDER)")
        return self.fast if model == FAST else self.pipe

    def run(self, progress, desc, model=FULL, work: Work | None = None, **kwargs):
        """``generate`` on the chosen model, in its turn in the scheduler's line (progress says its place);
        ``work`` is its cost (by default the images x steps of ``kwargs``, guided when they ask for it)."""
        steps = kwargs["steps"]
        pipe = self.pipe_for(model)
        if work is None:
            guided = self.branches(model, kwargs.get("guidance", 1.0), any(kwargs.get(k) for k in CONDITIONS),
                                   kwargs.get("autoguidance"))
            work = Work(model, kwargs["num_images"], steps, guided)

        def tick(step):
            self.scheduler.checkpoint()
            progress((step.index + 1, steps), desc=desc)

        try:
            return self.scheduler.run(work, pipe.generate, callback=tick, on_wait=waiting_text(progress), **kwargs)
        except ValueError as err:  # anything the pipeline rejects is the user's to fix
            raise gr.Error(str(err))

    def stream(self, progress, desc, work: Work, show, frames: int = 50, **kwargs):
        """``generate`` on the main model as a job of the scheduler, streamed while it runs: for at most
        ``frames`` of its steps, yields ``show(step index, picture of x_t beside the predicted x_0)``; returns
        its output (``out = yield from app.stream(...)``)."""
        steps, pictures = kwargs["steps"], queue.Queue()
        every = max(1, steps // frames)

        def on_step(step):
            self.scheduler.checkpoint()
            if step.index % every == 0 or step.index == steps - 1:
                pictures.put((step.index, trajectory_frames([to_uint8(step.x_t)], [to_uint8(step.x0_pred)],
                                                            scale=SCALE)[0]))

        job = self.scheduler.submit(work, self.pipe.generate, callback=on_step, **kwargs)
        job.future.add_done_callback(lambda _: pictures.put(None))
        on_wait = waiting_text(progress)
        while True:
            self.scheduler.tell_place(job, on_wait)
            try:
                item = pictures.get(timeout=0.5)
            except queue.Empty:
                continue
            if item is None:
                break
            progress((item[0] + 1, steps), desc=desc)
            yield show(*item)
        try:
            return job.future.result()
        except Exception as err:  # anything the pipeline rejects is the user's to fix
            raise gr.Error(str(err))


CONDITIONS = ("classes", "blend", "style", "prompt")  # generate's arguments that condition (guidance applies)


def waiting_text(progress):
    """The progress text of a job waiting in the scheduler's line: its place and the wait before it."""
    def on_wait(place, seconds):
        progress(0, desc=f"waiting: number {place} in line, about {seconds:.0f} s of work before yours")
    return on_wait


def gallery_of(images: np.ndarray) -> list[np.ndarray]:
    return list(upscale(images, SCALE))


def describe_blend(blend: dict[str, float]) -> str:
    """A class blend as text: "0.6·food_drink + 0.4·animal_nature" (classes at 0 left out)."""
    return " + ".join(f"{w:g}·{n}" for n, w in blend.items() if w > 0)


def unknown_note(words: list[str], dropped: list[str] = (), read_as: dict[str, str] | None = None) -> str:
    """Notes on the words of a prompt the model did not read as typed: those read as words it knows
    (WordNet's links, diffusion_core/lexicon.py), unknown ones, and ones past its length."""
    note = ""
    if read_as:
        note += ("\n\n📖 Words the model never saw, read as words it knows (WordNet): "
                 + ", ".join(f"**{word}** as **{reading}**" for word, reading in read_as.items()) + ".")
    if words:
        note += f"\n\n⚠️ The model does not know the words **{', '.join(words)}**; they were left out."
    if dropped:
        note += (f"\n\n⚠️ The prompt is longer than the model reads; these words were left out: "
                 f"**{', '.join(dropped)}**.")
    return note


def output_root() -> Path:
    """The one folder under which the app writes files (each request's in a folder of its own)."""
    return Path(tempfile.gettempdir()) / "diffusion_app"


def fresh_output_dir(keep_seconds: float = 3600.0) -> Path:
    """A new folder for one request's files, under one app folder whose hour-old entries are removed."""
    root = output_root()
    root.mkdir(exist_ok=True)
    for old in root.iterdir():
        if time.time() - old.stat().st_mtime > keep_seconds:
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(dir=root))


# ---------------------------------------------------------------------------------------------
# Controls
# ---------------------------------------------------------------------------------------------
def explanation(text: str = "", label: str = "How it works"):
    """An open-by-default panel with Markdown and LaTeX; returns the Markdown so handlers can update it."""
    with gr.Accordion(label, open=True):
        return gr.Markdown(text, latex_delimiters=LATEX)


def sampler_controls(app: App, default_steps: int | None = None):
    sampler = gr.Dropdown(SAMPLER_CHOICES, value=app.sampling["sampler"], label="sampler")
    steps = gr.Slider(1, app.T, value=default_steps or app.sampling["steps"], step=1, label="steps")
    return sampler, steps


def guidance_slider(app: App, value: float | None = None):
    return gr.Slider(0, MAX_GUIDANCE, value=app.sampling["guidance"] if value is None else value, step=0.25,
                     label="guidance w")


def seed_controls():
    with gr.Row():
        seed = gr.Number(value=0, precision=0, minimum=0, maximum=MAX_SEED, label="seed")
        dice = gr.Button("🎲 random seed", size="sm")
    dice.click(lambda: random.randint(0, MAX_SEED), None, seed, api_visibility="undocumented")
    return seed


def run_controls(app: App, max_images: int, default_images: int, button_label: str, default_steps: int | None = None):
    """Sampler, steps, number of images, seed and the run button: the controls every sampling tab has."""
    sampler, steps = sampler_controls(app, default_steps)
    num = gr.Slider(1, max_images, value=default_images, step=1, label="number of images")
    seed = seed_controls()
    return sampler, steps, num, seed, gr.Button(button_label, variant="primary")


FAST_EXPLANATION = r"""
**The fast model** is a student distilled from this one (Song et al. 2023, consistency distillation, with
$w$ as an input as in Meng et al. 2023). Trained so that every point of the teacher's guided denoising
path leads it to the same clean picture, it guesses $\hat x_0$ well from any noise level, so a handful of
steps suffice: guess, add noise back at a lower level, guess again,
$$x_{t'} = \sqrt{\bar\alpha_{t'}}\,\hat x_0 + \sqrt{1-\bar\alpha_{t'}}\,z .$$
And because $w$ is an input, one network call per step replaces guidance's two. The shipped student was
then tuned by distribution matching (Yin et al. 2024): a second network, trained on the student's own
pictures, shows where they differ from the teacher's, and the student moves to close the gap. Tick
**live** to redraw on every slider release.
"""


def model_note(app: App, model, steps) -> str:
    """Which model drew, in words, for the line under the pictures."""
    if model == FAST:
        return f"fast model: {steps} steps, one network call each"
    return f"full model: {steps} steps" if app.fast is not None else f"{steps} steps"


def model_controls(app: App, sampler, steps):
    """The model choice (full or fast) and the live switch, visible when the app has a fast model.
    Choosing a model sets the sampler and steps to its own default_sampling."""
    has_fast = app.fast is not None
    fast_steps = app.fast.default_sampling["steps"] if has_fast else 0
    with gr.Row(visible=has_fast):
        model = gr.Radio([(f"full ({app.sampling['steps']} steps)", FULL), (f"fast ({fast_steps} steps, distilled)", FAST)],
                         value=FULL, label="model")
        live = gr.Checkbox(False, label="live: redraw with the fast model whenever a control is released")

    def defaults_of(choice):
        sampling = app.pipe_for(choice).default_sampling
        return sampling["sampler"], sampling["steps"]

    model.change(defaults_of, model, [sampler, steps], api_visibility="undocumented", queue=False, show_progress="hidden")
    live.change(lambda on, choice: FAST if on else choice, [live, model], model, api_visibility="undocumented",
                queue=False, show_progress="hidden")
    return model, live


def wire_live(app: App, live, triggers: list, handler, inputs: list, outputs: list) -> None:
    """While ``live`` is ticked, every trigger (a slider's release, a radio's change) redraws with the
    fast model at its own sampler and steps (``inputs``, like the handler's arguments, end with sampler,
    steps, number, seed and model). One listener for all triggers with trigger_mode "always_last": a
    redraw asked while one runs waits, and only the newest waits, so stale redraws are dropped. Its own
    queue, so live redraws never wait behind full-model requests."""
    if app.fast is None:
        return

    def redraw(on, *args, progress=gr.Progress()):
        if not on:
            return (gr.skip(),) * len(outputs)
        *conditions, _sampler, _steps, num_images, seed, _model = args
        sampling = app.fast.default_sampling
        return handler(*conditions, sampling["sampler"], sampling["steps"], num_images, seed, FAST, progress=progress)

    gr.on([*triggers, live.change], redraw, [live, *inputs], outputs, trigger_mode="always_last", concurrency_id="live",
          concurrency_limit=1, show_progress="minimal", api_name="live_" + handler.__name__, api_visibility="undocumented",
          preprocess=False)


def sprite_gallery(label: str):
    return gr.Gallery(label=label, columns=6, height="auto", format="png", object_fit="contain", preview=False)
