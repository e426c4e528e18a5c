"""What only a target that delivers Firehose itself needs (AWS): the role Firehose assumes
and the log groups it writes delivery errors to. Other targets have neither."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from runner.backends.base.errors import BackendError
from runner.backends.base.firehoses import FirehoseDescription


@dataclass(frozen=True)
class RoleDescription:
    """An IAM role as provisioning compares it: who may assume it and its inline policies."""

    name: str
    trust_policy: dict
    policies: dict  # inline policy name -> policy document


class Access:
    """IAM roles and CloudWatch log groups; by default, a target without them."""

    name: str  # the target's, for messages (Backend.name)

    def delivery_roles(self, firehoses: Sequence[FirehoseDescription]) -> list[RoleDescription]:
        """The roles these delivery streams assume, one per role name, each allowed only what
        the delivery streams using it need."""
        raise BackendError(f"the {self.name} target has no IAM roles")

    def describe_role(self, name: str) -> RoleDescription | None:
        raise BackendError(f"the {self.name} target has no IAM roles")

    def put_role(self, role: RoleDescription, owner: str | None = None) -> None:
        """Create the role, as the `owner` pipeline's own (ownership.py), or set the trust
        policy and inline policies of the one there to these."""
        raise BackendError(f"the {self.name} target has no IAM roles")

    def delete_role(self, name: str) -> None:
        raise BackendError(f"the {self.name} target has no IAM roles")

    def describe_log_group(self, group: str) -> list[str] | None:
        """The log group's stream names, or None when the group does not exist."""
        raise BackendError(f"the {self.name} target has no log groups")

    def create_log_stream(self, group: str, stream: str, owner: str | None = None) -> None:
        """Create the stream, and its group when missing, as the `owner` pipeline's own."""
        raise BackendError(f"the {self.name} target has no log groups")

    def delete_log_group(self, group: str) -> None:
        raise BackendError(f"the {self.name} target has no log groups")
