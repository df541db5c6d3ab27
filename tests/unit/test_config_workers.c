/* --workers: cpu, cpu:THREADS, cuda:N and NxWORKER (one worker of N ranks
 * that lorad starts with mpirun), and the entries it refuses. */
#include "tests/unit/test.h"

#include "daemon/config.h"

TEST(worker_ranks) {
    static lorad_config c;
    lr_err e = {0};
    REQUIRE(config_set_workers(&c, "cpu:2,2xcpu:1,4xcuda:0,cuda:3", &e) == 0);
    REQUIRE(c.n_workers == 4);
    CHECK_STR(c.workers[0].backend, "cpu");
    CHECK_EQ_INT(c.workers[0].threads, 2);
    CHECK_EQ_INT(c.workers[0].ranks, 1);
    CHECK_STR(c.workers[1].backend, "cpu");
    CHECK_EQ_INT(c.workers[1].threads, 1);
    CHECK_EQ_INT(c.workers[1].ranks, 2);
    CHECK_STR(c.workers[2].backend, "cuda:0");
    CHECK_EQ_INT(c.workers[2].ranks, 4);
    CHECK_EQ_INT(c.workers[3].ranks, 1);
    static const char *const bad[] = {"1xcpu", "65xcpu", "xcpu", "2xgpu", "2x"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        lr_err e2 = {0};
        CHECKF(config_set_workers(&c, bad[i], &e2) == -1, "'%s' accepted", bad[i]);
        CHECKF(!strcmp(e2.param, "workers"), "'%s': param '%s'", bad[i], e2.param);
    }
}
