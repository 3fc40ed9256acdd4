"""Production mode refuses unsafe starts; a real HTTPS server answers with HSTS; forwarded addresses
are believed only from trusted proxies."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import select

from lockbox.app import build_database
from lockbox.config import Settings
from lockbox.directory.models import Organization
from lockbox.identity.models import AuthSession
from lockbox.jobs.models import Job
from lockbox.system.production import Edge, refusals
from tests.factories import PASSWORD, make_user
from tests.serverproc import free_port


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "server.crt", directory / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture
def prod(tmp_path: Path) -> Settings:
    """A fresh SQLite deployment with its key file made, in production mode."""
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    settings = Settings(env="production", data_dir=data, smtp_gateway_port=0)
    build_database(settings).close()  # creates the key file, 0600
    return settings


@pytest.fixture
def tls(tmp_path: Path) -> tuple[Path, Path]:
    return _self_signed(tmp_path)


def test_production_starts_with_tls_or_a_trusted_proxy_and_safe_files(prod: Settings, tls: tuple[Path, Path]) -> None:
    assert refusals(prod, Edge(str(tls[0]), str(tls[1]))) == []
    proxied = prod.model_copy(update={"proxy_headers": True, "trusted_proxies": "127.0.0.1, 10.0.0.0/8"})
    assert refusals(proxied, Edge()) == []


def test_refuses_without_tls_or_a_trusted_proxy(prod: Settings) -> None:
    assert any("no TLS" in p for p in refusals(prod, Edge()))
    # Forwarded headers switched on but no proxy named: nobody to trust.
    assert any("no TLS" in p for p in refusals(prod.model_copy(update={"proxy_headers": True}), Edge()))
    wildcard = prod.model_copy(update={"proxy_headers": True, "trusted_proxies": "*"})
    assert any("not '*'" in p for p in refusals(wildcard, Edge()))


def test_refuses_a_key_file_others_can_read(prod: Settings, tls: tuple[Path, Path]) -> None:
    os.chmod(prod.resolved_key_file, 0o640)
    assert any("key file" in p and "chmod 600" in p for p in refusals(prod, Edge(str(tls[0]), str(tls[1]))))


def test_refuses_a_tls_key_others_can_read(prod: Settings, tls: tuple[Path, Path]) -> None:
    os.chmod(tls[1], 0o644)
    assert any("TLS key" in p for p in refusals(prod, Edge(str(tls[0]), str(tls[1]))))


def test_refuses_a_data_dir_others_can_enter(prod: Settings, tls: tuple[Path, Path]) -> None:
    os.chmod(prod.data_dir, 0o755)
    assert any("data dir" in p and "chmod 700" in p for p in refusals(prod, Edge(str(tls[0]), str(tls[1]))))


def test_refuses_the_demo_clinic(prod: Settings, tls: tuple[Path, Path]) -> None:
    from lockbox.demo import demo_directory

    db = build_database(prod)
    db.migrate()
    db.write_sync(lambda s: s.add(Organization(name=demo_directory(dt.datetime.now(dt.UTC)).organization)))
    db.close()
    assert any("demo clinic" in p for p in refusals(prod, Edge(str(tls[0]), str(tls[1]))))


def test_refuses_a_demo_account_with_its_public_password(prod: Settings, tls: tuple[Path, Path]) -> None:
    from lockbox.demo import demo_password
    from lockbox.identity import credentials

    db = build_database(prod)
    db.migrate()
    make_user(db, "physician", username="dr.house", sign_in=False)
    edge = Edge(str(tls[0]), str(tls[1]))
    assert refusals(prod, edge) == []  # the name alone is no reason: a real clinic may have a dr.house
    from lockbox.identity.models import User

    db.write_sync(lambda s: s.execute(User.__table__.update().where(User.username == "dr.house")  # type: ignore[attr-defined]
                                      .values(password_hash=credentials.hash_password(demo_password("dr.house")))))
    db.close()
    assert any("demo clinic" in p for p in refusals(prod, edge))


def _env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCKBOX_")}
    env.update({"LOCKBOX_ENV": settings.env, "LOCKBOX_DATA_DIR": str(settings.data_dir),
                "LOCKBOX_SMTP_GATEWAY_PORT": "0", "PYTHONUNBUFFERED": "1", **extra})
    return env


def test_serve_refuses_in_one_line_with_exit_2(prod: Settings) -> None:
    done = subprocess.run([sys.executable, "-m", "lockbox.cli", "serve", "--port", str(free_port())],
                          env=_env(prod), cwd=prod.data_dir, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: refusing to start: no TLS"), done.stderr


@pytest.fixture
def serve(prod: Settings) -> Iterator[callable]:  # type: ignore[valid-type]
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str, scheme: str = "http", verify: ssl.SSLContext | bool = False, **env: str) -> str:
        port = free_port()
        log = open(prod.data_dir.parent / f"serve-{port}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, "-m", "lockbox.cli", "serve", "--port", str(port), *args],
                                env=_env(prod, **env), cwd=prod.data_dir, stdout=log, stderr=subprocess.STDOUT)
        procs.append(proc)
        base = f"{scheme}://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, (prod.data_dir.parent / f"serve-{port}.log").read_text()
            try:
                if httpx.get(base + "/api/v1/healthz", verify=verify, timeout=2).status_code == 200:
                    return base
            except httpx.TransportError:
                time.sleep(0.1)
        raise AssertionError("server did not start")

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=20)


def test_https_server_with_a_self_signed_certificate(serve, tls: tuple[Path, Path]) -> None:  # type: ignore[no-untyped-def]
    trust = ssl.create_default_context(cafile=str(tls[0]))
    base = serve("--tls-cert", str(tls[0]), "--tls-key", str(tls[1]), scheme="https", verify=trust)
    r = httpx.get(base + "/api/v1/healthz", verify=trust, timeout=10)
    assert r.status_code == 200 and r.json() == {"ok": True}
    assert r.headers["strict-transport-security"].startswith("max-age=")
    # Plain HTTP is not answered on the TLS port.
    with pytest.raises(httpx.TransportError):
        httpx.get(base.replace("https://", "http://") + "/api/v1/healthz", timeout=5)


def test_forwarded_addresses_only_from_trusted_proxies(serve, prod: Settings) -> None:  # type: ignore[no-untyped-def]
    db = build_database(prod)
    db.migrate()
    first, second = make_user(db, "physician", sign_in=False), make_user(db, "nurse", sign_in=False)
    db.close()
    headers = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}

    def login(base: str, who) -> None:  # type: ignore[no-untyped-def]
        r = httpx.post(base + "/api/v1/auth/login", headers=headers, timeout=30,
                       json={"username": who.username, "password": PASSWORD, "totp": who.totp()})
        assert r.status_code == 200, r.text

    def addr_of(who) -> str:  # type: ignore[no-untyped-def]
        check = build_database(prod)
        try:
            return check.read_sync(lambda s: s.scalars(select(AuthSession.client_addr)
                                                       .where(AuthSession.user_id == who.id)).one())
        finally:
            check.close()

    # This server trusts 127.0.0.1 as its proxy: the forwarded client address and scheme are used.
    base = serve("--proxy-headers", LOCKBOX_TRUSTED_PROXIES="127.0.0.1")
    login(base, first)
    assert addr_of(first) == "203.0.113.9"
    r = httpx.get(base + "/api/v1/healthz", headers=headers, timeout=10)
    assert r.headers["strict-transport-security"].startswith("max-age=")  # the proxy spoke HTTPS to the client
    # This one trusts another proxy only: the same headers from 127.0.0.1 are ignored.
    other = serve("--proxy-headers", "--trusted-proxies", "192.0.2.1")
    login(other, second)
    assert addr_of(second) == "127.0.0.1"
    assert "strict-transport-security" not in httpx.get(other + "/api/v1/healthz", headers=headers, timeout=10).headers
    # Every server arms the periodic retention sweep at start; two servers, one sweep per time slot.
    check = build_database(prod)
    sweeps = check.read_sync(lambda s: list(s.scalars(select(Job.dedupe_key).where(Job.kind == "retention.sweep"))))
    check.close()
    assert len(sweeps) >= 1 and len(set(sweeps)) == len(sweeps)
