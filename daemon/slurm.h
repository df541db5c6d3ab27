/* slurm: running jobs through a Slurm cluster (sbatch, squeue, scontrol,
 * scancel), for the event loop (super.c), which decides when.
 *
 * A job whose device is in slurm_devices is not given to lorad's workers:
 * lorad submits a batch script that runs `lora-worker agent --connect
 * <lorad's worker address> --once --name slurm-<job id>` on the node Slurm
 * picks, the worker token in the job's environment (LORA_WORKER_TOKEN,
 * never on a command line). That worker connects like any remote worker
 * (daemon/remote.h) and is given exactly its job. A job with
 * resources.devices N > 1 is one batch job of --ntasks N whose script
 * starts the N ranks with `srun --mpi=pmix` (Debian's OpenMPI takes its
 * ranks from Slurm's PMIx; it has no PMI-2): rank 0 is that agent, the
 * others receive each job from it over MPI (worker/agent_rank.c). More
 * sbatch options (--gres, --cpus-per-task, --nodes) come from
 * slurm_sbatch_args; ranks on other nodes read the files rank 0 fetched,
 * so across nodes the worker's --data-dir must be on a shared filesystem. lorad keeps its own queue
 * order: a job is submitted only once it is queued, so lorad's priorities
 * and per-user limits decide what reaches Slurm and Slurm's fair share and
 * QOS decide when and where it runs (README, "More than one machine").
 *
 * The commands block the caller for as long as they take (milliseconds on
 * a healthy controller); each is cut off after SLURM_CMD_TIMEOUT_S. */
#ifndef LR_SLURM_H
#define LR_SLURM_H

#include <stddef.h>
#include "common/err.h"
#include "daemon/config.h"

#define SLURM_CMD_TIMEOUT_S 20

/* 1 when jobs asking for device ("cpu", "cuda", "any") go to Slurm. */
int slurm_routes(const lorad_config *c, const char *device);
/* Writes the batch script of job_id (data_dir/slurm/<job>.sh, its output
 * beside it) for ranks (1: one plain agent) and submits it; slurm_id gets
 * sbatch's job id. */
int slurm_submit(const lorad_config *c, const char *job_id, int ranks, char *slurm_id, size_t cap,
                 lr_err *err) LR_WARN_UNUSED;
/* The batch job's state (PENDING, RUNNING, COMPLETED, CANCELLED, FAILED,
 * TIMEOUT, NODE_FAIL, PREEMPTED, ..., or GONE when Slurm no longer knows
 * it) and Slurm's reason ("None" when none). */
int slurm_query(const char *slurm_id, char *state, size_t scap, char *reason, size_t rcap, lr_err *err) LR_WARN_UNUSED;
/* 1 for a state after which the batch job runs no more. */
int slurm_state_final(const char *state);
int slurm_cancel(const char *slurm_id, lr_err *err) LR_WARN_UNUSED;

#endif
