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
