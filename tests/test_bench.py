"""`make bench` measures the reference scenario, whatever a user did to the shipped spec."""

import importlib.util

from conftest import PIPELINES, REPO, read_stream

from runner import spec
from runner.backends.local import LocalBackend
from runner.function import package


def load_bench():
    found = importlib.util.spec_from_file_location("bench", REPO / "bench" / "bench.py")
    module = importlib.util.module_from_spec(found)
    found.loader.exec_module(module)
    return module


def test_bench_runs_its_own_copy_of_the_scenario_spec():
    bench = load_bench()
    assert bench.SPEC == REPO / "bench" / "scenario.yaml"
    # The copy is the scenario as shipped; a change to one belongs in the other too.
    assert bench.SPEC.read_text() == (PIPELINES / "ecommerce.yaml").read_text()


def test_bench_times_the_cold_start_of_the_scenarios_lambda_package(tmp_path):
    bench = load_bench()

    size, _, _, imported = bench.cold_start(tmp_path, times=1)

    assert size == package.build(spec.load(bench.SPEC)).size
    assert imported == ["runner.function.handler", "runner.backends.aws"]


def test_bench_times_the_handler_on_events_of_the_scenarios_records(tmp_path):
    bench = load_bench()

    assert bench.handler_cost(tmp_path / "state", 200) > 0

    # Three timed passes over the 200 sessions, each routed and written as in Lambda.
    backend = LocalBackend(tmp_path / "state")
    assert len(read_stream(backend, bench.USA) + read_stream(backend, bench.INTERNATIONAL)) == 600


def test_bench_runs_the_pipeline_with_metrics_served_too(tmp_path):
    bench = load_bench()
    bench.produce(tmp_path / "state", 10).close()

    _, _, done = bench.run_pipeline(tmp_path / "state", *bench.METRICS)

    assert done.startswith("[de-c2w2lab1-etl] done: in 10 | out ")
