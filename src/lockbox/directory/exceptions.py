"""Errors of the directory load: every one names the entry (path, username, line) and never its PHI."""

from __future__ import annotations

from lockbox.errors import InvalidInput


class InvalidDirectory(InvalidInput):
    """The directory file cannot be read, does not have the documented shape, or refers to unknown entries."""

    code = "invalid_directory"
    detail = "The directory file is not valid."
