"""The web app: patient portal, clinician inbox, compliance and analytics pages, server-rendered over the
same services and sessions as the API, with a little vanilla JavaScript served from ``/static``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI
from starlette.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"


@dataclass
class WebOptions:
    """Client timing, kept apart from Settings: only tests and slow networks have reason to change it."""

    # How often an open page asks the server whether its session is still alive.
    poll_s: float = 20.0
    # How long before the idle timeout the countdown appears; None: a third of the timeout, at most 2 min.
    warn_s: int | None = None

    def warn_for(self, idle_timeout_s: int) -> int:
        if self.warn_s is not None:
            return min(self.warn_s, idle_timeout_s)
        return min(120, max(10, idle_timeout_s // 3))


def mount(app: FastAPI, options: WebOptions | None = None) -> None:
    from lockbox.web import oversight, pages, signin

    app.state.web_options = options or WebOptions()
    for module in (signin, pages, oversight):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
