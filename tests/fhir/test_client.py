"""The FHIR client against the real server: retries, the circuit breaker, SMART backend-services auth, and
bad data from the EHR answered with a clear error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from tests.fhir.conftest import FhirServer

from lockbox.config import Settings
from lockbox.fhir.auth import ASSERTION_TYPE, SmartBackendAuth
from lockbox.fhir.client import FhirClient
from lockbox.fhir.context import fetch_context
from lockbox.fhir.exceptions import FhirBadData, FhirRejected, FhirUnavailable
from lockbox.fhir.runtime import FhirRuntime, runtime_for


@pytest.fixture
def rt(settings: Settings, fhir: FhirServer) -> FhirRuntime:
    return runtime_for(settings)


def _read_patient(rt: FhirRuntime, patient_id: str) -> dict[str, Any]:
    return rt.call(lambda c: c.read("Patient", patient_id))


def test_transient_failures_are_retried_within_one_call(rt: FhirRuntime, fhir: FhirServer) -> None:
    p = fhir.create({"resourceType": "Patient", "gender": "female"})
    fhir.fail(status=503, count=1)
    assert _read_patient(rt, p["id"])["gender"] == "female"
    fhir.fail(status=429, count=1)
    assert _read_patient(rt, p["id"])["gender"] == "female"
    assert fhir.stats()["requests"] == 1 + 2 * 2  # the create, then each read failed once and was retried


def test_a_failing_ehr_opens_the_circuit_and_is_left_alone(rt: FhirRuntime, fhir: FhirServer,
                                                           settings: Settings) -> None:
    p = fhir.create({"resourceType": "Patient"})
    fhir.fail(status=500, count=1000)
    for _ in range(settings.fhir_breaker_threshold):
        with pytest.raises(FhirUnavailable, match="kept answering HTTP 500"):
            _read_patient(rt, p["id"])
    asked = fhir.stats()["requests"]
    assert asked == 1 + settings.fhir_breaker_threshold * (settings.fhir_retries + 1)  # the create, then each try
    with pytest.raises(FhirUnavailable, match="leaving it alone"):
        _read_patient(rt, p["id"])
    assert fhir.stats()["requests"] == asked  # open: the EHR was not asked again
    assert rt.call(lambda c: c.circuit_state()) == "opened"


def test_a_refusal_is_not_retried_and_does_not_open_the_circuit(rt: FhirRuntime, fhir: FhirServer,
                                                                settings: Settings) -> None:
    for _ in range(settings.fhir_breaker_threshold + 1):
        with pytest.raises(FhirRejected) as caught:
            _read_patient(rt, "does-not-exist")
        assert caught.value.http_status == 404 and "not-found" in caught.value.issues
    assert fhir.stats()["requests"] == settings.fhir_breaker_threshold + 1
    assert rt.call(lambda c: c.circuit_state()) == "closed"


def test_a_slow_ehr_times_out(rt: FhirRuntime, fhir: FhirServer, settings: Settings) -> None:
    settings.fhir_retries = 0
    fhir.hang(10_000)
    try:
        with pytest.raises(FhirUnavailable, match="did not answer in time"):
            rt.call(lambda c: c.search("Patient", {}))
    finally:
        fhir.hang(0)


BAD_ANSWERS = [
    # (what the server answers for Condition searches, what the error must say)
    ("not json at all", "not JSON"),
    ('{"hello": "world"}', "not a FHIR resource"),
    ('{"resourceType": "Patient"}', "answered with Patient, not a Bundle"),
    ('{"resourceType": "Bundle", "type": "searchset", "entry": "lots"}', "Bundle: entry (list_type)"),
    # Wrong types inside a resource: a code that should be a CodeableConcept.
    ('{"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": {"resourceType": "Condition", '
     '"subject": {"reference": "Patient/x"}, "code": "E11"}}]}', "Condition: code"),
    # A missing required field: Condition.subject.
    ('{"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": {"resourceType": "Condition"}}]}',
     "Condition: subject"),
    ('{"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": {"resourceType": "Observation", '
     '"status": "final", "code": {"text": "x"}}}]}', "expected Condition, got Observation"),
]


@pytest.mark.parametrize(("body", "message"), BAD_ANSWERS)
def test_bad_data_from_the_ehr_is_a_clear_error(rt: FhirRuntime, fhir: FhirServer, body: str, message: str) -> None:
    fhir.canned("/Condition", body)
    with pytest.raises(FhirBadData) as caught:
        rt.call(lambda c: c.search("Condition", {"subject": "Patient/x"}))
    assert message in caught.value.detail
    assert "E11" not in caught.value.detail  # the EHR's values are never echoed


def test_huge_answers_are_refused(rt: FhirRuntime, fhir: FhirServer, settings: Settings) -> None:
    item = json.dumps({"resourceType": "Condition", "subject": {"reference": "Patient/x"}})
    fhir.control("canned", path="/Condition", repeat=settings.fhir_max_entries + 1, item=item)
    with pytest.raises(FhirBadData, match=f"more than {settings.fhir_max_entries} entries"):
        rt.call(lambda c: c.search("Condition", {}))
    fhir.control("canned", path="/Encounter", repeat=2000,
                 item=json.dumps({"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"}}))
    small = Settings(**{**settings.model_dump(), "fhir_max_response_bytes": 50_000, "fhir_max_entries": 100_000})
    with pytest.raises(FhirBadData, match="larger than 50000 bytes"):
        runtime_for(small).call(lambda c: c.search("Encounter", {}))


def test_a_context_read_with_bad_data_keeps_nothing_and_says_why(rt: FhirRuntime, fhir: FhirServer) -> None:
    from datetime import UTC, datetime

    p = fhir.create({"resourceType": "Patient"})
    fhir.canned("/CareTeam", '{"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": '
                             '{"resourceType": "CareTeam", "participant": [{"member": 5}]}}]}')
    with pytest.raises(FhirBadData, match=r"CareTeam: participant\.0\.member"):
        rt.call(lambda c: fetch_context(c, fhir_patient_id=p["id"], care_team_system="urn:x", surgery_days=30,
                                        now=datetime.now(UTC)))


def _pem(key: Any) -> tuple[str, str]:
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_smart_backend_services_auth(settings: Settings, fhir: FhirServer, tmp_path: Path, alg: str) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048) if alg == "RS384" else \
        ec.generate_private_key(ec.SECP384R1())
    private, public = _pem(key)
    key_file = tmp_path / "fhir-client.pem"
    key_file.write_text(private)
    token_url = f"{fhir.root}/auth/token"
    fhir.control("smart", body=public, client_id="lockbox-test", token_url=token_url)
    settings.fhir_auth = "smart"
    settings.fhir_token_url, settings.fhir_client_id = token_url, "lockbox-test"
    settings.fhir_private_key_file, settings.fhir_jwt_alg = key_file, alg  # type: ignore[assignment]
    rt = runtime_for(settings)

    assert rt.call(lambda c: c.search("Patient", {})) == []
    assert rt.call(lambda c: c.search("Patient", {})) == []
    assert fhir.stats()["tokens"] == 1  # the token is reused until it nears expiry
    fhir.control("revoke")
    assert rt.call(lambda c: c.search("Patient", {})) == []  # a 401 fetches a new token once
    assert fhir.stats()["tokens"] == 2

    other, _ = _pem(ec.generate_private_key(ec.SECP384R1()) if alg == "ES384" else
                    rsa.generate_private_key(public_exponent=65537, key_size=2048))
    key_file.write_text(other)
    stranger = runtime_for(Settings(**{**settings.model_dump()}))
    with pytest.raises(FhirUnavailable, match="token endpoint refused Lockbox"):
        stranger.call(lambda c: c.search("Patient", {}))


def test_the_client_assertion_follows_rfc_7523() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private, public = _pem(key)
    auth = SmartBackendAuth(token_url="https://ehr.example/token", client_id="lockbox", private_key=private,
                            alg="RS384", scope="system/Patient.rs", key_id="k1")
    assertion = auth.client_assertion()
    assert jwt.get_unverified_header(assertion) == {"alg": "RS384", "kid": "k1", "typ": "JWT"}
    claims = jwt.decode(assertion, public, algorithms=["RS384"], audience="https://ehr.example/token")
    assert claims["iss"] == claims["sub"] == "lockbox" and claims["exp"] - claims["iat"] <= 300 and claims["jti"]
    assert claims["jti"] != jwt.decode(auth.client_assertion(), public, algorithms=["RS384"],
                                       audience="https://ehr.example/token")["jti"]
    request = auth._token_request()
    form = dict(x.split("=", 1) for x in request.content.decode().split("&"))
    assert form["grant_type"] == "client_credentials" and form["client_assertion_type"] == ASSERTION_TYPE.replace(
        ":", "%3A")


def test_a_client_without_a_base_url_refuses_to_start(settings: Settings) -> None:
    from lockbox.fhir.exceptions import FhirNotConfigured

    settings.fhir_base_url = None
    with pytest.raises(FhirNotConfigured):
        FhirClient(settings)


def test_search_follows_next_links_on_the_same_server_only(rt: FhirRuntime, fhir: FhirServer) -> None:
    real = fhir.create({"resourceType": "Condition", "subject": {"reference": "Patient/x"}})
    first_page = {"resourceType": "Bundle", "type": "searchset",
                  "link": [{"relation": "next", "url": f"{fhir.base_url}/Condition?subject=Patient/x"}],
                  "entry": [{"resource": {"resourceType": "Condition", "id": "on-page-1",
                                          "subject": {"reference": "Patient/x"}}}]}
    fhir.canned("/Condition", json.dumps(first_page))
    found = rt.call(lambda c: c.search("Condition", {"subject": "Patient/x"}))
    assert [c["id"] for c in found] == ["on-page-1", real["id"]]

    first_page["link"] = [{"relation": "next", "url": "https://elsewhere.example/fhir/Condition?page=2"}]
    fhir.canned("/Condition", json.dumps(first_page))
    with pytest.raises(FhirBadData, match="next link to another server"):
        rt.call(lambda c: c.search("Condition", {"subject": "Patient/x"}))


def test_errors_never_repeat_what_the_ehr_sent(rt: FhirRuntime, fhir: FhirServer) -> None:
    leaky = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": {
        "resourceType": "Condition", "subject": {"reference": "Patient/x"}, "Jane Doe 1980-04-02": "x",
        "code": {"text": 42}}}]}
    fhir.canned("/Condition", json.dumps(leaky))
    with pytest.raises(FhirBadData) as caught:
        rt.call(lambda c: c.search("Condition", {}))
    assert "Condition: " in caught.value.detail and "Jane" not in caught.value.detail
    assert "42" not in caught.value.detail
    fhir.canned("/Patient/p1", json.dumps({"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": "Jane Doe has no record", "diagnostics": "MRN 100234 unknown"}]}), status=404)
    with pytest.raises(FhirRejected) as refused:
        rt.call(lambda c: c.read("Patient", "p1"))
    assert refused.value.issues == () and "Jane" not in refused.value.detail
