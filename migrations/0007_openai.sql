-- The OpenAI fine-tuning API (/v1/fine_tuning/jobs, /v1/files) on the same
-- jobs and datasets. openai: JSON of what a job was created with and resolved
-- to in OpenAI's terms (training_file, validation_file, hyperparameters,
-- method, seed, suffix, metadata, integrations, fine_tuned_model); NULL for
-- jobs created before it, whose object derives them from the spec.
ALTER TABLE jobs ADD COLUMN openai TEXT;
-- pause: 1 asks a running job's worker to checkpoint and stop; the job then
-- waits in status 'paused' until resumed (queued again, from that checkpoint).
ALTER TABLE jobs ADD COLUMN pause_requested INTEGER NOT NULL DEFAULT 0;
-- A file's purpose as uploaded (fine-tune unless said otherwise).
ALTER TABLE datasets ADD COLUMN purpose TEXT NOT NULL DEFAULT 'fine-tune';
