"""What a run tells whoever watches it besides its lines (`pipeline run --metrics`).

The loop, its sinks and its reader call these hooks; the default does nothing, so that the loop
knows nothing of how it is watched (runner.commands.metrics keeps Prometheus metrics of them).
The hooks are called once a round or once a call to the target, never once a record: the
records are added up in the round's `Counts`, which `round_ended` hands over.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runner.loop.rounds import Counts
    from runner.spec import Spec

# PutRecords entries, by what became of them.
OK, THROTTLED, FAILED = "ok", "throttled", "failed"
# What became of a new version of the spec (`--watch`): swapped in; invalid; one a run cannot
# take (it needs a restart, or the run refuses it); waiting for `pipeline apply`; not loaded or
# checked, as the target failed meanwhile.
RELOADED, INVALID, REFUSED, WAITING, FAILED_TO_LOAD = (
    "reloaded",
    "invalid",
    "refused",
    "waiting",
    "failed",
)


class Observer:
    """Hooks that do nothing; a watcher overrides those it wants. They may be called from the
    run's threads: the reader's, and those writing sinks and checkpoints at once."""

    def round_ended(self, counts: Counts, spec: Spec, lag_ms: Mapping[str, int]) -> None:
        """A round ended: the run's counts so far, the spec it handled the round with, and
        how far behind the newest record each shard's last read was."""

    def put_records(self, stream: str, results: Mapping[str, int]) -> None:
        """A PutRecords call to `stream` ended: its entries by result (OK, THROTTLED, FAILED)."""

    def put_retried(self, stream: str) -> None:
        """A PutRecords call sent `stream` entries again that a call before did not put."""

    def get_records_throttled(self, shard_id: str) -> None:
        """A GetRecords call on a source shard was throttled."""

    def checkpoint_written(self, seconds: float) -> None:
        """A checkpoint was written; it took this long (retries included)."""

    def spec_reload(self, result: str) -> None:
        """A new version of the spec was acted on, with this result (RELOADED, ...)."""


NO_OBSERVER = Observer()
