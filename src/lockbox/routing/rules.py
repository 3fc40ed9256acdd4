"""Routing rules as data: the YAML file's shape (validated with Pydantic, errors naming the rule), clinic
hours, SLAs, first-match rule selection, and a store that reloads the file when it changes.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from datetime import time as dtime
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

log = logging.getLogger(__name__)

DEFAULT_RULES = Path(__file__).with_name("default_rules.yaml")
URGENCIES = ("emergency", "urgent", "routine")
TOPICS = ("symptoms", "medication", "results", "scheduling", "billing", "administrative", "other")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
TIERS = ("pool_lead", "on_call_physician", "on_call", "pool")
CHECK_EVERY_S = 2.0

Urgency = Literal["emergency", "urgent", "routine"]
Topic = Literal["symptoms", "medication", "results", "scheduling", "billing", "administrative", "other"]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
Tier = Literal["pool_lead", "on_call_physician", "on_call", "pool"]

_DEFAULT_LADDER: tuple[Tier, ...] = ("pool_lead", "on_call_physician")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_DURATION = re.compile(r"^(\d+)\s*(s|m|h|d|bd)$")
_SPAN = re.compile(r"^(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})$")


class RulesError(Exception):
    """The rules file cannot be used; ``problems`` name the rule (or section) and the field."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))

    def __reduce__(self) -> tuple[Any, ...]:  # as raised, from the writer process too
        return type(self), (self.problems,)


# -- values ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sla:
    """A response time: seconds, or whole business days (clinic days, at the same local time)."""

    text: str
    seconds: int = 0
    business_days: int = 0

    @classmethod
    def parse(cls, text: str) -> Sla:
        m = _DURATION.match(str(text).strip())
        if not m:
            raise ValueError("a duration is a number and a unit: 90s, 5m, 1h, 1d or 2bd (business days)")
        n, unit = int(m.group(1)), m.group(2)
        if n <= 0:
            raise ValueError("a duration must be positive")
        if unit == "bd":
            return cls(text, business_days=n)
        return cls(text, seconds=n * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit])


def _parse_span(text: str) -> tuple[dtime, dtime]:
    m = _SPAN.match(text.replace(" ", ""))
    if not m:
        raise ValueError("hours are written HH:MM-HH:MM")
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    if not (h1 <= 24 and h2 <= 24 and m1 < 60 and m2 < 60):
        raise ValueError("hours are written HH:MM-HH:MM")
    start = dtime(min(h1, 23), m1 if h1 < 24 else 59)
    end = dtime(23, 59, 59) if h2 == 24 else dtime(h2, m2)
    return start, end


def _in_span(span: tuple[dtime, dtime], at: dtime) -> bool:
    start, end = span
    if start <= end:
        return start <= at < end
    return at >= start or at < end  # wraps midnight: "18:00-08:00"


# -- the file's shape --------------------------------------------------------------------------------


class When(BaseModel):
    """Every condition given must hold; a list matches any of its values. Absent means "any"."""

    model_config = ConfigDict(extra="forbid")

    urgency: list[Urgency] | None = None
    topic: list[Topic] | None = None
    sender_role: list[str] | None = None
    language: list[str] | None = None
    care_team: list[str] | None = None
    location: list[str] | None = None
    # Condition codes (ICD-10, SNOMED …) as given by the context provider; a code matches by prefix.
    conditions: list[str] | None = None
    recent_surgery_days: int | None = Field(default=None, ge=0, le=3650)
    recent_encounter_days: int | None = Field(default=None, ge=0, le=3650)
    hours: str | None = None  # clinic-local HH:MM-HH:MM
    weekdays: list[Weekday] | None = None
    clinic_open: bool | None = None
    holiday: bool | None = None  # a clinic holiday (the file's holidays) for the patient's location

    @field_validator("hours")
    @classmethod
    def _hours(cls, value: str | None) -> str | None:
        if value is not None:
            _parse_span(value)
        return value


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    when: When = Field(default_factory=When)
    pool: str = Field(min_length=1, max_length=64)
    sla: str | None = None
    escalation: list[Tier] | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("a rule name is lower-case letters, digits, '-', '_' or '.' (at most 64)")
        return value

    @field_validator("sla")
    @classmethod
    def _sla(cls, value: str | None) -> str | None:
        if value is not None:
            Sla.parse(value)
        return value


class _Header(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    timezone: str = "UTC"
    # Per location id, plus "default": weekday -> "HH:MM-HH:MM"; a missing weekday is closed.
    clinic_hours: dict[str, dict[Weekday, str]] = Field(default_factory=dict)
    # Days the clinic is closed although the weekday is open: a list for every location, or per location id
    # plus "default". A clinic's own list (open on Veterans Day, closed the Friday after Thanksgiving), kept in
    # the file that is validated and hot-reloaded, rather than a country's public-holiday calendar.
    holidays: list[date] | dict[str, list[date]] = Field(default_factory=list)
    sla: dict[Urgency, str] = Field(default_factory=dict)
    escalation: list[Tier] = Field(default_factory=lambda: list(_DEFAULT_LADDER))
    # Where an emergency's call-back task goes and whose on-call person is paged.
    emergency_pool: str = "nurse-triage"
    rules: list[Any] = Field(min_length=1)

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @field_validator("clinic_hours")
    @classmethod
    def _clinic_hours(cls, value: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        for days in value.values():
            for span in days.values():
                _parse_span(span)
        return value

    @field_validator("sla")
    @classmethod
    def _slas(cls, value: dict[str, str]) -> dict[str, str]:
        for text in value.values():
            Sla.parse(text)
        return value

    @model_validator(mode="after")
    def _ladder(self) -> _Header:
        if not self.escalation:
            raise ValueError("escalation needs at least one tier")
        return self


DEFAULT_SLA: dict[str, str] = {"emergency": "5m", "urgent": "1h", "routine": "2bd"}


# -- compiled rules ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Facts:
    """What a rule may look at, all PHI-free codes and ids."""

    urgency: str
    topic: str
    language: str = "en"
    sender_role: str = "patient"
    care_team: str | None = None
    location: str | None = None
    conditions: tuple[str, ...] = ()
    days_since_surgery: int | None = None
    days_since_encounter: int | None = None
    local_time: dtime = dtime(12, 0)
    weekday: str = "mon"
    clinic_open: bool = True
    holiday: bool = False


@dataclass(frozen=True)
class CompiledRule:
    name: str
    when: When
    pool: str
    sla: Sla | None
    escalation: tuple[str, ...] | None
    hours: tuple[dtime, dtime] | None

    def matches(self, f: Facts) -> bool:
        w = self.when
        if w.urgency is not None and f.urgency not in w.urgency:
            return False
        if w.topic is not None and f.topic not in w.topic:
            return False
        if w.sender_role is not None and f.sender_role not in w.sender_role:
            return False
        if w.language is not None and f.language not in w.language:
            return False
        if w.care_team is not None and f.care_team not in w.care_team:
            return False
        if w.location is not None and f.location not in w.location:
            return False
        if w.conditions is not None and not any(c.startswith(p) for c in f.conditions for p in w.conditions):
            return False
        if w.recent_surgery_days is not None and (
                f.days_since_surgery is None or f.days_since_surgery > w.recent_surgery_days):
            return False
        if w.recent_encounter_days is not None and (
                f.days_since_encounter is None or f.days_since_encounter > w.recent_encounter_days):
            return False
        if self.hours is not None and not _in_span(self.hours, f.local_time):
            return False
        if w.weekdays is not None and f.weekday not in w.weekdays:
            return False
        if w.holiday is not None and f.holiday != w.holiday:
            return False
        return not (w.clinic_open is not None and f.clinic_open != w.clinic_open)


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[CompiledRule, ...]
    tz: ZoneInfo
    clinic_hours: dict[str, dict[str, tuple[dtime, dtime]]]
    sla: dict[str, Sla]
    escalation: tuple[str, ...]
    emergency_pool: str
    source: str = "default"
    names: frozenset[str] = field(default_factory=frozenset)
    holidays: dict[str, frozenset[date]] = field(default_factory=dict)  # location id or "default" -> days

    def first_match(self, facts: Facts) -> CompiledRule | None:
        for rule in self.rules:
            if rule.matches(facts):
                return rule
        return None

    def sla_for(self, rule: CompiledRule | None, urgency: str) -> Sla:
        if rule is not None and rule.sla is not None:
            return rule.sla
        return self.sla[urgency]

    def ladder_for(self, rule: CompiledRule | None) -> tuple[str, ...]:
        return rule.escalation if rule is not None and rule.escalation else self.escalation

    def local(self, at: datetime) -> datetime:
        return at.astimezone(self.tz)

    def hours_for(self, location: str | None) -> dict[str, tuple[dtime, dtime]] | None:
        """A location's week, the default week, or None when the file sets no clinic hours (always open)."""
        if not self.clinic_hours:
            return None
        if location is not None and location in self.clinic_hours:
            return self.clinic_hours[location]
        return self.clinic_hours.get("default", {})

    def is_holiday(self, location: str | None, at: datetime) -> bool:
        """Whether the clinic-local day of ``at`` is a holiday at the location (its own list, else the default)."""
        if not self.holidays:
            return False
        days = self.holidays.get(location, self.holidays.get("default", frozenset())) if location is not None \
            else self.holidays.get("default", frozenset())
        return self.local(at).date() in days

    def is_open(self, location: str | None, at: datetime) -> bool:
        week = self.hours_for(location)
        if week is None:
            return not self.is_holiday(location, at)
        local = self.local(at)
        span = week.get(WEEKDAYS[local.weekday()])
        return span is not None and _in_span(span, local.time()) and not self.is_holiday(location, at)

    def due(self, start: datetime, sla: Sla) -> datetime:
        """When a response is due; business days skip the days the clinic is closed (weekly and holidays)."""
        if not sla.business_days:
            return start + timedelta(seconds=sla.seconds)
        week = self.hours_for(None)
        open_days = set(week) if week else set(WEEKDAYS[:5])
        if not open_days:
            open_days = set(WEEKDAYS[:5])
        closed = self.holidays.get("default", frozenset())
        local = self.local(start)
        left = sla.business_days
        while left:
            local = (local + timedelta(days=1)).replace(tzinfo=self.tz)
            # Re-resolve the zone offset so a DST change keeps the same wall-clock time.
            local = datetime.combine(local.date(), local.timetz().replace(tzinfo=None), self.tz)
            if WEEKDAYS[local.weekday()] in open_days and local.date() not in closed:
                left -= 1
        return local.astimezone(start.tzinfo)


def _sla_text(given: dict[Any, str], urgency: str) -> str:
    return given.get(urgency) or DEFAULT_SLA[urgency]


def _problem_loc(err: Any) -> str:
    loc = ".".join(str(p) for p in err.get("loc", ()))
    return f"{loc}: {err.get('msg', 'invalid')}" if loc else str(err.get("msg", "invalid"))


def parse_rules(text: str, *, source: str = "rules") -> RuleSet:
    """Validate a rules file's text. Every problem is reported, each naming its rule or section."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise RulesError([f"not valid YAML{where}"]) from None
    except ValueError:  # a well-formed date that does not exist (2026-02-30) fails while the YAML is read
        raise RulesError(["not valid YAML: a date that does not exist (holidays)"]) from None
    if not isinstance(raw, dict):
        raise RulesError(["the rules file is a mapping with a 'rules' list"])
    problems: list[str] = []
    try:
        header = _Header.model_validate(raw)
    except ValidationError as exc:
        raise RulesError([_problem_loc(e) for e in exc.errors()]) from None
    rules: list[CompiledRule] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(header.rules):
        name = item.get("name") if isinstance(item, dict) else None
        label = f"rule {name!r} (rules[{i}])" if isinstance(name, str) else f"rules[{i}]"
        try:
            rule = Rule.model_validate(item)
        except ValidationError as exc:
            problems += [f"{label}: {_problem_loc(e)}" for e in exc.errors()]
            continue
        if rule.name in seen:
            problems.append(f"{label}: name already used by rules[{seen[rule.name]}]")
            continue
        seen[rule.name] = i
        rules.append(CompiledRule(
            name=rule.name, when=rule.when, pool=rule.pool,
            sla=Sla.parse(rule.sla) if rule.sla else None,
            escalation=tuple(rule.escalation) if rule.escalation else None,
            hours=_parse_span(rule.when.hours) if rule.when.hours else None,
        ))
    if problems:
        raise RulesError(problems)
    return RuleSet(
        rules=tuple(rules),
        tz=ZoneInfo(header.timezone),
        clinic_hours={loc: {d: _parse_span(s) for d, s in days.items()} for loc, days in header.clinic_hours.items()},
        sla={u: Sla.parse(_sla_text(header.sla, u)) for u in URGENCIES},
        escalation=tuple(header.escalation),
        emergency_pool=header.emergency_pool,
        source=source,
        names=frozenset(seen),
        holidays=_holidays(header.holidays),
    )


def _holidays(given: list[date] | dict[str, list[date]]) -> dict[str, frozenset[date]]:
    if isinstance(given, list):
        return {"default": frozenset(given)} if given else {}
    return {loc: frozenset(days) for loc, days in given.items()}


# -- the store: hot reload ---------------------------------------------------------------------------


@dataclass
class _Loaded:
    rules: RuleSet
    mtime_ns: int


class RuleStore:
    """The rules in force for one file. The file's mtime is looked at, at most every ``CHECK_EVERY_S``,
    on the decision path itself, and by the server's watcher (routing.watch) when no message arrives; a
    change is parsed once. A bad file keeps the last good rules and leaves a pending alert for the next
    unit of work (or the watcher) to raise."""

    def __init__(self, path: Path | None, *, check_every_s: float = CHECK_EVERY_S) -> None:
        self.path = path or DEFAULT_RULES
        self.check_every_s = check_every_s
        self._lock = threading.Lock()
        self._loaded: _Loaded | None = None
        self._checked_at = float("-inf")
        self._seen_mtime: int | None = None
        self.pending_alerts: list[tuple[int, list[str]]] = []

    def current(self) -> RuleSet:
        now = time.monotonic()
        loaded = self._loaded
        if loaded is not None and now - self._checked_at < self.check_every_s:
            return loaded.rules
        with self._lock:
            if self._loaded is None or now - self._checked_at >= self.check_every_s:
                self._checked_at = now
                self._refresh()
            assert self._loaded is not None
            return self._loaded.rules

    def check_now(self) -> RuleSet:
        """Look at the file now, whatever the interval (the watcher's call)."""
        with self._lock:
            self._checked_at = time.monotonic()
            self._refresh()
            assert self._loaded is not None
            return self._loaded.rules

    def _refresh(self) -> None:
        try:
            mtime = self.path.stat().st_mtime_ns
        except OSError:
            mtime = -1
        if mtime == self._seen_mtime and self._loaded is not None:
            return
        self._seen_mtime = mtime
        try:
            if mtime < 0:
                raise RulesError([f"cannot read the rules file {self.path.name}"])
            rules = parse_rules(self.path.read_text(encoding="utf-8"), source=self.path.name)
        except (RulesError, OSError, UnicodeDecodeError) as exc:
            problems = exc.problems if isinstance(exc, RulesError) else [f"cannot read {self.path.name}"]
            log.error("routing rules %s rejected, keeping the last good rules: %s", self.path.name,
                      "; ".join(problems))
            self.pending_alerts.append((mtime, problems))
            if self._loaded is None:
                # Never route without rules: the shipped defaults stand in until the file is fixed.
                self._loaded = _Loaded(parse_rules(DEFAULT_RULES.read_text(encoding="utf-8"), source="default"),
                                       -1)
            return
        if self._loaded is not None:
            log.info("routing rules %s reloaded (%d rules)", self.path.name, len(rules.rules))
        self._loaded = _Loaded(rules, mtime)

    def take_alerts(self) -> list[tuple[int, list[str]]]:
        with self._lock:
            out, self.pending_alerts = self.pending_alerts, []
            return out

    def restore_alerts(self, alerts: Sequence[tuple[int, list[str]]]) -> None:
        with self._lock:
            self.pending_alerts[:0] = list(alerts)


_stores: dict[Path, RuleStore] = {}
_stores_lock = threading.Lock()


def store_for(path: Path | None) -> RuleStore:
    key = (path or DEFAULT_RULES).resolve()
    store = _stores.get(key)
    if store is None:
        with _stores_lock:
            store = _stores.setdefault(key, RuleStore(key))
    return store
