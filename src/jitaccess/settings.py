"""Every JITACCESS_* setting, validated once at start with messages that name the variable."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "jitaccess"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="JITACCESS_", extra="ignore")

    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: str = ""
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    policy: str = ""  # one or more files, separated by commas
    secret_key_file: Path | None = None
    worker_threads: int = Field(default=8, ge=1, le=64)
    worker_lease_seconds: float = Field(default=30.0, gt=0)
    worker_max_sleep_seconds: float = Field(default=60.0, gt=0)
    flag_after_seconds: float = Field(default=300.0, ge=0)
    retry_cap_seconds: float = Field(default=60.0, gt=0)
    # Periodic jobs (0 turns one off); of several workers, one runs each job per interval.
    health_interval_seconds: float = Field(default=60.0, ge=0)
    reconcile_interval_seconds: float = Field(default=300.0, ge=0)
    run_worker: bool = True
    log_level: str = "info"

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if value and not value.startswith(("sqlite", "postgresql", "postgres://")):
            raise ValueError("must start with sqlite:// or postgresql://")
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        if value.lower() not in {"debug", "info", "warning", "error"}:
            raise ValueError("must be one of debug, info, warning, error")
        return value.lower()

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'jitaccess.db'}"

    @property
    def resolved_secret_key_file(self) -> Path:
        return self.secret_key_file or self.data_dir / "secret.key"

    @property
    def policy_files(self) -> list[str]:
        return [p.strip() for p in self.policy.split(",") if p.strip()]
