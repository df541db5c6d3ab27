/* backend: the compute interface the model is written against once.
 *
 * A backend is a table of ops, each a forward and (where the op has
 * parameters or inputs that need gradients) a backward, in llm.c's style:
 * plain functions, tensor shapes in the comment. All tensor pointers are the
 * backend's own memory (host memory for "cpu", device memory for "cuda:N"),
 * obtained from alloc(). Activations, gradients and LoRA parameters are f32;
 * frozen base weights are stored in be->weight_dtype (f32 on the CPU, bf16
 * possible on a GPU) and passed as const void *.
 *
 * Notation: N = B*T rows (token positions, row n is position n % T of
 * sequence n / T), C hidden size, V vocabulary, Hq/Hkv query/key-value
 * heads of D dims. A backward that "accumulates" adds into its output
 * (gradients of a tensor with several consumers); otherwise it overwrites.
 * Every op is deterministic for a given thread count: reductions run in a
 * fixed order. Ops run in call order; results are ready when an op that
 * returns a host value (lmhead_ce, sumsq) returns, or after download(). */
#ifndef LR_BACKEND_H
#define LR_BACKEND_H

#include <stddef.h>
#include <stdint.h>
#include "common/err.h"

typedef enum { KB_F32 = 0, KB_BF16 = 1, KB_F16 = 2 } kb_dtype;

/* A LoRA side path: y += scale * (dropout(x) A^T) B^T. A and B are
 * trainable f32; gradients accumulate into dA and dB. The dropout mask is a
 * hash of (seed, element index), so the backward regenerates it: pass the
 * same seed to a forward and its backward, a new one per micro-batch. */
typedef struct kb_lora {
    float *A, *B;     /* [r, in], [out, r] */
    float *dA, *dB;   /* same shapes, accumulated */
    int r;
    float scale;      /* alpha / r, or alpha / sqrt(r) with rslora */
    float dropout;    /* probability of zeroing an input element; 0 = off */
    uint64_t seed;
    /* DoRA (PEFT's use_dora), when mag != NULL: with s = mag / wnorm per
     * output feature and xd = drop(x),
     *   y = x W^T + b + (s - 1) * (xd W^T) + s * scale * (xd A^T) B^T,
     * which without dropout is s * (x W^T + scale * (x A^T) B^T) + b.
     * wnorm = ||W + scale B A|| per output row, from dora_norm, is a
     * constant to the backward (detached, as in the DoRA paper and PEFT);
     * dmag accumulates d/d mag. */
    float *mag, *dmag;  /* [out] */
    const float *wnorm; /* [out] */
} kb_lora;

/* A frozen linear layer y = x W^T + b with an optional LoRA path. GPT-2's
 * Conv1D stores W as [in, out] (w_in_out = 1); everything else as [out, in]. */
typedef struct kb_linear {
    const void *W;        /* weight_dtype */
    const void *b;        /* [out] weight_dtype, or NULL */
    int in, out;
    int w_in_out;
    const kb_lora *lora;  /* NULL: no adapter on this layer */
    /* Full fine-tuning (a backend with weight_grads, f32 weights, no
     * lora): when not NULL, linear_bwd accumulates d/dW into dW (W's own
     * layout) and d/db into db. */
    float *dW, *db;
    /* QLoRA: a 4-bit frozen weight (kernels/quant.h) in place of W (W is
     * then NULL, the layout is [out, in] whatever w_in_out says, and there
     * is no dW); only on a backend with quant4. */
    const struct kq_weight *qW;
    /* bf16 matmuls (the CPU backend with bf16_pack): W packed by bf16_pack
     * in place of W (W is then NULL, no dW); linear_fwd/bwd's base
     * products run in bf16 with f32 accumulation. */
    const void *W16;
} kb_linear;

/* AdamW hyperparameters of one step (t counts from 1). */
typedef struct kb_adamw {
    float lr, beta1, beta2, eps, weight_decay;
    int64_t t;
} kb_adamw;

typedef struct kb_backend kb_backend;
struct kb_backend {
    const char *name;       /* "cpu", "cuda:0" */
    kb_dtype weight_dtype;  /* storage of frozen weights */
    int threads;
    int host_memory;        /* 1: its pointers are host memory (the CPU backend) */
    int weight_grads;       /* 1: honours kb_linear.dW/db and lmhead_ce's dW (full fine-tuning) */
    int quant4;             /* 1: honours kb_linear.qW (4-bit base weights) in linear_fwd/bwd and dora_norm */
    void *impl;

    /* Memory. alloc returns zeroed memory or NULL. */
    void *(*alloc)(kb_backend *be, size_t bytes);
    void (*free)(kb_backend *be, void *p);
    void (*upload)(kb_backend *be, void *dst, const void *host_src, size_t bytes);
    void (*download)(kb_backend *be, void *host_dst, const void *src, size_t bytes);
    void (*zero)(kb_backend *be, void *p, size_t bytes);

    /* out[N,C] = wte[ids[n],:] (+ wpe[n % T,:] when wpe != NULL); wte [V,C], wpe [T_max,C]. */
    void (*embed_fwd)(kb_backend *be, float *out, const int32_t *ids, const void *wte, const void *wpe,
                      int N, int T, int C);
    /* dwte[ids[n],:] += dout[n,:], dwpe[n % T,:] += dout[n,:]; either may be NULL (f32 grads). */
    void (*embed_bwd)(kb_backend *be, float *dwte, float *dwpe, const float *dout, const int32_t *ids,
                      int N, int T, int C);

    /* RMSNorm: out[N,C] = w * x / sqrt(mean(x^2) + eps); saves rstd[N]. */
    void (*rmsnorm_fwd)(kb_backend *be, float *out, float *rstd, const float *x, const void *w, int N,
                        int C, float eps);
    /* dx[N,C] accumulates; dw[C] accumulates when not NULL (frozen weight: NULL). */
    void (*rmsnorm_bwd)(kb_backend *be, float *dx, float *dw, const float *dout, const float *x,
                        const void *w, const float *rstd, int N, int C);
    /* LayerNorm: out[N,C] = (x - mean) * rstd * w + b; saves mean[N], rstd[N]. */
    void (*layernorm_fwd)(kb_backend *be, float *out, float *mean, float *rstd, const float *x,
                          const void *w, const void *b, int N, int C, float eps);
    /* dx accumulates; dw, db accumulate when not NULL. */
    void (*layernorm_bwd)(kb_backend *be, float *dx, float *dw, float *db, const float *dout,
                          const float *x, const void *w, const float *mean, const float *rstd, int N,
                          int C);

    /* RoPE in place on x: N rows of stride ld, each holding H heads of D
     * dims (rotate_half pairs i, i + D/2); row n at position n % T.
     * cos/sin: [T, D/2] tables. rope_bwd applies the inverse rotation to
     * the gradient in place. */
    void (*rope_fwd)(kb_backend *be, float *x, int ld, const float *cos, const float *sin, int N,
                     int T, int H, int D);
    void (*rope_bwd)(kb_backend *be, float *dx, int ld, const float *cos, const float *sin, int N,
                     int T, int H, int D);

    /* Causal GQA attention, softmax scale 1/sqrt(D). q: N rows of stride
     * ldq holding Hq heads; k, v: N rows of stride ldkv holding Hkv heads
     * (query head h reads kv head h / (Hq/Hkv)). out [N, Hq*D];
     * lse [B, Hq, T] (log-sum-exp of each score row, for the backward).
     * window > 0 is a sliding window (Mistral's sliding_window): query i
     * attends keys j with i - window < j <= i, i.e. the last window
     * positions including itself; key tiles wholly outside it are skipped.
     * window 0 (or >= T) is plain causal attention.
     * Memory: O(T * tile) per thread, never B*H*T*T. */
    void (*attn_fwd)(kb_backend *be, float *out, float *lse, const float *q, const float *k,
                     const float *v, int ldq, int ldkv, int B, int T, int Hq, int Hkv, int D, int window);
    /* dq (stride ldq), dk, dv (stride ldkv) are overwritten; window as in
     * the forward. */
    void (*attn_bwd)(kb_backend *be, float *dq, float *dk, float *dv, const float *dout,
                     const float *out, const float *lse, const float *q, const float *k,
                     const float *v, int ldq, int ldkv, int B, int T, int Hq, int Hkv, int D, int window);
    /* Incremental attention (decoding with a KV cache), forward only: n
     * query rows (stride ldq, Hq heads) at positions p0..p0+n-1 of one
     * sequence against the cache's keys and values kc, vc of positions
     * 0..p0+n-1 (stride ldkv, Hkv heads; the n new ones already written).
     * Causal, GQA and window as attn_fwd; out [n, Hq*D]. Row i equals row
     * p0+i of attn_fwd over the whole sequence up to rounding, and with
     * p0 = 0 it is attn_fwd with B = 1, T = n (bit for bit on the CPU). */
    void (*attn_kv_fwd)(kb_backend *be, float *out, const float *q, int ldq, const float *kc, const float *vc,
                        int ldkv, int p0, int n, int Hq, int Hkv, int D, int window);

    /* SwiGLU: h[n] = silu(g[n]) * u[n]; backward overwrites dg, du. */
    void (*swiglu_fwd)(kb_backend *be, float *h, const float *g, const float *u, size_t n);
    void (*swiglu_bwd)(kb_backend *be, float *dg, float *du, const float *dh, const float *g,
                       const float *u, size_t n);
    /* GELU (exact = 0: gelu_new tanh form; 1: erf form); backward overwrites dx. */
    void (*gelu_fwd)(kb_backend *be, float *y, const float *x, size_t n, int exact);
    void (*gelu_bwd)(kb_backend *be, float *dx, const float *dy, const float *x, size_t n, int exact);
    /* y[n] += x[n] (residual connections). */
    void (*add)(kb_backend *be, float *y, const float *x, size_t n);

    /* y[N,out] = x[N,in] W^T (+ b) (+ scale * (drop(x) A^T) B^T).
     * With a LoRA path, xa [N,r] = drop(x) A^T is saved for the backward. */
    void (*linear_fwd)(kb_backend *be, const kb_linear *L, float *y, float *xa, const float *x, int N);
    /* dx[N,in] = dy W (+ LoRA term), accumulated when dx_acc, may be NULL
     * (no input gradient needed); lora->dA, dB accumulate; L->dW, L->db
     * accumulate when set, otherwise W, b are frozen. */
    void (*linear_bwd)(kb_backend *be, const kb_linear *L, float *dx, int dx_acc, const float *dy,
                       const float *x, const float *xa, int N);

    /* Fused LM head + softmax cross-entropy, chunk_rows rows at a time (0:
     * the backend's default), so that logits exist only for one chunk:
     * logits = x W^T (W [V,C]); rows with target LR_IGNORE_INDEX are
     * skipped. Returns the sum of -log p(target) over the other rows and
     * sets *n_valid. tok_loss [N], when not NULL, receives each row's loss
     * (0 on ignored rows), for per-sequence objectives (DPO). When dx !=
     * NULL, dx[N,C] is overwritten with d(sum_n w_n loss_n)/dx where
     * w_n = grad_scale * (tok_scale ? tok_scale[n] : 1) (zero on ignored
     * rows). dW [V,C], when not NULL (full fine-tuning; only on a backend
     * with weight_grads), accumulates d(sum_n w_n loss_n)/dW. targets,
     * tok_scale, tok_loss are backend memory. *n_correct, when not NULL,
     * is set to the number of those rows whose argmax logit is the target
     * (the first of equal maxima, as torch.argmax): token accuracy. */
    double (*lmhead_ce)(kb_backend *be, int64_t *n_valid, int64_t *n_correct, float *tok_loss, float *dx, float *dW,
                        const float *x, const void *W, const int32_t *targets, const float *tok_scale, int N, int C,
                        int V, float grad_scale, int chunk_rows);

    /* AdamW over n f32 parameters with their gradients and moments. */
    void (*adamw)(kb_backend *be, float *p, const float *g, float *m, float *v, size_t n,
                  const kb_adamw *hp);
    /* sum of x[i]^2 (in double, fixed order) and x[i] *= s, for clipping. */
    double (*sumsq)(kb_backend *be, const float *x, size_t n);
    void (*scale)(kb_backend *be, float *x, float s, size_t n);

    void (*destroy)(kb_backend *be);

    /* Added with DoRA and KL-regularised SFT. NULL in a backend that does
     * not implement them yet; the model then refuses those methods. A
     * backend that sets dora_norm also honours kb_lora.mag in linear_fwd
     * and linear_bwd. */

    /* wnorm[out] = L2 norm of each output row of W + scale * B A (W as
     * [out, in], i.e. Conv1D's [in, out] transposed), L->lora's A, B, scale. */
    void (*dora_norm)(kb_backend *be, const kb_linear *L, float *wnorm);
    /* LM head + cross-entropy + KL to a reference, for rows whose target is
     * not LR_IGNORE_INDEX: with l = x W^T and lr = x_ref W^T (the same
     * frozen head), q = softmax(lr / tau), p_tau = softmax(l / tau),
     *   ce_n = -log softmax(l)[target_n], kl_n = sum_v q_v (log q_v - log p_tau_v).
     * Sets *ce_sum, *kl_sum (sums over those rows) and *n_valid; when dx !=
     * NULL, dx[N,C] is overwritten with grad_scale * d(sum_n ce_n +
     * kl_coef * kl_n)/dx (zero on ignored rows). x_ref gets no gradient.
     * n_correct as lmhead_ce's (over the tuned logits l). */
    void (*lmhead_ce_kl)(kb_backend *be, double *ce_sum, double *kl_sum, int64_t *n_valid, int64_t *n_correct,
                         float *dx, const float *x, const float *x_ref, const void *W, const int32_t *targets, int N,
                         int C, int V, float tau, float kl_coef, float grad_scale, int chunk_rows);

    /* Optional (NULL: the backend has no deferred failures). Ops cannot
     * return errors, so a backend whose ops can fail mid-step (device out
     * of memory for scratch, a kernel fault) records the first failure and
     * makes later ops no-ops; check returns 0, or -1 with that failure
     * (e.g. "out of GPU memory: needed 2.1 GiB, 1.3 GiB free of 79.1 GiB")
     * and clears it. Call it after each step and after a failed alloc. */
    int (*check)(kb_backend *be, lr_err *err);

    /* Optional (NULL: this backend cannot co-train several adapters on one
     * base, and worker/pack.c refuses). The plain LoRA path of L (L->lora
     * without DoRA) by itself, for several adapters sharing one frozen
     * linear, each on its own rows: lora_fwd adds scale * (drop(x) A^T)
     * B^T into y[N,out] and saves xa [N,r]; lora_bwd accumulates dA, dB and,
     * when dx != NULL, adds the path's input gradient into dx. linear_fwd
     * is, bit for bit, linear_fwd without the lora then lora_fwd; the same
     * holds for linear_bwd and lora_bwd. */
    void (*lora_fwd)(kb_backend *be, const kb_linear *L, float *y, float *xa, const float *x, int N);
    void (*lora_bwd)(kb_backend *be, const kb_linear *L, float *dx, const float *dy, const float *x,
                     const float *xa, int N);

    /* Optional (NULL: frozen linear weights stay in weight_dtype). Frozen
     * linear weights in bf16, packed for the backend's bf16 kernel
     * (kb_linear.W16): bf16_check says whether this machine runs it (0, or
     * -1 with the reason, e.g. the CPU feature it lacks); bf16_bytes is the
     * packed size of W [out, in]; bf16_pack packs f32 W ([in, out] when
     * w_in_out) into dst, backend memory of that size. */
    int (*bf16_check)(kb_backend *be, lr_err *err);
    size_t (*bf16_bytes)(kb_backend *be, int in, int out);
    void (*bf16_pack)(kb_backend *be, void *dst, const float *W, int in, int out, int w_in_out);
};

/* The CPU backend: sgemm (single-threaded inside, partitioned across
 * threads by the backend) and OpenMP; threads = 0 uses all cores. The sgemm
 * kernel is chosen from the CPU's features and self-tested on first use
 * (kernels/cpu/gemm_select.h: kg_current() says which and why). */
int kb_cpu_create(int threads, kb_backend **out, lr_err *err) LR_WARN_UNUSED;

/* A backend by name: "cpu" or "cuda[:N]". */
int kb_create(const char *name, int threads, kb_backend **out, lr_err *err) LR_WARN_UNUSED;
void kb_destroy(kb_backend *be);

#endif
