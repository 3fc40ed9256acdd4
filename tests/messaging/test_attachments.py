"""Attachments: type from content, size limit, sealed at rest, served safely."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.clinic import Clinic
from tests.factories import Api

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"\x00" * 100
PDF = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\ntrailer\n<<>>\n%%EOF\n"


def _thread(client: TestClient, clinic: Clinic) -> str:
    return Api(client, clinic.patient).post("/threads", json={"subject": "Form", "body": "see file"}).json()["id"]


def test_upload_and_download_roundtrip(client: TestClient, clinic: Clinic) -> None:
    tid = _thread(client, clinic)
    patient = Api(client, clinic.patient)
    r = patient.post(f"/threads/{tid}/attachments", files={"file": ("../../etc/form.pdf", PDF, "image/png")},
                     data={"body": "my form"})
    assert r.status_code == 201, r.text
    att = r.json()["attachments"][0]
    assert att["content_type"] == "application/pdf"  # from the bytes, not the declared type
    assert att["filename"] == "form.pdf"
    got = Api(client, clinic.nurse).get(f"/threads/{tid}/attachments/{att['id']}")
    assert got.status_code == 200 and got.content == PDF
    assert got.headers["content-type"] == "application/pdf"
    assert got.headers["content-disposition"].startswith("attachment;")
    assert "sandbox" in got.headers["content-security-policy"]
    detail = patient.get(f"/threads/{tid}").json()
    assert detail["messages"][-1]["attachments"][0]["id"] == att["id"]


def test_images_are_inline(client: TestClient, clinic: Clinic) -> None:
    tid = _thread(client, clinic)
    patient = Api(client, clinic.patient)
    att = patient.post(f"/threads/{tid}/attachments", files={"file": ("p.png", PNG, "image/png")}).json()
    got = patient.get(f"/threads/{tid}/attachments/{att['attachments'][0]['id']}")
    assert got.headers["content-disposition"].startswith("inline;")


def test_disallowed_content_is_refused_whatever_it_is_called(client: TestClient, clinic: Clinic) -> None:
    tid = _thread(client, clinic)
    patient = Api(client, clinic.patient)
    for name, data in [("evil.png", b"<html><script>alert(1)</script></html>"), ("a.pdf", b"MZ\x90\x00" * 20),
                       ("empty.png", b"")]:
        r = patient.post(f"/threads/{tid}/attachments", files={"file": (name, data, "image/png")})
        assert r.status_code in (400, 415), (name, r.status_code)
    assert patient.get(f"/threads/{tid}").json()["message_count"] == 1


def test_size_limit(client: TestClient, clinic: Clinic) -> None:
    tid = _thread(client, clinic)
    limit = client.app.state.lockbox.settings.max_attachment_bytes  # type: ignore[attr-defined]
    r = Api(client, clinic.patient).post(f"/threads/{tid}/attachments",
                                         files={"file": ("big.pdf", PDF + b"\x00" * limit, "application/pdf")})
    assert r.status_code == 413
    assert Api(client, clinic.patient).get(f"/threads/{tid}").json()["message_count"] == 1
