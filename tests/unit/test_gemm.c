/* The sgemm kernel choice (kernels/cpu/gemm_select): the self-test accepts
 * the reference and the chosen kernel and rejects deliberately wrong ones
 * (each wrong in one awkward case only), a refused kernel falls back to the
 * next candidate, and on a CPU with AVX2 or AVX-512 (read from
 * /proc/cpuinfo, independently of the module's CPUID code) the kernel in use
 * is an AVX2 or AVX-512 one. */
#include <cblas.h>

#include "kernels/cpu/gemm_select.h"
#include "tests/unit/test.h"

/* ---- wrong kernels: the reference with one bug each ---- */

static void drop_last_k(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                        int ldb, float beta, float *C, int ldc) {
    kg_sgemm_ref(ta, tb, M, N, K > 1 ? K - 1 : K, alpha, A, lda, B, ldb, beta, C, ldc);
}
static void ignore_trans_a(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                           int ldb, float beta, float *C, int ldc) {
    (void)ta;
    kg_sgemm_ref(M == K ? 0 : ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
static void reads_c_at_beta0(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                             const float *B, int ldb, float beta, float *C, int ldc) {
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) C[(size_t)i * ldc + j] *= beta;
    kg_sgemm_ref(ta, tb, M, N, K, alpha, A, lda, B, ldb, 1.0f, C, ldc);
}
static void writes_padding(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                           int ldb, float beta, float *C, int ldc) {
    kg_sgemm_ref(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    if (ldc > N) C[(size_t)(M - 1) * ldc + N] = 0.0f;
}
static void wrong_at_m1(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                        int ldb, float beta, float *C, int ldc) {
    kg_sgemm_ref(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    if (M == 1 && N > 1) C[N - 1] += 1.0f;
}
static void wrong_on_big(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                         int ldb, float beta, float *C, int ldc) {
    int big = (double)M * N * K > 1e6;
    kg_sgemm_ref(ta, tb, M, N, big ? K - 1 : K, alpha, A, lda, B, ldb, beta, C, ldc);
}

TEST(selftest_accepts_reference_and_chosen) {
    lr_err err = {0};
    CHECKF(kg_selftest(kg_sgemm_ref, &err) == 0, "reference: %s", err.msg);
    const kg_kernel *k = kg_current();
    CHECKF(kg_selftest(k->sgemm, &err) == 0, "%s: %s", k->name, err.msg);
    CHECK(k->name[0] && k->isa[0] && k->how[0]);
    printf("  kernel in use: %s (%s): %s\n", k->name, k->isa, k->how);
}

TEST(selftest_rejects_wrong_kernels) {
    static const struct {
        const char *what;
        kg_sgemm_fn fn;
    } bad[] = {{"drops the last k", drop_last_k},   {"ignores trans A when square-ish", ignore_trans_a},
               {"reads C at beta 0", reads_c_at_beta0}, {"writes the ldc padding", writes_padding},
               {"wrong at M = 1", wrong_at_m1},       {"wrong past the small-matrix size", wrong_on_big}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        lr_err err = {0};
        CHECKF(kg_selftest(bad[i].fn, &err) == -1, "accepted a kernel that %s", bad[i].what);
        CHECKF(err.msg[0] != 0, "no reason given for %s", bad[i].what);
    }
}

/* A wrong first candidate is refused with the reason recorded and the next
 * one is used; with no good candidate the kernel in use does not change. */
TEST(pick_falls_back) {
    lr_err err = {0};
    kg_candidate c[] = {{"broken", NULL, drop_last_k}, {"reference", NULL, kg_sgemm_ref}};
    REQUIRE(kg_pick(c, 2, "test", &err) == 0);
    const kg_kernel *k = kg_current();
    CHECK_STR(k->name, "reference");
    CHECK(k->fallback == 1);
    CHECKF(strstr(k->how, "broken refused") != NULL, "how: %s", k->how);
    CHECK(k->sgemm == kg_sgemm_ref);

    kg_candidate only_bad[] = {{"broken", NULL, wrong_at_m1}};
    CHECK(kg_pick(only_bad, 1, "test", &err) == -1);
    CHECK(strstr(err.msg, "broken") != NULL);
    CHECK(kg_current()->sgemm == kg_sgemm_ref);
    CHECK(kg_use("NoSuchCore", &err) == -1);
    CHECK(kg_current()->sgemm == kg_sgemm_ref);

    REQUIRE(kg_use("auto", &err) == 0);
    CHECK(kg_current()->sgemm != drop_last_k);
}

static int has_flag(const char *flags, const char *f) {
    size_t n = strlen(f);
    for (const char *p = strstr(flags, f); p; p = strstr(p + 1, f))
        if ((p == flags || p[-1] == ' ') && (p[n] == ' ' || p[n] == '\n' || !p[n])) return 1;
    return 0;
}

/* The automatic choice, as without OPENBLAS_CORETYPE in the environment. A
 * value set when the test started made OpenBLAS load with that core type,
 * which is the case to cover: run this test with OPENBLAS_CORETYPE=Prescott
 * to see the choice of an OpenBLAS that does not know the CPU. */
TEST(vector_kernel_on_a_vector_cpu) {
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) SKIP("no /proc/cpuinfo");
    static char line[8192];
    int found = 0;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "flags", 5)) {
            found = 1;
            break;
        }
    fclose(f);
    if (!found) SKIP("no flags line in /proc/cpuinfo (not x86)");
    int avx512 = has_flag(line, "avx512f") && has_flag(line, "avx512bw") && has_flag(line, "avx512dq") &&
                 has_flag(line, "avx512vl");
    int avx2 = has_flag(line, "avx2") && has_flag(line, "fma");
    kg_cpu c;
    kg_cpu_features(&c);
    CHECK_EQ_INT(c.avx2 && c.fma, avx2);
    CHECK_EQ_INT(c.avx512f && c.avx512bw && c.avx512dq && c.avx512vl, avx512);
    CHECK_EQ_INT(c.avx512_bf16, has_flag(line, "avx512_bf16"));
    if (!avx2 && !avx512) SKIP("this CPU has neither AVX2 nor AVX-512");
    lr_err err = {0};
    const char *user = getenv("OPENBLAS_CORETYPE");
    char keep[64];
    snprintf(keep, sizeof keep, "%s", user ? user : "");
    unsetenv("OPENBLAS_CORETYPE");
    int rc = kg_use("auto", &err);
    if (user) setenv("OPENBLAS_CORETYPE", keep, 1);
    REQUIRE(rc == 0);
    const kg_kernel *k = kg_current();
    const char *core = openblas_get_corename();
    static const char *const v512[] = {"SkylakeX", "Cooperlake", "SapphireRapids"};
    static const char *const v2[] = {"Haswell", "Zen", "SkylakeX", "Cooperlake", "SapphireRapids"};
    int ok = 0;
    for (size_t i = 0; i < (avx512 ? 3 : 5); i++) ok |= !strcmp(core, avx512 ? v512[i] : v2[i]);
    CHECKF(ok, "CPU has %s but OpenBLAS runs %s (%s)", avx512 ? "AVX-512" : "AVX2", core, k->how);
    CHECK_STR(k->isa, avx512 ? "avx512" : "avx2");
    CHECK(!k->fallback);
    printf("  automatic choice: %s: %s\n", k->name, k->how);
    REQUIRE(kg_use("auto", &err) == 0);
}

/* Every kernel the benchmark times passes the self-test and reports its
 * ISA; afterwards the automatic choice is back. */
TEST(listed_kernels_usable) {
    const char *names[16];
    int n = kg_list(names, 16);
    CHECK(n >= 1);
    CHECK_STR(names[0], "default");
    lr_err err = {0};
    for (int i = 0; i < n; i++) {
        CHECKF(kg_use(names[i], &err) == 0, "%s: %s", names[i], err.msg);
        if (i > 0) CHECKF(strstr(kg_current()->name, names[i]) != NULL, "%s runs as %s", names[i], kg_current()->name);
    }
    char before[64];
    REQUIRE(kg_use("auto", &err) == 0);
    snprintf(before, sizeof before, "%s", kg_current()->name);
    REQUIRE(kg_use("reference", &err) == 0);
    REQUIRE(kg_use("auto", &err) == 0);
    CHECK_STR(kg_current()->name, before);
}
