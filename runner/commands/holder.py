"""Who runs a pipeline now: the holder of its run lock (local) or lease (AWS), as `status`
shows it and as the commands that must not act under a run name it when they refuse."""

from __future__ import annotations

import datetime
from collections.abc import Callable

from runner.backends.base import Backend, BackendError, RunHolder


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def live_holder(
    pipeline: str, backend: Backend, now: Callable[[], datetime.datetime] = _utc_now
) -> RunHolder | None:
    """The run holding the pipeline's run lock or lease now, or None: also when no store for
    its checkpoints exists (no run could hold one), or only a lease its run no longer renews
    is left."""
    if not backend.checkpoint_store_exists(pipeline):
        return None
    holder = backend.run_holder(pipeline)
    return None if holder is None or holder.left_over(now()) else holder


def refuse_while_running(
    pipeline: str,
    backend: Backend,
    what_to_do: str,
    now: Callable[[], datetime.datetime] = _utc_now,
) -> None:
    """Raise BackendError, naming the holder and `what_to_do`, while a run holds the pipeline:
    at once, rather than after a wait for a lease that lives on."""
    holder = live_holder(pipeline, backend, now)
    if holder is not None:
        raise BackendError(f"pipeline {pipeline} is running ({held_by(holder)}): {what_to_do}")


def held_by(holder: RunHolder) -> str:
    """E.g. 'lock held by host pid 12 since 2026-11-26 12:00:00 UTC'."""
    since = f" since {when(holder.since)}" if holder.since else ""
    return f"{holder.kind} held by {holder.owner}{since}"


def when(moment: datetime.datetime | None) -> str:
    """A moment as people read it: '2026-11-26 12:00:00 UTC' ('?' if unknown)."""
    if moment is None:
        return "?"
    return f"{moment.astimezone(datetime.timezone.utc):%Y-%m-%d %H:%M:%S} UTC"
