/* quant_cuda: the dequant kernel of 4-bit weights (see quant_cuda.h). */
#include <cuda_bf16.h>
#include <cuda_runtime.h>

extern "C" {
#include "common/err.h"
}
#include "kernels/cuda/quant_cuda.h"

/* One thread per output element; the weight struct (code books included)
 * travels by value in the kernel's parameters. */
template <typename T>
__global__ void kq_dequant_kernel(const kq_weight q, int64_t i0, int64_t n, T *dst) {
    int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= n) return;
    int64_t i = i0 + k;
    float v = kq_dequant_elem(&q, (size_t)i, kq_scale_at(&q, (size_t)i / KQ_BLOCK));
    if constexpr (sizeof(T) == 2)
        dst[k] = __float2bfloat16_rn(v);
    else
        dst[k] = v;
}

int kq_cuda_dequant(const kq_weight *q, int64_t r0, int64_t nr, void *dst, int bf16, void *stream, lr_err *err) {
    int64_t n = nr * q->cols, i0 = r0 * q->cols;
    if (n <= 0) return 0;
    unsigned blocks = (unsigned)((n + 255) / 256);
    cudaStream_t s = (cudaStream_t)stream;
    if (bf16)
        kq_dequant_kernel<__nv_bfloat16><<<blocks, 256, 0, s>>>(*q, i0, n, (__nv_bfloat16 *)dst);
    else
        kq_dequant_kernel<float><<<blocks, 256, 0, s>>>(*q, i0, n, (float *)dst);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return lr_errf(err, "4-bit dequant kernel: %s", cudaGetErrorString(e));
    return 0;
}
