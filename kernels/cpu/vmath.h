/* vmath: exp and tanh for the CPU backend's elementwise loops, in plain C
 * that GCC and clang vectorize under `#pragma omp simd` (libm's expf and
 * tanhf are calls the compiler cannot vectorize, and they were a quarter of
 * a GPT-2 LoRA step). KV_CLONES compiles a loop for AVX-512, AVX2 and the
 * x86-64 baseline and picks one at load; built by GCC in C11 mode (which
 * fuses no multiply-adds) every clone returns the same bits.
 *
 * Accuracy: kv_expf is within 2 ulp of expf on [-87, 88] and clamps outside
 * it (exp(-87) ~ 1.6e-38, exp(88) ~ 1.7e38: no infinities, no denormals);
 * kv_tanhf = 1 - 2 / (exp(2x) + 1), within 2e-7 of tanhf absolutely. */
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

#endif
