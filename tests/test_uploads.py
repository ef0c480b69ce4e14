"""Uploaded zips of pictures: layouts read as classes or unconditional, and every hostile upload refused
with a message before the work it would cost (diffusion_core/uploads.py says which checks guard what)."""
from __future__ import annotations

import struct
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image

from diffusion_core.pipeline import DiffusionPipeline
from diffusion_core.train import train
from diffusion_core.uploads import load_picture_zip, read_picture, safe_extract


def png_bytes(color, size=(20, 12)) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def make_zip(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def class_zip(path, classes=("cat", "dog"), per_class=10, prefix=""):
    colors = {"cat": (255, 0, 0), "dog": (0, 0, 255), "sun": (255, 255, 0)}
    return make_zip(path, {f"{prefix}{c}/{i}.png": png_bytes(colors[c]) for c in classes for i in range(per_class)})


def test_class_folders_become_one_hot_classes_and_pictures_are_resized(tmp_path):
    data = load_picture_zip(class_zip(tmp_path / "pets.zip", prefix="my_pets/"), image_size=16)  # one wrapping folder
    assert data.class_names == ("cat", "dog") and data.images.shape == (20, 16, 16, 3)
    assert data.context.shape == (20, 2) and (data.context.argmax(1) == data.labels).all()
    cats = data.images[data.labels == 0]
    assert np.abs(cats.astype(int) - [255, 0, 0]).max() <= 1  # a red picture stays red after resizing


def test_pictures_side_by_side_give_an_unconditional_data_set(tmp_path):
    path = make_zip(tmp_path / "flat.zip", {f"{i}.png": png_bytes((i * 10, 0, 0)) for i in range(16)})
    data = load_picture_zip(path, image_size=16)
    assert data.class_names == () and data.context.shape == (16, 0) and len(data) == 16


@pytest.mark.parametrize("members, message", [
    ({"notes.txt": b"hello", "readme.md": b"hi"}, "holds no pictures"),
    ({f"{i}.png": b"not a png" for i in range(16)}, "is not a picture Pillow can read"),
    ({"a.png": png_bytes((0, 0, 0))}, "at least 16 are needed"),
    ({**{f"{i}.png": png_bytes((0, 0, 0)) for i in range(16)}, "cat/1.png": png_bytes((1, 1, 1))}, "different folder depths"),
    ({**{f"cat/{i}.png": png_bytes((0, 0, 0)) for i in range(16)}, "dog/1.png": png_bytes((1, 1, 1))}, "fewer than 2"),
    ({"../escape.png": png_bytes((0, 0, 0))}, "points outside its folder"),
    ({"/etc/evil.png": png_bytes((0, 0, 0))}, "points outside its folder"),
])
def test_bad_uploads_get_a_message_naming_what_is_wrong(tmp_path, members, message):
    path = tmp_path / "bad.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            info = zipfile.ZipInfo("placeholder")
            info.filename = name  # ZipInfo's constructor would strip a leading '/' or '..'; an attacker's tool does not
            archive.writestr(info, data)
    with pytest.raises(ValueError, match=message):
        load_picture_zip(path, image_size=16)


def test_a_file_that_is_not_a_zip_is_refused(tmp_path):
    (tmp_path / "x.zip").write_bytes(b"PK not really")
    with pytest.raises(ValueError, match="not a readable zip"):
        load_picture_zip(tmp_path / "x.zip")


def test_a_small_zip_that_claims_gigabytes_is_refused_before_anything_is_extracted(tmp_path):
    path = make_zip(tmp_path / "bomb.zip", {"a.png": png_bytes((0, 0, 0)), "b.png": png_bytes((1, 1, 1))})
    raw = bytearray(path.read_bytes())
    central = raw.find(b"PK\x01\x02")  # the first central-directory entry: uncompressed size at offset 24
    raw[central + 24:central + 28] = struct.pack("<I", 0xFFFF0000)  # claims 4 GiB
    path.write_bytes(bytes(raw))
    assert path.stat().st_size < 2_000
    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(ValueError, match=r"expands to 4,096 MiB; at most 200 MiB"):
        safe_extract(path, target)
    assert not any(target.iterdir())


def test_a_member_larger_than_its_directory_says_stops_at_the_claimed_size(tmp_path):
    path = make_zip(tmp_path / "liar.zip", {"a.png": bytes(5_000)})
    raw = bytearray(path.read_bytes())
    central = raw.find(b"PK\x01\x02")
    raw[central + 24:central + 28] = struct.pack("<I", 100)  # says 100 bytes, holds 5,000
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError):  # zipfile's CRC or our byte count catches it; never 5,000 bytes written
        safe_extract(path, tmp_path / "out")
    written = tmp_path / "out" / "a.png"
    assert not written.exists() or written.stat().st_size <= 101


def test_too_many_members_are_refused(tmp_path):
    path = make_zip(tmp_path / "many.zip", {f"{i}.png": b"" for i in range(30)})
    with pytest.raises(ValueError, match="30 entries; at most 20"):
        safe_extract(path, tmp_path / "out", max_members=20)


def huge_png_header(width: int, height: int) -> bytes:
    """A valid PNG whose header claims width x height (its pixel data is a few bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("size, message", [((5_000, 5_000), r"claims 5000x5000 pixels"),  # over our cap
                                           ((60_000, 60_000), r"too large|claims 60000x60000")])  # over Pillow's too
def test_a_picture_that_claims_a_huge_size_is_refused_before_decoding(tmp_path, size, message):
    path = tmp_path / "huge.png"
    path.write_bytes(huge_png_header(*size))
    assert path.stat().st_size < 200
    with pytest.raises(ValueError, match=message):
        read_picture(path, 16)


def test_train_takes_an_uploaded_unconditional_set_in_memory_and_exports_a_model_that_draws(tmp_path):
    from conftest import tiny_train_config

    path = make_zip(tmp_path / "flat.zip", {f"{i}.png": png_bytes((200, i * 8, 0)) for i in range(16)})
    data = load_picture_zip(path, image_size=16)
    cfg = tiny_train_config(tmp_path, "flat", data="upload", image_size=16, channel_mults=[1, 2],
                            attention_resolutions=[8], max_steps=3)
    summary = train(cfg, data=data, show_progress=False)
    assert summary["step"] == 3
    pipe = DiffusionPipeline.from_pretrained(cfg.export_dir)
    assert pipe.labels == [] and pipe.model.context_dim == 0
    assert pipe.generate(num_images=2, sampler="ddim", steps=2, guidance=1.0).images.shape == (2, 16, 16, 3)
