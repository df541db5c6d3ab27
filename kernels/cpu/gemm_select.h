/* gemm_select: the one place that decides which sgemm the CPU engine runs.
 *
 * Debian's OpenBLAS is built with DYNAMIC_ARCH: a library constructor picks
 * a core type from the CPU model number when the library loads, and a CPU
 * newer than the library gets an old kernel (OpenBLAS 0.3.21 runs Prescott's
 * SSE3 kernels on an Emerald Rapids, about a sixth of its AVX-512 speed).
 * So on first use this module reads the CPU's features with CPUID (and the
 * OS's XCR0, which says whether the vector registers are saved), names the
 * OpenBLAS core type with the widest kernels those features run, and
 * re-runs OpenBLAS's own dispatch with it (gotoblas_dynamic_init, exported
 * by DYNAMIC_ARCH builds; nothing else is in flight then). A user-set
 * OPENBLAS_CORETYPE is honoured as it is, and a core type OpenBLAS chose that
 * is at least as wide is kept. The kernel then passes a self-test against a
 * plain reference on awkward shapes before it is used; one that disagrees is
 * refused with a warning on stderr and the next candidate is tried
 * (OpenBLAS's own load-time choice, then the reference itself). */
#ifndef LR_GEMM_SELECT_H
#define LR_GEMM_SELECT_H

#include <stddef.h>
#include "common/err.h"

/* Row-major C[M,N] = alpha op(A) op(B) + beta C, op = transpose when ta / tb
 * is 1; beta == 0 overwrites C without reading it (it may hold NaN). */
typedef void (*kg_sgemm_fn)(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                            const float *B, int ldb, float beta, float *C, int ldc);

/* A kernel the engine can run. core: the OpenBLAS core type to switch to
 * before using sgemm, or NULL for a kernel that needs no switch. */
typedef struct kg_candidate {
    const char *name;
    const char *core;
    kg_sgemm_fn sgemm;
} kg_candidate;

/* The kernel in use and why. */
typedef struct kg_kernel {
    char name[64];    /* "OpenBLAS SkylakeX", "reference" */
    char isa[16];     /* widest vector ISA its inner loops use: avx512, avx2, avx, sse, scalar */
    char how[384];    /* how it was chosen, for probe, HELLO and logs */
    int fallback;     /* 1: a preferred kernel failed the self-test */
    kg_sgemm_fn sgemm;
} kg_kernel;

/* The CPU's features as CPUID and XCR0 report them (all 0 off x86). */
typedef struct kg_cpu {
    char vendor[13];
    int sse3, avx, fma, avx2, avx512f, avx512bw, avx512dq, avx512vl, avx512_bf16, amx_bf16;
} kg_cpu;

void kg_cpu_features(kg_cpu *out);

/* The kernel of this process, chosen and self-tested on the first call
 * (thread-safe; about 10 ms). Never NULL: the reference is the last resort. */
const kg_kernel *kg_current(void);

/* C = alpha op(A) op(B) + beta C with the current kernel. */
void kg_sgemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
              float beta, float *C, int ldc);

/* The plain reference: one dot product per element, accumulated in double. */
void kg_sgemm_ref(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                  int ldb, float beta, float *C, int ldc);

/* Compares fn with the reference on awkward shapes (sizes 1 and odd sizes,
 * all four transposes, padded leading dimensions, beta 0 over NaN, beta 1,
 * sizes past OpenBLAS's small-matrix path). 0 when it agrees, else -1 with
 * the first disagreement in err. */
int kg_selftest(kg_sgemm_fn fn, lr_err *err) LR_WARN_UNUSED;

/* Makes the first candidate that switches in and passes the self-test the
 * current kernel, warning on stderr about each one refused; how is
 * recorded in the result. -1 when none passes (the current kernel is then
 * unchanged). */
int kg_pick(const kg_candidate *cands, int n, const char *how, lr_err *err) LR_WARN_UNUSED;

/* Uses a kernel by name (benchmarks): "auto" (the automatic choice),
 * "default" (OpenBLAS's own choice at load), "reference", or an OpenBLAS
 * core type such as "SkylakeX". Self-tested like the automatic choice. */
int kg_use(const char *name, lr_err *err) LR_WARN_UNUSED;

/* The kernels worth timing on this CPU, as names for kg_use: "default", then
 * each OpenBLAS core type whose instructions the CPU runs (widest first).
 * Returns how many were written (at most cap). */
int kg_list(const char **names, int cap);

#endif
