"""Data sets: the shipped emoji sprites, the course's sprite .npy files, and a folder of images.

Each loader returns a ``SpriteData``: uint8 images (N, H, W, 3), a float context (N, K) and the
context's attribute names. ``to_tensors`` turns it into the library's format: NCHW in [-1, 1].
The emoji builder (``emoji_build.build_emoji``) renders the shipped arrays from pinned packages.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

EMOJI_CLASSES = ("face", "people", "animal_nature", "food_drink", "travel_places", "activity_object", "symbol", "flag")
EMOJI_STYLES = ("noto", "openmoji", "twemoji", "fluent", "emojione")
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
    names: np.ndarray | None = None      # str (N,): each sprite's emoji name (emoji data only)
    keywords: np.ndarray | None = None   # str (N,): its keywords joined by "|"

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index: np.ndarray) -> "SpriteData":
        text = [None if a is None else a[index] for a in (self.names, self.keywords)]
        return SpriteData(self.images[index], self.context[index], self.labels[index], self.class_names,
                          self.style_names, *text)

    def style_index(self) -> np.ndarray:
        """The style of each picture (its one-hot style part of the context)."""
        return self.context[:, len(self.class_names):].argmax(1)

    def to_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(images NCHW float in [-1, 1], context (N, K) float)."""
        x = torch.from_numpy(self.images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        return x.contiguous(), torch.from_numpy(self.context).float()


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
    """The shipped emoji sprites at 32 or 16 px; ``split`` is "train", "held_out" or "all" (held-out
    emoji appear in no style in training). The context is one-hot class + one-hot style, over the
    file's own class and style names."""
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
    for needed in (key, "labels", "styles", "split", "names", "keywords", "class_names", "style_names"):
        if needed not in arrays:
            raise ValueError(f"{path}: missing array {needed!r}; rebuild it with `python -m diffusion_core build-data emoji`")
    images = arrays[key]
    _check_images(images, path, image_size)
    class_names, style_names = tuple(arrays["class_names"].tolist()), tuple(arrays["style_names"].tolist())
    labels, styles = arrays["labels"].astype(np.int64), arrays["styles"].astype(np.int64)
    context = np.concatenate([one_hot(labels, len(class_names)), one_hot(styles, len(style_names))], axis=1)
    data = SpriteData(images, context, labels, class_names, style_names, arrays["names"], arrays["keywords"])
    if split == "all":
        return data
    return data.subset(arrays["split"] == (1 if split == "held_out" else 0))


def select_emoji(data: SpriteData, classes, styles) -> SpriteData:
    """The emoji pictures of some classes and styles, with a context over those alone (one-hot class,
    and one-hot style when more than one style is kept): a smaller problem that a small model learns faster."""
    classes, styles = list(classes), list(styles)
    for wanted, known, what in ((classes, data.class_names, "class"), (styles, data.style_names, "style")):
        unknown = [name for name in wanted if name not in known]
        if not wanted or unknown:
            raise ValueError(f"choose at least one {what} from {list(known)}" + (f"; unknown: {unknown}" if unknown else ""))
    style_index = data.style_index()
    keep = np.isin(data.labels, [data.class_names.index(c) for c in classes]) \
        & np.isin(style_index, [data.style_names.index(s) for s in styles])
    labels = np.array([classes.index(data.class_names[i]) for i in data.labels[keep]], dtype=np.int64)
    kept_styles = tuple(styles) if len(styles) > 1 else ()
    context = one_hot(labels, len(classes))
    if kept_styles:
        style_of = np.array([styles.index(data.style_names[i]) for i in style_index[keep]], dtype=np.int64)
        context = np.concatenate([context, one_hot(style_of, len(styles))], axis=1)
    text = [None if a is None else a[keep] for a in (data.names, data.keywords)]
    return SpriteData(data.images[keep], context, labels, tuple(classes), kept_styles, *text)


def count_table(path: str | os.PathLike = EMOJI_NPZ) -> str:
    """A markdown table of the emoji file: sprites per class (rows) and style (columns), with the
    held-out share."""
    with np.load(path, allow_pickle=False) as npz:
        labels, styles, split = npz["labels"], npz["styles"], npz["split"]
        class_names, style_names = npz["class_names"].tolist(), npz["style_names"].tolist()
    lines = ["| class | " + " | ".join(style_names) + " | all | of which held out |",
             "| --- |" + " ---: |" * (len(style_names) + 2)]
    for c, name in [*enumerate(class_names), (None, "all")]:
        rows = np.ones(len(labels), bool) if c is None else labels == c
        cells = [int((rows & (styles == s)).sum()) for s in range(len(style_names))]
        lines.append(f"| {name} | " + " | ".join(f"{n:,}" for n in cells)
                     + f" | {int(rows.sum()):,} | {int((rows & (split == 1)).sum()):,} |")
    return "\n".join(lines) + "\n"


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
    """Your own folder of pictures: one sub-folder per class (or pictures side by side, unconditional),
    each picture read by ``uploads.read_picture`` with the command line's limits (``uploads.OWN_FILES``)."""
    from .uploads import OWN_FILES, load_picture_folder

    limits = {k: OWN_FILES[k] for k in ("min_images", "max_pixels", "min_per_class")}
    return load_picture_folder(root, image_size, **limits)


def load_image_zip(path: str | os.PathLike, image_size: int = 32) -> SpriteData:
    """A zip of ``load_image_folder``'s layout (what ``export-dataset`` writes), read by the app's checked
    zip reader (``uploads.load_picture_zip``) with the command line's limits."""
    from .uploads import OWN_FILES, load_picture_zip

    return load_picture_zip(path, image_size, **OWN_FILES)


def rgb_on_white(image):
    """A PIL image as RGB, its transparent parts on white (as the emoji sprites are drawn)."""
    from PIL import Image

    image = image.convert("RGBA")
    background = Image.new("RGBA", image.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, image).convert("RGB")


def load_dataset(spec: str, image_size: int = 32) -> SpriteData:
    """A data set named in a training config: "emoji" (the shipped file, or "emoji:FILE.npz" for one
    built like it), "course:IMAGES.npy,LABELS.npy" or "folder:PATH" (a folder of class sub-folders, or a .zip of one)."""
    if spec == "emoji" or spec.startswith("emoji:"):
        return load_emoji(spec[len("emoji:"):] or EMOJI_NPZ, image_size=image_size)
    if spec.startswith("course:"):
        paths = spec[len("course:"):].split(",")
        if len(paths) != 2:
            raise ValueError(f"course data set must be 'course:IMAGES.npy,LABELS.npy', got {spec!r}")
        return load_course_sprites(*paths)
    if spec.startswith("folder:"):
        path = Path(spec[len("folder:"):])
        if path.suffix.lower() == ".zip":
            return load_image_zip(path, image_size)
        return load_image_folder(path, image_size)
    raise ValueError(f"data set must be 'emoji', 'emoji:FILE.npz', 'course:IMAGES.npy,LABELS.npy' or 'folder:PATH', "
                     f"got {spec!r}")
