/* test_elem: the per-row and per-element helpers of kernels/elem.h that the
 * CPU and CUDA backends share for DoRA and the KL LM head, against float64
 * computations written from their definitions (ce = logsumexp(l) - l[t],
 * kl = sum q (log q - log p_tau), DoRA's ||W + scale B A|| and output),
 * with the tolerances stated at each check. */
#include <stdint.h>

#include "kernels/elem.h"
#include "tests/unit/test.h"

static uint64_t rs = 1;
static float frand(void) { /* uniform [-1, 1) */
    return (float)((lr_mix64(rs++) >> 40) * (1.0 / 8388608.0) - 1.0);
}

/* One row through the helpers, in the order both backends use them. */
typedef struct kl_row {
    double ce, kl;
    float g[64];
} kl_row;
static void row_helpers(const float *l, const float *q, int V, int tg, float tau, float coef, float w, kl_row *o) {
    double itau = 1.0 / tau, kc = coef * itau;
    float mx = l[0], mq = q[0];
    for (int j = 1; j < V; j++) {
        mx = l[j] > mx ? l[j] : mx;
        mq = q[j] > mq ? q[j] : mq;
    }
    double s1 = 0, st = 0, sq = 0;
    for (int j = 0; j < V; j++) lr_kl_sums(l[j], q[j], mx, mq, itau, &s1, &st, &sq);
    double lse1 = mx + log(s1), lset = log(st), lseq = log(sq);
    o->ce = lse1 - (double)l[tg];
    o->kl = 0;
    for (int j = 0; j < V; j++) {
        float qv;
        o->kl += lr_kl_elem(l[j], q[j], mx, mq, itau, lset, lseq, &qv);
        o->g[j] = lr_ce_kl_grad(l[j], qv, mx, itau, lse1, lset, kc, w, j == tg);
    }
}
/* The same in float64 from the definitions (no max shift: small logits only). */
static void row_ref(const float *l, const float *q, int V, int tg, double tau, double coef, double w, double *ce,
                    double *kl, double *g) {
    double s1 = 0, st = 0, sq = 0;
    for (int j = 0; j < V; j++) s1 += exp(l[j]), st += exp(l[j] / tau), sq += exp(q[j] / tau);
    *ce = log(s1) - l[tg];
    *kl = 0;
    for (int j = 0; j < V; j++) {
        double lq = q[j] / tau - log(sq), lp = l[j] / tau - log(st);
        *kl += exp(lq) * (lq - lp);
        g[j] = w * (exp(l[j]) / s1 - (j == tg) + coef / tau * (exp(lp) - exp(lq)));
    }
}

TEST(kl_row_matches_float64) {
    const float taus[] = {1.0f, 0.5f, 2.0f};
    for (int k = 0; k < 3; k++) {
        int V = 64, tg = 5 + 20 * k;
        float l[64], q[64];
        for (int j = 0; j < V; j++) {
            l[j] = 3.0f * frand();
            q[j] = l[j] + frand();
        }
        kl_row o;
        double ce, kl, g[64], eg = 0, mg = 0, sum = 0;
        row_helpers(l, q, V, tg, taus[k], 0.7f, 0.125f, &o);
        row_ref(l, q, V, tg, taus[k], 0.7, 0.125, &ce, &kl, g);
        CHECK_NEAR(o.ce, ce, 1e-12 * ce);
        CHECK_NEAR(o.kl, kl, 1e-10 * kl);
        CHECK(o.kl > 0);
        for (int j = 0; j < V; j++) {
            eg = fabs(o.g[j] - g[j]) > eg ? fabs(o.g[j] - g[j]) : eg;
            mg = fabs(g[j]) > mg ? fabs(g[j]) : mg;
            sum += o.g[j];
        }
        /* f32 gradient elements: 1e-6 of the largest; they sum to 0 (both softmaxes do) */
        CHECKF(eg <= 1e-6 * mg, "tau %g: grad err %.3g of %.3g", taus[k], eg, mg);
        CHECK_NEAR(sum, 0.0, 1e-6 * 0.125);
    }
}

/* Logits far beyond exp's range: the max shift keeps everything finite and
 * the result is that of the shifted row. */
TEST(kl_row_large_logits) {
    int V = 40, tg = 3;
    float l[40], q[40], ls[40], qs[40];
    for (int j = 0; j < V; j++) {
        ls[j] = 2.0f * frand();
        qs[j] = ls[j] + 0.5f * frand();
        l[j] = ls[j] + 3000.0f; /* rounded to f32's steps there (2^-12, 2^-11) */
        q[j] = qs[j] - 5000.0f;
    }
    for (int j = 0; j < V; j++) { /* the shifted rows: those rounded values less the shift, exactly */
        ls[j] = l[j] - 3000.0f;
        qs[j] = q[j] + 5000.0f;
    }
    kl_row o, os;
    row_helpers(l, q, V, tg, 1.3f, 0.5f, 1.0f, &o);
    row_helpers(ls, qs, V, tg, 1.3f, 0.5f, 1.0f, &os);
    CHECK(isfinite(o.ce) && isfinite(o.kl));
    CHECK_NEAR(o.ce, os.ce, 1e-9);
    CHECK_NEAR(o.kl, os.kl, 1e-9);
    for (int j = 0; j < V; j++) CHECK_NEAR(o.g[j], os.g[j], 1e-6);
}

/* q = p (the reference is the model): kl = 0 and the gradient is plain
 * cross-entropy's, w (softmax - onehot). */
TEST(kl_row_identical_reference) {
    int V = 30, tg = 29;
    float l[30];
    for (int j = 0; j < V; j++) l[j] = 2.0f * frand();
    kl_row o;
    row_helpers(l, l, V, tg, 1.0f, 3.0f, 0.5f, &o);
    CHECK_NEAR(o.kl, 0.0, 1e-14);
    double s = 0;
    for (int j = 0; j < V; j++) s += exp(l[j]);
    for (int j = 0; j < V; j++) CHECK_NEAR(o.g[j], 0.5 * (exp(l[j]) / s - (j == tg)), 1e-7);
    /* with tau != 1 the KL still vanishes but its gradient does not: p_tau = q */
    row_helpers(l, l, V, tg, 2.0f, 3.0f, 0.5f, &o);
    CHECK_NEAR(o.kl, 0.0, 1e-14);
    for (int j = 0; j < V; j++) CHECK_NEAR(o.g[j], 0.5 * (exp(l[j]) / s - (j == tg)), 1e-7);
}

TEST(dora_norm_and_scale) {
    int in = 33;
    float w[33], ba[33], scale = 1.7f;
    double ss = 0, ref = 0;
    for (int i = 0; i < in; i++) {
        w[i] = frand();
        ba[i] = frand();
        ss += lr_dora_sq(w[i], ba[i], scale);
        double v = (double)w[i] + (double)scale * ba[i];
        ref += v * v;
    }
    /* f32 sum inside each element, f64 squares and sum: 1e-7 relative */
    CHECK_NEAR(sqrt(ss), sqrt(ref), 1e-7 * sqrt(ref));
    CHECK(lr_dora_sq(3.0f, 2.0f, 0.5f) == 16.0);
    CHECK(lr_dora_scale(3.0f, 4.0f) == 0.75f);
}

/* Without dropout the two forms of the DoRA output agree: base + (s - 1)
 * base + s lora == s (base + lora) up to f32 rounding. */
TEST(dora_out_forms) {
    for (int k = 0; k < 1000; k++) {
        float base = 4.0f * frand(), lora = frand(), s = 1.0f + 0.5f * frand(), b = frand();
        double ref = (double)s * ((double)base + lora) + b;
        float f0 = lr_dora_out(base, base, lora, s, b, 0), f1 = lr_dora_out(base, base, lora, s, b, 1);
        CHECK_NEAR(f0, ref, 1e-6 * (fabs(ref) + 4));
        CHECK_NEAR(f1, ref, 1e-6 * (fabs(ref) + 4));
    }
    /* with dropout the dropped base term is scaled by s - 1 */
    CHECK(lr_dora_out(2.0f, 1.0f, 0.5f, 1.5f, 0.25f, 1) == 2.0f + 0.5f * 1.0f + 1.5f * 0.5f + 0.25f);
}
