"""What the HTTP API answers and its path and query parameters, as pydantic models.

The answers are written with ``orjson`` straight from dicts on the hot path; these models are
their documentation (the OpenAPI document is generated from them) and the fuzz tests check that
every answer matches them. The parameter models also validate the parameters.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from functions.events import CanonicalUUID
from functions.problems import Problem

__all__ = [
    "MAX_MOST_WATCHED_LIMIT",
    "BatchItemAccepted",
    "BatchItemRejected",
    "BatchOutcome",
    "Health",
    "MostWatched",
    "MostWatchedQuery",
    "MovieViewersOut",
    "PositionOut",
    "PositionPath",
    "Ready",
    "SeedAccepted",
    "ViewAccepted",
]


class ViewAccepted(BaseModel):
    """The event is in Kafka (acknowledged by all in-sync replicas)."""

    event_id: UUID = Field(description="The client's `event_id`, or the one given to the event.")
    status: Literal["accepted"]


class SeedAccepted(BaseModel):
    """The seed service's answer, kept byte for byte for its clients."""

    message: Literal["acknowledged"]
    status: Literal["success"]


class BatchItemAccepted(BaseModel):
    """This event of the batch is in Kafka."""

    status: Literal["accepted"]
    event_id: UUID


class BatchItemRejected(BaseModel):
    """This event of the batch was not taken; the problem says why (4xx: fix it, 503: retry)."""

    status: Literal["rejected"]
    problem: Problem


class BatchOutcome(BaseModel):
    """Per-event outcome of a batch, in request order: 202 when all were accepted, else 207."""

    accepted: int = Field(ge=0)
    rejected: int = Field(ge=0)
    items: list[BatchItemAccepted | BatchItemRejected]


class PositionOut(BaseModel):
    """Where the token's viewer last was in the movie."""

    movie_id: UUID
    movie_time_offset: int = Field(ge=0)
    event_time: datetime


class MovieViewersOut(BaseModel):
    movie_id: UUID
    viewers: int = Field(ge=0, description="Distinct viewers.")
    events: int = Field(ge=0, description="View events, each counted once however often delivered.")


class MostWatched(BaseModel):
    """Movies by number of distinct viewers, most first; ties by events, then by movie id."""

    movies: list[MovieViewersOut]


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    """Every dependency answers now (otherwise: a 503 problem naming those that do not)."""

    status: Literal["ready"]
    dependencies: dict[str, Literal["ready", "not ready"]] = Field(
        description="`kafka`: the producer has live metadata for the views topic; "
        "`clickhouse`: ClickHouse answers."
    )


class PositionPath(BaseModel):
    """Path parameters of the position read."""

    model_config = ConfigDict(strict=True, extra="forbid")

    movie_id: CanonicalUUID = Field(description="The movie.")


# The ranking is computed once at this length and shared by every caller (a slice for each).
MAX_MOST_WATCHED_LIMIT = 1000


class MostWatchedQuery(BaseModel):
    """Query parameters of the ranking; unknown ones are rejected, as unknown body fields are."""

    model_config = ConfigDict(extra="forbid")

    limit: int = Field(10, ge=1, le=MAX_MOST_WATCHED_LIMIT, description="How many movies.")
