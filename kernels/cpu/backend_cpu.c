/* backend_cpu: the kernels on the CPU with OpenBLAS and OpenMP.
 *
 * Every matmul goes through kg_sgemm: gemm_select.c decides once per
 * process which kernel that is (OpenBLAS with the core type the CPU's
 * features call for, self-tested), so nothing here names a kernel.
 * The one exception: a frozen linear whose weight the model packed in bf16
 * (kb_linear.W16, compute_dtype bf16) runs its two base products on
 * gemm_bf16.c's AVX512_BF16 kernel, which is self-tested the same way.
 *
 * Threading: OpenBLAS runs single-threaded and this file partitions every
 * large sgemm across the OpenMP threads itself (by output rows or columns,
 * never along the reduction dimension). That keeps one thread model for
 * the whole backend, lets attention call sgemm from inside a parallel loop,
 * and makes every result a fixed function of the thread count. Elementwise
 * and per-row ops are OpenMP loops whose iterations are independent;
 * reductions across rows (weight gradients, sums) run in a fixed order.
 * Why this file is long: it is the whole CPU backend, every op of
 * kernels/backend.h forward and backward, sharing the workspace, the gemm
 * partitioning and the vectorized row loops; it reads op by op. */
#include "kernels/backend.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/gemm_bf16.h"
#include "kernels/cpu/gemm_select.h"
#include "kernels/cpu/quant_cpu.h"
#include "kernels/cpu/vmath.h"
#include "kernels/elem.h"

/* Query rows per attention tile: the scores of one tile (ATT_QB x T) are
 * the only quadratic buffer, one per thread. 64 rather than 128: less of
 * each diagonal tile's masked half is computed, and GPT-2 4x256 and
 * Qwen2.5 1x512 attention ran 3% (forward) and 7-10% (backward) faster
 * single-threaded; 32 was no better. */
#define ATT_QB 64
/* Default logits chunk for the LM head: about 64 MiB of f32 logits. Both
 * of a chunk's gemms stream the whole head weight (545 MB for Qwen2.5's
 * 151936 x 896), so rows per chunk set that traffic: 110 rows instead of 55
 * made Qwen2.5-0.5B's head 25% faster, at 32 MiB more scratch. */
#define CE_CHUNK_FLOATS (16u << 20)

typedef struct cpu_impl {
    int nt;
    float *ws;       /* grow-only scratch shared by the ops (they run one at a time) */
    size_t ws_len;   /* floats */
    float *qws;      /* grow-only tiles of 4-bit weights, or bf16 activations (used while ws holds an op's data) */
    size_t qws_len;
} cpu_impl;

static cpu_impl *impl_of(kb_backend *be) { return (cpu_impl *)be->impl; }

/* The scratch, at least n floats, contents undefined. Its size is a
 * function of the shapes the model planned for, so it stops growing after
 * the first step; running out of memory here, mid-step, aborts the process
 * (the worker's supervisor reports the job failed) rather than returning a
 * half-computed gradient. */
static float *grow(float **p, size_t *len, size_t n) {
    if (n > *len) {
        free(*p);
        *p = malloc(n * sizeof(float));
        if (!*p) {
            fprintf(stderr, "lora-worker: out of memory for %zu MiB of kernel scratch\n", (n * 4) >> 20);
            abort();
        }
        *len = n;
    }
    return *p;
}
static float *ws_get(kb_backend *be, size_t n) { return grow(&impl_of(be)->ws, &impl_of(be)->ws_len, n); }
static float *qws_get(kb_backend *be, const kb_linear *L) {
    return grow(&impl_of(be)->qws, &impl_of(be)->qws_len, kq_cpu_scratch(L->qW, impl_of(be)->nt));
}
/* The bf16 kernel's scratch for N rows of L (kernels/cpu/gemm_bf16.h). */
static float *bws_get(kb_backend *be, const kb_linear *L, int N) {
    size_t bytes = kbf_scratch_bytes(N, L->out, L->in, impl_of(be)->nt);
    return grow(&impl_of(be)->qws, &impl_of(be)->qws_len, (bytes + sizeof(float) - 1) / sizeof(float));
}

/* C[M,N] = alpha op(A) op(B) + beta C (row-major), split across nt threads
 * along M or N, whichever is larger, in 16-aligned blocks. */
static void gemm(int nt, int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                 const float *B, int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) C[(size_t)i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[(size_t)i * ldc + j];
        return;
    }
    kg_sgemm_fn sgemm = kg_current()->sgemm;
    double flops = 2.0 * M * N * K;
    if (nt <= 1 || omp_in_parallel() || flops < 4e6) {
        sgemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    int split_m = M >= N;
    int D = split_m ? M : N;
    int blk = ((D + nt - 1) / nt + 15) / 16 * 16;
    int parts = (D + blk - 1) / blk;
#pragma omp parallel for num_threads(nt) schedule(static, 1)
    for (int p = 0; p < parts; p++) {
        int s = p * blk, e = s + blk < D ? s + blk : D;
        if (split_m) {
            const float *Ap = ta ? A + s : A + (size_t)s * lda;
            sgemm(ta, tb, e - s, N, K, alpha, Ap, lda, B, ldb, beta, C + (size_t)s * ldc, ldc);
        } else {
            const float *Bp = tb ? B + (size_t)s * ldb : B + s;
            sgemm(ta, tb, M, e - s, K, alpha, A, lda, Bp, ldb, beta, C + s, ldc);
        }
    }
}

/* ---- vectorized loops (vmath.h) ----
 * The activations run in blocks: an OpenMP loop over blocks, each block a
 * KV_CLONES function of `omp simd` loops (an OpenMP-outlined body would not
 * get the clones). Exponentials are computed ROW_TMP at a time into a stack
 * array: clamp in one loop, exp in the next (see vmath.h). */

#define EW_BLOCK 4096
#define ROW_TMP 256

typedef struct ew_args {
    float *o1, *o2;
    const float *i1, *i2, *i3;
} ew_args;
typedef void (*ew_fn)(const ew_args *a, size_t s, size_t len);

static void ew_run(int nt, size_t n, ew_fn fn, const ew_args *a) {
    size_t nb = (n + EW_BLOCK - 1) / EW_BLOCK;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (size_t b = 0; b < nb; b++) {
        size_t s = b * EW_BLOCK;
        fn(a, s, n - s < EW_BLOCK ? n - s : EW_BLOCK);
    }
}

/* e[j] = exp(arg[j]) in double for j < m <= ROW_TMP; arg is clamped in place */
static inline void exp_d(double *e, float *arg, int m) {
#pragma omp simd
    for (int j = 0; j < m; j++) arg[j] = kv_exp_clamp(arg[j]);
#pragma omp simd
    for (int j = 0; j < m; j++) e[j] = kv_exp_d(arg[j]);
}

/* Softmax rows, one thread each. Max and scaling are exact in any order;
 * sums are in double, in eight interleaved partial sums (a fixed order, the
 * same in every clone). */
KV_CLONES static float row_max(const float *x, int n) {
    float m[8], mx = x[0];
    int j = 0;
    for (int k = 0; k < 8; k++) m[k] = x[0];
    for (; j + 8 <= n; j += 8)
        for (int k = 0; k < 8; k++) m[k] = x[j + k] > m[k] ? x[j + k] : m[k];
    for (; j < n; j++) mx = x[j] > mx ? x[j] : mx;
    for (int k = 0; k < 8; k++) mx = m[k] > mx ? m[k] : mx;
    return mx;
}
static inline double sum_d(const float *x, int n) {
    double acc[8] = {0}, s = 0;
    int j = 0;
    for (; j + 8 <= n; j += 8)
        for (int k = 0; k < 8; k++) acc[k] += x[j + k];
    for (; j < n; j++) s += x[j];
    for (int k = 0; k < 8; k++) s += acc[k];
    return s;
}
/* dst[j] = expf(x[j] - sub), dst may be x; returns the sum in double */
KV_CLONES static double row_exp(float *dst, const float *x, int n, float sub) {
    float t[ROW_TMP];
    double e[ROW_TMP], sum = 0;
    for (int j0 = 0; j0 < n; j0 += ROW_TMP) {
        int m = n - j0 < ROW_TMP ? n - j0 : ROW_TMP;
#pragma omp simd
        for (int j = 0; j < m; j++) t[j] = x[j0 + j] - sub;
        exp_d(e, t, m);
#pragma omp simd
        for (int j = 0; j < m; j++) dst[j0 + j] = (float)e[j];
        sum += sum_d(dst + j0, m);
    }
    return sum;
}
/* the sum of expf(x[j] - sub), x untouched */
static double row_sumexp(const float *x, int n, float sub) {
    float t[ROW_TMP];
    double sum = 0;
    for (int j0 = 0; j0 < n; j0 += ROW_TMP) {
        int m = n - j0 < ROW_TMP ? n - j0 : ROW_TMP;
        sum += row_exp(t, x + j0, m, sub);
    }
    return sum;
}
KV_CLONES static void row_scale(float *x, int n, float s) {
#pragma omp simd
    for (int j = 0; j < n; j++) x[j] *= s;
}

/* ---- memory ---- */

static void *cpu_alloc(kb_backend *be, size_t bytes) {
    (void)be;
    return calloc(1, bytes ? bytes : 1);
}
static void cpu_free(kb_backend *be, void *p) {
    (void)be;
    free(p);
}
static void cpu_copy(kb_backend *be, void *dst, const void *src, size_t bytes) {
    (void)be;
    if (bytes) memcpy(dst, src, bytes);
}
static void cpu_zero(kb_backend *be, void *p, size_t bytes) {
    (void)be;
    if (bytes) memset(p, 0, bytes);
}

/* ---- embedding ---- */

static void cpu_embed_fwd(kb_backend *be, float *out, const int32_t *ids, const void *wte_, const void *wpe_,
                          int N, int T, int C) {
    const float *wte = wte_, *wpe = wpe_;
#pragma omp parallel for num_threads(impl_of(be)->nt) schedule(static)
    for (int n = 0; n < N; n++) {
        const float *e = wte + (size_t)ids[n] * C;
        float *o = out + (size_t)n * C;
        if (wpe) {
            const float *p = wpe + (size_t)(n % T) * C;
            for (int c = 0; c < C; c++) o[c] = e[c] + p[c];
        } else {
            memcpy(o, e, (size_t)C * sizeof(float));
        }
    }
}

/* Parallel over column blocks so that each gradient element is summed by one
 * thread in token order. */
static void cpu_embed_bwd(kb_backend *be, float *dwte, float *dwpe, const float *dout, const int32_t *ids,
                          int N, int T, int C) {
    int nb = (C + 63) / 64;
#pragma omp parallel for num_threads(impl_of(be)->nt) schedule(static)
    for (int b = 0; b < nb; b++) {
        int c0 = b * 64, c1 = c0 + 64 < C ? c0 + 64 : C;
        for (int n = 0; n < N; n++) {
            const float *d = dout + (size_t)n * C;
            if (dwte) {
                float *g = dwte + (size_t)ids[n] * C;
                for (int c = c0; c < c1; c++) g[c] += d[c];
            }
            if (dwpe) {
                float *g = dwpe + (size_t)(n % T) * C;
                for (int c = c0; c < c1; c++) g[c] += d[c];
            }
        }
    }
}

/* ---- norms ---- */

static void cpu_rmsnorm_fwd(kb_backend *be, float *out, float *rstd, const float *x, const void *w_, int N,
                            int C, float eps) {
    const float *w = w_;
#pragma omp parallel for num_threads(impl_of(be)->nt) schedule(static)
    for (int n = 0; n < N; n++) {
        const float *xr = x + (size_t)n * C;
        float *o = out + (size_t)n * C;
        double ss = 0;
        for (int c = 0; c < C; c++) ss += (double)xr[c] * xr[c];
        float r = 1.0f / sqrtf((float)(ss / C) + eps);
        rstd[n] = r;
        for (int c = 0; c < C; c++) o[c] = lr_rmsnorm_elem(xr[c], r, w[c]);
    }
}

/* y = w x r, r = (mean x^2 + eps)^-1/2:
 * dx = r w dy - x r^3 / C * sum_j(dy_j w_j x_j). */
static void cpu_rmsnorm_bwd(kb_backend *be, float *dx, float *dw, const float *dout, const float *x,
                            const void *w_, const float *rstd, int N, int C) {
    const float *w = w_;
    int nt = impl_of(be)->nt;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int n = 0; n < N; n++) {
        const float *xr = x + (size_t)n * C, *dy = dout + (size_t)n * C;
        float *g = dx + (size_t)n * C;
        float r = rstd[n];
        double dot = 0;
        for (int c = 0; c < C; c++) dot += (double)dy[c] * w[c] * xr[c];
        float k = (float)(dot / C) * r * r * r;
        for (int c = 0; c < C; c++) g[c] += r * w[c] * dy[c] - k * xr[c];
    }
    if (!dw) return;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int c = 0; c < C; c++) {
        double s = 0;
        for (int n = 0; n < N; n++) s += (double)dout[(size_t)n * C + c] * x[(size_t)n * C + c] * rstd[n];
        dw[c] += (float)s;
    }
}

static void cpu_layernorm_fwd(kb_backend *be, float *out, float *mean, float *rstd, const float *x,
                              const void *w_, const void *b_, int N, int C, float eps) {
    const float *w = w_, *b = b_;
#pragma omp parallel for num_threads(impl_of(be)->nt) schedule(static)
    for (int n = 0; n < N; n++) {
        const float *xr = x + (size_t)n * C;
        float *o = out + (size_t)n * C;
        double s = 0, ss = 0;
        for (int c = 0; c < C; c++) s += xr[c];
        double mu = s / C;
        for (int c = 0; c < C; c++) ss += (xr[c] - mu) * (xr[c] - mu);
        float m = (float)mu, r = 1.0f / sqrtf((float)(ss / C) + eps);
        mean[n] = m;
        rstd[n] = r;
        for (int c = 0; c < C; c++) o[c] = lr_layernorm_elem(xr[c], m, r, w[c], b ? b[c] : 0.0f);
    }
}

/* xhat = (x - mean) r, g = dy w: dx = r (g - mean(g) - xhat mean(g xhat)). */
static void cpu_layernorm_bwd(kb_backend *be, float *dx, float *dw, float *db, const float *dout,
                              const float *x, const void *w_, const float *mean, const float *rstd, int N,
                              int C) {
    const float *w = w_;
    int nt = impl_of(be)->nt;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int n = 0; n < N; n++) {
        const float *xr = x + (size_t)n * C, *dy = dout + (size_t)n * C;
        float *g = dx + (size_t)n * C;
        float m = mean[n], r = rstd[n];
        double sg = 0, sgx = 0;
        for (int c = 0; c < C; c++) {
            float gc = dy[c] * w[c];
            sg += gc;
            sgx += (double)gc * (xr[c] - m) * r;
        }
        float mg = (float)(sg / C), mgx = (float)(sgx / C);
        for (int c = 0; c < C; c++) g[c] += r * (dy[c] * w[c] - mg - (xr[c] - m) * r * mgx);
    }
    if (!dw && !db) return;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int c = 0; c < C; c++) {
        double sw = 0, sb = 0;
        for (int n = 0; n < N; n++) {
            float dy = dout[(size_t)n * C + c];
            sw += (double)dy * (x[(size_t)n * C + c] - mean[n]) * rstd[n];
            sb += dy;
        }
        if (dw) dw[c] += (float)sw;
        if (db) db[c] += (float)sb;
    }
}

/* ---- RoPE ---- */

static void rope(kb_backend *be, float *x, int ld, const float *cs, const float *sn, int N, int T, int H,
                 int D, float sign) {
    int half = D / 2;
#pragma omp parallel for num_threads(impl_of(be)->nt) schedule(static)
    for (int n = 0; n < N; n++) {
        const float *c = cs + (size_t)(n % T) * half, *s = sn + (size_t)(n % T) * half;
        for (int h = 0; h < H; h++) {
            float *v = x + (size_t)n * ld + (size_t)h * D;
            for (int i = 0; i < half; i++) lr_rope_pair(&v[i], &v[i + half], c[i], sign * s[i]);
        }
    }
}
static void cpu_rope_fwd(kb_backend *be, float *x, int ld, const float *cs, const float *sn, int N, int T,
                         int H, int D) {
    rope(be, x, ld, cs, sn, N, T, H, D, 1.0f);
}
static void cpu_rope_bwd(kb_backend *be, float *dx, int ld, const float *cs, const float *sn, int N, int T,
                         int H, int D) {
    rope(be, dx, ld, cs, sn, N, T, H, D, -1.0f);
}

/* ---- attention ---- */

/* Scores of query rows [i0, i0+m) against keys [j0, i0+m) of one (b, h)
 * (kb points at key j0), turned into probabilities P = exp(S - lse), 0
 * outside each row's keys (i - w, i]. With lse_out, the row lse is computed
 * and stored; otherwise read from lse_in. */
static void att_probs(float *S, int m, int nk, int i0, int j0, int w, const float *qb, int ldq, const float *kb,
                      int ldkv, int D, float scale, float *lse_out, const float *lse_in) {
    kg_sgemm(0, 1, m, nk, D, scale, qb, ldq, kb, ldkv, 0.0f, S, nk);
    for (int r = 0; r < m; r++) {
        float *s = S + (size_t)r * nk;
        int last = i0 + r - j0, first = last - w + 1 > 0 ? last - w + 1 : 0; /* keys first..last of the tile */
        float l;
        if (lse_out) {
            float mx = row_max(s + first, last - first + 1);
            l = mx + (float)log(row_sumexp(s + first, last - first + 1, mx));
            lse_out[r] = l;
        } else {
            l = lse_in[r];
        }
        for (int j = 0; j < first; j++) s[j] = 0.0f;
        row_exp(s + first, s + first, last - first + 1, l);
        for (int j = last + 1; j < nk; j++) s[j] = 0.0f;
    }
}

/* The window as a key count: all T positions when there is none. */
static int att_window(int window, int T) { return window > 0 && window < T ? window : T; }

/* The forward of one (sequence, head): n query rows at positions p0..
 * (stride ldq) against keys and values of positions 0..p0+n-1 (kb, vb at
 * position 0), qb rows at a time; S holds qb x (p0+n) scores, lse [n] the
 * rows' log-sum-exp. attn_fwd is p0 = 0; attn_kv_fwd runs the same tiles
 * from p0, so its prefill is attn_fwd's result bit for bit. */
static void att_head_fwd(float *S, float *out, int ldo, float *lse, const float *q, int ldq, const float *kb,
                         const float *vb, int ldkv, int p0, int n, int w, int qb, int D, float scale) {
    for (int i0 = 0; i0 < n; i0 += qb) {
        /* keys before j0 are outside every row's window: not computed */
        int m = n - i0 < qb ? n - i0 : qb, pos = p0 + i0, j0 = pos - w + 1 > 0 ? pos - w + 1 : 0, nk = pos + m - j0;
        att_probs(S, m, nk, pos, j0, w, q + (size_t)i0 * ldq, ldq, kb + (size_t)j0 * ldkv, ldkv, D, scale, lse + i0,
                  NULL);
        kg_sgemm(0, 0, m, D, nk, 1.0f, S, nk, vb + (size_t)j0 * ldkv, ldkv, 0.0f, out + (size_t)i0 * ldo, ldo);
    }
}

static void cpu_attn_fwd(kb_backend *be, float *out, float *lse, const float *q, const float *k, const float *v,
                         int ldq, int ldkv, int B, int T, int Hq, int Hkv, int D, int window) {
    int nt = impl_of(be)->nt, G = Hq / Hkv, ldo = Hq * D, w = att_window(window, T);
    float scale = 1.0f / sqrtf((float)D);
    int qb = T < ATT_QB ? T : ATT_QB;
    float *ws = ws_get(be, (size_t)nt * qb * T);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int bh = 0; bh < B * Hq; bh++) {
        int b = bh / Hq, h = bh % Hq, kvh = h / G;
        float *S = ws + (size_t)omp_get_thread_num() * qb * T;
        const float *kb = k + (size_t)b * T * ldkv + (size_t)kvh * D;
        const float *vb = v + (size_t)b * T * ldkv + (size_t)kvh * D;
        att_head_fwd(S, out + (size_t)b * T * ldo + (size_t)h * D, ldo, lse + (size_t)bh * T,
                     q + (size_t)b * T * ldq + (size_t)h * D, ldq, kb, vb, ldkv, 0, T, w, qb, D, scale);
    }
}

/* One thread per query head; a decoding step (n = 1) is one row of scores
 * per head, computed with attn_fwd's gemms and softmax. */
static void cpu_attn_kv_fwd(kb_backend *be, float *out, const float *q, int ldq, const float *kc, const float *vc,
                            int ldkv, int p0, int n, int Hq, int Hkv, int D, int window) {
    int nt = impl_of(be)->nt, G = Hq / Hkv, ldo = Hq * D, T = p0 + n, w = att_window(window, T);
    float scale = 1.0f / sqrtf((float)D);
    int qb = n < ATT_QB ? n : ATT_QB;
    size_t per = (size_t)qb * T + (size_t)n; /* scores, then the rows' lse (not kept) */
    float *ws = ws_get(be, (size_t)nt * per);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int h = 0; h < Hq; h++) {
        float *S = ws + (size_t)omp_get_thread_num() * per;
        att_head_fwd(S, out + (size_t)h * D, ldo, S + (size_t)qb * T, q + (size_t)h * D, ldq, kc + (size_t)(h / G) * D,
                     vc + (size_t)(h / G) * D, ldkv, p0, n, w, qb, D, scale);
    }
}

/* Flash-style backward: P is recomputed from the saved lse; each query head
 * writes its own dK/dV slab and the heads of a GQA group are summed after,
 * in head order. */
static void cpu_attn_bwd(kb_backend *be, float *dq, float *dk, float *dv, const float *dout, const float *out,
                         const float *lse, const float *q, const float *k, const float *v, int ldq, int ldkv,
                         int B, int T, int Hq, int Hkv, int D, int window) {
    int nt = impl_of(be)->nt, G = Hq / Hkv, ldo = Hq * D, w = att_window(window, T);
    float scale = 1.0f / sqrtf((float)D);
    int qb = T < ATT_QB ? T : ATT_QB;
    size_t tile = (size_t)qb * T, slab = (size_t)T * D;
    float *ws = ws_get(be, (size_t)nt * 2 * tile + 2 * (size_t)B * Hq * slab);
    float *dks = ws + (size_t)nt * 2 * tile, *dvs = dks + (size_t)B * Hq * slab;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int bh = 0; bh < B * Hq; bh++) {
        int b = bh / Hq, h = bh % Hq, kvh = h / G;
        float *P = ws + (size_t)omp_get_thread_num() * 2 * tile, *dS = P + tile;
        float *dkh = dks + (size_t)bh * slab, *dvh = dvs + (size_t)bh * slab;
        memset(dkh, 0, slab * sizeof(float));
        memset(dvh, 0, slab * sizeof(float));
        const float *kb = k + (size_t)b * T * ldkv + (size_t)kvh * D;
        const float *vb = v + (size_t)b * T * ldkv + (size_t)kvh * D;
        for (int i0 = 0; i0 < T; i0 += qb) {
            int m = T - i0 < qb ? T - i0 : qb, j0 = i0 - w + 1 > 0 ? i0 - w + 1 : 0, nk = i0 + m - j0;
            const float *qr = q + (size_t)(b * T + i0) * ldq + (size_t)h * D;
            const float *dor = dout + (size_t)(b * T + i0) * ldo + (size_t)h * D;
            const float *orow = out + (size_t)(b * T + i0) * ldo + (size_t)h * D;
            const float *kt = kb + (size_t)j0 * ldkv, *vt = vb + (size_t)j0 * ldkv;
            att_probs(P, m, nk, i0, j0, w, qr, ldq, kt, ldkv, D, scale, NULL, lse + (size_t)bh * T + i0);
            /* dP = dO V^T, then dS = P (dP - rowsum(dO * O)) */
            kg_sgemm(0, 1, m, nk, D, 1.0f, dor, ldo, vt, ldkv, 0.0f, dS, nk);
            for (int r = 0; r < m; r++) {
                const float *a = dor + (size_t)r * ldo, *o = orow + (size_t)r * ldo;
                float di = 0;
                for (int d = 0; d < D; d++) di += a[d] * o[d];
                float *p = P + (size_t)r * nk, *s = dS + (size_t)r * nk;
                for (int j = 0; j < nk; j++) s[j] = p[j] * (s[j] - di);
            }
            kg_sgemm(0, 0, m, D, nk, scale, dS, nk, kt, ldkv, 0.0f, dq + (size_t)(b * T + i0) * ldq + (size_t)h * D,
                     ldq);
            kg_sgemm(1, 0, nk, D, m, scale, dS, nk, qr, ldq, 1.0f, dkh + (size_t)j0 * D, D);
            kg_sgemm(1, 0, nk, D, m, 1.0f, P, nk, dor, ldo, 1.0f, dvh + (size_t)j0 * D, D);
        }
    }
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int n = 0; n < B * T; n++) {
        int b = n / T, t = n % T;
        for (int kvh = 0; kvh < Hkv; kvh++) {
            float *gk = dk + (size_t)n * ldkv + (size_t)kvh * D, *gv = dv + (size_t)n * ldkv + (size_t)kvh * D;
            for (int d = 0; d < D; d++) gk[d] = gv[d] = 0.0f;
            for (int g = 0; g < G; g++) {
                size_t off = (size_t)(b * Hq + kvh * G + g) * slab + (size_t)t * D;
                for (int d = 0; d < D; d++) {
                    gk[d] += dks[off + d];
                    gv[d] += dvs[off + d];
                }
            }
        }
    }
}

/* ---- MLP activations ---- */

/* elem.h's SwiGLU and tanh-GELU formulas term for term, with expf from
 * kv_exp_d and tanh(u) = 1 - 2 / (exp(2u) + 1) in double (the erf GELU
 * keeps libm's erff). e[] holds exp(-g) (sigmoid) or exp(2u) (tanh). */
static inline float v_sigmoid(double e) { return 1.0f / (1.0f + (float)e); }
static inline float v_tanh(double e) { return (float)(1.0 - 2.0 / (e + 1.0)); }
static inline float v_gelu_u(float x) { return LR_GELU_K * (x + 0.044715f * x * x * x); }

KV_CLONES static void swiglu_fwd_blk(const ew_args *a, size_t s, size_t len) {
    float t[ROW_TMP];
    double e[ROW_TMP];
    for (size_t j0 = 0; j0 < len; j0 += ROW_TMP) {
        int m = len - j0 < ROW_TMP ? (int)(len - j0) : ROW_TMP;
        float *h = a->o1 + s + j0;
        const float *g = a->i1 + s + j0, *u = a->i2 + s + j0;
#pragma omp simd
        for (int j = 0; j < m; j++) t[j] = -g[j];
        exp_d(e, t, m);
#pragma omp simd
        for (int j = 0; j < m; j++) h[j] = g[j] * v_sigmoid(e[j]) * u[j];
    }
}
KV_CLONES static void swiglu_bwd_blk(const ew_args *a, size_t s, size_t len) {
    float t[ROW_TMP];
    double e[ROW_TMP];
    for (size_t j0 = 0; j0 < len; j0 += ROW_TMP) {
        int m = len - j0 < ROW_TMP ? (int)(len - j0) : ROW_TMP;
        float *dg = a->o1 + s + j0, *du = a->o2 + s + j0;
        const float *dh = a->i1 + s + j0, *g = a->i2 + s + j0, *u = a->i3 + s + j0;
#pragma omp simd
        for (int j = 0; j < m; j++) t[j] = -g[j];
        exp_d(e, t, m);
#pragma omp simd
        for (int j = 0; j < m; j++) {
            float sg = v_sigmoid(e[j]);
            dg[j] = dh[j] * u[j] * (sg * (1.0f + g[j] * (1.0f - sg)));
            du[j] = dh[j] * (g[j] * sg);
        }
    }
}
KV_CLONES static void gelu_fwd_blk(const ew_args *a, size_t s, size_t len) {
    float t[ROW_TMP];
    double e[ROW_TMP];
    for (size_t j0 = 0; j0 < len; j0 += ROW_TMP) {
        int m = len - j0 < ROW_TMP ? (int)(len - j0) : ROW_TMP;
        float *y = a->o1 + s + j0;
        const float *x = a->i1 + s + j0;
#pragma omp simd
        for (int j = 0; j < m; j++) t[j] = 2.0f * v_gelu_u(x[j]);
        exp_d(e, t, m);
#pragma omp simd
        for (int j = 0; j < m; j++) y[j] = 0.5f * x[j] * (1.0f + v_tanh(e[j]));
    }
}
KV_CLONES static void gelu_bwd_blk(const ew_args *a, size_t s, size_t len) {
    float t[ROW_TMP];
    double e[ROW_TMP];
    for (size_t j0 = 0; j0 < len; j0 += ROW_TMP) {
        int m = len - j0 < ROW_TMP ? (int)(len - j0) : ROW_TMP;
        float *dx = a->o1 + s + j0;
        const float *dy = a->i1 + s + j0, *x = a->i2 + s + j0;
#pragma omp simd
        for (int j = 0; j < m; j++) t[j] = 2.0f * v_gelu_u(x[j]);
        exp_d(e, t, m);
#pragma omp simd
        for (int j = 0; j < m; j++) {
            float th = v_tanh(e[j]), xj = x[j];
            float du = LR_GELU_K * (1.0f + 3.0f * 0.044715f * xj * xj);
            dx[j] = dy[j] * (0.5f * (1.0f + th) + 0.5f * xj * (1.0f - th * th) * du);
        }
    }
}

static void cpu_swiglu_fwd(kb_backend *be, float *h, const float *g, const float *u, size_t n) {
    ew_run(impl_of(be)->nt, n, swiglu_fwd_blk, &(ew_args){.o1 = h, .i1 = g, .i2 = u});
}
static void cpu_swiglu_bwd(kb_backend *be, float *dg, float *du, const float *dh, const float *g,
                           const float *u, size_t n) {
    ew_run(impl_of(be)->nt, n, swiglu_bwd_blk, &(ew_args){.o1 = dg, .o2 = du, .i1 = dh, .i2 = g, .i3 = u});
}
static void cpu_gelu_fwd(kb_backend *be, float *y, const float *x, size_t n, int exact) {
    if (!exact) {
        ew_run(impl_of(be)->nt, n, gelu_fwd_blk, &(ew_args){.o1 = y, .i1 = x});
        return;
    }
#pragma omp parallel for num_threads(impl_of(be)->nt) schedule(static)
    for (size_t i = 0; i < n; i++) y[i] = lr_gelu_erf(x[i]);
}
static void cpu_gelu_bwd(kb_backend *be, float *dx, const float *dy, const float *x, size_t n, int exact) {
    if (!exact) {
        ew_run(impl_of(be)->nt, n, gelu_bwd_blk, &(ew_args){.o1 = dx, .i1 = dy, .i2 = x});
        return;
    }
#pragma omp parallel for num_threads(impl_of(be)->nt) schedule(static)
    for (size_t i = 0; i < n; i++) dx[i] = dy[i] * lr_gelu_erf_grad(x[i]);
}
static void cpu_add(kb_backend *be, float *y, const float *x, size_t n) {
#pragma omp parallel for num_threads(impl_of(be)->nt) schedule(static)
    for (size_t i = 0; i < n; i++) y[i] += x[i];
}

/* ---- linear with LoRA ---- */

/* dst[N,in] = x * dropout mask of (seed); returns x itself when p == 0. */
static const float *lora_input(kb_backend *be, float *dst, const float *x, const kb_lora *l, size_t n) {
    if (l->dropout <= 0.0f) return x;
#pragma omp parallel for num_threads(impl_of(be)->nt) schedule(static)
    for (size_t i = 0; i < n; i++) dst[i] = x[i] * lr_dropout_mult(l->seed, i, l->dropout);
    return dst;
}

/* DoRA's per-feature multiplier s = mag / wnorm into sv[out]. */
static void dora_scale(const kb_linear *L, float *sv) {
    const kb_lora *l = L->lora;
    for (int j = 0; j < L->out; j++) sv[j] = lr_dora_scale(l->mag[j], l->wnorm[j]);
}

/* z[N,out] = x W^T (no bias), accumulated when acc. */
static void base_gemm(kb_backend *be, const kb_linear *L, float *z, const float *x, int N, int acc) {
    int nt = impl_of(be)->nt;
    const float *W = L->W;
    if (L->qW)
        kq_cpu_xwt(nt, L->qW, x, N, z, acc, qws_get(be, L));
    else if (L->W16)
        kbf_current(NULL)->xwt(nt, L->W16, L->out, L->in, x, N, z, acc, bws_get(be, L, N));
    else if (L->w_in_out)
        gemm(nt, 0, 0, N, L->out, L->in, 1.0f, x, L->in, W, L->out, acc ? 1.0f : 0.0f, z, L->out);
    else
        gemm(nt, 0, 1, N, L->out, L->in, 1.0f, x, L->in, W, L->in, acc ? 1.0f : 0.0f, z, L->out);
}

/* dx[N,in] = g W, accumulated when acc. */
static void dx_gemm(kb_backend *be, const kb_linear *L, float *dx, const float *g, int N, int acc) {
    int nt = impl_of(be)->nt, out = L->out;
    const float *W = L->W;
    if (L->qW)
        kq_cpu_gw(nt, L->qW, g, N, dx, acc, qws_get(be, L));
    else if (L->W16)
        kbf_current(NULL)->gw(nt, L->W16, out, L->in, g, N, dx, acc, bws_get(be, L, N));
    else if (L->w_in_out)
        gemm(nt, 0, 1, N, L->in, out, 1.0f, g, out, W, out, acc ? 1.0f : 0.0f, dx, L->in);
    else
        gemm(nt, 0, 0, N, L->in, out, 1.0f, g, out, W, L->in, acc ? 1.0f : 0.0f, dx, L->in);
}

/* The plain LoRA path (no DoRA): y += scale * (drop(x) A^T) B^T, xa saved. */
static void cpu_lora_fwd(kb_backend *be, const kb_linear *L, float *y, float *xa, const float *x, int N) {
    int nt = impl_of(be)->nt, out = L->out;
    const kb_lora *l = L->lora;
    size_t nin = (size_t)N * L->in;
    float *tmp = l->dropout > 0.0f ? ws_get(be, nin) : NULL;
    const float *xd = lora_input(be, tmp, x, l, nin);
    gemm(nt, 0, 1, N, l->r, L->in, 1.0f, xd, L->in, l->A, L->in, 0.0f, xa, l->r);
    gemm(nt, 0, 1, N, out, l->r, l->scale, xa, l->r, l->B, l->r, 1.0f, y, out);
}

/* Its backward: dB += s dy^T xa; dh = s dy B; dA += dh^T drop(x); dx +=
 * drop'(dh A) when dx is not NULL. */
static void cpu_lora_bwd(kb_backend *be, const kb_linear *L, float *dx, const float *dy, const float *x,
                         const float *xa, int N) {
    int nt = impl_of(be)->nt, out = L->out;
    const kb_lora *l = L->lora;
    int r = l->r, drop = l->dropout > 0.0f;
    size_t nin = (size_t)N * L->in;
    float *ws = ws_get(be, (size_t)N * r + (drop ? nin : 0));
    float *dh = ws, *tmp = drop ? ws + (size_t)N * r : NULL;
    const float *xd = lora_input(be, tmp, x, l, nin);
    gemm(nt, 1, 0, out, r, N, l->scale, dy, out, xa, r, 1.0f, l->dB, r);
    gemm(nt, 0, 0, N, r, out, l->scale, dy, out, l->B, r, 0.0f, dh, r);
    gemm(nt, 1, 0, r, L->in, N, 1.0f, dh, r, xd, L->in, 1.0f, l->dA, L->in);
    if (!dx) return;
    if (!drop) {
        gemm(nt, 0, 0, N, L->in, r, 1.0f, dh, r, l->A, L->in, 1.0f, dx, L->in);
        return;
    }
    gemm(nt, 0, 0, N, L->in, r, 1.0f, dh, r, l->A, L->in, 0.0f, tmp, L->in);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (size_t i = 0; i < nin; i++) dx[i] += tmp[i] * lr_dropout_mult(l->seed, i, l->dropout);
}

static void cpu_linear_fwd(kb_backend *be, const kb_linear *L, float *y, float *xa, const float *x, int N) {
    int nt = impl_of(be)->nt;
    const float *b = L->b;
    const kb_lora *l = L->lora;
    int dora = l && l->mag;
    if (b && !dora) {
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int n = 0; n < N; n++) memcpy(y + (size_t)n * L->out, b, (size_t)L->out * sizeof(float));
    }
    base_gemm(be, L, y, x, N, b && !dora);
    if (!l) return;
    if (!dora) {
        cpu_lora_fwd(be, L, y, xa, x, N);
        return;
    }
    int drop = l->dropout > 0.0f, out = L->out;
    size_t nin = (size_t)N * L->in, nout = (size_t)N * out;
    /* scratch: dropped input, then s, the LoRA term and the dropped base term */
    float *ws = ws_get(be, (drop ? nin : 0) + (size_t)out + nout * (drop ? 2 : 1));
    float *tmp = drop ? ws : NULL;
    const float *xd = lora_input(be, tmp, x, l, nin);
    gemm(nt, 0, 1, N, l->r, L->in, 1.0f, xd, L->in, l->A, L->in, 0.0f, xa, l->r);
    float *sv = ws + (drop ? nin : 0), *u = sv + out, *zb = drop ? u + nout : NULL;
    dora_scale(L, sv);
    gemm(nt, 0, 1, N, out, l->r, l->scale, xa, l->r, l->B, l->r, 0.0f, u, out);
    if (drop) base_gemm(be, L, zb, xd, N, 0);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int n = 0; n < N; n++) {
        float *yr = y + (size_t)n * out;
        const float *ur = u + (size_t)n * out, *zr = drop ? zb + (size_t)n * out : NULL;
        for (int j = 0; j < out; j++)
            yr[j] = lr_dora_out(yr[j], drop ? zr[j] : yr[j], ur[j], sv[j], b ? ((const float *)b)[j] : 0.0f, drop);
    }
}

static void cpu_linear_bwd(kb_backend *be, const kb_linear *L, float *dx, int dx_acc, const float *dy,
                           const float *x, const float *xa, int N) {
    int nt = impl_of(be)->nt;
    const kb_lora *l = L->lora;
    int dora = l && l->mag, out = L->out;
    if (L->dW) {
        if (L->w_in_out)
            gemm(nt, 1, 0, L->in, out, N, 1.0f, x, L->in, dy, out, 1.0f, L->dW, out);
        else
            gemm(nt, 1, 0, out, L->in, N, 1.0f, dy, out, x, L->in, 1.0f, L->dW, L->in);
    }
    if (L->db) {
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int j = 0; j < out; j++) {
            double acc = 0;
            for (int n = 0; n < N; n++) acc += dy[(size_t)n * out + j];
            L->db[j] += (float)acc;
        }
    }
    if (dx && !dora) dx_gemm(be, L, dx, dy, N, dx_acc);
    if (!l) return;
    if (!dora) {
        cpu_lora_bwd(be, L, dx, dy, x, xa, N);
        return;
    }
    int r = l->r;
    int drop = l->dropout > 0.0f;
    size_t nin = (size_t)N * L->in, nout = (size_t)N * out;
    float *ws = ws_get(be, (size_t)N * r + (drop ? nin : 0) + nout + out);
    float *dh = ws, *tmp = drop ? ws + (size_t)N * r : NULL;
    float *G = ws + (size_t)N * r + (drop ? nin : 0), *sv = G + nout;
    const float *xd = lora_input(be, tmp, x, l, nin);
    /* d mag_j = sum_n dy[n,j] z[n,j] / wnorm_j, z = xd W^T + scale xa B^T
     * (the pre-bias DoRA direction term), then the LoRA path sees g = s * dy. */
    dora_scale(L, sv);
    base_gemm(be, L, G, xd, N, 0);
    gemm(nt, 0, 1, N, out, r, l->scale, xa, r, l->B, r, 1.0f, G, out);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int j = 0; j < out; j++) {
        double acc = 0;
        for (int n = 0; n < N; n++) acc += (double)dy[(size_t)n * out + j] * G[(size_t)n * out + j];
        l->dmag[j] += (float)(acc / l->wnorm[j]);
    }
#pragma omp parallel for num_threads(nt) schedule(static)
    for (size_t i = 0; i < nout; i++) G[i] = sv[i % out] * dy[i];
    const float *g = G;
    /* dB += s g^T xa; dh = s g B; dA += dh^T drop(x); dx += drop'(dh A) */
    gemm(nt, 1, 0, out, r, N, l->scale, g, out, xa, r, 1.0f, l->dB, r);
    gemm(nt, 0, 0, N, r, out, l->scale, g, out, l->B, r, 0.0f, dh, r);
    gemm(nt, 1, 0, r, L->in, N, 1.0f, dh, r, xd, L->in, 1.0f, l->dA, L->in);
    if (!dx) return;
    if (!drop) {
        /* without dropout the base path is scaled by s as well: dx = g W + dh A */
        dx_gemm(be, L, dx, g, N, dx_acc);
        gemm(nt, 0, 0, N, L->in, r, 1.0f, dh, r, l->A, L->in, 1.0f, dx, L->in);
        return;
    }
    /* the undropped base path carries dy; the dropped one (s - 1) dy = g - dy */
    dx_gemm(be, L, dx, dy, N, dx_acc);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (size_t i = 0; i < nout; i++) G[i] -= dy[i];
    dx_gemm(be, L, tmp, G, N, 0);
    gemm(nt, 0, 0, N, L->in, r, 1.0f, dh, r, l->A, L->in, 1.0f, tmp, L->in);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (size_t i = 0; i < nin; i++) dx[i] += tmp[i] * lr_dropout_mult(l->seed, i, l->dropout);
}

/* Row norms of W + scale B A, in double. */
static void cpu_dora_norm(kb_backend *be, const kb_linear *L, float *wnorm) {
    int nt = impl_of(be)->nt, in = L->in, out = L->out;
    const kb_lora *l = L->lora;
    const float *W = L->W;
    /* a 4-bit or bf16 weight: each thread unpacks its rows into its own row buffer */
    float *BA = ws_get(be, (size_t)out * in + (L->qW || L->W16 ? (size_t)nt * in : 0));
    gemm(nt, 0, 0, out, in, l->r, 1.0f, l->B, l->r, l->A, in, 0.0f, BA, in);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int j = 0; j < out; j++) {
        const float *ba = BA + (size_t)j * in;
        double ss = 0;
        float *wq = NULL;
        if (L->qW || L->W16) {
            wq = BA + (size_t)out * in + (size_t)omp_get_thread_num() * in;
            if (L->qW)
                kq_dequant_range(L->qW, (size_t)j * in, (size_t)in, wq);
            else
                kbf_row(L->W16, out, in, j, wq);
        }
        for (int i = 0; i < in; i++)
            ss += lr_dora_sq(wq ? wq[i] : L->w_in_out ? W[(size_t)i * out + j] : W[(size_t)j * in + i], ba[i], l->scale);
        wnorm[j] = (float)sqrt(ss);
    }
}

/* ---- LM head + cross-entropy ---- */

/* The first index below n holding v (n when none): with v the row's
 * maximum, the target is the argmax (torch.argmax: the first of equal
 * maxima) only if no earlier logit equals it. */
static int first_index_of(const float *l, int n, float v) {
    int j = 0;
    while (j < n && l[j] != v) j++;
    return j;
}

static double cpu_lmhead_ce(kb_backend *be, int64_t *n_valid, int64_t *n_correct, float *tok_loss, float *dx,
                            float *dW, const float *x, const void *W_, const int32_t *targets, const float *tok_scale,
                            int N, int C, int V, float grad_scale, int chunk_rows) {
    const float *W = W_;
    int nt = impl_of(be)->nt;
    int nv = 0;
    for (int n = 0; n < N; n++) nv += targets[n] != LR_IGNORE_INDEX;
    *n_valid = nv;
    if (n_correct) *n_correct = 0;
    if (dx) memset(dx, 0, (size_t)N * C * sizeof(float));
    if (tok_loss) memset(tok_loss, 0, (size_t)N * sizeof(float));
    if (!nv) return 0.0;
    int cr = chunk_rows > 0 ? chunk_rows : (int)(CE_CHUNK_FLOATS / (unsigned)V);
    if (cr < 16) cr = 16;
    if (cr > nv) cr = nv;
    /* scratch: per-row loss (double), row index list, argmax hit per row,
     * gathered x, logits, dx rows */
    size_t need = (size_t)nv * 4 + (size_t)cr * C * 2 + (size_t)cr * V;
    float *ws = ws_get(be, need);
    double *lossv = (double *)ws;
    int *rows = (int *)(ws + (size_t)nv * 2), *hit = rows + nv;
    float *xc = ws + (size_t)nv * 4, *lg = xc + (size_t)cr * C, *dxc = lg + (size_t)cr * V;
    int k = 0;
    for (int n = 0; n < N; n++)
        if (targets[n] != LR_IGNORE_INDEX) rows[k++] = n;
    double total = 0;
    for (int c0 = 0; c0 < nv; c0 += cr) {
        int m = nv - c0 < cr ? nv - c0 : cr;
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int i = 0; i < m; i++)
            memcpy(xc + (size_t)i * C, x + (size_t)rows[c0 + i] * C, (size_t)C * sizeof(float));
        gemm(nt, 0, 1, m, V, C, 1.0f, xc, C, W, C, 0.0f, lg, V);
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int i = 0; i < m; i++) {
            float *l = lg + (size_t)i * V;
            int row = rows[c0 + i], tg = targets[row];
            float mx = row_max(l, V), lt = l[tg];
            hit[c0 + i] = lt == mx && first_index_of(l, tg, mx) == tg;
            double sum = row_exp(l, l, V, mx);
            lossv[c0 + i] = (double)mx + log(sum) - (double)lt;
            if (tok_loss) tok_loss[row] = (float)lossv[c0 + i];
            if (dx || dW) {
                float w = grad_scale * (tok_scale ? tok_scale[row] : 1.0f);
                row_scale(l, V, (float)(1.0 / sum) * w);
                l[tg] -= w;
            }
        }
        if (dW) gemm(nt, 1, 0, V, C, m, 1.0f, lg, V, xc, C, 1.0f, dW, C);
        if (!dx) continue;
        gemm(nt, 0, 0, m, C, V, 1.0f, lg, V, W, C, 0.0f, dxc, C);
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int i = 0; i < m; i++)
            memcpy(dx + (size_t)rows[c0 + i] * C, dxc + (size_t)i * C, (size_t)C * sizeof(float));
    }
    for (int i = 0; i < nv; i++) total += lossv[i];
    if (n_correct)
        for (int i = 0; i < nv; i++) *n_correct += hit[i];
    return total;
}

/* Two logits chunks per step (tuned and reference); the per-row work is
 * three log-sum-exps over V, in double (elem.h's lr_kl_*, shared with the CUDA
 * backend). */
static void cpu_lmhead_ce_kl(kb_backend *be, double *ce_sum, double *kl_sum, int64_t *n_valid, int64_t *n_correct,
                             float *dx, const float *x, const float *x_ref, const void *W_, const int32_t *targets,
                             int N, int C, int V, float tau, float kl_coef, float grad_scale, int chunk_rows) {
    const float *W = W_;
    int nt = impl_of(be)->nt;
    int nv = 0;
    for (int n = 0; n < N; n++) nv += targets[n] != LR_IGNORE_INDEX;
    *n_valid = nv;
    *ce_sum = *kl_sum = 0;
    if (n_correct) *n_correct = 0;
    if (dx) memset(dx, 0, (size_t)N * C * sizeof(float));
    if (!nv) return;
    int cr = chunk_rows > 0 ? chunk_rows : (int)(CE_CHUNK_FLOATS / 2u / (unsigned)V);
    if (cr < 16) cr = 16;
    if (cr > nv) cr = nv;
    /* scratch: per-row ce and kl (double), row list, argmax hit per row,
     * gathered x and x_ref, two logits blocks */
    size_t need = (size_t)nv * 6 + (size_t)cr * C * 2 + (size_t)cr * V * 2;
    float *ws = ws_get(be, need);
    double *cev = (double *)ws, *klv = cev + nv;
    int *rows = (int *)(ws + (size_t)nv * 4), *hit = rows + nv;
    float *xc = ws + (size_t)nv * 6, *xr = xc + (size_t)cr * C, *lg = xr + (size_t)cr * C, *lr = lg + (size_t)cr * V;
    int k = 0;
    for (int n = 0; n < N; n++)
        if (targets[n] != LR_IGNORE_INDEX) rows[k++] = n;
    double itau = 1.0 / tau;
    for (int c0 = 0; c0 < nv; c0 += cr) {
        int m = nv - c0 < cr ? nv - c0 : cr;
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int i = 0; i < m; i++) {
            memcpy(xc + (size_t)i * C, x + (size_t)rows[c0 + i] * C, (size_t)C * sizeof(float));
            memcpy(xr + (size_t)i * C, x_ref + (size_t)rows[c0 + i] * C, (size_t)C * sizeof(float));
        }
        gemm(nt, 0, 1, m, V, C, 1.0f, xc, C, W, C, 0.0f, lg, V);
        gemm(nt, 0, 1, m, V, C, 1.0f, xr, C, W, C, 0.0f, lr, V);
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int i = 0; i < m; i++) {
            float *l = lg + (size_t)i * V, *q = lr + (size_t)i * V;
            int tg = targets[rows[c0 + i]];
            float mx = l[0], mq = q[0];
            for (int j = 1; j < V; j++) {
                mx = l[j] > mx ? l[j] : mx;
                mq = q[j] > mq ? q[j] : mq;
            }
            double s1 = 0, st = 0, sq = 0;
            for (int j = 0; j < V; j++) lr_kl_sums(l[j], q[j], mx, mq, itau, &s1, &st, &sq);
            double lse1 = mx + log(s1), lset = log(st), lseq = log(sq);
            cev[c0 + i] = lse1 - (double)l[tg];
            hit[c0 + i] = l[tg] == mx && first_index_of(l, tg, mx) == tg;
            double kl = 0;
            for (int j = 0; j < V; j++) {
                float qv;
                kl += lr_kl_elem(l[j], q[j], mx, mq, itau, lset, lseq, &qv);
                q[j] = qv; /* the reference logit is not needed again: keep q for the gradient */
            }
            klv[c0 + i] = kl;
            if (dx) {
                double kc = kl_coef * itau;
                for (int j = 0; j < V; j++)
                    l[j] = lr_ce_kl_grad(l[j], q[j], mx, itau, lse1, lset, kc, grad_scale, j == tg);
            }
        }
        if (!dx) continue;
        gemm(nt, 0, 0, m, C, V, 1.0f, lg, V, W, C, 0.0f, xc, C);
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int i = 0; i < m; i++)
            memcpy(dx + (size_t)rows[c0 + i] * C, xc + (size_t)i * C, (size_t)C * sizeof(float));
    }
    double ce = 0, kl = 0;
    for (int i = 0; i < nv; i++) {
        ce += cev[i];
        kl += klv[i];
        if (n_correct) *n_correct += hit[i];
    }
    *ce_sum = ce;
    *kl_sum = kl;
}

/* ---- optimizer and clipping ---- */

static void cpu_adamw(kb_backend *be, float *p, const float *g, float *m, float *v, size_t n,
                      const kb_adamw *hp) {
    float bc1 = (float)(1.0 - pow(hp->beta1, (double)hp->t));
    float bc2s = (float)sqrt(1.0 - pow(hp->beta2, (double)hp->t));
#pragma omp parallel for num_threads(impl_of(be)->nt) schedule(static)
    for (size_t i = 0; i < n; i++)
        lr_adamw_elem(&p[i], g[i], &m[i], &v[i], hp->lr, hp->beta1, hp->beta2, hp->eps, hp->weight_decay, bc1,
                      bc2s);
}

/* Blocks of fixed size summed in block order: the result does not depend
 * on the thread count. */
#define SUMSQ_BLOCK 4096
static double cpu_sumsq(kb_backend *be, const float *x, size_t n) {
    size_t nb = (n + SUMSQ_BLOCK - 1) / SUMSQ_BLOCK;
    double *part = (double *)ws_get(be, 2 * (nb ? nb : 1));
#pragma omp parallel for num_threads(impl_of(be)->nt) schedule(static)
    for (size_t b = 0; b < nb; b++) {
        size_t e = (b + 1) * SUMSQ_BLOCK < n ? (b + 1) * SUMSQ_BLOCK : n;
        double s = 0;
        for (size_t i = b * SUMSQ_BLOCK; i < e; i++) s += (double)x[i] * x[i];
        part[b] = s;
    }
    double s = 0;
    for (size_t b = 0; b < nb; b++) s += part[b];
    return s;
}
static void cpu_scale(kb_backend *be, float *x, float s, size_t n) {
#pragma omp parallel for num_threads(impl_of(be)->nt) schedule(static)
    for (size_t i = 0; i < n; i++) x[i] *= s;
}

/* bf16 linears (kb_backend.bf16_*): the kernel of gemm_bf16.c, where the CPU runs it. */
static int cpu_bf16_check(kb_backend *be, lr_err *err) {
    (void)be;
    return kbf_current(err) ? 0 : -1;
}
static size_t cpu_bf16_bytes(kb_backend *be, int in, int out) {
    (void)be;
    return kbf_packed_bytes(out, in);
}
static void cpu_bf16_pack(kb_backend *be, void *dst, const float *W, int in, int out, int w_in_out) {
    kbf_pack(dst, W, out, in, w_in_out, impl_of(be)->nt);
}

static void cpu_destroy(kb_backend *be) {
    cpu_impl *c = impl_of(be);
    free(c->ws);
    free(c->qws);
    free(c);
    free(be);
}

/* OOM policy: alloc() returns NULL and the caller reports it; see ws_get
 * for the kernels' own scratch. */
int kb_cpu_create(int threads, kb_backend **out, lr_err *err) {
    *out = NULL;
    kb_backend *be = calloc(1, sizeof *be);
    cpu_impl *c = calloc(1, sizeof *c);
    if (!be || !c) {
        free(be);
        free(c);
        return lr_errp(err, LR_E_NOMEM, NULL, "out of memory creating the CPU backend");
    }
    if (threads <= 0) threads = omp_get_num_procs();
    if (threads > 1024) threads = 1024;
    /* choose and self-test the kernel now, before the threads run it */
    kg_current();
    openblas_set_num_threads(1);
    c->nt = threads;
    be->name = "cpu";
    be->weight_dtype = KB_F32;
    be->threads = threads;
    be->host_memory = 1;
    be->weight_grads = 1;
    be->quant4 = 1;
    be->impl = c;
    be->alloc = cpu_alloc;
    be->free = cpu_free;
    be->upload = cpu_copy;
    be->download = cpu_copy;
    be->zero = cpu_zero;
    be->embed_fwd = cpu_embed_fwd;
    be->embed_bwd = cpu_embed_bwd;
    be->rmsnorm_fwd = cpu_rmsnorm_fwd;
    be->rmsnorm_bwd = cpu_rmsnorm_bwd;
    be->layernorm_fwd = cpu_layernorm_fwd;
    be->layernorm_bwd = cpu_layernorm_bwd;
    be->rope_fwd = cpu_rope_fwd;
    be->rope_bwd = cpu_rope_bwd;
    be->attn_fwd = cpu_attn_fwd;
    be->attn_bwd = cpu_attn_bwd;
    be->attn_kv_fwd = cpu_attn_kv_fwd;
    be->swiglu_fwd = cpu_swiglu_fwd;
    be->swiglu_bwd = cpu_swiglu_bwd;
    be->gelu_fwd = cpu_gelu_fwd;
    be->gelu_bwd = cpu_gelu_bwd;
    be->add = cpu_add;
    be->linear_fwd = cpu_linear_fwd;
    be->linear_bwd = cpu_linear_bwd;
    be->lmhead_ce = cpu_lmhead_ce;
    be->lmhead_ce_kl = cpu_lmhead_ce_kl;
    be->dora_norm = cpu_dora_norm;
    be->lora_fwd = cpu_lora_fwd;
    be->lora_bwd = cpu_lora_bwd;
    be->adamw = cpu_adamw;
    be->sumsq = cpu_sumsq;
    be->scale = cpu_scale;
    be->destroy = cpu_destroy;
    be->bf16_check = cpu_bf16_check;
    be->bf16_bytes = cpu_bf16_bytes;
    be->bf16_pack = cpu_bf16_pack;
    *out = be;
    return 0;
}
