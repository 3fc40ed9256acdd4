"""The one check behind "IDs only": audit details and job payloads may carry identifiers, counts and
flags, never free text, which could smuggle PHI into rows that many people and tools can read."""

from __future__ import annotations

import re
from typing import Any

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_VALUE = re.compile(r"[A-Za-z0-9_.:@/+-]*")


def require_identifiers(values: dict[str, Any], *, what: str, max_len: int = 80) -> dict[str, Any]:
    """Return ``values`` unchanged, or raise ValueError naming the first key that is not an identifier."""
    for key, value in values.items():
        if not _KEY.fullmatch(key):
            raise ValueError(f"{what} names are identifiers")
        for v in value if isinstance(value, list) else [value]:
            if v is None or isinstance(v, bool | int):
                continue
            # fullmatch: with match(), "$" would also accept a trailing newline.
            if not isinstance(v, str) or len(v) > max_len or not _VALUE.fullmatch(v):
                raise ValueError(f"{what} {key!r} is not an identifier")
    return values
