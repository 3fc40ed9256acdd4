"""The rules watcher notices a changed or broken rules file with no message arriving; clinic holidays in the
rules file close the clinic (duty, clinic_open, holiday rules) and are skipped by business-day SLAs."""

from __future__ import annotations

import os
import time
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from lockbox.audit.models import Alert
from lockbox.db import Database
from lockbox.routing.rules import Facts, RulesError, RuleStore, Sla, parse_rules, store_for
from lockbox.routing.service import _raise_rule_alerts
from lockbox.routing.watch import RulesWatcher
from tests.routing.conftest import Routing

BILL = ("Question about my bill", "I was charged twice for my visit last month, can someone check my invoice?")


def _rewrite(path: Path, text: str) -> None:
    path.write_text(text)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))


def _alerts(db: Database) -> list[Alert]:
    return db.read_sync(lambda s: list(s.scalars(select(Alert).where(Alert.kind == "routing_rules_invalid"))))


def test_the_watcher_loads_a_change_and_alerts_on_a_bad_file_without_a_message(
        routing: Routing, rules_file: Path, db: Database) -> None:
    store = store_for(rules_file)
    store.check_every_s = 3600  # the decision path would not look again for an hour
    store.check_now()
    watcher = RulesWatcher(db)
    _rewrite(rules_file, "timezone: America/New_York\nrules: [{name: all-to-desk, pool: front-desk}]\n")
    assert watcher.check() is False
    assert store.current().names == {"all-to-desk"}  # picked up, not by a message
    _rewrite(rules_file, "rules: [{name: broken, pool: front-desk, when: {urgency: [whenever]}}]\n")
    assert watcher.check() is True
    alerts = _alerts(db)
    assert len(alerts) == 1 and alerts[0].details == {"rules_file": "rules.yaml", "problems": 1}
    assert store.current().names == {"all-to-desk"}  # the last good rules stay
    assert watcher.check() is False and len(_alerts(db)) == 1  # one alert per bad file
    assert routing.send(routing.c.patient, *BILL)["routing"]["rule"] == "all-to-desk"
    assert len(_alerts(db)) == 1  # the decision path does not raise it again


def test_the_watcher_thread_raises_the_alert_on_its_own(routing: Routing, rules_file: Path, db: Database) -> None:
    store = store_for(rules_file)
    store.check_every_s = 3600
    store.check_now()
    watcher = RulesWatcher(db, every_s=0.05)
    watcher.start()
    try:
        _rewrite(rules_file, "rules: nope\n")
        deadline = time.monotonic() + 10
        while not _alerts(db) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        watcher.stop()
    assert len(_alerts(db)) == 1



def test_two_processes_watching_one_bad_file_raise_one_alert(routing: Routing, rules_file: Path, db: Database) -> None:
    """Each server process has its own store for the file (a second RuleStore stands for the second process)."""
    ours, theirs = store_for(rules_file), RuleStore(rules_file, check_every_s=0)
    ours.check_now()
    theirs.current()
    _rewrite(rules_file, "rules: nope\n")
    assert RulesWatcher(db).check() is True
    theirs.current()
    assert theirs.pending_alerts
    db.write_sync(lambda s: _raise_rule_alerts(s, theirs))
    assert len(_alerts(db)) == 1
    _rewrite(rules_file, "rules: still nope\n")  # a new bad version is a new alert
    assert RulesWatcher(db).check() is True
    assert len(_alerts(db)) == 2


HOLIDAY_RULES = """
timezone: America/New_York
clinic_hours:
  default: {mon: "08:00-18:00", tue: "08:00-18:00", wed: "08:00-18:00", thu: "08:00-18:00", fri: "08:00-17:00"}
  north: {mon: "08:00-18:00", tue: "08:00-18:00", wed: "08:00-18:00", thu: "08:00-18:00", fri: "08:00-17:00"}
holidays:
  default: [2026-12-25, 2026-11-27, 2027-01-01]
  north: [2026-12-25]
sla: {emergency: 5m, urgent: 1h, routine: 2bd}
rules:
  - {name: emergency, when: {urgency: [emergency]}, pool: nurse-triage}
  - {name: holiday-desk, when: {holiday: true}, pool: answering-service}
  - {name: closed, when: {clinic_open: false}, pool: after-hours}
  - {name: rest, pool: front-desk}
"""
RULES = parse_rules(HOLIDAY_RULES)
CHRISTMAS_10AM_NY = datetime(2026, 12, 25, 15, 0, tzinfo=UTC)  # a Friday
DAY_AFTER_THANKSGIVING_10AM_NY = datetime(2026, 11, 27, 15, 0, tzinfo=UTC)


def test_a_holiday_closes_the_clinic_by_location() -> None:
    assert not RULES.is_open(None, CHRISTMAS_10AM_NY) and RULES.is_holiday(None, CHRISTMAS_10AM_NY)
    assert not RULES.is_open("north", CHRISTMAS_10AM_NY)
    # The north clinic keeps its own list: open the Friday after Thanksgiving, the main clinic is not.
    assert RULES.is_open("north", DAY_AFTER_THANKSGIVING_10AM_NY)
    assert not RULES.is_open("main", DAY_AFTER_THANKSGIVING_10AM_NY)
    # The clinic-local date decides: 23:30 on Christmas Eve in New York is 04:30 UTC on the 25th.
    assert RULES.is_open(None, datetime(2026, 12, 24, 15, 0, tzinfo=UTC))  # Christmas Eve, 10:00: open
    assert not RULES.is_holiday(None, datetime(2026, 12, 25, 4, 30, tzinfo=UTC))
    assert RULES.is_holiday(None, datetime(2026, 12, 26, 4, 30, tzinfo=UTC))


def test_a_holiday_rule_matches_before_the_closed_rule() -> None:
    on_holiday = Facts("routine", "billing", clinic_open=False, holiday=True)
    after_hours = Facts("routine", "billing", clinic_open=False, holiday=False)
    assert RULES.first_match(on_holiday).name == "holiday-desk"  # type: ignore[union-attr]
    assert RULES.first_match(after_hours).name == "closed"  # type: ignore[union-attr]
    assert RULES.first_match(Facts("emergency", "symptoms", holiday=True)).name == "emergency"  # type: ignore[union-attr]


@pytest.mark.parametrize(("start", "sla", "due"), [
    # Thu 24 Dec + 1bd: Fri 25 is Christmas, the weekend follows: Mon 28.
    (datetime(2026, 12, 24, 15, 0, tzinfo=UTC), "1bd", datetime(2026, 12, 28, 15, 0, tzinfo=UTC)),
    # Wed 25 Nov + 2bd: Thu 26 counts (Thanksgiving is not in this clinic's list), Fri 27 does not: Mon 30.
    (datetime(2026, 11, 25, 15, 0, tzinfo=UTC), "2bd", datetime(2026, 11, 30, 15, 0, tzinfo=UTC)),
    # Hours are hours, holiday or not.
    (datetime(2026, 12, 24, 15, 0, tzinfo=UTC), "1h", datetime(2026, 12, 24, 16, 0, tzinfo=UTC)),
])
def test_business_days_skip_holidays(start: datetime, sla: str, due: datetime) -> None:
    assert RULES.due(start, Sla.parse(sla)) == due


def test_a_plain_list_applies_everywhere_and_bad_dates_are_refused() -> None:
    rules = parse_rules("holidays: [2026-07-03]\nrules: [{name: a, pool: x}]")
    assert rules.holidays == {"default": frozenset({date(2026, 7, 3)})}
    assert not rules.is_open("anywhere", datetime(2026, 7, 3, 16, 0, tzinfo=UTC))  # no hours, yet a holiday
    with pytest.raises(RulesError) as err:
        parse_rules("holidays: [2026-02-30]\nrules: [{name: a, pool: x}]")
    assert err.value.problems == ["not valid YAML: a date that does not exist (holidays)"]
    with pytest.raises(RulesError) as err:
        parse_rules("holidays: [christmas]\nrules: [{name: a, pool: x}]")
    assert any(p.startswith("holidays") for p in err.value.problems)


def test_nobody_is_on_duty_on_a_holiday_and_the_holiday_rule_routes(routing: Routing, rules_file: Path) -> None:
    r, c = routing, routing.c
    _rewrite(rules_file, HOLIDAY_RULES.replace("2026-12-25", "2026-01-07"))  # the conftest's Wednesday
    out = r.send(c.patient, *BILL)
    assert out["routing"]["rule"] == "holiday-desk"
    duty = r.api(c.nurse).get("/routing/duty").json()
    assert duty["clinic_open"] is False
