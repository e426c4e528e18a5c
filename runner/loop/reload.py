"""Following edits of a running pipeline's spec: `pipeline run --watch`.

The engine asks `SpecWatch.poll()` between rounds, after a round's checkpoints, so that every
record is handled whole by one version of the spec and no checkpoint moves past a record the
new version has not handled. The file is looked at every half second; once its bytes, size and
time have held still between two looks, their hash says whether it changed. A changed spec is
loaded as `validate` loads it, and:

- an invalid one is reported, error by error, and the run keeps its version;
- one changing what a run cannot change on the way (its name, region, source stream, `start`,
  the firehoses it delivers, or whether Lambda's handler takes the records) is refused, saying
  so;
- one needing resources that do not exist yet waits for `pipeline apply`, checking again every
  few seconds;
- any other is swapped in, saying what changed.

Without `--watch`, a change is only said once.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from runner.backends.base import BackendError
from runner.loop.lines import WARNING, Line, of_pipeline
from runner.loop.observer import (
    FAILED_TO_LOAD,
    INVALID,
    NO_OBSERVER,
    REFUSED,
    RELOADED,
    WAITING,
    Observer,
)
from runner.plural import count
from runner.spec import Function, Spec, SpecError, version

LOOK_EVERY_S = 0.5  # a saved change is acted on within two looks
RECHECK_EVERY_S = 2.0  # how often a version waiting for `pipeline apply` checks again


@dataclass(frozen=True)
class Reloads:
    """What a run following its spec needs from the command running it."""

    load: Callable[[], Spec]  # the spec file loaded again, as validate does; raises SpecError
    refusal: Callable[[Spec], str | None]  # why a run would refuse it whatever exists, or None
    missing: Callable[[Spec], list[str]]  # what it uses that does not exist, e.g. 'stream X'


class SpecFile:
    """A spec's file, looked at for a saved change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._last: tuple | None = None  # its time, size and version at the last look

    def look(self) -> str | None:
        """The version of the file's bytes once they, its size and time held still since the
        last look; None while they change, when it cannot be read (an editor saving it) or
        is no regular file (a pipe is read once)."""
        try:
            found = os.stat(self.path)
            if not stat.S_ISREG(found.st_mode):
                return None
            now = (found.st_mtime_ns, found.st_size, version(self.path.read_bytes()))
        except OSError:
            return None
        held, self._last = now == self._last, now
        return now[2] if held else None


class SpecWatch:
    """The running version of a spec, and the next one once it is ready to swap in."""

    def __init__(
        self,
        spec: Spec,
        reloads: Reloads | None,  # None: a change is only said, once
        report: Callable[[str], None],
        clock: Callable[[], float],
        *,
        delivers: bool,  # whether the run delivers the spec's firehoses itself
        observer: Observer = NO_OBSERVER,  # told the result of each new version acted on
    ) -> None:
        self.observer = observer
        self.spec = spec
        self.number = 1  # versions this run has used
        self.reloads = reloads
        self.say = report  # a line as it is: a spec error
        self.report = of_pipeline(spec.pipeline, report)
        self.clock = clock
        self.delivers = delivers
        self.file = SpecFile(spec.path)
        self._seen: str | None = spec.version  # of the bytes last acted on
        self._next_look = clock()
        self._waiting: Spec | None = None  # a valid version waiting for `pipeline apply`
        self._recheck_at = 0.0
        self._told = False

    def poll(self) -> Spec | None:
        """The new version of the spec if one is ready, after saying what changed; else None."""
        now = self.clock()
        if now < self._next_look:
            return None
        self._next_look = now + LOOK_EVERY_S
        seen = self.file.look()
        if seen is not None and seen != self._seen:
            self._seen = seen
            self._waiting = None
            if seen == self.spec.version:
                return None  # saved back as it runs
            if self.reloads is None:
                self._tell()
                return None
            return self._try(self._load())
        if self._waiting is not None and now >= self._recheck_at:
            return self._try(self._waiting, again=True)
        return None

    def _tell(self) -> None:
        if not self._told:
            self._told = True
            self.report(
                Line(
                    "spec changed on disk; this run keeps the version it started with "
                    "(restart, or use --watch)",
                    WARNING,
                )
            )

    def _load(self) -> Spec | None:
        try:
            new = self.reloads.load()
        except BackendError as error:  # e.g. STS asked for a new ${account_id}
            self.observer.spec_reload(FAILED_TO_LOAD)
            self.report(Line(f"cannot load the new spec (trying again): {error}", WARNING))
            self._seen = None  # so that the next look tries again, after a while
            self._next_look = self.clock() + RECHECK_EVERY_S
            return None
        except SpecError as error:
            for line in error.problems:
                self.say(Line(line, WARNING))  # FILE:LINE:COL: PATH: message, as validate says
            self._kept(f"it has {count(len(error.problems), 'error')}", INVALID)
            return None
        self._seen = new.version  # what was loaded, if saved again meanwhile
        return new

    def _try(self, new: Spec | None, *, again: bool = False) -> Spec | None:
        """`new` if it can be swapped in now, else None after saying why not (once)."""
        if new is None or new.version == self.spec.version:
            return None
        if needs_restart := restart_changes(self.spec, new, delivers=self.delivers):
            verb = "needs" if len(needs_restart) == 1 else "need"
            self._kept(f"a change of {_listed(needs_restart)} {verb} a restart", REFUSED)
            return None
        if refused := self.reloads.refusal(new):
            self._kept(f"{new.path}: {refused}", REFUSED)
            return None
        if not self._exists(new, again=again):
            self._waiting = new
            self._recheck_at = self.clock() + RECHECK_EVERY_S
            return None
        self._waiting = None
        self.number += 1
        self.observer.spec_reload(RELOADED)
        self.report(
            Line(
                f"spec reloaded (version {self.number}): {changes(self.spec, new)}",
                event="reload",
                version=self.number,
            )
        )
        self.spec = new
        return new

    def _exists(self, new: Spec, *, again: bool) -> bool:
        """Whether what `new` uses exists; if not, says so unless it was said (`again`)."""
        try:
            missing = self.reloads.missing(new)
        except BackendError as error:
            self.observer.spec_reload(FAILED_TO_LOAD)
            self.report(
                Line(f"cannot check the resources of the new spec (trying again): {error}", WARNING)
            )
            return False
        if missing and not again:
            self.observer.spec_reload(WAITING)
            verb = "does" if len(missing) == 1 else "do"
            self.report(
                Line(f"waiting for pipeline apply: {_listed(missing)} {verb} not exist", WARNING)
            )
        return not missing

    def _kept(self, why: str, result: str) -> None:
        self.observer.spec_reload(result)
        self.report(
            Line(f"spec not reloaded: {why}; this run keeps version {self.number}", WARNING)
        )


def restart_changes(old: Spec, new: Spec, *, delivers: bool) -> list[str]:
    """What `new` changes that a run cannot change on the way, e.g. 'source.start (a -> b)'."""
    found = []
    for what, before, after in (
        ("pipeline", old.pipeline, new.pipeline),
        ("region", old.region, new.region),
        ("source.stream", source_stream(old), source_stream(new)),
        ("source.start", old.source.start, new.source.start),
    ):
        if before != after:
            found.append(f"{what} ({before} -> {after})")
    if delivers and _firehoses(old) != _firehoses(new):
        found.append("resources.firehoses (this run delivers them)")
    if (old.function is None) != (new.function is None):
        found.append(f"lambda ({_function(old)} -> {_function(new)})")
    return found


def _function(spec: Spec) -> str:
    return f"function {spec.function.name}" if spec.function else "none"


def source_stream(spec: Spec) -> str:
    return spec.streams[spec.source.stream].name


def _firehoses(spec: Spec) -> dict:
    """The firehoses as a run delivers them: with their streams' and buckets' names."""
    return {
        key: (f, spec.streams[f.stream].name, spec.buckets[f.bucket].name)
        for key, f in spec.firehoses.items()
    }


def changes(old: Spec, new: Spec) -> str:
    """What a run sees change from `old` to `new`, e.g.
    'route + canada, + audit; transform unchanged'."""
    parts = [_route_changes(old, new)]
    before, after = old.route.partition_key.text, new.route.partition_key.text
    if before != after:
        parts.append(f"partition key {before} -> {after}")
    if dead_letter_place(old) != dead_letter_place(new):
        parts.append(f"dead letter {dead_letter_place(old)} -> {dead_letter_place(new)}")
    if old.function and new.function and old.function != new.function:
        parts.append("lambda " + _function_changes(old.function, new.function))
    if gone := _resources_gone(old, new):
        parts.append(f"no longer in the spec: {', '.join(gone)} (apply --prune deletes them)")
    parts.append("transform " + ("unchanged" if old.transform == new.transform else "changed"))
    return "; ".join(parts)


def _resources_gone(old: Spec, new: Spec) -> list[str]:
    """Firehoses, buckets and streams the spec no longer declares, but for the streams the
    route or the dead letter named (the summary tells of those): what the run no longer uses
    and `apply --prune` deletes. (A run waits for what a reload adds to exist.)"""
    told = {s.streams[key].name for s in (old, new) for key in routed(s)}
    told |= {s.streams[s.dead_letter.stream].name for s in (old, new) if _to_stream(s)}
    gone = []
    for kind, names in (
        ("firehose", lambda s: {each.name for each in s.firehoses.values()}),
        ("stream", lambda s: {each.name for each in s.streams.values()} - told),
        ("bucket", lambda s: {each.name for each in s.buckets.values()}),
    ):
        gone += [f"{kind} {name}" for name in sorted(names(old) - names(new))]
    return gone


def _to_stream(spec: Spec) -> bool:
    return spec.dead_letter is not None and spec.dead_letter.stream is not None


def _function_changes(old: Function, new: Function) -> str:
    """e.g. 'batch_size 100 -> 10, bisect_on_error True -> False'."""
    return ", ".join(
        f"{field.name} {getattr(old, field.name)} -> {getattr(new, field.name)}"
        for field in dataclasses.fields(Function)
        if getattr(old, field.name) != getattr(new, field.name)
    )


def _route_changes(old: Spec, new: Spec) -> str:
    before, after = routed(old), routed(new)
    items = [f"+ {key}" for key in after if key not in before]
    items += [f"- {key}" for key in before if key not in after]
    items += [
        f"{key} -> stream {new.streams[key].name}"
        for key in after
        if key in before and new.streams[key].name != old.streams[key].name
    ]
    if items:
        return "route " + ", ".join(items)
    return "route " + ("unchanged" if old.route == new.route else "changed")


def routed(spec: Spec) -> list[str]:
    """The keys of the streams the route writes to, in the order of its cases."""
    return list(dict.fromkeys(case.to for case in spec.route.cases)) if spec.route else []


def dead_letter_place(spec: Spec) -> str:
    """Where the spec's dead letter is, e.g. 'stream rejects' or 'the state folder's file'."""
    declared = spec.dead_letter
    if declared is None:
        return "the state folder's file"
    if declared.stream:
        return f"stream {spec.streams[declared.stream].name}"
    under = f" under {declared.prefix}" if declared.prefix else ""
    return f"bucket {spec.buckets[declared.bucket].name}{under}"


def _listed(items: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"
