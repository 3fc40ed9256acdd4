"""Lockbox: an open-source secure message center for healthcare."""

__version__ = "0.1.0"
