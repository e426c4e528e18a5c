"""IAM roles and CloudWatch log groups on AWS: what a delivery stream assumes and writes to."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Sequence

from botocore.exceptions import ClientError

from runner.backends.aws import policies
from runner.backends.aws.errors import Missing, backend_errors, error_code
from runner.backends.aws.session import OWNER_TAG, AwsSession, owner_tags
from runner.backends.base import FirehoseDescription, RoleDescription


class AccessMixin(AwsSession):
    """The roles Firehose assumes, and the log groups where it writes delivery errors."""

    def delivery_roles(self, firehoses: Sequence[FirehoseDescription]) -> list[RoleDescription]:
        """The roles these delivery streams assume, least privilege (policies.py)."""
        return policies.roles(firehoses, self.account_id, self.region, self.partition)

    def describe_role(self, name: str) -> RoleDescription | None:
        """The role's trust policy and inline policies, or None if it does not exist."""
        iam = self._client("iam")
        try:
            with backend_errors(f"role '{name}'"):
                role = iam.get_role(RoleName=name)["Role"]
                policies = {
                    policy: _policy(
                        iam.get_role_policy(RoleName=name, PolicyName=policy)["PolicyDocument"]
                    )
                    for policy in self._inline_policies(name)
                }
        except Missing:
            return None
        return RoleDescription(name, _policy(role["AssumeRolePolicyDocument"]), policies)

    def put_role(self, role: RoleDescription, owner: str | None = None) -> None:
        """Create the role, tagged pipeline=OWNER, or set the trust policy of the one there;
        then make its inline policies exactly these."""
        iam = self._client("iam")
        trust = json.dumps(role.trust_policy)
        with backend_errors(f"role '{role.name}'"):
            try:
                iam.create_role(
                    RoleName=role.name, AssumeRolePolicyDocument=trust, **owner_tags(owner)
                )
            except ClientError as error:
                if error_code(error) != "EntityAlreadyExists":
                    raise
                iam.update_assume_role_policy(RoleName=role.name, PolicyDocument=trust)
            for policy, document in role.policies.items():
                iam.put_role_policy(
                    RoleName=role.name, PolicyName=policy, PolicyDocument=json.dumps(document)
                )
            for stale in set(self._inline_policies(role.name)) - set(role.policies):
                iam.delete_role_policy(RoleName=role.name, PolicyName=stale)

    def delete_role(self, name: str) -> None:
        """Delete the role's inline policies, then the role."""
        iam = self._client("iam")
        with backend_errors(f"role '{name}'"):
            for policy in self._inline_policies(name):
                iam.delete_role_policy(RoleName=name, PolicyName=policy)
            iam.delete_role(RoleName=name)

    # CloudWatch Logs, where Firehose writes delivery errors

    def describe_log_group(self, group: str) -> list[str] | None:
        """The log group's stream names, or None when the group does not exist."""
        logs = self._client("logs")
        with backend_errors(f"log group '{group}'"):
            pages = logs.get_paginator("describe_log_groups").paginate(logGroupNamePrefix=group)
            if not any(g["logGroupName"] == group for p in pages for g in p["logGroups"]):
                return None
            pages = logs.get_paginator("describe_log_streams").paginate(logGroupName=group)
            return [s["logStreamName"] for p in pages for s in p["logStreams"]]

    def create_log_stream(self, group: str, stream: str, owner: str | None = None) -> None:
        """Create the stream, and its group when missing, tagged pipeline=OWNER; either may
        exist already."""
        logs = self._client("logs")
        tags = {} if owner is None else {"tags": {OWNER_TAG: owner}}
        with backend_errors(f"log group '{group}'"):
            for create in (
                lambda: logs.create_log_group(logGroupName=group, **tags),
                lambda: logs.create_log_stream(logGroupName=group, logStreamName=stream),
            ):
                try:
                    create()
                except ClientError as error:
                    if error_code(error) != "ResourceAlreadyExistsException":
                        raise

    def delete_log_group(self, group: str) -> None:
        """Delete the log group and its streams."""
        with backend_errors(f"log group '{group}'"):
            self._client("logs").delete_log_group(logGroupName=group)

    def owned(self, pipeline: str) -> list[tuple[str, str]]:
        """The roles and the region's log groups tagged pipeline=PIPELINE, with what the
        other services own."""
        iam, logs = self._client("iam"), self._client("logs")
        with backend_errors("the list of roles"):
            pages = iam.get_paginator("list_roles").paginate()
            role_names = [role["RoleName"] for page in pages for role in page["Roles"]]
        with backend_errors("the list of log groups"):
            pages = logs.get_paginator("describe_log_groups").paginate()
            groups = {
                group["logGroupName"]: group.get("logGroupArn") or group["arn"].removesuffix(":*")
                for page in pages
                for group in page["logGroups"]
            }

        def role_tags(name: str) -> dict[str, str]:
            pages = iam.get_paginator("list_role_tags").paginate(RoleName=name)
            return {tag["Key"]: tag["Value"] for page in pages for tag in page["Tags"]}

        roles = self._owned_by(pipeline, "role", role_names, role_tags)
        log_groups = self._owned_by(
            pipeline,
            "log group",
            groups,
            lambda name: logs.list_tags_for_resource(resourceArn=groups[name])["tags"],
        )
        return [
            *super().owned(pipeline),
            *(("role", name) for name in roles),
            *(("log group", name) for name in log_groups),
        ]

    def _inline_policies(self, role: str) -> list[str]:
        pages = self._client("iam").get_paginator("list_role_policies").paginate(RoleName=role)
        return [name for page in pages for name in page["PolicyNames"]]


def _policy(document: str | dict) -> dict:
    """A policy document as a dict; IAM answers with URL-encoded JSON unless boto3 decoded it."""
    if isinstance(document, dict):
        return document
    return json.loads(urllib.parse.unquote(document))
