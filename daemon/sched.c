#include "daemon/sched.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int is_cuda(const char *backend) { return !strncmp(backend, "cuda", 4); }

int sched_fits(const char *device, const char *backend) {
    if (!strcmp(device, "any")) return 1;
    if (!strcmp(device, "cuda")) return is_cuda(backend);
    return !strcmp(device, "cpu") && !strcmp(backend, "cpu");
}

int sched_wait_reason(const char *device, const sched_wstate *w, int n, char *buf, size_t cap) {
    int fit = 0, dead = 0, busy = 0;
    char all[256] = "", fitting[256] = "";
    for (int i = 0; i < n; i++) {
        size_t k = strlen(all);
        snprintf(all + k, sizeof all - k, "%s%s", k ? ", " : "", w[i].backend);
        if (!sched_fits(device, w[i].backend)) continue;
        k = strlen(fitting);
        snprintf(fitting + k, sizeof fitting - k, "%s%s", k ? ", " : "", w[i].backend);
        fit++;
        if (!strcmp(w[i].status, "idle")) return 0;
        dead += !strcmp(w[i].status, "dead");
        busy += !strcmp(w[i].status, "busy");
    }
    if (!fit) {
        snprintf(buf, cap, "no worker of this lorad can run device %s (%s%s)", device,
                 n ? "its workers: " : "it has no workers", all);
        return 2;
    }
    if (dead == fit) {
        snprintf(buf, cap, "every worker that can run device %s is dead: %s; see lorad's log", device, fitting);
        return 2;
    }
    if (busy)
        snprintf(buf, cap, "waiting for a free worker that can run device %s (%d of %d busy: %s)", device, busy,
                 fit, fitting);
    else
        snprintf(buf, cap, "waiting for a worker that can run device %s to start (%s)", device, fitting);
    return 1;
}

int sched_pick(const sched_job *jobs, int n_jobs, const sched_worker *workers, int n_workers,
               const sched_user *users, int n_users, int max_per_user, sched_assign *out, int max) {
    if (n_jobs <= 0 || n_workers <= 0 || max <= 0) return 0;
    /* running[j]: the running count of job j's user, kept in step for every
     * job of that user as this round assigns more. */
    int *running = calloc((size_t)n_jobs, sizeof *running);
    char *taken = calloc((size_t)n_jobs, 1), *busy = calloc((size_t)n_workers, 1);
    int n = 0;
    if (!running || !taken || !busy) goto out;
    for (int j = 0; j < n_jobs; j++)
        for (int u = 0; u < n_users; u++)
            if (!strcmp(users[u].name, jobs[j].user)) running[j] = users[u].running;
    for (int w = 0; w < n_workers; w++) busy[w] = !workers[w].idle;
    while (n < max) {
        int best = -1, best_w = -1;
        for (int j = 0; j < n_jobs; j++) {
            if (taken[j] || (max_per_user > 0 && running[j] >= max_per_user)) continue;
            int fit = -1;
            for (int w = 0; w < n_workers; w++) {
                if (busy[w] || !sched_fits(jobs[j].device, workers[w].backend)) continue;
                if (fit < 0 || (is_cuda(workers[w].backend) && !is_cuda(workers[fit].backend))) fit = w;
            }
            if (fit < 0) continue;
            if (best >= 0) {
                const sched_job *a = &jobs[j], *b = &jobs[best];
                if (a->priority != b->priority) {
                    if (a->priority < b->priority) continue;
                } else if (running[j] != running[best]) {
                    if (running[j] > running[best]) continue;
                } else if (a->seq >= b->seq) {
                    continue;
                }
            }
            best = j;
            best_w = fit;
        }
        if (best < 0) break;
        taken[best] = 1;
        busy[best_w] = 1;
        out[n].job = best;
        out[n].worker = best_w;
        n++;
        for (int j = 0; j < n_jobs; j++)
            if (!strcmp(jobs[j].user, jobs[best].user)) running[j]++;
    }
out:
    free(running);
    free(taken);
    free(busy);
    return n;
}
