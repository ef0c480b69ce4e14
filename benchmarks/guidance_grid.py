"""What the guidance slider does to each model: the same noise and classes at several w, one block per model.

    python -m benchmarks.guidance_grid --model checkpoints/emoji32 --model checkpoints/emoji32_fast \
        --out assets/guidance_grid.png

Each block has one row per w (top to bottom, --guidance) and one column per picture (class i mod 8,
no style, no text); every model samples at its own default sampler and steps (a distilled student takes
w as an input, its teacher runs two branches), with the same seed. A guidance input that works changes
a block's rows as much as the teacher's change; the printed line per model gives the RMSE (pixels in
[-1, 1]) between its first and last rows.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from diffusion_core.pipeline import DiffusionPipeline
from diffusion_core.viz import image_grid, labelled_blocks, save_atomic


def guidance_rows(pipe: DiffusionPipeline, guidances: list[float], n: int, seed: int) -> np.ndarray:
    """(len(guidances) * n, H, W, 3) uint8: n pictures per w, the same noise for every w."""
    classes = [pipe.labels[i % len(pipe.labels)] for i in range(n)]
    return np.concatenate([pipe.generate(num_images=n, classes=classes, guidance=w, seed=seed).images for w in guidances])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, help="checkpoint folder (repeat for more)")
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0, 5.0, 8.0])
    parser.add_argument("--n", type=int, default=8, help="pictures per row")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--out", default="assets/guidance_grid.png")
    args = parser.parse_args()
    try:
        pipes = [DiffusionPipeline.from_pretrained(m, device="cpu") for m in args.model]
    except ValueError as err:
        sys.exit(f"error: {err}")
    blocks, titles = [], []
    for model, pipe in zip(args.model, pipes):
        rows = guidance_rows(pipe, args.guidance, args.n, args.seed)
        first, last = (rows[i * args.n:(i + 1) * args.n].astype(np.float64) / 127.5 - 1 for i in (0, len(args.guidance) - 1))
        calls = pipe.default_sampling["steps"] * (1 if pipe.guidance_distilled else 2)
        print(f"{model}: {calls} calls per picture; rows w {args.guidance[0]:g} and w {args.guidance[-1]:g} differ by "
              f"RMSE {np.sqrt(((first - last) ** 2).mean()):.3f}")
        blocks.append(image_grid(rows, nrow=args.n, scale=2))
        titles.append(f"{Path(model).name} ({calls} calls)")
    save_atomic(Image.fromarray(labelled_blocks(blocks, titles)), args.out)
    print(f"rows: w = {', '.join(f'{w:g}' for w in args.guidance)}; wrote {args.out}")


if __name__ == "__main__":
    main()
