"""plan / apply / destroy: make the spec's resources exist on a target, and say what changes.

Apply creates what is missing and fixes what differs, never deletes; a second apply changes
nothing. Destroy removes what the spec declares, dependants first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from runner.backends.base import Backend, FirehoseDescription
from runner.spec import Firehose, Spec

CREATE, CHANGE, UNCHANGED = "+", "~", " "


@dataclass(frozen=True)
class Change:
    """One resource: what apply would do to it and why."""

    action: str  # CREATE, CHANGE or UNCHANGED
    kind: str  # stream, bucket, firehose
    name: str
    detail: str  # e.g. "2 shards" or "shards 2 -> 4"
    apply: Callable[[], None]

    def line(self) -> str:
        verb = {CREATE: "create", CHANGE: "change", UNCHANGED: "unchanged"}[self.action]
        return f"{self.action} {verb} {self.kind} {self.name} ({self.detail})"


def plan(spec: Spec, backend: Backend) -> list[Change]:
    """Compare the spec with the target, resource by resource; touches nothing."""
    return (
        list(_streams(spec, backend))
        + list(_buckets(spec, backend))
        + list(_firehoses(spec, backend))
    )


def apply(spec: Spec, backend: Backend, report: Callable[[str], None]) -> list[Change]:
    """Create what is missing and fix what differs, reporting each change as it is made."""
    changes = plan(spec, backend)
    for change in changes:
        if change.action != UNCHANGED:
            change.apply()
            report(change.line())
    return changes


def summary(changes: list[Change], *, done: bool) -> str:
    """'Plan: 2 to create, 1 to change, 4 unchanged.' or, after apply, what was done."""
    created = sum(c.action == CREATE for c in changes)
    changed = sum(c.action == CHANGE for c in changes)
    unchanged = len(changes) - created - changed
    if created == changed == 0:
        return f"No changes: {unchanged} resources up to date."
    if done:
        return f"Applied: {created} created, {changed} changed, {unchanged} unchanged."
    return f"Plan: {created} to create, {changed} to change, {unchanged} unchanged."


def destroy(spec: Spec, backend: Backend, report: Callable[[str], None]) -> int:
    """Delete the spec's resources that exist, firehoses before streams and buckets."""
    removed = 0
    for firehose in spec.firehoses.values():
        if backend.describe_firehose(firehose.name) is not None:
            backend.delete_firehose(firehose.name)
            report(f"- destroy firehose {firehose.name}")
            removed += 1
    for stream in spec.streams.values():
        if backend.describe_stream(stream.name) is not None:
            backend.delete_stream(stream.name)
            report(f"- destroy stream {stream.name}")
            removed += 1
    for bucket in spec.buckets.values():
        if backend.bucket_exists(bucket.name):
            backend.delete_bucket(bucket.name)
            report(f"- destroy bucket {bucket.name} (and every object in it)")
            removed += 1
    return removed


def _plural(count: int, what: str) -> str:
    return f"{count} {what}{'' if count == 1 else 's'}"


def _streams(spec: Spec, backend: Backend) -> Iterator[Change]:
    for stream in spec.streams.values():
        current = backend.describe_stream(stream.name)
        if current is None:
            yield Change(
                CREATE,
                "stream",
                stream.name,
                _plural(stream.shards, "shard"),
                lambda s=stream: backend.create_stream(s.name, s.shards),
            )
        elif current.open_shard_count != stream.shards:
            yield Change(
                CHANGE,
                "stream",
                stream.name,
                f"shards {current.open_shard_count} -> {stream.shards}",
                lambda s=stream: backend.update_shard_count(s.name, s.shards),
            )
        else:
            yield Change(
                UNCHANGED, "stream", stream.name, _plural(stream.shards, "shard"), _nothing
            )


def _buckets(spec: Spec, backend: Backend) -> Iterator[Change]:
    for bucket in spec.buckets.values():
        if backend.bucket_exists(bucket.name):
            yield Change(UNCHANGED, "bucket", bucket.name, "exists", _nothing)
        else:
            yield Change(
                CREATE,
                "bucket",
                bucket.name,
                "new",
                lambda b=bucket: backend.create_bucket(b.name),
            )


def description(spec: Spec, firehose: Firehose) -> FirehoseDescription:
    """What the target should hold for one of the spec's firehoses."""
    return FirehoseDescription(
        name=firehose.name,
        stream=spec.streams[firehose.stream].name,
        bucket=spec.buckets[firehose.bucket].name,
        prefix=firehose.prefix,
        error_prefix=firehose.error_prefix,
        buffer_size_mb=firehose.buffer_size_mb,
        buffer_interval_s=firehose.buffer_interval_s,
        compression=firehose.compression,
    )


def _firehoses(spec: Spec, backend: Backend) -> Iterator[Change]:
    for firehose in spec.firehoses.values():
        wanted = description(spec, firehose)
        current = backend.describe_firehose(firehose.name)
        source = f"{wanted.stream} -> {wanted.bucket}"
        if current is None:
            yield Change(
                CREATE,
                "firehose",
                firehose.name,
                source,
                lambda w=wanted: backend.create_firehose(w),
            )
        elif current != wanted:
            differences = ", ".join(
                f"{name} {getattr(current, name)!r} -> {getattr(wanted, name)!r}"
                for name in wanted.__dataclass_fields__
                if getattr(current, name) != getattr(wanted, name)
            )
            yield Change(
                CHANGE,
                "firehose",
                firehose.name,
                differences,
                lambda w=wanted: backend.update_firehose(w),
            )
        else:
            yield Change(UNCHANGED, "firehose", firehose.name, source, _nothing)


def _nothing() -> None:
    """Apply nothing: the resource is as the spec says."""
