"""The remembered classifier answers: the same as computing them, found for any subset or order of pictures
seen before (in this process or from the file another wrote), and never in the way when the file is bad."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from diffusion_core import feature_cache
from diffusion_core.feature_cache import remembered_predict
from diffusion_core.metrics import SpriteClassifier, predict


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    """An empty cache folder and no memory of earlier tests; counts the pictures the classifier is run on."""
    monkeypatch.setenv("DIFFUSION_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(feature_cache, "_MEMORY", {})
    ran = []

    def counting(model, images):
        ran.append(len(images))
        return predict(model, images)

    monkeypatch.setattr(feature_cache, "predict", counting)
    return ran


def classifier(seed=0):
    torch.manual_seed(seed)
    return SpriteClassifier(num_classes=4, width=4, feature_dim=8).eval()


def pictures(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def test_remembered_answers_equal_computed_ones_and_subsets_reorders_and_repeats_are_found(fresh):
    model, images = classifier(), pictures(100)
    preds, feats = predict(model, images)
    got = remembered_predict(model, images)
    assert np.array_equal(got[0], preds) and np.allclose(got[1], feats, atol=1e-5) and got[1].dtype == np.float64
    assert fresh == [100]
    order = np.random.default_rng(1).permutation(100)[:40]
    again = remembered_predict(model, np.concatenate([images[order], images[order[:3]]]))
    assert fresh == [100]  # nothing new was run
    assert np.array_equal(again[0][:40], preds[order]) and np.allclose(again[1][:40], feats[order], atol=1e-5)
    mixed = remembered_predict(model, np.concatenate([images[:5], pictures(3, seed=9)]))
    assert fresh == [100, 3] and np.array_equal(mixed[0][:5], preds[:5])


def test_another_process_finds_the_file_and_another_classifier_does_not(fresh, monkeypatch):
    model, images = classifier(), pictures(80)
    first = remembered_predict(model, images)
    monkeypatch.setattr(feature_cache, "_MEMORY", {})  # a new process: only the file remains
    second = remembered_predict(classifier(), images)  # the same weights in a new object
    assert fresh == [80] and np.array_equal(first[1], second[1])
    remembered_predict(classifier(seed=1), images)  # other weights: their own answers
    assert fresh == [80, 80]


def test_a_corrupt_file_is_ignored_and_an_unwritable_folder_only_costs_time(fresh, tmp_path, monkeypatch):
    model, images = classifier(), pictures(70)
    expected = predict(model, images)
    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / f"classifier_features_{feature_cache.classifier_fingerprint(model)}.npz").write_bytes(b"junk")
    assert np.array_equal(remembered_predict(model, images)[0], expected[0])
    monkeypatch.setattr(feature_cache, "_MEMORY", {})
    assert fresh == [70] and np.array_equal(remembered_predict(model, images)[0], expected[0])  # the file was rewritten
    monkeypatch.setenv("DIFFUSION_CACHE", str(tmp_path / "not_a_folder"))
    (tmp_path / "not_a_folder").write_text("a file where the folder would be")
    monkeypatch.setattr(feature_cache, "_MEMORY", {})
    assert np.array_equal(remembered_predict(model, images)[0], expected[0]) and fresh == [70, 70]


def test_answers_another_process_saved_after_this_one_read_the_file_are_found_not_recomputed(fresh, monkeypatch):
    model, first, later = classifier(), pictures(70), pictures(90, seed=5)
    remembered_predict(model, first)  # this process has read (and written) the file
    this_process = feature_cache._MEMORY
    monkeypatch.setattr(feature_cache, "_MEMORY", {})  # another process, the same file
    expected = remembered_predict(model, later)
    monkeypatch.setattr(feature_cache, "_MEMORY", this_process)  # back in the first process
    got = remembered_predict(model, np.concatenate([later, first]))
    assert fresh == [70, 90] and np.array_equal(got[1][:90], expected[1])
