"""How `pipeline run` writes its lines (`--log-format`): as they are, for people, or each as one
JSON object, for a log collector:

    {"time": "2026-11-26T12:00:05.120Z", "level": "info", "pipeline": "shop",
     "message": "in 3 | out usa 2 | ...", "event": "status", "in": 3, "out": {"usa": 2}, ...}

`time` is UTC, `level` info, warning or error, `pipeline` the one the line is about (null for
an error found before the spec was read), `message` the human line without its "[pipeline] "
or "error: "; fields a line carries (runner.loop.lines.Line) follow.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Callable

from runner.loop.lines import ERROR, INFO, WARNING

HUMAN, JSON = "human", "json"
FORMATS = (HUMAN, JSON)
_OF_PIPELINE = re.compile(r"\[([^\]\s]+)\] (.*)", re.DOTALL)


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


class RunLog:
    """Where a run's lines go, in the chosen format; called with a line, it writes it."""

    def __init__(
        self,
        log_format: str,
        write: Callable[[str], None],  # one line of text
        *,
        now: Callable[[], datetime.datetime] = _utc_now,
    ) -> None:
        self.json = log_format == JSON
        self.write = write
        self.now = now
        self.pipeline: str | None = None  # once the spec is read: of the lines naming none

    def __call__(self, line: str) -> None:
        self._write(line, getattr(line, "level", INFO))

    def warning(self, line: str) -> None:
        """Write a warning, e.g. one about the spec."""
        self._write(line, WARNING)

    def error(self, line: str) -> None:
        """Write an error: the line the command ends with, e.g. "error: ...", or one of the
        problems of an invalid spec."""
        self._write(line, ERROR)

    def _write(self, line: str, level: str) -> None:
        if not self.json:
            self.write(line)
            return
        message, pipeline = str(line), self.pipeline
        if found := _OF_PIPELINE.fullmatch(message):
            pipeline, message = found.groups()
        if level == ERROR:
            message = message.removeprefix("error: ")
        entry = {
            "time": self.now().isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": level,
            "pipeline": pipeline,
            "message": message,
            **getattr(line, "fields", {}),
        }
        self.write(json.dumps(entry, ensure_ascii=False))
