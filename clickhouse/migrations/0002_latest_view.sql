-- One row per (user, movie): the event with the greatest event_time, whatever the arrival order.
-- Fed by the materialized view below at insert time; read with FINAL.
CREATE TABLE IF NOT EXISTS {database}.latest_view
(
    user_id           UUID,
    movie_id          UUID,
    movie_time_offset UInt64,
    event_time        DateTime64(3, 'UTC'),
    event_id          UUID
)
ENGINE = ReplacingMergeTree(event_time)
ORDER BY (user_id, movie_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.latest_view_mv TO {database}.latest_view AS
SELECT user_id, movie_id, movie_time_offset, event_time, event_id
FROM {database}.views;
