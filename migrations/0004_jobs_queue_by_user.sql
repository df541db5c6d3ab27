-- The scheduler reads, per user and device class, that user's best queued
-- jobs (highest priority, then oldest): one index seek per group, so the
-- queue's depth does not decide who is seen. It also counts a user's queued
-- jobs for max_queued_per_user.
CREATE INDEX jobs_queue_by_user ON jobs(status, user, device, priority DESC, seq);
