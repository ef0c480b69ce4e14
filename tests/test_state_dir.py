"""A run's state can live outside the checkout (--state-dir or $DIFFUSION_STATE_DIR) and resume from there."""
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from diffusion_core.__main__ import main
from diffusion_core.distill import DistillConfig
import diffusion_core.train as train_module
from diffusion_core.train import TrainConfig, train, under_state_dir


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
                                  export_dir="runs/t/export", checkpoint_every=2, log_every=1, grid_per_class=1).to_json())
    args = ["train", "--config", str(config), "--quiet", "--state-dir", str(state)]
    assert main(args + ["--max-steps", "2"]) == 0
    assert (state / "runs" / "t" / "state.safetensors").exists()
    assert (state / "runs" / "t" / "export" / "model.safetensors").exists()
    assert not (tmp_path / "checkout" / "runs").exists()
    assert main(args + ["--max-steps", "4", "--resume"]) == 0
    log = (state / "runs" / "t" / "log.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in log[1:]] == ["1", "2", "3", "4"]  # resumed at 2, not restarted
    assert json.loads((state / "runs" / "t" / "config.json").read_text())["max_steps"] == 4


def tiny_run(course_files, tmp_path, max_steps) -> TrainConfig:
    return TrainConfig(data=course_files, image_size=16, base_channels=8, channel_mults=[1, 2], attention_resolutions=[8],
                       num_heads=2, num_groups=4, batch_size=4, warmup_steps=1, num_timesteps=50, precision="fp32",
                       out_dir=str(tmp_path / "run"), export_dir=str(tmp_path / "run" / "export"), checkpoint_every=2,
                       log_every=1, max_steps=max_steps, grid_per_class=1)  # one grid picture per class: seconds, not tens


def test_a_lost_state_resumes_from_the_one_before_it_and_then_from_the_newest_export_and_says_what_was_lost(
        course_files, tmp_path, capsys, monkeypatch):
    cfg = tiny_run(course_files, tmp_path, 4)
    train(cfg, show_progress=False)
    run = Path(cfg.out_dir)
    state, previous = run / "state.safetensors", run / "state.previous.safetensors"
    assert previous.is_file()  # the state saved at step 2 stays beside the one of step 4
    state.write_bytes(state.read_bytes()[:1000])  # cut off mid-write by a full disk, say
    cfg6 = TrainConfig(**{**cfg.__dict__, "max_steps": 6})
    train(cfg6, resume=True, show_progress=False)
    said = capsys.readouterr().out
    assert "`state.safetensors` could not be read" in said and "resumed from `state.previous.safetensors` (step 2)" in said
    log = (run / "log.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in log[1:]] == ["1", "2", "3", "4", "5", "6"]  # steps 3-4 were run again
    assert "state.previous.safetensors" in (run / "resume_log.md").read_text()

    state.unlink()
    previous.unlink()
    cfg8 = TrainConfig(**{**cfg.__dict__, "max_steps": 8})
    started, original = {}, train_module.run_optimisation

    def recording(cfg, procs, model, ema, optimizer, step, *args, **kwargs):
        started.update(step=step, ema={k: v.clone() for k, v in ema.state_dict().items()})
        return original(cfg, procs, model, ema, optimizer, step, *args, **kwargs)

    monkeypatch.setattr(train_module, "run_optimisation", recording)
    train(cfg8, resume=True, show_progress=False)
    assert started["step"] == 6  # the newest export, exports/step_0000006
    exported = load_file(str(run / "exports" / "step_0000006" / "model.safetensors"))
    assert all(torch.equal(started["ema"][k], exported[k].float()) for k in exported)
    notes = (run / "resume_log.md").read_text().splitlines()
    assert len(notes) == 2 and "AdamW's moments were lost" in notes[1] and "`state.safetensors` is missing" in notes[1]


def test_a_kill_at_any_instant_of_a_save_leaves_the_state_and_the_one_before_it_whole(tmp_path, monkeypatch):
    """Every rename a save makes is a moment a SIGKILL may land after: at each one, `state.safetensors` must be a
    whole state (the old one until the new one replaces it) and, once there was one, so must the one before it."""
    import os

    model = torch.nn.Linear(3, 2)
    ema = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    state = tmp_path / "state.safetensors"
    previous = train_module.previous_state_path(state)
    seen, real_replace = [], os.replace

    def replace_then_look(src, dst):
        real_replace(src, dst)
        seen.append((train_module.unreadable(state), train_module.unreadable(previous) if len(seen) > 1 else None))

    monkeypatch.setattr(os, "replace", replace_then_look)
    for step in (1, 2, 3):
        train_module.save_training_state(state, model, ema, optimizer, step, TrainConfig())
    assert len(seen) == 5 and all(problems == (None, None) for problems in seen), seen
    assert [train_module.load_training_state(path, model, ema, optimizer) for path in (state, previous)] == [3, 2]
    assert not list(tmp_path.glob(".*tmp"))  # nothing left half-made
