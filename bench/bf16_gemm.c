/* bench/bf16_gemm.c: what a bf16 GEMM reaches on this CPU next to the f32
 * sgemm the engine runs (issue 14, item 4), on the engine's shapes.
 *
 * C[M,N] = A[M,K] . W[N,K]^T, a linear layer's forward (A: activations in
 * f32, W: frozen weights), f32 accumulation everywhere. Candidates:
 *   f32   OpenBLAS sgemm (run.sh sets OPENBLAS_CORETYPE to the engine's
 *         choice, kernels/cpu/gemm_select)
 *   bf16  oneDNN's dnnl_gemm_bf16bf16f32 (libdnnl.so.2, loaded if present;
 *         Debian's OpenBLAS 0.3.21 exports no sbgemm)
 *   bf16  a hand-written AVX512_BF16 kernel in tinyBLAS's manner: W packed
 *         once into 64-column panels of bf16 pairs (as frozen weights would
 *         be at load), 6 x 64 tiles of vdpbf16ps with A's pairs broadcast,
 *         A converted to bf16 inside the timed call (the engine's
 *         activations are f32).
 * Each round times every candidate once; the best of all rounds is printed,
 * since this machine is shared and only the best says what it can do. Each
 * bf16 result is checked against the f32 sgemm of the same bf16-rounded
 * inputs.
 *
 *   cc -O2 -fopenmp bench/bf16_gemm.c -o bf16_gemm -lopenblas -ldl -lm
 *   ./bf16_gemm [rounds] [threads]                           */
#include <cblas.h>
#include <dlfcn.h>
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef uint16_t bf16;
typedef int (*dnnl_bf16_fn)(char, char, int64_t, int64_t, int64_t, float, const bf16 *, int64_t, const bf16 *,
                            int64_t, float, float *, int64_t);

#define PANEL 64 /* W columns per panel: four vectors of 16 */
#define TILE_M 6 /* A rows per tile: 6 x 4 accumulators + 4 W vectors = 28 of 32 registers */

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

/* round to nearest even, as vcvtne2ps2bf16 does */
static bf16 to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fff + ((u >> 16) & 1);
    return (bf16)(u >> 16);
}

static float from_bf16(bf16 b) {
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* W[N,K] -> panels [N/64][K/2][64][2]: the pair (k, k+1) of 64 columns in one
 * 128-byte run, what one k-step of the tile loads. */
static void pack_w(const bf16 *W, int N, int K, bf16 *P) {
    for (int p = 0; p < N / PANEL; p++)
        for (int kk = 0; kk < K / 2; kk++)
            for (int c = 0; c < PANEL; c++) {
                const bf16 *w = W + (size_t)(p * PANEL + c) * K + 2 * kk;
                bf16 *d = P + (((size_t)p * (K / 2) + kk) * PANEL + c) * 2;
                d[0] = w[0];
                d[1] = w[1];
            }
}

__attribute__((target("avx512f,avx512bf16"))) static void to_bf16_rows(const float *A, int n, bf16 *out) {
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(A + i + 16), _mm512_loadu_ps(A + i));
        _mm512_storeu_si512(out + i, (__m512i)v);
    }
    for (; i < n; i++) out[i] = to_bf16(A[i]);
}

#define TILE_ROW(i)                                                                  \
    do {                                                                             \
        int32_t pair;                                                                \
        memcpy(&pair, A + (size_t)(i) * K + 2 * kk, 4);                              \
        __m512bh a = (__m512bh)_mm512_set1_epi32(pair);                              \
        acc[i][0] = _mm512_dpbf16_ps(acc[i][0], a, w0);                              \
        acc[i][1] = _mm512_dpbf16_ps(acc[i][1], a, w1);                              \
        acc[i][2] = _mm512_dpbf16_ps(acc[i][2], a, w2);                              \
        acc[i][3] = _mm512_dpbf16_ps(acc[i][3], a, w3);                              \
    } while (0)

/* rows x 64 of C (+= when add) from kc columns of rows of A (row stride K)
 * and the matching kc rows of one panel. ROWS is a constant in each copy:
 * an accumulator indexed by a loop variable would live on the stack, so
 * the row loops are unrolled whole. */
#define TILE_FN(name, ROWS)                                                                                   \
    __attribute__((target("avx512f,avx512bf16"))) static void name(const bf16 *A, const bf16 *P, int K, int kc, \
                                                                     float *C, int ldc, int add) {              \
        __m512 acc[ROWS][4];                                                                                  \
        _Pragma("GCC unroll 8") for (int i = 0; i < ROWS; i++)                                                \
            _Pragma("GCC unroll 4") for (int j = 0; j < 4; j++) acc[i][j] = _mm512_setzero_ps();              \
        for (int kk = 0; kk < kc / 2; kk++) {                                                                 \
            const bf16 *p = P + (size_t)kk * PANEL * 2;                                                       \
            __m512bh w0 = (__m512bh)_mm512_loadu_si512(p), w1 = (__m512bh)_mm512_loadu_si512(p + 32),        \
                     w2 = (__m512bh)_mm512_loadu_si512(p + 64), w3 = (__m512bh)_mm512_loadu_si512(p + 96);   \
            _Pragma("GCC unroll 8") for (int i = 0; i < ROWS; i++) TILE_ROW(i);                               \
        }                                                                                                     \
        _Pragma("GCC unroll 8") for (int i = 0; i < ROWS; i++)                                                \
            _Pragma("GCC unroll 4") for (int j = 0; j < 4; j++) {                                             \
                float *c = C + (size_t)i * ldc + 16 * j;                                                      \
                _mm512_storeu_ps(c, add ? _mm512_add_ps(acc[i][j], _mm512_loadu_ps(c)) : acc[i][j]);          \
            }                                                                                                 \
    }
TILE_FN(tile6, 6)
TILE_FN(tile1, 1)

static void tile(int rows, const bf16 *A, const bf16 *P, int K, int kc, float *C, int ldc, int add) {
    if (rows == TILE_M) {
        tile6(A, P, K, kc, C, ldc, add);
        return;
    }
    for (int i = 0; i < rows; i++) tile1(A + (size_t)i * K, P, K, kc, C + (size_t)i * ldc, ldc, add);
}

/* A's rows to bf16 (vcvtne2ps2bf16 where the CPU has it), in parallel. */
static void convert_a(const float *A, int M, int K, bf16 *Ab, int has_bf16) {
#pragma omp parallel for schedule(static)
    for (int i = 0; i < M; i++) {
        if (has_bf16) {
            to_bf16_rows(A + (size_t)i * K, K, Ab + (size_t)i * K);
        } else {
            for (int k = 0; k < K; k++) Ab[(size_t)i * K + k] = to_bf16(A[(size_t)i * K + k]);
        }
    }
}

/* Blocks: KC columns of a 6-row tile of A stay in L1 (6 KB) while MC rows of
 * A (MC x KC, 192 KB) stay in L2 for every panel; each panel's KC rows (64
 * KB) stream once per A block. */
#define KC 512
#define MC 192

/* N % 64 == 0 and K even, as every shape below. One parallel region: each
 * thread owns a range of panels (disjoint columns of C), so the blocks need
 * no barrier; on this shared machine every extra region costs milliseconds
 * when one of its threads is descheduled. */
static void gemm_hand(int M, int N, int K, const float *A, bf16 *Ab, const bf16 *P, float *C) {
    convert_a(A, M, K, Ab, 1);
    int panels = N / PANEL;
#pragma omp parallel
    {
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        int p0 = panels * t / nt, p1 = panels * (t + 1) / nt;
        for (int k0 = 0; k0 < K; k0 += KC) {
            int kc = K - k0 < KC ? K - k0 : KC;
            for (int m0 = 0; m0 < M; m0 += MC) {
                int mc = M - m0 < MC ? M - m0 : MC;
                for (int p = p0; p < p1; p++)
                    for (int i = m0; i < m0 + mc; i += TILE_M)
                        tile(m0 + mc - i < TILE_M ? m0 + mc - i : TILE_M, Ab + (size_t)i * K + k0,
                             P + ((size_t)p * (K / 2) + k0 / 2) * PANEL * 2, K, kc, C + (size_t)i * N + p * PANEL,
                             N, k0 > 0);
            }
        }
    }
}

static double max_rel_err(const float *C, const float *R, size_t n) {
    double e = 0, scale = 0;
    for (size_t i = 0; i < n; i++) scale = fmax(scale, fabs(R[i]));
    for (size_t i = 0; i < n; i++) e = fmax(e, fabs(C[i] - R[i]));
    return scale > 0 ? e / scale : e;
}

static void shape(const char *what, int M, int N, int K, int rounds, dnnl_bf16_fn dnnl, int hand) {
    float *A = malloc(sizeof(float) * M * K), *W = malloc(sizeof(float) * N * K);
    float *R = malloc(sizeof(float) * M * N), *C = malloc(sizeof(float) * M * N);
    /* 64-byte aligned panels: a load across two cache lines costs two */
    bf16 *Ab = malloc(2 * (size_t)M * K), *Wb = malloc(2 * (size_t)N * K);
    bf16 *P = aligned_alloc(64, (2 * (size_t)N * K + 63) / 64 * 64);
    if (!A || !W || !R || !C || !Ab || !Wb || !P) {
        fprintf(stderr, "bf16_gemm: out of memory\n");
        exit(1);
    }
    srand(1);
    /* inputs that bf16 holds exactly, so every candidate computes the same
     * products and only the summation differs */
    for (size_t i = 0; i < (size_t)M * K; i++) A[i] = from_bf16(to_bf16(rand() / (float)RAND_MAX - 0.5f));
    for (size_t i = 0; i < (size_t)N * K; i++) {
        Wb[i] = to_bf16(rand() / (float)RAND_MAX - 0.5f);
        W[i] = from_bf16(Wb[i]);
    }
    double t0 = now();
    if (hand) pack_w(Wb, N, K, P);
    double pack_ms = (now() - t0) * 1e3;
    double best[3] = {1e9, 1e9, 1e9}, err[3] = {0, 0, 0};
    for (int r = 0; r <= rounds; r++) { /* round 0 warms up */
        t0 = now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1, A, K, W, K, 0, R, N);
        double t = now() - t0;
        if (r && t < best[0]) best[0] = t;
        if (dnnl) {
            t0 = now();
            /* oneDNN takes both operands in bf16: A's conversion is timed */
            convert_a(A, M, K, Ab, hand);
            dnnl('N', 'T', M, N, K, 1, Ab, K, Wb, K, 0, C, N);
            t = now() - t0;
            if (r && t < best[1]) best[1] = t;
            err[1] = max_rel_err(C, R, (size_t)M * N);
        }
        if (hand) {
            t0 = now();
            gemm_hand(M, N, K, A, Ab, P, C);
            t = now() - t0;
            if (r && t < best[2]) best[2] = t;
            err[2] = max_rel_err(C, R, (size_t)M * N);
        }
    }
    double fl = 2.0 * M * N * K * 1e-9;
    printf("%-34s f32 OpenBLAS %6.1f GFLOP/s", what, fl / best[0]);
    if (dnnl) printf(" | bf16 oneDNN %6.1f (%.2fx, err %.1e)", fl / best[1], best[0] / best[1], err[1]);
    if (hand) printf(" | bf16 hand %6.1f (%.2fx, err %.1e, pack %.0f ms)", fl / best[2], best[0] / best[2], err[2],
                     pack_ms);
    printf("\n");
    free(A), free(W), free(R), free(C), free(Ab), free(Wb), free(P);
}

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 5, threads = argc > 2 ? atoi(argv[2]) : 2;
    openblas_set_num_threads(threads);
    omp_set_num_threads(threads);
    int hand = __builtin_cpu_supports("avx512bf16");
    void *lib = dlopen("libdnnl.so.2", RTLD_NOW);
    dnnl_bf16_fn dnnl = lib ? (dnnl_bf16_fn)dlsym(lib, "dnnl_gemm_bf16bf16f32") : NULL;
    printf("bf16 GEMM vs f32 sgemm, %d threads, best of %d rounds; OpenBLAS core %s; AVX512_BF16 %s; oneDNN %s\n",
           threads, rounds, openblas_get_corename(), hand ? "yes" : "no (hand kernel skipped)",
           dnnl ? "libdnnl.so.2" : "absent");
    shape("2048 x 2048 x 2048", 2048, 2048, 2048, rounds, dnnl, hand);
    shape("gpt2 mlp up   1024 x 3072 x 768", 1024, 3072, 768, rounds, dnnl, hand);
    shape("gpt2 attn qkv 1024 x 2304 x 768", 1024, 2304, 768, rounds, dnnl, hand);
    shape("qwen mlp up    512 x 4864 x 896", 512, 4864, 896, rounds, dnnl, hand);
    shape("qwen mlp down  512 x 896 x 4864", 512, 896, 4864, rounds, dnnl, hand);
    return 0;
}
