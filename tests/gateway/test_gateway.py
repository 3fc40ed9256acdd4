"""The [secure] email gateway over real sockets: smtplib to the gateway in the running app, an aiosmtpd
sink as the clinic's mail server, the external recipient's pages through HTTP, on both backends."""

from __future__ import annotations

import base64
import logging
import re
import smtplib
import struct
import zlib
from email import policy
from email.message import EmailMessage

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from tests.clinic import Clinic
from tests.factories import Api
from tests.gateway.conftest import (
    CLINIC,
    PUBLIC_URL,
    Mailer,
    Sink,
    app_password,
    code_of,
    drain,
    link_of,
    mail,
    text_of,
    thread_count,
)
from tests.notify.conftest import set_contact
from tests.web.helpers import csrf_of, use_session

from lockbox.audit.models import AuditRow
from lockbox.db import Database
from lockbox.gateway.models import SecureDelivery
from lockbox.jobs.models import Job
from lockbox.jobs.worker import Worker
from lockbox.messaging.models import Attachment

SUBJECT = "Biopsy results ZEBRA-SUBJECT-7731"
BODY = "Pat Jones (MRN 100234): the melanoma biopsy came back ZEBRA-BODY-4410; start methotrexate."
FRIEND = "friend@partner.example"
PAT_EMAIL = "pat@mail.example"
SECRETS = ("ZEBRA", "Biopsy", "biopsy", "melanoma", "methotrexate", "Pat Jones", "pat.jones", "100234", "House")


def png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00")) + chunk(b"IEND", b""))


PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"


def mailer(client: TestClient, clinic: Clinic, port: int) -> Mailer:
    return Mailer(port, "dr.house", app_password(client, clinic.doctor))


def assert_phi_free(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, secret


def doctor_threads(client: TestClient, clinic: Clinic) -> list[dict]:  # type: ignore[type-arg]
    return list(Api(client, clinic.doctor).get("/threads").json())


# -- the external recipient ---------------------------------------------------------------------------


def test_external_recipient_verifies_reads_and_replies(client: TestClient, clinic: Clinic, db: Database,
                                                       worker: Worker, sink: Sink, gateway_port: int,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    mailer(client, clinic, gateway_port).send(mail(f"[secure] {SUBJECT}", BODY), to=[FRIEND])
    [t] = doctor_threads(client, clinic)
    assert t["subject"] == SUBJECT and t["kind"] == "external"
    assert sink.mails == []  # the outbox is durable: nothing leaves before a worker runs

    drain(worker)
    [(rcpt, link_mail)] = sink.mails
    assert rcpt == [FRIEND] and link_mail["Subject"] == f"Secure message from {CLINIC}"
    assert f"{PUBLIC_URL}/secure/" in text_of(link_mail)
    token = link_of(link_mail)

    page = client.get(f"/secure/{token}")
    assert page.status_code == 200 and "content-security-policy" in page.headers
    assert_phi_free(page.text)
    form = csrf_of(page.text)
    assert client.post(f"/secure/{token}/code", data={"csrf_token": "1.forged"}).status_code == 400
    assert client.get(f"/secure/{token}/message", follow_redirects=False).headers["location"] == f"/secure/{token}"
    r = client.post(f"/secure/{token}/code", data={"csrf_token": form})
    assert r.status_code == 200
    drain(worker)
    (rcpt, code_mail) = sink.mails[1]
    assert rcpt == [FRIEND]
    code = code_of(code_mail)
    wrong = f"{(int(code) + 1) % 10 ** 8:08d}"
    assert client.post(f"/secure/{token}/verify", data={"csrf_token": form, "code": wrong}).status_code == 401

    r = client.post(f"/secure/{token}/verify", data={"csrf_token": form, "code": code}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/secure/{token}/message"
    page = client.get(f"/secure/{token}/message")
    assert page.status_code == 200
    assert "ZEBRA-SUBJECT-7731" in page.text and "ZEBRA-BODY-4410" in page.text
    r = client.post(f"/secure/{token}/reply", data={"csrf_token": csrf_of(page.text), "body": "Thanks ZEBRA-REPLY"})
    assert r.status_code == 200 and "reply-sent" in r.text
    # A reply without the page's token is refused and changes nothing.
    assert client.post(f"/secure/{token}/reply", data={"csrf_token": "1.x", "body": "forged"}).status_code == 403

    detail = Api(client, clinic.doctor).get(f"/threads/{t['id']}").json()
    assert [(m["kind"], m["body"]) for m in detail["messages"]] == [("message", BODY),
                                                                     ("external", "Thanks ZEBRA-REPLY")]
    # The answer is the external recipient's, never shown as coming from the clinic.
    sent, answer = detail["messages"]
    assert sent["sender"]["username"] == clinic.doctor.username and sent["sender_label"] is None
    assert answer["sender_label"] == "External recipient"
    assert (answer["sender"]["role"], answer["sender"]["display_name"]) == ("external", "External recipient")
    # The clinician's web inbox shows the answer in the thread, as the external recipient's.
    client.cookies.clear()
    use_session(client, clinic.doctor)
    inbox_page = client.get(f"/t/{t['id']}")
    assert inbox_page.status_code == 200 and "Thanks ZEBRA-REPLY" in inbox_page.text
    assert '<strong class="msg-external">External recipient</strong>' in inbox_page.text
    assert f"<strong>{CLINIC}</strong>" not in inbox_page.text
    # The code worked once; a fresh browser with it gets nothing.
    client.cookies.clear()
    again = client.get(f"/secure/{token}")
    r = client.post(f"/secure/{token}/verify", data={"csrf_token": csrf_of(again.text), "code": code})
    assert r.status_code == 401

    for _, m in sink.mails:
        assert_phi_free(m.as_string())
    assert_phi_free("\n".join(r.getMessage() for r in caplog.records))
    rows = db.read_sync(lambda s: [(a.action, str(a.details)) for a in s.scalars(select(AuditRow))])
    actions = [a for a, _ in rows]
    for action in ("gateway.auth.succeed", "gateway.mail.accept", "gateway.notice.send", "gateway.code.send",
                   "gateway.code.verify", "gateway.thread.view", "gateway.reply.receive"):
        assert action in actions, action
    assert_phi_free(repr(rows))
    assert FRIEND not in repr(rows)
    # The link, the code and the address are not in the database in the clear.
    d = db.read_sync(lambda s: s.scalars(select(SecureDelivery)).one())
    assert token not in repr(d.__dict__) and FRIEND.encode() not in d.address_sealed


def test_unknown_and_expired_links(client: TestClient, clinic: Clinic, db: Database, worker: Worker, sink: Sink,
                                   gateway_port: int, clock) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/secure/" + "A" * 43).status_code == 404
    assert client.get("/secure/short").status_code == 404
    mailer(client, clinic, gateway_port).send(mail("[secure] later", "text"), to=[FRIEND])
    drain(worker)
    token = link_of(sink.mails[0][1])
    clock.advance(db.runtime.settings.secure_link_ttl_s + 1)
    assert client.get(f"/secure/{token}").status_code == 410


def test_code_guessing_is_limited(client: TestClient, clinic: Clinic, worker: Worker, sink: Sink,
                                  gateway_port: int) -> None:
    mailer(client, clinic, gateway_port).send(mail("[secure] x", "y"), to=[FRIEND])
    drain(worker)
    token = link_of(sink.mails[0][1])
    form = csrf_of(client.get(f"/secure/{token}").text)
    assert client.post(f"/secure/{token}/code", data={"csrf_token": form}).status_code == 200
    assert client.post(f"/secure/{token}/code", data={"csrf_token": form}).status_code == 429  # too soon
    drain(worker)
    code = code_of(sink.mails[1][1])
    statuses = [client.post(f"/secure/{token}/verify", data={"csrf_token": form, "code": "00000000"}).status_code
                for _ in range(5)]
    assert statuses == [401, 401, 401, 401, 429] or code == "00000000"
    # After five wrong guesses even the right code no longer works: a new one must be sent.
    assert client.post(f"/secure/{token}/verify", data={"csrf_token": form, "code": code}).status_code == 401


# -- MIME -----------------------------------------------------------------------------------------------


def test_multipart_with_attachment_and_inline_image(client: TestClient, clinic: Clinic, db: Database,
                                                     worker: Worker, sink: Sink, gateway_port: int) -> None:
    msg = mail("Scan [Secure]", "See the attached report and the image.")
    msg.add_alternative('<p>See the <b>report</b> <img src="cid:scan1"></p>', subtype="html")
    html = msg.get_payload()[1]
    assert isinstance(html, EmailMessage)
    html.add_related(png(), "image", "png", cid="<scan1>", filename="scan.png")
    msg.add_attachment(PDF, maintype="application", subtype="pdf", filename="report.pdf")
    mailer(client, clinic, gateway_port).send(msg, to=[FRIEND])
    [t] = doctor_threads(client, clinic)
    assert t["subject"] == "Scan"
    [m] = Api(client, clinic.doctor).get(f"/threads/{t['id']}").json()["messages"]
    assert m["body"] == "See the attached report and the image."
    assert sorted((a["filename"], a["content_type"]) for a in m["attachments"]) == [
        ("report.pdf", "application/pdf"), ("scan.png", "image/png")]
    # The recipient downloads the same bytes.
    drain(worker)
    token = link_of(sink.mails[0][1])
    form = csrf_of(client.get(f"/secure/{token}").text)
    client.post(f"/secure/{token}/code", data={"csrf_token": form})
    drain(worker)
    client.post(f"/secure/{token}/verify", data={"csrf_token": form, "code": code_of(sink.mails[1][1])})
    page = client.get(f"/secure/{token}/message").text
    pdf = next(a for a in m["attachments"] if a["filename"] == "report.pdf")
    assert f"/secure/{token}/files/{pdf['id']}" in page
    r = client.get(f"/secure/{token}/files/{pdf['id']}")
    assert r.status_code == 200 and r.content == PDF and r.headers["content-type"] == "application/pdf"
    assert r.headers["content-disposition"].startswith("attachment;")


@pytest.mark.parametrize(("charset", "subject", "body"), [
    ("iso-8859-1", "Résultats du café", "Übelkeit und Größe: à revoir."),
    ("shift_jis", "検査結果", "検査結果は正常です。"),
])
def test_non_utf8_charsets(client: TestClient, clinic: Clinic, gateway_port: int, charset: str, subject: str,
                           body: str) -> None:
    encoded_subject = base64.b64encode(f"[secure] {subject}".encode(charset)).decode()
    raw = (f"From: house@riverside.example\r\nTo: {FRIEND}\r\nSubject: =?{charset}?b?{encoded_subject}?=\r\n"
           f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset={charset}\r\n"
           "Content-Transfer-Encoding: 8bit\r\n\r\n").encode() + body.encode(charset) + b"\r\n"
    m = mailer(client, clinic, gateway_port)
    with smtplib.SMTP("127.0.0.1", gateway_port, timeout=10) as smtp:
        smtp.login(m.username, m.password)
        smtp.sendmail("house@riverside.example", [FRIEND], raw)
    [t] = doctor_threads(client, clinic)
    assert t["subject"] == subject
    [msg] = Api(client, clinic.doctor).get(f"/threads/{t['id']}").json()["messages"]
    assert msg["body"] == body


MALFORMED = {
    "no boundary": (b"Subject: [secure] x\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"XYZ\""
                    b"\r\n\r\nno parts here at all\r\n"),
    "bad base64": (b"Subject: [secure] x\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"XYZ\""
                   b"\r\n\r\n--XYZ\r\nContent-Type: text/plain\r\n\r\nhello\r\n--XYZ\r\nContent-Type: application/pdf"
                   b"\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!not*base64@@@\r\n--XYZ--\r\n"),
    "unknown charset": (b"Subject: [secure] x\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; "
                        b"charset=x-no-such-charset\r\n\r\nhello\r\n"),
    "unclosed": (b"Subject: [secure] x\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"XYZ\""
                 b"\r\n\r\n--XYZ\r\nContent-Type: text/plain\r\n\r\nhello\r\n"),
}


def test_malformed_mime_is_refused_and_nothing_is_stored(client: TestClient, clinic: Clinic, db: Database,
                                                         gateway_port: int) -> None:
    m = mailer(client, clinic, gateway_port)
    jobs_before = db.read_sync(lambda s: len(list(s.scalars(select(Job)))))
    for name, raw in MALFORMED.items():
        with smtplib.SMTP("127.0.0.1", gateway_port, timeout=10) as smtp:
            smtp.login(m.username, m.password)
            with pytest.raises(smtplib.SMTPDataError) as err:
                smtp.sendmail("house@riverside.example", [FRIEND], raw)
        assert err.value.smtp_code == 550 and b"5.6.0" in err.value.smtp_error, name
    assert thread_count(db) == 0
    assert db.read_sync(lambda s: len(list(s.scalars(select(Job))))) == jobs_before
    rejects = db.read_sync(lambda s: list(s.scalars(select(AuditRow).where(AuditRow.action == "gateway.mail.reject"))))
    assert len(rejects) == len(MALFORMED) and all(r.details["reason"] == "malformed" for r in rejects)


def test_refused_attachment_type_stores_nothing(client: TestClient, clinic: Clinic, db: Database,
                                                gateway_port: int) -> None:
    msg = mail("[secure] script", "see attached")
    msg.add_attachment(b"MZ\x90\x00 an executable", maintype="application", subtype="octet-stream",
                       filename="run.exe")
    with pytest.raises(smtplib.SMTPDataError) as err:
        mailer(client, clinic, gateway_port).send(msg, to=[FRIEND])
    assert err.value.smtp_code == 554 and b"5.6.1" in err.value.smtp_error
    assert thread_count(db) == 0


def test_oversize_is_refused_by_size_and_by_data(client: TestClient, clinic: Clinic, db: Database,
                                                 gateway_port: int) -> None:
    big = mail("[secure] big", "x")
    big.add_attachment(b"%PDF-1.4\n" + b"0" * (3 * 1024 * 1024), maintype="application", subtype="pdf",
                       filename="big.pdf")
    m = mailer(client, clinic, gateway_port)
    with pytest.raises(smtplib.SMTPSenderRefused) as err:  # SIZE declared in MAIL FROM
        m.send(big, to=[FRIEND])
    assert err.value.smtp_code == 552
    with smtplib.SMTP("127.0.0.1", gateway_port, timeout=10) as smtp:  # no SIZE: refused after DATA
        smtp.login(m.username, m.password)
        smtp.mail("house@riverside.example")
        smtp.rcpt(FRIEND)
        code, _ = smtp.data(big.as_bytes(policy=policy.SMTP))
    assert code == 552
    assert thread_count(db) == 0


# -- who may send ----------------------------------------------------------------------------------------


def test_unauthenticated_and_bad_passwords_are_refused(client: TestClient, clinic: Clinic, db: Database,
                                                       gateway_port: int) -> None:
    m = mailer(client, clinic, gateway_port)
    with pytest.raises(smtplib.SMTPSenderRefused) as err:
        m.send(mail("[secure] x", "y"), to=[FRIEND], login=False)
    assert err.value.smtp_code == 530
    for username, password in (("dr.house", "not-the-password"), ("nina.nurse", m.password)):
        with pytest.raises(smtplib.SMTPAuthenticationError):
            Mailer(gateway_port, username, password).send(mail("[secure] x", "y"), to=[FRIEND])
    # Revoked: the same password stops working at once.
    doctor = Api(client, clinic.doctor)
    [pw] = doctor.get("/me/gateway-passwords").json()
    assert "password" not in pw and pw["label"] == "Thunderbird"
    assert doctor.delete(f"/me/gateway-passwords/{pw['id']}").status_code == 204
    with pytest.raises(smtplib.SMTPAuthenticationError):
        m.send(mail("[secure] x", "y"), to=[FRIEND])
    assert thread_count(db) == 0
    # Patients, compliance and admin have no gateway passwords.
    for who in (clinic.patient, clinic.compliance, clinic.admin):
        assert Api(client, who).post("/me/gateway-passwords", json={}).status_code == 404
    fails = db.read_sync(lambda s: list(s.scalars(select(AuditRow).where(AuditRow.action == "gateway.auth.fail"))))
    # smtplib tries PLAIN, then LOGIN: each of the three sign-ins fails twice.
    assert len(fails) == 6 and all(f.outcome == "failure" for f in fails)


def test_allowed_relay_sends_as_the_staff_member_on_file(client: TestClient, clinic: Clinic, db: Database,
                                                         gateway_port: int) -> None:
    set_contact(db, clinic.doctor, email="house@riverside.example")
    relay = mail("[secure] relay", "via relay").as_bytes(policy=policy.SMTP)
    with smtplib.SMTP("127.0.0.1", gateway_port, timeout=10) as smtp, pytest.raises(smtplib.SMTPSenderRefused):
        smtp.sendmail("house@riverside.example", [FRIEND], relay)  # not an allowed relay yet
    db.runtime.settings.smtp_gateway_relays = ["127.0.0.0/8"]
    with smtplib.SMTP("127.0.0.1", gateway_port, timeout=10) as smtp:
        with pytest.raises(smtplib.SMTPSenderRefused) as err:
            smtp.sendmail("someone@elsewhere.example", [FRIEND], relay)
        assert err.value.smtp_code == 550
        smtp.sendmail("House@Riverside.example", [FRIEND], relay)
    [t] = doctor_threads(client, clinic)
    assert t["subject"] == "relay"


def test_keyword_in_any_case_is_stripped(client: TestClient, clinic: Clinic, gateway_port: int) -> None:
    m = mailer(client, clinic, gateway_port)
    keywords = ["[secure]", "[SECURE]", "[Secure]", "[sEcUrE]"]
    for n, keyword in enumerate(keywords):
        m.send(mail(f"Follow-up {keyword} visit {n}", "text"), to=[FRIEND])
    subjects = sorted(t["subject"] for t in doctor_threads(client, clinic))
    assert subjects == [f"Follow-up visit {n}" for n in range(len(keywords))]


def test_app_passwords_from_the_web_page(client: TestClient, clinic: Clinic, gateway_port: int) -> None:
    use_session(client, clinic.doctor)
    page = client.get("/mail-client")
    assert page.status_code == 200 and "[secure]" in page.text
    assert client.post("/mail-client", data={"csrf_token": "1.forged", "label": "x"}).status_code == 403
    created = client.post("/mail-client", data={"csrf_token": csrf_of(page.text), "label": "Laptop <b>"})
    assert created.status_code == 200
    password = re.search(r'id="app-password">([^<]+)<', created.text)
    assert password and "Laptop b" in created.text
    Mailer(gateway_port, "dr.house", password.group(1)).send(mail("[secure] from web", "x"), to=[FRIEND])
    [pw] = Api(client, clinic.doctor).get("/me/gateway-passwords").json()
    assert pw["last_used_at"] is not None
    r = client.post(f"/mail-client/{pw['id']}/revoke", data={"csrf_token": csrf_of(created.text)})
    assert r.status_code == 200 and "None yet." in r.text
    with pytest.raises(smtplib.SMTPAuthenticationError):
        Mailer(gateway_port, "dr.house", password.group(1)).send(mail("[secure] again", "x"), to=[FRIEND])
    use_session(client, clinic.patient)
    assert client.get("/mail-client").status_code == 404


# -- registered patients and consent -------------------------------------------------------------------------


def test_registered_patient_gets_it_in_the_portal(client: TestClient, clinic: Clinic, db: Database,
                                                  worker: Worker, sink: Sink, gateway_port: int,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    set_contact(db, clinic.patient, email=PAT_EMAIL)
    m = mailer(client, clinic, gateway_port)
    msg = mail(f"[secure] {SUBJECT}", BODY, to=PAT_EMAIL)
    msg.add_attachment(PDF, maintype="application", subtype="pdf", filename="biopsy.pdf")
    m.send(msg, to=[PAT_EMAIL.upper()])  # addresses match whatever their case
    patient = Api(client, clinic.patient)
    [t] = patient.get("/threads").json()
    assert t["subject"] == SUBJECT and t["kind"] == "patient"
    detail = patient.get(f"/threads/{t['id']}").json()
    assert detail["messages"][0]["body"] == BODY
    assert [a["filename"] for msg_ in detail["messages"] for a in msg_["attachments"]] == ["biopsy.pdf"]
    # An answer by email to the same subject continues the thread.
    m.send(mail(f"RE: [secure] {SUBJECT}", "One more thing."), to=[PAT_EMAIL])
    [t2] = patient.get("/threads").json()
    assert t2["id"] == t["id"] and patient.get(f"/threads/{t['id']}").json()["messages"][-1]["body"] == \
        "One more thing."
    assert db.read_sync(lambda s: s.scalar(select(SecureDelivery.id))) is None  # no external link for a patient
    drain(worker)
    [(rcpt, note)] = sink.mails
    assert rcpt == [PAT_EMAIL] and note["Subject"] == f"New secure message from {CLINIC}"
    assert_phi_free(note.as_string())
    assert_phi_free("\n".join(r.getMessage() for r in caplog.records))


def test_opted_out_patient_bounces_and_nothing_is_stored(client: TestClient, clinic: Clinic, db: Database,
                                                         worker: Worker, sink: Sink, gateway_port: int) -> None:
    set_contact(db, clinic.declined_patient, email="dee@mail.example")
    m = mailer(client, clinic, gateway_port)
    for to in (["dee@mail.example"], [FRIEND, "dee@mail.example"]):
        with pytest.raises(smtplib.SMTPDataError) as err:
            m.send(mail(f"[secure] {SUBJECT}", BODY), to=to)
        assert err.value.smtp_code == 550 and b"5.7.1" in err.value.smtp_error
        assert b"not agreed to secure messaging" in err.value.smtp_error
        assert b"dee" not in err.value.smtp_error
    assert thread_count(db) == 0
    drain(worker)
    assert sink.mails == []
    # A patient who withdraws later is refused too, also on a thread that already exists.
    set_contact(db, clinic.patient, email=PAT_EMAIL)
    m.send(mail("[secure] Plan", "first"), to=[PAT_EMAIL])
    assert Api(client, clinic.patient).post("/me/consent", json={"status": "withdrawn",
                                                                 "terms_version": "2026-01"}).status_code == 201
    with pytest.raises(smtplib.SMTPDataError):
        m.send(mail("Re: [secure] Plan", "second"), to=[PAT_EMAIL])
    [t] = doctor_threads(client, clinic)
    assert t["message_count"] == 1


def test_colleague_gets_a_staff_thread(client: TestClient, clinic: Clinic, db: Database, gateway_port: int) -> None:
    set_contact(db, clinic.nurse, email="nina@riverside.example")
    set_contact(db, clinic.doctor, email="house@riverside.example")
    m = mailer(client, clinic, gateway_port)
    # A copy to oneself is no recipient of its own.
    m.send(mail("[secure] Consult", "Please see."), to=["nina@riverside.example", "house@riverside.example"])
    [t] = Api(client, clinic.nurse).get("/threads").json()
    assert t["subject"] == "Consult" and t["kind"] == "staff"
    assert [x["id"] for x in doctor_threads(client, clinic)] == [t["id"]]
    with pytest.raises(smtplib.SMTPDataError) as err:
        m.send(mail("[secure] Note to self", "x"), to=["house@riverside.example"])
    assert err.value.smtp_code == 550


# -- operating modes -------------------------------------------------------------------------------------------


def test_always_mode_secures_mail_without_the_keyword(client: TestClient, clinic: Clinic, db: Database,
                                                      sink: Sink, gateway_port: int) -> None:
    assert db.runtime.settings.security_mode == "always"
    mailer(client, clinic, gateway_port).send(mail("Lunch", "Friday at noon?"), to=[FRIEND])
    [t] = doctor_threads(client, clinic)
    assert t["subject"] == "Lunch"
    assert sink.mails == []


def test_adaptive_mode_relays_low_risk_and_secures_high_risk(client: TestClient, clinic: Clinic, db: Database,
                                                             sink: Sink, gateway_port: int) -> None:
    from lockbox.phi.service import forget_names

    forget_names()
    settings = db.runtime.settings
    settings.security_mode = "adaptive"
    m = mailer(client, clinic, gateway_port)
    m.send(mail("Lunch", "Friday at noon?"), to=[FRIEND])
    [(rcpt, relayed)] = sink.mails
    assert rcpt == [FRIEND] and relayed["Subject"] == "Lunch"  # ordinary mail went upstream, unchanged
    assert thread_count(db) == 0
    m.send(mail("Quick question", "Pat Jones, MRN 100234, has melanoma."), to=[FRIEND])  # high risk
    assert len(sink.mails) == 1 and thread_count(db) == 1
    settings.smtp_host = None  # no upstream: ordinary mail is refused, not sent in the clear
    with pytest.raises(smtplib.SMTPDataError) as err:
        m.send(mail("Lunch", "Friday at noon?"), to=[FRIEND])
    assert err.value.smtp_code == 550 and b"[secure]" in err.value.smtp_error


def test_attachments_are_sealed_at_rest(client: TestClient, clinic: Clinic, db: Database, gateway_port: int) -> None:
    msg = mail("[secure] file", "see")
    msg.add_attachment(PDF, maintype="application", subtype="pdf", filename="secret-name.pdf")
    mailer(client, clinic, gateway_port).send(msg, to=[FRIEND])
    [a] = db.read_sync(lambda s: list(s.scalars(select(Attachment))))
    assert PDF not in a.data_sealed and b"secret-name" not in a.name_sealed
