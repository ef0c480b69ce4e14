"""Shared fixtures: tiny models and the exact denoiser for Gaussian data."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from diffusion_core.distill import DistillConfig
from diffusion_core.pipeline import DiffusionPipeline
from diffusion_core.schedule import NoiseSchedule
from diffusion_core.text import Vocabulary
from diffusion_core.train import TrainConfig
from diffusion_core.unet import UNet

if os.environ.get("PYTEST_XDIST_WORKER"):
    # the suite runs as two workers on two cores (scripts/test.sh: pytest -n 2): each keeps torch, and the
    # processes it starts, on one thread (two teams of two threads on two cores cost twice the time)
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

TINY_UNET = dict(image_size=16, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                 attention_resolutions=(8,), context_dim=5, num_heads=2, num_groups=4)
TINY_LABELS = ["a", "b", "c"]
TINY_STYLES = ["s1", "s2"]
TEXT_UNET = dict(image_size=16, base_channels=8, channel_mults=(1, 2), attention_resolutions=(8,), context_dim=5,
                 num_heads=2, num_groups=4, vocab_size=8, text_dim=16, max_tokens=6)


class GaussianDenoiser:
    """The exact ε-predictor for data x_0 ~ N(mu, s² I): E[ε | x_t] = σ_t (x_t - √ᾱ_t mu) / (ᾱ_t s² + σ_t²).
    ``mu`` may depend on the context: mu = mu0 + context · shift. Records every call."""

    def __init__(self, schedule, mu=0.5, s=0.3, shift=None):
        self.schedule, self.mu, self.s, self.shift = schedule, mu, s, shift
        self.calls = []  # (t values, batch size, context or None)

    def __call__(self, x_t, t, context):
        self.calls.append((t.tolist(), x_t.shape[0], None if context is None else context.clone()))
        abar = self.schedule.alphas_cumprod[t].to(x_t.dtype).view(-1, 1, 1, 1)
        mu = torch.full((x_t.shape[0], 1, 1, 1), self.mu, dtype=x_t.dtype)
        if self.shift is not None and context is not None:
            mu = mu + (context @ self.shift).view(-1, 1, 1, 1)
        sigma2 = 1 - abar
        return sigma2.sqrt() * (x_t - abar.sqrt() * mu) / (abar * self.s**2 + sigma2)


@pytest.fixture(scope="session", autouse=True)
def feature_cache(tmp_path_factory):
    """One classifier-feature cache (diffusion_core/feature_cache.py) for the run, shared by its workers and
    its subprocesses, and none from outside it."""
    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "feature_cache"
    os.environ["DIFFUSION_CACHE"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def schedule():
    return NoiseSchedule("cosine", num_timesteps=1000)


@pytest.fixture
def tiny_pipeline():
    torch.manual_seed(0)
    model = UNet(**TINY_UNET)
    with torch.no_grad():  # zero-initialised output layers would make every sample identical; randomise
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return DiffusionPipeline(model, NoiseSchedule("linear", 50), TINY_LABELS, TINY_STYLES, device="cpu")


def tiny_train_config(tmp_path, name, **overrides) -> TrainConfig:
    """A training run that takes seconds: an 8-channel U-Net, fp32, a few steps, one grid picture per class,
    files under tmp_path/name."""
    values = dict(base_channels=8, num_heads=2, num_groups=4, batch_size=8, max_steps=6, warmup_steps=2, grid_per_class=1,
                  checkpoint_every=3, log_every=1, precision="fp32", num_timesteps=50,
                  out_dir=str(tmp_path / name / "run"), export_dir=str(tmp_path / name / "export"))
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture
def course_files(tmp_path):
    """A tiny data set in the course's format: uint8 (N,16,16,3) sprites and one-hot (N,5) labels."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(24, 16, 16, 3), dtype=np.uint8)
    labels = np.eye(5, dtype=np.float64)[rng.integers(0, 5, size=24)]
    np.save(tmp_path / "sprites.npy", images)
    np.save(tmp_path / "labels.npy", labels)
    return f"course:{tmp_path / 'sprites.npy'},{tmp_path / 'labels.npy'}"


@pytest.fixture
def vocab():
    return Vocabulary.from_texts(["red apple", "cat face", "flag: Japan"], max_tokens=6)


def text_pipeline(vocab, **kwargs):
    torch.manual_seed(0)
    model = UNet(**{**TEXT_UNET, "vocab_size": len(vocab)})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return DiffusionPipeline(model, NoiseSchedule("linear", 50), ["a", "b", "c"], ["s1", "s2"], device="cpu",
                             vocabulary=vocab, **kwargs)


COURSE_LABELS = ["hero", "non-hero", "food", "spell", "side-facing"]


@pytest.fixture
def teacher_dir(tmp_path):
    """A tiny ε-teacher with the course data's five classes, saved as a checkpoint folder."""
    torch.manual_seed(0)
    model = UNet(**TINY_UNET)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    pipe = DiffusionPipeline(model, NoiseSchedule("cosine", 50), COURSE_LABELS, [], device="cpu",
                             recipe=["configs/teacher.json"])
    return pipe.save_pretrained(tmp_path / "teacher")


def tiny_distill_config(teacher_dir, data, tmp_path, name, **overrides) -> DistillConfig:
    values = dict(teacher=str(teacher_dir), data=data, skeleton_steps=5, batch_size=6, max_steps=4, warmup_steps=2,
                  checkpoint_every=2, log_every=1, precision="fp32", out_dir=str(tmp_path / name / "run"),
                  export_dir=str(tmp_path / name / "export"))
    return DistillConfig(**{**values, **overrides})


def narrow_copy(pipe: DiffusionPipeline) -> DiffusionPipeline:
    """A pipeline with ``pipe``'s interface (labels, styles, vocabulary, schedule, prediction type, default
    sampling, a guide where it has one, guidance as an input where it has it) on an 8-channel U-Net with
    random weights: it draws noise, tens of times faster."""
    config = {**pipe.model._hub_mixin_config, "base_channels": 8, "num_groups": 4, "num_heads": 2, "text_dim": 16}
    torch.manual_seed(0)
    model = UNet(**{k: v for k, v in config.items() if k in UNet._hub_mixin_init_parameters})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    narrow = DiffusionPipeline(model, NoiseSchedule(pipe.schedule.kind, pipe.schedule.num_timesteps), pipe.labels,
                               pipe.styles, pipe.prediction_type, device="cpu", vocabulary=pipe.vocabulary,
                               default_sampling=pipe.default_sampling, recipe=pipe.recipe)
    if pipe.guide is not None:
        narrow.set_guide(narrow_copy(pipe.guide))
    return narrow


@pytest.fixture(scope="session")
def shipped_stand_ins(tmp_path_factory) -> tuple[str, str]:
    """Folders of narrow copies of the shipped model (with its guide) and of its fast model: what the served
    app's tests run on (the shipped weights at the defaults of every tab take minutes on 2 cores)."""
    from app import SHIPPED_FAST_MODEL, SHIPPED_MODEL

    folder = tmp_path_factory.mktemp("shipped_stand_ins")
    main = narrow_copy(DiffusionPipeline.from_pretrained(SHIPPED_MODEL)).save_pretrained(folder / "emoji32")
    fast = narrow_copy(DiffusionPipeline.from_pretrained(SHIPPED_FAST_MODEL)).save_pretrained(folder / "emoji32_fast")
    return str(main), str(fast)
