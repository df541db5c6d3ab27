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

#endif
