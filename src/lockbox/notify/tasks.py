"""The notify domain's job handlers, registered when the domain is imported."""

from __future__ import annotations

from lockbox.jobs.service import register
from lockbox.notify import service

register(service.DELIVER, service.deliver, external=True)
register("notify.page", service.page)
register("notify.escalation", service.escalation)
