"""Direction names (torch-free, so that `steering-server --help` and flag parsing stay fast)."""

from __future__ import annotations

import re

from .errors import InvalidArgumentError

__all__ = ["validate_direction_name"]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


def validate_direction_name(name: str, field_name: str = "name") -> str:
    """Names travel in URLs, file names and metric labels: letters, digits, `_.-`, at most 64 characters."""
    if not name:
        raise InvalidArgumentError(field_name, "direction name is empty")
    if not _NAME_RE.fullmatch(name):  # not match(): `$` also matches before a trailing newline
        raise InvalidArgumentError(
            field_name, f"direction name {name[:80]!r} is not allowed (use 1-64 of A-Z a-z 0-9 _ . -, not first . - _)"
        )
    return name
