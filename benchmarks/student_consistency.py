"""How well a distilled student has learned its teacher's ODE, one noise level at a time.

    python -m benchmarks.student_consistency --student checkpoints/emoji32_fast [--student DIR ...]

For --n noise pictures (class i mod 8, one style after another) the teacher walks its guided ODE over
the distillation skeleton (--skeleton DDIM steps at guidance --guidance, as ``distill.py`` does), and at
every third point of the path x_t the table gives the RMSE (pixels in [-1, 1]) between the path's end
x_0 and
- the teacher's own one-step guess x̂_0(x_t): the blurry average a one-step model starts from (at the last
  point it is the path's end by construction);
- each student's x̂_0(x_t): zero for a perfect consistency function, f(x_t, t) = x_0 on the whole path
  (Song et al. 2023, "Consistency Models", eq. 3).
A student that is worse than the teacher's one-step guess at some noise level has not learned the
path there. The last lines say how much w moves each student's guess (RMSE between its x̂_0 at w and
at --other-guidance, from the same x_t) beside how much w moves the teacher's path end: a student whose
guidance input works moves about as much as its teacher.
"""
from __future__ import annotations

import argparse
import math

import torch

from diffusion_core.distill import teacher_ode_step, x0_from_v
from diffusion_core.pipeline import DiffusionPipeline


def contexts(pipe: DiffusionPipeline, n: int) -> torch.Tensor:
    """Image i: class i mod L, style (i div L) mod S (no text)."""
    n_labels, n_styles = len(pipe.labels), len(pipe.styles)
    ctx = torch.zeros(n, n_labels + n_styles)
    ctx[torch.arange(n), torch.arange(n) % n_labels] = 1.0
    if n_styles:
        ctx[torch.arange(n), n_labels + (torch.arange(n) // n_labels) % n_styles] = 1.0
    return ctx


@torch.no_grad()
def teacher_path(teacher: DiffusionPipeline, x_T, ctx, w: float, skeleton: torch.Tensor):
    """The points x_t of the teacher's guided DDIM path, its one-step x̂_0 at each, and the path's end."""
    alphas_cumprod = teacher.schedule.alphas_cumprod.float()
    n, x, points, guesses = len(x_T), x_T, [], []
    for k, t in enumerate(skeleton.tolist()):
        t_batch = torch.full((n,), t)
        a_s = alphas_cumprod[skeleton[k + 1]].repeat(n) if k + 1 < len(skeleton) else torch.ones(n)
        points.append(x)
        x, x0 = teacher_ode_step(teacher.model, x, t_batch, ctx, None, torch.full((n,), w), alphas_cumprod[t_batch], a_s)
        guesses.append(x0)
    return points, guesses, x


@torch.no_grad()
def student_guess(student: DiffusionPipeline, x_t, t: int, ctx, w: float) -> torch.Tensor:
    n = len(x_t)
    t_batch = torch.full((n,), t)
    v = student.model(x_t, t_batch, ctx, None, torch.full((n,), w)).float()
    return x0_from_v(v, x_t, student.schedule.alphas_cumprod.float()[t_batch]).clamp(-1, 1)


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    """Root mean squared difference per picture, averaged over pictures."""
    return (a - b).pow(2).mean(dim=(1, 2, 3)).sqrt().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", default="checkpoints/emoji32")
    parser.add_argument("--student", action="append", required=True, help="a distilled checkpoint (repeatable)")
    parser.add_argument("--n", type=int, default=48)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--other-guidance", type=float, default=2.0)
    parser.add_argument("--skeleton", type=int, default=25, help="points of the path (the distillation's skeleton_steps)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    teacher = DiffusionPipeline.from_pretrained(args.teacher)
    students = {path: DiffusionPipeline.from_pretrained(path) for path in args.student}
    for path, student in students.items():
        if not student.guidance_distilled:
            parser.error(f"{path} is not a distilled student")
    skeleton = teacher.schedule.respace(args.skeleton)
    ctx = contexts(teacher, args.n)
    x_T = torch.randn(args.n, 3, teacher.model.image_size, teacher.model.image_size)
    points, guesses, end = teacher_path(teacher, x_T, ctx, args.guidance, skeleton)

    print(f"RMSE to the end of the teacher's path ({args.teacher}, w {args.guidance:g}, {args.skeleton} DDIM steps, "
          f"n = {args.n}, seed {args.seed})\n")
    print("| point | t | σ | teacher's one-step x̂_0 | " + " | ".join(f"`{p}`" for p in students) + " |")
    print("| ---: | ---: | ---: | ---: | " + " | ".join("---:" for _ in students) + " |")
    alphas_cumprod = teacher.schedule.alphas_cumprod.float()
    for k in [*range(0, args.skeleton - 1, 3), args.skeleton - 1]:
        t = int(skeleton[k])
        a = alphas_cumprod[t].item()
        sigma = math.sqrt((1 - a) / a)
        row = [rmse(student_guess(s, points[k], t, ctx, args.guidance), end) for s in students.values()]
        print(f"| {k} | {t} | {sigma:.3g} | {rmse(guesses[k], end):.3f} | " + " | ".join(f"{r:.3f}" for r in row) + " |")

    _, _, other_end = teacher_path(teacher, x_T, ctx, args.other_guidance, skeleton)
    print(f"\nHow much w moves the picture (RMSE between w {args.guidance:g} and w {args.other_guidance:g}): "
          f"teacher's path end {rmse(end, other_end):.3f}")
    middle = args.skeleton // 2
    t = int(skeleton[middle])
    for path, student in students.items():
        moved = rmse(student_guess(student, points[middle], t, ctx, args.guidance),
                     student_guess(student, points[middle], t, ctx, args.other_guidance))
        one_step = rmse(student_guess(student, points[0], int(skeleton[0]), ctx, args.guidance),
                        student_guess(student, points[0], int(skeleton[0]), ctx, args.other_guidance))
        print(f"- `{path}`: its x̂_0 from the path's middle (t = {t}) {moved:.3f}, from pure noise {one_step:.3f}")


if __name__ == "__main__":
    main()
