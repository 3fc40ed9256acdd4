"""The directory file (ARCHITECTURE section 5) and how it is read: YAML to models, errors with lines.

PyYAML does not say where a mapping came from once it is built, so the loader below keeps each
mapping's and each item's line; errors then point at the line without repeating its (PHI) values.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    StringConstraints,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from lockbox.directory.exceptions import InvalidDirectory
from lockbox.identity.roles import STAFF_ROLES, Role

MAX_REPORTED_PROBLEMS = 20
STAFF_ROLE_NAMES = tuple(r.value for r in Role if r in STAFF_ROLES)

_USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_IDENT = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_PHONE = re.compile(r"\+?[0-9][0-9 ().-]{2,30}")
_MRN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,63}")
_KEY_NAME = re.compile(r"[a-z_]{1,40}")


# -- field types ---------------------------------------------------------------------------------
# Custom messages so an error explains the rule without repeating the value (which may be PHI).


def _matching(pattern: re.Pattern[str], kind: str, rule: str) -> AfterValidator:
    def check(value: str) -> str:
        if not pattern.fullmatch(value):
            raise PydanticCustomError(kind, "{rule}", {"rule": rule})
        return value

    return AfterValidator(check)


def _staff_role(value: object) -> object:
    if value not in STAFF_ROLE_NAMES:
        raise PydanticCustomError("staff_role", "Input should be a staff role: {roles}",
                                  {"roles": ", ".join(STAFF_ROLE_NAMES)})
    return value


def _calendar_date(value: object) -> object:
    # pydantic would read a bare number as a Unix timestamp, silently turning 19800402 into 1970.
    if isinstance(value, datetime) or not isinstance(value, date | str):
        raise PydanticCustomError("date_format", "Input should be a date written YYYY-MM-DD")
    return value


def _past_date(value: date) -> date:
    if value > datetime.now(UTC).date():
        raise PydanticCustomError("date_future", "Input should not be in the future")
    return value


def _timestamp(value: object) -> object:
    if not isinstance(value, datetime | str):
        raise PydanticCustomError("datetime_format",
                                  "Input should be a date and time with its zone, e.g. 2026-01-01T18:00:00Z")
    return value


Username = Annotated[str, _matching(_USERNAME, "username", "Input should be a username: 1 to 64 letters, "
                                    "digits, '.', '_', '@' or '-', starting with a letter or digit")]
Ident = Annotated[str, _matching(_IDENT, "identifier", "Input should be an id: 1 to 64 lower-case letters, "
                                 "digits, '.', '_' or '-', starting with a letter or digit")]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Email = Annotated[str, Field(max_length=254), _matching(_EMAIL, "email", "Input should be an email address")]
Phone = Annotated[str, _matching(_PHONE, "phone", "Input should be a phone number such as \"+15550100\"")]
Mrn = Annotated[str, _matching(_MRN, "mrn", "Input should be a medical record number: 1 to 64 letters, "
                               "digits, '.', '_', '/' or '-'")]
StaffRole = Annotated[Role, BeforeValidator(_staff_role)]
BirthDate = Annotated[date, BeforeValidator(_calendar_date), AfterValidator(_past_date)]
Timestamp = Annotated[AwareDatetime, BeforeValidator(_timestamp)]


# -- the file's entries --------------------------------------------------------------------------


class Entry(BaseModel):
    """One item of a section; remembers its line so errors found later can point at it."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    _line: int | None = PrivateAttr(default=None)

    @model_validator(mode="wrap")
    @classmethod
    def _remember_line(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        entry = handler(data)
        entry._line = getattr(data, "line", None)
        return entry

    @property
    def line(self) -> int | None:
        """Where the entry starts in the YAML file (1-based), when it came from one."""
        return self._line


class LocationEntry(Entry):
    id: Ident
    name: Name


class CareTeamEntry(Entry):
    id: Ident
    name: Name
    location: Ident | None = None


class PoolEntry(Entry):
    id: Ident
    name: Name
    roles: list[StaffRole] = Field(default_factory=list)
    members: list[Username] = Field(default_factory=list)
    lead: Username | None = None


class StaffEntry(Entry):
    username: Username
    display_name: Name
    role: StaffRole
    location: Ident | None = None
    care_teams: list[Ident] = Field(default_factory=list)
    email: Email | None = None
    phone: Phone | None = None


class PatientEntry(Entry):
    username: Username
    display_name: Name
    mrn: Mrn
    birth_date: BirthDate
    pcp: Username | None = None
    care_team: Ident | None = None
    consent: Literal["granted", "declined", "none"] = "none"
    email: Email | None = None
    phone: Phone | None = None


class OnCallEntry(Entry):
    pool: Ident
    username: Username
    starts_at: Timestamp = Field(alias="from")
    ends_at: Timestamp = Field(alias="to")

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.ends_at <= self.starts_at:
            raise PydanticCustomError("shift_order", "'to' should be after 'from'")
        return self


class DirectoryFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    organization: Name | None = None
    locations: list[LocationEntry] = Field(default_factory=list)
    care_teams: list[CareTeamEntry] = Field(default_factory=list)
    pools: list[PoolEntry] = Field(default_factory=list)
    staff: list[StaffEntry] = Field(default_factory=list)
    patients: list[PatientEntry] = Field(default_factory=list)
    on_call: list[OnCallEntry] = Field(default_factory=list)


# -- reading YAML with line numbers --------------------------------------------------------------


class _LineMap(dict[Any, Any]):
    line: int = 0
    key_lines: dict[Any, int]


class _LineList(list[Any]):
    line: int = 0
    item_lines: list[int]


class _LineLoader(yaml.SafeLoader):
    """SafeLoader (no Python objects) whose mappings and sequences remember their lines."""


def _construct_map(loader: _LineLoader, node: yaml.MappingNode) -> _LineMap:
    loader.flatten_mapping(node)  # resolves `<<: *anchor` merge keys like SafeLoader does
    mapping = _LineMap()
    mapping.line = node.start_mark.line + 1
    mapping.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "found an unhashable key", key_node.start_mark
            ) from None
        if key in mapping:
            # PyYAML would keep the last value silently; a doubled key is almost always a mistake.
            shown = f" {key!r}" if isinstance(key, str) and _KEY_NAME.fullmatch(key) else ""
            raise yaml.constructor.ConstructorError(
                None, None, f"found a duplicate key{shown}", key_node.start_mark
            )
        mapping[key] = loader.construct_object(value_node, deep=True)
        mapping.key_lines[key] = key_node.start_mark.line + 1
    return mapping


def _construct_seq(loader: _LineLoader, node: yaml.SequenceNode) -> _LineList:
    items = _LineList(loader.construct_object(child, deep=True) for child in node.value)
    items.line = node.start_mark.line + 1
    items.item_lines = [child.start_mark.line + 1 for child in node.value]
    return items


def _construct_timestamp(loader: _LineLoader, node: yaml.ScalarNode) -> Any:
    try:
        return yaml.SafeLoader.construct_yaml_timestamp(loader, node)
    except ValueError:  # e.g. 1980-02-30: PyYAML raises a bare ValueError without a position
        raise yaml.constructor.ConstructorError(
            None, None, "not a valid date or time", node.start_mark
        ) from None


_LineLoader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_LineLoader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)
_LineLoader.add_constructor("tag:yaml.org,2002:timestamp", _construct_timestamp)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    # Only PyYAML's own wording and position: str(exc) would quote the offending line, which may be PHI.
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "not valid YAML"
        if exc.problem and exc.context:
            problem = f"{problem} ({exc.context})"
        if mark is not None:
            return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
        return problem
    return "not valid YAML"


def entry_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "file"


def _line_of(raw: Any, loc: tuple[int | str, ...]) -> int | None:
    """The line of the deepest node along ``loc`` that the YAML recorded."""
    node, line = raw, None
    for part in loc:
        if isinstance(node, _LineMap) and part in node:
            line = node.key_lines.get(part, node.line)
            node = node[part]
        elif isinstance(node, _LineList) and isinstance(part, int) and 0 <= part < len(node):
            line = node.item_lines[part]
            node = node[part]
        else:
            break
    return line


def _validation_problems(exc: ValidationError, raw: Any) -> str:
    problems = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        msg = err["msg"]
        value = err.get("input")
        if err["type"] == "string_type" and isinstance(value, int | float) and not isinstance(value, bool):
            msg += " (put numbers such as MRNs and phone numbers in quotes)"
        line = _line_of(raw, loc)
        problems.append(f"{entry_path(loc)}: {msg}" + (f" (line {line})" if line else ""))
    extra = len(problems) - MAX_REPORTED_PROBLEMS
    problems = problems[:MAX_REPORTED_PROBLEMS]
    if extra > 0:
        problems.append(f"... and {extra} more")
    return "\n".join(problems)


def parse_directory(text: str | bytes) -> DirectoryFile:
    """Validate a directory file's text; raises :class:`InvalidDirectory` naming the line or entry path."""
    try:
        raw = yaml.load(text, Loader=_LineLoader)  # noqa: S506 - _LineLoader is a SafeLoader
    except yaml.YAMLError as exc:
        raise InvalidDirectory(_yaml_problem(exc)) from None
    if raw is None:
        raise InvalidDirectory("the file is empty")
    if not isinstance(raw, dict):
        raise InvalidDirectory(
            "line 1: the file should be a mapping with organization, locations, care_teams, pools, "
            "staff, patients and on_call"
        )
    try:
        return DirectoryFile.model_validate(raw)
    except ValidationError as exc:
        raise InvalidDirectory(_validation_problems(exc, raw)) from None


def read_directory_file(path: Path) -> DirectoryFile:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidDirectory(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidDirectory(f"{path} is not UTF-8 text (byte {exc.start + 1})") from None
    return parse_directory(text)
