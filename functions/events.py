"""The event schema: the single source for the HTTP API, the Kafka payload and their documents.

``ViewEventIn`` is what a player posts, ``SeedViewIn`` the body of the service this project
replaces, and ``ViewRecord`` the Kafka value both become. ``python -m functions.events`` writes
the JSON schema of the Kafka value; a test fails when the committed file is stale.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal
from uuid import UUID, uuid4

import orjson
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetPydanticSchema,
    ValidationInfo,
    WithJsonSchema,
    create_model,
    field_validator,
)
from pydantic_core import CoreSchema, ErrorDetails, PydanticCustomError, core_schema

__all__ = [
    "CANONICAL_UUID",
    "MAX_MOVIE_TIME_OFFSET_MS",
    "RECORD_SCHEMA_PATH",
    "SCHEMA_VERSION",
    "CanonicalUUID",
    "EventTimeWindow",
    "RequestModels",
    "SeedViewIn",
    "ViewBatchIn",
    "ViewEventIn",
    "ViewRecord",
    "invalid_json_message",
    "record_json_schema",
    "render_record_schema",
    "request_models",
]

SCHEMA_VERSION = 1
RECORD_SCHEMA_PATH = Path(__file__).resolve().parents[1] / "docs" / "schemas" / "view-record.json"

# Longer than any feature film, short enough to catch a seconds/milliseconds mix-up in microseconds.
MAX_MOVIE_TIME_OFFSET_MS = 48 * 3600 * 1000

# ClickHouse's DateTime64 spans 1900..2299; anything outside this narrower span is a broken clock.
_STORABLE_FROM = datetime(1970, 1, 1, tzinfo=UTC)
_STORABLE_UNTIL = datetime(2200, 1, 1, tzinfo=UTC)

# The 8-4-4-4-12 form of RFC 9562, either case (Swift and .NET print upper case).
CANONICAL_UUID = re.compile(r"^[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}$")


def _canonical_uuid_schema(source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
    # pydantic also takes 32 bare hex digits, "urn:uuid:..." and "{...}": one spelling only here.
    # Text must match the pattern before it is parsed; both steps run inside pydantic-core (a
    # Python validator per UUID was a tenth of the sink's CPU).
    canonical_text = core_schema.chain_schema(
        [
            core_schema.custom_error_schema(
                core_schema.str_schema(pattern=CANONICAL_UUID.pattern),
                custom_error_type="uuid_not_canonical",
                custom_error_message="must be a UUID as 8-4-4-4-12 hex digits",
            ),
            handler(source),
        ]
    )
    # No serialization schema of its own: pydantic-core's UUID serializer writes the same
    # lower-case 8-4-4-4-12 text without calling UUID.__str__ (a record's encoding took 7.1 µs
    # with the calls, 3.0 µs without, in a micro-benchmark).
    return core_schema.json_or_python_schema(
        json_schema=canonical_text,
        python_schema=core_schema.union_schema(
            [core_schema.is_instance_schema(UUID), canonical_text]
        ),
    )


CanonicalUUID = Annotated[
    UUID,
    GetPydanticSchema(_canonical_uuid_schema),
    WithJsonSchema({"type": "string", "format": "uuid", "pattern": CANONICAL_UUID.pattern}),
]
# Checked inside pydantic-core: a Python validator here cost the sink a fifth of its CPU.
StorableTime = Annotated[AwareDatetime, Field(ge=_STORABLE_FROM, lt=_STORABLE_UNTIL)]
_OFFSET_DESCRIPTION = "Position in the movie, in ms."
MovieTimeOffset = Annotated[
    int, Field(ge=0, le=MAX_MOVIE_TIME_OFFSET_MS, description=_OFFSET_DESCRIPTION)
]


@dataclass(frozen=True, slots=True)
class EventTimeWindow:
    """The ``event_time``s a request may carry, relative to when it was received.

    Passed as the validation context of the request models; without it (the Kafka side) only the
    static bounds of the schema apply.
    """

    received_at: datetime
    max_skew: timedelta
    max_age: timedelta

    def check(self, event_time: datetime) -> None:
        if event_time > self.received_at + self.max_skew:
            raise PydanticCustomError(
                "event_time_in_future",
                "must be at most {seconds} s after the receive time",
                {"seconds": int(self.max_skew.total_seconds())},
            )
        if event_time < self.received_at - self.max_age:
            raise PydanticCustomError(
                "event_time_too_old",
                "must be at most {seconds} s before the receive time",
                {"seconds": int(self.max_age.total_seconds())},
            )


class _Strict(BaseModel):
    # strict: "12" is not 12; extra=forbid: a misspelt field is an error, not silently dropped.
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class ViewEventIn(_Strict):
    """Body of ``POST /v1/views``: where the token's viewer is in a movie."""

    movie_id: CanonicalUUID
    movie_time_offset: MovieTimeOffset
    event_time: StorableTime | None = Field(
        None,
        description="When the player was at that position (RFC 3339 with offset); default: "
        "receipt. At most a few minutes ahead of the receive time, at most some days behind.",
    )
    event_id: CanonicalUUID | None = Field(
        None, description="The client's idempotency key; default: a new UUID."
    )
    user_id: CanonicalUUID | None = Field(
        None, description="Must equal the token's subject when given."
    )

    @field_validator("event_time")
    @classmethod
    def _within_window(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        if value is not None and isinstance(info.context, EventTimeWindow):
            info.context.check(value)
        return value


class ViewBatchIn(_Strict):
    """Body of ``POST /v1/views:batch``: a player's offline queue, each event judged alone."""

    events: list[ViewEventIn] = Field(min_length=1)


class SeedViewIn(_Strict):
    """Body of the seed service's ``POST /bigdata-api/v1/producer/views``."""

    user_id: CanonicalUUID
    movie_id: CanonicalUUID
    movie_time_offset: MovieTimeOffset
    created_at: str = Field(
        pattern=r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$",
        description="Ignored as in the seed service: the receive time is used instead.",
    )


@dataclass(frozen=True, slots=True)
class RequestModels:
    """The request bodies with the configured bounds, as validated and as documented."""

    view: type[ViewEventIn]
    batch: type[ViewBatchIn]
    seed: type[SeedViewIn]


@lru_cache(maxsize=4)
def request_models(max_movie_time_offset_ms: int, max_batch_events: int) -> RequestModels:
    """Subclasses of the request models narrowed to a deployment's limits (same names)."""
    offset: Any = (
        int,
        Field(ge=0, le=max_movie_time_offset_ms, description=_OFFSET_DESCRIPTION),
    )
    view = create_model(
        "ViewEventIn", __base__=ViewEventIn, __doc__=ViewEventIn.__doc__, movie_time_offset=offset
    )
    batch = create_model(
        "ViewBatchIn",
        __base__=ViewBatchIn,
        __doc__=ViewBatchIn.__doc__,
        events=(list[view], Field(min_length=1, max_length=max_batch_events)),
    )
    seed = create_model(
        "SeedViewIn", __base__=SeedViewIn, __doc__=SeedViewIn.__doc__, movie_time_offset=offset
    )
    return RequestModels(view=view, batch=batch, seed=seed)


class ViewRecord(_Strict):
    """The Kafka value of a view event (key: the user id)."""

    schema_version: Literal[1] = 1
    event_id: CanonicalUUID
    user_id: CanonicalUUID
    movie_id: CanonicalUUID
    movie_time_offset: MovieTimeOffset
    event_time: StorableTime
    received_at: StorableTime

    @classmethod
    def from_request(
        cls,
        user_id: UUID,
        movie_id: UUID,
        movie_time_offset: int,
        received_at: datetime,
        event_time: datetime | None = None,
        event_id: UUID | None = None,
    ) -> ViewRecord:
        """The record for an accepted request, with the defaults of the HTTP contract."""
        return cls(
            event_id=event_id or uuid4(),
            user_id=user_id,
            movie_id=movie_id,
            movie_time_offset=movie_time_offset,
            event_time=(event_time or received_at).astimezone(UTC),
            received_at=received_at,
        )

    def to_kafka(self) -> tuple[bytes, bytes]:
        """(key, value) as produced: the user id keys per-viewer ordering."""
        return str(self.user_id).encode(), self.__pydantic_serializer__.to_json(self)


def invalid_json_message(errors: list[ErrorDetails]) -> str | None:
    """The parser's message when the input was not JSON at all; None when it was JSON that does
    not match the model (a body or a Kafka value: both sides answer the two differently)."""
    if any(error["type"] == "json_invalid" for error in errors):
        return errors[0]["msg"]
    return None


def record_json_schema() -> dict[str, Any]:
    """JSON schema of the Kafka value, as consumers should validate it."""
    schema = ViewRecord.model_json_schema(mode="serialization")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"view-record.v{SCHEMA_VERSION}.json"
    return schema


def render_record_schema() -> bytes:
    return orjson.dumps(record_json_schema(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)


if __name__ == "__main__":
    RECORD_SCHEMA_PATH.parent.mkdir(parents=True, exist_ok=True)
    RECORD_SCHEMA_PATH.write_bytes(render_record_schema() + b"\n")
    sys.stdout.write(f"wrote {RECORD_SCHEMA_PATH}\n")
