from runner.backends.aws import policies as access
from runner.backends.base import FirehoseDescription

ARCHIVE = FirehoseDescription(
    name="shop-archive-delivery",
    stream="shop-orders",
    bucket="shop-archive",
    prefix="",
    error_prefix="errors/",
    buffer_size_mb=5,
    buffer_interval_s=300,
    compression="UNCOMPRESSED",
    role="shop-firehose-role",
    log_group="shop-delivery-log-group",
    log_stream="shop-delivery-log-stream",
)


def test_the_delivery_policy_names_resources_in_the_region_partition():
    (role,) = access.roles([ARCHIVE], "123456789012", "cn-north-1", "aws-cn")

    assert role.name == "shop-firehose-role"
    assert role.policies == {
        "pipeline-firehose-delivery": {
            "Version": "2012-10-17",
            "Statement": [
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
                    "Resource": ["arn:aws-cn:kinesis:cn-north-1:123456789012:stream/shop-orders"],
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
                    "Resource": ["arn:aws-cn:s3:::shop-archive", "arn:aws-cn:s3:::shop-archive/*"],
                },
                {
                    "Sid": "LogDeliveryErrors",
                    "Effect": "Allow",
                    "Action": ["logs:PutLogEvents"],
                    "Resource": [
                        "arn:aws-cn:logs:cn-north-1:123456789012:log-group:"
                        "shop-delivery-log-group:log-stream:*"
                    ],
                },
            ],
        }
    }


def test_the_function_role_is_trusted_by_lambda_and_allowed_only_what_the_function_does():
    role = access.function_role(
        "shop-etl-role",
        "shop-etl",
        "shop-in",
        ["shop-usa", "shop-int", "shop-usa"],
        None,
        "shop-dead",
        "rejects/",
        pipeline="shop",
        account_id="123456789012",
        region="cn-north-1",
        partition="aws-cn",
    )

    group = "arn:aws-cn:logs:cn-north-1:123456789012:log-group:/aws/lambda/shop-etl"
    assert role.name == "shop-etl-role"
    assert role.trust_policy == {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "lambda.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
    assert role.policies == {
        "pipeline-function": {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "ReadSourceStream",
                    "Effect": "Allow",
                    "Action": [
                        "kinesis:DescribeStream",
                        "kinesis:DescribeStreamSummary",
                        "kinesis:GetRecords",
                        "kinesis:GetShardIterator",
                        "kinesis:ListShards",
                    ],
                    "Resource": ["arn:aws-cn:kinesis:cn-north-1:123456789012:stream/shop-in"],
                },
                {
                    "Sid": "WriteSinkStreams",
                    "Effect": "Allow",
                    "Action": ["kinesis:PutRecords"],
                    "Resource": [
                        "arn:aws-cn:kinesis:cn-north-1:123456789012:stream/shop-int",
                        "arn:aws-cn:kinesis:cn-north-1:123456789012:stream/shop-usa",
                    ],
                },
                {
                    "Sid": "WriteDeadLetterBucket",
                    "Effect": "Allow",
                    "Action": ["s3:PutObject"],
                    "Resource": ["arn:aws-cn:s3:::shop-dead/rejects/*"],
                },
                {
                    "Sid": "NoteDeadLetterPlaces",
                    "Effect": "Allow",
                    "Action": ["dynamodb:PutItem"],
                    "Resource": [
                        "arn:aws-cn:dynamodb:cn-north-1:123456789012:table/shop-checkpoints"
                    ],
                    "Condition": {"ForAllValues:StringEquals": {"dynamodb:LeadingKeys": ["#note"]}},
                },
                {
                    "Sid": "WriteOwnLogs",
                    "Effect": "Allow",
                    "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
                    "Resource": [group, f"{group}:*"],
                },
            ],
        }
    }


def test_a_dead_letter_stream_is_written_like_a_sink_and_no_bucket_is_named():
    role = access.function_role(
        "r",
        "f",
        "in",
        ["out"],
        "rejects",
        None,
        "",
        account_id="123456789012",
        region="us-east-1",
        partition="aws",
    )

    (policy,) = role.policies.values()
    assert {s["Sid"]: s["Resource"] for s in policy["Statement"]} == {
        "ReadSourceStream": ["arn:aws:kinesis:us-east-1:123456789012:stream/in"],
        "WriteSinkStreams": [
            "arn:aws:kinesis:us-east-1:123456789012:stream/out",
            "arn:aws:kinesis:us-east-1:123456789012:stream/rejects",
        ],
        "WriteOwnLogs": [
            "arn:aws:logs:us-east-1:123456789012:log-group:/aws/lambda/f",
            "arn:aws:logs:us-east-1:123456789012:log-group:/aws/lambda/f:*",
        ],
    }
