-- Dashboard users of the bundled server. Access tokens are stored only as SHA-256 hex digests.
CREATE TABLE mj_users (
    id         INTEGER PRIMARY KEY,
    username   TEXT    NOT NULL UNIQUE,
    role       INTEGER NOT NULL DEFAULT 1,
    status     INTEGER NOT NULL DEFAULT 1,
    quota      INTEGER NOT NULL DEFAULT 0,
    token_hash TEXT    NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);
