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
 * Packing (issue 19): a worker may co-train several jobs that share a base
 * in one pass. A job joins a worker's pack only when its pack key equals the
 * pack's and the worker has room, and only when it is the next job the
 * policy would start on that worker anyway: a better job that fits the
 * worker but can start nowhere (it waits for a free worker) closes the
 * worker to joins, so a pack never keeps a worker busy longer while a
 * better job waits for it. An idle worker is taken before a pack is joined,
 * so with free workers nothing changes; an idle worker given a packable job
 * becomes a pack with room for the next compatible ones of the same round.
 * A job never waits for a pack to fill.
 *
 * Within one user and device class the order never changes (same running
 * count, same fit, then priority and age), and a job of the group that
 * cannot start closes to joins every worker the later ones could join, so
 * a group's picks are its best jobs in order, one per unit of room at most:
 * the caller passes each group's best `room` jobs (room summed over the
 * workers) instead of the whole queue and gets the same picks at any depth
 * (tests/unit/test_sched.c checks this on random queues). */
#ifndef LR_SCHED_H
#define LR_SCHED_H

#include <stddef.h>
#include <stdint.h>

typedef struct sched_job {
    const char *user;
    const char *device; /* "cpu", "cuda" or "any" */
    int priority;
    int64_t seq;        /* submission order */
    const char *pack;   /* pack key (proto/pack.h's pack_key); NULL: never shares a pass */
} sched_job;

typedef struct sched_worker {
    const char *backend; /* "cpu", "cuda:N" */
    int idle;            /* runs no job */
    /* Jobs it may still take: idle, the most one pass may hold (0 reads as
     * 1: no packing); running a pack, that less the jobs in it (0: none). */
    int room;
    const char *pack;    /* running: its pack's key; NULL: runs a job that never packs */
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

/* Fills out with at most max assignments, in the order the policy made them,
 * and returns how many; a worker may appear more than once (a pack) and an
 * assignment to a worker that was not idle is a join. users lists the
 * running counts (users not listed run none); max_per_user 0 = no limit. */
int sched_pick(const sched_job *jobs, int n_jobs, const sched_worker *workers, int n_workers,
               const sched_user *users, int n_users, int max_per_user, sched_assign *out, int max);

#endif
