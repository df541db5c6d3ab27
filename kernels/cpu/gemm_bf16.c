/* gemm_bf16: packing, the AVX512_BF16 micro-kernel, the reference and the
 * self-test (layout and threading: gemm_bf16.h). */
#include "kernels/cpu/gemm_bf16.h"

#include <float.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/gemm_select.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define KBF_X86 1
#define TGT __attribute__((target("avx512f,avx512bw,avx512bf16")))
#else
#define KBF_X86 0
#endif

#define PANEL 64  /* output columns per panel: four vectors of 16 */
#define PSTEP 128 /* bf16 per k-pair step of a panel: 64 columns x 2 */
#define TILE_M 6  /* rows per tile: 6 x 4 accumulators + 4 weight vectors = 28 of 32 registers */
/* k pairs per block: a block of a panel is 64 KiB and stays in L2 while the
 * tiles of every row pass over it; it is also the size of the per-thread
 * transposed panel of the backward. */
#define KC2 256

typedef uint16_t bf16;

uint16_t kbf_from_f32(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)(u >> 16 | 0x40); /* NaN stays NaN */
    u += 0x7fffu + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

float kbf_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static size_t align64(size_t n) { return (n + 63) & ~(size_t)63; }
static int pairs(int n) { return (n + 1) / 2; }
static int panels(int n) { return (n + PANEL - 1) / PANEL; }

size_t kbf_packed_bytes(int out, int in) { return (size_t)panels(out) * pairs(in) * PSTEP * sizeof(bf16); }

/* Index of W[j][k] in the packed panels. */
static size_t pidx(int K2, int j, int k) {
    return ((size_t)(j / PANEL) * K2 + k / 2) * PSTEP + (size_t)(j % PANEL) * 2 + (k & 1);
}

void kbf_pack(void *dst, const float *W, int out, int in, int w_in_out, int nt) {
    bf16 *P = dst;
    int K2 = pairs(in), np = panels(out);
    memset(P, 0, kbf_packed_bytes(out, in));
#pragma omp parallel for num_threads(nt > 0 ? nt : 1) schedule(static)
    for (int p = 0; p < np; p++) {
        int j1 = (p + 1) * PANEL < out ? (p + 1) * PANEL : out;
        if (w_in_out) {
            for (int k = 0; k < in; k++)
                for (int j = p * PANEL; j < j1; j++) P[pidx(K2, j, k)] = kbf_from_f32(W[(size_t)k * out + j]);
        } else {
            for (int j = p * PANEL; j < j1; j++)
                for (int k = 0; k < in; k++) P[pidx(K2, j, k)] = kbf_from_f32(W[(size_t)j * in + k]);
        }
    }
}

void kbf_row(const void *P, int out, int in, int j, float *row) {
    (void)out;
    const bf16 *p = P;
    int K2 = pairs(in);
    for (int k = 0; k < in; k++) row[k] = kbf_to_f32(p[pidx(K2, j, k)]);
}

size_t kbf_scratch_bytes(int M, int out, int in, int nt) {
    int K = 2 * (pairs(in) > pairs(out) ? pairs(in) : pairs(out));
    return align64((size_t)M * K * sizeof(bf16)) + (size_t)(nt > 0 ? nt : 1) * KC2 * PSTEP * sizeof(bf16);
}

/* ---- the plain reference ---- */

static void ref_xwt(int nt, const void *P, int out, int in, const float *x, int M, float *y, int acc, void *scratch) {
    (void)nt, (void)scratch;
    int K2 = pairs(in);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < out; j++) {
            double s = 0;
            for (int k = 0; k < in; k++)
                s += (double)kbf_to_f32(kbf_from_f32(x[(size_t)i * in + k])) *
                     kbf_to_f32(((const bf16 *)P)[pidx(K2, j, k)]);
            float *c = &y[(size_t)i * out + j];
            *c = acc ? (float)(s + *c) : (float)s;
        }
}

static void ref_gw(int nt, const void *P, int out, int in, const float *g, int M, float *dx, int acc, void *scratch) {
    (void)nt, (void)scratch;
    int K2 = pairs(in);
    for (int i = 0; i < M; i++)
        for (int k = 0; k < in; k++) {
            double s = 0;
            for (int j = 0; j < out; j++)
                s += (double)kbf_to_f32(kbf_from_f32(g[(size_t)i * out + j])) *
                     kbf_to_f32(((const bf16 *)P)[pidx(K2, j, k)]);
            float *c = &dx[(size_t)i * in + k];
            *c = acc ? (float)(s + *c) : (float)s;
        }
}

const kbf_kernel kbf_reference = {"reference", ref_xwt, ref_gw};

/* ---- the AVX512_BF16 kernel ---- */

#if KBF_X86

/* One row of f32 to bf16, zero-padded from n to np (np - n is 0 or 1). */
TGT static void cvt_row(const float *x, int n, bf16 *o, int np) {
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(x + i));
        _mm512_storeu_si512(o + i, (__m512i)v);
    }
    if (i < np) {
        int r = n - i, q = np - i; /* 0 < q <= 32: loads past n read nothing and convert zeros */
        __mmask16 lo = (__mmask16)(r >= 16 ? 0xffff : (1u << r) - 1);
        __mmask16 hi = (__mmask16)(r <= 16 ? 0 : (1u << (r - 16)) - 1);
        __m512bh v = _mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(hi, x + i + 16), _mm512_maskz_loadu_ps(lo, x + i));
        __mmask32 st = q >= 32 ? 0xffffffffu : (1u << q) - 1;
        _mm512_mask_storeu_epi16(o + i, st, (__m512i)v);
    }
}

static void cvt_rows(int nt, const float *x, int M, int n, bf16 *o, int np) {
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1 && M > 1)
    for (int i = 0; i < M; i++) cvt_row(x + (size_t)i * n, n, o + (size_t)i * np, np);
}

/* ROWS x 64 of C (ldc) from kc2 k-pairs of ROWS rows of A (lda, bf16) and
 * a panel block: stored through the masks mk[0..3] (lanes of the columns
 * that exist), added to C when add. ROWS is a constant in each copy, so the
 * accumulators stay in registers. */
#define TILE_FN(name, ROWS)                                                                                       \
    TGT static void name(const bf16 *A, int lda, const bf16 *P, int kc2, float *C, int ldc, const __mmask16 *mk,  \
                         int add) {                                                                               \
        __m512 acc[ROWS][4];                                                                                      \
        _Pragma("GCC unroll 8") for (int i = 0; i < ROWS; i++)                                                    \
            _Pragma("GCC unroll 4") for (int j = 0; j < 4; j++) acc[i][j] = _mm512_setzero_ps();                  \
        for (int kk = 0; kk < kc2; kk++) {                                                                        \
            const bf16 *p = P + (size_t)kk * PSTEP;                                                               \
            __m512bh w0 = (__m512bh)_mm512_loadu_si512(p), w1 = (__m512bh)_mm512_loadu_si512(p + 32);            \
            __m512bh w2 = (__m512bh)_mm512_loadu_si512(p + 64), w3 = (__m512bh)_mm512_loadu_si512(p + 96);       \
            _Pragma("GCC unroll 8") for (int i = 0; i < ROWS; i++) {                                              \
                int32_t pair;                                                                                     \
                memcpy(&pair, A + (size_t)i * lda + 2 * kk, 4);                                                   \
                __m512bh a = (__m512bh)_mm512_set1_epi32(pair);                                                   \
                acc[i][0] = _mm512_dpbf16_ps(acc[i][0], a, w0);                                                   \
                acc[i][1] = _mm512_dpbf16_ps(acc[i][1], a, w1);                                                   \
                acc[i][2] = _mm512_dpbf16_ps(acc[i][2], a, w2);                                                   \
                acc[i][3] = _mm512_dpbf16_ps(acc[i][3], a, w3);                                                   \
            }                                                                                                     \
        }                                                                                                         \
        _Pragma("GCC unroll 8") for (int i = 0; i < ROWS; i++)                                                    \
            _Pragma("GCC unroll 4") for (int j = 0; j < 4; j++) {                                                 \
                float *c = C + (size_t)i * ldc + 16 * j;                                                          \
                __m512 v = add ? _mm512_add_ps(acc[i][j], _mm512_maskz_loadu_ps(mk[j], c)) : acc[i][j];           \
                _mm512_mask_storeu_ps(c, mk[j], v);                                                               \
            }                                                                                                     \
    }
TILE_FN(tile1, 1)
TILE_FN(tile2, 2)
TILE_FN(tile3, 3)
TILE_FN(tile4, 4)
TILE_FN(tile5, 5)
TILE_FN(tile6, 6)

typedef void (*tile_fn)(const bf16 *, int, const bf16 *, int, float *, int, const __mmask16 *, int);
static const tile_fn tiles[TILE_M + 1] = {NULL, tile1, tile2, tile3, tile4, tile5, tile6};

/* Rows [m0, m1) of C's 64 columns at C (ldc) from one block. */
static void tile_rows(const bf16 *A, int lda, int m0, int m1, const bf16 *blk, int kc2, float *C, int ldc,
                      const __mmask16 *mk, int add) {
    for (int i = m0; i < m1; i += TILE_M) {
        int rows = m1 - i < TILE_M ? m1 - i : TILE_M;
        tiles[rows](A + (size_t)i * lda, lda, blk, kc2, C + (size_t)i * ldc, ldc, mk, add);
    }
}

static void col_masks(int ncols, __mmask16 mk[4]) {
    for (int j = 0; j < 4; j++) {
        int n = ncols - 16 * j;
        mk[j] = (__mmask16)(n >= 16 ? 0xffff : n <= 0 ? 0 : (1u << n) - 1);
    }
}

/* Work items: each panel of output columns, split into row blocks (whole
 * tiles) only when there are fewer than two panels per thread. */
static void split_rows(int np, int nt, int M, int *mparts, int *mblk) {
    int parts = np >= 2 * nt ? 1 : (2 * nt + np - 1) / np;
    int tilesM = (M + TILE_M - 1) / TILE_M;
    if (parts > tilesM) parts = tilesM;
    if (parts < 1) parts = 1;
    *mblk = ((tilesM + parts - 1) / parts) * TILE_M;
    *mparts = (M + *mblk - 1) / *mblk;
}

static void avx_xwt(int nt, const void *P_, int out, int in, const float *x, int M, float *y, int acc, void *scratch) {
    if (M <= 0 || out <= 0) return;
    const bf16 *P = P_;
    int K2 = pairs(in), Kp = 2 * K2, np = panels(out), mparts, mblk;
    if (!K2) {
        if (!acc) memset(y, 0, (size_t)M * out * sizeof *y);
        return;
    }
    bf16 *xb = scratch;
    cvt_rows(nt, x, M, in, xb, Kp);
    split_rows(np, nt, M, &mparts, &mblk);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int it = 0; it < np * mparts; it++) {
        int p = it / mparts, m0 = it % mparts * mblk, m1 = m0 + mblk < M ? m0 + mblk : M;
        __mmask16 mk[4];
        col_masks(out - p * PANEL, mk);
        for (int k0 = 0; k0 < K2; k0 += KC2)
            tile_rows(xb + 2 * (size_t)k0, Kp, m0, m1, P + ((size_t)p * K2 + k0) * PSTEP,
                      K2 - k0 < KC2 ? K2 - k0 : KC2, y + (size_t)p * PANEL, out, mk, acc || k0 > 0);
    }
}

/* The transposed panel block of input columns [64q, 64q + 64) and output
 * row pairs [jj0, jj0 + kc2) into Q [kc2][64][2]: Q[jj][c] = (W[2jj][64q+c],
 * W[2jj+1][64q+c]). The packed panels hold, for a row pair (2jj, 2jj+1) and
 * a column pair (2k, 2k+1), the 64-bit word W[2jj][2k], W[2jj][2k+1],
 * W[2jj+1][2k], W[2jj+1][2k+1] (rows 2jj and 2jj+1 are neighbours in one
 * panel); consecutive k are one panel step (256 bytes) apart. So each 8
 * words of a Q row are one gather, and swapping each word's middle halves
 * makes them Q's two column pairs. Column pairs past the matrix read as
 * zero. */
TGT static void build_q(const bf16 *P, int K2, int q, int jj0, int kc2, bf16 *Q) {
    const __m512i step = _mm512_setr_epi64(0, 256, 512, 768, 1024, 1280, 1536, 1792);
    const __m512i swap = _mm512_broadcast_i32x4(_mm_setr_epi8(0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15));
    int kbase = q * (PANEL / 2);
    __mmask8 mv[4];
    for (int v = 0; v < 4; v++) {
        int n = K2 - kbase - 8 * v;
        mv[v] = (__mmask8)(n >= 8 ? 0xff : n <= 0 ? 0 : (1u << n) - 1);
    }
    for (int jj = jj0; jj < jj0 + kc2; jj++) {
        int j = 2 * jj;
        const bf16 *base = P + ((size_t)(j / PANEL) * K2 + kbase) * PSTEP + (size_t)(j % PANEL) * 2;
        bf16 *o = Q + (size_t)(jj - jj0) * PSTEP;
        for (int v = 0; v < 4; v++) {
            __m512i w = _mm512_mask_i64gather_epi64(_mm512_setzero_si512(), mv[v], step,
                                                    (const void *)(base + (size_t)v * 8 * PSTEP), 1);
            _mm512_storeu_si512(o + 32 * v, _mm512_shuffle_epi8(w, swap));
        }
    }
}

static void avx_gw(int nt, const void *P_, int out, int in, const float *g, int M, float *dx, int acc, void *scratch) {
    if (M <= 0 || in <= 0) return;
    const bf16 *P = P_;
    int K2 = pairs(in), Ko2 = pairs(out), Ko = 2 * Ko2, nq = panels(in), mparts, mblk;
    if (!Ko2) {
        if (!acc) memset(dx, 0, (size_t)M * in * sizeof *dx);
        return;
    }
    bf16 *gb = scratch, *qbuf = (bf16 *)((char *)scratch + align64((size_t)M * Ko * sizeof(bf16)));
    cvt_rows(nt, g, M, out, gb, Ko);
    split_rows(nq, nt, M, &mparts, &mblk);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int it = 0; it < nq * mparts; it++) {
        int q = it / mparts, m0 = it % mparts * mblk, m1 = m0 + mblk < M ? m0 + mblk : M;
        bf16 *Q = qbuf + (size_t)omp_get_thread_num() * KC2 * PSTEP;
        __mmask16 mk[4];
        col_masks(in - q * PANEL, mk);
        for (int j0 = 0; j0 < Ko2; j0 += KC2) {
            int kc2 = Ko2 - j0 < KC2 ? Ko2 - j0 : KC2;
            build_q(P, K2, q, j0, kc2, Q);
            tile_rows(gb + 2 * (size_t)j0, Ko, m0, m1, Q, kc2, dx + (size_t)q * PANEL, in, mk, acc || j0 > 0);
        }
    }
}

const kbf_kernel kbf_avx512 = {"AVX512_BF16 6x64", avx_xwt, avx_gw};

#else

const kbf_kernel kbf_avx512 = {"AVX512_BF16 6x64 (not built on this architecture)", ref_xwt, ref_gw};

#endif

/* ---- self-test ---- */

/* (M, out, in): size 1, odd sizes around the tiles and panels, a lone row
 * tail, forward k blocks (in > 512) and backward ones (out > 512), more
 * panels than threads and fewer. */
static const struct {
    int M, out, in;
} shapes[] = {
    {1, 1, 1}, {1, 67, 129}, {7, 1, 300}, {6, 64, 64}, {13, 65, 17}, {5, 130, 3},
    {2, 3, 1031}, {9, 1030, 40}, {20, 200, 70}, {31, 129, 66},
};
#define ST_GUARD 16 /* floats past each output, which must stay untouched */

static float st_val(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return (float)((*s >> 40) & 0xffff) / 32768.0f - 1.0f;
}

/* Checks one product (back: dx = g W, else y = x W^T) of k against the
 * reference in double: 0, or -1 with the first bad element. */
static int st_case(const kbf_kernel *k, int back, int M, int out, int in, int nt, int acc, const bf16 *P,
                   const float *x, float *C, float *C0, void *scratch, lr_err *err) {
    int n = back ? in : out, K = back ? out : in, K2 = pairs(in);
    size_t nc = (size_t)M * n;
    uint64_t s = 0x2545f4914f6cdd1dull ^ (uint64_t)(M * 131 + out * 7 + in + back * 3 + acc);
    for (size_t i = 0; i < nc + ST_GUARD; i++) C0[i] = acc || i >= nc ? st_val(&s) : NAN;
    memcpy(C, C0, (nc + ST_GUARD) * sizeof *C);
    (back ? k->gw : k->xwt)(nt, P, out, in, x, M, C, acc, scratch);
    if (memcmp(C + nc, C0 + nc, ST_GUARD * sizeof *C))
        return lr_errf(err, "bf16 %s M=%d out=%d in=%d: wrote past the output", back ? "g W" : "x W^T", M, out, in);
    for (int i = 0; i < M; i++)
        for (int c = 0; c < n; c++) {
            double ref = 0, mag = 0;
            for (int r = 0; r < K; r++) {
                double a = kbf_to_f32(kbf_from_f32(x[(size_t)i * K + r]));
                double w = kbf_to_f32(P[back ? pidx(K2, r, c) : pidx(K2, c, r)]);
                ref += a * w;
                mag += fabs(a * w);
            }
            size_t at = (size_t)i * n + c;
            if (acc) {
                ref += C0[at];
                mag += fabs(C0[at]);
            }
            /* products of bf16 are exact in f32; the sums stay within K + 2 roundings of mag */
            double tol = (K + 2) * FLT_EPSILON * mag + 1e-30;
            if (!(fabs(C[at] - ref) <= tol))
                return lr_errf(err, "bf16 %s M=%d out=%d in=%d threads=%d%s: [%d][%d] = %.9g, reference %.9g",
                               back ? "g W" : "x W^T", M, out, in, nt, acc ? " acc" : "", i, c, C[at], ref);
        }
    return 0;
}

int kbf_selftest(const kbf_kernel *k, lr_err *err) {
    int rc = 0;
    for (size_t t = 0; t < sizeof shapes / sizeof shapes[0] && !rc; t++) {
        int M = shapes[t].M, out = shapes[t].out, in = shapes[t].in, big = out > in ? out : in;
        float *W = malloc((size_t)out * in * sizeof *W), *x = malloc((size_t)M * big * sizeof *x);
        float *C = malloc(((size_t)M * big + ST_GUARD) * sizeof *C);
        float *C0 = malloc(((size_t)M * big + ST_GUARD) * sizeof *C0);
        bf16 *P = aligned_alloc(64, align64(kbf_packed_bytes(out, in)));
        void *scratch = aligned_alloc(64, align64(kbf_scratch_bytes(M, out, in, 2)));
        if (!W || !x || !C || !C0 || !P || !scratch) {
            rc = lr_errp(err, LR_E_NOMEM, NULL, "out of memory for the bf16 self-test");
        } else {
            uint64_t s = 0x9e3779b97f4a7c15ull ^ (uint64_t)t;
            for (size_t i = 0; i < (size_t)out * in; i++) W[i] = st_val(&s);
            for (size_t i = 0; i < (size_t)M * big; i++) x[i] = st_val(&s);
            /* Conv1D's [in, out] source for every other shape: both packing paths run */
            kbf_pack(P, W, out, in, (int)(t & 1), 1);
            for (int c = 0; c < 8 && !rc; c++)
                rc = st_case(k, c & 1, M, out, in, 1 + (c >> 1 & 1), c >> 2, P, x, C, C0, scratch, err);
        }
        free(W), free(x), free(C), free(C0), free(P), free(scratch);
    }
    return rc;
}

/* ---- choosing ---- */

static pthread_once_t once = PTHREAD_ONCE_INIT;
static const kbf_kernel *chosen;
static char why_not[512];

static void init_once(void) {
    kg_cpu c;
    kg_cpu_features(&c);
    if (!KBF_X86 || !c.avx512f || !c.avx512bw || !c.avx512_bf16) {
        snprintf(why_not, sizeof why_not,
                 "this CPU has no AVX512_BF16 (the bf16 matmuls need the avx512_bf16 feature; CPUID vendor '%s')",
                 c.vendor);
        return;
    }
    lr_err e = {0};
    if (kbf_selftest(&kbf_avx512, &e)) {
        fprintf(stderr, "lora-worker: warning: bf16 kernel %s refused by its self-test: %s; matmuls stay f32\n",
                kbf_avx512.name, e.msg);
        snprintf(why_not, sizeof why_not, "the bf16 kernel failed its self-test on this CPU (%.400s)", e.msg);
        return;
    }
    chosen = &kbf_avx512;
}

const kbf_kernel *kbf_current(lr_err *why) {
    pthread_once(&once, init_once);
    if (!chosen && why) lr_errp(why, LR_E_INVALID, "compute_dtype", "%s", why_not);
    return chosen;
}
