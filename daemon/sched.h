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

#include <stddef.h>
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

typedef struct sched_wstate {
    const char *backend; /* "cpu", "cuda:N" */
    const char *status;  /* "starting", "idle", "busy" or "dead" */
} sched_wstate;

/* Why a queued job asking for device waits, as far as the workers tell: a
 * sentence for the job's waiting_reason and events in buf ("no worker of
 * this lorad can run device cuda (its workers: cpu)", "every worker that can
 * run device cuda is dead: cuda:0", "waiting for a free worker that can run
 * device cuda (2 of 2 busy: cuda:0, cuda:1)"). Returns 0 when an idle worker
 * fits (buf untouched: only the queue order holds the job back), 1 when the
 * fitting workers are busy or starting, 2 when none is alive or none fits. */
int sched_wait_reason(const char *device, const sched_wstate *w, int n, char *buf, size_t cap);

/* Fills out with at most max assignments and returns how many. users lists
 * the running counts (users not listed run none); max_per_user 0 = no limit. */
int sched_pick(const sched_job *jobs, int n_jobs, const sched_worker *workers, int n_workers,
               const sched_user *users, int n_users, int max_per_user, sched_assign *out, int max);

#endif
