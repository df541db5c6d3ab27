/* The scheduling policy as a table of cases. */
#include "tests/unit/test.h"

#include "daemon/sched.h"

TEST(priority_then_fairness_then_age) {
    sched_job jobs[] = {
        {"alice", "any", 0, 1, NULL}, {"alice", "any", 5, 2, NULL}, {"bob", "any", 5, 3, NULL}, {"carol", "any", 0, 4, NULL},
    };
    sched_worker w[] = {{"cpu", 1, 0, NULL}};
    sched_user users[] = {{"alice", 1}};
    sched_assign a[4];
    /* Priority 5 first; among alice(1 running) and bob(0), bob. */
    int n = sched_pick(jobs, 4, w, 1, users, 1, 0, a, 4);
    CHECK_EQ_INT(n, 1);
    CHECK_EQ_INT(a[0].job, 2);
    /* Two workers: bob's 5, then alice's 5 (priority beats fairness). */
    sched_worker w2[] = {{"cpu", 1, 0, NULL}, {"cpu", 1, 0, NULL}, {"cpu", 1, 0, NULL}};
    n = sched_pick(jobs, 4, w2, 3, users, 1, 0, a, 4);
    CHECK_EQ_INT(n, 3);
    CHECK_EQ_INT(a[0].job, 2);
    CHECK_EQ_INT(a[1].job, 1);
    /* Then priority 0: carol (0 running) before alice's older job (2 running now). */
    CHECK_EQ_INT(a[2].job, 3);
}

TEST(oldest_first_among_equals) {
    sched_job jobs[] = {{"a", "any", 0, 9, NULL}, {"b", "any", 0, 3, NULL}, {"c", "any", 0, 5, NULL}};
    sched_worker w[] = {{"cpu", 1, 0, NULL}, {"cpu", 1, 0, NULL}};
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
    sched_job jobs[] = {{"a", "cuda", 9, 1, NULL}, {"b", "cpu", 0, 2, NULL}, {"c", "any", 0, 3, NULL}};
    sched_worker w[] = {{"cpu", 1, 0, NULL}, {"cpu", 0, 0, NULL}};
    sched_assign a[3];
    /* No CUDA worker: the cuda job waits, the cpu job runs (no head-of-line blocking). */
    int n = sched_pick(jobs, 3, w, 2, NULL, 0, 0, a, 3);
    CHECK_EQ_INT(n, 1);
    CHECK_EQ_INT(a[0].job, 1);
    CHECK_EQ_INT(a[0].worker, 0);
    /* "any" prefers the CUDA worker when both are idle. */
    sched_job any[] = {{"a", "any", 0, 1, NULL}};
    sched_worker mix[] = {{"cpu", 1, 0, NULL}, {"cuda:0", 1, 0, NULL}};
    n = sched_pick(any, 1, mix, 2, NULL, 0, 0, a, 1);
    CHECK_EQ_INT(n, 1);
    CHECK_EQ_INT(a[0].worker, 1);
}

TEST(per_user_limit) {
    sched_job jobs[] = {{"a", "any", 0, 1, NULL}, {"a", "any", 0, 2, NULL}, {"b", "any", 0, 3, NULL}};
    sched_worker w[] = {{"cpu", 1, 0, NULL}, {"cpu", 1, 0, NULL}, {"cpu", 1, 0, NULL}};
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
    sched_job jobs[] = {{"b", "any", 0, 1, NULL}, {"b", "any", 0, 2, NULL}, {"a", "any", 0, 601, NULL}};
    sched_worker w[] = {{"cpu", 1, 0, NULL}};
    sched_user users[] = {{"b", 1}};
    sched_assign a[1];
    CHECK_EQ_INT(sched_pick(jobs, 3, w, 1, users, 1, 0, a, 1), 1);
    CHECK_EQ_INT(a[0].job, 2);
}

/* Packing: an idle worker takes the first job, then the compatible ones
 * that come next in the queue's order, up to its room. */
TEST(pack_fills_idle_worker_in_order) {
    sched_job jobs[] = {{"a", "any", 0, 1, "g"}, {"b", "any", 0, 2, "g"}, {"c", "any", 0, 3, NULL},
                        {"d", "any", 0, 4, "g"}};
    sched_worker w[] = {{"cpu", 1, 3, NULL}};
    sched_assign a[4];
    /* a starts the pass, b joins; c (never packs) comes next and waits for
     * the worker, so d behind it may not join. */
    int n = sched_pick(jobs, 4, w, 1, NULL, 0, 0, a, 4);
    CHECK_EQ_INT(n, 2);
    CHECK_EQ_INT(a[0].job, 0);
    CHECK_EQ_INT(a[1].job, 1);
    CHECK_EQ_INT(a[1].worker, 0);
    /* Without c: a, b, d share it (room 3), nothing waits for a fill. */
    sched_job three[] = {jobs[0], jobs[1], jobs[3]};
    CHECK_EQ_INT(sched_pick(three, 3, w, 1, NULL, 0, 0, a, 4), 3);
    /* Room 0 or 1: no packing, as before. */
    w[0].room = 1;
    CHECK_EQ_INT(sched_pick(three, 3, w, 1, NULL, 0, 0, a, 4), 1);
    w[0].room = 0;
    CHECK_EQ_INT(sched_pick(three, 3, w, 1, NULL, 0, 0, a, 4), 1);
}

/* A running pack with room takes the next job when that job is compatible;
 * a better incompatible job waiting for the worker closes it to joins. */
TEST(pack_join_only_in_turn) {
    sched_worker w[] = {{"cpu", 0, 2, "g"}};
    sched_assign a[3];
    sched_job joinable[] = {{"a", "cpu", 0, 5, "g"}, {"b", "cpu", 0, 6, "g"}, {"c", "cpu", 0, 7, "g"}};
    CHECK_EQ_INT(sched_pick(joinable, 3, w, 1, NULL, 0, 0, a, 3), 2);
    CHECK_EQ_INT(a[0].job, 0);
    CHECK_EQ_INT(a[1].job, 1);
    /* the older llama job waits for this worker: the gpt2 job does not join */
    sched_job blocked[] = {{"a", "cpu", 0, 9, "g"}, {"b", "cpu", 0, 3, "llama"}};
    CHECK_EQ_INT(sched_pick(blocked, 2, w, 1, NULL, 0, 0, a, 3), 0);
    /* ...nor does it when the waiting job is of higher priority */
    blocked[1].seq = 20;
    blocked[1].priority = 5;
    CHECK_EQ_INT(sched_pick(blocked, 2, w, 1, NULL, 0, 0, a, 3), 0);
    /* a later incompatible job does not hold it back */
    blocked[1].priority = 0;
    CHECK_EQ_INT(sched_pick(blocked, 2, w, 1, NULL, 0, 0, a, 3), 1);
    CHECK_EQ_INT(a[0].job, 0);
    /* a waiting job of another device class does not close a cpu worker */
    sched_job other[] = {{"a", "cpu", 0, 9, "g"}, {"b", "cuda", 9, 3, "llama"}};
    CHECK_EQ_INT(sched_pick(other, 2, w, 1, NULL, 0, 0, a, 3), 1);
    CHECK_EQ_INT(a[0].job, 0);
    /* a job that never packs does not join; the pack is full at room 0 */
    sched_job alone[] = {{"a", "cpu", 0, 1, NULL}};
    CHECK_EQ_INT(sched_pick(alone, 1, w, 1, NULL, 0, 0, a, 3), 0);
    w[0].room = 0;
    CHECK_EQ_INT(sched_pick(joinable, 3, w, 1, NULL, 0, 0, a, 3), 0);
    /* a worker running a job that never packs takes none */
    sched_worker solo[] = {{"cpu", 0, 3, NULL}};
    CHECK_EQ_INT(sched_pick(joinable, 3, solo, 1, NULL, 0, 0, a, 3), 0);
}

/* An idle worker is taken before a pack is joined; fairness (the user with
 * fewer running jobs first) and the per-user limit hold for joins too. */
TEST(pack_idle_first_and_fairness) {
    sched_worker w[] = {{"cpu", 0, 3, "g"}, {"cpu", 1, 3, NULL}};
    sched_job jobs[] = {{"a", "cpu", 0, 1, "g"}, {"a", "cpu", 0, 2, "g"}, {"b", "cpu", 0, 3, "g"}};
    sched_user users[] = {{"a", 1}};
    sched_assign a[3];
    int n = sched_pick(jobs, 3, w, 2, users, 1, 0, a, 3);
    CHECK_EQ_INT(n, 3);
    CHECK_EQ_INT(a[0].job, 2); /* b runs none: first, on the idle worker */
    CHECK_EQ_INT(a[0].worker, 1);
    CHECK_EQ_INT(a[1].job, 0);
    /* limit 2 for a, who runs 1: one more */
    n = sched_pick(jobs, 3, w, 2, users, 1, 2, a, 3);
    CHECK_EQ_INT(n, 2);
    int a_jobs = 0;
    for (int i = 0; i < n; i++) a_jobs += !strcmp(jobs[a[i].job].user, "a");
    CHECK_EQ_INT(a_jobs, 1);
}

/* A small deterministic generator, so a failure reproduces. */
static unsigned rnd(unsigned *s) {
    *s = *s * 1103515245u + 12345u;
    return (*s >> 16) & 0x7fff;
}

static int job_before(const sched_job *x, const sched_job *y) {
    return x->priority != y->priority ? x->priority > y->priority : x->seq < y->seq;
}

/* sched.h's claim: each (user, device) group's best `room` jobs pick what
 * the whole queue picks. Checked on random queues, workers, packs and limits. */
TEST(group_prefix_picks_like_whole_queue) {
    static const char *const names[] = {"a", "b", "c", "d"}, *const devs[] = {"cpu", "cuda", "any"},
                             *const backends[] = {"cpu", "cuda:0"}, *const keys[] = {NULL, "g", "l"};
    unsigned seed = 12345;
    enum { NJ = 300, NW = 6 };
    static sched_job all[NJ], sub[NJ];
    int joins = 0; /* picks that joined a pass: the packing rounds must have some */
    for (int round = 0; round < 300; round++) {
        int nj = 1 + (int)(rnd(&seed) % NJ), nw = 1 + (int)(rnd(&seed) % NW), idle = 0;
        int packing = round % 2; /* odd rounds: workers with room for packs */
        sched_worker w[NW];
        for (int i = 0; i < nw; i++) {
            w[i].backend = backends[rnd(&seed) % 2];
            w[i].idle = rnd(&seed) % 4 != 0;
            w[i].room = packing ? (int)(rnd(&seed) % 4) : 0;
            w[i].pack = w[i].idle ? NULL : keys[rnd(&seed) % 3];
            idle += w[i].idle ? (w[i].room > 1 ? w[i].room : 1) : w[i].room;
        }
        for (int i = 0; i < nj; i++) {
            all[i].user = names[rnd(&seed) % 4];
            all[i].device = devs[rnd(&seed) % 3];
            all[i].priority = (int)(rnd(&seed) % 3) * 5 - 5;
            all[i].seq = i + 1;
            all[i].pack = packing ? keys[rnd(&seed) % 3] : NULL;
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
        enum { MAXA = 4 * NW };
        sched_assign fa[MAXA], sa[MAXA];
        int nf = sched_pick(all, nj, w, nw, users, 4, max_per_user, fa, MAXA);
        int nsub = sched_pick(sub, ns, w, nw, users, 4, max_per_user, sa, MAXA);
        CHECKF(nf == nsub, "round %d: %d picks from the whole queue, %d from the groups", round, nf, nsub);
        for (int i = 0; i < nf; i++) {
            int again = !w[fa[i].worker].idle;
            for (int k = 0; k < i; k++) again |= fa[k].worker == fa[i].worker;
            joins += again;
        }
        for (int i = 0; i < nf && i < nsub; i++)
            CHECKF(all[fa[i].job].seq == sub[sa[i].job].seq && fa[i].worker == sa[i].worker,
                   "round %d pick %d: job %lld on worker %d vs job %lld on worker %d", round, i,
                   (long long)all[fa[i].job].seq, fa[i].worker, (long long)sub[sa[i].job].seq, sa[i].worker);
    }
    CHECKF(joins >= 20, "only %d joins in the packing rounds (52 when written)", joins);
}
