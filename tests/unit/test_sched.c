/* The scheduling policy as a table of cases. */
#include "tests/unit/test.h"

#include "daemon/sched.h"

TEST(priority_then_fairness_then_age) {
    sched_job jobs[] = {
        {"alice", "any", 0, 1}, {"alice", "any", 5, 2}, {"bob", "any", 5, 3}, {"carol", "any", 0, 4},
    };
    sched_worker w[] = {{"cpu", 1}};
    sched_user users[] = {{"alice", 1}};
    sched_assign a[4];
    /* Priority 5 first; among alice(1 running) and bob(0), bob. */
    int n = sched_pick(jobs, 4, w, 1, users, 1, 0, a, 4);
    CHECK_EQ_INT(n, 1);
    CHECK_EQ_INT(a[0].job, 2);
    /* Two workers: bob's 5, then alice's 5 (priority beats fairness). */
    sched_worker w2[] = {{"cpu", 1}, {"cpu", 1}, {"cpu", 1}};
    n = sched_pick(jobs, 4, w2, 3, users, 1, 0, a, 4);
    CHECK_EQ_INT(n, 3);
    CHECK_EQ_INT(a[0].job, 2);
    CHECK_EQ_INT(a[1].job, 1);
    /* Then priority 0: carol (0 running) before alice's older job (2 running now). */
    CHECK_EQ_INT(a[2].job, 3);
}

TEST(oldest_first_among_equals) {
    sched_job jobs[] = {{"a", "any", 0, 9}, {"b", "any", 0, 3}, {"c", "any", 0, 5}};
    sched_worker w[] = {{"cpu", 1}, {"cpu", 1}};
    sched_assign a[3];
    int n = sched_pick(jobs, 3, w, 2, NULL, 0, 0, a, 3);
    CHECK_EQ_INT(n, 2);
    CHECK_EQ_INT(a[0].job, 1);
    CHECK_EQ_INT(a[1].job, 2);
}

TEST(device_fit) {
    CHECK(sched_fits("any", "cpu"));
    CHECK(sched_fits("any", "cuda:1"));
    CHECK(sched_fits("cuda", "cuda:0"));
    CHECK(!sched_fits("cuda", "cpu"));
    CHECK(!sched_fits("cpu", "cuda:0"));
    sched_job jobs[] = {{"a", "cuda", 9, 1}, {"b", "cpu", 0, 2}, {"c", "any", 0, 3}};
    sched_worker w[] = {{"cpu", 1}, {"cpu", 0}};
    sched_assign a[3];
    /* No CUDA worker: the cuda job waits, the cpu job runs (no head-of-line blocking). */
    int n = sched_pick(jobs, 3, w, 2, NULL, 0, 0, a, 3);
    CHECK_EQ_INT(n, 1);
    CHECK_EQ_INT(a[0].job, 1);
    CHECK_EQ_INT(a[0].worker, 0);
    /* "any" prefers the CUDA worker when both are idle. */
    sched_job any[] = {{"a", "any", 0, 1}};
    sched_worker mix[] = {{"cpu", 1}, {"cuda:0", 1}};
    n = sched_pick(any, 1, mix, 2, NULL, 0, 0, a, 1);
    CHECK_EQ_INT(n, 1);
    CHECK_EQ_INT(a[0].worker, 1);
}

TEST(per_user_limit) {
    sched_job jobs[] = {{"a", "any", 0, 1}, {"a", "any", 0, 2}, {"b", "any", 0, 3}};
    sched_worker w[] = {{"cpu", 1}, {"cpu", 1}, {"cpu", 1}};
    sched_user users[] = {{"a", 1}};
    sched_assign a[3];
    int n = sched_pick(jobs, 3, w, 3, users, 1, 2, a, 3);
    CHECK_EQ_INT(n, 2); /* a reaches 2 running after one more; b gets one */
    int a_count = 0;
    for (int i = 0; i < n; i++) a_count += !strcmp(jobs[a[i].job].user, "a");
    CHECK_EQ_INT(a_count, 1);
    CHECK_EQ_INT(sched_pick(jobs, 3, w, 0, NULL, 0, 0, a, 3), 0);
}

/* The 512-prefix bug: 600 of b's jobs queued first hid a's. Given each
 * user's best few (what store_jobs_queued passes), a's job starts at once. */
TEST(deep_queue_per_user_groups) {
    sched_job jobs[] = {{"b", "any", 0, 1}, {"b", "any", 0, 2}, {"a", "any", 0, 601}};
    sched_worker w[] = {{"cpu", 1}};
    sched_user users[] = {{"b", 1}};
    sched_assign a[1];
    CHECK_EQ_INT(sched_pick(jobs, 3, w, 1, users, 1, 0, a, 1), 1);
    CHECK_EQ_INT(a[0].job, 2);
}

/* A small deterministic generator, so a failure reproduces. */
static unsigned rnd(unsigned *s) {
    *s = *s * 1103515245u + 12345u;
    return (*s >> 16) & 0x7fff;
}

static int job_before(const sched_job *x, const sched_job *y) {
    return x->priority != y->priority ? x->priority > y->priority : x->seq < y->seq;
}

/* sched.h's claim: each (user, device) group's best `idle` jobs pick what
 * the whole queue picks. Checked on random queues, workers and limits. */
TEST(group_prefix_picks_like_whole_queue) {
    static const char *const names[] = {"a", "b", "c", "d"}, *const devs[] = {"cpu", "cuda", "any"},
                             *const backends[] = {"cpu", "cuda:0"};
    unsigned seed = 12345;
    enum { NJ = 300, NW = 6 };
    static sched_job all[NJ], sub[NJ];
    for (int round = 0; round < 300; round++) {
        int nj = 1 + (int)(rnd(&seed) % NJ), nw = 1 + (int)(rnd(&seed) % NW), idle = 0;
        sched_worker w[NW];
        for (int i = 0; i < nw; i++) {
            w[i].backend = backends[rnd(&seed) % 2];
            w[i].idle = rnd(&seed) % 4 != 0;
            idle += w[i].idle;
        }
        for (int i = 0; i < nj; i++) {
            all[i].user = names[rnd(&seed) % 4];
            all[i].device = devs[rnd(&seed) % 3];
            all[i].priority = (int)(rnd(&seed) % 3) * 5 - 5;
            all[i].seq = i + 1;
        }
        sched_user users[4];
        for (int u = 0; u < 4; u++) users[u] = (sched_user){names[u], (int)(rnd(&seed) % 3)};
        int max_per_user = (int)(rnd(&seed) % 4);
        /* Keep a job when fewer than `idle` of its group come before it. */
        int ns = 0;
        for (int i = 0; i < nj; i++) {
            int ahead = 0;
            for (int k = 0; k < nj; k++)
                ahead += k != i && !strcmp(all[k].user, all[i].user) && !strcmp(all[k].device, all[i].device) &&
                         job_before(&all[k], &all[i]);
            if (ahead < idle) sub[ns++] = all[i];
        }
        sched_assign fa[NW], sa[NW];
        int nf = sched_pick(all, nj, w, nw, users, 4, max_per_user, fa, NW);
        int nsub = sched_pick(sub, ns, w, nw, users, 4, max_per_user, sa, NW);
        CHECKF(nf == nsub, "round %d: %d picks from the whole queue, %d from the groups", round, nf, nsub);
        for (int i = 0; i < nf && i < nsub; i++)
            CHECKF(all[fa[i].job].seq == sub[sa[i].job].seq && fa[i].worker == sa[i].worker,
                   "round %d pick %d: job %lld on worker %d vs job %lld on worker %d", round, i,
                   (long long)all[fa[i].job].seq, fa[i].worker, (long long)sub[sa[i].job].seq, sa[i].worker);
    }
}
