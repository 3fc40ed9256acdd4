"""The web app in Debian's Chromium against a real server: sign-in, the portal and the inbox live, the
misdelivery check, remote wipe, a session ended elsewhere, analytics charts; screenshots for review."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pyotp
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright
from sqlalchemy.orm import Session

from lockbox.http import SESSION_COOKIE
from lockbox.identity.enrolment import issue_enrolment_code
from lockbox.identity.models import User
from tests.factories import Person, add_to_pool, auth, make_pool, make_team, make_user
from tests.identity.helpers import STRONG_PASSWORD
from tests.web.live import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, LiveServer, live_server, require_chromium
from tests.web.test_pages import PNG

pytestmark = pytest.mark.slow
# Room for a loaded CI machine (two workers, a browser and a server each).
expect.set_options(timeout=10_000)

ROUTED_POOLS = ("nurse-triage", "medication", "results", "scheduling", "billing", "front-desk")
# Any pool's queue on the inbox page (not "my threads" or the care team's others).
QUEUES = "#inbox .queue-card:not([data-pool='mine']):not([data-pool='others'])"
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}


@dataclass
class Clinic:
    doctor: Person
    nurse: Person
    compliance: Person
    admin: Person


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    require_chromium()
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with live_server(tmp_path_factory.mktemp("live") / "data") as server:
        yield server


@pytest.fixture(scope="module")
def clinic(live: LiveServer) -> Clinic:
    db = live.db
    make_team(db, "team-a")
    doctor = make_user(db, "physician", username="dr.house", care_teams=["team-a"])
    nurse = make_user(db, "nurse", username="nina.nurse", care_teams=["team-a"])
    # Every pool the default routing rules know, so a patient message lands in a queue the nurse works.
    for pool in ROUTED_POOLS:
        make_pool(db, pool, ["nurse"], members=[nurse])
    return Clinic(doctor, nurse, make_user(db, "compliance", username="cody.compliance"),
                  make_user(db, "admin", username="ada.admin"))


def _awaiting_enrolment(live: LiveServer, username: str) -> tuple[Person, str]:
    """A patient the directory created, who has neither password, TOTP nor consent yet."""
    person = make_user(live.db, "patient", username=username, consent=None, sign_in=False)

    def _reset(session: Session) -> str:
        user = session.get(User, person.id)
        assert user is not None
        user.password_hash = user.totp_secret_sealed = user.enrolled_at = None
        return issue_enrolment_code(session, user=user)

    return person, live.db.write_sync(_reset)


def _patient(live: LiveServer, clinic: Clinic, username: str) -> Person:
    return make_user(live.db, "patient", username=username, care_teams=["team-a"], pcp=clinic.doctor)


def _page(browser: Browser, live: LiveServer, person: Person | None, viewport: dict[str, int] = DESKTOP,
          **kw: object) -> Page:
    context: BrowserContext = browser.new_context(viewport=viewport, base_url=live.url, **kw)  # type: ignore[arg-type]
    context.set_default_timeout(10_000)
    if person is not None:
        assert person.token
        context.add_cookies([{"name": SESSION_COOKIE, "value": person.token, "domain": "127.0.0.1", "path": "/",
                              "httpOnly": True, "secure": True, "sameSite": "Strict"}])
    return context.new_page()


def _live(page: Page) -> None:
    """The page's WebSocket is subscribed: what happens from now on reaches it."""
    expect(page.locator("body")).to_have_attribute("data-live", "on")


def _shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _mark_no_reload(page: Page) -> None:
    page.evaluate("window.__noReload = true")


def _assert_no_reload(page: Page) -> None:
    assert page.evaluate("window.__noReload === true"), "the page reloaded"


def test_enrol_then_sign_in_with_an_authenticator_code(live: LiveServer, browser: Browser) -> None:
    person, code = _awaiting_enrolment(live, "new.patient")
    page = _page(browser, live, None, PHONE)
    page.goto("/enrol")
    page.get_by_label("Username").fill(person.username)
    page.get_by_label("Enrolment code").fill(code)
    page.get_by_label("New password", exact=True).fill(STRONG_PASSWORD)
    page.get_by_label("New password again").fill(STRONG_PASSWORD)
    page.get_by_role("button", name="Continue").click()
    expect(page.locator("figure.qr svg")).to_be_visible()
    secret = page.locator("#totp-secret").inner_text().replace(" ", "")
    assert re.fullmatch(r"[A-Z2-7]{32}", secret)
    _shot(page, "enrolled-phone")

    page.get_by_role("link", name=re.compile("sign in")).click()
    # By keyboard alone: the username field has focus, Tab moves on, Enter signs in.
    expect(page.get_by_label("Username")).to_be_focused()
    page.keyboard.type(person.username)
    page.keyboard.press("Tab")
    page.keyboard.type(STRONG_PASSWORD)
    page.keyboard.press("Tab")
    expect(page.get_by_label(re.compile("6-digit code"))).to_be_focused()
    page.keyboard.type(pyotp.TOTP(secret).now())
    page.keyboard.press("Enter")
    # First use: the consent screen, with the terms version, before the portal.
    expect(page).to_have_url(re.compile(r"/consent$"))
    expect(page.locator("#terms")).to_contain_text("version 2026-01")
    _shot(page, "consent-phone")
    page.get_by_role("button", name="I agree").click()
    expect(page).to_have_url(re.compile(r"/portal$"))
    expect(page.locator(".emergency")).to_contain_text("call 911 or go to the nearest emergency department")
    page.context.close()


def test_a_patient_message_reaches_the_nurse_live_and_the_answer_comes_back(
        live: LiveServer, clinic: Clinic, browser: Browser) -> None:
    patient = _patient(live, clinic, "pat.jones")
    nurse = _page(browser, live, clinic.nurse)
    nurse.goto("/inbox")
    _live(nurse)
    _mark_no_reload(nurse)

    pat = _page(browser, live, patient, PHONE)
    pat.goto("/portal")
    _shot(pat, "portal-empty-phone")
    pat.get_by_role("link", name="New message").first.click()
    pat.get_by_label("Subject").fill("Refill for lisinopril")
    pat.get_by_label("Message").fill("Could I get a refill of my lisinopril 10 mg? Three tablets left.")
    pat.get_by_label(re.compile("Attach a photo")).set_input_files(
        {"name": "label.png", "mimeType": "image/png", "buffer": PNG})
    _shot(pat, "portal-new-phone")
    pat.get_by_role("button", name="Send securely").click()
    expect(pat.locator(".msg-mine .msg-body").first).to_have_text(re.compile("Three tablets left"))
    expect(pat.locator(".attachments img")).to_have_attribute("alt", re.compile("label.png"))
    expect(pat.locator(".msg-mine .receipt").last).to_have_text(re.compile("Delivered|Sent"))
    _live(pat)
    _mark_no_reload(pat)

    # The nurse's queue shows it without a reload, with its badges.
    row = nurse.locator(f"{QUEUES} .queue-item", has_text="Refill for lisinopril")
    expect(row).to_be_visible()
    expect(row.locator(".badge-routine, .badge-urgent, .badge-emergency").first).to_be_visible()
    _assert_no_reload(nurse)
    _shot(nurse, "inbox-desktop")

    # A colleague claims it from her queue; Nina's open inbox shows it without a reload (routing tells
    # every member of the pool).
    tid = pat.url.rsplit("/", 1)[-1]
    pool = httpx.get(f"{live.url}/api/v1/threads/{tid}", headers=auth(clinic.nurse)).json()["pool"]
    lena = make_user(live.db, "nurse", username="lena.lpn")
    add_to_pool(live.db, pool, lena)
    colleague = _page(browser, live, lena)
    colleague.goto("/inbox")
    theirs = colleague.locator(f"{QUEUES} .queue-item", has_text="Refill for lisinopril")
    expect(theirs.locator(".sla-text")).to_have_text(re.compile(r"^(Due in|Overdue by) \d"))
    theirs.get_by_role("button", name=re.compile("^Claim")).click()
    expect(colleague).to_have_url(re.compile(r"/inbox$"))
    expect(row.locator(".queue-assignee")).to_have_text("Assigned to Lena.Lpn")
    _assert_no_reload(nurse)
    colleague.context.close()
    row.get_by_role("link").click()
    expect(nurse.locator(".msg-other .msg-body").first).to_contain_text("Three tablets left")
    expect(nurse.locator(".msg-other .attachments img")).to_be_visible()
    expect(nurse.locator(".patient-card")).to_contain_text("Pat.Jones")
    expect(nurse.locator(".routing-why")).not_to_be_empty()
    _shot(nurse, "thread-nurse-desktop")

    # Opening it sent a read receipt: the patient's page shows it live.
    expect(pat.locator(".msg-mine .receipt").last).to_have_text(re.compile("Read by Nina.Nurse"))
    nurse.get_by_label("Your reply").fill("Sent to your pharmacy, ready tomorrow.")
    nurse.get_by_role("button", name="Send reply").click()
    expect(nurse.locator(".msg-mine .msg-body").last).to_have_text("Sent to your pharmacy, ready tomorrow.")

    expect(pat.locator(".msg-other .msg-body")).to_have_text("Sent to your pharmacy, ready tomorrow.")
    expect(pat.locator(".msg-other .msg-from")).to_contain_text("Nina.Nurse")
    _assert_no_reload(pat)
    _shot(pat, "thread-patient-phone")
    # The nurse sees the patient read the answer (the patient's open page sent the receipt).
    expect(nurse.locator(".msg-mine .receipt").last).to_have_text(re.compile("Read by Pat.Jones"))

    pat.goto("/portal")
    expect(pat.locator(".thread-item", has_text="Refill for lisinopril")).to_be_visible()
    _shot(pat, "portal-phone")
    pat.set_viewport_size(DESKTOP)
    _shot(pat, "portal-desktop")
    nurse.set_viewport_size(PHONE)
    _shot(nurse, "thread-nurse-phone")
    nurse.goto("/inbox")
    _shot(nurse, "inbox-phone")
    for page in (pat, nurse):
        page.context.close()


def test_the_page_shows_the_clinics_automatic_reply_whenever_routing_gives_one(
        live: LiveServer, clinic: Clinic, browser: Browser) -> None:
    patient = _patient(live, clinic, "em.ergency")
    pat = _page(browser, live, patient, PHONE)
    pat.goto("/portal/new")
    pat.get_by_label("Subject").fill("Chest pain")
    pat.get_by_label("Message").fill("Chest pain since this morning and I cant breathe well.")
    pat.get_by_role("button", name="Send securely").click()
    expect(pat.locator(".msg-mine .msg-body")).to_contain_text("cant breathe")
    tid = pat.url.rsplit("/", 1)[-1]
    thread = httpx.get(f"{live.url}/api/v1/threads/{tid}", headers={"Authorization": f"Bearer {patient.token}"})
    auto = [m["body"] for m in thread.json()["messages"] if m["kind"] == "auto_reply"]
    # Whether there is one is the routing engine's decision; the page must show exactly what it decided.
    if auto:
        expect(pat.locator(".msg-auto .msg-body")).to_have_text(auto[0])
        expect(pat.locator(".msg-auto .msg-from")).to_contain_text("Automatic reply")
        _shot(pat, "emergency-auto-reply-phone")
    else:
        expect(pat.locator(".msg-auto")).to_have_count(0)
    pat.context.close()


def test_a_first_message_to_a_patient_shows_who_it_is_before_sending(
        live: LiveServer, clinic: Clinic, browser: Browser) -> None:
    patient = _patient(live, clinic, "kim.lee")
    doc = _page(browser, live, clinic.doctor)
    doc.goto("/compose")
    doc.get_by_label(re.compile("^Patient")).fill(patient.username)
    doc.get_by_label("Subject").fill("Your blood pressure")
    doc.get_by_label("Message").fill("Please send this week's home readings.")
    doc.get_by_role("button", name="Send").click()
    card = doc.locator(".recipient-card.is-patient")
    expect(card.locator(".rc-name")).to_have_text("Kim.Lee")
    expect(card.locator(".rc-mrn")).to_have_text(re.compile(r"MRN\d{6}"))
    expect(card.locator(".rc-birth")).to_have_text(re.compile(r"1980-01-\d\d"))
    _shot(doc, "confirm-desktop")
    doc.get_by_role("button", name=re.compile("Yes, send")).click()
    expect(doc).to_have_url(re.compile(r"/t/[0-9a-f]{32}$"))
    expect(doc.locator(".msg-mine .msg-body")).to_have_text("Please send this week's home readings.")
    doc.context.close()


def test_a_remote_wipe_clears_the_page_at_once(live: LiveServer, clinic: Clinic, browser: Browser) -> None:
    patient = _patient(live, clinic, "raj.patel")
    page = _page(browser, live, patient)
    page.goto("/portal")
    page.evaluate("sessionStorage.setItem('draft', 'x'); localStorage.setItem('draft', 'y')")
    _live(page)
    r = httpx.post(f"{live.url}/api/v1/admin/users/{patient.id}/wipe",
                   headers={"Authorization": f"Bearer {clinic.admin.token}"})
    assert r.status_code == 204
    expect(page).to_have_url(re.compile(r"/login\?ended=wipe$"))
    expect(page.locator("#ended-notice")).to_contain_text("data was cleared")
    assert page.evaluate("sessionStorage.length + localStorage.length") == 0
    page.goto("/portal")
    expect(page).to_have_url(re.compile(r"/login"))
    page.context.close()


def test_a_session_ended_elsewhere_closes_the_open_page(live: LiveServer, clinic: Clinic, browser: Browser) -> None:
    patient = _patient(live, clinic, "sam.smith")
    page = _page(browser, live, patient)
    page.goto("/portal")
    _live(page)
    r = httpx.post(f"{live.url}/api/v1/auth/logout", headers={"Authorization": f"Bearer {patient.token}"})
    assert r.status_code == 204
    expect(page).to_have_url(re.compile(r"/login\?ended=ended$"))
    expect(page.locator("h1")).to_have_text("Sign in")
    page.context.close()


def test_analytics_draws_its_charts_and_exports_csv(live: LiveServer, clinic: Clinic, browser: Browser,
                                                   tmp_path: Path) -> None:
    patient = _patient(live, clinic, "dana.w")
    api = httpx.Client(base_url=live.url + "/api/v1")
    tid = api.post("/threads", json={"subject": "Bill", "body": "A question"},
                   headers={"Authorization": f"Bearer {patient.token}"}).json()["id"]
    api.post(f"/threads/{tid}/messages", json={"body": "Answer"},
             headers={"Authorization": f"Bearer {clinic.nurse.token}"})
    page = _page(browser, live, clinic.compliance, accept_downloads=True)
    page.goto("/analytics")
    volume = page.locator("svg#chart-volume")
    expect(volume).to_be_visible()
    assert volume.locator("rect.bar").count() >= 1
    assert page.locator("svg#chart-response rect.bar").count() >= 1
    assert page.locator("svg#chart-topic rect.bar").count() >= 1
    assert page.locator("svg#chart-sla rect.bar").count() >= 1  # the answered thread met its SLA
    box = volume.bounding_box()
    assert box and box["width"] > 300 and box["height"] > 150  # drawn, not just present
    _shot(page, "analytics-desktop")
    with page.expect_download() as download:
        page.get_by_role("link", name=re.compile("Download CSV of message volume")).click()
    path = tmp_path / "volume.csv"
    download.value.save_as(path)
    lines = path.read_text().splitlines()
    assert lines[0] == "day,provider,messages"
    assert any(re.fullmatch(r"\d{4}-\d\d-\d\d,Nina.Nurse,[1-9]", line) for line in lines)
    page.set_viewport_size(PHONE)
    _shot(page, "analytics-phone")
    page.goto("/compliance")
    expect(page.locator("#audit-rows")).to_contain_text("messaging.message.send")
    expect(page.locator("#audit-rows")).not_to_contain_text("A question")
    _shot(page, "compliance-phone")
    page.context.close()


def test_idle_logoff_warns_lets_you_stay_then_clears_the_page(browser: Browser, tmp_path: Path) -> None:
    with live_server(tmp_path / "idle", idle_timeout_s=30) as live:
        live.app.state.web_options.poll_s = 1
        patient = make_user(live.db, "patient", username="ida.idle")
        page = _page(browser, live, patient)
        page.goto("/portal")
        _live(page)
        dialog = page.locator("#idle-warning")
        expect(dialog).to_be_hidden()
        live.clock.advance(22)  # 8 s left: inside the 10 s warning window
        expect(dialog).to_be_visible()
        expect(page.locator("#idle-countdown")).to_have_text(re.compile(r"^0:0\d$"))
        _shot(page, "idle-warning-desktop")
        page.get_by_role("button", name="Stay signed in").click()
        expect(dialog).to_be_hidden()
        status = page.evaluate("fetch('/session/status').then(r => r.json())")
        assert status["remaining_s"] >= 25

        live.clock.advance(31)  # idle past the timeout: the server ends it, the page follows
        expect(page).to_have_url(re.compile(r"/login\?ended=idle$"))
        expect(page.locator("#ended-notice")).to_contain_text("inactive")
        assert "Your messages" not in page.content()
        page.context.close()
