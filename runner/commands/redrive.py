"""`pipeline redrive`: what waits in the dead letter, sent through the current spec again.

For after a fix of the spec (or of a sink): the records now routed go to their sinks, those
that fail again go back to the dead letter with their new reason. It holds the pipeline's run
lock (the lease on AWS) while it works, so that a run and a redrive never work at once, and is
refused, saying who holds it, while a run does. Why a redrive killed at any point loses and
duplicates nothing is told in runner/loop/redrive.py. `--dry-run` takes no lock and writes
nothing: it shows, as `preview` does, what would become of each waiting entry.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import IO

from runner.backends.base import Backend
from runner.commands.holder import refuse_while_running
from runner.commands.preview import describe, tally
from runner.commands.run import check_resources
from runner.loop.backlog import Waiting, earlier_places, earlier_remedy
from runner.loop.dead_letter import run_refusal
from runner.loop.engine import Fenced
from runner.loop.redrive import BATCH_ENTRIES, Redrive
from runner.plural import count
from runner.records.processor import Outcome
from runner.spec import Spec, SpecError

STOP_IT = "stop it before redriving its dead letter"


def redrive(
    spec: Spec,
    backend: Backend,
    state_dir: Path,
    report: Callable[[str], None],
    out: IO[str],
    *,
    dry_run: bool = False,
    batch_size: int = BATCH_ENTRIES,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    now: Callable[[], float] = time.time,
) -> int:
    """`pipeline redrive`: check, take the run lock, redrive, report; returns 0. With
    `dry_run`, each entry's fate goes to `out` and nothing is written. `now` is what the
    spec's now(), epoch() and epoch_ms() give."""
    if spec.route is None:
        raise SpecError([f"{spec.path}: has no route, so there is nothing to redrive"])
    refusal = run_refusal(spec, backend.name)
    if refusal:
        raise SpecError([f"{spec.path}: {refusal}"])
    check_resources(spec, backend)

    def say(line: str) -> None:
        report(f"[{spec.pipeline}] {line}")

    options = {"batch_size": batch_size, "clock": clock, "sleep": sleep, "now": now}
    if dry_run:
        return _dry_run(spec, backend, state_dir, say, out, options)
    refuse_while_running(spec.pipeline, backend, STOP_IT)
    with backend.running(spec.pipeline, say, why=STOP_IT) as lease:
        job = Redrive(spec, Fenced(backend, lease), state_dir, say, lease=lease, **options)
        waiting = job.count()
        elsewhere = _elsewhere(spec, backend, sleep)
        if not sum(waiting.values()):
            say(f"nothing to redrive: {_entries(waiting)}{elsewhere}")
            return 0
        say(f"redriving the dead letter: {_entries(waiting)}{elsewhere}")
        try:
            counts = job.run()
        except Exception:
            say(f"stopped by an error: {job.counts.line()}")  # the error itself comes last
            raise
        say(f"done: {counts.line()}")
        if job.dead_letter.count:
            say(f"dead letter: {job.dead_letter.summary()}")
    return 0


def _dry_run(
    spec: Spec,
    backend: Backend,
    state_dir: Path,
    say: Callable[[str], None],
    out: IO[str],
    options: dict,
) -> int:
    fates: Counter[str] = Counter()

    def show(item: Waiting, outcome: Outcome | None) -> None:
        if item.entry is None:
            counted, text = ["not entries"], f"{item.place}: not a dead-letter entry"
        elif outcome is None:
            counted, text = ["already redriven"], f"{item.place}: already redriven"
        else:
            counted, _, text = describe(spec, item.place, outcome)
        fates.update(counted)
        out.write(text + "\n")

    job = Redrive(spec, backend, state_dir, say, show=show, **options)
    waiting = job.count()
    elsewhere = _elsewhere(spec, backend, options["sleep"])
    say(f"dry run, nothing is written: {_entries(waiting)}{elsewhere}")
    job.run()
    total = sum(waiting.values())
    out.write(tally(count(total, "entry", "entries"), fates) + "\n")
    return 0


def _entries(waiting: dict[str, int]) -> str:
    """E.g. '3 entries wait in stream S', '3 entries wait: 2 in file F, 1 in stream S'."""
    total = sum(waiting.values())
    if not total:
        return f"no entries wait in {' or '.join(waiting)}"
    entries = count(total, "entry waits", "entries wait")
    places = [(where, number) for where, number in waiting.items() if number]
    if len(places) == 1:
        return f"{entries} in {places[0][0]}"
    return f"{entries}: " + ", ".join(f"{number} in {where}" for where, number in places)


def _elsewhere(spec: Spec, backend: Backend, sleep: Callable[[float], None]) -> str:
    """What waits in earlier dead letters, which this redrive leaves, as the end of a line:
    e.g. '; 2 entries wait in stream S, an earlier dead letter ...'; '' if none."""
    waiting = {place.where: place.count() for place in earlier_places(spec, backend, sleep=sleep)}
    waiting = {where: number for where, number in waiting.items() if number}
    if not waiting:
        return ""
    which = "an earlier dead letter" if len(waiting) == 1 else "earlier dead letters"
    return (
        f"; {_entries(waiting)}, {which} the spec no longer names, which this redrive leaves: "
        f"{earlier_remedy(len(waiting))}"
    )
