"""Targets: the embedded local backend and AWS."""

from __future__ import annotations

from pathlib import Path

from runner.backends.base import Backend, BackendError

TARGETS = ("local", "aws")


def open_backend(
    target: str,
    *,
    state_dir: Path,
    region: str,
    profile: str | None = None,
    endpoint_url: str | None = None,
) -> Backend:
    """The backend for `--target`; the local one keeps its state under `state_dir`."""
    if target == "local":
        from runner.backends.local import LocalBackend

        return LocalBackend(state_dir, region=region)
    if target == "aws":
        raise BackendError("the aws target is not built yet; use --target local (the default)")
    raise BackendError(f"unknown target '{target}' (targets: {', '.join(TARGETS)})")
