-- Small named values shared by every instance on this database (the generated image-URL
-- signing key, ...). Written once, race-free: the first insert wins, later ones are ignored.
-- VARCHAR(191): the longest utf8mb4 key that fits InnoDB's 767-byte index prefix.
CREATE TABLE mj_settings (
    name       VARCHAR(191) NOT NULL PRIMARY KEY,
    value      TEXT         NOT NULL,
    created_at BIGINT       NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
