/* dora: DoRA's kernels: the row norms of W + scale B A, the output and the
 * magnitude gradient (two passes, partial sums added in order, never float
 * atomics). Device code only, included by backend_cuda.cu after
 * reduce.cuh; the emulation test (tests/integration/test_cuda_dora_kl_emu.sh)
 * runs it as host C++. */
#ifndef LR_CUDA_DORA_CUH
#define LR_CUDA_DORA_CUH

/* wnorm[j] = ||W_j + scale (B A)_j|| for the rows j0 + blockIdx.x of a block
 * of B A rows (BA [gridDim.x, in], f32), one thread block per row, the
 * squares summed in f64. */
template <typename W>
__global__ void dora_norm_k(float *wnorm, const W *w, const float *BA, int j0, int in, int out, int w_in_out,
                            float scale) {
    __shared__ double sh[33];
    int j = j0 + blockIdx.x;
    const float *ba = BA + (size_t)blockIdx.x * in;
    double ss = 0;
    for (int i = threadIdx.x; i < in; i += blockDim.x)
        ss += lr_dora_sq(ldw(w, w_in_out ? (size_t)i * out + j : (size_t)j * in + i), ba[i], scale);
    ss = block_sumd(ss, sh);
    if (!threadIdx.x) wnorm[j] = (float)sqrt(ss);
}

/* y = lr_dora_out of the base term y (pre-bias), the dropped base term zb
 * (NULL without dropout) and the LoRA term u, per output feature j. */
template <typename W>
__global__ void dora_out_k(float *y, const float *zb, const float *u, const float *mag, const float *wnorm,
                           const W *b, int out, size_t n) {
    GRID_STRIDE(i, n) {
        int j = (int)(i % out);
        float base = y[i];
        y[i] = lr_dora_out(base, zb ? zb[i] : base, u[i], lr_dora_scale(mag[j], wnorm[j]), b ? ldw(b, j) : 0.0f,
                           zb != NULL);
    }
}

/* d magnitude, first pass: thread j of grid row p sums dy G over rows
 * [p, p + 1) * CUPLAN_DORA_ROWS of column j into part[p, j] (f64, rows in
 * order), and turns G into s dy there, the gradient the LoRA path sees. */
__global__ void dora_dmag_part_k(double *part, float *G, const float *dy, const float *mag, const float *wnorm, int N,
                                 int out) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= out) return;
    int n0 = blockIdx.y * CUPLAN_DORA_ROWS, n1 = min(n0 + CUPLAN_DORA_ROWS, N);
    float s = lr_dora_scale(mag[j], wnorm[j]);
    double acc = 0;
    for (int n = n0; n < n1; n++) {
        size_t e = (size_t)n * out + j;
        float d = dy[e];
        acc += (double)d * G[e];
        G[e] = s * d;
    }
    part[(size_t)blockIdx.y * out + j] = acc;
}
/* Second pass: dmag[j] += (sum of the partials in order) / wnorm[j]. */
__global__ void dora_dmag_k(float *dmag, const double *part, const float *wnorm, int nparts, int out) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= out) return;
    double acc = 0;
    for (int p = 0; p < nparts; p++) acc += part[(size_t)p * out + j];
    dmag[j] += (float)(acc / wnorm[j]);
}

#endif
