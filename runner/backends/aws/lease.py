"""The run lease on AWS: one item in the pipeline's checkpoint table naming the run that may
write, so that two runs of a pipeline never both write.

A run takes the item when it is free; when it has watched it stay the same (holder, epoch and
renewal count) for a whole lease period on its own monotonic clock; or at once when its holder
was a process of this machine that is gone. The holder renews it every third of the lease, and
writes only while its last renewal began less than three quarters of a lease ago: by the time
another run may take the lease over, the holder has stopped writing, whatever the wall clocks
of the two machines say. Each take writes a new epoch, and renewals and checkpoints are written
on the condition that the item still names this run and epoch (checkpoints.py). So a renewal
that gets through after the lease lapsed (a network lost for a while) proves that no run took
it over meanwhile, and the run writes again; the lease is lost only to a run that took it. The
item also says, for people (`pipeline status`), since when the run holds it and when it expires
unless renewed, on the holder's wall clock; no decision is made by those times.
"""

from __future__ import annotations

import datetime
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from runner.backends.aws.errors import error_code, one_line
from runner.backends.base import BackendError, Lease, LeaseLapsed, LeaseLost, RunHolder

# The lease's item; no stream is named like this, so no checkpoint can collide with it.
LEASE_KEY = {"stream": {"S": "#run-lock"}, "shard_id": {"S": "#run-lock"}}

# The renewals' own client: one short try per call, so that a renewal ends well within its
# turn (botocore's defaults, three tries of up to 60 s each, would outlast a 60 s lease).
LEASE_CALLS = Config(connect_timeout=2, read_timeout=3, retries={"total_max_attempts": 1})

_STOPPED = "stopped without writing or checkpointing further"


@dataclass(frozen=True)
class LeaseTiming:
    """How long a run's lease lasts after its last renewal, and the monotonic clock, the sleep
    and the renewals' wait it is kept by (tests pass fakes); `wall` only dates the item for
    people. `wait(event, seconds)` returns once the event is set (the run ends) or the seconds
    have passed, so that a run's renewals stop as it ends, not a third of a lease later."""

    seconds: float = 60.0
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    wall: Callable[[], float] = time.time
    wait: Callable[[threading.Event, float], object] = threading.Event.wait

    def expires(self) -> dict[str, Any]:
        """The item's `expires`, as DynamoDB writes it: a lease from now, on the wall clock."""
        return {"S": _iso(self.wall() + self.seconds)}

    @property
    def safe(self) -> float:
        """How long after a renewal began its run may still write: the lease less a quarter,
        the margin for a write on its way to AWS and for clocks of slightly different rates."""
        return self.seconds * 3 / 4


def new_owner() -> str:
    """The text naming this run in the lease item; unique per run, even in one process."""
    return f"{socket.gethostname()} pid {os.getpid()} run {uuid.uuid4().hex[:8]}"


def take(
    client: Any,
    table: str,
    pipeline: str,
    owner: str,
    timing: LeaseTiming,
    report: Callable[[str], None],
    why: str,  # what the refusal ends with
) -> tuple[dict[str, Any], float]:
    """Take the lease item for `owner`; returns the item written and the clock when the write
    began. Raises BackendError, naming the holder, if the item changes while this run waits."""
    seen: dict[str, Any] | None = None  # the item as first found held
    since = 0.0
    while True:
        found = client.get_item(TableName=table, Key=LEASE_KEY, ConsistentRead=True).get("Item")
        looked = timing.clock()  # after the read: no earlier than the renewal it shows
        holder = (found or {}).get("owner", {}).get("S")
        dead = holder is not None and _died_here(found)
        if holder is None:
            condition = _FREE
        else:
            if seen is None:
                seen, since = found, looked
                if not dead:
                    report(
                        f"waiting for the run lease held by {holder} "
                        f"(free in {math.ceil(timing.seconds)} s unless renewed)"
                    )
            elif found != seen:
                raise BackendError(_refusal(pipeline, seen, found, why))
            waited = looked - since
            if not dead and waited < timing.seconds:
                timing.sleep(min(timing.seconds / 12, timing.seconds - waited))
                continue
            condition = _as_seen(found)
        item = _item(owner, timing)
        began = timing.clock()
        try:
            client.put_item(TableName=table, Item=item, **condition)
        except ClientError as error:
            if error_code(error) != "ConditionalCheckFailedException":
                raise
            continue  # another run changed it first: look again
        if dead:
            report(f"took over the run lease of {holder}, whose process is gone")
        elif holder is not None:
            report(f"took over the run lease of {holder}, not renewed for {timing.seconds:g} s")
        return item, began


class RunLease(Lease):
    """This run's hold on the lease item, renewed by a thread of its own while the run goes."""

    def __init__(
        self, client: Any, table: str, item: dict[str, Any], taken: float, timing: LeaseTiming
    ) -> None:
        self.table = table
        self.owner = item["owner"]["S"]
        self.epoch = item["epoch"]["S"]
        self._client = client  # with LEASE_CALLS' short timeouts
        self._timing = timing
        self._renewed = taken  # the clock when the last successful take or renewal began
        self._lost: str | None = None  # why, once another run holds it: for good
        self._failure: str | None = None  # why renewals fail, while they do
        self._done = threading.Event()
        self._renewer = threading.Thread(target=self._keep, name="run-lease", daemon=True)

    def start(self) -> None:
        self._renewer.start()

    def held(self) -> bool:
        return self._lost is None and self._timing.clock() - self._renewed < self._timing.safe

    def check(self) -> None:
        if self.held():
            return
        if self._lost is None:
            # Not renewed lately: the renewals would find a takeover, but may not get through.
            holder = self._holder()
            if holder is not None and holder != self.owner:  # taken, even if let go since
                self._lost = f"lost the run lease to {holder or 'another run'}"
        if self._lost is not None:
            raise LeaseLost(f"{self._lost}: {_STOPPED}")
        failure = f" ({self._failure})" if self._failure else ""
        raise LeaseLapsed(
            f"the run lease was not renewed for {self._timing.safe:g} s{failure}: "
            "nothing is written until it is"
        )

    def taken(self) -> None:
        """The item no longer names this run and epoch: lost, to whoever holds it now."""
        self._lost = f"lost the run lease to {self._holder() or 'another run'}"

    def mine(self) -> dict[str, Any]:
        """The condition, as DynamoDB call parameters, that the item still names this run."""
        return {
            "ConditionExpression": "#owner = :owner AND #epoch = :epoch",
            "ExpressionAttributeNames": {"#owner": "owner", "#epoch": "epoch"},
            "ExpressionAttributeValues": {
                ":owner": {"S": self.owner},
                ":epoch": {"S": self.epoch},
            },
        }

    def release(self) -> None:
        """Stop renewing and free the item if it still names this run; a release that fails
        lets the lease lapse. Returns once the renewals' thread has ended: a renewal still in
        flight (at most its short timeouts) finds the item gone and stops."""
        self._done.set()
        try:
            self._client.delete_item(TableName=self.table, Key=LEASE_KEY, **self.mine())
        except (ClientError, BotoCoreError):
            pass
        if self._renewer.is_alive():
            self._renewer.join()

    def _keep(self) -> None:
        """Renew every third of the lease; after a failure try again soon, until the run ends
        or another run holds the item. A renewal that gets through holds the lease again, even
        after it lapsed: being conditioned on the item still naming this run and epoch, it
        proves that no run took it over meanwhile."""
        due = self._renewed + self._timing.seconds / 3
        while True:
            self._timing.wait(self._done, max(0.0, due - self._timing.clock()))
            if self._done.is_set() or self._lost is not None:
                return
            began = self._timing.clock()
            due = began + self._timing.seconds / 30  # unless renewed
            try:
                self._client.update_item(
                    TableName=self.table,
                    Key=LEASE_KEY,
                    UpdateExpression="SET #renewals = #renewals + :one, #expires = :expires",
                    **_with(
                        self.mine(),
                        {"#renewals": "renewals", "#expires": "expires"},
                        {":one": {"N": "1"}, ":expires": self._timing.expires()},
                    ),
                )
            except ClientError as error:
                if error_code(error) == "ConditionalCheckFailedException":
                    self.taken()
                    return
                self._failure = one_line(str(error))
                continue
            except Exception as error:  # noqa: BLE001 - a timeout or a blip: try again soon
                self._failure = one_line(str(error))
                continue
            self._renewed = began
            self._failure = None
            due = began + self._timing.seconds / 3

    def _holder(self) -> str | None:
        """Who holds the item now, as far as one quick read tells: "" if no run does (the item
        is gone), None if the read failed."""
        try:
            found = self._client.get_item(TableName=self.table, Key=LEASE_KEY, ConsistentRead=True)
        except (ClientError, BotoCoreError):
            return None
        return found.get("Item", {}).get("owner", {}).get("S", "")


_FREE = {
    "ConditionExpression": "attribute_not_exists(#owner)",
    "ExpressionAttributeNames": {"#owner": "owner"},
}


def _item(owner: str, timing: LeaseTiming) -> dict[str, Any]:
    """The lease item of a run taking it: who it is, where its pid is numbered, a new epoch,
    and for people since when it holds it and when it expires unless renewed."""
    return {
        **LEASE_KEY,
        "owner": {"S": owner},
        "epoch": {"S": uuid.uuid4().hex},
        "renewals": {"N": "0"},
        "host": {"S": socket.gethostname()},
        "pid_namespace": {"S": _pid_namespace()},
        "pid": {"N": str(os.getpid())},
        "since": {"S": _iso(timing.wall())},
        "expires": timing.expires(),
    }


def lease_holder(item: dict[str, Any]) -> RunHolder:
    """Who a lease item names, as `pipeline status` shows it; items written before the times
    were kept have none."""
    pid = item.get("pid", {}).get("N")
    return RunHolder(
        "lease",
        item["owner"]["S"],
        host=item.get("host", {}).get("S"),
        pid=None if pid is None else int(pid),
        since=_moment(item.get("since")),
        expires=_moment(item.get("expires")),
        gone=_died_here(item),
    )


def _iso(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).isoformat()


def _moment(value: dict[str, str] | None) -> datetime.datetime | None:
    return None if value is None else datetime.datetime.fromisoformat(value["S"])


def _as_seen(item: dict[str, Any]) -> dict[str, Any]:
    """The condition, as DynamoDB call parameters, that the item is still exactly `item`."""
    fields = sorted(name for name in item if name not in LEASE_KEY)
    return {
        "ConditionExpression": " AND ".join(f"#f{i} = :f{i}" for i in range(len(fields))),
        "ExpressionAttributeNames": {f"#f{i}": name for i, name in enumerate(fields)},
        "ExpressionAttributeValues": {f":f{i}": item[name] for i, name in enumerate(fields)},
    }


def _with(params: dict[str, Any], names: dict[str, str], values: dict[str, Any]) -> dict:
    """Condition parameters, with more expression attribute names and values."""
    return {
        "ConditionExpression": params["ConditionExpression"],
        "ExpressionAttributeNames": {**params["ExpressionAttributeNames"], **names},
        "ExpressionAttributeValues": {**params["ExpressionAttributeValues"], **values},
    }


def _refusal(pipeline: str, seen: dict[str, Any], found: dict[str, Any], why: str) -> str:
    holder = found["owner"]["S"]
    how = "renewed its lease" if holder == seen["owner"]["S"] else "took the lease"
    return f"pipeline {pipeline} is already running ({holder} {how} while this one waited); {why}"


def _pid_namespace() -> str:
    # Containers may share a hostname (host networking) but number their processes apart.
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:  # no /proc (macOS): one numbering per machine
        return ""


def _died_here(lease: dict[str, Any]) -> bool:
    """Whether the lease item names a process of this machine that no longer exists."""
    where = (lease.get("host", {}).get("S"), lease.get("pid_namespace", {}).get("S"))
    pid = int(lease.get("pid", {}).get("N", 0))
    if where != (socket.gethostname(), _pid_namespace()) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)  # signal 0 only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, as another user's
        pass
    return False
