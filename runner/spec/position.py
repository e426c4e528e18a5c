"""Where reading a shard starts, and the one parser of its text: the spec's `source.start`,
`pipeline run` and `pipeline consume --from` all read it here."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

SEQUENCE_KINDS = ("at_sequence_number", "after_sequence_number")


@dataclass(frozen=True)
class Position:
    """Where a shard without a checkpoint starts: an iterator type and its argument."""

    iterator_type: str = "TRIM_HORIZON"
    sequence: str | None = None
    timestamp: datetime.datetime | None = None

    def __str__(self) -> str:
        """As a spec writes it: trim_horizon, latest, at_timestamp:2026-01-31T12:00:00Z (in
        UTC), or as --from writes a sequence: at_sequence_number:4953."""
        kind = self.iterator_type.lower()
        if self.timestamp is not None:
            return f"{kind}:{self.timestamp.isoformat().replace('+00:00', 'Z')}"
        return kind if self.sequence is None else f"{kind}:{self.sequence}"


def parse_position(text: str, *, sequences: bool = False) -> Position:
    """trim_horizon, latest or at_timestamp:ISO, and with `sequences` also
    at_sequence_number:SEQ and after_sequence_number:SEQ (those of one shard); a ValueError
    says what is wrong."""
    kind, _, argument = text.partition(":")
    kind = kind.lower()  # TRIM_HORIZON, as Kinesis spells it, works too
    if sequences and kind in SEQUENCE_KINDS:
        if not (argument.isascii() and argument.isdigit()):
            raise ValueError(f"{kind} needs a sequence number, e.g. {kind}:4953")
        return Position(kind.upper(), sequence=argument)
    if kind in ("trim_horizon", "latest") and not argument:
        return Position(kind.upper())
    if kind == "at_timestamp" and argument:
        return Position("AT_TIMESTAMP", timestamp=parse_timestamp(argument))
    forms = ["trim_horizon", "latest", "at_timestamp:ISO"]
    if sequences:
        forms += [f"{kind}:SEQ" for kind in SEQUENCE_KINDS]
    raise ValueError(f"{text!r}: expected {', '.join(forms[:-1])} or {forms[-1]}")


def parse_timestamp(text: str) -> datetime.datetime:
    """ISO-8601 to an aware UTC datetime; a time without a zone is taken as UTC."""
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"'{text}' is not an ISO-8601 timestamp such as 2026-01-31T12:00:00Z"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.astimezone(datetime.timezone.utc)
