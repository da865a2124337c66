-- Poller lease: one row per lease name; the holder renews `expires_at` (epoch ms) every round and
-- another instance takes the row over only once it has expired.
CREATE TABLE mj_leases (
    name       TEXT    NOT NULL PRIMARY KEY,
    holder     TEXT    NOT NULL,
    expires_at INTEGER NOT NULL
);
INSERT INTO mj_leases (name, holder, expires_at) VALUES ('mj_poller', '', 0);

-- Refunds: at most one row per task (primary key), written in the same transaction as the
-- status change to FAILURE and the ledger credit, so a charge is returned exactly once.
CREATE TABLE mj_refunds (
    task_id     INTEGER NOT NULL PRIMARY KEY,
    user_id     INTEGER NOT NULL,
    amount      INTEGER NOT NULL,
    refunded_at INTEGER NOT NULL
);
