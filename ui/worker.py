"""The app's one torch thread: every model load, sampling request and training step runs on it.

Why: PyTorch's CPU kernels run on an OpenMP team, and libgomp keeps one team per Python thread that ran
a parallel region. When the main thread had loaded the models and Gradio's worker threads then sampled,
two teams shared two cores; libgomp then sleeps idle threads at once instead of spinning, and every
parallel region paid the wake-ups: the default request took 2.0 s in the app against 1.3 s in a script
(benchmarks/app_threads.py measures it). With all torch work on one dedicated thread there is one team.

Requests are run in arrival order. A long job (a training run) calls ``serve_waiting()`` between its steps,
so requests that arrived meanwhile are answered between two steps instead of after the whole run (a crowd
several at a time: one training step per request made a class of 30 wait 27 s at p95 instead of 14 s).
"""
from __future__ import annotations

import contextvars
import queue
import threading
from concurrent.futures import Future


class TorchWorker:
    """A thread that runs submitted calls one at a time, in order; ``call`` waits for the result and
    raises what the call raised. Each call runs in a copy of the caller's context variables (Gradio's
    progress bars find their request through them)."""

    def __init__(self, name: str = "torch"):
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._count = 0  # tasks queued or running
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self.thread.start()

    # ---- the caller's side ----------------------------------------------------------------------
    def submit(self, fn, *args, **kwargs) -> Future:
        """Queue ``fn(*args, **kwargs)``; its Future holds the result."""
        future: Future = Future()
        with self._lock:
            self._count += 1
        self._tasks.put((contextvars.copy_context(), fn, args, kwargs, future))
        return future

    def call(self, fn, *args, **kwargs):
        """Run ``fn`` on the worker and return its result (inline when already on the worker)."""
        if threading.current_thread() is self.thread:
            return fn(*args, **kwargs)
        return self.submit(fn, *args, **kwargs).result()

    def waiting(self) -> int:
        """Tasks queued or running."""
        with self._lock:
            return self._count

    # ---- the worker's side ----------------------------------------------------------------------
    def serve_waiting(self, more=None, at_most: int = 1, patience: float = 0.05) -> int:
        """On the worker, inside a long task: run the tasks that were queued when called; returns how many.
        With ``more`` (a callable saying whether callers are on their way, e.g. a sampling line that is not
        empty), go on serving while it says so, waiting up to ``patience`` seconds for each next task, until
        ``at_most`` tasks ran: a crowd is answered together between two steps, and the long task still moves."""
        if threading.current_thread() is not self.thread:
            raise RuntimeError("serve_waiting runs on the worker thread only")
        served = 0
        for _ in range(self._tasks.qsize()):
            try:
                task = self._tasks.get_nowait()
            except queue.Empty:
                break
            self._run(*task)
            served += 1
        while more is not None and served < at_most and more():
            try:
                task = self._tasks.get(timeout=patience)
            except queue.Empty:
                break
            self._run(*task)
            served += 1
        return served

    def _run(self, context, fn, args, kwargs, future: Future) -> None:
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(context.run(fn, *args, **kwargs))
            except BaseException as err:  # the caller re-raises it
                future.set_exception(err)
        with self._lock:
            self._count -= 1

    def _loop(self) -> None:
        while True:
            self._run(*self._tasks.get())


_WORKER: TorchWorker | None = None
_WORKER_LOCK = threading.Lock()


def torch_worker() -> TorchWorker:
    """The process's torch thread (started on first use)."""
    global _WORKER
    with _WORKER_LOCK:
        if _WORKER is None:
            _WORKER = TorchWorker()
        return _WORKER
