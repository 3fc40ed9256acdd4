"""Loading the directory file: an idempotent upsert of the clinic's shape and its people, in one unit of work.

Each entry in the file is authoritative for its own fields and memberships (a staff member's care
teams, a pool's members); entries the file does not mention are left as they are.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from lockbox.audit.service import record
from lockbox.consent import service as consent
from lockbox.db.base import new_id
from lockbox.db.uow import runtime_of
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
from lockbox.directory.schemas import (
    CareTeamEntry,
    DirectoryFile,
    Entry,
    LocationEntry,
    PatientEntry,
    PoolEntry,
    StaffEntry,
)
from lockbox.identity.enrolment import issue_enrolment_code
from lockbox.identity.models import Patient, User
from lockbox.identity.roles import CLINICAL_ROLES, Role

MAX_REPORTED_PROBLEMS = 20
CONSENT_METHOD = "directory"


@dataclass(frozen=True)
class CreatedUser:
    username: str
    role: str
    enrolment_code: str


def _assign(obj: Any, **values: Any) -> bool:
    """Set the attributes that differ; True when anything changed (so a reload counts no updates)."""
    changed = False
    for key, value in values.items():
        if getattr(obj, key) != value:
            setattr(obj, key, value)
            changed = True
    return changed


class _Plan:
    """What the file refers to, resolved against itself and the database before anything is written."""

    def __init__(self, session: Session, doc: DirectoryFile) -> None:
        self.doc = doc
        self.problems: list[str] = []
        referenced = {s.username for s in doc.staff} | {p.username for p in doc.patients}
        referenced |= {m for p in doc.pools for m in p.members} | {p.lead for p in doc.pools if p.lead}
        referenced |= {p.pcp for p in doc.patients if p.pcp} | {o.username for o in doc.on_call}
        self.users = {u.username: u for u in _in_chunks(session, User, User.username, referenced)}
        user_ids = [u.id for u in self.users.values()]
        self.patients = {p.user_id: p for p in _in_chunks(session, Patient, Patient.user_id, user_ids)}
        file_mrns = [p.mrn for p in doc.patients]
        self.mrn_owners = {p.mrn: p.user_id for p in _in_chunks(session, Patient, Patient.mrn, file_mrns)}

        wanted_locations = {c.location for c in doc.care_teams} | {s.location for s in doc.staff}
        self.locations = _ids(session, Location, wanted_locations) | {x.id for x in doc.locations}
        wanted_teams = {t for s in doc.staff for t in s.care_teams} | {p.care_team for p in doc.patients}
        self.teams = _ids(session, CareTeam, wanted_teams) | {t.id for t in doc.care_teams}
        self.pools = _ids(session, Pool, {o.pool for o in doc.on_call}) | {p.id for p in doc.pools}

        # The role each username will have once the file is applied.
        self.roles = {u.username: u.role for u in self.users.values()}
        self.roles |= {s.username: s.role.value for s in doc.staff}
        self.roles |= {p.username: Role.patient.value for p in doc.patients}

        self._check_duplicates()
        if not self.problems:  # with a doubled entry, references would be checked against a guess
            self._check_references()

    def is_staff(self, username: str) -> bool:
        return self.roles.get(username, Role.patient) != Role.patient

    def _problem(self, section: str, index: int, entry: Entry, name: str, text: str) -> None:
        # Index, username or id, and line: enough to find the entry, without repeating its PHI.
        line = f" (line {entry.line})" if entry.line else ""
        self.problems.append(f"{section}[{index}] ({name}): {text}{line}")

    def _check_duplicates(self) -> None:
        doc = self.doc
        sections: list[tuple[str, list[LocationEntry] | list[CareTeamEntry] | list[PoolEntry]]] = [
            ("locations", doc.locations), ("care_teams", doc.care_teams), ("pools", doc.pools),
        ]
        for section, entries in sections:
            first: dict[str, int] = {}
            for i, entry in enumerate[LocationEntry | CareTeamEntry | PoolEntry](entries):
                if entry.id in first:
                    self._problem(section, i, entry, entry.id,
                                  f"id is already defined by {section}[{first[entry.id]}]")
                first.setdefault(entry.id, i)
        people: dict[str, str] = {}
        everyone: list[tuple[str, int, StaffEntry | PatientEntry]] = [
            *(("staff", i, s) for i, s in enumerate(doc.staff)),
            *(("patients", i, p) for i, p in enumerate(doc.patients)),
        ]
        for section, i, person in everyone:
            if person.username in people:
                self._problem(section, i, person, person.username,
                              f"username is already defined by {people[person.username]}")
            people.setdefault(person.username, f"{section}[{i}]")
        mrns: dict[str, int] = {}
        for i, patient in enumerate(doc.patients):
            if patient.mrn in mrns:
                self._problem("patients", i, patient, patient.username,
                              f"mrn is the same as patients[{mrns[patient.mrn]}]'s")
            mrns.setdefault(patient.mrn, i)

    def _check_references(self) -> None:
        doc = self.doc
        for i, team in enumerate(doc.care_teams):
            if team.location and team.location not in self.locations:
                self._problem("care_teams", i, team, team.id, f"location '{team.location}' is not defined")
        for i, staff in enumerate(doc.staff):
            problem = partial(self._problem, "staff", i, staff, staff.username)
            existing = self.users.get(staff.username)
            if existing is not None and existing.role == Role.patient:
                problem("the username belongs to an existing patient")
            if staff.location and staff.location not in self.locations:
                problem(f"location '{staff.location}' is not defined")
            for team_id in staff.care_teams:
                if team_id not in self.teams:
                    problem(f"care team '{team_id}' is not defined")
        for i, pool in enumerate(doc.pools):
            for member in pool.members:
                if not self.is_staff(member):
                    self._problem("pools", i, pool, pool.id, f"member '{member}' is not a staff member")
            if pool.lead and not self.is_staff(pool.lead):
                self._problem("pools", i, pool, pool.id, f"lead '{pool.lead}' is not a staff member")
        for i, patient in enumerate(doc.patients):
            problem = partial(self._problem, "patients", i, patient, patient.username)
            existing = self.users.get(patient.username)
            if existing is not None and existing.role != Role.patient:
                problem("the username belongs to an existing staff member")
            if patient.pcp and not self.is_staff(patient.pcp):
                problem(f"pcp '{patient.pcp}' is not a staff member")
            elif patient.pcp and self.roles[patient.pcp] not in CLINICAL_ROLES:
                problem(f"pcp '{patient.pcp}' is not a clinician (role {self.roles[patient.pcp]})")
            if patient.care_team and patient.care_team not in self.teams:
                problem(f"care team '{patient.care_team}' is not defined")
            owner = self.mrn_owners.get(patient.mrn)
            if owner is not None and (existing is None or existing.id != owner):
                problem("mrn belongs to another patient")  # which number is PHI; the entry is enough
        for i, shift in enumerate(doc.on_call):
            problem = partial(self._problem, "on_call", i, shift, shift.username)
            if shift.pool not in self.pools:
                problem(f"pool '{shift.pool}' is not defined")
            if not self.is_staff(shift.username):
                problem(f"username '{shift.username}' is not a staff member")

    def raise_if_invalid(self) -> None:
        if not self.problems:
            return
        problems = self.problems[:MAX_REPORTED_PROBLEMS]
        if len(self.problems) > MAX_REPORTED_PROBLEMS:
            problems.append(f"... and {len(self.problems) - MAX_REPORTED_PROBLEMS} more")
        raise InvalidDirectory("\n".join(problems))


def _in_chunks(session: Session, model: Any, column: Any, values: Iterable[Any]) -> list[Any]:
    # Bounded IN lists: SQLite caps bound parameters and a health system's file has thousands of people.
    values = sorted(set(values))
    out: list[Any] = []
    for start in range(0, len(values), 500):
        out.extend(session.scalars(select(model).where(column.in_(values[start:start + 500]))))
    return out


def _ids(session: Session, model: Any, ids: Iterable[str | None]) -> set[str]:
    return {row.id for row in _in_chunks(session, model, model.id, {i for i in ids if i})}


def _sync_members(session: Session, model: Any, owner_col: str, owner_id: str, member_col: str,
                  wanted: Iterable[str]) -> bool:
    """Make the membership rows of one owner exactly ``wanted``; True when anything changed."""
    wanted_set = set(wanted)
    rows: list[Any] = list(session.scalars(select(model).where(getattr(model, owner_col) == owner_id)))
    have = {getattr(r, member_col): r for r in rows}
    for member_id, row in have.items():
        if member_id not in wanted_set:
            session.delete(row)
    for member_id in sorted(wanted_set - have.keys()):
        session.add(model(**{owner_col: owner_id, member_col: member_id}))
    return wanted_set != have.keys()


def load_directory(session: Session, *, doc: DirectoryFile, actor_id: str | None = None) -> list[CreatedUser]:
    """Apply the directory file; returns the users it created, each with its one-time enrolment code.

    Everything is checked before anything is written, and the caller's unit of work makes the load
    all or nothing. Loading the same file again changes nothing and creates nobody.
    """
    plan = _Plan(session, doc)
    plan.raise_if_invalid()
    now = runtime_of(session).clock.now()
    counts: Counter[str] = Counter()
    created: list[CreatedUser] = []

    if doc.organization is not None:
        org = session.scalars(select(Organization).order_by(Organization.id).limit(1)).first()
        if org is None:
            session.add(Organization(name=doc.organization))
            counts["organizations_created"] += 1
        elif _assign(org, name=doc.organization):
            counts["organizations_updated"] += 1

    for loc_entry in doc.locations:
        location = session.get(Location, loc_entry.id)
        if location is None:
            session.add(Location(id=loc_entry.id, name=loc_entry.name))
            counts["locations_created"] += 1
        elif _assign(location, name=loc_entry.name):
            counts["locations_updated"] += 1
    session.flush()

    for team_entry in doc.care_teams:
        team = session.get(CareTeam, team_entry.id)
        if team is None:
            session.add(CareTeam(id=team_entry.id, name=team_entry.name, location_id=team_entry.location))
            counts["care_teams_created"] += 1
        elif _assign(team, name=team_entry.name, location_id=team_entry.location):
            counts["care_teams_updated"] += 1
    session.flush()

    users = plan.users
    for staff in doc.staff:
        fields = {"display_name": staff.display_name, "role": staff.role.value, "email": staff.email,
                  "phone": staff.phone, "location_id": staff.location}
        user = users.get(staff.username)
        if user is None:
            user = _new_user(session, staff.username, fields, now)
            users[user.username] = user
            created.append(CreatedUser(user.username, user.role, issue_enrolment_code(session, user=user)))
            _sync_members(session, CareTeamMember, "user_id", user.id, "care_team_id", staff.care_teams)
            counts["staff_created"] += 1
            continue
        changed = _assign(user, **fields)
        changed |= _sync_members(session, CareTeamMember, "user_id", user.id, "care_team_id",
                                 staff.care_teams)
        counts["staff_updated"] += changed
    session.flush()

    for pool_entry in doc.pools:
        roles = [r.value for r in pool_entry.roles]
        lead_id = users[pool_entry.lead].id if pool_entry.lead else None
        pool = session.get(Pool, pool_entry.id)
        if pool is None:
            session.add(Pool(id=pool_entry.id, name=pool_entry.name, roles=roles, lead_id=lead_id))
            session.flush()
            counts["pools_created"] += 1
            changed = True
        else:
            changed = _assign(pool, name=pool_entry.name, roles=roles, lead_id=lead_id)
        member_ids = [users[m].id for m in pool_entry.members]
        changed |= _sync_members(session, PoolMember, "pool_id", pool_entry.id, "user_id", member_ids)
        if pool is not None:
            counts["pools_updated"] += changed
    session.flush()

    for patient_entry in doc.patients:
        user_fields = {"display_name": patient_entry.display_name, "role": Role.patient.value,
                       "email": patient_entry.email, "phone": patient_entry.phone}
        patient_fields = {"mrn": patient_entry.mrn, "birth_date": patient_entry.birth_date,
                          "pcp_id": users[patient_entry.pcp].id if patient_entry.pcp else None,
                          "care_team_id": patient_entry.care_team}
        user = users.get(patient_entry.username)
        if user is None:
            user = _new_user(session, patient_entry.username, user_fields, now)
            users[user.username] = user
            created.append(CreatedUser(user.username, user.role, issue_enrolment_code(session, user=user)))
            session.flush()
            session.add(Patient(user_id=user.id, **patient_fields))
            counts["patients_created"] += 1
        else:
            changed = _assign(user, **user_fields)
            patient = plan.patients.get(user.id)
            if patient is None:
                session.add(Patient(user_id=user.id, **patient_fields))
                changed = True
            else:
                changed |= _assign(patient, **patient_fields)
            counts["patients_updated"] += changed
        session.flush()
        counts[_apply_consent(session, user.id, patient_entry.consent, actor_id)] += 1

    counts["on_call_created"] += _add_shifts(session, doc, users)

    # Counts only: the audit log never learns names, MRNs or who is in which team from here.
    details: dict[str, Any] = {k: v for k, v in sorted(counts.items()) if v and not k.startswith("_")}
    record(session, action="directory.file.load", actor_id=actor_id, subject_type="directory", **details)
    return created


def _new_user(session: Session, username: str, fields: dict[str, Any], now: datetime) -> User:
    user = User(id=new_id(), username=username, created_at=now, active=True, **fields)
    session.add(user)
    return user


def _apply_consent(session: Session, patient_id: str, wanted: str, actor_id: str | None) -> str:
    """Record the file's consent when it differs from the one in force; returns the counter it moved.

    A consent the patient or staff recorded first-hand (portal, staff) outranks the file: reloading
    an older export must not re-grant messaging to a patient who withdrew.
    """
    if wanted == "none":
        return "_consent_none"
    current = consent.current(session, patient_id=patient_id)
    if current is not None and current.status == wanted:
        return "_consent_same"
    if current is not None and current.method != CONSENT_METHOD:
        return "consents_kept"
    consent.record_consent(session, patient_id=patient_id, status=wanted, terms_version=CONSENT_METHOD,
                           method=CONSENT_METHOD, recorded_by=actor_id)
    return "consents_recorded"


def _add_shifts(session: Session, doc: DirectoryFile, users: dict[str, User]) -> int:
    if not doc.on_call:
        return 0
    pools = {s.pool for s in doc.on_call}
    have = {(s.pool_id, s.user_id, s.starts_at, s.ends_at)
            for s in _in_chunks(session, OnCallShift, OnCallShift.pool_id, pools)}
    added = 0
    for shift in doc.on_call:
        key = (shift.pool, users[shift.username].id, shift.starts_at, shift.ends_at)
        if key in have:
            continue
        have.add(key)
        session.add(OnCallShift(pool_id=shift.pool, user_id=key[1], starts_at=shift.starts_at,
                                ends_at=shift.ends_at))
        added += 1
    session.flush()
    return added
