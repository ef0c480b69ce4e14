"""The command line, run as a user runs it."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffusion_core.__main__ import main

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "diffusion_core", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def tiny_checkpoint(tiny_pipeline, tmp_path):
    return tiny_pipeline.save_pretrained(tmp_path / "tiny")


def test_sample_writes_an_npz_with_images_and_labels(tiny_checkpoint, tmp_path):
    out = tmp_path / "s.npz"
    result = run_cli("sample", "--model", str(tiny_checkpoint), "--num", "3", "--class", "b", "--sampler", "ddim",
                     "--steps", "4", "--guidance", "2", "--seed", "0", "--out", str(out))
    assert result.returncode == 0, result.stderr
    with np.load(out) as npz:
        assert npz["images"].shape == (3, 16, 16, 3) and npz["images"].dtype == np.uint8
        assert npz["labels"].tolist() == [1, 1, 1]


def test_sample_writes_a_png_grid_and_unconditional_labels_are_minus_one(tiny_checkpoint, tmp_path):
    png, npz = tmp_path / "grid.png", tmp_path / "u.npz"
    assert run_cli("sample", "--model", str(tiny_checkpoint), "--num", "4", "--steps", "2", "--out", str(png)).returncode == 0
    assert Image.open(png).size[0] > 16 * 4
    # the same command in this process (one interpreter start is enough to prove the real one works)
    assert main(["sample", "--model", str(tiny_checkpoint), "--num", "2", "--steps", "2", "--out", str(npz)]) in (0, None)
    assert np.load(npz)["labels"].tolist() == [-1, -1]


@pytest.mark.parametrize("args,message", [
    (["--steps", "0"], "steps must be an integer in 1..50"),
    (["--steps", "51"], "steps must be an integer in 1..50"),
    (["--guidance", "nan", "--class", "a"], "guidance must be a finite number"),
    (["--class", "zebra"], "unknown class 'zebra'"),
    (["--sampler", "euler"], "sampler must be one of"),
    (["--num", "0"], "num_images must be an integer in 1..64"),
    (["--out", "x.jpg"], "--out must end in .png or .npz"),
    (["--autoguidance", "2"], "this checkpoint has no guide model"),
])
def test_bad_sample_arguments_print_the_message_and_exit_non_zero(tiny_checkpoint, tmp_path, args, message, capsys):
    code = main(["sample", "--model", str(tiny_checkpoint), "--out", str(tmp_path / "o.png"), *args])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err


def test_bad_arguments_in_a_real_process_give_one_line_and_no_traceback(tiny_checkpoint, tmp_path):
    result = run_cli("sample", "--model", str(tiny_checkpoint), "--steps", "-4", "--out", str(tmp_path / "o.png"))
    assert result.returncode == 2
    assert "steps must be an integer in 1..50" in result.stderr and "Traceback" not in result.stderr


def test_a_missing_model_folder_is_a_clear_error(capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # $HF_HUB_OFFLINE=1, as run_cli runs it: the Hub is not asked
    code = main(["sample", "--model", "no/such-model-anywhere", "--out", "/tmp/x.png"])
    err = capsys.readouterr().err
    assert code == 2 and "could not get model" in err and "Traceback" not in err


@pytest.mark.parametrize("args,message", [
    (["--setting", "ddim:25"], "a setting is SAMPLER:STEPS:GUIDANCE"),
    (["--setting", "euler:25:3"], "unknown sampler 'euler'"),
    (["--samples", "/no/such/samples.npz"], "expected an .npz with 'images'"),
    (["--seeds", "-1"], "seeds must be one or more integers"),
])
def test_bad_evaluate_arguments_print_the_message_and_exit_non_zero(args, message, capsys):
    code = main(["evaluate", "--model", str(ROOT / "checkpoints" / "emoji32"), "--no-write", *args])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err


@pytest.mark.parametrize("args,message", [
    (["--prompts-only"], "--prompts-only needs --prompts N"),
    (["--prompts", "-2", "--prompts-only"], "--prompts needs a number of names >= 1, got -2"),
    (["--prompts", "-2", "--setting", "ddim:2:3"], "--prompts needs a number of names >= 1, got -2"),
])
def test_bad_prompt_check_arguments_are_clear_errors_before_any_sampling(args, message, capsys):
    code = main(["evaluate", "--model", str(ROOT / "checkpoints" / "emoji32"), "--no-write", *args])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err


def test_prompts_only_prints_the_prompt_check_beside_its_real_values(capsys, shipped_stand_ins):
    """On a narrow copy of the shipped model (its labels, styles, vocabulary and guide; conftest.narrow_copy):
    the check's layout and its real values, which do not depend on the model."""
    # compared with one style's real pictures (--styles): the classifier runs on a quarter of the training sprites
    args = ["evaluate", "--model", shipped_stand_ins[0], "--prompts", "2", "--prompts-only", "--styles", "noto"]
    assert main(args) in (0, None)
    out = capsys.readouterr().out
    summary, report = out.split("\n", 1)
    assert summary.startswith("Prompts (one sample each at the default setting): for 2 training emoji names")
    assert "a real sprite of the emoji, against the other training sprites" in summary and "(real held-out sprites:" in summary
    checked = json.loads(report)
    assert checked["train_names"] == checked["held_out_names"] == 2 and len(checked["examples"]) == 2
    assert 0 <= checked["within_10_nearest"] <= 1
    assert checked["held_out_class_accuracy_real"] == pytest.approx(133 / 184)  # noto's 184 held-out sprites
    if checked["held_out_names_without_a_known_word"] == 0:  # then the split is the whole
        assert checked["held_out_class_accuracy_with_a_known_word"] == checked["held_out_class_accuracy"]
    assert checked["held_out_names_without_a_known_word"] in (0, 0.5, 1)
    assert checked["read_words"] is True  # unknown words are read through WordNet, as generate does by default
    from diffusion_core.text import words

    assert all(len(read.split()) == len(words(name)) for name, read in checked["held_out_read_as"].items())
