"""The Gradio app, started as a user starts it, called through gradio_client and a real browser.

The app is started with a Hub repo id that is not available offline, so it must fall back to the
shipped checkpoint and say so."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SAMPLING = json.loads((ROOT / "checkpoints" / "emoji32" / "config.json").read_text())["default_sampling"]
AUTOGUIDED = f", autoguidance w {DEFAULT_SAMPLING['autoguidance']:g}" if "autoguidance" in DEFAULT_SAMPLING else ""
TAKE_ALL_SCREENSHOTS = os.environ.get("SCREENSHOT_DIR")  # set when retaking the README's screenshots
SCREENSHOTS = Path(TAKE_ALL_SCREENSHOTS or ROOT / "artifacts" / "screenshots")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_app(model: str | None, log_name: str, start_timeout: float = 600, fast_model: str | None = None):
    """Start `python app.py` (offline, with $HF_MODEL_ID = model and $HF_FAST_MODEL_ID = fast_model when
    given), yield its URL, stop it. (``start_timeout``: a busy 2-core machine can be slow to start it.)"""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    env.pop("HF_MODEL_ID", None)
    env.pop("HF_FAST_MODEL_ID", None)
    if model:
        env["HF_MODEL_ID"] = model
    if fast_model:
        env["HF_FAST_MODEL_ID"] = fast_model
    (ROOT / "artifacts").mkdir(exist_ok=True)
    log = open(ROOT / "artifacts" / log_name, "w")
    proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port)], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    import httpx

    deadline = time.time() + start_timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the app exited with {proc.returncode}; see artifacts/{log_name}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.25)
    else:
        proc.kill()
        raise RuntimeError(f"the app did not serve within {start_timeout:g} s")
    yield url
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


@pytest.fixture(scope="module")
def server(shipped_stand_ins):
    """`python app.py`, served once for every test here that calls it, on narrow copies of the shipped model
    and fast model (their labels, styles, vocabulary, guide and default sampling; conftest.narrow_copy).
    With $SCREENSHOT_DIR set (retaking the README's screenshots) it is the app as `python app.py` starts it.
    That the shipped weights load and draw, and the fallback from a Hub model it cannot get, are proved
    in-process (test_app_falls_back_to_the_shipped_checkpoint_and_says_so)."""
    if TAKE_ALL_SCREENSHOTS:
        yield from serve_app(None, "app_test.log")
    else:
        yield from serve_app(shipped_stand_ins[0], "app_test.log", fast_model=shipped_stand_ins[1])


@pytest.fixture(scope="module")
def default_server(server):
    return server


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server, verbose=False)


def read(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def gallery_images(gallery) -> list[np.ndarray]:
    return [read(item["image"] if isinstance(item, dict) and "image" in item else item) for item in gallery]


def test_app_falls_back_to_the_shipped_checkpoint_and_says_so(monkeypatch):
    """In-process, as `main()` starts it: $HF_MODEL_ID names a Hub model it cannot get offline, so it loads the
    shipped checkpoint and its page says so (the served app, started without $HF_MODEL_ID, shows no warning)."""
    import gradio as gr
    import huggingface_hub.constants

    import app

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_MODEL_ID", "nobody/not-in-any-cache")
    args = app.parse_args([])
    pipe, note = app.load_pipeline(args.model, args.dtype)
    assert Path(pipe.folder).resolve() == (ROOT / "checkpoints" / "emoji32").resolve()
    assert "Could not load `nobody/not-in-any-cache`" in note and "checkpoints/emoji32" in note
    shown = [b.value for b in app.build_app(pipe, note).blocks.values() if isinstance(b, gr.Markdown)]
    assert any("Could not load" in text and "checkpoints/emoji32" in text for text in shown)
    # as `python app.py` starts it (no $HF_MODEL_ID): the shipped model, its guide and its fast model, no warning
    monkeypatch.delenv("HF_MODEL_ID")
    monkeypatch.delenv("HF_FAST_MODEL_ID", raising=False)
    args = app.parse_args([])
    pipe, note = app.load_pipeline(args.model, args.dtype)
    fast, fast_note = app.load_fast_pipeline(args.fast_model, pipe, args.dtype)
    assert note == f"Weights: `{ROOT / 'checkpoints' / 'emoji32'}`." and pipe.guide is not None
    assert fast is not None and fast_note == f"Fast model: `{ROOT / 'checkpoints' / 'emoji32_fast'}`."
    timed = app.warm_up(pipe, fast)  # each draws (two pictures in two steps), then is timed on this machine
    assert set(timed) == {"full", "fast"} and all(0 < seconds < 120 for seconds in timed.values())


def test_generate_returns_crisp_upscaled_sprites_and_same_seed_same_images(client):
    gallery, info = client.predict("ddim", 4, 3, 11, api_name="/generate")
    images = gallery_images(gallery)
    assert len(images) == 3 and images[0].shape == (128, 128, 3)
    assert np.array_equal(images[0][::4, ::4], images[0][1::4, 1::4])  # nearest-neighbour blocks
    again = gallery_images(client.predict("ddim", 4, 3, 11, api_name="/generate")[0])
    assert all(np.array_equal(a, b) for a, b in zip(images, again))
    assert "3 images, ddim, 4 steps" in info


def test_context_tab_starts_with_one_class_chosen_so_its_default_state_draws(server):
    import httpx

    components = httpx.get(server + "config", timeout=10).json()["components"]
    sliders = {c["props"].get("label"): c["props"].get("value") for c in components
               if c.get("type") == "slider" and c["props"].get("label") in ("face", "people", "flag")}
    assert sliders == {"face": 1.0, "people": 0.0, "flag": 0.0}


def test_context_blend_generates_with_guidance(client):
    weights = [0.0] * 8
    weights[3], weights[2] = 0.6, 0.4
    gallery, info = client.predict(*weights, "noto", 3.0, "dpmpp_2m", 5, 2, 0, api_name="/generate_context")
    assert len(gallery) == 2 and "0.4·animal_nature + 0.6·food_drink" in info and "guidance 3" in info


def test_animation_streams_then_gives_gif_mp4_and_a_frame_per_step(client):
    job = client.submit("food_drink", "ddim", 6, 3.0, 2, 0, api_name="/animate")
    final = job.result(timeout=300)
    live, gif, mp4, slider, info, numbers = final
    with Image.open(gif) as animation:
        assert animation.n_frames == 7  # one per step, then the result
    assert Path(mp4).stat().st_size > 1000 and open(mp4, "rb").read(12)[4:8] == b"ftyp"
    assert slider["maximum"] == 6 and "2 images, 6 steps" in info
    assert len(job.outputs()) >= 2  # intermediate frames were streamed before the final output
    first, first_numbers = client.predict(0, api_name="/scrub")  # the scrubber, within the same session
    last, last_numbers = client.predict(6, api_name="/scrub")
    assert read(first).shape == read(last).shape == read(live).shape and not np.array_equal(read(first), read(last))
    # each step's numbers: its t, ᾱ_t and the sampler's update (DDIM on 6 steps starts at t = 999)
    assert "Step 1 of 6" in first_numbers and "t = 999" in first_numbers and "\\hat x_0" in first_numbers
    assert "The result" in numbers and "The result" in last_numbers
    assert "Step 6 of 6" in client.predict(5, api_name="/scrub")[1]


def test_forward_process_shows_noisier_images_at_larger_t(client):
    clean, noisy_early, plot, info = client.predict(10, None, 10, "cosine", api_name="/forward_process")
    _, noisy_late, _, info_late = client.predict(10, None, 900, "cosine", api_name="/forward_process")
    x0, early, late = read(clean).astype(float), read(noisy_early).astype(float), read(noisy_late).astype(float)
    assert np.abs(early - x0).mean() < np.abs(late - x0).mean()
    assert "t = 900" in info_late and "\\bar\\alpha_t" in info_late


@pytest.mark.parametrize("endpoint,args,message", [
    ("/generate", ("ddim", 5000, 2, 0), "steps must be a whole number in 1..1000"),
    ("/generate", ("ddim", 2.5, 2, 0), "steps must be a whole number in 1..1000"),
    ("/generate", ("ddim", 1000, 64, 0), "work budget: this request needs 64 images x 1000 steps"),
    ("/generate_context", (1.0, *[0.0] * 7, "any", 3.0, "ddpm", 1000, 17, 0), "x 2 network branches (guidance) = 34,000"),
    ("/export_dataset", (["face", "people", "animal_nature", "food_drink", "travel_places", "activity_object", "symbol",
                          "flag"], "", 2000, "any", 3.0, "ddpm", 1000, 0), "work budget: this export needs 16,000 images"),
    ("/generate", ("ddim", 4, 2, -5), "seed must be a whole number"),
    ("/generate", ("nope", 4, 2, 0), "sampler"),
    ("/generate_context", (*[0.0] * 8, "any", 3.0, "ddim", 4, 2, 0), "set at least one class weight"),
    ("/prompt", ("", "any", "any", 3.0, "ddim", 4, 2, 0), "type a prompt"),
    ("/prompt", ("red apple", "any", "any", 3.0, "ddim", 4, 65, 0), "number of images must be a whole number in 1..64"),
    ("/side_by_side", ("", "face", "", "face", "any", 3.0, "ddim", 4, 1, 4, 0), "A and B are the same"),
    ("/side_by_side", ("", "any", "", "flag", "any", 3.0, "ddim", 4, 1, 4, 0), "side A needs a prompt or a class"),
    ("/side_by_side", ("", "face", "", "flag", "any", 3.0, "ddim", 4, 5, 4, 0), "number of images must be"),
    ("/export_dataset", ([], "", 2, "any", 3.0, "ddim", 4, 0), "choose at least one class"),
    ("/export_dataset", (["face"], "", 2001, "any", 3.0, "ddim", 4, 0), "images per class must be a whole number in 1..2000"),
    ("/export_dataset", (["zebra"], "", 2, "any", 3.0, "ddim", 4, 0), "classes must be a list of names"),
    ("/generate_context", (*[2.0] + [0.0] * 7, "any", 3.0, "ddim", 4, 2, 0), "weight of face must be a number in 0..1"),
    ("/generate_context", (*[1.0] + [0.0] * 7, "any", "nan", "ddim", 4, 2, 0), "guidance must be a number in 0..10"),
    ("/animate", ("zebra", "ddim", 4, 3.0, 2, 0), "class must be one of"),
    ("/animate", ("face", "ddim", 4, 3.0, 17, 0), "number of images must be a whole number in 1..16"),
    ("/forward_process", (10, None, 1000, "cosine"), "t must be a whole number in 0..999"),
    ("/compare", ("zebra", 3.0, 1, 0), "class must be one of"),
    ("/compare", ("face", 3.0, 16, 0), "number of images must be a whole number in 1..15"),
    ("/forward_process", (10, None, 5, "quadratic"), "schedule must be one of"),
])
def test_bad_inputs_give_a_visible_error_naming_the_field_and_the_server_keeps_serving(client, endpoint, args, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as err:
        client.predict(*args, api_name=endpoint)
    assert message in str(err.value)
    assert len(client.predict("ddim", 1, 1, 0, api_name="/generate")[0]) == 1


def open_page(playwright, url: str):
    """Headless Debian Chromium (no GPU, no background traffic) with one 1280 x 1000 page open at ``url``."""
    args = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"]
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=args, headless=True)
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(url)
    return browser, page


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"), reason="Debian's chromium is not installed "
                    "(the test command installs it where it can; CI must have it)")
def test_every_tab_works_in_a_real_browser(default_server):
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser, page = open_page(p, default_server)
        page.get_by_role("tab", name="Generate").click()
        assert "Could not load" not in page.content()  # the models it was given load as they are
        tab_runs = [  # (tab, its main button, the text that appears once the result is in)
            ("Generate", "Generate", rf"16 images, dpmpp_2m_sde, 20 steps{AUTOGUIDED}: [\d.]+ s"),
            ("Context", "Generate", rf"guidance {DEFAULT_SAMPLING['guidance']:g}: [\d.]+ s"),
            ("Prompt", "Generate", r"“red apple”.*: [\d.]+ s"),
            ("Denoising animation", "Animate", r"Left: x_t, right"),
            ("Forward process", "Show", r"t = \d+:"),
            ("Compare samplers", "Compare", r"DPM-Solver\+\+ 2M SDE, 20 steps: [\d.]+ s"),
            ("Side by side", "Compare paths", r"the paths part at step \d+"),
            ("Export a data set", "Export", r"images in \d+ folders"),
        ]
        for tab, button, expected in tab_runs:
            page.get_by_role("tab", name=tab).click()
            panel = page.locator("[role=tabpanel]:visible")
            if tab == "Context":
                panel.get_by_role("button", name="0.6 food_drink + 0.4 animal_nature").click()  # a preset
            assert panel.get_by_text("How it works").or_(panel.get_by_text("Why DPM-Solver")).count() >= 1
            if tab == "Compare samplers" and TAKE_ALL_SCREENSHOTS is None:
                # its default run is DDPM's 1000 steps (over 2 minutes on 2 cores): made for the README's
                # screenshots only; test_compare_gives_every_sampler_its_pictures_and_time covers the handler
                assert panel.get_by_role("button", name=button, exact=True).is_enabled()
                continue
            panel.get_by_role("button", name=button, exact=True).click()
            panel.get_by_text(re.compile(expected)).first.wait_for(timeout=240_000)
            if tab == "Compare samplers":  # every sampler's pictures come with its time
                for label in (r"DDPM, 1000 steps", r"DDIM, 25 steps", r"DPM-Solver\+\+ 2M, 20 steps"):
                    assert panel.get_by_text(re.compile(label + r": [\d.]+ s")).count() == 1
            if tab == "Forward process":  # the picture and the numbers follow the t slider as it moves
                panel.locator("input[type=range]").nth(1).fill("600")
                panel.get_by_text(re.compile(r"t = 600:")).first.wait_for(timeout=30_000)
            page.wait_for_function("() => [...document.images].every(i => i.complete)", timeout=30_000)
            page.screenshot(path=str(SCREENSHOTS / f"{tab.lower().replace(' ', '_')}.png"), full_page=True)
        page.get_by_role("tab", name="About").click()
        page.get_by_text("Device:").first.wait_for(timeout=30_000)
        page.screenshot(path=str(SCREENSHOTS / "about.png"), full_page=True)
        browser.close()


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"), reason="Debian's chromium is not installed "
                    "(the test command installs it where it can; CI must have it)")
def test_a_short_training_in_the_browser_shows_the_loss_curve_and_the_grid_changing(default_server):
    """A real browser: the Train tab's short run (the tiny preset, 20 steps, a grid every 5), the loss curve
    and the fixed-noise grid update while it trains, then the trained model draws in the tab. With
    $SCREENSHOT_DIR set it runs the tab's default run instead and saves the README's screenshot."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser, page = open_page(p, default_server)
        page.get_by_role("tab", name="Train").click()
        panel = page.locator("[role=tabpanel]:visible")
        steps = "700" if TAKE_ALL_SCREENSHOTS else "20"
        if not TAKE_ALL_SCREENSHOTS:
            panel.get_by_label("tiny (a first look)").check()
            panel.get_by_label("training steps (at most)").fill(steps)
            panel.get_by_label("grid every (steps)").fill("5")
        panel.get_by_role("button", name="Train", exact=True).click()
        page.locator("#train-status").get_by_text(re.compile(r"Step \d+ / " + steps)).wait_for(timeout=240_000)
        grid = page.locator("#train-grid img")
        grid.wait_for(timeout=120_000)
        first = grid.get_attribute("src")
        page.wait_for_function("(first) => { const i = document.querySelector('#train-grid img');"
                               " return i && i.getAttribute('src') !== first; }", arg=first, timeout=240_000)
        assert page.locator("#train-loss").locator("canvas, svg").count() >= 1  # the loss curve is drawn
        page.locator("#train-status").get_by_text(re.compile(r"Trained \d+ steps")).wait_for(timeout=420_000)
        page.wait_for_function("() => [...document.images].every(i => i.complete)", timeout=30_000)
        if TAKE_ALL_SCREENSHOTS:
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / "train.png"), full_page=True)
        panel.get_by_role("button", name="Draw", exact=True).click()
        panel.get_by_text(re.compile(r"16 images, face, flag, 20 steps, guidance 3: [\d.]+ s")).wait_for(timeout=120_000)
        browser.close()


def test_an_uploaded_picture_goes_through_the_forward_process(client, tmp_path):
    from gradio_client import handle_file

    path = tmp_path / "red.png"
    Image.new("RGB", (50, 40), (255, 0, 0)).save(path)
    clean, noisy, _, info = client.predict(0, handle_file(str(path)), 0, "linear", api_name="/forward_process")
    assert read(clean)[0, 0].tolist() == [255, 0, 0] and "t = 0" in info
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="the upload is not a picture Pillow can read"):
        client.predict(0, handle_file(str(bad)), 0, "linear", api_name="/forward_process")


def test_side_by_side_starts_both_paths_from_the_same_noise_and_says_where_they_part(client):
    grid, plot, info = client.predict("", "face", "", "flag", "any", 3.0, "ddim", 6, 2, 4, 3, api_name="/side_by_side")
    image = read(grid)
    assert image.shape[0] > image.shape[1] / 2  # 2 images x 2 paths = 4 rows of 4 columns
    assert re.search(r"the paths part at step [1-6] of 6 \(t = \d+\)", info) and "A = face, B = flag" in info
    again, _, _ = client.predict("", "face", "", "flag", "any", 3.0, "ddim", 6, 2, 4, 3, api_name="/side_by_side")
    assert np.array_equal(read(again), image)


def test_export_dataset_gives_a_zip_of_class_folders_with_labels_and_the_card(client):
    path, info = client.predict(["flag", "face"], "", 3, "any", 2.0, "ddim", 3, 5, api_name="/export_dataset")
    import zipfile

    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    assert sorted(n.split("/")[0] for n in names if n.endswith(".png")) == ["face"] * 3 + ["flag"] * 3
    assert "labels.csv" in names and "MODEL_CARD.md" in names
    assert "6 images in 2 folders (flag, face)" in info


def test_fifty_people_at_once_are_all_served_each_with_their_own_pictures(client, server):
    """50 requests submitted together (small ones: the benchmark times the default size) all come back,
    each identical to the same request asked alone."""
    from gradio_client import Client

    clients = [Client(server, verbose=False) for _ in range(5)]  # several sessions, as several browsers
    seeds = list(range(50))
    jobs = [clients[i % 5].submit("ddim", 2, 1, seed, api_name="/generate") for i, seed in enumerate(seeds)]
    results = [job.result(timeout=300) for job in jobs]
    assert len(results) == 50
    alone = {seed: gallery_images(client.predict("ddim", 2, 1, seed, api_name="/generate")[0])[0] for seed in (0, 17, 49)}
    for seed, picture in alone.items():
        assert np.array_equal(gallery_images(results[seed][0])[0], picture)
    firsts = [gallery_images(r[0])[0] for r in results]
    assert len({f.tobytes() for f in firsts}) == 50  # no one got another's pictures


@pytest.mark.parametrize("endpoint", ["/side_by_side", "/generate"])
def test_endpoints_answer_their_defaults(gated_server, endpoint):
    """Called with no arguments, an endpoint uses its controls' defaults and draws (on the tiny model; the
    browser test runs every tab from its default state, the slow ones included)."""
    from gradio_client import Client

    result = Client(gated_server[0], verbose=False).predict(api_name=endpoint)
    assert result and all(part is not None for part in result)


def test_the_shipped_text_model_draws_the_prompt_with_the_classes_its_words_match(client):
    gallery, info = client.predict("red apple xyzzy", "from the words", "noto", 3.0, "ddim", 4, 2, 0, api_name="/prompt")
    assert len(gallery) == 2 and "“red apple xyzzy” → 1·food_drink (from the words) + the prompt" in info
    assert "does not know the words **xyzzy**" in info
    text_only, info = client.predict("red apple", "any", "noto", 3.0, "ddim", 4, 2, 0, api_name="/prompt")
    assert "→" not in info and not np.array_equal(gallery_images(gallery)[0], gallery_images(text_only)[0])
    _, nothing = client.predict("xyzzy", "from the words", "any", 3.0, "ddim", 4, 1, 0, api_name="/prompt")
    assert "→" not in nothing and "**xyzzy**" in nothing


def test_a_prompt_to_a_model_without_text_draws_the_classes_its_words_match():
    """In-process: a 32 px class-and-style model without text; the words are looked up in the emoji data."""
    import torch

    from app import build_app
    from diffusion_core.data import EMOJI_CLASSES, EMOJI_STYLES
    from diffusion_core.pipeline import DiffusionPipeline
    from diffusion_core.schedule import NoiseSchedule
    from diffusion_core.unet import UNet

    torch.manual_seed(0)
    model = UNet(image_size=32, base_channels=8, channel_mults=(1, 2), attention_resolutions=(16,), num_heads=2,
                 num_groups=4, context_dim=len(EMOJI_CLASSES) + len(EMOJI_STYLES))
    pipe = DiffusionPipeline(model, NoiseSchedule("linear", 50), list(EMOJI_CLASSES), list(EMOJI_STYLES), device="cpu")
    fns = {f.api_name: f.fn for f in build_app(pipe, "Weights: tiny.").fns.values()}
    quiet = lambda *args, **kwargs: None  # noqa: E731  (stands in for gr.Progress)
    gallery, info = fns["prompt"]("red apple xyzzy", "any", "noto", 3.0, "ddim", 4, 2, 0, progress=quiet)
    assert len(gallery) == 2 and "“red apple xyzzy” → 1·food_drink" in info and "red apple" in info
    assert "does not know the words **xyzzy**" in info
    food = [1.0 if c == "food_drink" else 0.0 for c in EMOJI_CLASSES]
    same, _ = fns["generate_context"](*food, "noto", 3.0, "ddim", 4, 2, 0, "full", progress=quiet)
    assert all(np.array_equal(a, b) for a, b in zip(gallery, same))
    _, nothing = fns["prompt"]("xyzzy", "any", "any", 3.0, "ddim", 4, 1, 0, progress=quiet)
    assert "no class (no word matched)" in nothing


def test_compare_gives_every_sampler_its_pictures_and_time(tiny_pipeline):
    """In-process, on a tiny 50-step model: the Compare tab's handler runs DDPM over all T steps and the
    fast samplers at theirs, from the same seed."""
    from app import build_app

    (handler,) = [f.fn for f in build_app(tiny_pipeline, "Weights: tiny.").fns.values() if f.api_name == "compare"]
    outputs = handler("a", 3.0, 2, 0, progress=lambda *args, **kwargs: None)
    galleries, texts = outputs[0::2], outputs[1::2]
    assert [len(g) for g in galleries] == [2, 2, 2, 2]
    for label, text in zip(("DDPM, 50 steps", "DDIM, 25 steps", "DPM-Solver++ 2M, 20 steps",
                            "DPM-Solver++ 2M SDE, 20 steps"), texts):
        assert re.fullmatch(rf"\*\*{re.escape(label)}\*\*: [\d.]+ s", text), text
    assert not np.array_equal(galleries[0][0], galleries[1][0])  # each sampler draws its own picture


def test_the_prompt_tab_of_a_text_model_reads_the_prompt_and_lists_unknown_words(vocab):
    """In-process (no server): the Prompt handler of an app built on a tiny text model."""
    from app import build_app
    from conftest import text_pipeline

    demo = build_app(text_pipeline(vocab), "Weights: tiny.")
    (handler,) = [f.fn for f in demo.fns.values() if f.api_name == "prompt"]
    quiet = lambda *args, **kwargs: None  # noqa: E731  (stands in for gr.Progress)
    gallery, info = handler("red apple zebra", "any", "s1", 2.0, "ddim", 2, 2, 0, progress=quiet)
    assert len(gallery) == 2 and "“red apple zebra”, guidance 2" in info and "**zebra**" in info
    other, _ = handler("cat face", "any", "s1", 2.0, "ddim", 2, 2, 0, progress=quiet)
    assert not np.array_equal(gallery[0], other[0])


def test_the_fast_model_draws_in_its_own_steps_and_live_redraws_only_when_switched_on(tiny_pipeline):
    """In-process: an app with a fast (distilled) model; the Context tab's model choice and live switch."""
    from app import build_app
    from diffusion_core.distill import student_of
    from diffusion_core.pipeline import DiffusionPipeline

    fast = DiffusionPipeline(student_of(tiny_pipeline), tiny_pipeline.schedule, tiny_pipeline.labels,
                             tiny_pipeline.styles, "v", device="cpu",
                             default_sampling={"sampler": "consistency", "steps": 3, "guidance": 4.0})
    calls = []
    denoise = fast.denoise  # the rows a call asks for (the network sees them in fixed 16-row chunks)
    fast.denoise = lambda x, *rest: calls.append(len(x)) or denoise(x, *rest)
    demo = build_app(tiny_pipeline, "Weights: tiny.", fast)
    fns = {f.api_name: f for f in demo.fns.values()}
    quiet = lambda *args, **kwargs: None  # noqa: E731  (stands in for gr.Progress)
    context = [1.0, 0.0, 0.0, "any", 2.0]
    gallery, info = fns["generate_context"].fn(*context, "ddim", 5, 2, 0, "full", progress=quiet)
    assert len(gallery) == 2 and "full model: 5 steps" in info and not calls
    gallery, info = fns["generate_context"].fn(*context, "consistency", 3, 2, 0, "fast", progress=quiet)
    assert len(gallery) == 2 and "fast model: 3 steps" in info and calls == [2, 2, 2]  # one branch per step
    live = fns["live_generate_context"]
    assert live.trigger_mode == "always_last" and live.concurrency_id == "live"
    calls.clear()
    skipped = live.fn(False, *context, "ddim", 20, 2, 0, "full", progress=quiet)  # live off: nothing drawn, nothing changed
    assert not calls and all(isinstance(part, dict) and part == {"__type__": "update"} for part in skipped)
    redrawn, info = live.fn(True, *context, "ddim", 20, 2, 0, "full", progress=quiet)  # the fast model's own steps
    assert len(redrawn) == 2 and "fast model: 3 steps" in info and calls == [2, 2, 2]
    assert fns["live_generate_prompt"].trigger_mode == "always_last"


def test_the_generate_tab_offers_autoguidance_only_with_a_guide_model(tiny_pipeline):
    """In-process: the autoguidance slider shows (at the checkpoint's default) when the checkpoint has a
    guide, and the handler draws what ``generate(autoguidance=w)`` draws; w = 1 is the plain model."""
    import gradio as gr

    from app import build_app
    from test_autoguidance import tiny_guide

    quiet = lambda *args, **kwargs: None  # noqa: E731  (stands in for gr.Progress)

    def slider_and_handler(pipe):
        demo = build_app(pipe, "Weights: tiny.")
        (fn,) = [f for f in demo.fns.values() if f.api_name == "generate"]
        (slider,) = [c for c in fn.inputs if isinstance(c, gr.Slider) and c.label.startswith("autoguidance")]
        return slider, fn.fn

    slider, handler = slider_and_handler(tiny_pipeline)
    assert not slider.visible and slider.value == 1.0
    plain, info = handler("ddim", 3, 2, 5, 1.0, progress=quiet)
    assert "autoguidance" not in info
    tiny_pipeline.set_guide(tiny_guide())
    tiny_pipeline.default_sampling["autoguidance"] = 2.5
    slider, handler = slider_and_handler(tiny_pipeline)
    assert slider.visible and slider.value == 2.5
    from ui.generate import AUTOGUIDANCE_EXPLANATION  # LaTeX survives as written (no \t or \b turned into control characters)
    assert r"\text{guide}" in AUTOGUIDANCE_EXPLANATION and not re.search(r"[\x00-\x08\x0b-\x1f]", AUTOGUIDANCE_EXPLANATION)
    guided, info = handler("ddim", 3, 2, 5, 2.5, progress=quiet)
    assert "autoguidance w 2.5" in info and not np.array_equal(guided[0], plain[0])
    expected = tiny_pipeline.generate(num_images=2, sampler="ddim", steps=3, seed=5, autoguidance=2.5).images
    assert np.array_equal(guided[0][::4, ::4], expected[0])
    again, info = handler("ddim", 3, 2, 5, 1.0, progress=quiet)
    assert "autoguidance" not in info and np.array_equal(again[0], plain[0])
    with pytest.raises(gr.Error, match="autoguidance w must be a number in 1..10"):
        handler("ddim", 3, 2, 5, 0.5, progress=quiet)


# ---------------------------------------------------------------------------------------------
# Limits, proved by behaviour: an in-process app on a tiny model whose network can be held at a gate.
# ---------------------------------------------------------------------------------------------
class Gate:
    """Wraps a model's forward: counts calls, tracks how many run at once, and holds each call while
    ``closed`` is set (so a test can keep a request running)."""

    def __init__(self, model, delay=0.0):
        import threading

        self.forward, self.delay, self.lock = model.forward, delay, threading.Lock()
        self.open = threading.Event()
        self.open.set()
        self.running = self.most = self.calls = 0
        model.forward = self

    def __call__(self, *args, **kwargs):
        with self.lock:
            self.running += 1
            self.most, self.calls = max(self.most, self.running), self.calls + 1
        try:
            self.open.wait(timeout=120)
            time.sleep(self.delay)
            return self.forward(*args, **kwargs)
        finally:
            with self.lock:
                self.running -= 1


def tiny_app_handlers(pipe):
    from app import build_app

    return {f.api_name: f.fn for f in build_app(pipe, "Weights: tiny.").fns.values()}


QUIET = lambda *args, **kwargs: None  # noqa: E731  (stands in for gr.Progress)


def test_requests_of_different_tabs_and_an_export_never_run_the_network_at_once(tiny_pipeline):
    """One sampling request at a time, whatever tab or concurrency group it comes from (before, each
    listener had its own group and the export its own: they ran side by side)."""
    import threading

    gate = Gate(tiny_pipeline.model, delay=0.002)
    fns = tiny_app_handlers(tiny_pipeline)
    calls = [lambda: fns["generate"]("ddim", 6, 4, 0, progress=QUIET),
             lambda: fns["generate_context"](1.0, 0.0, 0.0, "any", 3.0, "ddim", 6, 4, 0, "full", progress=QUIET),
             lambda: fns["side_by_side"]("", "a", "", "b", "any", 3.0, "ddim", 6, 2, 4, 0, progress=QUIET),
             lambda: fns["export_dataset"](["a", "b"], "", 20, "any", 3.0, "ddim", 3, 0, progress=QUIET)]
    threads = [threading.Thread(target=call) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert gate.calls > 20 and gate.most == 1


def test_the_largest_export_is_refused_at_once_naming_the_work_budget(tiny_pipeline):
    import gradio as gr

    from ui.common import MAX_WORK
    from ui.export import MAX_PER_CLASS

    gate = Gate(tiny_pipeline.model)
    fns = tiny_app_handlers(tiny_pipeline)
    start = time.perf_counter()
    with pytest.raises(gr.Error, match=rf"work budget: this export needs 6,000 images x 50 steps x 2 .* limit of {MAX_WORK:,}"):
        fns["export_dataset"](["a", "b", "c"], "", MAX_PER_CLASS, "any", 3.0, "ddpm", 50, 0, progress=QUIET)
    assert time.perf_counter() - start < 1 and gate.calls == 0


def test_a_request_made_during_an_export_is_served_before_the_export_ends(tiny_pipeline, tmp_path, monkeypatch):
    """The export takes the sampling lane one batch at a time, so a Context request waits for one batch,
    not for the whole export; Cancel then stops the export and leaves no zip behind."""
    import threading

    import gradio as gr

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the app's output folders go under tmp_path
    Gate(tiny_pipeline.model, delay=0.01)
    fns = tiny_app_handlers(tiny_pipeline)
    export_done, errors = threading.Event(), []

    def export():
        try:
            fns["export_dataset"](["a", "b", "c"], "", 200, "any", 3.0, "ddim", 10, 0, progress=QUIET)
        except gr.Error as err:
            errors.append(err.message)
        export_done.set()

    thread = threading.Thread(target=export)
    thread.start()
    time.sleep(1.0)
    start = time.perf_counter()
    gallery, _ = fns["generate_context"](1.0, 0.0, 0.0, "any", 3.0, "ddim", 10, 16, 0, "full", progress=QUIET)
    latency = time.perf_counter() - start
    assert len(gallery) == 16 and not export_done.is_set(), latency
    print(f"a Context request during an export: {latency:.2f} s")
    fns["cancel_export"]()  # the API's session (no browser session): stops at the next step
    thread.join(timeout=60)
    assert errors == ["export cancelled; no file was written"]
    assert not [p for p in (tmp_path / "diffusion_app").rglob("*") if p.is_file()]  # no zip, no partial zip


@pytest.fixture
def gated_server(tiny_pipeline):
    """The app on the tiny model, served in this process, its network behind a Gate."""
    from app import build_app

    gate = Gate(tiny_pipeline.model)
    demo = build_app(tiny_pipeline, "Weights: tiny.")
    _, url, _ = demo.launch(prevent_thread_lock=True, server_port=free_port(), quiet=True)
    yield url, gate
    gate.open.set()
    demo.close()


def test_the_queue_holds_100_and_answers_the_next_with_queue_full(gated_server):
    from gradio_client import Client
    from gradio_client.exceptions import AppError
    from gradio_client.utils import QueueError

    from app import QUEUE_SIZE

    url, gate = gated_server
    gate.open.clear()  # the first request runs and waits at the gate; the rest queue behind it
    client = Client(url, verbose=False, max_workers=QUEUE_SIZE + 10)  # (its default pool joins only 40 at once)
    running = client.submit("ddim", 1, 1, 0, api_name="/generate")
    deadline = time.time() + 60
    while gate.running == 0 and time.time() < deadline:
        time.sleep(0.05)
    waiting = [client.submit("ddim", 1, 1, seed, api_name="/generate") for seed in range(1, QUEUE_SIZE + 1)]
    deadline = time.time() + 120
    while sum(job.status().code.name == "IN_QUEUE" for job in waiting) < QUEUE_SIZE and time.time() < deadline:
        time.sleep(0.2)
    assert sum(job.status().code.name == "IN_QUEUE" for job in waiting) == QUEUE_SIZE
    with pytest.raises((QueueError, AppError), match="(?i)queue is full"):
        client.submit("ddim", 1, 1, 999, api_name="/generate").result(timeout=60)
    gate.open.set()
    assert len(running.result(timeout=120)[0]) == 1
    assert all(len(job.result(timeout=300)[0]) == 1 for job in waiting)  # all 100 waiting were served


def test_side_by_side_draws_a_and_b_from_the_same_noise_as_each_drawn_alone(tiny_pipeline):
    """Both paths start at the same x_T and take the same fresh noise at each step: each side is exactly
    the request's seed drawn alone with its condition (the old test only matched the step it printed)."""
    drawn = []
    generate = tiny_pipeline.generate
    tiny_pipeline.generate = lambda **kwargs: drawn.append((kwargs, generate(**kwargs))) or drawn[-1][1]
    fns = tiny_app_handlers(tiny_pipeline)
    fns["side_by_side"]("", "a", "", "b", "any", 3.0, "dpmpp_2m_sde", 6, 2, 4, 3, progress=QUIET)
    (kwargs_a, a), (kwargs_b, b) = drawn
    assert kwargs_a["classes"] == ["a"] and kwargs_b["classes"] == ["b"]
    assert np.array_equal(a.trajectory.x_t[0], b.trajectory.x_t[0])  # the same x_T
    assert not np.array_equal(a.images, b.images)
    for side, classes in ((a, ["a"]), (b, ["b"])):  # the same noise stream: seed 3's, step by step
        alone = generate(num_images=2, classes=classes, sampler="dpmpp_2m_sde", steps=6, guidance=3.0, seed=3,
                         return_trajectory=True)
        assert all(np.array_equal(x, y) for x, y in zip(side.trajectory.x_t, alone.trajectory.x_t))


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"), reason="Debian's chromium is not installed "
                    "(the test command installs it where it can; CI must have it)")
def test_live_redraws_asked_while_one_runs_are_dropped_but_the_newest(tiny_pipeline):
    """In a real browser: tick live (one redraw starts and is held slow), press Enter in the seed box five
    times while it runs: only the newest of those five is drawn afterwards, the four older are dropped."""
    from playwright.sync_api import sync_playwright

    from app import build_app
    from diffusion_core.distill import student_of
    from diffusion_core.pipeline import DiffusionPipeline

    fast = DiffusionPipeline(student_of(tiny_pipeline), tiny_pipeline.schedule, tiny_pipeline.labels,
                             tiny_pipeline.styles, "v", device="cpu",
                             default_sampling={"sampler": "consistency", "steps": 3, "guidance": 4.0})
    seeds = []
    generate = fast.generate
    fast.generate = lambda **kwargs: seeds.append(kwargs["seed"]) or generate(**kwargs)
    gate = Gate(fast.model, delay=1.0)  # a redraw takes 3 s
    demo = build_app(tiny_pipeline, "Weights: tiny.", fast)
    _, url, _ = demo.launch(prevent_thread_lock=True, server_port=free_port(), quiet=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"], headless=True)
            page = browser.new_page()
            page.goto(url)
            tab, deadline = page.get_by_role("tab", name="Context"), time.time() + 60
            while tab.get_attribute("aria-selected") != "true" and time.time() < deadline:
                tab.click(force=True)  # (a loading overlay may cover the page and swallow a click)
                time.sleep(0.2)
            panel = page.locator("[role=tabpanel]:visible")
            panel.get_by_label("live: redraw with the fast model whenever a control is released").check(force=True)
            deadline = time.time() + 60
            while not seeds and time.time() < deadline:  # the first redraw (the live switch's own) is running
                time.sleep(0.05)
            seed_box = panel.get_by_label("seed")
            for seed in (11, 12, 13, 14, 15):
                seed_box.fill(str(seed))
                seed_box.press("Enter")
            deadline = time.time() + 60
            while len(seeds) < 2 and time.time() < deadline:
                time.sleep(0.1)
            quiet_since = time.time()  # then until the network has been idle for 3 s: a redraw wrongly kept
            while time.time() - quiet_since < 3 and time.time() < deadline:  # would start as the newest ends
                if gate.running:
                    quiet_since = time.time()
                time.sleep(0.05)
            browser.close()
    finally:
        demo.close()
    assert seeds == [0, 15]  # the switch's redraw, then only the newest of the five
