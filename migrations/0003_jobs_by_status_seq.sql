-- GET /v1/jobs?status= pages newest first: (status, seq) serves that order
-- from the index. jobs_by_status (status, priority, seq) stays for the
-- scheduler's queue order.
CREATE INDEX jobs_by_status_seq ON jobs(status, seq);
