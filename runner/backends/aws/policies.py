"""Least privilege for Firehose on AWS: the role each delivery stream assumes, allowed only to
read its source streams, write its buckets and log to its log groups."""

from __future__ import annotations

from collections.abc import Sequence

from runner.backends.base import FirehoseDescription, RoleDescription

POLICY_NAME = "pipeline-firehose-delivery"


def roles(
    firehoses: Sequence[FirehoseDescription], account_id: str, region: str, partition: str
) -> list[RoleDescription]:
    """One role per distinct `role` name of the firehoses, covering all that use it;
    `partition` is the region's ARN partition (aws, aws-cn, aws-us-gov)."""
    by_role: dict[str, list[FirehoseDescription]] = {}
    for firehose in firehoses:
        by_role.setdefault(firehose.role, []).append(firehose)
    return [
        RoleDescription(
            name=name,
            trust_policy=trust_policy(account_id),
            policies={POLICY_NAME: delivery_policy(users, account_id, region, partition)},
        )
        for name, users in by_role.items()
    ]


def trust_policy(account_id: str) -> dict:
    """Only Firehose, acting for this account, may assume the role."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "firehose.amazonaws.com"},
                "Action": "sts:AssumeRole",
                "Condition": {"StringEquals": {"sts:ExternalId": account_id}},
            }
        ],
    }


def delivery_policy(
    firehoses: Sequence[FirehoseDescription], account_id: str, region: str, partition: str
) -> dict:
    """Read the firehoses' source streams, write their buckets, log to their log groups."""
    streams = sorted({f.stream for f in firehoses})
    buckets = sorted({f.bucket for f in firehoses})
    groups = sorted({f.log_group for f in firehoses if f.log_group})
    statements = [
        {
            "Sid": "ReadSourceStreams",
            "Effect": "Allow",
            "Action": [
                "kinesis:DescribeStream",
                "kinesis:DescribeStreamSummary",
                "kinesis:GetShardIterator",
                "kinesis:GetRecords",
                "kinesis:ListShards",
            ],
            "Resource": [
                f"arn:{partition}:kinesis:{region}:{account_id}:stream/{s}" for s in streams
            ],
        },
        {
            "Sid": "WriteBuckets",
            "Effect": "Allow",
            "Action": [
                "s3:AbortMultipartUpload",
                "s3:GetBucketLocation",
                "s3:GetObject",
                "s3:ListBucket",
                "s3:ListBucketMultipartUploads",
                "s3:PutObject",
            ],
            "Resource": [
                arn
                for b in buckets
                for arn in (f"arn:{partition}:s3:::{b}", f"arn:{partition}:s3:::{b}/*")
            ],
        },
    ]
    if groups:
        statements.append(
            {
                "Sid": "LogDeliveryErrors",
                "Effect": "Allow",
                "Action": ["logs:PutLogEvents"],
                "Resource": [
                    f"arn:{partition}:logs:{region}:{account_id}:log-group:{g}:log-stream:*"
                    for g in groups
                ],
            }
        )
    return {"Version": "2012-10-17", "Statement": statements}
