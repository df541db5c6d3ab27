/* The CPU backend's vectorized exp (kernels/cpu/vmath.h) against libm over
 * the whole float range, and the activations built on it against elem.h's
 * libm formulas through the backend: the same bits but for rare 1-ulp
 * differences (the softmaxes are covered by test_kernels and the PyTorch
 * oracle). */
#include "common/rng.h"
#include "kernels/backend.h"
#include "kernels/cpu/vmath.h"
#include "kernels/elem.h"
#include "tests/unit/test.h"

static int ulps(float a, float b) {
    int32_t ia, ib;
    memcpy(&ia, &a, sizeof ia);
    memcpy(&ib, &b, sizeof ib);
    return ia > ib ? ia - ib : ib - ia;
}

/* Over every argument where float exp is neither 0 nor infinite. */
TEST(exp_matches_libm) {
    int n = 2000000, off = 0, worst = 0;
    for (int i = 0; i <= n; i++) {
        float x = kv_exp_clamp(-103.9f + 192.6f * (float)i / (float)n);
        int u = ulps((float)kv_exp_d(x), expf(x));
        off += u != 0;
        worst = u > worst ? u : worst;
    }
    CHECKF(worst <= 1 && off < n / 500, "%d of %d differ, by up to %d ulp", off, n, worst);
    CHECK((float)kv_exp_d(kv_exp_clamp(-1e30f)) == 0.0f);
    CHECK(isinf((float)kv_exp_d(kv_exp_clamp(1e30f))));
    CHECK(kv_exp_d(0.0f) == 1.0);
}

/* Counts outputs that differ from the reference and the largest
 * difference relative to 1 + |reference|. */
static void cmp(const float *got, const float *want, size_t n, size_t *off, double *worst) {
    for (size_t i = 0; i < n; i++) {
        if (got[i] == want[i]) continue;
        (*off)++;
        double d = fabs((double)got[i] - want[i]) / (1 + fabs(want[i]));
        *worst = d > *worst ? d : *worst;
    }
}

TEST(activations_match_elem) {
    kb_backend *be;
    lr_err err = {0};
    REQUIRE(kb_cpu_create(2, &be, &err) == 0);
    size_t n = 100003; /* not a multiple of a block or a vector */
    float *x = malloc(n * sizeof *x), *u = malloc(n * sizeof *u), *dy = malloc(n * sizeof *dy);
    float *y = malloc(n * sizeof *y), *y2 = malloc(n * sizeof *y2), *r = malloc(n * sizeof *r),
          *r2 = malloc(n * sizeof *r2);
    REQUIRE(x && u && dy && y && y2 && r && r2);
    lr_rng rg;
    rng_seed(&rg, 3);
    rng_fill_uniform(&rg, x, n, -12, 12);
    rng_fill_uniform(&rg, u, n, -2, 2);
    rng_fill_uniform(&rg, dy, n, -1, 1);
    x[0] = -200.0f; /* exp(-x) overflows: silu is -0 */
    x[1] = 200.0f;

    size_t off[4] = {0};
    double worst[4] = {0};
    be->swiglu_fwd(be, y, x, u, n);
    for (size_t i = 0; i < n; i++) r[i] = lr_swiglu(x[i], u[i]);
    cmp(y, r, n, &off[0], &worst[0]);
    be->swiglu_bwd(be, y, y2, dy, x, u, n);
    for (size_t i = 0; i < n; i++) lr_swiglu_grad(x[i], u[i], dy[i], &r[i], &r2[i]);
    cmp(y, r, n, &off[1], &worst[1]);
    cmp(y2, r2, n, &off[1], &worst[1]);
    be->gelu_fwd(be, y, x, n, 0);
    for (size_t i = 0; i < n; i++) r[i] = lr_gelu_tanh(x[i]);
    cmp(y, r, n, &off[2], &worst[2]);
    be->gelu_bwd(be, y, dy, x, n, 0);
    for (size_t i = 0; i < n; i++) r[i] = dy[i] * lr_gelu_tanh_grad(x[i]);
    cmp(y, r, n, &off[3], &worst[3]);
    /* SwiGLU: libm's expf to the bit but for rare cases; GELU: tanh from exp
     * in double against tanhf, which is itself up to ~1 ulp off */
    CHECKF(off[0] < n / 200 && off[1] < n / 100 && worst[0] < 1e-6 && worst[1] < 1e-6,
           "swiglu: %zu / %zu outputs differ, by up to %g", off[0], off[1], fmax(worst[0], worst[1]));
    CHECKF(off[2] < n / 10 && worst[2] < 1e-6, "gelu: %zu outputs differ, by up to %g", off[2], worst[2]);
    /* the gradient's 0.5 x (1 - t^2) du term scales tanh's rounding by |x| du */
    CHECKF(worst[3] < 1e-5, "gelu grad: %zu outputs differ, by up to %g", off[3], worst[3]);
    printf("  differing outputs: swiglu %zu, swiglu grads %zu, gelu %zu, gelu grad %zu of %zu\n", off[0], off[1],
           off[2], off[3], n);
    free(x);
    free(u);
    free(dy);
    free(y);
    free(y2);
    free(r);
    free(r2);
    kb_destroy(be);
}
