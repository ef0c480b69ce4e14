"""Quality measures: each against a case with a known answer, the calibration a person would agree
with, bad input, and the evaluate command end to end."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from diffusion_core.__main__ import main
from diffusion_core.data import EMOJI_CLASSES, EMOJI_STYLES, load_emoji
from diffusion_core.evaluate import (COMPARISON_FILE, RealData, Setting, calibration, calibration_sets, evaluate,
                                     parse_setting, to_markdown, write_to_model_card)
from diffusion_core.metrics import (copy_share, frechet_distance, kernel_inception_distance, load_classifier,
                                    precision_recall, predict, real_roles)
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


def test_kid_is_unbiased_near_zero_for_one_distribution_and_large_for_disjoint_ones():
    rng = np.random.default_rng(2)
    same = [kernel_inception_distance(rng.normal(size=(50, 8)), rng.normal(size=(50, 8))) for _ in range(40)]
    assert abs(np.mean(same)) < 3 * np.std(same) / np.sqrt(len(same))  # zero in expectation, even at n = 50
    assert min(same) < 0  # unbiased: it can go below zero
    far = kernel_inception_distance(rng.normal(size=(50, 8)), rng.normal(size=(50, 8)) + 3.0)
    assert far > 100 * np.std(same)


def test_precision_tells_samples_inside_the_real_manifold_from_samples_outside():
    rng = np.random.default_rng(3)
    real = rng.normal(size=(500, 4))
    inside = real[:100] + 0.01 * rng.normal(size=(100, 4))
    outside = rng.normal(size=(100, 4)) + 20.0
    assert precision_recall(real, inside)[0] == 1.0
    assert precision_recall(real, outside)[0] == 0.0


def test_recall_of_a_collapsed_set_is_low_and_of_a_fresh_draw_high():
    rng = np.random.default_rng(4)
    real = rng.normal(size=(500, 4))
    fresh = rng.normal(size=(500, 4))
    collapsed = np.resize(fresh[:8], (500, 4))
    assert precision_recall(real, fresh)[1] > 0.8
    assert precision_recall(real, collapsed)[1] < 0.1


@pytest.mark.parametrize("features, message", [(np.zeros((10,)), r"\(N >= 4, D\)"), (np.zeros((2, 3)), r"\(N >= 4, D\)"),
                                               (np.full((10, 3), np.nan), "NaN")])
def test_measures_reject_bad_features_with_a_clear_error(features, message):
    with pytest.raises(ValueError, match=message):
        precision_recall(np.zeros((10, 3)), features)


def test_copies_are_detected_and_distinct_images_are_not():
    train = load_emoji(split="train").images[:200]
    noisy_copies = np.clip(train[:10].astype(int) + 3, 0, 255).astype(np.uint8)
    assert copy_share(noisy_copies, train) == 1.0
    assert copy_share(np.full((5, 32, 32, 3), 128, np.uint8), train) == 0.0


def test_classifier_never_saw_the_reference_or_held_out_emoji_and_generalises_to_them():
    model, info = load_classifier()
    feature_train, reference = real_roles(load_emoji(split="train"))
    held = load_emoji(split="held_out")
    assert not set(feature_train.names) & (set(reference.names) | set(held.names))
    assert info["trained_on"] == "feature_train" and info["feature_train_images"] == len(feature_train)
    pred, feats = predict(model, held.images)
    assert feats.shape == (len(held), 128) and (pred == held.labels).mean() > 0.6
    assert info["classes"] == list(EMOJI_CLASSES)


def test_a_classifier_of_another_split_is_scored_against_that_splits_reference(tmp_path):
    """train-classifier --split-seed 2: another 30% of each class's emoji become the reference it never trains on,
    and evaluation compares with that reference, not the shipped classifier's (benchmarks/independent_eval.py)."""
    train = load_emoji(split="train")
    shipped_ref, (other_train, other_ref) = real_roles(train)[1], real_roles(train, split_seed=2)
    assert set(shipped_ref.names) != set(other_ref.names) and not set(other_train.names) & set(other_ref.names)
    assert len(set(other_ref.names)) == len(set(shipped_ref.names))  # the same 30% of each class, other emoji
    path = tmp_path / "other.safetensors"
    assert main(["train-classifier", "--out", str(path), "--epochs", "1", "--width", "4", "--split-seed", "2"]) == 0
    info = load_classifier(path)[1]
    assert info["split_seed"] == 2 and info["feature_train_images"] == len(other_train)
    real = RealData(str(path), styles=["noto"])
    noto = train.subset(train.style_index() == train.style_names.index("noto"))
    assert sorted(real.reference.names) == sorted(real_roles(noto, split_seed=2)[1].names)
    assert RealData(styles=["noto"]).reference.names.tolist() == real_roles(noto)[1].names.tolist()  # split seed 1


@pytest.fixture(scope="module")
def real():
    return RealData()


def test_calibration_orders_damage_as_a_person_would():
    # two styles' held-out pictures (365): the sets the end-to-end evaluation below scores, remembered once
    real = RealData(styles=["noto", "twemoji"])
    scores = calibration(real)
    assert set(scores) == set(calibration_sets(real.held.images, real.held.labels))
    floor = real.floor
    assert scores["real held-out"]["fd"] == pytest.approx(floor["fd"]) and floor["precision"] >= 0.7
    for damaged in ("noise σ=25/255", "blurred (16 px and back)"):
        # KID is unbiased: the floor sits near zero, on either side of it
        assert scores[damaged]["fd"] >= 4 * floor["fd"] and scores[damaged]["kid"] > 20 * abs(floor["kid"]) + 0.01
    assert floor["fd"] < scores["noise σ=10/255"]["fd"] < scores["noise σ=25/255"]["fd"]
    assert scores["noise σ=25/255"]["precision"] < floor["precision"]  # noisy sprites leave the real manifold
    assert scores["blurred (16 px and back)"]["recall"] < floor["recall"] - 0.2  # blurred ones lose variety
    assert scores["shuffled colours"]["fd"] > 2 * floor["fd"]
    assert scores["collapsed (8 images repeated)"]["recall"] < 0.3 < floor["recall"]


BAD_SAMPLES = [  # (images, labels, the error's words)
    (np.zeros((20, 32, 32), np.uint8), None, r"shape \(N, 32, 32, 3\)"),
    (np.zeros((20, 32, 32, 3), np.float32), None, "must be uint8"),
    (np.zeros((3, 32, 32, 3), np.uint8), None, "at least 8 images"),
    (np.zeros((20, 32, 32, 3), np.uint8), np.zeros(19, np.int64), "labels must be 20 integers"),
    (np.zeros((20, 32, 32, 3), np.uint8), np.full(20, 8), r"class indices 0..7 or -1"),
]


def test_scoring_bad_samples_is_a_clear_error(real):
    """Every case in one test: the real data's floor is computed once (a parametrized case that another
    worker takes computes it again)."""
    for images, labels, message in BAD_SAMPLES:
        with pytest.raises(ValueError, match=message):
            real.score(images, labels)


def test_evaluate_samples_prints_every_measure_beside_its_real_value(tmp_path, capsys):
    held = load_emoji(split="held_out")
    np.savez(tmp_path / "s.npz", images=held.images[:64], labels=held.labels[:64])
    assert main(["evaluate", "--samples", str(tmp_path / "s.npz")]) in (0, None)
    out = json.loads(capsys.readouterr().out)
    for key in ("n", "class_accuracy", "fd", "fd_floor", "kid", "kid_floor", "precision", "recall", "copies"):
        assert key in out
    assert out["n"] == 64 and out["copies"] < 0.1 and out["class_accuracy"] > 0.5
    (tmp_path / "bad.npz").write_bytes(b"junk")
    assert main(["evaluate", "--samples", str(tmp_path / "bad.npz")]) == 2


def test_evaluate_runs_end_to_end_and_writes_the_model_card(tmp_path):
    torch.manual_seed(0)
    model = UNet(base_channels=8, num_groups=4, channel_mults=(1, 2, 2, 2), attention_resolutions=(4,), num_heads=2,
                 context_dim=len(EMOJI_CLASSES) + 2)
    # its default sampling is the setting evaluated below, so the comparison picture is drawn at it too
    pipe = DiffusionPipeline(model, NoiseSchedule("cosine", 100), list(EMOJI_CLASSES), ["noto", "twemoji"], device="cpu",
                             default_sampling={"sampler": "ddim", "steps": 2, "guidance": 1.0})
    folder = pipe.save_pretrained(tmp_path / "m", model_card="# card\n\n## Evaluation\nnot yet\n\n## Use\nhere\n")
    # guidance 1: one network branch (guidance itself is the samplers' tests' business), half the sampling
    result = evaluate(str(folder), settings=[Setting("ddim", 2, 1.0)], dtype="float32", seeds=(0, 1),
                      picture=folder / COMPARISON_FILE, log=lambda s: None)
    (row,) = result["rows"]
    assert result["weights_fingerprint"] == weights_fingerprint(load_file(folder / "model.safetensors"))
    assert result["styles"] == ["noto", "twemoji"]  # compared with the styles it knows only
    held = load_emoji(split="held_out")
    n = int(np.isin(held.context[:, len(EMOJI_CLASSES):].argmax(1), [0, 2]).sum())
    assert row["n"] == result["floor"]["n"] == n and 0 <= row["class_accuracy"] <= 1 and row["fd"] > result["floor"]["fd"]
    assert [r["seed"] for r in row["seeds"]] == [0, 1] and row["seeds"][0]["fd"] != row["seeds"][1]["fd"]
    assert np.isclose(row["fd"], np.mean([r["fd"] for r in row["seeds"]]))
    assert set(result["calibration"]) >= {"noise σ=25/255", "collapsed (8 images repeated)"}
    write_to_model_card(folder, to_markdown(result, COMPARISON_FILE), result)
    card = (folder / "README.md").read_text()
    assert f"| ddim | 2 | 1 | {n} x 2 |" in card and "| real held-out |" in card and "| shuffled colours |" in card
    assert card.rstrip().endswith("here") and "not yet" not in card and (folder / COMPARISON_FILE).exists()
    # per style: each style's samples against its own reference and floor, counts adding up
    assert set(row["per_style"]) == set(result["style_floors"]) == {"noto", "twemoji"}
    assert sum(s["n"] for s in row["per_style"].values()) == n
    noto = RealData(styles=["noto"])
    assert result["style_floors"]["noto"]["fd"] == pytest.approx(noto.floor["fd"])
    assert row["per_style"]["noto"]["fd"] != row["per_style"]["twemoji"]["fd"]
    assert f"| noto | real held-out | {noto.floor['n']} |" in card and "| twemoji | samples |" in card
    # the headline names the style with the highest FD / floor, before the tables
    ratios = {s: row["per_style"][s]["fd"] / result["style_floors"][s]["fd"] for s in ("noto", "twemoji")}
    worst = max(ratios, key=ratios.get)
    assert row["worst_style"]["style"] == worst and row["worst_style"]["fd_over_floor"] == pytest.approx(ratios[worst])
    assert f"Worst style: **{worst}**, FD {ratios[worst]:.2f}x its floor" in card
    assert card.index("Worst style") < card.index("| real held-out |")
    # per class asked for: each class's samples against the reference pictures of that class
    assert set(row["per_class"]) == set(result["class_floors"]) == set(EMOJI_CLASSES)
    assert sum(c["n"] for c in row["per_class"].values()) == n and "Per class asked for" in card


def test_per_class_scores_single_out_the_one_class_that_is_damaged(real):
    from diffusion_core.evaluate import per_class_table

    images, labels = real.held.images.copy(), real.held.labels
    food = real.class_names.index("food_drink")
    assert real.score_by_class(images, labels, real=True) == real.class_floors  # real pictures score as the floor
    small = torch.from_numpy(images[labels == food]).permute(0, 3, 1, 2).float()
    blurred = F.interpolate(F.interpolate(small, size=8, mode="area"), size=32, mode="bilinear")
    images[labels == food] = blurred.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    # the classifier's answers: remembered for the real pictures, run anew only for the blurred class
    pred, features = (a.copy() for a in real.classify(real.held.images, real=True))
    pred[labels == food], features[labels == food] = predict(real.classifier, images[labels == food])
    scores = real.score_by_class(images, labels, predicted=(pred, features))
    ratio = {c: scores[c]["fd"] / real.class_floors[c]["fd"] for c in scores}
    assert max(ratio, key=ratio.get) == "food_drink" and ratio["food_drink"] > 3
    assert all(ratio[c] == pytest.approx(1) for c in ratio if c != "food_drink")
    assert scores["food_drink"]["n"] == (labels == food).sum()
    result = {"class_floors": real.class_floors, "headline": {"sampler": "ddim", "steps": 2, "guidance": 1.0},
              "rows": [{"sampler": "ddim", "steps": 2, "guidance": 1.0, "per_class": scores}]}
    table = per_class_table(result)
    assert table[5].startswith("| food_drink |") and f"{ratio['food_drink']:.2f}x" in table[5]  # the worst first


def test_the_worst_style_is_the_one_furthest_from_its_own_floor_not_the_average():
    from diffusion_core.evaluate import worst_style, worst_style_line

    floors = {"noto": {"fd": 1.0, "recall": 0.9, "class_accuracy": 0.7},
              "openmoji": {"fd": 0.5, "recall": 0.9, "class_accuracy": 0.7},
              "fluent": {"fd": 2.0, "recall": 0.9, "class_accuracy": 0.7}}
    # openmoji has the lowest FD but the highest ratio to its own floor (3x); fluent the highest FD (2.2x)
    row = {"per_style": {"noto": {"fd": 1.2, "recall": 0.85, "class_accuracy": 0.8},
                         "openmoji": {"fd": 1.5, "recall": 0.6, "class_accuracy": 0.5},
                         "fluent": {"fd": 4.4, "recall": 0.8, "class_accuracy": 0.75}}}
    worst = worst_style(row, floors)
    assert worst["style"] == "openmoji" and worst["fd_over_floor"] == pytest.approx(3.0) and worst["recall"] == 0.6
    assert worst_style_line(worst).startswith("Worst style: **openmoji**, FD 3.00x its floor, recall 0.60 (real 0.90)")
    assert "best: noto, 1.20x" in worst_style_line(worst)
    assert worst_style(row, {}) is None


def test_an_evaluation_setting_may_name_a_guidance_interval():
    assert parse_setting("dpmpp_2m_sde:20:5") == Setting("dpmpp_2m_sde", 20, 5.0)
    setting = parse_setting("dpmpp_2m_sde:20:5:0.5:30")
    assert setting.guidance_interval == (0.5, 30.0) and setting.describe() == "5 in σ ∈ (0.5, 30]"


@pytest.mark.parametrize("text, message", [("ddim:25", "SAMPLER:STEPS:GUIDANCE"), ("ddim:x:3", "SAMPLER:STEPS:GUIDANCE"),
                                           ("ddim:25:3:1", "SAMPLER:STEPS:GUIDANCE"),
                                           ("euler:25:3", "unknown sampler 'euler'")])
def test_a_bad_evaluation_setting_is_a_clear_error(text, message):
    with pytest.raises(ValueError, match=message):
        parse_setting(text)


def test_styles_unknown_to_the_data_are_a_clear_error():
    with pytest.raises(ValueError, match=r"styles \['comic'\] are not in the emoji data"):
        RealData(styles=["comic", *EMOJI_STYLES[:1]])


def test_name_retrieval_finds_the_wanted_emoji_first_or_among_the_k_nearest_and_can_exclude_a_row():
    from diffusion_core.evaluate import name_retrieval
    features = torch.tensor([[0.0], [1.0], [2.0], [10.0]])
    names = np.array(["apple", "apple", "cat", "dog"])
    queries = torch.tensor([[0.1], [1.9], [9.0]])
    first, within, nearest = name_retrieval(queries, features, names, ["apple", "apple", "apple"], k=2)
    assert nearest == ["apple", "cat", "dog"] and first == pytest.approx(1 / 3) and within == pytest.approx(2 / 3)
    # a row asked about itself: excluded, its nearest is the other sprite of the same emoji
    first, _, nearest = name_retrieval(features[[0, 2]], features, names, ["apple", "cat"], exclude=np.array([0, 2]), k=1)
    assert nearest == ["apple", "apple"] and first == pytest.approx(0.5)
