"""What each step of a few-step student adds, style by style.

    python -m benchmarks.student_steps --model checkpoints/emoji32_fast --styles openmoji noto --steps 4 3

The consistency sampler (``samplers.consistency_step``) asks the student for x̂_0 at each of its steps and
renoises it to the next one; the picture it returns is the last x̂_0. Here every step's x̂_0 is scored as if
sampling had stopped there, against the style's own reference, with the style's real held-out pictures
as the floor (``evaluate.RealData``): one sample per held-out picture of the style, its class asked for.
A step whose x̂_0 scores worse than the one before it damages that style: the place where a student
trained to end at its last step (Song et al. 2023, "Consistency Models", multistep sampling, Algorithm 1)
has learned the wrong picture.
"""
from __future__ import annotations

import argparse

import numpy as np

from diffusion_core.evaluate import RealData
from diffusion_core.pipeline import MAX_IMAGES, DiffusionPipeline


def step_pictures(pipe: DiffusionPipeline, labels: np.ndarray, style: str, steps: int, guidance: float,
                  seed: int) -> tuple[list[int], list[np.ndarray]]:
    """The sampler's timesteps and x̂_0 after each of its ``steps`` steps (uint8, one list entry per step),
    one picture per label."""
    size = pipe.model.image_size
    pictures = [np.zeros((len(labels), size, size, 3), np.uint8) for _ in range(steps)]
    for start in range(0, len(labels), MAX_IMAGES):
        part = labels[start:start + MAX_IMAGES]
        out = pipe.generate(num_images=len(part), classes=[pipe.labels[i] for i in part], style=style,
                            steps=steps, guidance=guidance, seed=1000 * seed + start, return_trajectory=True)
        for k, x0 in enumerate(out.trajectory.x0_pred):
            pictures[k][start:start + len(part)] = x0
    return [int(t) for t in out.trajectory.timesteps], pictures


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="checkpoints/emoji32_fast", help="a student (its sampler: consistency)")
    parser.add_argument("--styles", nargs="+", default=None, help="default: every style of the model")
    parser.add_argument("--steps", nargs="+", type=int, default=[4, 3], help="sampler steps, one table block each")
    parser.add_argument("--guidance", type=float, default=None, help="w (default: the model's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    pipe = DiffusionPipeline.from_pretrained(args.model, device="cpu")
    if pipe.default_sampling["sampler"] != "consistency":
        raise SystemExit(f"{args.model} samples by {pipe.default_sampling['sampler']!r}, not by the consistency sampler")
    guidance = pipe.default_sampling["guidance"] if args.guidance is None else args.guidance
    print(f"{args.model}, consistency sampler, w {guidance:g}, seed {args.seed}: each step's x̂_0 against its style's "
          "reference (one sample per real held-out picture of the style)\n")
    print("| style | sampler steps | after step | timestep | class accuracy | FD / floor | recall | copies |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for style in args.styles or pipe.styles:
        real = RealData(styles=[style])
        floor = real.floor["fd"]
        print(f"| {style} | real held-out | | | {real.floor['class_accuracy']:.1%} | 1.00x | "
              f"{real.floor['recall']:.2f} | {real.floor['copies']:.1%} |")
        for steps in args.steps:
            timesteps, per_step = step_pictures(pipe, real.held.labels, style, steps, guidance, args.seed)
            for k, pictures in enumerate(per_step):
                s = real.score(pictures, real.held.labels)
                print(f"| {style} | {steps} | {k + 1} | {timesteps[k]} | {s['class_accuracy']:.1%} | "
                      f"{s['fd'] / floor:.2f}x | {s['recall']:.2f} | {s['copies']:.1%} |", flush=True)


if __name__ == "__main__":
    main()
