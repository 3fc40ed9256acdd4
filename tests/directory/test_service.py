"""Loading the directory into the database: created, idempotent, updated, and all-or-nothing on errors."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from lockbox.audit.models import AuditRow
from lockbox.clock import FrozenClock
from lockbox.consent import service as consent
from lockbox.consent.models import ConsentRecord
from lockbox.db import Database
from lockbox.directory.exceptions import InvalidDirectory
from lockbox.directory.models import (
    CareTeam,
    CareTeamMember,
    Location,
    OnCallShift,
    Organization,
    Pool,
    PoolMember,
)
from lockbox.directory.schemas import parse_directory
from lockbox.directory.service import CreatedUser, load_directory
from lockbox.identity.enrolment import hash_code
from lockbox.identity.models import Patient, User

from .sample import SAMPLE, SAMPLE_USERS, census


def load(db: Database, text: str) -> list[CreatedUser]:
    return db.write_sync(load_directory, doc=parse_directory(text))


def load_error(db: Database, text: str) -> str:
    before = census(db)
    with pytest.raises(InvalidDirectory) as info:
        load(db, text)
    assert census(db) == before, "a refused file must leave every table as it was"
    return info.value.detail


def entry_line(text: str, fragment: str, *, last: bool = False) -> int:
    """The line where the list item holding ``fragment`` starts (the line errors point at)."""
    lines = text.splitlines()
    found = [n for n, line in enumerate(lines) if fragment in line]
    n = found[-1] if last else found[0]
    while not lines[n].lstrip().startswith("- "):
        n -= 1
    return n + 1


def state(db: Database) -> dict[str, Any]:
    """The directory as plain values, keyed by usernames and ids."""

    def _read(session: Session) -> dict[str, Any]:
        users = {u.id: u for u in session.scalars(select(User))}
        name = {uid: u.username for uid, u in users.items()}
        out: dict[str, Any] = {
            "organization": [o.name for o in session.scalars(select(Organization))],
            "locations": {x.id: x.name for x in session.scalars(select(Location))},
            "care_teams": {t.id: (t.name, t.location_id) for t in session.scalars(select(CareTeam))},
            "users": {u.username: {"role": u.role, "display_name": u.display_name, "email": u.email,
                                   "phone": u.phone, "location": u.location_id, "enrolled": u.enrolled_at,
                                   "code_hash": u.enrolment_code_hash, "code_expires": u.enrolment_expires_at}
                      for u in users.values()},
            "patients": {name[p.user_id]: (p.mrn, p.birth_date, name.get(p.pcp_id or ""), p.care_team_id)
                         for p in session.scalars(select(Patient))},
            "team_members": sorted((m.care_team_id, name[m.user_id]) for m in session.scalars(select(CareTeamMember))),
            "pools": {p.id: (p.name, p.roles, name.get(p.lead_id or "")) for p in session.scalars(select(Pool))},
            "pool_members": sorted((m.pool_id, name[m.user_id]) for m in session.scalars(select(PoolMember))),
            "on_call": sorted((s.pool_id, name[s.user_id], s.starts_at, s.ends_at)
                              for s in session.scalars(select(OnCallShift))),
            "consent": {},
            "consent_records": session.query(ConsentRecord).count(),
        }
        for p in session.scalars(select(Patient)):
            rec = consent.current(session, patient_id=p.user_id)
            out["consent"][name[p.user_id]] = (rec.status, rec.method, rec.terms_version) if rec else None
        return out

    return db.read_sync(_read)


def audit_rows(db: Database, action: str) -> list[dict[str, Any]]:
    def _read(session: Session) -> list[dict[str, Any]]:
        return [r.details for r in session.scalars(select(AuditRow).where(AuditRow.action == action)
                                                   .order_by(AuditRow.seq))]

    return db.read_sync(_read)


def test_loading_creates_the_clinic_and_its_people(standalone_db: Database, clock: FrozenClock) -> None:
    created = load(standalone_db, SAMPLE)

    assert [(c.username, c.role) for c in created] == [
        ("dr.house", "physician"), ("nina.nurse", "nurse"), ("nora.lead", "nurse"), ("phil.rx", "pharmacist"),
        ("bill.front", "billing"), ("pat.jones", "patient"), ("sam.smith", "patient"), ("lee.park", "patient"),
    ]
    s = state(standalone_db)
    assert s["organization"] == ["Riverside Family Medicine"]
    assert s["locations"] == {"main": "Main Street Clinic", "north": "North Clinic"}
    assert s["care_teams"] == {"team-a": ("Team A", "main"), "team-b": ("Team B", "north")}
    house = s["users"]["dr.house"]
    assert (house["role"], house["display_name"], house["email"], house["phone"], house["location"]) == (
        "physician", "Gregory House", "house@riverside.example", "+15550100", "main")
    # Nobody is enrolled: each holds exactly the code printed for them, hashed, valid for the configured time.
    ttl = standalone_db.runtime.settings.enrolment_code_ttl_s
    for c in created:
        user = s["users"][c.username]
        assert user["enrolled"] is None
        assert user["code_hash"] == hash_code(c.enrolment_code)
        assert user["code_expires"] == clock.now() + timedelta(seconds=ttl)
    assert len({c.enrolment_code for c in created}) == len(created)
    assert s["team_members"] == [("team-a", "dr.house"), ("team-a", "nina.nurse"), ("team-b", "nina.nurse")]
    assert s["patients"] == {
        "pat.jones": ("100234", date(1980, 4, 2), "dr.house", "team-a"),
        "sam.smith": ("100235", date(1975, 12, 30), "dr.house", "team-b"),
        "lee.park": ("100236", date(2001, 6, 15), None, None),
    }
    assert s["pools"] == {"nurse-triage": ("Nurse triage", ["nurse"], "nora.lead"),
                          "medication": ("Medication", ["pharmacist", "nurse"], None)}
    assert s["pool_members"] == [("medication", "nina.nurse"), ("medication", "phil.rx"),
                                 ("nurse-triage", "nina.nurse")]
    assert s["on_call"] == [("nurse-triage", "dr.house", datetime(2026, 1, 1, 18, tzinfo=UTC),
                             datetime(2026, 1, 2, 8, tzinfo=UTC))]
    assert s["consent"] == {"pat.jones": ("granted", "directory", "directory"),
                            "sam.smith": ("declined", "directory", "directory"), "lee.park": None}
    assert audit_rows(standalone_db, "directory.file.load") == [{
        "care_teams_created": 2, "consents_recorded": 2, "locations_created": 2, "on_call_created": 1,
        "organizations_created": 1, "patients_created": 3, "pools_created": 2, "staff_created": 5,
    }]


def test_loading_the_same_file_again_creates_and_changes_nothing(standalone_db: Database) -> None:
    load(standalone_db, SAMPLE)
    before, rows_before = state(standalone_db), census(standalone_db)

    assert load(standalone_db, SAMPLE) == []

    assert state(standalone_db) == before  # same enrolment codes too: nobody got a new one
    rows_after = census(standalone_db)
    assert rows_after.pop("audit_log") == rows_before.pop("audit_log") + 1  # the load itself is audited
    assert rows_after == rows_before
    assert audit_rows(standalone_db, "directory.file.load")[-1] == {}


def test_changed_entries_are_updated(standalone_db: Database, clock: FrozenClock) -> None:
    load(standalone_db, SAMPLE)
    clock.advance(60)  # consent history is ordered by time
    codes_before = {u: v["code_hash"] for u, v in state(standalone_db)["users"].items()}
    changed = (
        SAMPLE.replace("display_name: Nina Nurse, role: nurse, location: main, care_teams: [team-a, team-b]",
                       "display_name: Nina Okafor, role: nurse, location: north, care_teams: [team-b]")
        .replace("members: [nina.nurse], lead: nora.lead", "members: [nina.nurse, nora.lead], lead: nina.nurse")
        .replace("members: [phil.rx, nina.nurse]", "members: [phil.rx, new.rx]")
        .replace(',\n     email: house@riverside.example, phone: "+15550100"}', "}")
        .replace("care_team: team-b, consent: declined", "care_team: team-a, consent: granted")
        .replace('birth_date: 2001-06-15, consent: none', 'birth_date: 2001-06-15, pcp: nina.nurse, consent: none')
        .replace("organization: Riverside Family Medicine", "organization: Riverside Health")
        .replace("  - {username: bill.front,", "  - {username: new.rx, display_name: New Rx, role: pharmacist}\n"
                                              "  - {username: bill.front,")
    )
    created = load(standalone_db, changed)

    assert [(c.username, c.role) for c in created] == [("new.rx", "pharmacist")]
    s = state(standalone_db)
    assert s["organization"] == ["Riverside Health"]
    nina = s["users"]["nina.nurse"]
    assert (nina["display_name"], nina["location"]) == ("Nina Okafor", "north")
    assert (s["users"]["dr.house"]["email"], s["users"]["dr.house"]["phone"]) == (None, None)
    assert s["team_members"] == [("team-a", "dr.house"), ("team-b", "nina.nurse")]
    assert s["pools"]["nurse-triage"] == ("Nurse triage", ["nurse"], "nina.nurse")
    assert s["pool_members"] == [("medication", "new.rx"), ("medication", "phil.rx"),
                                 ("nurse-triage", "nina.nurse"), ("nurse-triage", "nora.lead")]
    assert s["patients"]["sam.smith"][3] == "team-a"
    assert s["patients"]["lee.park"][2] == "nina.nurse"
    assert s["consent"]["sam.smith"] == ("granted", "directory", "directory")
    assert s["consent_records"] == 3  # only sam.smith's changed
    # Existing users keep their enrolment codes; only the new one got a code.
    assert {u: v["code_hash"] for u, v in s["users"].items() if u != "new.rx"} == codes_before
    assert audit_rows(standalone_db, "directory.file.load")[-1] == {
        "consents_recorded": 1, "organizations_updated": 1, "patients_updated": 2, "pools_updated": 2,
        "staff_created": 1, "staff_updated": 2,
    }


def test_entries_may_refer_to_what_is_already_in_the_database(standalone_db: Database) -> None:
    load(standalone_db, SAMPLE)
    later = """\
staff: [{username: new.ma, display_name: New MA, role: medical_assistant, location: north, care_teams: [team-b]}]
pools: [{id: results, name: Results, roles: [physician], members: [dr.house, new.ma], lead: dr.house}]
patients:
  - {username: new.pat, display_name: New Patient, mrn: "200001", birth_date: 1990-01-01, pcp: dr.house,
     care_team: team-a, consent: granted}
on_call: [{pool: medication, username: phil.rx, from: 2026-02-01T00:00:00Z, to: 2026-02-02T00:00:00Z}]
"""
    assert [c.username for c in load(standalone_db, later)] == ["new.ma", "new.pat"]
    s = state(standalone_db)
    assert s["patients"]["new.pat"][2:] == ("dr.house", "team-a")
    assert ("results", "dr.house") in s["pool_members"] and ("team-b", "new.ma") in s["team_members"]
    assert ("medication", "phil.rx") in [x[:2] for x in s["on_call"]]
    # What the second file does not mention is left alone.
    assert s["pools"]["nurse-triage"] == ("Nurse triage", ["nurse"], "nora.lead")
    assert sorted(s["users"]) == sorted([*SAMPLE_USERS, "new.ma", "new.pat"])


REFERENCE_ERRORS = [
    ("members: [nina.nurse], lead", "members: [nina.nurse, nobody], lead",
     "pools[0] (nurse-triage): member 'nobody' is not a staff member"),
    ("lead: nora.lead", "lead: pat.jones", "pools[0] (nurse-triage): lead 'pat.jones' is not a staff member"),
    ("pcp: dr.house, care_team: team-a", "pcp: dr.who, care_team: team-a",
     "patients[0] (pat.jones): pcp 'dr.who' is not a staff member"),
    ("pcp: dr.house, care_team: team-a", "pcp: bill.front, care_team: team-a",
     "patients[0] (pat.jones): pcp 'bill.front' is not a clinician (role billing)"),
    ("care_team: team-b, consent", "care_team: team-z, consent",
     "patients[1] (sam.smith): care team 'team-z' is not defined"),
    ("role: physician, location: main, care_teams: [team-a]", "role: physician, location: main, care_teams: [x]",
     "staff[0] (dr.house): care team 'x' is not defined"),
    ("role: nurse, location: north", "role: nurse, location: south",
     "staff[2] (nora.lead): location 'south' is not defined"),
    ("name: Team B, location: north", "name: Team B, location: south",
     "care_teams[1] (team-b): location 'south' is not defined"),
    ("username: dr.house, from", "username: dr.who, from",
     "on_call[0] (dr.who): username 'dr.who' is not a staff member"),
    ("pool: nurse-triage, username", "pool: night, username", "on_call[0] (dr.house): pool 'night' is not defined"),
    ("username: bill.front", "username: phil.rx", "staff[4] (phil.rx): username is already defined by staff[3]"),
    ("username: lee.park", "username: nina.nurse", "patients[2] (nina.nurse): username is already defined by staff[1]"),
    ('mrn: "100235"', 'mrn: "100234"', "patients[1] (sam.smith): mrn is the same as patients[0]'s"),
    ("id: medication", "id: nurse-triage", "pools[1] (nurse-triage): id is already defined by pools[0]"),
]


@pytest.mark.parametrize(("old", "new", "expected"), REFERENCE_ERRORS, ids=[e[2][:40] for e in REFERENCE_ERRORS])
def test_an_unknown_reference_names_the_entry_and_loads_nothing(
    standalone_db: Database, old: str, new: str, expected: str
) -> None:
    assert old in SAMPLE
    text = SAMPLE.replace(old, new, 1)
    detail = load_error(standalone_db, text)
    # For a doubled entry the error is on the second one: the last mention.
    assert detail == f"{expected} (line {entry_line(text, new, last=True)})"
    assert census(standalone_db)["users"] == 0


def test_every_problem_is_reported_at_once(standalone_db: Database) -> None:
    text = SAMPLE.replace("pcp: dr.house, care_team: team-a", "pcp: dr.who, care_team: team-a").replace(
        "lead: nora.lead", "lead: nobody")
    assert load_error(standalone_db, text).splitlines() == [
        f"pools[0] (nurse-triage): lead 'nobody' is not a staff member (line {entry_line(text, 'nobody')})",
        f"patients[0] (pat.jones): pcp 'dr.who' is not a staff member (line {entry_line(text, 'dr.who')})",
    ]


def test_conflicts_with_existing_people_load_nothing(standalone_db: Database) -> None:
    load(standalone_db, SAMPLE)
    stolen_mrn = ('patients: [{username: new.pat, display_name: Newt Scamander, mrn: "100234", '
                  'birth_date: 1990-01-01}]')
    detail = load_error(standalone_db, stolen_mrn)
    assert detail == "patients[0] (new.pat): mrn belongs to another patient (line 1)"
    assert load_error(standalone_db, "staff: [{username: pat.jones, display_name: P, role: nurse}]") == (
        "staff[0] (pat.jones): the username belongs to an existing patient (line 1)")
    assert load_error(
        standalone_db, 'patients: [{username: dr.house, display_name: H, mrn: "9", birth_date: 1990-01-01}]'
    ) == "patients[0] (dr.house): the username belongs to an existing staff member (line 1)"
    assert load_error(standalone_db, "pools: [{id: p, name: P, members: [sam.smith]}]") == (
        "pools[0] (p): member 'sam.smith' is not a staff member (line 1)")


def test_a_consent_the_patient_gave_outranks_the_file(standalone_db: Database, clock: FrozenClock) -> None:
    load(standalone_db, SAMPLE)
    clock.advance(60)

    def withdraw(session: Session) -> None:
        patient = session.scalars(select(User).where(User.username == "pat.jones")).one()
        consent.record_consent(session, patient_id=patient.id, status="withdrawn", terms_version="2026-01",
                               method="portal", recorded_by=patient.id)

    standalone_db.write_sync(withdraw)
    clock.advance(60)
    # Reloading the clinic's file (which still says "granted") must not re-enable messaging for her,
    # while a change the file itself made before is still the file's to change.
    load(standalone_db, SAMPLE.replace("consent: declined", "consent: granted"))
    s = state(standalone_db)
    assert s["consent"]["pat.jones"] == ("withdrawn", "portal", "2026-01")
    assert s["consent"]["sam.smith"] == ("granted", "directory", "directory")
    assert audit_rows(standalone_db, "directory.file.load")[-1] == {"consents_kept": 1, "consents_recorded": 1}
