"""The AWS backend: Kinesis, Firehose, S3, IAM, CloudWatch Logs, DynamoDB and Lambda through
boto3.

`AwsBackend` is composed of one mixin per service over a shared session (`session.py`), which
makes the clients; `errors.py` turns every botocore failure into a one-line BackendError naming
the resource, and AWS's error code and message.
"""

from __future__ import annotations

from runner.backends.aws.access import AccessMixin
from runner.backends.aws.buckets import BucketsMixin
from runner.backends.aws.checkpoints import CheckpointsMixin
from runner.backends.aws.firehoses import FirehosesMixin
from runner.backends.aws.functions import FunctionsMixin
from runner.backends.aws.lease import LeaseTiming
from runner.backends.aws.streams import StreamsMixin

__all__ = ["AwsBackend", "LeaseTiming"]


class AwsBackend(
    StreamsMixin, CheckpointsMixin, BucketsMixin, FirehosesMixin, AccessMixin, FunctionsMixin
):
    """Streams, buckets, delivery streams, roles, log groups, checkpoints, Lambda functions
    and their event source mappings on AWS.

    A resource created for a pipeline is tagged pipeline=NAME; `owned` gathers, mixin by mixin,
    each service's resources so tagged.

    `AwsBackend(region, profile, endpoint_url, poll_s, clock=..., sleep=...,
    lease=LeaseTiming(...))`: waits for resources poll every `poll_s` by `clock` and `sleep`
    (the monotonic clock, time.sleep); `lease` sets the run lease's length, clock and sleep
    (60 s, the monotonic clock, time.sleep)."""

    name = "aws"
    delivers_firehoses = True
    runs_functions = True
    read_workers = 16  # each GetRecords waits on the network: ask shards in parallel
    write_workers = 32  # and so does each PutRecords call and checkpoint
