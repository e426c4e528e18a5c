"""Firehose delivery streams, each from a stream to a bucket: delivered by the target itself
(AWS), or by `pipeline run` from the settings the target keeps (local)."""

from __future__ import annotations

import abc
from dataclasses import dataclass


@dataclass(frozen=True)
class FirehoseDescription:
    name: str
    stream: str  # source stream name
    bucket: str
    prefix: str
    error_prefix: str
    buffer_size_mb: int
    buffer_interval_s: int
    compression: str
    role: str = ""  # the IAM role Firehose assumes (AWS)
    log_group: str | None = None  # CloudWatch Logs for delivery errors (AWS)
    log_stream: str | None = None


class Firehoses(abc.ABC):
    """Delivery streams, described by resource names."""

    @abc.abstractmethod
    def describe_firehose(self, name: str) -> FirehoseDescription | None: ...

    @abc.abstractmethod
    def create_firehose(self, firehose: FirehoseDescription, owner: str | None = None) -> None:
        """Create the delivery stream, as the `owner` pipeline's own (ownership.py)."""

    @abc.abstractmethod
    def update_firehose(self, firehose: FirehoseDescription) -> None: ...

    @abc.abstractmethod
    def delete_firehose(self, name: str) -> None: ...
