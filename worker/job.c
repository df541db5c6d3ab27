#include "worker/job.h"

#include "worker/dist.h"
#include "worker/evaljob.h"

int job_run(const jobspec *spec, const train_paths *paths, const train_opts *opts, const train_hooks *hooks,
            train_outcome *outcome, lr_err *err) {
    if (spec->method.type != METHOD_EVAL) return train_run(spec, paths, opts, hooks, outcome, err);
    /* nothing to train: rank 0 evaluates alone */
    *outcome = TRAIN_DONE;
    if (dist_rank(opts->dist)) return 0;
    return evaljob_run(spec, paths, opts, hooks, outcome, err);
}
