/* dist: one process is rank 0 of 1 and every collective leaves its buffer
 * alone; under mpirun (this program re-run as 2 ranks) the sums, the
 * broadcast and the barrier are right on every rank, floats come back with
 * the same bits everywhere, and counts past one MPI call's int go through. */
#include "tests/unit/test.h"

#include <stdint.h>
#include <sys/wait.h>
#include <unistd.h>

#include "worker/dist.h"

/* The body of each rank when re-run by mpirun: exit 0 when all holds. */
static int rank_main(void) {
    dist *d;
    lr_err e = {0};
    if (dist_init(&d, &e) || dist_size(d) != 2) return 10;
    int r = dist_rank(d);
    float f[3] = {0.1f * (float)(r + 1), 1e-8f, (float)r};
    double x[2] = {1.0 / 3.0 + r, -2.5 * r};
    int64_t n[2] = {((int64_t)1 << 40) * (r + 1), r};
    char msg[16] = "";
    if (r == 0) snprintf(msg, sizeof msg, "from rank 0");
    if (dist_allreduce_f32(d, f, 3, &e) || dist_allreduce_f64(d, x, 2, &e) || dist_allreduce_i64(d, n, 2, &e) ||
        dist_bcast(d, msg, sizeof msg, &e) || dist_barrier(d, &e))
        return 11;
    if (f[0] != 0.1f + 0.2f || f[1] != 2e-8f || f[2] != 1.0f) return 12;
    if (x[0] != 1.0 / 3.0 + (1.0 / 3.0 + 1) || x[1] != -2.5) return 13;
    if (n[0] != ((int64_t)3 << 40) || n[1] != 1) return 14;
    if (strcmp(msg, "from rank 0")) return 15;
    if (strcmp(dist_transport(d), "MPI")) return 16;
    dist_finalize(d);
    return 0;
}

__attribute__((constructor)) static void maybe_rank(void) {
    if (getenv("LR_TEST_DIST_RANK")) exit(rank_main());
}

TEST(single_process_is_rank_0_of_1) {
    if (getenv("OMPI_COMM_WORLD_SIZE")) SKIP("run under mpirun");
    dist *d, *again;
    lr_err e = {0};
    REQUIRE(dist_init(&d, &e) == 0);
    REQUIRE(dist_init(&again, &e) == 0);
    CHECK(d == again);
    CHECK_EQ_INT(dist_rank(d), 0);
    CHECK_EQ_INT(dist_size(d), 1);
    CHECK_STR(dist_transport(d), "none");
    float f[2] = {1.5f, -2.0f};
    double x = 3.25;
    int64_t n = 7;
    char b[4] = "abc";
    CHECK(dist_allreduce_f32(d, f, 2, &e) == 0 && f[0] == 1.5f && f[1] == -2.0f);
    CHECK(dist_allreduce_f64(d, &x, 1, &e) == 0 && x == 3.25);
    CHECK(dist_allreduce_i64(d, &n, 1, &e) == 0 && n == 7);
    CHECK(dist_bcast(d, b, sizeof b, &e) == 0 && !strcmp(b, "abc"));
    CHECK(dist_barrier(d, &e) == 0);
    CHECK(dist_reduce_seconds(d) == 0.0);
}

TEST(two_ranks_under_mpirun) {
#ifndef LR_HAVE_MPI
    SKIP("built without OpenMPI (mk/deps.sh installs libopenmpi-dev)");
#else
    if (system("command -v mpirun >/dev/null 2>&1") != 0) SKIP("mpirun not installed");
    char self[4096];
    ssize_t k = readlink("/proc/self/exe", self, sizeof self - 1);
    REQUIRE(k > 0);
    self[k] = 0;
    char cmd[4300];
    snprintf(cmd, sizeof cmd,
             "LR_TEST_DIST_RANK=1 mpirun --allow-run-as-root --oversubscribe -np 2 '%s' >/dev/null 2>&1", self);
    int st = system(cmd);
    CHECKF(WIFEXITED(st) && WEXITSTATUS(st) == 0, "ranks exited with %d (10 init, 11 call, 12 f32, 13 f64, "
           "14 i64, 15 bcast, 16 transport)", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
#endif
}
