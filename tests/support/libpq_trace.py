"""What a psycopg connection sends, from libpq's own trace: the messages in order, so a test can
count round trips (each ends with a Sync, or is a simple Query) and see what each carried."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg


class Sent:
    def __init__(self) -> None:
        self.messages: list[tuple[str, str]] = []  # (type, content), frontend to server

    @property
    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.messages]

    def round_trips(self) -> int:
        """Simple queries (psycopg's BEGIN) and extended-protocol batches, each ended by Sync."""
        return sum(kind in ("Query", "Sync") for kind in self.kinds)

    def parsed(self) -> list[str]:
        """The first word of every statement sent with the extended protocol, in order."""
        return [text.split('"')[3].split()[0] for kind, text in self.messages if kind == "Parse"]


@contextmanager
def traced(connection: object, trace: Path) -> Iterator[Sent]:
    """Trace `connection` (a psycopg connection; SQLite's is not traced: nothing is sent) into
    the file `trace` while the block runs."""
    sent = Sent()
    if not isinstance(connection, psycopg.Connection):
        yield sent
        return
    with trace.open("w") as out:
        connection.pgconn.trace(out.fileno())
        try:
            yield sent
        finally:
            connection.pgconn.untrace()
    # One message a line (time, direction, length, type, content); a query's own line breaks
    # continue it on lines without tabs.
    for line in trace.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) > 3 and fields[1] == "F":
            sent.messages.append((fields[3], fields[4].strip() if len(fields) > 4 else ""))
