"""The boto3 session every AWS service mixin shares: its clients, ARNs and waits.

Credentials come from boto3's standard chain. The calls a run repeats (reading, writing and
checkpointing) are made once, with short timeouts and without botocore's retries, so that
throttling and a failing service reach the engine, which backs off, says so and sees a stop
request within seconds; control-plane calls keep the standard retries.
"""

from __future__ import annotations

import os
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from runner.backends.aws.errors import ENDPOINT_SETTINGS, Missing, backend_errors, whole_answers
from runner.backends.base import DEFAULT_REGION, Backend, BackendError

# Each call of a run (GetRecords, PutRecords, a checkpoint...) is tried once: the caller backs
# off itself. (botocore's `max_attempts` counts retries after the first call,
# `total_max_attempts` all calls.) A connection is given 5 s and an answer 10 s, not botocore's
# 60 each, so that a run whose service hangs or whose network is lost says so, and sees a stop
# request, within seconds: these calls answer at once when all is well.
_DATA_PLANE = Config(retries={"total_max_attempts": 1}, connect_timeout=5, read_timeout=10)
_CONTROL_PLANE = Config(retries={"mode": "standard"})

WAIT_TIMEOUT_S = 900
# How long a service may refuse a role just made or changed: IAM is eventually consistent.
ROLE_PROPAGATION_S = 60

# The tag marking a resource as a pipeline's own (base/ownership.py): pipeline=NAME.
OWNER_TAG = "pipeline"


def owner_tags(owner: str | None, key: str = "Tags") -> dict[str, list[dict[str, str]]]:
    """The owner's tag as a parameter most services take, `{key: [{Key, Value}]}`, or no
    parameter without an owner."""
    return {} if owner is None else {key: [{"Key": OWNER_TAG, "Value": owner}]}


def exclusive_pages(
    call: Callable[..., dict],
    items: str,
    more: str,
    start: str,
    key: Callable[[Any], str] = str,
    **params: Any,
) -> list:
    """Every item of `items` a Kinesis or Firehose list call answers with, page after page:
    each page says whether `more` follow, which are asked for from `start`, the `key` of the
    last item so far."""
    found: list = []
    while True:
        answer = call(**params)
        found += answer[items]
        if not answer.get(more) or not answer[items]:
            return found
        params[start] = key(answer[items][-1])


def tag_pages(call: Callable[..., dict], **params: Any) -> dict[str, str]:
    """Every tag a Kinesis or Firehose ListTags call answers with."""
    tags = exclusive_pages(
        call, "Tags", "HasMoreTags", "ExclusiveStartTagKey", lambda tag: tag["Key"], **params
    )
    return {tag["Key"]: tag["Value"] for tag in tags}


class AwsSession(Backend):
    """One region's boto3 session and the clients made from it, shared by every service.

    Waits for a resource poll every `poll_s` by the monotonic `clock` and `sleep` (tests pass
    fakes)."""

    def __init__(
        self,
        region: str | None,
        profile: str | None = None,
        endpoint_url: str | None = None,
        poll_s: float = 2.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.endpoint_url = endpoint_url
        self.poll_s = poll_s
        self._clock = clock
        self._sleep = sleep
        with backend_errors("the AWS session"):
            self._session = boto3.Session(profile_name=profile)
            # No region given: AWS_REGION (which boto3 does not read), then boto3's own choice
            # (AWS_DEFAULT_REGION, the profile's), else us-east-1. Every client is made in it.
            configured = os.environ.get("AWS_REGION") or self._session.region_name
            self.region = region or configured or DEFAULT_REGION
            self.partition = self._session.get_partition_for_region(self.region)
        self._clients: dict[tuple[str, bool], Any] = {}
        # boto3 clients are thread-safe once made, but making them from one session is not.
        self._lock = threading.Lock()
        self._account_id: str | None = None

    @property
    def account_id(self) -> str:
        """The account of the caller's credentials, asked of STS once."""
        if self._account_id is None:
            with backend_errors("STS (asked for the account id)"):
                self._account_id = self._client("sts").get_caller_identity()["Account"]
        return self._account_id

    @property
    def location(self) -> str:
        """The region, and the endpoint where it is not AWS's own (e.g. a moto server)."""
        endpoint = self._client("kinesis").meta.endpoint_url
        own = urllib.parse.urlsplit(endpoint).hostname or ""
        at = "" if own.endswith((".amazonaws.com", ".amazonaws.com.cn")) else f" at {endpoint}"
        return f"the aws target in {self.region}{at}"

    def close(self) -> None:
        """Close every client's connections."""
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()

    def _client(self, service: str, data_plane: bool = False) -> Any:
        with self._lock:
            client = self._clients.get((service, data_plane))
            if client is None:
                config = _CONTROL_PLANE
                if data_plane:
                    # A run reads shards and writes lanes and checkpoints at once, while it
                    # reads ahead: a connection for each call, where botocore keeps 10 (with
                    # fewer, urllib3 says "Connection pool is full, discarding connection").
                    connections = self.read_workers + self.write_workers
                    config = _DATA_PLANE.merge(Config(max_pool_connections=connections))
                client = self._new_client(service, config)
                self._clients[(service, data_plane)] = client
            return client

    def _new_client(self, service: str, config: Config) -> Any:
        # --endpoint-url is explicit for every service; without it, botocore resolves
        # AWS_ENDPOINT_URL_<SERVICE>, AWS_ENDPOINT_URL and the AWS config's endpoints itself.
        # On any endpoint but AWS's own, botocore addresses S3 buckets by path (LocalStack and
        # moto serve every bucket on one host), unless the AWS config asks for virtual hosts.
        try:
            client = self._session.client(
                service, region_name=self.region, config=config, endpoint_url=self.endpoint_url
            )
        except ValueError as error:  # botocore's "Invalid endpoint: host:port"
            raise BackendError(
                f"the {service} endpoint: {error}; an endpoint is a URL with its scheme, "
                f"e.g. http://127.0.0.1:5000: check {ENDPOINT_SETTINGS}"
            ) from error
        whole_answers(client)
        return client

    def _owned_by(
        self,
        pipeline: str,
        what: str,
        names: Iterable[str],
        tags: Callable[[str], dict[str, str]],
    ) -> Iterator[str]:
        """Those of `names` whose `tags` mark them as the pipeline's own, asking each one's
        tags in turn; one deleted meanwhile is passed over."""
        for name in names:
            try:
                with backend_errors(f"{what} '{name}'"):
                    found = tags(name)
            except Missing:
                continue
            if found.get(OWNER_TAG) == pipeline:
                yield name

    def _arn(self, service: str, resource: str) -> str:
        return f"arn:{self.partition}:{service}:{self.region}:{self.account_id}:{resource}"

    def _wait(self, what: str, status: Callable[[], str | None], until: str | None) -> None:
        """Poll `status` every poll_s until it is `until` (None: until the resource is gone)."""
        deadline = self._clock() + WAIT_TIMEOUT_S
        while (current := status()) != until:
            if current is None:
                raise BackendError(f"{what} vanished while waiting for it to be {until}")
            if self._clock() > deadline:
                wanted = until or "gone"
                raise BackendError(
                    f"{what} is still {current} after {WAIT_TIMEOUT_S} s, "
                    f"waiting for it to be {wanted}"
                )
            self._sleep(self.poll_s)

    def _while_role_propagates(
        self,
        resource: str,
        call: Callable[[], Any],
        role_not_ready: Callable[[ClientError], bool],
    ) -> Any:
        """Make the call and return its answer; again every poll_s, for up to
        ROLE_PROPAGATION_S, while the service refuses a new role (`role_not_ready`)."""
        deadline = self._clock() + ROLE_PROPAGATION_S
        with backend_errors(resource):
            while True:
                try:
                    return call()
                except ClientError as error:
                    if not role_not_ready(error) or self._clock() > deadline:
                        raise
                self._sleep(self.poll_s)
