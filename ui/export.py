"""Tab "Export a data set": labelled pictures as a zip of class folders, for training other models."""
from __future__ import annotations

import threading

import gradio as gr

from diffusion_core.export import MAX_LABELS, export_dataset

from .common import (ANY, FULL, MAX_GUIDANCE, MAX_WORK, App, Work, as_choice, as_float, as_int, as_names, as_text,
                     check_work, explanation, fresh_output_dir, guidance_slider, sampler_controls, seed_controls,
                     unknown_note, waiting_text)

MAX_PER_CLASS = 2_000
MAX_PROMPTS_TEXT = 2_000  # characters of the prompts box, all lines together
# An export draws this many images per job of the scheduler, then goes to the back of its line (ui/scheduler.py):
# the default request's size, so a request made during an export waits for at most one batch.
EXPORT_BATCH = 16


class ExportCancelled(Exception):
    """Raised inside the export when its session pressed Cancel; the zip is then never written."""

EXPLANATION = r"""
A trained diffusion model is a picture source with labels for free: ask for a class (or a prompt) and
every picture comes out labelled. The course calls this **data augmentation**: more, and more varied,
training examples for a small classifier. The zip has one folder per class or prompt (torchvision's
`ImageFolder` layout), a `labels.csv` with each file's class, prompt, seed and sampler settings (enough
to draw the same picture again: image `index` of a request with that `seed`), and the model card of the
weights that drew them. Train on it with `python -m diffusion_core train --data folder:FILE.zip`, or
export from the command line with `python -m diffusion_core export-dataset --class face --per-class 2000`.
Guidance trades variety for typical pictures: for a training set, a middle value (2-3) keeps more variety.
"""


def build(app: App) -> None:
    labels, styles = app.pipe.labels, app.pipe.styles
    stops: dict[str, threading.Event] = {}  # session -> its running export's cancel flag

    def export(classes, prompts, per_class, style, guidance, sampler, steps, seed, request: gr.Request = None,
               progress=gr.Progress()):
        classes = as_names(classes, "classes", labels)
        prompt_list = [line.strip() for line in as_text(prompts, "prompts", MAX_PROMPTS_TEXT).splitlines() if line.strip()]
        for line in prompt_list:
            as_text(line, "each prompt")
        if not classes and not prompt_list:
            raise gr.Error("choose at least one class (or type a prompt)")
        if prompt_list and not app.has_text:
            raise gr.Error("this model has no text encoder; export classes instead of prompts")
        if len(classes) + len(prompt_list) > MAX_LABELS:
            raise gr.Error(f"at most {MAX_LABELS} classes and prompts per export")
        per_class = as_int(per_class, "images per class", 1, MAX_PER_CLASS)
        style = as_choice(style, "style", [ANY, *styles])
        guidance = as_float(guidance, "guidance", 0.0, MAX_GUIDANCE)
        sampler, steps, _, seed = app.check_common(sampler, steps, 1, seed)
        total = per_class * (len(classes) + len(prompt_list))
        check_work(total, steps, app.branches(guidance=guidance), what="this export")
        session = getattr(request, "session_hash", None) or "api"
        stop = stops[session] = threading.Event()

        def tick(done, _total):
            progress((done, total), desc="drawing (taking turns with other requests)", unit="images")

        def check_cancel(_step=None):
            if stop.is_set():
                raise ExportCancelled
            app.scheduler.checkpoint()  # (on the torch thread) the page that asked has gone

        def draw(**kwargs):
            check_cancel()
            work = Work(FULL, kwargs["num_images"], steps, app.branches(guidance=guidance), what="an export batch")
            return app.scheduler.run(work, app.pipe.generate, callback=check_cancel, on_wait=waiting_text(progress),
                                     **kwargs)

        path = fresh_output_dir() / "emoji_dataset.zip"
        try:
            result = export_dataset(app.pipe, path, classes=classes, prompts=prompt_list, per_label=per_class,
                                    style=None if style == ANY else style, sampler=sampler, steps=steps,
                                    guidance=guidance, seed=seed, batch_size=EXPORT_BATCH, progress=tick, generate=draw)
        except ExportCancelled:
            raise gr.Error("export cancelled; no file was written")
        except ValueError as err:
            raise gr.Error(str(err))
        finally:
            if stops.get(session) is stop:
                del stops[session]
        return str(result.path), (f"{result.num_images} images in {len(result.folders)} folders "
                                  f"({', '.join(result.folders)}), {result.seconds:.1f} s."
                                  + unknown_note(result.unknown_words, result.dropped_words, result.read_as))

    def cancel(request: gr.Request = None):
        """Stop this session's running export at its next step."""
        stop = stops.get(getattr(request, "session_hash", None) or "api")
        if stop is not None:
            stop.set()

    with gr.Tab("Export a data set"):
        with gr.Row():
            with gr.Column(scale=1):
                classes = gr.CheckboxGroup(labels, value=list(labels), label="classes")
                prompts = gr.Textbox("", lines=3, label="prompts, one per line (each gets its own folder)",
                                     visible=app.has_text, max_length=MAX_PROMPTS_TEXT)
                per_class = gr.Slider(1, MAX_PER_CLASS, value=2, step=1, label="images per class or prompt")
                style = gr.Radio([ANY, *styles], value=ANY, label="style")
                guidance = guidance_slider(app)
                sampler, steps = sampler_controls(app)
                seed = seed_controls()
                with gr.Row():
                    button = gr.Button("Export", variant="primary")
                    stop_button = gr.Button("Cancel", variant="stop")
                gr.Markdown(f"At most {MAX_WORK:,} network rows per export (images x steps, x 2 with guidance); "
                            "an export takes turns with other people's requests, one batch at a time.")
            with gr.Column(scale=2):
                file = gr.File(label="the data set (zip)")
                info = gr.Markdown()
                explanation(EXPLANATION)
        event = button.click(export, [classes, prompts, per_class, style, guidance, sampler, steps, seed], [file, info],
                             api_name="export_dataset", preprocess=False, concurrency_id="export", concurrency_limit=1)
        stop_button.click(cancel, None, None, cancels=[event], queue=False, api_name="cancel_export")
