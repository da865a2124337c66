-- Users imported from new-api without an access token have none until `user token` issues one:
-- token_hash becomes optional (NULL never matches a presented token, and UNIQUE allows many).
ALTER TABLE mj_users MODIFY token_hash CHAR(64) NULL;
