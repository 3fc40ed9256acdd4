"""Every model, imported once so Alembic and create_all see the whole schema."""

from lockbox.access.models import BreakGlassGrant
from lockbox.audit.models import Alert, AuditCheckpoint, AuditRow
from lockbox.consent.models import ConsentRecord
from lockbox.crypto.models import KeyUsage
from lockbox.db.base import Base
from lockbox.directory.models import (
    CareTeam,
    CareTeamMember,
    Location,
    OnCallShift,
    Organization,
    Pool,
    PoolMember,
)
from lockbox.fhir.models import FhirFiling, FhirLink
from lockbox.gateway.models import GatewayPassword, SecureDelivery, SecureNotice
from lockbox.identity.models import AuthSession, AuthThrottle, Patient, User
from lockbox.jobs.models import Job
from lockbox.messaging.models import Attachment, Correspondent, Message, Participant, Thread
from lockbox.notify.models import Notification, NotifyPreference
from lockbox.retention.models import LegalHold
from lockbox.routing.models import RoutingDecision

metadata = Base.metadata

__all__ = [
    "Alert", "Attachment", "AuditCheckpoint", "AuditRow", "AuthSession", "AuthThrottle", "BreakGlassGrant",
    "CareTeam", "CareTeamMember", "ConsentRecord", "Correspondent", "FhirFiling", "FhirLink", "GatewayPassword",
    "Job", "KeyUsage", "LegalHold", "Location", "Message",
    "Notification", "NotifyPreference", "OnCallShift", "Organization", "Participant", "Patient", "Pool",
    "PoolMember", "RoutingDecision", "SecureDelivery", "SecureNotice",
    "Thread", "User", "metadata",
]
