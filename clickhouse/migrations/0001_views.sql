-- Every view event. A redelivered event (same user, movie, event_id) collapses into one row on
-- merge and under FINAL; insert_deduplication_token additionally drops a retried batch whole.
CREATE TABLE IF NOT EXISTS {database}.views
(
    event_id          UUID,
    user_id           UUID,
    movie_id          UUID,
    movie_time_offset UInt64,
    event_time        DateTime64(3, 'UTC'),
    received_at       DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(received_at)
PARTITION BY toYYYYMM(event_time)
ORDER BY (user_id, movie_id, event_id)
SETTINGS non_replicated_deduplication_window = 1000;
