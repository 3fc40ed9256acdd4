"""Notifications that carry no health information."""
