-- Exact totals without counting rows (see mj-tasks/src/store/counts.rs): how many tasks each
-- key of a few filter-dimension sets has per time bucket of submit_time. `dims` says which of
-- user (1), channel (2), status (4) and action (8) key the row; the others hold 0 / ''.
-- Buckets are floor(submit_time / width): an hour, or a day for the per-owner sets. The store
-- adds to these counters in the same transaction as every write that changes what a filter
-- matches.
CREATE TABLE mj_task_counts (
    dims       BIGINT NOT NULL,
    user_id    BIGINT NOT NULL,
    channel_id BIGINT NOT NULL,
    status     TEXT NOT NULL,
    action     TEXT NOT NULL,
    bucket     BIGINT NOT NULL,
    tasks      BIGINT NOT NULL,
    PRIMARY KEY (dims, user_id, channel_id, status, action, bucket)
);

-- Backfill from the tasks already stored, one statement per set.
INSERT INTO mj_task_counts (dims, user_id, channel_id, status, action, bucket, tasks)
SELECT 0, 0, 0, '', '', (submit_time - ((submit_time % 3600000) + 3600000) % 3600000) / 3600000, COUNT(*)
FROM midjourneys GROUP BY (submit_time - ((submit_time % 3600000) + 3600000) % 3600000) / 3600000;
INSERT INTO mj_task_counts (dims, user_id, channel_id, status, action, bucket, tasks)
SELECT 2, 0, channel_id, '', '', (submit_time - ((submit_time % 3600000) + 3600000) % 3600000) / 3600000, COUNT(*)
FROM midjourneys GROUP BY channel_id, (submit_time - ((submit_time % 3600000) + 3600000) % 3600000) / 3600000;
INSERT INTO mj_task_counts (dims, user_id, channel_id, status, action, bucket, tasks)
SELECT 4, 0, 0, status, '', (submit_time - ((submit_time % 3600000) + 3600000) % 3600000) / 3600000, COUNT(*)
FROM midjourneys GROUP BY status, (submit_time - ((submit_time % 3600000) + 3600000) % 3600000) / 3600000;
INSERT INTO mj_task_counts (dims, user_id, channel_id, status, action, bucket, tasks)
SELECT 8, 0, 0, '', action, (submit_time - ((submit_time % 3600000) + 3600000) % 3600000) / 3600000, COUNT(*)
FROM midjourneys GROUP BY action, (submit_time - ((submit_time % 3600000) + 3600000) % 3600000) / 3600000;
INSERT INTO mj_task_counts (dims, user_id, channel_id, status, action, bucket, tasks)
SELECT 6, 0, channel_id, status, '', (submit_time - ((submit_time % 3600000) + 3600000) % 3600000) / 3600000, COUNT(*)
FROM midjourneys GROUP BY channel_id, status, (submit_time - ((submit_time % 3600000) + 3600000) % 3600000) / 3600000;
INSERT INTO mj_task_counts (dims, user_id, channel_id, status, action, bucket, tasks)
SELECT 1, user_id, 0, '', '', (submit_time - ((submit_time % 86400000) + 86400000) % 86400000) / 86400000, COUNT(*)
FROM midjourneys GROUP BY user_id, (submit_time - ((submit_time % 86400000) + 86400000) % 86400000) / 86400000;
INSERT INTO mj_task_counts (dims, user_id, channel_id, status, action, bucket, tasks)
SELECT 5, user_id, 0, status, '', (submit_time - ((submit_time % 86400000) + 86400000) % 86400000) / 86400000, COUNT(*)
FROM midjourneys GROUP BY user_id, status, (submit_time - ((submit_time % 86400000) + 86400000) % 86400000) / 86400000;
INSERT INTO mj_task_counts (dims, user_id, channel_id, status, action, bucket, tasks)
SELECT 9, user_id, 0, '', action, (submit_time - ((submit_time % 86400000) + 86400000) % 86400000) / 86400000, COUNT(*)
FROM midjourneys GROUP BY user_id, action, (submit_time - ((submit_time % 86400000) + 86400000) % 86400000) / 86400000;
