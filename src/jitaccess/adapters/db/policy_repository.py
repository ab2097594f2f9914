"""Policy versions over SQLAlchemy Core; each version is parsed once per process and cached."""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, select

from jitaccess.adapters.db.tables import policy_versions
from jitaccess.ports import PolicyVersion

_policy_cache: dict[tuple[int, str], PolicyVersion] = {}
_policy_cache_lock = threading.Lock()


class SqlPolicies:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def _load(self, version: int, digest: str) -> PolicyVersion:
        """A version parsed once per process: rows are immutable, keyed by (version, digest)."""
        from jitaccess.adapters.policy_yaml import load_policy_text

        key = (version, digest)
        with _policy_cache_lock:
            cached = _policy_cache.get(key)
        if cached is not None:
            return cached
        row = self.conn.execute(
            select(policy_versions).where(policy_versions.c.version == version)
        ).one()
        document: Mapping[str, Any] = row.document
        loaded = PolicyVersion(
            version=row.version,
            policy=load_policy_text(
                json.dumps(document, ensure_ascii=False),
                f"policy v{row.version}",
                check_files=False,
            ),
            document=document,
            digest=row.digest,
            applied_at=row.applied_at,
            applied_by=row.applied_by,
        )
        with _policy_cache_lock:
            _policy_cache[key] = loaded
        return loaded

    def current(self) -> PolicyVersion | None:
        row = self.conn.execute(
            select(policy_versions.c.version, policy_versions.c.digest)
            .order_by(policy_versions.c.version.desc())
            .limit(1)
        ).first()
        return self._load(row.version, row.digest) if row else None

    def get(self, version: int) -> PolicyVersion | None:
        row = self.conn.execute(
            select(policy_versions.c.version, policy_versions.c.digest).where(
                policy_versions.c.version == version
            )
        ).first()
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
