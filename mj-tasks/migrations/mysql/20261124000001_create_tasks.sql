-- Tasks: every column of new-api's `midjourneys` table, plus `finished` (terminal status, kept
-- by the store from TaskStatus::is_finished) and `version` (compare-and-swap token).
-- utf8mb4_bin: full Unicode, and ids compare exactly (no case folding).
-- TEXT columns have no DEFAULT (MySQL before 8.0.13 refuses one); the store writes them all.
CREATE TABLE midjourneys (
    id          BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    code        BIGINT       NOT NULL DEFAULT 0,
    user_id     BIGINT       NOT NULL,
    action      VARCHAR(191) NOT NULL DEFAULT '',
    mj_id       VARCHAR(191) NOT NULL DEFAULT '',
    prompt      MEDIUMTEXT   NOT NULL,
    prompt_en   MEDIUMTEXT   NOT NULL,
    description MEDIUMTEXT   NOT NULL,
    state       MEDIUMTEXT   NOT NULL,
    submit_time BIGINT       NOT NULL DEFAULT 0,
    start_time  BIGINT       NOT NULL DEFAULT 0,
    finish_time BIGINT       NOT NULL DEFAULT 0,
    image_url   TEXT         NOT NULL,
    video_url   TEXT         NOT NULL,
    video_urls  MEDIUMTEXT   NOT NULL,
    status      VARCHAR(191) NOT NULL DEFAULT '',
    progress    TEXT         NOT NULL,
    fail_reason MEDIUMTEXT   NOT NULL,
    channel_id  BIGINT       NOT NULL DEFAULT 0,
    quota       BIGINT       NOT NULL DEFAULT 0,
    buttons     MEDIUMTEXT   NOT NULL,
    properties  MEDIUMTEXT   NOT NULL,
    finished    BOOLEAN      NOT NULL DEFAULT FALSE,
    version     BIGINT       NOT NULL DEFAULT 0,
    -- InnoDB secondary indexes carry the primary key, so (user_id) already orders by id; it is
    -- spelled out to match the other dialects.
    KEY idx_midjourneys_user_id (user_id, id),
    KEY idx_midjourneys_user_submit (user_id, submit_time),
    KEY idx_midjourneys_submit (submit_time),
    KEY idx_midjourneys_channel (channel_id, id),
    KEY idx_midjourneys_mj_id (mj_id),
    KEY idx_midjourneys_unfinished (finished, id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE mj_channels (
    id         BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name       VARCHAR(191) NOT NULL,
    base_url   TEXT         NOT NULL,
    secret     TEXT         NOT NULL,
    enabled    BOOLEAN      NOT NULL DEFAULT TRUE,
    created_at BIGINT       NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
