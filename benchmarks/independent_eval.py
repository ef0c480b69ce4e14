"""A second opinion on a model: `evaluate` with another feature network and another reference set, so a
recipe chosen by the shipped classifier's numbers is checked by one it was never tuned against.

    python -m benchmarks.independent_eval --model checkpoints/emoji32 --model checkpoints/emoji32_fast
                                          [--fast checkpoints/emoji32_fast] [--setting dpmpp_2m_sde:20:4]
                                          [--seeds 0 1] [--dtype float32] [--out FILE.md]

What differs from `python -m diffusion_core evaluate` with the shipped `assets/classifier.safetensors`:
- the classifier: the same design trained again by this script (`train_classifier`, seed 1: another
  initialisation and other batches) on another split of the training emoji (split seed 2: another 30% of each
  class's emoji are its reference, never trained on; the rest train it). It is trained once and kept in
  ``--classifier-dir`` (default ``$DIFFUSION_CACHE``, else ``~/.cache/diffusion_core``).
- the reference: that split's reference, of noto and openmoji only (a shaded style and an outlined one, the two
  styles of issue 41's outside evaluation); the floor is real held-out noto and openmoji sprites.
- samples: one per held-out noto and openmoji sprite (its class and style: the data's class mix), once per seed.

Reported per model: class accuracy (and each class's, lowest first), FD / floor over both styles and per style,
and with ``--fast`` the student's FD / its teacher's (the first ``--model``).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from diffusion_core.evaluate import evaluate, headline_setting, parse_setting
from diffusion_core.feature_cache import cache_dir
from diffusion_core.metrics import load_classifier, train_classifier
from diffusion_core.pipeline import DiffusionPipeline

STYLES = ["noto", "openmoji"]
CLASSIFIER = {"seed": 1, "width": 48, "split_seed": 2}  # the shipped classifier: seed 0, width 48, split seed 1


def independent_classifier(folder: Path | None = None, log=print) -> Path:
    """The second classifier's file, trained into ``folder`` (default: the cache) when it is not there yet."""
    name = "classifier_seed{seed}_width{width}_split{split_seed}.safetensors".format(**CLASSIFIER)
    path = Path(folder or cache_dir()) / name
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        log(f"training the independent classifier into {path} (once)")
        train_classifier(path, log=log, **CLASSIFIER)
    return path


def own_setting(model: str):
    """The model's default setting (its config.json's default_sampling), as `evaluate` reports it."""
    pipe = DiffusionPipeline.from_pretrained(model)
    return headline_setting(pipe, pipe.folder / "config.json")


def summary(result: dict) -> dict:
    """One model's row: its setting, class accuracy, each class's, FD / floor over both styles and per style."""
    (row,) = result["rows"]
    return {"setting": f"{row['sampler']}, {row['steps']} steps, guidance {row['guidance']:g}",
            "class_accuracy": row["class_accuracy"],
            "per_class": {c: s["class_accuracy"] for c, s in row["per_class"].items()},
            "fd_over_floor": row["fd"] / result["floor"]["fd"], "fd": row["fd"],
            "per_style": {s: row["per_style"][s]["fd"] / result["style_floors"][s]["fd"] for s in result["style_floors"]},
            "n": row["n"], "seeds": result["seeds"]}


def markdown(rows: dict[str, dict], classifier_info: dict, floor: dict, fast: str | None) -> str:
    classes = list(next(iter(rows.values()))["per_class"])
    lines = [f"Independent evaluation: classifier seed {CLASSIFIER['seed']}, width {CLASSIFIER['width']}, "
             f"split seed {CLASSIFIER['split_seed']} ({classifier_info['held_out_accuracy']:.1%} on held-out emoji), "
             f"reference and floor of {' and '.join(STYLES)} (real held-out: FD {floor['fd']:.2f}, class accuracy "
             f"{floor['class_accuracy']:.1%}).", "",
             "| model | setting | n × seeds | class accuracy | lowest class | FD / floor | " + " | ".join(STYLES) + " | "
             + " | ".join(classes) + " |",
             "|---|---|---|---|---|---|" + "---|" * (len(STYLES) + len(classes))]
    for model, s in rows.items():
        low = min(s["per_class"], key=s["per_class"].get)
        lines.append(f"| `{model}` | {s['setting']} | {s['n']} × {len(s['seeds'])} | {s['class_accuracy']:.1%} | {low} {s['per_class'][low]:.0%} "
                     f"| {s['fd_over_floor']:.2f}x | " + " | ".join(f"{s['per_style'][st]:.2f}x" for st in STYLES) + " | "
                     + " | ".join(f"{s['per_class'][c]:.0%}" for c in classes) + " |")
    if fast:
        teacher = next(iter(rows))
        lines += ["", f"The student `{fast}`: FD {rows[fast]['fd'] / rows[teacher]['fd']:.2f}x its teacher's (`{teacher}`)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", required=True, help="a checkpoint folder or Hub id (repeatable)")
    parser.add_argument("--fast", default=None, help="one of the --model: a student, compared with the first --model")
    parser.add_argument("--setting", default=None,
                        help="SAMPLER:STEPS:GUIDANCE for every model (default: each model's own, its config's default_sampling)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--classifier-dir", default=None, help="where the classifier is kept (default: the cache)")
    parser.add_argument("--out", default=None, help="also write the table and the JSON beside it (FILE.md, FILE.json)")
    args = parser.parse_args(argv)
    if args.fast and args.fast not in args.model:
        parser.error("--fast must be one of the --model")
    try:
        settings = {model: parse_setting(args.setting) if args.setting else own_setting(model) for model in args.model}
        classifier = independent_classifier(args.classifier_dir)
        rows, results = {}, {}
        for model in args.model:
            results[model] = evaluate(model, classifier=str(classifier), settings=[settings[model]], dtype=args.dtype,
                                      seeds=tuple(args.seeds), styles=STYLES)
            rows[model] = summary(results[model])
    except ValueError as err:  # a model or setting that cannot be used: one line, before minutes of work where it can
        parser.error(str(err))
    first = results[args.model[0]]
    text = markdown(rows, load_classifier(classifier)[1], first["floor"], args.fast)
    print(text)
    if args.out:
        out = Path(args.out)
        out.write_text(text)
        out.with_suffix(".json").write_text(json.dumps({"rows": rows, "classifier": CLASSIFIER, "results": results},
                                                       indent=1, default=str))


if __name__ == "__main__":
    main()
