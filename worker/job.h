/* job: the job runner, every method's entry point. An eval job (method
 * eval) is evaluated by evaljob_run; every other method is trained by
 * train_run. lora-worker run and the agent (for lorad) call this, never the
 * engines directly, so that train_run is about training only. */
#ifndef LR_JOB_H
#define LR_JOB_H

#include "common/err.h"
#include "proto/jobspec.h"
#include "worker/train.h"

/* As train_run (train.h): the same paths, options, hooks and outcome. With
 * several ranks (opts->dist) an eval job runs on rank 0 alone; the others
 * return at once with TRAIN_DONE. */
int job_run(const jobspec *spec, const train_paths *paths, const train_opts *opts, const train_hooks *hooks,
            train_outcome *outcome, lr_err *err) LR_WARN_UNUSED;

#endif
