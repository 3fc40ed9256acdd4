"""Settings from the environment (prefix ``LOCKBOX_``) and an optional ``lockbox.toml``.

The names are the public contract of ARCHITECTURE section 5; defaults are the safe ones.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LOCKBOX_", toml_file="lockbox.toml", extra="ignore")

    env: Literal["development", "production", "test"] = "development"
    data_dir: Path = Path("./lockbox-data")
    database_url: str | None = None
    key_file: Path | None = None
    redis_url: str | None = None
    fhir_base_url: str | None = None
    smtp_host: str | None = None
    smtp_port: int = 587
    smtp_user: str | None = None
    smtp_password: str | None = None
    smtp_starttls: bool = True
    smtp_gateway_port: int = 2525
    idle_timeout_s: int = Field(default=900, ge=30, le=24 * 3600)
    session_lifetime_s: int = Field(default=12 * 3600, ge=60, le=7 * 24 * 3600)
    enrolment_code_ttl_s: int = Field(default=7 * 24 * 3600, ge=60)
    routing_rules: Path | None = None
    security_mode: Literal["always", "adaptive"] = "always"
    clinic_name: str = "Lockbox clinic"
    public_url: str = "http://127.0.0.1:8000"
    # Attachments are checked by content; this is the ceiling per file.
    max_attachment_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    # Group commit: how many units of work one SQLite/PostgreSQL transaction may carry.
    commit_batch_max: int = Field(default=256, ge=1)
    # Signed audit checkpoint every N rows (and at shutdown).
    audit_checkpoint_every: int = Field(default=1000, ge=1)
    # Notifications (PHI-free). Email goes over SMTP when smtp_host is set, else to the file provider.
    notify_from: str = "no-reply@lockbox.invalid"
    smtp_timeout_s: float = Field(default=30, gt=0, le=300)
    # SMS and pager: "file" appends JSON lines to <data_dir>/notifications.jsonl (demo), "webhook" POSTs
    # JSON to the URL with the shared secret in X-Lockbox-Secret, "none" turns the channel off.
    sms_provider: Literal["none", "file", "webhook"] = "file"
    sms_webhook_url: str | None = None
    pager_provider: Literal["none", "file", "webhook"] = "file"
    pager_webhook_url: str | None = None
    notify_webhook_secret: str | None = None
    notify_max_attempts: int = Field(default=6, ge=1, le=30)
    # Where routing reads patient context (PCP, care team, conditions): "directory", or a provider
    # another domain registers (the FHIR integration).
    routing_context: str = "directory"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

    @cached_property
    def resolved_database_url(self) -> str:
        if self.database_url:
            url = self.database_url
            # Users write the usual postgresql:// form; psycopg 3 is the driver we ship.
            if url.startswith("postgresql://") or url.startswith("postgres://"):
                url = "postgresql+psycopg://" + url.split("://", 1)[1]
            return url
        return f"sqlite:///{(self.data_dir / 'lockbox.db').resolve()}"

    @cached_property
    def resolved_key_file(self) -> Path:
        return self.key_file or self.data_dir / "lockbox.key"

    @property
    def audit_head_file(self) -> Path:
        return self.data_dir / "audit-head.jsonl"


def load_settings(**overrides: object) -> Settings:
    return Settings(**overrides)  # type: ignore[arg-type]
