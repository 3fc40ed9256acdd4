"""Jinja2 environment (autoescaped), cache-busted static URLs, and the small formatting filters pages share."""

from __future__ import annotations

import hashlib
from datetime import UTC, date, datetime
from functools import cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from starlette.responses import HTMLResponse

from lockbox.web import STATIC_DIR

TEMPLATES_DIR = Path(__file__).parent / "templates"

ROLE_LABELS = {
    "patient": "Patient", "physician": "Physician", "app": "NP/PA", "nurse": "Nurse", "pharmacist": "Pharmacist",
    "medical_assistant": "Medical assistant", "therapist": "Therapist", "case_manager": "Case manager",
    "social_worker": "Social worker", "scheduler": "Front desk", "billing": "Billing", "compliance": "Compliance",
    "admin": "Administrator", "system": "Clinic",
}


@cache
def static_version(name: str) -> str:
    # Static files are cacheable (only /static is); the content hash makes a new release fetch them again.
    return hashlib.sha256((STATIC_DIR / name).read_bytes()).hexdigest()[:12]


def static_url(name: str) -> str:
    return f"/static/{name}?v={static_version(name)}"


def iso(value: datetime | date | None) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="seconds")
    return value.isoformat()


def utc_text(value: datetime | None) -> str:
    """The fallback text of a <time> element; the page script shows it in the reader's own time zone."""
    if value is None:
        return ""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{hours // 24} d {hours % 24} h"


def age(value: datetime, now: datetime) -> str:
    seconds = (now - value).total_seconds()
    return "just now" if seconds < 60 else f"{duration(seconds)} ago"


def filesize(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.0f} KB"
    return f"{n / (1024 * 1024):.1f} MB"


TIER_LABELS = {"pool_lead": "the pool lead", "on_call": "on call", "pool": "the whole pool",
               "on_call_physician": "the on-call physician"}


def _env() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES_DIR),
        autoescape=select_autoescape(["html"], default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.update(static=static_url)
    env.filters.update(iso=iso, utc=utc_text, duration=duration, age=age, filesize=filesize,
                       role=lambda r: ROLE_LABELS.get(str(r), str(r)),
                       tier=lambda t: TIER_LABELS.get(str(t), str(t).replace("_", " ")))
    return env


ENV = _env()


def render(template: str, context: dict[str, Any], *, status: int = 200) -> HTMLResponse:
    return HTMLResponse(ENV.get_template(template).render(context), status_code=status)


def render_text(template: str, context: dict[str, Any]) -> str:
    return ENV.get_template(template).render(context)
