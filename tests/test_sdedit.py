"""Editing a picture: SDEdit's partial noising, RePaint's inpainting, and starting from the emoji a prompt names."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_core.__main__ import main
from diffusion_core.data import load_emoji
from diffusion_core.named_sprite import find_named_sprite
from diffusion_core.pipeline import DiffusionPipeline
from diffusion_core.samplers import SAMPLERS, ImageNoise, sample
from diffusion_core.schedule import NoiseSchedule
from diffusion_core.sdedit import max_steps, start_timestep
from diffusion_core.unet import UNet

from conftest import TINY_LABELS, TINY_STYLES, TINY_UNET, GaussianDenoiser, text_pipeline

SHAPE = (3, 3, 8, 8)


@pytest.fixture
def picture():
    return torch.rand(SHAPE, generator=torch.Generator().manual_seed(5)) * 2 - 1


def half_mask(n=SHAPE[0], size=SHAPE[-1]):
    mask = torch.zeros(n, 1, size, size, dtype=torch.bool)
    mask[..., : size // 2] = True  # repaint the left half, keep the right
    return mask


# ---- the sampler -----------------------------------------------------------------------------------------
def test_respace_from_a_start_is_trailing_on_the_shortened_chain_and_the_full_chain_is_unchanged(schedule):
    for n in (1, 7, 20, 1000):
        assert torch.equal(schedule.respace(n, start=999), schedule.respace(n))
    assert schedule.respace(5, start=499).tolist() == [499, 399, 299, 199, 99]
    assert schedule.respace(301, start=300).tolist() == list(range(300, -1, -1))
    with pytest.raises(ValueError, match=r"steps must be an integer in 1\.\.301"):
        schedule.respace(302, start=300)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_strength_one_is_plain_sampling_from_the_same_noise(schedule, picture, sampler):
    plain = sample(GaussianDenoiser(schedule), schedule, SHAPE, sampler=sampler, steps=6, seed=4)
    edit = sample(GaussianDenoiser(schedule), schedule, SHAPE, sampler=sampler, steps=6, seed=4, init=picture,
                  strength=1.0)
    assert torch.equal(plain, edit)


def test_strength_zero_returns_the_picture_without_calling_the_network(schedule, picture):
    den = GaussianDenoiser(schedule)
    out = sample(den, schedule, SHAPE, steps=20, init=picture, strength=0.0)
    assert den.calls == [] and torch.equal(out, picture)


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("strength", [0.05, 0.3, 0.7, 1.0])
@pytest.mark.parametrize("n", [1, 3, 7])
def test_n_steps_make_exactly_n_calls_per_branch_from_the_start_timestep_down(schedule, picture, sampler, strength, n):
    den = GaussianDenoiser(schedule, mu=0.0, s=0.2, shift=torch.tensor([0.5, -0.5]))
    ctx = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    seen = []
    sample(den, schedule, SHAPE, sampler=sampler, steps=n, guidance=3.0, context=ctx, init=picture, strength=strength,
           mask=half_mask(), callback=lambda step: seen.append(step.t))
    t_start = start_timestep(strength, 1000)
    assert len(den.calls) == n and all(batch == 2 * SHAPE[0] for _, batch, _ in den.calls)  # both branches, one call
    assert seen == [c[0][0] for c in den.calls] == schedule.respace(n, start=t_start).tolist()
    assert seen[0] == t_start


def test_the_start_is_the_picture_noised_with_the_first_draw_plain_sampling_starts_from(schedule, picture):
    first = []
    sample(GaussianDenoiser(schedule), schedule, SHAPE, steps=4, seed=9, init=picture, strength=0.4,
           callback=lambda step: first.append(step.x_t) if step.index == 0 else None)
    eps = ImageNoise(9, SHAPE[0], SHAPE[1:], torch.device("cpu"))()
    abar = schedule.alphas_cumprod[start_timestep(0.4, 1000)].item()
    assert torch.allclose(first[0], math.sqrt(abar) * picture + math.sqrt(1 - abar) * eps, atol=1e-6)


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("strength", [0.5, 1.0])
def test_a_mask_keeps_the_pictures_pixels_exactly_and_repaints_the_rest(schedule, picture, sampler, strength):
    out = sample(GaussianDenoiser(schedule, mu=0.5, s=0.05), schedule, SHAPE, sampler=sampler, steps=8, seed=1,
                 init=picture, strength=strength, mask=half_mask())
    assert torch.equal(out[..., 4:], picture[..., 4:])
    assert (out[..., :4] - 0.5).abs().mean() < (picture[..., :4] - 0.5).abs().mean() / 2  # drawn towards the data


def test_an_edit_of_image_i_is_the_same_in_a_batch_of_one(schedule, picture):
    batch = sample(GaussianDenoiser(schedule), schedule, SHAPE, sampler="dpmpp_2m_sde", steps=5, seed=2, init=picture,
                   strength=0.6, mask=half_mask())
    alone = sample(GaussianDenoiser(schedule), schedule, (1, *SHAPE[1:]), sampler="dpmpp_2m_sde", steps=5, seed=2,
                   init=picture[:1], strength=0.6, mask=half_mask(1))
    assert torch.allclose(batch[:1], alone, atol=1e-6)


def test_too_many_steps_for_the_strength_name_the_maximum(schedule, picture):
    assert max_steps(0.3, 1000) == 301 and max_steps(0.0, 1000) == 0
    with pytest.raises(ValueError, match="steps must be at most 301, got 400"):
        sample(GaussianDenoiser(schedule), schedule, SHAPE, steps=400, init=picture, strength=0.3)


@pytest.mark.parametrize("kwargs,message", [
    (dict(strength=1.5), "strength must be a number in 0..1"),
    (dict(strength=float("nan")), "strength must be a number in 0..1"),
    (dict(init=None, strength=0.5), "needs a picture to start from"),
    (dict(init=None, mask=torch.ones(3, 1, 8, 8, dtype=torch.bool)), "a mask needs the picture"),
    (dict(init=torch.zeros(3, 3, 16, 16)), "init must be a float tensor of shape"),
    (dict(mask=torch.ones(3, 1, 4, 4, dtype=torch.bool)), "mask must have shape"),
])
def test_bad_edit_arguments_to_the_sampler_are_clear_errors(schedule, picture, kwargs, message):
    with pytest.raises(ValueError, match=message):
        sample(GaussianDenoiser(schedule), schedule, SHAPE, steps=4, **{"init": picture, **kwargs})


# ---- the pipeline ----------------------------------------------------------------------------------------
def sprite(seed=0, size=16):
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_generate_at_strength_zero_returns_the_picture_and_calls_nothing(tiny_pipeline, monkeypatch):
    calls = []
    denoise = tiny_pipeline.denoise
    monkeypatch.setattr(tiny_pipeline, "denoise", lambda *a, **k: calls.append(1) or denoise(*a, **k))
    out = tiny_pipeline.generate(num_images=2, classes=["a"], steps=5, init_image=sprite(), strength=0.0)
    assert calls == [] and np.array_equal(out.images, np.stack([sprite()] * 2))


def test_generate_at_strength_one_equals_plain_generate(tiny_pipeline):
    plain = tiny_pipeline.generate(num_images=3, classes=["a", "b"], style="s1", sampler="ddim", steps=4, seed=7)
    edit = tiny_pipeline.generate(num_images=3, classes=["a", "b"], style="s1", sampler="ddim", steps=4, seed=7,
                                  init_image=sprite(), strength=1.0)
    assert np.array_equal(plain.images, edit.images)


def test_generate_with_a_mask_keeps_each_pictures_pixels_and_records_the_edits_trajectory(tiny_pipeline):
    pictures = np.stack([sprite(1), sprite(2)])
    mask = np.zeros((16, 16), bool)
    mask[4:12, 4:12] = True
    out = tiny_pipeline.generate(num_images=2, blend={"a": 0.6, "b": 0.4}, sampler="dpmpp_2m", steps=6, guidance=3.0,
                                 init_image=pictures, strength=0.5, mask=mask, return_trajectory=True)
    assert np.array_equal(out.images[:, ~mask], pictures[:, ~mask])
    assert not np.array_equal(out.images[:, mask], pictures[:, mask])
    assert len(out.trajectory.x_t) == 6 and out.trajectory.timesteps[0] == start_timestep(0.5, 50)


def test_edits_work_with_prompts_and_with_a_guidance_distilled_student(vocab):
    pipe = text_pipeline(vocab)
    mask = np.zeros((2, 16, 16), bool)
    mask[:, :, :8] = True
    out = pipe.generate(num_images=2, prompt="red apple", style="s2", steps=3, init_image=sprite(), strength=0.7, mask=mask)
    assert np.array_equal(out.images[:, :, 8:], np.stack([sprite()] * 2)[:, :, 8:])
    torch.manual_seed(0)
    student = DiffusionPipeline(UNet(**TINY_UNET, guidance_embedding=True), NoiseSchedule("linear", 50), TINY_LABELS,
                                TINY_STYLES, device="cpu")
    out = student.generate(num_images=2, classes=["c"], sampler="consistency", steps=2, guidance=4.0,
                           init_image=sprite(), strength=0.6, mask=mask[0], guidance_interval=None)
    assert np.array_equal(out.images[:, :, 8:], np.stack([sprite()] * 2)[:, :, 8:])


@pytest.mark.parametrize("kwargs,message", [
    (dict(init_image=sprite(size=32)), "init_image must be 16x16 pixels, the model's size"),
    (dict(init_image=sprite().astype(np.float32)), "init_image must be uint8"),
    (dict(init_image=sprite()[..., :2]), "init_image must have shape"),
    (dict(init_image=np.stack([sprite()] * 3)), "init_image holds 3 pictures for 2 images"),
    (dict(mask=np.ones((16, 16), bool)), "a mask needs the picture it applies to"),
    (dict(strength=0.5), "needs a picture to start from"),
    (dict(init_image=sprite(), strength=-0.1), "strength must be a number in 0..1"),
    (dict(init_image=sprite(), strength=1.01), "strength must be a number in 0..1"),
    (dict(init_image=sprite(), mask=np.ones((8, 8), bool)), "mask must be 16x16 pixels"),
    (dict(init_image=sprite(), mask=np.ones((16, 16), np.uint8)), "mask must be bool"),
    (dict(init_image=sprite(), strength=0.1, steps=10), r"steps must be at most 6, got 10"),
])
def test_bad_edit_arguments_to_generate_are_clear_errors(tiny_pipeline, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_pipeline.generate(num_images=2, **{"steps": 4, **kwargs})


# ---- the emoji a prompt names ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def emoji():
    return load_emoji(split="train")


def test_red_apple_is_found_as_the_red_apple_in_another_style(emoji):
    found = find_named_sprite(emoji, "red apple", avoid_style="noto")
    assert found.name == "red apple" and found.style != "noto" and found.score == 1.0
    assert emoji.names[found.index] == "red apple" and emoji.style_names[emoji.style_index()[found.index]] == found.style
    assert find_named_sprite(emoji, "red apple", avoid_style="openmoji").style != "openmoji"


def test_unknown_words_are_read_through_wordnet_and_no_match_is_none(emoji):
    assert find_named_sprite(emoji, "croissant").name == "bread"  # croissant -> roll -> bread
    assert find_named_sprite(emoji, "cat").name == "cat"          # the exact name before "cat face"
    assert find_named_sprite(emoji, "qwxz zzyq") is None
    with pytest.raises(ValueError, match="unknown style"):
        find_named_sprite(emoji, "cat", avoid_style="pixel")


# ---- the command line ------------------------------------------------------------------------------------
@pytest.fixture
def tiny_checkpoint(tiny_pipeline, tmp_path):
    return tiny_pipeline.save_pretrained(tmp_path / "tiny")


def test_cli_redraws_a_picture_and_keeps_what_the_mask_keeps(tiny_checkpoint, tmp_path, capsys):
    picture, mask = sprite(3), np.zeros((16, 16, 3), np.uint8)
    mask[:8] = 255  # white: repaint the top half
    Image.fromarray(picture).save(tmp_path / "in.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "edit.npz"
    code = main(["sample", "--model", str(tiny_checkpoint), "--num", "2", "--class", "a", "--sampler", "ddim",
                 "--steps", "5", "--init", str(tmp_path / "in.png"), "--strength", "0.6",
                 "--mask", str(tmp_path / "mask.png"), "--out", str(out)])
    assert code == 0 and "strength 0.6, masked" in capsys.readouterr().out
    images = np.load(out)["images"]
    assert np.array_equal(images[:, 8:], np.stack([picture] * 2)[:, 8:])
    assert not np.array_equal(images[:, :8], np.stack([picture] * 2)[:, :8])


def test_cli_starts_from_the_emoji_the_prompt_names_and_says_which(vocab, tmp_path, capsys):
    folder = text_pipeline(vocab).save_pretrained(tmp_path / "text")
    code = main(["sample", "--model", str(folder), "--num", "2", "--prompt", "red apple", "--style", "s1",
                 "--start-from-name", "--strength", "0.5", "--steps", "3", "--out", str(tmp_path / "o.png")])
    out = capsys.readouterr().out
    assert code == 0 and "'red apple' -> 'red apple' (noto sprite" in out


@pytest.mark.parametrize("args,message", [
    (["--strength", "0.5"], "--strength needs a picture to start from"),
    (["--mask", "m.png"], "--mask needs a picture"),
    (["--start-from-name"], "--start-from-name needs --prompt"),
    (["--init", "no-such-picture.png"], "no-such-picture.png is not a picture"),
])
def test_bad_edit_flags_are_one_line_errors(tiny_checkpoint, tmp_path, args, message, capsys):
    code = main(["sample", "--model", str(tiny_checkpoint), "--steps", "2", "--out", str(tmp_path / "o.png"), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err
