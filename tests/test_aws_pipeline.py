"""End to end on the aws target: the shipped scenario against a moto server on 127.0.0.1."""

import base64
import contextlib
import datetime
import hashlib
import http.client
import http.server
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from itertools import islice

import boto3
import pytest
from botocore.config import Config
from click.testing import CliRunner
from conftest import PIPELINES, REPO, kpl_aggregates, without_usa
from fakes import HungRenewals, Processes, VirtualClock, wait_until

from runner import spec
from runner.backends.aws import AwsBackend, LeaseTiming
from runner.backends.aws import session as aws_session
from runner.backends.base import LeaseLost, RunInfo, Throttled
from runner.cli import cli
from runner.commands import run as run_command
from runner.commands.produce import synthetic_sessions
from runner.commands.provision import apply
from runner.loop.engine import RunOptions
from runner.records.processor import encode

ACCOUNT = "123456789012"  # moto's account
SOURCE = "de-c2w2lab1-kinesis-data-stream"
USA = "de-c2w2lab1-usa-data-stream"
INTERNATIONAL = "de-c2w2lab1-international-data-stream"


# A moto server in a process of its own: two of them keep apart what they hold, which two
# ThreadedMotoServers in this process would not (moto's state is global to a process).
MOTO_SERVER = """\
import sys
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print("http://%s:%d" % server.get_host_and_port(), flush=True)
sys.stdin.read()  # until the test closes this process's stdin
server.stop()
"""


@contextlib.contextmanager
def moto_process():
    """The endpoint of a moto server running in a subprocess until the block ends."""
    with Processes() as processes:
        process = processes.start(
            [sys.executable, "-c", MOTO_SERVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # its request log
            text=True,
        )
        yield process.stdout.readline().strip()


@pytest.fixture(scope="module")
def separate_endpoint():
    with moto_process() as endpoint:
        yield endpoint


FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def server_client(endpoint, service, region="us-east-1"):
    """A boto3 client of the test's own on a moto server, whatever this machine configures."""
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def in_clean_env(home, *args, **variables):
    """`pipeline ARGS` as a new user's shell runs it: an empty HOME (so no AWS config), PATH,
    and only `variables` besides."""
    env = {"HOME": str(home), "PATH": os.environ["PATH"], **variables}
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def aws(moto_cli):
    """conftest's moto_cli; the scenario's resources are destroyed after the test."""
    yield moto_cli
    _, pipeline = moto_cli
    pipeline("destroy", str(PIPELINES / "ecommerce.yaml"), "--yes", exit_code=None)


def read_stream(kinesis, name):
    records = []
    for shard in kinesis.list_shards(StreamName=name)["Shards"]:
        iterator = kinesis.get_shard_iterator(
            StreamName=name, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        answer = kinesis.get_records(ShardIterator=iterator, Limit=10_000)
        records += [json.loads(record["Data"]) for record in answer["Records"]]
    return records


def test_apply_creates_the_scenario_and_a_run_routes_every_session(aws, tmp_path):
    client, pipeline = aws
    spec = str(PIPELINES / "ecommerce.yaml")

    applied = pipeline("apply", spec)
    assert applied.stdout.splitlines()[-1] == "Applied: 12 created, 0 changed, 0 unchanged."

    kinesis = client("kinesis")
    shards = {
        name: kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"][
            "OpenShardCount"
        ]
        for name in (SOURCE, USA, INTERNATIONAL)
    }
    assert shards == {SOURCE: 1, USA: 2, INTERNATIONAL: 2}
    s3 = client("s3")
    for which in ("usa", "int", "dead-letter"):
        bucket = f"de-c2w2lab1-{ACCOUNT}-{which}"
        blocked = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
        assert all(blocked.values())
        rules = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]
        assert rules["Rules"][0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    iam = client("iam")
    role = iam.get_role(RoleName="de-c2w2lab1-firehose-role")["Role"]
    trust = role["AssumeRolePolicyDocument"]["Statement"][0]
    assert trust["Principal"] == {"Service": "firehose.amazonaws.com"}
    (policy_name,) = iam.list_role_policies(RoleName="de-c2w2lab1-firehose-role")["PolicyNames"]
    policy = iam.get_role_policy(RoleName="de-c2w2lab1-firehose-role", PolicyName=policy_name)
    resources = {r for s in policy["PolicyDocument"]["Statement"] for r in s["Resource"]}
    assert f"arn:aws:kinesis:us-east-1:{ACCOUNT}:stream/{USA}" in resources
    assert f"arn:aws:kinesis:us-east-1:{ACCOUNT}:stream/{SOURCE}" not in resources
    logs = client("logs")
    firehose = client("firehose")
    for which, stream in (("usa", USA), ("international", INTERNATIONAL)):
        group = f"de-c2w2lab1-firehose-{which}-log-group"
        log_streams = logs.describe_log_streams(logGroupName=group)["logStreams"]
        assert [s["logStreamName"] for s in log_streams] == [
            f"de-c2w2lab1-{which}-firehose-log-stream"
        ]
        described = firehose.describe_delivery_stream(
            DeliveryStreamName=f"de-c2w2lab1-firehose-{which}"
        )["DeliveryStreamDescription"]
        assert described["DeliveryStreamType"] == "KinesisStreamAsSource"
        source = described["Source"]["KinesisStreamSourceDescription"]
        assert source["KinesisStreamARN"].endswith(f":stream/{stream}")
        destination = described["Destinations"][0]["ExtendedS3DestinationDescription"]
        assert (destination["Prefix"], destination["ErrorOutputPrefix"]) == ("firehose/", "errors/")
        assert destination["BufferingHints"] == {"SizeInMBs": 1, "IntervalInSeconds": 60}
        assert destination["CompressionFormat"] == "UNCOMPRESSED"
        assert destination["CloudWatchLoggingOptions"]["LogGroupName"] == group
    tables = client("dynamodb").list_tables()["TableNames"]
    assert "de-c2w2lab1-etl-checkpoints" in tables

    again = pipeline("apply", spec)
    assert again.stdout == "No changes: 12 resources up to date.\n"

    edited = tmp_path / "ecommerce.yaml"
    edited.write_text(
        (PIPELINES / "ecommerce.yaml")
        .read_text()
        .replace(
            'usa:           {name: "${prefix}-usa-data-stream", shards: 2}',
            'usa:           {name: "${prefix}-usa-data-stream", shards: 3}',
        )
    )
    planned = pipeline("plan", str(edited))
    changes = [line for line in planned.stdout.splitlines() if line.startswith("~")]
    assert changes == [f"~ change stream {USA} (shards 2 -> 3)"]

    drifted = tmp_path / "drifted.yaml"
    drifted.write_text(
        (PIPELINES / "ecommerce.yaml")
        .read_text()
        .replace(
            "      prefix: firehose/\n      error_prefix: errors/\n      buffer: {size_mb: 1, "
            'interval_s: 60}\n      compression: UNCOMPRESSED\n      role: "${prefix}-firehose-'
            'role"\n      logging:\n        group: "${prefix}-firehose-usa-log-group"',
            "      prefix: sessions/\n      error_prefix: errors/\n      buffer: {size_mb: 1, "
            'interval_s: 120}\n      compression: UNCOMPRESSED\n      role: "${prefix}-firehose-'
            'role"\n      logging:\n        group: "${prefix}-firehose-usa-log-group"',
        )
    )
    planned = pipeline("plan", str(drifted))
    changes = [line for line in planned.stdout.splitlines() if line.startswith("~")]
    assert changes == [
        "~ change firehose de-c2w2lab1-firehose-usa "
        "(prefix 'firehose/' -> 'sessions/', buffer_interval_s 60 -> 120)"
    ]

    sessions = list(islice(synthetic_sessions(21), 200))
    pipeline(
        "produce",
        "--stream",
        SOURCE,
        "--synthetic",
        "--count",
        "200",
        "--mean-gap",
        "0",
        "--seed",
        "21",
    )
    ran = pipeline("run", spec, "--until-idle", "0")
    assert "done: in 200 |" in ran.stderr

    routed = {
        name: {r["session_id"]: r for r in read_stream(kinesis, name)}
        for name in (USA, INTERNATIONAL)
    }
    assert sum(len(records) for records in routed.values()) == 200
    for session in sessions:
        sink = routed[USA if session["country"] == "USA" else INTERNATIONAL]
        record = sink[session["session_id"]]
        history = session["browse_history"]
        assert record["overall_product_quantity"] == sum(i["quantity"] for i in history)
        assert record["overall_in_shopping_cart"] == sum(
            i["quantity"] for i in history if i["in_shopping_cart"]
        )
        assert record["total_different_products"] == len(history)
        assert {k: v for k, v in record.items() if k in session} == session

    consumed = pipeline("consume", "--stream", USA, "--no-follow", "--jsonl")
    printed = [json.loads(line) for line in consumed.stdout.splitlines()]
    assert {p["data"]["session_id"] for p in printed} == set(routed[USA])
    assert {p["shard"] for p in printed} <= {"shardId-000000000000", "shardId-000000000001"}


def test_a_run_routes_kpl_aggregates_record_by_record_and_dead_letters_a_corrupt_one(aws):
    client, pipeline = aws
    pipeline("apply", str(PIPELINES / "ecommerce.yaml"))
    sessions = list(islice(synthetic_sessions(8), 600))
    entries = [(encode(session), session["session_id"]) for session in sessions]
    aggregates = [a for n in range(0, 600, 12) for a in kpl_aggregates(entries[n : n + 12])]
    corrupt = aggregates[0][:-1] + bytes([aggregates[0][-1] ^ 1])
    kinesis = client("kinesis")
    kinesis.put_records(
        StreamName=SOURCE,
        Records=[{"Data": data, "PartitionKey": "agg"} for data in [*aggregates, corrupt]],
    )

    ran = pipeline("run", str(PIPELINES / "ecommerce.yaml"), "--until-idle", "0")

    routed = read_stream(kinesis, USA) + read_stream(kinesis, INTERNATIONAL)
    assert sorted(r["session_id"] for r in routed) == sorted(s["session_id"] for s in sessions)
    assert "done: in 601 |" in ran.stderr and "| dead-lettered 1 |" in ran.stderr
    s3 = client("s3")
    bucket = f"de-c2w2lab1-{ACCOUNT}-dead-letter"
    (listed,) = s3.list_objects_v2(Bucket=bucket)["Contents"]
    body = s3.get_object(Bucket=bucket, Key=listed["Key"])["Body"].read()
    (entry,) = [json.loads(line) for line in body.splitlines()]
    assert entry["reason"].startswith("KPL aggregate: bad MD5 checksum")
    assert base64.b64decode(entry["data_base64"]) == corrupt

    consumed = pipeline("consume", "--stream", SOURCE, "--no-follow", "--jsonl")
    printed = [json.loads(line) for line in consumed.stdout.splitlines()]
    assert [(p["sub_sequence"], p["data"]) for p in printed[:600]] == [
        (n % 12, session) for n, session in enumerate(sessions)
    ]
    assert "sub_sequence" not in printed[600]
    assert consumed.stderr.endswith(f": {entry['reason']}: printed whole\n")


def stream_exists(kinesis, name):
    try:
        kinesis.describe_stream_summary(StreamName=name)
    except kinesis.exceptions.ResourceNotFoundException:
        return False
    return True


def test_what_the_spec_no_longer_declares_is_pruned_if_apply_created_it(aws, endpoint, tmp_path):
    client, pipeline = aws
    kinesis, s3, logs = client("kinesis"), client("s3"), client("logs")
    adopted = "de-c2w2lab1-audit-stream"
    kinesis.create_stream(StreamName=adopted, ShardCount=1)  # there before apply
    text = (PIPELINES / "ecommerce.yaml").read_text()
    with_audit = text.replace(
        "  buckets:\n", f'    audit:         {{name: "{adopted}", shards: 1}}\n  buckets:\n', 1
    )
    spec = tmp_path / "ecommerce.yaml"
    spec.write_text(with_audit)
    pipeline("apply", str(spec))
    tag = {"Key": "pipeline", "Value": "de-c2w2lab1-etl"}
    usa_bucket = f"de-c2w2lab1-{ACCOUNT}-usa"
    usa_group = "de-c2w2lab1-firehose-usa-log-group"
    (group,) = logs.describe_log_groups(logGroupNamePrefix=usa_group)["logGroups"]
    table = client("dynamodb").describe_table(TableName="de-c2w2lab1-etl-checkpoints")["Table"]

    assert kinesis.list_tags_for_stream(StreamName=USA)["Tags"] == [tag]
    assert kinesis.list_tags_for_stream(StreamName=adopted)["Tags"] == []
    assert s3.get_bucket_tagging(Bucket=usa_bucket)["TagSet"] == [tag]
    assert client("firehose").list_tags_for_delivery_stream(
        DeliveryStreamName="de-c2w2lab1-firehose-usa"
    )["Tags"] == [tag]
    assert client("iam").list_role_tags(RoleName="de-c2w2lab1-firehose-role")["Tags"] == [tag]
    assert logs.list_tags_for_resource(resourceArn=group["logGroupArn"])["tags"] == {
        "pipeline": "de-c2w2lab1-etl"
    }
    assert client("dynamodb").list_tags_of_resource(ResourceArn=table["TableArn"])["Tags"] == [tag]

    spec.write_text(without_usa(text))  # and without the audit stream
    planned = pipeline("plan", str(spec))
    left = pipeline("apply", str(spec))
    still_there = stream_exists(kinesis, USA)
    running = AwsBackend("us-east-1", endpoint_url=endpoint, poll_s=0)
    with running.running("de-c2w2lab1-etl") as lease:  # a run of the version applied first
        earlier = hashlib.sha256(with_audit.encode()).hexdigest()[:12]
        running.set_run_info(
            "de-c2w2lab1-etl", RunInfo(earlier, datetime.datetime.now(datetime.timezone.utc))
        )
        refused = pipeline("apply", str(spec), "--prune", "--yes", exit_code=1)
    pruned = pipeline("apply", str(spec), "--prune", "--yes")  # once it stopped

    deletions = [
        "- delete firehose de-c2w2lab1-firehose-usa (no longer in the spec)",
        f"- delete log group {usa_group} (no longer in the spec)",
        f"- delete stream {USA} (no longer in the spec)",
        f"- delete bucket {usa_bucket} (no longer in the spec)",
    ]
    assert [line for line in planned.stdout.splitlines() if line[0] in "-~"] == [
        "~ change role de-c2w2lab1-firehose-role (trust or inline policy differs)",
        *deletions,
    ]
    assert planned.stdout.splitlines()[-1] == (
        "Plan: 0 to create, 1 to change, 4 to delete, 7 unchanged."
    )
    assert left.stdout.splitlines()[-2:] == [
        "Applied: 0 created, 1 changed, 7 unchanged.",
        "4 resources are no longer in the spec: pipeline apply --prune deletes them",
    ]
    assert still_there
    refusal = refused.stderr.splitlines()[-1]  # after the warning about the spec's modeline
    assert refused.stdout == ""
    assert refusal.startswith(
        f"error: pipeline de-c2w2lab1-etl is running (lease held by {lease.owner} since "
    )
    assert refusal.endswith(
        f"with another version of the spec ({earlier}; this file is "
        f"{hashlib.sha256(spec.read_bytes()).hexdigest()[:12]}), which may still use "
        f"firehose de-c2w2lab1-firehose-usa, log group {usa_group}, stream {USA}, "
        f"bucket {usa_bucket}: let it reload this version (run --watch) or stop it, then prune"
    )
    assert pruned.stdout.splitlines() == [
        *deletions,
        "Applied: 0 created, 0 changed, 4 deleted, 8 unchanged.",
    ]
    assert not stream_exists(kinesis, USA)
    assert usa_bucket not in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert logs.describe_log_groups(logGroupNamePrefix=usa_group)["logGroups"] == []
    assert stream_exists(kinesis, adopted)

    spec.write_text(without_usa(with_audit))
    destroyed = pipeline("destroy", str(spec), "--yes")

    assert destroyed.stdout.splitlines()[0] == (
        f"  keep stream {adopted} (not created by this pipeline)"
    )
    assert destroyed.stdout.splitlines()[-1] == "Destroyed 8 resources."
    assert stream_exists(kinesis, adopted)
    assert not stream_exists(kinesis, SOURCE)
    kinesis.delete_stream(StreamName=adopted)


@pytest.mark.parametrize(
    "variables, region",
    [({}, "us-east-1"), ({"AWS_REGION": "eu-west-2"}, "eu-west-2")],
    ids=["no-region-configured", "AWS_REGION"],
)
def test_produce_and_consume_act_in_the_region_worked_out_without_a_spec(
    separate_endpoint, tmp_path, variables, region
):
    stream = f"trips-{region}"
    for where in ("us-east-1", "eu-west-2"):
        server_client(separate_endpoint, "kinesis", where).create_stream(
            StreamName=stream, ShardCount=1
        )
    env = {
        "PIPELINE_TARGET": "aws",
        "AWS_ENDPOINT_URL": separate_endpoint,
        **FAKE_CREDENTIALS,
        **variables,
    }

    record = '{"session_id": "a1"}'
    produced = in_clean_env(tmp_path, "produce", "--stream", stream, "--json", record, **env)
    consumed = in_clean_env(tmp_path, "consume", "--stream", stream, "--no-follow", **env)

    assert (produced.returncode, produced.stdout) == (0, "")
    assert produced.stderr == f"put 1 record into {stream}\n"
    kinesis = server_client(separate_endpoint, "kinesis", region)
    (shard,) = kinesis.list_shards(StreamName=stream)["Shards"]
    iterator = kinesis.get_shard_iterator(
        StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    (record,) = kinesis.get_records(ShardIterator=iterator)["Records"]
    assert (consumed.returncode, consumed.stderr) == (0, "")
    assert consumed.stdout == (
        f'{shard["ShardId"]} {record["SequenceNumber"]} key=a1: {{"session_id":"a1"}}\n'
    )


def test_a_service_endpoint_variable_beats_the_global_one(tmp_path):
    spec = str(PIPELINES / "ecommerce.yaml")
    with moto_process() as streams_endpoint, moto_process() as other_endpoint:
        env = {
            "PIPELINE_TARGET": "aws",
            "AWS_ENDPOINT_URL_KINESIS": streams_endpoint,
            "AWS_ENDPOINT_URL": other_endpoint,
            **FAKE_CREDENTIALS,
        }
        produce = ("produce", "--stream", SOURCE, "--synthetic", "--count", "20", "--mean-gap", "0")
        for command in (("apply", spec), produce, ("run", spec, "--until-idle", "0")):
            done = in_clean_env(tmp_path, *command, **env)
            assert done.returncode == 0, done.stderr

        def held(endpoint):
            """The streams, tables and buckets on one server."""
            return (
                sorted(server_client(endpoint, "kinesis").list_streams()["StreamNames"]),
                server_client(endpoint, "dynamodb").list_tables()["TableNames"],
                sorted(b["Name"] for b in server_client(endpoint, "s3").list_buckets()["Buckets"]),
            )

        assert held(streams_endpoint) == (sorted([SOURCE, USA, INTERNATIONAL]), [], [])
        assert held(other_endpoint) == (
            [],
            ["de-c2w2lab1-etl-checkpoints"],
            [f"de-c2w2lab1-{ACCOUNT}-{which}" for which in ("dead-letter", "int", "usa")],
        )
        kinesis = server_client(streams_endpoint, "kinesis")
        routed = read_stream(kinesis, USA) + read_stream(kinesis, INTERNATIONAL)
        assert len(routed) == 20
        checkpoints = server_client(other_endpoint, "dynamodb").scan(
            TableName="de-c2w2lab1-etl-checkpoints"
        )["Items"]
        assert sorted((c["stream"]["S"], c["shard_id"]["S"]) for c in checkpoints) == [
            ("#run-info", "#run-info"),  # what the run recorded for `pipeline status`
            (SOURCE, "shardId-000000000000"),
        ]


def readme_block(paragraph):
    """The first sh block after the README paragraph that starts with `paragraph`."""
    text = (REPO / "README.md").read_text()
    after = text[text.index(paragraph) :]
    start = after.index("```sh\n") + len("```sh\n")
    return after[start : after.index("```\n", start)]


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize(
    "preset", [{}, {"AWS_REGION": "eu-west-2"}], ids=["nothing-set", "another-region-set"]
)
def test_the_readme_moto_block_runs_in_a_shell_with_nothing_else_set(tmp_path, preset, processes):
    if not (REPO / ".venv" / "bin" / "activate").exists():
        pytest.skip("the README's block needs `make install`'s .venv")
    block = readme_block("**LocalStack or a moto server.**")
    assert block.count("5000") == 3  # the server's port, where the block waits, the endpoint
    shell = processes.start(  # ends the moto server too, if the block stopped early
        ["bash", "-e", "-c", block.replace("5000", str(free_port()))],
        cwd=REPO,
        env={"HOME": str(tmp_path), "PATH": os.environ["PATH"], **preset},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = shell.communicate(timeout=300)

    assert shell.returncode == 0, out + err
    lines, notes = out.splitlines(), err.splitlines()
    assert "Applied: 12 created, 0 changed, 0 unchanged." in lines
    assert f"put 100 records into {SOURCE}" in notes
    dead_letter = f"bucket de-c2w2lab1-{ACCOUNT}-dead-letter under dead-letter/"
    assert f"[de-c2w2lab1-etl] dead letter: {dead_letter}" in notes
    (done,) = [line for line in notes if line.startswith("[de-c2w2lab1-etl] done: ")]
    routed = re.search(
        r"done: in 100 \| out international (\d+), usa (\d+) \| dead-lettered 0 ", done
    )
    assert routed, done
    assert len([line for line in lines if line.startswith("shardId-")]) == int(routed[2])
    assert lines[-1] == "Destroyed 12 resources."
    assert [line for line in notes if line.startswith("error")] == []


def test_a_spec_without_a_region_acts_in_the_aws_configurations(separate_endpoint, tmp_path):
    spec = tmp_path / "trips.yaml"
    spec.write_text(
        "pipeline: trips\n"
        "resources:\n  streams:\n    source: {name: trips-in, shards: 1}\n"
        "source: {stream: source}\n"
    )
    env = {
        "PIPELINE_TARGET": "aws",
        "AWS_ENDPOINT_URL": separate_endpoint,
        "AWS_REGION": "eu-west-2",
        **FAKE_CREDENTIALS,
    }
    applied = in_clean_env(tmp_path, "apply", str(spec), **env)
    assert applied.returncode == 0, applied.stderr
    found = server_client(separate_endpoint, "kinesis", "eu-west-2").list_streams()
    assert "trips-in" in found["StreamNames"]
    elsewhere = server_client(separate_endpoint, "kinesis", "us-east-1").list_streams()
    assert "trips-in" not in elsewhere["StreamNames"]
    destroyed = in_clean_env(tmp_path, "destroy", str(spec), "--yes", **env)
    assert destroyed.returncode == 0, destroyed.stderr


# A network that cuts answers short, between a run and AWS (a loopback proxy before moto).


class CuttingProxy:
    """An HTTP proxy on 127.0.0.1 in front of `endpoint` that cuts short the answers to the
    operations in `cut` (operation -> how many of its next answers; -1: all): it sends the
    status, the headers and half of the body, then closes the connection. It never answers
    the requests of the operations in `hang` ("*": all of them) while `hanging` is set, as a
    service that hangs; `hung` lists them."""

    def __init__(self, endpoint, cut, hang=()):
        self.target = urllib.parse.urlsplit(endpoint)
        self.cut = dict(cut)
        self.answers_cut = []  # the operations whose answers were cut, in order
        self.hang = set(hang)
        self.hanging = threading.Event()
        self.hung = []
        self.released = threading.Event()  # set when the proxy stops
        self.lock = threading.Lock()
        proxy = self

        class Forward(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                operation = self.headers.get("X-Amz-Target", "").rpartition(".")[2]
                if proxy.hanging.is_set() and {operation, "*"} & proxy.hang:
                    proxy.hung.append(operation)
                    proxy.released.wait()
                    self.close_connection = True
                    return
                server = http.client.HTTPConnection(proxy.target.hostname, proxy.target.port)
                server.request(self.command, self.path, body, dict(self.headers))
                answer = server.getresponse()
                data = answer.read()
                server.close()
                self.send_response(answer.status)
                for name, value in answer.getheaders():
                    if name.lower() not in ("content-length", "connection", "transfer-encoding"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if proxy.cutting(operation):
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                else:
                    self.wfile.write(data)

            do_GET = do_PUT = do_DELETE = do_HEAD = do_POST

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Forward)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def cutting(self, operation):
        with self.lock:
            left = self.cut.get(operation, 0)
            if left:
                self.cut[operation] = left - 1
                self.answers_cut.append(operation)
            return bool(left)


@contextlib.contextmanager
def cutting_proxy(endpoint, cut, hang=()):
    """A CuttingProxy serving until the block ends."""
    proxy = CuttingProxy(endpoint, cut, hang)
    proxy.hanging.set()
    threading.Thread(target=proxy.server.serve_forever, daemon=True).start()
    try:
        yield proxy
    finally:
        proxy.released.set()
        proxy.server.shutdown()
        proxy.server.server_close()


FLAKY = """\
pipeline: flaky
resources:
  streams:
    source: {name: flaky-in, shards: 1}
    out: {name: flaky-out, shards: 1}
    rejects: {name: flaky-rejects, shards: 1}
source: {stream: source}
route:
  partition_key: session_id
  cases:
    - to: out
dead_letter: {stream: rejects}
"""
FLAKY_SESSIONS = [f"s{number}" for number in range(20)]


@pytest.fixture
def flaky(endpoint, tmp_path, aws_env):
    """A small pipeline applied on the moto server with 20 sessions in its source; gives its
    spec, and `pipeline` to run commands through a proxy before the server."""
    spec = tmp_path / "flaky.yaml"
    spec.write_text(FLAKY)
    env = {"PIPELINE_TARGET": "aws", "PIPELINE_STATE_DIR": str(tmp_path / "state")}

    def pipeline(*args, endpoint_url=endpoint):
        return CliRunner().invoke(cli, [*args, "--endpoint-url", endpoint_url], env=env)

    assert pipeline("apply", str(spec)).exit_code == 0
    server_client(endpoint, "kinesis").put_records(
        StreamName="flaky-in",
        Records=[
            {"Data": json.dumps({"session_id": s}), "PartitionKey": s} for s in FLAKY_SESSIONS
        ],
    )
    yield spec, pipeline
    pipeline("destroy", str(spec), "--yes")


def checkpoints_and_lease(endpoint):
    """The shard ids of the items in the checkpoint table (the lease's is '#run-lock'), but
    for start marks (`#trim_horizon`: where a shard began, not progress past records) and
    what the run recorded for `pipeline status` ('#run-info')."""
    items = server_client(endpoint, "dynamodb").scan(TableName="flaky-checkpoints")["Items"]
    items = [item for item in items if item["shard_id"]["S"] != "#run-info"]
    marks = [item for item in items if item.get("sequence", {}).get("S", "").startswith("#")]
    return sorted(item["shard_id"]["S"] for item in items if item not in marks)


def test_a_run_whose_answers_are_cut_short_waits_them_out_and_loses_nothing(flaky, endpoint):
    spec, pipeline = flaky
    cut = {"ListShards": 1, "GetShardIterator": 1, "GetRecords": 2, "PutRecords": 2}
    with cutting_proxy(endpoint, {**cut, "TransactWriteItems": 1}) as proxy:
        ran = pipeline("run", str(spec), "--until-idle", "0.5", endpoint_url=proxy.url)

    assert ran.exit_code == 0, ran.stderr
    assert "[flaky] done: in 20 | out out 20 |" in ran.stderr
    expected = [*cut, "GetRecords", "PutRecords", "TransactWriteItems"]  # fenced checkpoints
    assert sorted(proxy.answers_cut) == sorted(expected)
    routed = [r["session_id"] for r in read_stream(server_client(endpoint, "kinesis"), "flaky-out")]
    assert set(routed) == set(FLAKY_SESSIONS)  # at least once: a put cut short is put again
    assert checkpoints_and_lease(endpoint) == ["shardId-000000000000"]


@pytest.mark.parametrize(
    "command",
    [["plan", "SPEC"], ["run", "SPEC"], ["produce", "--stream", "flaky-in", "--json", "{}"]],
    ids=["plan", "run", "produce"],
)
def test_answers_cut_short_before_a_run_are_one_line_not_a_traceback(flaky, endpoint, command):
    spec, pipeline = flaky
    args = [str(spec) if arg == "SPEC" else arg for arg in command]
    with cutting_proxy(endpoint, {"DescribeStreamSummary": -1}) as proxy:
        done = pipeline(*args, endpoint_url=proxy.url)

    assert (done.exit_code, done.stderr) == (
        1,
        "error: stream 'flaky-in': the answer to DescribeStreamSummary was cut short\n",
    )


def test_a_run_that_cannot_write_for_longer_than_the_deadline_fails_with_one_line(
    flaky, endpoint, tmp_path
):
    spec, pipeline = flaky
    with cutting_proxy(endpoint, {"PutRecords": -1}) as proxy:
        ran = pipeline("run", str(spec), "--give-up-after", "1", endpoint_url=proxy.url)

    assert ran.exit_code == 1
    assert ran.stderr.splitlines() == [
        "[flaky] reading flaky-in on the aws target (Ctrl-C stops cleanly)",
        "[flaky] no checkpoints for pipeline flaky: starting at trim_horizon",
        "[flaky] dead letter: stream flaky-rejects",
        "[flaky] stopped: in 0 | out none | dead-lettered 0 | filtered 0 | dropped 0 | lag 0 ms",
        "error: gave up waiting for the aws target after 1 s (--give-up-after): stream "
        "'flaky-out': the answer to PutRecords was cut short; the next run "
        "reads again what this one did not checkpoint",
    ]
    assert checkpoints_and_lease(endpoint) == []  # no checkpoint, and the run lock let go


def test_ctrl_c_while_a_run_waits_for_a_failing_service_stops_it_at_once(
    flaky, endpoint, tmp_path, processes
):
    spec, _ = flaky
    with cutting_proxy(endpoint, {"PutRecords": -1}) as proxy:
        run = processes.start(
            [sys.executable, "-m", "runner", "run", str(spec), "--endpoint-url", proxy.url],
            cwd=REPO,
            env={**os.environ, "PIPELINE_TARGET": "aws", "PIPELINE_STATE_DIR": str(tmp_path)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        while len(proxy.answers_cut) < 3 and run.poll() is None:
            time.sleep(0.05)
        run.send_signal(signal.SIGINT)
        out, err = run.communicate(timeout=30)

    assert run.returncode == 0, err
    assert err.splitlines()[-2:] == [
        "[flaky] stopped while waiting for the aws target: stream 'flaky-out': the answer to "
        "PutRecords was cut short: what was read since the last checkpoint "
        "is read again by the next run",
        "[flaky] done: in 0 | out none | dead-lettered 0 | filtered 0 | dropped 0 | lag 0 ms",
    ]
    assert checkpoints_and_lease(endpoint) == []


TWO_SHARDS = FLAKY.replace(
    "source: {name: flaky-in, shards: 1}", "source: {name: flaky-in, shards: 2}"
)


def test_a_second_ctrl_c_ends_a_run_at_once_while_its_reads_hang(endpoint, aws_env, tmp_path):
    spec = tmp_path / "two.yaml"
    spec.write_text(TWO_SHARDS.replace("flaky", "two"))
    env = {**os.environ, "PIPELINE_TARGET": "aws", "PIPELINE_STATE_DIR": str(tmp_path)}
    aws = ["--target", "aws", "--endpoint-url", endpoint]
    assert CliRunner().invoke(cli, ["apply", str(spec), *aws]).exit_code == 0
    with cutting_proxy(endpoint, {}, hang={"GetRecords"}) as proxy:
        run = subprocess.Popen(
            [sys.executable, "-m", "runner", "run", str(spec), "--endpoint-url", proxy.url],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_until(lambda: len(proxy.hung) == 2, timeout=60)  # both shards' reads hang
            run.send_signal(signal.SIGINT)  # a clean stop, once the reads in flight end
            time.sleep(0.5)  # two signals sent together may be handled as one
            run.send_signal(signal.SIGINT)  # at once
            # Well before the reads time out: the process does not wait for their threads.
            out, err = run.communicate(timeout=8)
        finally:
            run.kill()
    CliRunner().invoke(cli, ["destroy", str(spec), "--yes", *aws])

    assert run.returncode == 130
    assert err.splitlines()[-1] == (
        "[two] stopped at once: what was read since the last checkpoint is read again by the "
        "next run"
    )


def test_the_calls_a_run_repeats_are_waited_out_within_seconds_when_the_service_hangs(
    flaky, endpoint, monkeypatch
):
    # The run's calls have timeouts of their own, made shorter still here so that the test
    # takes no time; the calls made before a run keep botocore's (60 s, three tries).
    short = Config(retries={"total_max_attempts": 1}, connect_timeout=0.2, read_timeout=0.2)
    monkeypatch.setattr(aws_session, "_DATA_PLANE", short)
    server_client(endpoint, "s3").create_bucket(Bucket="flaky-dead-letter")
    shard = "shardId-000000000000"
    with cutting_proxy(endpoint, {}, hang={"*"}) as proxy:
        proxy.hanging.clear()
        backend = AwsBackend("us-east-1", endpoint_url=proxy.url, poll_s=0)
        backend.get_checkpoints("flaky", "flaky-in")  # as a run starts
        iterator = backend.get_shard_iterator("flaky-in", shard, "TRIM_HORIZON")
        proxy.hanging.set()  # from now on, nothing answers
        calls = {
            "ListShards": lambda: backend.list_shards("flaky-in"),
            "GetShardIterator": lambda: backend.get_shard_iterator("flaky-in", shard, "LATEST"),
            "GetRecords": lambda: backend.get_records(iterator),
            "PutRecords": lambda: backend.put_records("flaky-out", [(b"{}", "k")]),
            "UpdateItem": lambda: backend.set_checkpoint("flaky", "flaky-in", shard, "1"),
            "PutObject": lambda: backend.put_object("flaky-dead-letter", "x", b"{}"),
        }
        outcomes = {name: "still waiting after 30 s" for name in calls}

        def attempt(name):
            try:
                calls[name]()
            except Throttled:
                outcomes[name] = "waited out"

        threads = [threading.Thread(target=attempt, args=(name,), daemon=True) for name in calls]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30  # far longer than their timeouts
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))

    assert outcomes == {name: "waited out" for name in calls}
    assert len(proxy.hung) == len(calls)  # each was sent once, not retried by botocore


RACE = """\
pipeline: race
resources:
  streams:
    source: {name: race-in, shards: 1}
    out: {name: race-out, shards: 1}
    rejects: {name: race-rejects, shards: 1}
source: {stream: source}
route:
  partition_key: key
  cases:
    - to: out
dead_letter: {stream: rejects}
"""


def test_two_runs_started_together_never_both_write(endpoint, aws_env, tmp_path):
    """Two runs start at once: one takes the lease, the other waits. The holder handles the
    first records; then, with the next ones read but not yet written, its renewal hangs and its
    lease lapses: it writes nothing, and waits. The other takes the lease over only once it has
    seen it unchanged for a whole lease period; the holder then finds it taken, and stops.
    Every record lands in the sink once, in order per key."""
    (tmp_path / "race.yaml").write_text(RACE)
    loaded = spec.load(tmp_path / "race.yaml")
    clock = VirtualClock()  # the leases' clock, moved by this test and by the holder's reads

    def backend():
        lease = LeaseTiming(clock=clock, sleep=clock.sleep, wait=clock.wait)
        return AwsBackend("us-east-1", endpoint_url=endpoint, poll_s=0, lease=lease)

    def records(numbers):
        return [(json.dumps({"key": f"k{n % 3}", "n": n}).encode(), f"k{n % 3}") for n in numbers]

    producer = backend()
    apply(loaded, producer, lambda line: None)
    first = producer.put_records("race-in", records(range(6)))
    runs = {name: backend() for name in ("A", "B")}
    hung = {name: HungRenewals(run) for name, run in runs.items()}
    lapse = threading.Event()

    def lapsing(name):
        def read(parsed, **_):
            if lapse.is_set() and parsed.get("Records"):
                lapse.clear()
                clock.advance(25)  # its renewal is due at 20 s, and hangs
                hung[name].hanging.wait()
                clock.advance(25)  # 50 s since it last renewed: too old to write under

        return read

    def once_the_holder_stopped(**_):
        if clock.now >= 65:  # the lease was taken over: keep it until the holder sees it
            wait_until(lambda: len(ended) == 1)

    for name, run in runs.items():
        kinesis = run._client("kinesis", data_plane=True)
        kinesis.meta.events.register("after-call.kinesis.GetRecords", lapsing(name))
        kinesis.meta.events.register("before-call.kinesis.PutRecords", once_the_holder_stopped)
    lines = {name: [] for name in runs}
    ended = {}

    def run(name):
        options = RunOptions(max_records=10)
        try:
            state = tmp_path / name  # each run on a machine of its own
            ended[name] = run_command.run(loaded, runs[name], state, options, lines[name].append)
        except LeaseLost as lost:
            ended[name] = str(lost)

    threads = [threading.Thread(target=run, args=(name,)) for name in runs]
    for thread in threads:
        thread.start()
    done = {first[-1].shard_id: first[-1].sequence}
    wait_until(lambda: producer.get_checkpoints("race", "race-in") == done)
    lapse.set()
    producer.put_records("race-in", records(range(6, 16)))
    wait_until(lambda: clock.now == 50)  # the holder's lease lapsed: it waits to write
    clock.advance(15)  # the other has now seen the lease unchanged for 65 s
    for thread in threads:
        thread.join(timeout=60)
    for hanging in hung.values():
        hanging.resume()
    clock.advance(math.inf)  # renewal threads still waiting wake, and stop

    (holder,) = [name for name in runs if ended[name] != 0]
    (other,) = [name for name in runs if ended[name] == 0]
    owner = re.escape(f"{socket.gethostname()} pid {os.getpid()} run ") + r"\w{8}"
    assert re.fullmatch(
        rf"lost the run lease to {owner}: stopped without writing or checkpointing further",
        ended[holder],
    )
    # Only what it wrote: not the 4 records it read once it could no longer write.
    assert lines[holder][-1].startswith("[race] stopped by an error: in 6 | out out 6 | ")
    holder_owner = re.escape(f"{socket.gethostname()} pid {os.getpid()} run ") + r"\w{8}"
    waiting = rf"\[race\] waiting for the run lease held by {holder_owner} \(free in 60 s"
    assert re.fullmatch(waiting + r" unless renewed\)", lines[other][0])
    took = rf"\[race\] took over the run lease of {owner}, not renewed for 60 s"
    assert re.fullmatch(took, lines[other][1])
    assert lines[other][2:4] == [
        "[race] reading race-in on the aws target (Ctrl-C stops cleanly)",
        "[race] resuming from checkpoints of 1 shard",
    ]
    assert lines[other][-1].startswith("[race] done: in 10 | out out 10 | ")
    written = read_stream(server_client(endpoint, "kinesis"), "race-out")
    assert sorted(r["n"] for r in written) == list(range(16))  # each once
    for key in ("k0", "k1", "k2"):
        numbers = [r["n"] for r in written if r["key"] == key]
        assert numbers == sorted(numbers)
