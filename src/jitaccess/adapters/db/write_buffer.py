"""Writes held until the unit of work needs them: rows the hot paths insert (requests, grants,
notifications) and rows they update by primary key (a request or grant saved, credentials set)
are kept here and sent together — before the next statement on the connection, whatever it is,
so every read sees them, and at the latest by `commit`.

On PostgreSQL everything held goes in one statement (a data-modifying CTE per table, its rows
in a VALUES list), which `commit` also makes take the audit head's lock: a
request's three inserts and the lock cost one round trip instead of four, and a worker's batch
of claims one instead of one per grant. On SQLite (in-process, no round trips) they are sent as
one executemany per table.

A row inserted and then saved in the same unit of work is sent once, as an insert of its last
state (all parts of one PostgreSQL statement see the same snapshot, so an update could not see
a row inserted beside it). Errors surface when the writes are sent — at the next statement or
the commit, still inside the unit of work, which then rolls back as before.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, Connection, Engine, Table, bindparam, event, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.types import JSON, TypeDecorator

INFO_KEY = "jit_write_buffer"
_PG = postgresql.dialect()  # type: ignore[no-untyped-call]

Row = dict[str, Any]


@dataclass(frozen=True)
class _ColumnWriter:
    """How one column's values are sent to PostgreSQL: converted as SQLAlchemy would
    bind them, then cast to the column's type."""

    name: str
    sql_type: str
    convert: Callable[[Any], Any] | None


def _writer(column: Column[Any]) -> _ColumnWriter:
    kind = column.type
    sql_type = kind.compile(dialect=_PG)
    convert: Callable[[Any], Any] | None = None
    if isinstance(kind, TypeDecorator):
        decorator = kind

        def convert(value: Any) -> Any:
            return decorator.process_bind_param(value, _PG)

    elif isinstance(kind, JSON):
        # As SQLAlchemy's JSON type writes it (Python None as JSON null).
        convert = json.dumps
    return _ColumnWriter(column.name, sql_type, convert)


@dataclass(frozen=True)
class _TableWriter:
    table: Table
    key: str
    columns: dict[str, _ColumnWriter]
    update_by_key: Any  # the SQLite executemany statement

    @classmethod
    def of(cls, table: Table) -> _TableWriter:
        (key,) = [c.name for c in table.primary_key.columns]
        return cls(
            table,
            key,
            {c.name: _writer(c) for c in table.columns},
            update(table).where(table.c[key] == bindparam("b_key")),
        )

    def values(self, names: tuple[str, ...], rows: list[Row], params: Row, prefix: str) -> str:
        """`(CAST(%(p)s AS type), ...), ...`: a VALUES list of `rows`' `names`, each value
        added to `params` (scalars: psycopg dumps them in C, where arrays cost Python)."""
        writers = [self.columns[name] for name in names]
        tuples = []
        for r, row in enumerate(rows):
            casts = []
            for c, writer in enumerate(writers):
                value = row[writer.name]
                param = f"{prefix}_{r}_{c}"
                params[param] = value if writer.convert is None else writer.convert(value)
                casts.append(f"CAST(%({param})s AS {writer.sql_type})")
            tuples.append(f"({', '.join(casts)})")
        return ", ".join(tuples)


_WRITERS: dict[Table, _TableWriter] = {}


def _table_writer(table: Table) -> _TableWriter:
    writer = _WRITERS.get(table)
    if writer is None:
        writer = _WRITERS[table] = _TableWriter.of(table)
    return writer


def _quoted(name: str) -> str:
    return f'"{name}"'


def insert_sql(table: Table, rows: list[Row], params: Row, prefix: str) -> str:
    """`INSERT INTO table (...) VALUES (...), ...` of `rows` (all with the same columns, as the
    repositories write them), their values added to `params` under names starting `prefix`."""
    names = tuple(rows[0])
    columns = ", ".join(_quoted(c) for c in names)
    values = _table_writer(table).values(names, rows, params, prefix)
    return f"INSERT INTO {table.name} ({columns}) VALUES {values}"


class WriteBuffer:
    """The held writes of one unit of work (see the module's docstring)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.is_postgres = conn.dialect.name == "postgresql"
        self.inserts: dict[Table, dict[Any, Row]] = {}
        self.updates: dict[Table, dict[Any, Row]] = {}
        self.sending = False

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

    def holds_update(self, table: Table, key: Any) -> bool:
        return key in self.inserts.get(table, {}) or key in self.updates.get(table, {})

    def clear(self) -> None:
        self.inserts.clear()
        self.updates.clear()

    # --- sending ---------------------------------------------------------------------------------

    def flush(self) -> None:
        """Send everything held now."""
        if not self:
            return
        if self.is_postgres:
            sql, params = self.postgres_statement("SELECT 1")
            self._send(lambda: self.conn.exec_driver_sql(sql, params))
            return
        self._send(self._flush_executemany)

    def postgres_statement(self, then: str) -> tuple[str, Row]:
        """One statement that sends everything held, then runs `then` (a query, which may
        lock a row: `... FOR UPDATE`); the buffer is emptied."""
        params: Row = {}
        parts = []
        for n, (table, rows) in enumerate(self._groups("insert")):
            writer = _table_writer(table)
            names = tuple(rows[0])
            parts.append(f"i{n} AS ({insert_sql(table, rows, params, f'i{n}')})")
        for n, (table, rows) in enumerate(self._groups("update")):
            writer = _table_writer(table)
            names = tuple(rows[0])  # the key first (see _groups)
            values = writer.values(names, rows, params, f"u{n}")
            sets = ", ".join(f"{_quoted(c)} = v.{_quoted(c)}" for c in names[1:])
            alias = ", ".join(_quoted(c) for c in names)
            parts.append(
                f"u{n} AS (UPDATE {table.name} SET {sets} FROM (VALUES {values}) AS v({alias}) "
                f"WHERE {table.name}.{_quoted(writer.key)} = v.{_quoted(writer.key)})"
            )
        self.clear()
        return f"WITH {', '.join(parts)} {then}", params

    def _flush_executemany(self) -> None:
        groups = [("insert", g) for g in self._groups("insert")]
        groups += [("update", g) for g in self._groups("update")]
        for kind, (table, rows) in groups:
            writer = _table_writer(table)
            if kind == "insert":
                self.conn.execute(table.insert(), rows)
            else:
                keyed = [{**row, "b_key": row[writer.key]} for row in rows]
                for row in keyed:
                    del row[writer.key]
                self.conn.execute(writer.update_by_key, keyed)

    def _groups(self, kind: str) -> list[tuple[Table, list[Row]]]:
        """The held rows of `kind` by table, in the order the tables were first written, split
        by the set of columns they carry (one statement needs the same columns in every row).
        Update rows carry the key as their first column."""
        held = self.inserts if kind == "insert" else self.updates
        if kind == "update":
            self.updates = {}
        else:
            self.inserts = {}
        groups: list[tuple[Table, list[Row]]] = []
        for table, rows in held.items():
            key = _table_writer(table).key
            by_columns: dict[tuple[str, ...], list[Row]] = {}
            for row_key, held_row in rows.items():
                row = held_row
                if kind == "update":
                    row = {key: row_key, **{k: v for k, v in held_row.items() if k != key}}
                by_columns.setdefault(tuple(row), []).append(row)
            groups += [(table, group) for group in by_columns.values()]
        return groups

    def _send(self, send: Callable[[], Any]) -> None:
        self.sending = True
        try:
            send()
        finally:
            self.sending = False


def install(engine: Engine) -> None:
    """Send a connection's held writes before any other statement runs on it."""
    event.listen(engine, "before_execute", _before_execute)


def _before_execute(conn: Connection, *_: Any) -> None:
    buffer: WriteBuffer | None = conn.info.get(INFO_KEY)
    if buffer is not None and not buffer.sending and buffer:
        buffer.flush()
