"""plan / apply / destroy: make the spec's resources exist on a target, and say what changes.

Apply creates what is missing, as the pipeline's own (backends/base/ownership.py), and fixes
what differs; a second apply changes nothing, and two at once both succeed. What the pipeline
owns and its spec no longer declares is planned for deletion, which apply does only when told
to prune. Destroy removes everything the pipeline owns, dependants first. A resource apply found
there and did not create (adopted) is never deleted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from runner.backends.base import (
    HANDLER,
    KINDS,
    MAPPING_SETTINGS,
    RUNTIME,
    AlreadyExists,
    Backend,
    BackendError,
    FirehoseDescription,
    FunctionDescription,
    MappingDescription,
    checkpoint_table,
    mapping_name,
    split_mapping_name,
)
from runner.commands.holder import held_by, live_holder
from runner.function.handler import SPEC_VERSION
from runner.function.package import Package, build
from runner.loop.backlog import remembered, resource
from runner.plural import count
from runner.spec import Firehose, Spec

CREATE, CHANGE, DELETE, UNCHANGED = "+", "~", "-", " "
_VERBS = {CREATE: "create", CHANGE: "change", DELETE: "delete", UNCHANGED: "unchanged"}


@dataclass(frozen=True)
class Change:
    """One resource: what apply would do to it and why."""

    action: str  # CREATE, CHANGE, DELETE or UNCHANGED
    kind: str  # stream, bucket, firehose, ...
    name: str
    detail: str  # e.g. "2 shards" or "shards 2 -> 4"
    apply: Callable[[], None]
    verb: str = ""  # what the line says is done, when not the action's own word

    def line(self) -> str:
        verb = self.verb or _VERBS[self.action]
        return f"{self.action} {verb} {self.kind} {self.name} ({self.detail})"


def plan(spec: Spec, backend: Backend) -> list[Change]:
    """Compare the spec with the target, resource by resource; touches nothing.

    In the order apply must follow: what a firehose needs comes before it; last, what the
    pipeline owns and the spec no longer declares, each deleted before what it uses."""
    return [*_wanted(spec, backend), *_unclaimed(spec, backend)]


def _wanted(spec: Spec, backend: Backend) -> list[Change]:
    """What the spec declares, compared with the target."""
    kinds = [_streams, _buckets]
    if backend.delivers_firehoses:
        kinds += [_roles, _log_groups]
        if _checkpoints_here(spec):
            kinds.insert(2, _checkpoint_store)
    kinds.append(_firehoses)
    if _in_lambda(spec, backend):
        kinds += [_function_role, _function, _mapping]
    return [change for kind in kinds for change in kind(spec, backend)]


def _in_lambda(spec: Spec, backend: Backend) -> bool:
    """Whether Lambda runs the spec on this target (its `lambda:` section, on AWS)."""
    return spec.function is not None and backend.runs_functions


def _checkpoints_here(spec: Spec) -> bool:
    """Whether the pipeline keeps checkpoints on the target: not for a spec without a route
    (it never runs). Where Lambda runs it, Lambda keeps the source's checkpoints, but the
    table still holds `pipeline redrive`'s positions in the dead letter."""
    return spec.route is not None


def apply(
    spec: Spec,
    backend: Backend,
    report: Callable[[str], None],
    *,
    prune: bool = False,
    confirm: Callable[[], bool] = lambda: True,
) -> list[Change]:
    """Create what is missing and fix what differs, reporting each change as it is made.

    What the pipeline owns and the spec no longer declares is left as it is, unless `prune`:
    then it is listed and `confirm` asked before anything is touched (declined: nothing is,
    and no change returned); once the rest is applied, it is deleted, each before what it uses."""
    planned = plan(spec, backend)
    _refuse_a_second_reader(spec, backend, planned)
    deletions = [change for change in planned if change.action == DELETE]
    if prune and deletions:
        backend.check_writable()  # before listing them, as if they could go
        _refuse_pruning_under_a_run(spec, backend, deletions)
        for change in deletions:
            report(change.line())
        if not confirm():
            return []
    changes = []
    for change in planned:
        if change.action == DELETE:
            if prune:
                change.apply()
        elif change.action != UNCHANGED:
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
    now = next(c for c in _wanted(spec, backend) if (c.kind, c.name) == (change.kind, change.name))
    if now.action != UNCHANGED:
        now.apply()
    return now


def summary(changes: list[Change], *, done: bool, pruned: bool = False) -> str:
    """'Plan: 2 to create, 1 to change, 4 unchanged.' or, after apply, what was done; after an
    apply that did not prune, a second line says how many resources it left."""
    actions = _by_resource(changes)
    created = actions.count(CREATE)
    changed = actions.count(CHANGE)
    deleted = actions.count(DELETE)
    unchanged = len(actions) - created - changed - deleted
    left = deleted if done and not pruned else 0
    deleted -= left
    if done:
        counts = [f"{created} created", f"{changed} changed", f"{deleted} deleted"]
    else:
        counts = [f"{created} to create", f"{changed} to change", f"{deleted} to delete"]
    if not deleted:
        counts.pop()
    if created == changed == deleted == 0:
        text = f"No changes: {unchanged} resources up to date."
    else:
        text = f"{'Applied' if done else 'Plan'}: {', '.join(counts)}, {unchanged} unchanged."
    if left:
        noun, are, them = ("resource", "is", "it") if left == 1 else ("resources", "are", "them")
        text += (
            f"\n{left} {noun} {are} no longer in the spec: pipeline apply --prune deletes {them}"
        )
    return text


def _by_resource(changes: list[Change]) -> list[str]:
    """One action per resource: a function whose configuration and code both change is one
    function changed, not two resources."""
    actions: dict[tuple[str, str], str] = {}
    for change in changes:
        kind = "function" if change.kind == "function code" else change.kind
        actions.setdefault((kind, change.name), change.action)  # both CHANGE, when two
    return list(actions.values())


def destroy(
    spec: Spec,
    backend: Backend,
    report: Callable[[str], None],
    confirm: Callable[[], bool] = lambda: True,
) -> int:
    """List what the pipeline owns, whether its spec still declares it or not, ask `confirm`,
    then delete it, each before what it uses; returns how many were deleted. What the spec
    declares but the pipeline did not create is kept, and listed as kept."""
    backend.check_writable()  # before listing anything, as if it could go
    holder = live_holder(spec.pipeline, backend)
    if holder is not None:
        raise BackendError(
            f"pipeline {spec.pipeline} is running ({held_by(holder)}), reading and writing what "
            "destroy deletes: stop it, then destroy"
        )
    declared = _declared(spec, backend)
    exists, delete = _kinds(spec, backend)
    owned = _in_order(backend.owned(spec.pipeline), declared)
    for kind, name in declared:
        if (kind, name) not in owned and exists[kind](name):
            report(f"  keep {kind} {name} (not created by this pipeline)")
    waiting = _dead_letter_entries(spec, backend, owned)
    for kind, name in owned:
        notes = ["and every object in it"] if kind == "bucket" else []
        if (kind, name) not in declared:
            notes.append("no longer in the spec")
        if (kind, name) in waiting:
            notes.append(waiting[kind, name])
        report(f"- destroy {kind} {name}" + (f" ({'; '.join(notes)})" if notes else ""))
    if not owned or not confirm():
        return 0
    for kind, name in owned:
        delete[kind](name)
    return len(owned)


def _refuse_pruning_under_a_run(spec: Spec, backend: Backend, deletions: list[Change]) -> None:
    """Refuse, before touching anything, to delete what a run of the pipeline may still use:
    one that runs another version of the spec than this file (a run that took this version up
    uses none of it)."""
    holder = live_holder(spec.pipeline, backend)
    if holder is None:
        return
    info = backend.get_run_info(spec.pipeline)
    running = "none recorded yet" if info is None else info.spec_version
    if running == spec.version:
        return
    used = ", ".join(f"{change.kind} {change.name}" for change in deletions)
    then = "let it reload this version (run --watch) or stop it, then prune"
    if not backend.delivers_firehoses:  # the run delivers them: a reload cannot drop one
        delivered = [change.name for change in deletions if change.kind == "firehose"]
        if delivered:
            then = (
                f"it delivers firehose {delivered[0]} itself, so it cannot reload a spec "
                "without it: stop it, then prune"
            )
    raise BackendError(
        f"pipeline {spec.pipeline} is running ({held_by(holder)}) with another version of the "
        f"spec ({running}; this file is {spec.version}), which may still use {used}: {then}"
    )


def _dead_letter_entries(
    spec: Spec, backend: Backend, resources: list[tuple[str, str]]
) -> dict[tuple[str, str], str]:
    """For each of these streams and buckets that holds dead-letter entries of the pipeline
    not yet redriven, a note saying so, e.g. 'holds 4 dead-letter entries of pipeline P'."""
    if not any(kind in ("stream", "bucket") for kind, _ in resources):
        return {}
    found: dict[tuple[str, str], int] = {}
    for backlog in remembered(spec, backend):
        if resource(backlog) in resources:
            found[resource(backlog)] = found.get(resource(backlog), 0) + backlog.count()
    return {
        place: f"holds {count(entries, 'dead-letter entry', 'dead-letter entries')} of "
        f"pipeline {spec.pipeline} not redriven"
        for place, entries in found.items()
        if entries
    }


def _declared(spec: Spec, backend: Backend) -> list[tuple[str, str]]:
    """(kind, name) of every resource of the spec on this target, each before what it uses."""
    firehoses = spec.firehoses.values()
    declared = {
        "firehose": [f.name for f in firehoses],
        "stream": [s.name for s in spec.streams.values()],
        "bucket": [b.name for b in spec.buckets.values()],
    }
    if backend.delivers_firehoses:
        declared["log group"] = sorted({f.log_group for f in firehoses if f.log_group})
        declared["role"] = sorted({f.role for f in firehoses})
        if _checkpoints_here(spec):
            declared["checkpoint table"] = [checkpoint_table(spec.pipeline)]
    if _in_lambda(spec, backend):
        function = spec.function
        declared["event source mapping"] = [mapping_name(function.name, _source_name(spec))]
        declared["function"] = [function.name]
        declared["role"] = sorted({*declared.get("role", []), function.role})
    return [(kind, name) for kind in KINDS for name in declared.get(kind, [])]


def _unclaimed(spec: Spec, backend: Backend) -> Iterator[Change]:
    """What the pipeline owns and the spec no longer declares, to delete."""
    declared = _declared(spec, backend)
    _, delete = _kinds(spec, backend)
    unclaimed = [r for r in _in_order(backend.owned(spec.pipeline), declared) if r not in declared]
    waiting = _dead_letter_entries(spec, backend, unclaimed)
    for kind, name in unclaimed:
        notes = ["no longer in the spec"]
        if (kind, name) in waiting:
            notes.append(waiting[kind, name])
        yield Change(
            DELETE,
            kind,
            name,
            "; ".join(notes),
            lambda kind=kind, name=name: delete[kind](name),
        )


def _in_order(
    resources: list[tuple[str, str]], declared: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    """The resources in the order of deletion: kind by kind (KINDS), each kind's in the spec's
    order, then those it no longer declares, by name."""
    position = {resource: i for i, resource in enumerate(declared)}
    return sorted(
        resources, key=lambda r: (KINDS.index(r[0]), position.get(r, len(position)), r[1])
    )


def _kinds(
    spec: Spec, backend: Backend
) -> tuple[dict[str, Callable[[str], bool]], dict[str, Callable[[str], None]]]:
    """For each kind of resource, whether one of a name exists, and how to delete it."""
    pipeline = spec.pipeline
    exists: dict[str, Callable[[str], bool]] = {
        "event source mapping": lambda name: (
            backend.describe_mapping(*split_mapping_name(name)) is not None
        ),
        "function": lambda name: backend.describe_function(name) is not None,
        "firehose": lambda name: backend.describe_firehose(name) is not None,
        "log group": lambda name: backend.describe_log_group(name) is not None,
        "role": lambda name: backend.describe_role(name) is not None,
        "stream": lambda name: backend.describe_stream(name) is not None,
        "bucket": backend.bucket_exists,
        "checkpoint table": lambda _: backend.checkpoint_store_exists(pipeline),
    }
    delete: dict[str, Callable[[str], None]] = {
        "event source mapping": lambda name: backend.delete_mapping(*split_mapping_name(name)),
        "function": backend.delete_function,
        "firehose": backend.delete_firehose,
        "log group": backend.delete_log_group,
        "role": backend.delete_role,
        "stream": backend.delete_stream,
        "bucket": backend.delete_bucket,
        "checkpoint table": lambda _: backend.delete_checkpoint_store(pipeline),
    }
    return exists, delete


def _streams(spec: Spec, backend: Backend) -> Iterator[Change]:
    for stream in spec.streams.values():
        current = backend.describe_stream(stream.name)
        if current is None:
            yield Change(
                CREATE,
                "stream",
                stream.name,
                count(stream.shards, "shard"),
                lambda s=stream: backend.create_stream(s.name, s.shards, spec.pipeline),
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
                lambda b=bucket: backend.create_bucket(b.name, spec.pipeline),
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
                lambda w=wanted: backend.create_firehose(w, spec.pipeline),
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
        yield Change(
            action,
            "role",
            wanted.name,
            detail,
            lambda w=wanted: backend.put_role(w, spec.pipeline),
        )


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
                lambda g=group, s=stream: backend.create_log_stream(g, s, spec.pipeline),
            )


def _nothing() -> None:
    """Apply nothing: the resource is as the spec says."""


# Lambda (a spec with `lambda:`, on AWS)


MAPPING = "event source mapping"


def _source_name(spec: Spec) -> str:
    return spec.streams[spec.source.stream].name


def _function_role(spec: Spec, backend: Backend) -> Iterator[Change]:
    function = spec.function
    dead_letter = spec.dead_letter
    wanted = backend.function_role(
        function.role,
        function.name,
        _source_name(spec),
        sorted({spec.streams[case.to].name for case in spec.route.cases}),
        dead_letter_stream=spec.streams[dead_letter.stream].name if dead_letter.stream else None,
        dead_letter_bucket=spec.buckets[dead_letter.bucket].name if dead_letter.bucket else None,
        dead_letter_prefix=dead_letter.prefix,
        pipeline=spec.pipeline,
    )
    current = backend.describe_role(wanted.name)
    if current == wanted:
        yield Change(UNCHANGED, "role", wanted.name, "assumed by Lambda", _nothing)
        return
    yield Change(
        CREATE if current is None else CHANGE,
        "role",
        wanted.name,
        "assumed by Lambda" if current is None else "trust or inline policy differs",
        lambda: backend.put_role(wanted, spec.pipeline),
    )


def function_description(spec: Spec, package: Package) -> FunctionDescription:
    """What the target should hold for the spec's function, running this package."""
    function = spec.function
    return FunctionDescription(
        name=function.name,
        runtime=RUNTIME,
        handler=HANDLER,
        memory_mb=function.memory_mb,
        timeout_s=function.timeout_s,
        role=function.role,
        code_sha256=package.sha256,
        # The spec file's version, which its dead-letter entries carry: a configuration,
        # so that an edit of the file that changes no behaviour updates no code.
        environment={SPEC_VERSION: spec.version},
    )


def _megabytes(size: int) -> str:
    return f"{size / 1_000_000:.1f} MB"


def _refuse_a_second_reader(spec: Spec, backend: Backend, planned: list[Change]) -> None:
    """Refuse, before touching anything, to map the source stream to the function while a
    `pipeline run` of the pipeline reads it: both would handle every record."""
    mapping = [c for c in planned if c.kind == MAPPING and c.action == CREATE]
    if not mapping:
        return
    holder = live_holder(spec.pipeline, backend)
    if holder is not None:
        raise BackendError(
            f"a pipeline run of {spec.pipeline} reads stream {_source_name(spec)} ({holder.kind} "
            f"held by {holder.owner}): stop it before Lambda runs the pipeline, or both handle "
            "every record"
        )


def lambda_changes(
    spec: Spec,
    backend: Backend,
    function: FunctionDescription | None,
    mapping: MappingDescription | None,
) -> list[Change]:
    """What apply would change of the function and mapping of a spec Lambda runs, given them
    as the target describes them (None: not there)."""
    found = [*_function_changes(spec, backend, function), *_mapping_changes(spec, backend, mapping)]
    return [change for change in found if change.action != UNCHANGED]


def _function(spec: Spec, backend: Backend) -> Iterator[Change]:
    return _function_changes(spec, backend, backend.describe_function(spec.function.name))


def _function_changes(
    spec: Spec, backend: Backend, current: FunctionDescription | None
) -> Iterator[Change]:
    package = build(spec)
    wanted = function_description(spec, package)
    if current is not None and current.owner != spec.pipeline:
        # Adopting it would replace someone's code, and destroy would then delete the role
        # it was given.
        raise BackendError(
            f"function {wanted.name} exists and was not created by pipeline {spec.pipeline} "
            f"(its pipeline tag: {current.owner or 'none'}): apply would replace its code; "
            "name another function in lambda.function, or delete that one"
        )
    size = f"package {_megabytes(package.size)}"
    if current is None:
        yield Change(
            CREATE,
            "function",
            wanted.name,
            f"{wanted.runtime}, {wanted.memory_mb} MB, {wanted.timeout_s} s, {size}",
            lambda: backend.create_function(wanted, package.code, spec.pipeline),
        )
        return
    settings = [f.name for f in dataclasses.fields(wanted) if f.compare and f.name != "code_sha256"]
    differences = ", ".join(
        _difference(name, getattr(current, name), getattr(wanted, name))
        for name in settings
        if getattr(current, name) != getattr(wanted, name)
    )
    if differences:
        yield Change(
            CHANGE,
            "function",
            wanted.name,
            differences,
            lambda: backend.update_function_configuration(wanted),
        )
    if current.code_sha256 != wanted.code_sha256:
        yield Change(
            CHANGE,
            "function code",
            wanted.name,
            f"{size}: the runner or the spec changed",
            lambda: backend.update_function_code(wanted.name, package.code),
            verb="update",
        )
    if not differences and current.code_sha256 == wanted.code_sha256:
        yield Change(UNCHANGED, "function", wanted.name, size, _nothing)


def _difference(name: str, current: object, wanted: object) -> str:
    """How a setting of the function differs, e.g. "memory_mb 256 -> 512"."""
    if name == "environment" and isinstance(current, dict) and isinstance(wanted, dict):
        was = current.get(SPEC_VERSION, "none")
        return f"spec version {was} -> {wanted.get(SPEC_VERSION)}"
    return f"{name} {current!r} -> {wanted!r}"


def mapping_description(spec: Spec) -> MappingDescription:
    """What the target should hold for the event source mapping of the spec's function."""
    function = spec.function
    start = spec.source.start
    return MappingDescription(
        function=function.name,
        stream=_source_name(spec),
        batch_size=function.batch_size,
        batching_window_s=function.batching_window_s,
        parallelization=function.parallelization,
        max_retries=function.max_retries,
        max_record_age_s=function.max_record_age_s,
        bisect_on_error=function.bisect_on_error,
        starting_position=start.iterator_type,
        starting_timestamp=start.timestamp,
    )


def _mapping(spec: Spec, backend: Backend) -> Iterator[Change]:
    current = backend.describe_mapping(spec.function.name, _source_name(spec))
    return _mapping_changes(spec, backend, current)


def _mapping_changes(
    spec: Spec, backend: Backend, current: MappingDescription | None
) -> Iterator[Change]:
    wanted = mapping_description(spec)
    kind = MAPPING
    if current is None:
        yield Change(
            CREATE,
            kind,
            wanted.name,
            f"batches of {wanted.batch_size}, from {wanted.starting_position}"
            + (f" {wanted.starting_timestamp.isoformat()}" if wanted.starting_timestamp else ""),
            lambda: backend.create_mapping(wanted, spec.pipeline),
        )
    elif current != wanted:
        differences = ", ".join(
            f"{name} {getattr(current, name)!r} -> {getattr(wanted, name)!r}"
            for name in MAPPING_SETTINGS
            if getattr(current, name) != getattr(wanted, name)
        )
        yield Change(CHANGE, kind, wanted.name, differences, lambda: backend.update_mapping(wanted))
    else:
        yield Change(UNCHANGED, kind, wanted.name, f"batches of {wanted.batch_size}", _nothing)
