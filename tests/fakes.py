"""Fakes shared by the tests."""

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


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
