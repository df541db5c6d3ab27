/* attention: the fused causal GQA attention kernels, forward, dK/dV and dQ:
 * the f32 ones on the CUDA cores and the bf16 tensor-core ones (mma.cuh).
 * Launch geometry and shared memory come from plan.c (cuplan_attention*).
 * Device code only, included by backend_cuda.cu after reduce.cuh and
 * mma.cuh; the emulation test (tests/integration/test_cuda_attn_emu.sh)
 * includes it too, with its own warp primitives, tc_mma / tc_bf16 / ld32 and
 * CU_DYN_SMEM, and runs it as host C++. */
#ifndef CU_DYN_SMEM
/* A kernel's dynamic shared memory (the size is the launch's). */
#define CU_DYN_SMEM(T, name) extern __shared__ T name[]
#endif
#ifndef LR_CUDA_ATTENTION_CUH
#define LR_CUDA_ATTENTION_CUH

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

/* The forward of one block's AR query rows q0.. of one head: rows 0..nq-1
 * of q (row i at position p0 + i) against keys and values of positions
 * 0..p0+nq-1 (kb, vb at position 0); out rows ob + i * ldo, lse[i] when lse
 * is not NULL. attn_fwd_k runs it with p0 = 0, nq = T; attn_kv_k from the
 * cache's p0, so a prefill computes what the training forward computes.
 * Shared: Q [AR][D], K [AR][D+1], V [AR][D]. */
template <int DC>
__device__ __forceinline__ void attn_fwd_rows(float *sm, float *ob, int ldo, float *lse, const float *qb,
                                              const float *kb, const float *vb, int ldq, int ldkv, int q0, int nq,
                                              int p0, int D, int W, float scale) {
    float *Qs = sm, *Ks = Qs + AR * D, *Vs = Ks + AR * (D + 1);
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, r0 = warp * 8, Tk = p0 + nq;
    load_tile(Qs, D, qb, ldq, q0, nq, D);
    float m[8], l[8], o[8][DC];
#pragma unroll
    for (int r = 0; r < 8; r++) {
        m[r] = -INFINITY;
        l[r] = 0.0f;
#pragma unroll
        for (int c = 0; c < DC; c++) o[r][c] = 0.0f;
    }
    /* key tiles from the one holding the tile's first row's first key */
    int kend = min(p0 + q0 + AR, Tk), kbeg = max(p0 + q0 - W + 1, 0) / AR * AR;
    for (int k0 = kbeg; k0 < kend; k0 += AR) {
        __syncthreads();
        load_tile(Ks, D + 1, kb, ldkv, k0, Tk, D);
        load_tile(Vs, D, vb, ldkv, k0, Tk, D);
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
            int qi = p0 + q0 + r0 + r;
            float sv = attn_sees(qi, kj, Tk, W) ? s[r] * scale : -INFINITY;
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
#pragma unroll
    for (int r = 0; r < 8; r++) {
        int qi = q0 + r0 + r;
        if (qi >= nq) continue;
        float inv = 1.0f / l[r];
        float *orow = ob + (size_t)qi * ldo;
#pragma unroll
        for (int c = 0; c < DC; c++)
            if (lane + 32 * c < D) orow[lane + 32 * c] = o[r][c] * inv;
        if (lse && !lane) lse[qi] = m[r] + logf(l[r]);
    }
}

/* Forward: grid (q tiles, B*Hq). */
template <int DC>
__global__ void __launch_bounds__(ATHREADS) attn_fwd_k(float *out, float *lse, const float *q, const float *k,
                                                       const float *v, int ldq, int ldkv, int T, int Hq, int Hkv,
                                                       int D, int W, float scale) {
    CU_DYN_SMEM(float, sm);
    int bh = blockIdx.y, b = bh / Hq, h = bh % Hq, kvh = h / (Hq / Hkv), ldo = Hq * D;
    attn_fwd_rows<DC>(sm, out + (size_t)b * T * ldo + (size_t)h * D, ldo, lse + (size_t)bh * T,
                      q + (size_t)b * T * ldq + (size_t)h * D, k + (size_t)b * T * ldkv + (size_t)kvh * D,
                      v + (size_t)b * T * ldkv + (size_t)kvh * D, ldq, ldkv, blockIdx.x * AR, T, 0, D, W, scale);
}

/* Decoding (attn_kv_fwd): n query rows at positions p0.. against the KV
 * cache's positions 0..p0+n-1, W in 1..p0+n; grid (ceil(n / AR), Hq). A
 * decoding step (n = 1) keeps one row of each block busy and walks the
 * cache once per query head: enough while the cache is short; a split over
 * key tiles (flash-decoding) is what long contexts would want. */
template <int DC>
__global__ void __launch_bounds__(ATHREADS) attn_kv_k(float *out, const float *q, const float *kc, const float *vc,
                                                      int ldq, int ldkv, int p0, int n, int Hq, int Hkv, int D, int W,
                                                      float scale) {
    CU_DYN_SMEM(float, sm);
    int h = blockIdx.y, kvh = h / (Hq / Hkv);
    attn_fwd_rows<DC>(sm, out + (size_t)h * D, Hq * D, NULL, q + (size_t)h * D, kc + (size_t)kvh * D,
                      vc + (size_t)kvh * D, ldq, ldkv, blockIdx.x * AR, n, p0, D, W, scale);
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
    CU_DYN_SMEM(float, sm);
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
    CU_DYN_SMEM(float, sm);
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
    CU_DYN_SMEM(uint16_t, tsm);
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
    CU_DYN_SMEM(uint16_t, tsm);
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
    CU_DYN_SMEM(uint16_t, tsm);
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

#endif
