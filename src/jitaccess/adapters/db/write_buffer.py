"""Writes held until the unit of work needs them: rows the hot paths insert (requests, grants,
notifications) and rows they update by primary key (a request or grant saved, credentials set)
are kept here and sent together — before the next statement on the connection, whatever it is,
so every read sees them, and at the latest by `commit`.

On PostgreSQL everything held goes in one statement: a data-modifying CTE per table, its rows
passed as one JSON parameter read by `json_populate_recordset` (psycopg caches a statement's
conversion and plan only below 50 parameters and 4 kB; a request's row alone has 24 columns).
`commit` makes the same statement take the audit head's lock: a request's three inserts and
the lock cost one round trip instead of four, and a worker's batch of claims one instead of one
per grant. On SQLite (in-process, no round trips) they are sent as one executemany per table.

A row inserted and then saved in the same unit of work is sent once, as an insert of its last
state (all parts of one PostgreSQL statement see the same snapshot, so an update could not see
a row inserted beside it). Errors surface when the writes are sent — at the next statement or
the commit, still inside the unit of work, which then rolls back as before.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Column, Connection, Engine, Table, bindparam, event, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.types import LargeBinary, TypeDecorator

INFO_KEY = "jit_write_buffer"
_PG = postgresql.dialect()  # type: ignore[no-untyped-call]

Row = dict[str, Any]


def _json_value(column: Column[Any]) -> Callable[[Any], Any] | None:
    """How a value of `column` goes into the JSON document PostgreSQL reads the rows from
    (each value is then parsed by its column type's input function); None: as it is."""
    kind = column.type
    if isinstance(kind, TypeDecorator):
        decorator = kind

        def bound(value: Any) -> Any:
            plain = decorator.process_bind_param(value, _PG)
            return plain.isoformat() if isinstance(plain, datetime) else plain

        return bound
    if isinstance(kind, LargeBinary):
        return lambda value: None if value is None else "\\x" + value.hex()
    # JSON columns nest as they are; strings, numbers and booleans need nothing.
    return None


@dataclass(frozen=True)
class _TableWriter:
    table: Table
    key: str
    convert: dict[str, Callable[[Any], Any]]
    update_by_key: Any  # the SQLite executemany statement

    @classmethod
    def of(cls, table: Table) -> _TableWriter:
        (key,) = [c.name for c in table.primary_key.columns]
        convert = {c.name: f for c in table.columns if (f := _json_value(c)) is not None}
        return cls(table, key, convert, update(table).where(table.c[key] == bindparam("b_key")))

    def rows_param(self, rows: list[Row]) -> str:
        """`rows` as one JSON array, for `json_populate_recordset`: one parameter however many
        rows and columns (psycopg caches a statement's conversion and plan only below 50
        parameters and 4 kB; a row of a request alone has 24 columns)."""
        if self.convert:
            rows = [
                {k: (f(v) if (f := self.convert.get(k)) else v) for k, v in r.items()} for r in rows
            ]
        return json.dumps(rows)

    def records(self, param: str) -> str:
        return f"json_populate_recordset(NULL::{self.table.name}, CAST(%({param})s AS json))"


_WRITERS: dict[Table, _TableWriter] = {}


def _table_writer(table: Table) -> _TableWriter:
    writer = _WRITERS.get(table)
    if writer is None:
        writer = _WRITERS[table] = _TableWriter.of(table)
    return writer


def _quoted(name: str) -> str:
    return f'"{name}"'


def insert_sql(table: Table, rows: list[Row], params: Row, param: str) -> str:
    """`INSERT INTO table (...) SELECT ...` of `rows` (all with the same columns, as the
    repositories write them), passed as one JSON parameter named `param`."""
    writer = _table_writer(table)
    params[param] = writer.rows_param(rows)
    columns = ", ".join(_quoted(c) for c in rows[0])
    return f"INSERT INTO {table.name} ({columns}) SELECT {columns} FROM {writer.records(param)}"


def update_sql(table: Table, rows: list[Row], params: Row, param: str) -> str:
    """`UPDATE table SET ... FROM ...`: each of `rows` (the key first, then the same columns in
    every row) written to the row with its key."""
    writer = _table_writer(table)
    params[param] = writer.rows_param(rows)
    key = _quoted(writer.key)
    sets = ", ".join(f"{_quoted(c)} = v.{_quoted(c)}" for c in rows[0] if c != writer.key)
    return (
        f"UPDATE {table.name} SET {sets} FROM {writer.records(param)} AS v "
        f"WHERE {table.name}.{key} = v.{key}"
    )


class WriteBuffer:
    """The held writes of one unit of work (see the module's docstring)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.is_postgres = conn.dialect.name == "postgresql"
        self.inserts: dict[Table, dict[Any, Row]] = {}
        self.updates: dict[Table, dict[Any, Row]] = {}

    def __bool__(self) -> bool:
        return bool(self.inserts or self.updates)

    def insert(self, table: Table, row: Row) -> None:
        key = _table_writer(table).key
        self.inserts.setdefault(table, {})[row[key]] = row

    def update(self, table: Table, key: Any, values: Row) -> None:
        """Set `values` on the row whose primary key is `key` (merged with what is held for
        it already)."""
        inserted = self.inserts.get(table, {}).get(key)
        if inserted is not None:
            inserted.update(values)
            return
        self.updates.setdefault(table, {}).setdefault(key, {}).update(values)

    def holds_row(self, table: Table, key: Any) -> bool:
        """Whether an insert or an update of that row is held."""
        return key in self.inserts.get(table, {}) or key in self.updates.get(table, {})

    def clear(self) -> None:
        self.inserts.clear()
        self.updates.clear()

    # --- sending ---------------------------------------------------------------------------------

    def flush(self) -> None:
        """Send everything held now. The buffer is emptied before anything is sent, so the
        statements sent here do not send it again (see `_before_execute`)."""
        if not self:
            return
        if self.is_postgres:
            sql, params = self.postgres_statement()
            self.conn.exec_driver_sql(sql, params)
            return
        inserts, updates = self._take()
        for table, rows in _groups(inserts, add_key=False):
            self.conn.execute(table.insert(), rows)
        for table, rows in _groups(updates, add_key=True):
            writer = _table_writer(table)
            keyed = [{("b_key" if k == writer.key else k): v for k, v in r.items()} for r in rows]
            self.conn.execute(writer.update_by_key, keyed)

    def postgres_statement(self) -> tuple[str, Row]:
        """One statement that sends everything held (the buffer is emptied). It returns no
        rows, so it may go in a pipeline after a streamed query: libpq 18 hands the rows of
        the next query in a pipeline over in the stream's chunked mode, which psycopg refuses
        (`unexpected result status: TUPLES_CHUNK`)."""
        inserts, updates = self._take()
        params: Row = {}
        parts = [
            insert_sql(table, rows, params, f"i{n}")
            for n, (table, rows) in enumerate(_groups(inserts, add_key=False))
        ]
        parts += [
            update_sql(table, rows, params, f"u{n}")
            for n, (table, rows) in enumerate(_groups(updates, add_key=True))
        ]
        # The last write is the statement itself; the others, data-modifying CTEs before it.
        ctes = ", ".join(f"w{n} AS ({part})" for n, part in enumerate(parts[:-1]))
        return (f"WITH {ctes} {parts[-1]}" if ctes else parts[-1]), params

    def _take(self) -> tuple[dict[Table, dict[Any, Row]], dict[Table, dict[Any, Row]]]:
        """What is held, inserts and updates; the buffer is left empty."""
        taken = self.inserts, self.updates
        self.inserts, self.updates = {}, {}
        return taken


def _groups(held: dict[Table, dict[Any, Row]], *, add_key: bool) -> list[tuple[Table, list[Row]]]:
    """`held` rows (by table, then by primary key) in the order the tables were first written,
    split by the set of columns they carry (one statement needs the same columns in every row).
    With `add_key` (update rows are held without their key) it is put first."""
    groups: list[tuple[Table, list[Row]]] = []
    for table, rows in held.items():
        key = _table_writer(table).key
        by_columns: dict[tuple[str, ...], list[Row]] = {}
        for row_key, held_row in rows.items():
            row = {key: row_key, **held_row} if add_key else held_row
            by_columns.setdefault(tuple(row), []).append(row)
        groups += [(table, group) for group in by_columns.values()]
    return groups


def install(engine: Engine) -> None:
    """Send a connection's held writes before any other statement runs on it."""
    event.listen(engine, "before_execute", _before_execute)


def _before_execute(conn: Connection, *_: Any) -> None:
    buffer: WriteBuffer | None = conn.info.get(INFO_KEY)
    if buffer:
        buffer.flush()
