"""Export a labelled data set drawn by a model (the course's "data augmentation" use).

The result is one zip in torchvision's ImageFolder layout, which ``train --data folder:FILE.zip``
reads back::

    food_drink/000000.png ...        one folder per class (or per prompt, named after it)
    labels.csv                        file, class, prompt, style, seed, index, sampler, steps, guidance
    MODEL_CARD.md                     the card of the weights that drew the pictures

Image ``index`` of row ``seed`` is ``pipe.generate(num_images=index + 1, seed=seed, ...)``'s image
``index`` with that row's class or prompt (noise is seeded per image, and a picture depends on nothing else in
its request), so every picture can be drawn again from its row.
"""
from __future__ import annotations

import io
import os
import re
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from PIL import Image

from .pipeline import MAX_IMAGES, DiffusionPipeline

MAX_PER_LABEL = 10_000
MAX_LABELS = 64
LABELS_CSV = "labels.csv"
CARD_NAME = "MODEL_CARD.md"


@dataclass
class ExportResult:
    path: Path
    num_images: int
    seconds: float
    folders: list[str]
    unknown_words: list[str] = field(default_factory=list)
    dropped_words: list[str] = field(default_factory=list)  # prompt words past the length the model reads
    read_as: dict[str, str] = field(default_factory=dict)   # unknown prompt words read as known ones (lexicon.py)


def folder_name(prompt: str) -> str:
    """A prompt as a folder name: lower-case words joined by '_' ("Red apple!" -> "red_apple")."""
    return "_".join(re.findall(r"[a-z0-9]+", prompt.lower()))[:60]


def export_targets(pipe: DiffusionPipeline, classes, prompts) -> list[tuple[str, str | None, str | None]]:
    """(folder, class, prompt) per label: the named classes, then the prompts; all classes by default."""
    classes, prompts = list(classes or []), [p.strip() for p in prompts or [] if p.strip()]
    if not classes and not prompts:
        classes = list(pipe.labels)
    for name in classes:
        if name not in pipe.labels:
            raise ValueError(f"unknown class {name!r}; classes are {pipe.labels}")
    targets = [(name, name, None) for name in dict.fromkeys(classes)]
    for prompt in dict.fromkeys(prompts):
        base = folder_name(prompt)
        if not base:
            raise ValueError(f"prompt {prompt!r} has no letters or digits to name its folder")
        name, n = base, 2
        while name in {t[0] for t in targets}:
            name, n = f"{base}_{n}", n + 1
        targets.append((name, None, prompt))
    if len(targets) > MAX_LABELS:
        raise ValueError(f"at most {MAX_LABELS} classes and prompts per export, got {len(targets)}")
    return targets


def export_batches(targets: list, per_label: int, batch_size: int) -> list[list[tuple[tuple, int]]]:
    """The export's requests: (target, the picture's number within it) in order, ``batch_size`` at a time; a
    request holds several classes, or several prompts, never both (``generate`` takes a list of either).
    Full requests matter: the network runs on 16-row chunks (pipeline.NETWORK_ROWS), so 8 classes x 2 pictures
    drawn class by class cost 8 chunks a step, and drawn together 1."""
    batches: list[list[tuple[tuple, int]]] = []
    for target in targets:
        for number in range(per_label):
            if not batches or len(batches[-1]) == batch_size or (batches[-1][0][0][1] is None) != (target[1] is None):
                batches.append([])
            batches[-1].append((target, number))
    return batches


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def export_dataset(pipe: DiffusionPipeline, out: str | os.PathLike, classes=None, prompts=None, per_label: int = 100,
                   style: str | None = None, sampler: str | None = None, steps: int | None = None,
                   guidance: float | None = None, seed: int = 0, batch_size: int = MAX_IMAGES,
                   progress=None, generate=None) -> ExportResult:
    """Draw ``per_label`` images for each class in ``classes`` and each text in ``prompts`` and write
    them to the zip ``out`` (atomically: a temporary file beside it, renamed when complete; an error or
    an exception raised by ``progress`` or ``generate``, such as a cancel, leaves no file behind).
    Sampling defaults to the checkpoint's ``default_sampling``; ``progress(done, total)`` is called
    after every batch. Batch b of the whole export (``export_batches``: pictures of several labels share one)
    is drawn with seed ``seed + b``. ``generate(**kwargs)`` draws each batch in place of ``pipe.generate``
    (the app's waits for its turn in its scheduler)."""
    out = Path(out)
    if out.suffix.lower() != ".zip":
        raise ValueError(f"the export must be a .zip file, got {str(out)!r}")
    if isinstance(per_label, bool) or not isinstance(per_label, int) or not 1 <= per_label <= MAX_PER_LABEL:
        raise ValueError(f"images per class must be a whole number in 1..{MAX_PER_LABEL}, got {per_label!r}")
    if not 1 <= batch_size <= MAX_IMAGES:
        raise ValueError(f"batch_size must be in 1..{MAX_IMAGES}, got {batch_size!r}")
    targets = export_targets(pipe, classes, prompts)
    sampling = {"sampler": sampler or pipe.default_sampling["sampler"],
                "steps": steps if steps is not None else pipe.default_sampling["steps"],
                "guidance": guidance if guidance is not None else pipe.default_sampling["guidance"]}
    pipe.context_for(1, style=style, prompt=[t[2] or "" for t in targets])  # bad style or prompt fails before any work
    generate = pipe.generate if generate is None else generate
    total, done, rows, unknown, dropped, read_as = per_label * len(targets), 0, [], [], [], {}
    out.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(handle)
    start = time.perf_counter()
    try:
        with zipfile.ZipFile(tmp_name, "w", compression=zipfile.ZIP_STORED) as archive:  # PNGs are compressed already
            for batch_index, batch in enumerate(export_batches(targets, per_label, batch_size)):
                batch_seed = seed + batch_index
                by_class = batch[0][0][1] is not None
                result = generate(num_images=len(batch), classes=[t[1] for t, _ in batch] if by_class else None,
                                  prompt=None if by_class else [t[2] for t, _ in batch], style=style, seed=batch_seed,
                                  **sampling)
                unknown += result.unknown_words
                dropped += result.dropped_words
                read_as.update(result.read_as)
                for i, ((folder, class_name, prompt), number) in enumerate(batch):
                    name = f"{folder}/{number:06d}.png"
                    archive.writestr(name, png_bytes(result.images[i]))
                    rows.append({"file": name, "class": class_name or "", "prompt": prompt or "",
                                 "style": style or "", "seed": batch_seed, "index": i, **sampling})
                done += len(batch)
                if progress is not None:
                    progress(done, total)
            archive.writestr(LABELS_CSV, pd.DataFrame(rows).to_csv(index=False))
            card = pipe.folder / "README.md" if pipe.folder is not None else None
            archive.writestr(CARD_NAME, card.read_text() if card is not None and card.exists()
                             else f"(no model card: the weights came from {pipe.source or 'memory'})\n")
        os.replace(tmp_name, out)
    finally:
        if os.path.exists(tmp_name):
            os.remove(tmp_name)
    return ExportResult(out, total, time.perf_counter() - start, [t[0] for t in targets], list(dict.fromkeys(unknown)),
                        list(dict.fromkeys(dropped)), read_as)
