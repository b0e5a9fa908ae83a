"""The requests every load generator sends: a pool of signed, varied, valid view events.

The pool is made once per run and written to a file that both generators read (the wrk script
and ``PythonLoad``), so the body mix is defined here only. Viewer tokens are signed with the
bench's own secret; each body names a movie of a fixed pool, a position, and sometimes a client
``event_time`` and ``event_id``.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import orjson

from functions.auth import DEV_PERMISSIONS

__all__ = ["ViewRequest", "make_pool", "read_pool", "sign", "write_pool"]

TOKEN_LIFETIME = timedelta(hours=6)


@dataclass(frozen=True, slots=True)
class ViewRequest:
    token: str
    body: bytes


def sign(user_id: uuid.UUID, secret: str) -> str:
    """A bearer token for ``user_id`` that the functions accept with ``JWT_SECRET=secret``."""
    now = datetime.now(UTC)
    claims = {
        "sub": str(user_id),
        "iat": now,
        "exp": now + TOKEN_LIFETIME,
        "permissions": list(DEV_PERMISSIONS),
    }
    return jwt.encode(claims, secret, algorithm="HS256")


def make_pool(
    secret: str, size: int, viewers: int, movies: int, seed: int = 5
) -> list[ViewRequest]:
    """``size`` requests from ``viewers`` users about ``movies`` movies."""
    rng = random.Random(seed)
    tokens = [sign(uuid.UUID(int=rng.getrandbits(128), version=4), secret) for _ in range(viewers)]
    movie_ids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(movies)]
    now = datetime.now(UTC)
    pool = []
    for _ in range(size):
        body: dict[str, object] = {
            "movie_id": rng.choice(movie_ids),
            "movie_time_offset": rng.randrange(0, 3 * 3600 * 1000),
        }
        kind = rng.randrange(4)
        if kind == 1:
            moment = now - timedelta(milliseconds=rng.randrange(60_000))
            body["event_time"] = moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        elif kind == 2:
            body["event_id"] = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        pool.append(ViewRequest(rng.choice(tokens), orjson.dumps(body)))
    return pool


def write_pool(pool: list[ViewRequest], path: Path) -> Path:
    """One ``token<TAB>body`` line per request (the format the wrk script reads)."""
    path.write_bytes(b"".join(r.token.encode() + b"\t" + r.body + b"\n" for r in pool))
    return path


def read_pool(path: Path) -> list[ViewRequest]:
    pool = []
    for line in path.read_bytes().splitlines():
        token, _, body = line.partition(b"\t")
        pool.append(ViewRequest(token.decode(), body))
    return pool
