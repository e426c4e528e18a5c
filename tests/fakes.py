"""Fakes shared by the tests: a failing disk, a clock that moves only when told, and faults
of the AWS run lease."""

import errno
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from botocore.exceptions import ReadTimeoutError

from runner.backends.aws import AwsBackend, LeaseTiming


class FailingDisk:
    """Under `folder`, the disk fails as a full (ENOSPC) or a read-only (EROFS) one does, for
    what goes through `os`: making a folder, opening a file to write, writing to a file
    opened there. A full disk opens files and fails their writes, after storing `keep` bytes
    of the first one (a disk filling up mid-write); a read-only one refuses to make or open.
    Tests run as root, where chmod stops no write: hence this fake. `heal()` ends it."""

    WRITING = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def __init__(self, monkeypatch, folder: Path, code: int = errno.ENOSPC, keep: int = 0):
        self.folder = os.path.abspath(folder)
        self.code = code
        self.keep = keep
        self.failing = True
        self._files: set[int] = set()  # descriptors opened under the folder
        self._real = {
            name: getattr(os, name) for name in ("open", "close", "mkdir", "write", "pwrite")
        }
        for name in self._real:
            monkeypatch.setattr(os, name, getattr(self, f"_{name}"))

    def heal(self) -> None:
        self.failing = False

    def _error(self, path: object = None) -> OSError:
        return OSError(self.code, os.strerror(self.code), *([path] if path else []))

    def _under(self, path: object) -> bool:
        where = os.path.abspath(os.fsdecode(path))
        return self.failing and (where == self.folder or where.startswith(self.folder + os.sep))

    def _open(self, path, flags, mode=0o777, **kwargs):
        if self._under(path) and flags & self.WRITING and self.code != errno.ENOSPC:
            raise self._error(path)
        fd = self._real["open"](path, flags, mode, **kwargs)
        if self._under(path):
            self._files.add(fd)
        else:
            self._files.discard(fd)  # a number reused after a close os did not see
        return fd

    def _close(self, fd):
        self._files.discard(fd)
        return self._real["close"](fd)

    def _mkdir(self, path, mode=0o777, **kwargs):
        if self._under(path) and self.code != errno.ENOSPC and not os.path.exists(path):
            raise self._error(path)
        return self._real["mkdir"](path, mode, **kwargs)

    def _write(self, fd, data):
        if fd not in self._files or not self.failing:
            return self._real["write"](fd, data)
        if self.keep:
            kept, self.keep = self.keep, 0
            return self._real["write"](fd, bytes(data[:kept]))
        raise self._error()

    def _pwrite(self, fd, data, offset):
        if fd in self._files and self.failing:
            raise self._error()
        return self._real["pwrite"](fd, data, offset)


PIPELINE = f"{sys.executable} -m runner"


def with_own_mounts(script: str) -> subprocess.CompletedProcess:
    """Run a shell script as root of its own user and mount namespaces, where it may mount a
    tiny tmpfs (a disk that fills up) or a read-only bind: the real faults, for what the fake
    above cannot reach. Skips the test where the system does not allow it."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"]).returncode:
        pytest.skip("needs user namespaces (unshare -rm) to mount a faulty disk")
    return subprocess.run(
        ["unshare", "-rm", "sh", "-c", f"set -u\n{script}"], capture_output=True, text=True
    )


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
    """The AWS backend's lease renewals, made to hang until `resume()`; then the one hanging
    fails as a timed-out call would, and the next ones get through. `hanging` is set once one
    hangs."""

    def __init__(self, backend: AwsBackend) -> None:
        self.hanging = threading.Event()
        self._resumed = threading.Event()
        backend._lease_client().meta.events.register("before-call.dynamodb.UpdateItem", self._hang)

    def resume(self) -> None:
        self._resumed.set()

    def _hang(self, **_) -> None:
        if self._resumed.is_set():
            return
        self.hanging.set()
        self._resumed.wait()
        raise ReadTimeoutError(endpoint_url="https://dynamodb.us-east-1.amazonaws.com/")


def wait_until(condition, timeout: float = 10.0) -> None:
    """Wait for another thread to make `condition()` true, polling briefly."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.005)
