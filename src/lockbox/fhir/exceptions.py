"""FHIR errors, rendered by the one handler in lockbox.http. Details name what went wrong (a status, a
resource type, a field path), never what the EHR sent: its text may quote a patient's record."""

from __future__ import annotations

from lockbox.errors import LockboxError


class FhirError(LockboxError):
    code = "fhir_error"
    status = 502
    detail = "The EHR could not be reached or answered badly."


class FhirNotConfigured(FhirError):
    code = "fhir_not_configured"
    status = 409
    detail = "The EHR integration is off (set LOCKBOX_FHIR_BASE_URL and LOCKBOX_FHIR_FILING)."


class FhirUnavailable(FhirError):
    """The EHR did not answer in time, answered 429/5xx after every retry, or the circuit is open."""

    code = "fhir_unavailable"
    status = 503
    detail = "The EHR is not reachable right now; Lockbox will try again."


class FhirRejected(FhirError):
    """The EHR refused a request (4xx): what Lockbox sent or asked for is wrong; retrying will not help."""

    code = "fhir_rejected"
    status = 502

    def __init__(self, status: int, issues: tuple[str, ...] = ()) -> None:
        self.http_status = status
        self.issues = issues
        codes = ", ".join(issues) or "none given"
        super().__init__(f"The EHR refused the request (HTTP {status}; issue codes: {codes}).")


class FhirBadData(FhirError):
    """The EHR answered with something that is not the FHIR R4 Lockbox asked for."""

    code = "fhir_bad_data"
    status = 502

    def __init__(self, what: str) -> None:
        super().__init__(f"The EHR answered with data Lockbox cannot use: {what}.")


class FhirInvalidResource(FhirError):
    """A resource Lockbox built failed FHIR R4 validation before it was sent (a bug, never sent)."""

    code = "fhir_invalid_resource"
    status = 500

    def __init__(self, what: str) -> None:
        super().__init__(f"Lockbox built an invalid FHIR resource: {what}.")
