"""The classifier's answers for real pictures, remembered: every evaluation scores the same real sprites
(the reference, the held-out floor, each style's floor, the damaged calibration sets), and their features
cost tens of seconds on a CPU while a lookup costs milliseconds.

Each picture is keyed by a hash of its bytes, so any subset or reordering of pictures seen before is
found; the features are stored per classifier (keyed by its weights), in one file under
``$DIFFUSION_CACHE`` (default ``~/.cache/diffusion_core``), written atomically. A cache that cannot be
read is ignored and one that cannot be written stays in memory: it only ever saves time.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from .metrics import SpriteClassifier, predict

_MEMORY: dict[str, dict] = {}  # classifier fingerprint -> {"keys": {picture hash: row}, "preds", "feats"}


def cache_dir() -> Path:
    return Path(os.environ.get("DIFFUSION_CACHE") or Path.home() / ".cache" / "diffusion_core")


def classifier_fingerprint(model: SpriteClassifier) -> str:
    """A hash of the classifier's weights (computed once per model object)."""
    if getattr(model, "_fingerprint", None) is None:
        digest = hashlib.blake2b(digest_size=16)
        for name, tensor in sorted(model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        model._fingerprint = digest.hexdigest()
    return model._fingerprint


def picture_keys(images: np.ndarray) -> list[bytes]:
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in np.ascontiguousarray(images)]


def _load(path: Path) -> dict:
    """The file's rows, and its modification time when read (``mtime_ns``, None when absent)."""
    try:
        mtime_ns = path.stat().st_mtime_ns  # before reading: a write during the read shows as a change later
        with np.load(path) as f:
            keys, preds, feats = f["keys"], f["preds"], f["feats"]
        if not (len(keys) == len(preds) == len(feats)):
            raise ValueError("rows differ")
        return {"keys": {bytes(k): i for i, k in enumerate(keys)}, "preds": preds, "feats": feats, "mtime_ns": mtime_ns}
    except (OSError, ValueError, KeyError, EOFError):  # absent, truncated or foreign: start empty
        return {"keys": {}, "preds": np.zeros(0, np.int64), "feats": np.zeros((0, 0), np.float32), "mtime_ns": None}


def _changed_since_read(path: Path, entry: dict) -> bool:
    try:
        return path.stat().st_mtime_ns != entry.get("mtime_ns")
    except OSError:
        return False


def _merge(entry: dict, on_disk: dict) -> None:
    """Take into ``entry`` the rows of ``on_disk`` it lacks."""
    missing = [key for key in on_disk["keys"] if key not in entry["keys"]]
    if missing and (not entry["keys"] or on_disk["feats"].shape[1:] == entry["feats"].shape[1:]):
        rows = np.array([on_disk["keys"][key] for key in missing])
        start = len(entry["preds"])
        entry["preds"] = np.concatenate([entry["preds"], on_disk["preds"][rows]])
        entry["feats"] = np.concatenate([entry["feats"].reshape(-1, on_disk["feats"].shape[1]), on_disk["feats"][rows]])
        entry["keys"].update({key: start + j for j, key in enumerate(missing)})
    entry["mtime_ns"] = on_disk["mtime_ns"]


def _save(path: Path, entry: dict) -> None:
    """Write the entry, first taking in rows another process saved meanwhile (the last writer keeps both)."""
    _merge(entry, _load(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        keys = np.array(sorted(entry["keys"], key=entry["keys"].get), dtype="S16")
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp.npz")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, keys=keys, preds=entry["preds"], feats=entry["feats"])
        os.replace(tmp, path)
        entry["mtime_ns"] = path.stat().st_mtime_ns
    except OSError:  # a read-only home: the memory copy still serves this process
        pass


@torch.no_grad()
def remembered_predict(model: SpriteClassifier, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``metrics.predict`` (class predictions, float64 features) for pictures whose answers may be stored:
    only the pictures not seen before by this classifier are run through it."""
    fingerprint = classifier_fingerprint(model)
    path = cache_dir() / f"classifier_features_{fingerprint}.npz"
    entry = _MEMORY.get(fingerprint)
    if entry is None:
        entry = _MEMORY[fingerprint] = _load(path)
    keys = picture_keys(images)
    if any(key not in entry["keys"] for key in keys) and _changed_since_read(path, entry):
        _merge(entry, _load(path))  # another process (a parallel evaluation, a test worker) saved answers meanwhile
    new = {}
    for i, key in enumerate(keys):
        if key not in entry["keys"] and key not in new:
            new[key] = i
    if new:
        preds, feats = predict(model, images[list(new.values())])
        start = len(entry["preds"])
        entry["preds"] = np.concatenate([entry["preds"], preds])
        entry["feats"] = np.concatenate([entry["feats"].reshape(-1, feats.shape[1]), feats.astype(np.float32)])
        entry["keys"].update({key: start + j for j, key in enumerate(new)})
        if len(new) >= 64:  # a handful of pictures is cheaper to recompute than to rewrite the file for
            _save(path, entry)
    rows = np.array([entry["keys"][key] for key in keys], dtype=np.int64)
    return entry["preds"][rows], entry["feats"][rows].astype(np.float64)
