"""Targets: the embedded local backend and AWS."""

from __future__ import annotations

from pathlib import Path

from runner.backends.base import DEFAULT_REGION, Backend, BackendError

TARGETS = ("local", "aws")

# The targets whose checkpoints live off the machine running `pipeline run` (in DynamoDB on
# AWS): nothing they move past may live only on that machine's disk, as in the state folder.
CHECKPOINTS_OFF_MACHINE = ("aws",)


def open_backend(
    target: str,
    *,
    state_dir: Path,
    region: str | None,
    profile: str | None = None,
    endpoint_url: str | None = None,
    writes: bool = True,
) -> Backend:
    """The backend for `--target`; the local one keeps its state under `state_dir`, which a
    command that only reads (not `writes`) never creates."""
    if target == "local":
        from runner.backends.local import LocalBackend

        return LocalBackend(state_dir, region=region or DEFAULT_REGION, create=writes)
    if target == "aws":
        from runner.backends.aws import AwsBackend

        return AwsBackend(region, profile=profile, endpoint_url=endpoint_url)
    raise BackendError(f"unknown target '{target}' (targets: {', '.join(TARGETS)})")
