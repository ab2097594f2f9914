"""Stored policy versions on real storage: built from the document with the eligibility rows
streamed, in order; a corrupt row fails naming its version; the document is read on demand."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from jitaccess.adapters.db.policy_repository import SqlPolicies
from jitaccess.adapters.db.tables import policy_versions
from jitaccess.adapters.policy_document import policy_from_document, policy_to_document
from jitaccess.adapters.policy_yaml import load_policy_text
from jitaccess.bootstrap import Container
from jitaccess.domain.errors import PolicyInvalid
from jitaccess.ports import PolicyVersion
from support.databases import POLICY, container_on

pytestmark = pytest.mark.parametrize(
    "kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)

ROWS = 4_500  # more than one chunk of the PostgreSQL stream (2,000 rows)


@pytest.fixture
def app(kind: str, tmp_path: Path) -> Iterator[Container]:
    with container_on(kind, tmp_path) as container:
        yield container


def large_document(rows: int = ROWS) -> dict[str, Any]:
    """The test policy with `rows` more eligibility rows, each its own user and dates."""
    document = policy_to_document(load_policy_text(POLICY, "<test>"))
    users = dict(document["users"])
    for i in range(rows):
        users[f"u{i:05d}"] = {"groups": ["engineers"], "kind": "user"}
    document["users"] = users
    document["eligibility"] = document["eligibility"] + [
        {
            "principals": [f"user:u{i:05d}"],
            "roles": ["demo/read"] if i % 3 else ["demo/read", "demo/admin"],
            **({"until": f"2027-{i % 12 + 1:02d}-28"} if i % 7 == 0 else {}),
        }
        for i in range(rows)
    ]
    return document


def store(app: Container, document: Any) -> int:
    with app.engine.begin() as conn:
        latest: int = conn.execute(text("SELECT max(version) FROM policy_versions")).scalar_one()
        version = latest + 1
        conn.execute(
            policy_versions.insert().values(
                version=version,
                digest=f"digest-{version}",
                document=document,
                applied_at=datetime.now(UTC),
                applied_by="test",
            )
        )
    return version


def current(app: Container, *, readonly: bool = True) -> PolicyVersion:
    with app.uow.readonly() if readonly else app.uow() as uow:
        found = uow.policies.current()
    assert found is not None
    return found


def test_the_applied_version_loads_equal_to_its_yaml(app: Container) -> None:
    loaded = current(app)
    assert loaded.policy == load_policy_text(POLICY, "<test>")
    assert dict(loaded.document) == policy_to_document(loaded.policy)


@pytest.mark.parametrize("readonly", [True, False])
def test_many_rows_stream_in_their_stored_order(app: Container, readonly: bool) -> None:
    document = large_document()
    version = store(app, document)
    loaded = current(app, readonly=readonly)
    assert loaded.version == version
    assert loaded.policy == policy_from_document(document)
    assert [str(row.principals[0]) for row in loaded.policy.eligibility[1:4]] == [
        "user:u00000",
        "user:u00001",
        "user:u00002",
    ]


def test_the_document_is_read_from_the_database_when_asked(app: Container) -> None:
    document = large_document(50)
    store(app, document)
    loaded = current(app)
    assert not isinstance(loaded.document, dict)  # not held by the cached version
    assert sorted(loaded.document) == sorted(document)
    assert loaded.document["eligibility"] == document["eligibility"]
    assert loaded.document.get("schedules") is None
    with pytest.raises(KeyError):
        loaded.document["nothing"]


@pytest.mark.parametrize(
    ("corrupt", "key"),
    [
        ({"eligibility": [{"principals": ["user:alice"], "roles": ["demo/read"]}] * 3_000
          + [{"principals": "user:alice", "roles": ["demo/read"]}]},
         "eligibility[3000].principals"),
        ({"eligibility": {"principals": ["user:alice"]}}, "eligibility"),
        ({"users": {"alice": {"groups": "engineers"}}}, "users.alice.groups"),
    ],
)  # fmt: skip
def test_a_corrupt_version_fails_naming_it_and_the_connection_stays_usable(
    app: Container, corrupt: dict[str, Any], key: str
) -> None:
    good = policy_to_document(load_policy_text(POLICY, "<test>"))
    version = store(app, {**good, **corrupt})
    with app.uow.readonly() as uow:
        with pytest.raises(PolicyInvalid) as raised:
            uow.policies.current()
        (problem,) = raised.value.problems
        assert (problem.file, problem.key) == (f"stored policy v{version}", key)
        # An unfinished stream was given up: the same connection answers the next statement.
        assert uow.policies.get(1) is not None


def test_a_document_that_is_not_an_object_fails_naming_the_version(app: Container) -> None:
    version = store(app, [1, 2, 3])
    with pytest.raises(PolicyInvalid, match=f"stored policy v{version}"):
        current(app)


def test_threads_asking_at_once_build_a_version_once(
    app: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    store(app, large_document(200))
    builds: list[int] = []
    build = SqlPolicies._build
    building, go = threading.Event(), threading.Event()

    def held_build(self: SqlPolicies, version: int) -> PolicyVersion:
        builds.append(version)
        building.set()
        assert go.wait(10), "never let go"
        return build(self, version)

    monkeypatch.setattr(SqlPolicies, "_build", held_build)
    found: list[PolicyVersion] = []
    threads = [threading.Thread(target=lambda: found.append(current(app))) for _ in range(3)]
    threads[0].start()
    assert building.wait(10)  # the first is inside the build; the others ask meanwhile
    for thread in threads[1:]:
        thread.start()
    go.set()
    for thread in threads:
        thread.join()
    assert len(builds) == 1
    assert found[0] is found[1] is found[2]


def test_a_loaded_version_is_left_out_of_later_collections(app: Container) -> None:
    # Frozen once built: a full collection in the worker's process does not walk its objects
    # (at 1M rows, each one paused revocations for hundreds of milliseconds).
    store(app, large_document())
    gc.unfreeze()
    try:
        loaded = current(app)
        assert gc.get_freeze_count() > len(loaded.policy.eligibility)
        row = loaded.policy.eligibility[1]
        assert not any(row is o for o in gc.get_objects())  # only unfrozen objects are listed
    finally:
        gc.unfreeze()
