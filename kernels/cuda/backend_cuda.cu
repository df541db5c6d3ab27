/* backend_cuda: the kb_backend ops on an NVIDIA GPU.
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
 * DoRA's row norms, output and magnitude gradient, and the KL head's per-row
 * ce / kl / gradient, are kernels around elem.h's helpers (the CPU backend's
 * formulas); their cross-row sums run in fixed-size blocks added in order,
 * never with float atomics.
 *
 * Failures inside ops (scratch out of memory, a cuBLAS or launch error) are
 * recorded once, make the following ops no-ops, and come out of check(). */
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

#define GRID_STRIDE(i, n) for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n); i += (size_t)gridDim.x * blockDim.x)

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
__device__ __forceinline__ double warp_sumd(double v) {
    for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
/* Sum over the block (blockDim.x a multiple of 32, at most 1024), same value in every thread. */
__device__ double block_sumd(double v, double *sh) {
    int w = threadIdx.x >> 5, l = threadIdx.x & 31, nw = blockDim.x >> 5;
    v = warp_sumd(v);
    __syncthreads(); /* sh may still be read by a previous call */
    if (!l) sh[w] = v;
    __syncthreads();
    if (w == 0) {
        double t = l < nw ? sh[l] : 0.0;
        t = warp_sumd(t);
        if (!l) sh[32] = t;
    }
    __syncthreads();
    return sh[32];
}
__device__ float block_maxf(float v, float *sh) {
    int w = threadIdx.x >> 5, l = threadIdx.x & 31, nw = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (!l) sh[w] = v;
    __syncthreads();
    if (w == 0) {
        float t = l < nw ? sh[l] : -INFINITY;
        t = warp_max(t);
        if (!l) sh[32] = t;
    }
    __syncthreads();
    return sh[32];
}

static unsigned grid_for(cu_impl *c, size_t n) { return cuplan_grid(n, CUPLAN_BLOCK, c->dev.sm_count); }

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

template <typename W>
__global__ void embed_fwd_k(float *out, const int32_t *ids, const W *wte, const W *wpe, int T, int C) {
    int n = blockIdx.x;
    size_t e = (size_t)ids[n] * C, p = (size_t)(n % T) * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x)
        out[(size_t)n * C + c] = wpe ? ldw(wte, e + c) + ldw(wpe, p + c) : ldw(wte, e + c);
}
static void cu_embed_fwd(kb_backend *be, float *out, const int32_t *ids, const void *wte, const void *wpe, int N,
                         int T, int C) {
    cu_impl *c = impl_of(be);
    if (c->failed || N <= 0) return;
    WDISPATCH(be->weight_dtype,
              embed_fwd_k<W><<<N, CUPLAN_BLOCK, 0, c->st>>>(out, ids, (const W *)wte, (const W *)wpe, T, C));
    launched(c, "embed_fwd");
}

/* One thread per column, tokens in order: the sums are the CPU backend's, bit for bit. */
__global__ void embed_bwd_k(float *dwte, float *dwpe, const float *dout, const int32_t *ids, int N, int T, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    for (int n = 0; n < N; n++) {
        float d = dout[(size_t)n * C + c];
        if (dwte) dwte[(size_t)ids[n] * C + c] += d;
        if (dwpe) dwpe[(size_t)(n % T) * C + c] += d;
    }
}
static void cu_embed_bwd(kb_backend *be, float *dwte, float *dwpe, const float *dout, const int32_t *ids, int N,
                         int T, int C) {
    cu_impl *c = impl_of(be);
    if (c->failed || N <= 0 || (!dwte && !dwpe)) return;
    embed_bwd_k<<<(C + 127) / 128, 128, 0, c->st>>>(dwte, dwpe, dout, ids, N, T, C);
    launched(c, "embed_bwd");
}

/* ---- norms ---- */

template <typename W>
__global__ void rmsnorm_fwd_k(float *out, float *rstd, const float *x, const W *w, int C, float eps) {
    __shared__ double sh[33];
    int n = blockIdx.x;
    const float *xr = x + (size_t)n * C;
    double ss = 0;
    for (int c = threadIdx.x; c < C; c += blockDim.x) ss += (double)xr[c] * xr[c];
    ss = block_sumd(ss, sh);
    float r = 1.0f / sqrtf((float)(ss / C) + eps);
    if (!threadIdx.x) rstd[n] = r;
    for (int c = threadIdx.x; c < C; c += blockDim.x) out[(size_t)n * C + c] = lr_rmsnorm_elem(xr[c], r, ldw(w, c));
}
static void cu_rmsnorm_fwd(kb_backend *be, float *out, float *rstd, const float *x, const void *w, int N, int C,
                           float eps) {
    cu_impl *c = impl_of(be);
    if (c->failed || N <= 0) return;
    WDISPATCH(be->weight_dtype, rmsnorm_fwd_k<W><<<N, CUPLAN_BLOCK, 0, c->st>>>(out, rstd, x, (const W *)w, C, eps));
    launched(c, "rmsnorm_fwd");
}

template <typename W>
__global__ void rmsnorm_bwd_k(float *dx, const float *dout, const float *x, const W *w, const float *rstd, int C) {
    __shared__ double sh[33];
    int n = blockIdx.x;
    const float *xr = x + (size_t)n * C, *dy = dout + (size_t)n * C;
    float r = rstd[n];
    double dot = 0;
    for (int c = threadIdx.x; c < C; c += blockDim.x) dot += (double)dy[c] * ldw(w, c) * xr[c];
    dot = block_sumd(dot, sh);
    float k = (float)(dot / C) * r * r * r;
    for (int c = threadIdx.x; c < C; c += blockDim.x) dx[(size_t)n * C + c] += r * ldw(w, c) * dy[c] - k * xr[c];
}
/* Weight gradients: one thread per column, rows in order. */
__global__ void rmsnorm_dw_k(float *dw, const float *dout, const float *x, const float *rstd, int N, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    double s = 0;
    for (int n = 0; n < N; n++) s += (double)dout[(size_t)n * C + c] * x[(size_t)n * C + c] * rstd[n];
    dw[c] += (float)s;
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

template <typename W>
__global__ void layernorm_fwd_k(float *out, float *mean, float *rstd, const float *x, const W *w, const W *b, int C,
                                float eps) {
    __shared__ double sh[33];
    int n = blockIdx.x;
    const float *xr = x + (size_t)n * C;
    double s = 0;
    for (int c = threadIdx.x; c < C; c += blockDim.x) s += xr[c];
    double mu = block_sumd(s, sh) / C;
    double ss = 0;
    for (int c = threadIdx.x; c < C; c += blockDim.x) ss += (xr[c] - mu) * (xr[c] - mu);
    ss = block_sumd(ss, sh);
    float m = (float)mu, r = 1.0f / sqrtf((float)(ss / C) + eps);
    if (!threadIdx.x) {
        mean[n] = m;
        rstd[n] = r;
    }
    for (int c = threadIdx.x; c < C; c += blockDim.x)
        out[(size_t)n * C + c] = lr_layernorm_elem(xr[c], m, r, ldw(w, c), b ? ldw(b, c) : 0.0f);
}
static void cu_layernorm_fwd(kb_backend *be, float *out, float *mean, float *rstd, const float *x, const void *w,
                             const void *b, int N, int C, float eps) {
    cu_impl *c = impl_of(be);
    if (c->failed || N <= 0) return;
    WDISPATCH(be->weight_dtype, layernorm_fwd_k<W><<<N, CUPLAN_BLOCK, 0, c->st>>>(out, mean, rstd, x, (const W *)w,
                                                                                (const W *)b, C, eps));
    launched(c, "layernorm_fwd");
}

template <typename W>
__global__ void layernorm_bwd_k(float *dx, const float *dout, const float *x, const W *w, const float *mean,
                                const float *rstd, int C) {
    __shared__ double sh[33];
    int n = blockIdx.x;
    const float *xr = x + (size_t)n * C, *dy = dout + (size_t)n * C;
    float m = mean[n], r = rstd[n];
    double sg = 0, sgx = 0;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float gc = dy[c] * ldw(w, c);
        sg += gc;
        sgx += (double)gc * (xr[c] - m) * r;
    }
    sg = block_sumd(sg, sh);
    sgx = block_sumd(sgx, sh);
    float mg = (float)(sg / C), mgx = (float)(sgx / C);
    for (int c = threadIdx.x; c < C; c += blockDim.x)
        dx[(size_t)n * C + c] += r * (dy[c] * ldw(w, c) - mg - (xr[c] - m) * r * mgx);
}
__global__ void layernorm_dwb_k(float *dw, float *db, const float *dout, const float *x, const float *mean,
                                const float *rstd, int N, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    double sw = 0, sb = 0;
    for (int n = 0; n < N; n++) {
        float dy = dout[(size_t)n * C + c];
        sw += (double)dy * (x[(size_t)n * C + c] - mean[n]) * rstd[n];
        sb += dy;
    }
    if (dw) dw[c] += (float)sw;
    if (db) db[c] += (float)sb;
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

__global__ void rope_k(float *x, int ld, const float *cs, const float *sn, int N, int T, int H, int D, float sign) {
    int half = D / 2;
    size_t total = (size_t)N * H * half;
    GRID_STRIDE(e, total) {
        int i = (int)(e % half);
        size_t nh = e / half;
        int h = (int)(nh % H), n = (int)(nh / H);
        float *v = x + (size_t)n * ld + (size_t)h * D;
        size_t t = (size_t)(n % T) * half + i;
        lr_rope_pair(&v[i], &v[i + half], cs[t], sign * sn[t]);
    }
}
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

/* ---- tensor-core helpers ----
 * mma.sync m16n8k16 with bf16 operands and f32 accumulators. Fragment
 * layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16"), lane = 4 g + t:
 *   A (16 x 16, row-major), four 32-bit registers of two bf16:
 *     {row g, cols 2t, 2t+1}, {row g+8, cols 2t, 2t+1},
 *     {row g, cols 2t+8, 2t+9}, {row g+8, cols 2t+8, 2t+9};
 *   B (16 x 8, k x n), two registers: {k 2t, 2t+1; col g}, {k 2t+8, 2t+9; col g};
 *   C, D (16 x 8 f32): {row g: cols 2t, 2t+1}, {row g+8: cols 2t, 2t+1}.
 * The lower-indexed element sits in the low 16 bits. So two adjacent C
 * tiles, rounded and packed, are an A fragment (P V without a trip through
 * shared memory), and a pair of a row-major tile's neighbouring elements is
 * one 32-bit shared load. The host emulation test supplies its own tc_mma,
 * tc_bf16 and ld32 (the kernels use nothing else of the hardware). */
__device__ __forceinline__ void tc_mma(float *d, const uint32_t *a, uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}
__device__ __forceinline__ uint16_t tc_bf16(float x) { return __bfloat16_as_ushort(__float2bfloat16_rn(x)); }
__device__ __forceinline__ uint32_t ld32(const uint16_t *p) { return *(const uint32_t *)p; }

/* ---- attention ---- */

#define AR CUPLAN_ATT_ROWS
#define ATHREADS (CUPLAN_ATT_WARPS * 32)

/* Copies rows [r0, r0 + AR) of a head slice (row stride ld) into a shared
 * tile with row stride lds; rows past T are zero. */
__device__ __forceinline__ void load_tile(float *dst, int lds, const float *src, size_t ld, int r0, int T, int D) {
    for (int e = threadIdx.x; e < AR * D; e += blockDim.x) {
        int i = e / D, d = e - i * D;
        dst[i * lds + d] = r0 + i < T ? src[(size_t)(r0 + i) * ld + d] : 0.0f;
    }
}

/* The attention kernels take the window W in 1..T (T: plain causal):
 * query i sees keys (i - W, i]. Tile rows past T (padding) see nothing. */
__device__ __forceinline__ bool attn_sees(int qi, int kj, int T, int W) { return qi < T && kj <= qi && qi - kj < W; }

/* Forward: grid (q tiles, B*Hq). Shared: Q [AR][D], K [AR][D+1], V [AR][D]. */
template <int DC>
__global__ void __launch_bounds__(ATHREADS) attn_fwd_k(float *out, float *lse, const float *q, const float *k,
                                                       const float *v, int ldq, int ldkv, int T, int Hq, int Hkv,
                                                       int D, int W, float scale) {
    extern __shared__ float sm[];
    float *Qs = sm, *Ks = Qs + AR * D, *Vs = Ks + AR * (D + 1);
    int bh = blockIdx.y, b = bh / Hq, h = bh % Hq, kvh = h / (Hq / Hkv);
    int q0 = blockIdx.x * AR, warp = threadIdx.x >> 5, lane = threadIdx.x & 31, r0 = warp * 8;
    const float *qb = q + (size_t)b * T * ldq + (size_t)h * D;
    const float *kb = k + (size_t)b * T * ldkv + (size_t)kvh * D;
    const float *vb = v + (size_t)b * T * ldkv + (size_t)kvh * D;
    load_tile(Qs, D, qb, ldq, q0, T, D);
    float m[8], l[8], o[8][DC];
#pragma unroll
    for (int r = 0; r < 8; r++) {
        m[r] = -INFINITY;
        l[r] = 0.0f;
#pragma unroll
        for (int c = 0; c < DC; c++) o[r][c] = 0.0f;
    }
    /* key tiles from the one holding the tile's first row's first key */
    int kend = min(q0 + AR, T), kbeg = max(q0 - W + 1, 0) / AR * AR;
    for (int k0 = kbeg; k0 < kend; k0 += AR) {
        __syncthreads();
        load_tile(Ks, D + 1, kb, ldkv, k0, T, D);
        load_tile(Vs, D, vb, ldkv, k0, T, D);
        __syncthreads();
        float s[8];
#pragma unroll
        for (int r = 0; r < 8; r++) s[r] = 0.0f;
        const float *kr = Ks + lane * (D + 1);
        for (int d = 0; d < D; d++) {
            float kd = kr[d];
#pragma unroll
            for (int r = 0; r < 8; r++) s[r] += Qs[(r0 + r) * D + d] * kd;
        }
        int kj = k0 + lane;
#pragma unroll
        for (int r = 0; r < 8; r++) {
            int qi = q0 + r0 + r;
            float sv = attn_sees(qi, kj, T, W) ? s[r] * scale : -INFINITY;
            float mnew = fmaxf(m[r], warp_max(sv));
            /* with a window, a row may have seen no key yet (mnew = -inf):
             * then p and alpha are 0, not exp(-inf + inf); the last tile
             * holds key qi itself, so l > 0 at the end */
            float mref = mnew == -INFINITY ? 0.0f : mnew;
            float p = expf(sv - mref), alpha = expf(m[r] - mref);
            l[r] = l[r] * alpha + warp_sum(p);
            m[r] = mnew;
#pragma unroll
            for (int c = 0; c < DC; c++) o[r][c] *= alpha;
            s[r] = p;
        }
        for (int j = 0; j < AR; j++) {
            float pj[8];
#pragma unroll
            for (int r = 0; r < 8; r++) pj[r] = __shfl_sync(0xffffffffu, s[r], j);
#pragma unroll
            for (int c = 0; c < DC; c++) {
                int d = lane + 32 * c;
                if (d < D) {
                    float vv = Vs[j * D + d];
#pragma unroll
                    for (int r = 0; r < 8; r++) o[r][c] += pj[r] * vv;
                }
            }
        }
    }
    int ldo = Hq * D;
#pragma unroll
    for (int r = 0; r < 8; r++) {
        int qi = q0 + r0 + r;
        if (qi >= T) continue;
        float inv = 1.0f / l[r];
        float *orow = out + (size_t)(b * T + qi) * ldo + (size_t)h * D;
#pragma unroll
        for (int c = 0; c < DC; c++)
            if (lane + 32 * c < D) orow[lane + 32 * c] = o[r][c] * inv;
        if (!lane) lse[(size_t)bh * T + qi] = m[r] + logf(l[r]);
    }
}

/* di[bh*T + t] = rowsum(dout * out) of one head: one warp per row. */
__global__ void attn_di_k(float *di, const float *dout, const float *out, int B, int T, int Hq, int D) {
    size_t rows = (size_t)B * Hq * T;
    size_t wid = (blockIdx.x * (size_t)blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    size_t nw = ((size_t)gridDim.x * blockDim.x) >> 5;
    for (size_t row = wid; row < rows; row += nw) {
        int t = (int)(row % T);
        size_t bh = row / T;
        int h = (int)(bh % Hq), b = (int)(bh / Hq);
        size_t off = (size_t)(b * T + t) * Hq * D + (size_t)h * D;
        float s = 0.0f;
        for (int d = lane; d < D; d += 32) s += dout[off + d] * out[off + d];
        s = warp_sum(s);
        if (!lane) di[row] = s;
    }
}

/* dK, dV: grid (key tiles, B*Hkv); the G query heads of the group are
 * summed here. Shared: K [AR][D], V [AR][D], Q [AR][D+1], dO [AR][D+1],
 * lse [AR], di [AR]. */
template <int DC>
__global__ void __launch_bounds__(ATHREADS) attn_dkv_k(float *dk, float *dv, const float *dout, const float *lse,
                                                       const float *di, const float *q, const float *k,
                                                       const float *v, int ldq, int ldkv, int T, int Hq, int Hkv,
                                                       int D, int W, float scale) {
    extern __shared__ float sm[];
    float *Ks = sm, *Vs = Ks + AR * D, *Qs = Vs + AR * D, *Os = Qs + AR * (D + 1), *Ls = Os + AR * (D + 1),
          *Di = Ls + AR;
    int G = Hq / Hkv, b = blockIdx.y / Hkv, kvh = blockIdx.y % Hkv, ldo = Hq * D;
    int k0 = blockIdx.x * AR, warp = threadIdx.x >> 5, lane = threadIdx.x & 31, r0 = warp * 8;
    load_tile(Ks, D, k + (size_t)b * T * ldkv + (size_t)kvh * D, ldkv, k0, T, D);
    load_tile(Vs, D, v + (size_t)b * T * ldkv + (size_t)kvh * D, ldkv, k0, T, D);
    float gk[8][DC], gv[8][DC];
#pragma unroll
    for (int r = 0; r < 8; r++)
#pragma unroll
        for (int c = 0; c < DC; c++) gk[r][c] = gv[r][c] = 0.0f;
    /* queries up to the tile's last key + W - 1 */
    int qend = min(T, k0 + AR - 1 + W);
    for (int g = 0; g < G; g++) {
        int h = kvh * G + g;
        size_t bh = (size_t)b * Hq + h;
        for (int q0 = k0; q0 < qend; q0 += AR) {
            __syncthreads();
            load_tile(Qs, D + 1, q + (size_t)b * T * ldq + (size_t)h * D, ldq, q0, T, D);
            load_tile(Os, D + 1, dout + (size_t)b * T * ldo + (size_t)h * D, ldo, q0, T, D);
            if (threadIdx.x < AR) {
                int qi = q0 + threadIdx.x;
                Ls[threadIdx.x] = qi < T ? lse[bh * T + qi] : 0.0f;
                Di[threadIdx.x] = qi < T ? di[bh * T + qi] : 0.0f;
            }
            __syncthreads();
            float s[8], dp[8];
#pragma unroll
            for (int r = 0; r < 8; r++) s[r] = dp[r] = 0.0f;
            const float *qr = Qs + lane * (D + 1), *orr = Os + lane * (D + 1);
            for (int d = 0; d < D; d++) {
                float qd = qr[d], od = orr[d];
#pragma unroll
                for (int r = 0; r < 8; r++) {
                    s[r] += Ks[(r0 + r) * D + d] * qd;
                    dp[r] += Vs[(r0 + r) * D + d] * od;
                }
            }
            int qi = q0 + lane;
#pragma unroll
            for (int r = 0; r < 8; r++) {
                int kj = k0 + r0 + r;
                float p = attn_sees(qi, kj, T, W) ? expf(s[r] * scale - Ls[lane]) : 0.0f;
                dp[r] = p * (dp[r] - Di[lane]);
                s[r] = p;
            }
            for (int j = 0; j < AR; j++) {
                float pj[8], sj[8];
#pragma unroll
                for (int r = 0; r < 8; r++) {
                    pj[r] = __shfl_sync(0xffffffffu, s[r], j);
                    sj[r] = __shfl_sync(0xffffffffu, dp[r], j);
                }
#pragma unroll
                for (int c = 0; c < DC; c++) {
                    int d = lane + 32 * c;
                    if (d < D) {
                        float od = Os[j * (D + 1) + d], qd = Qs[j * (D + 1) + d];
#pragma unroll
                        for (int r = 0; r < 8; r++) {
                            gv[r][c] += pj[r] * od;
                            gk[r][c] += sj[r] * qd;
                        }
                    }
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < 8; r++) {
        int kj = k0 + r0 + r;
        if (kj >= T) continue;
        size_t off = (size_t)(b * T + kj) * ldkv + (size_t)kvh * D;
#pragma unroll
        for (int c = 0; c < DC; c++) {
            int d = lane + 32 * c;
            if (d < D) {
                dk[off + d] = gk[r][c] * scale;
                dv[off + d] = gv[r][c];
            }
        }
    }
}

/* dQ: grid (q tiles, B*Hq). Shared: Q [AR][D], dO [AR][D], K [AR][D+1], V [AR][D+1]. */
template <int DC>
__global__ void __launch_bounds__(ATHREADS) attn_dq_k(float *dq, const float *dout, const float *lse,
                                                      const float *di, const float *q, const float *k,
                                                      const float *v, int ldq, int ldkv, int T, int Hq, int Hkv,
                                                      int D, int W, float scale) {
    extern __shared__ float sm[];
    float *Qs = sm, *Os = Qs + AR * D, *Ks = Os + AR * D, *Vs = Ks + AR * (D + 1);
    int bh = blockIdx.y, b = bh / Hq, h = bh % Hq, kvh = h / (Hq / Hkv), ldo = Hq * D;
    int q0 = blockIdx.x * AR, warp = threadIdx.x >> 5, lane = threadIdx.x & 31, r0 = warp * 8;
    load_tile(Qs, D, q + (size_t)b * T * ldq + (size_t)h * D, ldq, q0, T, D);
    load_tile(Os, D, dout + (size_t)b * T * ldo + (size_t)h * D, ldo, q0, T, D);
    const float *kb = k + (size_t)b * T * ldkv + (size_t)kvh * D;
    const float *vb = v + (size_t)b * T * ldkv + (size_t)kvh * D;
    float lr[8], dr[8], acc[8][DC];
#pragma unroll
    for (int r = 0; r < 8; r++) {
        int qi = q0 + r0 + r;
        lr[r] = qi < T ? lse[(size_t)bh * T + qi] : 0.0f;
        dr[r] = qi < T ? di[(size_t)bh * T + qi] : 0.0f;
#pragma unroll
        for (int c = 0; c < DC; c++) acc[r][c] = 0.0f;
    }
    int kend = min(q0 + AR, T), kbeg = max(q0 - W + 1, 0) / AR * AR;
    for (int k0 = kbeg; k0 < kend; k0 += AR) {
        __syncthreads();
        load_tile(Ks, D + 1, kb, ldkv, k0, T, D);
        load_tile(Vs, D + 1, vb, ldkv, k0, T, D);
        __syncthreads();
        float s[8], dp[8];
#pragma unroll
        for (int r = 0; r < 8; r++) s[r] = dp[r] = 0.0f;
        const float *kr = Ks + lane * (D + 1), *vr = Vs + lane * (D + 1);
        for (int d = 0; d < D; d++) {
            float kd = kr[d], vd = vr[d];
#pragma unroll
            for (int r = 0; r < 8; r++) {
                s[r] += Qs[(r0 + r) * D + d] * kd;
                dp[r] += Os[(r0 + r) * D + d] * vd;
            }
        }
        int kj = k0 + lane;
#pragma unroll
        for (int r = 0; r < 8; r++) {
            int qi = q0 + r0 + r;
            float p = attn_sees(qi, kj, T, W) ? expf(s[r] * scale - lr[r]) : 0.0f;
            s[r] = p * (dp[r] - dr[r]);
        }
        for (int j = 0; j < AR; j++) {
            float sj[8];
#pragma unroll
            for (int r = 0; r < 8; r++) sj[r] = __shfl_sync(0xffffffffu, s[r], j);
#pragma unroll
            for (int c = 0; c < DC; c++) {
                int d = lane + 32 * c;
                if (d < D) {
                    float kd = Ks[j * (D + 1) + d];
#pragma unroll
                    for (int r = 0; r < 8; r++) acc[r][c] += sj[r] * kd;
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < 8; r++) {
        int qi = q0 + r0 + r;
        if (qi >= T) continue;
        float *row = dq + (size_t)(b * T + qi) * ldq + (size_t)h * D;
#pragma unroll
        for (int c = 0; c < DC; c++)
            if (lane + 32 * c < D) row[lane + 32 * c] = acc[r][c] * scale;
    }
}

/* ---- tensor-core attention (see plan.h: CUPLAN_TC_*) ---- */

#define TR CUPLAN_TC_ROWS
#define TQ CUPLAN_TC_DKV_Q
#define TPAD CUPLAN_TC_PAD

__device__ __forceinline__ uint32_t tc_pack(float lo, float hi) {
    return (uint32_t)tc_bf16(lo) | (uint32_t)tc_bf16(hi) << 16;
}

/* Rows [r0, r0 + n) of a head slice (f32, row stride ld) as bf16 rows of
 * stride lds; rows past T are zero. */
__device__ __forceinline__ void tc_rows(uint16_t *dst, int lds, const float *src, size_t ld, int r0, int n, int T,
                                        int D) {
    int hp = D / 2;
    for (int e = threadIdx.x; e < n * hp; e += blockDim.x) {
        int i = e / hp, d = (e - i * hp) * 2;
        const float *p = src + (size_t)(r0 + i) * ld + d;
        int in = r0 + i < T;
        *(uint32_t *)(dst + i * lds + d) = tc_pack(in ? p[0] : 0.0f, in ? p[1] : 0.0f);
    }
}

/* The same rows transposed: dst[d * lds + i]. */
__device__ __forceinline__ void tc_cols(uint16_t *dst, int lds, const float *src, size_t ld, int r0, int n, int T,
                                        int D) {
    for (int e = threadIdx.x; e < n * D; e += blockDim.x) {
        int i = e / D, d = e - i * D;
        dst[d * lds + i] = tc_bf16(r0 + i < T ? src[(size_t)(r0 + i) * ld + d] : 0.0f);
    }
}

/* The A fragment of the 16 x 16 block at p (row stride ld). */
__device__ __forceinline__ void tc_frag_a(uint32_t *a, const uint16_t *p, int ld, int g, int t) {
    a[0] = ld32(p + g * ld + 2 * t);
    a[1] = ld32(p + (g + 8) * ld + 2 * t);
    a[2] = ld32(p + g * ld + 2 * t + 8);
    a[3] = ld32(p + (g + 8) * ld + 2 * t + 8);
}

/* C tiles 2j and 2j + 1 (16 x 16 together) as an A fragment. */
__device__ __forceinline__ void tc_c2a(uint32_t *a, const float (*c)[4], int j) {
    a[0] = tc_pack(c[2 * j][0], c[2 * j][1]);
    a[1] = tc_pack(c[2 * j][2], c[2 * j][3]);
    a[2] = tc_pack(c[2 * j + 1][0], c[2 * j + 1][1]);
    a[3] = tc_pack(c[2 * j + 1][2], c[2 * j + 1][3]);
}

/* acc[NT] += A (16 x 16 rows of a16 via its fragment) times the NT 8-column
 * tiles of B, where B's column n, rows k..k+1 are a pair at bt + n * ldb + k
 * (B stored transposed: K rows for S = Q K^T, V^T rows for P V). */
template <int NT>
__device__ __forceinline__ void tc_mma_row(float (*acc)[4], const uint32_t *a, const uint16_t *bt, int ldb, int D,
                                           int g, int t) {
#pragma unroll
    for (int n = 0; n < NT; n++)
        if (n * 8 < D) {
            const uint16_t *p = bt + (n * 8 + g) * ldb + 2 * t;
            tc_mma(acc[n], a, ld32(p), ld32(p + 8));
        }
}

template <int NT> __device__ __forceinline__ void tc_zero(float (*c)[4]) {
#pragma unroll
    for (int n = 0; n < NT; n++)
#pragma unroll
        for (int i = 0; i < 4; i++) c[n][i] = 0.0f;
}

/* acc[NT] += X Y^T for X the 16 rows at x and Y the NT * 8 rows at y, both
 * D wide (S = Q K^T, dP = dO V^T and their transposes). */
template <int KD, int NT>
__device__ __forceinline__ void tc_xyt(float (*acc)[4], const uint16_t *x, int ldx, const uint16_t *y, int ldy, int D,
                                       int g, int t) {
#pragma unroll
    for (int kk = 0; kk < KD; kk++)
        if (kk * 16 < D) {
            uint32_t a[4];
            tc_frag_a(a, x + kk * 16, ldx, g, t);
            tc_mma_row<NT>(acc, a, y + kk * 16, ldy, NT * 8, g, t);
        }
}

/* acc[NT] (16 x D) += C Z for C the KN 8-column accumulator tiles c (16 x
 * 8 KN, rounded to bf16) and Z given transposed at zt (D rows of 8 KN):
 * P V, dS K, P^T dO, dS^T Q. */
template <int KN, int NT>
__device__ __forceinline__ void tc_cz(float (*acc)[4], const float (*c)[4], const uint16_t *zt, int ldz, int D,
                                      int g, int t) {
#pragma unroll
    for (int kk = 0; kk < KN / 2; kk++) {
        uint32_t a[4];
        tc_c2a(a, c, kk);
        tc_mma_row<NT>(acc, a, zt + kk * 16, ldz, D, g, t);
    }
}

/* Forward: grid (T tiles, B*Hq). A warp owns 16 query rows; per key tile,
 * S = Q K^T (16 x 64) stays in registers, the online softmax runs on it
 * (a row's 64 values live in the 4 lanes of a quad), and P V adds into O. */
template <int KD>
__global__ void __launch_bounds__(128) tc_fwd_k(float *out, float *lse, const float *q, const float *k,
                                                const float *v, int ldq, int ldkv, int T, int Hq, int Hkv, int D,
                                                int W, float scale) {
    extern __shared__ uint16_t tsm[];
    const int LD = D + TPAD, LT = TR + TPAD;
    uint16_t *Qs = tsm, *Ks = Qs + TR * LD, *Vt = Ks + TR * LD;
    int bh = blockIdx.y, b = bh / Hq, h = bh % Hq, kvh = h / (Hq / Hkv);
    int q0 = blockIdx.x * TR, w0 = (threadIdx.x >> 5) * 16, g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
    const float *kb = k + (size_t)b * T * ldkv + (size_t)kvh * D;
    const float *vb = v + (size_t)b * T * ldkv + (size_t)kvh * D;
    tc_rows(Qs, LD, q + (size_t)b * T * ldq + (size_t)h * D, ldq, q0, TR, T, D);
    float o[2 * KD][4], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
    tc_zero<2 * KD>(o);
    int kend = min(q0 + TR, T), kbeg = max(q0 - W + 1, 0) / TR * TR;
    for (int k0 = kbeg; k0 < kend; k0 += TR) {
        __syncthreads();
        tc_rows(Ks, LD, kb, ldkv, k0, TR, T, D);
        tc_cols(Vt, LT, vb, ldkv, k0, TR, T, D);
        __syncthreads();
        float s[8][4], mx[2] = {m[0], m[1]}, rs[2] = {0.0f, 0.0f}, alpha[2];
        tc_zero<8>(s);
        tc_xyt<KD, 8>(s, Qs + w0 * LD, LD, Ks, LD, D, g, t);
#pragma unroll
        for (int n = 0; n < 8; n++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                int qi = q0 + w0 + g + (i >> 1) * 8, kj = k0 + n * 8 + 2 * t + (i & 1);
                s[n][i] = attn_sees(qi, kj, T, W) ? s[n][i] * scale : -INFINITY;
                mx[i >> 1] = fmaxf(mx[i >> 1], s[n][i]);
            }
#pragma unroll
        for (int r = 0; r < 2; r++) {
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
            /* a row that has seen no key yet (window) keeps m = -inf: p and
             * alpha are then 0, not exp(-inf + inf) */
            float mref = mx[r] == -INFINITY ? 0.0f : mx[r];
            alpha[r] = expf(m[r] - mref);
            m[r] = mx[r];
            mx[r] = mref;
        }
#pragma unroll
        for (int n = 0; n < 8; n++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                s[n][i] = expf(s[n][i] - mx[i >> 1]);
                rs[i >> 1] += s[n][i];
            }
#pragma unroll
        for (int r = 0; r < 2; r++) {
            rs[r] += __shfl_xor_sync(0xffffffffu, rs[r], 1);
            rs[r] += __shfl_xor_sync(0xffffffffu, rs[r], 2);
            l[r] = l[r] * alpha[r] + rs[r];
        }
#pragma unroll
        for (int n = 0; n < 2 * KD; n++)
#pragma unroll
            for (int i = 0; i < 4; i++) o[n][i] *= alpha[i >> 1];
        tc_cz<8, 2 * KD>(o, s, Vt, LT, D, g, t);
    }
    int ldo = Hq * D;
#pragma unroll
    for (int r = 0; r < 2; r++) {
        int qi = q0 + w0 + g + r * 8;
        if (qi >= T) continue;
        float inv = 1.0f / l[r], *orow = out + (size_t)(b * T + qi) * ldo + (size_t)h * D;
#pragma unroll
        for (int n = 0; n < 2 * KD; n++)
            if (n * 8 < D) {
                orow[n * 8 + 2 * t] = o[n][2 * r] * inv;
                orow[n * 8 + 2 * t + 1] = o[n][2 * r + 1] * inv;
            }
        if (!t) lse[(size_t)bh * T + qi] = m[r] + logf(l[r]);
    }
}

/* dQ: grid (T tiles, B*Hq). Per key tile: S = Q K^T and dP = dO V^T in
 * registers, dS = P * (dP - di), dQ += dS K. */
template <int KD>
__global__ void __launch_bounds__(128) tc_dq_k(float *dq, const float *dout, const float *lse, const float *di,
                                               const float *q, const float *k, const float *v, int ldq, int ldkv,
                                               int T, int Hq, int Hkv, int D, int W, float scale) {
    extern __shared__ uint16_t tsm[];
    const int LD = D + TPAD, LT = TR + TPAD;
    uint16_t *Qs = tsm, *Os = Qs + TR * LD, *Ks = Os + TR * LD, *Vs = Ks + TR * LD, *Kt = Vs + TR * LD;
    int bh = blockIdx.y, b = bh / Hq, h = bh % Hq, kvh = h / (Hq / Hkv), ldo = Hq * D;
    int q0 = blockIdx.x * TR, w0 = (threadIdx.x >> 5) * 16, g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
    const float *kb = k + (size_t)b * T * ldkv + (size_t)kvh * D;
    const float *vb = v + (size_t)b * T * ldkv + (size_t)kvh * D;
    tc_rows(Qs, LD, q + (size_t)b * T * ldq + (size_t)h * D, ldq, q0, TR, T, D);
    tc_rows(Os, LD, dout + (size_t)b * T * ldo + (size_t)h * D, ldo, q0, TR, T, D);
    float lr[2], dr[2], acc[2 * KD][4];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        int qi = q0 + w0 + g + r * 8;
        lr[r] = qi < T ? lse[(size_t)bh * T + qi] : 0.0f;
        dr[r] = qi < T ? di[(size_t)bh * T + qi] : 0.0f;
    }
    tc_zero<2 * KD>(acc);
    int kend = min(q0 + TR, T), kbeg = max(q0 - W + 1, 0) / TR * TR;
    for (int k0 = kbeg; k0 < kend; k0 += TR) {
        __syncthreads();
        tc_rows(Ks, LD, kb, ldkv, k0, TR, T, D);
        tc_rows(Vs, LD, vb, ldkv, k0, TR, T, D);
        tc_cols(Kt, LT, kb, ldkv, k0, TR, T, D);
        __syncthreads();
        float s[8][4], dp[8][4];
        tc_zero<8>(dp);
        tc_xyt<KD, 8>(dp, Os + w0 * LD, LD, Vs, LD, D, g, t);
        tc_zero<8>(s);
        tc_xyt<KD, 8>(s, Qs + w0 * LD, LD, Ks, LD, D, g, t);
#pragma unroll
        for (int n = 0; n < 8; n++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                int qi = q0 + w0 + g + (i >> 1) * 8, kj = k0 + n * 8 + 2 * t + (i & 1);
                float p = attn_sees(qi, kj, T, W) ? expf(s[n][i] * scale - lr[i >> 1]) : 0.0f;
                s[n][i] = p * (dp[n][i] - dr[i >> 1]);
            }
        tc_cz<8, 2 * KD>(acc, s, Kt, LT, D, g, t);
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        int qi = q0 + w0 + g + r * 8;
        if (qi >= T) continue;
        float *row = dq + (size_t)(b * T + qi) * ldq + (size_t)h * D;
#pragma unroll
        for (int n = 0; n < 2 * KD; n++)
            if (n * 8 < D) {
                row[n * 8 + 2 * t] = acc[n][2 * r] * scale;
                row[n * 8 + 2 * t + 1] = acc[n][2 * r + 1] * scale;
            }
    }
}

/* dK, dV: grid (T tiles, B*Hkv); a warp owns 16 key rows, the G query heads
 * of the group are summed here (no atomics). Per query tile of TQ:
 * S^T = K Q^T and dP^T = V dO^T in registers, P^T and dS^T from them,
 * dV += P^T dO, dK += dS^T Q. */
template <int KD>
__global__ void __launch_bounds__(128) tc_dkv_k(float *dk, float *dv, const float *dout, const float *lse,
                                                const float *di, const float *q, const float *k, const float *v,
                                                int ldq, int ldkv, int T, int Hq, int Hkv, int D, int W,
                                                float scale) {
    extern __shared__ uint16_t tsm[];
    const int LD = D + TPAD, LQ = TQ + TPAD;
    uint16_t *Ks = tsm, *Vs = Ks + TR * LD, *Qs = Vs + TR * LD, *Os = Qs + TQ * LD, *Qt = Os + TQ * LD,
             *Ot = Qt + D * LQ;
    float *Ls = (float *)(Ot + D * LQ), *Ds = Ls + TQ;
    int G = Hq / Hkv, b = blockIdx.y / Hkv, kvh = blockIdx.y % Hkv, ldo = Hq * D;
    int k0 = blockIdx.x * TR, w0 = (threadIdx.x >> 5) * 16, g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
    tc_rows(Ks, LD, k + (size_t)b * T * ldkv + (size_t)kvh * D, ldkv, k0, TR, T, D);
    tc_rows(Vs, LD, v + (size_t)b * T * ldkv + (size_t)kvh * D, ldkv, k0, TR, T, D);
    float gk[2 * KD][4], gv[2 * KD][4];
    tc_zero<2 * KD>(gk);
    tc_zero<2 * KD>(gv);
    /* queries up to the tile's last key + W - 1 */
    int qend = min(T, k0 + TR - 1 + W);
    for (int gq = 0; gq < G; gq++) {
        int h = kvh * G + gq;
        size_t bh = (size_t)b * Hq + h;
        const float *qb = q + (size_t)b * T * ldq + (size_t)h * D, *ob = dout + (size_t)b * T * ldo + (size_t)h * D;
        for (int q0 = k0; q0 < qend; q0 += TQ) {
            __syncthreads();
            tc_rows(Qs, LD, qb, ldq, q0, TQ, T, D);
            tc_rows(Os, LD, ob, ldo, q0, TQ, T, D);
            tc_cols(Qt, LQ, qb, ldq, q0, TQ, T, D);
            tc_cols(Ot, LQ, ob, ldo, q0, TQ, T, D);
            if (threadIdx.x < TQ) {
                int qi = q0 + threadIdx.x;
                Ls[threadIdx.x] = qi < T ? lse[bh * T + qi] : 0.0f;
                Ds[threadIdx.x] = qi < T ? di[bh * T + qi] : 0.0f;
            }
            __syncthreads();
            float s[TQ / 8][4], dp[TQ / 8][4];
            tc_zero<TQ / 8>(s);
            tc_zero<TQ / 8>(dp);
            tc_xyt<KD, TQ / 8>(s, Ks + w0 * LD, LD, Qs, LD, D, g, t);
            tc_xyt<KD, TQ / 8>(dp, Vs + w0 * LD, LD, Os, LD, D, g, t);
#pragma unroll
            for (int n = 0; n < TQ / 8; n++)
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    int kj = k0 + w0 + g + (i >> 1) * 8, c = n * 8 + 2 * t + (i & 1), qi = q0 + c;
                    float p = attn_sees(qi, kj, T, W) ? expf(s[n][i] * scale - Ls[c]) : 0.0f;
                    dp[n][i] = p * (dp[n][i] - Ds[c]);
                    s[n][i] = p;
                }
            tc_cz<TQ / 8, 2 * KD>(gv, s, Ot, LQ, D, g, t);
            tc_cz<TQ / 8, 2 * KD>(gk, dp, Qt, LQ, D, g, t);
        }
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        int kj = k0 + w0 + g + r * 8;
        if (kj >= T) continue;
        size_t off = (size_t)(b * T + kj) * ldkv + (size_t)kvh * D;
#pragma unroll
        for (int n = 0; n < 2 * KD; n++)
            if (n * 8 < D) {
                int d = n * 8 + 2 * t;
                dk[off + d] = gk[n][2 * r] * scale;
                dk[off + d + 1] = gk[n][2 * r + 1] * scale;
                dv[off + d] = gv[n][2 * r];
                dv[off + d + 1] = gv[n][2 * r + 1];
            }
    }
}

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

/* ---- elementwise ---- */

__global__ void swiglu_fwd_k(float *h, const float *g, const float *u, size_t n) {
    GRID_STRIDE(i, n) h[i] = lr_swiglu(g[i], u[i]);
}
__global__ void swiglu_bwd_k(float *dg, float *du, const float *dh, const float *g, const float *u, size_t n) {
    GRID_STRIDE(i, n) lr_swiglu_grad(g[i], u[i], dh[i], &dg[i], &du[i]);
}
__global__ void gelu_fwd_k(float *y, const float *x, size_t n, int exact) {
    GRID_STRIDE(i, n) y[i] = exact ? lr_gelu_erf(x[i]) : lr_gelu_tanh(x[i]);
}
__global__ void gelu_bwd_k(float *dx, const float *dy, const float *x, size_t n, int exact) {
    GRID_STRIDE(i, n) dx[i] = dy[i] * (exact ? lr_gelu_erf_grad(x[i]) : lr_gelu_tanh_grad(x[i]));
}
__global__ void add_k(float *y, const float *x, size_t n) {
    GRID_STRIDE(i, n) y[i] += x[i];
}
__global__ void sub_k(float *y, const float *x, size_t n) {
    GRID_STRIDE(i, n) y[i] -= x[i];
}
__global__ void scale_k(float *x, float s, size_t n) {
    GRID_STRIDE(i, n) x[i] *= s;
}

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

template <typename W> __global__ void convert_k(W *dst, const float *src, size_t n) {
    GRID_STRIDE(i, n) dst[i] = stw<W>(src[i]);
}
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

template <typename W> __global__ void bias_rows_k(float *y, const W *b, int N, int out) {
    GRID_STRIDE(i, (size_t)N * out) y[i] = ldw(b, i % out);
}
__global__ void dropout_k(float *dst, const float *x, uint64_t seed, float p, size_t n) {
    GRID_STRIDE(i, n) dst[i] = x[i] * lr_dropout_mult(seed, i, p);
}
__global__ void dropout_acc_k(float *dx, const float *t, uint64_t seed, float p, size_t n) {
    GRID_STRIDE(i, n) dx[i] += t[i] * lr_dropout_mult(seed, i, p);
}

/* z[N,out] = x W^T + beta z; x goes through lowp (scratch [N,in], NULL with
 * f32 weights) rounded to the weight dtype. */
static void base_gemm(cu_impl *c, kb_dtype dt, const kb_linear *L, void *lowp, const float *x, int N, float beta,
                      float *z) {
    const void *xop = x;
    if (lowp) {
        to_lowp(c, dt, lowp, x, (size_t)N * L->in);
        xop = lowp;
    }
    if (L->w_in_out) gemm(c, dt, 0, 0, N, L->out, L->in, 1.0f, xop, L->in, L->W, L->out, beta, z, L->out);
    else gemm(c, dt, 0, 1, N, L->out, L->in, 1.0f, xop, L->in, L->W, L->in, beta, z, L->out);
}
/* dx[N,in] = g W + beta dx, g [N,out] rounded the same way. */
static void input_grad(cu_impl *c, kb_dtype dt, const kb_linear *L, void *lowp, const float *g, int N, float beta,
                       float *dx) {
    const void *gop = g;
    if (lowp) {
        to_lowp(c, dt, lowp, g, (size_t)N * L->out);
        gop = lowp;
    }
    if (L->w_in_out) gemm(c, dt, 0, 1, N, L->in, L->out, 1.0f, gop, L->out, L->W, L->out, beta, dx, L->in);
    else gemm(c, dt, 0, 0, N, L->in, L->out, 1.0f, gop, L->out, L->W, L->in, beta, dx, L->in);
}

/* ---- DoRA ---- */

/* wnorm[j] = ||W_j + scale (B A)_j|| for the rows j0 + blockIdx.x of a block
 * of B A rows (BA [gridDim.x, in], f32), one thread block per row, the
 * squares summed in f64. */
template <typename W>
__global__ void dora_norm_k(float *wnorm, const W *w, const float *BA, int j0, int in, int out, int w_in_out,
                            float scale) {
    __shared__ double sh[33];
    int j = j0 + blockIdx.x;
    const float *ba = BA + (size_t)blockIdx.x * in;
    double ss = 0;
    for (int i = threadIdx.x; i < in; i += blockDim.x)
        ss += lr_dora_sq(ldw(w, w_in_out ? (size_t)i * out + j : (size_t)j * in + i), ba[i], scale);
    ss = block_sumd(ss, sh);
    if (!threadIdx.x) wnorm[j] = (float)sqrt(ss);
}

/* y = lr_dora_out of the base term y (pre-bias), the dropped base term zb
 * (NULL without dropout) and the LoRA term u, per output feature j. */
template <typename W>
__global__ void dora_out_k(float *y, const float *zb, const float *u, const float *mag, const float *wnorm,
                           const W *b, int out, size_t n) {
    GRID_STRIDE(i, n) {
        int j = (int)(i % out);
        float base = y[i];
        y[i] = lr_dora_out(base, zb ? zb[i] : base, u[i], lr_dora_scale(mag[j], wnorm[j]), b ? ldw(b, j) : 0.0f,
                           zb != NULL);
    }
}

/* d magnitude, first pass: thread j of grid row p sums dy G over rows
 * [p, p + 1) * CUPLAN_DORA_ROWS of column j into part[p, j] (f64, rows in
 * order), and turns G into s dy there, the gradient the LoRA path sees. */
__global__ void dora_dmag_part_k(double *part, float *G, const float *dy, const float *mag, const float *wnorm, int N,
                                 int out) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= out) return;
    int n0 = blockIdx.y * CUPLAN_DORA_ROWS, n1 = min(n0 + CUPLAN_DORA_ROWS, N);
    float s = lr_dora_scale(mag[j], wnorm[j]);
    double acc = 0;
    for (int n = n0; n < n1; n++) {
        size_t e = (size_t)n * out + j;
        float d = dy[e];
        acc += (double)d * G[e];
        G[e] = s * d;
    }
    part[(size_t)blockIdx.y * out + j] = acc;
}
/* Second pass: dmag[j] += (sum of the partials in order) / wnorm[j]. */
__global__ void dora_dmag_k(float *dmag, const double *part, const float *wnorm, int nparts, int out) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= out) return;
    double acc = 0;
    for (int p = 0; p < nparts; p++) acc += part[(size_t)p * out + j];
    dmag[j] += (float)(acc / wnorm[j]);
}

/* B A is f32 (cuBLAS, no TF32), a block of output rows at a time so that
 * the scratch stays within CUPLAN_DORA_BUDGET for any layer. */
static void cu_dora_norm(kb_backend *be, const kb_linear *L, float *wnorm) {
    cu_impl *c = impl_of(be);
    const kb_lora *l = L->lora;
    if (c->failed || !l || L->out <= 0) return;
    int in = L->in, out = L->out, rows = cuplan_dora_rows(in, out, CUPLAN_DORA_BUDGET);
    float *BA = (float *)ws_get(c, (size_t)rows * in * sizeof(float), "DoRA norm scratch");
    if (!BA) return;
    for (int j0 = 0; j0 < out && !c->failed; j0 += rows) {
        int m = out - j0 < rows ? out - j0 : rows;
        gemm(c, KB_F32, 0, 0, m, in, l->r, 1.0f, l->B + (size_t)j0 * l->r, l->r, l->A, in, 0.0f, BA, in);
        WDISPATCH(be->weight_dtype, dora_norm_k<W><<<m, CUPLAN_BLOCK, 0, c->st>>>(wnorm, (const W *)L->W, BA, j0, in,
                                                                                  out, L->w_in_out, l->scale));
        launched(c, "dora_norm");
    }
}

/* ---- linear with LoRA / DoRA ---- */

static void cu_linear_fwd(kb_backend *be, const kb_linear *L, float *y, float *xa, const float *x, int N) {
    cu_impl *c = impl_of(be);
    if (c->failed || N <= 0) return;
    kb_dtype dt = be->weight_dtype;
    const kb_lora *l = L->lora;
    int drop = l && l->dropout > 0.0f, dora = l && l->mag, out = L->out;
    cuplan_linear lay;
    cuplan_linear_layout(dt, N, L->in, out, l ? l->r : 0, drop, dora, 0, &lay);
    char *ws = ws_get(c, lay.total, "linear layer scratch");
    if (lay.total && !ws) return;
    void *lowp = lay.x_lowp == SIZE_MAX ? NULL : ws + lay.x_lowp;
    size_t ny = (size_t)N * out, nx = (size_t)N * L->in;
    float beta = 0.0f;
    if (L->b && !dora) { /* DoRA adds the bias after scaling */
        WDISPATCH(dt, bias_rows_k<W><<<grid_for(c, ny), CUPLAN_BLOCK, 0, c->st>>>(y, (const W *)L->b, N, out));
        beta = 1.0f;
    }
    base_gemm(c, dt, L, lowp, x, N, beta, y);
    launched(c, "linear_fwd");
    if (!l) return;
    const float *xd = x;
    if (drop) {
        float *t = (float *)(ws + lay.drop);
        dropout_k<<<grid_for(c, nx), CUPLAN_BLOCK, 0, c->st>>>(t, x, l->seed, l->dropout, nx);
        xd = t;
    }
    gemm(c, KB_F32, 0, 1, N, l->r, L->in, 1.0f, xd, L->in, l->A, L->in, 0.0f, xa, l->r);
    if (!dora) {
        gemm(c, KB_F32, 0, 1, N, out, l->r, l->scale, xa, l->r, l->B, l->r, 1.0f, y, out);
        launched(c, "linear_fwd lora");
        return;
    }
    /* DoRA: y = lr_dora_out(x W^T, drop(x) W^T, scale xa B^T) per element */
    float *u = (float *)(ws + lay.dz), *zb = drop ? (float *)(ws + lay.zb) : NULL;
    gemm(c, KB_F32, 0, 1, N, out, l->r, l->scale, xa, l->r, l->B, l->r, 0.0f, u, out);
    if (drop) base_gemm(c, dt, L, lowp, xd, N, 0.0f, zb);
    WDISPATCH(dt, dora_out_k<W><<<grid_for(c, ny), CUPLAN_BLOCK, 0, c->st>>>(y, zb, u, l->mag, l->wnorm,
                                                                            (const W *)L->b, out, ny));
    launched(c, "linear_fwd dora");
}

static void cu_linear_bwd(kb_backend *be, const kb_linear *L, float *dx, int dx_acc, const float *dy, const float *x,
                          const float *xa, int N) {
    cu_impl *c = impl_of(be);
    if (c->failed || N <= 0) return;
    kb_dtype dt = be->weight_dtype;
    const kb_lora *l = L->lora;
    int drop = l && l->dropout > 0.0f, dora = l && l->mag, r = l ? l->r : 0, out = L->out;
    cuplan_linear lay;
    cuplan_linear_layout(dt, N, L->in, out, r, drop, dora, 1, &lay);
    char *ws = ws_get(c, lay.total, "linear layer scratch");
    if (lay.total && !ws) return;
    void *lowp = lay.x_lowp == SIZE_MAX ? NULL : ws + lay.x_lowp;
    size_t nx = (size_t)N * L->in, ny = (size_t)N * out;
    float bx = dx_acc ? 1.0f : 0.0f;
    if (dx && !dora) input_grad(c, dt, L, lowp, dy, N, bx, dx);
    if (!l) return;
    float *dh = (float *)(ws + lay.dh);
    const float *xd = x;
    float *t = drop ? (float *)(ws + lay.drop) : NULL;
    if (drop) {
        dropout_k<<<grid_for(c, nx), CUPLAN_BLOCK, 0, c->st>>>(t, x, l->seed, l->dropout, nx);
        xd = t;
    }
    const float *g = dy;
    float *G = dora ? (float *)(ws + lay.dz) : NULL;
    if (dora) {
        /* d mag_j = sum_n dy[n,j] G[n,j] / wnorm_j with G = drop(x) W^T + scale xa B^T
         * (the pre-bias direction term); then G = s dy for the LoRA path */
        unsigned parts = (unsigned)((N + CUPLAN_DORA_ROWS - 1) / CUPLAN_DORA_ROWS), cols = (unsigned)((out + 127) / 128);
        double *part = (double *)(ws + lay.part);
        base_gemm(c, dt, L, lowp, xd, N, 0.0f, G);
        gemm(c, KB_F32, 0, 1, N, out, r, l->scale, xa, r, l->B, r, 1.0f, G, out);
        dora_dmag_part_k<<<dim3(cols, parts), 128, 0, c->st>>>(part, G, dy, l->mag, l->wnorm, N, out);
        dora_dmag_k<<<cols, 128, 0, c->st>>>(l->dmag, part, l->wnorm, (int)parts, out);
        launched(c, "linear_bwd dora");
        g = G;
    }
    /* dB += s g^T xa; dh = s g B; dA += dh^T drop(x); dx += drop'(dh A) */
    gemm(c, KB_F32, 1, 0, out, r, N, l->scale, g, out, xa, r, 1.0f, l->dB, r);
    gemm(c, KB_F32, 0, 0, N, r, out, l->scale, g, out, l->B, r, 0.0f, dh, r);
    gemm(c, KB_F32, 1, 0, r, L->in, N, 1.0f, dh, r, xd, L->in, 1.0f, l->dA, L->in);
    if (dx && !drop) {
        if (dora) input_grad(c, dt, L, lowp, g, N, bx, dx); /* the base path is scaled by s as well */
        gemm(c, KB_F32, 0, 0, N, L->in, r, 1.0f, dh, r, l->A, L->in, 1.0f, dx, L->in);
    } else if (dx) {
        if (dora) {
            /* the undropped base path carries dy, the dropped one (s - 1) dy = G - dy */
            input_grad(c, dt, L, lowp, dy, N, bx, dx);
            sub_k<<<grid_for(c, ny), CUPLAN_BLOCK, 0, c->st>>>(G, dy, ny);
            input_grad(c, dt, L, lowp, G, N, 0.0f, t);
        }
        gemm(c, KB_F32, 0, 0, N, L->in, r, 1.0f, dh, r, l->A, L->in, dora ? 1.0f : 0.0f, t, L->in);
        dropout_acc_k<<<grid_for(c, nx), CUPLAN_BLOCK, 0, c->st>>>(dx, t, l->seed, l->dropout, nx);
    }
    launched(c, "linear_bwd");
}

/* ---- LM head + cross-entropy ---- */

template <typename W> __global__ void gather_k(W *dst, const float *x, const int32_t *rows, int m, int C) {
    GRID_STRIDE(e, (size_t)m * C) {
        size_t i = e / C, cc = e % C;
        dst[e] = stw<W>(x[(size_t)rows[i] * C + cc]);
    }
}
__global__ void scatter_k(float *dx, const float *dxc, const int32_t *rows, int m, int C) {
    GRID_STRIDE(e, (size_t)m * C) {
        size_t i = e / C, cc = e % C;
        dx[(size_t)rows[i] * C + cc] = dxc[e];
    }
}
/* One block per row of the chunk: loss = max + log(sum exp) - logit[target]
 * (f64, as the CPU backend); with G != NULL the row's gradient
 * w * (softmax - onehot), w = grad_scale * tok_scale[row], goes to G in the
 * weight dtype, computed from the logits in one pass: the probabilities are
 * never stored apart. */
template <typename W>
__global__ void ce_rows_k(double *loss, float *tok_loss, W *G, const float *logits, const int32_t *tgt,
                          const int32_t *rows, const float *tok_scale, int V, float grad_scale) {
    __shared__ double shd[33];
    __shared__ float shf[33];
    int i = blockIdx.x, row = rows[i];
    const float *l = logits + (size_t)i * V;
    int tg = tgt[i];
    float lt = l[tg]; /* read before the reductions' barriers: with f32 weights G is the logits */
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < V; j += blockDim.x) mx = fmaxf(mx, l[j]);
    mx = block_maxf(mx, shf);
    double s = 0;
    for (int j = threadIdx.x; j < V; j += blockDim.x) s += expf(l[j] - mx);
    s = block_sumd(s, shd);
    double li = (double)mx + log(s) - (double)lt;
    if (!threadIdx.x) {
        loss[i] = li;
        if (tok_loss) tok_loss[row] = (float)li;
    }
    if (!G) return;
    float w = grad_scale * (tok_scale ? tok_scale[row] : 1.0f);
    float inv = (float)(1.0 / s) * w;
    W *g = G + (size_t)i * V;
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        float d = expf(l[j] - mx) * inv;
        g[j] = stw<W>(j == tg ? d - w : d);
    }
}

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
static double cu_lmhead_ce(kb_backend *be, int64_t *n_valid, float *tok_loss, float *dx, float *dW, const float *x,
                           const void *W, const int32_t *targets, const float *tok_scale, int N, int C, int V,
                           float grad_scale, int chunk_rows) {
    (void)dW;
    cu_impl *c = impl_of(be);
    kb_dtype dt = be->weight_dtype;
    *n_valid = 0;
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
        const int32_t *tc = (const int32_t *)(ws + lay.tgt) + c0;
        WDISPATCH(dt, ce_rows_k<W><<<m, 1024, 0, c->st>>>(lossc, tok_loss, (W *)G, lg, tc, rc, tok_scale, V,
                                                          grad_scale));
        launched(c, "lmhead_ce");
        if (!dx) continue;
        float *dxc = (float *)(ws + lay.dxc);
        gemm(c, dt, 0, 0, m, C, V, 1.0f, G, V, W, C, 0.0f, dxc, C);
        scatter_k<<<grid_for(c, (size_t)m * C), CUPLAN_BLOCK, 0, c->st>>>(dx, dxc, rc, m, C);
        launched(c, "lmhead_ce backward");
    }
    total = sum_rows(be, ws + lay.loss, nv);
out:
    free(ht);
    return c->failed ? NAN : total;
}

/* ---- LM head + KL to a reference ---- */

/* One block per row of the chunk: the row's ce and kl (f64, elem.h's
 * lr_kl_*, as the CPU backend) into ce[i], kl[i]; with G != NULL, w times
 * d(ce + kl_coef kl)/dl goes to G in the weight dtype, from the logits in
 * one pass (with f32 weights G is the logits, overwritten in place). */
template <typename W>
__global__ void ce_kl_rows_k(double *ce, double *kl, W *G, const float *logits, const float *ref,
                             const int32_t *tgt, int V, double itau, double kc, float w) {
    __shared__ double shd[33];
    __shared__ float shf[33];
    int i = blockIdx.x, tg = tgt[i];
    const float *l = logits + (size_t)i * V, *q = ref + (size_t)i * V;
    float lt = l[tg]; /* read before the reductions' barriers: G may be the logits */
    float mx = -INFINITY, mq = -INFINITY;
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        mx = fmaxf(mx, l[j]);
        mq = fmaxf(mq, q[j]);
    }
    mx = block_maxf(mx, shf);
    mq = block_maxf(mq, shf);
    double s1 = 0, st = 0, sq = 0;
    for (int j = threadIdx.x; j < V; j += blockDim.x) lr_kl_sums(l[j], q[j], mx, mq, itau, &s1, &st, &sq);
    s1 = block_sumd(s1, shd);
    st = block_sumd(st, shd);
    sq = block_sumd(sq, shd);
    double lse1 = mx + log(s1), lset = log(st), lseq = log(sq), k = 0;
    W *g = G ? G + (size_t)i * V : NULL;
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        float qv;
        k += lr_kl_elem(l[j], q[j], mx, mq, itau, lset, lseq, &qv);
        if (g) g[j] = stw<W>(lr_ce_kl_grad(l[j], qv, mx, itau, lse1, lset, kc, w, j == tg));
    }
    k = block_sumd(k, shd);
    if (!threadIdx.x) {
        ce[i] = lse1 - (double)lt;
        kl[i] = k;
    }
}

/* As lmhead_ce, with the reference rows gathered and multiplied alongside. */
static void cu_lmhead_ce_kl(kb_backend *be, double *ce_sum, double *kl_sum, int64_t *n_valid, float *dx,
                            const float *x, const float *x_ref, const void *W, const int32_t *targets, int N, int C,
                            int V, float tau, float kl_coef, float grad_scale, int chunk_rows) {
    cu_impl *c = impl_of(be);
    kb_dtype dt = be->weight_dtype;
    *n_valid = 0;
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
            WDISPATCH(dt, ce_kl_rows_k<W><<<m, 1024, 0, c->st>>>(cec, klc, (W *)G, lg, lr, tc, V, itau, kc, w));
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
out:
    free(ht);
    if (c->failed) *ce_sum = *kl_sum = NAN;
}

/* ---- optimizer and clipping ---- */

__global__ void adamw_k(float *p, const float *g, float *m, float *v, size_t n, float lr, float b1, float b2,
                        float eps, float wd, float bc1, float bc2s) {
    GRID_STRIDE(i, n) lr_adamw_elem(&p[i], g[i], &m[i], &v[i], lr, b1, b2, eps, wd, bc1, bc2s);
}
static void cu_adamw(kb_backend *be, float *p, const float *g, float *m, float *v, size_t n, const kb_adamw *hp) {
    float bc1 = (float)(1.0 - pow(hp->beta1, (double)hp->t));
    float bc2s = (float)sqrt(1.0 - pow(hp->beta2, (double)hp->t));
    ELEMWISE(be, n, "adamw", adamw_k, p, g, m, v, n, hp->lr, hp->beta1, hp->beta2, hp->eps, hp->weight_decay, bc1,
             bc2s);
}

/* One block per CUPLAN_SUMSQ_BLOCK elements; the partial sums are added on
 * the host in block order, so the result does not depend on the GPU. */
__global__ void sumsq_k(double *part, const float *x, size_t n) {
    __shared__ double sh[33];
    size_t s = (size_t)blockIdx.x * CUPLAN_SUMSQ_BLOCK, e = s + CUPLAN_SUMSQ_BLOCK < n ? s + CUPLAN_SUMSQ_BLOCK : n;
    double acc = 0;
    for (size_t i = s + threadIdx.x; i < e; i += blockDim.x) acc += (double)x[i] * x[i];
    acc = block_sumd(acc, sh);
    if (!threadIdx.x) part[blockIdx.x] = acc;
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
    be->swiglu_fwd = cu_swiglu_fwd;
    be->swiglu_bwd = cu_swiglu_bwd;
    be->gelu_fwd = cu_gelu_fwd;
    be->gelu_bwd = cu_gelu_bwd;
    be->add = cu_add;
    be->linear_fwd = cu_linear_fwd;
    be->linear_bwd = cu_linear_bwd;
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
