/* gemm_bf16: frozen linear weights in bf16 and the two products a frozen
 * linear needs, on CPUs with AVX512_BF16 (issue 14, item 4).
 *
 * A weight W [out, in] is packed once, at load, into panels of 64 output
 * rows: panel p holds, for each pair of input columns (2k, 2k+1), the pairs
 * W[64p + c][2k..2k+1] for c = 0..63, i.e. 128 bf16 in a row, which is
 * what one k-step of the micro-kernel (6 x 64 tiles of vdpbf16ps, in
 * llamafile tinyBLAS's manner) loads. Missing rows and the odd column are
 * zero. That is half W's f32 bytes (plus padding to 64 rows).
 *
 *   forward   y[M,out] = x[M,in] W^T    reads the panels as they are;
 *   backward dx[M,in]  = g[M,out] W     builds the transposed panel of each
 *             64 input columns, 256 output rows at a time, into a 64 KiB
 *             per-thread buffer (gathers of the same panels), so W is
 *             stored once. dW is never needed: the weights are frozen.
 * Activations are f32 and converted to bf16 (round to nearest even) per
 * call; products accumulate in f32.
 *
 * The kernels are compiled with target attributes, so the binary runs on
 * any x86-64; kbf_current() uses them only where CPUID says AVX512_BF16
 * (with AVX512F/BW) and they pass a self-test against a plain reference on
 * awkward shapes. Threads: OpenMP, nt of them, over panels of output
 * columns (and row blocks when there are fewer panels than threads), so a
 * result is a fixed function of nt and never summed across threads. */
#ifndef LR_GEMM_BF16_H
#define LR_GEMM_BF16_H

#include <stddef.h>
#include <stdint.h>
#include "common/err.h"

/* Bytes of W [out, in] packed. */
size_t kbf_packed_bytes(int out, int in);

/* Packs f32 W into dst (kbf_packed_bytes) on nt threads: W is [out, in],
 * or [in, out] when w_in_out (GPT-2's Conv1D). Rounds to nearest even. */
void kbf_pack(void *dst, const float *W, int out, int in, int w_in_out, int nt);

/* Row j of a packed W as f32 (row[in]), for DoRA's weight norms. */
void kbf_row(const void *P, int out, int in, int j, float *row);

/* Scratch bytes the products need for M rows with nt threads. */
size_t kbf_scratch_bytes(int M, int out, int in, int nt);

/* A bf16 kernel: y[M,out] = x W^T and dx[M,in] = g W with packed W,
 * added to the output when acc (else it is overwritten without being
 * read). scratch: kbf_scratch_bytes(M, out, in, nt) bytes, any alignment. */
typedef struct kbf_kernel {
    const char *name;
    void (*xwt)(int nt, const void *P, int out, int in, const float *x, int M, float *y, int acc, void *scratch);
    void (*gw)(int nt, const void *P, int out, int in, const float *g, int M, float *dx, int acc, void *scratch);
} kbf_kernel;

/* The AVX512_BF16 kernel (call it only where the CPU has the feature). */
extern const kbf_kernel kbf_avx512;
/* The plain reference: activations rounded to bf16 as the kernel does,
 * sums in double. Any CPU; slow. */
extern const kbf_kernel kbf_reference;

/* Compares k with the reference on awkward shapes (sizes 1, odd in and
 * out, row and column tails, several k blocks, 1 and 2 threads, acc over
 * values and overwrite over NaN, the bytes past the output untouched).
 * 0 when it agrees, else -1 with the first disagreement in err. */
int kbf_selftest(const kbf_kernel *k, lr_err *err) LR_WARN_UNUSED;

/* The kernel this process uses for bf16 linears, checked once (thread-
 * safe): NULL with the reason in why (when not NULL) where the CPU lacks
 * AVX512_BF16 or the kernel failed its self-test (then also a warning on
 * stderr). */
const kbf_kernel *kbf_current(lr_err *why);

/* bf16 <-> f32, round to nearest even. */
uint16_t kbf_from_f32(float f);
float kbf_to_f32(uint16_t h);

#endif
