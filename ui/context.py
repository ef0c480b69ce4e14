"""Tab "Context": class blends and styles, steered by classifier-free guidance."""
from __future__ import annotations

import os

import gradio as gr

from diffusion_core.pipeline import MAX_IMAGES

from .common import (ANY, FAST, FAST_EXPLANATION, FULL, LATEX, MAX_GUIDANCE, App, as_choice, as_float, describe_blend,
                     Work, explanation, gallery_of, guidance_slider, model_controls, model_note, run_controls,
                     sprite_gallery, wire_live)

EXPLANATION = r"""
The context $c$ is a vector: one weight per class (a blend such as 0.6 food + 0.4 animal is allowed) and
one per style. The network was trained with $c$ and, now and then, with $c = 0$ ("no context"), so it
can predict the noise both ways. **Classifier-free guidance** (Ho & Salimans 2022) mixes the two:
$$\hat\epsilon = \epsilon_\theta(x_t, \varnothing) + w\,\big(\epsilon_\theta(x_t, c) - \epsilon_\theta(x_t, \varnothing)\big)$$
$w = 0$ ignores the context, $w = 1$ is plain conditional sampling, $w > 1$ pushes further in the
direction the context points: more typical pictures of the class, less variety. Both branches run in
one batch, so guidance doubles the work per step.
"""


def guidance_numbers(w) -> str:
    """The guidance formula with the chosen w, written out."""
    try:
        w = float(w)
    except (TypeError, ValueError):
        return ""
    return (rf"With $w = {w:g}$: $\hat\epsilon = {1 - w:g}\,\epsilon_\theta(x_t, \varnothing) + {w:g}\,"
            rf"\epsilon_\theta(x_t, c)$" + (" (the unconditional branch is subtracted)." if w > 1 else "."))


# When a full-model request would be answered later than this (the scheduler's line ahead of it at each
# job's measured cost, plus its own), the fast model answers it instead (and says so). A full request alone
# takes about 2 s on 2 cores with AMX, so the first three of a crowd get the full model and a class of 30 is
# served within about 15 s (benchmarks/app_load.py; 10 s here left 5 full requests ahead of the rest, p95
# 19.5 s); on an AVX2-only CPU in fp32 it takes about 10 s, so there the fast model answers everyone. The app times each model at start-up (app.warm_up); without that (a test's
# app), a default full request counts as 2 s and a default fast one 0.5 s until one is timed.
DEEP_QUEUE_SECONDS = float(os.environ.get("APP_DEEP_QUEUE_SECONDS", "6"))
PRIOR_SECONDS = {FULL: 2.0, FAST: 0.5}
# ...and in at most this many steps: the shipped student at 2 steps scores as well as at 4 in its worst style
# and class accuracy (FD 2.2x its floor overall against 1.7-1.9x) for half the work, which is what holds 30
# users at once under 20 s on an AVX2-only CPU in fp32 (benchmarks/results/app_load_avx2_fp32.md)
BUSY_FAST_STEPS = 2
CONTEXT_AT_ONCE = 32  # Context requests let into the handler at once (Gradio's thread pool holds 40)


def build(app: App) -> None:
    labels, styles = app.pipe.labels, app.pipe.styles
    for kind, pipe in ((FULL, app.pipe), (FAST, app.fast)):
        if pipe is not None:
            sampling = pipe.default_sampling  # the prior is a default request's: 16 images
            rows = 16 * sampling["steps"] * app.branches(kind, sampling["guidance"])
            app.scheduler.expect(kind, PRIOR_SECONDS[kind], rows)

    def generate_context(*args, progress=gr.Progress()):
        *weights, style, guidance, sampler, steps, num_images, seed, model = args
        if len(weights) != len(labels):
            raise gr.Error(f"expected {len(labels)} class weights, got {len(weights)}")
        blend = {name: as_float(w, f"weight of {name}", 0.0, 1.0) for name, w in zip(labels, weights)}
        style = as_choice(style, "style", [ANY, *styles])
        guidance = as_float(guidance, "guidance", 0.0, MAX_GUIDANCE)
        if not any(blend.values()) and style == ANY:
            raise gr.Error("set at least one class weight above 0 (or pick a style)")
        sampler, steps, num_images, seed = app.check_common(sampler, steps, num_images, seed,
                                                            branches=app.branches(model, guidance))
        waited, deep = app.scheduler.backlog(), ""
        own = app.scheduler.estimate(Work(FULL, num_images, steps, app.branches(FULL, guidance)))
        if model == FULL and app.fast is not None and waited + own > DEEP_QUEUE_SECONDS:
            model, sampler = FAST, app.fast.default_sampling["sampler"]
            steps = min(app.fast.default_sampling["steps"], BUSY_FAST_STEPS)
            if waited >= 1:
                deep = (f"\n\n⚡ Busy: about {waited:.0f} s of requests were ahead of yours, so the **fast model** "
                        f"answered ({steps} steps) to keep the wait short. Press Generate again when it is quieter for "
                        "the full model.")
            else:  # a machine too slow for the full model within the limit even alone (timed at start-up)
                deep = (f"\n\n⚡ The full model would take about {own:.0f} s on this machine, so the **fast model** "
                        f"answered ({steps} steps). The Generate tab always draws with the full model.")
        out = app.run(progress, "sampling", model=model, num_images=num_images, blend=blend,
                      style=None if style == ANY else style, sampler=sampler, steps=steps, guidance=guidance, seed=seed)
        mix = describe_blend(blend) or "no class"
        return gallery_of(out.images), (f"{mix}, style {style}, guidance {guidance:g}: {out.seconds:.2f} s"
                                        f" ({model_note(app, model, steps)}){deep}")

    with gr.Tab("Context"):
        with gr.Row():
            with gr.Column(scale=1):
                # the first class starts at 1, so Generate draws pictures from the tab's default state
                weights = [gr.Slider(0, 1, value=float(i == 0), step=0.05, label=name) for i, name in enumerate(labels)]
                style = gr.Radio([ANY, *styles], value=ANY, label="style")
                guidance = guidance_slider(app)
                sampler, steps, num, seed, button = run_controls(app, MAX_IMAGES, 16, "Generate")
                model, live = model_controls(app, sampler, steps)
            with gr.Column(scale=2):
                gallery = sprite_gallery("samples")
                info = gr.Markdown()
                explanation(EXPLANATION + (FAST_EXPLANATION if app.fast is not None else ""))
                numbers = gr.Markdown(guidance_numbers(guidance.value), latex_delimiters=LATEX)
        inputs = [*weights, style, guidance, sampler, steps, num, seed, model]
        # its requests enter the handler together and wait in the scheduler's line, so each sees how deep it is
        button.click(generate_context, inputs, [gallery, info], api_name="generate_context", preprocess=False,
                     concurrency_id="context", concurrency_limit=CONTEXT_AT_ONCE)
        wire_live(app, live, [*(w.release for w in weights), style.change, guidance.release, num.release, seed.submit],
                  generate_context, inputs, [gallery, info])
        guidance.change(guidance_numbers, guidance, numbers, api_visibility="undocumented", show_progress="hidden",
                        queue=False)

        def preset(mix: dict, style_value=ANY):
            return [mix.get(name, 0.0) for name in labels] + [style_value, app.sampling["guidance"],
                                                               app.sampling["sampler"], app.sampling["steps"], 16, 0, FULL]

        examples, names = [preset({name: 1.0}) for name in labels], list(labels)
        for a, b in (("food_drink", "animal_nature"), ("face", "animal_nature"), ("travel_places", "flag")):
            if a in labels and b in labels:
                examples.append(preset({a: 0.6, b: 0.4}))
                names.append(f"0.6 {a} + 0.4 {b}")
        for style_name in styles:
            examples.append(preset({labels[0]: 1.0}, style_name))
            names.append(f"{labels[0]}, {style_name} style")
        gr.Examples(examples, inputs, label="presets (click one, then Generate)", example_labels=names,
                    cache_examples=False)
