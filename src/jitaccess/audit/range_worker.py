"""A worker process of the range verifier (`audit.ranges`): reads (reader, first, last) pickled
on stdin, verifies that range of the stored chain on a connection of its own, and writes what it
found as JSON on stdout. Run as `python -m jitaccess.audit.range_worker`; imports only what that
needs, so it starts in a fraction of a second.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import sys
from contextlib import closing
from typing import Any

from jitaccess.audit.stored import Segment, verify_stored


def main() -> None:
    # From the parent process, through a pipe it made: trusted as our own code is.
    reader, first, last = pickle.load(sys.stdin.buffer)  # noqa: S301
    with closing(reader.read(first, last)) as records:
        segment = verify_stored(records, first, None)
    json.dump(segment_to_json(segment), sys.stdout)


def segment_to_json(segment: Segment) -> dict[str, Any]:
    found = dataclasses.asdict(segment)
    link = found["first_prev_hash"]
    # A link that is not text (a SQLite column holds any type) matches no hash, nor does "".
    found["first_prev_hash"] = link if link is None or isinstance(link, str) else ""
    return found


def segment_from_json(found: dict[str, Any]) -> Segment:
    return Segment(**found)


if __name__ == "__main__":
    main()
