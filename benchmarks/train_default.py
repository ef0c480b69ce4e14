"""The Train tab's default run, called as an API user calls it, and what it learned.

    python -m benchmarks.train_default [--out FILE.md]

Starts `python app.py` (offline), calls `/train` with no arguments (the tab's defaults: face and flag at
16 px, the small preset, at most 700 steps or 2 minutes), times the call until the zip is back, unzips it
and loads it with DiffusionPipeline.from_pretrained. Then scores its samples against its real data in the
features of the shipped sprite classifier (metrics.py), as `evaluate` does: the reference is the
reference role of the training split's face and flag sprites, the floor is the held-out face and flag
sprites against it, and the model draws as many pictures per class as the held-out set has (FD depends
on the count). The classifier sees 32 px, so every picture (real and drawn) is doubled, nearest-neighbour.
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.app_load import start_app  # noqa: E402
from diffusion_core.data import load_emoji, select_emoji  # noqa: E402
from diffusion_core.metrics import frechet_distance, load_classifier, predict, real_roles  # noqa: E402
from diffusion_core.pipeline import MAX_IMAGES, DiffusionPipeline  # noqa: E402

CLASSES = ["face", "flag"]


def doubled(images: np.ndarray) -> np.ndarray:
    return images.repeat(2, axis=1).repeat(2, axis=2)


def score(pipe: DiffusionPipeline, seed: int = 0) -> dict:
    styles = list(load_emoji(image_size=16).style_names)
    train = select_emoji(load_emoji(image_size=16, split="train"), CLASSES, styles)
    held = select_emoji(load_emoji(image_size=16, split="held_out"), CLASSES, styles)
    reference = real_roles(train)[1]
    classifier, info = load_classifier()
    columns = [info["classes"].index(c) for c in CLASSES]
    ref_features = predict(classifier, doubled(reference.images))[1]

    def scores(images, labels):
        pred, features = predict(classifier, doubled(images))
        accuracy = float((np.array(columns)[labels] == pred).mean())
        return {"n": len(images), "fd": frechet_distance(features, ref_features), "class_accuracy": accuracy}

    drawn, labels = [], []
    for c, name in enumerate(CLASSES):
        n = int((held.labels == c).sum())
        for start in range(0, n, MAX_IMAGES):
            k = min(MAX_IMAGES, n - start)
            drawn.append(pipe.generate(num_images=k, classes=[name], seed=seed * 1000 + c * 100 + start // MAX_IMAGES).images)
            labels += [c] * k
    return {"samples": scores(np.concatenate(drawn), np.array(labels)), "real": scores(held.images, held.labels),
            "reference_n": len(reference)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    parser.add_argument("--zip", default=None, help="score this trained zip instead of training (no timing)")
    args = parser.parse_args()
    from gradio_client import Client

    if args.zip:
        status, archive, wall = "(scored from --zip)", args.zip, float("nan")
    else:
        proc, url = start_app("checkpoints/emoji32")
        try:
            start = time.perf_counter()
            status, _, _, archive, *_ = Client(url, verbose=False).predict(api_name="/train")
            wall = time.perf_counter() - start
        finally:
            proc.terminate()
        print(f"/train answered in {wall:.0f} s: {archive}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(archive) as z:
            z.extractall(tmp)
        rows = list(csv.DictReader(open(Path(tmp) / "training_log.csv")))
        pipe = DiffusionPipeline.from_pretrained(tmp, dtype="auto")
        result = score(pipe)
    s, r = result["samples"], result["real"]
    last = rows[-1]
    text = "\n".join([
        f"The Train tab's default run through `/train` with no arguments: {platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}. Command: `python -m benchmarks.train_default`.", "",
        f"- `/train` answered with the zip in **{wall:.0f} s** (app already started; training, export, zip); "
        f"{status.splitlines()[0]}",
        f"- the log's last row: step {last['step']}, loss {float(last['loss']):.4f}, {float(last['images_per_s']):.0f} "
        f"images/s over the last interval, {float(last['elapsed_s']):.0f} s of training",
        f"- the zip loads with `DiffusionPipeline.from_pretrained` and draws ({pipe.labels}, {pipe.model.image_size} px)", "",
        "| pictures | n | FD (to the reference) | class accuracy |", "|---|---|---|---|",
        f"| drawn by the trained model (its default sampling) | {s['n']} | {s['fd']:.2f} | {s['class_accuracy']:.1%} |",
        f"| real, held-out (the floor) | {r['n']} | {r['fd']:.2f} | {r['class_accuracy']:.1%} |", "",
        f"FD / floor = **{s['fd'] / r['fd']:.1f}x**. Reference: {result['reference_n']} face and flag training sprites "
        "(the reference role); features of the shipped sprite classifier at 32 px (every 16 px picture doubled)."])
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
