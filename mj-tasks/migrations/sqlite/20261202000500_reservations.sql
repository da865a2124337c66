-- Reservation journal: one row per quota reservation whose submit is still in flight, written in
-- the same transaction as the debit. Accepting the submit deletes the row in the transaction
-- that inserts the task; rejecting it deletes the row in the transaction that credits the quota
-- back. A row left behind by a crash is released by the poller once it is older than the
-- upstream timeout: whoever deletes the row decides, so nothing is charged or released twice.
CREATE TABLE mj_reservations (
    id         INTEGER PRIMARY KEY,
    user_id    INTEGER NOT NULL,
    amount     INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX idx_mj_reservations_created ON mj_reservations (created_at);
