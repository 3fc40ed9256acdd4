"""Every domain's router under /api/v1, in one list so the surface of the API is visible at a glance."""

from __future__ import annotations

import importlib

from fastapi import FastAPI

from lockbox.http import ERROR_RESPONSES

API_PREFIX = "/api/v1"
# Domains with an api.py; each exposes ``router``.
DOMAINS = ["identity", "messaging", "realtime", "audit", "directory", "access", "system", "consent", "notify",
           "routing", "retention", "gateway", "fhir", "phi"]


def mount_all(app: FastAPI) -> None:
    for name in DOMAINS:
        try:
            module = importlib.import_module(f"lockbox.{name}.api")
        except ModuleNotFoundError as exc:
            if exc.name == f"lockbox.{name}.api":
                continue
            raise
        app.include_router(module.router, prefix=API_PREFIX, responses=ERROR_RESPONSES)
