/* reduce: the grid-stride loop and the warp and block reductions the
 * kernels share (sums in f64 where a result must not depend on the launch).
 * Device code only, included by backend_cuda.cu; the DoRA / KL emulation
 * test compiles it as host C++ (tests/integration/test_cuda_dora_kl_emu.sh). */
#ifndef LR_CUDA_REDUCE_CUH
#define LR_CUDA_REDUCE_CUH

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

#endif
