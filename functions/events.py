"""The event schema: the single source for the HTTP API, the Kafka payload and their documents.

``ViewEventIn`` is what a player posts, ``SeedViewIn`` the body of the service this project
replaces, and ``ViewRecord`` the Kafka value both become. ``python -m functions.events`` writes
the JSON schema of the Kafka value; a test fails when the committed file is stale.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from uuid import UUID, uuid4

import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

__all__ = [
    "RECORD_SCHEMA_PATH",
    "SCHEMA_VERSION",
    "SeedViewIn",
    "ViewEventIn",
    "ViewRecord",
    "record_json_schema",
    "render_record_schema",
]

SCHEMA_VERSION = 1
RECORD_SCHEMA_PATH = Path(__file__).resolve().parents[1] / "docs" / "schemas" / "view-record.json"

# Longer than any feature film, short enough to catch a seconds/milliseconds mix-up in microseconds.
MAX_MOVIE_TIME_OFFSET_MS = 48 * 3600 * 1000

MovieTimeOffset = Annotated[
    int,
    Field(ge=0, le=MAX_MOVIE_TIME_OFFSET_MS, description="Position in the movie, in ms."),
]


class _Strict(BaseModel):
    # strict: "12" is not 12; extra=forbid: a misspelt field is an error, not silently dropped.
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class ViewEventIn(_Strict):
    """Body of ``POST /v1/views``: where the token's viewer is in a movie."""

    movie_id: UUID
    movie_time_offset: MovieTimeOffset
    event_time: AwareDatetime | None = Field(
        None, description="When the player was at that position (RFC 3339); default: receipt."
    )
    event_id: UUID | None = Field(
        None, description="The client's idempotency key; default: a new UUID."
    )
    user_id: UUID | None = Field(None, description="Must equal the token's subject when given.")


class SeedViewIn(BaseModel):
    """Body of the seed service's ``POST /bigdata-api/v1/producer/views``."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    user_id: UUID
    movie_id: UUID
    movie_time_offset: MovieTimeOffset
    created_at: str = Field(
        pattern=r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$",
        description="Ignored as in the seed service: the receive time is used instead.",
    )


class ViewRecord(_Strict):
    """The Kafka value of a view event (key: the user id)."""

    schema_version: Literal[1] = 1
    event_id: UUID
    user_id: UUID
    movie_id: UUID
    movie_time_offset: MovieTimeOffset
    event_time: AwareDatetime
    received_at: AwareDatetime

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
        return str(self.user_id).encode(), orjson.dumps(self.model_dump(mode="json"))


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
