"""The app's one torch thread (ui/worker.py): calls run there, in order, and a long task answers the
requests that wait between its steps, a crowd several at a time."""
import threading
import time

import pytest

from ui.worker import TorchWorker


def test_calls_run_on_the_worker_in_order_and_raise_what_they_raised():
    worker = TorchWorker("test")
    order = []
    futures = [worker.submit(lambda i=i: order.append((i, threading.current_thread().name))) for i in range(5)]
    for f in futures:
        f.result(timeout=10)
    assert order == [(i, "test") for i in range(5)]
    with pytest.raises(ZeroDivisionError):
        worker.call(lambda: 1 / 0)
    assert worker.call(lambda: worker.call(lambda: 7)) == 7  # inline when already on the worker
    with pytest.raises(RuntimeError, match="worker thread only"):
        worker.serve_waiting()


def crowd_during_a_long_task(more_people: bool, at_most: int):
    """A long task (10 'steps') runs on the worker; 6 callers arrive one after another, each only once the
    one before was answered (as the sampling lane lets them in). Returns how many the task served per step."""
    worker = TorchWorker("test")
    line = {"waiting": 6}
    started = threading.Event()
    per_step = []

    def long_task():
        started.set()
        for _ in range(10):
            time.sleep(0.02)  # a training step
            per_step.append(worker.serve_waiting(more=(lambda: line["waiting"] > 0) if more_people else None,
                                                 at_most=at_most, patience=1.0))
        return "trained"

    job = worker.submit(long_task)
    started.wait(10)

    def caller():
        for _ in range(6):
            worker.call(time.sleep, 0.001)
            line["waiting"] -= 1

    people = threading.Thread(target=caller)
    people.start()
    people.join(30)
    assert job.result(timeout=30) == "trained" and line["waiting"] == 0
    return per_step


def test_a_crowd_is_served_together_between_two_steps_up_to_a_cap():
    assert crowd_during_a_long_task(more_people=True, at_most=8)[:2] in ([6, 0], [0, 6])  # all six in one pause
    capped = crowd_during_a_long_task(more_people=True, at_most=4)
    assert max(capped) == 4 and sum(capped) == 6  # the long task moves on after four
    one_by_one = crowd_during_a_long_task(more_people=False, at_most=8)
    assert max(one_by_one) == 1  # without a line to look at: one per step
