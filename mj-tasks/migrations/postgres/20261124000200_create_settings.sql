-- Small named values shared by every instance on this database (the generated image-URL
-- signing key, ...). Written once, race-free: the first insert wins, later ones are ignored.
CREATE TABLE mj_settings (
    name       VARCHAR(191) PRIMARY KEY NOT NULL,
    value      TEXT         NOT NULL,
    created_at BIGINT       NOT NULL
);
