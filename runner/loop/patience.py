"""Waiting out a failing service: throttling, a lost network, a service's passing fault.

A run retries a failing call with backoff for as long as the service fails, saying so every
few seconds, until the failure has lasted longer than the run's deadline (`--give-up-after`):
then the run fails with one line instead of hanging. A stop asked meanwhile (Ctrl-C) ends the
wait at once: what was not written is not checkpointed, and the next run reads it again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from runner.backends.base import BackendError, Throttled
from runner.loop.lines import WARNING, Line

FIRST_BACKOFF_S = 0.05
MAX_BACKOFF_S = 5.0
GIVE_UP_AFTER_S = 300.0
STATUS_EVERY_S = 5.0
NAP_S = 0.5  # a wait looks for a stop request this often

T = TypeVar("T")


class GaveUp(BackendError):
    """A service kept failing for longer than the run waits for it."""


class Abandoned(Exception):
    """A stop was asked while waiting for a failing service: what waited is left unwritten."""


def backoff_cap(attempt: int) -> float:
    """The longest wait before retry number `attempt` (from 0): doubling, capped."""
    return min(MAX_BACKOFF_S, FIRST_BACKOFF_S * (2 ** min(attempt, 20)))


class Patience:
    """How a run waits for a failing service: by its clock and sleep, within a deadline."""

    def __init__(
        self,
        *,
        give_up_after: float | None = None,
        service: str = "the target",
        report: Callable[[str], None] = lambda line: None,
        stopping: threading.Event | None = None,
        status_every: float = STATUS_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        note: Callable[[BackendError], str | None] = lambda error: None,
    ) -> None:
        self.give_up_after = give_up_after  # None: wait for as long as it takes
        self.service = service  # what is waited for, e.g. "the aws target"
        self.report = report
        self.stopping = stopping  # None: nothing asks the waits to stop
        self.status_every = status_every
        self.clock = clock
        self.sleep = sleep
        self.note = note  # what to add to a status line about `error`, e.g. the lease's state
        self._next_status = 0.0
        self._status_lock = threading.Lock()  # calls made at once wait in several threads

    def failing(self, error: BackendError, since: float) -> None:
        """Note that a call has failed with `error` since `since` (by the clock): says so once
        it has lasted `status_every`, and every `status_every` after; raises GaveUp once it has
        lasted `give_up_after`."""
        now = self.clock()
        lasted = now - since
        limit = self.give_up_after
        if limit is not None and lasted >= limit:
            raise GaveUp(
                f"gave up waiting for {self.service} after {limit:g} s (--give-up-after): "
                f"{error}; the next run reads again what this one did not checkpoint"
            )
        with self._status_lock:
            due = lasted >= self.status_every and now >= self._next_status
            if due:
                self._next_status = now + self.status_every
        if due:
            left = "" if limit is None else f"; gives up in {limit - lasted:.0f} s"
            note = self.note(error)
            self.report(
                Line(
                    f"waiting for {self.service}: {error} (retrying for {lasted:.0f} s{left})"
                    + (f" ({note})" if note else ""),
                    WARNING,
                )
            )

    def wait(self, error: BackendError, since: float, seconds: float) -> None:
        """Wait `seconds` before trying again a call that has failed since `since`; raises
        GaveUp past the deadline, Abandoned as soon as a stop is asked."""
        self.failing(error, since)
        if self.give_up_after is not None:  # the last try is made at the deadline, not after
            seconds = min(seconds, since + self.give_up_after - self.clock())
        while True:
            if self.stopping is not None and self.stopping.is_set():
                raise Abandoned(str(error))
            if seconds <= 0:
                return
            nap = seconds if self.stopping is None else min(seconds, NAP_S)
            self.sleep(nap)
            seconds -= nap

    def check_stop(self, error: BackendError) -> None:
        """Raise Abandoned if a stop was asked: a retry after a partial failure (no wait for a
        failing service, so no deadline) still ends at a stop."""
        if self.stopping is not None and self.stopping.is_set():
            raise Abandoned(str(error))

    def retry(self, call: Callable[[], T]) -> T:
        """call(), again and again with backoff while it raises Throttled."""
        since: float | None = None
        attempt = 0
        while True:
            started = self.clock()
            try:
                return call()
            except Throttled as error:
                since = started if since is None else since
                self.wait(error, since, backoff_cap(attempt))
            attempt += 1
