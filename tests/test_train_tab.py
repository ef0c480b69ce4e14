"""The Train tab in-process (no server): it trains with diffusion_core.train on the app's one torch thread,
streams the loss and the fixed-noise grid, stops on request keeping what was learned, lets one training
run at a time with the others in line, and the app keeps answering sampling requests meanwhile. Also:
every torch call of the app runs on that thread, and a deep line gets the fast model's answer."""
from __future__ import annotations

import threading
import time
import zipfile
from types import SimpleNamespace

import gradio as gr
import numpy as np
import pandas as pd
import pytest

from diffusion_core.pipeline import DiffusionPipeline

QUIET = lambda *args, **kwargs: None  # noqa: E731  (stands in for gr.Progress)
# a run that takes seconds: the tiny preset at 16 px on one class and one style
TINY_RUN = dict(source="emoji sprites", classes=["face", "flag"], styles=["noto"], image_size="16", upload=None,
                preset="tiny", steps=6, minutes=5, grid_every=2, seed=0)


def handlers(pipe, fast=None) -> dict:
    from app import build_app

    return {f.api_name: f.fn for f in build_app(pipe, "Weights: tiny.", fast).fns.values() if f.api_name}


def run(**changes):
    return list({**TINY_RUN, **changes}.values())


def test_training_streams_the_loss_and_grids_then_gives_a_zip_that_from_pretrained_loads(tiny_pipeline, tmp_path):
    updates = list(handlers(tiny_pipeline)["train"](*run()))
    plots = [u[1] for u in updates if isinstance(u[1], pd.DataFrame)]
    grids = [(u[2]["value"], u[2]["label"]) for u in updates if isinstance(u[2], dict) and "value" in u[2]]
    assert plots and set(plots[-1]["step"]) == {1, 2, 3, 4, 5, 6}  # every step's loss, and its running mean
    assert set(plots[-1]["series"]) == {"each step", "mean of 20"}
    assert grids[-1][1].endswith("step 6") and len(grids) >= 2
    assert not np.array_equal(grids[0][0], grids[-1][0])  # the same noise, drawn by a model that learned
    status, _, _, archive, folder, classes, _ = updates[-1]
    assert "Trained 6 steps" in status and [c[0] if isinstance(c, tuple) else c for c in classes["choices"]] == ["face", "flag"]
    with zipfile.ZipFile(archive) as z:
        assert {"config.json", "model.safetensors", "README.md"} <= set(z.namelist())
        z.extractall(tmp_path / "model")
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "model")
    assert pipe.labels == ["face", "flag"] and pipe.model.image_size == 16
    drawn, info = handlers(tiny_pipeline)["train_draw"](folder, ["flag"], 3, 2.0, 2, 0, progress=QUIET)
    assert len(drawn) == 2 and "flag, 3 steps" in info


def collect_until(generator, condition, into: list):
    for update in generator:
        into.append(update)
        if condition(update):
            return


def test_stop_ends_the_run_at_the_next_step_and_keeps_what_it_learned(tiny_pipeline):
    from ui import train as train_tab

    fns = handlers(tiny_pipeline)
    request = SimpleNamespace(session_hash="stopper")
    generator = fns["train"](*run(steps=5000), request=request)
    updates: list = []
    collect_until(generator, lambda u: isinstance(u[1], pd.DataFrame), updates)  # training has started
    assert "Stopping" in fns["train_stop"](request=request)
    updates += list(generator)
    status, archive = updates[-1][0], updates[-1][3]
    assert "stopped early" in status and zipfile.is_zipfile(archive)
    step = int(status.split("Trained ")[1].split(" steps")[0])
    assert 1 <= step < 5000
    assert "stopper" not in train_tab.JOBS


def test_one_training_at_a_time_the_next_waits_with_its_place_shown_and_sampling_goes_on(tiny_pipeline):
    fns = handlers(tiny_pipeline)
    first, second = SimpleNamespace(session_hash="first"), SimpleNamespace(session_hash="second")
    running = fns["train"](*run(steps=5000), request=first)
    updates: list = []
    collect_until(running, lambda u: isinstance(u[1], pd.DataFrame), updates)
    follower = threading.Thread(target=lambda: updates.extend(running), daemon=True)
    follower.start()
    waiting = fns["train"](*run(steps=2), request=second)
    assert "you are number **2** in line" in next(waiting)[0]
    # while the first trains, a sampling request of another tab is answered between two training steps
    start = time.perf_counter()
    gallery, info = fns["generate"]("ddim", 3, 2, 0, 1.0, progress=QUIET)
    assert len(gallery) == 2 and time.perf_counter() - start < 60
    assert follower.is_alive()  # the first training is still running
    fns["train_stop"](request=first)
    follower.join(timeout=120)
    rest = list(waiting)
    assert "Trained 2 steps" in rest[-1][0]


def test_bad_settings_and_uploads_get_a_visible_message(tiny_pipeline, tmp_path):
    from ui.train import TRAIN_MAX_MINUTES

    train = handlers(tiny_pipeline)["train"]
    with pytest.raises(gr.Error, match="minutes must be a number"):
        list(train(*run(minutes=TRAIN_MAX_MINUTES + 1)))
    with pytest.raises(gr.Error, match="choose at least one class"):
        list(train(*run(classes=[])))
    (tmp_path / "x.zip").write_bytes(b"not a zip")
    with pytest.raises(gr.Error, match="upload: x.zip is not a readable zip"):
        list(train(*run(source="my pictures (zip)", upload=str(tmp_path / "x.zip"))))
    with pytest.raises(gr.Error, match="train a model first"):
        handlers(tiny_pipeline)["train_draw"]("", [], 3, 2.0, 2, 0, progress=QUIET)
    tiny_pipeline.save_pretrained(tmp_path / "elsewhere")  # a loadable model, but not one this tab trained
    with pytest.raises(gr.Error, match="only a model this tab trained"):
        handlers(tiny_pipeline)["train_draw"](str(tmp_path / "elsewhere"), [], 3, 2.0, 2, 0, progress=QUIET)


def tiny_fast(pipe):
    from diffusion_core.distill import student_of

    return DiffusionPipeline(student_of(pipe), pipe.schedule, pipe.labels, pipe.styles, "v", device="cpu",
                             vocabulary=pipe.vocabulary,
                             default_sampling={"sampler": "consistency", "steps": 3, "guidance": 4.0})


def test_every_torch_call_of_the_app_runs_on_its_one_torch_thread(tiny_pipeline, tmp_path):
    """The main thread (and Gradio's handler threads) never run the network: one OpenMP team."""
    from ui import forward
    from ui.scheduler import scheduler

    fast = tiny_fast(tiny_pipeline)
    threads = []
    for pipe in (tiny_pipeline, fast):
        original = pipe.model.forward
        pipe.model.forward = lambda *a, _f=original, **k: threads.append(threading.current_thread()) or _f(*a, **k)
    fns = handlers(tiny_pipeline, fast)
    fns["generate"]("ddim", 2, 1, 0, 1.0, progress=QUIET)
    fns["generate_context"](1.0, 0.0, 0.0, "any", 2.0, "ddim", 2, 1, 0, "full", progress=QUIET)
    fns["generate_context"](1.0, 0.0, 0.0, "any", 2.0, "consistency", 2, 1, 0, "fast", progress=QUIET)
    from PIL import Image

    Image.new("RGB", (20, 20), (255, 0, 0)).save(tmp_path / "red.png")
    noisy = forward.noisy_image
    try:
        forward.noisy_image = lambda *a: threads.append(threading.current_thread()) or noisy(*a)
        fns["forward_process"](0, {"path": str(tmp_path / "red.png")}, 10, "linear")
    finally:
        forward.noisy_image = noisy
    assert len(threads) == 2 + 2 + 2 + 1 and set(threads) == {scheduler().thread}
    assert threading.main_thread() not in threads


def test_a_deep_line_is_answered_by_the_fast_model_and_the_page_says_so(tiny_pipeline):
    fast = tiny_fast(tiny_pipeline)
    from app import build_app

    demo = build_app(tiny_pipeline, "Weights: tiny.", fast)
    fn = [f.fn for f in demo.fns.values() if f.api_name == "generate_context"][0]
    request = (1.0, 0.0, 0.0, "any", 2.0, "ddim", 4, 2, 0, "full")
    _, quiet_info = fn(*request, progress=QUIET)
    assert "full model: 4 steps" in quiet_info and "Busy" not in quiet_info
    from ui.scheduler import Work, scheduler  # the line all tabs wait in: 20 default requests ahead

    release = threading.Event()
    holder = scheduler().submit(Work("test"), release.wait, 60)
    ahead = [scheduler().submit(Work("full", 16, 20, 2), lambda: None) for _ in range(20)]
    speeds = dict(scheduler().seconds_per_row)  # put back at the end: the scheduler serves every test
    scheduler().seconds_per_row["full"] = 2.0 / 640  # each about 2 s, whatever the tiny model taught it
    busy: list = []
    answer = threading.Thread(target=lambda: busy.extend(fn(*request, progress=QUIET)))
    try:
        answer.start()
        deadline = time.time() + 30
        while scheduler().waiting() < 1 + 20 + 1 and time.time() < deadline:  # the request is in line
            time.sleep(0.05)
    finally:
        release.set()
    answer.join(timeout=60)
    assert "fast model: 2 steps" in busy[1] and "about 40 s of requests were ahead" in busy[1]  # BUSY_FAST_STEPS
    assert holder.future.done() and all(job.future.done() for job in ahead)
    # a machine where this request alone takes 10 s: no line (2 guided pictures x 4 steps fill 2 x 4 chunks of 16)
    scheduler().seconds_per_row["full"] = 10.0 / (2 * 4 * 16)
    _, alone = fn(*request, progress=QUIET)
    scheduler().seconds_per_row.clear()
    scheduler().seconds_per_row.update(speeds)
    assert "fast model: 2 steps" in alone and "The full model would take about 10 s on this machine" in alone
