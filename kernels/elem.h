/* elem: the per-element arithmetic of the kernels, shared by the CPU backend
 * (plain C) and the CUDA backend (compiled by nvcc as __host__ __device__),
 * so that both compute exactly the same formulas and the CPU unit tests cover
 * the device arithmetic too. Everything here is a static inline pure
 * function of its arguments. */
#ifndef LR_ELEM_H
#define LR_ELEM_H

#include <math.h>
#include <stdint.h>

#ifdef __CUDACC__
#define LR_HD __host__ __device__
#else
#define LR_HD
#endif

#define LR_IGNORE_INDEX (-100)

/* silu(x) = x * sigmoid(x) and its derivative. */
LR_HD static inline float lr_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
LR_HD static inline float lr_silu(float x) { return x * lr_sigmoid(x); }
LR_HD static inline float lr_silu_grad(float x) {
    float s = lr_sigmoid(x);
    return s * (1.0f + x * (1.0f - s));
}

/* SwiGLU (Llama/Mistral/Qwen2 MLP): h = silu(gate) * up.
 * Backward: dgate = dh * up * silu'(gate), dup = dh * silu(gate). */
LR_HD static inline float lr_swiglu(float g, float u) { return lr_silu(g) * u; }
LR_HD static inline void lr_swiglu_grad(float g, float u, float dh, float *dg, float *du) {
    *dg = dh * u * lr_silu_grad(g);
    *du = dh * lr_silu(g);
}

/* gelu_new / gelu_pytorch_tanh (GPT-2): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). */
#define LR_GELU_K 0.7978845608028654f /* sqrt(2/pi) */
LR_HD static inline float lr_gelu_tanh(float x) {
    float u = LR_GELU_K * (x + 0.044715f * x * x * x);
    return 0.5f * x * (1.0f + tanhf(u));
}
LR_HD static inline float lr_gelu_tanh_grad(float x) {
    float u = LR_GELU_K * (x + 0.044715f * x * x * x);
    float t = tanhf(u);
    float du = LR_GELU_K * (1.0f + 3.0f * 0.044715f * x * x);
    return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du;
}
/* Exact gelu ("gelu"): 0.5 x (1 + erf(x / sqrt 2)). */
LR_HD static inline float lr_gelu_erf(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }
LR_HD static inline float lr_gelu_erf_grad(float x) {
    return 0.5f * (1.0f + erff(x * 0.70710678118654752f)) +
           x * 0.39894228040143268f * expf(-0.5f * x * x);
}

/* RMSNorm of one element given the row's 1/rms: w * (x * rstd) (HF order:
 * normalise in f32, then scale). */
LR_HD static inline float lr_rmsnorm_elem(float x, float rstd, float w) { return w * (x * rstd); }
/* LayerNorm of one element: (x - mean) * rstd * w + b. */
LR_HD static inline float lr_layernorm_elem(float x, float mean, float rstd, float w, float b) {
    return (x - mean) * rstd * w + b;
}

/* RoPE inverse frequency of pair i (0 <= i < dim/2), HF's default
 * 1 / theta^(2i/dim) computed in f32, with the "llama3" rope_scaling rule
 * (factor > 0) that divides long wavelengths by factor and blends the
 * medium band. */
LR_HD static inline float lr_rope_inv_freq(int i, int dim, float theta, float factor, float low_ff,
                                           float high_ff, int orig_max_pos) {
    float inv = 1.0f / powf(theta, (float)(2 * i) / (float)dim);
    if (factor <= 0.0f) return inv;
    /* f32 tensor arithmetic, as HF's _compute_llama3_parameters does it. */
    float wavelen = 2.0f * 3.14159265358979f / inv;
    float low_wl = (float)orig_max_pos / low_ff, high_wl = (float)orig_max_pos / high_ff;
    if (wavelen > low_wl) return inv / factor;
    if (wavelen < high_wl) return inv;
    float smooth = ((float)orig_max_pos / wavelen - low_ff) / (high_ff - low_ff);
    return (1.0f - smooth) * inv / factor + smooth * inv;
}

/* RoPE of one pair (x[i], x[i + dim/2]) with HF's rotate_half convention:
 * out_lo = lo cos - hi sin, out_hi = hi cos + lo sin. The backward is the
 * same rotation with -sin. */
LR_HD static inline void lr_rope_pair(float *lo, float *hi, float c, float s) {
    float a = *lo, b = *hi;
    *lo = a * c - b * s;
    *hi = b * c + a * s;
}

/* AdamW on one f32 parameter, in PyTorch's arithmetic (torch.optim.AdamW,
 * non-fused): decoupled decay p *= 1 - lr wd, then
 * p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps), with bc = 1 - beta^t. */
LR_HD static inline void lr_adamw_elem(float *p, float g, float *m, float *v, float lr, float b1,
                                       float b2, float eps, float wd, float bc1, float bc2_sqrt) {
    float pv = *p * (1.0f - lr * wd);
    float mv = b1 * *m + (1.0f - b1) * g;
    float vv = b2 * *v + (1.0f - b2) * g * g;
    *m = mv;
    *v = vv;
    *p = pv - (lr / bc1) * mv / (sqrtf(vv) / bc2_sqrt + eps);
}

/* DoRA's output element (PEFT's lora.dora): s = magnitude / ||W + scale B A||
 * (detached), base = x W^T, based = drop(x) W^T, lora = scale drop(x) A^T B^T
 * (all pre-bias), b the bias (0 without). Without dropout based = base and
 * this is s * (base + lora) + b; the two forms are kept apart so that the
 * no-dropout path rounds as s (base + lora). */
LR_HD static inline float lr_dora_out(float base, float based, float lora, float s, float b, int drop) {
    float v = drop ? base + (s - 1.0f) * based + s * lora : s * (base + lora);
    return v + b;
}

/* DoRA's per-feature multiplier s = magnitude / ||W + scale B A||. */
LR_HD static inline float lr_dora_scale(float mag, float wnorm) { return mag / wnorm; }
/* One element's share of ||W + scale B A||^2: w of W, ba of B A (f32 sum,
 * f64 square, so the row sum can run in double). */
LR_HD static inline double lr_dora_sq(float w, float ba, float scale) {
    float v = w + scale * ba;
    return (double)v * v;
}

/* Cross-entropy + KL to a reference (lmhead_ce_kl), per row, in double:
 * l the tuned logit, q the reference one, mx and mq their row maxima,
 * itau = 1 / tau. lr_kl_sums adds one element to the three exp-sums
 * s1 = sum exp(l - mx), st = sum exp((l - mx) / tau), sq = sum exp((q - mq) / tau);
 * then lse1 = mx + log s1 (ce = lse1 - l[target]), lset = log st, lseq = log sq. */
LR_HD static inline void lr_kl_sums(float l, float q, float mx, float mq, double itau, double *s1, double *st,
                                    double *sq) {
    *s1 += exp((double)l - mx);
    *st += exp(((double)l - mx) * itau);
    *sq += exp(((double)q - mq) * itau);
}
/* One element of kl = sum q_v (log q_v - log p_tau_v); *qv receives q_v
 * rounded to float, the value lr_ce_kl_grad takes. */
LR_HD static inline double lr_kl_elem(float l, float q, float mx, float mq, double itau, double lset, double lseq,
                                      float *qv) {
    double lq = ((double)q - mq) * itau - lseq, lp = ((double)l - mx) * itau - lset;
    double e = exp(lq);
    *qv = (float)e;
    return e * (lq - lp);
}
/* w * d(ce + kl_coef kl)/dl_v = w (p_v - [v = target]) + w kc (p_tau_v - q_v),
 * kc = kl_coef / tau, p = softmax(l), p_tau = softmax(l / tau). */
LR_HD static inline float lr_ce_kl_grad(float l, float qv, float mx, double itau, double lse1, double lset, double kc,
                                        float w, int is_target) {
    double p = exp((double)l - lse1), pt = exp(((double)l - mx) * itau - lset);
    float g = (float)(w * (p + kc * (pt - qv)));
    return is_target ? g - w : g;
}

/* Counter-based dropout mask: keep element idx of the call keyed by key
 * with probability 1 - p. A hash of (key, idx), so the forward and the
 * backward (and the CUDA kernels) regenerate the same mask without storing
 * it. Returns the multiplier: 0 or 1/(1-p). */
LR_HD static inline uint64_t lr_mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}
LR_HD static inline float lr_dropout_mult(uint64_t key, uint64_t idx, float p) {
    uint64_t h = lr_mix64(key + 0x9e3779b97f4a7c15ULL * (idx + 1));
    float u = (float)(h >> 40) * (1.0f / 16777216.0f); /* 24 bits: [0, 1) */
    return u < p ? 0.0f : 1.0f / (1.0f - p);
}

#endif
