-- Tasks: every column of new-api's `midjourneys` table, plus `finished` (terminal status, kept
-- by the store from TaskStatus::is_finished) and `version` (compare-and-swap token).
CREATE TABLE midjourneys (
    id          INTEGER PRIMARY KEY,
    code        INTEGER NOT NULL DEFAULT 0,
    user_id     INTEGER NOT NULL,
    action      TEXT    NOT NULL DEFAULT '',
    mj_id       TEXT    NOT NULL DEFAULT '',
    prompt      TEXT    NOT NULL DEFAULT '',
    prompt_en   TEXT    NOT NULL DEFAULT '',
    description TEXT    NOT NULL DEFAULT '',
    state       TEXT    NOT NULL DEFAULT '',
    submit_time INTEGER NOT NULL DEFAULT 0,
    start_time  INTEGER NOT NULL DEFAULT 0,
    finish_time INTEGER NOT NULL DEFAULT 0,
    image_url   TEXT    NOT NULL DEFAULT '',
    video_url   TEXT    NOT NULL DEFAULT '',
    video_urls  TEXT    NOT NULL DEFAULT '',
    status      TEXT    NOT NULL DEFAULT '',
    progress    TEXT    NOT NULL DEFAULT '',
    fail_reason TEXT    NOT NULL DEFAULT '',
    channel_id  INTEGER NOT NULL DEFAULT 0,
    quota       INTEGER NOT NULL DEFAULT 0,
    buttons     TEXT    NOT NULL DEFAULT '',
    properties  TEXT    NOT NULL DEFAULT '',
    finished    BOOLEAN NOT NULL DEFAULT FALSE,
    version     INTEGER NOT NULL DEFAULT 0
);

-- One index per documented query path (SQLite appends the rowid `id` to every index entry):
-- a user's pages newest first, and their counts.
CREATE INDEX idx_midjourneys_user_id ON midjourneys (user_id, id);
-- a user's submit-time range: count and page from the index alone.
CREATE INDEX idx_midjourneys_user_submit ON midjourneys (user_id, submit_time);
-- the admin submit-time range.
CREATE INDEX idx_midjourneys_submit ON midjourneys (submit_time);
-- the admin channel filter (new-api has no index here: a full scan per page and per count).
CREATE INDEX idx_midjourneys_channel ON midjourneys (channel_id, id);
-- lookups by upstream id (not unique: an upstream can repeat ids).
CREATE INDEX idx_midjourneys_mj_id ON midjourneys (mj_id);
-- the poller's unfinished scan: finished rows sit in their own key range and are never read.
CREATE INDEX idx_midjourneys_unfinished ON midjourneys (finished, id);

CREATE TABLE mj_channels (
    id         INTEGER PRIMARY KEY,
    name       TEXT    NOT NULL,
    base_url   TEXT    NOT NULL,
    secret     TEXT    NOT NULL,
    enabled    BOOLEAN NOT NULL DEFAULT TRUE,
    created_at INTEGER NOT NULL
);
