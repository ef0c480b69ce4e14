"""Autoguidance: the formula, what it does to a distribution, and the guide inside a checkpoint."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from diffusion_core.__main__ import main
from diffusion_core.autoguidance import autoguided_denoiser
from diffusion_core.pipeline import GUIDE_FOLDER, DiffusionPipeline
from diffusion_core.samplers import sample
from diffusion_core.schedule import NoiseSchedule
from diffusion_core.unet import UNet

from conftest import TINY_LABELS, TINY_STYLES, TINY_UNET, GaussianDenoiser, text_pipeline


def tiny_guide(seed: int = 1, **overrides) -> DiffusionPipeline:
    """A smaller random U-Net over the tiny pipeline's labels and styles."""
    torch.manual_seed(seed)
    model = UNet(**{**TINY_UNET, "base_channels": 4, "num_groups": 2})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    kwargs = dict(schedule=NoiseSchedule("linear", 50), labels=TINY_LABELS, styles=TINY_STYLES, device="cpu")
    kwargs.update(overrides)
    return DiffusionPipeline(model, **kwargs)


def test_the_mix_is_guide_plus_w_times_the_difference_and_w_1_never_calls_the_guide(schedule):
    main, guide = GaussianDenoiser(schedule, mu=0.5), GaussianDenoiser(schedule, mu=0.2)
    x, t = torch.randn(3, 1, 2, 2), torch.tensor([10, 500, 900])
    mixed = autoguided_denoiser(main, guide, 2.5)(x, t, None)
    torch.testing.assert_close(mixed, guide(x, t, None) + 2.5 * (main(x, t, None) - guide(x, t, None)))
    guide.calls.clear()
    autoguided_denoiser(main, guide, 1.0)(x, t, None)
    assert guide.calls == []


def test_a_guide_that_spreads_wider_makes_autoguided_samples_tighter_around_the_same_mean(schedule):
    """Karras et al. 2024, sec. 3: the guide errs the same way as the main model, more strongly (here: a
    wider Gaussian than the data); guiding away from it concentrates samples on the data's typical
    region, and more so as w grows, without moving its centre."""
    main, guide = GaussianDenoiser(schedule, mu=0.5, s=0.3), GaussianDenoiser(schedule, mu=0.5, s=0.6)
    spreads = []
    for w in (1.0, 2.0, 3.0):
        x = sample(autoguided_denoiser(main, guide, w), schedule, (256, 1, 4, 4), sampler="ddim", steps=50, seed=0)
        assert abs(x.mean().item() - 0.5) < 0.05
        spreads.append(x.std().item())
    assert abs(spreads[0] - 0.3) < 0.03
    assert spreads[0] > spreads[1] * 1.1 > spreads[2] * 1.1 * 1.05


def test_generate_autoguides_unconditional_requests_by_default_and_conditional_ones_when_asked(tiny_pipeline):
    pipe, guide = tiny_pipeline, tiny_guide()
    plain = pipe.generate(num_images=2, sampler="ddim", steps=4, seed=3).images
    pipe.set_guide(guide)
    pipe.default_sampling["autoguidance"] = 2.0
    expected = sample(autoguided_denoiser(pipe.denoise, guide.denoise, 2.0), pipe.schedule, (2, 3, 16, 16),
                      sampler="ddim", steps=4, prediction_type=pipe.prediction_type, seed=3, clip_x0=True)
    auto = pipe.generate(num_images=2, sampler="ddim", steps=4, seed=3).images
    assert np.array_equal(auto, pipe.generate(num_images=2, sampler="ddim", steps=4, seed=3, autoguidance=2.0).images)
    assert np.abs(auto.astype(int) - ((expected.clamp(-1, 1) + 1) * 127.5).round().permute(0, 2, 3, 1).numpy()).max() <= 1
    assert not np.array_equal(auto, plain)
    assert np.array_equal(plain, pipe.generate(num_images=2, sampler="ddim", steps=4, seed=3, autoguidance=None).images)
    # a class request keeps classifier-free guidance unless autoguidance is asked for
    cfg = pipe.generate(num_images=2, classes=["a"], sampler="ddim", steps=4, guidance=3.0, seed=3).images
    pipe.set_guide(None)
    assert np.array_equal(cfg, pipe.generate(num_images=2, classes=["a"], sampler="ddim", steps=4, guidance=3.0, seed=3).images)
    pipe.set_guide(guide)
    auto_class = pipe.generate(num_images=2, classes=["a"], sampler="ddim", steps=4, seed=3, autoguidance=2.0).images
    assert not np.array_equal(auto_class, cfg)


def test_an_evaluation_setting_may_autoguide_class_requests(tiny_pipeline):
    from diffusion_core.evaluate import Setting, generate_like, parse_setting

    setting = parse_setting("ddim:4:ag2")
    assert setting == Setting("ddim", 4, 1.0, None, 2.0) and setting.describe() == "autoguidance 2"
    pipe, labels, styles = tiny_pipeline, np.array([0, 1, 0]), [TINY_STYLES[0]] * 3
    pipe.set_guide(tiny_guide())
    drawn = generate_like(pipe, labels, styles, setting, seed=0)
    asked = pipe.generate(num_images=3, classes=[TINY_LABELS[i] for i in labels], style=TINY_STYLES[0], sampler="ddim",
                          steps=4, autoguidance=2.0, seed=0).images
    assert np.array_equal(drawn, asked)
    assert not np.array_equal(drawn, generate_like(pipe, labels, styles, parse_setting("ddim:4:3"), seed=0))
    for bad in ("ddim:4:ag2:0.5:30", "ddim:4:agx"):
        with pytest.raises(ValueError, match="SAMPLER:STEPS:agW"):
            parse_setting(bad)


def test_the_guide_is_saved_in_its_own_folder_and_loaded_with_the_checkpoint(tiny_pipeline, tmp_path):
    pipe, guide = tiny_pipeline, tiny_guide()
    pipe.set_guide(guide)
    pipe.default_sampling["autoguidance"] = 1.5
    folder = pipe.save_pretrained(tmp_path / "ckpt")
    assert (folder / GUIDE_FOLDER / "config.json").is_file() and (folder / GUIDE_FOLDER / "model.safetensors").is_file()
    loaded = DiffusionPipeline.from_pretrained(folder, device="cpu")
    assert loaded.guide is not None and loaded.default_sampling["autoguidance"] == 1.5
    assert np.array_equal(loaded.generate(num_images=2, sampler="ddim", steps=3, seed=1).images,
                          pipe.generate(num_images=2, sampler="ddim", steps=3, seed=1).images)
    # the command line uses it too: by default for unconditional samples, and when asked
    out = tmp_path / "s.npz"
    for flag, w in (([], 1.5), (["--autoguidance", "3"], 3.0)):
        assert main(["sample", "--model", str(folder), "--num", "2", "--sampler", "ddim", "--steps", "3", "--seed", "1",
                     "--out", str(out), *flag]) == 0
        with np.load(out) as npz:
            assert np.array_equal(npz["images"], pipe.generate(num_images=2, sampler="ddim", steps=3, seed=1,
                                                               autoguidance=w).images)
    # re-saving the main model alone (as a training export does) keeps the guide already in the folder
    pipe.set_guide(None)
    pipe.save_pretrained(folder)
    assert DiffusionPipeline.from_pretrained(folder, device="cpu").guide is not None


@pytest.mark.parametrize("overrides, message", [
    (dict(labels=["a", "b", "x"]), "the guide model's labels"),
    (dict(styles=["s1", "s3"]), "the guide model's styles"),
    (dict(schedule=NoiseSchedule("cosine", 50)), "the guide model's schedule"),
    (dict(schedule=NoiseSchedule("linear", 40)), "the guide model's num_timesteps"),
    (dict(prediction_type="v"), "the guide model's prediction_type"),
])
def test_a_guide_that_draws_something_else_is_refused_by_name(tiny_pipeline, overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_pipeline.set_guide(tiny_guide(**overrides))


def test_autoguidance_errors_are_clear(tiny_pipeline, vocab):
    with pytest.raises(ValueError, match="no guide model"):
        tiny_pipeline.generate(num_images=1, steps=2, autoguidance=2.0)
    tiny_pipeline.set_guide(tiny_guide())
    for bad in (0.5, float("nan"), 100.0, "2"):
        with pytest.raises(ValueError, match="autoguidance must be a number in 1..50"):
            tiny_pipeline.generate(num_images=1, steps=2, autoguidance=bad)
    with pytest.raises(ValueError, match="replaces classifier-free guidance"):
        tiny_pipeline.generate(num_images=1, classes=["a"], steps=2, guidance=3.0, autoguidance=2.0)
    text = text_pipeline(vocab)
    text.set_guide(tiny_guide())
    text.generate(num_images=1, classes=["b"], sampler="ddim", steps=2, autoguidance=2.0)  # no prompt: fine
    with pytest.raises(ValueError, match="autoguidance works without a prompt"):
        text.generate(num_images=1, prompt="red apple", sampler="ddim", steps=2, autoguidance=2.0)


def test_a_guidance_student_does_not_inherit_its_teachers_autoguidance():
    from diffusion_core.distill import student_sampling

    teacher = {"sampler": "dpmpp_2m_sde", "steps": 20, "guidance": 4.0, "autoguidance": 1.5, "guidance_interval": [0.5, 30]}
    assert student_sampling("guidance", teacher, 16) == {"sampler": "dpmpp_2m_sde", "steps": 20, "guidance": 4.0}
