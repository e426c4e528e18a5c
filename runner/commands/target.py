"""Where a command acts: `--target` and its options, filled by click, opened on demand."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from runner import spec as spec_module
from runner.backends import open_backend
from runner.backends.base import Backend
from runner.loop.dead_letter import run_refusal


@dataclass
class Target:
    name: str = "local"
    state_dir: Path = Path(".pipeline")
    region: str | None = None
    profile: str | None = None
    endpoint_url: str | None = None
    _backend: Backend | None = field(default=None, repr=False)

    def backend(self, region: str | None = None, *, writes: bool = True) -> Backend:
        """The target's backend, opened once, in `--region`, else `region` (a spec's), else
        the AWS configuration's region. For a command that only reads (not `writes`), a
        missing local state reads as an empty one, and no state folder is made."""
        if self._backend is None:
            self._backend = open_backend(
                self.name,
                state_dir=self.state_dir,
                region=self.region or region,
                profile=self.profile,
                endpoint_url=self.endpoint_url,
                writes=writes,
            )
        return self._backend

    def load(
        self, path: str, *, strict: bool, warn: Callable[[str], None], for_run: bool = False
    ) -> spec_module.Spec:
        """Load a spec for this target and `warn` each of its warnings, or with `strict` refuse
        it for them; ${account_id} asks the target only when used. What `pipeline run` would
        refuse on this target is a warning too, except `for_run`, which refuses it itself."""
        # The local target's account id is a constant: loading touches no state.
        ask = (
            {}
            if self.name == "local"
            else {"account_id": self._account_id, "configured_region": self._configured_region}
        )
        loaded = spec_module.load(path, region=self.region, strict=strict, **ask)
        for line in loaded.warnings:
            warn(line)
        if not for_run:
            self._check_run(loaded, strict=strict, warn=warn)
        return loaded

    def _check_run(
        self, loaded: spec_module.Spec, *, strict: bool, warn: Callable[[str], None]
    ) -> None:
        """`warn` of what `pipeline run` would refuse in the spec on this target (a dead letter
        on this machine where the checkpoints outlive it), or with `strict` refuse it for that."""
        refusal = run_refusal(loaded, self.name)
        if refusal and strict:
            raise spec_module.SpecError([f"{loaded.path}: {refusal}"])
        if refusal:
            warn(f"{loaded.path}: warning: `pipeline run` refuses this spec: {refusal}")

    def _configured_region(self) -> str:
        # A spec without `region`: the AWS configuration's (AWS_REGION, the profile, ...).
        return self.backend().region

    def _account_id(self, region: str) -> str:
        return self.backend(region).account_id

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
