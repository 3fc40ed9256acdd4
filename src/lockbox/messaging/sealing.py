"""A thread's data key and what it seals: subject, bodies, attachment names and bytes.

Associated data binds each blob to its thread and row, so a ciphertext moved to another row fails.
"""

from __future__ import annotations

from lockbox.crypto import aead
from lockbox.crypto.keys import Keyring


def key_owner(thread_id: str) -> str:
    return f"thread:{thread_id}"


class ThreadCipher:
    def __init__(self, thread_id: str, key: bytes) -> None:
        self.thread_id = thread_id
        self._key = key

    @classmethod
    def new(cls, keyring: Keyring, thread_id: str) -> tuple[ThreadCipher, int, bytes]:
        key, version, wrapped = keyring.new_data_key(key_owner(thread_id))
        return cls(thread_id, key), version, wrapped

    @classmethod
    def open(cls, keyring: Keyring, thread_id: str, key_version: int, wrapped: bytes) -> ThreadCipher:
        return cls(thread_id, keyring.unwrap_data_key(key_owner(thread_id), key_version, wrapped))

    def seal_subject(self, subject: str) -> bytes:
        return aead.seal(self._key, subject.encode(), aead.aad_for("thread-subject", self.thread_id))

    def open_subject(self, blob: bytes) -> str:
        return aead.open_sealed(self._key, blob, aead.aad_for("thread-subject", self.thread_id)).decode()

    def seal_body(self, message_id: str, body: str) -> bytes:
        return aead.seal(self._key, body.encode(), aead.aad_for("message-body", self.thread_id, message_id))

    def open_body(self, message_id: str, blob: bytes) -> str:
        return aead.open_sealed(self._key, blob, aead.aad_for("message-body", self.thread_id, message_id)).decode()

    def seal_file(self, attachment_id: str, name: str, data: bytes) -> tuple[bytes, bytes]:
        return (
            aead.seal(self._key, name.encode(), aead.aad_for("attachment-name", self.thread_id, attachment_id)),
            aead.seal(self._key, data, aead.aad_for("attachment-data", self.thread_id, attachment_id)),
        )

    def open_file_name(self, attachment_id: str, blob: bytes) -> str:
        aad = aead.aad_for("attachment-name", self.thread_id, attachment_id)
        return aead.open_sealed(self._key, blob, aad).decode()

    def open_file(self, attachment_id: str, blob: bytes) -> bytes:
        return aead.open_sealed(self._key, blob, aead.aad_for("attachment-data", self.thread_id, attachment_id))
