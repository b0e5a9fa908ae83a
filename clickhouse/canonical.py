"""The Python twin of migration 0003's check: the form of a record as the ingest function writes it.

ClickHouse accepts a line on the sink's fast path only if it matches this pattern (see
``migrations/0003_canonical_view_lines.sql``; a test keeps the two equal). In Python it only
sorts the records of a refused partition: those of this form are sent to ClickHouse again, which
checks them again, so the model stays the one definition of valid.
"""

from __future__ import annotations

import re

__all__ = ["CANONICAL_RECORD_PATTERN", "is_canonical"]

_UUID = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_TIME = (
    "(19[7-9][0-9]|2[01][0-9][0-9])-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    "T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]([.][0-9]{1,6})?Z"
)
CANONICAL_RECORD_PATTERN = (
    f'^[{{]"schema_version":1,"event_id":"{_UUID}","user_id":"{_UUID}","movie_id":"{_UUID}"'
    f',"movie_time_offset":(0|[1-9][0-9]{{0,8}}),"event_time":"{_TIME}","received_at":"{_TIME}'
    '"[}]$'
)
_CANONICAL_RECORD = re.compile(CANONICAL_RECORD_PATTERN.encode())


def is_canonical(value: bytes) -> bool:
    """Whether ``value`` is of the form ClickHouse checks on the fast path."""
    return _CANONICAL_RECORD.fullmatch(value) is not None
