"""Encrypted online backups and checked restores (``lockbox backup`` / ``lockbox restore``)."""
