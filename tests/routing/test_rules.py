"""The rules file: validation naming the rule, first-match selection, clinic hours and SLAs, hot reload."""

from __future__ import annotations

import os
from datetime import UTC, datetime, time
from pathlib import Path

import pytest

from lockbox.routing.rules import DEFAULT_RULES, Facts, RulesError, RuleStore, Sla, parse_rules

DEFAULTS = parse_rules(DEFAULT_RULES.read_text())

CUSTOM = parse_rules("""
timezone: America/Chicago
clinic_hours:
  default: {mon: "08:00-17:00", tue: "08:00-17:00", wed: "08:00-17:00", thu: "08:00-17:00", fri: "08:00-17:00"}
  north: {sat: "09:00-12:00"}
rules:
  - {name: emergency, when: {urgency: [emergency]}, pool: nurse-triage}
  - {name: post-op, when: {topic: [symptoms], recent_surgery_days: 30}, pool: surgery, sla: 4h}
  - {name: diabetes, when: {conditions: [E11], topic: [medication]}, pool: diabetes-nurses}
  - {name: spanish-billing, when: {topic: [billing], language: [es]}, pool: billing-es}
  - {name: staff-sent, when: {sender_role: [nurse]}, pool: front-desk}
  - {name: team-b-results, when: {topic: [results], care_team: [team-b]}, pool: results-b}
  - {name: north-clinic, when: {location: [north], topic: [scheduling]}, pool: north-desk}
  - {name: night-symptoms, when: {topic: [symptoms], hours: "18:00-08:00"}, pool: after-hours}
  - {name: weekend, when: {weekdays: [sat, sun]}, pool: weekend-desk}
  - {name: closed, when: {clinic_open: false}, pool: answering-service}
  - {name: symptoms, when: {topic: [symptoms]}, pool: nurse-triage, escalation: [pool, on_call]}
  - {name: rest, pool: front-desk}
""")


@pytest.mark.parametrize(("facts", "rule"), [
    (Facts("emergency", "symptoms"), "emergency"),
    (Facts("emergency", "billing", days_since_surgery=3), "emergency"),
    (Facts("routine", "symptoms", days_since_surgery=10), "post-op"),
    (Facts("routine", "symptoms", days_since_surgery=31), "symptoms"),
    (Facts("routine", "medication", conditions=("E11.9", "I10")), "diabetes"),
    (Facts("routine", "medication", conditions=("I10",)), "rest"),
    (Facts("routine", "billing", language="es"), "spanish-billing"),
    (Facts("routine", "billing", language="en"), "rest"),
    (Facts("routine", "other", sender_role="nurse"), "staff-sent"),
    (Facts("routine", "results", care_team="team-b"), "team-b-results"),
    (Facts("routine", "results", care_team="team-a"), "rest"),
    (Facts("routine", "scheduling", location="north"), "north-clinic"),
    (Facts("routine", "symptoms", local_time=time(22, 30)), "night-symptoms"),
    (Facts("routine", "symptoms", local_time=time(7, 59)), "night-symptoms"),
    (Facts("routine", "symptoms", local_time=time(8, 0)), "symptoms"),
    (Facts("routine", "other", weekday="sun"), "weekend"),
    (Facts("routine", "other", clinic_open=False), "closed"),
    (Facts("urgent", "administrative"), "rest"),
])
def test_first_matching_rule_wins(facts: Facts, rule: str) -> None:
    matched = CUSTOM.first_match(facts)
    assert matched is not None and matched.name == rule


@pytest.mark.parametrize(("facts", "rule", "pool"), [
    (Facts("emergency", "billing"), "emergency", "nurse-triage"),
    (Facts("urgent", "scheduling"), "urgent", "nurse-triage"),
    (Facts("routine", "symptoms"), "symptoms", "nurse-triage"),
    (Facts("routine", "medication"), "medication", "medication"),
    (Facts("routine", "results"), "results", "results"),
    (Facts("routine", "scheduling"), "scheduling", "scheduling"),
    (Facts("routine", "billing"), "billing", "billing"),
    (Facts("routine", "administrative"), "front-desk", "front-desk"),
    (Facts("routine", "other"), "front-desk", "front-desk"),
])
def test_shipped_rules_implement_the_contract_pools(facts: Facts, rule: str, pool: str) -> None:
    matched = DEFAULTS.first_match(facts)
    assert matched is not None and (matched.name, matched.pool) == (rule, pool)


def test_rule_sla_and_ladder_override_the_defaults() -> None:
    post_op = CUSTOM.first_match(Facts("routine", "symptoms", days_since_surgery=1))
    assert CUSTOM.sla_for(post_op, "routine").seconds == 4 * 3600
    symptoms = CUSTOM.first_match(Facts("routine", "symptoms"))
    assert CUSTOM.ladder_for(symptoms) == ("pool", "on_call")
    assert CUSTOM.ladder_for(None) == ("pool_lead", "on_call_physician")
    assert [DEFAULTS.sla[u].text for u in ("emergency", "urgent", "routine")] == ["5m", "1h", "2bd"]


@pytest.mark.parametrize(("text", "problem"), [
    ("rules: [{name: a, pool: x, when: {urgency: [sometimes]}}]", "rule 'a' (rules[0]): when.urgency.0"),
    ("rules: [{name: ok, pool: x}, {name: bad, pool: x, when: {hours: '25-3'}}]", "rule 'bad' (rules[1]): when.hours"),
    ("rules: [{name: a, pool: x, sla: soon}]", "rule 'a' (rules[0]): sla"),
    ("rules: [{name: a, pool: x, colour: red}]", "rule 'a' (rules[0]): colour"),
    ("rules: [{pool: x}]", "rules[0]: name"),
    ("rules: [{name: a, pool: x}, {name: a, pool: y}]", "rule 'a' (rules[1]): name already used"),
    ("rules: [{name: 'Not OK', pool: x}]", "rule 'Not OK' (rules[0]): name"),
    ("rules: [{name: a, pool: x, escalation: [the_boss]}]", "rule 'a' (rules[0]): escalation.0"),
    ("timezone: Mars/Olympus\nrules: [{name: a, pool: x}]", "timezone"),
    ("rules: []", "rules"),
    ("rules: [{name: a, pool: x}", "not valid YAML at line"),
    ("- just a list", "mapping"),
])
def test_bad_files_are_refused_naming_the_rule(text: str, problem: str) -> None:
    with pytest.raises(RulesError) as err:
        parse_rules(text)
    assert any(p.startswith(problem) or problem in p for p in err.value.problems), err.value.problems


def test_every_bad_rule_is_reported() -> None:
    with pytest.raises(RulesError) as err:
        parse_rules("rules: [{name: a, pool: x, sla: 0m}, {name: b, pool: x}, {name: c, when: {topic: [x]}}]")
    assert len(err.value.problems) == 3  # a: sla; c: pool missing, topic wrong
    assert sum("rule 'c'" in p for p in err.value.problems) == 2


def test_clinic_hours_in_clinic_local_time() -> None:
    # 2026-01-07 is a Wednesday; Chicago is UTC-6 in January.
    assert CUSTOM.is_open(None, datetime(2026, 1, 7, 14, 0, tzinfo=UTC))  # 08:00 local
    assert not CUSTOM.is_open(None, datetime(2026, 1, 7, 13, 59, tzinfo=UTC))
    assert not CUSTOM.is_open(None, datetime(2026, 1, 7, 23, 0, tzinfo=UTC))  # 17:00 local: closed
    saturday = datetime(2026, 1, 10, 16, 0, tzinfo=UTC)  # 10:00 local
    assert CUSTOM.is_open("north", saturday) and not CUSTOM.is_open("main", saturday)
    assert parse_rules("rules: [{name: a, pool: x}]").is_open(None, saturday)  # no hours: always open


@pytest.mark.parametrize(("start", "sla", "due"), [
    (datetime(2026, 1, 7, 15, 0, tzinfo=UTC), "5m", datetime(2026, 1, 7, 15, 5, tzinfo=UTC)),
    (datetime(2026, 1, 7, 15, 0, tzinfo=UTC), "1h", datetime(2026, 1, 7, 16, 0, tzinfo=UTC)),
    (datetime(2026, 1, 7, 15, 0, tzinfo=UTC), "2bd", datetime(2026, 1, 9, 15, 0, tzinfo=UTC)),  # Wed -> Fri
    (datetime(2026, 1, 8, 15, 0, tzinfo=UTC), "2bd", datetime(2026, 1, 12, 15, 0, tzinfo=UTC)),  # Thu -> Mon
    (datetime(2026, 1, 10, 15, 0, tzinfo=UTC), "1bd", datetime(2026, 1, 12, 15, 0, tzinfo=UTC)),  # Sat -> Mon
    (datetime(2026, 3, 6, 15, 0, tzinfo=UTC), "1bd", datetime(2026, 3, 9, 14, 0, tzinfo=UTC)),  # over DST
])
def test_business_days_skip_closed_days(start: datetime, sla: str, due: datetime) -> None:
    assert CUSTOM.due(start, Sla.parse(sla)) == due


def _write(path: Path, text: str, bump: int) -> None:
    path.write_text(text)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + bump * 1_000_000_000))


def test_store_reloads_on_change_and_keeps_the_last_good_rules(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    _write(path, "rules: [{name: first, pool: a}]", 0)
    store = RuleStore(path, check_every_s=0)
    assert store.current().rules[0].name == "first"
    _write(path, "rules: [{name: second, pool: b}]", 1)
    assert store.current().rules[0].name == "second"
    _write(path, "rules: [{name: third, pool: b, when: {urgency: [maybe]}}]", 2)
    assert store.current().rules[0].name == "second"
    alerts = store.take_alerts()
    assert len(alerts) == 1 and "rule 'third'" in alerts[0][1][0]
    assert store.current().rules[0].name == "second" and not store.take_alerts()  # reported once
    _write(path, "rules: [{name: fourth, pool: b}]", 3)
    assert store.current().rules[0].name == "fourth"


def test_store_checks_the_file_at_most_every_interval(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    _write(path, "rules: [{name: first, pool: a}]", 0)
    store = RuleStore(path, check_every_s=3600)
    assert store.current().rules[0].name == "first"
    _write(path, "rules: [{name: second, pool: b}]", 1)
    assert store.current().rules[0].name == "first"


def test_a_bad_file_at_start_routes_by_the_shipped_rules(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("rules: nope")
    store = RuleStore(path, check_every_s=0)
    assert store.current().names == DEFAULTS.names
    assert store.take_alerts()
