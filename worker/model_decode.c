/* model_decode: the KV cache of worker/model.h (model_kv_*), on any
 * backend. Appended tokens run as one block through model.c's layer code
 * (model__decode, see worker/model_impl.h); this file owns the cache's
 * memory, its scratch and the logits. */
#include <stdlib.h>

#include "worker/model.h"
#include "worker/model_impl.h"

struct model_kv {
    model *m;
    int cap, len, r; /* positions held, positions filled, LoRA rank the scratch fits */
    void *mem;       /* backend memory: the cache, then the scratch below */
    model_dec d;     /* the cache, the RoPE tables and the scratch of cap rows */
    float *y;        /* [MODEL_HEAD_ROWS, V] logits of one chunk */
    int32_t *ids;    /* [cap] the sequence's tokens */
};

static size_t align64(size_t n) { return (n + 63) & ~(size_t)63; }

static float *take(char *base, size_t *off, size_t nfloats) {
    float *p = base ? (float *)(base + *off) : NULL;
    *off += align64(nfloats * sizeof(float));
    return p;
}

/* Carves the cache and scratch out of base; returns the bytes. With base
 * NULL, only measures. */
static size_t kv_plan(model_kv *kv, char *base) {
    const hf_config *c = model_config(kv->m);
    size_t N = (size_t)kv->cap, C = c->hidden, I = c->intermediate, off = 0;
    size_t Qd = (size_t)c->n_heads * c->head_dim, half = (size_t)c->head_dim / 2;
    size_t rows = N < MODEL_HEAD_ROWS ? N : MODEL_HEAD_ROWS;
    model_dec *d = &kv->d;
    d->cache = take(base, &off, (size_t)c->n_layers * N * model__kv_floats(kv->m));
    d->x = take(base, &off, N * C);
    d->ln = take(base, &off, N * C);
    d->q = take(base, &off, N * Qd);
    d->att = take(base, &off, N * Qd);
    d->mid = take(base, &off, N * C);
    d->f1 = take(base, &off, N * I);
    d->f2 = take(base, &off, N * I);
    d->act = take(base, &off, N * I);
    d->xa = take(base, &off, N * (size_t)(kv->r ? kv->r : 1));
    d->mean = take(base, &off, N);
    d->rstd = take(base, &off, N);
    float *rcos = take(base, &off, N * half), *rsin = take(base, &off, N * half);
    d->rcos = rcos, d->rsin = rsin;
    kv->y = take(base, &off, rows * c->vocab_size);
    kv->ids = (int32_t *)take(base, &off, N);
    return off;
}

int model_kv_new(model *m, int max_len, model_kv **out, lr_err *err) {
    const hf_config *c = model_config(m);
    kb_backend *be = model__backend(m);
    *out = NULL;
    if (max_len <= 0 || max_len > (1 << 20))
        return lr_errp(err, LR_E_INVALID, NULL, "KV cache of %d positions is out of range", max_len);
    if (c->arch == ARCH_GPT2 && max_len > c->max_pos)
        return lr_errp(err, LR_E_INVALID, NULL, "%d positions exceed the model's %d", max_len, c->max_pos);
    model_kv *kv = calloc(1, sizeof *kv);
    if (!kv) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
    kv->m = m;
    kv->cap = max_len;
    kv->r = model__rank(m);
    size_t bytes = kv_plan(kv, NULL);
    kv->mem = be->alloc(be, bytes);
    if (!kv->mem) {
        model_kv_free(kv);
        return lr_errp(err, LR_E_NOMEM, NULL, "out of %s memory for a KV cache of %d positions (%zu MiB)", be->name,
                       max_len, bytes >> 20);
    }
    kv_plan(kv, kv->mem);
    if (model__rope_tables(m, max_len, (float *)kv->d.rcos, (float *)kv->d.rsin, err)) {
        model_kv_free(kv);
        return -1;
    }
    *out = kv;
    return 0;
}

void model_kv_free(model_kv *kv) {
    if (!kv) return;
    kb_backend *be = model__backend(kv->m);
    if (kv->mem) be->free(be, kv->mem);
    free(kv);
}

void model_kv_reset(model_kv *kv) { kv->len = 0; }
int model_kv_len(const model_kv *kv) { return kv->len; }
int model_kv_cap(const model_kv *kv) { return kv->cap; }
model *model_kv_model(const model_kv *kv) { return kv->m; }

int model_kv_append(model_kv *kv, const int32_t *ids, int n, float *logits, int all_logits, lr_err *err) {
    model *m = kv->m;
    kb_backend *be = model__backend(m);
    const hf_config *c = model_config(m);
    int C = c->hidden, V = c->vocab_size;
    if (n <= 0) return lr_errp(err, LR_E_INVALID, NULL, "no tokens to append");
    if (n > kv->cap - kv->len)
        return lr_errp(err, LR_E_INVALID, NULL, "%d more tokens do not fit the KV cache (%d of %d positions used)", n,
                       kv->len, kv->cap);
    if (model__rank(m) > kv->r)
        return lr_errf(err, "the adapter changed after the KV cache was made (rank %d > %d): make a new cache",
                       model__rank(m), kv->r);
    if (model__check_ids(m, ids, n, err)) return -1;
    be->upload(be, kv->ids + kv->len, ids, (size_t)n * sizeof(int32_t));
    /* the new tokens run as one block against the cache: the whole prompt
     * at once, then one token per decoding step */
    kv->d.p0 = kv->len;
    kv->d.n = n;
    kv->d.cap = kv->cap;
    kv->d.ids = kv->ids + kv->len;
    model__decode(m, &kv->d);
    kv->len += n;
    if (logits) {
        int r0 = all_logits ? 0 : n - 1; /* rows whose logits are wanted */
        for (int r = r0; r < n; r += MODEL_HEAD_ROWS) {
            int k = n - r < MODEL_HEAD_ROWS ? n - r : MODEL_HEAD_ROWS;
            model__head_fwd(m, kv->y, kv->d.ln + (size_t)r * C, k);
            be->download(be, all_logits ? logits + (size_t)r * V : logits, kv->y, (size_t)k * V * sizeof(float));
        }
    }
    if (be->check && be->check(be, err)) return -1;
    return 0;
}
