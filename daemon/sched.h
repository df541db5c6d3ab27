/* sched: which queued job goes to which idle worker.
 *
 * A pure function of the queue, the running counts and the workers, so the
 * policy is unit-tested without a loop or a database. The policy: highest
 * priority first; among equal priorities the job of the user with the fewest
 * running jobs (counting the ones assigned in this same round); then the
 * oldest. A job only goes to a worker that fits its device request (cpu,
 * cuda, any; "any" prefers a CUDA worker), and never past the per-user limit
 * on running jobs.
 *
 * Within one user and device class the order never changes (same running
 * count, same fit, then priority and age), so each such group gives at most
 * one job per idle worker, best first: the caller passes each group's best
 * `idle` jobs instead of the whole queue and gets the same picks at any
 * depth (tests/unit/test_sched.c checks this on random queues). */
#ifndef LR_SCHED_H
#define LR_SCHED_H

#include <stdint.h>

typedef struct sched_job {
    const char *user;
    const char *device; /* "cpu", "cuda" or "any" */
    int priority;
    int64_t seq;        /* submission order */
} sched_job;

typedef struct sched_worker {
    const char *backend; /* "cpu", "cuda:N" */
    int idle;
} sched_worker;

typedef struct sched_user {
    const char *name;
    int running;
} sched_user;

typedef struct sched_assign {
    int job, worker; /* indices into the inputs */
} sched_assign;

/* 1 when a worker of this backend can run a job asking for device. */
int sched_fits(const char *device, const char *backend);

/* Fills out with at most max assignments and returns how many. users lists
 * the running counts (users not listed run none); max_per_user 0 = no limit. */
int sched_pick(const sched_job *jobs, int n_jobs, const sched_worker *workers, int n_workers,
               const sched_user *users, int n_users, int max_per_user, sched_assign *out, int max);

#endif
