"""Typed configuration, read once from environment variables.

Precedence: an explicit argument to ``Settings(...)`` > environment variable > default below.
Every field's description is the documentation: ``python -m functions.settings`` prints the
README's configuration table from it, and a test keeps the two in agreement.
"""

from __future__ import annotations

import sys
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, FilePath, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from clickhouse import DEFAULT_DATABASE
from functions.events import MAX_MOVIE_TIME_OFFSET_MS

__all__ = ["Settings", "get_settings"]

JwtAlgorithm = Literal["HS256", "RS256", "ES256"]
SinkFaultPoint = Literal["before_insert", "after_insert"]

# Local state (embedded ClickHouse data, broker data, dev key) lives in the git-ignored .local/.
LOCAL_STATE_DIR = Path(__file__).resolve().parents[1] / ".local"


def _read_secret_file(variable: str, path: Any) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise ValueError(f"{variable} {path}: {exc.strerror}") from exc


class Settings(BaseSettings):
    """Everything the functions and the local host read from the environment."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    # --- Kafka -------------------------------------------------------------------------------
    kafka_bootstrap_servers: str = Field(
        "127.0.0.1:9092", description="Kafka bootstrap servers, comma-separated."
    )
    views_topic: str = Field("views", description="Topic the ingest function produces to.")
    dlq_topic: str = Field(
        "views.dlq", description="Dead-letter topic for records the sink cannot store."
    )
    kafka_delivery_timeout_ms: int = Field(
        5000,
        ge=100,
        description="How long the producer may try to get a record acknowledged before the "
        "request is answered 503 (librdkafka `delivery.timeout.ms`).",
    )
    kafka_linger_ms: int = Field(
        2,
        ge=0,
        description="Producer batching window (`linger.ms`): concurrent requests share one "
        "produce request to the broker. Every 2xx waits for it, so it stays short "
        "(docs/benchmarks.md compares 1, 2 and 5).",
    )
    kafka_session_timeout_ms: int = Field(
        45_000,
        ge=1000,
        description="Consumer-group session timeout of the sink: how long a silent member keeps "
        "its partitions.",
    )
    retry_after_seconds: int = Field(
        2, ge=1, description="`Retry-After` sent with a 503 when Kafka did not acknowledge."
    )

    # --- ClickHouse --------------------------------------------------------------------------
    clickhouse_dsn: str = Field(
        pattern=r"^(chdb:///|chdb://memory|https?://)",
        description="Required (or `CLICKHOUSE_DSN_FILE`): `http(s)://user:password@host:port` "
        "for a ClickHouse server, or `chdb:///<absolute dir>` for the embedded engine (the "
        "`local` dependency group, not in the image; one process per directory). `make run` "
        "sets `chdb://<checkout>/.local/clickhouse`.",
    )
    clickhouse_dsn_file: Path | None = Field(
        None,
        description="File holding the DSN (an OpenFaaS secret, a mounted Secret), read at start "
        "when `CLICKHOUSE_DSN` is unset.",
    )
    clickhouse_database: str = Field(
        DEFAULT_DATABASE, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="Database of the tables."
    )
    clickhouse_cluster: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$",
        description="Name of the ClickHouse cluster the migrations were rendered for "
        "(`python -m clickhouse.migrate --cluster`); inserts then wait for every shard "
        "(docs/clickhouse-cluster.md). Unset: one server.",
    )

    # --- Authentication ----------------------------------------------------------------------
    jwt_algorithm: JwtAlgorithm = Field(
        "HS256",
        description="The one signing algorithm accepted: HS256 (shared secret) or RS256/ES256 "
        "(public key from `JWT_PUBLIC_KEY_FILE` or `JWT_JWKS_URL`). Tokens signed otherwise, "
        "`alg: none` included, are rejected.",
    )
    jwt_secret: str | None = Field(
        None, description="HS256 shared secret, at least 32 bytes (or use `JWT_SECRET_FILE`)."
    )
    jwt_secret_file: Path | None = Field(None, description="File holding the HS256 shared secret.")
    jwt_public_key_file: FilePath | None = Field(
        None, description="PEM public key for RS256/ES256."
    )
    jwt_jwks_url: str | None = Field(
        None,
        pattern=r"^https?://",
        description="JWKS document of the identity provider for RS256/ES256 (instead of "
        "`JWT_PUBLIC_KEY_FILE`); tokens must name their key with `kid`.",
    )
    jwt_jwks_cache_seconds: int = Field(
        300,
        ge=1,
        description="Age after which the JWKS keys are refetched in the background (requests "
        "keep using the cached keys meanwhile).",
    )
    jwt_jwks_min_refresh_seconds: int = Field(
        30,
        ge=1,
        description="Least time between two JWKS fetches, so that tokens with unknown `kid`s "
        "cannot make the function hammer the identity provider.",
    )
    jwt_jwks_timeout_seconds: float = Field(5.0, gt=0, description="Timeout of one JWKS fetch.")
    jwt_issuer: str | None = Field(
        None, description="Required `iss` of tokens; not checked when unset."
    )
    jwt_audience: str | None = Field(
        None,
        description="Required `aud` of tokens. When unset, tokens that carry an `aud` are "
        "rejected (they were issued for some other service).",
    )
    jwt_leeway_seconds: int = Field(
        30, ge=0, le=300, description="Clock skew tolerated on `exp`, `nbf` and `iat`."
    )
    jwt_permissions_claim: str = Field(
        "permissions",
        description="Claim listing what the token may do: a JSON list, or a space-separated "
        "string like OAuth's `scope`.",
    )
    jwt_write_permission: str = Field(
        "ugc.views.write", description="Permission needed to post view events."
    )
    jwt_read_permission: str = Field(
        "ugc.views.read", description="Permission needed to read positions and rankings."
    )
    jwt_max_lifetime_seconds: int = Field(
        30 * 24 * 3600,
        ge=60,
        description="Longest life a token may claim: `exp - iat`, or `exp` - now for a token "
        "without `iat`. A token beyond it is rejected (401), so that a leaked or forged-looking "
        "100-year token is not honoured.",
    )
    jwt_require_iat: bool = Field(
        False, description="Reject tokens without an integer `iat` (issued-at) claim."
    )
    auth_disabled_insecure: bool = Field(
        False,
        description="Local experiments only: accept requests without a valid token (logged as a "
        "warning at start). The viewer is then the body's `user_id`, or the unverified `sub` "
        "of a token if one is sent.",
    )

    # --- Input limits ------------------------------------------------------------------------
    max_view_body_bytes: int = Field(
        65_536, ge=1024, description="Largest body of one view event; larger ones get 413."
    )
    max_batch_body_bytes: int = Field(
        1_048_576, ge=1024, description="Largest body of a batch of view events (413 beyond)."
    )
    max_batch_events: int = Field(
        500, ge=1, le=10_000, description="Most events in one `POST /v1/views:batch`."
    )
    max_movie_time_offset_ms: int = Field(
        MAX_MOVIE_TIME_OFFSET_MS,
        ge=1,
        le=MAX_MOVIE_TIME_OFFSET_MS,
        description="Largest accepted `movie_time_offset` (ms); at most the Kafka schema's 48 h.",
    )
    max_event_time_skew_seconds: int = Field(
        300,
        ge=0,
        description="How far in the future of the receive time an `event_time` may be "
        "(player clocks drift).",
    )
    max_event_age_seconds: int = Field(
        30 * 24 * 3600,
        ge=60,
        description="How far in the past an `event_time` may be (a player's offline queue).",
    )

    # --- Sink --------------------------------------------------------------------------------
    sink_group_id: str = Field("views-sink", description="Consumer group of the sink.")
    sink_batch_max_records: int = Field(
        50_000, ge=1, description="A sink batch is inserted when it holds this many records..."
    )
    sink_batch_max_wait_ms: int = Field(
        500, ge=1, description="...or when this long has passed since its first record."
    )
    sink_max_record_bytes: int = Field(
        65_536, ge=256, description="Records larger than this go to the dead-letter topic."
    )
    sink_retry_initial_ms: int = Field(
        200, ge=1, description="First back-off after a failed insert; doubles per failure."
    )
    sink_retry_max_ms: int = Field(10_000, ge=1, description="Cap of the insert back-off.")
    health_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Port of the consumer loop's probes (`python -m functions.sink`): `/healthz` "
        "fails once the loop stops polling, `/readyz` answers once it has started. Unset: no "
        "probe server.",
    )

    # --- Fault injection (tests and `make chaos` only; leave unset in a deployment) -----------
    sink_fault_point: SinkFaultPoint | None = Field(
        None,
        description="Testing only: the consumer-loop sink logs `fault point reached` and freezes "
        "at this point of its first batch (`before_insert`, or `after_insert` = before the "
        "commit), so that a test can SIGKILL it there.",
    )
    sink_fault_signals: bool = Field(
        False,
        description="Testing only: SIGUSR1 makes `python -m functions.sink` detach its `views` "
        "table before the next insert (the engine then refuses inserts); SIGUSR2 attaches it.",
    )

    # --- HTTP --------------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Address the local host listens on.")
    port: int = Field(8080, ge=0, le=65535, description="Port the local host listens on.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Level of the JSON logs on stdout."
    )
    log_access: bool = Field(
        False,
        description="A JSON line per HTTP request (uvicorn's access log). Off by default: the "
        "platform's ingress logs requests already, and a line per request is a measurable share "
        "of the ingest function's CPU (docs/benchmarks.md).",
    )

    @model_validator(mode="before")
    @classmethod
    def _secrets_from_files(cls, data: Any) -> Any:
        """``CLICKHOUSE_DSN``, ``SENTRY_DSN`` and ``JWT_SECRET`` from the environment, else from
        their ``_FILE`` (an OpenFaaS secret, a mounted Secret), read now: a missing file stops the
        process at start, not at its first request. The DSN has no silent default: a pod whose
        Secret is missing must not start against some other database."""
        if not isinstance(data, dict):
            return data
        data = {**data}
        for key in ("clickhouse_dsn", "sentry_dsn", "jwt_secret"):
            path = data.get(f"{key}_file")
            if not data.get(key) and path:
                data[key] = _read_secret_file(f"{key.upper()}_FILE", path)
        if not data.get("clickhouse_dsn"):
            raise ValueError(
                "CLICKHOUSE_DSN (or CLICKHOUSE_DSN_FILE) is not set: give "
                "http(s)://user:password@host:8123, or chdb:///<dir> for the embedded engine"
            )
        return data

    # --- Abuse limits (docs/security.md) -----------------------------------------------------
    http_max_header_bytes: int = Field(
        16_384,
        ge=1024,
        description="Most bytes of a request line and headers together; larger ones get 431 and "
        "the connection is closed (also the most a connection holds before its headers end).",
    )
    http_request_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="Time a request's headers and body have to arrive, from its first byte; "
        "then 408 and the connection is closed.",
    )
    http_keepalive_seconds: int = Field(
        5,
        ge=1,
        description="How long an idle connection (before its first request or between requests) "
        "stays open.",
    )
    http_max_connections: int = Field(
        2000,
        ge=1,
        description="Open connections a server process serves (uvicorn `limit_concurrency`); "
        "requests beyond get 503. Lowered to stay below the process's file limit.",
    )
    rate_limit_per_second: float = Field(
        10.0,
        ge=0,
        description="Sustained requests per second of one viewer (the verified token's `sub`; "
        "the client address for requests without a valid token); beyond, 429 with "
        "`Retry-After`. 0 turns the limit off. A player sends an event every few seconds.",
    )
    rate_limit_burst: int = Field(
        100,
        ge=1,
        description="Requests one viewer may send at once before `RATE_LIMIT_PER_SECOND` applies "
        "(a player coming back online, flushing its queue).",
    )
    most_watched_max_age_seconds: float = Field(
        5.0,
        ge=0,
        description="How old the most-watched ranking served may be: it is computed at most "
        "once per this interval and shared by every caller.",
    )
    # --- Error reports (Sentry) ---------------------------------------------------------------
    sentry_dsn: str | None = Field(
        None,
        description="Sentry DSN: warnings, errors and every dead-lettered record are reported "
        "there (docs/observability.md). Unset: nothing is sent.",
    )
    sentry_dsn_file: Path | None = Field(
        None,
        description="File holding the Sentry DSN (an OpenFaaS secret), read at start when "
        "`SENTRY_DSN` is unset.",
    )
    sentry_environment: str | None = Field(
        None, description="Sentry `environment` of the reports (Sentry's default: production)."
    )
    sentry_release: str | None = Field(
        None, description="Sentry `release` of the reports; default: the package version."
    )

    @model_validator(mode="after")
    def _key_material_matches_algorithm(self) -> Settings:
        asymmetric = (self.jwt_public_key_file, self.jwt_jwks_url)
        if self.jwt_algorithm == "HS256":
            if self.jwt_secret is None:  # read from JWT_SECRET_FILE, if given, before this
                raise ValueError("JWT_ALGORITHM=HS256 needs JWT_SECRET or JWT_SECRET_FILE")
            if any(source is not None for source in asymmetric):
                raise ValueError("public keys are for RS256/ES256, not JWT_ALGORITHM=HS256")
        elif sum(source is not None for source in asymmetric) != 1:
            raise ValueError(
                f"JWT_ALGORITHM={self.jwt_algorithm} needs one of JWT_PUBLIC_KEY_FILE "
                "and JWT_JWKS_URL"
            )
        return self

    def jwt_verification_key(self) -> str:
        """The secret (HS256) or PEM public key (RS256/ES256 without JWKS), read from its file."""
        if self.jwt_algorithm == "HS256":
            assert self.jwt_secret is not None  # given, or read from JWT_SECRET_FILE
            return self.jwt_secret
        if self.jwt_public_key_file is None:
            raise ValueError("the keys come from JWT_JWKS_URL")
        return self.jwt_public_key_file.read_text()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, parsed from the environment on first use. Invalid settings end
    the process with one line naming each variable and what is wrong, without its value (a DSN
    or a secret must not reach the logs)."""
    try:
        return Settings()
    except ValidationError as exc:
        raise SystemExit(f"invalid configuration: {configuration_errors(exc)}") from None


def configuration_errors(exc: ValidationError) -> str:
    """The errors of a settings validation on one line, by environment variable name."""
    described = []
    for error in exc.errors(include_url=False, include_input=False):
        name = ".".join(str(part) for part in error["loc"]).upper()
        message = error["msg"].removeprefix("Value error, ")
        described.append(f"{name}: {message}" if name else message)
    return "; ".join(described)


def markdown_table() -> str:
    """The configuration table of the README, one row per environment variable."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        # Paths inside the checkout are shown relative to it, so the table is the same anywhere.
        shown = str(field.default).replace(str(LOCAL_STATE_DIR.parent), "<checkout>")
        if field.is_required():
            default = "(required)"
        else:
            default = "(none)" if field.default is None else f"`{shown}`"
        rows.append(f"| `{name.upper()}` | {default} | {field.description} |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.stdout.write(markdown_table() + "\n")
