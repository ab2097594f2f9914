"""Policy versions over SQLAlchemy Core; each version is built once per process and cached.

A stored version is built straight from its JSON document (policy_document_reader.py), not
through YAML: the database hands over the document without its eligibility list, then the
eligibility rows one at a time (PostgreSQL: `json_array_elements`, streamed by the driver;
SQLite: `json_each`), so a million rows are never decoded at once. The cached version does not
keep the document: `PolicyVersion.document` reads it from the database when someone asks.
"""

from __future__ import annotations

import gc
import json
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from sqlalchemy import URL, Connection, Engine, TextClause, bindparam, select, text

from jitaccess.adapters.db.tables import policy_versions
from jitaccess.adapters.policy_document import DocumentReader
from jitaccess.ports import PolicyVersion

# A few versions, not every one this process has seen: the one in force, and the versions
# pending requests were made under. Any other is built again when asked for.
CACHED_VERSIONS = 3
STREAM_BATCH = 2000  # rows a chunk, when streaming from PostgreSQL

_policy_cache: OrderedDict[tuple[URL, int, str], PolicyVersion] = OrderedDict()
_policy_cache_lock = threading.Lock()
# One build at a time: the API and the worker asking for a new version at once must not both
# build it (twice the memory, twice the time).
_policy_build_lock = threading.Lock()


# Every unit of work that decides anything asks for the current version: plain SQL, sent as
# it is (a compiled statement's cache lookup cost more than the query, ~15% of a request's
# CPU in the throughput benchmark).
_CURRENT = "SELECT version, digest FROM policy_versions ORDER BY version DESC LIMIT 1"
_VERSION = select(policy_versions.c.version, policy_versions.c.digest).where(
    policy_versions.c.version == bindparam("b_version")
)


class SqlPolicies:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def _load(self, version: int, digest: str) -> PolicyVersion:
        """A version built once per process: rows are immutable, keyed by (version, digest)
        within one database (by URL: engines of one database share the cache)."""
        key = (self.conn.engine.url, version, digest)
        cached = _cached(key)
        if cached is not None:
            return cached
        with _policy_build_lock:
            cached = _cached(key)
            if cached is not None:
                return cached
            with _collector_paused():
                loaded = self._build(version)
                loaded.policy.build_indexes()
            with _policy_cache_lock:
                _policy_cache[key] = loaded
                while len(_policy_cache) > CACHED_VERSIONS:
                    _policy_cache.popitem(last=False)
        return loaded

    def _build(self, version: int) -> PolicyVersion:
        row = self.conn.execute(
            select(
                policy_versions.c.version,
                policy_versions.c.digest,
                policy_versions.c.applied_at,
                policy_versions.c.applied_by,
            ).where(policy_versions.c.version == version)
        ).one()
        reader = DocumentReader(f"stored policy v{version}")
        queries = _QUERIES[self.conn.dialect.name]
        listed = self._read_frame(reader, queries, version)
        if listed not in (None, "null", "array"):
            reader.fail("eligibility", f"expected a list, got a JSON {listed}")
        rows = self._eligibility(queries, version) if listed == "array" else iter(())
        return PolicyVersion(
            version=row.version,
            policy=reader.policy(rows),
            document=StoredDocument(self.conn.engine, version),
            digest=row.digest,
            applied_at=row.applied_at,
            applied_by=row.applied_by,
        )

    def _read_frame(self, reader: DocumentReader, queries: _Queries, version: int) -> Any:
        """Hand the document without its eligibility list to `reader`; return the list's JSON
        type. The decoded frame goes when this returns (~40 MB at 100,000 users)."""
        found = self.conn.execute(queries.frame, {"version": version}).scalar()
        if found is None:  # not an object, or an empty one
            top = self.conn.execute(queries.top, {"version": version}).scalar()
            if top != "object":
                reader.fail("(document)", f"expected a JSON object, got a JSON {top}")
        frame = json.loads(found) if found else {}
        listed = frame.pop("eligibility", None)  # the JSON type of the list, not the list
        reader.read_frame(frame)
        return listed

    def _eligibility(self, queries: _Queries, version: int) -> Iterator[Any]:
        if queries.stream_with_driver:
            rows: Iterable[Any] = _stream(self.conn, queries.rows, version)
        else:
            rows = self.conn.execute(queries.rows, {"version": version})
        return _decoded(rows, queries.first_index)

    def current(self) -> PolicyVersion | None:
        row = self.conn.exec_driver_sql(_CURRENT).first()
        return self._load(row.version, row.digest) if row else None

    def get(self, version: int) -> PolicyVersion | None:
        row = self.conn.execute(_VERSION, {"b_version": version}).first()
        return self._load(row.version, row.digest) if row else None

    def add(self, version: PolicyVersion) -> None:
        self.conn.execute(
            policy_versions.insert().values(
                version=version.version,
                digest=version.digest,
                document=dict(version.document),
                applied_at=version.applied_at,
                applied_by=version.applied_by,
            )
        )


def _decoded(rows: Iterable[Any], first_index: int) -> Iterator[Any]:
    """(JSON text, index) rows decoded, in the stored order; a batch at a time (one json.loads
    for a batch is ~40% faster than one a row)."""
    batch: list[str] = []
    out_of_order: list[tuple[int, str]] = []
    expected = first_index
    for item, index in rows:
        if out_of_order or index != expected:
            # Neither database promises the order of a set-returning function without ORDER
            # BY (which would sort a million rows); both keep it, but if not: sort.
            out_of_order.append((index, item))
            continue
        expected += 1
        batch.append(item)
        if len(batch) == STREAM_BATCH:
            yield from json.loads("[" + ",".join(batch) + "]")
            batch = []
    if batch:
        yield from json.loads("[" + ",".join(batch) + "]")
    for _, item in sorted(out_of_order):
        yield json.loads(item)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Building a million-row policy allocates millions of objects that all stay alive: each
    cyclic collection on the way would walk all of them again (a third of the build's time).
    Reference counting still frees everything else meanwhile. Afterwards everything alive is
    frozen (`gc.freeze`): the cached version's objects are left out of every later collection,
    whose pauses — the whole process stops, the worker's revocations too — would otherwise grow
    with the policy (hundreds of milliseconds a full collection at 1M rows). A version dropped
    from the cache is still freed by reference counting; whatever cycles frozen objects form
    stay until the process ends (policy versions change rarely; 3 are cached)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


def _stream(conn: Connection, query: TextClause, version: int) -> Iterator[Any]:
    """psycopg's streaming (chunks of rows as the server sends them): unlike a server-side
    cursor it needs no transaction, which read-only units of work on PostgreSQL do not open."""
    sql = str(query.compile(dialect=conn.dialect))
    driver = conn.connection.driver_connection
    assert driver is not None
    # libpq 17 hands rows over in chunks; before it, one at a time.
    chunks = {"size": STREAM_BATCH} if psycopg.pq.version() >= 170000 else {}
    with driver.cursor() as cursor:
        yield from cursor.stream(sql, {"version": version}, **chunks)


def _cached(key: tuple[URL, int, str]) -> PolicyVersion | None:
    with _policy_cache_lock:
        found = _policy_cache.get(key)
        if found is not None:
            _policy_cache.move_to_end(key)
        return found


class StoredDocument(Mapping[str, Any]):
    """A stored version's document, read from the database key by key when asked for (GET
    /api/v1/policy): the cached version does not hold it (~450 MB decoded at 1M rows)."""

    def __init__(self, engine: Engine, version: int) -> None:
        self._engine = engine
        self._version = version
        self._keys: tuple[str, ...] | None = None

    def _read(self, query: TextClause, **params: Any) -> list[Any]:
        with self._engine.connect() as conn:
            conn.execution_options(jit_readonly=True)  # SQLite: BEGIN DEFERRED
            return list(conn.execute(query, {"version": self._version, **params}).scalars())

    def __getitem__(self, key: str) -> Any:
        if key not in self:
            raise KeyError(key)
        found = self._read(_QUERIES[self._engine.dialect.name].value, key=key)
        return json.loads(found[0])

    def __iter__(self) -> Iterator[str]:
        return iter(self._top_keys())

    def __len__(self) -> int:
        return len(self._top_keys())

    def __contains__(self, key: object) -> bool:
        return key in self._top_keys()

    def _top_keys(self) -> tuple[str, ...]:
        if self._keys is None:
            self._keys = tuple(self._read(_QUERIES[self._engine.dialect.name].keys))
        return self._keys

    def __repr__(self) -> str:
        return f"StoredDocument(version={self._version})"


@dataclass(frozen=True)
class _Queries:
    """The JSON functions of one database, over the `document` of version `:version`."""

    top: TextClause  # the document's JSON type
    # The document, if an object, with its eligibility list replaced by the list's JSON type:
    # the database parses the document once for both.
    frame: TextClause
    rows: TextClause  # each eligibility row as JSON text, and its index
    keys: TextClause  # the document's top-level keys
    value: TextClause  # one top-level key's value (:key) as JSON text
    first_index: int
    stream_with_driver: bool


_QUERIES = {
    "postgresql": _Queries(
        top=text("SELECT json_typeof(document) FROM policy_versions WHERE version = :version"),
        frame=text(
            "SELECT json_object_agg(key, CASE WHEN key = 'eligibility'"
            " THEN to_json(json_typeof(value)) ELSE value END)::text"
            " FROM policy_versions, json_each(document)"
            " WHERE version = :version AND json_typeof(document) = 'object'"
        ),
        rows=text(
            "SELECT value::text, ordinality FROM policy_versions,"
            " json_array_elements(document -> 'eligibility') WITH ORDINALITY"
            " WHERE version = :version"
        ),
        keys=text(
            "SELECT json_object_keys(document) FROM policy_versions WHERE version = :version"
        ),
        value=text("SELECT (document -> :key)::text FROM policy_versions WHERE version = :version"),
        first_index=1,
        stream_with_driver=True,
    ),
    "sqlite": _Queries(
        top=text("SELECT json_type(document) FROM policy_versions WHERE version = :version"),
        frame=text(
            "SELECT json_set(json_remove(document, '$.eligibility'), '$.eligibility',"
            " json_type(document, '$.eligibility'))"
            " FROM policy_versions WHERE version = :version AND json_type(document) = 'object'"
        ),
        rows=text(
            "SELECT json_quote(value), key FROM policy_versions,"
            " json_each(policy_versions.document, '$.eligibility') WHERE version = :version"
        ),
        keys=text(
            "SELECT key FROM policy_versions, json_each(policy_versions.document)"
            " WHERE version = :version"
        ),
        value=text(
            "SELECT json_quote(json_extract(document, '$.\"' || :key || '\"'))"
            " FROM policy_versions WHERE version = :version"
        ),
        first_index=0,
        stream_with_driver=False,
    ),
}
