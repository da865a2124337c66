-- SQLite appends the rowid (`id`) to every index entry by itself; naming `id` as a column as
-- well stored it twice, so counts over a heavy user's or a channel's entries read a third more
-- pages than needed. The one-column indexes keep the same order: (key, id).
DROP INDEX IF EXISTS idx_midjourneys_user_id;
CREATE INDEX idx_midjourneys_user_id ON midjourneys (user_id);
DROP INDEX IF EXISTS idx_midjourneys_channel;
CREATE INDEX idx_midjourneys_channel ON midjourneys (channel_id);
DROP INDEX IF EXISTS idx_midjourneys_unfinished;
CREATE INDEX idx_midjourneys_unfinished ON midjourneys (finished);
