"""`make bench` measures the reference scenario, whatever a user did to the shipped spec."""

import importlib.util
import json

from conftest import PIPELINES, REPO, read_stream

from runner import spec
from runner.backends.local import LocalBackend
from runner.function import package


def load_bench(name="bench"):
    found = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
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


def test_bench_times_the_work_alone_from_a_jsonl_file_to_one_per_route(tmp_path):
    bench = load_bench()

    handled, seconds = bench.pure_compute_loop(tmp_path, 300)

    assert handled == 300 and seconds > 0
    usa = (tmp_path / "usa.jsonl").read_bytes().splitlines()
    international = (tmp_path / "international.jsonl").read_bytes().splitlines()
    assert len(usa) + len(international) == 300
    records = [json.loads(line) for line in usa + international]
    assert {r["country"] == "USA" for r in map(json.loads, usa)} == {True}
    assert "USA" not in {r["country"] for r in map(json.loads, international)}
    added = {"processing_timestamp", "overall_product_quantity", "overall_in_shopping_cart"}
    assert all(added | {"total_different_products"} <= record.keys() for record in records)


def test_the_emulators_bench_says_so_and_succeeds_where_node_is_missing(monkeypatch, capsys):
    emulators = load_bench("emulators")
    monkeypatch.setattr(emulators.shutil, "which", lambda tool: None)

    assert emulators.main() == 0

    assert capsys.readouterr().out == (
        "bench-emulators: node and npm not found: kinesalite needs them; skipped\n"
    )
