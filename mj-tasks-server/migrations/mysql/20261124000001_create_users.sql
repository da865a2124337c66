-- Dashboard users of the bundled server. Access tokens are stored only as SHA-256 hex digests.
CREATE TABLE mj_users (
    id         BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    username   VARCHAR(191) NOT NULL,
    role       BIGINT       NOT NULL DEFAULT 1,
    status     BIGINT       NOT NULL DEFAULT 1,
    quota      BIGINT       NOT NULL DEFAULT 0,
    token_hash CHAR(64)     NOT NULL,
    created_at BIGINT       NOT NULL,
    UNIQUE KEY uq_mj_users_username (username),
    UNIQUE KEY uq_mj_users_token_hash (token_hash)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
