/* vmath: exp and tanh for the CPU backend's elementwise loops, in plain C
 * that GCC and clang vectorize under `#pragma omp simd` (libm's expf and
 * tanhf are calls the compiler cannot vectorize, and they were a quarter of
 * a GPT-2 LoRA step). KV_CLONES compiles a loop for AVX-512, AVX2 and the
 * x86-64 baseline and picks one at load; built by GCC in C11 mode (which
 * fuses no multiply-adds) every clone returns the same bits.
 *
 * Accuracy: kv_expf is within 2 ulp of expf on [-87, 88] and clamps outside
 * it (exp(-87) ~ 1.6e-38, exp(88) ~ 1.7e38: no infinities, no denormals);
 * kv_tanhf = 1 - 2 / (exp(2x) + 1), within 2e-7 of tanhf absolutely. The
 * softmaxes, whose log-sum-exps feed losses, use kv_expf_d: exp in double,
 * rounded once, so it is libm's expf to the bit on all but ~0.06% of
 * arguments (1 ulp there; libm's own error is up to 0.502 ulp). */
#ifndef LR_VMATH_H
#define LR_VMATH_H

#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define KV_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#endif
#endif
#ifndef KV_CLONES
#define KV_CLONES
#endif

/* Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, then Cephes' degree-7
 * polynomial for exp(r); 2^n is built in the exponent bits. */
static inline float kv_expf(float x) {
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    /* round to nearest by the 1.5 * 2^23 trick: no SSE4.1 round needed */
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = x - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t e = ((int32_t)n + 127) * (1 << 23);
    float s;
    memcpy(&s, &e, sizeof s);
    return p * s;
}

static inline float kv_tanhf(float x) { return 1.0f - 2.0f / (kv_expf(2.0f * x) + 1.0f); }

/* The argument range of kv_expf_d, in a function of its own: with the
 * clamp inline, GCC keeps a branch (FP compares may trap) and the loop
 * does not vectorize; clamp in one loop, exponentiate in the next. */
static inline float kv_exp_clamp(float x) {
    x = x < -104.0f ? -104.0f : x;
    return x > 89.0f ? 89.0f : x;
}

/* exp(x) for x in [-104, 89] (exp(-104) rounds to 0 in float, exp(89) to
 * infinity), computed in double: reduction by ln2 split in two parts, a
 * degree-13 Taylor polynomial (relative error < 1e-16 on |r| <= ln2/2),
 * 2^n in the exponent bits, one rounding to float. */
static inline float kv_expf_d(float xf) {
    double x = xf;
    union {
        double d;
        uint64_t u;
    } k, s;
    k.d = x * 1.4426950408889634 + 6755399441055744.0; /* 1.5 * 2^52: n in the low bits */
    double n = k.d - 6755399441055744.0;
    double r = x - n * 0.693147180369123816490;
    r = r - n * 1.90821492927058770002e-10;
    double p = 1.0 / 6227020800.0;
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    s.u = (k.u + 1023) << 52;
    return (float)(p * s.d);
}

#endif
