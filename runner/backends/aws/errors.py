"""What botocore raises, as the one-line BackendErrors the engine and the user act on.

Each names the resource, and AWS's error code and message; throttling and passing faults
become Throttled, so that the engine backs off instead of failing. During a run, so does every
failure of the way to AWS: a connection that cannot be made or breaks, TLS, an answer cut short
(`whole_answers` finds those botocore would read as answers with nothing in them), an error
answer botocore could not read, any 5xx.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

from botocore.exceptions import (
    BotoCoreError,
    ChecksumError,
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
    ProfileNotFound,
    ReadTimeoutError,
)
from botocore.exceptions import ConnectionError as BotocoreConnectionError
from botocore.parsers import ResponseParserError

from runner.backends.base import AlreadyExists, BackendError, IteratorExpired, Throttled

_NOT_FOUND = {"ResourceNotFoundException", "NoSuchEntity", "NoSuchBucket", "NoSuchKey", "404"}
# Answers that mean "slow down and try again": limits, and the service's own passing faults,
# which the loop waits out like throttling instead of failing a run that may last for days.
_THROTTLING = {
    "ProvisionedThroughputExceededException",
    "LimitExceededException",
    "ThrottlingException",
    "TooManyRequestsException",  # Lambda
    "KMSThrottlingException",
    "RequestLimitExceeded",
    "InternalFailure",
    "InternalServerError",
    "ServiceUnavailable",
    "ServiceUnavailableException",
}
# What a create answers when the resource is there already (e.g. made meanwhile by another
# apply); ResourceInUseException also means "busy" to calls that create nothing.
_ALREADY_EXISTS = {
    "ResourceInUseException",  # Kinesis, Firehose, DynamoDB
    "BucketAlreadyOwnedByYou",
    "EntityAlreadyExists",  # IAM
    "ResourceAlreadyExistsException",  # CloudWatch Logs
    "ResourceConflictException",  # Lambda: a function, or a mapping of the same two ends
}
_NO_CREDENTIALS = (
    "pass --profile NAME, set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) "
    "in the environment, or run `aws configure`"
)

# Where an endpoint comes from: the option for every service, else botocore's variables.
ENDPOINT_SETTINGS = "--endpoint-url, AWS_ENDPOINT_URL_<SERVICE> and AWS_ENDPOINT_URL"


class Missing(BackendError):
    """The resource a call named does not exist."""


class CutShort(BotoCoreError):
    """An answer whose body is not whole: it was cut short on the way (botocore reads a
    truncated JSON body as an answer with nothing in it)."""

    fmt = "the answer to {operation} was cut short"


class NotJson(BotoCoreError):
    """An answer of a JSON service that is not JSON at all: not from AWS (a proxy's page)."""

    fmt = "the answer to {operation} is not JSON"


def whole_answers(client: Any) -> None:
    """Make the client refuse, before botocore parses them, the answers of a JSON service that
    are not whole JSON, whatever reads them later: CutShort for one cut short (it would parse as
    an answer with nothing in it), NotJson for one that is not JSON at all."""
    client.meta.events.register_last("before-parse", _whole_answer)


def _whole_answer(operation_model: Any, response_dict: dict[str, Any], **_: Any) -> None:
    protocol = operation_model.service_model.resolved_protocol
    if response_dict["status_code"] >= 300 or protocol not in ("json", "rest-json"):
        return  # error answers: see _client_error; XML fails to parse when cut
    if operation_model.has_streaming_output:
        return
    body = response_dict["body"].strip()
    if not body:
        if int(response_dict["headers"].get("content-length") or 0):
            raise CutShort(operation=operation_model.name)
        return
    if not body.startswith(b"{"):
        raise NotJson(operation=operation_model.name)
    try:
        json.loads(body)
    except ValueError:
        raise CutShort(operation=operation_model.name) from None


# What breaks on the way to AWS and a later call may not meet: refused, timed out or dropped
# connections, DNS, TLS, a proxy, answers cut short or garbled.
_TRANSPORT = (
    BotocoreConnectionError,
    HTTPClientError,
    IncompleteReadError,
    ChecksumError,
    ResponseParserError,
    CutShort,
    NotJson,
)


@contextlib.contextmanager
def backend_errors(
    resource: str, missing: type[BackendError] = Missing, *, during_run: bool = False
) -> Iterator[None]:
    """Turn what botocore raises into a one-line BackendError naming `resource`.

    `during_run` marks the calls a run repeats for as long as it goes (reading, writing,
    checkpointing): there any failure of the way to AWS is waited out like throttling, while
    the calls made first (describing the resources) still fail at once on a wrong endpoint."""
    try:
        yield
    except ClientError as error:
        raise _client_error(resource, error, missing, during_run) from error
    except NoCredentialsError as error:
        raise BackendError(f"no AWS credentials found: {_NO_CREDENTIALS}") from error
    except PartialCredentialsError as error:
        raise BackendError(
            f"incomplete AWS credentials from {error.kwargs.get('provider', 'the environment')} "
            f"(missing {error.kwargs.get('cred_var', 'a value')}): {_NO_CREDENTIALS}"
        ) from error
    except ProfileNotFound as error:
        raise BackendError(
            f"AWS profile '{error.kwargs.get('profile')}' not found in the AWS config files: "
            f"check --profile or AWS_PROFILE, or run `aws configure --profile NAME`"
        ) from error
    except _TRANSPORT as error:
        raise _transport_error(resource, error, during_run) from error
    except BotoCoreError as error:
        raise BackendError(f"{resource}: {one_line(str(error))}") from error


def _transport_error(resource: str, error: Exception, during_run: bool) -> BackendError:
    if during_run or isinstance(error, (ConnectionClosedError, ReadTimeoutError)):
        return Throttled(f"{resource}: {one_line(str(error)).rstrip('.')}")
    if isinstance(error, EndpointConnectionError):
        return BackendError(
            f"{resource}: cannot connect to the endpoint {error.kwargs.get('endpoint_url')}: "
            f"check the network, the region and {ENDPOINT_SETTINGS}"
        )
    if isinstance(error, (ResponseParserError, NotJson)):
        return BackendError(
            f"{resource}: the endpoint did not answer like AWS: check {ENDPOINT_SETTINGS}"
        )
    return BackendError(f"{resource}: {one_line(str(error)).rstrip('.')}")


def _client_error(
    resource: str, error: ClientError, missing: type[BackendError], during_run: bool
) -> BackendError:
    code = error_code(error)
    message = one_line(error.response.get("Error", {}).get("Message") or "")
    detail = f"{code}: {message}" if message else code
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
    if code in _NOT_FOUND:
        return missing(f"{resource} does not exist ({detail})")
    if code in _THROTTLING:
        return Throttled(f"{resource}: {error.operation_name} throttled ({detail})")
    if code == "ExpiredIteratorException":
        return IteratorExpired(f"{resource}: {error.operation_name} failed ({detail})")
    if code in _ALREADY_EXISTS and error.operation_name.startswith("Create"):
        return AlreadyExists(f"{resource} already exists ({detail})")
    failed = f"{resource}: {error.operation_name} failed ({detail})"
    # A bare HTTP status for a code: botocore could not read the answer (cut short, or a
    # proxy's page); like a 5xx, a later try may get through.
    if during_run and (code.isdigit() or status >= 500):
        return Throttled(failed)
    return BackendError(failed)


def error_code(error: ClientError) -> str:
    """AWS's code for the error, such as `ResourceNotFoundException` or `404`."""
    return str(error.response.get("Error", {}).get("Code", "Unknown"))


def one_line(text: str) -> str:
    """The text with every run of whitespace, newlines too, made one space."""
    return " ".join(text.split())
