"""The gateway's job handlers, registered when the domain is imported."""

from __future__ import annotations

from lockbox.gateway import service
from lockbox.jobs.service import register

register(service.SEND_NOTICE, service.send_notice, external=True)
