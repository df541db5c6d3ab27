/* mma: the tensor-core helpers of the attention kernels: mma.sync
 * m16n8k16 with bf16 operands and f32 accumulators. Fragment layouts (PTX
 * ISA, "Matrix Fragments for mma.m16n8k16"), lane = 4 g + t:
 *   A (16 x 16, row-major), four 32-bit registers of two bf16:
 *     {row g, cols 2t, 2t+1}, {row g+8, cols 2t, 2t+1},
 *     {row g, cols 2t+8, 2t+9}, {row g+8, cols 2t+8, 2t+9};
 *   B (16 x 8, k x n), two registers: {k 2t, 2t+1; col g}, {k 2t+8, 2t+9; col g};
 *   C, D (16 x 8 f32): {row g: cols 2t, 2t+1}, {row g+8: cols 2t, 2t+1}.
 * The lower-indexed element sits in the low 16 bits. So two adjacent C
 * tiles, rounded and packed, are an A fragment (P V without a trip through
 * shared memory), and a pair of a row-major tile's neighbouring elements is
 * one 32-bit shared load. The host emulation test supplies its own tc_mma,
 * tc_bf16 and ld32 (the kernels use nothing else of the hardware). Device
 * code only, included by backend_cuda.cu before attention.cuh. */
#ifndef LR_CUDA_MMA_CUH
#define LR_CUDA_MMA_CUH

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

#endif
