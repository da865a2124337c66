-- A status's or an action's time range (its pages' bound and its totals' edge buckets), read in
-- submit-time order whether the value is rare or held by nine tasks in ten.
CREATE INDEX idx_midjourneys_status_submit ON midjourneys (status, submit_time);
CREATE INDEX idx_midjourneys_action_submit ON midjourneys (action, submit_time);
