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
