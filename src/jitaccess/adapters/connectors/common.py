"""What every connector needs: the target's admin secret by reference, and its options."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from jitaccess.domain.errors import ConnectorError
from jitaccess.domain.policy import Target


def read_connection(target: Target) -> str:
    """The value `connection: {env: VAR}` or `{file: PATH}` points at, stripped.

    Errors name the target and the reference, never the value."""
    ref = target.connection
    if ref is None:
        raise ConnectorError(f"target {target.name}: no connection configured")
    if ref.env:
        value = os.environ.get(ref.env, "")
        if not value:
            raise ConnectorError(f"target {target.name}: environment variable {ref.env} is not set")
        return value.strip()
    assert ref.file is not None
    try:
        value = Path(ref.file).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConnectorError(
            f"target {target.name}: cannot read connection file {ref.file}: {exc.strerror}"
        ) from None
    except UnicodeDecodeError:
        raise ConnectorError(
            f"target {target.name}: connection file {ref.file} is not UTF-8 text"
        ) from None
    if not value.strip():
        raise ConnectorError(f"target {target.name}: connection file {ref.file} is empty")
    return value.strip()


def options(target: Target) -> dict[str, Any]:
    return dict(target.options)
