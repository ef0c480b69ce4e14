"""The app's scheduler (ui/scheduler.py): one line and one thread for all torch work. Jobs run there in
order, each checked against the work budget when submitted; the line knows each job's place and the
seconds before it; a job whose client has gone does not run; a long job answers the jobs that wait
between its steps."""
import threading
import time

import gradio as gr
import pytest

from ui.scheduler import MAX_WORK, ClientGone, Scheduler, Work

NOTHING = Work("test")


def held(scheduler):
    """A job that holds the thread until the returned event is set (and an event set once it runs)."""
    release, running = threading.Event(), threading.Event()
    job = scheduler.submit(NOTHING, lambda: running.set() or release.wait(30))
    assert running.wait(10)
    return job, release


def test_jobs_run_on_its_thread_in_order_and_raise_what_they_raised():
    scheduler = Scheduler("test")
    order = []
    jobs = [scheduler.submit(NOTHING, lambda i=i: order.append((i, threading.current_thread().name))) for i in range(5)]
    for job in jobs:
        job.future.result(timeout=10)
    assert order == [(i, "test") for i in range(5)]
    with pytest.raises(ZeroDivisionError):
        scheduler.run(NOTHING, lambda: 1 / 0)
    assert scheduler.run(NOTHING, lambda: scheduler.run(NOTHING, lambda: 7)) == 7  # inline inside a job
    assert scheduler.run(NOTHING, scheduler.inside_job) and not scheduler.inside_job()
    with pytest.raises(RuntimeError, match="scheduler's thread only"):
        scheduler.serve_waiting()


def test_work_over_the_budget_is_refused_when_submitted_and_never_runs():
    scheduler, ran = Scheduler("test"), []
    refused = rf"work budget: this drawing needs 64 images x 1000 steps x 2 .* limit of {MAX_WORK:,}"
    with pytest.raises(gr.Error, match=refused):
        scheduler.submit(Work("full", 64, 1000, 2, what="this drawing"), ran.append, 1)
    with pytest.raises(gr.Error, match="work budget"):  # on its own thread too
        scheduler.run(NOTHING, lambda: scheduler.run(Work("full", MAX_WORK + 1, 1), ran.append, 2))
    assert ran == []


def test_the_line_knows_each_place_and_the_seconds_before_it():
    scheduler = Scheduler("test")
    scheduler.expect("full", 2.0, rows=640)   # a default request: 2 s
    scheduler.expect("fast", 0.5, rows=64)
    job, release = held(scheduler)            # the running job costs nothing
    full, fast, other = Work("full", 16, 20, 2), Work("fast", 16, 4), Work("new kind", 16, 20, 2)
    waiting = [scheduler.submit(work, lambda: None) for work in (full, fast, other)]
    assert [scheduler.place(j) for j in waiting] == [(1, 0.0), (2, 2.0), (3, 2.5)]
    assert scheduler.backlog() == pytest.approx(4.5) and scheduler.waiting() == 4  # the new kind: at the prior
    release.set()
    for j in waiting:
        j.future.result(timeout=10)
    assert scheduler.place(waiting[0]) == (0, 0.0) and scheduler.backlog() == 0.0
    assert scheduler.estimate(full) < 2.0  # learned: the job took about nothing


def test_a_small_request_is_estimated_at_what_the_network_computes():
    """The network runs on whole 16-row chunks per branch: 2 pictures cost a step as much as 16, 17 as 32."""
    scheduler = Scheduler("test")
    scheduler.expect("full", 2.0, rows=640)
    two, sixteen = scheduler.estimate(Work("full", 2, 20, 2)), scheduler.estimate(Work("full", 16, 20, 2))
    assert two == pytest.approx(2.0) == sixteen
    assert scheduler.estimate(Work("full", 17, 20, 2)) == pytest.approx(4.0)
    assert Work("full", 2, 20, 2).rows == 80  # the work budget counts the pictures asked for


def test_a_job_cancelled_or_whose_client_has_gone_does_not_run_and_one_running_stops_at_its_checkpoint():
    scheduler, ran = Scheduler("test"), []
    job, release = held(scheduler)
    cancelled = scheduler.submit(NOTHING, ran.append, "cancelled")
    gone = scheduler.submit(NOTHING, ran.append, "gone", gone=lambda: True)
    kept = scheduler.submit(NOTHING, ran.append, "kept")
    assert cancelled.cancel()
    release.set()
    kept.future.result(timeout=10)
    assert ran == ["kept"]
    with pytest.raises(ClientGone):
        scheduler.wait(gone)
    left = {"gone": False}

    def steps():
        for step in range(100):
            left["gone"] = step == 3  # the page closes during step 3
            scheduler.checkpoint()
            ran.append(step)

    with pytest.raises(ClientGone):
        scheduler.run(NOTHING, steps, gone=lambda: left["gone"])
    assert ran == ["kept", 0, 1, 2]


def test_a_long_job_serves_the_waiting_jobs_between_its_steps_up_to_a_cap():
    """A long job (10 'steps') calls serve_waiting between steps; 6 jobs submitted while it runs are
    answered in its first pause when it may serve 8, in two when it may serve 4."""
    def crowd(at_most):
        scheduler, started, go = Scheduler("test"), threading.Event(), threading.Event()
        per_step = []

        def long_job():
            started.set()
            go.wait(10)
            for _ in range(10):
                time.sleep(0.01)  # a training step
                per_step.append(scheduler.serve_waiting(at_most=at_most))
            return "trained"

        job = scheduler.submit(NOTHING, long_job)
        started.wait(10)
        people = [scheduler.submit(NOTHING, time.sleep, 0.001) for _ in range(6)]
        go.set()
        assert job.future.result(timeout=30) == "trained" and all(p.future.done() for p in people)
        return per_step

    assert crowd(8)[:2] == [6, 0]
    assert crowd(4)[:3] == [4, 2, 0]


def test_every_route_of_the_app_runs_its_torch_work_inside_a_scheduler_job(vocab, tmp_path, monkeypatch):
    """Every API route of the app on a tiny text model (documented or not) is called with its controls'
    defaults (cheap ones where a default would train for minutes); every network call and every noising it
    makes must run inside a job of the scheduler. Fails if any route draws, trains or noises on its own thread."""
    import inspect

    from PIL import Image

    from app import build_app
    from conftest import text_pipeline
    from diffusion_core.schedule import NoiseSchedule
    from diffusion_core.unet import UNet
    from test_train_tab import QUIET, TINY_RUN, tiny_fast
    from ui.common import fresh_output_dir
    from ui.scheduler import scheduler

    ran: dict[str, list[bool]] = {}  # route -> for each torch call, whether it ran inside a job
    route = {"name": None}
    for cls, name in ((UNet, "forward"), (NoiseSchedule, "add_noise")):
        original = getattr(cls, name)

        def watched(*args, _original=original, **kwargs):
            ran.setdefault(route["name"], []).append(scheduler().inside_job())
            return _original(*args, **kwargs)

        monkeypatch.setattr(cls, name, watched)
    pipe = text_pipeline(vocab, default_sampling={"sampler": "ddim", "steps": 2, "guidance": 2.0})
    trained = pipe.save_pretrained(fresh_output_dir() / "trained")  # where the Train tab's models live
    Image.new("RGB", (20, 20), (255, 0, 0)).save(tmp_path / "red.png")
    upload = {"path": str(tmp_path / "red.png")}
    cheap = {  # handler name -> its arguments, where the defaults would not do
        "train_model": list({**TINY_RUN, "steps": 2, "grid_every": 1}.values()),
        "draw": [str(trained), ["a"], 3, 2.0, 2, 0],
        "forward_process": [0, upload, 10, "linear"],
        "load_example": [(0, [])],  # gradio's own: fills in a preset
    }
    demo = build_app(pipe, "Weights: tiny.", tiny_fast(pipe))
    refused = {}
    for fn in demo.fns.values():
        if not fn.api_name or fn.fn is None:  # (a listener that only cancels others runs nothing)
            continue
        args = cheap.get(fn.fn.__name__, [getattr(c, "value", None) for c in fn.inputs])
        if fn.api_name.startswith("live_"):
            args = [True, *args[1:]]  # the live switch on
        kwargs = {"progress": QUIET} if "progress" in inspect.signature(fn.fn).parameters else {}
        route["name"] = fn.api_name
        start = time.perf_counter()
        try:
            out = fn.fn(*args, **kwargs)
            if inspect.isgenerator(out):
                list(out)
        except gr.Error as err:  # a default that asks for something first (a recorded animation, an example)
            refused[fn.api_name] = err.message
        print(f"{fn.api_name}: {time.perf_counter() - start:.2f} s")
    outside = sorted(name for name, inside in ran.items() if not all(inside))
    assert not outside, f"torch work outside the scheduler in {outside}"
    drew = {"generate", "generate_context", "live_generate_context", "prompt", "animate", "forward_process", "compare",
            "side_by_side", "train", "train_draw", "export_dataset"}
    assert drew <= set(ran), (drew - set(ran), refused)


def test_a_request_whose_page_closed_while_it_waited_is_never_drawn(tiny_pipeline):
    """A served app: one Context request holds the network; a second, from another page, waits in the
    scheduler's line; that page closes (its event stream ends). When the line reaches it, it is dropped."""
    import httpx

    from app import build_app
    from test_app import Gate, free_port

    seeds = []
    generate = tiny_pipeline.generate
    tiny_pipeline.generate = lambda **kwargs: seeds.append(kwargs["seed"]) or generate(**kwargs)
    gate = Gate(tiny_pipeline.model)
    gate.open.clear()
    demo = build_app(tiny_pipeline, "Weights: tiny.")
    _, url, _ = demo.launch(prevent_thread_lock=True, server_port=free_port(), quiet=True)
    (index,) = [i for i, fn in demo.fns.items() if fn.api_name == "generate_context"]
    try:
        def join(seed, session):
            data = [1.0, 0.0, 0.0, "any", 2.0, "ddim", 2, 1, seed, "full"]
            httpx.post(f"{url}gradio_api/queue/join", json={"data": data, "fn_index": index, "session_hash": session},
                       timeout=10).raise_for_status()

        join(1, "holder")
        with httpx.stream("GET", f"{url}gradio_api/queue/data", params={"session_hash": "holder"}, timeout=60) as held:
            deadline = time.time() + 60
            while gate.running == 0 and time.time() < deadline:
                time.sleep(0.05)
            join(2, "leaver")
            with httpx.stream("GET", f"{url}gradio_api/queue/data", params={"session_hash": "leaver"},
                              timeout=60) as stream:
                for line in stream.iter_lines():  # its progress says its place in the scheduler's line
                    if "number 2 in line" in line or "number 1 in line" in line:
                        break
            # the page is closed; gradio notices at its next message (the place, every half second)
            time.sleep(3)
            gate.open.set()
            for line in held.iter_lines():
                if "process_completed" in line:
                    break
        time.sleep(1)
        assert seeds == [1]
    finally:
        gate.open.set()
        demo.close()
