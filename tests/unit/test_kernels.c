/* The CPU kernels: every backward against central finite differences of
 * L = sum(out * R) for a random R (f32 kernels, the loss summed in double,
 * relative tolerance 1e-3 on a sample of elements), the chunked
 * cross-entropy against an unchunked one, AdamW against PyTorch's formula,
 * and bitwise determinism of two runs. */
#include <stdint.h>

#include "common/rng.h"
#include "kernels/backend.h"
#include "kernels/elem.h"
#include "tests/unit/test.h"

static kb_backend *be2(void) {
    static kb_backend *be;
    lr_err err;
    if (!be && kb_cpu_create(2, &be, &err)) return NULL;
    return be;
}

static float *rnd(size_t n, uint64_t seed, float scale) {
    float *p = malloc(n * sizeof(float));
    lr_rng r;
    rng_seed(&r, seed);
    rng_fill_uniform(&r, p, n, -scale, scale);
    return p;
}

/* The op under test: writes its output given the inputs. */
typedef struct fd_case {
    void (*fwd)(struct fd_case *c, float *out);
    size_t nout;
    void *ud;
} fd_case;

static double loss_of(fd_case *c, const float *R, float *out) {
    c->fwd(c, out);
    double s = 0;
    for (size_t i = 0; i < c->nout; i++) s += (double)out[i] * R[i];
    return s;
}

/* Checks grad (the analytic dL/dx) against central differences on up to
 * 24 sampled elements of x. Returns the max relative error. */
static double fd_check(fd_case *c, const float *R, float *x, size_t n, const float *grad, const char *what) {
    float *out = malloc(c->nout * sizeof(float));
    double maxg = 1e-3, maxd = 0;
    for (size_t i = 0; i < n; i++) maxg = fabs(grad[i]) > maxg ? fabs(grad[i]) : maxg;
    size_t step = n > 24 ? n / 24 : 1;
    for (size_t i = 0; i < n; i += step) {
        float x0 = x[i];
        float h = 1e-2f * (fabsf(x0) > 1.0f ? fabsf(x0) : 1.0f);
        x[i] = x0 + h;
        double lp = loss_of(c, R, out);
        x[i] = x0 - h;
        double lm = loss_of(c, R, out);
        x[i] = x0;
        double num = (lp - lm) / (2.0 * ((double)(x0 + h) - (double)x0));
        double d = fabs(num - grad[i]) / maxg;
        if (d > maxd) maxd = d;
    }
    free(out);
    printf("    %-22s finite-difference max rel err %.2e\n", what, maxd);
    CHECKF(maxd < 1e-3, "%s: finite-difference mismatch %.3g", what, maxd);
    return maxd;
}

/* ---- RMSNorm / LayerNorm ---- */

typedef struct norm_ud {
    int N, C, ln;
    float *x, *w, *b, *mean, *rstd;
} norm_ud;

static void norm_fwd(fd_case *c, float *out) {
    norm_ud *u = c->ud;
    kb_backend *be = be2();
    if (u->ln)
        be->layernorm_fwd(be, out, u->mean, u->rstd, u->x, u->w, u->b, u->N, u->C, 1e-5f);
    else
        be->rmsnorm_fwd(be, out, u->rstd, u->x, u->w, u->N, u->C, 1e-6f);
}

static void norm_test(int ln) {
    kb_backend *be = be2();
    REQUIRE(be);
    int N = 5, C = 48;
    norm_ud u = {N, C, ln, rnd(N * C, 1, 2.0f), rnd(C, 2, 1.5f), rnd(C, 3, 0.5f), calloc(N, 4), calloc(N, 4)};
    fd_case c = {norm_fwd, (size_t)N * C, &u};
    float *R = rnd(N * C, 4, 1.0f), *out = malloc(N * C * 4);
    float *dx = calloc(N * C, 4), *dw = calloc(C, 4), *db = calloc(C, 4);
    c.fwd(&c, out);
    if (ln)
        be->layernorm_bwd(be, dx, dw, db, R, u.x, u.w, u.mean, u.rstd, N, C);
    else
        be->rmsnorm_bwd(be, dx, dw, R, u.x, u.w, u.rstd, N, C);
    fd_check(&c, R, u.x, N * C, dx, "dx");
    fd_check(&c, R, u.w, C, dw, "dw");
    if (ln) fd_check(&c, R, u.b, C, db, "db");
    /* dx accumulates */
    float *dx2 = malloc(N * C * 4);
    for (int i = 0; i < N * C; i++) dx2[i] = 1.0f;
    if (ln)
        be->layernorm_bwd(be, dx2, NULL, NULL, R, u.x, u.w, u.mean, u.rstd, N, C);
    else
        be->rmsnorm_bwd(be, dx2, NULL, R, u.x, u.w, u.rstd, N, C);
    CHECK_NEAR(dx2[7], dx[7] + 1.0f, 1e-5);
    free(u.x), free(u.w), free(u.b), free(u.mean), free(u.rstd), free(R), free(out), free(dx), free(dw), free(db),
        free(dx2);
}

TEST(rmsnorm_backward) { norm_test(0); }
TEST(layernorm_backward) { norm_test(1); }

/* ---- RoPE ---- */

typedef struct rope_ud {
    int N, T, H, D, ld;
    float *x, *cs, *sn;
} rope_ud;

static void rope_fwd(fd_case *c, float *out) {
    rope_ud *u = c->ud;
    memcpy(out, u->x, (size_t)u->N * u->ld * 4);
    be2()->rope_fwd(be2(), out, u->ld, u->cs, u->sn, u->N, u->T, u->H, u->D);
}

TEST(rope_backward_and_tables) {
    kb_backend *be = be2();
    REQUIRE(be);
    int B = 2, T = 6, H = 3, D = 8, N = B * T, ld = H * D + 5, half = D / 2;
    float *cs = malloc(T * half * 4), *sn = malloc(T * half * 4);
    for (int t = 0; t < T; t++)
        for (int i = 0; i < half; i++) {
            float inv = lr_rope_inv_freq(i, D, 10000.0f, 0, 0, 0, 0);
            cs[t * half + i] = cosf(t * inv);
            sn[t * half + i] = sinf(t * inv);
        }
    rope_ud u = {N, T, H, D, ld, rnd((size_t)N * ld, 5, 1.0f), cs, sn};
    fd_case c = {rope_fwd, (size_t)N * ld, &u};
    float *R = rnd((size_t)N * ld, 6, 1.0f), *g = malloc((size_t)N * ld * 4);
    memcpy(g, R, (size_t)N * ld * 4);
    be->rope_bwd(be, g, ld, cs, sn, N, T, H, D);
    fd_check(&c, R, u.x, (size_t)N * ld, g, "rope dx");
    /* position 0 is the identity; pair (i, i+D/2) rotated by t * inv_freq(i) */
    float *o = malloc((size_t)N * ld * 4);
    rope_fwd(&c, o);
    CHECK_NEAR(o[3], u.x[3], 1e-7);
    int t = 3, i = 1;
    float a = u.x[t * ld + i], b = u.x[t * ld + i + half], f = t * powf(10000.0f, -2.0f * i / D);
    CHECK_NEAR(o[t * ld + i], a * cosf(f) - b * sinf(f), 1e-5);
    CHECK_NEAR(o[t * ld + i + half], b * cosf(f) + a * sinf(f), 1e-5);
    /* llama3 scaling: high frequencies kept, low ones divided by factor */
    float hi = lr_rope_inv_freq(0, 128, 500000.0f, 32, 1, 4, 8192);
    float lo = lr_rope_inv_freq(63, 128, 500000.0f, 32, 1, 4, 8192);
    CHECK_NEAR(hi, 1.0f, 1e-7);
    CHECK_NEAR(lo, powf(500000.0f, -126.0f / 128) / 32, 1e-12);
    free(cs), free(sn), free(u.x), free(R), free(g), free(o);
}

/* ---- attention ---- */

typedef struct att_ud {
    int B, T, Hq, Hkv, D, ldq, ldkv, window;
    float *q, *k, *v, *lse;
} att_ud;

static void att_fwd(fd_case *c, float *out) {
    att_ud *u = c->ud;
    be2()->attn_fwd(be2(), out, u->lse, u->q, u->k, u->v, u->ldq, u->ldkv, u->B, u->T, u->Hq, u->Hkv, u->D,
                    u->window);
}

/* The naive attention in double, written from the definition: query i of
 * head h sees keys j of kv head h / G with j <= i and i - j < window (0:
 * all j <= i); the backward of L = sum(out * R) by the chain rule. Returns
 * the largest of (out, lse, gradient) errors, each relative to its largest
 * reference magnitude. */
static double att_naive_err(const att_ud *u, const float *out, const float *R, const float *dq, const float *dk,
                            const float *dv) {
    int B = u->B, T = u->T, Hq = u->Hq, D = u->D, G = Hq / u->Hkv, ldo = Hq * D;
    size_t nq = (size_t)B * T * u->ldq, nkv = (size_t)B * T * u->ldkv;
    double *gq = calloc(nq, sizeof(double)), *gk = calloc(nkv, sizeof(double)), *gv = calloc(nkv, sizeof(double));
    double *p = malloc((size_t)T * sizeof(double)), scale = 1.0 / sqrt((double)D);
    double eo = 0, mo = 0, el = 0, eg = 0, mg = 0;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < Hq; h++) {
            int kh = h / G;
            for (int i = 0; i < T; i++) {
                int j0 = u->window > 0 && i - u->window + 1 > 0 ? i - u->window + 1 : 0;
                const float *qi = u->q + (size_t)(b * T + i) * u->ldq + (size_t)h * D;
                const float *ri = R + (size_t)(b * T + i) * ldo + (size_t)h * D;
                double mx = -INFINITY, sum = 0, di = 0;
                for (int j = j0; j <= i; j++) {
                    const float *kj = u->k + (size_t)(b * T + j) * u->ldkv + (size_t)kh * D;
                    double a = 0;
                    for (int d = 0; d < D; d++) a += (double)qi[d] * kj[d];
                    p[j] = a * scale;
                    mx = p[j] > mx ? p[j] : mx;
                }
                for (int j = j0; j <= i; j++) sum += exp(p[j] - mx);
                double lse = mx + log(sum);
                el = fmax(el, fabs(lse - u->lse[(size_t)(b * Hq + h) * T + i]));
                for (int j = j0; j <= i; j++) p[j] = exp(p[j] - lse);
                for (int d = 0; d < D; d++) {
                    double o = 0;
                    for (int j = j0; j <= i; j++) o += p[j] * u->v[(size_t)(b * T + j) * u->ldkv + (size_t)kh * D + d];
                    eo = fmax(eo, fabs(o - out[(size_t)(b * T + i) * ldo + (size_t)h * D + d]));
                    mo = fmax(mo, fabs(o));
                    di += o * ri[d];
                }
                for (int j = j0; j <= i; j++) {
                    size_t kj = (size_t)(b * T + j) * u->ldkv + (size_t)kh * D;
                    double dp = 0;
                    for (int d = 0; d < D; d++) dp += (double)ri[d] * u->v[kj + d];
                    double ds = p[j] * (dp - di) * scale;
                    for (int d = 0; d < D; d++) {
                        gq[(size_t)(b * T + i) * u->ldq + (size_t)h * D + d] += ds * u->k[kj + d];
                        gk[kj + d] += ds * qi[d];
                        gv[kj + d] += p[j] * ri[d];
                    }
                }
            }
        }
    /* only the head columns: with interleaved q/k/v the other columns are not theirs */
    for (size_t n = 0; n < (size_t)B * T; n++) {
        for (int e = 0; e < Hq * D; e++) {
            size_t i = n * u->ldq + e;
            eg = fmax(eg, fabs(gq[i] - dq[i])), mg = fmax(mg, fabs(gq[i]));
        }
        for (int e = 0; e < u->Hkv * D; e++) {
            size_t i = n * u->ldkv + e;
            eg = fmax(eg, fmax(fabs(gk[i] - dk[i]), fabs(gv[i] - dv[i])));
            mg = fmax(mg, fmax(fabs(gk[i]), fabs(gv[i])));
        }
    }
    free(gq), free(gk), free(gv), free(p);
    printf("    window %-4d naive reference: out rel %.2e, lse abs %.2e, grads rel %.2e\n", u->window, eo / mo, el,
           eg / mg);
    return fmax(fmax(eo / mo, el), eg / mg);
}

static void att_test_w(int B, int T, int Hq, int Hkv, int D, int interleaved, int window) {
    kb_backend *be = be2();
    REQUIRE(be);
    int N = B * T, Qd = Hq * D, KVd = Hkv * D;
    int ldq = interleaved ? Qd + 2 * KVd : Qd, ldkv = interleaved ? ldq : KVd;
    float *qkv = rnd((size_t)N * (Qd + 2 * KVd), 7, 1.5f);
    att_ud u = {B, T, Hq, Hkv, D, ldq, ldkv, window, qkv, NULL, NULL, malloc((size_t)N * Hq * 4)};
    if (interleaved)
        u.k = qkv + Qd, u.v = qkv + Qd + KVd;
    else
        u.k = qkv + (size_t)N * Qd, u.v = u.k + (size_t)N * KVd;
    fd_case c = {att_fwd, (size_t)N * Qd, &u};
    float *R = rnd((size_t)N * Qd, 8, 1.0f), *out = malloc((size_t)N * Qd * 4);
    float *dqkv = calloc((size_t)N * (Qd + 2 * KVd), 4);
    float *dq = dqkv, *dk = dqkv + (u.k - qkv), *dv = dqkv + (u.v - qkv);
    c.fwd(&c, out);
    be->attn_bwd(be, dq, dk, dv, R, out, u.lse, u.q, u.k, u.v, ldq, ldkv, B, T, Hq, Hkv, D, window);
    double e = att_naive_err(&u, out, R, dq, dk, dv); /* before fd_check's forwards overwrite lse */
    CHECKF(e < 1e-5, "attention differs from the naive reference by %.3g", e);
    fd_check(&c, R, qkv, (size_t)N * (Qd + 2 * KVd), dqkv, "attention dq/dk/dv");
    /* row 0 attends only to itself: out = v[0] of its kv head */
    CHECK_NEAR(out[0], u.v[0], 1e-6);
    CHECK_NEAR(out[(size_t)(Hq - 1) * D], u.v[(size_t)(Hkv - 1) * D], 1e-6);
    if (window == 1) { /* every row attends only to itself */
        size_t n = (size_t)N - 1;
        CHECK_NEAR(out[n * Qd + (size_t)(Hq - 1) * D + 1], u.v[n * ldkv + (size_t)(Hkv - 1) * D + 1], 1e-6);
    }
    free(qkv), free(u.lse), free(R), free(out), free(dqkv);
}

static void att_test(int B, int T, int Hq, int Hkv, int D, int interleaved) {
    att_test_w(B, T, Hq, Hkv, D, interleaved, 0);
}

TEST(attention_backward_gqa) { att_test(2, 7, 4, 2, 8, 0); }
TEST(attention_backward_interleaved_mha) { att_test(1, 5, 2, 2, 4, 1); }
TEST(attention_backward_two_tiles) { att_test(1, 140, 2, 1, 4, 0); }
TEST(attention_window_1) { att_test_w(2, 7, 4, 2, 8, 0, 1); }
TEST(attention_window_3) { att_test_w(2, 7, 4, 2, 8, 0, 3); }
TEST(attention_window_3_interleaved) { att_test_w(1, 9, 2, 2, 4, 1, 3); }
/* the second query tile (rows 128..139) skips keys 0..78 */
TEST(attention_window_two_tiles) { att_test_w(1, 140, 2, 1, 4, 0, 50); }
TEST(attention_window_1_two_tiles) { att_test_w(1, 140, 2, 1, 4, 0, 1); }
TEST(attention_window_over_T) { att_test_w(2, 7, 4, 2, 8, 0, 20); }

/* A window of T or more is no window: bit for bit the causal result. */
TEST(attention_window_over_T_is_causal) {
    kb_backend *be = be2();
    REQUIRE(be);
    int B = 1, T = 140, H = 2, D = 8, N = B * T, C = H * D;
    float *qkv = rnd((size_t)N * 3 * C, 17, 1.5f), *R = rnd((size_t)N * C, 18, 1.0f);
    float *o[2], *lse[2], *d[2];
    int windows[2] = {0, T};
    for (int i = 0; i < 2; i++) {
        o[i] = malloc((size_t)N * C * 4), lse[i] = malloc((size_t)N * H * 4), d[i] = malloc((size_t)N * 3 * C * 4);
        be->attn_fwd(be, o[i], lse[i], qkv, qkv + C, qkv + 2 * C, 3 * C, 3 * C, B, T, H, H, D, windows[i]);
        be->attn_bwd(be, d[i], d[i] + C, d[i] + 2 * C, R, o[i], lse[i], qkv, qkv + C, qkv + 2 * C, 3 * C, 3 * C, B,
                     T, H, H, D, windows[i]);
    }
    CHECK(!memcmp(o[0], o[1], (size_t)N * C * 4));
    CHECK(!memcmp(lse[0], lse[1], (size_t)N * H * 4));
    /* only the q/k/v columns: the interleaved buffer has no other */
    CHECK(!memcmp(d[0], d[1], (size_t)N * 3 * C * 4));
    for (int i = 0; i < 2; i++) free(o[i]), free(lse[i]), free(d[i]);
    free(qkv), free(R);
}

/* ---- activations ---- */

typedef struct act_ud {
    size_t n;
    int kind; /* 0 swiglu, 1 gelu tanh, 2 gelu erf */
    float *a, *b;
} act_ud;

static void act_fwd(fd_case *c, float *out) {
    act_ud *u = c->ud;
    if (u->kind == 0)
        be2()->swiglu_fwd(be2(), out, u->a, u->b, u->n);
    else
        be2()->gelu_fwd(be2(), out, u->a, u->n, u->kind == 2);
}

TEST(activation_backward) {
    kb_backend *be = be2();
    REQUIRE(be);
    size_t n = 300;
    for (int kind = 0; kind < 3; kind++) {
        act_ud u = {n, kind, rnd(n, 9, 4.0f), rnd(n, 10, 2.0f)};
        fd_case c = {act_fwd, n, &u};
        float *R = rnd(n, 11, 1.0f), *da = malloc(n * 4), *db = malloc(n * 4);
        if (kind == 0) {
            be->swiglu_bwd(be, da, db, R, u.a, u.b, n);
            fd_check(&c, R, u.b, n, db, "swiglu dup");
        } else {
            be->gelu_bwd(be, da, R, u.a, n, kind == 2);
        }
        fd_check(&c, R, u.a, n, da, kind ? "gelu dx" : "swiglu dgate");
        free(u.a), free(u.b), free(R), free(da), free(db);
    }
    CHECK_NEAR(lr_gelu_tanh(1.0f), 0.8411920f, 1e-6); /* torch gelu(approximate='tanh') */
    CHECK_NEAR(lr_gelu_erf(1.0f), 0.8413447f, 1e-6);
    CHECK_NEAR(lr_silu(1.0f), 0.7310586f, 1e-6);
}

/* ---- linear with LoRA ---- */

typedef struct lin_ud {
    kb_linear L;
    kb_lora lo;
    int N;
    float *x, *xa;
} lin_ud;

static void lin_fwd(fd_case *c, float *out) {
    lin_ud *u = c->ud;
    be2()->linear_fwd(be2(), &u->L, out, u->xa, u->x, u->N);
}

static void lin_test(int w_in_out, int bias, float dropout) {
    kb_backend *be = be2();
    REQUIRE(be);
    int N = 9, in = 12, out = 10, r = 3;
    float *W = rnd((size_t)in * out, 12, 0.5f), *b = rnd(out, 13, 0.5f);
    lin_ud u = {.N = N, .x = rnd((size_t)N * in, 14, 1.0f), .xa = malloc((size_t)N * r * 4)};
    u.lo = (kb_lora){.A = rnd((size_t)r * in, 15, 0.5f), .B = rnd((size_t)out * r, 16, 0.5f),
                     .dA = calloc((size_t)r * in, 4), .dB = calloc((size_t)out * r, 4), .r = r, .scale = 1.7f,
                     .dropout = dropout, .seed = 42};
    u.L = (kb_linear){W, bias ? b : NULL, in, out, w_in_out, &u.lo, NULL, NULL, NULL, NULL};
    fd_case c = {lin_fwd, (size_t)N * out, &u};
    float *R = rnd((size_t)N * out, 17, 1.0f), *y = malloc((size_t)N * out * 4), *dx = malloc((size_t)N * in * 4);
    for (int i = 0; i < N * in; i++) dx[i] = 0.25f;
    c.fwd(&c, y);
    be->linear_bwd(be, &u.L, dx, 1, R, u.x, u.xa, N);
    for (int i = 0; i < N * in; i++) dx[i] -= 0.25f;
    fd_check(&c, R, u.x, (size_t)N * in, dx, "linear dx");
    fd_check(&c, R, u.lo.A, (size_t)r * in, u.lo.dA, "lora dA");
    fd_check(&c, R, u.lo.B, (size_t)out * r, u.lo.dB, "lora dB");
    /* y = x W^T + b + s (x A^T) B^T, by hand for one element */
    int n = 4, o = 7;
    double ref = bias ? b[o] : 0, xa = 0;
    for (int i = 0; i < in; i++) ref += (double)u.x[n * in + i] * (w_in_out ? W[i * out + o] : W[o * in + i]);
    for (int k = 0; k < r; k++) {
        xa = 0;
        for (int i = 0; i < in; i++)
            xa += (double)u.x[n * in + i] * lr_dropout_mult(42, (uint64_t)n * in + i, dropout) * u.lo.A[k * in + i];
        ref += 1.7 * xa * u.lo.B[o * r + k];
    }
    CHECK_NEAR(y[n * out + o], ref, 1e-5);
    free(W), free(b), free(u.x), free(u.xa), free(u.lo.A), free(u.lo.B), free(u.lo.dA), free(u.lo.dB), free(R), free(y),
        free(dx);
}

TEST(linear_lora_backward) { lin_test(0, 0, 0.0f); }
TEST(linear_lora_backward_conv1d_bias) { lin_test(1, 1, 0.0f); }
TEST(linear_lora_backward_dropout) { lin_test(0, 1, 0.3f); }

/* DoRA: the norm is computed once (dora_norm) and held fixed, so finite
 * differences see it detached, as the backward treats it. */
static void dora_test(int w_in_out, int bias, float dropout) {
    kb_backend *be = be2();
    REQUIRE(be);
    int N = 7, in = 11, out = 9, r = 3;
    float *W = rnd((size_t)in * out, 22, 0.5f), *b = rnd(out, 23, 0.5f), *wn = malloc((size_t)out * 4);
    lin_ud u = {.N = N, .x = rnd((size_t)N * in, 24, 1.0f), .xa = malloc((size_t)N * r * 4)};
    u.lo = (kb_lora){.A = rnd((size_t)r * in, 25, 0.5f), .B = rnd((size_t)out * r, 26, 0.5f),
                     .dA = calloc((size_t)r * in, 4), .dB = calloc((size_t)out * r, 4), .r = r, .scale = 1.7f,
                     .dropout = dropout, .seed = 77};
    u.lo.mag = rnd(out, 27, 1.0f);
    for (int j = 0; j < out; j++) u.lo.mag[j] += 2.0f;
    u.lo.dmag = calloc(out, 4);
    u.lo.wnorm = wn;
    u.L = (kb_linear){W, bias ? b : NULL, in, out, w_in_out, &u.lo, NULL, NULL, NULL, NULL};
    be->dora_norm(be, &u.L, wn);
    /* ||W + s B A|| of one row by hand */
    int o = 5;
    double ss = 0;
    for (int i = 0; i < in; i++) {
        double ba = 0;
        for (int k = 0; k < r; k++) ba += (double)u.lo.B[o * r + k] * u.lo.A[k * in + i];
        double v = (w_in_out ? W[i * out + o] : W[o * in + i]) + 1.7 * ba;
        ss += v * v;
    }
    CHECK_NEAR(wn[o], sqrt(ss), 1e-5 * sqrt(ss));
    fd_case c = {lin_fwd, (size_t)N * out, &u};
    float *R = rnd((size_t)N * out, 28, 1.0f), *y = malloc((size_t)N * out * 4), *dx = malloc((size_t)N * in * 4);
    for (int i = 0; i < N * in; i++) dx[i] = 0.25f;
    c.fwd(&c, y);
    be->linear_bwd(be, &u.L, dx, 1, R, u.x, u.xa, N);
    for (int i = 0; i < N * in; i++) dx[i] -= 0.25f;
    fd_check(&c, R, u.x, (size_t)N * in, dx, "dora dx");
    fd_check(&c, R, u.lo.A, (size_t)r * in, u.lo.dA, "dora dA");
    fd_check(&c, R, u.lo.B, (size_t)out * r, u.lo.dB, "dora dB");
    fd_check(&c, R, u.lo.mag, out, u.lo.dmag, "dora dmag");
    /* PEFT: y = x W^T + b + (s - 1) (xd W^T) + s * 1.7 (xd A^T) B^T, s = mag / norm */
    int n = 3;
    double sj = (double)u.lo.mag[o] / wn[o], base = 0, based = 0, lora = 0;
    for (int i = 0; i < in; i++) {
        double w = w_in_out ? W[i * out + o] : W[o * in + i];
        double xd = (double)u.x[n * in + i] * lr_dropout_mult(77, (uint64_t)n * in + i, dropout);
        base += (double)u.x[n * in + i] * w;
        based += xd * w;
        for (int k = 0; k < r; k++) lora += xd * u.lo.A[k * in + i] * u.lo.B[o * r + k];
    }
    double ref = base + (bias ? b[o] : 0) + (sj - 1) * based + sj * 1.7 * lora;
    CHECK_NEAR(y[n * out + o], ref, 1e-5);
    free(W), free(b), free(wn), free(u.x), free(u.xa), free(u.lo.A), free(u.lo.B), free(u.lo.dA), free(u.lo.dB),
        free(u.lo.mag), free(u.lo.dmag), free(R), free(y), free(dx);
}

TEST(linear_dora_backward) { dora_test(0, 0, 0.0f); }
TEST(linear_dora_backward_conv1d_bias) { dora_test(1, 1, 0.0f); }
TEST(linear_dora_backward_dropout) { dora_test(0, 1, 0.3f); }
TEST(linear_dora_backward_conv1d_dropout) { dora_test(1, 1, 0.25f); }

/* The KL head: ce and kl against a direct computation, its gradient
 * against finite differences of sum ce + coef * kl, chunking, and the
 * token accuracy of the tuned logits (two targets set to the argmax). */
typedef struct kl_ud {
    float *x, *xr, *W;
    int32_t *tg;
    int N, C, V;
    float tau, coef;
} kl_ud;

static void kl_fwd(fd_case *c, float *out) {
    kl_ud *u = c->ud;
    double ce, kl;
    int64_t nv;
    be2()->lmhead_ce_kl(be2(), &ce, &kl, &nv, NULL, NULL, u->x, u->xr, u->W, u->tg, u->N, u->C, u->V, u->tau, u->coef, 0, 0);
    out[0] = (float)(ce + u->coef * kl);
}

TEST(lmhead_ce_kl_backward_and_chunking) {
    kb_backend *be = be2();
    REQUIRE(be);
    int N = 6, C = 8, V = 13;
    int32_t tg[6] = {3, LR_IGNORE_INDEX, 0, 12, 7, LR_IGNORE_INDEX};
    kl_ud u = {rnd((size_t)N * C, 31, 1.0f), rnd((size_t)N * C, 32, 1.0f), rnd((size_t)V * C, 33, 1.0f), tg, N, C, V,
               1.7f, 0.6f};
    double ce, kl, ce2, kl2;
    int64_t nv, nc = -1, want = 0;
    for (int n = 0; n < N; n += 3) { /* rows 0 and 3: the target is the argmax */
        double best = -1e30;
        for (int v = 0; v < V; v++) {
            double l = 0;
            for (int k = 0; k < C; k++) l += (double)u.x[n * C + k] * u.W[v * C + k];
            if (l > best) best = l, tg[n] = v;
        }
    }
    float *dx = malloc((size_t)N * C * 4), *dx2 = malloc((size_t)N * C * 4), R = 1.0f;
    be->lmhead_ce_kl(be, &ce, &kl, &nv, &nc, dx, u.x, u.xr, u.W, tg, N, C, V, u.tau, u.coef, 1.0f, 0);
    CHECK_EQ_INT(nv, 4);
    /* by hand */
    double rce = 0, rkl = 0;
    for (int n = 0; n < N; n++) {
        if (tg[n] == LR_IGNORE_INDEX) continue;
        double l[13], q[13], s1 = 0, st = 0, sq = 0;
        int arg = 0;
        for (int v = 0; v < V; v++) {
            l[v] = q[v] = 0;
            for (int k = 0; k < C; k++) l[v] += (double)u.x[n * C + k] * u.W[v * C + k], q[v] += (double)u.xr[n * C + k] * u.W[v * C + k];
            s1 += exp(l[v]), st += exp(l[v] / u.tau), sq += exp(q[v] / u.tau);
            if (l[v] > l[arg]) arg = v;
        }
        want += arg == tg[n];
        rce += log(s1) - l[tg[n]];
        for (int v = 0; v < V; v++) {
            double lq = q[v] / u.tau - log(sq), lp = l[v] / u.tau - log(st);
            rkl += exp(lq) * (lq - lp);
        }
    }
    CHECK_NEAR(ce, rce, 1e-5 * rce);
    CHECK_NEAR(kl, rkl, 1e-5 * rkl + 1e-9);
    CHECK(kl > 0);
    CHECKF(want >= 2 && nc == want, "%lld rows the argmax, want %lld", (long long)nc, (long long)want);
    for (int i = 0; i < C; i++) CHECK(dx[1 * C + i] == 0.0f); /* an ignored row */
    fd_case c = {kl_fwd, 1, &u};
    fd_check(&c, &R, u.x, (size_t)N * C, dx, "ce+kl dx");
    be->lmhead_ce_kl(be, &ce2, &kl2, &nv, NULL, dx2, u.x, u.xr, u.W, tg, N, C, V, u.tau, u.coef, 1.0f, 1); /* chunks of 16 rows minimum */
    CHECK_NEAR(ce2, ce, 1e-9);
    CHECK_NEAR(kl2, kl, 1e-9);
    free(u.x), free(u.xr), free(u.W), free(dx), free(dx2);
}

TEST(dropout_mask_rate) {
    int kept = 0, n = 100000;
    for (int i = 0; i < n; i++) kept += lr_dropout_mult(7, (uint64_t)i, 0.25f) != 0.0f;
    CHECK_NEAR((double)kept / n, 0.75, 0.01);
    CHECK_NEAR(lr_dropout_mult(7, 3, 0.0f), 1.0, 0);
}

/* ---- LM head + cross-entropy ---- */

typedef struct ce_ud {
    int N, C, V, chunk;
    float *x, *W, *ts;
    int32_t *tg;
    double loss;
} ce_ud;

static void ce_fwd(fd_case *c, float *out) {
    ce_ud *u = c->ud;
    int64_t nv;
    u->loss = be2()->lmhead_ce(be2(), &nv, NULL, NULL, NULL, NULL, u->x, u->W, u->tg, NULL, u->N, u->C, u->V, 0, u->chunk);
    out[0] = (float)u->loss;
}

TEST(lmhead_ce_backward_and_chunking) {
    kb_backend *be = be2();
    REQUIRE(be);
    int N = 11, C = 16, V = 37;
    ce_ud u = {N, C, V, 3, rnd((size_t)N * C, 18, 1.0f), rnd((size_t)V * C, 19, 1.0f), NULL, malloc(N * 4), 0};
    for (int n = 0; n < N; n++) u.tg[n] = n % 4 == 1 ? LR_IGNORE_INDEX : (n * 7) % V;
    int64_t nv;
    float *dx = malloc((size_t)N * C * 4), *tl = malloc(N * 4);
    double loss = be->lmhead_ce(be, &nv, NULL, tl, dx, NULL, u.x, u.W, u.tg, NULL, N, C, V, 1.0f, 3);
    CHECK_EQ_INT(nv, 8);
    /* against a direct double computation */
    double ref = 0;
    for (int n = 0; n < N; n++) {
        if (u.tg[n] == LR_IGNORE_INDEX) {
            CHECK(tl[n] == 0.0f);
            for (int c = 0; c < C; c++) CHECK(dx[n * C + c] == 0.0f);
            continue;
        }
        double lg[64], mx = -1e30, s = 0;
        for (int v = 0; v < V; v++) {
            lg[v] = 0;
            for (int c = 0; c < C; c++) lg[v] += (double)u.x[n * C + c] * u.W[v * C + c];
            mx = lg[v] > mx ? lg[v] : mx;
        }
        for (int v = 0; v < V; v++) s += exp(lg[v] - mx);
        double l = mx + log(s) - lg[u.tg[n]];
        CHECK_NEAR(tl[n], l, 1e-5);
        ref += l;
    }
    CHECK_NEAR(loss, ref, 1e-5 * fabs(ref));
    float R[1] = {1.0f};
    fd_case c = {ce_fwd, 1, &u};
    fd_check(&c, R, u.x, (size_t)N * C, dx, "ce dx");
    /* chunk sizes 1, 3, default and one chunk give the same loss and dx */
    int chunks[] = {1, 5, 0, 1000};
    for (int k = 0; k < 4; k++) {
        float *dx2 = malloc((size_t)N * C * 4);
        double l2 = be->lmhead_ce(be, &nv, NULL, NULL, dx2, NULL, u.x, u.W, u.tg, NULL, N, C, V, 1.0f, chunks[k]);
        CHECK_NEAR(l2, loss, 1e-9 * fabs(loss));
        double md = 0;
        for (int i = 0; i < N * C; i++) md = fmax(md, fabs(dx2[i] - dx[i]));
        CHECKF(md < 1e-6, "chunk %d: dx differs by %g", chunks[k], md);
        free(dx2);
    }
    /* per-row weights scale the per-row gradient */
    float *ts = malloc(N * 4), *dx3 = malloc((size_t)N * C * 4);
    for (int n = 0; n < N; n++) ts[n] = (float)(n % 3);
    be->lmhead_ce(be, &nv, NULL, NULL, dx3, NULL, u.x, u.W, u.tg, ts, N, C, V, 0.5f, 0);
    for (int i = 0; i < N * C; i++) CHECK_NEAR(dx3[i], dx[i] * 0.5f * ts[i / C], 1e-6);
    free(u.x), free(u.W), free(u.tg), free(dx), free(tl), free(ts), free(dx3);
}

/* n_correct: the rows whose argmax (in double here) is the target, in
 * every chunking, with or without a backward; a row of zeros ties every
 * logit, and torch.argmax takes the first. */
TEST(lmhead_ce_token_accuracy) {
    kb_backend *be = be2();
    REQUIRE(be);
    int N = 40, C = 16, V = 37, want = 0, ambiguous = 0;
    float *x = rnd((size_t)N * C, 23, 1.0f), *W = rnd((size_t)V * C, 24, 1.0f), *dx = malloc((size_t)N * C * 4);
    int32_t tg[40];
    for (int n = 0; n < N; n++) {
        double best = -1e30, second = -1e30;
        int arg = 0;
        for (int v = 0; v < V; v++) {
            double l = 0;
            for (int c = 0; c < C; c++) l += (double)x[n * C + c] * W[v * C + c];
            if (l > best) second = best, best = l, arg = v;
            else if (l > second) second = l;
        }
        ambiguous += best - second < 1e-4;
        tg[n] = n % 5 == 4 ? LR_IGNORE_INDEX : n % 2 ? arg : (arg + 1 + n % 7) % V;
        want += n % 5 != 4 && n % 2;
    }
    REQUIRE(ambiguous == 0); /* the data leave no near-tie to f32 rounding */
    int chunks[] = {0, 1, 7, 1000};
    for (int k = 0; k < 4; k++) {
        int64_t nv, nc = -1;
        be->lmhead_ce(be, &nv, &nc, NULL, k % 2 ? dx : NULL, NULL, x, W, tg, NULL, N, C, V, 1.0f, chunks[k]);
        CHECK_EQ_INT(nv, 32);
        CHECKF(nc == want, "chunk %d: %lld correct, want %d", chunks[k], (long long)nc, want);
    }
    /* ties: all logits 0; target 0 is torch's argmax, target 3 is not */
    memset(x, 0, (size_t)2 * C * sizeof(float));
    int32_t tie[2] = {0, 3};
    int64_t nv, nc = -1;
    be->lmhead_ce(be, &nv, &nc, NULL, NULL, NULL, x, W, tie, NULL, 2, C, V, 1.0f, 0);
    CHECK(nv == 2 && nc == 1);
    /* no scored row: 0 */
    int32_t none[2] = {LR_IGNORE_INDEX, LR_IGNORE_INDEX};
    nc = -1;
    be->lmhead_ce(be, &nv, &nc, NULL, NULL, NULL, x, W, none, NULL, 2, C, V, 1.0f, 0);
    CHECK(nv == 0 && nc == 0);
    free(x), free(W), free(dx);
}

/* ---- embedding, optimizer, reductions ---- */

TEST(embedding_forward_backward) {
    kb_backend *be = be2();
    REQUIRE(be);
    int V = 7, C = 70, T = 3, N = 6, Tm = 5;
    int32_t ids[6] = {1, 4, 1, 0, 6, 4};
    float *wte = rnd((size_t)V * C, 20, 1.0f), *wpe = rnd((size_t)Tm * C, 21, 1.0f), *out = malloc((size_t)N * C * 4);
    be->embed_fwd(be, out, ids, wte, wpe, N, T, C);
    CHECK_NEAR(out[4 * C + 5], wte[6 * C + 5] + wpe[1 * C + 5], 0);
    float *g = rnd((size_t)N * C, 22, 1.0f), *dwte = calloc((size_t)V * C, 4), *dwpe = calloc((size_t)Tm * C, 4);
    be->embed_bwd(be, dwte, dwpe, g, ids, N, T, C);
    CHECK_NEAR(dwte[1 * C + 9], g[0 * C + 9] + g[2 * C + 9], 1e-6);
    CHECK_NEAR(dwpe[2 * C + 69], g[2 * C + 69] + g[5 * C + 69], 1e-6);
    CHECK_NEAR(dwte[2 * C], 0, 0);
    free(wte), free(wpe), free(out), free(g), free(dwte), free(dwpe);
}

TEST(adamw_matches_torch_formula) {
    kb_backend *be = be2();
    REQUIRE(be);
    size_t n = 5000;
    float *p = rnd(n, 23, 1.0f), *m = calloc(n, 4), *v = calloc(n, 4);
    double *pd = malloc(n * 8), *md = calloc(n, 8), *vd = calloc(n, 8);
    for (size_t i = 0; i < n; i++) pd[i] = p[i];
    kb_adamw hp = {1e-2f, 0.9f, 0.999f, 1e-8f, 0.1f, 0};
    for (int t = 1; t <= 3; t++) {
        float *g = rnd(n, 100 + t, 1.0f);
        hp.t = t;
        be->adamw(be, p, g, m, v, n, &hp);
        double bc1 = 1 - pow(0.9, t), bc2 = 1 - pow(0.999, t);
        for (size_t i = 0; i < n; i++) {
            pd[i] *= 1 - 1e-2 * 0.1;
            md[i] = 0.9 * md[i] + 0.1 * g[i];
            vd[i] = 0.999 * vd[i] + 0.001 * (double)g[i] * g[i];
            pd[i] -= 1e-2 / bc1 * md[i] / (sqrt(vd[i]) / sqrt(bc2) + 1e-8);
        }
        free(g);
    }
    double md_ = 0;
    for (size_t i = 0; i < n; i++) md_ = fmax(md_, fabs(p[i] - pd[i]));
    CHECKF(md_ < 1e-6, "adamw differs from the double reference by %g", md_);
    double ss = be->sumsq(be, p, n), ref = 0;
    for (size_t i = 0; i < n; i++) ref += (double)p[i] * p[i];
    CHECK_NEAR(ss, ref, 1e-9 * ref);
    be->scale(be, p, 0.5f, n);
    CHECK_NEAR(be->sumsq(be, p, n), ref / 4, 1e-9 * ref);
    free(p), free(m), free(v), free(pd), free(md), free(vd);
}

/* ---- determinism ---- */

static void att_lin_run(kb_backend *be, float *dq, float *dA, int window) {
    int B = 2, T = 150, H = 4, D = 16, N = B * T, C = H * D, r = 4;
    float *x = rnd((size_t)N * C, 30, 1.0f), *W = rnd((size_t)3 * C * C, 31, 0.2f);
    kb_lora lo = {.A = rnd((size_t)r * C, 32, 0.3f), .B = rnd((size_t)3 * C * r, 33, 0.3f), .dA = dA,
                  .dB = calloc((size_t)3 * C * r, 4), .r = r, .scale = 2.0f, .dropout = 0.1f, .seed = 9};
    kb_linear L = {W, NULL, C, 3 * C, 0, &lo, NULL, NULL, NULL, NULL};
    float *qkv = malloc((size_t)N * 3 * C * 4), *xa = malloc((size_t)N * r * 4), *o = malloc((size_t)N * C * 4);
    float *lse = malloc((size_t)N * H * 4), *dqkv = malloc((size_t)N * 3 * C * 4), *dx = malloc((size_t)N * C * 4);
    be->linear_fwd(be, &L, qkv, xa, x, N);
    be->attn_fwd(be, o, lse, qkv, qkv + C, qkv + 2 * C, 3 * C, 3 * C, B, T, H, H, D, window);
    be->attn_bwd(be, dqkv, dqkv + C, dqkv + 2 * C, o, o, lse, qkv, qkv + C, qkv + 2 * C, 3 * C, 3 * C, B, T, H, H, D,
                 window);
    be->linear_bwd(be, &L, dx, 0, dqkv, x, xa, N);
    memcpy(dq, dx, (size_t)N * C * 4);
    free(x), free(W), free(lo.A), free(lo.B), free(lo.dB), free(qkv), free(xa), free(o), free(lse), free(dqkv), free(dx);
}

TEST(deterministic_across_runs) {
    kb_backend *be = be2();
    REQUIRE(be);
    size_t n = (size_t)300 * 64, na = (size_t)4 * 64;
    float *a = malloc(n * 4), *b = malloc(n * 4), *da = calloc(na, 4), *db = calloc(na, 4);
    for (int window = 0; window <= 40; window += 40) {
        memset(da, 0, na * 4), memset(db, 0, na * 4);
        att_lin_run(be, a, da, window);
        att_lin_run(be, b, db, window);
        CHECK(!memcmp(a, b, n * 4));
        CHECK(!memcmp(da, db, na * 4));
    }
    free(a), free(b), free(da), free(db);
}
