-- The sink's fast path: view records inserted as text lines, checked and parsed by ClickHouse.
-- A line is stored only if it is exactly what the ingest function writes (a ViewRecord as
-- pydantic serializes it: this field order, no spaces, lower-case 8-4-4-4-12 UUIDs, UTC times
-- ending in Z, the schema's bounds). Any other line fails the whole insert, and the sink then
-- validates those records itself (pydantic), so this check only has to accept a subset of what
-- the model accepts; tests/test_canonical_lines.py checks that against the model.
-- The Null engine keeps no lines: the materialized view writes the parsed rows to views.
CREATE TABLE IF NOT EXISTS {database}.canonical_view_lines (line String) ENGINE = Null;

-- Fixed positions: the three UUIDs start at characters 33, 82 and 132; what follows
-- "movie_time_offset": (character 190) is split at the quotes.
CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.canonical_view_lines_mv TO {database}.views AS
SELECT
    toUUID(substring(line, 33, 36)) AS event_id,
    toUUID(substring(line, 82, 36)) AS user_id,
    toUUID(substring(line, 132, 36)) AS movie_id,
    toUInt64(substring(tail[1], 1, length(tail[1]) - 1)) AS movie_time_offset,
    parseDateTime64BestEffort(tail[4], 3, 'UTC') AS event_time,
    parseDateTime64BestEffort(tail[8], 3, 'UTC') AS received_at
FROM
(
    SELECT line, splitByChar('"', substring(line, 190)) AS tail
    FROM {database}.canonical_view_lines
)
WHERE throwIf(
    NOT match(line, concat(
        '^[{]"schema_version":1',
        ',"event_id":"', '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}',
        '","user_id":"', '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}',
        '","movie_id":"', '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}',
        '","movie_time_offset":', '(0|[1-9][0-9]{0,8})',
        ',"event_time":"', '(19[7-9][0-9]|2[01][0-9][0-9])-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])',
        'T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]([.][0-9]{1,6})?Z',
        '","received_at":"', '(19[7-9][0-9]|2[01][0-9][0-9])-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])',
        'T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]([.][0-9]{1,6})?Z',
        '"[}]$'))
    -- MAX_MOVIE_TIME_OFFSET_MS of functions/events.py; an impossible date (30 February)
    -- fails in parseDateTime64BestEffort.
    OR movie_time_offset > 172800000,
    'a line is not a view record as the ingest function writes it'
) = 0;
