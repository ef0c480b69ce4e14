"""``python -m diffusion_core evaluate``: sample quality against real data, with the real data's own
values beside every number and a calibration table that shows the scale.

``--samples F.npz`` scores any sample set; ``--model DIR`` samples a checkpoint in the held-out
split's class and style mix (one sample per held-out image), scores each setting the same way and
writes the tables and a real-vs-samples picture to its model card. See metrics.py for the roles
of the real images (feature_train, reference, held-out) and the measures.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .data import load_emoji
from .feature_cache import remembered_predict
from .metrics import (COPY_RMSE, MIN_IMAGES, NEIGHBOURS, SPLIT_SEED, check_images, copy_share, frechet_distance,
                      kernel_inception_distance, load_classifier, precision_recall, predict, real_roles)
from .model_card import EVALUATION_FILE, EVALUATION_JSON, weights_fingerprint
from .pipeline import MAX_IMAGES, DiffusionPipeline
from .samplers import DEFAULT_SAMPLER, SAMPLERS
from .text import words

COMPARISON_FILE = "real_vs_samples.png"
HEADLINE = ("dpmpp_2m_sde", 20, 5.0)  # the app's setting, for the picture of a checkpoint without default_sampling
MEASURES = ("class_accuracy", "fd", "kid", "precision", "recall", "copies")
CLASS_MEASURES = ("class_accuracy", "fd", "precision", "recall")  # per class (KID and copies: only overall)
RETRIEVAL_K = 10  # the prompt check also asks whether the named emoji is among a sample's 10 nearest sprites


@dataclass
class Setting:
    sampler: str
    steps: int
    guidance: float
    guidance_interval: tuple[float, float] | None = None  # (σ_lo, σ_hi): guide only there (samplers.sample)
    autoguidance: float | None = None  # w of autoguidance by the checkpoint's guide, instead of CFG (guidance 1)

    def describe(self) -> str:
        """The guidance cell of a table: "5", "5 in σ ∈ (0.3, 3]" or "autoguidance 1.5"."""
        if self.autoguidance is not None:
            return f"autoguidance {self.autoguidance:g}"
        interval = self.guidance_interval
        return f"{self.guidance:g}" + (f" in σ ∈ ({interval[0]:g}, {interval[1]:g}]" if interval else "")

    def describe_in_words(self) -> str:
        return self.describe() if self.autoguidance is not None else f"guidance {self.describe()}"

    def sampling(self) -> dict:
        """The keyword arguments of ``DiffusionPipeline.generate`` for this setting."""
        return dict(sampler=self.sampler, steps=self.steps, guidance=self.guidance,
                    guidance_interval=self.guidance_interval, autoguidance=self.autoguidance)


def default_settings(pipe=None) -> list[Setting]:
    """The guidance sweep and the other samplers; for a consistency student, its sampler at 1, 2, 4 and 8
    steps at its default guidance, and its default steps at guidance 2 and 3; for a student that samples
    by DDIM (progressive distillation, trained for its own steps only), its steps at its guidance, 2 and 3."""
    sampling = pipe.default_sampling if pipe is not None and pipe.guidance_distilled else {}
    if sampling.get("sampler") == "consistency":
        return ([Setting(sampling["sampler"], n, sampling["guidance"]) for n in (1, 2, 4, 8)]
                + [Setting(sampling["sampler"], sampling["steps"], w) for w in (2.0, 3.0)])
    if sampling.get("sampler") == "ddim":
        return [Setting("ddim", sampling["steps"], w) for w in dict.fromkeys((sampling["guidance"], 2.0, 3.0))]
    settings = [Setting(DEFAULT_SAMPLER, 20, w) for w in (1.0, 2.0, 3.0, 4.0, 5.0)]  # the guidance sweep
    settings += [Setting("dpmpp_2m", 20, 3.0), Setting("ddim", 25, 3.0), Setting("ddpm", 25, 3.0)]
    return settings


def quick_settings() -> list[Setting]:
    """The default sampler at 20 steps, guidance 3 and 4."""
    return [Setting(DEFAULT_SAMPLER, 20, w) for w in (3.0, 4.0)]


def mean_over(runs: list[dict], keys) -> dict:
    """Each key's mean over the runs (one run per noise seed)."""
    return {k: float(np.mean([r[k] for r in runs])) for k in keys}


def setting_of(row: dict) -> Setting:
    """The setting of a table row or of a result's headline (JSON gives the interval as a list)."""
    interval = row.get("guidance_interval")
    return Setting(row["sampler"], row["steps"], row["guidance"], tuple(interval) if interval else None,
                   row.get("autoguidance"))


def parse_setting(text: str) -> Setting:
    """'SAMPLER:STEPS:GUIDANCE[:SIGMA_LO:SIGMA_HI]', e.g. 'dpmpp_2m_sde:25:4' or 'dpmpp_2m_sde:20:5:0.3:3'
    (guidance only for noise levels σ in (0.3, 3]), or 'SAMPLER:STEPS:agW', e.g. 'dpmpp_2m_sde:20:ag2'
    (autoguidance by the checkpoint's guide at w 2 instead of classifier-free guidance); the sampler
    checks the ranges."""
    try:
        sampler, steps, guidance, *interval = text.split(":")
        if len(interval) not in (0, 2) or (guidance.startswith("ag") and interval):
            raise ValueError
        if guidance.startswith("ag"):
            setting = Setting(sampler, int(steps), 1.0, autoguidance=float(guidance[2:]))
        else:
            setting = Setting(sampler, int(steps), float(guidance), tuple(map(float, interval)) if interval else None)
    except ValueError:
        raise ValueError(f"a setting is SAMPLER:STEPS:GUIDANCE[:SIGMA_LO:SIGMA_HI] or SAMPLER:STEPS:agW, e.g. "
                         f"dpmpp_2m_sde:25:4 or dpmpp_2m_sde:20:ag2; got {text!r}") from None
    if setting.sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {setting.sampler!r} in setting {text!r}; samplers are {SAMPLERS}")
    return setting


# ---------------------------------------------------------------------------------------------
# Real data and scores
# ---------------------------------------------------------------------------------------------
class RealData:
    """The real images in their roles, their features, and the floor: the scores of real held-out
    images against the reference. ``styles`` limits every role to those styles (a model trained on
    fewer styles is compared with the styles it learned)."""

    def __init__(self, classifier: str | None = None, styles: list[str] | None = None):
        self.classifier, self.info = load_classifier(classifier)
        train, held = load_emoji(split="train"), load_emoji(split="held_out")
        if styles:
            unknown = sorted(set(styles) - set(train.style_names))
            if unknown:
                raise ValueError(f"styles {unknown} are not in the emoji data (its styles: {list(train.style_names)})")
            train, held = (d.subset(np.isin(d.style_index(), [d.style_names.index(s) for s in styles])) for d in (train, held))
        if list(train.class_names) != self.info["classes"]:
            raise ValueError(f"the data's classes {train.class_names} differ from the classifier's {self.info['classes']}")
        self.class_names, self.styles = list(train.class_names), list(styles or train.style_names)
        self.train, self.held = train, held
        self.split_seed = self.info.get("split_seed", SPLIT_SEED)  # which emoji the classifier never trained on
        self.reference = real_roles(train, self.split_seed)[1]  # the classifier's own split
        self.reference_features = remembered_predict(self.classifier, self.reference.images)[1]
        self.floor = self.score(held.images, held.labels, real=True)

    @cached_property
    def class_floors(self) -> dict[str, dict]:
        """``score_by_class`` of the real held-out pictures."""
        return self.score_by_class(self.held.images, self.held.labels, real=True)

    def classify(self, images: np.ndarray, real: bool = False, predicted=None) -> tuple[np.ndarray, np.ndarray]:
        """The classifier's (class predictions, features) of ``images``: ``predicted`` when the caller has them.
        ``real``: pictures scored again by later evaluations (real or damaged real ones), whose answers are
        remembered."""
        return predicted if predicted is not None else (remembered_predict if real else predict)(self.classifier, images)

    def score(self, images: np.ndarray, labels: np.ndarray | None = None, real: bool = False, predicted=None) -> dict:
        """n, class_accuracy (None without labels), fd, kid, precision, recall, copies (``classify`` for
        ``real`` and ``predicted``)."""
        check_images(images, minimum=max(MIN_IMAGES, NEIGHBOURS + 1))
        labels = check_labels(labels, len(images), len(self.class_names))
        pred, features = self.classify(images, real, predicted)
        precision, recall = precision_recall(self.reference_features, features)
        known = labels >= 0
        return {"n": int(len(images)),
                "class_accuracy": float((pred[known] == labels[known]).mean()) if known.any() else None,
                "fd": frechet_distance(features, self.reference_features),
                "kid": kernel_inception_distance(features, self.reference_features),
                "precision": precision, "recall": recall, "copies": copy_share(images, self.train.images)}

    def score_by_class(self, images: np.ndarray, labels: np.ndarray, real: bool = False, predicted=None) -> dict[str, dict]:
        """Per class: n, class_accuracy, fd, precision and recall of the pictures of that class against the
        reference's pictures of that class (FD from ~60-170 pictures is biased upward: read it beside the
        class's floor, the real held-out pictures of that class scored the same way, ``self.class_floors``)."""
        labels = check_labels(labels, len(images), len(self.class_names))
        pred, features = self.classify(images, real, predicted)
        out = {}
        for c, name in enumerate(self.class_names):
            mine, theirs = labels == c, self.reference_features[self.reference.labels == c]
            if mine.sum() <= NEIGHBOURS:
                continue
            precision, recall = precision_recall(theirs, features[mine])
            out[name] = {"n": int(mine.sum()), "class_accuracy": float((pred[mine] == c).mean()),
                         "fd": frechet_distance(features[mine], theirs), "precision": precision, "recall": recall}
        return out

    def score_with_floor(self, images: np.ndarray, labels: np.ndarray | None = None) -> dict:
        """The scores, each beside its real-data value (``*_floor`` for FD and KID, ``*_real`` else)."""
        out = self.score(images, labels)
        out.update(fd_floor=self.floor["fd"], kid_floor=self.floor["kid"], precision_real=self.floor["precision"],
                   recall_real=self.floor["recall"], class_accuracy_real=self.floor["class_accuracy"],
                   copies_real=self.floor["copies"], copy_threshold_rmse=COPY_RMSE)
        return out


def check_labels(labels, n: int, num_classes: int) -> np.ndarray:
    if labels is None:
        return np.full(n, -1, dtype=np.int64)
    labels = np.asarray(labels)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be {n} integers (one per image), got {labels.dtype} {labels.shape}")
    if ((labels < -1) | (labels >= num_classes)).any():
        raise ValueError(f"labels must be class indices 0..{num_classes - 1} or -1 (unconditional)")
    return labels.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Calibration: real images, damaged and collapsed
# ---------------------------------------------------------------------------------------------
def calibration_sets(images: np.ndarray, labels: np.ndarray, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """What a person would call real, slightly or visibly broken, and without variety."""
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()

    def noisy(sigma):
        return np.clip(images + rng.normal(0, sigma, images.shape), 0, 255).round().astype(np.uint8)

    blurred = F.interpolate(F.interpolate(x, size=16, mode="area"), size=32, mode="bilinear", align_corners=False)
    blurred = blurred.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    orders = np.array([[0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]])  # every channel order but RGB
    shuffled = np.take_along_axis(images, orders[rng.integers(0, len(orders), len(images))][:, None, None, :], axis=3)
    eight = rng.choice(len(images), size=8, replace=False)
    repeat = np.resize(eight, len(images))
    return {"real held-out": (images, labels), "noise σ=10/255": (noisy(10), labels),
            "noise σ=25/255": (noisy(25), labels), "blurred (16 px and back)": (blurred, labels),
            "shuffled colours": (shuffled, labels), "collapsed (8 images repeated)": (images[repeat], labels[repeat])}


def calibration(real: RealData) -> dict[str, dict]:
    return {name: real.score(images, labels, real=True) for name, (images, labels) in calibration_sets(real.held.images, real.held.labels).items()}


# ---------------------------------------------------------------------------------------------
# Evaluating a checkpoint
# ---------------------------------------------------------------------------------------------
def generate_like(pipe: DiffusionPipeline, labels: np.ndarray, styles: list[str | None], setting: Setting,
                  seed: int = 0) -> np.ndarray:
    """One sample per (class, style) pair, in chunks of one style and at most MAX_IMAGES; chunk k of
    seed s is sampled with seed 1000 s + k."""
    images = np.zeros((len(labels), pipe.model.image_size, pipe.model.image_size, 3), np.uint8)
    chunk = 0
    for style in dict.fromkeys(styles):
        index = np.flatnonzero([s == style for s in styles])
        for start in range(0, len(index), MAX_IMAGES):
            part = index[start:start + MAX_IMAGES]
            out = pipe.generate(num_images=len(part), classes=[pipe.labels[i] for i in labels[part]], style=style,
                                **setting.sampling(), seed=1000 * seed + chunk)
            images[part] = out.images
            chunk += 1
    return images


def headline_setting(pipe: DiffusionPipeline, config_path: Path) -> Setting:
    """The checkpoint's own default_sampling (config.json), else HEADLINE."""
    sampling = json.loads(config_path.read_text()).get("default_sampling") or {}
    sampler, steps, guidance = HEADLINE
    interval = sampling.get("guidance_interval")
    return Setting(sampling.get("sampler", sampler), sampling.get("steps", steps), sampling.get("guidance", guidance),
                   tuple(interval) if interval else None)


def evaluate(model: str, classifier: str | None = None, settings: list[Setting] | None = None, dtype: str = "auto",
             seeds: tuple[int, ...] = (0,), picture: Path | None = None, styles: list[str] | None = None,
             prompts: int = 0, log=print, read_words: bool = True) -> dict:
    """Every setting sampled once per seed, one sample per held-out image (its class and style);
    a row holds the means over seeds and, under "seeds", each seed's own scores."""
    if not seeds or any(not 0 <= seed < 2**40 for seed in seeds):
        raise ValueError(f"seeds must be one or more integers in 0..2^40-1, got {list(seeds)}")
    pipe, real = load_for_evaluation(model, dtype, classifier, styles)
    if prompts:  # before minutes of sampling, not after
        check_prompt_request(pipe, prompts)
    labels = real.held.labels
    styles = [real.held.style_names[s] for s in real.held.style_index()] if pipe.styles else [None] * len(labels)
    log(f"real held-out vs reference (n={len(labels)}): " + format_scores(real.floor))
    by_style = {s: RealData(classifier, styles=[s]) for s in real.styles} if len(real.styles) > 1 else {}
    in_style = {s: np.array(styles) == s for s in by_style}
    rows = []
    for setting in settings or default_settings(pipe):
        runs = []
        for seed in seeds:
            start = time.perf_counter()
            images = generate_like(pipe, labels, styles, setting, seed)
            seconds = (time.perf_counter() - start) / len(labels)
            predicted = predict(real.classifier, images)  # once, for all three splits (the same classifier file)
            runs.append({"seed": seed, **real.score(images, labels, predicted=predicted), "seconds_per_image": seconds,
                         "per_style": {s: r.score(images[in_style[s]], labels[in_style[s]],
                                                  predicted=tuple(a[in_style[s]] for a in predicted))
                                       for s, r in by_style.items()},
                         "per_class": real.score_by_class(images, labels, predicted=predicted)})
        row = {"sampler": setting.sampler, "steps": setting.steps, "guidance": setting.guidance,
               "guidance_interval": list(setting.guidance_interval) if setting.guidance_interval else None,
               "autoguidance": setting.autoguidance, "n": int(len(labels)),
               **mean_over(runs, (*MEASURES, "seconds_per_image")),
               "per_style": {s: {"n": runs[0]["per_style"][s]["n"],
                                 **mean_over([r["per_style"][s] for r in runs], MEASURES)} for s in by_style},
               "per_class": {c: {"n": scores["n"], **mean_over([r["per_class"][c] for r in runs], CLASS_MEASURES)}
                             for c, scores in runs[0]["per_class"].items()},
               "seeds": runs}
        row["worst_style"] = worst_style(row, {s: r.floor for s, r in by_style.items()})
        rows.append(row)
        log(format_row(row, real.floor))
        if row["worst_style"]:
            log(worst_style_line(row["worst_style"]))
    headline = headline_setting(pipe, pipe.folder / "config.json")
    if picture is not None:
        save_comparison(pipe, real, headline, picture)
    checked = None
    if prompts:
        checked = prompt_check(pipe, real, prompts, read_words=read_words)
        log(f"prompts: {checked}")
    return {"prompts": checked, "model": str(model), "weights_fingerprint": weights_fingerprint(pipe.model.state_dict()),
            "dtype": pipe.dtype, "seeds": list(seeds), "styles": real.styles, "roles": roles_of(real),
            "classifier": real.info, "floor": real.floor, "style_floors": {s: r.floor for s, r in by_style.items()},
            "class_floors": real.class_floors,
            "calibration": calibration(real), "rows": rows,
            "headline": vars(headline), "copy_threshold_rmse": COPY_RMSE, "neighbours": NEIGHBOURS}


def load_for_evaluation(model: str, dtype: str = "auto", classifier: str | None = None,
                        styles: list[str] | None = None) -> tuple[DiffusionPipeline, RealData]:
    """The checkpoint and the real data of its styles (or of ``styles``), checked to fit each other."""
    pipe = DiffusionPipeline.from_pretrained(model, dtype=dtype)
    if pipe.model.image_size != 32:
        raise ValueError("evaluation uses the 32x32 emoji feature network; this model makes "
                         f"{pipe.model.image_size}x{pipe.model.image_size} images")
    if styles and not set(styles) <= set(pipe.styles):
        raise ValueError(f"styles {sorted(set(styles) - set(pipe.styles))} are not among the model's {pipe.styles}")
    real = RealData(classifier, styles=styles or pipe.styles or None)
    if list(pipe.labels) != real.class_names:
        raise ValueError(f"the model's labels {pipe.labels} differ from the data's {real.class_names}")
    return pipe, real


def check_prompt_request(pipe: DiffusionPipeline, num: int) -> None:
    if pipe.vocabulary is None:
        raise ValueError("--prompts needs a text model; this one has none")
    if num < 1:
        raise ValueError(f"--prompts needs a number of names >= 1, got {num}")


def prompt_check(pipe: DiffusionPipeline, real: RealData, num: int = 200, seed: int = 0, read_words: bool = True) -> dict:
    """For ``num`` training emoji names (drawn at random), one sample with the name as prompt: the
    share whose nearest training sprite (Euclidean, in the classifier's features) is that emoji, and
    whose ``RETRIEVAL_K`` nearest include it; and the class accuracy of samples prompted with held-out
    names (emoji the model never saw). Each beside its real-data value: for the names, a real sprite
    of the emoji asked the same of the other training sprites (its other styles are the only way to
    hit); for the held-out names, the classifier on real held-out sprites."""
    check_prompt_request(pipe, num)
    rng = np.random.default_rng(seed)
    names = real.train.names
    train_names = sorted(set(names.tolist()))
    held_names = sorted(set(real.held.names.tolist()))
    features = torch.from_numpy(remembered_predict(real.classifier, real.train.images)[1])

    def draw(prompts):
        chunks = [prompts[i:i + MAX_IMAGES] for i in range(0, len(prompts), MAX_IMAGES)]
        return np.concatenate([pipe.generate(num_images=len(c), prompt=c, seed=k, read_words=read_words).images
                               for k, c in enumerate(chunks)])

    picked = rng.choice(train_names, size=min(num, len(train_names)), replace=False).tolist()
    pred, sample_features = predict(real.classifier, draw(picked))
    hits, hits_k, nearest = name_retrieval(torch.from_numpy(sample_features), features, names, picked)
    own_rng = np.random.default_rng(seed + 1)  # its own draws: the held-out names below stay those of earlier runs
    own = np.array([own_rng.choice(np.flatnonzero(names == name)) for name in picked])
    real_hits, real_hits_k, _ = name_retrieval(features[own], features, names, picked, exclude=own)
    held = rng.choice(held_names, size=min(num, len(held_names)), replace=False).tolist()
    held_labels = np.array([real.held.labels[real.held.names == name][0] for name in held])
    held_pred, _ = predict(real.classifier, draw(held))
    right = held_pred == held_labels
    as_read = [pipe.read_prompt(name)[0] if read_words else name for name in held]
    knows_a_word = np.array([any(w in pipe.vocabulary.index for w in words(name)) for name in as_read])
    return {"train_names": len(picked), "nearest_is_that_emoji": hits, f"within_{RETRIEVAL_K}_nearest": hits_k,
            "real_nearest_is_that_emoji": real_hits, f"real_within_{RETRIEVAL_K}_nearest": real_hits_k,
            "held_out_names": len(held), "held_out_class_accuracy": float(right.mean()),
            "held_out_class_accuracy_real": real.floor["class_accuracy"],
            "held_out_names_without_a_known_word": float(1 - knows_a_word.mean()),
            "held_out_class_accuracy_with_a_known_word": float(right[knows_a_word].mean()) if knows_a_word.any() else None,
            "read_words": read_words, "held_out_read_as": {n: r for n, r in zip(held, as_read) if read_words and " ".join(words(n)) != r},
            "examples": [{"prompt": p, "nearest": n} for p, n in zip(picked[:12], nearest[:12])]}


def name_retrieval(queries: torch.Tensor, features: torch.Tensor, names: np.ndarray, wanted: list[str],
                   exclude: np.ndarray | None = None, k: int = RETRIEVAL_K) -> tuple[float, float, list[str]]:
    """Query i wants emoji ``wanted[i]``: the share whose nearest row of ``features`` is named so,
    the share with it among the k nearest, and each query's nearest name. ``exclude[i]``, a row that
    query i may not match (itself, when the queries are rows of ``features``)."""
    distances = torch.cdist(queries.float(), features.float())
    if exclude is not None:
        distances[torch.arange(len(queries)), torch.as_tensor(exclude)] = float("inf")
    top = names[distances.topk(k, dim=1, largest=False).indices.numpy()]
    found = top == np.asarray(wanted)[:, None]
    return float(found[:, 0].mean()), float(found.any(1).mean()), [str(n) for n in top[:, 0]]


def roles_of(real: RealData) -> dict:
    return {"reference_images": len(real.reference), "held_out_images": len(real.held),
            "feature_train_images": len(real.train) - len(real.reference),
            "split_seed": real.split_seed}


def save_comparison(pipe: DiffusionPipeline, real: RealData, setting: Setting, path: Path, per_class: int = 12) -> None:
    """Per class: a row of real held-out sprites above a row of samples of that class."""
    from .viz import save_grid

    rng = np.random.default_rng(0)
    rows = []
    for c, name in enumerate(pipe.labels):
        index = np.flatnonzero(real.held.labels == c)
        real_row = real.held.images[rng.choice(index, size=min(per_class, len(index)), replace=False)]
        out = pipe.generate(num_images=per_class, classes=[name], **setting.sampling(), seed=c)
        rows += [np.concatenate([real_row, np.full((per_class - len(real_row), 32, 32, 3), 255, np.uint8)]), out.images]
    save_grid(np.concatenate(rows), path, nrow=per_class, scale=2)


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------
def format_scores(s: dict) -> str:
    accuracy = "-" if s.get("class_accuracy") is None else f"{100 * s['class_accuracy']:.1f}%"
    return (f"class accuracy {accuracy}, FD {s['fd']:.2f}, KID {1000 * s['kid']:.2f}e-3, precision {s['precision']:.2f}, "
            f"recall {s['recall']:.2f}, copies {100 * s['copies']:.1f}%")


def cells(s: dict, floor: dict) -> str:
    accuracy = "-" if s.get("class_accuracy") is None else f"{100 * s['class_accuracy']:.1f}%"
    return (f"{accuracy} | {s['fd']:.2f} | {s['fd'] / floor['fd']:.1f}x | {1000 * s['kid']:.2f} | {s['precision']:.2f} "
            f"| {s['recall']:.2f} | {100 * s['copies']:.1f}%")


def format_row(row: dict, floor: dict) -> str:
    """One table row; with several seeds, n reads "840 x 3" and the accuracy shows its range over seeds."""
    runs = row.get("seeds", [])
    n = f"{row['n']} x {len(runs)}" if len(runs) > 1 else str(row["n"])
    setting = setting_of(row)
    return (f"| {row['sampler']} | {row['steps']} | {setting.describe()} | {n} | {cells(row, floor)} "
            f"| {row['seconds_per_image']:.3f} |")


HEADER = "class accuracy | FD | FD / floor | KID x10³ | precision | recall | copies"


def to_markdown(result: dict, picture: str | None = None) -> str:
    floor, roles = result["floor"], result["roles"]
    lines = [
        f"Measured by `python -m diffusion_core evaluate` ({result['dtype']} sampling), one sample per held-out "
        f"image (n={floor['n']}, its class and style; styles: {', '.join(result['styles'])}). Features: the 128-d "
        f"layer of the project's classifier (`assets/classifier.safetensors`, trained on {roles['feature_train_images']} "
        f"images of 70% of the training emoji; {100 * result['classifier']['held_out_accuracy']:.1f}% on held-out emoji). "
        f"FD, KID and precision/recall (k={result['neighbours']}) compare with the reference: "
        f"{roles['reference_images']} training images of the other 30% of the training emoji, which the classifier "
        "never saw. The floor is real held-out images (emoji the model never saw) against the same reference. "
        f"Copies: samples within {result['copy_threshold_rmse']} pixel RMSE of a training image."
        + (f" Each setting was sampled with {len(result['seeds'])} noise seeds: the numbers are means."
           if len(result["seeds"]) > 1 else ""),
        "",
        f"| sampler | steps | guidance | n | {HEADER} | s/image |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| real held-out | | | {floor['n']} | {cells(floor, floor)} | |",
    ]
    lines += [format_row(r, floor) for r in result["rows"]]
    worst = headline_row(result).get("worst_style") if result["rows"] else None
    if worst:
        lines[1:1] = ["", worst_style_line(worst) + " (at the headline setting; the per-style table below)"]
    lines += per_style_table(result)
    lines += per_class_table(result)
    lines += ["", "Calibration: the same measures for real held-out images, damaged copies of them and a "
              "collapsed set, so the numbers above have a scale.", "",
              f"| set | n | {HEADER} |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {name} | {s['n']} | {cells(s, floor)} |" for name, s in result["calibration"].items()]
    if result.get("prompts"):
        p = result["prompts"]
        lines += ["", prompt_summary(p)]
    if picture:
        h = result["headline"]
        lines += ["", f"Real held-out sprites (odd rows) above samples of the same class (even rows), one class per "
                  f"pair of rows, at {h['sampler']}, {h['steps']} steps, guidance "
                  f"{setting_of(h).describe()}:", "",
                  f"![real vs samples]({picture})"]
    return "\n".join(lines) + "\n"


def prompt_summary(p: dict) -> str:
    k = RETRIEVAL_K
    line = (f"Prompts (one sample each at the default setting): for {p['train_names']} training emoji names the "
            f"nearest training sprite is that emoji in {100 * p['nearest_is_that_emoji']:.0f}% of cases")
    if "real_nearest_is_that_emoji" in p:  # results written before the real-data scale lack it
        line += (f" and among the {k} nearest in {100 * p[f'within_{k}_nearest']:.0f}% (a real sprite of the emoji, "
                 f"against the other training sprites: {100 * p['real_nearest_is_that_emoji']:.0f}% and "
                 f"{100 * p[f'real_within_{k}_nearest']:.0f}%)")
    line += (f"; samples prompted with {p['held_out_names']} held-out names (never seen) are recognised as the right "
             f"class in {100 * p['held_out_class_accuracy']:.0f}%")
    if "held_out_class_accuracy_real" in p:
        line += f" (real held-out sprites: {100 * p['held_out_class_accuracy_real']:.0f}%)"
    if p.get("held_out_class_accuracy_with_a_known_word") is not None:
        knows = "knows or reads as one it knows (WordNet)" if p.get("read_words") else "knows"
        line += (f"; {100 * p['held_out_names_without_a_known_word']:.0f}% of those names hold no word the model "
                 f"{knows}, and the others come out right in {100 * p['held_out_class_accuracy_with_a_known_word']:.0f}%")
    return line + "."


def headline_row(result: dict) -> dict:
    """The row at the checkpoint's headline setting (else the first)."""
    headline = setting_of(result["headline"])
    return next((r for r in result["rows"] if setting_of(r) == headline), result["rows"][0])


def per_style_table(result: dict) -> list[str]:
    """The headline setting's row (else the first) split by style, each style against its own
    reference and floor; nothing for a one-style model."""
    floors, rows = result.get("style_floors"), result["rows"]
    if not floors or not rows:
        return []
    row = headline_row(result)
    setting = setting_of(row)
    lines = ["", f"Per style at {row['sampler']}, {row['steps']} steps, {setting.describe_in_words()}: each style's "
             "samples against that style's reference, with its real held-out images (floor) on the row above.", "",
             f"| style | set | n | {HEADER} |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for style, floor in floors.items():
        lines += [f"| {style} | real held-out | {floor['n']} | {cells(floor, floor)} |",
                  f"| {style} | samples | {row['per_style'][style]['n']} | {cells(row['per_style'][style], floor)} |"]
    return lines


def per_class_table(result: dict) -> list[str]:
    """The headline row split by the class asked for, the class furthest from its floor first: each class's samples
    against the reference pictures of that class, beside the real held-out pictures of that class (the floor: FD
    from this few pictures is biased upward, the same for both; the class accuracy the classifier reaches on real
    pictures of the class). Nothing for results written before per-class scores."""
    floors, rows = result.get("class_floors"), result["rows"]
    if not floors or not rows or not headline_row(result).get("per_class"):
        return []
    scores = headline_row(result)["per_class"]
    order = sorted(scores, key=lambda c: scores[c]["fd"] / floors[c]["fd"], reverse=True)
    lines = ["", ("Per class asked for, the class furthest from its floor first: FD, precision and recall against the "
                  "reference pictures of that class; real: the held-out pictures of that class scored the same way."), "",
             "| class | n | class accuracy (real) | FD / floor | precision (real) | recall (real) |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for c in order:
        s, f = scores[c], floors[c]
        lines.append(f"| {c} | {s['n']} | {100 * s['class_accuracy']:.0f}% ({100 * f['class_accuracy']:.0f}%) "
                     f"| {s['fd'] / f['fd']:.2f}x | {s['precision']:.2f} ({f['precision']:.2f}) "
                     f"| {s['recall']:.2f} ({f['recall']:.2f}) |")
    return lines


def worst_style(row: dict, style_floors: dict) -> dict | None:
    """The style a row fails most: the highest FD / floor (each style against its own reference and floor),
    with its recall beside real's and its class accuracy. An average over styles hides this one, so it is the
    headline. None for a one-style model."""
    if not style_floors or not row.get("per_style"):
        return None
    ratios = {style: row["per_style"][style]["fd"] / floor["fd"] for style, floor in style_floors.items()}
    style = max(ratios, key=ratios.get)
    scores, floor = row["per_style"][style], style_floors[style]
    return {"style": style, "fd_over_floor": ratios[style], "recall": scores["recall"], "recall_real": floor["recall"],
            "class_accuracy": scores["class_accuracy"], "class_accuracy_real": floor["class_accuracy"],
            "fd_over_floor_by_style": ratios}


def worst_style_line(worst: dict) -> str:
    best = min(worst["fd_over_floor_by_style"], key=worst["fd_over_floor_by_style"].get)
    accuracy = "" if worst["class_accuracy"] is None else (
        f", class accuracy {100 * worst['class_accuracy']:.1f}% (real {100 * worst['class_accuracy_real']:.1f}%)")
    return (f"Worst style: **{worst['style']}**, FD {worst['fd_over_floor']:.2f}x its floor, recall "
            f"{worst['recall']:.2f} (real {worst['recall_real']:.2f}){accuracy}; best: {best}, "
            f"{worst['fd_over_floor_by_style'][best]:.2f}x.")


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


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------
def evaluate_samples(path: str | os.PathLike, classifier: str | None = None, styles: list[str] | None = None) -> dict:
    """Scores of a sample file (``images`` uint8 (N, 32, 32, 3), ``labels`` (N,) class index or -1)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            images, labels = npz["images"], (npz["labels"] if "labels" in npz.files else None)
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"{path}: expected an .npz with 'images' (N, 32, 32, 3) uint8 and 'labels' (N,): {err}") from err
    real = RealData(classifier, styles)
    return {**real.score_with_floor(images, labels), "styles": real.styles, "roles": roles_of(real)}


def evaluate_command(args) -> None:
    if args.prompts < 0:  # said at once, before the model, the data and the feature network are loaded
        raise ValueError(f"--prompts needs a number of names >= 1, got {args.prompts}")
    if args.samples:
        print(json.dumps(evaluate_samples(args.samples, args.classifier, args.styles), indent=2))
        return
    if args.prompts_only:
        if not args.prompts:
            raise ValueError("--prompts-only needs --prompts N (the number of names)")
        pipe, real = load_for_evaluation(args.model, args.dtype, args.classifier, args.styles)
        checked = prompt_check(pipe, real, args.prompts, read_words=not args.literal_prompts)
        print(prompt_summary(checked))
        print(json.dumps(checked, indent=2, ensure_ascii=False))
        return
    settings = [parse_setting(text) for text in args.setting] if args.setting else None
    if args.quick:
        settings = (settings or []) + quick_settings()
    folder = Path(args.model)
    write = not args.no_write and folder.is_dir()
    result = evaluate(args.model, args.classifier, settings=settings, dtype=args.dtype, seeds=tuple(args.seeds),
                      picture=folder / COMPARISON_FILE if write else None, styles=args.styles, prompts=args.prompts,
                      read_words=not args.literal_prompts)
    markdown = to_markdown(result, COMPARISON_FILE if write else None)
    print(markdown)
    if write:
        write_to_model_card(folder, markdown, result)
        print(f"wrote {folder / EVALUATION_FILE}, {folder / COMPARISON_FILE} and updated {folder / 'README.md'}")
