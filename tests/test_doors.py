"""Every door guarded: each hostile input the app or the command line can be handed (a valid 12,000 x 12,000
PNG, a PNG whose header claims 50,000 x 50,000 pixels, a small zip that expands to gigabytes, a 10 MB prompt,
an upload over the server's file size) is refused within a second or so with a message naming what is wrong,
while a normal request made at the same time is answered; and --dtype / $APP_DTYPE reach the pipeline."""
from __future__ import annotations

import socket
import struct
import threading
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffusion_core.data import load_dataset
from diffusion_core.uploads import load_picture_zip, read_picture

from conftest import TINY_LABELS

FAST = 5.0  # seconds: "within a second", loosely, for a busy CI machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def valid_png(width: int, height: int) -> bytes:
    """A real 1-bit PNG of width x height black pixels: every row's bytes are there (zlib of zeros), so a
    decoder would decode all of them."""
    idat = zlib.compress((b"\0" + bytes((width + 7) // 8)) * height, 9)  # each row: its filter byte, its pixels
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def claiming_png(width: int, height: int) -> bytes:
    """A small real PNG (Pillow's) whose IHDR is patched to claim width x height, its CRC fixed."""
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (255, 0, 0)).save(buffer, format="PNG")
    png = bytearray(buffer.getvalue())
    assert png[12:16] == b"IHDR"
    png[16:24] = struct.pack(">II", width, height)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])) & 0xFFFFFFFF)
    return bytes(png)


def zip_bomb(path: Path, gib: int = 2) -> Path:
    """A valid zip whose one member, a PNG's name on ``gib`` GiB of zeros, deflates to about a thousandth of
    that: 1 MiB of zeros compressed once, its full-flushed block repeated (each block independent)."""
    mib = bytes(2**20)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(mib) + compressor.flush(zlib.Z_FULL_FLUSH)
    body = block * (gib * 1024) + compressor.flush(zlib.Z_FINISH)
    crc = 0
    for _ in range(gib * 1024):
        crc = zlib.crc32(mib, crc)
    name, size = b"sprites/bomb.png", gib * 2**30
    fields = struct.pack("<HHHHHIII", 20, 0, 8, 0, 0, crc, len(body), size)
    local = b"PK\x03\x04" + fields + struct.pack("<HH", len(name), 0) + name
    central = (b"PK\x01\x02" + struct.pack("<H", 20) + fields + struct.pack("<HHHHHII", len(name), 0, 0, 0, 0, 0, 0)
               + name)
    end = b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, 1, 1, len(central), len(local) + len(body), 0)
    path.write_bytes(local + body + central + end)
    return path


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("hostile")
    files = {"12k.png": valid_png(12_000, 12_000), "50k.png": claiming_png(50_000, 50_000)}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    zip_bomb(folder / "bomb.zip")
    prompt = folder / "prompt.txt"
    prompt.write_text("red apple " * 1_000_000)  # 10 MB
    return {name: folder / name for name in (*files, "bomb.zip", "prompt.txt")}


def refused_quickly(call, match: str, error=ValueError):
    start = time.perf_counter()
    with pytest.raises(error, match=match):
        call()
    seconds = time.perf_counter() - start
    print(f"refused in {seconds:.2f} s: {match}")
    assert seconds < FAST, f"refused after {seconds:.1f} s"


def test_the_hostile_files_are_what_they_claim(hostile):
    big = hostile["12k.png"]
    assert big.stat().st_size < 100_000
    with pytest.warns(Image.DecompressionBombWarning), Image.open(big) as image:  # Pillow alone would warn,
        assert image.size == (12_000, 12_000) and image.mode == "1"               # and decode it
    assert 12_000**2 < 2 * Image.MAX_IMAGE_PIXELS  # (it refuses only above twice its warning's limit)
    claimed = hostile["50k.png"].read_bytes()
    assert struct.unpack(">II", claimed[16:24]) == (50_000, 50_000) and len(claimed) < 200
    assert zlib.crc32(claimed[12:29]) == struct.unpack(">I", claimed[29:33])[0]  # its header's CRC holds
    with zipfile.ZipFile(hostile["bomb.zip"]) as archive:
        (member,) = archive.infolist()
        assert member.file_size == 2 * 2**30 and hostile["bomb.zip"].stat().st_size < 5 * 2**20
        with archive.open(member) as stream:  # it really inflates: zeros, as much as read
            assert stream.read(3 * 2**20) == bytes(3 * 2**20)


@pytest.mark.parametrize("name, message", [
    ("12k.png", r"12k.png claims 12000x12000 pixels; at most 16,777,216 pixels \(4,096 x 4,096\)"),
    ("50k.png", r"50k.png is too large to decode \(Image size \(2500000000 pixels\) exceeds limit"),
])
def test_huge_pictures_are_refused_before_decoding(hostile, name, message):
    refused_quickly(lambda: read_picture(hostile[name], 16), message)
    refused_quickly(lambda: read_picture(hostile[name].read_bytes(), 16, name=name), message)  # bytes as a path


def test_the_command_lines_folder_reader_refuses_them_too(hostile, tmp_path):
    """Your own folder (--data folder:PATH) has a roomier cap (8,192 x 8,192), still checked before decoding."""
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / label / "ok.png")
    (tmp_path / "b" / "huge.png").write_bytes(hostile["12k.png"].read_bytes())
    refused_quickly(lambda: load_dataset(f"folder:{tmp_path}", image_size=16),
                    r"b/huge.png claims 12000x12000 pixels; at most 67,108,864 pixels \(8,192 x 8,192\)")


def test_a_zip_that_expands_to_gigabytes_is_refused_by_the_app_and_the_command_line(hostile):
    refused_quickly(lambda: load_picture_zip(hostile["bomb.zip"]), "the zip expands to 2,048 MiB; at most 200 MiB")
    refused_quickly(lambda: load_dataset(f"folder:{hostile['bomb.zip']}"), "the zip expands to 2,048 MiB; at most 1,024 MiB")


def test_a_cameras_photo_is_decoded_at_a_reduced_scale_and_a_redraw_reads_an_upload_once(tmp_path):
    """A 12-megapixel JPEG (under the cap) is decoded at 1/8 scale for a sprite: fast, and as the full decode
    resized; the Forward tab's slider redraws reuse the picture read."""
    from ui.forward import _read_upload, read_upload

    x = np.zeros((3024, 4032, 3), np.uint8)
    x[..., 0] = np.linspace(0, 255, 4032).astype(np.uint8)[None]
    photo = tmp_path / "photo.jpg"
    Image.fromarray(x).save(photo, quality=90)
    start = time.perf_counter()
    small = read_picture(photo, 32)
    assert time.perf_counter() - start < FAST
    with Image.open(photo) as image:
        full = np.asarray(image.convert("RGB").resize((32, 32), Image.Resampling.LANCZOS))
    assert np.abs(full.astype(int) - small).max() <= 2
    _read_upload.cache_clear()
    first, again = (read_upload({"path": str(photo)}, 32) for _ in range(2))
    assert (first == small).all() and (again == small).all() and _read_upload.cache_info().hits == 1


# ---------------------------------------------------------------------------------------------
# The server: the app on a tiny model, served in this process with the launch options app.py uses.
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def page():
    """The app's page on a tiny model that is its own fast model too (so every tab's controls are there)."""
    import torch

    from app import build_app
    from diffusion_core.pipeline import DiffusionPipeline
    from diffusion_core.schedule import NoiseSchedule
    from diffusion_core.unet import UNet

    from conftest import TINY_STYLES, TINY_UNET

    torch.manual_seed(0)
    pipe = DiffusionPipeline(UNet(**TINY_UNET), NoiseSchedule("linear", 50), TINY_LABELS, TINY_STYLES, device="cpu")
    return build_app(pipe, "Weights: tiny.", pipe, "Fast model: tiny.")


@pytest.fixture(scope="module")
def served(page):
    from app import launch_options

    _, url, _ = page.launch(prevent_thread_lock=True, server_port=free_port(), quiet=True, **launch_options())
    yield url
    page.close()


@pytest.fixture(scope="module")
def client(served):
    from gradio_client import Client

    return Client(served, verbose=False)


def while_a_normal_request_runs(client, refusals):
    """Each refusal (a callable that must raise quickly) made while a normal Generate request is asked at the
    same moment; the normal request is answered with its pictures."""
    answer = {}
    normal = threading.Thread(target=lambda: answer.setdefault("gallery", client.predict(
        "ddim", 4, 4, 0, api_name="/generate")[0]))
    normal.start()
    for refusal in refusals:
        refusal()
    normal.join(timeout=120)
    assert len(answer["gallery"]) == 4


def test_the_server_refuses_hostile_pictures_and_prompts_at_once_and_still_serves(client, hostile):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    prompt = hostile["prompt.txt"].read_text()
    assert len(prompt) == 10_000_000
    text_limit = r"must be text of at most (200|2,000) characters, got 10,000,000"
    refusals = [
        lambda: refused_quickly(lambda: client.predict(0, handle_file(str(hostile["12k.png"])), 10, "linear",
                                                       api_name="/forward_process"),
                                r"the upload claims 12000x12000 pixels", AppError),
        lambda: refused_quickly(lambda: client.predict(0, handle_file(str(hostile["50k.png"])), 10, "linear",
                                                       api_name="/forward_process"), r"the upload is too large", AppError),
        lambda: refused_quickly(lambda: client.predict(prompt, "any", "any", 3.0, "ddim", 4, 4, 0,
                                                       api_name="/prompt"), "prompt " + text_limit, AppError),
        lambda: refused_quickly(lambda: client.predict(["a"], prompt, 2, "any", 3.0, "ddim", 4, 0,
                                                       api_name="/export_dataset"), "prompts " + text_limit, AppError),
    ]
    while_a_normal_request_runs(client, refusals)


def test_an_upload_over_the_servers_file_size_is_refused_while_it_streams_in(served):
    import httpx

    from app import MAX_FILE_SIZE

    # (no time bound: sending 64 MiB is the client's cost; the server counts the bytes as they come and keeps none)
    reply = httpx.post(served.rstrip("/") + "/gradio_api/upload",
                       files={"files": ("big.png", b"\0" * (MAX_FILE_SIZE + 1), "image/png")}, timeout=60)
    assert reply.status_code == 413 and f"maximum allowed size of {MAX_FILE_SIZE} bytes" in reply.text


def test_a_request_body_over_the_servers_limit_is_refused_before_it_is_read(served):
    import httpx

    from app import MAX_BODY_SIZE

    start = time.perf_counter()
    reply = httpx.post(served.rstrip("/") + "/gradio_api/queue/join", content=b"{" + b" " * MAX_BODY_SIZE + b"}",
                       headers={"content-type": "application/json"}, timeout=60)
    assert reply.status_code == 413 and f"larger than {MAX_BODY_SIZE:,} bytes" in reply.text
    assert time.perf_counter() - start < FAST

    def chunks():  # the same without a Content-Length: cut off once it passes the limit (FastAPI then
        for _ in range(MAX_BODY_SIZE // 2**20 + 2):  # answers 400, "error parsing the body")
            yield b" " * 2**20

    reply = httpx.post(served.rstrip("/") + "/gradio_api/queue/join", content=chunks(),
                       headers={"content-type": "application/json"}, timeout=60)
    assert reply.status_code in (400, 413)


def test_a_long_list_or_a_long_name_is_refused_without_echoing_it():
    import gradio as gr

    from ui.common import as_choice, as_names

    with pytest.raises(gr.Error) as caught:
        as_choice("x" * 10_000_000, "class", TINY_LABELS)
    assert "(10,000,000 characters)" in caught.value.message and len(caught.value.message) < 300
    with pytest.raises(gr.Error, match=r"classes must be a list of names from \['a', 'b', 'c'\] \(at most 3\), "
                                       r"got a list of 1,000,000 items"):
        as_names(["a"] * 1_000_000, "classes", TINY_LABELS)


def test_the_app_docs_name_every_route_a_client_can_call(page):
    """docs/app.md's API table lists every public route and every live-redraw route of the page."""
    docs = (Path(__file__).resolve().parent.parent / "docs" / "app.md").read_text()
    routes = {fn.api_name for fn in page.fns.values() if fn.api_visibility == "public" or fn.api_name.startswith("live_")}
    assert {"generate", "train_draw", "cancel_export", "live_generate_context"} <= routes
    assert sorted(route for route in routes if f"`{route}`" not in docs) == []


# ---------------------------------------------------------------------------------------------
# --dtype / $APP_DTYPE
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, env, dtype", [([], "float32", "float32"), (["--dtype", "bfloat16"], "float32", "bfloat16")])
def test_the_dtype_flag_and_its_environment_variable_reach_the_pipeline(tiny_pipeline, tmp_path, monkeypatch,
                                                                        argv, env, dtype):
    """``main`` as `python app.py` runs it, its page and server stubbed: the models sample in the dtype the
    environment asks for, unless the flag says otherwise, and the server gets its file size cap."""
    import app

    folder = tiny_pipeline.save_pretrained(tmp_path / "tiny")
    monkeypatch.setenv("APP_DTYPE", env)
    monkeypatch.setattr("sys.argv", ["app.py", "--model", str(folder), *argv])
    seen = {}

    class Page:
        def launch(self, **kwargs):
            seen["launch"] = kwargs

    def build_app(pipe, *args):
        seen["pipe"] = pipe
        return Page()

    monkeypatch.setattr(app, "build_app", build_app)
    app.main()
    assert seen["launch"]["max_file_size"] == app.MAX_FILE_SIZE
    pipe = seen["pipe"]
    assert pipe.folder == folder and pipe.dtype == dtype


def test_a_wrong_app_dtype_is_a_clear_error(monkeypatch, capsys):
    import app

    monkeypatch.setenv("APP_DTYPE", "float16")
    with pytest.raises(SystemExit):
        app.parse_args([])
    assert "APP_DTYPE must be one of auto, float32, bfloat16, got 'float16'" in capsys.readouterr().err
