"""Tab "Sketch": your picture noised part of the way and redrawn by the model (SDEdit), or only the part you
paint over redrawn and the rest kept (inpainting, RePaint's replacement). The editing itself is
``DiffusionPipeline.generate(init_image=..., strength=..., mask=...)`` (diffusion_core/sdedit.py)."""
from __future__ import annotations

import functools
import math

import gradio as gr
import numpy as np

from diffusion_core.sdedit import start_timestep
from diffusion_core.uploads import open_picture, read_picture
from diffusion_core.viz import trajectory_frames, upscale

from .common import (ANY, FULL, LATEX, MAX_GUIDANCE, SCALE, App, Work, as_choice, as_float, as_int, as_text,
                     explanation, gallery_of, guidance_slider, sampler_controls, seed_controls, sprite_gallery)
from .forward import noisy_image

CANVAS = 8                     # the canvas shows a sprite pixel as 8x8 screen pixels: 256x256 for 32 px sprites
MIN_REDRAWS, MAX_REDRAWS = 4, 16
KEPT_BLOBS = 8                 # the newest strokes' blobs kept for the events that name them
AFTER_PUT = ("After a picture goes on the canvas, choose the brush 🖌 again before you draw "
             "(Gradio's editor needs it).")
MAX_LAYERS = 8                 # paint layers read from one canvas (the editor makes one; the API could send more)
WHOLE, ERASE = "whole", "erase"
MODES = [("redraw the whole picture", WHOLE), ("erase and redraw only what I paint over (the rest is kept)", ERASE)]
# A few emoji colours as the brush palette (twemoji's face yellow and feature brown, red, orange, green, blue,
# purple, pink, dark grey, white)
PALETTE = ["#FFCC4D", "#664500", "#DD2E44", "#F4900C", "#77B255", "#55ACEE", "#AA8DD8", "#F4ABBA", "#292F33",
           "#FFFFFF"]
DEFAULT_SPRITE = "grinning face"
DEFAULT_STRENGTH = 0.7

EXPLANATION = r"""
**Where the model starts.** Your picture $x_0$, shrunk to the model's 32x32, is noised part of the way: to the
step $t_0 = \mathrm{round}(s\,(T-1))$ for the strength $s$, with the forward process of the Forward tab,
$$x_{t_0} = \sqrt{\bar\alpha_{t_0}}\,x_0 + \sqrt{1-\bar\alpha_{t_0}}\,\epsilon,\qquad \epsilon \sim \mathcal N(0, I),$$
and the sampler runs from there down to $t = 0$ exactly as it would from pure noise, in as many steps as you
ask on the shortened chain $t_0, \dots, 0$ (SDEdit, Meng et al. 2022). The picture above the frames is that
start point (one draw of $\epsilon$).

**Low strength keeps your strokes, high strength keeps only your colours.** At low $s$, $\sqrt{\bar\alpha_{t_0}}$
is near 1: the noise hides only fine detail, your shapes survive and the model mostly tidies them. The more
noise, the less survives, and the broad patches of colour survive longest (noise averages out over a large
area, a thin stroke drowns at once): at high $s$ the model keeps your colours and where they are and draws
its own shapes; at $s = 1$ it ignores the picture (plain sampling). No single $s$ is right: SDEdit calls it the
**realism-faithfulness trade-off**, faithful to your input at low $s$, a realistic emoji at high $s$.

**Erase and redraw** (inpainting). With a mask $m$, 1 on the sprite pixels you painted over (a pixel counts if
any of your paint touches it), after every step the kept pixels are put back, noised to that step's level:
$$x_{t'} \leftarrow m \odot x_{t'} + (1 - m) \odot \big(\sqrt{\bar\alpha_{t'}}\,x_0 + \sqrt{1-\bar\alpha_{t'}}\,\epsilon'\big)$$
so at every step the network sees your picture around the hole and draws what fits it; the last step lands
on $x_0$ itself outside the mask (RePaint, Lugmayr et al. 2022). The painted pixels start from your paint
noised to $t_0$: at strength 1 they are drawn afresh, at lower strength your paint's colour steers them.
"""


def path_of(item) -> str | None:
    """The file path of one of gradio's file payloads (a dict with "path"), else None."""
    path = item.get("path") if isinstance(item, dict) else None
    return path if isinstance(path, str) and path else None


def undecoded(editor: gr.ImageEditor, payload):
    """The editor's value for the handler as the files the browser sent, undecoded: a path for each file, or
    its bytes where the browser sent it as a blob (as it does after each stroke). Gradio's own preprocessing
    would decode every layer before anything checks its size; the handler reads them with the one guarded
    picture reader (diffusion_core/uploads.py). Set as the editor's ``preprocess`` (an instance attribute:
    a subclass of a Gradio component would make Gradio write a .pyi stub beside this module)."""
    if payload is None:
        return None
    if payload.id is not None:  # the browser's blobs, sent just before the event
        # kept, not taken: the start point's event and Redraw may both name the blobs of one stroke; only the
        # newest few are kept
        for old in list(editor.blob_storage)[:-KEPT_BLOBS]:
            editor.blob_storage.pop(old, None)
        blobs = editor.blob_storage.get(payload.id)
        if blobs is None:
            return None
        return {"background": blobs.background, "layers": [b for b in blobs.layers if b is not None],
                "composite": blobs.composite}
    return {"background": payload.background and payload.background.path,
            "layers": [layer.path for layer in payload.layers],
            "composite": payload.composite and payload.composite.path}


def source_of(item) -> str | bytes | None:
    """A canvas file as the reader takes it: a path (a string, or gradio's file payload), or bytes."""
    if isinstance(item, (bytes, str)):
        return item or None
    return path_of(item)


def read_upload(upload, size: int) -> np.ndarray:
    """An uploaded picture (gradio's file payload) as uint8 (size, size, 3) on white, through the one guarded
    picture reader (its pixel cap, a clear message)."""
    path = path_of(upload)
    if path is None:
        raise gr.Error("upload must be an image file")
    try:
        return read_picture(path, size, name="the upload")
    except ValueError as err:
        raise gr.Error(str(err))


def painted_cells(source: str | bytes, size: int) -> np.ndarray:
    """bool (size, size): the cells of a size x size grid that any painted (not fully transparent) pixel of
    the layer (a path or the file's bytes) touches (the layer read by the one guarded picture reader)."""
    try:
        layer = open_picture(source, name="a paint layer of the canvas")
        alpha = np.asarray(layer.convert("RGBA"))[..., 3]
    except ValueError as err:
        raise gr.Error(f"canvas: {err}")
    return cells_touched(alpha > 0, size)


def cells_touched(painted: np.ndarray, size: int) -> np.ndarray:
    """bool (size, size): a cell of the size x size grid laid over ``painted`` (bool, any shape) is True when
    any painted pixel falls in it (the mask at the model's size: nothing painted is left out)."""
    height, width = painted.shape
    rows = np.minimum(np.arange(height) * size // height, size - 1)
    cols = np.minimum(np.arange(width) * size // width, size - 1)
    cells = np.zeros((size, size), dtype=bool)
    y, x = np.nonzero(painted)
    cells[rows[y], cols[x]] = True
    return cells


def read_canvas(canvas, size: int, mode: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The editor's value (gradio's {"background", "layers", "composite"} payload) as the picture, uint8
    (size, size, 3), and in ERASE mode the mask, bool (size, size), True where paint touches a pixel."""
    if not isinstance(canvas, dict):
        raise gr.Error("canvas: draw something, upload a picture or put a sprite on the canvas first")
    picture = source_of(canvas.get("composite")) or source_of(canvas.get("background"))
    if picture is None:
        raise gr.Error("canvas: draw something, upload a picture or put a sprite on the canvas first")
    layers = canvas.get("layers") or []
    if not isinstance(layers, list) or len(layers) > MAX_LAYERS:
        raise gr.Error(f"canvas: at most {MAX_LAYERS} paint layers are read")
    try:
        x0 = shrink(read_picture(picture, name="the canvas"), size)
    except ValueError as err:
        raise gr.Error(f"canvas: {err}")
    if mode != ERASE:
        return x0, None
    mask = np.zeros((size, size), dtype=bool)
    for layer in layers:
        if source_of(layer) is not None:
            mask |= painted_cells(source_of(layer), size)
    if not mask.any():
        raise gr.Error("erase and redraw: paint over the part of the picture the model should redraw first")
    return x0, mask


def shrink(picture: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W, 3) to (size, size, 3), each pixel the mean of the canvas pixels it covers: a sprite put on
    the canvas (8x8 blocks) comes back exactly, and a stroke's colour is not smeared past its own pixels
    (an antialiasing filter's ringing would change pixels an erase keeps)."""
    from PIL import Image

    if picture.shape[:2] == (size, size):
        return picture
    return np.asarray(Image.fromarray(picture).resize((size, size), Image.Resampling.BOX), dtype=np.uint8)


def on_canvas(picture: np.ndarray, paint_layer: bool = True) -> dict:
    """A picture (uint8, the model's size) as the editor's value: the background, enlarged, and one empty
    paint layer. Sent by the server with no layer, Gradio's editor stays busy and never shows the picture (as
    in gradio-app/gradio#6822); with one, it draws again once its brush is chosen again (AFTER_PUT). The
    page's opening value goes without (``paint_layer=False``): the editor makes its own as the page loads."""
    background = upscale(picture[None], CANVAS)[0]
    layers = [np.zeros((*background.shape[:2], 4), np.uint8)] if paint_layer else []
    return {"background": background, "layers": layers, "composite": None}


def shown_mask(picture: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """The picture with the pixels to be redrawn tinted magenta (as is without a mask)."""
    if mask is None:
        return picture
    tinted = picture.astype(np.float32)
    tinted[mask] = 0.45 * tinted[mask] + 0.55 * np.array([255, 0, 255], dtype=np.float32)
    return tinted.round().astype(np.uint8)


def build(app: App) -> None:
    labels, styles = app.pipe.labels, app.pipe.styles
    size = app.pipe.model.image_size
    real = app.real
    names = real.names if real is not None and real.names is not None else None
    style_of = real.style_index() if real is not None and real.style_names else None

    def sprite_caption(index: int) -> str:
        if names is None:
            return f"sprite {index}"
        style = f", {real.style_names[style_of[index]]}" if style_of is not None else ""
        return f"sprite {index}: **{names[index]}**{style}"

    def conditions(class_name, prompt, style, guidance):
        class_name = as_choice(class_name, "class", [ANY, *labels])
        prompt = as_text(prompt, "prompt") if app.has_text else ""
        style = as_choice(style, "style", [ANY, *styles])
        guidance = as_float(guidance, "guidance", 0.0, MAX_GUIDANCE)
        conditioned = class_name != ANY or bool(prompt) or style != ANY
        return class_name, prompt, style, guidance, conditioned

    def put_sprite(index):
        if real is None:
            raise gr.Error("this model has no shipped sprites: draw or upload a picture")
        index = as_int(index, "sprite", 0, len(real) - 1)
        return on_canvas(real.images[index]), sprite_caption(index), upscale(real.images[index][None], CANVAS)[0]

    def put_upload(upload):
        if upload is None:
            return gr.skip(), gr.skip()
        picture = read_upload(upload, size)
        return on_canvas(picture), upscale(picture[None], CANVAS)[0]

    def start_point(canvas, mode, strength, seed):
        """The picture as the model reads it (the part to redraw tinted) and x_t at the strength's t_0."""
        mode = as_choice(mode, "mode", [WHOLE, ERASE])
        strength = as_float(strength, "strength", 0.0, 1.0)
        seed = as_int(seed, "seed", 0, 2**31 - 1)
        try:
            x0, mask = read_canvas(canvas, size, mode)
        except gr.Error:  # nothing to show yet (an empty canvas, erase mode before any paint)
            return gr.skip(), gr.skip(), gr.skip()
        return start_images(x0, mask, strength, seed)

    def start_images(x0, mask, strength, seed):
        t = start_timestep(strength, app.T)
        abar = app.pipe.schedule.alphas_cumprod[t].item()
        noisy = app.scheduler.run(Work("forward", what="the start point"), noisy_image, app.pipe.schedule, x0, t, seed)
        if mask is not None:  # the kept pixels start from the same noise level and are put back after each step
            note = f"; {int(mask.sum())} of {mask.size} pixels to redraw (magenta), the rest kept"
        else:
            note = ""
        text = (f"**strength {strength:g}: $t_0 = {t}$**, $\\bar\\alpha_{{t_0}} = {abar:.4f}$, so $x_{{t_0}} = "
                f"{math.sqrt(abar):.3f}\\,x_0 + {math.sqrt(1 - abar):.3f}\\,\\epsilon${note}")
        return upscale(shown_mask(x0, mask)[None], CANVAS)[0], upscale(noisy[None], CANVAS)[0], text

    def sketch(canvas, mode, strength, class_name, prompt, style, guidance, sampler, steps, num_images, seed,
               progress=gr.Progress()):
        mode = as_choice(mode, "mode", [WHOLE, ERASE])
        strength = as_float(strength, "strength", 0.0, 1.0)
        class_name, prompt, style, guidance, conditioned = conditions(class_name, prompt, style, guidance)
        autoguidance = None if conditioned or app.pipe.guide is None else app.pipe.default_sampling.get("autoguidance")
        branches = app.branches(guidance=guidance, conditioned=conditioned, autoguidance=autoguidance)
        num_images = as_int(num_images, "number of images", MIN_REDRAWS, MAX_REDRAWS)
        sampler, steps, num_images, seed = app.check_common(sampler, steps, num_images, seed, MAX_REDRAWS, branches)
        x0, mask = read_canvas(canvas, size, mode)
        t_start = start_timestep(strength, app.T)
        run_steps = max(1, min(steps, t_start + 1))  # the shortened chain t_0, ..., 0 holds t_0 + 1 timesteps
        kwargs = dict(num_images=num_images, classes=None if class_name == ANY else [class_name],
                      prompt=prompt or None, style=None if style == ANY else style, sampler=sampler, steps=run_steps,
                      guidance=guidance if conditioned else 1.0, seed=seed, init_image=x0, strength=strength, mask=mask)
        # a job in the scheduler's line, as every tab's sampling, its frames streamed as they come
        out = yield from app.stream(progress, "redrawing", Work(FULL, num_images, run_steps, branches),
                                    lambda index, frame: (frame, gr.skip(), f"step {index + 1}/{run_steps}",
                                                          gr.skip(), gr.skip(), gr.skip()),
                                    frames=30, **kwargs)
        parts = (class_name if class_name != ANY else "", f"“{prompt}”" if prompt else "",
                 f"style {style}" if style != ANY else "")
        what = " + ".join(part for part in parts if part) or "no condition"
        fewer = f" (at most {t_start + 1} at this strength)" if run_steps < steps else ""
        kept = (f"; the {int(mask.sum())} painted of {mask.size} pixels redrawn, the rest kept"
                if mask is not None else "")
        guided = f", guidance {guidance:g}" if conditioned else ""
        info = (f"{num_images} redraws at strength {strength:g} (from $t_0 = {t_start}$), {run_steps} steps{fewer}, "
                f"{what}{guided}{kept}: {out.seconds:.2f} s")
        final = trajectory_frames([], [], final=out.images, scale=SCALE)[0]
        yield final, gallery_of(out.images), info, *start_images(x0, mask, strength, seed)

    # the tab opens with a sprite on the canvas (draw over it, or clear it), so Redraw shows at once what it does
    first = int(np.flatnonzero(names == DEFAULT_SPRITE)[0]) if names is not None and \
        (names == DEFAULT_SPRITE).any() else 0
    opening = real.images[first] if real is not None else np.full((size, size, 3), 255, dtype=np.uint8)
    opening_start = start_images(opening, None, DEFAULT_STRENGTH, 0)
    with gr.Tab("Sketch"):
        with gr.Row():
            with gr.Column(scale=1):
                canvas = gr.ImageEditor(
                    on_canvas(opening, paint_layer=False),
                    label="your picture: draw on it, upload one, or put a sprite on it",
                    type="filepath", image_mode="RGBA", sources=[], transforms=[], format="png",
                    canvas_size=(size * CANVAS, size * CANVAS), fixed_canvas=True, height=420,
                    brush=gr.Brush(colors=PALETTE, default_color=PALETTE[0], color_mode="fixed",
                                   default_size=CANVAS * 2),
                    eraser=gr.Eraser(default_size=CANVAS * 2), layers=gr.LayerOptions(allow_additional_layers=False),
                    elem_id="sketch-canvas")
                canvas.preprocess = functools.partial(undecoded, canvas)  # read by the guarded reader, not Gradio
                with gr.Group(visible=real is not None):  # a model without shipped sprites: draw or upload only
                    count = len(real) - 1 if real is not None else 1
                    sprite = gr.Slider(0, max(count, 1), value=first, step=1, label="a sprite from the data set")
                    sprite_name = gr.Markdown(sprite_caption(first) if real is not None else "")
                    put = gr.Button("Put this sprite on the canvas", size="sm")
                upload = gr.Image(label="or upload a picture (it goes on the canvas)", type="filepath",
                                  sources=["upload"], height=140)
                gr.Markdown(AFTER_PUT)
                mode = gr.Radio(MODES, value=WHOLE, label="what to redraw")
                strength = gr.Slider(0, 1, value=DEFAULT_STRENGTH, step=0.01,
                                     label="strength s: how far into the noise the picture goes (t_0 = s·(T-1))")
                class_name = gr.Dropdown([ANY, *labels], value=ANY, label="class")
                prompt = gr.Textbox("", label="prompt (optional)", max_lines=1, max_length=200, visible=app.has_text)
                style = gr.Radio([ANY, *styles], value=ANY, label="style", visible=bool(styles))
                guidance = guidance_slider(app)
                sampler, steps = sampler_controls(app)
                num = gr.Slider(MIN_REDRAWS, MAX_REDRAWS, value=8, step=1, label="number of redraws")
                seed = seed_controls()
                button = gr.Button("Redraw", variant="primary")
            with gr.Column(scale=2):
                with gr.Row():
                    read_as = gr.Image(opening_start[0], label="your picture as the model reads it (32x32)",
                                       format="png", elem_id="sketch-read-as", height=260)
                    start = gr.Image(opening_start[1], label="where the model starts: x_t0", format="png", height=260)
                start_text = gr.Markdown(opening_start[2], latex_delimiters=LATEX, elem_id="sketch-start-text")
                live = gr.Image(label="denoising: x_t (left) and predicted x_0 (right)", format="png")
                gallery = sprite_gallery("redrawn")
                info = gr.Markdown(latex_delimiters=LATEX)
                explanation(EXPLANATION)
        put.click(put_sprite, sprite, [canvas, sprite_name, read_as], api_name="sketch_sprite", preprocess=False)
        sprite.change(lambda i: sprite_caption(as_int(i, "sprite", 0, max(count, 1))), sprite, sprite_name,
                      api_visibility="undocumented", queue=False, show_progress="hidden", preprocess=False)
        upload.upload(put_upload, upload, [canvas, read_as], api_name="sketch_upload", preprocess=False)
        preview = [canvas, mode, strength, seed]
        # the start point follows the controls, and Redraw shows it too (the editor reports no change for its
        # first stroke; a second listener on Redraw would race it for the canvas's blobs, which are taken once)
        for event in (canvas.change, mode.change, strength.release, seed.change):
            event(start_point, preview, [read_as, start, start_text], api_visibility="undocumented",
                  show_progress="hidden", trigger_mode="always_last", concurrency_id="sketch_preview",
                  concurrency_limit=4)
        button.click(sketch, [canvas, mode, strength, class_name, prompt, style, guidance, sampler, steps, num, seed],
                     [live, gallery, info, read_as, start, start_text], api_name="sketch")  # preprocessed: the canvas's blobs (undecoded)
