"""The shared fakes keep to the interface they stand in for."""

import pytest
from fakes import FaultyBackend

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
