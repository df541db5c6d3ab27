/* bench/bf16_gemm.c: the engine's bf16 GEMM (kernels/cpu/gemm_bf16.c, the
 * kernel compute_dtype bf16 runs) next to oneDNN's and the f32 sgemm, on
 * the engine's shapes, for both products a frozen linear needs:
 *   fwd  Y[M,out] = X[M,in] W^T
 *   bwd  dX[M,in] = dY[M,out] W
 * (W [out, in] frozen, activations f32, f32 accumulation everywhere.)
 *   f32   OpenBLAS sgemm on the kernel gemm_select picks, split across the
 *         threads by output columns as backend_cpu.c does
 *   bf16  oneDNN 2.6's dnnl_gemm_bf16bf16f32 (libdnnl.so.2 through dlopen,
 *         if present) on W stored once in bf16 ('N','T' forward, 'N','N'
 *         backward; the activations' conversion to bf16 is timed)
 *   bf16  the engine's kernel: W packed once (kbf_pack, not timed), 6 x 64
 *         vdpbf16ps tiles; the backward transposes 64 KiB blocks of the
 *         same panels per call (timed)
 * Each round times every candidate once; the best of all rounds is printed,
 * since this machine is shared and only the best says what it can do. Each
 * bf16 result is checked against the f32 one of the same bf16-rounded
 * inputs (max |diff| / max |f32|).
 *
 *   cc -std=c11 -O2 -fopenmp -I. -I<openblas include> bench/bf16_gemm.c \
 *      kernels/cpu/gemm_bf16.c kernels/cpu/gemm_select.c common/err.c \
 *      -o bf16_gemm -lopenblas -ldl -lm
 *   ./bf16_gemm [rounds] [threads]                                      */
#include <dlfcn.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/cpu/gemm_bf16.h"
#include "kernels/cpu/gemm_select.h"

typedef uint16_t bf16;
typedef int (*dnnl_bf16_fn)(char, char, int64_t, int64_t, int64_t, float, const bf16 *, int64_t, const bf16 *,
                            int64_t, float, float *, int64_t);

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

/* C[M,n] = A[M,K] op(W) on nt threads, split by output columns. */
static void f32_gemm(int nt, int back, int M, int out, int in, const float *A, const float *W, float *C) {
    int n = back ? in : out, K = back ? out : in;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int t = 0; t < nt; t++) {
        int c0 = n * t / nt, c1 = n * (t + 1) / nt;
        if (back)
            kg_sgemm(0, 0, M, c1 - c0, K, 1.0f, A, K, W + c0, in, 0.0f, C + c0, n);
        else
            kg_sgemm(0, 1, M, c1 - c0, K, 1.0f, A, K, W + (size_t)c0 * in, in, 0.0f, C + c0, n);
    }
}

static void to_bf16(int nt, const float *x, size_t n, bf16 *o) {
#pragma omp parallel for num_threads(nt) schedule(static)
    for (size_t i = 0; i < n; i++) o[i] = kbf_from_f32(x[i]);
}

static double rel_err(const float *C, const float *R, size_t n) {
    double e = 0, s = 0;
    for (size_t i = 0; i < n; i++) e = fmax(e, fabs(C[i] - R[i])), s = fmax(s, fabs(R[i]));
    return s > 0 ? e / s : e;
}

static void shape(const char *what, int M, int out, int in, int rounds, int nt, dnnl_bf16_fn dnnl,
                  const kbf_kernel *k) {
    int big = out > in ? out : in;
    float *A = malloc(sizeof(float) * M * big), *W = malloc(sizeof(float) * out * in);
    float *R = malloc(sizeof(float) * M * big), *C = malloc(sizeof(float) * M * big);
    bf16 *Ab = malloc(2 * (size_t)M * big), *Wb = malloc(2 * (size_t)out * in);
    void *P = aligned_alloc(64, (kbf_packed_bytes(out, in) + 63) / 64 * 64);
    void *S = aligned_alloc(64, (kbf_scratch_bytes(M, out, in, nt) + 63) / 64 * 64);
    if (!A || !W || !R || !C || !Ab || !Wb || !P || !S) {
        fprintf(stderr, "bf16_gemm: out of memory\n");
        exit(1);
    }
    srand(1);
    /* inputs that bf16 holds exactly, so every candidate computes the same
     * products and only the summation differs */
    for (size_t i = 0; i < (size_t)M * big; i++) A[i] = kbf_to_f32(kbf_from_f32(rand() / (float)RAND_MAX - 0.5f));
    for (size_t i = 0; i < (size_t)out * in; i++) {
        Wb[i] = kbf_from_f32(rand() / (float)RAND_MAX - 0.5f);
        W[i] = kbf_to_f32(Wb[i]);
    }
    if (k) kbf_pack(P, W, out, in, 0, nt);
    double fl = 2.0 * M * out * in * 1e-9;
    printf("%-30s", what);
    for (int back = 0; back < 2; back++) {
        int n = back ? in : out, K = back ? out : in;
        double best[3] = {1e9, 1e9, 1e9}, err[3] = {0, 0, 0}, t0, t;
        for (int r = 0; r <= rounds; r++) { /* round 0 warms up */
            t0 = now();
            f32_gemm(nt, back, M, out, in, A, W, R);
            t = now() - t0;
            if (r && t < best[0]) best[0] = t;
            if (dnnl) {
                t0 = now();
                to_bf16(nt, A, (size_t)M * K, Ab);
                dnnl('N', back ? 'N' : 'T', M, n, K, 1.0f, Ab, K, Wb, in, 0.0f, C, n);
                t = now() - t0;
                if (r && t < best[1]) best[1] = t;
                err[1] = rel_err(C, R, (size_t)M * n);
            }
            if (k) {
                t0 = now();
                (back ? k->gw : k->xwt)(nt, P, out, in, A, M, C, 0, S);
                t = now() - t0;
                if (r && t < best[2]) best[2] = t;
                err[2] = rel_err(C, R, (size_t)M * n);
            }
        }
        printf(" | %s f32 %5.0f", back ? "bwd" : "fwd", fl / best[0]);
        if (dnnl) printf(" oneDNN %5.0f (%.2fx, %.0e)", fl / best[1], best[0] / best[1], err[1]);
        if (k) printf(" engine %5.0f (%.2fx, %.0e)", fl / best[2], best[0] / best[2], err[2]);
    }
    printf("\n");
    free(A), free(W), free(R), free(C), free(Ab), free(Wb), free(P), free(S);
}

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 5, nt = argc > 2 ? atoi(argv[2]) : 2;
    omp_set_num_threads(nt);
    const kg_kernel *f32 = kg_current();
    lr_err why = {0};
    const kbf_kernel *k = kbf_current(&why);
    void *lib = dlopen("libdnnl.so.2", RTLD_NOW);
    dnnl_bf16_fn dnnl = NULL;
    if (lib) *(void **)&dnnl = dlsym(lib, "dnnl_gemm_bf16bf16f32");
    printf("bf16 GEMM vs f32 sgemm (GFLOP/s), %d thread%s, best of %d rounds; f32 %s; engine bf16 %s; oneDNN %s\n", nt,
           nt == 1 ? "" : "s", rounds, f32->name, k ? k->name : why.msg, dnnl ? "libdnnl.so.2" : "absent");
    shape("gpt2 attn qkv 1024x2304x768", 1024, 2304, 768, rounds, nt, dnnl, k);
    shape("gpt2 mlp up  1024x3072x768", 1024, 3072, 768, rounds, nt, dnnl, k);
    shape("gpt2 mlp dn  1024x768x3072", 1024, 768, 3072, rounds, nt, dnnl, k);
    shape("qwen q/o      512x896x896", 512, 896, 896, rounds, nt, dnnl, k);
    shape("qwen mlp up   512x4864x896", 512, 4864, 896, rounds, nt, dnnl, k);
    shape("qwen mlp dn   512x896x4864", 512, 896, 4864, rounds, nt, dnnl, k);
    return 0;
}
