/* The CPU backend's vectorized exp and tanh (kernels/cpu/vmath.h) against
 * libm over their whole range, and the activations built on them against
 * elem.h's libm formulas through the backend (the softmaxes are covered by
 * test_kernels and the PyTorch oracle). */
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

TEST(expf_within_2ulp) {
    int worst = 0;
    float at = 0;
    for (int i = 0; i <= 2000000; i++) {
        float x = -87.0f + 175.0f * (float)i / 2000000.0f;
        int u = ulps(kv_expf(x), expf(x));
        if (u > worst) worst = u, at = x;
    }
    CHECKF(worst <= 2, "kv_expf is %d ulp off at %g", worst, at);
    /* clamped outside [-87, 88]: finite, no denormals */
    CHECK(kv_expf(-1000.0f) > 0.0f && kv_expf(-1000.0f) < 1e-37f);
    CHECK(isfinite(kv_expf(1000.0f)) && kv_expf(1000.0f) > 1e38f);
}

/* The softmaxes' exp: libm's expf to the bit but for rare 1-ulp cases,
 * over the whole range where float exp is neither 0 nor infinite. */
TEST(expf_d_matches_libm) {
    int n = 2000000, off = 0, worst = 0;
    for (int i = 0; i <= n; i++) {
        float x = kv_exp_clamp(-103.9f + 192.6f * (float)i / (float)n);
        int u = ulps(kv_expf_d(x), expf(x));
        off += u != 0;
        worst = u > worst ? u : worst;
    }
    CHECKF(worst <= 1 && off < n / 500, "%d of %d differ, by up to %d ulp", off, n, worst);
    CHECK(kv_expf_d(kv_exp_clamp(-1e30f)) == 0.0f);
    CHECK(isinf(kv_expf_d(kv_exp_clamp(1e30f))));
    CHECK(kv_expf_d(0.0f) == 1.0f);
}

TEST(tanhf_close) {
    double worst = 0;
    for (int i = 0; i <= 200000; i++) {
        float x = -20.0f + 40.0f * (float)i / 200000.0f;
        double d = fabs((double)kv_tanhf(x) - tanh((double)x));
        if (d > worst) worst = d;
    }
    CHECKF(worst <= 2.5e-7, "kv_tanhf is %g off", worst);
    CHECK(kv_tanhf(50.0f) == 1.0f && kv_tanhf(-50.0f) == -1.0f);
}

/* The activations through the backend: elem.h's values to float rounding. */
TEST(activations_match_elem) {
    kb_backend *be;
    lr_err err = {0};
    REQUIRE(kb_cpu_create(2, &be, &err) == 0);
    size_t n = 10007; /* not a multiple of a block or a vector */
    float *x = malloc(n * sizeof *x), *u = malloc(n * sizeof *u), *dy = malloc(n * sizeof *dy);
    float *y = malloc(n * sizeof *y), *y2 = malloc(n * sizeof *y2);
    REQUIRE(x && u && dy && y && y2);
    lr_rng r;
    rng_seed(&r, 3);
    rng_fill_uniform(&r, x, n, -12, 12);
    rng_fill_uniform(&r, u, n, -2, 2);
    rng_fill_uniform(&r, dy, n, -1, 1);
    double e1 = 0, e2 = 0, e3 = 0, e4 = 0;
    be->gelu_fwd(be, y, x, n, 0);
    for (size_t i = 0; i < n; i++) e1 = fmax(e1, fabs(y[i] - lr_gelu_tanh(x[i])) / (1 + fabs(x[i])));
    be->gelu_bwd(be, y, dy, x, n, 0);
    /* the gradient's 0.5 x (1 - t^2) du term scales tanh's error by |x| du ~ |x|^3 / 10 */
    for (size_t i = 0; i < n; i++)
        e2 = fmax(e2, fabs(y[i] - dy[i] * lr_gelu_tanh_grad(x[i])) / (1 + 0.1 * fabs(x[i] * x[i] * x[i])));
    be->swiglu_fwd(be, y, x, u, n);
    for (size_t i = 0; i < n; i++) e3 = fmax(e3, fabs(y[i] - lr_swiglu(x[i], u[i])) / (1 + fabs(x[i] * u[i])));
    be->swiglu_bwd(be, y, y2, dy, x, u, n);
    for (size_t i = 0; i < n; i++) {
        float dg, du;
        lr_swiglu_grad(x[i], u[i], dy[i], &dg, &du);
        e4 = fmax(e4, fmax(fabs(y[i] - dg), fabs(y2[i] - du)) / (1 + fabs(x[i] * u[i])));
    }
    CHECKF(e1 < 1e-6 && e2 < 1e-6 && e3 < 1e-6 && e4 < 1e-6, "gelu %g %g swiglu %g %g", e1, e2, e3, e4);
    free(x);
    free(u);
    free(dy);
    free(y);
    free(y2);
    kb_destroy(be);
}
