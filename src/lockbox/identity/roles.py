"""The clinic's roles (ARCHITECTURE section 1) and what each kind of role may do with content."""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    patient = "patient"
    physician = "physician"
    app = "app"
    nurse = "nurse"
    pharmacist = "pharmacist"
    medical_assistant = "medical_assistant"
    therapist = "therapist"
    case_manager = "case_manager"
    social_worker = "social_worker"
    scheduler = "scheduler"
    billing = "billing"
    compliance = "compliance"
    admin = "admin"


CLINICAL_ROLES = frozenset(
    {
        Role.physician,
        Role.app,
        Role.nurse,
        Role.pharmacist,
        Role.medical_assistant,
        Role.therapist,
        Role.case_manager,
        Role.social_worker,
    }
)
NON_CLINICAL_STAFF = frozenset({Role.scheduler, Role.billing})
# These roles administer and audit; they never see message content.
NO_CONTENT_ROLES = frozenset({Role.compliance, Role.admin})
STAFF_ROLES = CLINICAL_ROLES | NON_CLINICAL_STAFF | NO_CONTENT_ROLES
