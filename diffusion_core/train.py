"""Training: the ε- (or v-) prediction objective of DDPM (Ho et al. 2020, Algorithm 1, eq. 14) with
classifier-free guidance's context dropout (Ho & Salimans 2022, Algorithm 1), AdamW, warm-up and
cosine decay, gradient clipping, EMA weights, bf16 autocast where the hardware has it natively,
atomic checkpoints with exact resume, and DistributedDataParallel under torchrun. With ``text``
the model also learns prompts: each training picture gets a prompt drawn from its emoji's name,
some of its keywords or its class name, and text and context are dropped independently, so
guidance works for a prompt, classes, or both.

    python -m diffusion_core train --config configs/emoji32.json [--max-steps N] [--resume]
    python -m diffusion_core train --config configs/X.json --init-from checkpoints/emoji32   # fine-tune
    torchrun --nproc_per_node=K -m diffusion_core train --config configs/emoji32.json
"""
from __future__ import annotations

import copy
import csv
import dataclasses
import json
import math
import os
import random
import shutil
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from . import edm
from .data import SpriteData, load_dataset
from .model_card import run_recipe, write_log_up_to
from .pipeline import FALLBACK_SAMPLING, MAX_IMAGES, DiffusionPipeline, cpu_has_native_bf16
from .samplers import DEFAULT_SAMPLER
from .schedule import NoiseSchedule
from .text import Vocabulary, data_texts, words
from .networks import NETWORKS, build_network, lr_scales, network_arguments, network_name
from .unet import CrossAttention, UNet, load_weights_strict, round_weights, weights_torch_dtype
from .unet_mp import CosineCrossAttention

LOG_FIELDS = ("step", "loss", "lr", "images_per_s", "elapsed_s")


class JsonConfig:
    """A dataclass config that round-trips through JSON and rejects settings it does not know."""

    @classmethod
    def from_json(cls, path: str | os.PathLike):
        try:
            values = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"cannot read config {path}: {err}") from err
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"{path}: unknown settings {sorted(unknown)}")
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)


@dataclass
class TrainConfig(JsonConfig):
    # data
    data: str = "emoji"                    # "emoji", "course:IMAGES.npy,LABELS.npy" or "folder:PATH"
    image_size: int = 32
    curriculum_size: int = 0               # a resolution curriculum: the first curriculum_steps steps train on
    curriculum_steps: int = 0              # the pictures box-downsampled to curriculum_size px (0 = none)
    hflip: bool = False                    # random horizontal flips (augmentation)
    flip_condition: bool = False           # tell the model which pictures hflip mirrored (sampling: none)
    # model (the network's arguments)
    network: str = "unet"                  # "unet" (unet.py) or "mp_unet" (unet_mp.py: EDM2's magnitude-preserving net)
    base_channels: int = 32
    channel_mults: list[int] = field(default_factory=lambda: [1, 2, 2, 4])
    num_res_blocks: int = 1
    patch_size: int = 1                    # pixels per side of the patch one U-Net position sees (1 = pixels)
    attention_resolutions: list[int] = field(default_factory=lambda: [8, 4])
    num_heads: int = 4
    num_groups: int = 16                   # GroupNorm's groups ("unet" only: "mp_unet" has no normalisation layers)
    dropout: float = 0.0
    # diffusion
    schedule: str = "cosine"
    num_timesteps: int = 1000
    prediction_type: str = "epsilon"       # "epsilon", "v", or "edm" (EDM's preconditioning, noise levels and loss: edm.py)
    context_dropout: float = 0.15          # p of training on the all-zero ("no context") input
    style_dropout: float = 0.3             # p of zeroing only the style part, so "class, any style" works
    # text (emoji data: names and keywords)
    text: bool = False                     # learn text prompts with a text encoder of our own
    text_dim: int = 128
    text_layers: int = 2
    max_tokens: int = 16
    text_dropout: float = 0.15             # p of the empty prompt, drawn independently of context_dropout
    text_lr_scale: float = 1.0             # the text path's lr (encoder, text_mlp, cross-attention) as a multiple of lr
    min_snr_gamma: float = 0.0             # loss weight min(SNR, γ) (Hang et al. 2023, γ = 5); 0 = plain L_simple
    default_sampling: dict = field(default_factory=lambda: dict(FALLBACK_SAMPLING))  # written to config.json
    # optimisation
    batch_size: int = 64                   # global batch, split over DDP processes
    lr: float = 3e-4
    weight_decay: float = 0.0
    warmup_steps: int = 500
    max_steps: int = 30_000
    min_lr_ratio: float = 0.1              # cosine decay from lr to min_lr_ratio * lr
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    precision: str = "auto"                # "auto" (bf16 where native), "bf16" or "fp32"
    seed: int = 0
    init_from: str = ""                    # checkpoint folder or Hub id whose weights start the run (fine-tuning)
    # bookkeeping
    out_dir: str = "runs/emoji32"
    export_dir: str = "runs/emoji32/export"  # never checkpoints/: copying there is --ship's job
    weights_dtype: str = "float32"         # how exports store the weights: "float32" or "float16" (half the bytes)
    checkpoint_every: int = 1000
    state_every: int = 0                   # the training state alone (no export) every N steps too; 0: none
    grid_per_class: int = 8                # each export's sample grid: pictures per class (fewer if they would not fit)
    log_every: int = 50
    num_threads: int = 0                   # torch CPU threads; 0 = torch's default

    def unet_kwargs(self, context_dim: int, vocab_size: int = 0) -> dict:
        """The arguments of this config's network (``network``): the settings it takes, so no ``num_groups``
        for "mp_unet"."""
        text = dict(vocab_size=vocab_size, text_dim=self.text_dim, text_layers=self.text_layers,
                    max_tokens=self.max_tokens) if vocab_size else {}
        kwargs = dict(image_size=self.image_size, in_channels=3, base_channels=self.base_channels,
                      channel_mults=list(self.channel_mults), num_res_blocks=self.num_res_blocks,
                      attention_resolutions=list(self.attention_resolutions), context_dim=context_dim,
                      num_heads=self.num_heads, num_groups=self.num_groups, dropout=self.dropout,
                      patch_size=self.patch_size, **text, **(dict(flip_condition=True) if self.flip_condition else {}))
        taken = network_arguments(self.network)
        return {k: v for k, v in kwargs.items() if k in taken}

    def validate(self) -> None:
        checks = [
            (self.network in NETWORKS, f"network must be one of {sorted(NETWORKS)}, got {self.network!r}"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.max_steps >= 1, "max_steps must be >= 1"),
            (self.lr > 0, "lr must be > 0"),
            (0 <= self.context_dropout < 1, "context_dropout must be in [0, 1)"),
            (0 <= self.text_dropout < 1, "text_dropout must be in [0, 1)"),
            (self.text_lr_scale > 0, "text_lr_scale must be > 0"),
            (self.text or self.text_lr_scale == 1, "text_lr_scale needs a text model (\"text\": true)"),
            (self.hflip or not self.flip_condition, "flip_condition needs hflip (it labels the mirrored pictures)"),
            (self.patch_size >= 1, "patch_size must be >= 1 (1 = one pixel per U-Net position)"),
            (self.min_snr_gamma >= 0, "min_snr_gamma must be >= 0 (0 turns the weighting off)"),
            (self.curriculum_steps >= 0, "curriculum_steps must be >= 0 (0: no resolution curriculum)"),
            (not self.curriculum_steps or (0 < self.curriculum_size < self.image_size
                                           and self.image_size % self.curriculum_size == 0),
             f"curriculum_size must divide image_size {self.image_size} and be smaller (e.g. {self.image_size // 2})"),
            (not self.curriculum_steps or not self.curriculum_size % (self.patch_size * 2 ** (len(self.channel_mults) - 1)),
             f"curriculum_size must be divisible by patch_size x 2^{len(self.channel_mults) - 1} (the U-Net's levels)"),
            (0 <= self.ema_decay < 1, "ema_decay must be in [0, 1)"),
            (self.checkpoint_every >= 1 and self.log_every >= 1, "checkpoint_every and log_every must be >= 1"),
            (self.state_every >= 0, "state_every must be >= 0 (0: the state is saved at checkpoints only)"),
            (1 <= self.grid_per_class <= GRID_PER_CLASS, f"grid_per_class must be in 1..{GRID_PER_CLASS}"),
            (self.precision in ("auto", "bf16", "fp32"), "precision must be 'auto', 'bf16' or 'fp32'"),
            (self.prediction_type in ("epsilon", "v", "edm"), "prediction_type must be 'epsilon', 'v' or 'edm'"),
            (self.prediction_type != "edm" or not self.min_snr_gamma,
             "min_snr_gamma does not apply to EDM training (its loss weight is EDM's λ(σ)): set it to 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        weights_torch_dtype(self.weights_dtype)


STATE_DIR_ENV = "DIFFUSION_STATE_DIR"
RUN_OUTPUTS = ("out_dir", "export_dir")              # what a run writes
RUN_INPUTS = ("init_from", "init_student", "teacher")  # what a chained recipe reads from an earlier run


def under_state_dir(cfg, state_dir: str | os.PathLike | None = None):
    """``cfg`` with its run folders moved under a state directory (``--state-dir`` or $DIFFUSION_STATE_DIR;
    none: the current directory, as written). A relative ``out_dir`` and ``export_dir`` go there, so a run
    keeps its state outside the checkout and resumes wherever that directory survives; a relative input
    (``init_from``, ``init_student``, ``teacher``) is read from there when an earlier stage wrote it there,
    else as written (a shipped checkpoint, a Hub id)."""
    state_dir = state_dir or os.environ.get(STATE_DIR_ENV)
    if not state_dir:
        return cfg
    root, changes = Path(state_dir), {}
    for name in RUN_OUTPUTS + RUN_INPUTS:
        value = getattr(cfg, name, "")
        if not value or Path(value).is_absolute():
            continue
        if name in RUN_OUTPUTS or (root / value).exists():
            changes[name] = str(root / value)
    return dataclasses.replace(cfg, **changes)


def adamw_with_scaled_groups(model: nn.Module, scaled: list[tuple[list[nn.Parameter], float]], lr: float,
                             weight_decay: float) -> torch.optim.AdamW:
    """AdamW; each (parameters, scale) of ``scaled`` whose scale is not 1 gets a group of its own whose lr is
    that multiple of the schedule's (``run_optimisation`` reads a group's "lr_scale"). For parts that start
    at zero and learn from a faint signal, which Adam's steps at the common lr barely move, or for a part
    that must keep up with another (a critic)."""
    groups = [(params, scale) for params, scale in scaled if scale != 1 and params]
    chosen = {id(p) for params, _ in groups for p in params}
    rest = [p for p in model.parameters() if id(p) not in chosen]
    return torch.optim.AdamW([{"params": rest}, *({"params": params, "lr_scale": scale} for params, scale in groups)],
                             lr=lr, weight_decay=weight_decay)


def training_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW at cfg.lr, the text path at cfg.text_lr_scale times it and what the network asks for
    (``networks.lr_scales``: an MPUNet's gains) at the multiples it names."""
    return adamw_with_scaled_groups(model, [(text_parameters(model), cfg.text_lr_scale), *lr_scales(model)],
                                    cfg.lr, cfg.weight_decay)


def text_parameters(model: UNet) -> list[nn.Parameter]:
    """The text path: the text encoder, its projection into the time embedding and every
    cross-attention block (all new in a text model; in a UNet, zero-started where they join it)."""
    parts = [m for m in model.modules() if isinstance(m, (CrossAttention, CosineCrossAttention))]
    parts += [model.text_encoder, model.text_mlp] if model.vocab_size else []
    return [p for part in parts for p in part.parameters()]


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to cfg.lr, then cosine decay to min_lr_ratio · lr at max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min((step - cfg.warmup_steps) / max(cfg.max_steps - cfg.warmup_steps, 1), 1.0)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def diffusion_loss(model, schedule: NoiseSchedule, x0, context, t, noise, prediction_type: str,
                   tokens: torch.Tensor | None = None, min_snr_gamma: float = 0.0,
                   flipped: torch.Tensor | None = None) -> torch.Tensor:
    """DDPM eq. 14, L_simple = E‖ε - ε_θ(√ᾱ_t x_0 + √(1-ᾱ_t) ε, t)‖², or the same with the v target, or
    EDM's preconditioned loss (``prediction_type`` "edm", edm.edm_loss); with ``min_snr_gamma`` = γ > 0, each
    picture's error is weighted by min_snr_weight. ``flipped`` (N,)
    tells a flip-conditioned model which x_0 were mirrored (EDM's non-leaky augmentation)."""
    extra = {} if flipped is None else {"flipped": flipped}
    if prediction_type == "edm":
        return edm.edm_loss(model, schedule, x0, context, t, noise, tokens, extra)
    x_t = schedule.add_noise(x0, noise, t)
    target = noise if prediction_type == "epsilon" else schedule.velocity(x0, noise, t)
    prediction = model(x_t, t, context, **extra) if tokens is None else model(x_t, t, context, tokens, **extra)
    if not min_snr_gamma:
        return F.mse_loss(prediction.float(), target)
    per_picture = (prediction.float() - target).pow(2).mean(dim=(1, 2, 3))
    return (min_snr_weight(schedule.snr(t.cpu()).to(per_picture), min_snr_gamma, prediction_type) * per_picture).mean()


def min_snr_weight(snr: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-γ (Hang et al. 2023, eq. 5): the x_0-error weight min(SNR, γ), expressed for the
    network's target: ÷ SNR for ε (‖ε - ε̂‖² = SNR·‖x_0 - x̂_0‖²), ÷ (SNR + 1) for v. Low-noise steps,
    which are easy and otherwise dominate the gradient, count less."""
    if prediction_type == "epsilon":
        return (gamma / snr).clamp(max=1.0)  # = min(SNR, γ) / SNR, and 1 where SNR = 0
    return snr.clamp(max=gamma) / (snr + 1)


# ---------------------------------------------------------------------------------------------
# Prompts for training pictures
# ---------------------------------------------------------------------------------------------
def training_vocabulary(data, max_tokens: int) -> Vocabulary:
    """Every word of the names, keywords and class names of a data set that has them."""
    if data.names is None:
        raise ValueError("text training needs a data set with a name per picture (the emoji data); "
                         "this one has class labels only")
    return Vocabulary.from_texts(data_texts(data), max_tokens=max_tokens)


def training_prompt(name: str, keywords: str, class_name: str, rng: random.Random) -> str:
    """The emoji's name (half the time), one to three of its keywords (30%), or its class (20%)."""
    draw, keywords = rng.random(), [k for k in keywords.split("|") if k]
    if draw < 0.5 or (draw < 0.8 and not keywords):
        return name
    if draw < 0.8:
        return " ".join(rng.sample(keywords, k=min(len(keywords), rng.randint(1, 3))))
    return " ".join(words(class_name))


# ---------------------------------------------------------------------------------------------
# Checkpoints: one safetensors file (tensors) with the rest as JSON metadata, written atomically.
# ---------------------------------------------------------------------------------------------
def save_training_state(path: Path, model, ema, optimizer, step: int, cfg: TrainConfig) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    optim_state = optimizer.state_dict()
    for pid, state in optim_state["state"].items():
        for name, value in state.items():
            tensors[f"optim.{pid}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    tensors["rng.torch"] = torch.get_rng_state()
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {"step": str(step), "config": cfg.to_json(), "param_groups": json.dumps(optim_state["param_groups"])}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata=meta)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    if path.exists():  # the state before this one stays, for a resume when this one is lost
        keep_as_previous(path)
    os.replace(tmp, path)  # `path` names a whole state at every instant: the old one until this rename


def keep_as_previous(path: Path) -> None:
    """Make ``previous_state_path(path)`` a copy of ``path`` while ``path`` stays where it is (a hard link, or
    a file copy where links are not allowed), put in place by one rename: a kill at any moment leaves both
    names whole."""
    staged = path.with_name(f".{previous_state_path(path).name}.tmp")
    staged.unlink(missing_ok=True)  # left by a kill during an earlier save
    try:
        os.link(path, staged)
    except OSError:
        shutil.copy2(path, staged)
    os.replace(staged, previous_state_path(path))


def previous_state_path(path: Path) -> Path:
    return path.with_name(path.name.replace(".safetensors", ".previous.safetensors"))


def resume_from_surviving_state(state_path: Path, model, ema, optimizer) -> int:
    """Load the newest state of a run that can still be read, and return its step (0: nothing survives).
    Tried in order: the state, the one saved before it, then the newest export under out_dir/exports
    (its EMA weights start both the model and the EMA; AdamW's moments start afresh). What was lost on the
    way is printed and appended to out_dir/resume_log.md."""
    lost, step, outcome = [], 0, "nothing survives: starting afresh"
    for path in (state_path, previous_state_path(state_path)):
        problem = unreadable(path)
        if problem:
            lost.append(f"`{path.name}` {problem}")
            continue
        step, outcome = load_training_state(path, model, ema, optimizer), f"resumed from `{path.name}`"
        break
    else:
        for weights in sorted(state_path.parent.glob("exports/step_*/model.safetensors"), reverse=True):
            try:
                load_weights_strict(ema, str(weights))
            except ValueError as err:
                lost.append(f"`exports/{weights.parent.name}` {err}")
                continue
            model.load_state_dict(ema.state_dict())
            step = int(weights.parent.name.split("_")[1])
            outcome = f"resumed from the EMA weights of `exports/{weights.parent.name}`: AdamW's moments were lost"
            break
    line = "; ".join([*lost, f"{outcome} (step {step})"])
    print(line)
    if step and lost:  # something was lost: the run's folder keeps the story
        with open(state_path.parent / "resume_log.md", "a") as f:
            f.write(f"- {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {line}\n")
    return step


def unreadable(path: Path) -> str | None:
    """Why the safetensors file at ``path`` cannot be read (missing, truncated, not safetensors), or None."""
    from safetensors import safe_open

    if not path.is_file():
        return "is missing"
    try:
        with safe_open(str(path), "pt") as f:
            int(f.metadata()["step"])
            for key in f.keys():
                f.get_tensor(key)
    except Exception as err:  # safetensors' own error types for a damaged file
        return f"could not be read ({type(err).__name__}: {err})"
    return None


def load_training_state(path: Path, model, ema, optimizer) -> int:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
    ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}, strict=True)
    state: dict = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    groups = json.loads(meta["param_groups"])
    if len(groups) != len(optimizer.param_groups):
        raise ValueError(f"{path} holds {len(groups)} optimizer parameter group(s), this run has "
                         f"{len(optimizer.param_groups)}: resume with the settings it was saved with")
    for saved, current in zip(groups, optimizer.param_groups):
        if "lr_scale" in current:
            saved["lr_scale"] = current["lr_scale"]  # the config's multiple, not the saved one
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    torch.set_rng_state(tensors["rng.torch"])
    return int(meta["step"])


GROWABLE = {"context_dim", "vocab_size", "text_dim", "text_layers", "max_tokens", "flip_condition"}
CONTEXT_COLUMNS = ("context_mlp.0.weight", "context_mlp.weight")  # UNet's, MPUNet's: (out, K), a column per input


def init_weights(model: UNet, cfg: TrainConfig, data) -> list[str]:
    """Start from the weights of a trained checkpoint (its EMA export). The network and its shape must
    match; the model may grow: new classes or styles (context columns matched by name, new ones start at
    zero) and a text encoder with its cross-attention (in a UNet zero-started, so the grown model draws what
    the old one drew; an MPUNet's joins by mp_sum, so it draws otherwise until trained). The optimizer,
    schedule and step start fresh: fine-tuning, not resuming. Returns the names of the tensors that start fresh."""
    pipe = DiffusionPipeline.from_pretrained(cfg.init_from, device="cpu")
    expected, config = cfg.unet_kwargs(model.context_dim, model.vocab_size), pipe.config()
    expected["network"] = cfg.network
    differ = sorted(k for k in expected if k not in GROWABLE and config.get(k) != expected[k])
    if differ:
        raise ValueError(f"init_from {cfg.init_from!r} has a different architecture than this config "
                         f"(differs in {differ}: {[config.get(k) for k in differ]} vs {[expected[k] for k in differ]})")
    source, target = pipe.model.state_dict(), model.state_dict()
    old_columns = [*pipe.labels, *(f"style:{s}" for s in pipe.styles)]
    new_columns = [*data.class_names, *(f"style:{s}" for s in data.style_names)]
    fresh = []
    with torch.no_grad():
        for key, value in target.items():
            same_columns = key not in CONTEXT_COLUMNS or old_columns == new_columns
            if key in source and source[key].shape == value.shape and same_columns:
                value.copy_(source[key])
            elif key in CONTEXT_COLUMNS and key in source:
                value.zero_()
                for j, column in enumerate(new_columns):
                    if column in old_columns:
                        value[:, j] = source[key][:, old_columns.index(column)]
            else:
                fresh.append(key)
    return fresh


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------
def use_bf16(cfg: TrainConfig, device: torch.device) -> bool:
    if cfg.precision != "auto":
        return cfg.precision == "bf16"
    return torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_native_bf16()


@dataclass
class Processes:
    """Where this process trains: its device, its rank among ``world`` DDP processes."""
    device: torch.device
    rank: int = 0
    world: int = 1

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, batch_size: int) -> slice:
        """This process's share of a global batch."""
        return slice(self.rank * batch_size // self.world, (self.rank + 1) * batch_size // self.world)


def start_processes(cfg) -> Processes:
    """The device, and under torchrun the process group (NCCL on GPUs, gloo on CPUs)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    procs = Processes(device)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        procs.rank, procs.world = dist.get_rank(), dist.get_world_size()
        if device.type == "cuda":
            procs.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(procs.device)
    if cfg.batch_size % procs.world:
        raise ValueError(f"batch_size {cfg.batch_size} must divide evenly over {procs.world} processes")
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    if procs.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest convolutions
    return procs


@dataclass
class StepProgress:
    """What ``on_step`` sees after each optimisation step (single process): the step, its loss, the
    mean training rate since this run started, and the EMA model (to draw from while training)."""
    step: int
    max_steps: int
    loss: float
    images_per_s: float
    elapsed_s: float
    ema: nn.Module


@contextmanager
def stop_signals(enabled: bool = True):
    """While active, Ctrl-C (SIGINT) and SIGTERM only note their name in the yielded list, so the loop can
    finish its step, save its state and stop: an interrupted run loses nothing. Python lets only the main
    thread catch signals; elsewhere (the app's Train tab) and when not ``enabled``, nothing changes."""
    received: list[str] = []
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield received
        return
    caught = (signal.SIGINT, signal.SIGTERM)
    before = {s: signal.getsignal(s) for s in caught}
    for s in caught:
        signal.signal(s, lambda signum, frame: received.append(signal.Signals(signum).name))
    try:
        yield received
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def run_optimisation(cfg, procs: Processes, model, ema, optimizer, step: int, batch_loss, save, show_progress: bool = True,
                     averaged: nn.Module | None = None, on_step=None) -> dict:
    """The loop ``train`` and ``distill`` share: from ``step`` to cfg.max_steps, ``batch_loss(step, net)``
    gives this process's loss on its share of the global batch (``net`` is the model, wrapped in
    DistributedDataParallel under torchrun); AdamW with warm-up and cosine decay, gradient clipping,
    the EMA update of ``averaged`` (the part of the model ``ema`` copies; all of it by default), a CSV
    log (``LOG_FIELDS``) and ``save(step)`` (state and export) every cfg.checkpoint_every steps and at
    the end, ``save(step, with_export=False)`` (the state alone) every cfg.state_every steps between.
    ``on_step(StepProgress)`` (single process only) is called after every step; when it returns
    True the run stops there, logged and saved as at the end (a stopped run keeps what it learned).
    Ctrl-C or SIGTERM (single process) stops it after the step it is in, with ``save(step, with_export=False)``:
    the state only, written in about a second, so a stop between checkpoints loses nothing.
    Returns the last step, the last logged mean loss and the signal that stopped it (``stopped_by``)."""
    if on_step is not None and procs.distributed:
        raise ValueError("on_step works in a single process (its stop would not reach the other processes)")
    out_dir = Path(cfg.out_dir)
    averaged = model if averaged is None else averaged
    bf16 = use_bf16(cfg, procs.device)
    model.to(memory_format=torch.channels_last)
    net = torch.nn.parallel.DistributedDataParallel(model) if procs.distributed else model
    if procs.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(cfg.to_json())
    log_path = out_dir / "log.csv"
    if procs.is_main and (step == 0 or not log_path.exists()):
        with open(log_path, "w", newline="") as f:
            csv.writer(f).writerow(LOG_FIELDS)
    if procs.is_main and step > 0:
        write_log_up_to(log_path, step, log_path)  # rows past the checkpoint will be written again

    bar = tqdm(total=cfg.max_steps, initial=step, disable=not (procs.is_main and show_progress), unit="step", dynamic_ncols=True)
    losses, t_last, images_since, start_time = [], time.perf_counter(), 0, time.perf_counter()
    first_step, stop = step, False
    with stop_signals(enabled=not procs.distributed) as received:
        while step < cfg.max_steps:
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, cfg) * group.get("lr_scale", 1.0)
            with torch.autocast(procs.device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = batch_loss(step, net)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            ema_update(ema, averaged, min(cfg.ema_decay, (1 + step) / (10 + step)))  # with a warm-up
            step += 1

            loss_value = loss.detach()
            if procs.distributed:
                dist.all_reduce(loss_value)
                loss_value /= procs.world
            losses.append(loss_value.item())
            images_since += cfg.batch_size
            if on_step is not None:
                elapsed = time.perf_counter() - start_time
                stop = bool(on_step(StepProgress(step, cfg.max_steps, losses[-1], (step - first_step) * cfg.batch_size / elapsed,
                                                 elapsed, ema)))
            stop = stop or bool(received)
            if step % cfg.log_every == 0 or step == cfg.max_steps or stop:
                now = time.perf_counter()
                ips = images_since / (now - t_last)
                if procs.is_main:
                    with open(log_path, "a", newline="") as f:
                        csv.writer(f).writerow([step, f"{np.mean(losses):.6f}", f"{learning_rate(step - 1, cfg):.3e}",
                                                f"{ips:.1f}", f"{now - start_time:.1f}"])
                bar.set_postfix(loss=f"{np.mean(losses):.4f}", img_s=f"{ips:.0f}")
                losses, t_last, images_since = [], now, 0
            bar.update(1)
            if procs.is_main and (step % cfg.checkpoint_every == 0 or step == cfg.max_steps or stop):
                save(step, with_export=not received or step == cfg.max_steps)  # the last step always exports
            elif procs.is_main and cfg.state_every and step % cfg.state_every == 0:
                save(step, with_export=False)  # the state alone, about a second: a kill -9 loses fewer steps
            if stop:
                break
    bar.close()
    if procs.distributed:
        dist.barrier()
        dist.destroy_process_group()
    if received:
        print(f"stopped by {received[0]} at step {step}: the training state is saved (the export waits for the next "
              f"checkpoint); --resume goes on from here", flush=True)
    return {"step": step, "final_loss": float(np.mean(losses)) if losses else None,
            "stopped_by": received[0] if received else None}


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """θ_ema ← decay·θ_ema + (1 - decay)·θ, every parameter in one fused call (``torch._foreach_lerp_``)."""
    ema_params, params = list(ema.parameters()), list(model.parameters())
    if len(ema_params) != len(params):
        raise ValueError(f"the EMA has {len(ema_params)} parameters, the model {len(params)}")
    torch._foreach_lerp_(ema_params, params, 1 - decay)


def train(cfg: TrainConfig, resume: bool = False, show_progress: bool = True, export_only: bool = False,
          data: SpriteData | None = None, on_step=None) -> dict:
    """Train (or resume) per ``cfg``; returns a summary. Under torchrun each process takes its share
    of every global batch, and gradients are averaged (DistributedDataParallel). ``export_only``
    writes the saved state's EMA weights to cfg.export_dir (card, sample grid) without training.
    ``data`` is a data set already in memory (else cfg.data is loaded); ``on_step`` as in run_optimisation."""
    cfg.validate()
    procs = start_processes(cfg)
    device = procs.device
    out_dir = Path(cfg.out_dir)
    state_path = out_dir / "state.safetensors"

    data = load_dataset(cfg.data, cfg.image_size) if data is None else data
    if data.images.shape[1] != cfg.image_size:
        raise ValueError(f"the data's pictures are {data.images.shape[1]} px, the config's image_size is {cfg.image_size}")
    images, contexts = (t.to(device) for t in data.to_tensors())
    num_classes = len(data.class_names)
    vocabulary = training_vocabulary(data, cfg.max_tokens) if cfg.text else None
    vocab_size = len(vocabulary) if vocabulary else 0
    recipe = run_recipe(cfg, cfg.init_from) if procs.is_main else []  # what every export's config.json names
    schedule = NoiseSchedule(cfg.schedule, cfg.num_timesteps)
    torch.manual_seed(cfg.seed)
    model = build_network(cfg.network, **cfg.unet_kwargs(contexts.shape[1], vocab_size)).to(device)
    ema = build_network(cfg.network, **cfg.unet_kwargs(contexts.shape[1], vocab_size)).to(device)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    optimizer = training_optimizer(model, cfg)

    step = 0
    if export_only:
        if not state_path.exists():
            raise ValueError(f"no training state at {state_path} to export")
        step = load_training_state(state_path, model, ema, optimizer)
        folder = export(ema, cfg, data, step, out_dir, device, vocabulary, recipe) if procs.is_main else None
        return {"step": step, "export": str(folder)}
    if resume:
        step = resume_from_surviving_state(state_path, model, ema, optimizer)
    if not step:
        if cfg.init_from:
            fresh = init_weights(model, cfg, data)
            ema.load_state_dict(model.state_dict())
            if procs.is_main and fresh:
                print(f"init_from {cfg.init_from}: {len(fresh)} tensors start fresh (new in this model), e.g. {fresh[:3]}")
    shard = procs.shard(cfg.batch_size)

    def batch_loss(step: int, net) -> torch.Tensor:
        # The global batch comes from a generator seeded by (seed, step): the same on every process
        # and after a resume, so a DDP run sees exactly the batches of a single-process run.
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        batch = torch.randint(len(images), (cfg.batch_size,), generator=g)
        idx = batch[shard]
        t = (edm.training_timesteps(schedule, cfg.batch_size, g) if cfg.prediction_type == "edm"
             else torch.randint(cfg.num_timesteps, (cfg.batch_size,), generator=g))[shard].to(device)
        size = cfg.curriculum_size if step < cfg.curriculum_steps else cfg.image_size
        noise = torch.randn((cfg.batch_size, images.shape[1], size, size), generator=g)[shard].to(device)
        keep = (torch.rand(cfg.batch_size, generator=g) >= cfg.context_dropout)[shard].to(device)
        flip = (torch.rand(cfg.batch_size, generator=g) < 0.5)[shard].to(device)
        keep_style = (torch.rand(cfg.batch_size, generator=g) >= cfg.style_dropout)[shard].to(device)
        x0 = images[idx.to(device)]
        if size != cfg.image_size:  # the same network at a quarter of the positions: coarse structure first
            x0 = F.avg_pool2d(x0, cfg.image_size // size)
        if cfg.hflip:
            x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        context = contexts[idx.to(device)] * keep[:, None]
        context[:, num_classes:] *= keep_style[:, None]
        tokens = None
        if vocabulary is not None:
            rng = random.Random(cfg.seed * 1_000_003 + step)  # the whole batch's prompts, then this process's share
            keep_text = torch.rand(cfg.batch_size, generator=g) >= cfg.text_dropout
            prompts = [training_prompt(data.names[i], data.keywords[i], data.class_names[data.labels[i]], rng)
                       if kept else "" for i, kept in zip(batch.tolist(), keep_text.tolist())]
            tokens = vocabulary.encode_batch(prompts)[shard].to(device)
        return diffusion_loss(net, schedule, x0.contiguous(memory_format=torch.channels_last), context, t,
                              noise, cfg.prediction_type, tokens, cfg.min_snr_gamma,
                              flipped=flip.float() if cfg.flip_condition else None)

    def save(step: int, with_export: bool = True) -> None:
        save_training_state(state_path, model, ema, optimizer, step, cfg)
        if with_export:
            export(ema, cfg, data, step, out_dir, device, vocabulary, recipe)

    return run_optimisation(cfg, procs, model, ema, optimizer, step, batch_loss, save, show_progress, on_step=on_step)


GRID_PER_CLASS = 8  # a sample grid's pictures per class (fewer when many classes share one request)


def grid_plan(class_names, per_class: int = GRID_PER_CLASS, max_images: int = MAX_IMAGES) -> tuple[list[str] | None, int]:
    """A sample grid's classes, one row of each (``None`` for an unconditional model: two rows), and its
    pictures per class: ``per_class``, fewer when the classes would not fit one request of ``max_images``,
    at least one."""
    if not class_names:
        return None, per_class
    per_class = max(1, min(per_class, max_images // len(class_names)))
    return [name for name in class_names for _ in range(per_class)], per_class


def draw_grid(pipe: DiffusionPipeline, class_names, seed: int = 0, per_class: int = GRID_PER_CLASS,
              **sampling) -> tuple[np.ndarray, int]:
    """A sample grid (uint8 pictures, row by row) and its row length, for any number of classes: requests of
    at most MAX_IMAGES pictures, the k-th with seed ``seed + k``."""
    classes, per_class = grid_plan(class_names, per_class)
    if classes is None:
        return pipe.generate(num_images=2 * per_class, seed=seed, **sampling).images, per_class
    chunks = [classes[i:i + MAX_IMAGES] for i in range(0, len(classes), MAX_IMAGES)]
    parts = [pipe.generate(num_images=len(chunk), classes=chunk, seed=seed + k, **sampling).images
             for k, chunk in enumerate(chunks)]
    return np.concatenate(parts), per_class


def export(ema: UNet, cfg: TrainConfig, data, step: int, out_dir: Path, device: torch.device | str = "cpu",
           vocabulary: Vocabulary | None = None, recipe: list[str] | None = None) -> Path:
    """Write the EMA weights as a Hub-layout checkpoint (config.json, model.safetensors, model card,
    training log) to cfg.export_dir, and a sample grid (``draw_grid``: up to cfg.grid_per_class per class, drawn on ``device``)
    to out_dir.
    ``recipe``: what config.json names as the configs that made the weights (``model_card.run_recipe``)."""
    from .model_card import save_with_card, training_card
    from .viz import save_grid

    def pipeline(model: UNet) -> DiffusionPipeline:
        return DiffusionPipeline(model, NoiseSchedule(cfg.schedule, cfg.num_timesteps), list(data.class_names),
                                 list(data.style_names), cfg.prediction_type, device=device, vocabulary=vocabulary,
                                 default_sampling=cfg.default_sampling, recipe=recipe)

    pipe = pipeline(ema_copy(ema, cfg))
    size = cfg.curriculum_size if step <= cfg.curriculum_steps else cfg.image_size  # the size it has learned so far
    grid_pipe = pipe if size == cfg.image_size else pipeline(drawing_at(pipe.model, size))
    grid, per_class = draw_grid(grid_pipe, data.class_names, seed=0, per_class=cfg.grid_per_class,
                                sampler=DEFAULT_SAMPLER, steps=20, guidance=3.0)
    pipe.model.cpu()  # the weights are saved from the CPU
    scale = 4 * cfg.image_size // size  # a curriculum's small pictures shown as large as the rest
    save_grid(grid, out_dir / f"samples_{step:07d}.png", nrow=per_class, scale=scale)
    folder = save_with_card(pipe, cfg.export_dir, lambda evaluation: training_card(cfg, step, out_dir / "log.csv", evaluation),
                            cfg.weights_dtype)
    # every step's export, for learning curves, with its card: a run started from one keeps the whole story
    pipe.save_pretrained(out_dir / "exports" / f"step_{step:07d}", weights_dtype=cfg.weights_dtype,
                         model_card=training_card(cfg, step, out_dir / "log.csv", None))
    save_grid(grid, folder / "samples.png", nrow=per_class, scale=scale)
    write_log_up_to(out_dir / "log.csv", step, folder / "training_log.csv")
    return folder


def drawing_at(model: UNet, size: int) -> UNet:
    """A copy of ``model`` that draws size x size pictures with the same weights (the U-Net is fully
    convolutional): the sample grids of a resolution curriculum's first steps show what it has learned."""
    small = copy.deepcopy(model)
    small.image_size = size
    return small


def ema_copy(ema: UNet, cfg: TrainConfig) -> UNet:
    """The EMA weights on the CPU in float32, rounded to the precision they will be stored in."""
    model = build_network(network_name(ema), **cfg.unet_kwargs(ema.context_dim, ema.vocab_size))
    model.load_state_dict({k: v.detach().float().cpu() for k, v in ema.state_dict().items()})
    return round_weights(model, cfg.weights_dtype)
