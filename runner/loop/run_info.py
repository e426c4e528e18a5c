"""What a run records for `pipeline status`: the version of the spec it runs, and since when."""

from __future__ import annotations

import datetime
from collections.abc import Callable

from runner.backends.base import Backend, RunInfo
from runner.spec import Spec


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def record_spec_version(
    backend: Backend, spec: Spec, now: Callable[[], datetime.datetime] = _utc_now
) -> None:
    """Record that the pipeline's run uses this version of its spec from now on: `run` calls
    it once it holds the run lock, and again whenever it takes up an edited spec."""
    backend.set_run_info(spec.pipeline, RunInfo(spec.version, now()))
