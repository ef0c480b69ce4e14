"""A training run's learning curve per style: each export (``OUT_DIR/exports/step_*``) evaluated as
``python -m diffusion_core evaluate`` does, one row per export, the worst style first.

    python -m benchmarks.learning_curve --run runs/emoji32_scratch [--steps 1000 2000 | --minutes 30 60 120 240]
                                        [--compare checkpoints/emoji32] [--setting dpmpp_2m_sde:20:4] [--prompts 100]
                                        [--speed IMAGES_PER_S [CURRICULUM_IMAGES_PER_S]] [--out FILE.md]

Columns: images seen (step x the run's batch size), minutes of training to that step (summed over the run's
log, so across resumes: the minutes of whatever machine and load it ran on; with ``--speed``, images ÷ the
recipe's undisturbed images/s instead, for a run that was paused or shared), the worst style (the highest
FD / its floor) and each style's FD / floor, the lowest recall against real's, class accuracy, the class asked
for that is furthest from its floor, and with ``--prompts N`` the text check (for N training names, the share
whose sample's nearest training sprite is that emoji; held-out names' class accuracy). ``--compare`` adds rows
for finished checkpoints at the same setting (e.g. the shipped model).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from diffusion_core.evaluate import evaluate, parse_setting
from diffusion_core.model_card import log_facts


def exports_of(run: Path, steps: list[int] | None) -> list[tuple[int, Path]]:
    """(step, folder) of the run's exports, in step order; only ``steps`` when given."""
    found = sorted((int(p.name.split("_")[1]), p) for p in (run / "exports").glob("step_*") if (p / "config.json").is_file())
    if not found:
        raise SystemExit(f"{run}/exports holds no step_* exports")
    return [(s, p) for s, p in found if steps is None or s in steps]


def at_minutes(exports: list[tuple[int, Path]], minutes: list[float], minutes_to) -> list[tuple[int, Path]]:
    """For each mark, the last export trained within that many minutes (``minutes_to(step)``; a mark the run has
    not reached yet, or one before its first export, is left out with a note)."""
    trained = [(minutes_to(step), step, folder) for step, folder in exports]
    chosen = []
    for mark in minutes:
        within = [(step, folder) for spent, step, folder in trained if spent <= mark]
        if within and trained[-1][0] >= mark * 0.95:
            chosen.append(within[-1])
        else:
            print(f"note: no export at {mark:g} minutes (the run's exports span {trained[0][0]:.0f}-{trained[-1][0]:.0f} min)")
    return list(dict.fromkeys(chosen))


def curve_row(name: str, images: int | None, result: dict, minutes: float | None = None) -> dict:
    (row,) = result["rows"]
    floors = result["style_floors"]
    recall_gap = {s: floors[s]["recall"] - row["per_style"][s]["recall"] for s in floors}
    prompts = result.get("prompts") or {}
    return {"name": name, "images": images, "minutes": minutes, "worst": row["worst_style"],
            "fd_over_floor": {s: row["per_style"][s]["fd"] / floors[s]["fd"] for s in floors},
            "worst_recall_gap": max(recall_gap.items(), key=lambda kv: kv[1]), "class_accuracy": row["class_accuracy"],
            "fd_over_floor_all": row["fd"] / result["floor"]["fd"], "copies": row["copies"],
            "names": prompts.get("nearest_is_that_emoji"), "held_out_names": prompts.get("held_out_class_accuracy"),
            "worst_class": worst_class(row, result.get("class_floors"))}


def worst_class(row: dict, floors: dict | None) -> tuple[str, float, float] | None:
    """(class, FD / floor, class accuracy) of the class asked for that is furthest from its floor."""
    if not floors or not row.get("per_class"):
        return None
    ratios = {c: s["fd"] / floors[c]["fd"] for c, s in row["per_class"].items()}
    name = max(ratios, key=ratios.get)
    return name, ratios[name], row["per_class"][name]["class_accuracy"]


def minutes_at(step: int, batch: int, speed: float, curriculum: tuple[int, float] | None = None) -> float:
    """Minutes of training to ``step`` at ``speed`` images/s (a recipe's speed measured undisturbed on one machine by
    ``benchmarks.training_speed``); with a resolution curriculum (its steps, their images/s), its steps at theirs."""
    small_steps, small_speed = curriculum or (0, speed)
    small = min(step, small_steps)
    return (small * batch / small_speed + (step - small) * batch / speed) / 60


def table(rows: list[dict], styles: list[str]) -> list[str]:
    head = ("| model | images seen | minutes | worst style (FD / floor) | " + " | ".join(styles) + " | all styles | "
            "largest recall gap | class accuracy | worst class (FD / floor, accuracy) | copies | names drawn as that emoji "
            "| held-out names' class |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        worst = r["worst"]
        gap_style, gap = r["worst_recall_gap"]
        percent = lambda v: "" if v is None else f"{100 * v:.0f}%"  # noqa: E731
        images = "" if r["images"] is None else f"{r['images']:,}"
        minutes = "" if r["minutes"] is None else f"{r['minutes']:.0f}"
        lines.append(f"| {r['name']} | {images} | {minutes} | "
                     f"**{worst['style']} {worst['fd_over_floor']:.2f}x** | "
                     + " | ".join(f"{r['fd_over_floor'][s]:.2f}x" for s in styles)
                     + f" | {r['fd_over_floor_all']:.2f}x | {gap_style} {gap:+.2f} | {percent(r['class_accuracy'])} | "
                     + (f"{r['worst_class'][0]} {r['worst_class'][1]:.2f}x, {percent(r['worst_class'][2])} | "
                        if r.get("worst_class") else " | ")
                     + f"{percent(r['copies'])} | {percent(r['names'])} | {percent(r['held_out_names'])} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a training run's out_dir (holds config.json and exports/)")
    parser.add_argument("--steps", type=int, nargs="+", default=None, help="only these steps' exports")
    parser.add_argument("--minutes", type=float, nargs="+", default=None,
                        help="instead of --steps: the last export within each of these minutes of training "
                             "(the log's, or with --speed images ÷ speed)")
    parser.add_argument("--speed", type=float, nargs="+", default=None, metavar="IMAGES_PER_S",
                        help="minutes from images ÷ this speed (benchmarks.training_speed, undisturbed) instead of the "
                             "log's wall time, which counts every pause; a second value: the curriculum steps' speed")
    parser.add_argument("--compare", nargs="*", default=[], help="checkpoint folders to score at the same setting")
    parser.add_argument("--setting", default="dpmpp_2m_sde:20:4")
    parser.add_argument("--prompts", type=int, default=0)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    run = Path(args.run)
    config = json.loads((run / "config.json").read_text())
    batch = config["batch_size"]
    if args.speed and len(args.speed) != (2 if config.get("curriculum_steps") else 1):
        raise SystemExit("--speed takes one images/s, and a second for a run with a resolution curriculum")
    curriculum = (config["curriculum_steps"], args.speed[1]) if args.speed and len(args.speed) == 2 else None

    def minutes_to(step: int) -> float:
        if args.speed:
            return minutes_at(step, batch, args.speed[0], curriculum)
        return log_facts(run / "log.csv", batch, step)[0] / 60

    setting = parse_setting(args.setting)
    rows, styles = [], None
    jobs = [(f"`{Path(c)}`", None, Path(c)) for c in args.compare]
    exports = exports_of(run, args.steps)
    if args.minutes:
        exports = at_minutes(exports, args.minutes, minutes_to)
    jobs += [(f"step {s:,}", s * batch, folder) for s, folder in exports]
    for name, images, folder in jobs:
        result = evaluate(str(folder), settings=[setting], dtype=args.dtype, prompts=args.prompts, log=lambda _: None)
        styles = styles or list(result["style_floors"])
        minutes = None if images is None else minutes_to(images // batch)
        rows.append(curve_row(name, images, result, minutes))
        print("\n".join(table(rows[-1:], styles)[2:]), flush=True)
    picked = "".join(f" --{name} {' '.join(f'{v:g}' for v in values)}"
                     for name, values in (("steps", args.steps), ("minutes", args.minutes), ("speed", args.speed)) if values)
    lines = [f"Learning curve of `{run}` (`python -m benchmarks.learning_curve --run {run}{picked} --setting {args.setting}"
             f"{f' --prompts {args.prompts}' if args.prompts else ''}`; {args.dtype} sampling; one sample per held-out "
             "image of every style, n = 840; FD / floor per style, each against its own reference and floor):", "",
             *table(rows, styles)]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
