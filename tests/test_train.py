"""Training: resume is exact, a kill -9 never corrupts a file, DDP agrees with one process."""
import inspect
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
import pytest
import torch
from safetensors.torch import load_file

from diffusion_core.evaluate import write_to_model_card
from diffusion_core.model_card import NOT_EVALUATED, weights_fingerprint
from diffusion_core.pipeline import DiffusionPipeline
from diffusion_core.schedule import NoiseSchedule
from diffusion_core.train import TrainConfig, diffusion_loss, min_snr_weight, train
from diffusion_core.unet import UNet

from conftest import tiny_train_config

ROOT = Path(__file__).resolve().parent.parent


def tiny_config(data, tmp_path, name, **overrides):
    return tiny_train_config(tmp_path, name, **{"data": data, "image_size": 16, "channel_mults": [1, 2],
                                                "attention_resolutions": [8], **overrides})


def test_training_writes_log_checkpoint_grid_and_a_loadable_export(course_files, tmp_path):
    cfg = tiny_config(course_files, tmp_path, "a")
    train(cfg, show_progress=False)
    log = pd.read_csv(Path(cfg.out_dir) / "log.csv")
    assert list(log.columns) == ["step", "loss", "lr", "images_per_s", "elapsed_s"] and log["step"].tolist() == list(range(1, 7))
    assert (Path(cfg.out_dir) / "samples_0000006.png").exists()
    pipe = DiffusionPipeline.from_pretrained(cfg.export_dir)
    assert pipe.labels == ["hero", "non-hero", "food", "spell", "side-facing"]
    card = (Path(cfg.export_dir) / "README.md").read_text()
    assert "| steps | 6 |" in card and "python -m diffusion_core train" in card


def test_a_folder_of_twelve_classes_trains_and_exports(tmp_path):
    """More classes than fit one request of 8 per class (MAX_IMAGES 64): the export's grid draws fewer per class."""
    from PIL import Image

    folder = tmp_path / "pictures"
    for k in range(12):
        (folder / f"class_{k:02d}").mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (20, 20), (20 * k, 100 * i, 0)).save(folder / f"class_{k:02d}" / f"{i}.png")
    cfg = tiny_config(f"folder:{folder}", tmp_path, "twelve", max_steps=1, checkpoint_every=1)
    assert train(cfg, show_progress=False)["step"] == 1
    pipe = DiffusionPipeline.from_pretrained(cfg.export_dir)
    assert pipe.labels == [f"class_{k:02d}" for k in range(12)]
    assert (Path(cfg.export_dir) / "samples.png").is_file() and (Path(cfg.out_dir) / "samples_0000001.png").is_file()


def test_a_grid_of_any_number_of_classes_is_drawn_in_requests_of_at_most_max_images():
    from types import SimpleNamespace

    from diffusion_core.pipeline import MAX_IMAGES
    from diffusion_core.train import draw_grid, grid_plan

    calls = []

    class Pipe:
        def generate(self, num_images, classes=None, seed=0, **sampling):
            assert num_images <= MAX_IMAGES and (classes is None or len(classes) == num_images)
            calls.append((classes, seed))
            return SimpleNamespace(images=np.full((num_images, 2, 2, 3), seed, dtype=np.uint8))

    assert grid_plan(["a", "b"])[1] == 8 and grid_plan([f"c{k}" for k in range(12)])[1] == 5
    names = [f"c{k}" for k in range(100)]
    images, per_class = draw_grid(Pipe(), names, seed=7, steps=2)
    assert per_class == 1 and len(images) == 100 and [seed for _, seed in calls] == [7, 8]
    assert [name for classes, _ in calls for name in classes] == names  # every class once, in order
    calls.clear()
    images, per_class = draw_grid(Pipe(), [], seed=3)  # unconditional: two rows
    assert len(images) == 2 * per_class and calls == [(None, 3)]
    assert draw_grid(Pipe(), ["a", "b"], per_class=3)[1] == 3 and grid_plan(names[:12], 3)[1] == 3  # a config's grid_per_class
    with pytest.raises(ValueError, match="grid_per_class must be in 1..8"):
        TrainConfig(grid_per_class=0).validate()


def test_a_patch_model_trains_exports_and_loads_and_a_checkpoint_from_before_patches_reads_as_pixels(course_files, tmp_path):
    cfg = tiny_config(course_files, tmp_path, "p", patch_size=2, max_steps=3, checkpoint_every=3)
    train(cfg, show_progress=False)
    folder = Path(cfg.export_dir)
    pipe = DiffusionPipeline.from_pretrained(folder)
    assert pipe.model.patch_size == 2 and pipe.generate(num_images=2, steps=2, seed=0).images.shape == (2, 16, 16, 3)
    assert "2x2-pixel patches" in (folder / "README.md").read_text()
    config = json.loads((folder / "config.json").read_text())
    del config["patch_size"]  # as every checkpoint made before patch_size existed
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"conv_in.weight: file \(8, 12, 3, 3\) vs model \(8, 3, 3, 3\)"):  # read as pixels
        DiffusionPipeline.from_pretrained(folder)


def test_export_only_rewrites_the_saved_states_ema_without_training(course_files, tmp_path):
    cfg = tiny_config(course_files, tmp_path, "a")
    with pytest.raises(ValueError, match="no training state"):
        train(cfg, export_only=True, show_progress=False)
    train(cfg, show_progress=False)
    log_before = (Path(cfg.out_dir) / "log.csv").read_text()
    again = tiny_config(course_files, tmp_path, "a", export_dir=str(tmp_path / "again"))
    assert train(again, export_only=True, show_progress=False)["step"] == 6
    a, b = (load_file(Path(d) / "model.safetensors") for d in (cfg.export_dir, again.export_dir))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert "| steps | 6 |" in (tmp_path / "again" / "README.md").read_text()
    assert (Path(cfg.out_dir) / "log.csv").read_text() == log_before
    # a run killed after its last checkpoint logged steps no state holds: the export leaves them out
    (Path(cfg.out_dir) / "log.csv").write_text(log_before + "7,9.9,0.001,1.0,1.0\n")
    train(again, export_only=True, show_progress=False)
    assert (tmp_path / "again" / "training_log.csv").read_text() == log_before
    assert "9.9" not in (tmp_path / "again" / "README.md").read_text()
    half = tiny_config(course_files, tmp_path, "a", export_dir=str(tmp_path / "half"), weights_dtype="float16")
    train(half, export_only=True, show_progress=False)
    c = load_file(Path(half.export_dir) / "model.safetensors")
    assert all(c[k].dtype == torch.float16 and torch.equal(c[k], a[k].half()) for k in a)


def test_an_evaluation_stays_in_the_card_only_while_it_measures_the_exported_weights(course_files, tmp_path):
    cfg = tiny_config(course_files, tmp_path, "a")
    train(cfg, show_progress=False)
    folder = Path(cfg.export_dir)
    result = {"weights_fingerprint": weights_fingerprint(load_file(folder / "model.safetensors"))}
    write_to_model_card(folder, "| measured | table |\n", result)
    train(cfg, export_only=True, show_progress=False)  # the same weights again: the evaluation still holds
    assert "| measured | table |" in (folder / "README.md").read_text() and (folder / "evaluation.json").exists()
    train(tiny_config(course_files, tmp_path, "a", max_steps=9), resume=True, show_progress=False)  # new weights
    card = (folder / "README.md").read_text()
    assert "| measured | table |" not in card and NOT_EVALUATED in card
    assert not (folder / "evaluation.json").exists() and not (folder / "evaluation.md").exists()


def test_resume_continues_exactly_where_it_stopped(course_files, tmp_path):
    straight = tiny_config(course_files, tmp_path, "straight")
    train(straight, show_progress=False)
    split = tiny_config(course_files, tmp_path, "split", max_steps=3)
    train(split, show_progress=False)
    train(tiny_config(course_files, tmp_path, "split"), resume=True, show_progress=False)
    a = load_file(Path(straight.out_dir) / "state.safetensors")
    b = load_file(Path(split.out_dir) / "state.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        if not key.startswith("rng."):
            assert torch.equal(a[key], b[key]), key
    log = pd.read_csv(Path(split.out_dir) / "log.csv")
    assert log["step"].tolist() == list(range(1, 7))


def test_init_from_starts_a_run_from_an_exported_checkpoint(course_files, tmp_path):
    first = tiny_config(course_files, tmp_path, "first")
    train(first, show_progress=False)
    # lr so small that one step leaves the weights where init_from put them
    tuned = tiny_config(course_files, tmp_path, "tuned", init_from=first.export_dir, max_steps=1, warmup_steps=1, lr=1e-12)
    train(tuned, show_progress=False)
    exported = load_file(Path(first.export_dir) / "model.safetensors")
    state = load_file(Path(tuned.out_dir) / "state.safetensors")
    for prefix in ("model.", "ema."):
        for key, value in exported.items():
            assert torch.allclose(state[prefix + key], value, atol=1e-6), prefix + key
    card = (Path(tuned.export_dir) / "README.md").read_text()
    assert f"| initialised from | `{first.export_dir}`" in card and "| steps | 1 |" in card
    # config.json's recipe: the config files that made the weights, in the order they ran
    # (no configs/first.json in the project: each names the config its run wrote into its out_dir)
    first_config, tuned_config = (str(Path(c.out_dir) / "config.json") for c in (first, tuned))
    assert DiffusionPipeline.from_pretrained(first.export_dir).recipe == [first_config]
    assert DiffusionPipeline.from_pretrained(tuned.export_dir).recipe == [first_config, tuned_config]
    # the card also tells how the initial weights were trained, from their own card
    before = card.partition(f"### Before this run: how `{first.export_dir}` was trained")[2].partition("\n## ")[0]
    assert "| steps | 6 |" in before and f"configs/{Path(first.out_dir).name}.json" in before
    # each step's export has the same card, so a run started from one keeps the story too
    step_card = (Path(first.out_dir) / "exports" / "step_0000006" / "README.md").read_text()
    assert "| steps | 6 |" in step_card and f"configs/{Path(first.out_dir).name}.json" in step_card

    wider = tiny_config(course_files, tmp_path, "wider", init_from=first.export_dir, base_channels=16)
    with pytest.raises(ValueError, match=r"different architecture .*base_channels"):
        train(wider, show_progress=False)
    with pytest.raises(ValueError, match="checkpoint folder or a Hub repo id"):
        train(tiny_config(course_files, tmp_path, "nowhere", init_from=str(tmp_path / "no such folder")), show_progress=False)


def test_a_card_carries_the_whole_chain_of_earlier_runs(tmp_path):
    """A run fine-tuned from a fine-tuned model tells both earlier runs (the second from the first card)."""
    from diffusion_core.model_card import initial_weights_training

    (tmp_path / "README.md").write_text(
        "# stage 2\n\n## Training\n```\ntrain --config configs/stage2.json\n```\n| fact | value |\n| steps | 20 |\n\n"
        "The log is beside this card.\n\n### Before this run: how `stage1` was trained (from its card)\n"
        "| fact | value |\n| steps | 10 |\n\n## Evaluation\nnone\n")
    story = initial_weights_training(str(tmp_path))
    assert story.startswith(f"\n### Before this run: how `{tmp_path}` was trained") and "| steps | 20 |" in story
    assert "how `stage1` was trained" in story and "| steps | 10 |" in story
    assert "The log is" not in story and "Evaluation" not in story


def test_a_card_names_the_guide_its_defaults_autoguide_with(tmp_path):
    from diffusion_core.model_card import training_card

    plain = TrainConfig(out_dir=str(tmp_path / "r"))
    guided = TrainConfig(out_dir=str(tmp_path / "r"), default_sampling={"sampler": "ddim", "steps": 20, "guidance": 4.0,
                                                                        "autoguidance": 1.5})
    assert "autoguided" not in training_card(plain, 10, tmp_path / "none.csv")
    assert "autoguided (Karras et al. 2024) by the small model in `guide/`" in training_card(guided, 10, tmp_path / "none.csv")
    assert "at w 1.5." in training_card(guided, 10, tmp_path / "none.csv")


def test_a_card_names_the_loss_weighting_and_the_text_paths_lr():
    from diffusion_core.model_card import training_card

    plain = training_card(TrainConfig(text=True), 10, ROOT / "none.csv")
    assert "min-SNR" not in plain and "learned at" not in plain
    tuned = training_card(TrainConfig(text=True, min_snr_gamma=5.0, text_lr_scale=10.0), 10, ROOT / "none.csv")
    assert "min-SNR-γ, γ = 5 (Hang et al. 2023" in tuned and "cross-attention) learned at 10x the lr." in tuned


def test_kill_9_at_any_moment_never_leaves_a_corrupt_checkpoint(course_files, tmp_path):
    cfg = tiny_config(course_files, tmp_path, "killed", max_steps=10_000, checkpoint_every=1, log_every=1)
    config_path = tmp_path / "killed.json"
    config_path.write_text(cfg.to_json())
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "diffusion_core", "train", "--config", str(config_path), "--resume", "--quiet"]
    state = Path(cfg.out_dir) / "state.safetensors"
    steps_seen = []
    for delay in (0.0, 0.013, 0.031):  # after this start's first new checkpoint (so mid-training, not mid-import)
        before = state_step(state) or 0
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while (state_step(state) or 0) <= before and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if state.exists():
            from safetensors import safe_open
            with safe_open(str(state), "pt") as f:
                steps_seen.append(int(f.metadata()["step"]))
            load_file(state)  # the whole file reads
        if Path(cfg.export_dir).exists():
            DiffusionPipeline.from_pretrained(cfg.export_dir)
    assert len(steps_seen) == 3 and steps_seen == sorted(steps_seen) and steps_seen[0] >= 1 and steps_seen[-1] > steps_seen[0]
    log = pd.read_csv(Path(cfg.out_dir) / "log.csv")
    assert log["step"].is_monotonic_increasing


def test_sigterm_or_ctrl_c_between_checkpoints_stops_after_the_step_with_its_state_saved(course_files, tmp_path):
    """SIGTERM (Ctrl-C is SIGINT, the same path) while a run trains between two checkpoints: it finishes its
    step, saves its state at that step (no export: a stop is quick), puts the handlers back, and the command
    exits 143 (128 + 15) as a shell expects."""
    from diffusion_core.__main__ import exit_if_stopped

    assert threading.current_thread() is threading.main_thread()  # else the signal would end this test process
    cfg = tiny_config(course_files, tmp_path, "stopped", checkpoint_every=1_000)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def signal_at_step_3(progress) -> bool:
        if progress.step == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return False

    summary = train(cfg, show_progress=False, on_step=signal_at_step_3)
    assert summary["stopped_by"] == "SIGTERM" and summary["step"] == 3
    assert state_step(Path(cfg.out_dir) / "state.safetensors") == 3 == pd.read_csv(Path(cfg.out_dir) / "log.csv")["step"].max()
    assert not Path(cfg.export_dir).exists() and {s: signal.getsignal(s) for s in before} == before
    with pytest.raises(SystemExit) as stopped:
        exit_if_stopped(summary)
    assert stopped.value.code == 128 + signal.SIGTERM


def state_step(state: Path) -> int | None:
    """The step a training state file holds (None while there is none)."""
    from safetensors import safe_open

    try:
        with safe_open(str(state), "pt") as f:
            return int(f.metadata()["step"])
    except (FileNotFoundError, OSError):
        return None


def test_kill_9_after_a_checkpoint_then_resume_equals_the_uninterrupted_run_step_for_step(course_files, tmp_path):
    """Killed (SIGKILL) once right after a state is saved and once between two saves, a run resumed each time
    ends bit-identical to one never interrupted: the same loss at every logged step, no step logged twice,
    the same final weights; and a kill loses at most ``state_every`` steps. (The state alone every 3 steps, the
    export with its sample grid only at the end: test_kill_9_at_any_moment_never_leaves_a_corrupt_checkpoint
    kills exports.)"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def command(name):
        cfg = tiny_config(course_files, tmp_path, name, max_steps=12, checkpoint_every=12, state_every=3, log_every=1)
        (tmp_path / f"{name}.json").write_text(cfg.to_json())
        return cfg, [sys.executable, "-m", "diffusion_core", "train", "--config", str(tmp_path / f"{name}.json"),
                     "--resume", "--quiet"]

    straight, _ = command("straight")
    train(straight, show_progress=False)  # in this process: the same run, without a second start-up
    killed, killed_command = command("killed")
    state, log_path = Path(killed.out_dir) / "state.safetensors", Path(killed.out_dir) / "log.csv"

    def logged_steps() -> list[int]:
        try:
            return pd.read_csv(log_path)["step"].tolist()
        except (FileNotFoundError, pd.errors.EmptyDataError):
            return []

    # kill as soon as the state of step 3 exists; then as soon as a step past the state of step 6 is logged
    for ready in (lambda: (state_step(state) or 0) >= 3, lambda: (state_step(state) or 0) >= 6 and logged_steps()[-1:] >= [7]):
        proc = subprocess.Popen(killed_command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while not ready() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
        assert max(logged_steps()) - state_step(state) <= killed.state_every  # the most a kill can lose
        load_file(state)  # whole and readable
    subprocess.run(killed_command, env=env, check=True, timeout=600, stdout=subprocess.DEVNULL)
    a, b = pd.read_csv(Path(straight.out_dir) / "log.csv"), pd.read_csv(log_path)
    assert b["step"].tolist() == list(range(1, 13))  # no step logged twice, none missing
    assert a["loss"].tolist() == b["loss"].tolist()  # step for step
    final_a, final_b = load_file(Path(straight.out_dir) / "state.safetensors"), load_file(state)
    assert final_a.keys() == final_b.keys()
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a if not k.startswith("rng.")), \
        [k for k in final_a if not k.startswith("rng.") and not torch.equal(final_a[k], final_b[k])]


@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="needs the gloo backend")
def test_two_process_ddp_matches_one_process_on_the_same_global_batch(course_files, tmp_path):
    single = tiny_config(course_files, tmp_path, "single", max_steps=4, checkpoint_every=4)
    train(single, show_progress=False)
    ddp = tiny_config(course_files, tmp_path, "ddp", max_steps=4, checkpoint_every=4)
    config_path = tmp_path / "ddp.json"
    config_path.write_text(ddp.to_json())
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
                             "-m", "diffusion_core", "train", "--config", str(config_path), "--quiet"],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    log_single = pd.read_csv(Path(single.out_dir) / "log.csv")
    log_ddp = pd.read_csv(Path(ddp.out_dir) / "log.csv")
    assert log_ddp["step"].tolist() == log_single["step"].tolist() == [1, 2, 3, 4]
    assert np.allclose(log_ddp["loss"], log_single["loss"], rtol=1e-4)
    a = load_file(Path(single.out_dir) / "state.safetensors")
    b = load_file(Path(ddp.out_dir) / "state.safetensors")
    for key in a:
        if key.startswith("model."):
            assert torch.allclose(a[key], b[key], atol=1e-5), key


def test_min_snr_weighting_down_weights_only_the_easy_low_noise_steps():
    """Hang et al. 2023: the ε-loss of a step counts min(SNR, γ)/SNR, the v-loss min(SNR, γ)/(SNR + 1)."""
    schedule = NoiseSchedule("cosine", 1000)
    t = torch.tensor([0, 100, 500, 999])
    snr = schedule.snr(t)
    weight = min_snr_weight(snr, 5.0, "epsilon")
    assert weight[0] == pytest.approx(5.0 / snr[0].item()) and weight[0] < 1e-2  # nearly clean: easy, counts little
    assert weight[2:].tolist() == [1.0, 1.0]  # SNR <= 5: plain L_simple
    assert torch.allclose(min_snr_weight(snr, 5.0, "v"), snr.clamp(max=5.0) / (snr + 1))
    assert min_snr_weight(torch.tensor([0.0]), 5.0, "epsilon").item() == 1.0  # never 0/0

    torch.manual_seed(0)
    x0, noise = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    model = lambda x_t, t, context: x_t  # noqa: E731 - any fixed denoiser
    plain = diffusion_loss(model, schedule, x0, None, t, noise, "epsilon")
    weighted = diffusion_loss(model, schedule, x0, None, t, noise, "epsilon", min_snr_gamma=5.0)
    errors = (schedule.add_noise(x0, noise, t) - noise).pow(2).mean(dim=(1, 2, 3))
    assert plain == pytest.approx(errors.mean().item()) and weighted == pytest.approx((weight * errors).mean().item())
    with pytest.raises(ValueError, match="min_snr_gamma must be >= 0"):
        TrainConfig(min_snr_gamma=-1).validate()


def test_flip_condition_tells_the_model_exactly_which_pictures_were_mirrored(tmp_path, monkeypatch):
    """EDM's non-leaky augmentation (sec. 5): every training picture comes with flipped = 1 when hflip
    mirrored it and 0 when not; the export is a flip-conditioned model (sampling gives it nothing = 0)."""
    picture = np.zeros((8, 16, 16, 3), dtype=np.uint8)
    picture[:, :, :6] = 255  # white on the left only
    np.save(tmp_path / "sprites.npy", picture)
    np.save(tmp_path / "labels.npy", np.ones((8, 1)))
    data = f"course:{tmp_path / 'sprites.npy'},{tmp_path / 'labels.npy'}"
    seen = []

    def spy(model, schedule, x0, *args, flipped=None, **kwargs):
        seen.append((x0[..., :8].mean(dim=(1, 2, 3)) > 0, flipped))  # True: white on the left, as drawn
        return diffusion_loss(model, schedule, x0, *args, flipped=flipped, **kwargs)

    monkeypatch.setattr("diffusion_core.train.diffusion_loss", spy)
    cfg = tiny_config(data, tmp_path, "c", hflip=True, flip_condition=True)
    train(cfg, show_progress=False)
    as_drawn = torch.cat([left for left, _ in seen])
    flipped = torch.cat([f for _, f in seen])
    assert len(seen) == cfg.max_steps and 0 < flipped.sum() < len(flipped)  # both kinds seen
    assert torch.equal(flipped, (~as_drawn).float())
    pipe = DiffusionPipeline.from_pretrained(cfg.export_dir)
    assert pipe.model.flip_condition and pipe.generate(num_images=2, steps=2).images.shape == (2, 16, 16, 3)
    assert "the model is told which" in (Path(cfg.export_dir) / "README.md").read_text()

    seen.clear()
    train(tiny_config(data, tmp_path, "p", hflip=True), show_progress=False)
    assert all(f is None for _, f in seen)  # plain flips: the model is not told
    assert "so samples may be too" in (tmp_path / "p" / "export" / "README.md").read_text()


def test_a_resolution_curriculum_trains_its_first_steps_on_box_downsampled_pictures(course_files, tmp_path, monkeypatch):
    seen = []

    def spy(model, schedule, x0, context, t, noise, *args, **kwargs):
        seen.append((x0.clone(), noise.shape))
        return diffusion_loss(model, schedule, x0, context, t, noise, *args, **kwargs)

    monkeypatch.setattr("diffusion_core.train.diffusion_loss", spy)
    cfg = tiny_config(course_files, tmp_path, "r", curriculum_size=8, curriculum_steps=4)
    train(cfg, show_progress=False)
    sizes = [x0.shape[-1] for x0, _ in seen]
    assert sizes == [8, 8, 8, 8, 16, 16] and all(x0.shape == shape for x0, shape in seen)
    sprites = torch.from_numpy(np.load(course_files.split(":")[1].split(",")[0])).permute(0, 3, 1, 2).float() / 127.5 - 1
    small = torch.nn.functional.avg_pool2d(sprites, 2)  # each pixel the mean of a 2x2 block
    assert all(torch.isclose(small, picture, atol=1e-5).flatten(1).all(1).any() for picture in seen[0][0])
    assert DiffusionPipeline.from_pretrained(cfg.export_dir).generate(num_images=1, steps=2).images.shape == (1, 16, 16, 3)
    assert "first 4 steps trained on the pictures box-downsampled to 8x8" in (Path(cfg.export_dir) / "README.md").read_text()
    # the sample grids show what it learned: drawn at 8 px while it trains at 8 px (as large as the rest), then at 16
    grids = {step: np.asarray(Image.open(Path(cfg.out_dir) / f"samples_{step:07d}.png")) for step in (3, 6)}
    first = {step: grid[2:66, 2:66].reshape(8, 8, 8, 8, 3) for step, grid in grids.items()}  # the first picture's 8x8 blocks
    blocks_of_one_colour = {step: bool((b == b[:, :1, :, :1]).all()) for step, b in first.items()}
    assert grids[3].shape == grids[6].shape and blocks_of_one_colour == {3: True, 6: False}
    for bad, message in [({"curriculum_size": 12}, "must divide image_size 16"), ({"curriculum_size": 16}, "smaller"),
                         ({"curriculum_size": 2, "channel_mults": [1, 2, 2]}, r"divisible by patch_size x 2\^2")]:
        with pytest.raises(ValueError, match=message):
            TrainConfig(image_size=16, curriculum_steps=5, **bad).validate()


def test_flip_input_is_checked():
    from diffusion_core.unet import UNet

    model = UNet(image_size=16, base_channels=8, channel_mults=[1, 2], attention_resolutions=[8], num_heads=2,
                 num_groups=4, flip_condition=True)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 7])
    with torch.no_grad():
        for parameter in model.parameters():  # zero-started layers would hide any input
            torch.nn.init.normal_(parameter, std=0.2)
        assert torch.equal(model(x, t), model(x, t, flipped=torch.zeros(2)))  # sampling = not flipped
        assert not torch.equal(model(x, t), model(x, t, flipped=torch.ones(2)))
    with pytest.raises(ValueError, match=r"flipped must have shape \(N=2,\)"):
        model(x, t, flipped=torch.zeros(3))
    model.flip_condition = False
    with pytest.raises(ValueError, match="no flip input"):
        model(x, t, flipped=torch.zeros(2))
    with pytest.raises(ValueError, match="flip_condition needs hflip"):
        TrainConfig(flip_condition=True).validate()


def test_bad_training_settings_are_clear_errors(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"batch_sise": 3}))
    with pytest.raises(ValueError, match="unknown settings"):
        TrainConfig.from_json(path)
    with pytest.raises(ValueError, match="data set must be"):
        train(TrainConfig(data="imagenet", out_dir=str(tmp_path / "r")), show_progress=False)
    with pytest.raises(ValueError, match=r"weights_dtype must be one of \['float16', 'float32'\], got 'bfloat16'"):
        TrainConfig(weights_dtype="bfloat16").validate()


def shipped_config(path: Path):
    """A training config, or a distillation config (those name a teacher)."""
    from diffusion_core.distill import DistillConfig

    return (DistillConfig if "teacher" in json.loads(path.read_text()) else TrainConfig).from_json(path)


@pytest.mark.parametrize("config_path", sorted((ROOT / "configs").glob("*.json")), ids=lambda p: p.name)
def test_every_shipped_config_is_valid(config_path):
    shipped_config(config_path).validate()


SHIPPED = sorted(p.name for p in (ROOT / "checkpoints").iterdir() if p.is_dir())
GUIDES = [f"{name}/guide" for name in SHIPPED if (ROOT / "checkpoints" / name / "guide").is_dir()]  # autoguidance


def test_at_most_two_checkpoints_ship():
    assert 1 <= len(SHIPPED) <= 2 and "emoji32" in SHIPPED


@pytest.mark.parametrize("checkpoint", SHIPPED + GUIDES)
def test_each_shipped_checkpoint_has_the_architecture_of_the_config_that_made_it(checkpoint):
    """The first config a card names is the command that made the checkpoint (then --ship copied its export);
    that config exists and gives the shipped U-Net; a distilled student has its teacher's plus the guidance input."""
    card = (ROOT / "checkpoints" / checkpoint / "README.md").read_text()
    named = re.findall(r"configs/[\w/]+\.json", card)
    assert named and (ROOT / named[0]).is_file(), f"{checkpoint}'s card names no config of this repository"
    maker, shipped = shipped_config(ROOT / named[0]), json.loads((ROOT / "checkpoints" / checkpoint / "config.json").read_text())
    # config.json's recipe runs every config of the chain, in order, ending with the one that made it
    assert shipped["recipe"][-1] == named[0] and all((ROOT / path).is_file() for path in shipped["recipe"])
    assert set(shipped["recipe"]) >= set(named)  # and holds every stage its card tells of
    if isinstance(maker, TrainConfig):
        expected = maker.unet_kwargs(context_dim=shipped["context_dim"])
    else:
        teacher = json.loads((ROOT / maker.teacher / "config.json").read_text())
        assert shipped["recipe"][:len(teacher["recipe"])] == teacher["recipe"]  # the teacher's stages come first
        expected = {**{k: v for k, v in teacher.items() if k not in ("default_sampling", "recipe")}, "guidance_embedding": True,
                    "prediction_type": "v", "default_sampling": maker.default_sampling}
    # a key the export predates (a U-Net argument added later) holds the U-Net's default
    defaults = {k: p.default for k, p in inspect.signature(UNet.__init__).parameters.items() if p.default is not p.empty}
    assert {k: shipped.get(k, defaults.get(k)) for k in expected} == expected


@pytest.mark.parametrize("checkpoint", SHIPPED + GUIDES)
def test_each_shipped_evaluation_measured_the_weights_shipped_beside_it(checkpoint):
    folder = ROOT / "checkpoints" / checkpoint
    measured = json.loads((folder / "evaluation.json").read_text())["weights_fingerprint"]
    assert measured == weights_fingerprint(load_file(folder / "model.safetensors"))


def test_state_every_saves_the_state_alone_between_checkpoints(course_files, tmp_path):
    """With state_every 2 and checkpoints every 1,000 steps, the state file follows every second step (what a
    kill -9 would resume from) while the only export is the last step's."""
    cfg = tiny_config(course_files, tmp_path, "often", max_steps=5, checkpoint_every=1_000, state_every=2)
    state = Path(cfg.out_dir) / "state.safetensors"
    seen = {}

    def look(progress) -> bool:  # called after each step, before that step's saving
        seen[progress.step] = state_step(state)
        return False

    train(cfg, show_progress=False, on_step=look)
    assert seen == {1: None, 2: None, 3: 2, 4: 2, 5: 4} and state_step(state) == 5
    assert [p.name for p in (Path(cfg.out_dir) / "exports").iterdir()] == ["step_0000005"]
    with pytest.raises(ValueError, match="state_every must be >= 0"):
        TrainConfig(state_every=-1).validate()
