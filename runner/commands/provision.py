"""plan / apply / destroy: make the spec's resources exist on a target, and say what changes.

Apply creates what is missing and fixes what differs, never deletes; a second apply changes
nothing, and two at once both succeed. Destroy removes what the spec declares, dependants first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from runner.backends.base import AlreadyExists, Backend, FirehoseDescription, checkpoint_table
from runner.plural import count
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
    """Compare the spec with the target, resource by resource; touches nothing.

    In the order apply must follow: what a firehose needs comes before it."""
    kinds = [_streams, _buckets]
    if backend.delivers_firehoses:
        kinds += [_roles, _log_groups]
        if spec.route is not None:  # a spec without a route never runs, so never checkpoints
            kinds.insert(2, _checkpoint_store)
    kinds.append(_firehoses)
    return [change for kind in kinds for change in kind(spec, backend)]


def apply(spec: Spec, backend: Backend, report: Callable[[str], None]) -> list[Change]:
    """Create what is missing and fix what differs, reporting each change as it is made."""
    changes = []
    for change in plan(spec, backend):
        if change.action != UNCHANGED:
            change = _make(change, spec, backend)
            if change.action != UNCHANGED:
                report(change.line())
        changes.append(change)
    return changes


def _make(change: Change, spec: Spec, backend: Backend) -> Change:
    """Apply one change. A resource created meanwhile (by another apply) is taken as it now
    is: nothing to do if it is as the spec says, else what now differs is fixed."""
    try:
        change.apply()
        return change
    except AlreadyExists:
        if change.action != CREATE:
            raise
    now = next(c for c in plan(spec, backend) if (c.kind, c.name) == (change.kind, change.name))
    if now.action != UNCHANGED:
        now.apply()
    return now


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


def destroy(
    spec: Spec,
    backend: Backend,
    report: Callable[[str], None],
    confirm: Callable[[], bool] = lambda: True,
) -> int:
    """List the spec's resources that exist, ask `confirm`, then delete them, each before
    what it depends on; returns how many were deleted."""
    existing = [
        (kind, name, delete) for kind, name, exists, delete in _owned(spec, backend) if exists()
    ]
    if not existing:
        return 0
    for kind, name, _ in existing:
        report(f"- destroy {kind} {name}")
    if not confirm():
        return 0
    for _, _, delete in existing:
        delete()
    return len(existing)


def _owned(spec: Spec, backend: Backend) -> Iterator[tuple[str, str, Callable, Callable]]:
    """(kind, name, exists, delete) for every resource of the spec, dependants first."""
    firehoses = spec.firehoses.values()
    described = [
        (
            "firehose",
            [f.name for f in firehoses],
            backend.describe_firehose,
            backend.delete_firehose,
        )
    ]
    if backend.delivers_firehoses:
        described += [
            (
                "log group",
                sorted({f.log_group for f in firehoses if f.log_group}),
                backend.describe_log_group,
                backend.delete_log_group,
            ),
            (
                "role",
                sorted({f.role for f in firehoses}),
                backend.describe_role,
                backend.delete_role,
            ),
        ]
    described.append(
        (
            "stream",
            [s.name for s in spec.streams.values()],
            backend.describe_stream,
            backend.delete_stream,
        )
    )
    for kind, names, describe, delete in described:
        for name in names:
            yield (
                kind,
                name,
                lambda describe=describe, name=name: describe(name) is not None,
                lambda delete=delete, name=name: delete(name),
            )
    for b in spec.buckets.values():
        yield (
            "bucket",
            f"{b.name} (and every object in it)",
            lambda b=b: backend.bucket_exists(b.name),
            lambda b=b: backend.delete_bucket(b.name),
        )
    if backend.delivers_firehoses and spec.route is not None:
        yield (
            "checkpoint table",
            checkpoint_table(spec.pipeline),
            lambda: backend.checkpoint_store_exists(spec.pipeline),
            lambda: backend.delete_checkpoint_store(spec.pipeline),
        )


def _streams(spec: Spec, backend: Backend) -> Iterator[Change]:
    for stream in spec.streams.values():
        current = backend.describe_stream(stream.name)
        if current is None:
            yield Change(
                CREATE,
                "stream",
                stream.name,
                count(stream.shards, "shard"),
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
            yield Change(UNCHANGED, "stream", stream.name, count(stream.shards, "shard"), _nothing)


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
        role=firehose.role,
        log_group=firehose.log_group,
        log_stream=firehose.log_stream,
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


def _checkpoint_store(spec: Spec, backend: Backend) -> Iterator[Change]:
    name = checkpoint_table(spec.pipeline)
    if backend.checkpoint_store_exists(spec.pipeline):
        yield Change(UNCHANGED, "checkpoint table", name, "exists", _nothing)
    else:
        yield Change(
            CREATE,
            "checkpoint table",
            name,
            "DynamoDB, on demand",
            lambda: backend.create_checkpoint_store(spec.pipeline),
        )


def _roles(spec: Spec, backend: Backend) -> Iterator[Change]:
    firehoses = [description(spec, firehose) for firehose in spec.firehoses.values()]
    for wanted in backend.delivery_roles(firehoses):
        current = backend.describe_role(wanted.name)
        if current is None:
            action, detail = CREATE, "assumed by Firehose"
        elif current != wanted:
            action, detail = CHANGE, "trust or inline policy differs"
        else:
            yield Change(UNCHANGED, "role", wanted.name, "assumed by Firehose", _nothing)
            continue
        yield Change(action, "role", wanted.name, detail, lambda w=wanted: backend.put_role(w))


def _log_groups(spec: Spec, backend: Backend) -> Iterator[Change]:
    for firehose in spec.firehoses.values():
        group, stream = firehose.log_group, firehose.log_stream
        if group is None or stream is None:
            continue
        name = f"{group}/{stream}"
        streams = backend.describe_log_group(group)
        if streams is not None and stream in streams:
            yield Change(UNCHANGED, "log stream", name, "exists", _nothing)
        else:
            yield Change(
                CREATE,
                "log stream",
                name,
                "delivery errors",
                lambda g=group, s=stream: backend.create_log_stream(g, s),
            )


def _nothing() -> None:
    """Apply nothing: the resource is as the spec says."""
