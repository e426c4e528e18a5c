"""Where a command acts: `--target` and its options, filled by click, opened on demand."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from runner import spec as spec_module
from runner.backends import open_backend
from runner.backends.base import Backend


@dataclass
class Target:
    name: str = "local"
    state_dir: Path = Path(".pipeline")
    region: str | None = None
    profile: str | None = None
    endpoint_url: str | None = None
    _backend: Backend | None = field(default=None, repr=False)

    def backend(self, region: str | None = None) -> Backend:
        """The target's backend, opened once, in `--region`, else `region` (a spec's), else
        the AWS configuration's region."""
        if self._backend is None:
            self._backend = open_backend(
                self.name,
                state_dir=self.state_dir,
                region=self.region or region,
                profile=self.profile,
                endpoint_url=self.endpoint_url,
            )
        return self._backend

    def load(self, path: str) -> spec_module.Spec:
        """Load a spec for this target; ${account_id} asks the target only when used."""
        if self.name == "local":
            return spec_module.load(path, region=self.region)  # touches no state
        return spec_module.load(
            path, region=self.region, account_id=lambda region: self.backend(region).account_id
        )

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
