"""`pipeline run`: check the resources, take the run lock, run the loop and report what it did.

The loop itself is `runner.loop.engine.Engine`; this module says what a user sees around it:
the start lines, the refusals, the summary. A spec with `lambda:` runs on the local target as
Lambda would run it: the engine hands its records to the Lambda handler
(`runner.function.emulation`).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator
from pathlib import Path

from runner.backends.base import Backend, BackendError, checkpoint_table
from runner.commands.health import Health
from runner.function.emulation import Emulation, running_line
from runner.loop.dead_letter import run_refusal
from runner.loop.engine import Engine, RunOptions
from runner.loop.lines import ERROR, INFO, WARNING, Line, of_pipeline
from runner.loop.observer import NO_OBSERVER
from runner.loop.patience import GaveUp
from runner.loop.reload import Reloads
from runner.loop.rounds import Counts
from runner.loop.run_info import record_spec_version
from runner.plural import count
from runner.spec import Spec, SpecError


def run(
    spec: Spec,
    backend: Backend,
    state_dir: Path,
    options: RunOptions,
    report: Callable[[str], None],
    reload: Callable[[], Spec] | None = None,
    metrics: tuple[str, int] | None = None,
) -> int:
    """`pipeline run`: check the resources, take the run lock, run the loop, report what it
    did; returns 0, or 130 when Ctrl-C stopped it before it could finish cleanly (a second
    one, or one while waiting for the lock). Raises LeaseLost, after the summary line, if the
    run lost its lock.
    With `reload` (`--watch`), which loads the spec file again, the run follows its edits.
    With `metrics` (`--metrics`: host and port; port 0 takes a free one), it serves its
    metrics and health there until it ends."""
    refused = refusal(spec, backend.name)
    if refused:
        raise SpecError([f"{spec.path}: {refused}"])
    observer, health = NO_OBSERVER, Health()
    with contextlib.ExitStack() as held:
        if metrics:  # first, so that a port in use is said before anything is read
            # Here, not at the top: only a run serving metrics loads prometheus_client.
            from runner.commands.metrics import Metrics, MetricsServer

            observer = Metrics(spec.pipeline)
            server = MetricsServer(
                *metrics,
                observer,
                health,
                say=lambda line: report(Line(f"[{spec.pipeline}] {line}", WARNING)),
            )
            held.callback(server.close)
            report(
                Line(
                    f"[{spec.pipeline}] metrics at http://{server.address}/metrics "
                    "(health: /healthz, /ready)",
                    event="metrics",
                    address=server.address,
                )
            )
        check_resources(spec, backend)
        check_not_in_lambda(spec, backend)
        follow = reloads(backend, reload) if reload else None
        try:
            lease = held.enter_context(
                backend.running(spec.pipeline, of_pipeline(spec.pipeline, report))
            )
        except KeyboardInterrupt:  # e.g. while another run's lease is waited for
            report(
                Line(
                    f"[{spec.pipeline}] stopped while waiting for the run lease: nothing was read",
                    WARNING,
                )
            )
            return 130
        record_spec_version(backend, spec)  # for `pipeline status`
        # The checkpoints are read once the lease is held: a run finishing meanwhile moves them.
        engine = Engine(
            spec,
            backend,
            state_dir,
            options,
            report,
            lease=lease,
            reloads=follow,
            handover=Emulation if spec.function is not None else None,
            observer=observer,
        )
        health.attach(engine)
        try:
            return _run(engine, report)
        except GaveUp as error:
            gave_up = error  # raised once the run lock is let go, as at a normal end
    raise gave_up


def _run(engine: Engine, report: Callable[[str], None]) -> int:
    spec, backend = engine.spec, engine.backend
    report(
        Line(
            f"[{spec.pipeline}] reading {engine.source} on the {backend.name} target "
            f"(Ctrl-C stops cleanly)",
            event="start",
            source=engine.source,
            target=backend.name,
        )
    )
    if spec.function is not None:
        report(f"[{spec.pipeline}] {running_line(spec.function)}")
    # Said at once, so that a renamed `pipeline:` (new checkpoints) does not pass unnoticed.
    resumed = len(engine.reader.checkpoints)
    if resumed:
        report(f"[{spec.pipeline}] resuming from checkpoints of {count(resumed, 'shard')}")
    else:
        report(
            f"[{spec.pipeline}] no checkpoints for pipeline {spec.pipeline}: "
            f"starting at {spec.source.start}"
        )
    report(f"[{spec.pipeline}] dead letter: {engine.dead_letter.where()}")
    try:
        with _collecting_less():
            counts = engine.run()
    except KeyboardInterrupt:  # a second Ctrl-C
        report(
            Line(
                f"[{spec.pipeline}] stopped at once: what was read since the last checkpoint "
                "is read again by the next run",
                WARNING,
            )
        )
        return 130
    except GaveUp:
        report(_summary(spec, "stopped", engine.counts, ERROR))
        raise
    except Exception:
        # What was done until then; the error itself is said last, by the caller.
        report(_summary(spec, "stopped by an error", engine.counts, ERROR))
        raise
    report(_summary(spec, "done", counts))
    for delivery in engine.deliveries:
        report(
            f"[{spec.pipeline}] firehose {delivery.firehose.name}: "
            f"{count(delivery.records, 'record')} in {count(len(delivery.objects), 'object')} "
            f"to bucket {delivery.bucket}"
        )
    emulation = engine.handover
    # More than one if a reload moved it (or, for the handler, made a new one).
    dead_letters = (
        emulation.dead_letters if isinstance(emulation, Emulation) else engine.dead_letters
    )
    for dead_letter in dead_letters:
        if dead_letter.count:
            report(f"[{spec.pipeline}] dead letter: {dead_letter.summary()}")
    return 0


def _summary(spec: Spec, how: str, counts: Counts, level: str = INFO) -> Line:
    """The run's last counts, e.g. "[shop] done: in 3 | ...", with them as fields."""
    return Line(
        f"[{spec.pipeline}] {how}: {counts.line()}", level, event="summary", **counts.fields()
    )


@contextlib.contextmanager
def _collecting_less() -> Iterator[None]:
    """Python's cycle collector, told what a run is: what it loaded (modules, the spec) lives as
    long as the run, and each record's objects are freed by reference counting as soon as it
    is written, so the collector need look at neither as often as it would by default."""
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(10_000, 20, 100)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def reloads(backend: Backend, load: Callable[[], Spec]) -> Reloads:
    """How a run following its spec file (`--watch`) gets a new version (`load`) and checks
    it as a start does."""
    return Reloads(
        load=load,
        refusal=lambda new: refusal(new, backend.name),
        missing=lambda new: missing_resources(new, backend),
    )


def refusal(spec: Spec, target: str) -> str | None:
    """Why `pipeline run` refuses the spec on `target` whatever exists there, or None."""
    if spec.route is None:
        return "has no route, so there is nothing to run"
    if spec.function is not None and target != "local":
        return (
            f"this pipeline runs in Lambda function {spec.function.name}; pipeline status shows it"
        )
    return run_refusal(spec, target)


def check_not_in_lambda(spec: Spec, backend: Backend) -> None:
    """Refuse to run a pipeline whose source stream Lambda reads for it already (a mapping its
    apply made, from a spec with `lambda:`): both would handle every record."""
    source = spec.streams[spec.source.stream].name
    for mapping in backend.feeding(source):
        if mapping.owner == spec.pipeline:
            raise BackendError(
                f"Lambda function {mapping.function} runs pipeline {spec.pipeline} already (its "
                f"event source mapping reads stream {source}): a run here too would handle "
                f"every record twice; `pipeline apply {spec.path} --prune` deletes the mapping, "
                "since this spec has no `lambda:` section"
            )


def check_resources(spec: Spec, backend: Backend) -> None:
    """Refuse to run when a stream or bucket the run uses does not exist."""
    missing = missing_resources(spec, backend)
    if missing:
        raise BackendError(
            f"{', '.join(missing)} not found on {backend.location}: "
            f"run `pipeline apply {spec.path}` first"
        )


def missing_resources(spec: Spec, backend: Backend) -> list[str]:
    """What the run of `spec` uses that does not exist, e.g. ['stream usa-out']."""
    missing = [
        f"stream {stream.name}"
        for stream in spec.streams.values()
        if backend.describe_stream(stream.name) is None
    ]
    buckets = [] if backend.delivers_firehoses else [f.bucket for f in spec.firehoses.values()]
    if spec.dead_letter and spec.dead_letter.bucket:
        buckets.append(spec.dead_letter.bucket)
    missing += [
        f"bucket {spec.buckets[key].name}"
        for key in dict.fromkeys(buckets)
        if not backend.bucket_exists(spec.buckets[key].name)
    ]
    if not backend.checkpoint_store_exists(spec.pipeline):
        missing.append(f"checkpoint table {checkpoint_table(spec.pipeline)}")
    return missing
