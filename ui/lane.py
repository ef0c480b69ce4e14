"""The sampling lane: one stretch of network work at a time, handed out first come, first served.

Every tab's drawing goes through ``App.run`` (or holds the lane itself), so one sampling request runs
at a time whatever listener or concurrency group it came from. An export takes the lane once per batch
and goes to the back of the line after each, so a request made while an export runs waits for at most
one export batch. The lane is fair (a ticket line, not a bare lock, which may hand itself back to the
thread that just released it), and a waiter that gives up leaves the line without blocking it.
"""
from __future__ import annotations

import threading
from collections import deque
from contextlib import contextmanager


class SamplingLane:
    """``with lane.turn(): ...`` runs the block when every earlier caller's block has finished."""

    def __init__(self):
        self._cond = threading.Condition()
        self._line: deque[object] = deque()

    @contextmanager
    def turn(self):
        ticket = object()
        with self._cond:
            self._line.append(ticket)
            try:
                self._cond.wait_for(lambda: self._line[0] is ticket)
            except BaseException:
                self._line.remove(ticket)
                self._cond.notify_all()
                raise
        try:
            yield
        finally:
            with self._cond:
                self._line.popleft()
                self._cond.notify_all()

    def waiting(self) -> int:
        """How many callers are in line, the one running included."""
        with self._cond:
            return len(self._line)
