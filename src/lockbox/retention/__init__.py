"""Retention policies and legal holds: threads past their retention are crypto-shredded, then deleted."""
