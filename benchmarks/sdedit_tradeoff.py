"""SDEdit's realism-faithfulness trade-off on held-out sprites blurred or scribbled over.

    for s in 0.2 0.4 0.6 0.8 1; do python -m benchmarks.sdedit_tradeoff --strength $s & done; wait
    python -m benchmarks.sdedit_tradeoff --report   # measures the kept redraws: OUT.json, OUT.md, the figure

Held-out emoji (split 1: the model never saw them in any style), ``--per-style`` sprites of each style at
random (seed 0), damaged two ways: blurred (area-averaged to 8 px and back, bilinear) and scribbled over
(three random strokes, 3 px wide, in emoji colours). Each damaged sprite is redrawn (SDEdit, sdedit.py)
at strengths 0.2 .. 1.0 with its class and style, DDIM with round(F·s) steps (the step size of an F-step
run, ``--full-steps``; diffusers' img2img convention), guidance 4, seed 0. Strength 1 ignores the picture, so both damages
share it. Per style and strength (Meng et al. 2022, fig. 3's two axes):
  realism:      FD / floor, each style's results against that style's reference (evaluate's reference emoji), the
                floor being the clean originals themselves at the same n (FD is biased upward at small n);
  faithfulness: the mean pixel RMSE (0..1 scale) to the damaged input, and to the clean original.
Strength 0 is the damaged input itself. The redraws are kept in artifacts/sdedit_tradeoff/ (one process
per strength runs them side by side on a shared CPU); ``--report`` measures what is kept.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from diffusion_core.data import load_emoji
from diffusion_core.metrics import frechet_distance, predict
from diffusion_core.pipeline import DiffusionPipeline
from diffusion_core.viz import image_grid, labelled_blocks, save_atomic

from .named_sprite import cpu_name, real_sets

STRENGTHS = (0.2, 0.4, 0.6, 0.8, 1.0)
SCRIBBLE_COLOURS = ((0, 0, 0), (220, 40, 40), (40, 90, 220), (40, 170, 60), (250, 200, 30))
KEPT = Path("artifacts/sdedit_tradeoff")  # the redraws, kept for --report and the figure (not in git)
COMMAND = ("for s in 0.2 0.4 0.6 0.8 1; do python -m benchmarks.sdedit_tradeoff --strength $s & done; wait; "
           "python -m benchmarks.sdedit_tradeoff --report")


def blur(images: np.ndarray, size: int = 8) -> np.ndarray:
    """Area-average to size x size, then bilinear back: the colours and layout, no strokes."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    x = F.interpolate(F.interpolate(x, size=size, mode="area"), size=images.shape[1], mode="bilinear",
                      align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def scribble(images: np.ndarray, seed: int = 0, strokes: int = 3, width: int = 3) -> np.ndarray:
    """Each sprite with ``strokes`` random three-point strokes drawn over it."""
    rng = np.random.default_rng(seed)
    out = []
    size = images.shape[1]
    for image in images:
        canvas = Image.fromarray(image)
        draw = ImageDraw.Draw(canvas)
        for _ in range(strokes):
            points = [tuple(int(v) for v in rng.integers(2, size - 2, 2)) for _ in range(3)]
            draw.line(points, fill=SCRIBBLE_COLOURS[rng.integers(len(SCRIBBLE_COLOURS))], width=width)
        out.append(np.asarray(canvas))
    return np.stack(out)


def pick(held, per_style: int, seed: int = 0) -> np.ndarray:
    """``per_style`` held-out sprites of each style, at random: rows of ``held``, style by style."""
    rng = np.random.default_rng(seed)
    styles = held.style_index()
    return np.concatenate([np.sort(rng.choice(np.flatnonzero(styles == s), size=per_style, replace=False))
                           for s in range(len(held.style_names))])


def redraw(pipe, held, rows, inputs, strength, full_steps, guidance, seed) -> np.ndarray:
    """Each input redrawn at ``strength`` with its sprite's class and style, one request per style, in
    round(full_steps·s) steps."""
    steps = max(1, round(full_steps * strength))
    styles = held.style_index()[rows]
    out = np.zeros_like(inputs)
    for s in np.unique(styles):
        part = np.flatnonzero(styles == s)
        out[part] = pipe.generate(num_images=len(part), classes=[held.class_names[held.labels[r]] for r in rows[part]],
                                  style=held.style_names[s], sampler="ddim", steps=steps, guidance=guidance,
                                  seed=seed, init_image=inputs[part], strength=strength).images
    return out


def rmse(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over pictures of the pixel RMSE, 0..1 scale."""
    d = (a.astype(np.float64) - b.astype(np.float64)) / 255
    return float(np.sqrt((d ** 2).reshape(len(a), -1).mean(1)).mean())


def measure(images, inputs, originals, original_features, labels, styles, by_style, everything) -> dict:
    """Per style and all together: FD, its floor (the originals), class accuracy, distances."""
    pred, features = predict(everything.classifier, images)
    out = {}
    for name, real, mask in [("all", everything, np.ones(len(images), bool))] + \
            [(s, r, styles == s) for s, r in by_style.items()]:
        out[name] = {"n": int(mask.sum()), "fd": frechet_distance(features[mask], real.reference_features),
                     "fd_floor": frechet_distance(original_features[mask], real.reference_features),
                     "class_accuracy": float((pred[mask] == labels[mask]).mean()),
                     "rmse_to_input": rmse(images[mask], inputs[mask]),
                     "rmse_to_original": rmse(images[mask], originals[mask])}
    return out


def to_markdown(result: dict) -> str:
    strengths = sorted({float(k.split(":")[1]) for k in result["runs"]} - {0.0})
    lines = [f"# SDEdit's trade-off on damaged held-out sprites ({result['model']}, {result['dtype']})", "",
             f"Command: `{result['command']}`", "",
             f"{result['per_style']} held-out sprites per style (n = {result['per_style'] * len(result['styles'])} "
             f"per damage), redrawn with their class and style: DDIM with round({result['full_steps']}·s) steps (the "
             f"step size of a {result['full_steps']}-step run), guidance 4, seed 0. "
             "Each cell: FD / floor (realism; each style against its own reference, the floor being the clean "
             "originals at the same n) · pixel RMSE to the damaged input (faithfulness, 0..1 scale) · RMSE to the "
             "clean original. s = 0 is the damaged input itself; s = 1 ignores it (shared by both damages). "
             f"CPU: {result['cpu']}; {result['seconds']:.0f} s of sampling.", ""]
    for damage in ("blurred", "scribbled"):
        cols = [0.0] + strengths
        lines += [f"## {damage}", "", "| style | " + " | ".join(f"s = {s:g}" for s in cols) + " |",
                  "| --- |" + " ---: |" * len(cols)]
        for style in ["all"] + result["styles"]:
            cells = []
            for s in cols:
                run = result["runs"].get(f"{damage}:{s:g}") or result["runs"].get(f"both:{s:g}")
                if run is None:
                    cells.append("")
                    continue
                r = run[style]
                cells.append(f"{r['fd'] / r['fd_floor']:.2f}x · {r['rmse_to_input']:.3f} · {r['rmse_to_original']:.3f}")
            lines.append(f"| {style} (n={result['runs'][f'{damage}:0']['all' if style == 'all' else style]['n']}) | "
                         + " | ".join(cells) + " |")
        lines.append("")
    lines += ["Class accuracy (all styles): " + "; ".join(
        f"{k} {100 * v['all']['class_accuracy']:.0f}%" for k, v in sorted(result["runs"].items())) + ".", ""]
    return "\n".join(lines)


def save_figure(originals, damaged: dict, results: dict, figure: str, rows: list[int]) -> None:
    """Columns: the original, the damaged input, then the redraws per strength; the chosen rows of each damage."""
    columns, titles = [np.concatenate([originals[rows]] * len(damaged))], ["original"]
    columns.append(np.concatenate([damaged[d][rows] for d in damaged]))
    titles.append("input (s = 0)")
    for s in sorted({s for _, s in results}):
        columns.append(np.concatenate([results.get((d, s), results.get(("both", s)))[rows] for d in damaged]))
        titles.append(f"s = {s:g}")
    grids = [image_grid(c, nrow=1, scale=3) for c in columns]
    save_atomic(Image.fromarray(labelled_blocks(grids, titles)), figure)
    print(f"wrote {figure}: rows {', '.join(damaged)} ({len(rows)} each)")


def inputs_of(args):
    held = load_emoji(split="held_out")
    rows = pick(held, args.per_style)
    originals = held.images[rows]
    return held, rows, originals, {"blurred": blur(originals), "scribbled": scribble(originals)}


def kept_path(damage: str, strength: float) -> Path:
    return KEPT / f"{damage}_s{strength:g}.npz"


def sample_part(args) -> None:
    """Redraw both damages at each ``--strength`` (one shared run at s = 1); keep the pictures in KEPT."""
    pipe = DiffusionPipeline.from_pretrained(args.model, dtype=args.dtype)
    held, rows, _, damaged = inputs_of(args)
    KEPT.mkdir(parents=True, exist_ok=True)
    for strength in args.strength:
        for damage in (["both"] if strength == 1.0 else list(damaged)):
            start = time.perf_counter()
            images = redraw(pipe, held, rows, damaged["blurred" if damage == "both" else damage], strength,
                            args.full_steps, args.guidance, seed=0)
            seconds = time.perf_counter() - start
            np.savez_compressed(kept_path(damage, strength), images=images, seconds=seconds, dtype=pipe.dtype,
                                per_style=args.per_style, full_steps=args.full_steps)
            print(f"{damage} s={strength:g}: {len(images)} redraws in {seconds:.0f} s", flush=True)


def report(args) -> None:
    """Measure the damaged inputs and every kept strength; write OUT.json, OUT.md and the figure."""
    out = Path(args.out)
    held, rows, originals, damaged = inputs_of(args)
    labels = held.labels[rows]
    styles = np.array([held.style_names[s] for s in held.style_index()[rows]])
    by_style = real_sets(held.style_names)
    everything = by_style.pop("all")
    result = {"runs": {}, "seconds": 0.0, "model": args.model, "per_style": args.per_style,
              "full_steps": args.full_steps, "styles": list(held.style_names), "cpu": cpu_name(), "command": COMMAND}
    original_features = predict(everything.classifier, originals)[1]
    for damage, inputs in damaged.items():
        result["runs"][f"{damage}:0"] = measure(inputs, inputs, originals, original_features, labels, styles, by_style,
                                                everything)
    kept = {}
    for strength in STRENGTHS:
        for damage in (["both"] if strength == 1.0 else list(damaged)):
            path = kept_path(damage, strength)
            if not path.exists():
                continue
            with np.load(path) as npz:
                images, result["seconds"] = npz["images"], result["seconds"] + float(npz["seconds"])
                result["dtype"] = str(npz["dtype"])
                assert int(npz["per_style"]) == args.per_style and int(npz["full_steps"]) == args.full_steps
            kept[(damage, strength)] = images
            inputs = damaged["blurred" if damage == "both" else damage]
            result["runs"][f"{damage}:{strength:g}"] = measure(images, inputs, originals, original_features, labels,
                                                               styles, by_style, everything)
            r = result["runs"][f"{damage}:{strength:g}"]["all"]
            print(f"{damage} s={strength:g}: FD/floor {r['fd'] / r['fd_floor']:.2f}, RMSE to input "
                  f"{r['rmse_to_input']:.3f}, to original {r['rmse_to_original']:.3f}", flush=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(to_markdown(result))
    if args.figure and kept:
        save_figure(originals, damaged, kept, args.figure, rows=[0, args.per_style, 2 * args.per_style])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="checkpoints/emoji32")
    parser.add_argument("--per-style", type=int, default=16)
    parser.add_argument("--strength", type=float, nargs="+", default=list(STRENGTHS))
    parser.add_argument("--report", action="store_true", help="measure the kept pictures of every strength")
    parser.add_argument("--full-steps", type=int, default=10, help="steps of a strength-1 run; s takes round(s·this)")
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a CPU shared with other work, two OpenMP teams thrash)")
    parser.add_argument("--out", default="benchmarks/results/sdedit_tradeoff_emoji32")
    parser.add_argument("--figure", default="docs/editing_tradeoff.png")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report(args) if args.report else sample_part(args)


if __name__ == "__main__":
    main()
