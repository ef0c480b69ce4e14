"""Pictures uploaded by strangers, read as a training set: a zip of class folders (one folder per class)
or of pictures side by side (unconditional).

Every check runs before the work it guards (DESIGN.md, "Uploads from strangers"): the member count and
the total uncompressed size from the zip's directory (``ZipInfo.file_size``) before anything is extracted,
each name kept inside the target folder, each member's bytes capped while they are written, and each
picture's pixel count read from its header before it is decoded (Pillow's decompression-bomb warning is
raised as an error too). Anything wrong is a ``ValueError`` with a message for the person who uploaded it.
"""
from __future__ import annotations

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
        raise ValueError(f"the upload is not a readable zip file ({err}); expected {LAYOUT}") from err
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


def read_picture(path: Path, image_size: int, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """One picture as uint8 (image_size, image_size, 3): transparency on white, resized with antialiasing;
    its size is read from the header and checked before the pixels are decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ValueError(f"{path.name} claims {width}x{height} pixels; at most {max_pixels:,} pixels "
                                     "per picture are allowed")
                rgb = rgb_on_white(image).resize((image_size, image_size), Image.Resampling.LANCZOS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ValueError(f"{path.name} is too large to decode ({err})") from err
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"{path.name} is not a picture Pillow can read ({err})") from err
    return np.asarray(rgb, dtype=np.uint8)


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
                     max_pixels: int = MAX_PIXELS) -> SpriteData:
    """An uploaded zip as a data set: class folders give one class each (the context is one-hot over the
    folder names, sorted); pictures side by side give an unconditional data set (no classes)."""
    with tempfile.TemporaryDirectory() as tmp:
        safe_extract(zip_path, tmp, max_members, max_total_bytes)
        root = _content_root(Path(tmp))
        files = [p for p in root.rglob("*") if p.is_file() and not any(map(_hidden, p.relative_to(root).parts))]
        pictures = sorted(p for p in files if p.suffix.lower() in IMAGE_SUFFIXES)
        if not pictures:
            raise ValueError(f"the zip holds no pictures ({', '.join(sorted(IMAGE_SUFFIXES))}); expected {LAYOUT}")
        depths = {len(p.relative_to(root).parts) for p in pictures}
        if depths == {1}:
            class_names: tuple[str, ...] = ()
            labels = np.zeros(len(pictures), dtype=np.int64)
        elif depths == {2}:
            class_names = tuple(sorted({p.relative_to(root).parts[0] for p in pictures}))
            labels = np.array([class_names.index(p.relative_to(root).parts[0]) for p in pictures], dtype=np.int64)
        else:
            raise ValueError(f"the zip mixes pictures at different folder depths; expected {LAYOUT}")
        if len(pictures) < min_images:
            raise ValueError(f"the zip holds {len(pictures)} pictures; at least {min_images} are needed to learn anything")
        counts = np.bincount(labels, minlength=max(len(class_names), 1))
        if class_names and counts.min() < MIN_PER_CLASS:
            few = [name for name, n in zip(class_names, counts) if n < MIN_PER_CLASS]
            raise ValueError(f"the class folder(s) {few} hold fewer than {MIN_PER_CLASS} pictures")
        images = np.stack([read_picture(p, image_size, max_pixels) for p in pictures])
    context = one_hot(labels, len(class_names)) if class_names else np.zeros((len(images), 0), dtype=np.float32)
    return SpriteData(images, context, labels, class_names)

