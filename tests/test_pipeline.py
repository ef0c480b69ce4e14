"""The pipeline: generation, Hub-format checkpoints, strict loading, the Hub cache path."""
import hashlib
import json
import os
import pickle
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from diffusion_core.pipeline import MAX_IMAGES, DiffusionPipeline, cpu_has_native_bf16, to_uint8
from diffusion_core.samplers import sample
from diffusion_core.unet import UNet

from conftest import TINY_UNET

ROOT = Path(__file__).resolve().parent.parent


def test_generate_returns_uint8_images_and_labels(tiny_pipeline):
    out = tiny_pipeline.generate(num_images=4, classes=["a", "c"], steps=5, guidance=2.0, seed=1)
    assert out.images.shape == (4, 16, 16, 3) and out.images.dtype == np.uint8
    assert out.labels.tolist() == [0, 2, 0, 2]


def test_unconditional_generation_has_label_minus_one(tiny_pipeline):
    out = tiny_pipeline.generate(num_images=2, steps=3)
    assert out.labels.tolist() == [-1, -1]


def test_blend_and_style_build_the_context_vector(tiny_pipeline):
    ctx, labels, _ = tiny_pipeline.context_for(2, blend={"a": 0.6, "b": 0.4}, style="s2")
    assert ctx.tolist() == [[0.6, 0.4, 0.0, 0.0, 1.0]] * 2 or torch.allclose(ctx, torch.tensor([[0.6, 0.4, 0, 0, 1.0]] * 2))
    assert labels.tolist() == [0, 0]


def test_same_seed_same_images_and_image_i_independent_of_batch_size(tiny_pipeline):
    big = tiny_pipeline.generate(num_images=16, classes=["b"], steps=6, sampler="ddpm", seed=5)
    again = tiny_pipeline.generate(num_images=16, classes=["b"], steps=6, sampler="ddpm", seed=5)
    one = tiny_pipeline.generate(num_images=1, classes=["b"], steps=6, sampler="ddpm", seed=5)
    assert np.array_equal(big.images, again.images)
    assert np.array_equal(big.images[0], one.images[0])


def test_denoise_runs_channels_last_with_the_numbers_of_nchw(tiny_pipeline):
    torch.manual_seed(0)
    x = torch.randn(3, 3, 16, 16)
    t = torch.tensor([0, 20, 49])
    ctx, _, _ = tiny_pipeline.context_for(3, classes=["a", "b", "c"])
    seen = []
    hook = tiny_pipeline.model.conv_in.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    try:
        out = tiny_pipeline.denoise(x, t, ctx)
    finally:
        hook.remove()
    assert seen[0].is_contiguous(memory_format=torch.channels_last) and not seen[0].is_contiguous()
    nchw = UNet(**TINY_UNET)
    nchw.load_state_dict(tiny_pipeline.model.state_dict())
    with torch.no_grad():
        assert torch.allclose(out, nchw.eval()(x, t, ctx), atol=1e-5)


# bf16 with the shipped model's real kernels, where the CPU has them: emulated (AVX2, AVX-512 without BF16) it
# runs other kernels than a bf16 machine's, at several times fp32's time (6.6x on an AVX2 EPYC), and the app's
# "auto" never picks it there
NATIVE_BF16 = pytest.param("bfloat16", marks=pytest.mark.skipif(
    not cpu_has_native_bf16(), reason="bf16 is emulated on this CPU (no AVX-512 BF16, no AMX): not the kernels a bf16 machine runs"))


@pytest.mark.skipif(not (Path("/proc/cpuinfo").exists() and platform.machine() == "x86_64"), reason="reads Linux x86 CPU flags")
def test_native_bf16_means_the_cpu_has_bf16_instructions_not_emulation():
    # oneDNN reports bf16 on any AVX-512 CPU and emulates it there, at about twice the fp32 time;
    # bf16 by default (training's "auto", the benchmarks) only pays off where the CPU has the instructions
    flags = set(" ".join(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                         if line.startswith("flags")).split())
    assert cpu_has_native_bf16() == bool(flags & {"avx512_bf16", "amx_bf16"})


def test_bf16_requests_autocast_once_and_draw_what_per_call_autocast_draws(tiny_pipeline):
    tiny_pipeline.set_dtype("bfloat16")  # autocast runs on any CPU, natively or not
    out = tiny_pipeline.generate(num_images=3, classes=["a", "b", "c"], sampler="dpmpp_2m", steps=4, guidance=3.0, seed=2)
    context, _, _ = tiny_pipeline.context_for(3, classes=["a", "b", "c"])
    x0 = sample(tiny_pipeline.denoise, tiny_pipeline.schedule, (3, 3, 16, 16), sampler="dpmpp_2m", steps=4,
                guidance=3.0, context=context, seed=2, clip_x0=True)  # denoise's own autocast, entered per call
    assert np.array_equal(out.images, to_uint8(x0))
    tiny_pipeline.set_dtype("float32")
    assert not np.array_equal(tiny_pipeline.generate(num_images=3, classes=["a", "b", "c"], sampler="dpmpp_2m", steps=4,
                                                     guidance=3.0, seed=2).images, out.images)  # bf16 was on


def test_trajectory_has_one_frame_per_step(tiny_pipeline):
    out = tiny_pipeline.generate(num_images=2, steps=7, return_trajectory=True)
    traj = out.trajectory
    assert len(traj.timesteps) == 7 and traj.timesteps[0] == 49
    assert len(traj.x_t) == len(traj.x0_pred) == 7 and traj.x_t[0].shape == (2, 16, 16, 3)


@pytest.mark.parametrize("kwargs,message", [
    (dict(num_images=0), f"num_images must be an integer in 1..{MAX_IMAGES}"),
    (dict(num_images=MAX_IMAGES + 1), f"num_images must be an integer in 1..{MAX_IMAGES}"),
    (dict(steps=0), "steps must be an integer in 1..50"),
    (dict(steps=51), "steps must be an integer in 1..50"),
    (dict(guidance=float("nan"), classes=["a"]), "guidance must be a finite number"),
    (dict(classes=["zebra"]), "unknown class 'zebra'"),
    (dict(blend={"a": 1.5}), "blend weight for 'a' must be a number in 0..1"),
    (dict(style="gothic"), "unknown style 'gothic'"),
    (dict(sampler="heun"), "sampler must be one of"),
    (dict(seed=-1), "seed must be an integer"),
])
def test_bad_generate_arguments_raise_value_errors(tiny_pipeline, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_pipeline.generate(**{"steps": 3, **kwargs})


# ---- checkpoints -----------------------------------------------------------------------------
def test_save_and_load_round_trip_is_bit_exact(tiny_pipeline, tmp_path):
    folder = tiny_pipeline.save_pretrained(tmp_path / "ckpt", model_card="# card\n")
    assert {p.name for p in folder.iterdir()} >= {"config.json", "model.safetensors", "README.md"}
    loaded = DiffusionPipeline.from_pretrained(folder)
    for (k, a), (k2, b) in zip(tiny_pipeline.model.state_dict().items(), loaded.model.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    assert loaded.labels == tiny_pipeline.labels and loaded.styles == tiny_pipeline.styles
    a = tiny_pipeline.generate(num_images=2, classes=["a"], steps=4, seed=3).images
    b = loaded.generate(num_images=2, classes=["a"], steps=4, seed=3).images
    assert np.array_equal(a, b)


def test_float16_on_disk_halves_the_file_and_loads_what_the_rounded_model_draws(tiny_pipeline, tmp_path):
    from diffusion_core.unet import round_weights

    full = tiny_pipeline.save_pretrained(tmp_path / "fp32") / "model.safetensors"
    half = tiny_pipeline.save_pretrained(tmp_path / "fp16", weights_dtype="float16") / "model.safetensors"
    assert {t.dtype for t in load_file(half).values()} == {torch.float16}
    assert half.stat().st_size < 0.55 * full.stat().st_size
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "fp16")
    assert all(t.dtype == torch.float32 for t in loaded.model.state_dict().values())  # runs in float32
    drawn = tiny_pipeline.generate(num_images=2, classes=["a"], steps=4, seed=3).images
    round_weights(tiny_pipeline.model, "float16")
    assert np.array_equal(tiny_pipeline.generate(num_images=2, classes=["a"], steps=4, seed=3).images,
                          loaded.generate(num_images=2, classes=["a"], steps=4, seed=3).images)
    assert np.abs(drawn.astype(int) - loaded.generate(num_images=2, classes=["a"], steps=4, seed=3).images).max() <= 2
    with pytest.raises(ValueError, match="weights_dtype must be one of"):
        tiny_pipeline.save_pretrained(tmp_path / "bad", weights_dtype="int8")


def test_saving_replaces_the_folder_atomically_and_keeps_other_files(tiny_pipeline, tmp_path):
    folder = tiny_pipeline.save_pretrained(tmp_path / "ckpt")
    (folder / "training_log.csv").write_text("step,loss\n1,0.5\n")
    tiny_pipeline.save_pretrained(tmp_path / "ckpt", model_card="# new card\n")
    assert (folder / "training_log.csv").exists() and (folder / "README.md").read_text() == "# new card\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no staging leftovers


@pytest.mark.parametrize("damage,message", [
    ("missing", "missing tensors"), ("extra", "unexpected tensors"), ("misshaped", "mis-shaped tensors")])
def test_a_damaged_checkpoint_fails_with_a_clear_error(tiny_pipeline, tmp_path, damage, message):
    folder = tiny_pipeline.save_pretrained(tmp_path / "ckpt")
    weights = load_file(folder / "model.safetensors")
    key = "conv_in.weight"
    if damage == "missing":
        del weights[key]
    elif damage == "extra":
        weights["surprise.weight"] = torch.zeros(2)
    else:
        weights[key] = torch.zeros(1, 2, 3)
    save_file(weights, folder / "model.safetensors")
    with pytest.raises(ValueError, match=message):
        DiffusionPipeline.from_pretrained(folder)


def test_a_pickle_file_is_never_loaded(tiny_pipeline, tmp_path):
    folder = tiny_pipeline.save_pretrained(tmp_path / "ckpt")
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "unpickled"

    class Trap:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Trap()))
    with pytest.raises(ValueError, match="pickle files are never loaded"):
        DiffusionPipeline.from_pretrained(folder)
    assert not marker.exists()


def fill_hub_cache(cache: Path, repo_id: str, folder: Path) -> None:
    """Lay a checkpoint into a huggingface_hub cache the way a download does: blobs named by their
    hash, a snapshot of symlinks per commit, refs/main naming the commit."""
    repo_dir = cache / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo_dir / "blobs").mkdir()
    for file in (f for f in folder.rglob("*") if f.is_file()):
        blob = repo_dir / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copy2(file, blob)
        link = snapshot / file.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))


def test_from_pretrained_resolves_a_hub_repo_id_from_the_cache_offline(tiny_pipeline, tmp_path):
    from test_autoguidance import tiny_guide

    tiny_pipeline.set_guide(tiny_guide())
    folder = tiny_pipeline.save_pretrained(tmp_path / "ckpt", model_card="# card\n")
    fill_hub_cache(tmp_path / "hub", "someone/tiny-sprites", folder)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"), "PYTHONPATH": str(ROOT)}
    code = ("from diffusion_core.pipeline import DiffusionPipeline as P;"
            "p = P.from_pretrained('someone/tiny-sprites'); print(p.labels, p.model.image_size, p.guide.model.base_channels)")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "['a', 'b', 'c'] 16 4" in result.stdout  # the guide came from the repo's guide/ folder
    code_missing = "from diffusion_core.pipeline import DiffusionPipeline as P; P.from_pretrained('someone/absent')"
    result = subprocess.run([sys.executable, "-c", code_missing], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "could not get model 'someone/absent'" in result.stderr


def test_config_json_holds_model_schedule_and_labels(tiny_pipeline, tmp_path):
    config = json.loads((tiny_pipeline.save_pretrained(tmp_path / "c") / "config.json").read_text())
    assert config["schedule"] == "linear" and config["num_timesteps"] == 50
    assert config["labels"] == ["a", "b", "c"] and config["image_size"] == 16 and config["prediction_type"] == "epsilon"


def test_two_paths_part_where_each_guess_stays_nearer_its_own_final_picture():
    from diffusion_core.viz import parting_step, path_difference

    black, white, grey = (np.full((1, 4, 4, 3), v, dtype=np.uint8) for v in (0, 255, 128))
    a = [grey, grey, black, white, black, black]   # wanders towards B's end at step 3, then settles
    b = [grey, grey, white, white, white, white]
    assert parting_step(a, b) == 4 and parting_step(b, a) == 4
    assert parting_step([black, black], [white, white]) == 0  # apart from the first step
    assert path_difference([black, grey], [white, grey]).tolist() == [1.0, 0.0]


def test_same_seed_different_conditions_start_from_the_same_noise(tiny_pipeline):
    a = tiny_pipeline.generate(num_images=2, classes=["a"], sampler="dpmpp_2m_sde", steps=4, seed=3, return_trajectory=True)
    b = tiny_pipeline.generate(num_images=2, classes=["b"], sampler="dpmpp_2m_sde", steps=4, seed=3, return_trajectory=True)
    assert np.array_equal(a.trajectory.x_t[0], b.trajectory.x_t[0])
    assert not np.array_equal(a.images, b.images)


@pytest.mark.parametrize("dtype", ["float32", NATIVE_BF16])
def test_every_network_row_is_computed_the_same_whatever_the_batch_size(dtype):
    """The shipped model's network output for a row is bit for bit the same in a call of 1, 5, 16 or 17
    rows (fixed-size internal chunks: 17 is two of them). Unchunked, oneDNN's fp32 kernels for 4 and 32
    rows differ by ~6e-6, which the samplers amplify to 13/255 in a picture."""
    pipe = DiffusionPipeline.from_pretrained(ROOT / "checkpoints" / "emoji32_fast", device="cpu", dtype=dtype)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(17, 3, 32, 32, generator=gen)
    t = torch.randint(0, 1000, (17,), generator=gen)
    context = torch.zeros(17, 13 + 16)
    context[:, 0] = 1.0
    w = torch.full((17,), 5.0)
    full = pipe.denoise(x, t, context, w)
    for n in (1, 5, 16):
        assert torch.equal(pipe.denoise(x[:n], t[:n], context[:n], w[:n]), full[:n]), n


@pytest.mark.parametrize("dtype", ["float32", NATIVE_BF16])
def test_image_i_is_the_same_in_a_request_of_4_or_16_in_both_precisions(dtype):
    """The README's promise with the shipped fast model and every image compared, not only image 0."""
    pipe = DiffusionPipeline.from_pretrained(ROOT / "checkpoints" / "emoji32_fast", device="cpu", dtype=dtype)
    kwargs = dict(classes=["food_drink", "face"], sampler="dpmpp_2m_sde", steps=2, seed=7)  # step 2 is multistep
    big, small = pipe.generate(num_images=16, **kwargs), pipe.generate(num_images=5, **kwargs)
    assert np.array_equal(big.images[:5], small.images)


def edit_config(folder: Path, change) -> None:
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config))


def test_config_json_with_an_unknown_or_a_missing_key_fails_naming_it(tiny_pipeline, tmp_path):
    folder = tiny_pipeline.save_pretrained(tmp_path / "ckpt")
    edit_config(folder, lambda c: c.update(attention_resolution=[8]))  # a typo'd key was silently dropped
    with pytest.raises(ValueError, match=r"unknown keys \['attention_resolution'\]"):
        DiffusionPipeline.from_pretrained(folder)
    edit_config(folder, lambda c: (c.pop("attention_resolution"), c.pop("num_groups")))  # was silently defaulted
    with pytest.raises(ValueError, match=r"lacks the keys \['num_groups'\]"):
        DiffusionPipeline.from_pretrained(folder)
    edit_config(folder, lambda c: c.pop("default_sampling") and c.update(num_groups=4))
    with pytest.raises(ValueError, match=r"lacks the keys \['default_sampling'\]"):
        DiffusionPipeline.from_pretrained(folder)


def test_a_key_added_later_reads_as_what_every_checkpoint_before_it_meant(tiny_pipeline, tmp_path):
    folder = tiny_pipeline.save_pretrained(tmp_path / "ckpt")
    edit_config(folder, lambda c: (c.pop("patch_size"), c.pop("recipe")))  # a checkpoint from before both
    pipe = DiffusionPipeline.from_pretrained(folder)
    assert pipe.model.patch_size == 1 and pipe.recipe == []
    edit_config(folder, lambda c: c.update(recipe="configs/emoji32.json"))
    with pytest.raises(ValueError, match="recipe must be a list of config paths"):
        DiffusionPipeline.from_pretrained(folder)


def test_what_save_pretrained_writes_is_exactly_what_loading_expects(tiny_pipeline, vocab, tmp_path):
    from conftest import text_pipeline
    from diffusion_core.pipeline import config_keys

    for name, pipe in (("plain", tiny_pipeline), ("text", text_pipeline(vocab))):
        config = json.loads((pipe.save_pretrained(tmp_path / name) / "config.json").read_text())
        assert set(config) == config_keys(config)
        DiffusionPipeline.from_pretrained(tmp_path / name)


def test_a_permuted_or_edited_vocabulary_fails_to_load_naming_the_file(vocab, tmp_path):
    from conftest import text_pipeline

    folder = text_pipeline(vocab).save_pretrained(tmp_path / "ckpt")
    data = json.loads((folder / "vocab.json").read_text())
    assert DiffusionPipeline.from_pretrained(folder).vocabulary.tokens == data["tokens"]
    words = data["tokens"]
    words[3], words[4] = words[4], words[3]  # same size, two words swapped: before, it loaded and misread both
    (folder / "vocab.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"vocab.json is not the vocabulary this model was trained with"):
        DiffusionPipeline.from_pretrained(folder)
    edit_config(folder, lambda c: c.pop("vocab_sha256"))
    with pytest.raises(ValueError, match=r"lacks the keys \['vocab_sha256'\]; if .*vocab.json is the vocabulary"):
        DiffusionPipeline.from_pretrained(folder)


def test_a_vocabulary_with_another_max_tokens_is_refused(vocab):
    from conftest import text_pipeline
    from diffusion_core.text import Vocabulary

    with pytest.raises(ValueError, match="needs the vocabulary it was built with"):
        text_pipeline(Vocabulary(vocab.tokens, max_tokens=vocab.max_tokens + 1))


@pytest.mark.parametrize("name", ["emoji32", "emoji32/guide", "emoji32_fast"])
def test_the_shipped_configs_hold_exactly_the_keys_loading_expects(name):
    from diffusion_core.pipeline import read_config

    read_config(ROOT / "checkpoints" / name / "config.json")
