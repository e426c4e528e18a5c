"""Fakes shared by the tests: a failing disk, clocks that move only when told, a backend with
faults injected, and faults of the AWS run lease."""

import contextlib
import datetime
import errno
import inspect
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ReadTimeoutError

from runner.backends.aws import AwsBackend, LeaseTiming
from runner.backends.base import (
    Backend,
    BackendError,
    FirehoseDescription,
    FunctionDescription,
    Lease,
    MappingDescription,
    PutResult,
    RecordBatch,
    RoleDescription,
    Shard,
    StreamDescription,
)


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


# GetRecords' default limit: the interface's own, wherever its constant lives.
GET_RECORDS_LIMIT = inspect.signature(Backend.get_records).parameters["limit"].default


class FaultyBackend(Backend):
    """`backend` as the code under test sees it, with faults injected: each keyword names a
    method of Backend and gives a function called in its place as `fault(call, *arguments)`,
    where `call` is the wrapped backend's method; it may raise, answer something else, or call
    through. `called` counts the calls of each method.

    Every method of Backend is passed on by name, not through __getattr__: an abstract method
    added to Backend makes this fake fail to instantiate until it is passed on here too, and
    test_fakes fails for any other."""

    def __init__(self, backend: Backend, **faults: Callable[..., Any]) -> None:
        unknown = sorted(name for name in faults if not callable(getattr(Backend, name, None)))
        if unknown:
            raise TypeError(f"Backend has no method {', '.join(unknown)}")
        self.backend = backend
        self._faults = faults
        self.called: Counter[str] = Counter()
        self.read_workers = backend.read_workers  # a test may change it
        self.write_workers = backend.write_workers  # and this

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        self.called[method] += 1
        call = getattr(self.backend, method)
        fault = self._faults.get(method)
        return fault(call, *args, **kwargs) if fault else call(*args, **kwargs)

    @property
    def name(self) -> str:
        return self.backend.name

    @property
    def region(self) -> str:
        return self.backend.region

    @property
    def partition(self) -> str:
        return self.backend.partition

    @property
    def delivers_firehoses(self) -> bool:
        return self.backend.delivers_firehoses

    @property
    def runs_functions(self) -> bool:
        return self.backend.runs_functions

    @property
    def location(self) -> str:
        return self.backend.location

    @property
    def account_id(self) -> str:
        return self.backend.account_id

    def describe_stream(self, name: str) -> StreamDescription | None:
        return self._call("describe_stream", name)

    def create_stream(self, name: str, shards: int, owner: str | None = None) -> None:
        return self._call("create_stream", name, shards, owner)

    def update_shard_count(self, name: str, shards: int) -> None:
        return self._call("update_shard_count", name, shards)

    def delete_stream(self, name: str) -> None:
        return self._call("delete_stream", name)

    def require_stream(self, name: str) -> None:
        return self._call("require_stream", name)

    def list_shards(self, stream: str) -> list[Shard]:
        return self._call("list_shards", stream)

    def get_shard_iterator(
        self,
        stream: str,
        shard_id: str,
        iterator_type: str,
        sequence: str | None = None,
        timestamp: datetime.datetime | None = None,
    ) -> str:
        return self._call(
            "get_shard_iterator",
            stream,
            shard_id,
            iterator_type,
            sequence=sequence,
            timestamp=timestamp,
        )

    def latest_iterator(self, stream: str, shard_id: str) -> tuple[str, str]:
        return self._call("latest_iterator", stream, shard_id)

    def get_records(self, iterator: str, limit: int = GET_RECORDS_LIMIT) -> RecordBatch:
        return self._call("get_records", iterator, limit)

    def put_records(self, stream: str, entries: Sequence[tuple[bytes, str]]) -> list[PutResult]:
        return self._call("put_records", stream, entries)

    def get_checkpoints(self, pipeline: str, stream: str) -> dict[str, str]:
        return self._call("get_checkpoints", pipeline, stream)

    def set_checkpoint(self, pipeline: str, stream: str, shard_id: str, sequence: str) -> None:
        return self._call("set_checkpoint", pipeline, stream, shard_id, sequence)

    def forget_earlier_checkpoints(self, pipeline: str, stream: str) -> None:
        return self._call("forget_earlier_checkpoints", pipeline, stream)

    def bucket_exists(self, name: str) -> bool:
        return self._call("bucket_exists", name)

    def create_bucket(self, name: str, owner: str | None = None) -> None:
        return self._call("create_bucket", name, owner)

    def delete_bucket(self, name: str) -> None:
        return self._call("delete_bucket", name)

    def put_object(self, bucket: str, key: str, body: bytes) -> None:
        return self._call("put_object", bucket, key, body)

    def list_objects(self, bucket: str, prefix: str = "") -> list[str]:
        return self._call("list_objects", bucket, prefix)

    def get_object(self, bucket: str, key: str) -> bytes:
        return self._call("get_object", bucket, key)

    def describe_firehose(self, name: str) -> FirehoseDescription | None:
        return self._call("describe_firehose", name)

    def create_firehose(self, firehose: FirehoseDescription, owner: str | None = None) -> None:
        return self._call("create_firehose", firehose, owner)

    def update_firehose(self, firehose: FirehoseDescription) -> None:
        return self._call("update_firehose", firehose)

    def delete_firehose(self, name: str) -> None:
        return self._call("delete_firehose", name)

    def describe_role(self, name: str) -> RoleDescription | None:
        return self._call("describe_role", name)

    def put_role(self, role: RoleDescription, owner: str | None = None) -> None:
        return self._call("put_role", role, owner)

    def delete_role(self, name: str) -> None:
        return self._call("delete_role", name)

    def describe_log_group(self, group: str) -> list[str] | None:
        return self._call("describe_log_group", group)

    def create_log_stream(self, group: str, stream: str, owner: str | None = None) -> None:
        return self._call("create_log_stream", group, stream, owner)

    def delete_log_group(self, group: str) -> None:
        return self._call("delete_log_group", group)

    def describe_function(self, name: str) -> FunctionDescription | None:
        return self._call("describe_function", name)

    def create_function(
        self, function: FunctionDescription, code: bytes, owner: str | None = None
    ) -> None:
        return self._call("create_function", function, code, owner)

    def update_function_code(self, name: str, code: bytes) -> None:
        return self._call("update_function_code", name, code)

    def update_function_configuration(self, function: FunctionDescription) -> None:
        return self._call("update_function_configuration", function)

    def delete_function(self, name: str) -> None:
        return self._call("delete_function", name)

    def function_role(self, *args: Any, **kwargs: Any) -> RoleDescription:
        return self._call("function_role", *args, **kwargs)

    def describe_mapping(self, function: str, stream: str) -> MappingDescription | None:
        return self._call("describe_mapping", function, stream)

    def create_mapping(self, mapping: MappingDescription, owner: str | None = None) -> None:
        return self._call("create_mapping", mapping, owner)

    def update_mapping(self, mapping: MappingDescription) -> None:
        return self._call("update_mapping", mapping)

    def delete_mapping(self, function: str, stream: str) -> None:
        return self._call("delete_mapping", function, stream)

    def feeding(self, stream: str) -> list:
        return self._call("feeding", stream)

    def checkpoint_store_exists(self, pipeline: str) -> bool:
        return self._call("checkpoint_store_exists", pipeline)

    def create_checkpoint_store(self, pipeline: str) -> None:
        return self._call("create_checkpoint_store", pipeline)

    def delete_checkpoint_store(self, pipeline: str) -> None:
        return self._call("delete_checkpoint_store", pipeline)

    def running(
        self, pipeline: str, report: Callable[[str], None] = lambda line: None, **options: str
    ) -> contextlib.AbstractContextManager[Lease]:
        return self._call("running", pipeline, report, **options)

    def close(self) -> None:
        return self._call("close")

    def check_writable(self) -> None:
        return self._call("check_writable")

    def behind(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("behind", *args, **kwargs)

    def checkpoint_times(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("checkpoint_times", *args, **kwargs)

    def delivery_roles(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("delivery_roles", *args, **kwargs)

    def get_note(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("get_note", *args, **kwargs)

    def get_run_info(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("get_run_info", *args, **kwargs)

    def notes(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("notes", *args, **kwargs)

    def owned(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("owned", *args, **kwargs)

    def reset_checkpoints(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("reset_checkpoints", *args, **kwargs)

    def run_holder(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("run_holder", *args, **kwargs)

    def set_note(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("set_note", *args, **kwargs)

    def set_run_info(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("set_run_info", *args, **kwargs)


def full_disk(put_object, bucket: str, key: str, body: bytes) -> None:
    """A put_object fault for FaultyBackend: no object can be written, as on a full disk."""
    raise BackendError(f"cannot write object '{key}' to bucket '{bucket}': disk full")


PIPELINE = f"{sys.executable} -m runner"


class Processes:
    """Subprocesses a test starts, each in a process group of its own. `end()` kills every
    group, so that a test failing before it stops a process (an endless `run`, a `consume`
    that follows, a moto server a shell started) leaves nothing running; the `processes`
    fixture ends them when its test ends, and a `with` block when it ends."""

    def __init__(self) -> None:
        self._started: list[subprocess.Popen] = []

    def start(self, command: Sequence[str], **options: Any) -> subprocess.Popen:
        """subprocess.Popen(command, **options), in a new session (so a process group)."""
        process = subprocess.Popen(command, start_new_session=True, **options)
        self._started.append(process)
        return process

    def end(self) -> None:
        for process in self._started:
            with contextlib.suppress(ProcessLookupError):  # the whole group ended already
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            for pipe in (process.stdin, process.stdout, process.stderr):
                if pipe:
                    pipe.close()
        self._started.clear()

    def __enter__(self) -> "Processes":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.end()


def with_own_mounts(script: str) -> subprocess.CompletedProcess:
    """Run a shell script as root of its own user and mount namespaces, where it may mount a
    tiny tmpfs (a disk that fills up) or a read-only bind: the real faults, for what the fake
    above cannot reach. Skips the test where the system does not allow it."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"]).returncode:
        pytest.skip("needs user namespaces (unshare -rm) to mount a faulty disk")
    return subprocess.run(
        ["unshare", "-rm", "sh", "-c", f"set -u\n{script}"], capture_output=True, text=True
    )


class Clock:
    """A clock that moves only when told: `now` may be set, `advance` moves it on, and so does
    `sleep`, by at least a hundredth of a second, so that a loop sleeping 0 still sees time
    pass and a run takes no real time. It serves as time.time, time.monotonic and time.sleep."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def sleep(self, seconds: float) -> None:
        self.advance(max(seconds, 0.01))


class VirtualClock(Clock):
    """A Clock shared by threads. `sleep` moves it on, by exactly that much, when called in the
    driving thread (the one that made the clock, unless `driver` is set), and in any other
    thread (a lease's renewals) waits until the clock has moved that far."""

    def __init__(self) -> None:
        super().__init__()
        self.driver = threading.current_thread()
        self.waiting = 0  # threads waiting in `sleep`
        self._moved = threading.Condition()

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

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """threading.Event.wait by this clock (a lease's renewals): `sleep`, but in another
        thread than the driving one it returns as soon as `event` is set, which it looks at
        every few milliseconds; returns whether it is."""
        if threading.current_thread() is self.driver:
            self.advance(seconds)
            return event.is_set()
        with self._moved:
            until = self.now + seconds
            self.waiting += 1
            while not (event.is_set() or self.now >= until):
                self._moved.wait(timeout=0.005)
            self.waiting -= 1
        return event.is_set()


def lease_on(clock: VirtualClock, while_waiting=lambda: None) -> AwsBackend:
    """An AwsBackend whose run lease keeps time by `clock`; `while_waiting` is called after
    each wait in the clock's driving thread (a run waiting for the lease), not in renewals."""

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        if threading.current_thread() is clock.driver:
            while_waiting()

    timing = LeaseTiming(clock=clock, sleep=sleep, wait=clock.wait)
    return AwsBackend("us-east-1", poll_s=0, lease=timing)


class HungRenewals:
    """The AWS backend's lease renewals, made to hang until `resume()`, or until the run lets
    its lease go (whose wait for the renewal in flight would last the call's timeout); then
    the one hanging fails as a timed-out call would, and the next ones get through. `hanging`
    is set once one hangs."""

    def __init__(self, backend: AwsBackend) -> None:
        self.hanging = threading.Event()
        self._resumed = threading.Event()
        events = backend._lease_client().meta.events
        events.register("before-call.dynamodb.UpdateItem", self._hang)
        events.register("before-call.dynamodb.DeleteItem", lambda **_: self.resume())

    def resume(self) -> None:
        self._resumed.set()

    def _hang(self, **_) -> None:
        if self._resumed.is_set():
            return
        self.hanging.set()
        self._resumed.wait()
        raise ReadTimeoutError(endpoint_url="https://dynamodb.us-east-1.amazonaws.com/")


def started_since(before: set[threading.Thread]) -> list[str]:
    """The names of the threads alive now that were not in `before` (a set of them)."""
    return sorted(thread.name for thread in threading.enumerate() if thread not in before)


def wait_until(condition, timeout: float = 10.0) -> None:
    """Wait for another thread to make `condition()` true, polling briefly."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.005)
