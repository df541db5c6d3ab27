/* backend_cuda: the kb_backend ops on an NVIDIA GPU.
 * Why this file is long: it is the host side of every op of
 * kernels/backend.h (scratch layouts, launches, cuBLAS calls, deferred
 * errors) in the one translation unit that includes the kernels.
 *
 * One stream per backend; every op is queued on it and returns at once,
 * except those that hand a value to the host (lmhead_ce, lmhead_ce_kl, sumsq,
 * download).
 * Large matmuls are cuBLAS GemmEx: the f32 activation operand is rounded to
 * the weight dtype by a small kernel, the product accumulates in f32 on
 * tensor cores; with f32 weights it is true f32 (no TF32), which is what
 * lets the tests hold the CUDA backend to the CPU one at 1e-5. LoRA's own
 * matmuls are f32 (A, B and their gradients are f32 and small).
 *
 * Attention is fused flash-style kernels (online softmax; the backward
 * recomputes P from the saved lse: one kernel for dK/dV, one for dQ), so no
 * T x T matrix exists in global memory. dK/dV sum the query heads of a GQA
 * group inside one block, so nothing needs atomics and every result is
 * deterministic. Two implementations: with 16-bit frozen weights, tensor
 * cores (bf16 mma.sync, f32 accumulation; a warp owns 16 rows and keeps S,
 * P and its output tile in registers, in the PTX fragment layout); with f32
 * weights, or D not a multiple of 16 or above 128, f32 on the CUDA cores (a
 * block owns 32 rows in 4 warps of 8; each lane holds columns lane, lane +
 * 32, ... of its rows), which is what the exact comparisons run.
 *
 * A 4-bit base weight (QLoRA, kb_linear.qW) is dequantized a tile of rows
 * at a time (quant_cuda.h, the CPU's per-element code) into scratch, bf16
 * (f32 when the model runs in f32, which keeps the CPU backend's values),
 * and each tile goes through the same GemmEx: the forward writes the tile's
 * output columns, the input gradient adds the tile's share; the whole
 * weight never exists dequantized. DoRA's norm reads f32 tiles.
 *
 * DoRA's row norms, output and magnitude gradient, and the KL head's per-row
 * ce / kl / gradient, are kernels around elem.h's helpers (the CPU backend's
 * formulas); their cross-row sums run in fixed-size blocks added in order,
 * never with float atomics.
 *
 * Failures inside ops (scratch out of memory, a cuBLAS or launch error) are
 * recorded once, make the following ops no-ops, and come out of check().
 *
 * This file is the host side (memory, launches, cuBLAS, errors, devices);
 * the kernels are one file per op family, included below into this one
 * translation unit: pointwise.cuh, attention.cuh (with mma.cuh), dora.cuh,
 * lmhead.cuh, and reduce.cuh, which they share; q4gemm.cuh holds the host
 * tile loops of 4-bit weights. The emulation tests include the same files. */
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "kernels/backend.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/plan.h"
}
#include "kernels/cuda/quant_cuda.h"
#include "kernels/elem.h"

#define CUBLAS_WS_BYTES ((size_t)32 << 20)

typedef struct cu_impl {
    kb_cuda_device dev;
    char name[16];
    cudaStream_t st;
    cublasHandle_t blas;
    cudaMemPool_t pool;
    void *blas_ws;
    char *ws;          /* grow-only scratch shared by the ops (they are stream-ordered) */
    size_t ws_len;
    size_t smem_optin;
    int failed;
    int code;
    char msg[480];
} cu_impl;

static cu_impl *impl_of(kb_backend *be) { return (cu_impl *)be->impl; }

/* Records the first failure; the ops check c->failed and do nothing after it. */
static void fail(cu_impl *c, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void fail(cu_impl *c, int code, const char *fmt, ...) {
    if (c->failed) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->msg, sizeof c->msg, fmt, ap);
    va_end(ap);
    c->failed = 1;
    c->code = code;
}

static int cuda_ok(cu_impl *c, cudaError_t e, const char *what) {
    if (e == cudaSuccess) return 1;
    fail(c, e == cudaErrorMemoryAllocation ? LR_E_NOMEM : LR_E_INTERNAL, "%s on %s: %s", what, c->name,
         cudaGetErrorString(e));
    return 0;
}
static void launched(cu_impl *c, const char *kernel) { cuda_ok(c, cudaGetLastError(), kernel); }

static void oom(cu_impl *c, const char *what, size_t bytes) {
    size_t fr = 0, tot = 0;
    cudaGetLastError(); /* allocation failures are not sticky: clear it */
    cudaMemGetInfo(&fr, &tot);
    char m[400];
    cuplan_oom_message(m, sizeof m, what, bytes, fr, tot, c->dev.name);
    fail(c, LR_E_NOMEM, "%s", m);
}

/* Stream-ordered allocation from the device's pool. The pool keeps freed
 * memory; when a request does not fit, the cached memory is returned to the
 * device and the request tried once more before giving up. */
static void *pool_alloc(cu_impl *c, size_t bytes) {
    void *p = NULL;
    if (cudaMallocAsync(&p, bytes ? bytes : 1, c->st) == cudaSuccess) return p;
    cudaGetLastError();
    cudaStreamSynchronize(c->st);
    cudaMemPoolTrimTo(c->pool, 0);
    if (cudaMallocAsync(&p, bytes ? bytes : 1, c->st) == cudaSuccess) return p;
    return NULL;
}

static char *ws_get(cu_impl *c, size_t bytes, const char *what) {
    if (c->failed) return NULL;
    if (bytes <= c->ws_len) return c->ws;
    if (c->ws) cudaFreeAsync(c->ws, c->st);
    c->ws = NULL;
    c->ws_len = 0;
    c->ws = (char *)pool_alloc(c, bytes);
    if (!c->ws) {
        oom(c, what, bytes);
        return NULL;
    }
    c->ws_len = bytes;
    return c->ws;
}

/* ---- device helpers ---- */

template <typename T> __device__ __forceinline__ float ldw(const T *p, size_t i);
template <> __device__ __forceinline__ float ldw<float>(const float *p, size_t i) { return p[i]; }
template <> __device__ __forceinline__ float ldw<__nv_bfloat16>(const __nv_bfloat16 *p, size_t i) {
    return __bfloat162float(p[i]);
}
template <> __device__ __forceinline__ float ldw<__half>(const __half *p, size_t i) { return __half2float(p[i]); }

template <typename T> __device__ __forceinline__ T stw(float v);
template <> __device__ __forceinline__ float stw<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 stw<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ __half stw<__half>(float v) { return __float2half_rn(v); }

/* Runs the statement with W the element type of dtype DT. */
#define WDISPATCH(DT, ...)                                                     \
    do {                                                                       \
        switch (DT) {                                                          \
        case KB_BF16: { typedef __nv_bfloat16 W; __VA_ARGS__; } break;        \
        case KB_F16: { typedef __half W; __VA_ARGS__; } break;                \
        default: { typedef float W; __VA_ARGS__; } break;                     \
        }                                                                      \
    } while (0)

static cudaDataType cuda_type(kb_dtype dt) {
    return dt == KB_BF16 ? CUDA_R_16BF : dt == KB_F16 ? CUDA_R_16F : CUDA_R_32F;
}

#include "kernels/cuda/reduce.cuh"

static unsigned grid_for(cu_impl *c, size_t n) { return cuplan_grid(n, CUPLAN_BLOCK, c->dev.sm_count); }

/* The kernels, one file per op family; this file is the host side. */
#include "kernels/cuda/pointwise.cuh"
#include "kernels/cuda/mma.cuh"
#include "kernels/cuda/attention.cuh"
#include "kernels/cuda/dora.cuh"
#include "kernels/cuda/lmhead.cuh"
#include "kernels/cuda/q4gemm.cuh"

/* ---- memory ---- */

static void *cu_alloc(kb_backend *be, size_t bytes) {
    cu_impl *c = impl_of(be);
    void *p = pool_alloc(c, bytes);
    if (!p) {
        oom(c, "an allocation", bytes);
        return NULL;
    }
    if (!cuda_ok(c, cudaMemsetAsync(p, 0, bytes ? bytes : 1, c->st), "cudaMemsetAsync")) {
        cudaFreeAsync(p, c->st);
        return NULL;
    }
    return p;
}
static void cu_free(kb_backend *be, void *p) {
    if (p) cudaFreeAsync(p, impl_of(be)->st);
}
static void cu_upload(kb_backend *be, void *dst, const void *src, size_t bytes) {
    cu_impl *c = impl_of(be);
    if (!bytes) return;
    if (cuda_ok(c, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, c->st), "upload"))
        cuda_ok(c, cudaStreamSynchronize(c->st), "upload");
}
/* Waits for every queued op even when bytes is 0: callers use it as the sync point. */
static void cu_download(kb_backend *be, void *dst, const void *src, size_t bytes) {
    cu_impl *c = impl_of(be);
    if ((bytes && !cuda_ok(c, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, c->st), "download")) ||
        !cuda_ok(c, cudaStreamSynchronize(c->st), "download"))
        if (bytes) memset(dst, 0, bytes);
}
static void cu_zero(kb_backend *be, void *p, size_t bytes) {
    cu_impl *c = impl_of(be);
    if (bytes && !c->failed) cuda_ok(c, cudaMemsetAsync(p, 0, bytes, c->st), "cudaMemsetAsync");
}

/* ---- embedding ---- */

static void cu_embed_fwd(kb_backend *be, float *out, const int32_t *ids, const void *wte, const void *wpe, int N,
                         int T, int C) {
    cu_impl *c = impl_of(be);
    if (c->failed || N <= 0) return;
    WDISPATCH(be->weight_dtype,
              embed_fwd_k<W><<<N, CUPLAN_BLOCK, 0, c->st>>>(out, ids, (const W *)wte, (const W *)wpe, T, C));
    launched(c, "embed_fwd");
}

static void cu_embed_bwd(kb_backend *be, float *dwte, float *dwpe, const float *dout, const int32_t *ids, int N,
                         int T, int C) {
    cu_impl *c = impl_of(be);
    if (c->failed || N <= 0 || (!dwte && !dwpe)) return;
    embed_bwd_k<<<(C + 127) / 128, 128, 0, c->st>>>(dwte, dwpe, dout, ids, N, T, C);
    launched(c, "embed_bwd");
}

/* ---- norms ---- */

static void cu_rmsnorm_fwd(kb_backend *be, float *out, float *rstd, const float *x, const void *w, int N, int C,
                           float eps) {
    cu_impl *c = impl_of(be);
    if (c->failed || N <= 0) return;
    WDISPATCH(be->weight_dtype, rmsnorm_fwd_k<W><<<N, CUPLAN_BLOCK, 0, c->st>>>(out, rstd, x, (const W *)w, C, eps));
    launched(c, "rmsnorm_fwd");
}

static void cu_rmsnorm_bwd(kb_backend *be, float *dx, float *dw, const float *dout, const float *x, const void *w,
                           const float *rstd, int N, int C) {
    cu_impl *c = impl_of(be);
    if (c->failed || N <= 0) return;
    WDISPATCH(be->weight_dtype,
              rmsnorm_bwd_k<W><<<N, CUPLAN_BLOCK, 0, c->st>>>(dx, dout, x, (const W *)w, rstd, C));
    if (dw) rmsnorm_dw_k<<<(C + 127) / 128, 128, 0, c->st>>>(dw, dout, x, rstd, N, C);
    launched(c, "rmsnorm_bwd");
}

static void cu_layernorm_fwd(kb_backend *be, float *out, float *mean, float *rstd, const float *x, const void *w,
                             const void *b, int N, int C, float eps) {
    cu_impl *c = impl_of(be);
    if (c->failed || N <= 0) return;
    WDISPATCH(be->weight_dtype, layernorm_fwd_k<W><<<N, CUPLAN_BLOCK, 0, c->st>>>(out, mean, rstd, x, (const W *)w,
                                                                                (const W *)b, C, eps));
    launched(c, "layernorm_fwd");
}

static void cu_layernorm_bwd(kb_backend *be, float *dx, float *dw, float *db, const float *dout, const float *x,
                             const void *w, const float *mean, const float *rstd, int N, int C) {
    cu_impl *c = impl_of(be);
    if (c->failed || N <= 0) return;
    WDISPATCH(be->weight_dtype,
              layernorm_bwd_k<W><<<N, CUPLAN_BLOCK, 0, c->st>>>(dx, dout, x, (const W *)w, mean, rstd, C));
    if (dw || db) layernorm_dwb_k<<<(C + 127) / 128, 128, 0, c->st>>>(dw, db, dout, x, mean, rstd, N, C);
    launched(c, "layernorm_bwd");
}

/* ---- RoPE ---- */

static void rope(kb_backend *be, float *x, int ld, const float *cs, const float *sn, int N, int T, int H, int D,
                 float sign) {
    cu_impl *c = impl_of(be);
    size_t total = (size_t)N * H * (D / 2);
    if (c->failed || !total) return;
    rope_k<<<grid_for(c, total), CUPLAN_BLOCK, 0, c->st>>>(x, ld, cs, sn, N, T, H, D, sign);
    launched(c, "rope");
}
static void cu_rope_fwd(kb_backend *be, float *x, int ld, const float *cs, const float *sn, int N, int T, int H,
                        int D) {
    rope(be, x, ld, cs, sn, N, T, H, D, 1.0f);
}
static void cu_rope_bwd(kb_backend *be, float *dx, int ld, const float *cs, const float *sn, int N, int T, int H,
                        int D) {
    rope(be, dx, ld, cs, sn, N, T, H, D, -1.0f);
}

/* ---- attention ---- */

#define ATT_DISPATCH(DCV, K, ...)                                              \
    do {                                                                       \
        if ((DCV) == 2) K<2> __VA_ARGS__;                                      \
        else if ((DCV) == 4) K<4> __VA_ARGS__;                                 \
        else K<8> __VA_ARGS__;                                                 \
    } while (0)

static int attn_plan(cu_impl *c, int B, int T, int Hq, int Hkv, int D, cuplan_attn *pl) {
    lr_err e;
    if (cuplan_attention(B, T, Hq, Hkv, D, c->smem_optin, pl, &e)) {
        fail(c, LR_E_INVALID, "%s", e.msg);
        return -1;
    }
    return 0;
}

#define TC_DISPATCH(KDV, K, ...)                                               \
    do {                                                                       \
        if ((KDV) == 4) K<4> __VA_ARGS__;                                      \
        else K<8> __VA_ARGS__;                                                 \
    } while (0)

/* The tensor-core kernels run for 16-bit frozen weights, whose matmuls
 * already round activations to 16 bits; f32 weights keep the f32 kernels,
 * the exact comparison with the CPU backend. */
static int attn_tc(kb_backend *be, int T, int D, cuplan_attn_tc *tc) {
    return be->weight_dtype != KB_F32 && cuplan_attention_tc(T, D, impl_of(be)->smem_optin, tc);
}

/* The window as a key count: all T positions when there is none. */
static int attn_window(int window, int T) { return window > 0 && window < T ? window : T; }

static void cu_attn_fwd(kb_backend *be, float *out, float *lse, const float *q, const float *k, const float *v,
                        int ldq, int ldkv, int B, int T, int Hq, int Hkv, int D, int window) {
    cu_impl *c = impl_of(be);
    cuplan_attn pl;
    cuplan_attn_tc tc;
    if (c->failed || attn_plan(c, B, T, Hq, Hkv, D, &pl)) return;
    float scale = 1.0f / sqrtf((float)D);
    int W = attn_window(window, T);
    if (attn_tc(be, T, D, &tc)) {
        dim3 g(tc.tiles, (unsigned)(B * Hq));
        TC_DISPATCH(tc.kd, tc_fwd_k,
                    <<<g, 128, tc.smem_fwd, c->st>>>(out, lse, q, k, v, ldq, ldkv, T, Hq, Hkv, D, W, scale));
        launched(c, "attn_fwd (tensor cores)");
        return;
    }
    dim3 grid(pl.q_tiles, (unsigned)(B * Hq));
    ATT_DISPATCH(pl.dc, attn_fwd_k,
                 <<<grid, ATHREADS, pl.smem_fwd, c->st>>>(out, lse, q, k, v, ldq, ldkv, T, Hq, Hkv, D, W, scale));
    launched(c, "attn_fwd");
}

static void cu_attn_bwd(kb_backend *be, float *dq, float *dk, float *dv, const float *dout, const float *out,
                        const float *lse, const float *q, const float *k, const float *v, int ldq, int ldkv, int B,
                        int T, int Hq, int Hkv, int D, int window) {
    cu_impl *c = impl_of(be);
    cuplan_attn pl;
    if (c->failed || attn_plan(c, B, T, Hq, Hkv, D, &pl)) return;
    float *di = (float *)ws_get(c, pl.ws_bytes, "attention scratch");
    if (!di) return;
    float scale = 1.0f / sqrtf((float)D);
    int W = attn_window(window, T);
    size_t rows = (size_t)B * Hq * T;
    attn_di_k<<<cuplan_grid(rows * 32, CUPLAN_BLOCK, c->dev.sm_count), CUPLAN_BLOCK, 0, c->st>>>(di, dout, out, B, T,
                                                                                               Hq, D);
    cuplan_attn_tc tc;
    if (attn_tc(be, T, D, &tc)) {
        dim3 tkv(tc.tiles, (unsigned)(B * Hkv)), tq(tc.tiles, (unsigned)(B * Hq));
        TC_DISPATCH(tc.kd, tc_dkv_k,
                    <<<tkv, 128, tc.smem_dkv, c->st>>>(dk, dv, dout, lse, di, q, k, v, ldq, ldkv, T, Hq, Hkv, D, W,
                                                       scale));
        TC_DISPATCH(tc.kd, tc_dq_k,
                    <<<tq, 128, tc.smem_dq, c->st>>>(dq, dout, lse, di, q, k, v, ldq, ldkv, T, Hq, Hkv, D, W, scale));
        launched(c, "attn_bwd (tensor cores)");
        return;
    }
    dim3 gkv(pl.q_tiles, (unsigned)(B * Hkv)), gq(pl.q_tiles, (unsigned)(B * Hq));
    ATT_DISPATCH(pl.dc, attn_dkv_k,
                 <<<gkv, ATHREADS, pl.smem_dkv, c->st>>>(dk, dv, dout, lse, di, q, k, v, ldq, ldkv, T, Hq, Hkv, D,
                                                         W, scale));
    ATT_DISPATCH(pl.dc, attn_dq_k,
                 <<<gq, ATHREADS, pl.smem_dq, c->st>>>(dq, dout, lse, di, q, k, v, ldq, ldkv, T, Hq, Hkv, D, W,
                                                        scale));
    launched(c, "attn_bwd");
}

/* Decoding runs the f32 kernel whatever the weight dtype: one row per step
 * gives the tensor cores nothing to fill, and it keeps the CPU's numbers. */
static void cu_attn_kv_fwd(kb_backend *be, float *out, const float *q, int ldq, const float *kc, const float *vc,
                           int ldkv, int p0, int n, int Hq, int Hkv, int D, int window) {
    cu_impl *c = impl_of(be);
    cuplan_attn pl;
    if (c->failed || attn_plan(c, 1, n, Hq, Hkv, D, &pl)) return;
    dim3 grid(pl.q_tiles, (unsigned)Hq);
    ATT_DISPATCH(pl.dc, attn_kv_k,
                 <<<grid, ATHREADS, pl.smem_fwd, c->st>>>(out, q, kc, vc, ldq, ldkv, p0, n, Hq, Hkv, D,
                                                          attn_window(window, p0 + n), 1.0f / sqrtf((float)D)));
    launched(c, "attn_kv_fwd");
}

/* ---- elementwise ---- */

#define ELEMWISE(be, n, name, KERNEL, ...)                                     \
    do {                                                                       \
        cu_impl *c_ = impl_of(be);                                             \
        if (c_->failed || !(n)) return;                                        \
        KERNEL<<<grid_for(c_, n), CUPLAN_BLOCK, 0, c_->st>>>(__VA_ARGS__);     \
        launched(c_, name);                                                    \
    } while (0)

static void cu_swiglu_fwd(kb_backend *be, float *h, const float *g, const float *u, size_t n) {
    ELEMWISE(be, n, "swiglu_fwd", swiglu_fwd_k, h, g, u, n);
}
static void cu_swiglu_bwd(kb_backend *be, float *dg, float *du, const float *dh, const float *g, const float *u,
                          size_t n) {
    ELEMWISE(be, n, "swiglu_bwd", swiglu_bwd_k, dg, du, dh, g, u, n);
}
static void cu_gelu_fwd(kb_backend *be, float *y, const float *x, size_t n, int exact) {
    ELEMWISE(be, n, "gelu_fwd", gelu_fwd_k, y, x, n, exact);
}
static void cu_gelu_bwd(kb_backend *be, float *dx, const float *dy, const float *x, size_t n, int exact) {
    ELEMWISE(be, n, "gelu_bwd", gelu_bwd_k, dx, dy, x, n, exact);
}
static void cu_add(kb_backend *be, float *y, const float *x, size_t n) { ELEMWISE(be, n, "add", add_k, y, x, n); }
static void cu_scale(kb_backend *be, float *x, float s, size_t n) { ELEMWISE(be, n, "scale", scale_k, x, s, n); }

/* ---- matmuls ---- */

/* dst = src in the weight dtype (the cuBLAS operand next to a frozen weight). */
static void to_lowp(cu_impl *c, kb_dtype dt, void *dst, const float *src, size_t n) {
    if (!n) return;
    WDISPATCH(dt, convert_k<W><<<grid_for(c, n), CUPLAN_BLOCK, 0, c->st>>>((W *)dst, src, n));
    launched(c, "convert");
}

/* Row-major C[M,N] (f32, ldc) = alpha op(A)[M,K] op(B)[K,N] + beta C, A and
 * B of dtype dt, f32 accumulation (no TF32 for f32). A row-major matrix is
 * its transpose in cuBLAS's column-major view, hence C^T = op(B)^T op(A)^T. */
static void gemm(cu_impl *c, kb_dtype dt, int ta, int tb, int M, int N, int K, float alpha, const void *A, int lda,
                 const void *B, int ldb, float beta, float *C, int ldc) {
    if (c->failed || M <= 0 || N <= 0) return;
    cudaDataType t = cuda_type(dt);
    cublasStatus_t s = cublasGemmEx(c->blas, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K,
                                    &alpha, B, t, ldb, A, t, lda, &beta, C, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F,
                                    CUBLAS_GEMM_DEFAULT);
    if (s != CUBLAS_STATUS_SUCCESS)
        fail(c, s == CUBLAS_STATUS_ALLOC_FAILED ? LR_E_NOMEM : LR_E_INTERNAL,
             "cublasGemmEx (%dx%dx%d) on %s: %s", M, N, K, c->name, cublasGetStatusString(s));
}

/* The GEMM operand dtype of a linear layer: its weights', or for a 4-bit
 * weight the dtype of its dequantized tiles. */
static kb_dtype operand_dtype(const kb_backend *be, const kb_linear *L) {
    return L->qW && be->weight_dtype != KB_F32 ? KB_BF16 : be->weight_dtype;
}

/* Rows [r0, r0 + nr) of a 4-bit weight into tile, dt (bf16 or f32);
 * nonzero once the backend has failed. */
static int dequant_rows(cu_impl *c, const kb_linear *L, int r0, int nr, void *tile, kb_dtype dt) {
    lr_err e;
    if (!c->failed && kq_cuda_dequant(L->qW, r0, nr, tile, dt == KB_BF16, c->st, &e))
        fail(c, LR_E_INTERNAL, "%s on %s", e.msg, c->name);
    return c->failed;
}

/* The scratch of a linear op: the operand dtype's layout, plus the
 * dequantized tile of a 4-bit weight. */
static void linear_layout(const kb_backend *be, const kb_linear *L, int N, int r, int drop, int dora, int backward,
                          cuplan_linear *lay) {
    kb_dtype dt = operand_dtype(be, L);
    cuplan_linear_layout(dt, N, L->in, L->out, r, drop, dora, backward, lay);
    if (L->qW) cuplan_linear_q4(dt, L->in, L->out, lay);
}

/* z[N,out] = x W^T + beta z; x goes through lowp (scratch [N,in], NULL with
 * f32 weights) rounded to dt, the operand dtype. A 4-bit W is dequantized
 * qrows rows at a time into qt, each tile giving its columns of z. */
static void base_gemm(cu_impl *c, kb_dtype dt, const kb_linear *L, void *lowp, void *qt, int qrows, const float *x,
                      int N, float beta, float *z) {
    const void *xop = x;
    if (lowp) {
        to_lowp(c, dt, lowp, x, (size_t)N * L->in);
        xop = lowp;
    }
    if (L->qW) {
        q4_xwt([&](int r0, int nr, void *t) { return dequant_rows(c, L, r0, nr, t, dt); },
               [&](int ta, int tb, int M, int n, int K, float al, const void *A, int lda, const void *B, int ldb,
                   float bt, float *C, int ldc) { gemm(c, dt, ta, tb, M, n, K, al, A, lda, B, ldb, bt, C, ldc); },
               N, L->in, L->out, qrows, xop, qt, beta, z);
    } else if (L->w_in_out) {
        gemm(c, dt, 0, 0, N, L->out, L->in, 1.0f, xop, L->in, L->W, L->out, beta, z, L->out);
    } else {
        gemm(c, dt, 0, 1, N, L->out, L->in, 1.0f, xop, L->in, L->W, L->in, beta, z, L->out);
    }
}
/* dx[N,in] = g W + beta dx, g [N,out] rounded the same way; a 4-bit W adds
 * g[:, tile] W_tile tile by tile. */
static void input_grad(cu_impl *c, kb_dtype dt, const kb_linear *L, void *lowp, void *qt, int qrows, const float *g,
                       int N, float beta, float *dx) {
    const void *gop = g;
    if (lowp) {
        to_lowp(c, dt, lowp, g, (size_t)N * L->out);
        gop = lowp;
    }
    if (L->qW) {
        q4_gw([&](int r0, int nr, void *t) { return dequant_rows(c, L, r0, nr, t, dt); },
              [&](int ta, int tb, int M, int n, int K, float al, const void *A, int lda, const void *B, int ldb,
                  float bt, float *C, int ldc) { gemm(c, dt, ta, tb, M, n, K, al, A, lda, B, ldb, bt, C, ldc); },
              N, L->in, L->out, qrows, gop, cuplan_dtype_size(dt), qt, beta, dx);
    } else if (L->w_in_out) {
        gemm(c, dt, 0, 1, N, L->in, L->out, 1.0f, gop, L->out, L->W, L->out, beta, dx, L->in);
    } else {
        gemm(c, dt, 0, 0, N, L->in, L->out, 1.0f, gop, L->out, L->W, L->in, beta, dx, L->in);
    }
}

/* ---- DoRA ---- */

/* B A is f32 (cuBLAS, no TF32), a block of output rows at a time so that
 * the scratch stays within CUPLAN_DORA_BUDGET for any layer; a 4-bit W's
 * rows of the block are dequantized to f32 beside it (the norm of the
 * dequantized weight, as on the CPU and in PEFT). */
static void cu_dora_norm(kb_backend *be, const kb_linear *L, float *wnorm) {
    cu_impl *c = impl_of(be);
    const kb_lora *l = L->lora;
    if (c->failed || !l || L->out <= 0) return;
    int in = L->in, out = L->out, q4 = L->qW != NULL;
    int rows = cuplan_dora_rows(in, out, q4 ? CUPLAN_DORA_BUDGET / 2 : CUPLAN_DORA_BUDGET);
    float *BA = (float *)ws_get(c, (size_t)rows * in * sizeof(float) * (q4 ? 2 : 1), "DoRA norm scratch");
    if (!BA) return;
    float *wt = q4 ? BA + (size_t)rows * in : NULL;
    for (int j0 = 0; j0 < out && !c->failed; j0 += rows) {
        int m = out - j0 < rows ? out - j0 : rows;
        gemm(c, KB_F32, 0, 0, m, in, l->r, 1.0f, l->B + (size_t)j0 * l->r, l->r, l->A, in, 0.0f, BA, in);
        if (q4) {
            if (dequant_rows(c, L, j0, m, wt, KB_F32)) return;
            dora_norm_k<float><<<m, CUPLAN_BLOCK, 0, c->st>>>(wnorm + j0, wt, BA, 0, in, m, 0, l->scale);
        } else {
            WDISPATCH(be->weight_dtype, dora_norm_k<W><<<m, CUPLAN_BLOCK, 0, c->st>>>(
                                            wnorm, (const W *)L->W, BA, j0, in, out, L->w_in_out, l->scale));
        }
        launched(c, "dora_norm");
    }
}

/* ---- the LoRA path (shared by linear_fwd/bwd and the co-training ops) ---- */

/* drop(x) into t ([N,in] scratch) when the path has dropout; returns drop(x)
 * (t, or x itself). */
static const float *lora_input(cu_impl *c, const kb_lora *l, float *t, const float *x, size_t nx) {
    if (l->dropout <= 0.0f) return x;
    dropout_k<<<grid_for(c, nx), CUPLAN_BLOCK, 0, c->st>>>(t, x, l->seed, l->dropout, nx);
    return t;
}

/* y[N,out] += scale * xa B^T after xa = xd A^T (xd: the dropped input). */
static void lora_path_fwd(cu_impl *c, const kb_linear *L, float *y, float *xa, const float *xd, int N) {
    const kb_lora *l = L->lora;
    gemm(c, KB_F32, 0, 1, N, l->r, L->in, 1.0f, xd, L->in, l->A, L->in, 0.0f, xa, l->r);
    gemm(c, KB_F32, 0, 1, N, L->out, l->r, l->scale, xa, l->r, l->B, l->r, 1.0f, y, L->out);
}

/* dB += s g^T xa; dh = s g B; dA += dh^T drop(x) (xd), for the output
 * gradient g the path sees (dy, or DoRA's s * dy). */
static void lora_path_grads(cu_impl *c, const kb_linear *L, float *dh, const float *g, const float *xd,
                            const float *xa, int N) {
    const kb_lora *l = L->lora;
    int r = l->r, out = L->out;
    gemm(c, KB_F32, 1, 0, out, r, N, l->scale, g, out, xa, r, 1.0f, l->dB, r);
    gemm(c, KB_F32, 0, 0, N, r, out, l->scale, g, out, l->B, r, 0.0f, dh, r);
    gemm(c, KB_F32, 1, 0, r, L->in, N, 1.0f, dh, r, xd, L->in, 1.0f, l->dA, L->in);
}

/* dx += drop'(dh A): straight into dx without dropout, else through t
 * ([N,in]; t_acc: t already holds a term of the dropped input's gradient,
 * DoRA's, that goes through the mask with it). */
static void lora_path_dx(cu_impl *c, const kb_linear *L, float *dx, const float *dh, float *t, int t_acc, int N) {
    const kb_lora *l = L->lora;
    size_t nx = (size_t)N * L->in;
    if (l->dropout <= 0.0f) {
        gemm(c, KB_F32, 0, 0, N, L->in, l->r, 1.0f, dh, l->r, l->A, L->in, 1.0f, dx, L->in);
        return;
    }
    gemm(c, KB_F32, 0, 0, N, L->in, l->r, 1.0f, dh, l->r, l->A, L->in, t_acc ? 1.0f : 0.0f, t, L->in);
    dropout_acc_k<<<grid_for(c, nx), CUPLAN_BLOCK, 0, c->st>>>(dx, t, l->seed, l->dropout, nx);
}

/* The scratch of the plain LoRA path alone: f32 throughout, no base GEMM. */
static char *lora_scratch(cu_impl *c, const kb_linear *L, int N, int backward, cuplan_linear *lay) {
    const kb_lora *l = L->lora;
    cuplan_linear_layout(KB_F32, N, L->in, L->out, l->r, l->dropout > 0.0f, 0, backward, lay);
    return lay->total ? ws_get(c, lay->total, "LoRA path scratch") : c->ws;
}

static void cu_lora_fwd(kb_backend *be, const kb_linear *L, float *y, float *xa, const float *x, int N) {
    cu_impl *c = impl_of(be);
    if (c->failed || N <= 0) return;
    cuplan_linear lay;
    char *ws = lora_scratch(c, L, N, 0, &lay);
    if (lay.total && !ws) return;
    float *t = lay.drop == SIZE_MAX ? NULL : (float *)(ws + lay.drop);
    lora_path_fwd(c, L, y, xa, lora_input(c, L->lora, t, x, (size_t)N * L->in), N);
    launched(c, "lora_fwd");
}

static void cu_lora_bwd(kb_backend *be, const kb_linear *L, float *dx, const float *dy, const float *x,
                        const float *xa, int N) {
    cu_impl *c = impl_of(be);
    if (c->failed || N <= 0) return;
    cuplan_linear lay;
    char *ws = lora_scratch(c, L, N, 1, &lay);
    if (lay.total && !ws) return;
    float *t = lay.drop == SIZE_MAX ? NULL : (float *)(ws + lay.drop), *dh = (float *)(ws + lay.dh);
    lora_path_grads(c, L, dh, dy, lora_input(c, L->lora, t, x, (size_t)N * L->in), xa, N);
    if (dx) lora_path_dx(c, L, dx, dh, t, 0, N);
    launched(c, "lora_bwd");
}

/* ---- linear with LoRA / DoRA ---- */

static void cu_linear_fwd(kb_backend *be, const kb_linear *L, float *y, float *xa, const float *x, int N) {
    cu_impl *c = impl_of(be);
    if (c->failed || N <= 0) return;
    kb_dtype dt = be->weight_dtype, ot = operand_dtype(be, L);
    const kb_lora *l = L->lora;
    int drop = l && l->dropout > 0.0f, dora = l && l->mag, out = L->out;
    cuplan_linear lay;
    linear_layout(be, L, N, dora ? l->r : 0, drop, dora, 0, &lay); /* plain LoRA: lora_fwd's own scratch */
    char *ws = ws_get(c, lay.total, "linear layer scratch");
    if (lay.total && !ws) return;
    void *lowp = lay.x_lowp == SIZE_MAX ? NULL : ws + lay.x_lowp;
    void *qt = lay.qtile == SIZE_MAX ? NULL : ws + lay.qtile;
    size_t ny = (size_t)N * out;
    float beta = 0.0f;
    if (L->b && !dora) { /* DoRA adds the bias after scaling */
        WDISPATCH(dt, bias_rows_k<W><<<grid_for(c, ny), CUPLAN_BLOCK, 0, c->st>>>(y, (const W *)L->b, N, out));
        beta = 1.0f;
    }
    base_gemm(c, ot, L, lowp, qt, lay.qrows, x, N, beta, y);
    launched(c, "linear_fwd");
    if (!l) return;
    if (!dora) {
        cu_lora_fwd(be, L, y, xa, x, N); /* linear_fwd is the base then lora_fwd, as backend.h says */
        return;
    }
    const float *xd = lora_input(c, l, drop ? (float *)(ws + lay.drop) : NULL, x, (size_t)N * L->in);
    gemm(c, KB_F32, 0, 1, N, l->r, L->in, 1.0f, xd, L->in, l->A, L->in, 0.0f, xa, l->r);
    /* DoRA: y = lr_dora_out(x W^T, drop(x) W^T, scale xa B^T) per element */
    float *u = (float *)(ws + lay.dz), *zb = drop ? (float *)(ws + lay.zb) : NULL;
    gemm(c, KB_F32, 0, 1, N, out, l->r, l->scale, xa, l->r, l->B, l->r, 0.0f, u, out);
    if (drop) base_gemm(c, ot, L, lowp, qt, lay.qrows, xd, N, 0.0f, zb);
    WDISPATCH(dt, dora_out_k<W><<<grid_for(c, ny), CUPLAN_BLOCK, 0, c->st>>>(y, zb, u, l->mag, l->wnorm,
                                                                            (const W *)L->b, out, ny));
    launched(c, "linear_fwd dora");
}

static void cu_linear_bwd(kb_backend *be, const kb_linear *L, float *dx, int dx_acc, const float *dy, const float *x,
                          const float *xa, int N) {
    cu_impl *c = impl_of(be);
    if (c->failed || N <= 0) return;
    kb_dtype dt = operand_dtype(be, L);
    const kb_lora *l = L->lora;
    int drop = l && l->dropout > 0.0f, dora = l && l->mag, r = l ? l->r : 0, out = L->out;
    cuplan_linear lay;
    linear_layout(be, L, N, dora ? r : 0, drop, dora, 1, &lay); /* plain LoRA: lora_bwd's own scratch */
    char *ws = ws_get(c, lay.total, "linear layer scratch");
    if (lay.total && !ws) return;
    void *lowp = lay.x_lowp == SIZE_MAX ? NULL : ws + lay.x_lowp;
    void *qt = lay.qtile == SIZE_MAX ? NULL : ws + lay.qtile;
    int qr = lay.qrows;
    size_t ny = (size_t)N * out;
    float bx = dx_acc ? 1.0f : 0.0f;
    if (dx && !dora) input_grad(c, dt, L, lowp, qt, qr, dy, N, bx, dx);
    launched(c, "linear_bwd");
    if (!l) return;
    if (!dora) {
        cu_lora_bwd(be, L, dx, dy, x, xa, N); /* likewise the base then lora_bwd */
        return;
    }
    /* DoRA: d mag_j = sum_n dy[n,j] G[n,j] / wnorm_j with G = drop(x) W^T +
     * scale xa B^T (the pre-bias direction term); then G = s dy for the LoRA path */
    float *t = drop ? (float *)(ws + lay.drop) : NULL, *dh = (float *)(ws + lay.dh), *G = (float *)(ws + lay.dz);
    const float *xd = lora_input(c, l, t, x, (size_t)N * L->in);
    unsigned parts = (unsigned)((N + CUPLAN_DORA_ROWS - 1) / CUPLAN_DORA_ROWS), cols = (unsigned)((out + 127) / 128);
    double *part = (double *)(ws + lay.part);
    base_gemm(c, dt, L, lowp, qt, qr, xd, N, 0.0f, G);
    gemm(c, KB_F32, 0, 1, N, out, r, l->scale, xa, r, l->B, r, 1.0f, G, out);
    dora_dmag_part_k<<<dim3(cols, parts), 128, 0, c->st>>>(part, G, dy, l->mag, l->wnorm, N, out);
    dora_dmag_k<<<cols, 128, 0, c->st>>>(l->dmag, part, l->wnorm, (int)parts, out);
    launched(c, "linear_bwd dora");
    lora_path_grads(c, L, dh, G, xd, xa, N);
    if (dx && !drop) {
        input_grad(c, dt, L, lowp, qt, qr, G, N, bx, dx); /* the base path is scaled by s too */
    } else if (dx) {
        /* the undropped base path carries dy, the dropped one (s - 1) dy = G - dy */
        input_grad(c, dt, L, lowp, qt, qr, dy, N, bx, dx);
        sub_k<<<grid_for(c, ny), CUPLAN_BLOCK, 0, c->st>>>(G, dy, ny);
        input_grad(c, dt, L, lowp, qt, qr, G, N, 0.0f, t);
    }
    if (dx) lora_path_dx(c, L, dx, dh, t, 1, N);
    launched(c, "linear_bwd");
}

/* ---- LM head + cross-entropy ---- */

/* The rows whose target is not LR_IGNORE_INDEX, listed on the host (which
 * needs their count anyway): *buf (to free) holds the compacted targets
 * [0, nv) and then their row indexes [N, N + nv). Returns nv, or -1 when out
 * of host memory (recorded). */
static int valid_rows(kb_backend *be, const int32_t *targets, int N, int32_t **buf) {
    cu_impl *c = impl_of(be);
    int32_t *ht = (int32_t *)malloc((size_t)N * 2 * sizeof(int32_t));
    int nv = 0;
    *buf = ht;
    if (!ht) {
        fail(c, LR_E_NOMEM, "out of host memory for %d targets", N);
        return -1;
    }
    int32_t *rows = ht + N;
    cu_download(be, ht, targets, (size_t)N * sizeof(int32_t));
    for (int n = 0; n < N; n++)
        if (ht[n] != LR_IGNORE_INDEX) {
            ht[nv] = ht[n]; /* compacted targets, nv <= n */
            rows[nv++] = n;
        }
    return nv;
}

/* Sum of n f64 values of device memory, in order (as the CPU backend). */
static double sum_rows(kb_backend *be, const void *d, int n) {
    cu_impl *c = impl_of(be);
    double *h = (double *)malloc((size_t)(n > 0 ? n : 1) * sizeof(double)), s = 0;
    if (!h) {
        fail(c, LR_E_NOMEM, "out of host memory for %d losses", n);
        return NAN;
    }
    cu_download(be, h, d, (size_t)n * sizeof(double));
    for (int i = 0; i < n; i++) s += h[i];
    free(h);
    return s;
}

/* dW is never set here: this backend has no weight_grads (full fine-tuning
 * runs on the CPU backend only), and the model checks that first. */
static double cu_lmhead_ce(kb_backend *be, int64_t *n_valid, int64_t *n_correct, float *tok_loss, float *dx,
                           float *dW, const float *x, const void *W, const int32_t *targets, const float *tok_scale,
                           int N, int C, int V, float grad_scale, int chunk_rows) {
    (void)dW;
    cu_impl *c = impl_of(be);
    kb_dtype dt = be->weight_dtype;
    *n_valid = 0;
    if (n_correct) *n_correct = 0;
    if (c->failed || N <= 0) return NAN;
    int32_t *ht;
    double total = 0;
    char *ws = NULL;
    cuplan_ce lay;
    int nv = valid_rows(be, targets, N, &ht);
    if (nv < 0) goto out;
    *n_valid = nv;
    if (dx) cu_zero(be, dx, (size_t)N * C * sizeof(float));
    if (tok_loss) cu_zero(be, tok_loss, (size_t)N * sizeof(float));
    cuplan_ce_layout(dt, nv, C, V, chunk_rows, CUPLAN_CE_BUDGET, 0, &lay);
    if (nv) ws = ws_get(c, lay.total, "LM head logits");
    if (!nv || !ws || c->failed) goto out;
    cu_upload(be, ws + lay.rows, ht + N, (size_t)nv * sizeof(int32_t));
    cu_upload(be, ws + lay.tgt, ht, (size_t)nv * sizeof(int32_t));
    for (int c0 = 0; c0 < nv && !c->failed; c0 += lay.chunk) {
        int m = nv - c0 < lay.chunk ? nv - c0 : lay.chunk;
        const int32_t *rc = (const int32_t *)(ws + lay.rows) + c0;
        float *lg = (float *)(ws + lay.logits);
        void *xc = ws + lay.xc;
        WDISPATCH(dt, gather_k<W><<<grid_for(c, (size_t)m * C), CUPLAN_BLOCK, 0, c->st>>>((W *)xc, x, rc, m, C));
        gemm(c, dt, 0, 1, m, V, C, 1.0f, xc, C, W, C, 0.0f, lg, V);
        void *G = dx ? (dt == KB_F32 ? (void *)lg : (void *)(ws + lay.dlg)) : NULL;
        double *lossc = (double *)(ws + lay.loss) + c0;
        int32_t *hitc = n_correct ? (int32_t *)(ws + lay.hit) + c0 : NULL;
        const int32_t *tc = (const int32_t *)(ws + lay.tgt) + c0;
        WDISPATCH(dt, ce_rows_k<W><<<m, 1024, 0, c->st>>>(lossc, hitc, tok_loss, (W *)G, lg, tc, rc, tok_scale, V,
                                                          grad_scale));
        launched(c, "lmhead_ce");
        if (!dx) continue;
        float *dxc = (float *)(ws + lay.dxc);
        gemm(c, dt, 0, 0, m, C, V, 1.0f, G, V, W, C, 0.0f, dxc, C);
        scatter_k<<<grid_for(c, (size_t)m * C), CUPLAN_BLOCK, 0, c->st>>>(dx, dxc, rc, m, C);
        launched(c, "lmhead_ce backward");
    }
    total = sum_rows(be, ws + lay.loss, nv);
    if (n_correct && !c->failed) {
        /* the targets in ht are on the device: it takes the hits */
        cu_download(be, ht, ws + lay.hit, (size_t)nv * sizeof(int32_t));
        for (int i = 0; i < nv; i++) *n_correct += ht[i];
    }
out:
    free(ht);
    return c->failed ? NAN : total;
}

/* ---- LM head + KL to a reference ---- */

/* As lmhead_ce, with the reference rows gathered and multiplied alongside. */
static void cu_lmhead_ce_kl(kb_backend *be, double *ce_sum, double *kl_sum, int64_t *n_valid, int64_t *n_correct,
                            float *dx, const float *x, const float *x_ref, const void *W, const int32_t *targets,
                            int N, int C, int V, float tau, float kl_coef, float grad_scale, int chunk_rows) {
    cu_impl *c = impl_of(be);
    kb_dtype dt = be->weight_dtype;
    *n_valid = 0;
    if (n_correct) *n_correct = 0;
    *ce_sum = *kl_sum = NAN;
    if (c->failed || N <= 0) return;
    int32_t *ht;
    char *ws = NULL;
    cuplan_ce lay;
    int nv = valid_rows(be, targets, N, &ht);
    if (nv < 0) goto out;
    *n_valid = nv;
    if (dx) cu_zero(be, dx, (size_t)N * C * sizeof(float));
    cuplan_ce_layout(dt, nv, C, V, chunk_rows, CUPLAN_CE_BUDGET, 1, &lay);
    if (nv) ws = ws_get(c, lay.total, "LM head logits");
    if (!nv) *ce_sum = *kl_sum = 0;
    if (!nv || !ws || c->failed) goto out;
    cu_upload(be, ws + lay.rows, ht + N, (size_t)nv * sizeof(int32_t));
    cu_upload(be, ws + lay.tgt, ht, (size_t)nv * sizeof(int32_t));
    {
        double itau = 1.0 / tau, kc = kl_coef * itau;
        /* A 16-bit gradient is stored without grad_scale (1 / tokens would
         * push most of it below f16's range); the matmul applies it. */
        float w = dt == KB_F32 ? grad_scale : 1.0f, alpha = dt == KB_F32 ? 1.0f : grad_scale;
        for (int c0 = 0; c0 < nv && !c->failed; c0 += lay.chunk) {
            int m = nv - c0 < lay.chunk ? nv - c0 : lay.chunk;
            const int32_t *rc = (const int32_t *)(ws + lay.rows) + c0;
            float *lg = (float *)(ws + lay.logits), *lr = (float *)(ws + lay.ref);
            void *xc = ws + lay.xc, *xr = ws + lay.xr;
            unsigned gr = grid_for(c, (size_t)m * C);
            WDISPATCH(dt, gather_k<W><<<gr, CUPLAN_BLOCK, 0, c->st>>>((W *)xc, x, rc, m, C));
            WDISPATCH(dt, gather_k<W><<<gr, CUPLAN_BLOCK, 0, c->st>>>((W *)xr, x_ref, rc, m, C));
            gemm(c, dt, 0, 1, m, V, C, 1.0f, xc, C, W, C, 0.0f, lg, V);
            gemm(c, dt, 0, 1, m, V, C, 1.0f, xr, C, W, C, 0.0f, lr, V);
            void *G = dx ? (dt == KB_F32 ? (void *)lg : (void *)(ws + lay.dlg)) : NULL;
            double *cec = (double *)(ws + lay.loss) + c0, *klc = (double *)(ws + lay.klv) + c0;
            const int32_t *tc = (const int32_t *)(ws + lay.tgt) + c0;
            int32_t *hitc = n_correct ? (int32_t *)(ws + lay.hit) + c0 : NULL;
            WDISPATCH(dt, ce_kl_rows_k<W><<<m, 1024, 0, c->st>>>(cec, klc, hitc, (W *)G, lg, lr, tc, V, itau, kc, w));
            launched(c, "lmhead_ce_kl");
            if (!dx) continue;
            float *dxc = (float *)(ws + lay.dxc);
            gemm(c, dt, 0, 0, m, C, V, alpha, G, V, W, C, 0.0f, dxc, C);
            scatter_k<<<gr, CUPLAN_BLOCK, 0, c->st>>>(dx, dxc, rc, m, C);
            launched(c, "lmhead_ce_kl backward");
        }
    }
    *ce_sum = sum_rows(be, ws + lay.loss, nv);
    *kl_sum = sum_rows(be, ws + lay.klv, nv);
    if (n_correct && !c->failed) { /* the targets in ht are on the device: it takes the hits */
        cu_download(be, ht, ws + lay.hit, (size_t)nv * sizeof(int32_t));
        for (int i = 0; i < nv; i++) *n_correct += ht[i];
    }
out:
    free(ht);
    if (c->failed) *ce_sum = *kl_sum = NAN;
}

/* ---- optimizer and clipping ---- */

static void cu_adamw(kb_backend *be, float *p, const float *g, float *m, float *v, size_t n, const kb_adamw *hp) {
    float bc1 = (float)(1.0 - pow(hp->beta1, (double)hp->t));
    float bc2s = (float)sqrt(1.0 - pow(hp->beta2, (double)hp->t));
    ELEMWISE(be, n, "adamw", adamw_k, p, g, m, v, n, hp->lr, hp->beta1, hp->beta2, hp->eps, hp->weight_decay, bc1,
             bc2s);
}

static double cu_sumsq(kb_backend *be, const float *x, size_t n) {
    cu_impl *c = impl_of(be);
    if (c->failed) return NAN;
    if (!n) return 0.0;
    size_t nb = (n + CUPLAN_SUMSQ_BLOCK - 1) / CUPLAN_SUMSQ_BLOCK;
    double *part = (double *)ws_get(c, nb * sizeof(double), "sumsq scratch");
    double *h = (double *)malloc(nb * sizeof(double)), s = 0;
    if (!part || !h) {
        if (!h) fail(c, LR_E_NOMEM, "out of host memory");
        free(h);
        return NAN;
    }
    sumsq_k<<<(unsigned)nb, CUPLAN_BLOCK, 0, c->st>>>(part, x, n);
    launched(c, "sumsq");
    cu_download(be, h, part, nb * sizeof(double));
    for (size_t b = 0; b < nb; b++) s += h[b];
    free(h);
    return c->failed ? NAN : s;
}

/* ---- lifetime, errors, queries ---- */

static int cu_check(kb_backend *be, lr_err *err) {
    cu_impl *c = impl_of(be);
    cudaError_t e = cudaStreamQuery(c->st); /* surfaces a fault of work already finished */
    if (e != cudaSuccess && e != cudaErrorNotReady) cuda_ok(c, e, "a kernel");
    if (!c->failed) return 0;
    c->failed = 0;
    return lr_errp(err, c->code, NULL, "%s", c->msg);
}

static void cu_destroy(kb_backend *be) {
    cu_impl *c = impl_of(be);
    cudaStreamSynchronize(c->st);
    if (c->ws) cudaFreeAsync(c->ws, c->st);
    if (c->blas) cublasDestroy(c->blas);
    if (c->blas_ws) cudaFreeAsync(c->blas_ws, c->st);
    cudaStreamSynchronize(c->st);
    cudaStreamDestroy(c->st);
    cudaMemPoolTrimTo(c->pool, 0);
    free(c);
    free(be);
}

static int device_count(int *n, lr_err *err) {
    *n = 0;
    cudaError_t e = cudaGetDeviceCount(n);
    if (e != cudaSuccess) {
        cudaGetLastError();
        *n = 0;
        return lr_errp(err, LR_E_NOTFOUND, "backend", "no CUDA device found (cudaGetDeviceCount: %s)",
                       cudaGetErrorString(e));
    }
    if (*n <= 0) return lr_errp(err, LR_E_NOTFOUND, "backend", "no CUDA device found (cudaGetDeviceCount: 0 devices)");
    return 0;
}

static int describe(int i, kb_cuda_device *d, lr_err *err) {
    cudaDeviceProp p;
    memset(d, 0, sizeof *d);
    cudaError_t e = cudaGetDeviceProperties(&p, i);
    if (e != cudaSuccess) return lr_errf(err, "cuda:%d: cudaGetDeviceProperties: %s", i, cudaGetErrorString(e));
    d->index = i;
    snprintf(d->name, sizeof d->name, "%s", p.name);
    d->cc_major = p.major;
    d->cc_minor = p.minor;
    d->sm_count = p.multiProcessorCount;
    d->total_bytes = p.totalGlobalMem;
    cudaDeviceGetAttribute(&d->clock_khz, cudaDevAttrClockRate, i);
    int cur = 0;
    cudaGetDevice(&cur);
    size_t fr = 0, tot = 0;
    if (cudaSetDevice(i) == cudaSuccess && cudaMemGetInfo(&fr, &tot) == cudaSuccess) d->free_bytes = fr;
    cudaGetLastError();
    cudaSetDevice(cur);
    d->peak_bf16_flops = cuplan_peak_bf16(d->name, d->cc_major, d->cc_minor, d->sm_count, d->clock_khz);
    /* sm_80 code runs on every 8.x; sm_90 code on 9.0; nothing is built for later families */
    d->usable = d->cc_major == 8 || d->cc_major == 9;
    return 0;
}

extern "C" int kb_cuda_devices(kb_cuda_device *out, int max, lr_err *err) {
    int n;
    if (device_count(&n, err)) return -1;
    for (int i = 0; i < n && i < max; i++)
        if (describe(i, &out[i], err)) return -1;
    return n;
}

__global__ void hello_k(int *x) { *x = 1; }

static void set_smem(const void *fn, size_t bytes) {
    cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
}

extern "C" int kb_cuda_create(int device, kb_dtype wdt, kb_backend **out, lr_err *err) {
    *out = NULL;
    int n;
    if (device_count(&n, err)) return -1;
    if (device < 0 || device >= n)
        return lr_errp(err, LR_E_NOTFOUND, "backend", "cuda:%d: this machine has %d CUDA device%s (cuda:0..cuda:%d)",
                       device, n, n == 1 ? "" : "s", n - 1);
    kb_backend *be = (kb_backend *)calloc(1, sizeof *be);
    cu_impl *c = (cu_impl *)calloc(1, sizeof *c);
    int *probe = NULL;
    uint64_t keep = UINT64_MAX, zero = 0;
    cudaDeviceProp p;
    if (!be || !c) {
        free(be);
        free(c);
        return lr_errp(err, LR_E_NOMEM, NULL, "out of memory creating the CUDA backend");
    }
    snprintf(c->name, sizeof c->name, "cuda:%d", device);
    if (describe(device, &c->dev, err)) goto fail;
    if (!c->dev.usable) {
        lr_errp(err, LR_E_INVALID, "backend",
                "%s (%s) has compute capability %d.%d; this lora-worker has kernels for 8.x and 9.x (sm_80, sm_90)",
                c->name, c->dev.name, c->dev.cc_major, c->dev.cc_minor);
        goto fail;
    }
    if (cudaSetDevice(device) != cudaSuccess || cudaGetDeviceProperties(&p, device) != cudaSuccess ||
        cudaStreamCreateWithFlags(&c->st, cudaStreamNonBlocking) != cudaSuccess ||
        cudaDeviceGetDefaultMemPool(&c->pool, device) != cudaSuccess) {
        lr_errf(err, "%s: initialising the device: %s", c->name, cudaGetErrorString(cudaGetLastError()));
        goto fail;
    }
    c->smem_optin = p.sharedMemPerBlockOptin;
    cudaMemPoolSetAttribute(c->pool, cudaMemPoolAttrReleaseThreshold, &keep);
    cudaMemPoolSetAttribute(c->pool, cudaMemPoolAttrUsedMemHigh, &zero);
    /* one trivial launch: a device this binary has no kernels for fails here, clearly */
    if (cudaMallocAsync((void **)&probe, sizeof(int), c->st) != cudaSuccess) {
        lr_errf(err, "%s: cannot allocate device memory: %s", c->name, cudaGetErrorString(cudaGetLastError()));
        goto fail;
    }
    hello_k<<<1, 1, 0, c->st>>>(probe);
    {
        cudaError_t e = cudaGetLastError();
        if (e == cudaSuccess) e = cudaStreamSynchronize(c->st);
        cudaFreeAsync(probe, c->st);
        if (e != cudaSuccess) {
            lr_errf(err, "%s: test kernel failed: %s", c->name, cudaGetErrorString(e));
            goto fail;
        }
    }
    if (cublasCreate(&c->blas) != CUBLAS_STATUS_SUCCESS) {
        lr_errf(err, "%s: cublasCreate failed", c->name);
        goto fail;
    }
    c->blas_ws = pool_alloc(c, CUBLAS_WS_BYTES);
    if (!c->blas_ws || cublasSetStream(c->blas, c->st) != CUBLAS_STATUS_SUCCESS ||
        cublasSetWorkspace(c->blas, c->blas_ws, CUBLAS_WS_BYTES) != CUBLAS_STATUS_SUCCESS) {
        lr_errf(err, "%s: setting up cuBLAS failed", c->name);
        goto fail;
    }
    set_smem((const void *)attn_fwd_k<2>, c->smem_optin);
    set_smem((const void *)attn_fwd_k<4>, c->smem_optin);
    set_smem((const void *)attn_fwd_k<8>, c->smem_optin);
    set_smem((const void *)attn_kv_k<2>, c->smem_optin);
    set_smem((const void *)attn_kv_k<4>, c->smem_optin);
    set_smem((const void *)attn_kv_k<8>, c->smem_optin);
    set_smem((const void *)attn_dkv_k<2>, c->smem_optin);
    set_smem((const void *)attn_dkv_k<4>, c->smem_optin);
    set_smem((const void *)attn_dkv_k<8>, c->smem_optin);
    set_smem((const void *)attn_dq_k<2>, c->smem_optin);
    set_smem((const void *)attn_dq_k<4>, c->smem_optin);
    set_smem((const void *)attn_dq_k<8>, c->smem_optin);
    set_smem((const void *)tc_fwd_k<4>, c->smem_optin);
    set_smem((const void *)tc_fwd_k<8>, c->smem_optin);
    set_smem((const void *)tc_dkv_k<4>, c->smem_optin);
    set_smem((const void *)tc_dkv_k<8>, c->smem_optin);
    set_smem((const void *)tc_dq_k<4>, c->smem_optin);
    set_smem((const void *)tc_dq_k<8>, c->smem_optin);
    cudaGetLastError();

    be->name = c->name;
    be->weight_dtype = wdt;
    be->threads = 1;
    be->quant4 = 1;
    be->impl = c;
    be->alloc = cu_alloc;
    be->free = cu_free;
    be->upload = cu_upload;
    be->download = cu_download;
    be->zero = cu_zero;
    be->embed_fwd = cu_embed_fwd;
    be->embed_bwd = cu_embed_bwd;
    be->rmsnorm_fwd = cu_rmsnorm_fwd;
    be->rmsnorm_bwd = cu_rmsnorm_bwd;
    be->layernorm_fwd = cu_layernorm_fwd;
    be->layernorm_bwd = cu_layernorm_bwd;
    be->rope_fwd = cu_rope_fwd;
    be->rope_bwd = cu_rope_bwd;
    be->attn_fwd = cu_attn_fwd;
    be->attn_bwd = cu_attn_bwd;
    be->attn_kv_fwd = cu_attn_kv_fwd;
    be->swiglu_fwd = cu_swiglu_fwd;
    be->swiglu_bwd = cu_swiglu_bwd;
    be->gelu_fwd = cu_gelu_fwd;
    be->gelu_bwd = cu_gelu_bwd;
    be->add = cu_add;
    be->linear_fwd = cu_linear_fwd;
    be->linear_bwd = cu_linear_bwd;
    be->lora_fwd = cu_lora_fwd;
    be->lora_bwd = cu_lora_bwd;
    be->lmhead_ce = cu_lmhead_ce;
    be->lmhead_ce_kl = cu_lmhead_ce_kl;
    be->dora_norm = cu_dora_norm;
    be->adamw = cu_adamw;
    be->sumsq = cu_sumsq;
    be->scale = cu_scale;
    be->destroy = cu_destroy;
    be->check = cu_check;
    *out = be;
    return 0;
fail:
    if (c->blas) cublasDestroy(c->blas);
    if (c->st) {
        if (c->blas_ws) cudaFreeAsync(c->blas_ws, c->st);
        cudaStreamSynchronize(c->st);
        cudaStreamDestroy(c->st);
    }
    cudaGetLastError();
    free(c);
    free(be);
    return -1;
}

extern "C" int kb_cuda_create_named(const char *name, kb_backend **out, lr_err *err) {
    int dev;
    *out = NULL;
    if (cuplan_parse_device(name, &dev, err)) return -1;
    return kb_cuda_create(dev, KB_BF16, out, err);
}

static int is_cuda(kb_backend *be) { return be && be->destroy == cu_destroy; }

extern "C" int kb_cuda_meminfo(kb_backend *be, kb_cuda_mem *o) {
    memset(o, 0, sizeof *o);
    if (!is_cuda(be)) return -1;
    cu_impl *c = impl_of(be);
    uint64_t cur = 0, high = 0;
    cudaMemPoolGetAttribute(c->pool, cudaMemPoolAttrUsedMemCurrent, &cur);
    cudaMemPoolGetAttribute(c->pool, cudaMemPoolAttrUsedMemHigh, &high);
    o->used_bytes = cur;
    o->peak_bytes = high;
    cudaMemGetInfo(&o->free_bytes, &o->total_bytes);
    return 0;
}

extern "C" const kb_cuda_device *kb_cuda_device_of(kb_backend *be) { return is_cuda(be) ? &impl_of(be)->dev : NULL; }

extern "C" int kb_cuda_sync(kb_backend *be, lr_err *err) {
    if (!is_cuda(be)) return 0;
    cu_impl *c = impl_of(be);
    cuda_ok(c, cudaStreamSynchronize(c->st), "synchronising");
    return cu_check(be, err);
}
