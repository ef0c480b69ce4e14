"""The model card (README.md) of an exported checkpoint: data, licence, command, training facts and,
once ``evaluate`` has run, its tables."""
from __future__ import annotations

import hashlib
import io
import json
import os
import platform
from pathlib import Path

import torch

EVALUATION_FILE = "evaluation.md"
EVALUATION_JSON = "evaluation.json"
NOT_EVALUATED = "Not evaluated yet: run `python -m diffusion_core evaluate --model DIR`."
PROJECT = Path(__file__).resolve().parent.parent


def recipe_path(cfg) -> str:
    """The config file a run came from, named by its out_dir: configs/NAME.json (a shipped recipe), or
    configs/experiments/NAME.json where only that one exists."""
    name = f"{Path(cfg.out_dir).name}.json"
    experiment = f"configs/experiments/{name}"
    return experiment if (PROJECT / experiment).is_file() and not (PROJECT / "configs" / name).is_file() else f"configs/{name}"


def run_recipe(cfg, *earlier: str) -> list[str]:
    """What a run's export records as config.json's "recipe": the config files that made its weights, in the
    order they ran. That is the recipe of each checkpoint it started from (``earlier``: init_from, teacher,
    init_student; "" where there is none), then its own config: the project's ``recipe_path`` where that file
    exists, else the copy the run wrote into its out_dir (a run from flags or the app's Train tab). An earlier
    checkpoint that cannot be read now (a resumed run whose start is gone) adds nothing, with a warning."""
    from .pipeline import CONFIG_NAME, read_config, resolve_checkpoint

    recipe: list[str] = []
    for source in filter(None, earlier):
        try:
            before = read_config(resolve_checkpoint(source) / CONFIG_NAME)["recipe"]
        except ValueError as err:
            print(f"warning: the recipe of {source} is unknown ({err}); the export's recipe starts after it")
            before = []
        recipe += [path for path in before if path not in recipe]
    own = recipe_path(cfg)
    return [*recipe, own if (PROJECT / own).is_file() else str(Path(cfg.out_dir) / "config.json")]


def weights_fingerprint(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over the tensors' names and float32 values: the same weights give the same fingerprint
    however they were stored, so an evaluation can say which weights it measured."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        digest.update(name.encode())
        digest.update(state_dict[name].detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def evaluation_of(folder: Path, fingerprint: str) -> str | None:
    """The folder's evaluation tables if they were measured on these weights, else None: a stale
    evaluation (of weights since replaced, e.g. by more training) is not carried over."""
    try:
        measured = json.loads((folder / EVALUATION_JSON).read_text()).get("weights_fingerprint")
        return (folder / EVALUATION_FILE).read_text() if measured == fingerprint else None
    except (OSError, ValueError):
        return None


def initial_weights_training(init_from: str | None, section_name: str = "Training") -> str:
    """For a fine-tuned model (or a student that continued an earlier one): the command and facts table
    from the Training (Distillation) section of the card of the checkpoint it started from (when that
    is a local folder), and that card's own "Before this run" sections, so the card tells the whole
    story back to random weights (to the teacher's weights)."""
    card = Path(init_from) / "README.md" if init_from else None
    if card is None or not card.is_file():
        return ""
    _, found, section = card.read_text().partition(f"\n## {section_name}\n")
    lines = section.partition("\n## ")[0].splitlines()
    table = [i for i, line in enumerate(lines) if line.startswith("|")]
    if not found or not table:
        return ""
    end = next((i for i in range(table[0], len(lines)) if not lines[i].startswith("|")), len(lines))
    body = "\n".join(lines[:end])
    earlier = next((i for i in range(end, len(lines)) if lines[i].startswith("### Before this run")), None)
    older = "\n" + "\n".join(lines[earlier:]).rstrip() + "\n" if earlier is not None else ""
    verb = "distilled" if section_name == "Distillation" else "trained"
    return f"\n### Before this run: how `{init_from}` was {verb} (from its card)\n{body}\n{older}"


def save_with_card(pipe, folder, card_for, weights_dtype: str = "float32") -> Path:
    """``pipe.save_pretrained(folder)`` with the card ``card_for(evaluation)``: the folder's evaluation
    tables when they measured these very weights, else None, and then the stale tables are removed."""
    evaluation = evaluation_of(Path(folder), weights_fingerprint(pipe.model.state_dict()))
    folder = pipe.save_pretrained(folder, model_card=card_for(evaluation), weights_dtype=weights_dtype)
    if evaluation is None:  # an evaluation of the weights this export replaced no longer applies
        for name in (EVALUATION_FILE, EVALUATION_JSON):
            (folder / name).unlink(missing_ok=True)
    return folder


def log_up_to(log_path: Path, step: int) -> str:
    """The CSV log's header and its rows up to ``step`` (the first column), line for line."""
    header, *rows = Path(log_path).read_text().splitlines(keepends=True)
    return header + "".join(row for row in rows if int(row.split(",", 1)[0]) <= step)


def write_log_up_to(log_path: Path, step: int, out_path: Path) -> None:
    """``log_up_to`` written atomically to ``out_path`` (which may be ``log_path`` itself)."""
    text = log_up_to(log_path, step)
    Path(out_path).with_suffix(".tmp").write_text(text)
    os.replace(Path(out_path).with_suffix(".tmp"), out_path)


def log_facts(log_path: Path, batch_size: int, step: int) -> tuple[float, float, float]:
    """(wall seconds, images/s, final loss) of a training log up to ``step``. Wall time is summed over
    the logged intervals, so it spans resumed runs (elapsed_s restarts at 0)."""
    import pandas as pd

    log = pd.read_csv(io.StringIO(log_up_to(log_path, step))) if Path(log_path).exists() else pd.DataFrame()
    if not len(log):
        return 0.0, 0.0, float("nan")
    images_per_row = log["step"].diff().fillna(log["step"]) * batch_size
    wall = float((images_per_row / log["images_per_s"]).sum())
    return wall, float(log["images_per_s"].tail(20).median()), float(log["loss"].tail(10).mean())


def hardware() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def text_note(cfg) -> str:
    if not cfg.text:
        return ""
    return (f" It also reads text prompts: its own vocabulary (`vocab.json`, the words of the emoji names, "
            f"keywords and class names) and a {cfg.text_layers}-layer transformer text encoder ({cfg.text_dim}-d), "
            f"trained with the U-Net; token features enter by cross-attention at {list(cfg.attention_resolutions)} px "
            f"and the middle. Prompts during training: the emoji's name, some of its keywords or its class; "
            f"text dropout {cfg.text_dropout}, independent of the context's."
            + (f" The text path (encoder, its projection and the cross-attention) learned at {cfg.text_lr_scale:g}x "
               f"the lr." if cfg.text_lr_scale != 1 else ""))


def network_note(cfg) -> str:
    """How the card's description of the network starts: a U-Net, or EDM2's magnitude-preserving one."""
    if getattr(cfg, "network", "unet") == "unet":
        return "A U-Net ("
    return ("A magnitude-preserving U-Net without normalisation layers (EDM2, Karras et al. 2024: `network` "
            '"mp_unet", `unet_mp.py`; ')


def patch_note(cfg) -> str:
    """What the card says about a U-Net on patches of pixels (nothing for one pixel per position)."""
    if cfg.patch_size == 1:
        return ""
    p = cfg.patch_size
    return f", on {p}x{p}-pixel patches, so its top level runs at {cfg.image_size // p}x{cfg.image_size // p}"


def loss_note(cfg) -> str:
    if not cfg.min_snr_gamma:
        return ""
    return (f" The loss weights the noise levels by min-SNR-γ, γ = {cfg.min_snr_gamma:g} (Hang et al. 2023: "
            f"the x_0 error weighted by min(SNR, γ), so the easy low-noise steps count less).")


def curriculum_note(cfg) -> str:
    steps = getattr(cfg, "curriculum_steps", 0)
    if not steps:
        return ""
    size = cfg.curriculum_size
    return (f" Its first {steps} steps trained on the pictures box-downsampled to {size}x{size} (a resolution"
            f" curriculum: the same network, coarse structure first, at a fraction of the cost per picture).")


def sampling_note(cfg) -> str:
    """What the card says about augmentation and about a guide the defaults use."""
    note = ""
    if cfg.hflip:
        note += (" Half the training pictures are mirrored, and the model is told which (a flip input, zero when"
                 " sampling, Karras et al. 2022, sec. 5; `benchmarks/flip_response.py` shows whether it learned it)."
                 if cfg.flip_condition
                 else " Half the training pictures are mirrored (random horizontal flips), so samples may be too.")
    if cfg.default_sampling.get("autoguidance"):
        note += (f" Unconditional requests are autoguided (Karras et al. 2024) by the small model in `guide/` (its"
                 f" own card there) at w {cfg.default_sampling['autoguidance']:g}.")
    return note


def training_card(cfg, step: int, log_path: Path, evaluation: str | None = None) -> str:
    """The card of an export at ``step``, with the evaluation tables of these weights if there are any."""
    wall, ips, loss = log_facts(log_path, cfg.batch_size, step)
    return f"""---
license: cc-by-sa-4.0
library_name: diffusion_core
tags: [diffusion, ddpm, emoji, pixel-art, unconditional-image-generation]
---
# {Path(cfg.export_dir).name}: a small diffusion model of {cfg.image_size}x{cfg.image_size} sprites

{network_note(cfg)}{cfg.base_channels} base channels, multipliers {list(cfg.channel_mults)}, attention at
{list(cfg.attention_resolutions)} px{patch_note(cfg)}) trained with `diffusion_core` to predict the noise
({cfg.prediction_type}) on a {cfg.schedule} schedule of {cfg.num_timesteps} steps, with context dropout
{cfg.context_dropout} so one model serves guided and unguided sampling.{loss_note(cfg)}{curriculum_note(cfg)}{text_note(cfg)} Weights are the EMA
(decay {cfg.ema_decay}). `generate` defaults to `default_sampling` in config.json:
{cfg.default_sampling}.{sampling_note(cfg)}

## Data
`{cfg.data}`: for "emoji", the project's emoji sprites in five styles (Noto Color Emoji, OFL-1.1 /
Apache-2.0; OpenMoji, CC BY-SA 4.0; Twemoji and EmojiOne, CC BY 4.0; Fluent Emoji, MIT; classes and
names from Unicode's emoji-test.txt, keywords from CLDR, Unicode licence), the train split (90% of
each class's emoji, all their styles). Licences and attributions: `assets/LICENSES.md` in the
project. Because OpenMoji is CC BY-SA 4.0, these weights are shared under CC BY-SA 4.0 too.

## Training
```
python -m diffusion_core train --config {recipe_path(cfg)} --resume
```
| fact | value |
| --- | --- |
| initialised from | {f"`{cfg.init_from}` (fine-tuned; the table counts this run only)" if cfg.init_from else "random (from scratch)"} |
| steps | {step} |
| batch size | {cfg.batch_size} |
| images seen | {step * cfg.batch_size:,} |
| wall time (all logged runs) | {wall / 3600:.2f} h |
| images/s (median, last rows) | {ips:.0f} |
| final loss | {loss:.4f} |
| hardware (export) | {hardware()} |
| precision | {cfg.precision} (bf16 autocast where native) |

The log is `training_log.csv` beside this card; `samples.png` shows 8 samples per class
(DPM-Solver++ 2M SDE, 20 steps, guidance 3, seed 0).
{initial_weights_training(cfg.init_from)}
## Evaluation
{evaluation or NOT_EVALUATED}

## Use
```python
from diffusion_core.pipeline import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained("{Path(cfg.export_dir).as_posix()}")
out = pipe.generate(num_images=16, classes=["food_drink"], seed=0)   # sampler, steps, guidance: default_sampling
{'out = pipe.generate(num_images=4, prompt="red apple", style="twemoji")' if cfg.text else ''}
```
"""


def distillation_card(cfg, step: int, log_path: Path, evaluation: str | None = None) -> str:
    """The card of a distilled student (distill.py): its teacher, objective, cost and measured quality."""
    wall, ips, loss = log_facts(log_path, cfg.batch_size, step)
    name, sampling = Path(cfg.export_dir).name, cfg.default_sampling
    if cfg.objective == "guidance":
        title, tag = "guidance distilled into it", "guidance-distillation"
        method = (f"""trained by guidance distillation (Meng et al. 2023, stage one): at every noise level its one
output, given w in {list(cfg.guidance_range)}, matches the teacher's two-branch guided prediction, as v. It samples
with the teacher's samplers at one network call per step (the teacher needs two)""")
        distance, loss_name = "squared error on v", "MSE on v"
    elif cfg.objective == "progressive":
        title, tag = f"distilled to {sampling['steps']} DDIM steps, guidance as an input", "progressive-distillation, guidance-distillation"
        method = (f"""trained by progressive distillation (Salimans & Ho 2022, Algorithm 2; Meng et al. 2023, stage two):
one DDIM step of the student, given w in {list(cfg.guidance_range)}, lands where two of `{cfg.init_student}` land,
walked in {cfg.skeleton_steps} steps; it samples in {cfg.skeleton_steps // 2}""")
        distance, loss_name = "squared error on v (x̂_0 weighted by SNR+1)", "MSE on v"
    elif cfg.objective == "dmd":
        title, tag = f"distilled to {sampling['steps']} steps, guidance as an input", "distribution-matching-distillation, consistency-distillation, guidance-distillation"
        lo, hi = cfg.dmd_noise_range
        method = (f"""tuned from the consistency student `{cfg.init_student}` by distribution matching (Yin et al. 2024,
DMD and DMD2): the pictures it draws in its {sampling['steps']} consistency steps, noised to a level in
[{lo:g}·T, {hi:g}·T), are moved along the difference of two scores, the teacher's guided at the student's
w in {list(cfg.guidance_range)} and a critic's, a copy of the teacher trained on the student's pictures meanwhile.
It samples in {sampling['steps']} steps, one network call each (the teacher needs two)""")
        regression = (f", plus {cfg.regression_weight:g} x the consistency loss (pseudo-Huber on "
                      f"{'v' if cfg.loss_space == 'v' else 'x̂_0'}, {cfg.skeleton_steps}-point skeleton)"
                      if cfg.regression_weight else "")
        distance = f"distribution matching; the critic's ε loss at {cfg.critic_lr_scale:g}x the lr{regression}"
        loss_name = "DMD + critic MSE on ε" + (" + λ consistency" if cfg.regression_weight else "")
    else:
        tag = "consistency-distillation, guidance-distillation"
        distance = f"pseudo-Huber on {'v' if cfg.loss_space == 'v' else 'x̂_0'}"
        loss_name = f"pseudo-Huber, c = {cfg.huber_c}"
        if cfg.segments > 1:
            title = f"distilled to {sampling['steps']} DDIM steps, guidance as an input"
            method = (f"""trained by multistep consistency distillation (Heek et al. 2024; Song et al. 2023; Meng et al. 2023):
the teacher's guided ODE, walked in {cfg.skeleton_steps} DDIM steps, is cut into {cfg.segments} segments, and from every
point one DDIM step of the student must land where the path reaches its segment's end. It samples in
{cfg.segments} DDIM steps, one network call each, for any w in {list(cfg.guidance_range)} (the teacher needs two)""")
        else:
            title = f"distilled to {sampling['steps']} steps, guidance as an input"
            method = (f"""trained by guided consistency distillation (Song et al. 2023, Algorithm 2; Luo et al. 2023; Meng et
al. 2023): each step of the teacher's guided ODE, walked in {cfg.skeleton_steps} DDIM steps, must lead
the student to the same clean picture. One network call per step serves any w in
{list(cfg.guidance_range)} (the teacher needs two)""")
    used = ("whose classes and styles condition the student's own pictures"
            + (", and which are noised to points on the teacher's paths for the consistency loss"
               if cfg.regression_weight else "")
            if cfg.objective == "dmd" else "noised to points on the teacher's paths")
    return f"""---
license: cc-by-sa-4.0
library_name: diffusion_core
tags: [diffusion, {tag}, emoji, pixel-art]
---
# {name}: `{cfg.teacher}` {title}

A student of `{cfg.teacher}` (same U-Net, plus an embedding of the guidance strength w; it predicts v)
{method}, and `generate` samples it by `default_sampling`
in config.json: {sampling}, so callers need not know it is distilled.

## Data
`{cfg.data}`: the pictures the teacher was trained on (the project's emoji sprites, train split;
licences in `assets/LICENSES.md`), {used}. CC BY-SA 4.0, as its
teacher.

## Distillation
```
python -m diffusion_core distill --config {recipe_path(cfg)} --resume
```
| fact | value |
| --- | --- |
| teacher | `{cfg.teacher}` |
| started from | {f"`{cfg.init_student}` (an earlier student; the table counts this run only)" if cfg.init_student else "the teacher's weights"} |
| distance | {distance} |
| lr (w embedding) | {cfg.lr:g} ({cfg.lr * cfg.guidance_lr_scale:g}) |
| steps | {step} |
| batch size | {cfg.batch_size} |
| images seen | {step * cfg.batch_size:,} |
| wall time (all logged runs) | {wall / 3600:.2f} h |
| images/s (median, last rows) | {ips:.1f} |
| final loss ({loss_name}) | {loss:.4f} |
| hardware (export) | {hardware()} |
| precision | {cfg.precision} (bf16 autocast where native) |

The log is `training_log.csv` beside this card; `samples.png` shows 8 samples per class at the
default sampling, seed 0.
{initial_weights_training(cfg.init_student, "Distillation")}
## Evaluation
{evaluation or NOT_EVALUATED}

## Use
```python
from diffusion_core.pipeline import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained("checkpoints/{name}")
out = pipe.generate(num_images=16, classes=["food_drink"], guidance=4.0, seed=0)   # {sampling["steps"]} calls
```
"""
