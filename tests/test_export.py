"""Exporting a labelled data set: the zip's layout, labels that redraw each picture, and the round trip
into training."""
import zipfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from diffusion_core.data import load_dataset
from diffusion_core.export import export_dataset
from diffusion_core.train import train

from conftest import text_pipeline, tiny_train_config
from test_cli import run_cli


def read_png(archive, name) -> np.ndarray:
    with archive.open(name) as f:
        return np.asarray(Image.open(f).convert("RGB"))


def test_export_writes_class_folders_labels_and_the_model_card(tiny_pipeline, tmp_path):
    card_folder = tiny_pipeline.save_pretrained(tmp_path / "ckpt", model_card="# the tiny card\n")
    from diffusion_core.pipeline import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(card_folder)
    seen = []
    result = export_dataset(pipe, tmp_path / "out" / "set.zip", classes=["c", "a"], per_label=5, sampler="ddim",
                            steps=3, guidance=2.0, seed=7, batch_size=2, progress=lambda done, total: seen.append((done, total)))
    assert result.num_images == 10 and result.folders == ["c", "a"]
    assert seen[-1] == (10, 10) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    with zipfile.ZipFile(result.path) as archive:
        names = archive.namelist()
        assert sorted(n for n in names if n.endswith(".png")) == sorted(
            [f"a/{i:06d}.png" for i in range(5)] + [f"c/{i:06d}.png" for i in range(5)])
        assert archive.read("MODEL_CARD.md").decode() == "# the tiny card\n"
        labels = pd.read_csv(archive.open("labels.csv"), keep_default_na=False)
        assert list(labels.columns) == ["file", "class", "prompt", "style", "seed", "index", "sampler", "steps", "guidance"]
        assert set(labels["class"]) == {"a", "c"} and set(labels["sampler"]) == {"ddim"}
        # requests of 2 pictures, classes sharing one: c 0-1, c 2-3, c 4 + a 0, a 1-2, a 3-4
        assert labels.seed.tolist() == [7, 7, 8, 8, 9, 9, 10, 10, 11, 11] and labels["index"].tolist() == [0, 1] * 5
        for row in labels.to_dict("records"):  # each row redraws its picture, alone with its own class
            again = pipe.generate(num_images=row["index"] + 1, classes=[row["class"]], sampler="ddim", steps=3,
                                  guidance=2.0, seed=row["seed"])
            assert np.array_equal(again.images[row["index"]], read_png(archive, row["file"])), row["file"]
    assert not [p for p in (tmp_path / "out").iterdir() if p.name != "set.zip"]  # no temporary file left behind


def test_prompts_get_folders_named_after_them_and_unknown_words_come_back(vocab, tmp_path):
    pipe = text_pipeline(vocab)
    result = export_dataset(pipe, tmp_path / "p.zip", prompts=["Red apple!", "cat face zebra", "red apple"],
                            per_label=2, sampler="ddim", steps=2)
    assert result.folders == ["red_apple", "cat_face_zebra", "red_apple_2"] and result.unknown_words == ["zebra"]
    with zipfile.ZipFile(result.path) as archive:
        labels = pd.read_csv(archive.open("labels.csv"), keep_default_na=False)
    assert labels.prompt.tolist()[:2] == ["Red apple!"] * 2 and set(labels["class"]) == {""}
    assert set(labels.seed) == {0}  # 6 pictures, one request
    with zipfile.ZipFile(result.path) as archive:
        row = labels.iloc[3]  # "cat face zebra", picture 1, redrawn alone with its prompt
        again = pipe.generate(num_images=4, prompt="cat face zebra", sampler="ddim", steps=2, seed=0)
        assert np.array_equal(again.images[3], read_png(archive, row.file))


@pytest.mark.parametrize("kwargs,message", [
    (dict(classes=["zebra"]), "unknown class 'zebra'"),
    (dict(per_label=0), "images per class must be a whole number"),
    (dict(prompts=["red apple"]), "no text encoder"),
    (dict(style="comic"), "unknown style"),
    (dict(sampler="euler"), "sampler must be one of"),
])
def test_bad_export_requests_fail_before_writing_anything(tiny_pipeline, tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        export_dataset(tiny_pipeline, tmp_path / "x.zip", **{"per_label": 1, "steps": 2, **kwargs})
    assert list(tmp_path.iterdir()) == []


def test_an_exported_zip_trains_a_model_through_the_cli(tiny_pipeline, tmp_path):
    checkpoint = tiny_pipeline.save_pretrained(tmp_path / "tiny")
    out = tmp_path / "set.zip"
    result = run_cli("export-dataset", "--model", str(checkpoint), "--class", "b", "--class", "c", "--per-class", "4",
                     "--steps", "2", "--quiet", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "wrote 8 images in 2 folders" in result.stdout
    data = load_dataset(f"folder:{out}", image_size=16)
    assert data.class_names == ("b", "c") and np.bincount(data.labels).tolist() == [4, 4]
    cfg = tiny_train_config(tmp_path, "round_trip", data=f"folder:{out}", image_size=16, channel_mults=[1, 2],
                            attention_resolutions=[8], max_steps=2)
    summary = train(cfg, show_progress=False)
    assert summary["step"] == 2
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable zip"):
        load_dataset(f"folder:{bad}")
