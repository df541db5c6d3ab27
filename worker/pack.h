/* pack: co-training several LoRA jobs that share a base model in one
 * worker pass (issue 19).
 *
 * A pack owns one backend and one copy of the base model; each job in it
 * is a trainer on that model (train_open_shared) with its adapter in its
 * own slot. pack_step runs one optimizer step of every job in lockstep:
 * round k passes micro-batch k of each job that has one through
 * model_fwd_bwd_pack (the base once over all their rows), then each job
 * ends its step on its own (clipping, schedule, AdamW, logs, eval,
 * checkpoints, stopping rules). Jobs with different grad_accum, sequence
 * lengths or step counts sit out the rounds they have no micro-batch for;
 * a job that ends, is cancelled or fails leaves at once and the others go
 * on; a job added between steps joins at the next one. Every job computes
 * what it would alone (model.h: bit for bit on a GEMM whose rows do not
 * depend on the batch's height, ~1e-7 relative on OpenBLAS and cuBLAS), so
 * its losses, adapter and checkpoints are those of its own run, and it
 * resumes packed or alone.
 * Which jobs may share a pack: proto/pack.h's pack_compatible. */
#ifndef LR_WORKER_PACK_H
#define LR_WORKER_PACK_H

#include "common/err.h"
#include "proto/jobspec.h"
#include "worker/train.h"

typedef struct pack pack;
struct hf_config;

/* Called once when a job leaves the pack: failed 0 with its outcome, or 1
 * with the error (its error event was sent through its hooks). */
typedef void (*pack_ended_fn)(void *tag, int failed, train_outcome outcome, const lr_err *err);

/* A pack on a backend (opts->backend, opts->threads; opts->dist must be
 * NULL) holding at most max_jobs jobs. The model loads with the first job. */
int pack_new(const train_opts *opts, int max_jobs, pack **out, lr_err *err) LR_WARN_UNUSED;
/* Ends every job still in it (as failed: "the pack was closed") and frees it. */
void pack_free(pack *p);

/* Adds a job; spec, paths and hooks must stay valid until ended is
 * called. Returns -1 when the pack refuses it (full: LR_E_BUSY; not
 * pack_compatible with the jobs in it, or not packable at all:
 * LR_E_INVALID), and nothing else happens. Otherwise 0: the job set up
 * (loading the base model if it is the first) and joins the next step,
 * or it has already ended (ended called: failed, or stopped before its
 * first step). resume: continue from its newest checkpoint. */
int pack_add(pack *p, const jobspec *spec, const train_paths *paths, const train_hooks *hooks, int resume,
             pack_ended_fn ended, void *tag, lr_err *err) LR_WARN_UNUSED;

/* One step of every job in the pack. Returns 0 (jobs that ended were
 * reported through their ended), or -1 when the pass itself failed (every
 * job in it was ended as failed with that error). */
int pack_step(pack *p, lr_err *err) LR_WARN_UNUSED;

/* Jobs in the pack now. */
int pack_jobs(const pack *p);
/* A job's steps run so far with at least one other job in the pass; -1
 * when tag is not in the pack. */
int64_t pack_packed_steps(const pack *p, const void *tag);
/* What a job adds to a pack's memory, in bytes, an upper bound: its LoRA
 * tensors on every linear module with their gradients and AdamW moments,
 * and the activations of its micro-batch (batch_size x max_seq_len rows,
 * no recompute); the base model is the pack's, counted once. */
int64_t pack_job_bytes(const jobspec *spec, const struct hf_config *c);
/* Whether the backend named so can co-train at all (cpu and cuda[:N] can;
 * any other name is refused with a message). */
int pack_supported(const char *backend, lr_err *err);

#endif
