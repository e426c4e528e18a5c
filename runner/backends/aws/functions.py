"""AWS Lambda: the function a spec with `lambda:` runs as, and the Kinesis event source mapping
through which Lambda reads the source stream and calls it, with partial batch responses."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any

from botocore.exceptions import ClientError

from runner.backends.aws import policies
from runner.backends.aws.errors import Missing, backend_errors, error_code, one_line
from runner.backends.aws.session import OWNER_TAG, AwsSession
from runner.backends.base import (
    BackendError,
    FunctionDescription,
    MappingDescription,
    RoleDescription,
    mapping_name,
)

# The partial batch response the handler gives: the records from the first failed one on
# are retried (or bisected), not the whole batch.
REPORT_BATCH_ITEM_FAILURES = "ReportBatchItemFailures"

# The states of a mapping on its way to being Enabled or Disabled.
_MAPPING_MOVING = {"Creating", "Enabling", "Disabling", "Updating"}
_MAPPING_SETTLED = "Enabled or Disabled"


class FunctionsMixin(AwsSession):
    """Lambda functions from a zip, their execution roles, and their Kinesis event source
    mappings; each created for a pipeline is tagged pipeline=NAME."""

    def describe_function(self, name: str) -> FunctionDescription | None:
        """The function as provisioning compares it, or None if it does not exist."""
        found = self._function(name)
        if found is None:
            return None
        return FunctionDescription(
            name=name,
            runtime=found.get("Runtime", ""),
            handler=found.get("Handler", ""),
            memory_mb=found["MemorySize"],
            timeout_s=found["Timeout"],
            role=found["Role"].rsplit("/", 1)[-1],  # arn:...:role/path/NAME
            code_sha256=found["CodeSha256"],
            environment=found.get("Environment", {}).get("Variables", {}),
            owner=self._lambda_owner(f"function '{name}'", found["FunctionArn"]),
        )

    def create_function(
        self, function: FunctionDescription, code: bytes, owner: str | None = None
    ) -> None:
        """Create the function from the zip, tagged pipeline=OWNER, again while Lambda cannot
        assume a role just made; return once it is Active (before which Lambda refuses
        updates)."""
        client = self._client("lambda")
        tags = {} if owner is None else {"Tags": {OWNER_TAG: owner}}
        self._while_role_propagates(
            f"function '{function.name}'",
            lambda: client.create_function(
                FunctionName=function.name,
                PackageType="Zip",
                Code={"ZipFile": code},
                **self._configuration(function),
                **tags,
            ),
            _role_not_ready,
        )
        self._wait_for_function(function.name, "State", "Active")

    def update_function_code(self, name: str, code: bytes) -> None:
        """Replace the function's zip; return once Lambda has it in place."""
        with backend_errors(f"function '{name}'"):
            self._client("lambda").update_function_code(FunctionName=name, ZipFile=code)
        self._wait_for_function(name, "LastUpdateStatus", "Successful")

    def update_function_configuration(self, function: FunctionDescription) -> None:
        """Set the runtime, handler, memory, timeout, role and environment; return once done."""
        client = self._client("lambda")
        self._while_role_propagates(
            f"function '{function.name}'",
            lambda: client.update_function_configuration(
                FunctionName=function.name, **self._configuration(function)
            ),
            _role_not_ready,
        )
        self._wait_for_function(function.name, "LastUpdateStatus", "Successful")

    def delete_function(self, name: str) -> None:
        with backend_errors(f"function '{name}'"):
            self._client("lambda").delete_function(FunctionName=name)

    def function_role(
        self,
        role: str,
        function: str,
        source: str,
        sinks: Sequence[str],
        dead_letter_stream: str | None = None,
        dead_letter_bucket: str | None = None,
        dead_letter_prefix: str = "",
        pipeline: str | None = None,
    ) -> RoleDescription:
        """The function's execution role, least privilege (policies.py)."""
        return policies.function_role(
            role,
            function,
            source,
            sinks,
            dead_letter_stream,
            dead_letter_bucket,
            dead_letter_prefix,
            pipeline=pipeline,
            account_id=self.account_id,
            region=self.region,
            partition=self.partition,
        )

    # Event source mappings, each found by its two ends

    def describe_mapping(self, function: str, stream: str) -> MappingDescription | None:
        """The mapping from the stream to the function, or None if there is none."""
        found = self._mapping(function, stream)
        return None if found is None else self._mapping_description(found)

    def feeding(self, stream: str) -> list[MappingDescription]:
        """The mappings through which Lambda reads the stream, whatever function they feed."""
        client = self._client("lambda")
        with backend_errors(f"the event source mappings of stream '{stream}'"):
            pages = client.get_paginator("list_event_source_mappings").paginate(
                EventSourceArn=self._arn("kinesis", f"stream/{stream}")
            )
            found = [m for page in pages for m in page["EventSourceMappings"]]
        return [self._mapping_description(mapping) for mapping in found]

    def _mapping_description(self, found: dict) -> MappingDescription:
        function = _function_name(found["FunctionArn"])
        stream = found["EventSourceArn"].split("/")[-1]
        timestamp = found.get("StartingPositionTimestamp")
        arn = found.get("EventSourceMappingArn") or self._arn(
            "lambda", f"event-source-mapping:{found['UUID']}"
        )
        return MappingDescription(
            function=function,
            stream=stream,
            batch_size=found["BatchSize"],
            batching_window_s=found.get("MaximumBatchingWindowInSeconds", 0),
            parallelization=found.get("ParallelizationFactor", 1),
            max_retries=found.get("MaximumRetryAttempts", -1),
            max_record_age_s=found.get("MaximumRecordAgeInSeconds", -1),
            bisect_on_error=found.get("BisectBatchOnFunctionError", False),
            starting_position=found.get("StartingPosition", ""),
            starting_timestamp=timestamp.astimezone(datetime.timezone.utc) if timestamp else None,
            report_batch_item_failures=(
                REPORT_BATCH_ITEM_FAILURES in found.get("FunctionResponseTypes", [])
            ),
            uuid=found["UUID"],
            state=found.get("State", ""),
            last_result=found.get("LastProcessingResult"),
            owner=self._lambda_owner(
                f"event source mapping '{mapping_name(function, stream)}'", arn
            ),
        )

    def _lambda_owner(self, what: str, arn: str) -> str | None:
        """The pipeline a function's or mapping's tag names, or None."""
        with backend_errors(what):
            return self._client("lambda").list_tags(Resource=arn).get("Tags", {}).get(OWNER_TAG)

    def create_mapping(self, mapping: MappingDescription, owner: str | None = None) -> None:
        """Create the mapping, enabled, tagged pipeline=OWNER, again while the function's role
        or its policy is too new for Lambda to read the stream with; return once Enabled."""
        start: dict[str, Any] = {"StartingPosition": mapping.starting_position}
        if mapping.starting_timestamp is not None:
            start["StartingPositionTimestamp"] = mapping.starting_timestamp
        tags = {} if owner is None else {"Tags": {OWNER_TAG: owner}}
        client = self._client("lambda")
        self._while_role_propagates(
            f"event source mapping '{mapping.name}'",
            lambda: client.create_event_source_mapping(
                FunctionName=mapping.function,
                EventSourceArn=self._arn("kinesis", f"stream/{mapping.stream}"),
                Enabled=True,
                **start,
                **_settings(mapping),
                **tags,
            ),
            _role_not_ready,
        )
        self._wait_for_mapping(mapping.function, mapping.stream)

    def update_mapping(self, mapping: MappingDescription) -> None:
        """Set the batching, retry and response settings; the starting position is where the
        mapping began reading, which Lambda cannot change. Return once it has settled."""
        found = self._mapping(mapping.function, mapping.stream)
        if found is None:
            raise Missing(f"event source mapping '{mapping.name}' does not exist")
        with backend_errors(f"event source mapping '{mapping.name}'"):
            self._client("lambda").update_event_source_mapping(
                UUID=found["UUID"], **_settings(mapping)
            )
        self._wait_for_mapping(mapping.function, mapping.stream)

    def delete_mapping(self, function: str, stream: str) -> None:
        """Delete the mapping; return once it is gone (Lambda stops reading the stream)."""
        name = mapping_name(function, stream)
        found = self._mapping(function, stream)
        if found is None:
            raise Missing(f"event source mapping '{name}' does not exist")
        with backend_errors(f"event source mapping '{name}'"):
            self._client("lambda").delete_event_source_mapping(UUID=found["UUID"])
        self._wait_for_mapping(function, stream, until=None)

    def owned(self, pipeline: str) -> list[tuple[str, str]]:
        """The functions and event source mappings tagged pipeline=PIPELINE, mappings named
        `FUNCTION <- STREAM`, with what the other services own."""
        client = self._client("lambda")
        with backend_errors("the list of functions"):
            pages = client.get_paginator("list_functions").paginate()
            functions = {f["FunctionName"]: f["FunctionArn"] for p in pages for f in p["Functions"]}
        with backend_errors("the list of event source mappings"):
            pages = client.get_paginator("list_event_source_mappings").paginate()
            mappings = {
                mapping_name(_function_name(m["FunctionArn"]), m["EventSourceArn"].split("/")[-1]):
                # Endpoints older than mapping tags answer without its ARN: made from its id.
                m.get("EventSourceMappingArn")
                or self._arn("lambda", f"event-source-mapping:{m['UUID']}")
                for p in pages
                for m in p["EventSourceMappings"]
                if ":kinesis:" in m.get("EventSourceArn", "")
            }
        found = {
            kind: self._owned_by(
                pipeline,
                kind,
                arns,
                lambda name, a=arns: client.list_tags(Resource=a[name])["Tags"],
            )
            for kind, arns in (("function", functions), ("event source mapping", mappings))
        }
        return [
            *super().owned(pipeline),
            *((kind, name) for kind, names in found.items() for name in names),
        ]

    def _configuration(self, function: FunctionDescription) -> dict[str, Any]:
        """What CreateFunction and UpdateFunctionConfiguration both set."""
        return {
            "Runtime": function.runtime,
            "Handler": function.handler,
            "MemorySize": function.memory_mb,
            "Timeout": function.timeout_s,
            "Role": f"arn:{self.partition}:iam::{self.account_id}:role/{function.role}",
            "Environment": {"Variables": dict(function.environment)},
        }

    def _function(self, name: str) -> dict | None:
        try:
            with backend_errors(f"function '{name}'"):
                return self._client("lambda").get_function_configuration(FunctionName=name)
        except Missing:
            return None

    def _wait_for_function(self, name: str, field: str, until: str) -> None:
        """Wait until the function's `field` (State, or LastUpdateStatus) is `until`; raise
        BackendError with Lambda's reason if it is Failed."""

        def status() -> str | None:
            found = self._function(name)
            if found is None:
                return None
            current = found.get(field, until)
            if current == "Failed":
                reason = found.get(f"{field}Reason") or ""
                code = found.get(f"{field}ReasonCode") or "Failed"
                doing = "update" if field == "LastUpdateStatus" else "creation"
                raise BackendError(
                    f"function '{name}': the {doing} failed ({code}: {one_line(reason)})"
                )
            return current

        self._wait(f"function '{name}'", status, until)

    def _mapping(self, function: str, stream: str) -> dict | None:
        """The mapping's configuration as Lambda lists it, or None."""
        client = self._client("lambda")
        try:
            with backend_errors(f"event source mapping '{mapping_name(function, stream)}'"):
                pages = client.get_paginator("list_event_source_mappings").paginate(
                    FunctionName=function,
                    EventSourceArn=self._arn("kinesis", f"stream/{stream}"),
                )
                found = [m for page in pages for m in page["EventSourceMappings"]]
        except Missing:  # no such function
            return None
        # Lambda refuses a second mapping of the same function and stream.
        return found[0] if found else None

    def _wait_for_mapping(
        self, function: str, stream: str, until: str | None = _MAPPING_SETTLED
    ) -> None:
        """Wait until the mapping is Enabled or Disabled (None: gone)."""

        def status() -> str | None:
            found = self._mapping(function, stream)
            if found is None:
                return None
            state = found.get("State", "")
            return state if state in _MAPPING_MOVING or until is None else _MAPPING_SETTLED

        self._wait(f"event source mapping '{mapping_name(function, stream)}'", status, until)


def _settings(mapping: MappingDescription) -> dict[str, Any]:
    """What CreateEventSourceMapping and UpdateEventSourceMapping both set."""
    return {
        "BatchSize": mapping.batch_size,
        "MaximumBatchingWindowInSeconds": mapping.batching_window_s,
        "ParallelizationFactor": mapping.parallelization,
        "MaximumRetryAttempts": mapping.max_retries,
        "MaximumRecordAgeInSeconds": mapping.max_record_age_s,
        "BisectBatchOnFunctionError": mapping.bisect_on_error,
        "FunctionResponseTypes": (
            [REPORT_BATCH_ITEM_FAILURES] if mapping.report_batch_item_failures else []
        ),
    }


def _role_not_ready(error: ClientError) -> bool:
    """Whether Lambda refused a role, or a role's policy, too new for it to use yet: IAM is
    eventually consistent."""
    message = error.response.get("Error", {}).get("Message", "")
    return error_code(error) == "InvalidParameterValueException" and (
        "cannot be assumed by Lambda" in message or "Please ensure the role can" in message
    )


def _function_name(arn: str) -> str:
    """The function's name in its ARN, `arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]`."""
    return arn.split(":function:", 1)[-1].split(":", 1)[0]
