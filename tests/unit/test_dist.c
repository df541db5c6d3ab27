/* dist: one process is rank 0 of 1 and every collective leaves its buffer
 * alone; under mpirun (this program re-run as 2 ranks) the sums, the
 * broadcast, a JSON document and the barrier are right on every rank; with
 * 2 GPUs (make gpu-check) NCCL sums 1M floats in device memory. */
#include "tests/unit/test.h"

#include <stdint.h>
#include <sys/wait.h>
#include <unistd.h>

#include "worker/dist.h"
#ifdef LR_HAVE_NCCL
#include <cuda_runtime.h>
#endif

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
    json_t *doc = r == 0 ? json_pack("{s:s,s:i}", "job", "ftjob-1", "n", 7) : NULL;
    if (dist_bcast_json(d, &doc, &e) || !doc || json_integer_value(json_object_get(doc, "n")) != 7) return 17;
    json_decref(doc);
    doc = NULL; /* rank 0's "nothing": every rank gets NULL */
    if (dist_bcast_json(d, &doc, &e) || doc) return 18;
    dist_finalize(d);
    return 0;
}

#ifdef LR_HAVE_NCCL
/* Each rank on its own GPU: 1M floats of rank + 1 summed by NCCL. */
static int nccl_rank_main(void) {
    dist *d;
    kb_backend *be = NULL;
    lr_err e = {0};
    enum { N = 1 << 20 };
    static float h[N];
    char name[16];
    if (dist_init(&d, &e) || dist_size(d) != 2) return 10;
    snprintf(name, sizeof name, "cuda:%d", dist_rank(d));
    if (kb_create(name, 0, &be, &e) || dist_attach(d, be, &e)) return 11;
    float *x = be->alloc(be, N * sizeof(float));
    if (!x) return 12;
    for (int i = 0; i < N; i++) h[i] = (float)(dist_rank(d) + 1);
    be->upload(be, x, h, sizeof h);
    if (dist_allreduce_f32(d, x, N, &e) || strcmp(dist_transport(d), "NCCL")) return 13;
    be->download(be, h, x, sizeof h);
    for (int i = 0; i < N; i++)
        if (h[i] != 3.0f) return 14;
    be->free(be, x);
    dist_detach(d);
    kb_destroy(be);
    dist_finalize(d);
    return 0;
}
#endif

__attribute__((constructor)) static void maybe_rank(void) {
    const char *mode = getenv("LR_TEST_DIST_RANK");
    if (!mode) return;
    /* _exit: the rank's verdict as its status, not LeakSanitizer's view of
     * OpenMPI's own allocations (make asan) */
#ifdef LR_HAVE_NCCL
    if (!strcmp(mode, "nccl")) _exit(nccl_rank_main());
#endif
    _exit(rank_main());
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
           "14 i64, 15 bcast, 16 transport, 17-18 json)", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
#endif
}

TEST(nccl_on_two_gpus) {
#ifndef LR_HAVE_NCCL
    SKIP("built without NCCL (nvcc, nccl.h and OpenMPI at build time); make gpu-check runs it");
#else
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n < 2) SKIP("the NCCL all-reduce needs 2 GPUs, %d here", n);
    if (system("command -v mpirun >/dev/null 2>&1") != 0) SKIP("mpirun not installed");
    char self[4096];
    ssize_t k = readlink("/proc/self/exe", self, sizeof self - 1);
    REQUIRE(k > 0);
    self[k] = 0;
    char cmd[4300];
    snprintf(cmd, sizeof cmd,
             "LR_TEST_DIST_RANK=nccl mpirun --allow-run-as-root --oversubscribe -np 2 '%s' >/dev/null 2>&1", self);
    int st = system(cmd);
    CHECKF(WIFEXITED(st) && WEXITSTATUS(st) == 0, "NCCL ranks exited with %d (10 init, 11 backend or NCCL, "
           "12 alloc, 13 all-reduce, 14 wrong sum)", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
#endif
}
