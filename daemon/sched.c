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

/* 1 when job a goes before job b: priority, then the fewest running jobs of
 * its user, then age. */
static int goes_before(const sched_job *jobs, const int *running, int a, int b) {
    if (jobs[a].priority != jobs[b].priority) return jobs[a].priority > jobs[b].priority;
    if (running[a] != running[b]) return running[a] < running[b];
    return jobs[a].seq < jobs[b].seq;
}

typedef struct pick_state {
    const sched_job *jobs;
    const sched_worker *workers;
    int n_jobs, n_workers;
    int *running, *room; /* running: of job j's user, kept in step as this round assigns more */
    char *taken, *visited, *idle, *closed;
    const char **pack;
} pick_state;

/* Where job j can start now: an idle worker (a CUDA one first), else a pack
 * with room whose key is j's and that no better waiting job closed. */
static int place(const pick_state *p, int j) {
    const sched_job *job = &p->jobs[j];
    int fit = -1;
    for (int pass = 0; pass < 2 && fit < 0; pass++)
        for (int w = 0; w < p->n_workers; w++) {
            if (!p->room[w] || !sched_fits(job->device, p->workers[w].backend)) continue;
            if (pass == 0 && !p->idle[w]) continue;
            if (pass == 1 && (p->idle[w] || p->closed[w] || !job->pack || !p->pack[w] || strcmp(job->pack, p->pack[w])))
                continue;
            if (fit < 0 || (is_cuda(p->workers[w].backend) && !is_cuda(p->workers[fit].backend))) fit = w;
        }
    return fit;
}

int sched_pick(const sched_job *jobs, int n_jobs, const sched_worker *workers, int n_workers,
               const sched_user *users, int n_users, int max_per_user, sched_assign *out, int max) {
    if (n_jobs <= 0 || n_workers <= 0 || max <= 0) return 0;
    pick_state p = {.jobs = jobs, .workers = workers, .n_jobs = n_jobs, .n_workers = n_workers};
    p.running = calloc((size_t)n_jobs, sizeof *p.running);
    p.room = calloc((size_t)n_workers, sizeof *p.room);
    p.taken = calloc((size_t)n_jobs, 1);
    p.visited = calloc((size_t)n_jobs, 1);
    p.idle = calloc((size_t)n_workers, 1);
    p.closed = calloc((size_t)n_workers, 1);
    p.pack = calloc((size_t)n_workers, sizeof *p.pack);
    int n = 0;
    if (!p.running || !p.room || !p.taken || !p.visited || !p.idle || !p.closed || !p.pack) goto out;
    for (int j = 0; j < n_jobs; j++)
        for (int u = 0; u < n_users; u++)
            if (!strcmp(users[u].name, jobs[j].user)) p.running[j] = users[u].running;
    for (int w = 0; w < n_workers; w++) {
        p.idle[w] = workers[w].idle != 0;
        p.room[w] = p.idle[w] ? (workers[w].room > 1 ? workers[w].room : 1) : (workers[w].room > 0 ? workers[w].room : 0);
        p.pack[w] = p.idle[w] ? NULL : workers[w].pack;
    }
    while (n < max) {
        /* Best first; a job that can start nowhere closes the workers it
         * fits to joins by the jobs after it. */
        memset(p.visited, 0, (size_t)n_jobs);
        memset(p.closed, 0, (size_t)n_workers);
        int best = -1, best_w = -1;
        for (;;) {
            int j = -1;
            for (int k = 0; k < n_jobs; k++) {
                if (p.taken[k] || p.visited[k] || (max_per_user > 0 && p.running[k] >= max_per_user)) continue;
                if (j < 0 || goes_before(jobs, p.running, k, j)) j = k;
            }
            if (j < 0) break;
            p.visited[j] = 1;
            int w = place(&p, j);
            if (w >= 0) {
                best = j;
                best_w = w;
                break;
            }
            for (int k = 0; k < n_workers; k++)
                if (sched_fits(jobs[j].device, workers[k].backend)) p.closed[k] = 1;
        }
        if (best < 0) break;
        p.taken[best] = 1;
        if (p.idle[best_w]) { /* the first job of its pass: the pass's key is its own */
            p.idle[best_w] = 0;
            p.pack[best_w] = jobs[best].pack;
            if (!jobs[best].pack) p.room[best_w] = 1;
        }
        p.room[best_w]--;
        out[n].job = best;
        out[n].worker = best_w;
        n++;
        for (int j = 0; j < n_jobs; j++)
            if (!strcmp(jobs[j].user, jobs[best].user)) p.running[j]++;
    }
out:
    free(p.running);
    free(p.room);
    free(p.taken);
    free(p.visited);
    free(p.idle);
    free(p.closed);
    free(p.pack);
    return n;
}
