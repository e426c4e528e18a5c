import datetime
import json
import os
import re
from pathlib import Path

import boto3
import botocore.loaders
import botocore.session
import pytest
from aws_kinesis_agg.aggregator import RecordAggregator
from click.testing import CliRunner
from fakes import Processes
from moto import mock_aws
from moto.server import ThreadedMotoServer
from prometheus_client.parser import text_string_to_metric_families

from runner.backends.aws import AwsBackend, LeaseTiming
from runner.backends.local import LocalBackend
from runner.cli import cli

REPO = Path(__file__).resolve().parents[1]
PIPELINES = REPO / "pipelines"
FIXED_NOW = datetime.datetime(2026, 11, 26, 12, 0, 0, tzinfo=datetime.timezone.utc)


@pytest.fixture(autouse=True, scope="session")
def botocore_data_read_once():
    """Every boto3 session of the tests reads botocore's service models and endpoint data
    through one loader, so once: each new session (one per backend) would parse them again,
    some 0.2 s apiece. Sessions of one process may share a loader, as their clients do."""
    loaders = {}

    def create_loader(search_path_string=None):
        if search_path_string not in loaders:
            loaders[search_path_string] = botocore.loaders.create_loader(search_path_string)
        return loaders[search_path_string]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(botocore.session, "create_loader", create_loader)
        yield


@pytest.fixture
def processes():
    """Starts subprocesses (`processes.start(command, **popen_options)`); whatever of them still
    runs when the test ends, passed or failed, is killed with its process group."""
    with Processes() as started:
        yield started


@pytest.fixture
def write_spec(tmp_path):
    """Write YAML text to spec.yaml in tmp_path and return its path."""

    def write(text: str, name: str = "spec.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


MINIMAL = """\
pipeline: shop
resources:
  streams:
    source: {name: in, shards: 1}
    usa: {name: usa-out, shards: 2}
    other: {name: other-out, shards: 1}
source:
  stream: source
route:
  partition_key: session_id
  cases:
    - when: country == 'USA'
      to: usa
    - to: other
"""


# What a run's status and summary lines say of time: the rates, and how long it took.
TIMES = re.compile(
    r" \| [0-9.]+ in/s, [0-9.]+ out/s over the last [0-9.e+-]+ s"
    r"| \| took [0-9.]+ s from the first record to the last"
)


def timeless(text):
    """A run's lines without what they say of time (the rates, how long it took)."""
    return TIMES.sub("", text)


def samples(exposition):
    """Prometheus metrics text as {(sample name, ((label, value), ...)): value}, without the
    `_created` times."""
    if isinstance(exposition, bytes):
        exposition = exposition.decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def without_usa(spec_text):
    """The ecommerce spec's text without its USA route, stream, bucket and firehose."""
    start = spec_text.index("    usa:\n      name:")
    firehose = spec_text[start : spec_text.index("    international:\n      name:")]
    for gone in (
        '    usa:           {name: "${prefix}-usa-data-stream", shards: 2}\n',
        '    usa:           {name: "${prefix}-${account_id}-usa"}\n',
        firehose,
        "    - when: country == 'USA'\n      to: usa\n",
    ):
        assert gone in spec_text
        spec_text = spec_text.replace(gone, "")
    return spec_text


@pytest.fixture
def state(tmp_path, monkeypatch):
    """A fresh local state folder, used by the CLI through PIPELINE_STATE_DIR."""
    folder = tmp_path / "state"
    monkeypatch.setenv("PIPELINE_STATE_DIR", str(folder))
    return folder


def read_stream(backend, name):
    """Every record of every shard of a stream, as parsed JSON, shard by shard."""
    records = []
    for shard in backend.list_shards(name):
        iterator = backend.get_shard_iterator(name, shard.shard_id, "TRIM_HORIZON")
        while iterator:
            batch = backend.get_records(iterator)
            records += [json.loads(record.data) for record in batch.records]
            if not batch.records:
                break
            iterator = batch.next_iterator
    return records


def session_ids(backend, *streams):
    """The session_id of every record in these streams, in stream and shard order."""
    return [record["session_id"] for name in streams for record in read_stream(backend, name)]


def removed_state(state):
    """The error of a command whose local state folder was removed under it."""
    return (
        f"local state {state / 'pipeline.db'} was removed or replaced while this command ran; "
        "what it wrote since is lost: start the command again "
        "(after `pipeline apply SPEC` if the state is new)"
    )


@pytest.fixture(scope="module")
def endpoint():
    """A moto server on 127.0.0.1, shared by the tests of a module."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


@pytest.fixture
def aws_env(monkeypatch, tmp_path):
    """Fake credentials, and no AWS config of the machine running the tests."""
    for variable in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_REGION"):
        monkeypatch.delenv(variable, raising=False)
    for variable in list(os.environ):
        if variable.startswith("AWS_ENDPOINT_URL"):  # also AWS_ENDPOINT_URL_<SERVICE>
            monkeypatch.delenv(variable)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for variable in (*CREDENTIALS, "AWS_SECURITY_TOKEN"):
        monkeypatch.setenv(variable, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


@pytest.fixture
def moto_cli(endpoint, aws_env, tmp_path, monkeypatch):
    """`client(service)`, a boto3 client on the moto server, and `pipeline(*args, exit_code=0)`,
    the CLI through click's CliRunner on the aws target there, with a state folder in tmp_path,
    asserting its exit code (None: any)."""
    monkeypatch.setenv("PIPELINE_STATE_DIR", str(tmp_path / "state"))

    def client(service):
        return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1")

    def pipeline(*args, exit_code=0):
        done = CliRunner().invoke(cli, [*args, "--target", "aws", "--endpoint-url", endpoint])
        if exit_code is not None:
            assert done.exit_code == exit_code, done.stdout + done.stderr
        return done

    return client, pipeline


class CliTarget:
    """`pipeline ARGS` through click's CliRunner on one target, with a state of its own, and
    backends of that target for a test's own use."""

    def __init__(self, name: str, state: Path) -> None:
        self.name = name
        self.state = state

    def invoke(self, *args: str, input: str | None = None):
        options = ["--target", self.name, "--state-dir", str(self.state)]
        return CliRunner().invoke(cli, [*args, *options], input=input)

    def backend(self, wall=None):
        """A backend of the target; `wall` (epoch seconds) dates what it writes for people:
        its checkpoints and run lock locally, its run lease's times on AWS."""
        if self.name == "local":
            return LocalBackend(self.state, **({"clock": wall} if wall else {}))
        lease = LeaseTiming(**({"wall": wall} if wall else {}))
        return AwsBackend("us-east-1", poll_s=0, lease=lease)


@pytest.fixture(params=["local", "aws"])
def cli_target(request, tmp_path):
    """A CliTarget on the local target, and on AWS as moto fakes it in this process."""
    target = CliTarget(request.param, tmp_path / "state")
    if request.param == "local":
        yield target
        return
    request.getfixturevalue("aws_env")
    with mock_aws():
        yield target


# A pipeline of two source shards, with a dead-letter stream as the aws target needs.
SHOP = """\
pipeline: shop
resources:
  streams:
    source: {name: shop-in, shards: 2}
    out: {name: shop-out, shards: 1}
    rejects: {name: shop-rejects, shards: 1}
source: {stream: source}
route:
  partition_key: session_id
  cases:
    - to: out
dead_letter: {stream: rejects}
"""


# SHOP with a bucket too, and the same with its dead letter moved to the bucket.
SHOP_WITH_BUCKET = SHOP.replace(
    "resources:\n", "resources:\n  buckets:\n    rejects_bucket: {name: shop-rejects-bucket}\n"
)
TO_BUCKET = SHOP_WITH_BUCKET.replace("{stream: rejects}", "{bucket: rejects_bucket, prefix: bad/}")


def shop_applied(target: CliTarget, tmp_path: Path, text: str = SHOP) -> Path:
    """The spec written to tmp_path/shop.yaml and applied on the target; returns its path."""
    path = tmp_path / "shop.yaml"
    path.write_text(text)
    done = target.invoke("apply", str(path))
    assert done.exit_code == 0, done.output
    return path


def sessions(*ids: str) -> list[tuple[bytes, str]]:
    """PutRecords entries of sessions with these ids, keyed by them."""
    return [(json.dumps({"session_id": i}).encode(), i) for i in ids]


def kpl_aggregates(entries, max_size=None):
    """The records the official KPL aggregation library packs (data, partition key) or
    (data, partition key, explicit hash key) entries into, in order, as its aggregates' bytes."""
    aggregator = RecordAggregator(**({"max_size": max_size} if max_size else {}))
    full = []
    for data, key, *hash_key in entries:
        if done := aggregator.add_user_record(key, data, *hash_key):
            full.append(done)
    if last := aggregator.clear_and_get():
        full.append(last)
    return [aggregate.get_contents()[2] for aggregate in full]
