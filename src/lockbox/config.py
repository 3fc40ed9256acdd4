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
    # Helper processes that run the emergency check of patients' replies on another core (0: in the
    # server); unset: one, none when env is "test".
    triage_processes: int | None = Field(default=None, ge=0, le=8)
    # Units of work committed by a process of the server's own, off the HTTP stack's interpreter lock
    # (lockbox.db.writer_process); unset: on, off when env is "test" (its clock is the tests' to move).
    writer_process: bool | None = None
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
    # --- Scale: several processes, Redis, rate limits ---
    # Names this installation's channel and keys in Redis, so two installations may share one Redis.
    redis_prefix: str = Field(default="lockbox", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    # Rate limits in the `limits` notation ("N/second", "N/minute", several joined by ";"), kept in
    # Redis when redis_url is set (shared by every process), else in this process's memory. They stop
    # runaway scripts and password spraying; failed sign-ins also earn the lockouts of identity.throttle.
    rate_limits_enabled: bool = True
    rate_login_account: str = "30/minute;300/hour"
    rate_login_address: str = "600/minute"
    # Generous: a busy triage nurse or an integration account may answer many threads a minute.
    rate_send_account: str = "200/second;15000/minute"
    rate_send_address: str = "2000/second"
    rate_upload_account: str = "120/minute"
    rate_upload_address: str = "1200/minute"
    # -- SMTP gateway ([secure] mail from staff into the message center; docs/gateway.md) --
    # The port is smtp_gateway_port above (0 turns the gateway off). Loopback unless set otherwise.
    smtp_gateway_host: str = "127.0.0.1"
    smtp_gateway_keyword: str = Field(default="[secure]", min_length=1, max_length=64)
    # STARTTLS: with a certificate every session must start TLS first; AUTH is never taken in clear text
    # when a certificate is set or in production.
    smtp_gateway_tls_cert: Path | None = None
    smtp_gateway_tls_key: Path | None = None
    # Mail servers allowed to hand over staff mail without AUTH (IPs or CIDRs, JSON list in the env);
    # the envelope sender must then be a staff member's address on file.
    smtp_gateway_relays: list[str] = Field(default_factory=list)
    smtp_gateway_max_bytes: int = Field(default=25 * 1024 * 1024, ge=1024)
    # External recipients: how long a link works, how long a one-time code lasts, how many may be sent.
    secure_link_ttl_s: int = Field(default=30 * 24 * 3600, ge=60)
    secure_code_ttl_s: int = Field(default=600, ge=30, le=3600)
    secure_access_ttl_s: int = Field(default=1800, ge=60, le=24 * 3600)
    # A CA bundle for the outbound SMTP server's certificate (a clinic's private CA); system CAs otherwise.
    smtp_ca_file: Path | None = None
    # --- Operations: TLS and proxies, metrics, retention, backups, key provider (docs/operations.md) ---
    # Honour X-Forwarded-For/-Proto only from these proxy addresses (IPs or CIDRs, comma-separated);
    # `lockbox serve --proxy-headers` turns it on. Empty: forwarded headers are ignored.
    proxy_headers: bool = False
    trusted_proxies: str = ""
    # /metrics answers loopback callers, or anyone presenting this bearer token.
    metrics_token: str | None = None
    # Retention per thread kind, in days after a thread was closed (patient) or last written to (others);
    # 0 keeps forever. A YAML file (retention_policies) overrides these, kind by kind.
    retention_patient_days: int = Field(default=7 * 365 + 2, ge=0)
    retention_staff_days: int = Field(default=30, ge=0)
    retention_group_days: int = Field(default=30, ge=0)
    retention_policies: Path | None = None
    retention_sweep_every_s: int = Field(default=3600, ge=60)
    retention_batch: int = Field(default=200, ge=1, le=10_000)
    # Backups are sealed with a key derived from this passphrase, or read from backup_key_file (32 random
    # bytes, base64); never the data key file, which is backed up separately.
    backup_passphrase: str | None = None
    backup_key_file: Path | None = None
    # Key-encryption keys: "file" (the key file) or "vault" (HashiCorp Vault / OpenBao transit).
    key_provider: Literal["file", "vault"] = "file"
    vault_url: str | None = None
    vault_token: str | None = None
    vault_transit_mount: str = "transit"
    vault_key_name: str = "lockbox"
    # --- FHIR: EHR integration over HL7 FHIR R4 (docs/fhir.md); fhir_base_url above turns it on ---
    # Auth: "none", "bearer" (a static token) or "smart" (SMART backend services: a client-credentials
    # grant with a signed JWT assertion, RFC 7523, from fhir_token_url).
    fhir_auth: Literal["none", "bearer", "smart"] = "none"
    fhir_bearer_token: str | None = None
    fhir_token_url: str | None = None
    fhir_client_id: str | None = None
    fhir_private_key_file: Path | None = None  # PEM (RSA for RS384, EC P-384 for ES384)
    fhir_jwt_alg: Literal["RS384", "ES384"] = "RS384"
    fhir_key_id: str | None = None
    fhir_scope: str = ("system/Patient.rs system/CareTeam.rs system/Condition.rs system/Encounter.rs "
                       "system/Procedure.rs system/Practitioner.rs system/PractitionerRole.rs system/Communication.cru "
                       "system/CommunicationRequest.cru system/DocumentReference.cru system/Consent.cru "
                       "system/AuditEvent.cu")
    fhir_timeout_s: float = Field(default=5.0, gt=0, le=120)
    fhir_retries: int = Field(default=2, ge=0, le=10)
    # Consecutive failures that open the circuit, and how long it stays open before one trial call.
    fhir_breaker_threshold: int = Field(default=5, ge=1, le=100)
    fhir_breaker_reset_s: int = Field(default=30, ge=1, le=3600)
    fhir_max_response_bytes: int = Field(default=5 * 1024 * 1024, ge=1024)
    fhir_max_entries: int = Field(default=500, ge=1, le=100_000)
    # Identity matching: the EHR's MRN identifier system, and the staff identifier system (NPI by default).
    fhir_mrn_system: str = "urn:lockbox:mrn"
    fhir_staff_identifier_system: str = "http://hl7.org/fhir/sid/us-npi"
    # Identifiers Lockbox puts on what it files (conditional create keys); a URI the clinic owns.
    fhir_identifier_system: str = "urn:lockbox"
    # Routing context per patient: fresh for ttl, served stale (while refreshed) up to max_stale.
    fhir_context_ttl_s: int = Field(default=300, ge=1)
    fhir_context_max_stale_s: int = Field(default=6 * 3600, ge=1)
    fhir_context_max_patients: int = Field(default=20_000, ge=10)
    fhir_surgery_days: int = Field(default=90, ge=1, le=3650)  # how far back Procedures are read
    # Filing threads as Communication resources: "off", "manual" (a clinician files) or "auto" (on close).
    fhir_filing: Literal["off", "manual", "auto"] = "manual"
    # --- PHI scanner (docs/phi.md) ---
    # The shape of this clinic's MRNs, as a regular expression (anything after "MRN:" counts regardless).
    phi_mrn_pattern: str = Field(default=r"[A-Z]{1,3}\d{5,9}", min_length=1, max_length=200)
    # --- Routing ---
    # Seconds between the server's looks at the routing rules file, so a change or a broken file is noticed
    # with no message arriving (0: only on the decision path, every few seconds).
    routing_rules_watch_s: float = Field(default=2.0, ge=0, le=3600)

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
