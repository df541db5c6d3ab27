/* vmath: exp for the CPU backend's elementwise and softmax loops, in plain
 * C that GCC and clang vectorize under `#pragma omp simd` (libm's expf and
 * tanhf are calls the compiler cannot vectorize; the activations alone were
 * a quarter of a GPT-2 LoRA step). KV_CLONES compiles a function for
 * AVX-512, AVX2 and the x86-64 baseline and picks one at load; built by GCC
 * in C11 mode (which fuses no multiply-adds) every clone returns the same
 * bits.
 *
 * kv_exp_d computes exp in double (relative error < 1e-16), so rounded to
 * float it is libm's expf to the bit on all but ~0.06% of arguments (1 ulp
 * there; expf's own error is up to 0.502 ulp), and tanh from it in double
 * is as close to tanhf: the kernels' numerics stay libm's. Its argument must
 * be clamped first, in a loop of its own (kv_exp_clamp): with the clamp
 * inline, GCC keeps a branch (FP compares may trap) and does not vectorize. */
#ifndef LR_VMATH_H
#define LR_VMATH_H

#include <stdint.h>

#if defined(__x86_64__) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define KV_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#endif
#endif
#ifndef KV_CLONES
#define KV_CLONES
#endif

/* The range kv_exp_d takes: exp(-104) rounds to 0 in float, exp(89) to
 * infinity, so clamping changes no float result. */
static inline float kv_exp_clamp(float x) {
    x = x < -104.0f ? -104.0f : x;
    return x > 89.0f ? 89.0f : x;
}

/* exp(x) for x in [-104, 89], in double: x = n ln2 + r with ln2 in two
 * parts and |r| <= ln2/2, a degree-13 Taylor polynomial for exp(r), 2^n
 * put in the exponent bits. */
static inline double kv_exp_d(float xf) {
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
    return p * s.d;
}

#endif
