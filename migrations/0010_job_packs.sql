-- Co-training (issue 19): the worker passes jobs shared. One row per job and
-- pack it ran in (a job requeued after a crash may run in several), with
-- the steps it ran in that pack. The jobs row keeps what its object shows:
-- the newest pack, every job it shared a pass with (a JSON array of ids,
-- itself included; NULL when it never shared one) and its packed steps.
CREATE TABLE job_packs (
    job_id TEXT NOT NULL,
    pack_id TEXT NOT NULL,
    steps INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, pack_id)
) WITHOUT ROWID;
CREATE INDEX job_packs_by_pack ON job_packs(pack_id, job_id);
ALTER TABLE jobs ADD COLUMN pack_id TEXT;
ALTER TABLE jobs ADD COLUMN pack_jobs TEXT;
ALTER TABLE jobs ADD COLUMN packed_steps INTEGER NOT NULL DEFAULT 0;
CREATE INDEX jobs_by_pack ON jobs(pack_id) WHERE pack_id IS NOT NULL;
