"""Triage of patient messages (routing phase 1, filter): the lexicon with ConText decides emergencies (recall first);
a small model picks the topic and may raise the urgency, never lower an emergency."""

from __future__ import annotations

import threading
from dataclasses import dataclass

URGENCIES = ("emergency", "urgent", "routine")
TOPICS = ("symptoms", "medication", "results", "scheduling", "billing", "administrative", "other")
LANGUAGES = ("en", "es")


@dataclass(frozen=True)
class Triage:
    urgency: str
    topic: str
    language: str
    signals: tuple[str, ...]
    explanation: str


def classify(subject: str, body: str) -> Triage:
    """Urgency, topic and language of a new patient message; see the package docstring for the order of say."""
    from lockbox.routing.classify.engine import classify as _classify

    return _classify(subject, body)


def emergency_check(text: str) -> Triage | None:
    """The cheap path for replies: the lexicon and ConText only, a Triage only when the text is an emergency."""
    from lockbox.routing.classify.engine import emergency_check as _emergency_check

    return _emergency_check(text)


_warm = threading.Event()


def warm_up() -> None:
    """Load the lexicon, ConText and the model now (at start-up) rather than on the first message."""
    from lockbox.routing.classify.engine import warm_up as _warm_up

    _warm_up()
    _warm.set()


def is_warm() -> bool:
    """Whether ``warm_up`` has finished: until then a patient's message waits seconds for the engine, so a
    server is not ready for traffic (``/readyz``). Never blocks, unlike importing the engine would."""
    return _warm.is_set()


__all__ = ["LANGUAGES", "TOPICS", "URGENCIES", "Triage", "classify", "emergency_check", "is_warm", "warm_up"]
