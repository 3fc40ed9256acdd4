"""Who is acting: resolved once per request from the session and handed to every service."""

from __future__ import annotations

from dataclasses import dataclass

from lockbox.identity.roles import CLINICAL_ROLES, NO_CONTENT_ROLES, STAFF_ROLES, Role


@dataclass(frozen=True, slots=True)
class Actor:
    user_id: str
    username: str
    role: Role
    display_name: str
    session_id: str | None = None
    client_addr: str | None = None

    @property
    def is_patient(self) -> bool:
        return self.role is Role.patient

    @property
    def is_staff(self) -> bool:
        return self.role in STAFF_ROLES

    @property
    def is_clinical(self) -> bool:
        return self.role in CLINICAL_ROLES

    @property
    def sees_content(self) -> bool:
        return self.role not in NO_CONTENT_ROLES


SYSTEM = Actor(user_id="system", username="system", role=Role.admin, display_name="Lockbox")
