"""Waiting out a failing service: what a run says while it waits, its deadline, and a stop."""

import threading

import pytest

from runner.backends.base import Throttled
from runner.loop.patience import Abandoned, GaveUp, Patience

LOST = Throttled("stream 'out': Could not connect to the endpoint URL: \"http://127.0.0.1:9/\"")


class Fails:
    """A call that raises `LOST` its first `times` calls, then answers 7."""

    def __init__(self, times):
        self.times = times
        self.calls = 0

    def __call__(self):
        self.calls += 1
        if self.calls <= self.times:
            raise LOST
        return 7


def patience(lines, **options):
    """A Patience on a fake clock that its sleep moves on."""
    now = [0.0]
    options.setdefault("stopping", threading.Event())
    waits = Patience(
        service="the aws target",
        report=lines.append,
        clock=lambda: now[0],
        sleep=lambda seconds: now.__setitem__(0, now[0] + seconds),
        **options,
    )
    return waits, now


def test_a_failing_call_is_retried_and_said_every_five_seconds_until_it_answers():
    lines = []
    waits, now = patience(lines, give_up_after=300)

    assert waits.retry(Fails(times=10)) == 7
    assert lines == [
        f"waiting for the aws target: {LOST} (retrying for 6 s; gives up in 294 s)",
        f"waiting for the aws target: {LOST} (retrying for 11 s; gives up in 289 s)",
        f"waiting for the aws target: {LOST} (retrying for 16 s; gives up in 284 s)",
    ]


def test_a_short_failure_says_nothing():
    lines = []
    waits, now = patience(lines, give_up_after=300)

    assert waits.retry(Fails(times=5)) == 7  # 1.55 s of backoff
    assert lines == []


def test_a_call_failing_longer_than_the_deadline_gives_up_with_one_line_at_the_deadline():
    lines = []
    waits, now = patience(lines, give_up_after=30, status_every=10)
    call = Fails(times=1000)

    with pytest.raises(GaveUp) as error:
        waits.retry(call)
    assert str(error.value) == (
        f"gave up waiting for the aws target after 30 s (--give-up-after): {LOST}; "
        "the next run reads again what this one did not checkpoint"
    )
    assert now[0] == 30  # the last try was made at the deadline, not after it
    assert lines == [
        f"waiting for the aws target: {LOST} (retrying for 11 s; gives up in 19 s)",
        f"waiting for the aws target: {LOST} (retrying for 21 s; gives up in 9 s)",
    ]


def test_a_stop_asked_during_a_wait_ends_it_at_once():
    lines = []
    stopping = threading.Event()
    waits, now = patience(lines, give_up_after=300, stopping=stopping)
    sleep = waits.sleep

    def sleep_then_stop(seconds):
        sleep(seconds)
        if now[0] >= 12:
            stopping.set()  # as Ctrl-C does, from the signal handler

    waits.sleep = sleep_then_stop

    with pytest.raises(Abandoned) as abandoned:
        waits.retry(Fails(times=1000))
    assert str(abandoned.value) == str(LOST)
    assert 12 <= now[0] <= 12.5  # within one nap of the stop, not at the end of a backoff


def test_without_a_deadline_it_waits_as_long_as_it_takes():
    lines = []
    waits, now = patience(lines, give_up_after=None, status_every=3600)

    assert waits.retry(Fails(times=2000)) == 7
    assert now[0] > 9000
    assert lines == [
        f"waiting for the aws target: {LOST} (retrying for {hour} s)" for hour in (3601, 7201)
    ]


def test_calls_failing_at_once_say_so_once_between_them():
    # Lanes and checkpoints wait in threads of their own: one saying so while another fails
    # too (here, as soon as the first begins to say so) makes one line, not two.
    lines = []
    waits, now = patience(lines, give_up_after=300)

    def report(line):
        lines.append(line)
        waits.failing(LOST, since=0.0)  # another call, failing since as long

    waits.report = report
    now[0] = 6.0

    waits.failing(LOST, since=0.0)

    assert lines == [f"waiting for the aws target: {LOST} (retrying for 6 s; gives up in 294 s)"]
