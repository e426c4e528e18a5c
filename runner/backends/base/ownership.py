"""Which resources are a pipeline's own: those its `apply` created.

Every create takes an `owner`, the pipeline it creates the resource for, and marks it as that
pipeline's own (a tag `pipeline=NAME` on AWS, a row of the state locally). A resource created
without one (by hand, or by another tool) and only found there by `apply` is adopted: nothing
marks it, so nothing the tool does deletes it.
"""

from __future__ import annotations

# The kinds of resource a pipeline may own, in the order they are deleted: each before what it
# uses (a mapping before its function and stream, a function before its role, a firehose
# before its stream, bucket, role and log group). A mapping's name is `FUNCTION <- STREAM`
# (functions.py).
KINDS = (
    "event source mapping",
    "function",
    "firehose",
    "log group",
    "role",
    "stream",
    "bucket",
    "checkpoint table",
)


class Ownership:
    """Finding what a pipeline owns; by default, a target on which it owns nothing."""

    def owned(self, pipeline: str) -> list[tuple[str, str]]:
        """(kind, name) of every existing resource created for the pipeline, kinds as in
        KINDS, whether or not its spec still declares it."""
        return []
