/* dist: the ranks of one data-parallel job (MPI; NCCL for GPU memory).
 *
 * A lora-worker started by mpirun (or srun) is one rank of a job: every
 * rank runs the same training loop on its share of each step's
 * micro-batches and the ranks sum their gradients and counts here. A
 * lora-worker started any other way is the only rank (size 1), MPI is
 * never initialised and every collective is a no-op, so the single-process
 * path costs nothing. Built without OpenMPI (no LR_HAVE_MPI), a worker
 * started by mpirun refuses to run rather than train N copies alone.
 *
 * Collectives are blocking and every rank must call them in the same order
 * with the same sizes. Reductions sum in rank order, so all ranks get the
 * same bits. Buffers are host memory, except dist_allreduce_f32's, which is
 * backend memory: MPI on the CPU backend, NCCL (bootstrapped over MPI, as
 * llm.c and PyTorch do) on a CUDA backend after dist_attach. */
#ifndef LR_DIST_H
#define LR_DIST_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "common/err.h"
#include "kernels/backend.h"

#define DIST_JSON_MAX ((int64_t)1 << 26)

typedef struct dist dist;

/* The process's ranks, from the launcher's environment (OMPI_COMM_WORLD_SIZE,
 * PMI_SIZE, PMIX_RANK): MPI is initialised only when one of those says there is
 * more than one rank. One per process; later calls return the same. */
int dist_init(dist **out, lr_err *err) LR_WARN_UNUSED;
/* Ends MPI (when dist_init started it). */
void dist_finalize(dist *d);

int dist_rank(const dist *d);
int dist_size(const dist *d);
/* The rank among those on this host (the GPU a rank uses). */
int dist_local_rank(const dist *d);

/* Binds GPU collectives to a CUDA backend (NCCL communicator); no-op for a
 * host-memory backend or a single rank. dist_detach before the backend is
 * destroyed. */
int dist_attach(dist *d, kb_backend *be, lr_err *err) LR_WARN_UNUSED;
void dist_detach(dist *d);

/* x[0..n) = sum over ranks, in place. f32 in the attached backend's memory
 * (host memory when none is attached); f64 and i64 in host memory. */
int dist_allreduce_f32(dist *d, float *x, size_t n, lr_err *err) LR_WARN_UNUSED;
int dist_allreduce_f64(dist *d, double *x, size_t n, lr_err *err) LR_WARN_UNUSED;
int dist_allreduce_i64(dist *d, int64_t *x, size_t n, lr_err *err) LR_WARN_UNUSED;
/* Rank 0's bytes to every rank. */
int dist_bcast(dist *d, void *buf, size_t bytes, lr_err *err) LR_WARN_UNUSED;
int dist_barrier(dist *d, lr_err *err) LR_WARN_UNUSED;
/* Rank 0's *doc (NULL: none, e.g. "no more jobs") to every rank: the others
 * get a new reference or NULL in *doc. */
int dist_bcast_json(dist *d, json_t **doc, lr_err *err) LR_WARN_UNUSED;
/* Ends every rank now (mpirun takes the others down): for a rank that
 * failed alone while the rest wait for it in an exchange. */
void dist_abort(dist *d) __attribute__((noreturn));

/* Seconds spent in dist_allreduce_f32 since the last reset (the gradient
 * exchange's share of a step, for bench). */
double dist_reduce_seconds(const dist *d);
void dist_reset_seconds(dist *d);

/* "MPI", "NCCL" or "none": the transport of dist_allreduce_f32. */
const char *dist_transport(const dist *d);

#endif
