"""What ``LOCKBOX_ENV=production`` refuses to start with: no TLS and no trusted proxy, key or data files
others can read, or the demo clinic's public logins in the database.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from lockbox.config import Settings


@dataclass(frozen=True)
class Edge:
    """How the server is reached: TLS terminated here, or by a proxy whose forwarded headers it trusts."""

    tls_cert: str | None = None
    tls_key: str | None = None


def trusted_proxy_list(settings: Settings) -> list[str]:
    return [p.strip() for p in settings.trusted_proxies.split(",") if p.strip()]


def check_proxies(settings: Settings) -> str | None:
    """A malformed or wildcard entry would let any client claim any address."""
    for entry in trusted_proxy_list(settings):
        if entry == "*":
            return "LOCKBOX_TRUSTED_PROXIES must name the proxies, not '*'"
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            return f"LOCKBOX_TRUSTED_PROXIES entry {entry!r} is not an IP address or network"
    return None


def _group_or_other(path: Path) -> int | None:
    try:
        return stat.S_IMODE(os.stat(path).st_mode) & (stat.S_IRWXG | stat.S_IRWXO)
    except FileNotFoundError:
        return None


def refusals(settings: Settings, edge: Edge, *, demo_check: bool = True) -> list[str]:
    """Every reason production mode refuses these settings; empty when it may start."""
    problems: list[str] = []
    if bool(edge.tls_cert) != bool(edge.tls_key):
        problems.append("--tls-cert and --tls-key go together")
    proxied = settings.proxy_headers and bool(trusted_proxy_list(settings))
    if not edge.tls_cert and not proxied:
        problems.append("no TLS: pass --tls-cert/--tls-key, or --proxy-headers with LOCKBOX_TRUSTED_PROXIES "
                        "naming the TLS-terminating proxy")
    bad_proxy = check_proxies(settings)
    if bad_proxy:
        problems.append(bad_proxy)
    if edge.tls_key:
        mode = _group_or_other(Path(edge.tls_key))
        if mode is None:
            problems.append(f"TLS key {edge.tls_key} does not exist")
        elif mode & (stat.S_IRGRP | stat.S_IROTH | stat.S_IWGRP | stat.S_IWOTH):
            problems.append(f"TLS key {edge.tls_key} is readable or writable by others; chmod 600 it")
    if settings.key_provider == "file":
        mode = _group_or_other(settings.resolved_key_file)
        if mode:
            problems.append(f"key file {settings.resolved_key_file} is accessible by others (mode "
                            f"{stat.S_IMODE(os.stat(settings.resolved_key_file).st_mode):o}); chmod 600 it")
    mode = _group_or_other(settings.data_dir)
    if mode:
        problems.append(f"data dir {settings.data_dir} is accessible by others (mode "
                        f"{stat.S_IMODE(os.stat(settings.data_dir).st_mode):o}); chmod 700 it")
    if settings.backup_key_file is not None:
        mode = _group_or_other(settings.backup_key_file)
        if mode:
            problems.append(f"backup key file {settings.backup_key_file} is accessible by others; chmod 600 it")
    if not problems and demo_check and _holds_demo(settings):
        problems.append("the database holds the demo clinic, whose logins are public; use a fresh data dir "
                        "or database for production")
    return problems


def _holds_demo(settings: Settings) -> bool:
    from lockbox.app import build_database

    db = build_database(settings)
    try:
        db.migrate()
        return db.read_sync(demo_data_present)
    finally:
        db.close()


def demo_data_present(session: Session) -> bool:
    """The demo's organisation, or any demo account still opening with its printed (public) password."""
    from datetime import UTC, datetime

    from lockbox.demo import demo_directory, demo_password
    from lockbox.directory.models import Organization
    from lockbox.identity import credentials
    from lockbox.identity.models import User

    doc = demo_directory(datetime.now(UTC))
    if session.scalar(select(Organization.id).where(Organization.name == doc.organization).limit(1)) is not None:
        return True
    usernames = [s.username for s in doc.staff] + [p.username for p in doc.patients]
    rows = session.execute(select(User.username, User.password_hash)
                           .where(User.username.in_(usernames), User.password_hash.is_not(None))).all()
    return any(credentials.verify_password(h, demo_password(u)) for u, h in rows)
