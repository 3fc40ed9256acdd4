"""The PHI detector kind by kind (what it must find and what it must leave alone), the risk rule and the
decision of the two security modes."""

from __future__ import annotations

import logging

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lockbox.phi.service import Assessment, Finding, must_stay_secure, rate, scan

NAMES = ["Pat Jones", "Dana Whitfield", "María García López", "Thomas O'Brien", "Fatima Al-Sayed", "Kim Lee"]


def found(text: str, kind: str, **kw: object) -> list[str]:
    return [text[f.start:f.end] for f in scan(text, names_on_file=NAMES, **kw).findings  # type: ignore[arg-type]
            if f.kind == kind]


@pytest.mark.parametrize(("text", "expected"), [
    ("Re: Pat Jones, labs attached", ["Pat Jones"]),
    ("JONES, PAT 04/02/1980", ["JONES, PAT"]),
    ("pt pat a. jones in room 3", ["pat a. jones"]),
    ("Dana Whitfeld called", ["Dana Whitfeld"]),  # one typo in a long part
    ("Whitfield, Dana", ["Whitfield, Dana"]),
    ("la paciente Maria Garcia Lopez", ["Maria Garcia Lopez"]),
    ("García López, María llamó", ["García López, María"]),
    ("Thomas O'Brien's results", ["Thomas O'Brien"]),
    ("Fatima Al Sayed", ["Fatima Al Sayed"]),
    ("Kim  Lee", ["Kim  Lee"]),
    ("pt JONES PAT dob 4/2/80", ["JONES PAT"]),  # lists put the surname first without a comma
])
def test_names_on_file_are_found_in_their_usual_spellings(text: str, expected: list[str]) -> None:
    assert found(text, "name") == expected


@pytest.mark.parametrize("text", [
    "Pat on the back to the front desk",  # a given name alone
    "Mr. Jones will fix the sprinklers",  # a surname alone
    "Hi Kim, can you swap Thursday? - Lee",  # both, not together
    "Dr. Gregory House is running late",  # staff are not patients on file
    "Kim Leeds is the vendor",  # a different surname (short parts match exactly)
    "Jones and Pat",
])
def test_name_negatives(text: str) -> None:
    assert found(text, "name") == []


def test_without_names_on_file_no_name_is_reported() -> None:
    assert [f.kind for f in scan("Pat Jones").findings] == []


@pytest.mark.parametrize(("text", "expected"), [
    ("MRN: D100234", ["D100234"]),
    ("please merge D100520 and D100521", ["D100520", "D100521"]),
    ("Chart # RFM-004512 duplicate", ["RFM-004512"]),  # any shape after "chart #"
    ("his old hospital record number is 0045521", ["0045521"]),
    ("Número de expediente: D100690", ["D100690"]),
    ("member ID W123456789, group 00312", []),  # an insurer's ID has the same shape
    ("Order #58213-A shipped", []),
    ("Lot AB1234 given", []),
])
def test_mrns(text: str, expected: list[str]) -> None:
    assert found(text, "mrn") == expected


def test_mrn_pattern_is_configurable() -> None:
    assert found("see 12-345-67 please", "mrn", mrn_pattern=r"\d{2}-\d{3}-\d{2}") == ["12-345-67"]
    assert found("see 12-345-67 please", "mrn") == []
    # A broken pattern falls back to the default instead of stopping the scan.
    assert found("MRN D100234", "mrn", mrn_pattern="([") == ["D100234"]


@pytest.mark.parametrize(("text", "expected"), [
    ("DOB 03/14/1962", ["03/14/1962"]),
    ("dob: 1962-03-14", ["1962-03-14"]),
    ("born March 14 1962", ["March 14 1962"]),
    ("DOB 3-14-62", ["3-14-62"]),
    ("birthday is July 4th, 1976", ["July 4th, 1976"]),
    ("nació el 2 de mayo de 1975", ["2 de mayo de 1975"]),
    ("Fecha de nacimiento: 14/03/1962", ["14/03/1962"]),
    ("Pat Jones 04.02.1980", ["04.02.1980"]),  # a date decades back next to a patient
    ("the 3rd of March, 1987", ["3rd of March, 1987"]),
])
def test_birth_dates(text: str, expected: list[str]) -> None:
    assert found(text, "birth_date") == expected


@pytest.mark.parametrize("text", [
    "Your appointment is on 12/03/2025 at 9:30",  # a recent date is a visit, not a birth
    "Meeting notes from 2025-10-21",
    "Fire drill on Feb 12, 2026",
    "He will be back around 12/10",
    "BP 128/82, 3-14 days",
    "Invoice 2025-0931",
    "closed 13/45/1999",  # not a date
])
def test_birth_date_negatives(text: str) -> None:
    assert found(text, "birth_date") == []


@pytest.mark.parametrize(("text", "expected"), [
    ("call 617-555-0142", ["617-555-0142"]),
    ("(617) 555-0199 or 413.555.0178", ["(617) 555-0199", "413.555.0178"]),
    ("cell +1 617 555 0139, ext", ["+1 617 555 0139"]),
    ("text 6175550172 after 5", ["6175550172"]),
    ("line 508-555-0191 ext. 12 today", ["508-555-0191 ext. 12"]),
])
def test_phones(text: str, expected: list[str]) -> None:
    assert found(text, "phone") == expected


@pytest.mark.parametrize("text", [
    "call me at 3pm", "take 10 mg twice a day", "room 214, 2nd floor", "copier code 4471",
    "MRN 1234567", "SSN 123-45-6789", "DOB 04/02/1980", "Total: 1,234 patients",
])
def test_phone_negatives(text: str) -> None:
    assert found(text, "phone") == []


@pytest.mark.parametrize(("text", "expected"), [
    ("lives at 123 Main St, Apt 4, Springfield, IL 62704.", ["123 Main St, Apt 4, Springfield, IL 62704"]),
    ("ship to 48 Willow Lane, Apt 3B", ["48 Willow Lane, Apt 3B"]),
    ("3820 N Lincoln Ave, Chicago, IL 60613", ["3820 N Lincoln Ave, Chicago, IL 60613"]),
    ("mail PO Box 1123", ["PO Box 1123"]),
    ("Calle Sol 245, Apt 2, San Juan", ["Calle Sol 245, Apt 2"]),
])
def test_addresses(text: str, expected: list[str]) -> None:
    assert found(text, "address") == expected


@pytest.mark.parametrize("text", [
    "take 2 pills at bedtime", "walk 30 minutes a day", "the side door on Elm St", "10 mg daily",
    "we walked 2 blocks to the cafe",
])
def test_address_negatives(text: str) -> None:
    assert found(text, "address") == []


@pytest.mark.parametrize(("text", "expected"), [
    ("SSN 123-45-6789", ["123-45-6789"]),
    ("ss# 301 44 5521", ["301 44 5521"]),
    ("his social security number is 219099999", ["219099999"]),
    ("seguro social: 587-22-0193", ["587-22-0193"]),
])
def test_ssns(text: str, expected: list[str]) -> None:
    assert found(text, "ssn") == expected


@pytest.mark.parametrize("text", [
    "NPI is 219099999", "000-12-3456", "666-12-3456", "last 4 of the SSN: 1234", "call 617-555-0142",
])
def test_ssn_negatives(text: str) -> None:
    assert found(text, "ssn") == []


@pytest.mark.parametrize(("text", "expected"), [
    ("mail pat.jones@mail.example today", ["pat.jones@mail.example"]),
    ("cc: A.B+c@sub.example.org, x@y.io.", ["A.B+c@sub.example.org", "x@y.io"]),
])
def test_emails(text: str, expected: list[str]) -> None:
    assert found(text, "email") == expected


@pytest.mark.parametrize("text", ["meet @ 3pm", "user@localhost", "@riverside on social media"])
def test_email_negatives(text: str) -> None:
    assert found(text, "email") == []


@pytest.mark.parametrize(("text", "kind", "expected"), [
    ("has type 2 diabetes and hypertension", "diagnosis", ["type 2 diabetes", "hypertension"]),
    ("tiene hipertensión y asma", "diagnosis", ["hipertensión", "asma"]),
    ("Hx CHF, HTN", "diagnosis", ["CHF", "HTN"]),
    ("worried about hypertenion", "diagnosis", ["hypertenion"]),  # one typo in a long word
    ("on metformin 500 mg and Eliquis", "medication", ["metformin", "Eliquis"]),
    ("se le acabó el albuterol", "medication", ["albuterol"]),  # from the routing lexicon
    ("took metfromin", "medication", ["metfromin"]),
])
def test_clinical_terms(text: str, kind: str, expected: list[str]) -> None:
    assert found(text, kind) == expected


@pytest.mark.parametrize("text", [
    "I have a cough and a fever", "take 10 mg twice a day", "the flu shot clinic is Saturday",
    "a stroke of luck", "refill my inhaler", "la gota de agua",
])
def test_clinical_negatives(text: str) -> None:
    assert [f.kind for f in scan(text).findings if f.kind in ("diagnosis", "medication")] == []


@pytest.mark.parametrize(("text", "expected"), [
    ("ICD-10 E11.9", ["E11.9"]),
    ("dx E11", ["E11"]),
    ("99214, I10, E11.65, Z79.4", ["I10", "E11.65", "Z79.4"]),  # a bare code in a list of codes
    ("codes R51, G43.909", ["R51", "G43.909"]),
])
def test_icd10(text: str, expected: list[str]) -> None:
    assert found(text, "icd10") == expected


@pytest.mark.parametrize("text", ["Vitamin B12 and D3", "form B52, room C12", "A1C cartridges", "ICD-10 training"])
def test_icd10_negatives(text: str) -> None:
    assert found(text, "icd10") == []


def test_overlaps_keep_the_more_specific_kind() -> None:
    text = "SSN 123-45-6789, DOB 04/02/1980, MRN D100234"
    kinds = [(f.kind, text[f.start:f.end]) for f in scan(text).findings]
    assert kinds == [("ssn", "123-45-6789"), ("birth_date", "04/02/1980"), ("mrn", "D100234")]


def test_odd_text_never_raises() -> None:
    for text in ["", " ", "\x00\x01", "İ" * 50, "💊" * 20 + " metformin", "a" * 20_000, "1" * 5000, "@" * 300]:
        result = scan(text, names_on_file=NAMES)
        assert all(0 <= f.start < f.end <= len(text) for f in result.findings)


def _assessment(*kinds: str) -> Assessment:
    findings = tuple(Finding(k, i, i + 1) for i, k in enumerate(kinds))
    return Assessment(risk=rate(findings), findings=findings)


@pytest.mark.parametrize(("kinds", "risk"), [
    ((), "none"),
    (("diagnosis",), "low"),
    (("medication", "icd10"), "low"),
    (("phone",), "low"),
    (("email", "address"), "low"),
    (("phone", "diagnosis"), "high"),  # identifier + clinical term
    (("email", "medication"), "high"),
    (("name",), "high"),  # a patient of the clinic, named
    (("mrn",), "high"),
    (("ssn",), "high"),
    (("birth_date",), "high"),
])
def test_risk_rule(kinds: tuple[str, ...], risk: str) -> None:
    assert _assessment(*kinds).risk == risk


def test_kinds_are_sorted_and_distinct() -> None:
    assert _assessment("phone", "diagnosis", "phone").kinds() == ["diagnosis", "phone"]


@pytest.mark.parametrize("risk_kinds", [(), ("diagnosis",), ("name", "diagnosis")])
def test_always_mode_keeps_everything_in_the_message_center(risk_kinds: tuple[str, ...]) -> None:
    assert must_stay_secure("always", _assessment(*risk_kinds))


def test_adaptive_mode_keeps_only_high_risk() -> None:
    assert not must_stay_secure("adaptive", _assessment())
    assert not must_stay_secure("adaptive", _assessment("diagnosis"))
    assert must_stay_secure("adaptive", _assessment("phone", "diagnosis"))
    # An unknown mode is the safe one.
    assert must_stay_secure("sometimes", _assessment())


def test_end_to_end_text() -> None:
    text = "Jones, Pat (MRN D100234), DOB 3-14-62, type 2 diabetes on metformin. Call 617-555-0142."
    result = scan(text, names_on_file=NAMES)
    assert result.risk == "high"
    assert result.kinds() == ["birth_date", "diagnosis", "medication", "mrn", "name", "phone"]
    assert scan("Staff meeting moved to Thursday at 3pm, room 4.").risk == "none"


def test_scanning_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    from lockbox.phi.service import warm

    caplog.set_level(logging.DEBUG)
    warm()
    result = scan("Jones, Pat (MRN D100234) DOB 3-14-62 on metformin", names_on_file=NAMES)
    assert result.risk == "high"
    assert [r for r in caplog.records if r.name.startswith("lockbox")] == []


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=400)
       | st.lists(st.sampled_from(["Pat", "Jones", ",", " ", "617", "-555-", "0142", "DOB", "3/14/62", "E11", ".9",
                                   "MRN", "D100234", "metformin", "123", "Main", "St", "@", "mail.example", "\n"]),
                  max_size=40).map("".join))
def test_any_text_gives_sorted_disjoint_spans_inside_it(text: str) -> None:
    result = scan(text, names_on_file=NAMES)
    previous_end = 0
    for f in result.findings:
        assert previous_end <= f.start < f.end <= len(text)
        previous_end = f.end
    assert result.risk == rate(result.findings)
