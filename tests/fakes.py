"""Fakes shared by the tests: a clock that moves only when told, and faults of the AWS run lease."""

import threading
import time

from botocore.exceptions import ReadTimeoutError

from runner.backends.aws import AwsBackend, LeaseTiming


class VirtualClock:
    """A monotonic clock that moves only when told. `advance` moves it on; `sleep` moves it on
    when called in the driving thread (the one that made the clock, unless `driver` is set),
    and in any other thread (a lease's renewals) waits until the clock has moved that far."""

    def __init__(self) -> None:
        self.now = 0.0
        self.driver = threading.current_thread()
        self.waiting = 0  # threads waiting in `sleep`
        self._moved = threading.Condition()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        with self._moved:
            self.now += seconds
            self._moved.notify_all()

    def sleep(self, seconds: float) -> None:
        if threading.current_thread() is self.driver:
            self.advance(seconds)
            return
        with self._moved:
            until = self.now + seconds
            self.waiting += 1
            self._moved.wait_for(lambda: self.now >= until)
            self.waiting -= 1


def lease_on(clock: VirtualClock, while_waiting=lambda: None) -> AwsBackend:
    """An AwsBackend whose run lease keeps time by `clock`; `while_waiting` is called after
    each wait in the clock's driving thread (a run waiting for the lease), not in renewals."""

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        if threading.current_thread() is clock.driver:
            while_waiting()

    return AwsBackend("us-east-1", poll_s=0, lease=LeaseTiming(clock=clock, sleep=sleep))


class HungRenewals:
    """The AWS backend's lease renewals, made to hang until `resume()`; then each fails as a
    timed-out call would. `hanging` is set once one hangs."""

    def __init__(self, backend: AwsBackend) -> None:
        self.hanging = threading.Event()
        self._resumed = threading.Event()
        backend._lease_client().meta.events.register("before-call.dynamodb.UpdateItem", self._hang)

    def resume(self) -> None:
        self._resumed.set()

    def _hang(self, **_) -> None:
        self.hanging.set()
        self._resumed.wait()
        raise ReadTimeoutError(endpoint_url="https://dynamodb.us-east-1.amazonaws.com/")


def wait_until(condition, timeout: float = 10.0) -> None:
    """Wait for another thread to make `condition()` true, polling briefly."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.005)
