"""The shared fakes keep to the interface they stand in for, and end what they start."""

import signal
from pathlib import Path
from subprocess import PIPE

import pytest
from fakes import FaultyBackend, Processes, wait_until

from runner.backends.base import Backend
from runner.backends.local import LocalBackend


def test_the_faulty_backend_passes_on_everything_backend_offers(tmp_path):
    faulty = FaultyBackend(LocalBackend(tmp_path))
    offered = {name for name in dir(Backend) if not name.startswith("_")}
    offered |= set(Backend.__annotations__)  # name, region, delivers_firehoses

    assert sorted(offered - set(vars(FaultyBackend)) - set(vars(faulty))) == []


def test_a_fault_for_a_method_backend_lacks_is_refused(tmp_path):
    with pytest.raises(TypeError) as caught:
        FaultyBackend(LocalBackend(tmp_path), put_record=lambda call, *args: None)

    assert str(caught.value) == "Backend has no method put_record"


def running(pid):
    """Whether the process runs (a killed one may linger as a zombie until it is reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def test_processes_of_a_failing_test_are_killed_with_what_they_started():
    with pytest.raises(AssertionError), Processes() as processes:
        shell = processes.start(["sh", "-c", "sleep 600 & echo $!; wait"], stdout=PIPE, text=True)
        child = int(shell.stdout.readline())
        raise AssertionError("the test fails before it stops them")

    assert shell.returncode == -signal.SIGKILL
    wait_until(lambda: not running(child))  # SIGKILL lands when it is next scheduled
