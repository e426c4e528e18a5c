"""What a backend raises: one-line errors the engine and the user act on."""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Iterator


class BackendError(Exception):
    """A failure of the target the user can act on; its text is one line, no credentials."""


class StreamNotFound(BackendError):
    pass


class IteratorExpired(BackendError):
    """The shard iterator is too old; get a new one from the checkpoint."""


class EarlierStream(BackendError):
    """Checkpoints kept for an earlier stream of the same name: the stream was deleted and
    created again since they were written."""

    def __init__(self, stream: str, created: datetime.datetime | None) -> None:
        when = f" (created {created:%Y-%m-%d %H:%M:%S} UTC)" if created else ""
        self.earlier = f"an earlier stream named {stream}{when}"
        super().__init__(f"checkpoints are for {self.earlier}")


class Throttled(BackendError):
    """The shard or account is over its limits, or the service had a passing fault: slow
    down and try again."""


class AlreadyExists(BackendError):
    """A create found the resource there already (e.g. made meanwhile by another apply)."""


class StateLost(BackendError):
    """The store was removed or replaced under the command: what it wrote there is gone."""


class LeaseLost(BackendError):
    """The run no longer holds its pipeline's run lease: it must write nothing more."""


class LeaseLapsed(Throttled):
    """The run's lease was not renewed lately, so it may not write now; no other run took it
    over, and a renewal may yet hold it again: wait, like throttling."""


@contextlib.contextmanager
def disk_errors(path: object, doing: str = "write") -> Iterator[None]:
    """Turn an OSError of the disk into one line naming the path and the cause, e.g.
    'cannot write .pipeline/locks/x.lock: No space left on device'."""
    try:
        yield
    except OSError as error:
        raise BackendError(f"cannot {doing} {path}: {error.strerror or error}") from error
