/* q4gemm: the tile loops of a linear op on a 4-bit weight W [out, in]
 * (QLoRA): dequant(r0, nr, tile) writes weight rows [r0, r0 + nr) into the
 * tile (row-major [nr, in], operand elements of es bytes) and gemm is the
 * backend's row-major GemmEx wrapper (ta, tb, M, N, K, alpha, A, lda, B,
 * ldb, beta, C, ldc). Host code, included by backend_cuda.cu with cuBLAS
 * and the dequant kernel behind the callables, and by
 * tests/integration/test_cuda_q4_emu.sh with host ones. */
#ifndef LR_CUDA_Q4GEMM_CUH
#define LR_CUDA_Q4GEMM_CUH

#include <stddef.h>

/* z[N, out] = xop W^T + beta z: each tile writes its columns of z. */
template <typename Dequant, typename Gemm>
static void q4_xwt(Dequant dequant, Gemm gemm, int N, int in, int out, int qrows, const void *xop, void *tile,
                   float beta, float *z) {
    for (int r0 = 0; r0 < out; r0 += qrows) {
        int nr = out - r0 < qrows ? out - r0 : qrows;
        if (dequant(r0, nr, tile)) return;
        gemm(0, 1, N, nr, in, 1.0f, xop, in, tile, in, beta, z + r0, out);
    }
}

/* dx[N, in] = gop W + beta dx, gop [N, out]: the first tile scales dx by
 * beta, the others add their share g[:, r0:r0+nr] W[r0:r0+nr, :]. */
template <typename Dequant, typename Gemm>
static void q4_gw(Dequant dequant, Gemm gemm, int N, int in, int out, int qrows, const void *gop, size_t es,
                  void *tile, float beta, float *dx) {
    for (int r0 = 0; r0 < out; r0 += qrows) {
        int nr = out - r0 < qrows ? out - r0 : qrows;
        if (dequant(r0, nr, tile)) return;
        gemm(0, 0, N, in, nr, 1.0f, (const char *)gop + (size_t)r0 * es, out, tile, in, r0 ? 1.0f : beta, dx, in);
    }
}

#endif
