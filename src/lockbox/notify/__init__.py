"""Notifications that carry no health information."""

# Importing the domain registers its job handlers, so every process that loads the models (the server,
# ``lockbox worker`` through its migration step) can run them.
from lockbox.notify import tasks as _tasks  # noqa: F401
