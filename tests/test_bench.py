"""`make bench` measures the reference scenario, whatever a user did to the shipped spec."""

import importlib.util
import json

from conftest import PIPELINES, REPO, read_stream

from runner import spec
from runner.backends.aws import AwsBackend
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


def test_bench_runs_the_pipeline_with_metrics_served_too(tmp_path):
    bench = load_bench()
    bench.produce(tmp_path / "state", 10).close()

    _, _, done = bench.run_pipeline(tmp_path / "state", *bench.METRICS)

    assert done.startswith("[de-c2w2lab1-etl] done: in 10 | out ")


def test_the_latency_bench_waits_before_every_call_and_reads_at_most_a_shards_share(tmp_path):
    latency = load_bench("latency")
    waits = []
    late = latency.Late(LocalBackend(tmp_path), delay=0.02, per_read=3, sleep=waits.append)

    late.create_stream("events", 1)
    late.put_records("events", [(b"a", "a"), (b"b", "b"), (b"c", "c"), (b"d", "d")])
    (shard,) = late.list_shards("events")
    iterator = late.get_shard_iterator("events", shard.shard_id, "TRIM_HORIZON")

    assert [r.data for r in late.get_records(iterator).records] == [b"a", b"b", b"c"]
    assert waits == [0.02] * 5
    # As a run sees the AWS target: Firehose delivers, and calls go out at once.
    assert (late.delivers_firehoses, late.read_workers, late.write_workers) == (
        True,
        AwsBackend.read_workers,
        AwsBackend.write_workers,
    )


def test_the_latency_bench_runs_the_scenario_in_its_own_process_behind_a_late_target(tmp_path):
    latency, bench = load_bench("latency"), load_bench()
    sinks = (bench.USA, bench.INTERNATIONAL)
    path = latency.spec_with(tmp_path, sink_shards=4)
    latency.produce(tmp_path / "state", path, 100)

    assert latency.rate(path, tmp_path / "state", 100) > 0

    backend = LocalBackend(tmp_path / "state")
    assert sum(len(read_stream(backend, sink)) for sink in sinks) == 100
    assert [len(backend.list_shards(sink)) for sink in sinks] == [4, 4]


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
