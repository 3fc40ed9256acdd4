"""Core statements compiled once per dialect and run straight on the unit's driver connection.

The send path runs a dozen statements per message. Through ``Connection.execute`` each pays about
30 µs of SQLAlchemy's per-call work (cache key, execution context, result wrapping), three to ten
times what SQLite or psycopg itself spends on the statement, and the writer thread shares one core
(the GIL) with the HTTP stack. A ``Prepared`` statement is still written and compiled by
SQLAlchemy, with its bind and result type processing; only the per-call machinery is skipped. It
runs inside the unit's transaction (and savepoint), on the same connection the ORM uses, so it
sees and is seen by everything else in the unit except ORM changes not yet flushed. No library
offers this (SQLAlchemy's own "baked" queries cache compilation, not execution).
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, cast

from sqlalchemy import Connection
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

Processor = Callable[[Any], Any]
# A SAVEPOINT held back by the writer (``lockbox.db.engine``, PostgreSQL), in the driver connection's
# ``info``: the next statement sends it in the same pipeline, one round trip for both.
PENDING_SAVEPOINT = "lockbox.pending_savepoint"


class _Form(NamedTuple):
    sql: str
    positional: tuple[str, ...] | None  # bind names in order (qmark), or None for named binds
    defaults: dict[str, Any]  # values fixed in the statement itself (``values(status="open")``)
    binds: tuple[tuple[str, Processor], ...]  # bind processors, by name
    results: tuple[tuple[int, Processor], ...]  # result processors, by column index
    row: Callable[..., tuple[Any, ...]] | None  # named row type, for statements that return rows


def _compile(stmt: ClauseElement, dialect: Dialect) -> _Form:
    compiled = cast(SQLCompiler, stmt.compile(dialect=dialect))
    names = compiled.bind_names
    defaults = {name: bp.value for bp, name in names.items() if not bp.required and bp.callable is None}
    binds: list[tuple[str, Processor]] = []
    for name, proc in compiled._bind_processors.items():
        if not callable(proc):  # tuple-typed binds process per element: not on the send path
            raise NotImplementedError(f"bind {name!r} needs per-element processing")
        binds.append((name, proc))
    if any(bp.expanding for bp in names):
        raise NotImplementedError("expanding (IN) binds are rendered per call: use Connection.execute")
    columns = compiled._result_columns or []
    results = tuple(
        (i, rproc) for i, col in enumerate(columns)
        if (rproc := col.type._cached_result_processor(dialect, None)) is not None
    )
    row = namedtuple("Row", [col.keyname for col in columns], rename=True) if columns else None
    positional = tuple(compiled.positiontup or ()) if compiled.positional else None
    return _Form(compiled.string, positional, defaults, tuple(binds), results, row)


class Prepared:
    """One statement; ``first``/``all``/``run`` take the unit's Session (or Connection) and bind values."""

    __slots__ = ("_forms", "stmt")

    def __init__(self, stmt: ClauseElement) -> None:
        self.stmt = stmt
        self._forms: dict[str, _Form] = {}

    def _execute(self, target: Session | Connection, params: Mapping[str, Any]) -> tuple[_Form, Any]:
        conn = target.connection() if isinstance(target, Session) else target
        dialect = conn.dialect
        form = self._forms.get(dialect.name)
        if form is None:
            form = self._forms[dialect.name] = _compile(self.stmt, dialect)
        values = {**form.defaults, **params}
        for name, proc in form.binds:
            values[name] = proc(values[name])
        args: Any = values if form.positional is None else tuple(values[name] for name in form.positional)
        driver: Any = conn.connection.driver_connection
        cursor = driver.cursor()
        savepoint = conn.connection.info.pop(PENDING_SAVEPOINT, None) if dialect.name == "postgresql" else None
        try:
            if savepoint is None:
                cursor.execute(form.sql, args)
            else:
                with driver.pipeline():  # leaving it waits for both results; an error of either is raised
                    driver.execute(savepoint)
                    cursor.execute(form.sql, args)
        except dialect.loaded_dbapi.Error as exc:
            # Raised as Connection.execute raises it (IntegrityError, DataError... with the driver's error as
            # ``orig``), so what handles the ORM path's errors handles these too: a NUL in text is bad input.
            # The values stay out of the message: they may be PHI.
            raise DBAPIError.instance(form.sql, args, exc, dialect.loaded_dbapi.Error, hide_parameters=True,
                                      dialect=dialect) from exc
        return form, cursor

    def _row(self, form: _Form, raw: Any) -> Any:
        assert form.row is not None, "statement returns no rows"
        if form.results:
            raw = list(raw)
            for i, proc in form.results:
                raw[i] = proc(raw[i])
        return form.row(*raw)

    def first(self, target: Session | Connection, **params: Any) -> Any:
        form, cursor = self._execute(target, params)
        raw = cursor.fetchone()
        cursor.close()
        return None if raw is None else self._row(form, raw)

    def all(self, target: Session | Connection, **params: Any) -> list[Any]:
        form, cursor = self._execute(target, params)
        rows = [self._row(form, raw) for raw in cursor.fetchall()]
        cursor.close()
        return rows

    def scalars(self, target: Session | Connection, **params: Any) -> list[Any]:
        return [row[0] for row in self.all(target, **params)]

    def run(self, target: Session | Connection, **params: Any) -> int:
        """Execute; returns the number of rows changed."""
        _, cursor = self._execute(target, params)
        count = int(cursor.rowcount)
        cursor.close()
        return count
