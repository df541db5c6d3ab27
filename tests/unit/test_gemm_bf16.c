/* test_gemm_bf16: the bf16 linear kernel (kernels/cpu/gemm_bf16): the
 * self-test accepts the reference and (on an AVX512_BF16 CPU) the vector
 * kernel and rejects deliberately wrong ones, the CPU's features decide
 * whether the kernel is used, the products of a packed weight match f32
 * ones of the same bf16-rounded numbers, and the CPU backend's linear ops
 * (LoRA, DoRA, dropout, Conv1D) on a packed weight match them on f32;
 * model_load_quant resolves compute_dtype (MODEL_MM_*) as model.h says. */
#include <stdint.h>

#include "kernels/backend.h"
#include "kernels/cpu/gemm_bf16.h"
#include "kernels/cpu/gemm_select.h"
#include "tests/unit/test.h"
#include "worker/commands.h"
#include "worker/model.h"

/* ---- wrong kernels: the vector one (or the reference) with one bug each ---- */

static const kbf_kernel *real(void) { return kbf_current(NULL) ? kbf_current(NULL) : &kbf_reference; }

/* drops the last output row's last column when the rows are not a whole tile */
static void xwt_tail_bug(int nt, const void *P, int out, int in, const float *x, int M, float *y, int acc, void *s) {
    real()->xwt(nt, P, out, in, x, M, y, acc, s);
    if (M % 6) y[(size_t)M * out - 1] += 0.25f;
}
/* the backward of an odd output size reads one more (nonexistent) row */
static void gw_odd_bug(int nt, const void *P, int out, int in, const float *g, int M, float *dx, int acc, void *s) {
    real()->gw(nt, P, out, in, g, M, dx, acc, s);
    if (out & 1) dx[0] += 1e-3f;
}
/* ignores acc on two threads */
static void gw_acc_bug(int nt, const void *P, int out, int in, const float *g, int M, float *dx, int acc, void *s) {
    real()->gw(nt, P, out, in, g, M, dx, nt > 1 ? 0 : acc, s);
}
/* writes one float past the output */
static void xwt_overrun(int nt, const void *P, int out, int in, const float *x, int M, float *y, int acc, void *s) {
    real()->xwt(nt, P, out, in, x, M, y, acc, s);
    if (out > 100) y[(size_t)M * out] = 0.0f;
}

TEST(selftest_accepts_reference_and_vector_kernel) {
    lr_err e = {0};
    CHECKF(kbf_selftest(&kbf_reference, &e) == 0, "%s", e.msg);
    kg_cpu c;
    kg_cpu_features(&c);
    if (!c.avx512_bf16 || !c.avx512bw) SKIP("this CPU has no AVX512_BF16");
    CHECKF(kbf_selftest(&kbf_avx512, &e) == 0, "%s", e.msg);
}

TEST(selftest_rejects_wrong_kernels) {
    const kbf_kernel *k = real();
    const kbf_kernel bad[] = {{"row tail", xwt_tail_bug, k->gw},
                              {"odd out", k->xwt, gw_odd_bug},
                              {"acc on 2 threads", k->xwt, gw_acc_bug},
                              {"overrun", xwt_overrun, k->gw}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        lr_err e = {0};
        CHECKF(kbf_selftest(&bad[i], &e) == -1, "kernel with bug '%s' passed the self-test", bad[i].name);
        CHECKF(strstr(e.msg, "bf16") != NULL, "%s: %s", bad[i].name, e.msg);
    }
}

/* The kernel is used exactly where the CPU has the feature. */
TEST(current_follows_cpu_features) {
    kg_cpu c;
    kg_cpu_features(&c);
    lr_err e = {0};
    const kbf_kernel *k = kbf_current(&e);
    if (c.avx512_bf16 && c.avx512f && c.avx512bw) {
        CHECKF(k == &kbf_avx512, "AVX512_BF16 CPU but no bf16 kernel: %s", e.msg);
    } else {
        CHECK(k == NULL);
        CHECK(strstr(e.msg, "AVX512_BF16") != NULL);
        CHECK_STR(e.param, "compute_dtype");
    }
}

static float val(uint64_t *s) {
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((*s >> 40) & 0xffff) / 32768.0f - 1.0f;
}

/* A GPT-2-like Conv1D and a Qwen-like [out, in] weight, both directions,
 * against f32 sums of the bf16-rounded operands, and kbf_row. */
TEST(products_match_f32_of_rounded_operands) {
    const kbf_kernel *k = kbf_current(NULL);
    if (!k) SKIP("this CPU has no AVX512_BF16");
    const struct {
        int M, out, in, w_in_out;
    } cases[] = {{70, 300, 190, 1}, {33, 257, 600, 0}};
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        int M = cases[t].M, out = cases[t].out, in = cases[t].in, big = out > in ? out : in;
        float *W = malloc((size_t)out * in * 4), *Wr = malloc((size_t)out * in * 4), *x = malloc((size_t)M * big * 4);
        float *y = malloc((size_t)M * big * 4), *row = malloc((size_t)in * 4);
        void *P = aligned_alloc(64, (kbf_packed_bytes(out, in) + 63) / 64 * 64);
        void *s = aligned_alloc(64, (kbf_scratch_bytes(M, out, in, 2) + 63) / 64 * 64);
        REQUIRE(W && Wr && x && y && row && P && s);
        uint64_t seed = 7 + t;
        for (size_t i = 0; i < (size_t)out * in; i++) W[i] = val(&seed);
        for (size_t i = 0; i < (size_t)M * big; i++) x[i] = val(&seed);
        kbf_pack(P, W, out, in, cases[t].w_in_out, 2);
        /* Wr: W as [out, in], rounded */
        for (int j = 0; j < out; j++)
            for (int i = 0; i < in; i++)
                Wr[(size_t)j * in + i] =
                    kbf_to_f32(kbf_from_f32(cases[t].w_in_out ? W[(size_t)i * out + j] : W[(size_t)j * in + i]));
        kbf_row(P, out, in, out - 1, row);
        CHECK(memcmp(row, Wr + (size_t)(out - 1) * in, (size_t)in * 4) == 0);
        double worst = 0;
        k->xwt(2, P, out, in, x, M, y, 0, s);
        for (int n = 0; n < M; n++)
            for (int j = 0; j < out; j++) {
                double r = 0;
                for (int i = 0; i < in; i++)
                    r += (double)kbf_to_f32(kbf_from_f32(x[(size_t)n * in + i])) * Wr[(size_t)j * in + i];
                worst = fmax(worst, fabs(y[(size_t)n * out + j] - r));
            }
        CHECKF(worst < 1e-4, "x W^T: worst error %g", worst);
        worst = 0;
        k->gw(2, P, out, in, x, M, y, 0, s);
        for (int n = 0; n < M; n++)
            for (int i = 0; i < in; i++) {
                double r = 0;
                for (int j = 0; j < out; j++)
                    r += (double)kbf_to_f32(kbf_from_f32(x[(size_t)n * out + j])) * Wr[(size_t)j * in + i];
                worst = fmax(worst, fabs(y[(size_t)n * in + i] - r));
            }
        CHECKF(worst < 1e-4, "g W: worst error %g", worst);
        free(W), free(Wr), free(x), free(y), free(row), free(P), free(s);
    }
}

TEST(rounding_is_nearest_even) {
    CHECK_EQ_INT(kbf_from_f32(1.0f), 0x3f80);
    CHECK_EQ_INT(kbf_from_f32(1.0f + 1.0f / 256), 0x3f80);          /* halfway, even stays */
    CHECK_EQ_INT(kbf_from_f32(1.0f + 3.0f / 256), 0x3f82);          /* halfway, odd rounds up */
    CHECK(isnan(kbf_to_f32(kbf_from_f32(NAN))));
    CHECK(kbf_to_f32(kbf_from_f32(-2.5f)) == -2.5f);
}

/* ---- the CPU backend's linear ops on a packed weight ---- */

static float *rounded(size_t n, uint64_t seed, float scale) {
    float *p = malloc(n * sizeof *p);
    for (size_t i = 0; p && i < n; i++) p[i] = kbf_to_f32(kbf_from_f32(scale * val(&seed)));
    return p;
}

static double max_diff(const float *a, const float *b, size_t n, double *scale) {
    double d = 0, s = 0;
    for (size_t i = 0; i < n; i++) d = fmax(d, fabs(a[i] - b[i])), s = fmax(s, fabs(b[i]));
    *scale = s;
    return d;
}

/* linear_fwd / linear_bwd / dora_norm with W16 against the same ops on the
 * f32 weight of the same (bf16) values: with bf16-exact x and dy the bf16
 * path rounds nothing, so only f32 summation order differs. LoRA, DoRA
 * with and without dropout, Conv1D layout. */
static void backend_case(int w_in_out, int dora, float dropout) {
    if (!kbf_current(NULL)) SKIP("this CPU has no AVX512_BF16");
    kb_backend *be = NULL;
    lr_err e = {0};
    REQUIRE(kb_cpu_create(2, &be, &e) == 0);
    REQUIRE(be->bf16_check(be, &e) == 0);
    int N = 37, in = 70, out = 130, r = 4;
    float *W = rounded((size_t)in * out, 1, 0.5f), *x = rounded((size_t)N * in, 2, 1.0f);
    float *dy = rounded((size_t)N * out, 3, 1.0f), *b = rounded(out, 4, 0.5f);
    void *P = malloc(be->bf16_bytes(be, in, out));
    REQUIRE(W && x && dy && b && P);
    be->bf16_pack(be, P, W, in, out, w_in_out);
    float *y[2], *dx[2], *xa[2], *wn[2];
    kb_lora lo[2];
    for (int k = 0; k < 2; k++) {
        y[k] = malloc((size_t)N * out * 4), dx[k] = calloc((size_t)N * in, 4), xa[k] = malloc((size_t)N * r * 4);
        wn[k] = malloc((size_t)out * 4);
        lo[k] = (kb_lora){.A = rounded((size_t)r * in, 5, 0.5f), .B = rounded((size_t)out * r, 6, 0.5f),
                          .dA = calloc((size_t)r * in, 4), .dB = calloc((size_t)out * r, 4), .r = r, .scale = 1.5f,
                          .dropout = dropout, .seed = 9};
        if (dora) {
            lo[k].mag = rounded(out, 7, 1.0f);
            for (int j = 0; j < out; j++) lo[k].mag[j] += 2.0f;
            lo[k].dmag = calloc(out, 4);
            lo[k].wnorm = wn[k];
        }
        kb_linear L = {.W = k ? NULL : W, .W16 = k ? P : NULL, .b = b, .in = in, .out = out,
                       .w_in_out = k ? 0 : w_in_out, .lora = &lo[k]};
        if (dora) be->dora_norm(be, &L, wn[k]);
        be->linear_fwd(be, &L, y[k], xa[k], x, N);
        be->linear_bwd(be, &L, dx[k], 1, dy, x, xa[k], N);
    }
    /* DoRA scales dy by mag / wnorm and dropout scales x before a base
     * product there, so those inputs are no longer bf16-exact: bf16's
     * rounding (2^-9 relative per operand) bounds the difference */
    double s, d, tol = dora ? 4e-3 : 1e-5;
    if (dora) CHECKF(memcmp(wn[0], wn[1], (size_t)out * 4) == 0, "DoRA norms differ");
    d = max_diff(y[1], y[0], (size_t)N * out, &s);
    CHECKF(d <= tol * s, "y: %g of %g", d, s);
    d = max_diff(dx[1], dx[0], (size_t)N * in, &s);
    CHECKF(d <= tol * s, "dx: %g of %g", d, s);
    d = max_diff(lo[1].dA, lo[0].dA, (size_t)r * in, &s);
    CHECKF(d <= tol * s, "dA: %g of %g", d, s);
    d = max_diff(lo[1].dB, lo[0].dB, (size_t)out * r, &s);
    CHECKF(d <= tol * s, "dB: %g of %g", d, s);
    if (dora) {
        d = max_diff(lo[1].dmag, lo[0].dmag, out, &s);
        CHECKF(d <= tol * s, "dmag: %g of %g", d, s);
    }
    for (int k = 0; k < 2; k++) {
        free(y[k]), free(dx[k]), free(xa[k]), free(wn[k]), free(lo[k].A), free(lo[k].B), free(lo[k].dA);
        free(lo[k].dB), free(lo[k].mag), free(lo[k].dmag);
    }
    free(W), free(x), free(dy), free(b), free(P);
    kb_destroy(be);
}

TEST(backend_linear_lora) { backend_case(0, 0, 0.0f); }
TEST(backend_linear_conv1d_lora_dropout) { backend_case(1, 0, 0.2f); }
TEST(backend_linear_dora) { backend_case(0, 1, 0.0f); }
TEST(backend_linear_conv1d_dora_dropout) { backend_case(1, 1, 0.2f); }

/* ---- compute_dtype at load ---- */

static int mk(const char *arch, const char *dir, const char *dtype) {
    char *argv[] = {"mkmodel", "--arch", (char *)arch, "--out", (char *)dir, "--preset", "tiny", "--dtype",
                    (char *)dtype, NULL};
    return cmd_mkmodel(9, argv);
}

/* 1 bf16, 0 f32, -1 refused (err set) */
static int load_as(kb_backend *be, const char *dir, kq_type q, int mm, int full, lr_err *err) {
    model *m = NULL;
    model_quant mq = {q, 0, mm};
    if (model_load_quant(dir, be, &mq, &m, err)) return -1;
    int r = model_bf16(m);
    if (full && model_full_init(m, err)) r = -1;
    model_free(m);
    return r;
}

static int lacks_bf16(kb_backend *be, lr_err *err) {
    (void)be;
    return lr_errp(err, LR_E_INVALID, "compute_dtype", "this CPU has no AVX512_BF16");
}

TEST(compute_dtype_at_load) {
    kb_backend *be = NULL;
    lr_err e = {0};
    REQUIRE(kb_cpu_create(2, &be, &e) == 0);
    char d16[512], d32[512];
    snprintf(d16, sizeof d16, "%s/bf16", test_tmpdir());
    snprintf(d32, sizeof d32, "%s/f32", test_tmpdir());
    REQUIRE(mk("llama", d16, "bf16") == 0 && mk("llama", d32, "f32") == 0);
    int runs = kbf_current(NULL) != NULL;
    CHECK_EQ_INT(load_as(be, d16, KQ_NONE, MODEL_MM_F32, 0, &e), 0);
    CHECK_EQ_INT(load_as(be, d32, KQ_NONE, MODEL_MM_AUTO, 0, &e), 0); /* f32-stored: auto stays f32 */
    CHECK_EQ_INT(load_as(be, d16, KQ_NF4, MODEL_MM_AUTO, 0, &e), 0);  /* 4-bit: auto stays f32 */
    CHECK_EQ_INT(load_as(be, d16, KQ_NONE, MODEL_MM_AUTO, 0, &e), runs);
    lr_err_clear(&e);
    CHECK_EQ_INT(load_as(be, d16, KQ_NF4, MODEL_MM_BF16, 0, &e), -1);
    CHECK_STR(e.param, "compute_dtype");
    lr_err_clear(&e);
    if (runs) {
        CHECK_EQ_INT(load_as(be, d32, KQ_NONE, MODEL_MM_BF16, 0, &e), 1); /* asked: f32 weights rounded */
        CHECK_EQ_INT(load_as(be, d16, KQ_NONE, MODEL_MM_BF16, 1, &e), -1);
        CHECKF(strstr(e.msg, "full_sft") != NULL, "%s", e.msg);
    } else {
        CHECK_EQ_INT(load_as(be, d16, KQ_NONE, MODEL_MM_BF16, 0, &e), -1);
        CHECKF(strstr(e.msg, "AVX512_BF16") != NULL && !strcmp(e.param, "compute_dtype"), "%s", e.msg);
    }
    /* a CPU without the feature, as the backend reports it: bf16 refused by name, auto f32 */
    int (*was)(kb_backend *, lr_err *) = be->bf16_check;
    be->bf16_check = lacks_bf16;
    lr_err_clear(&e);
    CHECK_EQ_INT(load_as(be, d16, KQ_NONE, MODEL_MM_BF16, 0, &e), -1);
    CHECKF(strstr(e.msg, "compute_dtype bf16") && strstr(e.msg, "AVX512_BF16"), "%s", e.msg);
    CHECK_EQ_INT(e.code, LR_E_INVALID);
    CHECK_EQ_INT(load_as(be, d16, KQ_NONE, MODEL_MM_AUTO, 0, &e), 0);
    be->bf16_check = was;
    kb_destroy(be);
}
