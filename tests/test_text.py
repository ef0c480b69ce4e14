"""Text prompts: the vocabulary, the text-conditioned U-Net, the pipeline's prompt path and training
a text model (from scratch and grown from a model without text)."""
import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from diffusion_core.data import EMOJI_NPZ
from diffusion_core.pipeline import DiffusionPipeline
from diffusion_core.schedule import NoiseSchedule
from diffusion_core.text import PAD, START, UNK, Vocabulary
from diffusion_core.train import train, training_prompt
from diffusion_core.unet import UNet

from conftest import TEXT_UNET, text_pipeline, tiny_train_config



def test_vocabulary_encodes_known_words_reports_unknown_ones_and_pads(vocab):
    ids, unknown = vocab.encode("Red APPLE, purple")
    assert ids[:4] == [START, vocab.index["red"], vocab.index["apple"], UNK] and ids[4:] == [PAD, PAD]
    assert unknown == ["purple"]
    assert vocab.encode("   ") == ([PAD] * 6, [])  # the empty prompt: no text at all
    assert len(vocab.encode("cat " * 20)[0]) == 6  # long prompts are cut to max_tokens


def test_vocabulary_round_trips_through_json_and_loads_strictly(vocab, tmp_path):
    vocab.save(tmp_path)
    assert Vocabulary.load(tmp_path, len(vocab)).tokens == vocab.tokens
    with pytest.raises(ValueError, match="built for 99"):
        Vocabulary.load(tmp_path, 99)
    (tmp_path / "vocab.json").write_text("{broken")
    with pytest.raises(ValueError, match="needs its vocabulary as JSON"):
        Vocabulary.load(tmp_path, len(vocab))


def test_a_new_text_model_draws_what_it_drew_without_text():
    """Cross-attention and the pooled text path start at zero, so a grown model keeps its pictures."""
    torch.manual_seed(0)
    model = UNet(**TEXT_UNET)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "text" not in name and ".kv." not in name and ".q." not in name and "proj" not in name:
                p.add_(0.05 * torch.randn_like(p))
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 40])
    tokens = torch.tensor([[START, 3, 4, 0, 0, 0], [START, 5, 0, 0, 0, 0]])
    assert torch.allclose(model(x, t, None), model(x, t, None, tokens))


def test_text_model_rejects_bad_tokens_and_a_plain_model_rejects_tokens():
    model = UNet(**TEXT_UNET)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 40])
    with pytest.raises(ValueError, match=r"tokens must be long of shape \(N=2, 6\)"):
        model(x, t, None, torch.zeros(2, 5, dtype=torch.long))
    plain = UNet(**{k: v for k, v in TEXT_UNET.items() if k not in ("vocab_size", "text_dim", "max_tokens")})
    with pytest.raises(ValueError, match="no text encoder"):
        plain(x, t, None, torch.zeros(2, 6, dtype=torch.long))


def test_prompts_change_the_picture_and_unknown_words_come_back(vocab):
    pipe = text_pipeline(vocab)
    apple = pipe.generate(num_images=2, prompt="red apple", sampler="ddim", steps=3, guidance=2.0, seed=1)
    cat = pipe.generate(num_images=2, prompt="cat face zebra", sampler="ddim", steps=3, guidance=2.0, seed=1)
    assert apple.unknown_words == [] and cat.unknown_words == ["zebra"]
    assert not np.array_equal(apple.images, cat.images)
    both = pipe.generate(num_images=2, prompt="red apple", classes=["b"], style="s1", sampler="ddim", steps=3, seed=1)
    assert both.labels.tolist() == [1, 1]
    mixed = pipe.generate(num_images=2, prompt=["red apple", "cat face zebra"], sampler="ddim", steps=3, guidance=2.0,
                          seed=1)  # image i gets prompt i: the same pictures as asked one prompt at a time
    assert np.array_equal(mixed.images[0], apple.images[0]) and np.array_equal(mixed.images[1], cat.images[1])
    assert mixed.unknown_words == ["zebra"]
    with pytest.raises(ValueError, match="prompt must be text or a non-empty list"):
        pipe.generate(num_images=1, prompt=[], steps=2)
    empty = pipe.generate(num_images=2, prompt="", sampler="ddim", steps=3, seed=1)
    none = pipe.generate(num_images=2, sampler="ddim", steps=3, seed=1)
    assert np.array_equal(empty.images, none.images)  # the empty prompt is no text


def test_a_prompt_to_a_model_without_text_is_a_clear_error(tiny_pipeline):
    with pytest.raises(ValueError, match="no text encoder"):
        tiny_pipeline.generate(num_images=1, prompt="red apple", steps=2)


def test_generate_defaults_to_the_checkpoints_default_sampling(vocab, tmp_path):
    pipe = text_pipeline(vocab, default_sampling={"sampler": "ddim", "steps": 3, "guidance": 2.0})
    folder = pipe.save_pretrained(tmp_path / "m")
    assert json.loads((folder / "config.json").read_text())["default_sampling"]["steps"] == 3
    loaded = DiffusionPipeline.from_pretrained(folder)
    seen = []
    loaded.generate(num_images=1, prompt="cat", callback=seen.append)
    assert len(seen) == 3 and loaded.vocabulary.tokens == vocab.tokens
    (folder / "vocab.json").unlink()
    with pytest.raises(ValueError, match="needs its vocabulary"):
        DiffusionPipeline.from_pretrained(folder)


def test_training_prompts_come_from_the_name_keywords_or_class():
    rng = random.Random(0)
    prompts = [training_prompt("red apple", "apple|fruit|red", "food_drink", rng) for _ in range(400)]
    assert 0.4 < prompts.count("red apple") / 400 < 0.6
    assert 0.1 < prompts.count("food drink") / 400 < 0.3
    keyword_prompts = [p for p in prompts if p not in ("red apple", "food drink")]
    assert keyword_prompts and all(set(p.split()) <= {"apple", "fruit", "red"} for p in keyword_prompts)
    assert training_prompt("sun", "", "travel_places", random.Random(1)) in ("sun", "travel places")


@pytest.fixture
def emoji_subset(tmp_path):
    """The emoji data cut to 40 pictures (names and keywords included), as "emoji:FILE.npz"."""
    with np.load(EMOJI_NPZ) as npz:
        keep = np.concatenate([np.flatnonzero(npz["split"] == 0)[:36], np.flatnonzero(npz["split"] == 1)[:4]])
        arrays = {k: (npz[k][keep] if npz[k].shape and len(npz[k]) == len(npz["labels"]) else npz[k]) for k in npz.files}
    np.savez(tmp_path / "emoji.npz", **arrays)
    return f"emoji:{tmp_path / 'emoji.npz'}"


def text_config(tmp_path, name, **overrides):
    return tiny_train_config(tmp_path, name, **{"channel_mults": [1, 2, 2, 2], "attention_resolutions": [4],
                                                "text_dim": 16, "batch_size": 4, "max_steps": 2, "warmup_steps": 1,
                                                "checkpoint_every": 2, **overrides})


def test_a_model_without_text_grows_a_text_encoder_and_keeps_what_it_draws(emoji_subset, tmp_path):
    from diffusion_core.data import EMOJI_CLASSES, EMOJI_STYLES

    plain = text_config(tmp_path, "plain", data=emoji_subset)
    torch.manual_seed(0)
    model = UNet(**plain.unet_kwargs(len(EMOJI_CLASSES) + len(EMOJI_STYLES)))
    with torch.no_grad():  # trained-looking weights: every layer matters, zero-started ones included
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    folder = DiffusionPipeline(model, NoiseSchedule("cosine", 50), list(EMOJI_CLASSES), list(EMOJI_STYLES),
                               device="cpu").save_pretrained(tmp_path / "plain_export")
    grown = text_config(tmp_path, "grown", data=emoji_subset, text=True, init_from=str(folder), max_steps=1, lr=1e-12)
    train(grown, show_progress=False)
    old, new = (DiffusionPipeline.from_pretrained(f) for f in (folder, grown.export_dir))
    assert new.vocabulary is not None and "grinning" in new.vocabulary.index and old.vocabulary is None
    assert any(k.startswith("text_encoder.") for k in load_file(Path(grown.export_dir) / "model.safetensors"))
    x, t = torch.randn(3, 3, 32, 32), torch.tensor([5, 20, 45])
    context = torch.zeros(3, len(EMOJI_CLASSES) + len(EMOJI_STYLES))
    context[:, 3] = context[:, len(EMOJI_CLASSES) + 2] = 1.0
    with torch.no_grad():
        for ctx in (context, None):
            assert torch.allclose(old.model(x, t, ctx), new.model(x, t, ctx), atol=1e-5)
    assert new.generate(num_images=1, prompt="grinning face", steps=2).images.shape == (1, 32, 32, 3)


def test_text_training_needs_names(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "s.npy", rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8))
    np.save(tmp_path / "l.npy", np.eye(5)[rng.integers(0, 5, 8)])
    cfg = text_config(tmp_path, "course", data=f"course:{tmp_path / 's.npy'},{tmp_path / 'l.npy'}", image_size=16,
                      channel_mults=[1, 2], attention_resolutions=[8], text=True)
    with pytest.raises(ValueError, match="needs a data set with a name per picture"):
        train(cfg, show_progress=False)


def test_sample_cli_draws_several_prompts_into_a_titled_grid_and_an_npz(vocab, tmp_path, capsys):
    from PIL import Image

    from diffusion_core.__main__ import main

    folder = text_pipeline(vocab, default_sampling={"sampler": "ddim", "steps": 2, "guidance": 2.0}).save_pretrained(
        tmp_path / "m")
    args = ["sample", "--model", str(folder), "--num", "6", "--prompt", "red apple", "--prompt", "cat face zebra"]
    assert main([*args, "--out", str(tmp_path / "p.npz")]) == 0
    assert "does not know the words zebra" in capsys.readouterr().out
    with np.load(tmp_path / "p.npz") as npz:
        assert npz["prompts"].tolist() == ["red apple", "cat face zebra"] * 3 and npz["images"].shape == (6, 16, 16, 3)
        one = text_pipeline(vocab).generate(num_images=6, prompt="red apple", sampler="ddim", steps=2, guidance=2.0)
        assert np.array_equal(npz["images"][0::2], one.images[0::2])  # image i had prompt i % 2, as one prompt draws it
    assert main([*args, "--out", str(tmp_path / "p.png")]) == 0
    grid = np.asarray(Image.open(tmp_path / "p.png"))
    single = 3 * 16 + 2 * 2  # three images at scale 3 in one row, padded
    assert grid.shape[1] > 2 * (3 * single) and grid.shape[0] < 3 * single + 40  # two titled blocks side by side
    assert main(["sample", "--model", str(folder), "--num", "1", "--prompt", "a", "--prompt", "b", "--out",
                 str(tmp_path / "few.png")]) == 2
    assert "fewer than the 2 prompts" in capsys.readouterr().err


def test_text_lr_scale_trains_the_text_path_at_a_multiple_of_the_lr(emoji_subset, tmp_path):
    from safetensors import safe_open

    from diffusion_core.train import TrainConfig, text_parameters

    cfg = text_config(tmp_path, "scaled", data=emoji_subset, text=True, text_lr_scale=5.0)
    model = UNet(**cfg.unet_kwargs(13, vocab_size=50))
    chosen = {id(p) for p in text_parameters(model)}
    names = [n for n, p in model.named_parameters() if id(p) in chosen]
    assert names and all(n.startswith(("text_encoder.", "text_mlp.")) or ".cross." in n for n in names)
    assert all(id(p) in chosen for n, p in model.named_parameters() if n.startswith("text_") or ".cross." in n)

    train(cfg, show_progress=False)
    with safe_open(str(Path(cfg.out_dir) / "state.safetensors"), "pt") as f:
        rest, text = json.loads(f.metadata()["param_groups"])
    assert text["lr_scale"] == 5.0 and text["lr"] == pytest.approx(5.0 * rest["lr"])
    assert len(text["params"]) == len(names)
    with pytest.raises(ValueError, match="resume with the settings it was saved with"):
        train(dataclasses.replace(cfg, text_lr_scale=1.0, max_steps=4), resume=True, show_progress=False)
    for bad, message in (({"text": True, "text_lr_scale": 0.0}, "text_lr_scale must be > 0"),
                         ({"text_lr_scale": 2.0}, "text_lr_scale needs a text model")):
        with pytest.raises(ValueError, match=message):
            TrainConfig(**bad).validate()


def test_known_words_past_the_prompt_length_are_reported_not_silently_dropped(vocab):
    """max_tokens 6 reads the start token and 5 words: the 6th and later, known or not, are named."""
    from conftest import text_pipeline
    from ui.common import unknown_note

    prompt = "red apple cat face flag japan red"  # seven known words
    assert vocab.overflow(prompt) == ["japan", "red"]
    assert vocab.encode(prompt)[1] == []  # none of them is unknown: before, nothing said they were left out
    out = text_pipeline(vocab).generate(num_images=1, prompt=prompt, sampler="ddim", steps=2)
    assert out.dropped_words == ["japan", "red"] and out.unknown_words == []
    assert "longer than the model reads" in unknown_note(out.unknown_words, out.dropped_words)
    assert "**japan, red**" in unknown_note([], out.dropped_words)
    assert text_pipeline(vocab).generate(num_images=1, prompt="red apple", sampler="ddim", steps=2).dropped_words == []
