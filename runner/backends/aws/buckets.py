"""S3 buckets on AWS, where Firehose delivers and where objects are read back."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from runner.backends.aws.errors import Missing, backend_errors, error_code
from runner.backends.aws.session import AwsSession, owner_tags
from runner.backends.base import BackendError


class BucketsMixin(AwsSession):
    """Private, encrypted buckets and the objects in them."""

    def bucket_exists(self, name: str) -> bool:
        """Whether the bucket exists in this account; a name taken elsewhere is an error."""
        try:
            with backend_errors(f"bucket '{name}'"):
                try:
                    self._client("s3").head_bucket(Bucket=name)
                except ClientError as error:
                    if error_code(error) == "403":
                        raise BackendError(
                            f"bucket '{name}' exists but this account may not use it "
                            "(HeadBucket: 403 Forbidden): the name is probably taken by "
                            "another AWS account, and bucket names are global; choose another"
                        ) from error
                    raise
        except Missing:
            return False
        return True

    def create_bucket(self, name: str, owner: str | None = None) -> None:
        """Create a private bucket in the region, encrypted with S3-managed keys (SSE-S3),
        tagged pipeline=OWNER."""
        params: dict[str, Any] = {"Bucket": name}
        # us-east-1 is S3's default location and refuses to be named as a constraint.
        if self.region != "us-east-1":
            params["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        s3 = self._client("s3")
        with backend_errors(f"bucket '{name}'"):
            s3.create_bucket(**params)
            s3.put_public_access_block(
                Bucket=name,
                PublicAccessBlockConfiguration={
                    "BlockPublicAcls": True,
                    "IgnorePublicAcls": True,
                    "BlockPublicPolicy": True,
                    "RestrictPublicBuckets": True,
                },
            )
            s3.put_bucket_encryption(
                Bucket=name,
                ServerSideEncryptionConfiguration={
                    "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
                },
            )
            if owner is not None:
                s3.put_bucket_tagging(Bucket=name, Tagging=owner_tags(owner, "TagSet"))

    def delete_bucket(self, name: str) -> None:
        """Delete every object (every version, every delete marker), then the bucket."""
        s3 = self._client("s3")
        with backend_errors(f"bucket '{name}'"):
            for page in s3.get_paginator("list_object_versions").paginate(Bucket=name):
                doomed = [
                    {"Key": v["Key"], "VersionId": v["VersionId"]}
                    for v in page.get("Versions", []) + page.get("DeleteMarkers", [])
                ]
                if not doomed:
                    continue
                answer = s3.delete_objects(Bucket=name, Delete={"Objects": doomed, "Quiet": True})
                if answer.get("Errors"):
                    first = answer["Errors"][0]
                    raise BackendError(
                        f"bucket '{name}': cannot delete object '{first['Key']}' "
                        f"({first['Code']}: {first['Message']}) and "
                        f"{len(answer['Errors']) - 1} more"
                    )
            s3.delete_bucket(Bucket=name)

    def owned(self, pipeline: str) -> list[tuple[str, str]]:
        """The region's buckets tagged pipeline=PIPELINE, with what the other services own."""
        s3 = self._client("s3")
        with backend_errors("the list of buckets"):
            pages = s3.get_paginator("list_buckets").paginate(BucketRegion=self.region)
            names = [bucket["Name"] for page in pages for bucket in page.get("Buckets", [])]

        def tags(name: str) -> dict[str, str]:
            try:
                tag_set = s3.get_bucket_tagging(Bucket=name)["TagSet"]
            except ClientError as error:
                if error_code(error) != "NoSuchTagSet":
                    raise
                return {}
            return {tag["Key"]: tag["Value"] for tag in tag_set}

        buckets = self._owned_by(pipeline, "bucket", names, tags)
        return [*super().owned(pipeline), *(("bucket", name) for name in buckets)]

    def put_object(self, bucket: str, key: str, body: bytes) -> None:
        """Write the object; S3 makes it visible whole or not at all."""
        # A run writes its dead letter here: a failing connection is waited out.
        with backend_errors(f"bucket '{bucket}'", during_run=True):
            self._client("s3", data_plane=True).put_object(Bucket=bucket, Key=key, Body=body)

    def list_objects(self, bucket: str, prefix: str = "") -> list[str]:
        """Keys under `prefix`, sorted."""
        keys: list[str] = []
        with backend_errors(f"bucket '{bucket}'"):
            pages = self._client("s3").get_paginator("list_objects_v2")
            for page in pages.paginate(Bucket=bucket, Prefix=prefix):
                keys.extend(o["Key"] for o in page.get("Contents", []))
        return sorted(keys)

    def get_object(self, bucket: str, key: str) -> bytes:
        """The object's bytes."""
        with backend_errors(f"object '{key}' in bucket '{bucket}'"):
            return self._client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
