"""EDM's preconditioning on the VP schedule (edm.py): exact identities, the samplers on an exact EDM
denoiser, the input scaling in the pipeline, and a tiny EDM training run end to end."""
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from diffusion_core import edm
from diffusion_core.pipeline import DiffusionPipeline
from diffusion_core.samplers import SAMPLERS, sample
from diffusion_core.schedule import NoiseSchedule
from diffusion_core.train import TrainConfig, train

from conftest import TINY_LABELS, TINY_STYLES, TINY_UNET, GaussianDenoiser, tiny_train_config

ALPHA_BARS = [1 - 4e-5, 0.99, 0.7, 0.3, 0.01, 1e-8]  # t = 0 of the cosine schedule to beyond its T-1


@pytest.mark.parametrize("alpha_bar", ALPHA_BARS)
def test_the_denoiser_built_from_the_target_is_the_clean_picture(alpha_bar):
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1, torch.randn(4, 3, 8, 8, generator=g)
    x_t = math.sqrt(alpha_bar) * x0 + math.sqrt(1 - alpha_bar) * noise
    assert edm.denoised(edm.target(x0, noise, alpha_bar), x_t, alpha_bar) == pytest.approx(x0, abs=2e-5)
    per_picture = torch.full((4,), alpha_bar, dtype=torch.float64)  # one ᾱ per picture, as in training
    assert edm.target(x0, noise, per_picture) == pytest.approx(edm.target(x0, noise, alpha_bar), abs=1e-6)


def test_with_sigma_data_one_the_target_is_minus_v():
    schedule = NoiseSchedule("cosine", 1000)
    x0, noise, t = torch.randn(6, 3, 4, 4), torch.randn(6, 3, 4, 4), torch.tensor([0, 10, 200, 500, 900, 999])
    abar = schedule.alphas_cumprod[t]
    assert edm.target(x0, noise, abar, sigma_data=1.0) == pytest.approx(-schedule.velocity(x0, noise, t), abs=1e-5)


@pytest.mark.parametrize("alpha_bar", ALPHA_BARS)
def test_the_target_and_the_networks_input_have_unit_variance_at_every_noise_level_for_data_of_std_sigma_data(alpha_bar):
    """What the preconditioning is for: a network that outputs 0 starts at loss 1 at every σ, and c_in x_t has
    unit variance, for data of std σ_d."""
    g = torch.Generator().manual_seed(1)
    x0, noise = edm.SIGMA_DATA * torch.randn(64, 3, 16, 16, generator=g), torch.randn(64, 3, 16, 16, generator=g)
    x_t = math.sqrt(alpha_bar) * x0 + math.sqrt(1 - alpha_bar) * noise
    assert edm.target(x0, noise, alpha_bar).pow(2).mean().item() == pytest.approx(1.0, abs=0.02)
    assert (x_t * edm.coefficients(alpha_bar, x_t)[0]).var().item() == pytest.approx(1.0, abs=0.02)


class GaussianEDMDenoiser:
    """The exact EDM network output F = (D - c_skip x_t)/c_out for Gaussian data, D from the exact ε."""

    def __init__(self, schedule, **kwargs):
        self.eps = GaussianDenoiser(schedule, **kwargs)
        self.schedule = schedule

    def __call__(self, x_t, t, context):
        abar = self.schedule.alphas_cumprod[t]
        a = abar.sqrt().float().view(-1, 1, 1, 1)
        x0 = (x_t - (1 - a**2).sqrt() * self.eps(x_t, t, context)) / a
        _, c_skip, c_out = edm.coefficients(abar, x_t)
        return (x0 - c_skip * x_t) / c_out


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_draws_from_an_exact_edm_denoiser_what_it_draws_from_the_exact_eps_denoiser(schedule, sampler):
    shape = (4, 1, 8, 8)
    eps = sample(GaussianDenoiser(schedule), schedule, shape, sampler=sampler, steps=12, seed=3)
    edm_out = sample(GaussianEDMDenoiser(schedule), schedule, shape, sampler=sampler, steps=12, seed=3,
                     prediction_type="edm")
    assert edm_out == pytest.approx(eps, abs=2e-3)


def test_training_noise_levels_follow_edms_log_normal_and_a_uniform_share_covers_every_level():
    schedule = NoiseSchedule("cosine", 1000)
    g = torch.Generator().manual_seed(0)
    log_sigma = edm.schedule_sigmas(schedule).log()[edm.training_timesteps(schedule, 50_000, g, uniform_share=0.0)]
    assert log_sigma.median().item() == pytest.approx(edm.P_MEAN, abs=0.03)
    assert log_sigma.std().item() == pytest.approx(edm.P_STD, abs=0.03)
    t = edm.training_timesteps(schedule, 50_000, g)
    high = (t > 950).float().mean().item()  # 0.1% from the log-normal, plus the uniform share's 4.9%
    assert high == pytest.approx(edm.UNIFORM_SHARE * 49 / 1000, abs=0.002)
    assert t.min() >= 0 and t.max() <= 999


def test_the_pipeline_scales_an_edm_networks_input_by_c_in():
    torch.manual_seed(0)
    from diffusion_core.unet import UNet

    pipe = DiffusionPipeline(UNet(**TINY_UNET), NoiseSchedule("cosine", 50), TINY_LABELS, TINY_STYLES,
                             prediction_type="edm", device="cpu")
    seen = []
    pipe.model.register_forward_hook(lambda module, args, out: seen.append(args[0].clone()))
    x_t, t = torch.randn(2, 3, 16, 16), torch.tensor([49, 0])
    pipe.denoise(x_t, t, None)
    abar = pipe.schedule.alphas_cumprod[t]
    expected = x_t / (abar * edm.SIGMA_DATA**2 + 1 - abar).sqrt().float().view(-1, 1, 1, 1)
    assert seen[0][:2] == pytest.approx(expected, abs=1e-6)


def test_an_edm_model_trains_exports_loads_and_draws(course_files, tmp_path):
    cfg = tiny_train_config(tmp_path, "edm", data=course_files, prediction_type="edm", image_size=16,
                            channel_mults=[1, 2], attention_resolutions=[8])
    assert train(cfg, show_progress=False)["step"] == cfg.max_steps
    losses = pd.read_csv(Path(cfg.out_dir) / "log.csv")["loss"]
    assert len(losses) == cfg.max_steps and losses.between(0.05, 5).all()  # F's target has unit variance
    pipe = DiffusionPipeline.from_pretrained(cfg.export_dir)
    assert pipe.prediction_type == "edm"
    out = pipe.generate(num_images=2, classes=["food"], sampler="dpmpp_2m", steps=4, guidance=2.0, seed=0)
    assert out.images.shape == (2, 16, 16, 3)


def test_min_snr_weighting_is_refused_for_edm():
    with pytest.raises(ValueError, match="min_snr_gamma does not apply to EDM"):
        TrainConfig(prediction_type="edm", min_snr_gamma=5.0).validate()
