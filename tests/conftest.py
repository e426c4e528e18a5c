import datetime
from pathlib import Path

import pytest

from runner import expressions

REPO = Path(__file__).resolve().parents[1]
PIPELINES = REPO / "pipelines"
FIXED_NOW = datetime.datetime(2026, 11, 26, 12, 0, 0, tzinfo=datetime.timezone.utc)


@pytest.fixture
def fixed_clock(monkeypatch):
    """now(), epoch() and epoch_ms() give 2026-11-26T12:00:00+00:00."""
    monkeypatch.setattr(expressions, "clock", lambda: FIXED_NOW)
    return FIXED_NOW


@pytest.fixture
def write_spec(tmp_path):
    """Write YAML text to spec.yaml in tmp_path and return its path."""

    def write(text: str, name: str = "spec.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


MINIMAL = """\
pipeline: shop
resources:
  streams:
    source: {name: in, shards: 1}
    usa: {name: usa-out, shards: 2}
    other: {name: other-out, shards: 1}
source:
  stream: source
route:
  partition_key: session_id
  cases:
    - when: country == 'USA'
      to: usa
    - to: other
"""
