"""A sample directory file and a row census, shared by the directory tests."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from lockbox.db import Database
from lockbox.db.all_models import metadata

SAMPLE = """\
organization: Riverside Family Medicine
locations:
  - {id: main, name: Main Street Clinic}
  - {id: north, name: North Clinic}
care_teams:
  - {id: team-a, name: Team A, location: main}
  - {id: team-b, name: Team B, location: north}
pools:
  - {id: nurse-triage, name: Nurse triage, roles: [nurse], members: [nina.nurse], lead: nora.lead}
  - {id: medication, name: Medication, roles: [pharmacist, nurse], members: [phil.rx, nina.nurse]}
staff:
  - {username: dr.house, display_name: Gregory House, role: physician, location: main, care_teams: [team-a],
     email: house@riverside.example, phone: "+15550100"}
  - {username: nina.nurse, display_name: Nina Nurse, role: nurse, location: main, care_teams: [team-a, team-b]}
  - {username: nora.lead, display_name: Nora Lead, role: nurse, location: north}
  - {username: phil.rx, display_name: Phil Rx, role: pharmacist}
  - {username: bill.front, display_name: Bill Front, role: billing}
patients:
  - {username: pat.jones, display_name: Pat Jones, mrn: "100234", birth_date: 1980-04-02,
     pcp: dr.house, care_team: team-a, consent: granted, email: pat@mail.example}
  - {username: sam.smith, display_name: Sam Smith, mrn: "100235", birth_date: 1975-12-30,
     pcp: dr.house, care_team: team-b, consent: declined}
  - {username: lee.park, display_name: Lee Park, mrn: "100236", birth_date: 2001-06-15, consent: none}
on_call:
  - {pool: nurse-triage, username: dr.house, from: 2026-01-01T18:00:00Z, to: 2026-01-02T08:00:00Z}
"""

SAMPLE_USERS = ["dr.house", "nina.nurse", "nora.lead", "phil.rx", "bill.front", "pat.jones", "sam.smith",
                "lee.park"]


def census(db: Database) -> dict[str, int]:
    """Rows per table: equal before and after means nothing was written."""

    def _count(session: Session) -> dict[str, int]:
        return {t.name: session.scalar(select(func.count()).select_from(t)) or 0 for t in metadata.sorted_tables}

    return db.read_sync(_count)
