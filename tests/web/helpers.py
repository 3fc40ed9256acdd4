"""Shared steps for the web tests: a browser session from a factory token, form tokens, page text."""

from __future__ import annotations

import re
from dataclasses import replace
from html.parser import HTMLParser

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from lockbox.db import Database
from lockbox.http import SESSION_COOKIE
from lockbox.identity import sessions
from lockbox.identity.models import User
from tests.factories import Person

_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def use_session(client: TestClient, person: Person) -> None:
    """Act as ``person`` in this client: their factory session, as the browser's cookie."""
    assert person.token
    client.cookies.clear()
    # cookielib files a dotless host under ".local".
    client.cookies.set(SESSION_COOKIE, person.token, domain="testserver.local", path="/")


def csrf_of(html: str) -> str:
    match = _CSRF.search(html)
    assert match, "no CSRF field on the page"
    return match.group(1)


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def visible_text(html: str) -> str:
    parser = _Text()
    parser.feed(html)
    return " ".join(" ".join(parser.parts).split())


class InlineCode(HTMLParser):
    """Collects what a strict CSP would block: inline scripts, event handler attributes, style attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {k.lower() for k, _ in attrs}
        if tag == "script":
            self._in_script = True
            if "src" not in names:
                self.problems.append("<script> without src")
        if tag == "style":
            self.problems.append("<style> element")
        for name in names:
            if name.startswith("on"):
                self.problems.append(f"<{tag} {name}=...>")
            if name == "style":
                self.problems.append(f"<{tag} style=...>")
        for name, value in attrs:
            if value and value.strip().lower().startswith("javascript:"):
                self.problems.append(f"<{tag} {name}=javascript:...>")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.problems.append("inline script content")


def inline_code(html: str) -> list[str]:
    parser = InlineCode()
    parser.feed(html)
    return parser.problems


def fresh_session(db: Database, person: Person) -> Person:
    """The same person with a new session (tests that move the clock past the idle timeout)."""

    def _do(session: Session) -> str:
        user = session.get(User, person.id)
        assert user is not None
        token, _ = sessions.create_session(session, user=user, device="pytest", client_addr="testclient")
        return token

    return replace(person, token=db.write_sync(_do))
