-- Distinct viewers and distinct events per movie, kept up to date at insert time, so that the
-- most-watched ranking merges ~one state per movie instead of scanning every event under FINAL.
-- Both are distinct counts, so a redelivered event (any batch boundaries, any offset) leaves
-- them unchanged. `uniqCombined` is exact for small sets and within ~1 % beyond, and its result
-- depends only on the set of values, not on insert or merge order.
CREATE TABLE IF NOT EXISTS {database}.movie_viewers
(
    movie_id UUID,
    viewers  AggregateFunction(uniqCombined, UUID),
    events   AggregateFunction(uniqCombined, UUID)
)
ENGINE = AggregatingMergeTree
ORDER BY movie_id;

CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.movie_viewers_mv TO {database}.movie_viewers AS
SELECT movie_id, uniqCombinedState(user_id) AS viewers, uniqCombinedState(event_id) AS events
FROM {database}.views
GROUP BY movie_id;

-- Events stored before this migration.
INSERT INTO {database}.movie_viewers
SELECT movie_id, uniqCombinedState(user_id), uniqCombinedState(event_id)
FROM {database}.views
GROUP BY movie_id;
