"""What botocore raises, as the one-line BackendErrors the engine and the user act on.

Each names the resource, and AWS's error code and message; throttling and passing faults
become Throttled, so that the engine backs off instead of failing. During a run, so does every
failure of the way to AWS: a connection that cannot be made or breaks, TLS, an answer cut short.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

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

from runner.backends.base import BackendError, IteratorExpired, Throttled

_NOT_FOUND = {"ResourceNotFoundException", "NoSuchEntity", "NoSuchBucket", "NoSuchKey", "404"}
# Answers that mean "slow down and try again": limits, and the service's own passing faults,
# which the loop waits out like throttling instead of failing a run that may last for days.
_THROTTLING = {
    "ProvisionedThroughputExceededException",
    "LimitExceededException",
    "ThrottlingException",
    "KMSThrottlingException",
    "RequestLimitExceeded",
    "InternalFailure",
    "InternalServerError",
    "ServiceUnavailable",
    "ServiceUnavailableException",
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
    """An answer without what every answer of its call holds: it was cut short on the way
    (botocore reads a truncated JSON body as an answer with nothing in it)."""

    fmt = "the answer to {operation} was cut short (no {key} in it)"


def complete(answer: dict, operation: str, key: str) -> dict:
    """The answer, once it is known to hold `key`; raises CutShort otherwise."""
    if key not in answer:
        raise CutShort(operation=operation, key=key)
    return answer


# What breaks on the way to AWS and a later call may not meet: refused, timed out or dropped
# connections, DNS, TLS, a proxy, answers cut short or garbled.
_TRANSPORT = (
    BotocoreConnectionError,
    HTTPClientError,
    IncompleteReadError,
    ChecksumError,
    ResponseParserError,
    CutShort,
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
        raise _client_error(resource, error, missing) from error
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
    if isinstance(error, ResponseParserError):
        return BackendError(
            f"{resource}: the endpoint did not answer like AWS: check {ENDPOINT_SETTINGS}"
        )
    return BackendError(f"{resource}: {one_line(str(error)).rstrip('.')}")


def _client_error(resource: str, error: ClientError, missing: type[BackendError]) -> BackendError:
    code = error_code(error)
    message = one_line(error.response.get("Error", {}).get("Message") or "")
    detail = f"{code}: {message}" if message else code
    if code in _NOT_FOUND:
        return missing(f"{resource} does not exist ({detail})")
    if code in _THROTTLING:
        return Throttled(f"{resource}: {error.operation_name} throttled ({detail})")
    if code == "ExpiredIteratorException":
        return IteratorExpired(f"{resource}: {error.operation_name} failed ({detail})")
    return BackendError(f"{resource}: {error.operation_name} failed ({detail})")


def error_code(error: ClientError) -> str:
    """AWS's code for the error, such as `ResourceNotFoundException` or `404`."""
    return str(error.response.get("Error", {}).get("Code", "Unknown"))


def one_line(text: str) -> str:
    """The text with every run of whitespace, newlines too, made one space."""
    return " ".join(text.split())
