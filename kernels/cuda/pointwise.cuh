/* pointwise: the row-wise and element-wise kernels: embedding, RMSNorm and
 * LayerNorm, RoPE, the MLP activations, add / scale, the dtype conversion,
 * bias and dropout of the linear ops, AdamW and the squared norm. Each is
 * the CPU backend's formula (kernels/elem.h) with sums in a fixed order, so
 * results match the CPU backend. Device code only, included by
 * backend_cuda.cu after ldw/stw and reduce.cuh. */
#ifndef LR_CUDA_POINTWISE_CUH
#define LR_CUDA_POINTWISE_CUH

template <typename W>
__global__ void embed_fwd_k(float *out, const int32_t *ids, const W *wte, const W *wpe, int T, int C) {
    int n = blockIdx.x;
    size_t e = (size_t)ids[n] * C, p = (size_t)(n % T) * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x)
        out[(size_t)n * C + c] = wpe ? ldw(wte, e + c) + ldw(wpe, p + c) : ldw(wte, e + c);
}

/* One thread per column, tokens in order: the sums are the CPU backend's, bit for bit. */
__global__ void embed_bwd_k(float *dwte, float *dwpe, const float *dout, const int32_t *ids, int N, int T, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    for (int n = 0; n < N; n++) {
        float d = dout[(size_t)n * C + c];
        if (dwte) dwte[(size_t)ids[n] * C + c] += d;
        if (dwpe) dwpe[(size_t)(n % T) * C + c] += d;
    }
}

template <typename W>
__global__ void rmsnorm_fwd_k(float *out, float *rstd, const float *x, const W *w, int C, float eps) {
    __shared__ double sh[33];
    int n = blockIdx.x;
    const float *xr = x + (size_t)n * C;
    double ss = 0;
    for (int c = threadIdx.x; c < C; c += blockDim.x) ss += (double)xr[c] * xr[c];
    ss = block_sumd(ss, sh);
    float r = 1.0f / sqrtf((float)(ss / C) + eps);
    if (!threadIdx.x) rstd[n] = r;
    for (int c = threadIdx.x; c < C; c += blockDim.x) out[(size_t)n * C + c] = lr_rmsnorm_elem(xr[c], r, ldw(w, c));
}

template <typename W>
__global__ void rmsnorm_bwd_k(float *dx, const float *dout, const float *x, const W *w, const float *rstd, int C) {
    __shared__ double sh[33];
    int n = blockIdx.x;
    const float *xr = x + (size_t)n * C, *dy = dout + (size_t)n * C;
    float r = rstd[n];
    double dot = 0;
    for (int c = threadIdx.x; c < C; c += blockDim.x) dot += (double)dy[c] * ldw(w, c) * xr[c];
    dot = block_sumd(dot, sh);
    float k = (float)(dot / C) * r * r * r;
    for (int c = threadIdx.x; c < C; c += blockDim.x) dx[(size_t)n * C + c] += r * ldw(w, c) * dy[c] - k * xr[c];
}
/* Weight gradients: one thread per column, rows in order. */
__global__ void rmsnorm_dw_k(float *dw, const float *dout, const float *x, const float *rstd, int N, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    double s = 0;
    for (int n = 0; n < N; n++) s += (double)dout[(size_t)n * C + c] * x[(size_t)n * C + c] * rstd[n];
    dw[c] += (float)s;
}

template <typename W>
__global__ void layernorm_fwd_k(float *out, float *mean, float *rstd, const float *x, const W *w, const W *b, int C,
                                float eps) {
    __shared__ double sh[33];
    int n = blockIdx.x;
    const float *xr = x + (size_t)n * C;
    double s = 0;
    for (int c = threadIdx.x; c < C; c += blockDim.x) s += xr[c];
    double mu = block_sumd(s, sh) / C;
    double ss = 0;
    for (int c = threadIdx.x; c < C; c += blockDim.x) ss += (xr[c] - mu) * (xr[c] - mu);
    ss = block_sumd(ss, sh);
    float m = (float)mu, r = 1.0f / sqrtf((float)(ss / C) + eps);
    if (!threadIdx.x) {
        mean[n] = m;
        rstd[n] = r;
    }
    for (int c = threadIdx.x; c < C; c += blockDim.x)
        out[(size_t)n * C + c] = lr_layernorm_elem(xr[c], m, r, ldw(w, c), b ? ldw(b, c) : 0.0f);
}

template <typename W>
__global__ void layernorm_bwd_k(float *dx, const float *dout, const float *x, const W *w, const float *mean,
                                const float *rstd, int C) {
    __shared__ double sh[33];
    int n = blockIdx.x;
    const float *xr = x + (size_t)n * C, *dy = dout + (size_t)n * C;
    float m = mean[n], r = rstd[n];
    double sg = 0, sgx = 0;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float gc = dy[c] * ldw(w, c);
        sg += gc;
        sgx += (double)gc * (xr[c] - m) * r;
    }
    sg = block_sumd(sg, sh);
    sgx = block_sumd(sgx, sh);
    float mg = (float)(sg / C), mgx = (float)(sgx / C);
    for (int c = threadIdx.x; c < C; c += blockDim.x)
        dx[(size_t)n * C + c] += r * (dy[c] * ldw(w, c) - mg - (xr[c] - m) * r * mgx);
}
__global__ void layernorm_dwb_k(float *dw, float *db, const float *dout, const float *x, const float *mean,
                                const float *rstd, int N, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    double sw = 0, sb = 0;
    for (int n = 0; n < N; n++) {
        float dy = dout[(size_t)n * C + c];
        sw += (double)dy * (x[(size_t)n * C + c] - mean[n]) * rstd[n];
        sb += dy;
    }
    if (dw) dw[c] += (float)sw;
    if (db) db[c] += (float)sb;
}

__global__ void rope_k(float *x, int ld, const float *cs, const float *sn, int N, int T, int H, int D, float sign) {
    int half = D / 2;
    size_t total = (size_t)N * H * half;
    GRID_STRIDE(e, total) {
        int i = (int)(e % half);
        size_t nh = e / half;
        int h = (int)(nh % H), n = (int)(nh / H);
        float *v = x + (size_t)n * ld + (size_t)h * D;
        size_t t = (size_t)(n % T) * half + i;
        lr_rope_pair(&v[i], &v[i + half], cs[t], sign * sn[t]);
    }
}

__global__ void swiglu_fwd_k(float *h, const float *g, const float *u, size_t n) {
    GRID_STRIDE(i, n) h[i] = lr_swiglu(g[i], u[i]);
}
__global__ void swiglu_bwd_k(float *dg, float *du, const float *dh, const float *g, const float *u, size_t n) {
    GRID_STRIDE(i, n) lr_swiglu_grad(g[i], u[i], dh[i], &dg[i], &du[i]);
}
__global__ void gelu_fwd_k(float *y, const float *x, size_t n, int exact) {
    GRID_STRIDE(i, n) y[i] = exact ? lr_gelu_erf(x[i]) : lr_gelu_tanh(x[i]);
}
__global__ void gelu_bwd_k(float *dx, const float *dy, const float *x, size_t n, int exact) {
    GRID_STRIDE(i, n) dx[i] = dy[i] * (exact ? lr_gelu_erf_grad(x[i]) : lr_gelu_tanh_grad(x[i]));
}
__global__ void add_k(float *y, const float *x, size_t n) {
    GRID_STRIDE(i, n) y[i] += x[i];
}
__global__ void sub_k(float *y, const float *x, size_t n) {
    GRID_STRIDE(i, n) y[i] -= x[i];
}
__global__ void scale_k(float *x, float s, size_t n) {
    GRID_STRIDE(i, n) x[i] *= s;
}

template <typename W> __global__ void convert_k(W *dst, const float *src, size_t n) {
    GRID_STRIDE(i, n) dst[i] = stw<W>(src[i]);
}

template <typename W> __global__ void bias_rows_k(float *y, const W *b, int N, int out) {
    GRID_STRIDE(i, (size_t)N * out) y[i] = ldw(b, i % out);
}
__global__ void dropout_k(float *dst, const float *x, uint64_t seed, float p, size_t n) {
    GRID_STRIDE(i, n) dst[i] = x[i] * lr_dropout_mult(seed, i, p);
}
__global__ void dropout_acc_k(float *dx, const float *t, uint64_t seed, float p, size_t n) {
    GRID_STRIDE(i, n) dx[i] += t[i] * lr_dropout_mult(seed, i, p);
}

__global__ void adamw_k(float *p, const float *g, float *m, float *v, size_t n, float lr, float b1, float b2,
                        float eps, float wd, float bc1, float bc2s) {
    GRID_STRIDE(i, n) lr_adamw_elem(&p[i], g[i], &m[i], &v[i], lr, b1, b2, eps, wd, bc1, bc2s);
}

/* One block per CUPLAN_SUMSQ_BLOCK elements; the partial sums are added on
 * the host in block order, so the result does not depend on the GPU. */
__global__ void sumsq_k(double *part, const float *x, size_t n) {
    __shared__ double sh[33];
    size_t s = (size_t)blockIdx.x * CUPLAN_SUMSQ_BLOCK, e = s + CUPLAN_SUMSQ_BLOCK < n ? s + CUPLAN_SUMSQ_BLOCK : n;
    double acc = 0;
    for (size_t i = s + threadIdx.x; i < e; i += blockDim.x) acc += (double)x[i] * x[i];
    acc = block_sumd(acc, sh);
    if (!threadIdx.x) part[blockIdx.x] = acc;
}

#endif
