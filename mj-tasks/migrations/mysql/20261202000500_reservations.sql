-- Reservation journal: one row per quota reservation whose submit is still in flight, written in
-- the same transaction as the debit. Accepting the submit deletes the row in the transaction
-- that inserts the task; rejecting it deletes the row in the transaction that credits the quota
-- back. A row left behind by a crash is released by the poller once it is older than the
-- upstream timeout: whoever deletes the row decides, so nothing is charged or released twice.
CREATE TABLE mj_reservations (
    id         BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    user_id    BIGINT NOT NULL,
    amount     BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    INDEX idx_mj_reservations_created (created_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
