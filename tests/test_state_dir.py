"""A run's state can live outside the checkout (--state-dir or $DIFFUSION_STATE_DIR) and resume from there."""
import json
from pathlib import Path

import pytest

from diffusion_core.__main__ import main
from diffusion_core.distill import DistillConfig
from diffusion_core.train import TrainConfig, under_state_dir


def test_relative_run_folders_move_under_the_state_dir_and_absolute_ones_stay(tmp_path):
    cfg = TrainConfig(out_dir="runs/a", export_dir=str(tmp_path / "kept"), init_from="checkpoints/emoji32")
    moved = under_state_dir(cfg, tmp_path / "state")
    assert moved.out_dir == str(tmp_path / "state" / "runs" / "a")
    assert moved.export_dir == str(tmp_path / "kept")
    assert moved.init_from == "checkpoints/emoji32"  # no earlier stage wrote it there: read as written
    (tmp_path / "state" / "runs" / "stage1" / "export").mkdir(parents=True)
    chained = under_state_dir(DistillConfig(init_student="runs/stage1/export", teacher="checkpoints/emoji32"),
                              tmp_path / "state")
    assert chained.init_student == str(tmp_path / "state" / "runs" / "stage1" / "export")
    assert chained.teacher == "checkpoints/emoji32"


def test_the_environment_variable_sets_the_state_dir_and_nothing_set_changes_nothing(tmp_path, monkeypatch):
    cfg = TrainConfig(out_dir="runs/a")
    monkeypatch.delenv("DIFFUSION_STATE_DIR", raising=False)
    assert under_state_dir(cfg) is cfg
    monkeypatch.setenv("DIFFUSION_STATE_DIR", str(tmp_path))
    assert under_state_dir(cfg).out_dir == str(tmp_path / "runs" / "a")


def test_train_keeps_its_state_in_the_state_dir_and_resumes_from_it(course_files, tmp_path, monkeypatch):
    (tmp_path / "checkout").mkdir()
    monkeypatch.chdir(tmp_path / "checkout")  # nothing may be written here
    state = tmp_path / "elsewhere"
    config = tmp_path / "tiny.json"
    config.write_text(TrainConfig(data=course_files, image_size=16, base_channels=8, channel_mults=[1, 2],
                                  attention_resolutions=[8], num_heads=2, num_groups=4, batch_size=4,
                                  warmup_steps=1, num_timesteps=50, precision="fp32", out_dir="runs/t",
                                  export_dir="runs/t/export", checkpoint_every=2, log_every=1).to_json())
    args = ["train", "--config", str(config), "--quiet", "--state-dir", str(state)]
    assert main(args + ["--max-steps", "2"]) == 0
    assert (state / "runs" / "t" / "state.safetensors").exists()
    assert (state / "runs" / "t" / "export" / "model.safetensors").exists()
    assert not (tmp_path / "checkout" / "runs").exists()
    assert main(args + ["--max-steps", "4", "--resume"]) == 0
    log = (state / "runs" / "t" / "log.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in log[1:]] == ["1", "2", "3", "4"]  # resumed at 2, not restarted
    assert json.loads((state / "runs" / "t" / "config.json").read_text())["max_steps"] == 4

