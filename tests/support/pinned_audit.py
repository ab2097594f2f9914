"""Audit records whose hashes are pinned: computed by the chain code of commit 22bfe99, before
the verifier stopped normalising `data`. Databases and exports written by any release must
still verify, so these hashes never change."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from jitaccess.ports import AuditEntry

AT = datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)
# Not a Mapping[str, Any], as a caller's data may still be: sealing makes the keys strings.
NOT_STRING_KEYS: dict[Any, Any] = {
    10: "ten",
    2: "two",
    "a": {1: True, 1.5: None},
    None: "none",
    False: "f",
}

#: Non-ASCII text, nested data, datetimes and other non-JSON values in data, None fields,
#: non-string keys, a time in another zone: each as the write path is given it.
ENTRIES = [
    AuditEntry(
        actor="alice",
        action="request.created",
        subject="req_0001",
        at=AT,
        justification="incident 7",
        ticket="INC-7",
        data={"roles": ["demo/read"], "duration_s": 600},
    ),
    AuditEntry(
        actor="system",
        action="grant.expired",
        subject="grt_1",
        at=AT.replace(microsecond=0),
        justification=None,
        ticket=None,
        comment=None,
        data={},
    ),
    AuditEntry(
        actor="zoë",
        action="request.refused",
        subject="req_ü",
        at=AT,
        outcome="refused",
        comment='ünïcode ✓ 日本語 \U0001f512 "quoted" \\ back\nline',
        data={"motif": "café ☕", "clé": "€"},
    ),
    AuditEntry(
        actor="bob",
        action="request.approved",
        subject="req_2",
        at=AT,
        data={
            "z": {"b": [1, 2.5, None, True, {"y": "x", "a": []}], "a": {}},
            "a": [[], [[-1]]],
            "big": 10**20,
            "f": 1e-7,
        },
    ),
    AuditEntry(
        actor="system",
        action="grant.provisioned",
        subject="grt_2",
        at=AT,
        data={
            "ends_at": datetime(2026, 3, 4, 6, 0, tzinfo=UTC),
            "local": datetime(2026, 3, 4, 7, 0, 0, 5, tzinfo=timezone(timedelta(hours=2))),
            "took": timedelta(seconds=1.5),
            "amount": Decimal("1.10"),
            "pair": ("a", 1),
        },
    ),
    AuditEntry(
        actor="carol",
        action="policy.applied",
        subject="policy",
        at=AT,
        data=NOT_STRING_KEYS,
    ),
    AuditEntry(
        actor="dave",
        action="token.created",
        subject="tok_1",
        at=datetime(2026, 3, 4, 1, 2, 3, 4, tzinfo=timezone(timedelta(hours=-5))),
        data={"scopes": ("read", "write")},
    ),
]

PINNED_HASHES = [
    "b8b15f4b3e70d90a3556f8b86d7f81dc77e85cebc719bbfbd00a10c9e6f4c429",
    "839c1bede13041efaed2338f0ce9b9f39ffe04c1dabc54a830ce79a65184b58b",
    "46ef883fd8991deaad869693bfc0c916f4536ffc4b9cbbd9a4427b6e408863bb",
    "665339a1d47416b0d15ba87cf5c294d7e1ad6709e22582126e9c34e98d9d3cfc",
    "9a8c39151853623b8fd99f68b0db9bd394943cef046116afb136e0750f4c6592",
    "1bfd625bac3c26e54b15d7e558a556aa9e2065c7a00ac1293155a46bee4ca863",
    "4515d527e0f006997948b2180cf20451a806d1547dfda1cf86e1e3539de2a3e2",
]

PINNED_CANONICAL = [
    b'{"action":"request.created","actor":"alice","at":"2026-03-04T05:06:07.890123Z",'
    b'"comment":null,"data":{"duration_s":600,"roles":["demo/read"]},'
    b'"justification":"incident 7","outcome":"ok","seq":1,"subject":"req_0001","ticket":"INC-7"}',
    b'{"action":"grant.expired","actor":"system","at":"2026-03-04T05:06:07.000000Z",'
    b'"comment":null,"data":{},"justification":null,"outcome":"ok","seq":2,"subject":"grt_1",'
    b'"ticket":null}',
    b'{"action":"request.refused","actor":"zo\\u00eb","at":"2026-03-04T05:06:07.890123Z",'
    b'"comment":"\\u00fcn\\u00efcode \\u2713 \\u65e5\\u672c\\u8a9e \\ud83d\\udd12 \\"quoted\\" '
    b'\\\\ back\\nline","data":{"cl\\u00e9":"\\u20ac","motif":"caf\\u00e9 \\u2615"},'
    b'"justification":null,"outcome":"refused","seq":3,"subject":"req_\\u00fc","ticket":null}',
    b'{"action":"request.approved","actor":"bob","at":"2026-03-04T05:06:07.890123Z",'
    b'"comment":null,"data":{"a":[[],[[-1]]],"big":100000000000000000000,"f":1e-07,'
    b'"z":{"a":{},"b":[1,2.5,null,true,{"a":[],"y":"x"}]}},"justification":null,"outcome":"ok",'
    b'"seq":4,"subject":"req_2","ticket":null}',
    b'{"action":"grant.provisioned","actor":"system","at":"2026-03-04T05:06:07.890123Z",'
    b'"comment":null,"data":{"amount":"1.10","ends_at":"2026-03-04 06:00:00+00:00",'
    b'"local":"2026-03-04 07:00:00.000005+02:00","pair":["a",1],"took":"0:00:01.500000"},'
    b'"justification":null,"outcome":"ok","seq":5,"subject":"grt_2","ticket":null}',
    b'{"action":"policy.applied","actor":"carol","at":"2026-03-04T05:06:07.890123Z",'
    b'"comment":null,"data":{"10":"ten","2":"two","a":{"1":true,"1.5":null},"false":"f",'
    b'"null":"none"},"justification":null,"outcome":"ok","seq":6,"subject":"policy",'
    b'"ticket":null}',
    b'{"action":"token.created","actor":"dave","at":"2026-03-04T06:02:03.000004Z",'
    b'"comment":null,"data":{"scopes":["read","write"]},"justification":null,"outcome":"ok",'
    b'"seq":7,"subject":"tok_1","ticket":null}',
]
