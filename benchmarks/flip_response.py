"""Did a flip-conditioned model (train's "flip_condition") learn its flip input?

    python -m benchmarks.flip_response --model runs/emoji32_guide_flip/export [--n 16] [--out runs/flip_response.png]

Draws the same noise and classes twice, once told "not mirrored" (flipped = 0, what sampling always
asks) and once "mirrored" (flipped = 1), at the checkpoint's default sampler, steps and guidance. If
the model learned the input (Karras et al. 2022, EDM sec. 5: augmentation labels as a condition), the
second set is the first one mirrored, so RMSE(mirrored, flip(not mirrored)) is far below
RMSE(mirrored, not mirrored); if it ignored the input, the reverse, and mirrored pictures leak into its
samples as with plain flips. For scale, the RMSE between two unrelated draws (the next seed). Pixels in
[-1, 1]; the grid has the three rows: not mirrored, mirrored, the first row flipped.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from diffusion_core.pipeline import DiffusionPipeline, to_uint8
from diffusion_core.samplers import sample
from diffusion_core.viz import save_grid


def draw(pipe: DiffusionPipeline, n: int, seed: int, flipped: float) -> torch.Tensor:
    """(n, 3, H, W) in [-1, 1]: classes i mod 8 at default_sampling, told ``flipped``."""
    context, _, _ = pipe.context_for(n, classes=[pipe.labels[i % len(pipe.labels)] for i in range(n)])
    s = pipe.default_sampling

    def denoiser(x_t, t, c):
        return pipe.model(x_t, t, c, flipped=torch.full((len(x_t),), flipped)).float()

    size = pipe.model.image_size
    with torch.no_grad():
        return sample(denoiser, pipe.schedule, (n, pipe.model.in_channels, size, size), sampler=s["sampler"],
                      steps=s["steps"], guidance=s["guidance"], context=context, prediction_type=pipe.prediction_type,
                      seed=seed, clip_x0=True)


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).pow(2).mean().sqrt().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a checkpoint trained with flip_condition")
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/flip_response.png")
    args = parser.parse_args()
    pipe = DiffusionPipeline.from_pretrained(args.model)
    if not pipe.model.flip_condition:
        sys.exit(f"{args.model} was not trained with flip_condition: it has no flip input")
    plain, mirrored, other = draw(pipe, args.n, args.seed, 0.0), draw(pipe, args.n, args.seed, 1.0), draw(pipe, args.n, args.seed + 1, 0.0)
    print(f"{args.model}, {args.n} pictures, seed {args.seed}:")
    print(f"  RMSE(mirrored, not mirrored)       {rmse(mirrored, plain):.3f}")
    print(f"  RMSE(mirrored, flip(not mirrored)) {rmse(mirrored, plain.flip(-1)):.3f}")
    print(f"  RMSE(two unrelated draws)          {rmse(other, plain):.3f}")
    save_grid(to_uint8(torch.cat([plain, mirrored, plain.flip(-1)])), Path(args.out), nrow=args.n)
    print(f"grid: {args.out} (rows: not mirrored, mirrored, the first row flipped)")


if __name__ == "__main__":
    main()
