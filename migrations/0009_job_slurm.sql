-- Jobs lorad runs through Slurm (daemon/slurm.h): the batch job of the
-- current attempt and its state as squeue/scontrol last said (NULL: none).
ALTER TABLE jobs ADD COLUMN slurm_job_id TEXT;
ALTER TABLE jobs ADD COLUMN slurm_state TEXT;
