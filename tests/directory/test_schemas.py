"""Reading the directory file: the documented shape is accepted, and every mistake names its line or path."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from lockbox.directory.exceptions import InvalidDirectory
from lockbox.directory.schemas import parse_directory, read_directory_file
from lockbox.identity.roles import Role

from .sample import SAMPLE

# The exact example of ARCHITECTURE section 5.
ARCHITECTURE_EXAMPLE = """\
organization: Riverside Family Medicine
locations: [{id: main, name: Main Street Clinic}]
care_teams: [{id: team-a, name: Team A, location: main}]
pools:                       # the queues routing fills; ids are what the API and rules use
  - {id: nurse-triage, name: Nurse triage, roles: [nurse], members: [nina.nurse], lead: nora.lead}
staff:
  - {username: dr.house, display_name: Gregory House, role: physician, location: main, care_teams: [team-a],
     email: house@riverside.example, phone: "+15550100"}    # email/phone optional
patients:
  - {username: pat.jones, display_name: Pat Jones, mrn: "100234", birth_date: 1980-04-02,
     pcp: dr.house, care_team: team-a, consent: granted, email: pat@mail.example}   # consent
on_call: [{pool: nurse-triage, username: dr.house, from: 2026-01-01T18:00:00Z, to: 2026-01-02T08:00:00Z}]
"""


def line_with(text: str, fragment: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if fragment in line)


def error_of(text: str) -> str:
    with pytest.raises(InvalidDirectory) as info:
        parse_directory(text)
    assert info.value.status == 400
    return info.value.detail


def test_the_documented_example_is_read_as_written() -> None:
    doc = parse_directory(ARCHITECTURE_EXAMPLE)
    assert doc.organization == "Riverside Family Medicine"
    assert doc.pools[0].roles == [Role.nurse] and doc.pools[0].lead == "nora.lead"
    staff = doc.staff[0]
    assert (staff.role, staff.care_teams, staff.phone, staff.line) == (Role.physician, ["team-a"], "+15550100", 7)
    patient = doc.patients[0]
    assert (patient.mrn, patient.birth_date, patient.consent, patient.line) == ("100234", date(1980, 4, 2),
                                                                                "granted", 10)
    shift = doc.on_call[0]
    assert shift.starts_at == datetime(2026, 1, 1, 18, tzinfo=UTC)
    assert shift.ends_at == datetime(2026, 1, 2, 8, tzinfo=UTC)


def test_a_yaml_syntax_error_names_its_line() -> None:
    text = SAMPLE.replace("  - {id: north, name: North Clinic}", "  - id: north\n    name: North: Clinic")
    detail = error_of(text)
    assert detail == f"line {line_with(text, 'North: Clinic')}, column 16: mapping values are not allowed here"


def test_an_unknown_role_names_the_entry_path_and_line() -> None:
    text = SAMPLE.replace("role: nurse, location: main", "role: nurce, location: main")
    detail = error_of(text)
    assert detail.startswith("staff[1].role: Input should be a staff role: physician, ")
    assert detail.endswith(f"(line {line_with(text, 'nurce')})")


def test_patient_is_not_a_staff_role() -> None:
    assert error_of(SAMPLE.replace("role: billing", "role: patient")).startswith("staff[4].role: ")
    assert error_of(SAMPLE.replace("roles: [nurse]", "roles: [patient]")).startswith("pools[0].roles[0]: ")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("mrn: \"100235\"", "mrn: 100235"), "patients[1].mrn: Input should be a valid string (put numbers"),
        (("birth_date: 1975-12-30", "birth_date: 19751230"), "patients[1].birth_date: Input should be a date"),
        (("consent: declined", "consent: maybe"), "patients[1].consent: Input should be 'granted', 'declined'"),
        (("{id: north, name: North Clinic}", "{id: north, nmae: North Clinic}"), "locations[1].name: Field required"),
        (("Main Street Clinic}", "Main Street Clinic, colour: red}"), "locations[0].colour: Extra inputs are not"),
        (("phone: \"+15550100\"", "phone: 555-CALL-NOW"), "staff[0].phone: Input should be a phone number"),
        (("to: 2026-01-02T08:00:00Z", "to: 2025-01-02T08:00:00Z"), "on_call[0]: 'to' should be after 'from'"),
        (("from: 2026-01-01T18:00:00Z", "from: 2026-01-01T18:00:00"), "on_call[0].from: Input should have time"),
        (("{id: team-b, name: Team B", "{id: Team B, name: Team B"), "care_teams[1].id: Input should be an id"),
    ],
)
def test_invalid_values_name_their_path(change: tuple[str, str], expected: str) -> None:
    assert change[0] in SAMPLE
    assert error_of(SAMPLE.replace(*change)).startswith(expected)


def test_errors_never_repeat_patient_values() -> None:
    text = SAMPLE.replace("birth_date: 1980-04-02", "birth_date: 1980-02-30")
    detail = error_of(text)
    assert detail == f"line {line_with(text, '1980-02-30')}, column 79: not a valid date or time"
    assert "1980" not in detail and "Pat Jones" not in detail

    text = SAMPLE.replace("mrn: \"100234\"", "mrn: \"10 02 34\"").replace("birth_date: 1975-12-30",
                                                                           "birth_date: \"Dec 30 75\"")
    detail = error_of(text)
    assert "patients[0].mrn" in detail and "patients[1].birth_date" in detail
    for phi in ("10 02 34", "Dec 30", "Pat Jones", "Sam Smith", "100234", "100235"):
        assert phi not in detail


def test_every_problem_is_listed_with_its_line() -> None:
    text = SAMPLE.replace("role: pharmacist}", "role: chemist}").replace("consent: none", "consent: nope")
    assert error_of(text).splitlines() == [
        "staff[3].role: Input should be a staff role: " + ", ".join(r for r in Role if r != Role.patient)
        + f" (line {line_with(text, 'chemist')})",
        f"patients[2].consent: Input should be 'granted', 'declined' or 'none' (line {line_with(text, 'nope')})",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "the file is empty"),
        ("- just\n- a list\n", "line 1: the file should be a mapping"),
        ("staff: []\nlocations: []\nstaff: []\n", "line 3, column 1: found a duplicate key 'staff'"),
        ("patients: [{username: a, mrn: \"1\", birth_date: 2999-01-01, display_name: A}]",
         "patients[0].birth_date: Input should not be in the future (line 1)"),
        ("staff: !!python/object:os.system {}\n", "line 1, column 8: could not determine a constructor"),
    ],
)
def test_malformed_files(text: str, expected: str) -> None:
    assert error_of(text).startswith(expected)


def test_reading_a_file(tmp_path: Path) -> None:
    path = tmp_path / "clinic.yaml"
    path.write_text(SAMPLE)
    assert [s.username for s in read_directory_file(path).staff][:2] == ["dr.house", "nina.nurse"]
    with pytest.raises(InvalidDirectory, match="cannot read"):
        read_directory_file(tmp_path / "missing.yaml")
    path.write_bytes(b"organization: \xff\xfe\n")
    with pytest.raises(InvalidDirectory, match="not UTF-8"):
        read_directory_file(path)
