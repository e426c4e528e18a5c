"""Firehose delivery streams on AWS, each reading a Kinesis stream and writing to S3."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from runner.backends.aws.errors import Missing, backend_errors, error_code, one_line
from runner.backends.aws.session import AwsSession, exclusive_pages, owner_tags, tag_pages
from runner.backends.base import BackendError, FirehoseDescription


class FirehosesMixin(AwsSession):
    """Delivery streams from a Kinesis stream to an S3 bucket, under an IAM role."""

    def describe_firehose(self, name: str) -> FirehoseDescription | None:
        """The delivery stream as the spec would describe it, or None if it does not exist."""
        found = self._delivery_stream(name)
        if found is None:
            return None
        source = found.get("Source", {}).get("KinesisStreamSourceDescription", {})
        destination = found["Destinations"][0]
        s3 = destination.get("ExtendedS3DestinationDescription") or destination.get(
            "S3DestinationDescription"
        )
        if s3 is None:
            raise BackendError(
                f"firehose '{name}' exists but does not deliver to S3: "
                "delete it or pick another name"
            )
        logging = s3.get("CloudWatchLoggingOptions", {})
        logged = logging.get("Enabled", False)
        return FirehoseDescription(
            name=name,
            stream=_arn_name(source.get("KinesisStreamARN", "")),
            bucket=s3["BucketARN"].rsplit(":", 1)[-1],
            prefix=s3.get("Prefix", ""),
            error_prefix=s3.get("ErrorOutputPrefix", ""),
            buffer_size_mb=s3["BufferingHints"]["SizeInMBs"],
            buffer_interval_s=s3["BufferingHints"]["IntervalInSeconds"],
            compression=s3.get("CompressionFormat", "UNCOMPRESSED"),
            role=_arn_name(s3.get("RoleARN", "")),
            log_group=logging.get("LogGroupName") if logged else None,
            log_stream=logging.get("LogStreamName") if logged else None,
        )

    def create_firehose(self, firehose: FirehoseDescription, owner: str | None = None) -> None:
        """Create a delivery stream from the Kinesis stream to S3, tagged pipeline=OWNER;
        return once it is ACTIVE."""
        destination = self._destination(firehose)
        source = {
            "KinesisStreamARN": self._arn("kinesis", f"stream/{firehose.stream}"),
            "RoleARN": destination["RoleARN"],
        }
        self._while_role_propagates(
            f"firehose '{firehose.name}'",
            lambda: self._client("firehose").create_delivery_stream(
                DeliveryStreamName=firehose.name,
                DeliveryStreamType="KinesisStreamAsSource",
                KinesisStreamSourceConfiguration=source,
                ExtendedS3DestinationConfiguration=destination,
                **owner_tags(owner),
            ),
            _role_not_ready,
        )
        self._wait_for_firehose(firehose.name, "ACTIVE")

    def update_firehose(self, firehose: FirehoseDescription) -> None:
        """Change the S3 destination's settings; the source stream cannot change in place."""
        found = self._delivery_stream(firehose.name)
        if found is None:
            raise BackendError(f"firehose '{firehose.name}' does not exist")
        source = found.get("Source", {}).get("KinesisStreamSourceDescription", {})
        current_stream = _arn_name(source.get("KinesisStreamARN", ""))
        if current_stream != firehose.stream:
            raise BackendError(
                f"firehose '{firehose.name}' reads stream '{current_stream}', not "
                f"'{firehose.stream}': a delivery stream's source cannot change; "
                "destroy it and apply again"
            )
        destination = self._destination(firehose)
        self._while_role_propagates(
            f"firehose '{firehose.name}'",
            lambda: self._client("firehose").update_destination(
                DeliveryStreamName=firehose.name,
                CurrentDeliveryStreamVersionId=found["VersionId"],
                DestinationId=found["Destinations"][0]["DestinationId"],
                ExtendedS3DestinationUpdate=destination,
            ),
            _role_not_ready,
        )
        self._wait_for_firehose(firehose.name, "ACTIVE")

    def delete_firehose(self, name: str) -> None:
        """Delete the delivery stream; return once it is gone."""
        with backend_errors(f"firehose '{name}'"):
            self._client("firehose").delete_delivery_stream(DeliveryStreamName=name)
        self._wait_for_firehose(name, None)

    def owned(self, pipeline: str) -> list[tuple[str, str]]:
        """The delivery streams tagged pipeline=PIPELINE, with what the other services own."""
        firehose = self._client("firehose")
        with backend_errors("the list of firehoses"):
            names = exclusive_pages(
                firehose.list_delivery_streams,
                "DeliveryStreamNames",
                "HasMoreDeliveryStreams",
                "ExclusiveStartDeliveryStreamName",
                DeliveryStreamType="KinesisStreamAsSource",
            )
        firehoses = self._owned_by(
            pipeline,
            "firehose",
            names,
            lambda name: tag_pages(firehose.list_tags_for_delivery_stream, DeliveryStreamName=name),
        )
        return [*super().owned(pipeline), *(("firehose", name) for name in firehoses)]

    def _delivery_stream(self, name: str) -> dict | None:
        try:
            with backend_errors(f"firehose '{name}'"):
                answer = self._client("firehose").describe_delivery_stream(DeliveryStreamName=name)
        except Missing:
            return None
        return answer["DeliveryStreamDescription"]

    def _wait_for_firehose(self, name: str, until: str | None) -> None:
        def status() -> str | None:
            found = self._delivery_stream(name)
            if found is None:
                return None
            state = found["DeliveryStreamStatus"]
            if state.endswith("_FAILED"):
                failure = found.get("FailureDescription", {})
                raise BackendError(
                    f"firehose '{name}' is {state}: {failure.get('Type', 'UNKNOWN')}: "
                    f"{one_line(failure.get('Details', ''))}"
                )
            return state

        self._wait(f"firehose '{name}'", status, until)

    def _destination(self, firehose: FirehoseDescription) -> dict[str, Any]:
        """The ExtendedS3 destination settings, for CreateDeliveryStream and UpdateDestination."""
        if not firehose.role:
            raise BackendError(f"firehose '{firehose.name}' needs an IAM role to assume on AWS")
        logging: dict[str, Any] = {"Enabled": firehose.log_group is not None}
        if firehose.log_group is not None:
            logging["LogGroupName"] = firehose.log_group
            if firehose.log_stream is not None:
                logging["LogStreamName"] = firehose.log_stream
        return {
            "RoleARN": f"arn:{self.partition}:iam::{self.account_id}:role/{firehose.role}",
            "BucketARN": f"arn:{self.partition}:s3:::{firehose.bucket}",
            "Prefix": firehose.prefix,
            "ErrorOutputPrefix": firehose.error_prefix,
            "BufferingHints": {
                "SizeInMBs": firehose.buffer_size_mb,
                "IntervalInSeconds": firehose.buffer_interval_s,
            },
            "CompressionFormat": firehose.compression,
            "CloudWatchLoggingOptions": logging,
        }


def _role_not_ready(error: ClientError) -> bool:
    """Whether Firehose refused a role it cannot assume yet (IAM is eventually consistent)."""
    message = error.response.get("Error", {}).get("Message", "")
    return error_code(error) == "InvalidArgumentException" and "role" in message.lower()


def _arn_name(arn: str) -> str:
    """The last part of a stream or role ARN: `arn:aws:iam::1:role/path/name` -> `name`."""
    return arn.rsplit("/", 1)[-1] if "/" in arn else ""
