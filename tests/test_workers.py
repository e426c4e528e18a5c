"""Calls made at once: every one of them, or, once one fails, no new one, the others stopped
before their next request, and the first error raised once all have ended."""

import threading

import pytest

from runner.backends.base import BackendError
from runner.loop.workers import Stopped, Workers


def test_with_one_worker_the_calls_are_made_in_turn_in_the_callers_thread():
    made = []
    calls = [lambda stop, n=n: made.append((n, threading.current_thread().name)) for n in range(3)]

    Workers(1, "writer").all(calls)

    assert made == [(0, "MainThread"), (1, "MainThread"), (2, "MainThread")]


def test_with_one_worker_the_first_error_ends_the_calls():
    made = []

    def refused(stop):
        raise BackendError("stream 'out' refused 1 records")

    with pytest.raises(BackendError, match="refused"):
        Workers(1, "writer").all([refused, lambda stop: made.append("after")])
    assert made == []


def test_the_calls_are_made_at_once_and_all_have_ended_when_it_returns():
    together = threading.Barrier(3, timeout=10)  # broken unless the three wait at once
    ended = []

    def call(stop):
        together.wait()
        ended.append(threading.current_thread().name.startswith("writer"))

    workers = Workers(3, "writer")
    workers.all([call] * 3)
    workers.close()

    assert ended == [True, True, True]


def test_once_a_call_fails_the_others_stop_none_begins_and_the_first_error_is_raised():
    under_way = threading.Event()
    seen = []

    def refused(stop):
        under_way.wait(timeout=10)
        raise BackendError("stream 'out' refused 1 records")

    def retrying(stop):  # between two requests, it sees the stop
        under_way.set()
        assert stop.wait(timeout=10)
        seen.append("stopped")
        raise Stopped("stream 'out': stopped with entries left to put")

    def queued(stop):  # both workers are busy until one has failed
        seen.append("made")

    workers = Workers(2, "writer")
    with pytest.raises(BackendError, match="refused"):
        workers.all([refused, retrying, queued, queued])
    workers.close()

    assert seen == ["stopped"]
