"""Counted nouns in what the commands say: `count(3, "record")` is '3 records'.

It imports nothing of the package, so that every layer may use it.
"""

from __future__ import annotations


def count(number: int, noun: str, plural: str = "") -> str:
    """`number` and `noun`, the noun in the plural unless `number` is 1: '1 shard', '2 shards';
    `plural` where it is not the noun and an s: `count(2, "entry", "entries")`."""
    return f"{number} {noun if number == 1 else plural or noun + 's'}"
