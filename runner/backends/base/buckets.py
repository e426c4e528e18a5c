"""Buckets and the objects in them, as every target offers them (folders locally, S3 on AWS)."""

from __future__ import annotations

import abc


class Buckets(abc.ABC):
    """Buckets, and objects written whole and read back by key."""

    @abc.abstractmethod
    def bucket_exists(self, name: str) -> bool: ...

    @abc.abstractmethod
    def create_bucket(self, name: str, owner: str | None = None) -> None:
        """Create the bucket, as the `owner` pipeline's own (ownership.py)."""

    @abc.abstractmethod
    def delete_bucket(self, name: str) -> None:
        """Delete the bucket and every object in it."""

    @abc.abstractmethod
    def put_object(self, bucket: str, key: str, body: bytes) -> None: ...

    @abc.abstractmethod
    def list_objects(self, bucket: str, prefix: str = "") -> list[str]:
        """Keys under `prefix`, sorted."""

    @abc.abstractmethod
    def get_object(self, bucket: str, key: str) -> bytes: ...
