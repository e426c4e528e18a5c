"""`pipeline reset`: move a pipeline's checkpoints to trim_horizon, latest or a moment, on
every shard of its source stream or one, so that the next run reads from there.

Checkpoints otherwise only move forward; a reset replaces them, holding the run lock (lease)
so that no run starts meanwhile, and is refused while a run holds it.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable

from runner.backends.base import (
    SHARD_END,
    Backend,
    BackendError,
    EarlierStream,
    Shard,
    is_start_mark,
    parse_start_mark,
    start_mark,
)
from runner.commands.holder import refuse_while_running
from runner.commands.status import source_stream
from runner.loop.reader import FORGET_OPTION
from runner.spec import Position, Spec, SpecError

STOP_IT = "stop it before resetting its checkpoints"


def reset(
    spec: Spec,
    backend: Backend,
    to: Position,
    *,
    shard: str | None = None,
    confirm: Callable[[str], object],
    report: Callable[[str], None],
    wait_report: Callable[[str], None] = lambda line: None,
    now: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.timezone.utc),
) -> int:
    """Show each chosen shard's checkpoint and where it moves, `confirm` (which raises to
    abort), then move them; returns how many were moved. `wait_report` gets a line while the
    run lease is waited for (AWS: one its run no longer renews)."""
    if spec.route is None:
        raise SpecError([f"{spec.path}: has no route, so no run reads it: nothing to reset"])
    stream = source_stream(spec, backend)
    refuse_while_running(spec.pipeline, backend, STOP_IT, now)
    with backend.running(spec.pipeline, wait_report, why=STOP_IT):
        shards = _chosen(backend.list_shards(stream), shard, stream)
        try:
            current, earlier = backend.get_checkpoints(spec.pipeline, stream), None
        except EarlierStream as error:
            if shard is not None:
                raise BackendError(
                    f"the checkpoints of pipeline {spec.pipeline} are for {error.earlier}, not "
                    f"the one there now: reset every shard (without --shard), or run with "
                    f"{FORGET_OPTION}"
                ) from None
            current, earlier = {}, error.earlier
        report(f"Checkpoints of pipeline {spec.pipeline} on stream {stream}, to move to {to}:")
        for each in shards:
            report(f"  {each.shard_id}: {_shown(current.get(each.shard_id))} -> {to}")
        if earlier is not None:
            report(f"  (the checkpoints kept for {earlier} are deleted)")
        count = f"{len(shards)} checkpoint{'' if len(shards) == 1 else 's'}"
        confirm(f"Move {count} of pipeline {spec.pipeline} on {backend.location}?")
        if earlier is not None:
            backend.forget_earlier_checkpoints(spec.pipeline, stream)
        moved = {each.shard_id: _checkpoint_at(backend, stream, each, to) for each in shards}
        backend.reset_checkpoints(spec.pipeline, stream, moved)
    report(f"Moved {count} to {to}: the next run of {spec.pipeline} reads from there.")
    return len(moved)


def _chosen(shards: list[Shard], shard: str | None, stream: str) -> list[Shard]:
    if shard is None:
        return shards
    chosen = [each for each in shards if each.shard_id == shard]
    if not chosen:
        known = ", ".join(each.shard_id for each in shards)
        raise BackendError(f"stream '{stream}' has no shard '{shard}' (shards: {known})")
    return chosen


def _checkpoint_at(backend: Backend, stream: str, shard: Shard, to: Position) -> str:
    """The checkpoint from which a run reads the shard from `to`: a start mark, or for latest
    the target's own (SHARD_END for a closed shard: nothing will arrive in it)."""
    if to.iterator_type == "LATEST":
        if not shard.is_open:
            return SHARD_END
        return backend.latest_iterator(stream, shard.shard_id)[1]
    return start_mark(to.iterator_type, to.sequence, to.timestamp)


def _shown(checkpoint: str | None) -> str:
    if checkpoint is None:
        return "no checkpoint"
    if is_start_mark(checkpoint):
        return f"not started ({Position(*parse_start_mark(checkpoint))})"
    return checkpoint
