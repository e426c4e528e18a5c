"""The AWS backend: Kinesis, Firehose, S3, IAM, CloudWatch Logs and DynamoDB through boto3.

`AwsBackend` is composed of one mixin per service over a shared session (`session.py`), which
makes the clients; `errors.py` turns every botocore failure into a one-line BackendError naming
the resource, and AWS's error code and message.
"""

from __future__ import annotations

from runner.backends.aws.access import AccessMixin
from runner.backends.aws.buckets import BucketsMixin
from runner.backends.aws.checkpoints import CheckpointsMixin, LeaseLost
from runner.backends.aws.firehoses import FirehosesMixin
from runner.backends.aws.streams import StreamsMixin

__all__ = ["LEASE_S", "AwsBackend", "LeaseLost"]

# How long a run's lease outlives its last renewal; checkpoints.py reads it from here at each
# use, so that setting it on this package takes effect.
LEASE_S = 60


class AwsBackend(StreamsMixin, CheckpointsMixin, BucketsMixin, FirehosesMixin, AccessMixin):
    """Streams, buckets, delivery streams, roles, log groups and checkpoints on AWS."""

    name = "aws"
    delivers_firehoses = True
    read_workers = 16  # each GetRecords waits on the network: ask shards in parallel
