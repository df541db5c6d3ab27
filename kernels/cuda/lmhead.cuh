/* lmhead: the LM head's per-row kernels: gathering the rows with a target,
 * cross-entropy with its gradient in one pass, and cross-entropy plus KL to
 * a reference (kl_sft). Device code only, included by backend_cuda.cu after
 * reduce.cuh; the emulation test (tests/integration/test_cuda_dora_kl_emu.sh)
 * runs it as host C++. */
#ifndef LR_CUDA_LMHEAD_CUH
#define LR_CUDA_LMHEAD_CUH

template <typename W> __global__ void gather_k(W *dst, const float *x, const int32_t *rows, int m, int C) {
    GRID_STRIDE(e, (size_t)m * C) {
        size_t i = e / C, cc = e % C;
        dst[e] = stw<W>(x[(size_t)rows[i] * C + cc]);
    }
}
__global__ void scatter_k(float *dx, const float *dxc, const int32_t *rows, int m, int C) {
    GRID_STRIDE(e, (size_t)m * C) {
        size_t i = e / C, cc = e % C;
        dx[(size_t)rows[i] * C + cc] = dxc[e];
    }
}

/* Whether target tg is the argmax of the row l[0..V) whose maximum is mx
 * (the first of equal maxima, as torch.argmax), in every thread: each
 * thread's first index holding mx, then the block's smallest as a max of
 * -index (exact in f32: V < 2^24). Call before anything writes over l. */
__device__ int argmax_is(const float *l, int V, float mx, int tg, float *shf) {
    float first = -(float)V;
    for (int j = threadIdx.x; j < V; j += blockDim.x)
        if (l[j] == mx) {
            first = -(float)j;
            break;
        }
    return (int)-block_maxf(first, shf) == tg;
}

/* One block per row of the chunk: loss = max + log(sum exp) - logit[target]
 * (f64, as the CPU backend); with hit != NULL, hit[i] = 1 when the target
 * is the row's argmax (the first of equal maxima, as torch.argmax), else 0;
 * with G != NULL the row's gradient w * (softmax - onehot),
 * w = grad_scale * tok_scale[row], goes to G in the weight dtype, computed
 * from the logits in one pass: the probabilities are never stored apart. */
template <typename W>
__global__ void ce_rows_k(double *loss, int32_t *hit, float *tok_loss, W *G, const float *logits,
                          const int32_t *tgt, const int32_t *rows, const float *tok_scale, int V, float grad_scale) {
    __shared__ double shd[33];
    __shared__ float shf[33];
    int i = blockIdx.x, row = rows[i];
    const float *l = logits + (size_t)i * V;
    int tg = tgt[i];
    float lt = l[tg]; /* read before the reductions' barriers: with f32 weights G is the logits */
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < V; j += blockDim.x) mx = fmaxf(mx, l[j]);
    mx = block_maxf(mx, shf);
    if (hit) { /* G is written only after the barriers below */
        int h = argmax_is(l, V, mx, tg, shf);
        if (!threadIdx.x) hit[i] = h;
    }
    double s = 0;
    for (int j = threadIdx.x; j < V; j += blockDim.x) s += expf(l[j] - mx);
    s = block_sumd(s, shd);
    double li = (double)mx + log(s) - (double)lt;
    if (!threadIdx.x) {
        loss[i] = li;
        if (tok_loss) tok_loss[row] = (float)li;
    }
    if (!G) return;
    float w = grad_scale * (tok_scale ? tok_scale[row] : 1.0f);
    float inv = (float)(1.0 / s) * w;
    W *g = G + (size_t)i * V;
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        float d = expf(l[j] - mx) * inv;
        g[j] = stw<W>(j == tg ? d - w : d);
    }
}

/* One block per row of the chunk: the row's ce and kl (f64, elem.h's
 * lr_kl_*, as the CPU backend) into ce[i], kl[i], and with hit != NULL
 * whether the target is the tuned logits' argmax, as ce_rows_k; with
 * G != NULL, w times d(ce + kl_coef kl)/dl goes to G in the weight dtype,
 * from the logits in one pass (with f32 weights G is the logits,
 * overwritten in place). */
template <typename W>
__global__ void ce_kl_rows_k(double *ce, double *kl, int32_t *hit, W *G, const float *logits, const float *ref,
                             const int32_t *tgt, int V, double itau, double kc, float w) {
    __shared__ double shd[33];
    __shared__ float shf[33];
    int i = blockIdx.x, tg = tgt[i];
    const float *l = logits + (size_t)i * V, *q = ref + (size_t)i * V;
    float lt = l[tg]; /* read before the reductions' barriers: G may be the logits */
    float mx = -INFINITY, mq = -INFINITY;
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        mx = fmaxf(mx, l[j]);
        mq = fmaxf(mq, q[j]);
    }
    mx = block_maxf(mx, shf);
    mq = block_maxf(mq, shf);
    if (hit) { /* before G is written */
        int h = argmax_is(l, V, mx, tg, shf);
        if (!threadIdx.x) hit[i] = h;
    }
    double s1 = 0, st = 0, sq = 0;
    for (int j = threadIdx.x; j < V; j += blockDim.x) lr_kl_sums(l[j], q[j], mx, mq, itau, &s1, &st, &sq);
    s1 = block_sumd(s1, shd);
    st = block_sumd(st, shd);
    sq = block_sumd(sq, shd);
    double lse1 = mx + log(s1), lset = log(st), lseq = log(sq), k = 0;
    W *g = G ? G + (size_t)i * V : NULL;
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        float qv;
        k += lr_kl_elem(l[j], q[j], mx, mq, itau, lset, lseq, &qv);
        if (g) g[j] = stw<W>(lr_ce_kl_grad(l[j], qv, mx, itau, lse1, lset, kc, w, j == tg));
    }
    k = block_sumd(k, shd);
    if (!threadIdx.x) {
        ce[i] = lse1 - (double)lt;
        kl[i] = k;
    }
}

#endif
