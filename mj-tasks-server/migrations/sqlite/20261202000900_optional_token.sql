-- Users imported from new-api without an access token have none until `user token` issues one:
-- token_hash becomes optional (NULL never matches a presented token, and UNIQUE allows many).
-- SQLite cannot drop NOT NULL in place, so the table is rebuilt with the same rows.
CREATE TABLE mj_users_new (
    id         INTEGER PRIMARY KEY,
    username   TEXT    NOT NULL UNIQUE,
    role       INTEGER NOT NULL DEFAULT 1,
    status     INTEGER NOT NULL DEFAULT 1,
    quota      INTEGER NOT NULL DEFAULT 0,
    token_hash TEXT    UNIQUE,
    created_at INTEGER NOT NULL
);
INSERT INTO mj_users_new (id, username, role, status, quota, token_hash, created_at)
    SELECT id, username, role, status, quota, token_hash, created_at FROM mj_users;
DROP TABLE mj_users;
ALTER TABLE mj_users_new RENAME TO mj_users;
