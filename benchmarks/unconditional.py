"""Unconditional samples (no class, style or prompt: the Generate tab) scored on the honest metrics,
with and without autoguidance:

    python -m benchmarks.unconditional --model checkpoints/emoji32 --autoguidance 1 1.5 2 3 \
        --grid assets/autoguidance_grid.png

Each w draws --n pictures (default: as many as there are held-out images) at the checkpoint's default
sampler and steps, in chunks of 64 seeded 0, 1, ...; the same noise for every w. FD, KID, precision,
recall and copies are those of ``evaluate`` against all styles' reference; with no labels there is no
class accuracy, so "class mix" stands in for it: the total variation distance between the classes the
classifier sees in the samples and in the reference (0 = the same mix; 1 = no class in common). A model
that draws only faces, or only blobs of one colour, shows there even when its pictures look sharp. The
real held-out row and the collapsed set of ``evaluate``'s calibration give the scale.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from PIL import Image

from diffusion_core.evaluate import RealData, calibration_sets, cells
from diffusion_core.metrics import MIN_IMAGES, predict
from diffusion_core.pipeline import MAX_IMAGES, DiffusionPipeline
from diffusion_core.viz import image_grid, labelled_blocks, save_atomic


def class_mix_distance(real: RealData, images: np.ndarray) -> float:
    """Total variation distance between the predicted-class histograms of ``images`` and the reference."""
    counts = [np.bincount(predict(real.classifier, x)[0], minlength=len(real.class_names)) for x in (images, real.reference.images)]
    mix, reference = (c / c.sum() for c in counts)
    return float(0.5 * np.abs(mix - reference).sum())


def unconditional(pipe: DiffusionPipeline, n: int, w: float, seed: int = 0) -> tuple[np.ndarray, float]:
    """n unconditional pictures at autoguidance w (1 = the main model alone) and the seconds per picture."""
    chunks, start = [], time.perf_counter()
    for k, first in enumerate(range(0, n, MAX_IMAGES)):
        chunks.append(pipe.generate(num_images=min(MAX_IMAGES, n - first), seed=1000 * seed + k,
                                    autoguidance=None if w == 1.0 else w).images)
    return np.concatenate(chunks), (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="checkpoints/emoji32")
    parser.add_argument("--guide", help="guide model folder (default: the checkpoint's own guide/)")
    parser.add_argument("--autoguidance", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0])
    parser.add_argument("--n", type=int, default=0, help="pictures per w (0: one per held-out image)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--grid", help="PNG of the first 16 pictures at every w, one row per w")
    args = parser.parse_args()
    try:
        pipe = DiffusionPipeline.from_pretrained(args.model, dtype=args.dtype)
        if args.guide:
            pipe.set_guide(DiffusionPipeline.from_pretrained(args.guide, dtype=args.dtype))
        real = RealData(styles=pipe.styles or None)
        if any(w != 1.0 for w in args.autoguidance) and pipe.guide is None:
            raise ValueError(f"{args.model} has no guide model (a guide/ folder), so only --autoguidance 1 applies")
    except ValueError as err:
        sys.exit(f"error: {err}")
    n = args.n or len(real.held)
    if n < MIN_IMAGES:
        sys.exit(f"error: --n must be at least {MIN_IMAGES} (the measures need that many pictures), got {n}")
    floor = real.floor
    sampling = pipe.default_sampling
    guide = args.guide or (f"{args.model}/guide" if pipe.guide is not None else "none")
    print(f"{args.model} (guide: {guide}), unconditional, {sampling['sampler']} {sampling['steps']} steps, {pipe.dtype}, "
          f"n = {n} per row\n")
    print("| set | autoguidance w | n | class accuracy | FD | FD / floor | KID x10³ | precision | recall | copies "
          "| class mix | s/image |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    calibration = calibration_sets(real.held.images, real.held.labels)
    for name in ("real held-out", "collapsed (8 images repeated)"):
        images = calibration[name][0]
        print(f"| {name} | | {len(images)} | {cells(real.score(images), floor)} "
              f"| {class_mix_distance(real, images):.2f} | |")
    rows = []
    for w in args.autoguidance:
        images, seconds = unconditional(pipe, n, w, args.seed)
        rows.append(images[:16])
        print(f"| samples | {w:g} | {n} | {cells(real.score(images), floor)} | {class_mix_distance(real, images):.2f} "
              f"| {seconds:.3f} |", flush=True)
    if args.grid:
        block = image_grid(np.concatenate(rows), nrow=16, scale=2)
        save_atomic(Image.fromarray(labelled_blocks([block], [f"autoguidance w = {', '.join(f'{w:g}' for w in args.autoguidance)} (rows)"])),
                    args.grid)
        print(f"\nwrote {args.grid}")


if __name__ == "__main__":
    main()
