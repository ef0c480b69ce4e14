"""Quality measures: the Fréchet distance, near-copy detection, and the evaluate command end to end."""
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from diffusion_core.data import EMOJI_CLASSES, EMOJI_STYLES, load_emoji
from diffusion_core.evaluate import Setting, evaluate, parse_setting, stratified_subset, to_markdown, write_to_model_card
from diffusion_core.metrics import copy_share, frechet_distance, load_classifier, predict
from diffusion_core.model_card import weights_fingerprint
from diffusion_core.pipeline import DiffusionPipeline
from diffusion_core.schedule import NoiseSchedule
from diffusion_core.unet import UNet


def test_frechet_distance_is_zero_for_the_same_set_and_the_mean_shift_for_a_translated_one():
    x = np.random.default_rng(0).normal(size=(2000, 4))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    shift = np.array([1.0, 2.0, 0.0, 0.0])
    assert frechet_distance(x, x + shift) == pytest.approx(5.0, rel=1e-6)


def test_frechet_distance_of_gaussians_with_different_scales_matches_the_formula():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(200_000, 2)), 2 * rng.normal(size=(200_000, 2))
    assert frechet_distance(a, b) == pytest.approx(2 * (1 + 4 - 2 * 2), rel=0.02)  # Tr(Σa+Σb-2(ΣaΣb)^½)


def test_copies_are_detected_and_distinct_images_are_not():
    train = load_emoji(split="train").images[:200]
    noisy_copies = np.clip(train[:10].astype(int) + 3, 0, 255).astype(np.uint8)
    assert copy_share(noisy_copies, train) == 1.0
    assert copy_share(np.full((5, 32, 32, 3), 128, np.uint8), train) == 0.0


def test_shipped_classifier_recognises_most_held_out_images():
    model, info = load_classifier()
    held = load_emoji(split="held_out")
    pred, feats = predict(model, held.images)
    assert feats.shape == (len(held), 128) and (pred == held.labels).mean() > 0.6
    assert info["classes"] == list(EMOJI_CLASSES)


def test_evaluate_runs_end_to_end_and_writes_the_model_card(tmp_path):
    torch.manual_seed(0)
    model = UNet(base_channels=8, num_groups=4, channel_mults=(1, 2, 2, 2), attention_resolutions=(4,), num_heads=2)
    pipe = DiffusionPipeline(model, NoiseSchedule("cosine", 100), list(EMOJI_CLASSES), list(EMOJI_STYLES), device="cpu")
    folder = pipe.save_pretrained(tmp_path / "m", model_card="# card\n\n## Evaluation\nnot yet\n\n## Use\nhere\n")
    settings = [Setting("ddim", 2, 3.0), parse_setting("dpmpp_2m_sde:20:4")]
    result = evaluate(str(folder), num=16, settings=settings, dtype="float32", seeds=(0, 1), log=lambda s: None)
    row, bar_row = result["rows"]
    assert result["weights_fingerprint"] == weights_fingerprint(load_file(folder / "model.safetensors"))
    assert row["n"] == 16 and 0 <= row["accuracy"] <= 1 and row["fd"] > row["fd_floor"] > 0
    # two seeds: two different draws, the row holds their mean
    assert [r["seed"] for r in row["seeds"]] == [0, 1] and row["seeds"][0]["fd"] != row["seeds"][1]["fd"]
    assert np.isclose(row["fd"], np.mean([r["fd"] for r in row["seeds"]]))
    # per-class accuracy: the overall accuracy is its class-count-weighted mean
    held_labels = load_emoji(split="held_out").labels
    counts = np.bincount(held_labels[stratified_subset(held_labels, 16)],
                         minlength=len(EMOJI_CLASSES))
    for run in bar_row["seeds"]:
        per_class = np.array([run["per_class_accuracy"].get(name, 0.0) for name in EMOJI_CLASSES])
        assert np.isclose((per_class * counts).sum() / counts.sum(), run["accuracy"])
    markdown = to_markdown(result)
    write_to_model_card(folder, markdown, result)
    card = (folder / "README.md").read_text()
    assert "| ddim | 2 | 3 | 16 x 2 |" in card and card.rstrip().endswith("here") and "not yet" not in card
    assert "| class | real | 20 / 4 |" in card  # the per-class table shows the bar's setting only


@pytest.mark.parametrize("text, message", [("ddim:25", "SAMPLER:STEPS:GUIDANCE"), ("ddim:x:3", "SAMPLER:STEPS:GUIDANCE"),
                                           ("euler:25:3", "unknown sampler 'euler'")])
def test_a_bad_evaluation_setting_is_a_clear_error(text, message):
    with pytest.raises(ValueError, match=message):
        parse_setting(text)
