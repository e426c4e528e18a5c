"""Calls a run makes at once. On a target whose calls wait on the network (AWS), a round's
PutRecords calls and checkpoints go out together from a few threads; on one that answers at
once (local), they are made one after the other in the run's own thread, as before.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait


class Stopped(Exception):
    """A call gave up before its next request because another call of its group failed."""


Call = Callable[[threading.Event], None]  # checks the event before each request it makes


class Workers:
    """Up to `count` threads making calls at once; with one, none: the caller's thread."""

    def __init__(self, count: int, name: str) -> None:
        self.count = count
        self._name = name
        self._pool: ThreadPoolExecutor | None = None

    def all(self, calls: Sequence[Call]) -> None:
        """Make every call and return once all have ended. Once one raises, those not begun
        are not made, those under way see their event set (and raise Stopped before their
        next request), and the first error is raised once every call has ended."""
        stop = threading.Event()
        if self.count <= 1 or len(calls) <= 1:
            for call in calls:
                call(stop)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.count, self._name)
        errors: list[BaseException] = []  # in the order they were raised
        lock = threading.Lock()

        def made(call: Call) -> None:
            if stop.is_set():  # begun after another failed: not made
                return
            try:
                call(stop)
            except BaseException as error:
                with lock:
                    errors.append(error)
                stop.set()
                raise

        futures = [self._pool.submit(made, call) for call in calls]
        try:
            wait(futures, return_when=FIRST_EXCEPTION)
        finally:  # an error, or a KeyboardInterrupt while waiting: no more calls
            if errors or not all(future.done() for future in futures):
                stop.set()
                for future in futures:
                    future.cancel()
        wait(futures)
        if errors:
            raise errors[0]

    def close(self) -> None:
        """Let the threads go once the calls under way have ended."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
