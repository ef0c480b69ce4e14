"""The scheduler: the one line all torch work of the app waits in, and the one thread it runs on.

Every model load, sampling request, noise picture and training of every tab and API route is a job
submitted here (``run``). Each job says what it costs (``Work``): the budget is checked when it is
submitted, so no route can ask for more than MAX_WORK network rows in one job.

One thread: PyTorch's CPU kernels run on an OpenMP team, and libgomp keeps one team per Python thread that
ran a parallel region. When the main thread had loaded the models and Gradio's worker threads then sampled,
two teams shared two cores; libgomp then sleeps idle threads at once instead of spinning, and every
parallel region paid the wake-ups: the default request took 2.0 s in the app against 1.3 s in a script
(benchmarks/app_threads.py measures it). With all torch work on one dedicated thread there is one team.

One line, first come first served: a job waits for every job submitted before it, whatever tab it came
from, and the line knows each job's place and the estimated seconds before it (a running mean of each
kind's seconds per network row, learned from its larger jobs), for the progress text and Context's
deep-line rule. An export submits one batch per job, so it goes to the back of the line after each. A job
whose client has gone (a closed page: Gradio marks its event not alive) is dropped before it starts, and
stops at its next ``checkpoint()``. A long job (a training) calls ``serve_waiting()`` between its steps, so the jobs that
wait are answered between two steps instead of after the whole run (a crowd several at a time: one
request per training step made a class of 30 wait 27 s at p95 instead of 14 s).
"""
from __future__ import annotations

import contextvars
import threading
import time
from collections import deque
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

import gradio as gr

from diffusion_core.pipeline import NETWORK_ROWS

# The work budget of one request: images x steps x network branches (two under classifier-free guidance
# or autoguidance, one otherwise), i.e. image rows through the network. 16 images at 1000 guided DDPM
# steps, the largest request the app allowed before the budget counted branches; the default Context
# request is 640 (16 x 20 x 2), about a second on 2 cores in bf16. An export counts all its images.
MAX_WORK = 32_000
PRIOR_SECONDS_PER_ROW = 2.0 / 640  # a kind not yet timed: the default Context request's 2 s for 640 rows
LEARN_ROWS = 256  # only jobs this large teach a kind's speed: a small one's fixed costs would inflate it


def check_work(num_images: int, steps: int, branches: int = 1, what: str = "this request") -> int:
    """``num_images`` x ``steps`` x ``branches`` against MAX_WORK; raises gr.Error naming the budget."""
    work = num_images * steps * branches
    if work > MAX_WORK:
        each = f" x {branches} network branches (guidance)" if branches > 1 else ""
        raise gr.Error(f"work budget: {what} needs {num_images:,} images x {steps} steps{each} = {work:,} network "
                       f"rows, over the limit of {MAX_WORK:,} per request; lower the images or the steps")
    return work


@dataclass(frozen=True)
class Work:
    """What a job costs: ``images`` x ``steps`` x ``branches`` network rows (none for a job that runs no
    sampling, e.g. a model load or a training, which is bounded by its own limits), and the ``kind`` whose
    measured speed estimates its seconds (the model that draws)."""
    kind: str
    images: int = 0
    steps: int = 0
    branches: int = 1
    what: str = "this request"

    @property
    def rows(self) -> int:
        """The budget's count (check_work): images x steps x branches."""
        return self.images * self.steps * self.branches

    @property
    def network_rows(self) -> int:
        """What the network computes, which is what the job's seconds follow: each branch's images padded to
        whole chunks of NETWORK_ROWS (pipeline.py), so 2 pictures cost a step as much as 16."""
        return -(-self.images // NETWORK_ROWS) * NETWORK_ROWS * self.steps * self.branches


class ClientGone(Exception):
    """The page (or API client) that asked for a job went away; the job was dropped or stopped."""


def _never() -> bool:
    return False


def client_gone_check():
    """A callable saying whether the Gradio event being handled has lost its client (the page closed or the
    event was cancelled); one that always says no outside a Gradio event (a script, a test)."""
    from gradio.context import LocalContext

    blocks, event_id = LocalContext.blocks.get(None), LocalContext.event_id.get(None)
    queue = getattr(blocks, "_queue", None)
    if queue is None or event_id is None:
        return _never

    def gone() -> bool:  # gradio's queue: an event whose SSE stream closed is marked not alive
        try:
            events = [event for job in list(queue.active_jobs) if job for event in job if event._id == event_id]
            return bool(events) and not any(event.alive for event in events)
        except (AttributeError, TypeError):  # another gradio's queue: do not guess
            return False

    return gone


class Job:
    """One submitted call: its work, the caller's context variables (Gradio's progress bars and the
    client check find their request through them), and a Future with its result."""

    def __init__(self, work: Work, fn, args, kwargs, gone):
        self.work, self.fn, self.args, self.kwargs, self.gone = work, fn, args, kwargs, gone
        self.context = contextvars.copy_context()
        self.future: Future = Future()
        self.started: float | None = None

    def cancel(self) -> bool:
        """Drop the job if it has not started (True), else False."""
        return self.future.cancel()


class Scheduler:
    """The line and its thread: ``run(work, fn, ...)`` queues ``fn(...)`` and returns its result."""

    def __init__(self, name: str = "torch"):
        self._cond = threading.Condition()
        self._line: deque[Job] = deque()
        self._running: list[Job] = []  # the job on the thread, and any it serves between its steps
        self.seconds_per_row: dict[str, float] = {}
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self.thread.start()

    # ---- the caller's side ----------------------------------------------------------------------
    def submit(self, work: Work, fn, *args, gone=None, **kwargs) -> Job:
        """Check ``work`` against the budget (gr.Error beyond it) and queue ``fn(*args, **kwargs)``.
        ``gone`` (default: the calling Gradio event's client check) says when to drop it."""
        check_work(work.images, work.steps, work.branches, work.what)
        job = Job(work, fn, args, kwargs, gone or client_gone_check())
        with self._cond:
            self._line.append(job)
            self._cond.notify_all()
        return job

    def wait(self, job: Job, on_wait=None, every: float = 0.5):
        """The job's result (or what it raised); until it starts, ``on_wait(place, seconds_ahead)`` every
        ``every`` seconds."""
        while True:
            self.tell_place(job, on_wait)
            try:
                return job.future.result(timeout=every)
            except FutureTimeout:
                pass

    def tell_place(self, job: Job, on_wait) -> None:
        """``on_wait(place, seconds_ahead)`` while the job waits (see ``place``)."""
        if on_wait is not None and (where := self.place(job))[0]:
            on_wait(*where)

    def run(self, work: Work, fn, *args, on_wait=None, **kwargs):
        """``submit`` and ``wait``; inline when already on the thread (a job's own calls)."""
        if threading.current_thread() is self.thread:
            check_work(work.images, work.steps, work.branches, work.what)
            return fn(*args, **kwargs)
        return self.wait(self.submit(work, fn, *args, **kwargs), on_wait)

    def estimate(self, work: Work) -> float:
        """The seconds ``work`` should take, at its kind's measured speed."""
        return work.network_rows * self.seconds_per_row.get(work.kind, PRIOR_SECONDS_PER_ROW)

    def expect(self, kind: str, seconds: float, rows: int) -> None:
        """A prior for a kind not yet timed: ``rows`` network rows take ``seconds``."""
        self.seconds_per_row.setdefault(kind, seconds / max(rows, 1))

    def place(self, job: Job) -> tuple[int, float]:
        """(1 for the next to start, 2 for the one after, ...; 0 once started or gone) and the estimated
        seconds of the work before it, the running jobs' remainder included."""
        with self._cond:
            if job not in self._line:
                return 0, 0.0
            before = list(self._line)[:self._line.index(job)]
            return len(before) + 1, self._running_left() + sum(self.estimate(j.work) for j in before)

    def backlog(self) -> float:
        """The estimated seconds before a job submitted now would start."""
        with self._cond:
            return self._running_left() + sum(self.estimate(j.work) for j in self._line)

    def waiting(self) -> int:
        """Jobs queued or running."""
        with self._cond:
            return len(self._line) + len(self._running)

    def _running_left(self) -> float:
        now = time.monotonic()
        return sum(max(self.estimate(j.work) - (now - j.started), 0.0) for j in self._running)

    # ---- the thread's side ----------------------------------------------------------------------
    def inside_job(self) -> bool:
        """Whether the caller is a job running on the scheduler's thread."""
        return threading.current_thread() is self.thread and bool(self._running)

    def checkpoint(self) -> None:
        """Inside a job, between two steps: raise ClientGone when the running job's client has gone."""
        if self.inside_job() and self._running[-1].gone():
            raise ClientGone("the page that asked for this was closed")

    def serve_waiting(self, at_most: int = 1) -> int:
        """Inside a long job, between two of its steps: run up to ``at_most`` of the jobs that wait, in
        order; returns how many ran."""
        if threading.current_thread() is not self.thread:
            raise RuntimeError("serve_waiting runs on the scheduler's thread only")
        served = 0
        while served < at_most:
            with self._cond:
                if not self._line:
                    break
                job = self._line.popleft()
            served += self._run(job)
        return served

    def _run(self, job: Job) -> bool:
        if not job.future.set_running_or_notify_cancel():
            return False  # cancelled before it started
        if job.gone():
            job.future.set_exception(ClientGone("the page that asked for this was closed before its turn"))
            return False
        job.started = time.monotonic()
        self._running.append(job)
        result = error = None
        try:
            result = job.context.run(job.fn, *job.args, **job.kwargs)
        except BaseException as err:  # the caller re-raises it
            error = err
        with self._cond:
            self._running.pop()
        self._learn(job.work, time.monotonic() - job.started)
        job.future.set_exception(error) if error is not None else job.future.set_result(result)
        return True

    def _learn(self, work: Work, seconds: float) -> None:
        if work.network_rows >= LEARN_ROWS:
            rate = self.seconds_per_row.get(work.kind, PRIOR_SECONDS_PER_ROW)
            self.seconds_per_row[work.kind] = 0.7 * rate + 0.3 * seconds / work.network_rows

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._line)
                job = self._line.popleft()
            self._run(job)


_SCHEDULER: Scheduler | None = None
_SCHEDULER_LOCK = threading.Lock()


def scheduler() -> Scheduler:
    """The process's scheduler (its thread started on first use)."""
    global _SCHEDULER
    with _SCHEDULER_LOCK:
        if _SCHEDULER is None:
            _SCHEDULER = Scheduler()
        return _SCHEDULER
