"""The local key file (created 0600, refused when others can read it, damage detected) and the keyring."""

from __future__ import annotations

import base64
import json
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from lockbox.crypto import aead
from lockbox.crypto.exceptions import DecryptionFailed, KeyFileError
from lockbox.crypto.keys import Keyring, LocalKeyFile


@pytest.fixture
def key_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "lockbox.key"


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    old = os.umask(0)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_key_file_is_created_0600_whatever_the_umask(key_path: Path, permissive_umask: None) -> None:
    provider = LocalKeyFile(key_path)
    assert _mode(key_path) == 0o600
    assert _mode(key_path.parent) == 0o700
    assert provider.active_version() == 1
    doc = json.loads(key_path.read_text())
    assert len(base64.b64decode(doc["keys"]["1"])) == 32
    assert [p.name for p in key_path.parent.iterdir()] == ["lockbox.key"]  # no temporary file left behind


def test_an_existing_key_file_is_reused_not_replaced(key_path: Path) -> None:
    LocalKeyFile(key_path)
    before = key_path.read_bytes()
    LocalKeyFile(key_path)
    assert key_path.read_bytes() == before


def test_processes_starting_at_once_share_one_key(key_path: Path) -> None:
    providers: list[LocalKeyFile] = []
    start = threading.Barrier(8)

    def boot() -> None:
        start.wait()
        providers.append(LocalKeyFile(key_path))

    threads = [threading.Thread(target=boot) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(providers) == 8
    assert len({p.derive(1, "probe") for p in providers}) == 1


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o660, 0o644, 0o601])
def test_key_file_readable_by_others_is_refused(key_path: Path, mode: int) -> None:
    LocalKeyFile(key_path)
    os.chmod(key_path, mode)
    with pytest.raises(KeyFileError, match="chmod 600"):
        LocalKeyFile(key_path)


def test_missing_key_file_is_not_created_when_told_not_to(key_path: Path) -> None:
    with pytest.raises(KeyFileError, match="does not exist"):
        LocalKeyFile(key_path, create=False)
    assert not key_path.exists()


def _good_doc() -> dict[str, object]:
    return {"active": 1, "keys": {"1": base64.b64encode(bytes(32)).decode()}}


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not json",
        b"\xff\xfe\x00",
        b"[]",
        b'{"active": 1}',
        b'{"keys": {"1": "AAAA"}}',
        json.dumps({"active": 2, "keys": _good_doc()["keys"]}).encode(),  # active version missing
        json.dumps({"active": 1, "keys": {"1": base64.b64encode(bytes(16)).decode()}}).encode(),  # short key
        json.dumps({"active": 1, "keys": {"1": "!!not base64!!" * 4}}).encode(),
        json.dumps({"active": 1, "keys": [base64.b64encode(bytes(32)).decode()]}).encode(),
        json.dumps({"active": "one", "keys": _good_doc()["keys"]}).encode(),
        json.dumps(_good_doc())[:-5].encode(),  # torn write
    ],
)
def test_damaged_key_file_is_refused(key_path: Path, content: bytes) -> None:
    key_path.parent.mkdir(parents=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, content)
    os.close(fd)
    with pytest.raises(KeyFileError):
        LocalKeyFile(key_path)


def test_add_version_keeps_old_keys_and_the_file_private(key_path: Path, permissive_umask: None) -> None:
    provider = LocalKeyFile(key_path)
    keyring = Keyring(provider)
    key, v1, wrapped = keyring.new_data_key("thread:a")
    assert provider.add_version() == 2
    assert _mode(key_path) == 0o600
    assert provider.active_version() == 2
    assert keyring.unwrap_data_key("thread:a", v1, wrapped) == key
    _, v2, _ = keyring.new_data_key("thread:b")
    assert v2 == 2
    assert sorted(json.loads(key_path.read_text())["keys"]) == ["1", "2"]
    assert {p.name for p in key_path.parent.iterdir()} == {"lockbox.key", "lockbox.key.lock"}


def test_a_running_process_sees_a_version_added_by_another(key_path: Path) -> None:
    server = Keyring(LocalKeyFile(key_path))
    rotator = Keyring(LocalKeyFile(key_path))
    key, v1, wrapped = server.new_data_key("thread:a")
    assert rotator.provider.add_version() == 2  # type: ignore[attr-defined]
    v2, rewrapped = rotator.rewrap_data_key("thread:a", v1, wrapped)
    assert v2 == 2
    # The server never restarted, yet reads the re-wrapped key and wraps new ones under version 2.
    assert server.unwrap_data_key("thread:a", v2, rewrapped) == key
    assert server.new_data_key("thread:b")[1] == 2


def test_concurrent_rotations_never_lose_a_version(key_path: Path) -> None:
    a, b = LocalKeyFile(key_path), LocalKeyFile(key_path)
    ka = Keyring(a)
    versions = [a.add_version(), b.add_version(), a.add_version()]
    assert versions == [2, 3, 4]
    fresh = LocalKeyFile(key_path)
    assert fresh.versions() == [1, 2, 3, 4]
    assert fresh.derive(3, "p") == b.derive(3, "p") == ka.provider.derive(3, "p")


def test_unknown_key_version_is_a_key_file_error(key_path: Path) -> None:
    keyring = Keyring(LocalKeyFile(key_path))
    _, _, wrapped = keyring.new_data_key("thread:a")
    with pytest.raises(KeyFileError, match="version 9"):
        keyring.unwrap_data_key("thread:a", 9, wrapped)


def test_a_key_file_damaged_while_running_does_not_stop_the_server(key_path: Path) -> None:
    provider = LocalKeyFile(key_path)
    keyring = Keyring(provider)
    key, v, wrapped = keyring.new_data_key("thread:a")
    os.chmod(key_path, 0o644)
    key_path.write_text("garbage")
    assert keyring.unwrap_data_key("thread:a", v, wrapped) == key
    with pytest.raises(KeyFileError):
        LocalKeyFile(key_path)


# -- the keyring -------------------------------------------------------------------------------


@pytest.fixture
def keyring(key_path: Path) -> Keyring:
    return Keyring(LocalKeyFile(key_path))


def test_data_key_is_bound_to_its_owner(keyring: Keyring) -> None:
    key, version, wrapped = keyring.new_data_key("thread:a")
    assert len(key) == aead.KEY_BYTES and key not in wrapped
    assert keyring.unwrap_data_key("thread:a", version, wrapped) == key
    for other in ("thread:b", "thread:a ", "thread:", "message:a"):
        with pytest.raises(DecryptionFailed):
            keyring.unwrap_data_key(other, version, wrapped)


def test_data_keys_are_fresh(keyring: Keyring) -> None:
    assert keyring.new_data_key("thread:a")[0] != keyring.new_data_key("thread:a")[0]


def test_sealed_secret_is_bound_to_purpose_and_owner(keyring: Keyring) -> None:
    blob = keyring.seal_secret("totp-secret", "user-1", b"JBSWY3DPEHPK3PXP")
    assert b"JBSWY3DPEHPK3PXP" not in blob
    assert keyring.open_secret("totp-secret", "user-1", blob) == b"JBSWY3DPEHPK3PXP"
    for purpose, owner in [("totp-secret", "user-2"), ("other-secret", "user-1"), ("data-key", "user-1")]:
        with pytest.raises(DecryptionFailed):
            keyring.open_secret(purpose, owner, blob)


def test_every_flipped_bit_of_a_sealed_secret_after_its_version_is_refused(keyring: Keyring) -> None:
    blob = keyring.seal_secret("totp-secret", "user-1", b"secret")
    for i in range(4 * 8, len(blob) * 8):
        bad = bytearray(blob)
        bad[i // 8] ^= 1 << (i % 8)
        with pytest.raises(DecryptionFailed):
            keyring.open_secret("totp-secret", "user-1", bytes(bad))
    for short in (b"", b"\x00\x00"):
        with pytest.raises(DecryptionFailed):
            keyring.open_secret("totp-secret", "user-1", short)


def test_sealed_secret_survives_rotation_and_reseal_moves_it(keyring: Keyring) -> None:
    blob = keyring.seal_secret("totp-secret", "user-1", b"secret")
    keyring.provider.add_version()  # type: ignore[attr-defined]
    assert keyring.open_secret("totp-secret", "user-1", blob) == b"secret"
    moved = keyring.reseal_secret("totp-secret", "user-1", blob)
    assert Keyring.secret_version(blob) == 1 and Keyring.secret_version(moved) == 2
    assert keyring.open_secret("totp-secret", "user-1", moved) == b"secret"


def test_macs_are_per_purpose_and_checkable_with_an_old_version(keyring: Keyring) -> None:
    v1, mac1 = keyring.mac("audit-head", b"m")
    assert keyring.mac("audit-checkpoint", b"m")[1] != mac1
    assert keyring.mac("audit-head", b"n")[1] != mac1
    keyring.provider.add_version()  # type: ignore[attr-defined]
    v2, mac2 = keyring.mac("audit-head", b"m")
    assert (v1, v2) == (1, 2) and mac2 != mac1
    assert keyring.mac("audit-head", b"m", v1) == (1, mac1)
