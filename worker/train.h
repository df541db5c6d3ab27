/* train: one training job from spec to adapter (the worker's job runner).
 *
 * Used by `lora-worker run` (hooks print progress lines) and by the daemon
 * agent (hooks stream frames to lorad). Writes everything into run_dir:
 * checkpoints/, adapter_model.safetensors, adapter_config.json,
 * train_log.csv, train_log.json, time_metrics.json. */
#ifndef LR_TRAIN_H
#define LR_TRAIN_H

#include <stdint.h>
#include "common/err.h"
#include "proto/jobspec.h"

typedef struct train_paths {
    const char *model_dir;                          /* resolved model directory */
    const char *training_files[JOBSPEC_MAX_FILES];  /* resolved dataset files, in spec order */
    const char *validation_file;                    /* NULL when none */
    const char *reference_adapter_dir;              /* dpo / continued training; NULL when none */
    const char *run_dir;                            /* output directory (created) */
} train_paths;

typedef struct train_hooks {
    void *ud;
    /* One logged point: name is "loss", "eval_loss", "lr", "grad_norm", "tokens_per_s", ... */
    void (*metric)(void *ud, int64_t step, double epoch, const char *name, double value);
    /* level: "info", "warning", "error"; a human sentence. */
    void (*event)(void *ud, const char *level, const char *msg);
    /* Optional: called before a checkpoint is written; returns once what
     * was logged so far is safe (a resume from the checkpoint never logs
     * those steps again). */
    void (*flush)(void *ud);
    /* A checkpoint directory was completed (its DONE marker exists). */
    void (*checkpoint)(void *ud, int64_t step, const char *dir);
    /* Progress for ETA: step done of total. */
    void (*progress)(void *ud, int64_t step, int64_t total_steps, double epoch);
    /* TRAIN_GO, or how to stop: TRAIN_CANCEL stops as soon as it can (between
     * micro-batches, eval batches, generated tokens, setup phases) and
     * abandons the current step; TRAIN_SUSPEND stops at the next point a
     * resume continues from bit for bit (a finished step, or the current
     * step's start when asked mid-step) and saves a checkpoint there first. */
    int (*cancelled)(void *ud);
    /* Optional: a stopping rule (patience, max_minutes) ended the run; reason
     * says which and at what step. Called once, before train_run returns
     * TRAIN_STOPPED_EARLY. */
    void (*stopped)(void *ud, const char *reason);
} train_hooks;

struct dist;

/* With dist of more than one rank (worker/dist.h), every rank calls
 * train_run with the same spec and paths; each trains its share of every
 * step's micro-batches (micro-batch k on rank k % size) and the ranks sum
 * gradients and counts, so the steps are the single process's. Only rank 0
 * calls the hooks (its cancelled() answer goes to every rank) and writes to
 * run_dir; every rank reads checkpoints from it (a shared file system
 * across hosts). A checkpoint resumes on any number of ranks. A "cuda:N"
 * backend becomes cuda:N+local_rank on each rank. */
typedef struct train_opts {
    const char *backend;  /* "cpu" or "cuda:N" */
    int threads;          /* 0 = all cores */
    int resume;           /* 1: continue from the newest complete checkpoint in run_dir */
    struct dist *dist;    /* NULL: one process */
} train_opts;

enum { TRAIN_GO = 0, TRAIN_CANCEL = 1, TRAIN_SUSPEND = 2 }; /* what cancelled() answers */

/* TRAIN_CANCELLED: stopped by cancelled(), suspended or not. */
typedef enum { TRAIN_DONE = 0, TRAIN_CANCELLED = 1, TRAIN_STOPPED_EARLY = 2 } train_outcome;

/* Runs the job. Returns 0 and sets *outcome, or -1 with err filled (failure). */
int train_run(const jobspec *spec, const train_paths *paths, const train_opts *opts,
              const train_hooks *hooks, train_outcome *outcome, lr_err *err) LR_WARN_UNUSED;

/* ---- co-training: several jobs on one model (worker/pack.c) ----
 * train_run is train_open_shared's setup, then steps, then train_close,
 * on a model of its own. On a shared model (a plain LoRA sft job, one
 * process) the caller runs each step in parts so that the micro-batches
 * of several jobs share one pass (model_fwd_bwd_pack): begin, then for
 * each micro-batch k a check (from the second on), micro and, after the
 * pass, micro_done, then end. Everything else (losses, clipping, schedule,
 * optimizer, logs, eval, checkpoints, stopping rules, cancel) is the job's
 * own and the same code as train_run's, so a job computes what it would
 * alone. The adapter lives in the job's model_slot between calls. */
typedef struct trainer trainer;
struct kb_backend;
struct model;
struct model_pack_mb;

/* Loads the job's base model as train_run does (lora.quantize,
 * compute_dtype, activation_checkpointing): what a pack shares. */
int train_load_model(const jobspec *spec, const char *model_dir, struct kb_backend *be, struct model **out,
                     lr_err *err) LR_WARN_UNUSED;
/* Setup and resume on be and m (neither owned). Returns 0 with *out ready
 * to step, 1 when the job ended before its first step (stopped while
 * loading, or resumed at its end: *outcome, nothing to close), -1 on
 * failure (the error event sent). */
int train_open_shared(const jobspec *spec, const train_paths *paths, const train_opts *opts,
                      const train_hooks *hooks, struct kb_backend *be, struct model *m, trainer **out,
                      train_outcome *outcome, lr_err *err) LR_WARN_UNUSED;
/* Loads the next step's micro-batches: *n of them. */
int train_step_begin(trainer *T, int *n, lr_err *err) LR_WARN_UNUSED;
/* Micro-batch k as a pass's part (its slot, rows, grad scale, dropout stream). */
void train_step_micro(trainer *T, int k, struct model_pack_mb *mb);
/* Its sums once the pass ran. */
void train_step_micro_done(trainer *T, int k, const struct model_pack_mb *mb);
/* Between micro-batches: 0 to go on, 1 when cancelled() stopped the job
 * (the step abandoned as train_run does; *outcome set), -1 on failure. */
int train_step_check(trainer *T, train_outcome *outcome, lr_err *err) LR_WARN_UNUSED;
/* Ends the step. Returns 0 to go on, 1 when the job ended (finished,
 * stopped early or halted: *outcome, outputs written), -1 on failure. */
int train_step_end(trainer *T, train_outcome *outcome, lr_err *err) LR_WARN_UNUSED;
/* Steps done, and *total of them. */
int64_t train_steps(const trainer *T, int64_t *total);
/* Frees the trainer; after an ended job (failed 0) writes
 * time_metrics.json, after a failure sends the error event. Returns 0, or
 * -1 (failed, or the metrics could not be written). */
int train_close(trainer *T, int failed, lr_err *err);

#endif
