"""/healthz and /ready of `pipeline run --metrics` (runner/commands/health.py): what makes a run
alive and ready, on a clock the test sets."""

from types import SimpleNamespace

from fakes import Clock

from runner.commands.health import Health


class Reader:
    def __init__(self):
        self.why = "1 shard without an iterator yet (shardId-000000000000)"

    def not_open(self):
        return self.why


def attached():
    """A Health on an engine that has not begun its first round, at 100 s on its clock."""
    clock = Clock(100.0)
    engine = SimpleNamespace(
        clock=clock,
        ended=False,
        options=SimpleNamespace(give_up_after=300.0),
        round_began=None,
        round_ended=None,
        reader=Reader(),
    )
    health = Health()
    health.attach(engine)
    return health, engine


def test_a_run_still_starting_is_alive_and_not_ready():
    health = Health()

    assert (health.alive(), health.ready()) == (
        (True, "alive: starting"),
        (False, "not ready: the run is starting"),
    )


def test_ready_once_every_shard_has_an_iterator_and_a_round_ended():
    health, engine = attached()
    assert health.ready() == (
        False,
        "not ready: 1 shard without an iterator yet (shardId-000000000000)",
    )
    engine.reader.why = None
    assert health.ready() == (False, "not ready: no round has ended yet")

    engine.round_began = engine.round_ended = 100.0

    assert (health.alive(), health.ready()) == ((True, "alive"), (True, "ready"))


def test_a_run_whose_last_round_ended_over_30_s_ago_is_not_ready_but_alive():
    health, engine = attached()
    engine.reader.why = None
    engine.round_ended = 100.0
    engine.round_began = 101.0  # a round waiting for a throttled sink since
    engine.clock.now = 131.5

    assert health.ready() == (False, "not ready: the last round ended 32 s ago (more than 30 s)")
    assert health.alive() == (True, "alive")


def test_a_round_lasting_longer_than_any_wait_is_stuck():
    health, engine = attached()
    engine.round_began = 100.0
    engine.clock.now = 461.0

    assert health.alive() == (
        False,
        "not alive: the current round began 361 s ago, longer than any wait lasts "
        "(--give-up-after 300 s, and 60 s more)",
    )


def test_a_run_that_ended_is_neither_alive_nor_ready():
    health, engine = attached()
    engine.ended = True

    assert (health.alive(), health.ready()) == (
        (False, "not alive: the run has ended"),
        (False, "not ready: the run has ended"),
    )
