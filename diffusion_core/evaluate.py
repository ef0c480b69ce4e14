"""``python -m diffusion_core evaluate --model DIR``: sample quality of a checkpoint, measured with the
project's classifier (see metrics.py) against real-data references, written to the model card."""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import load_emoji
from .metrics import COPY_RMSE, copy_share, frechet_distance, load_classifier, predict
from .model_card import EVALUATION_FILE, EVALUATION_JSON, weights_fingerprint
from .pipeline import MAX_IMAGES, DiffusionPipeline
from .samplers import DEFAULT_SAMPLER, SAMPLERS


@dataclass
class Setting:
    sampler: str
    steps: int
    guidance: float
    num: int | None = None   # samples; None = the default


def default_settings() -> list[Setting]:
    settings = [Setting("ddpm", 1000, 3.0, num=32)]  # 1000 steps: fewer samples
    settings += [Setting("ddpm", 25, w) for w in (1.0, 3.0)]
    settings += [Setting("ddim", n, w) for n in (10, 25, 50) for w in (1.0, 3.0)]
    settings += [Setting(sampler, n, w) for sampler in ("dpmpp_2m", "dpmpp_2m_sde") for n in (10, 20) for w in (1.0, 3.0)]
    settings += [Setting(DEFAULT_SAMPLER, 20, w) for w in (0.0, 2.0, 4.0, 5.0, 8.0)]  # the guidance sweep
    settings += [Setting(DEFAULT_SAMPLER, 25, w) for w in (3.0, 4.0)]  # the quality bar allows 20-25 steps
    return settings


def quick_settings() -> list[Setting]:
    """The default sampler at 20 steps, at the two guidance scales the quality bar allows."""
    return [Setting(DEFAULT_SAMPLER, 20, w) for w in (3.0, 4.0)]


def parse_setting(text: str) -> Setting:
    """'SAMPLER:STEPS:GUIDANCE', e.g. 'dpmpp_2m_sde:25:4'; the sampler checks the ranges."""
    try:
        sampler, steps, guidance = text.split(":")
        setting = Setting(sampler, int(steps), float(guidance))
    except ValueError:
        raise ValueError(f"a setting is SAMPLER:STEPS:GUIDANCE, e.g. dpmpp_2m_sde:25:4; got {text!r}") from None
    if setting.sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {setting.sampler!r} in setting {text!r}; samplers are {SAMPLERS}")
    return setting


def generate_for_labels(pipe: DiffusionPipeline, labels: np.ndarray, setting: Setting, seed: int = 0) -> np.ndarray:
    """One sample per entry of ``labels`` (class indices), in chunks of MAX_IMAGES; chunk k of seed s is
    sampled with seed 1000 s + k, so different seeds draw different noise."""
    images = []
    for chunk, start in enumerate(range(0, len(labels), MAX_IMAGES)):
        names = [pipe.labels[i] for i in labels[start:start + MAX_IMAGES]]
        out = pipe.generate(num_images=len(names), classes=names, sampler=setting.sampler, steps=setting.steps,
                            guidance=setting.guidance, seed=1000 * seed + chunk)
        images.append(out.images)
    return np.concatenate(images)


def stratified_subset(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Indices of an n-element random subset of ``labels`` keeping the class proportions (largest
    remainder rounding, so exactly n)."""
    if n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * n / len(labels)
    take = np.floor(quota).astype(int)
    take[np.argsort(take - quota)[: n - take.sum()]] += 1
    picked = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take)]
    return np.sort(np.concatenate(picked))


def per_class_accuracy(pred: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict[str, float]:
    return {name: float((pred[labels == c] == c).mean()) for c, name in enumerate(classes) if (labels == c).any()}


def evaluate(model: str, classifier: str | None = None, num: int | None = None, settings: list[Setting] | None = None,
             dtype: str = "auto", seeds: tuple[int, ...] = (0,), log=print) -> dict:
    """Every setting sampled once per seed (the same labels, different noise); a row holds the means
    over seeds and, under "seeds", each seed's own numbers."""
    if not seeds or any(not 0 <= seed < 2**40 for seed in seeds):
        raise ValueError(f"seeds must be one or more integers in 0..2^40-1, got {list(seeds)}")
    if num is not None and num < 2:
        raise ValueError(f"num must be at least 2 (the Fréchet distance needs a covariance), got {num}")
    pipe = DiffusionPipeline.from_pretrained(model, dtype=dtype)
    if pipe.model.image_size != 32:
        raise ValueError("evaluation uses the 32x32 emoji classifier; this model makes "
                         f"{pipe.model.image_size}x{pipe.model.image_size} images")
    clf, info = load_classifier(classifier)
    if list(pipe.labels) != info["classes"]:
        raise ValueError(f"the model's labels {pipe.labels} differ from the classifier's {info['classes']}")
    train, held = load_emoji(split="train"), load_emoji(split="held_out")
    train_pred, train_feat = predict(clf, train.images)
    held_pred, held_feat = predict(clf, held.images)
    num = num or len(held)  # default: one sample per held-out image

    def reference(n):
        subset = stratified_subset(held.labels, n)
        return {"accuracy": float((held_pred[subset] == held.labels[subset]).mean()),
                "per_class_accuracy": per_class_accuracy(held_pred[subset], held.labels[subset], info["classes"]),
                "fd": frechet_distance(held_feat[subset], train_feat),
                "copies": copy_share(held.images[subset], train.images), "n": int(len(subset))}

    rows, references = [], {}
    for setting in settings or default_settings():
        n = setting.num or num
        if n not in references:
            references[n] = reference(n)
        labels = held.labels[stratified_subset(held.labels, n)]
        runs = []
        for seed in seeds:
            start = time.perf_counter()
            images = generate_for_labels(pipe, labels, setting, seed)
            seconds = time.perf_counter() - start
            pred, feat = predict(clf, images)
            runs.append({"seed": seed, "accuracy": float((pred == labels).mean()),
                         "per_class_accuracy": per_class_accuracy(pred, labels, info["classes"]),
                         "fd": frechet_distance(feat, train_feat), "copies": copy_share(images, train.images),
                         "seconds_per_image": seconds / len(labels)})
        row = {"sampler": setting.sampler, "steps": setting.steps, "guidance": setting.guidance, "n": int(len(labels)),
               **{k: float(np.mean([r[k] for r in runs])) for k in ("accuracy", "fd", "copies", "seconds_per_image")},
               "per_class_accuracy": {c: float(np.mean([r["per_class_accuracy"][c] for r in runs]))
                                      for c in runs[0]["per_class_accuracy"]},
               "fd_floor": references[n]["fd"], "seeds": runs}
        rows.append(row)
        log(format_row(row))
    return {"model": str(model), "weights_fingerprint": weights_fingerprint(pipe.model.state_dict()),
            "dtype": pipe.dtype, "seeds": list(seeds),
            "classifier_held_out_accuracy": info["held_out_accuracy"],
            "references": {str(k): v for k, v in references.items()}, "rows": rows,
            "copy_threshold_rmse": COPY_RMSE}


def format_row(row: dict) -> str:
    """One table row; with several seeds, n reads "368 x 3" and the accuracy shows its range over seeds."""
    runs = row.get("seeds", [])
    n, accuracy = str(row["n"]), f"{100 * row['accuracy']:.1f}%"
    if len(runs) > 1:
        low, high = (100 * f(r["accuracy"] for r in runs) for f in (min, max))
        n, accuracy = f"{row['n']} x {len(runs)}", f"{accuracy} ({low:.1f}-{high:.1f})"
    return (f"| {row['sampler']} | {row['steps']} | {row['guidance']:g} | {n} | {accuracy} "
            f"| {row['fd']:.2f} | {row['fd_floor']:.2f} | {row['fd'] / row['fd_floor']:.1f}x "
            f"| {100 * row['copies']:.1f}% | {row['seconds_per_image']:.3f} |")


def to_markdown(result: dict) -> str:
    refs = result["references"]
    n_main = max(refs, key=int)
    ref = refs[n_main]
    lines = [
        f"Measured by `python -m diffusion_core evaluate` ({result['dtype']} sampling). Classes follow the held-out "
        "split's class mix; class accuracy is judged by the project's classifier (`assets/classifier.safetensors`); "
        "FD is the Fréchet distance to the training images in its 128-d feature space; the floor is the same "
        "distance for real held-out images of the same count; copies are samples within "
        f"{result['copy_threshold_rmse']} pixel RMSE of a training image."
        + (f" Each setting was sampled with {len(result['seeds'])} noise seeds ({', '.join(map(str, result['seeds']))}): "
           "the numbers are means over seeds, the accuracy's range over seeds in brackets."
           if len(result.get("seeds", [0])) > 1 else ""),
        "",
        f"Real-data references (n={ref['n']} held-out images): classifier accuracy {100 * ref['accuracy']:.1f}% "
        f"(on the whole held-out split: {100 * result['classifier_held_out_accuracy']:.1f}%), FD floor {ref['fd']:.2f}, "
        f"copies {100 * ref['copies']:.1f}%.",
        "",
        "| sampler | steps | guidance | n | class accuracy | FD | FD floor | FD / floor | copies | s/image |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [format_row(r) for r in result["rows"]]
    bar_rows = [r for r in result["rows"] if r["sampler"] == DEFAULT_SAMPLER and 20 <= r["steps"] <= 25
                and 3 <= r["guidance"] <= 4 and r["n"] == ref["n"]]
    if bar_rows:
        lines += ["", f"Class accuracy per class: real held-out images (n={ref['n']}) and samples of {DEFAULT_SAMPLER} "
                  "at the quality bar's settings (steps / guidance).", "",
                  "| class | real | " + " | ".join(f"{r['steps']} / {r['guidance']:g}" for r in bar_rows) + " |",
                  "| --- | ---: | " + " | ".join("---:" for _ in bar_rows) + " |"]
        for name, real in ref["per_class_accuracy"].items():
            lines.append(f"| {name} | {100 * real:.0f}% | "
                         + " | ".join(f"{100 * r['per_class_accuracy'][name]:.0f}%" for r in bar_rows) + " |")
    return "\n".join(lines) + "\n"


def write_to_model_card(folder: Path, markdown: str, result: dict) -> None:
    """evaluation.md and evaluation.json beside the weights; the card's Evaluation section replaced."""
    for name, text in ((EVALUATION_FILE, markdown), (EVALUATION_JSON, json.dumps(result, indent=2))):
        tmp = folder / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, folder / name)
    card_path = folder / "README.md"
    if card_path.exists():
        card = card_path.read_text()
        head, _, rest = card.partition("## Evaluation\n")
        _, sep, tail = rest.partition("\n## ")
        card = head + "## Evaluation\n" + markdown + (("\n## " + tail) if sep else "")
        tmp = folder / ".README.md.tmp"
        tmp.write_text(card)
        os.replace(tmp, card_path)


def evaluate_command(args) -> None:
    settings = [parse_setting(text) for text in args.setting] if args.setting else None
    if args.quick:
        settings = (settings or []) + quick_settings()
    result = evaluate(args.model, args.classifier, num=args.num, settings=settings, dtype=args.dtype, seeds=tuple(args.seeds))
    markdown = to_markdown(result)
    print(markdown)
    folder = Path(args.model)
    if not args.no_write and folder.is_dir():
        write_to_model_card(folder, markdown, result)
        print(f"wrote {folder / EVALUATION_FILE} and updated {folder / 'README.md'}")
