/* attn_kv_fwd on the CPU against attn_fwd: from p0 = 0 (a prefill) it is
 * attn_fwd with B = 1 bit for bit; from p0 > 0 (decoding steps, and blocks
 * of several rows appended to a cache) each row equals attn_fwd's row at
 * that position over the whole sequence, within f32 rounding. Shapes cover
 * GQA, sliding windows shorter and longer than the sequence, more rows than
 * one 64-row tile, GPT-2's fused q|k|v rows (stride 3C), and 1 or 3 threads. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "common/rng.h"
#include "kernels/backend.h"
#include "tests/unit/test.h"

typedef struct shape {
    int T, Hq, Hkv, D, window, fused;
} shape;

/* q, k, v of T positions: separate [T, Hq*D], [T, Hkv*D] arrays, or one
 * [T, 3*Hq*D] array of fused rows (Hkv = Hq). */
typedef struct seq {
    float *buf, *q, *k, *v;
    int ldq, ldkv;
} seq;

static void seq_make(seq *s, const shape *sh, uint64_t seed) {
    int Qd = sh->Hq * sh->D, KVd = sh->Hkv * sh->D;
    size_t n = (size_t)sh->T * (Qd + 2 * KVd);
    s->buf = malloc(n * sizeof(float));
    lr_rng r;
    rng_seed(&r, seed);
    rng_fill_uniform(&r, s->buf, n, -1.5f, 1.5f);
    if (sh->fused) {
        s->q = s->buf, s->k = s->buf + Qd, s->v = s->buf + 2 * Qd, s->ldq = s->ldkv = 3 * Qd;
    } else {
        s->q = s->buf, s->k = s->q + (size_t)sh->T * Qd, s->v = s->k + (size_t)sh->T * KVd;
        s->ldq = Qd, s->ldkv = KVd;
    }
}

static void check_shape(int threads, const shape *sh) {
    lr_err err = {0};
    kb_backend *be = NULL;
    REQUIRE(kb_cpu_create(threads, &be, &err) == 0);
    int T = sh->T, Qd = sh->Hq * sh->D;
    seq s;
    seq_make(&s, sh, 1000u + (uint64_t)T * 7 + (uint64_t)sh->window);
    float *ref = malloc((size_t)T * Qd * sizeof(float)), *lse = malloc((size_t)T * sh->Hq * sizeof(float));
    float *got = malloc((size_t)T * Qd * sizeof(float));
    be->attn_fwd(be, ref, lse, s.q, s.k, s.v, s.ldq, s.ldkv, 1, T, sh->Hq, sh->Hkv, sh->D, sh->window);

    /* the prefill */
    be->attn_kv_fwd(be, got, s.q, s.ldq, s.k, s.v, s.ldkv, 0, T, sh->Hq, sh->Hkv, sh->D, sh->window);
    CHECKF(!memcmp(got, ref, (size_t)T * Qd * sizeof(float)), "T=%d window %d: prefill differs from attn_fwd", T,
           sh->window);

    /* every decoding step, then blocks of 5 rows from a few positions */
    double worst = 0, scale = 0;
    for (size_t i = 0; i < (size_t)T * Qd; i++) scale = fmax(scale, fabs(ref[i]));
    for (int p = 1; p < T; p++) {
        be->attn_kv_fwd(be, got, s.q + (size_t)p * s.ldq, s.ldq, s.k, s.v, s.ldkv, p, 1, sh->Hq, sh->Hkv, sh->D,
                        sh->window);
        for (int i = 0; i < Qd; i++) worst = fmax(worst, fabs(got[i] - ref[(size_t)p * Qd + i]));
    }
    for (int p0 = 3; p0 + 5 <= T; p0 += T / 3) {
        be->attn_kv_fwd(be, got, s.q + (size_t)p0 * s.ldq, s.ldq, s.k, s.v, s.ldkv, p0, 5, sh->Hq, sh->Hkv, sh->D,
                        sh->window);
        for (size_t i = 0; i < (size_t)5 * Qd; i++) worst = fmax(worst, fabs(got[i] - ref[(size_t)p0 * Qd + i]));
    }
    printf("    T=%d Hq=%d Hkv=%d D=%d window %d%s, %d thread(s): decode rows max|diff| %.2e (max |out| %.2f)\n", T,
           sh->Hq, sh->Hkv, sh->D, sh->window, sh->fused ? " fused" : "", threads, worst, scale);
    CHECKF(worst <= 2e-6 * scale, "decode rows differ from attn_fwd's by %g", worst);
    free(s.buf);
    free(ref);
    free(lse);
    free(got);
    kb_destroy(be);
}

TEST(attn_kv_gqa) {
    shape sh = {.T = 41, .Hq = 4, .Hkv = 2, .D = 16};
    check_shape(1, &sh);
    check_shape(3, &sh);
}
TEST(attn_kv_long_tiles) {
    shape sh = {.T = 150, .Hq = 6, .Hkv = 2, .D = 32};
    check_shape(2, &sh);
}
TEST(attn_kv_window) {
    shape a = {.T = 70, .Hq = 4, .Hkv = 1, .D = 16, .window = 9};
    shape b = {.T = 70, .Hq = 4, .Hkv = 4, .D = 8, .window = 100}; /* wider than the sequence: plain causal */
    check_shape(1, &a);
    check_shape(2, &b);
}
TEST(attn_kv_fused_rows) {
    shape sh = {.T = 33, .Hq = 4, .Hkv = 4, .D = 16, .fused = 1};
    check_shape(2, &sh);
    sh.window = 6;
    check_shape(1, &sh);
}
