"""Least privilege on AWS: the role each Firehose delivery stream assumes, allowed only to read
its source streams, write its buckets and log to its log groups; and a pipeline's Lambda
function's execution role, allowed only to read its source stream, write its sinks and dead
letter, and log to its own log group."""

from __future__ import annotations

from collections.abc import Sequence

from runner.backends.aws.checkpoints import NOTE_PARTITION
from runner.backends.base import FirehoseDescription, RoleDescription, checkpoint_table

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


# Least privilege for a pipeline's Lambda function: the execution role Lambda assumes to read
# the source stream for the function's event source mapping, and the function to write.

FUNCTION_POLICY_NAME = "pipeline-function"

# What Lambda's event source mapping calls on the stream it reads, with the function's role
# (Lambda's guide: "Process Amazon Kinesis Data Streams records with Lambda"); it lists
# kinesis:SubscribeToShard too, which only an enhanced fan-out consumer needs, and pipelines
# read with standard iterators.
MAPPING_READ_ACTIONS = [
    "kinesis:DescribeStream",
    "kinesis:DescribeStreamSummary",
    "kinesis:GetRecords",
    "kinesis:GetShardIterator",
    "kinesis:ListShards",
]


def function_role(
    name: str,
    function: str,
    source: str,
    sinks: Sequence[str],
    dead_letter_stream: str | None,
    dead_letter_bucket: str | None,
    dead_letter_prefix: str,
    *,
    pipeline: str | None = None,
    account_id: str,
    region: str,
    partition: str,
) -> RoleDescription:
    """The function's execution role `name`, trusted by Lambda, allowed only what the function
    and its mapping do: read the `source` stream, put records to the `sinks` and the
    dead-letter stream, put objects to the dead-letter bucket under its prefix, note in the
    `pipeline`'s checkpoint table where it wrote dead-letter entries (notes only), and log to
    the function's own log group. Every ARN is in the region's `partition`."""

    def stream(name: str) -> str:
        return f"arn:{partition}:kinesis:{region}:{account_id}:stream/{name}"

    group = f"arn:{partition}:logs:{region}:{account_id}:log-group:/aws/lambda/{function}"
    written = sorted({*sinks, *([dead_letter_stream] if dead_letter_stream else [])})
    statements: list[dict] = [
        {
            "Sid": "ReadSourceStream",
            "Effect": "Allow",
            "Action": MAPPING_READ_ACTIONS,
            "Resource": [stream(source)],
        }
    ]
    if written:  # IAM refuses a statement without resources
        statements.append(
            {
                "Sid": "WriteSinkStreams",
                "Effect": "Allow",
                "Action": ["kinesis:PutRecords"],
                "Resource": [stream(s) for s in written],
            }
        )
    if dead_letter_bucket is not None:
        statements.append(
            {
                "Sid": "WriteDeadLetterBucket",
                "Effect": "Allow",
                "Action": ["s3:PutObject"],
                "Resource": [f"arn:{partition}:s3:::{dead_letter_bucket}/{dead_letter_prefix}*"],
            }
        )
    if pipeline is not None and (dead_letter_stream or dead_letter_bucket):
        table = f"arn:{partition}:dynamodb:{region}:{account_id}:table/{checkpoint_table(pipeline)}"
        statements.append(
            {
                "Sid": "NoteDeadLetterPlaces",
                "Effect": "Allow",
                "Action": ["dynamodb:PutItem"],
                "Resource": [table],
                "Condition": {
                    "ForAllValues:StringEquals": {"dynamodb:LeadingKeys": [NOTE_PARTITION]}
                },
            }
        )
    statements.append(
        {
            "Sid": "WriteOwnLogs",
            "Effect": "Allow",
            "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
            # The group itself (to create it), and its streams (to write to them).
            "Resource": [group, f"{group}:*"],
        }
    )
    return RoleDescription(
        name=name,
        trust_policy={
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": "lambda.amazonaws.com"},
                    "Action": "sts:AssumeRole",
                }
            ],
        },
        policies={FUNCTION_POLICY_NAME: {"Version": "2012-10-17", "Statement": statements}},
    )
