-- Indexes for the filters and their combinations; `id` ends each one so that an equality
-- prefix reads in id order (pages newest first, cursor bounds) without a sort.
-- An owner-scoped lookup by upstream id: one probe, however many tasks the owner has.
CREATE INDEX idx_midjourneys_user_mj_id ON midjourneys (user_id, mj_id, id);
-- A channel's time range: its count and page from the index alone.
CREATE INDEX idx_midjourneys_channel_submit ON midjourneys (channel_id, submit_time, id);
-- Status and action pages, for everyone, per channel and per owner.
CREATE INDEX idx_midjourneys_status ON midjourneys (status, id);
CREATE INDEX idx_midjourneys_channel_status ON midjourneys (channel_id, status, id);
CREATE INDEX idx_midjourneys_user_status ON midjourneys (user_id, status, id);
CREATE INDEX idx_midjourneys_action ON midjourneys (action, id);
