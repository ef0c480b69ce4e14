"""Pictures and zips from anyone, read safely: the one reader of pictures (``open_picture``,
``read_picture``) and of zips of pictures (``load_picture_zip``) for the app and the command line.

A zip is a training set: one folder per class, or pictures side by side (unconditional). Every check
runs before the work it guards: the member count and the total uncompressed size from the zip's
directory (``ZipInfo.file_size``) before anything is extracted, each name kept inside the target
folder, each member's bytes capped while they are written, and each picture's pixel count read from
its header before it is decoded (Pillow's decompression-bomb warning is raised as an error too). Only
PNG, JPEG, GIF, BMP and WebP are opened. Anything wrong is a ``ValueError`` with a message for the
person who gave the file. A picture from a stranger (the app) is capped at ``MAX_PIXELS``; your own
files on the command line get the roomier ``OWN_FILES`` limits, checked the same way.
"""
from __future__ import annotations

import contextlib
import io
import struct
import tempfile
import warnings
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np

from .data import SpriteData, one_hot, rgb_on_white

MAX_MEMBERS = 5_000                    # files and folders in the zip
MAX_TOTAL_BYTES = 200 * 2**20          # uncompressed, all members together
MAX_PIXELS = 4096 * 4096               # per picture, before it is decoded
MIN_IMAGES = 16                        # fewer teach nothing
MIN_PER_CLASS = 2
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp"}
PICTURE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP")  # what Pillow may open (never EPS, which runs Ghostscript)
# your own files on the command line: the same checks with room for an export of 2,000 pictures per class
# (about 3 KB each) in every class and for photos; no least number of pictures (you know what you train on).
# A zip larger than this once expanded is extracted to a temporary folder no more: unzip it, pass the folder.
OWN_FILES = dict(max_members=200_000, max_total_bytes=2**30, max_pixels=8192 * 8192, min_images=1, min_per_class=1)
LAYOUT = ("a zip of pictures: either one folder per class (face/1.png, face/2.png, flag/1.png, ...) or all "
          "pictures side by side for an unconditional model")


def safe_extract(zip_path: str | Path, target: str | Path, max_members: int = MAX_MEMBERS,
                 max_total_bytes: int = MAX_TOTAL_BYTES) -> list[Path]:
    """Extract the zip's files into ``target`` after checking its directory; returns the files written.
    Folders are implied by the names; names that would land outside ``target`` (absolute, ``..``) are
    refused, as are symbolic links."""
    target = Path(target).resolve()
    try:
        archive = zipfile.ZipFile(zip_path)
    except (OSError, zipfile.BadZipFile) as err:
        raise ValueError(f"{Path(zip_path).name} is not a readable zip file ({err}); expected {LAYOUT}") from err
    with archive:
        members = archive.infolist()
        if len(members) > max_members:
            raise ValueError(f"the zip holds {len(members):,} entries; at most {max_members:,} are allowed")
        total = sum(m.file_size for m in members)
        if total > max_total_bytes:
            raise ValueError(f"the zip expands to {total / 2**20:,.0f} MiB; at most {max_total_bytes / 2**20:,.0f} MiB "
                             "are allowed")
        written = []
        for member in members:
            name = PurePosixPath(member.filename.replace("\\", "/"))
            if name.is_absolute() or ".." in name.parts or (name.parts and ":" in name.parts[0]):
                raise ValueError(f"the zip member {member.filename!r} points outside its folder")
            if (member.external_attr >> 16) & 0o170000 == 0o120000:
                raise ValueError(f"the zip member {member.filename!r} is a symbolic link; only files are allowed")
            if member.is_dir():
                continue
            path = (target / name).resolve()
            if target not in path.parents:
                raise ValueError(f"the zip member {member.filename!r} points outside its folder")
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                with archive.open(member) as source, open(path, "wb") as out:
                    copied = _copy_at_most(source, out, member.file_size)
            except (OSError, zipfile.BadZipFile, RuntimeError, EOFError) as err:  # corrupt or encrypted
                raise ValueError(f"cannot read {member.filename!r} from the zip ({err})") from err
            if copied > member.file_size:
                raise ValueError(f"the zip member {member.filename!r} is larger than its directory says")
            written.append(path)
    return written


def _copy_at_most(source, out, limit: int) -> int:
    """Copy up to limit + 1 bytes (one more shows the limit was passed); returns the bytes copied."""
    copied = 0
    while copied <= limit:
        chunk = source.read(min(1 << 20, limit + 1 - copied))
        if not chunk:
            break
        out.write(chunk)
        copied += len(chunk)
    return copied


def open_picture(source, max_pixels: int = MAX_PIXELS, name: str | None = None, draft: int | None = None):
    """A PIL image from a path, bytes or a binary file, decoded (its first frame) only after the size its
    header claims is checked against ``max_pixels``. A picture over the cap, a decompression bomb, a
    format other than ``PICTURE_FORMATS`` or a file the decoder cannot read is a ``ValueError`` naming
    ``name`` (by default the file's name). ``draft``: a JPEG is decoded at the smallest of its 1/2, 1/4,
    1/8 scales that stays at least draft x draft (a photo meant for a sprite decodes in a fraction of the time)."""
    from PIL import Image

    name = _name_of(source, name)
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    with _picture_errors(name):
        with warnings.catch_warnings():  # only the header is read here; our own cap, below, names the size
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(source, formats=PICTURE_FORMATS)
        with image:
            width, height = image.size
            if width * height > max_pixels:
                raise PictureRefused(f"{name} claims {width}x{height} pixels; at most {max_pixels:,} pixels "
                                     f"({_side(max_pixels)}) per picture are allowed")
            if draft and image.format == "JPEG":
                image.draft("RGB", (draft, draft))
            image.load()  # the pixels stay after the file closes
            return image


def read_picture(source, size: int | None = None, max_pixels: int = MAX_PIXELS, name: str | None = None) -> np.ndarray:
    """A picture (path, bytes or binary file) as uint8 (H, W, 3), transparency on white, resized to
    size x size with antialiasing when ``size`` is given; checked as ``open_picture`` checks it."""
    from PIL import Image

    name = _name_of(source, name)
    image = open_picture(source, max_pixels, name, draft=size)
    with _picture_errors(name):
        rgb = rgb_on_white(image)
        if size is not None:
            rgb = rgb.resize((size, size), Image.Resampling.LANCZOS)
        return np.asarray(rgb, dtype=np.uint8)


class PictureRefused(ValueError):
    """A picture refused by our own checks (its message is already the one to show)."""


@contextlib.contextmanager
def _picture_errors(name: str):
    """Pillow's errors on a hostile or broken file, as a ``ValueError`` naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except PictureRefused:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ValueError(f"{name} is too large to decode ({err})") from err
    except (UnidentifiedImageError, OSError, SyntaxError, EOFError, ValueError, TypeError, IndexError,
            struct.error, ZeroDivisionError) as err:
        why = "" if isinstance(err, UnidentifiedImageError) else f": {err}"  # (that one's text is the file's path)
        raise ValueError(f"{name} is not a picture Pillow can read (PNG, JPEG, GIF, BMP or WebP){why}") from err


def _name_of(source, name: str | None) -> str:
    return name or (Path(source).name if isinstance(source, (str, Path)) else "the picture")


def _side(pixels: int) -> str:
    side = int(pixels ** 0.5)
    return f"{side:,} x {side:,}" if side * side == pixels else f"{pixels:,} pixels"


def _content_root(folder: Path) -> Path:
    """Skip a single wrapping folder (zipping a folder often adds one) and macOS's metadata."""
    entries = [p for p in folder.iterdir() if not _hidden(p)]
    while len(entries) == 1 and entries[0].is_dir():
        folder = entries[0]
        entries = [p for p in folder.iterdir() if not _hidden(p)]
    return folder


def _hidden(path: Path | str) -> bool:
    name = Path(path).name
    return name.startswith(".") or name == "__MACOSX"


def load_picture_zip(zip_path: str | Path, image_size: int = 16, min_images: int = MIN_IMAGES,
                     max_members: int = MAX_MEMBERS, max_total_bytes: int = MAX_TOTAL_BYTES,
                     max_pixels: int = MAX_PIXELS, min_per_class: int = MIN_PER_CLASS) -> SpriteData:
    """A zip of pictures as a data set (``load_picture_folder``'s layouts), extracted by ``safe_extract``
    into a temporary folder that is gone when this returns."""
    with tempfile.TemporaryDirectory() as tmp:
        safe_extract(zip_path, tmp, max_members, max_total_bytes)
        return load_picture_folder(tmp, image_size, min_images, max_pixels, min_per_class, what="the zip")


def load_picture_folder(folder: str | Path, image_size: int = 16, min_images: int = MIN_IMAGES,
                        max_pixels: int = MAX_PIXELS, min_per_class: int = MIN_PER_CLASS,
                        what: str | None = None) -> SpriteData:
    """A folder of pictures as a data set: class folders give one class each (the context is one-hot over
    the folder names, sorted); pictures side by side give an unconditional data set (no classes). Each
    picture goes through ``read_picture``."""
    folder = Path(folder)
    what = what or f"the folder {folder}"
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder (expected {LAYOUT.replace('a zip of', 'a folder of')})")
    root = _content_root(folder)
    files = [p for p in root.rglob("*") if p.is_file() and not any(map(_hidden, p.relative_to(root).parts))]
    pictures = sorted(p for p in files if p.suffix.lower() in IMAGE_SUFFIXES)
    if not pictures:
        raise ValueError(f"{what} holds no pictures ({', '.join(sorted(IMAGE_SUFFIXES))}); expected {LAYOUT}")
    depths = {len(p.relative_to(root).parts) for p in pictures}
    if depths == {1}:
        class_names: tuple[str, ...] = ()
        labels = np.zeros(len(pictures), dtype=np.int64)
    elif depths == {2}:
        class_names = tuple(sorted({p.relative_to(root).parts[0] for p in pictures}))
        labels = np.array([class_names.index(p.relative_to(root).parts[0]) for p in pictures], dtype=np.int64)
    else:
        raise ValueError(f"{what} mixes pictures at different folder depths; expected {LAYOUT}")
    if len(pictures) < min_images:
        raise ValueError(f"{what} holds {len(pictures)} pictures; at least {min_images} are needed to learn anything")
    counts = np.bincount(labels, minlength=max(len(class_names), 1))
    if class_names and counts.min() < min_per_class:
        few = [name for name, n in zip(class_names, counts) if n < min_per_class]
        raise ValueError(f"the class folder(s) {few} hold fewer than {min_per_class} pictures")
    images = np.stack([read_picture(p, image_size, max_pixels, name=p.relative_to(root).as_posix()) for p in pictures])
    context = one_hot(labels, len(class_names)) if class_names else np.zeros((len(images), 0), dtype=np.float32)
    return SpriteData(images, context, labels, class_names)
