"""The Sketch tab (your picture noised part of the way and redrawn, or only a painted part of it) and the
Prompt tab's "start from the emoji it names": their handlers called as the API calls them, and the Sketch tab
driven in a real browser. An app on a tiny untrained 32 px model with the emoji classes and styles, so the
shipped sprites are there to pick and the tests take seconds."""
from __future__ import annotations

import os
import shutil
import time

import numpy as np
import pytest
from PIL import Image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
QUIET = lambda *args, **kwargs: None  # noqa: E731  (stands in for gr.Progress)
SIZE, CANVAS = 32, 8 * 32


def tiny_emoji_pipeline(text: bool = False):
    """A tiny 32 px model with the emoji classes and styles (and a small vocabulary when ``text``), T = 50."""
    import torch

    from diffusion_core.data import EMOJI_CLASSES, EMOJI_STYLES
    from diffusion_core.pipeline import DiffusionPipeline
    from diffusion_core.schedule import NoiseSchedule
    from diffusion_core.text import Vocabulary
    from diffusion_core.unet import UNet

    vocab = Vocabulary.from_texts(["red apple", "grinning face", "cat face"], max_tokens=6) if text else None
    torch.manual_seed(0)
    extra = dict(vocab_size=len(vocab), text_dim=16, max_tokens=6) if text else {}
    model = UNet(image_size=SIZE, base_channels=8, channel_mults=(1, 2), attention_resolutions=(16,), num_heads=2,
                 num_groups=4, context_dim=len(EMOJI_CLASSES) + len(EMOJI_STYLES), **extra)
    with torch.no_grad():  # zero-initialised output layers would draw nothing; randomise
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return DiffusionPipeline(model, NoiseSchedule("linear", 50), list(EMOJI_CLASSES), list(EMOJI_STYLES), device="cpu",
                             vocabulary=vocab, default_sampling={"sampler": "ddim", "steps": 3, "guidance": 3.0})


@pytest.fixture(scope="module")
def demo():
    """The app on the tiny text model (one for the module: building it takes seconds)."""
    from app import build_app

    return build_app(tiny_emoji_pipeline(text=True), "Weights: tiny.")


@pytest.fixture(scope="module")
def app_fns(demo):
    return {f.api_name: f.fn for f in demo.fns.values()}


def last(generator):
    """The final output of a streaming handler."""
    out = None
    for out in generator:
        pass
    return out


def png(tmp_path, name: str, array: np.ndarray) -> dict:
    """A picture written as gradio's file payload (what the handlers receive with preprocess=False)."""
    path = tmp_path / name
    Image.fromarray(array).save(path)
    return {"path": str(path)}


def canvas_of(tmp_path, background: np.ndarray, paint: np.ndarray) -> dict:
    """The editor's value: a background (RGB, canvas size), one paint layer (RGBA) and their composite."""
    composite = Image.alpha_composite(Image.fromarray(background).convert("RGBA"), Image.fromarray(paint))
    return {"background": png(tmp_path, "background.png", background), "layers": [png(tmp_path, "layer.png", paint)],
            "composite": png(tmp_path, "composite.png", np.asarray(composite.convert("RGB")))}


def scribble() -> np.ndarray:
    """A paint layer (RGBA, canvas size): a thick yellow ring and a brown stroke, the rest transparent."""
    y, x = np.mgrid[:CANVAS, :CANVAS]
    r = np.hypot(y - CANVAS / 2, x - CANVAS / 2)
    paint = np.zeros((CANVAS, CANVAS, 4), dtype=np.uint8)
    paint[(r > 60) & (r < 90)] = (255, 204, 77, 255)
    paint[150:165, 90:170] = (102, 69, 0, 255)
    return paint


def redraw(fns, canvas, mode="whole", strength=0.6, class_name="any", prompt="", style="any", guidance=3.0,
           sampler="ddim", steps=4, num=4, seed=0):
    """The final frame, the gallery and the line under it (then the start point it shows, as ``start_point``)."""
    out = last(fns["sketch"](canvas, mode, strength, class_name, prompt, style, guidance, sampler, steps, num, seed,
                             progress=QUIET))
    assert len(out) == 6
    return out[:3]


def cells(images: list[np.ndarray]) -> np.ndarray:
    """The gallery's pictures (shown 4x larger) back at the model's size."""
    return np.stack([image[::4, ::4] for image in images])


def test_a_scribble_is_redrawn_from_the_start_point_its_strength_names(app_fns, tmp_path):
    white = np.full((CANVAS, CANVAS, 3), 255, dtype=np.uint8)
    canvas = canvas_of(tmp_path, white, scribble())
    frame, gallery, info = redraw(app_fns, canvas, strength=0.6, class_name="face", steps=4, num=4, seed=3)
    assert len(gallery) == 4 and gallery[0].shape == (128, 128, 3)
    assert frame.shape[1] > frame.shape[0]  # the result beside itself, as the animation's last frame
    assert "4 redraws at strength 0.6 (from $t_0 = 29$), 4 steps, face, guidance 3" in info
    x0 = np.asarray(Image.open(canvas["composite"]["path"]).resize((SIZE, SIZE), Image.Resampling.BOX))  # pixel means
    results = cells(gallery)
    assert all(np.abs(r.astype(int) - x0).mean() > 2 for r in results)  # redrawn, not returned
    assert len({r.tobytes() for r in results}) == 4  # each from its own noise
    again = redraw(app_fns, canvas, strength=0.6, class_name="face", steps=4, num=4, seed=3)[1]
    assert all(np.array_equal(a, b) for a, b in zip(gallery, again))
    # strength 0 keeps the picture (the chain is empty), and the start point shown is the picture itself
    kept = redraw(app_fns, canvas, strength=0.0, steps=4)[1]
    assert np.abs(cells(kept).astype(int) - x0).max() <= 1
    picture, start, text = app_fns["start_point"](canvas, "whole", 0.6, 0)
    assert picture.shape == start.shape == (CANVAS, CANVAS, 3) and "$t_0 = 29$" in text
    assert np.array_equal(picture[::8, ::8], x0) and not np.array_equal(start[::8, ::8], x0)


def test_an_erased_part_of_a_sprite_is_redrawn_and_the_rest_kept(app_fns, tmp_path):
    sprite_canvas, caption, shown = app_fns["sketch_sprite"](500)
    sprite = sprite_canvas["background"][::8, ::8]
    assert np.array_equal(shown, sprite_canvas["background"])
    assert sprite_canvas["background"].shape == (CANVAS, CANVAS, 3) and "sprite 500: **" in caption
    paint = np.zeros((CANVAS, CANVAS, 4), dtype=np.uint8)
    paint[64:128, 96:160] = (221, 46, 68, 255)   # a red patch over sprite pixels 8..15 x 12..19
    paint[200, 201] = (0, 0, 0, 1)               # one faint pixel: any paint counts (sprite pixel 25, 25)
    canvas = canvas_of(tmp_path, sprite_canvas["background"], paint)
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[8:16, 12:20] = mask[25, 25] = True
    _, gallery, info = redraw(app_fns, canvas, mode="erase", strength=1.0, class_name="face", steps=5, seed=1)
    assert f"the {mask.sum()} painted of 1024 pixels redrawn, the rest kept" in info
    results = cells(gallery)
    assert all(np.array_equal(r[~mask], sprite[~mask]) for r in results)  # outside the mask: the sprite, exactly
    assert all(np.abs(r[mask].astype(int) - sprite[mask]).mean() > 5 for r in results)  # inside: redrawn
    picture, _, text = app_fns["start_point"](canvas, "erase", 1.0, 0)
    assert "65 of 1024 pixels to redraw" in text and not np.array_equal(picture[::8, ::8][mask], sprite[mask])


def test_low_strength_runs_at_most_the_steps_its_short_chain_holds(app_fns, tmp_path):
    white = np.full((CANVAS, CANVAS, 3), 255, dtype=np.uint8)
    _, gallery, info = redraw(app_fns, canvas_of(tmp_path, white, scribble()), strength=0.05, steps=20)
    assert "from $t_0 = 2$), 3 steps (at most 3 at this strength)" in info and len(gallery) == 4


def test_an_upload_goes_on_the_canvas_through_the_guarded_reader(app_fns, tmp_path):
    import gradio as gr

    red = np.zeros((40, 50, 3), dtype=np.uint8)
    red[..., 0] = 255
    value, shown = app_fns["sketch_upload"](png(tmp_path, "red.png", red))
    assert np.array_equal(shown, value["background"])
    assert value["background"].shape == (CANVAS, CANVAS, 3) and value["background"][0, 0].tolist() == [255, 0, 0]
    (tmp_path / "bad.png").write_bytes(b"not a picture")
    with pytest.raises(gr.Error, match="the upload"):
        app_fns["sketch_upload"]({"path": str(tmp_path / "bad.png")})
    from test_uploads import huge_png_header

    (tmp_path / "huge.png").write_bytes(huge_png_header(50_000, 50_000))
    start = time.perf_counter()
    with pytest.raises(gr.Error, match="claims 50000x50000 pixels|too large"):
        app_fns["sketch_upload"]({"path": str(tmp_path / "huge.png")})
    with pytest.raises(gr.Error, match="claims 50000x50000 pixels|too large"):  # the canvas's files too
        redraw(app_fns, {"background": None, "layers": [], "composite": {"path": str(tmp_path / "huge.png")}})
    white = png(tmp_path, "white.png", np.full((CANVAS, CANVAS, 3), 255, dtype=np.uint8))
    with pytest.raises(gr.Error, match="claims 50000x50000 pixels|too large"):
        redraw(app_fns, {"background": white, "layers": [{"path": str(tmp_path / "huge.png")}], "composite": white},
               mode="erase")
    assert time.perf_counter() - start < 2


@pytest.mark.parametrize("change, message", [
    (dict(canvas=None), "canvas: draw something, upload a picture or put a sprite on the canvas first"),
    (dict(canvas={"background": None, "layers": [], "composite": None}), "canvas: draw something"),
    (dict(canvas="/etc/passwd"), "canvas: draw something"),
    (dict(layers=9), "canvas: at most 8 paint layers"),
    (dict(mode="erase", layers=0), "erase and redraw: paint over the part"),
    (dict(mode="blur"), "mode must be one of"),
    (dict(strength=1.5), "strength must be a number in 0..1"),
    (dict(strength="nan"), "strength must be a number in 0..1"),
    (dict(num=2), "number of images must be a whole number in 4..16"),
    (dict(num=17), "number of images must be a whole number in 4..16"),
    (dict(steps=5000), "steps must be a whole number in 1..50"),
    (dict(class_name="zebra"), "class must be one of"),
    (dict(style="cubist"), "style must be one of"),
    (dict(guidance=11), "guidance must be a number in 0..10"),
    (dict(sampler="euler"), "sampler must be one of"),
    (dict(seed=-1), "seed must be a whole number"),
])
def test_bad_inputs_get_a_message_naming_the_field(app_fns, tmp_path, change, message):
    import gradio as gr

    white = png(tmp_path, "white.png", np.full((CANVAS, CANVAS, 3), 255, dtype=np.uint8))
    layers = [png(tmp_path, "layer.png", scribble())] * change.pop("layers", 1)
    args = {"canvas": {"background": white, "layers": layers, "composite": white}, **change}
    with pytest.raises(gr.Error, match=message):
        redraw(app_fns, **args)


def test_start_from_the_emoji_it_names_redraws_that_sprite_in_another_style(demo):
    """The Prompt tab's second way, on the tiny text model with the emoji classes and styles."""
    import gradio as gr

    from diffusion_core.data import load_emoji
    from diffusion_core.named_sprite import NAMED_STRENGTH, find_named_sprite

    fns = {f.api_name: f for f in demo.fns.values()}
    prompt = fns["prompt"].fn
    (show,) = [f.fn for f in demo.fns.values() if getattr(f.fn, "__name__", "") == "show_named"]
    train = load_emoji(split="train")
    found = find_named_sprite(train, "red apple", avoid_style="twemoji")
    assert found.name == "red apple" and found.style != "twemoji"
    picture, caption = show("red apple", "twemoji", True)
    assert np.array_equal(picture[::4, ::4], train.images[found.index])
    assert f"It starts from **red apple**, {found.style} style" in caption
    gallery, info = prompt("red apple", "any", "twemoji", 3.0, "ddim", 4, 4, 0, "full", True, 0.5, progress=QUIET)
    assert len(gallery) == 4
    assert info.startswith(f"Started from the emoji it names: **red apple** ({found.style} sprite")
    assert "strength 0.5 (t₀ = 24)" in info
    plain, plain_info = prompt("red apple", "any", "twemoji", 3.0, "ddim", 4, 4, 0, "full", progress=QUIET)
    assert "Started from" not in plain_info and not np.array_equal(plain[0], gallery[0])
    kept, _ = prompt("red apple", "any", "twemoji", 3.0, "ddim", 4, 2, 0, "full", True, 0.0, progress=QUIET)
    assert np.abs(cells(kept).astype(int) - train.images[found.index]).max() <= 1  # strength 0: the sprite itself
    _, nothing = prompt("xyzzy", "any", "any", 3.0, "ddim", 2, 1, 0, "full", True, 0.85, progress=QUIET)
    assert "No training emoji's name or keywords match these words" in nothing
    with pytest.raises(gr.Error, match="strength must be a number in 0..1"):
        prompt("red apple", "any", "any", 3.0, "ddim", 2, 1, 0, "full", True, 2.0, progress=QUIET)
    with pytest.raises(gr.Error, match="start from the emoji it names must be true or false"):
        prompt("red apple", "any", "any", 3.0, "ddim", 2, 1, 0, "full", "yes", 0.85, progress=QUIET)
    (slider,) = [c for c in fns["prompt"].inputs if getattr(c, "label", "").startswith("strength")]
    assert slider.value == NAMED_STRENGTH  # the measured default


def test_the_canvas_hands_the_browsers_blobs_to_the_handler_undecoded(demo, app_fns, tmp_path):
    """After a stroke the browser sends the editor's files as blobs (accept_blobs) and the event names their
    id: the canvas gives the handler their bytes, which the guarded reader then reads."""
    from gradio.components.image_editor import EditorData, EditorDataBlobs

    (canvas,) = [block for block in demo.blocks.values() if getattr(block, "elem_id", None) == "sketch-canvas"]
    white = np.full((CANVAS, CANVAS, 3), 255, dtype=np.uint8)
    files = canvas_of(tmp_path, white, scribble())
    blobs = {key: open(files[key]["path"], "rb").read() for key in ("background", "composite")}
    canvas.blob_storage["stroke"] = EditorDataBlobs(background=blobs["background"], composite=blobs["composite"],
                                                    layers=[open(files["layers"][0]["path"], "rb").read()])
    value = canvas.preprocess(EditorData(id="stroke"))
    assert value["composite"] == blobs["composite"] and isinstance(value["layers"][0], bytes)
    assert canvas.preprocess(EditorData(id="stroke"))["composite"] == blobs["composite"]  # Redraw and the preview
    from_bytes = redraw(app_fns, value, mode="erase", steps=2, seed=4)
    from_files = redraw(app_fns, files, mode="erase", steps=2, seed=4)
    assert all(np.array_equal(a, b) for a, b in zip(from_bytes[1], from_files[1]))


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"), reason="Debian's chromium is not installed "
                    "(the test command installs it where it can; CI must have it)")
def test_the_sketch_tab_redraws_a_scribble_and_an_erased_part_in_a_real_browser(demo):
    """Draw a scribble on the canvas (over the sprite it opens with) with the mouse, press Redraw and read the
    results; then choose "erase and redraw" and redraw: the results are the opening sprite but for the painted
    pixels; then put another sprite on the canvas and paint on it. (Controls are left at their defaults: each
    click costs seconds on a busy machine.)"""
    import re

    import httpx
    from playwright.sync_api import sync_playwright

    from diffusion_core.data import load_emoji
    from test_app import SCREENSHOTS, free_port
    from ui.sketch import DEFAULT_SPRITE

    _, url, _ = demo.launch(prevent_thread_lock=True, server_port=free_port(), quiet=True)

    def results(panel) -> list[np.ndarray]:
        """The gallery's pictures (128 x 128: a sprite shown 4x), fetched as the browser fetched them."""
        pictures = []
        for source in [img.get_attribute("src") for img in panel.locator("img").all()]:
            if source and source.startswith("http"):
                picture = np.asarray(Image.open(__import__("io").BytesIO(httpx.get(source).content)).convert("RGB"))
                if picture.shape == (128, 128, 3):
                    pictures.append(picture)
        return pictures

    def stroke(page, panel, points):
        box = panel.locator("canvas").first.bounding_box()
        x, y, w, h = box["x"], box["y"], box["width"], box["height"]
        page.mouse.move(x + points[0][0] * w, y + points[0][1] * h)
        page.mouse.down()
        for fx, fy in points[1:]:  # one move per corner: the editor draws the line between (each move re-renders
            page.mouse.move(x + fx * w, y + fy * h)  # the canvas, about 0.4 s in a headless browser without a GPU)
        page.mouse.up()

    def paint_until_read(page, panel, points, before: str | None = None):
        """Choose the brush and paint until the start point reads paint to redraw (and, given ``before``, a
        text other than it): a busy editor may drop a stroke, and a person would draw it again."""
        start_text = page.locator("#sketch-start-text")
        for _ in range(3):
            panel.get_by_role("button", name="Brush", exact=True).click()
            stroke(page, panel, points)
            deadline = time.time() + 20
            while time.time() < deadline:
                text = start_text.inner_text()
                if re.search(r"; [1-9]\d* of 1024 pixels to redraw", text) and text != before:
                    return text
                time.sleep(0.2)
        raise AssertionError(f"3 strokes, none read: {start_text.inner_text()!r}")

    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"], headless=True)
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(url)
            tab, deadline = page.get_by_role("tab", name="Sketch"), time.time() + 60
            while tab.get_attribute("aria-selected") != "true" and time.time() < deadline:
                tab.click(force=True)  # (a loading overlay may cover the page and swallow a click)
                time.sleep(0.2)
            panel = page.locator("[role=tabpanel]:visible")  # the tab's defaults: 8 redraws, 3 steps (the model's)
            panel.get_by_role("button", name="Brush", exact=True).click()
            stroke(page, panel, [(0.3, 0.3), (0.7, 0.3), (0.7, 0.7), (0.3, 0.7), (0.3, 0.35)])  # a yellow square
            stroke(page, panel, [(0.4, 0.55), (0.6, 0.55)])
            panel.get_by_role("button", name="Redraw", exact=True).click()
            done = panel.get_by_text(re.compile(r"8 redraws at strength 0\.7 .*3 steps.*: [\d.]+ s"))
            done.first.wait_for(timeout=120_000)
            drawn = results(panel)
            assert len(drawn) == 8 and len({d.tobytes() for d in drawn}) == 8
            page.screenshot(path=str(SCREENSHOTS / "sketch_scribble.png"), full_page=True)

            # erase and redraw: the scribble above becomes the part to redraw; the opening sprite under it is kept
            emoji = load_emoji(split="all")
            sprite = emoji.images[int(np.flatnonzero(emoji.names == DEFAULT_SPRITE)[0])]
            panel.get_by_label("erase and redraw only what I paint over (the rest is kept)").check()
            try:
                panel.get_by_text(re.compile(r"; [1-9]\d* of 1024 pixels to redraw")).first.wait_for(timeout=20_000)
            except Exception:  # the scribble's strokes never reached the server: paint again
                paint_until_read(page, panel, [(0.3, 0.3), (0.7, 0.7)])
            panel.get_by_role("button", name="Redraw", exact=True).click()
            done = panel.get_by_text(re.compile(r"the (\d+) painted of 1024 pixels redrawn, the rest kept: [\d.]+ s"))
            done.first.wait_for(timeout=120_000)
            painted = int(re.search(r"the (\d+) painted", done.first.inner_text()).group(1))
            erased = results(panel)
            assert len(erased) == 8 and 0 < painted < 1024
            for picture in erased:
                changed = (cells([picture])[0] != sprite).any(axis=-1)
                assert 0 < changed.sum() <= painted  # redrawn where painted, the sprite everywhere else
            page.screenshot(path=str(SCREENSHOTS / "sketch_erase.png"), full_page=True)

            # a sprite from the data set put on the canvas becomes the picture the model reads
            shown = page.locator("#sketch-read-as img")
            before = shown.get_attribute("src")
            box = panel.get_by_label("number input for a sprite from the data set")
            box.fill("500")
            box.press("Enter")
            panel.get_by_text("sprite 500:").wait_for(timeout=60_000)
            panel.get_by_role("button", name="Put this sprite on the canvas").click()
            deadline = time.time() + 60
            while shown.get_attribute("src") == before and time.time() < deadline:
                time.sleep(0.2)
            assert shown.get_attribute("src") != before
            # and it takes paint: the brush chosen again (ui/sketch.AFTER_PUT), a stroke is read as the part to redraw
            before = page.locator("#sketch-start-text").inner_text()
            paint_until_read(page, panel, [(0.2, 0.2), (0.8, 0.8)], before=before)
            browser.close()
    finally:
        demo.close()
