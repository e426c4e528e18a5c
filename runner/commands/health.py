"""Whether a run is alive and ready, as `/healthz` and `/ready` of `pipeline run --metrics` say.

- Alive: the loop has not ended, and its current round has lasted less than the longest a wait
  for a failing service may last (`--give-up-after`) and a margin: a round lasting longer is
  stuck, as no wait of the loop lasts that long. A run still starting (waiting for the run
  lease) is alive.
- Ready: every shard to read has had an iterator, and the last round ended within
  READY_WITHIN_S (rounds end twice a second or more while the run keeps up; a round waiting
  for a throttled or failing service ends later).

Both answer with a reason, e.g. "not ready: 1 shard without an iterator yet (shardId-...)".
"""

from __future__ import annotations

from runner.loop.engine import Engine

READY_WITHIN_S = 30.0
STUCK_MARGIN_S = 60.0


class Health:
    """A run's health, from its engine once it has one."""

    def __init__(self) -> None:
        self.engine: Engine | None = None  # None while the run starts

    def attach(self, engine: Engine) -> None:
        self.engine = engine

    def alive(self) -> tuple[bool, str]:
        engine = self.engine
        if engine is None:
            return True, "alive: starting"
        if engine.ended:
            return False, "not alive: the run has ended"
        limit = engine.options.give_up_after
        began = engine.round_began
        if limit is not None and began is not None:
            lasted = engine.clock() - began
            if lasted > limit + STUCK_MARGIN_S:
                return False, (
                    f"not alive: the current round began {lasted:.0f} s ago, longer than any "
                    f"wait lasts (--give-up-after {limit:g} s, and {STUCK_MARGIN_S:g} s more)"
                )
        return True, "alive"

    def ready(self) -> tuple[bool, str]:
        engine = self.engine
        if engine is None:
            return False, "not ready: the run is starting"
        if engine.ended:
            return False, "not ready: the run has ended"
        if not_open := engine.reader.not_open():
            return False, f"not ready: {not_open}"
        ended = engine.round_ended
        if ended is None:
            return False, "not ready: no round has ended yet"
        ago = engine.clock() - ended
        if ago > READY_WITHIN_S:
            return False, (
                f"not ready: the last round ended {ago:.0f} s ago (more than {READY_WITHIN_S:g} s)"
            )
        return True, "ready"
