-- Ids that an import from a new-api database (`mj-tasks-server import`) has reserved: a range
-- of task ids, or one user or channel id. A claim is written after the ids were checked free and
-- before any row is copied, so a rerun or a resumed import knows which rows in those ids are its
-- own (skip, or continue after them) and which would be a conflict.
CREATE TABLE mj_import_claims (
    source     VARCHAR(64) NOT NULL,
    entity     VARCHAR(16) NOT NULL,
    first_id   BIGINT      NOT NULL,
    last_id    BIGINT      NOT NULL,
    claimed_at BIGINT      NOT NULL,
    PRIMARY KEY (source, entity, first_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
