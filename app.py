"""Watch a diffusion model draw: the Gradio app (interface only; the diffusion work is done by
diffusion_core.pipeline.DiffusionPipeline, each tab is a module of ui/).

    python app.py [--model HUB_REPO_ID_OR_FOLDER] [--port 7860]

The weights come from --model or $HF_MODEL_ID (a Hub repo id or a folder), by default the shipped
checkpoints/emoji32. If they cannot be had (no network, unknown repo), the app falls back to the
shipped checkpoint and says so on the page. The fast model (a distilled student of the main one, for
the live redraws of the Context and Prompt tabs) comes from --fast-model or $HF_FAST_MODEL_ID, by
default the shipped checkpoints/emoji32_fast beside the shipped emoji32; without one those controls hide.
--dtype or $APP_DTYPE (float32, bfloat16 or auto, the default: bf16 where the CPU has it natively and it
is faster) sets the precision both models sample in.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import gradio as gr
from starlette.middleware import Middleware

from diffusion_core.pipeline import DiffusionPipeline
from ui.body_limit import BodyLimit
from ui import about, animation, common, compare, context, export, forward, generate, prompt, side_by_side, sketch, train
from ui.scheduler import Work, scheduler

ROOT = Path(__file__).resolve().parent
SHIPPED_MODEL = ROOT / "checkpoints" / "emoji32"
SHIPPED_FAST_MODEL = ROOT / "checkpoints" / "emoji32_fast"
# One sampling request runs at a time (the network already uses every core; requests batched together
# are no faster on a CPU: benchmarks/app_load.py). The queue holds a class of students and then some:
# at the default request's measured 3.6 s (2 cores with bf16) to 15 s (2 cores, AVX2, fp32) the 100th in
# line waits 6 to 25 minutes, and each waiting request holds only its arguments, so memory stays bounded.
QUEUE_SIZE = 100
TABS = (generate, context, prompt, sketch, animation, forward, compare, side_by_side, train, export, about)
CSS = ".gallery img, img { image-rendering: pixelated; }"
DTYPES = ("auto", "float32", "bfloat16")  # --dtype / $APP_DTYPE: the precision the models sample in
# The largest file the server takes (gradio refuses a larger upload while it streams in): a zip of pictures
# for the Train tab (at most 200 MiB once expanded, diffusion_core/uploads.py) or one picture to noise.
MAX_FILE_SIZE = 64 * 2**20
# The largest body of any other request (JSON: every text in it is checked by its handler, the longest
# allowed is 2,000 characters); larger ones are refused before they are read (ui/body_limit.py).
MAX_BODY_SIZE = 16 * 2**20


def launch_options() -> dict:
    """``launch``'s options (a fresh dict each time: gradio adds to its ``app_kwargs``)."""
    return dict(css=CSS, show_error=True, max_file_size=MAX_FILE_SIZE,
                app_kwargs={"middleware": [Middleware(BodyLimit, max_bytes=MAX_BODY_SIZE)]})


def load_pipeline(model: str | None, dtype: str = "auto") -> tuple[DiffusionPipeline, str]:
    """The pipeline (sampling in ``dtype``) and a note saying where its weights came from."""
    wanted = model or str(SHIPPED_MODEL)
    try:
        pipe = DiffusionPipeline.from_pretrained(wanted, dtype=dtype)
        return pipe, f"Weights: `{wanted}`."
    except ValueError as err:
        if Path(wanted).resolve() == SHIPPED_MODEL.resolve():
            raise
        pipe = DiffusionPipeline.from_pretrained(SHIPPED_MODEL, dtype=dtype)
        return pipe, (f"⚠️ Could not load `{wanted}` ({err}). Using the shipped checkpoint "
                      f"`checkpoints/emoji32` instead.")


def load_fast_pipeline(fast_model: str | None, pipe: DiffusionPipeline,
                       dtype: str = "auto") -> tuple[DiffusionPipeline | None, str]:
    """The distilled student that serves the live redraws, and a note; None when there is none that
    draws what ``pipe`` draws (same classes, styles and text, guidance as an input)."""
    if fast_model is None:
        if pipe.folder is None or Path(pipe.folder).resolve() != SHIPPED_MODEL.resolve() or not SHIPPED_FAST_MODEL.is_dir():
            return None, "No fast model."
        fast_model = str(SHIPPED_FAST_MODEL)
    try:
        fast = DiffusionPipeline.from_pretrained(fast_model, dtype=dtype)
    except ValueError as err:
        return None, f"⚠️ Could not load the fast model `{fast_model}` ({err}); live redraws are off."
    if not fast.guidance_distilled or (fast.labels, fast.styles) != (pipe.labels, pipe.styles) \
            or (fast.vocabulary is None) != (pipe.vocabulary is None):
        return None, f"⚠️ `{fast_model}` is not a distilled student of this model's classes and styles; live redraws are off."
    return fast, f"Fast model: `{fast_model}`."


TIMED_ROWS = 32  # the warm-up's timed request: 16 images x 2 steps, one network row each (guidance 1): two full calls


def warm_up(pipe: DiffusionPipeline, fast: DiffusionPipeline | None) -> dict[str, float]:
    """A two-step request per model (on the torch thread), so the first person does not pay for the
    kernels' first run; then each model's speed on this machine, as seconds for TIMED_ROWS network rows.
    The scheduler's estimates (the Context tab's deep-line rule) start from it: a fixed guess is 5x off
    between a CPU with AMX and one with AVX2 only."""
    seconds = {}
    for kind, model in ((common.FULL, pipe), (common.FAST, fast)):
        if model is not None:
            classes = [model.labels[0]] if model.labels else None
            model.generate(num_images=2, classes=classes, steps=2, seed=0)
            start = time.perf_counter()
            model.generate(num_images=TIMED_ROWS // 2, classes=classes, steps=2, guidance=1.0, autoguidance=None, seed=0)
            seconds[kind] = time.perf_counter() - start
    return seconds


def build_app(pipe: DiffusionPipeline, source_note: str, fast: DiffusionPipeline | None = None,
              fast_note: str = "") -> gr.Blocks:
    app = common.App(pipe, source_note, fast)
    with gr.Blocks(title="Watch a diffusion model draw") as demo:
        gr.Markdown("# Watch a diffusion model draw\nA small U-Net turns noise into 32x32 emoji sprites. "
                    "Built on `diffusion_core`, for learners of *How Diffusion Models Work*.")
        for note in (source_note, fast_note):
            if note.startswith("⚠️"):
                gr.Markdown(note)
        for tab in TABS:
            tab.build(app)
    demo.queue(default_concurrency_limit=1, max_size=QUEUE_SIZE)
    return demo


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, its defaults from the environment (a Space sets variables, not flags)."""
    parser = argparse.ArgumentParser(description="Watch a diffusion model draw (Gradio app).")
    parser.add_argument("--model", default=os.environ.get("HF_MODEL_ID"), help="Hub repo id or checkpoint folder")
    parser.add_argument("--fast-model", default=os.environ.get("HF_FAST_MODEL_ID"),
                        help="distilled student for live redraws (default: the shipped one, with the shipped model)")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--dtype", choices=DTYPES, default=os.environ.get("APP_DTYPE", "auto"),
                        help="precision of sampling: auto (bf16 where the CPU has it natively and it is faster), "
                             "float32 or bfloat16 (default: $APP_DTYPE, else auto)")
    args = parser.parse_args(argv)
    if args.dtype not in DTYPES:  # argparse checks the choices of a flag, not of a default from the environment
        parser.error(f"APP_DTYPE must be one of {', '.join(DTYPES)}, got {args.dtype!r}")
    return args


def main() -> None:
    args = parse_args()
    torch = scheduler()  # the main thread runs no torch: loading and warm-up are jobs of the scheduler
    load = Work("load", what="loading the models")
    pipe, note = torch.run(load, load_pipeline, args.model, args.dtype)
    fast, fast_note = torch.run(load, load_fast_pipeline, args.fast_model, pipe, args.dtype)
    for kind, seconds in torch.run(load, warm_up, pipe, fast).items():
        torch.expect(kind, seconds, TIMED_ROWS)
    print(note.replace("`", ""), fast_note.replace("`", ""), f"Device {pipe.device}, precision {pipe.dtype}.", flush=True)
    build_app(pipe, note, fast, fast_note).launch(server_name=args.host, server_port=args.port, **launch_options())


if __name__ == "__main__":
    main()
