/* model: HF decoders with LoRA on a kernels/ backend.
 * Why this file is long: loading (also 4-bit), LoRA and DoRA, full
 * fine-tuning, the activation plan, forward and backward, co-training and
 * the reference passes all work on the model struct's private layout;
 * decoding's KV cache is model_decode.c, which sees only model__decode
 * and the few accessors of worker/model_impl.h. */
#include "worker/model.h"
#include "worker/model_impl.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/rng.h"
#include "kernels/elem.h"
#include "kernels/quant.h"
#include "formats/adapter.h"
#include "formats/bnb4.h"
#include "formats/merge.h"
#include "formats/safetensors.h"

/* The linear modules of a layer. GPT-2 uses four: S_Q is attn.c_attn
 * (q, k, v fused), S_O attn.c_proj, S_UP mlp.c_fc, S_DOWN mlp.c_proj. */
enum { S_Q, S_K, S_V, S_O, S_GATE, S_UP, S_DOWN, S_N };
static const char *const LLAMA_MOD[S_N] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                           "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
                                           "mlp.down_proj"};
static const char *const GPT2_MOD[S_N] = {"attn.c_attn", NULL, NULL, "attn.c_proj", NULL, "mlp.c_fc", "mlp.c_proj"};

/* L.lora points at lora (the trained adapter, attached when lora.A is
 * set), at rlora (the frozen reference adapter, attached when rlora.A is
 * set) for a reference forward, or is NULL (the base model). */
typedef struct lin {
    kb_linear L;
    kb_lora lora, rlora;
    float *xa; /* [N, r] saved LoRA input projection */
} lin;

typedef struct layer {
    const void *n1w, *n1b, *n2w, *n2b;
    lin m[S_N];
    /* activations saved for the backward */
    float *res;                  /* [N,C] layer input */
    float *ln1, *n1mean, *n1rstd; /* [N,C], [N], [N] */
    float *qkv;                  /* q [N,Qd], k [N,KVd], v [N,KVd] (gpt2: [N,3C] interleaved rows) */
    float *att, *lse;            /* [N,Qd], [B,Hq,T] */
    float *mid;                  /* [N,C] after attention */
    float *ln2, *n2mean, *n2rstd;
    float *f1, *f2;              /* [N,I]: gate, up (gpt2: c_fc output, f2 unused) */
} layer;

/* A base tensor as the checkpoint named and stored it (full fine-tuning
 * trains and saves these). */
typedef struct wtensor {
    char name[160];
    int64_t shape[2];
    int ndim;
    size_t off; /* bytes into wmem */
    st_dtype dtype;
} wtensor;

struct model {
    hf_config cfg;
    kb_backend *be;
    int gpt2, exact_gelu;
    int Qd, KVd;
    size_t wsize; /* element size of frozen weights */
    void *wmem;
    const void *wte, *wpe, *nfw, *nfb, *lm;
    layer *layers;
    wtensor *wt;   /* the base tensors in load order */
    size_t nwt, wbytes;
    int full;      /* full fine-tuning: the params are the base weights */
    /* QLoRA: the linear layers' 4-bit weights (qw[layer * S_N + slot]),
     * quantized at load (qtype, qdouble) or as the checkpoint stores them */
    kq_type qtype;
    int qdouble;
    kq_weight *qw;
    size_t qbytes, qf32; /* their bytes, and the same weights' f32 bytes */
    int bf16;            /* the linear layers' weights are packed in bf16 (kb_linear.W16) */

    adapter *ad; /* LoRA settings and tensor names; NULL without adapters */
    char base_name[512]; /* what saved adapters name as their base (adapter_base_name) */
    model_lora_cfg lcfg;
    model_param *params;
    size_t nparams, numel;
    float *pmem, *gmem;
    float *nmem;  /* DoRA: the detached norms ||W + scale B A|| of the trained adapter */

    adapter *rad; /* the frozen reference adapter (settings only); NULL without one */
    float *rmem;  /* its A, B, magnitudes and norms */

    /* activations planned for capN rows of at most capT positions */
    size_t capN;
    int capT, cap_r;
    void *amem;
    float *resL, *lnf, *nfmean, *nfrstd;
    float *tmpC, *tmpI, *dres, *dln, *dqkv, *datt, *d1, *d2, *dI;
    int32_t *ids, *targets;
    float *rcos, *rsin;
    float *lnref;            /* [N,C] final hidden states of the reference forward (KL) */
    float *tokloss, *tokscale; /* [N] per-position losses and loss weights (DPO) */
    int32_t *htargets; /* host staging for the shifted labels */
    float *hrow;       /* host [N] staging for tokloss / tokscale */

    int train;
    uint64_t seed, micro;
    int recompute; /* activation checkpointing: layers share one set of activations */
    int64_t n_correct; /* scored targets of the last model_fwd_bwd(_kl) / model_loss that were the argmax */

    /* co-training (model_slot): while model_fwd_bwd_pack runs, the pass's
     * micro-batches, one segment per adapter (npseg 0 otherwise) */
    const struct pseg *pseg;
    int npseg;
    int nslots;    /* live slots: activations then hold every module's LoRA input */
    int pack_r;    /* the largest rank a slot has had: what those are planned for */
    int cap_slots; /* the activations were planned with slots live */
};

const hf_config *model_config(const model *m) { return &m->cfg; }
const model_lora_cfg *model_lora(const model *m) { return m->ad ? &m->lcfg : NULL; }
size_t model_n_params(const model *m) { return m->nparams; }
const model_param *model_param_at(const model *m, size_t i) { return i < m->nparams ? &m->params[i] : NULL; }
float *model_params(model *m) { return m->pmem; }
float *model_grads(model *m) { return m->gmem; }
size_t model_numel(const model *m) { return m->numel; }

kq_type model_quant_info(const model *m, int *double_quant, size_t *qbytes, size_t *f32_bytes) {
    kq_type t = KQ_NONE;
    int dq = 0;
    for (size_t i = 0; i < (size_t)m->cfg.n_layers * S_N && t == KQ_NONE; i++)
        if (m->qw[i].codes) t = m->qw[i].type, dq = m->qw[i].qabsmax != NULL;
    if (double_quant) *double_quant = dq;
    if (qbytes) *qbytes = m->qbytes;
    if (f32_bytes) *f32_bytes = m->qf32;
    return t;
}

int model_bf16(const model *m) { return m->bf16; }

/* Whether the frozen linears run in bf16 (MODEL_MM_*, model.h): sets
 * m->bf16, or fails when bf16 was asked of a backend that cannot. */
static int resolve_matmul(model *m, const model_quant *mq, lr_err *err) {
    kb_backend *be = m->be;
    int want = mq ? mq->matmul : MODEL_MM_F32, quant = mq && mq->type != KQ_NONE;
    m->bf16 = 0;
    if (want == MODEL_MM_F32 || !be->bf16_check) return 0; /* a GPU keeps its weights in 16 bits anyway */
    if (quant) {
        if (want == MODEL_MM_AUTO) return 0;
        return lr_errp(err, LR_E_INVALID, "compute_dtype",
                       "compute_dtype bf16 does not combine with lora.quantize (4-bit weights): use auto or f32");
    }
    lr_err why = {0};
    int runs = be->bf16_check(be, &why) == 0;
    if (want == MODEL_MM_BF16 && !runs)
        return lr_errp(err, LR_E_INVALID, "compute_dtype", "compute_dtype bf16: %s; use auto or f32", why.msg);
    m->bf16 = runs && (want == MODEL_MM_BF16 || !strcmp(m->cfg.torch_dtype, "bfloat16") ||
                       !strcmp(m->cfg.torch_dtype, "float16"));
    return 0;
}

static const char *mod_name(const model *m, int s) { return m->gpt2 ? GPT2_MOD[s] : LLAMA_MOD[s]; }

/* in/out features of module slot s. */
static void slot_dims(const model *m, int s, int *in, int *out) {
    int C = m->cfg.hidden, I = m->cfg.intermediate;
    switch (s) {
    case S_Q: *in = C, *out = m->gpt2 ? 3 * C : m->Qd; break;
    case S_K:
    case S_V: *in = C, *out = m->KVd; break;
    case S_O: *in = m->Qd, *out = C; break;
    case S_GATE:
    case S_UP: *in = C, *out = I; break;
    default: *in = I, *out = C; break;
    }
}

/* ---- loading the base weights ---- */

typedef struct wctx {
    model *m;
    const st_set *s;
    char *base;    /* NULL: planning pass */
    size_t off;    /* bytes */
    float *stage;  /* host f32 staging when the backend memory is not host f32 */
    lr_err *err;
    /* 4-bit weights: the largest one (planning), and host staging for
     * quantizing (a transposed copy for GPT-2's Conv1D, the codes and scales) */
    size_t qmax;
    float *qt;
    uint8_t *qstage;
} wctx;

static size_t align64(size_t n) { return (n + 63) & ~(size_t)63; }

/* A tensor by name, for gpt2 also without the "transformer." prefix that
 * GPT2LMHeadModel checkpoints carry and GPT2Model ones do not. */
static const st_tensor *wfind(const wctx *w, const char *name) {
    const st_tensor *t = st_set_find(w->s, name);
    if (!t && !strncmp(name, "transformer.", 12)) t = st_set_find(w->s, name + 12);
    return t;
}

/* Finds a float tensor of shape [d0] or [d0, d1]: *out NULL when an
 * optional one is absent. */
static int wcheck(wctx *w, const char *name, int64_t d0, int64_t d1, int optional, const st_tensor **out) {
    const st_tensor *t = wfind(w, name);
    *out = NULL;
    if (!t) {
        if (optional) return 0;
        return lr_errf(w->err, "model weights: tensor '%s' is missing", name);
    }
    int ndim = d1 ? 2 : 1;
    if (t->ndim != ndim || t->shape[0] != d0 || (ndim == 2 && t->shape[1] != d1))
        return lr_errf(w->err, "model weights: tensor '%s' has shape [%lld%s%lld], expected [%lld%s%lld]", name,
                       (long long)t->shape[0], t->ndim > 1 ? ", " : "", t->ndim > 1 ? (long long)t->shape[1] : 0LL,
                       (long long)d0, d1 ? ", " : "", d1 ? (long long)d1 : 0LL);
    if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16)
        return lr_errf(w->err, "model weights: tensor '%s' has dtype %s (expected F32, F16 or BF16)", name,
                       st_dtype_name(t->dtype));
    *out = t;
    return 0;
}

/* Checks a tensor (wcheck) and in the loading pass converts it into the
 * weight arena. Missing optional tensors leave *dst NULL. */
static int wget(wctx *w, const char *name, int64_t d0, int64_t d1, int optional, const void **dst) {
    const st_tensor *t;
    *dst = NULL;
    if (wcheck(w, name, d0, d1, optional, &t)) return -1;
    if (!t) return 0;
    int ndim = d1 ? 2 : 1;
    size_t n = (size_t)d0 * (size_t)(d1 ? d1 : 1);
    size_t bytes = n * w->m->wsize;
    if (w->base) {
        model *m = w->m;
        wtensor *wt = &m->wt[m->nwt++];
        snprintf(wt->name, sizeof wt->name, "%s", t->name);
        wt->shape[0] = d0, wt->shape[1] = d1 ? d1 : 1, wt->ndim = ndim, wt->off = w->off, wt->dtype = t->dtype;
        kb_backend *be = w->m->be;
        void *p = w->base + w->off;
        if (be->host_memory && be->weight_dtype == KB_F32) {
            if (st_to_f32(t, p, n, w->err)) return lr_err_prefix(w->err, "tensor '%s': ", name);
        } else {
            if (st_to_f32(t, w->stage, n, w->err)) return lr_err_prefix(w->err, "tensor '%s': ", name);
            if (be->weight_dtype != KB_F32) { /* in place: element i goes to bytes 2i..2i+1 */
                uint16_t *h = (uint16_t *)w->stage;
                for (size_t i = 0; i < n; i++)
                    h[i] = be->weight_dtype == KB_BF16 ? st_f32_to_bf16(w->stage[i]) : st_f32_to_f16(w->stage[i]);
            }
            be->upload(be, p, w->stage, bytes);
        }
        st_set_release(w->s, t);
        *dst = p;
    } else {
        *dst = (const void *)1; /* planning: only presence matters */
    }
    w->off += align64(bytes);
    return 0;
}

/* ---- 4-bit linear weights (QLoRA) ---- */

/* Copies host bytes into the arena at the next offset (loading pass) and
 * moves the offset on; returns where they went. */
static void *wput(wctx *w, const void *src, size_t bytes) {
    void *p = w->base ? w->base + w->off : NULL;
    if (p && bytes) w->m->be->upload(w->m->be, p, src, bytes);
    w->off += align64(bytes);
    return p;
}

/* A linear weight packed in bf16 by the backend (kb_linear.W16): staged
 * in f32, then packed into the arena. */
static int wget_bf16(wctx *w, const char *name, int in, int out, kb_linear *k) {
    model *m = w->m;
    kb_backend *be = m->be;
    const st_tensor *t;
    if (wcheck(w, name, m->gpt2 ? in : out, m->gpt2 ? out : in, 0, &t)) return -1;
    if (w->base) {
        if (st_to_f32(t, w->stage, (size_t)in * out, w->err)) return lr_err_prefix(w->err, "tensor '%s': ", name);
        be->bf16_pack(be, w->base + w->off, w->stage, in, out, m->gpt2);
        st_set_release(w->s, t);
        k->W16 = w->base + w->off;
    }
    w->off += align64(be->bf16_bytes(be, in, out));
    return 0;
}

/* A weight that the checkpoint stores 4-bit (worker/bnb4.h), copied into
 * the arena as stored, not quantized again. */
static void wget_prequant(wctx *w, const kq_weight *src, const st_tensor *codes, kq_weight *q) {
    model *m = w->m;
    size_t n = (size_t)src->rows * (size_t)src->cols, nb = kq_nblocks(n);
    *q = *src;
    q->codes = wput(w, src->codes, kq_code_bytes(n));
    q->absmax = src->absmax ? wput(w, src->absmax, nb * sizeof(float)) : NULL;
    q->qabsmax = src->qabsmax ? wput(w, src->qabsmax, nb) : NULL;
    q->nabsmax = src->nabsmax ? wput(w, src->nabsmax, kq_nested_nblocks(n) * sizeof(float)) : NULL;
    if (w->base) {
        m->qbytes += kq_bytes(n, src->qabsmax != NULL);
        m->qf32 += n * sizeof(float);
        st_set_release(w->s, codes);
    }
}

/* A linear module's weight name into k: 4-bit (described by q) when the
 * checkpoint stores it so or when the model quantizes at load (GPT-2's
 * Conv1D [in, out] is transposed to [out, in] first, as transformers does),
 * otherwise as wget. */
static int wget_linear(wctx *w, const char *name, int in, int out, kq_weight *q, kb_linear *k) {
    model *m = w->m;
    const st_tensor *stored = wfind(w, name), *qc = NULL;
    kq_weight pq;
    int qs = 0;
    if (stored && bnb4_find(w->s, stored->name, out, in, &pq, &qc, &qs, w->err)) return -1;
    size_t n = (size_t)in * out;
    if (qs || m->qtype != KQ_NONE) {
        if (n > w->qmax) w->qmax = n;
        k->qW = q;
        k->w_in_out = 0;
    }
    if (qs) {
        wget_prequant(w, &pq, qc, q);
        return 0;
    }
    if (m->qtype == KQ_NONE && m->bf16) return wget_bf16(w, name, in, out, k);
    if (m->qtype == KQ_NONE) return wget(w, name, m->gpt2 ? in : out, m->gpt2 ? out : in, 0, &k->W);
    const st_tensor *t;
    if (wcheck(w, name, m->gpt2 ? in : out, m->gpt2 ? out : in, 0, &t)) return -1;
    size_t nb = kq_nblocks(n), nn = kq_nested_nblocks(n);
    uint8_t *codes = NULL, *qabs = NULL;
    float *absmax = NULL, *nabs = NULL;
    if (w->base) { /* staging: codes, 8-bit scales, f32 scales, nested scales */
        float *src = w->stage;
        codes = w->qstage, qabs = codes + kq_code_bytes(n);
        absmax = (float *)(w->qstage + align64(kq_code_bytes(n) + nb)), nabs = absmax + nb;
        if (st_to_f32(t, w->stage, n, w->err)) return lr_err_prefix(w->err, "tensor '%s': ", name);
        if (m->gpt2) {
            for (int i = 0; i < in; i++)
                for (int o = 0; o < out; o++) w->qt[(size_t)o * in + i] = w->stage[(size_t)i * out + o];
            src = w->qt;
        }
        q->type = m->qtype, q->rows = out, q->cols = in;
        kq_book(m->qtype, q->book);
        memcpy(q->nbook, kq_dynamic_map(), sizeof q->nbook);
        kq_quantize(m->qtype, src, n, codes, absmax, m->qdouble ? qabs : NULL, nabs, &q->offset, m->be->threads);
        st_set_release(w->s, t);
    }
    q->codes = wput(w, codes, kq_code_bytes(n));
    if (m->qdouble) {
        q->qabsmax = wput(w, qabs, nb);
        q->nabsmax = wput(w, nabs, nn * sizeof(float));
    } else {
        q->absmax = wput(w, absmax, nb * sizeof(float));
    }
    if (w->base) {
        m->qbytes += kq_bytes(n, m->qdouble);
        m->qf32 += n * sizeof(float);
    }
    return 0;
}

static int load_weights(wctx *w) {
    model *m = w->m;
    const hf_config *c = &m->cfg;
    int C = c->hidden, V = c->vocab_size;
    char nm[256];
    if (m->gpt2) {
        if (wget(w, "transformer.wte.weight", V, C, 0, &m->wte) ||
            wget(w, "transformer.wpe.weight", c->max_pos, C, 0, &m->wpe) ||
            wget(w, "transformer.ln_f.weight", C, 0, 0, &m->nfw) || wget(w, "transformer.ln_f.bias", C, 0, 0, &m->nfb))
            return -1;
    } else {
        if (wget(w, "model.embed_tokens.weight", V, C, 0, &m->wte) || wget(w, "model.norm.weight", C, 0, 0, &m->nfw))
            return -1;
    }
    if (c->tie_embeddings)
        m->lm = m->wte;
    else if (wget(w, "lm_head.weight", V, C, 0, &m->lm))
        return -1;
    const char *pre = m->gpt2 ? "transformer.h" : "model.layers";
    for (int l = 0; l < c->n_layers; l++) {
        layer *L = &m->layers[l];
        const char *n1 = m->gpt2 ? "ln_1" : "input_layernorm", *n2 = m->gpt2 ? "ln_2" : "post_attention_layernorm";
#define NAME(...) (snprintf(nm, sizeof nm, __VA_ARGS__), nm)
        if (wget(w, NAME("%s.%d.%s.weight", pre, l, n1), C, 0, 0, &L->n1w) ||
            wget(w, NAME("%s.%d.%s.weight", pre, l, n2), C, 0, 0, &L->n2w))
            return -1;
        if (m->gpt2 && (wget(w, NAME("%s.%d.%s.bias", pre, l, n1), C, 0, 0, &L->n1b) ||
                        wget(w, NAME("%s.%d.%s.bias", pre, l, n2), C, 0, 0, &L->n2b)))
            return -1;
        for (int s = 0; s < S_N; s++) {
            if (!mod_name(m, s)) continue;
            int in, out;
            slot_dims(m, s, &in, &out);
            kb_linear *k = &L->m[s].L;
            k->in = in, k->out = out, k->w_in_out = m->gpt2;
            if (wget_linear(w, NAME("%s.%d.%s.weight", pre, l, mod_name(m, s)), in, out, &m->qw[l * S_N + s], k) ||
                wget(w, NAME("%s.%d.%s.bias", pre, l, mod_name(m, s)), out, 0, 1, &k->b))
                return -1;
        }
#undef NAME
    }
    return 0;
}

kb_dtype model_weight_dtype(const hf_config *c, kb_dtype dflt) {
    return dflt == KB_BF16 && !strcmp(c->torch_dtype, "float16") ? KB_F16 : dflt;
}

int model_load(const char *dir, kb_backend *be, model **out, lr_err *err) {
    return model_load_quant(dir, be, NULL, out, err);
}

int model_load_quant(const char *dir, kb_backend *be, const model_quant *mq, model **out, lr_err *err) {
    char path[4096];
    st_set *s = NULL;
    model *m = calloc(1, sizeof *m);
    *out = NULL;
    if (!m) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory loading the model");
    m->be = be;
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (hf_config_load(path, &m->cfg, err)) goto fail;
    adapter_base_name(dir, m->base_name, sizeof m->base_name);
    const hf_config *c = &m->cfg;
    m->gpt2 = c->arch == ARCH_GPT2;
    if (m->gpt2) {
        if (!strcmp(c->hidden_act, "gelu"))
            m->exact_gelu = 1;
        else if (strcmp(c->hidden_act, "gelu_new") && strcmp(c->hidden_act, "gelu_pytorch_tanh")) {
            lr_errf(err, "%s: activation_function '%s' is not supported for gpt2 (gelu_new, gelu)", path, c->hidden_act);
            goto fail;
        }
    } else if (strcmp(c->hidden_act, "silu")) {
        lr_errf(err, "%s: hidden_act '%s' is not supported (silu)", path, c->hidden_act);
        goto fail;
    }
    if (c->n_heads % c->n_kv_heads) {
        lr_errf(err, "%s: num_attention_heads %d is not a multiple of num_key_value_heads %d", path, c->n_heads,
                c->n_kv_heads);
        goto fail;
    }
    m->Qd = c->n_heads * c->head_dim;
    m->KVd = c->n_kv_heads * c->head_dim;
    if (!be->host_memory) be->weight_dtype = model_weight_dtype(c, be->weight_dtype);
    m->wsize = be->weight_dtype == KB_F32 ? 4 : 2;
    if (resolve_matmul(m, mq, err)) goto fail;
    m->layers = calloc((size_t)c->n_layers, sizeof *m->layers);
    m->qw = calloc((size_t)c->n_layers * S_N, sizeof *m->qw);
    if (!m->layers || !m->qw) {
        lr_errp(err, LR_E_NOMEM, NULL, "out of memory loading the model");
        goto fail;
    }
    if (mq && mq->type != KQ_NONE) {
        if (!be->quant4) {
            lr_errp(err, LR_E_INVALID, "lora.quantize", "4-bit base weights are not implemented by the %s backend yet",
                    be->name);
            goto fail;
        }
        m->qtype = mq->type;
        m->qdouble = mq->double_quant;
    }
    if (st_set_open_dir(dir, &s, err)) goto fail;
    wctx w = {.m = m, .s = s, .err = err};
    if (load_weights(&w)) goto fail;
    size_t total = w.off, maxn = (size_t)c->vocab_size * c->hidden;
    /* at most: embeddings, positions, final norm weight and bias, LM head,
     * and per layer two norms with biases and each module's weight and bias */
    m->wt = calloc(5 + (size_t)c->n_layers * (4 + 2 * S_N), sizeof *m->wt);
    if (!m->wt) {
        lr_errp(err, LR_E_NOMEM, NULL, "out of memory loading the model");
        goto fail;
    }
    if (w.qmax && !be->quant4) {
        lr_errp(err, LR_E_INVALID, NULL, "the checkpoint stores 4-bit weights, which the %s backend does not run yet",
                be->name);
        goto fail;
    }
    if (!be->host_memory || be->weight_dtype != KB_F32 || w.qmax || m->bf16) {
        size_t in_max = (size_t)(c->intermediate > 3 * c->hidden ? c->intermediate : 3 * c->hidden) * c->hidden;
        if (be->host_memory && be->weight_dtype == KB_F32) maxn = 0; /* f32 tensors load in place: only 4-bit and bf16 ones stage */
        if (in_max > maxn) maxn = in_max;
        if (w.qmax > maxn) maxn = w.qmax;
        if (c->max_pos * (size_t)c->hidden > maxn) maxn = (size_t)c->max_pos * c->hidden;
        w.stage = malloc(maxn * sizeof(float));
        if (w.qmax) {
            size_t nb = kq_nblocks(w.qmax);
            w.qstage = malloc(align64(kq_code_bytes(w.qmax) + nb) + (nb + kq_nested_nblocks(w.qmax)) * sizeof(float));
            w.qt = m->gpt2 ? malloc(w.qmax * sizeof(float)) : NULL;
        }
        if (!w.stage || (w.qmax && (!w.qstage || (m->gpt2 && !w.qt)))) {
            free(w.stage), free(w.qstage), free(w.qt);
            lr_errp(err, LR_E_NOMEM, NULL, "out of memory staging the model weights");
            goto fail;
        }
    }
    m->wmem = be->alloc(be, total);
    if (!m->wmem) {
        free(w.stage), free(w.qstage), free(w.qt);
        lr_errp(err, LR_E_NOMEM, NULL, "out of memory for %zu MiB of model weights", total >> 20);
        goto fail;
    }
    w.base = m->wmem;
    w.off = 0;
    m->wbytes = total;
    m->qbytes = m->qf32 = 0;
    int rc = load_weights(&w);
    free(w.stage), free(w.qstage), free(w.qt);
    if (rc) goto fail;
    st_set_close(s);
    *out = m;
    return 0;
fail:
    lr_err_prefix(err, "model %s: ", dir);
    st_set_close(s);
    model_free(m);
    return -1;
}

static void free_acts(model *m) {
    if (m->amem) m->be->free(m->be, m->amem);
    m->amem = NULL;
    m->capN = 0;
    free(m->htargets);
    m->htargets = NULL;
    free(m->hrow);
    m->hrow = NULL;
}

static void free_lora(model *m) {
    if (m->pmem && !m->full) m->be->free(m->be, m->pmem); /* full: pmem is the weight arena */
    if (m->gmem) m->be->free(m->be, m->gmem);
    if (m->nmem) m->be->free(m->be, m->nmem);
    m->pmem = m->gmem = m->nmem = NULL;
    free(m->params);
    m->params = NULL;
    m->nparams = m->numel = 0;
    adapter_free(m->ad);
    m->ad = NULL;
    for (int l = 0; m->layers && l < m->cfg.n_layers; l++)
        for (int s = 0; s < S_N; s++) {
            lin *li = &m->layers[l].m[s];
            if (li->L.lora == &li->lora) li->L.lora = NULL;
            memset(&li->lora, 0, sizeof li->lora);
            li->L.dW = li->L.db = NULL;
        }
    m->full = 0;
}

static void free_ref(model *m) {
    if (m->rmem) m->be->free(m->be, m->rmem);
    m->rmem = NULL;
    adapter_free(m->rad);
    m->rad = NULL;
    for (int l = 0; m->layers && l < m->cfg.n_layers; l++)
        for (int s = 0; s < S_N; s++) {
            lin *li = &m->layers[l].m[s];
            if (li->L.lora == &li->rlora) li->L.lora = NULL;
            memset(&li->rlora, 0, sizeof li->rlora);
        }
}

void model_free(model *m) {
    if (!m) return;
    free_lora(m);
    free_ref(m);
    free_acts(m);
    if (m->wmem) m->be->free(m->be, m->wmem);
    free(m->wt);
    free(m->qw);
    free(m->layers);
    free(m);
}

/* ---- LoRA ---- */

static int dora_supported(const model *m, lr_err *err) {
    if (!m->be->dora_norm)
        return lr_errp(err, LR_E_INVALID, "lora.use_dora", "DoRA is not implemented by the %s backend yet", m->be->name);
    return 0;
}

/* Creates the adapter tensors of the modules that a selects, zeroed, in
 * layer then module order: A, B, then (DoRA) the magnitude. a becomes the
 * model's. */
static int lora_attach(model *m, adapter *a, float dropout, lr_err *err) {
    const hf_config *c = &m->cfg;
    size_t cap = (size_t)c->n_layers * S_N * 3, off = 0, noff = 0;
    int nper = a->use_dora ? 3 : 2;
    free_lora(m);
    free_acts(m); /* the saved LoRA inputs are planned per module: plan again */
    if (a->use_dora && dora_supported(m, err)) return -1;
    m->params = calloc(cap, sizeof *m->params);
    if (!m->params) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory attaching LoRA");
    for (int pass = 0; pass < 2; pass++) {
        off = noff = 0;
        m->nparams = 0;
        for (int l = 0; l < c->n_layers; l++)
            for (int s = 0; s < S_N; s++) {
                if (!mod_name(m, s) || !adapter_targets_module(a, m->gpt2 ? ARCH_GPT2 : ARCH_LLAMA, l, mod_name(m, s)))
                    continue;
                int in, out;
                slot_dims(m, s, &in, &out);
                lin *li = &m->layers[l].m[s];
                char key[160];
                if (!adapter_module_key(m->gpt2 ? ARCH_GPT2 : ARCH_LLAMA, l, mod_name(m, s), key, sizeof key)) {
                    free_lora(m);
                    return lr_errf(err, "LoRA: module name too long");
                }
                for (int k = 0; k < nper; k++) {
                    model_param *p = &m->params[m->nparams++];
                    if (k < 2) {
                        snprintf(p->name, sizeof p->name, "%s.lora_%c.weight", key, k ? 'B' : 'A');
                        p->shape[0] = k ? out : a->r;
                        p->shape[1] = k ? a->r : in;
                        p->ndim = 2;
                    } else { /* PEFT saves DoRA's magnitude as a 1-D [out] tensor */
                        snprintf(p->name, sizeof p->name, "%s.lora_magnitude_vector", key);
                        p->shape[0] = out;
                        p->shape[1] = 1;
                        p->ndim = 1;
                    }
                    p->numel = (size_t)p->shape[0] * p->shape[1];
                    p->offset = off;
                    off += p->numel;
                }
                if (pass == 1) {
                    kb_lora *k = &li->lora;
                    model_param *pa = &m->params[m->nparams - nper], *pb = pa + 1;
                    k->A = m->pmem + pa->offset, k->B = m->pmem + pb->offset;
                    k->dA = m->gmem + pa->offset, k->dB = m->gmem + pb->offset;
                    k->r = a->r;
                    k->scale = adapter_scale(a);
                    k->dropout = 0.0f;
                    if (a->use_dora) {
                        k->mag = m->pmem + pa[2].offset, k->dmag = m->gmem + pa[2].offset;
                        k->wnorm = m->nmem + noff;
                    }
                    li->L.lora = k;
                }
                noff += a->use_dora ? (size_t)out : 0;
            }
        if (pass == 0) {
            if (!m->nparams) {
                free(m->params);
                m->params = NULL;
                return lr_errp(err, LR_E_INVALID, "lora.targets", "LoRA targets select no module of this %s model",
                               m->cfg.model_type);
            }
            m->pmem = m->be->alloc(m->be, off * sizeof(float));
            m->gmem = m->be->alloc(m->be, off * sizeof(float));
            m->nmem = noff ? m->be->alloc(m->be, noff * sizeof(float)) : NULL;
            if (!m->pmem || !m->gmem || (noff && !m->nmem)) {
                free_lora(m);
                return lr_errp(err, LR_E_NOMEM, NULL, "out of memory for the LoRA parameters");
            }
        }
    }
    m->numel = off;
    m->ad = a;
    memset(&m->lcfg, 0, sizeof m->lcfg);
    m->lcfg.r = a->r;
    m->lcfg.alpha = a->alpha;
    m->lcfg.dropout = dropout;
    m->lcfg.use_rslora = a->use_rslora;
    m->lcfg.use_dora = a->use_dora;
    m->lcfg.n_targets = a->n_targets;
    for (int i = 0; i < a->n_targets && i < MODEL_MAX_TARGETS; i++)
        snprintf(m->lcfg.targets[i], sizeof m->lcfg.targets[i], "%s", a->targets[i]);
    return 0;
}

/* DoRA: recomputes the detached norms ||W + scale B A|| of every adapter in
 * use from its current A and B. Every forward starts with it, so the norms
 * follow the optimizer's updates; anything that runs linear_fwd by itself
 * (the KV cache) calls it first too. */
static void dora_refresh(model *m) {
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int s = 0; s < S_N; s++) {
            lin *li = &m->layers[l].m[s];
            if (li->L.lora && li->L.lora->mag) m->be->dora_norm(m->be, &li->L, (float *)li->L.lora->wnorm);
        }
}

int model_lora_init(model *m, const model_lora_cfg *cfg, uint64_t seed, lr_err *err) {
    if (cfg->r <= 0 || cfg->r > 4096) return lr_errp(err, LR_E_INVALID, "lora.r", "LoRA r must be in 1..4096");
    if (!(cfg->dropout >= 0.0f && cfg->dropout < 1.0f))
        return lr_errp(err, LR_E_INVALID, "lora.dropout", "LoRA dropout must be in [0, 1)");
    if (cfg->n_targets <= 0 || cfg->n_targets > ADAPTER_MAX_TARGETS)
        return lr_errp(err, LR_E_INVALID, "lora.targets", "LoRA needs 1..%d target modules", ADAPTER_MAX_TARGETS);
    adapter *a = adapter_new();
    if (!a) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
    a->arch = m->gpt2 ? ARCH_GPT2 : ARCH_LLAMA;
    a->r = cfg->r;
    a->alpha = cfg->alpha;
    a->dropout = cfg->dropout;
    a->use_rslora = cfg->use_rslora;
    a->use_dora = cfg->use_dora;
    a->fan_in_fan_out = m->gpt2;
    a->n_targets = cfg->n_targets;
    if (cfg->n_targets == 1 && !strcmp(cfg->targets[0], "all-linear")) { /* PEFT's string form */
        snprintf(a->target_regex, sizeof a->target_regex, "all-linear");
        a->n_targets = 0;
    }
    for (int i = 0; i < a->n_targets; i++) {
        if (strlen(cfg->targets[i]) >= sizeof a->targets[i]) {
            adapter_free(a);
            return lr_errp(err, LR_E_INVALID, "lora.targets", "LoRA target '%s' is too long", cfg->targets[i]);
        }
        memcpy(a->targets[i], cfg->targets[i], strlen(cfg->targets[i]) + 1); /* length checked above */
    }
    if (lora_attach(m, a, cfg->dropout, err)) {
        adapter_free(a);
        return -1;
    }
    /* PEFT: nn.init.kaiming_uniform_(A, a=sqrt(5)): gain sqrt(2 / (1 + 5)),
     * bound = gain * sqrt(3 / fan_in) = 1 / sqrt(in). B stays zero. */
    size_t maxa = 0, step = cfg->use_dora ? 3 : 2;
    for (size_t i = 0; i < m->nparams; i += step) maxa = m->params[i].numel > maxa ? m->params[i].numel : maxa;
    float *h = malloc(maxa * sizeof(float));
    if (!h) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
    for (size_t i = 0; i < m->nparams; i += step) {
        model_param *p = &m->params[i];
        lr_rng r;
        float bound = 1.0f / sqrtf((float)p->shape[1]);
        rng_stream(&r, seed, lr_hash64(p->name));
        rng_fill_uniform(&r, h, p->numel, -bound, bound);
        m->be->upload(m->be, m->pmem + p->offset, h, p->numel * sizeof(float));
    }
    free(h);
    /* DoRA (PEFT's init): magnitude = ||W + scale B A|| = ||W|| row-wise with B = 0 */
    for (int l = 0; cfg->use_dora && l < m->cfg.n_layers; l++)
        for (int s = 0; s < S_N; s++) {
            lin *li = &m->layers[l].m[s];
            if (li->lora.mag) m->be->dora_norm(m->be, &li->L, li->lora.mag);
        }
    dora_refresh(m);
    return 0;
}

/* ---- full fine-tuning ---- */

/* The gradient of a base tensor: the same offset into gmem. */
static float *gradof(const model *m, const void *w) {
    if (!m->full || !w) return NULL;
    return m->gmem + ((const char *)w - (const char *)m->wmem) / sizeof(float);
}

int model_full_init(model *m, lr_err *err) {
    kb_backend *be = m->be;
    if (!be->weight_grads || !be->host_memory || be->weight_dtype != KB_F32)
        return lr_errp(err, LR_E_INVALID, "method.type", "full_sft is not implemented by the %s backend yet (use cpu)",
                       be->name);
    if (m->qbytes)
        return lr_errp(err, LR_E_INVALID, "lora.quantize",
                       "full_sft trains the base weights, which are 4-bit here: load the model unquantized");
    if (m->bf16)
        return lr_errp(err, LR_E_INVALID, "compute_dtype",
                       "full_sft trains the base weights in f32: use compute_dtype f32 (or auto)");
    free_lora(m);
    free_ref(m);
    free_acts(m);
    m->params = calloc(m->nwt, sizeof *m->params);
    m->gmem = be->alloc(be, m->wbytes);
    if (!m->params || !m->gmem) {
        free_lora(m);
        return lr_errp(err, LR_E_NOMEM, NULL, "out of memory for %zu MiB of full fine-tuning gradients",
                       m->wbytes >> 20);
    }
    for (size_t i = 0; i < m->nwt; i++) {
        const wtensor *t = &m->wt[i];
        model_param *p = &m->params[i];
        snprintf(p->name, sizeof p->name, "%s", t->name);
        p->shape[0] = t->shape[0], p->shape[1] = t->shape[1], p->ndim = t->ndim;
        p->offset = t->off / sizeof(float);
        p->numel = (size_t)t->shape[0] * t->shape[1];
        p->no_decay = t->ndim == 1; /* HF Trainer: no weight decay on biases and norm weights */
    }
    m->nparams = m->nwt;
    m->full = 1;
    m->pmem = m->wmem;
    m->numel = m->wbytes / sizeof(float);
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int s = 0; s < S_N; s++) {
            kb_linear *L = &m->layers[l].m[s].L;
            if (!L->W) continue;
            L->dW = gradof(m, L->W);
            L->db = gradof(m, L->b);
        }
    return 0;
}

int model_is_full(const model *m) { return m->full; }

int model_full_save(model *m, const char *src_dir, const char *out_dir, int keep_f32, lr_err *err) {
    if (!m->full) return lr_errf(err, "the model is not set up for full fine-tuning");
    char path[4096];
    st_writer *w = st_writer_new();
    st_stream *ss = NULL;
    uint16_t *h = NULL;
    size_t maxn = 0;
    int rc = -1;
    if (!w) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
    if (lr_mkdirs(out_dir, err) || merge_copy_side_files(src_dir, out_dir, err)) goto done;
    for (size_t i = 0; i < m->nparams; i++) {
        const model_param *p = &m->params[i];
        st_dtype dt = keep_f32 ? ST_F32 : m->wt[i].dtype;
        if (st_writer_add(w, p->name, dt, p->ndim, p->shape, NULL, err)) goto done;
        if (p->numel > maxn) maxn = p->numel;
    }
    if (st_writer_meta(w, "format", "pt", err)) goto done;
    h = malloc(maxn * sizeof *h);
    if (!h) {
        lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
        goto done;
    }
    if (lr_pathf(path, sizeof path, "%s/model.safetensors", out_dir)) {
        lr_errf(err, "path too long: %s", out_dir);
        goto done;
    }
    if (st_stream_begin(w, path, &ss, err)) goto done;
    for (const st_tensor *t; (t = st_stream_next(ss));) {
        size_t i;
        for (i = 0; i < m->nparams && strcmp(m->params[i].name, t->name); i++) {}
        const float *x = m->pmem + m->params[i].offset;
        size_t n = m->params[i].numel;
        int prc;
        if (t->dtype == ST_F32) {
            prc = st_stream_put(ss, x, n * sizeof(float), err);
        } else {
            for (size_t k = 0; k < n; k++) h[k] = t->dtype == ST_BF16 ? st_f32_to_bf16(x[k]) : st_f32_to_f16(x[k]);
            prc = st_stream_put(ss, h, n * sizeof *h, err);
        }
        if (prc) {
            ss = NULL; /* a failed put aborts the stream */
            goto done;
        }
    }
    rc = st_stream_finish(ss, err);
    ss = NULL;
done:
    if (ss) st_stream_abort(ss);
    free(h);
    st_writer_free(w);
    return rc;
}

int model_full_restore(model *m, const char *dir, lr_err *err) {
    if (!m->full) return lr_errf(err, "the model is not set up for full fine-tuning");
    st_set *s = NULL;
    if (st_set_open_dir(dir, &s, err)) return lr_err_prefix(err, "checkpoint %s: ", dir);
    int rc = 0;
    for (size_t i = 0; i < m->nparams && !rc; i++) {
        const model_param *p = &m->params[i];
        const st_tensor *t = st_set_find(s, p->name);
        if (!t || st_numel(t) != (int64_t)p->numel)
            rc = lr_errf(err, "checkpoint %s: tensor '%s' is missing or has another shape", dir, p->name);
        else if (st_to_f32(t, m->pmem + p->offset, p->numel, err))
            rc = lr_err_prefix(err, "checkpoint %s: tensor '%s': ", dir, p->name);
    }
    st_set_close(s);
    return rc;
}

int model_lora_load(model *m, const char *adapter_dir, lr_err *err) {
    adapter *a = NULL;
    if (adapter_load(adapter_dir, &a, err)) return lr_err_prefix(err, "adapter %s: ", adapter_dir);
    if ((a->arch == ARCH_GPT2) != m->gpt2) {
        lr_errf(err, "adapter %s was made for a %s model, not %s", adapter_dir, a->arch == ARCH_GPT2 ? "gpt2" : "llama-family",
                m->cfg.model_type);
        goto fail;
    }
    if (adapter_check_model(a, &m->cfg, err)) {
        lr_err_prefix(err, "adapter %s: ", adapter_dir);
        goto fail;
    }
    adapter_tensor *t = a->t;
    int nt = a->n_tensors;
    a->t = NULL, a->n_tensors = a->cap_tensors = 0; /* the model keeps a's settings, the data go to the backend */
    if (lora_attach(m, a, a->dropout, err)) {
        a->t = t, a->n_tensors = nt;
        goto fail;
    }
    int rc = 0;
    for (size_t i = 0; i < m->nparams && !rc; i++) {
        const model_param *p = &m->params[i];
        int k;
        for (k = 0; k < nt && strcmp(t[k].key, p->name); k++) {}
        if (k == nt) {
            rc = lr_errf(err, "adapter %s: target_modules select %s but the file has no such tensor", adapter_dir, p->name);
            break;
        }
        if (t[k].rows != p->shape[0] || t[k].cols != p->shape[1]) {
            rc = lr_errf(err, "adapter %s: %s has shape [%d, %d], expected [%lld, %lld]", adapter_dir, p->name, t[k].rows,
                         t[k].cols, (long long)p->shape[0], (long long)p->shape[1]);
            break;
        }
        m->be->upload(m->be, m->pmem + p->offset, t[k].data, p->numel * sizeof(float));
    }
    if (!rc && (size_t)nt != m->nparams)
        rc = lr_errf(err, "adapter %s has %d tensors but its target_modules select %zu", adapter_dir, nt, m->nparams);
    for (int k = 0; k < nt; k++) free(t[k].data);
    free(t);
    if (rc) free_lora(m);
    else dora_refresh(m);
    return rc;
fail:
    adapter_free(a);
    return -1;
}

int model_lora_save(model *m, const char *adapter_dir, lr_err *err) {
    if (!m->ad) return lr_errf(err, "the model has no LoRA adapters to save");
    adapter *a = adapter_new();
    if (!a) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
    adapter_tensor *t0 = a->t;
    *a = *m->ad; /* the settings; m->ad holds no tensors */
    a->t = NULL, a->n_tensors = a->cap_tensors = 0;
    free(t0);
    /* an adapter loaded to resume may come from a file that left it null */
    if (!a->base_model[0]) snprintf(a->base_model, sizeof a->base_model, "%s", m->base_name);
    int rc = 0;
    for (int l = 0; l < m->cfg.n_layers && !rc; l++)
        for (int s = 0; s < S_N && !rc; s++) {
            const kb_lora *k = &m->layers[l].m[s].lora;
            if (!k->A) continue; /* attached, whether switched on or not */
            const kb_linear *L = &m->layers[l].m[s].L;
            adapter_tensor *ta = adapter_add(a, l, mod_name(m, s), ADAPTER_A, k->r, L->in, err);
            if (!ta) { rc = -1; break; }
            m->be->download(m->be, ta->data, k->A, (size_t)k->r * L->in * sizeof(float));
            adapter_tensor *tb = adapter_add(a, l, mod_name(m, s), ADAPTER_B, L->out, k->r, err);
            if (!tb) { rc = -1; break; }
            m->be->download(m->be, tb->data, k->B, (size_t)L->out * k->r * sizeof(float));
            if (!k->mag) continue;
            adapter_tensor *tm = adapter_add(a, l, mod_name(m, s), ADAPTER_MAGNITUDE, L->out, 1, err);
            if (!tm) { rc = -1; break; }
            m->be->download(m->be, tm->data, k->mag, (size_t)L->out * sizeof(float));
        }
    if (!rc) rc = adapter_save(a, adapter_dir, err);
    adapter_free(a);
    return rc;
}

void model_zero_grad(model *m) {
    if (m->gmem) m->be->zero(m->be, m->gmem, m->numel * sizeof(float));
}

static int param_io(model *m, size_t i, float *host, size_t n, int dir, lr_err *err) {
    if (i >= m->nparams) return lr_errf(err, "no LoRA tensor %zu", i);
    const model_param *p = &m->params[i];
    if (n != p->numel) return lr_errf(err, "%s has %zu elements, not %zu", p->name, p->numel, n);
    if (dir == 0) m->be->download(m->be, host, m->pmem + p->offset, n * sizeof(float));
    if (dir == 1) m->be->upload(m->be, m->pmem + p->offset, host, n * sizeof(float));
    if (dir == 2) m->be->download(m->be, host, m->gmem + p->offset, n * sizeof(float));
    return 0;
}
int model_param_get(model *m, size_t i, float *host, size_t n, lr_err *err) { return param_io(m, i, host, n, 0, err); }
int model_param_set(model *m, size_t i, const float *host, size_t n, lr_err *err) {
    return param_io(m, i, (float *)host, n, 1, err);
}
int model_grad_get(model *m, size_t i, float *host, size_t n, lr_err *err) { return param_io(m, i, host, n, 2, err); }

void model_set_train(model *m, int train, uint64_t seed) {
    m->train = train;
    m->seed = seed;
    m->micro = 0;
}

/* ---- activations ---- */

static float *take(char *base, size_t *off, size_t nfloats) {
    float *p = base ? (float *)(base + *off) : NULL;
    *off += align64(nfloats * sizeof(float));
    return p;
}

/* Carves the activations for N rows (T positions) out of base; returns the
 * size in bytes. With base NULL, only measures. */
static size_t plan_acts(model *m, char *base, size_t N, int T, int r) {
    const hf_config *c = &m->cfg;
    size_t C = c->hidden, I = c->intermediate, W3 = (size_t)m->Qd + 2 * (size_t)m->KVd, off = 0;
    for (int l = 0; l < c->n_layers; l++) {
        layer *L = &m->layers[l];
        L->res = take(base, &off, N * C);
        for (int s = 0; s < S_N; s++)
            L->m[s].xa = L->m[s].L.lora || L->m[s].rlora.A || (m->nslots && mod_name(m, s)) ? take(base, &off, N * r)
                                                                                          : NULL;
        if (m->recompute && l > 0) { /* everything but the layer input is recomputed in the backward */
            const layer *L0 = &m->layers[0];
            L->ln1 = L0->ln1, L->n1mean = L0->n1mean, L->n1rstd = L0->n1rstd, L->qkv = L0->qkv, L->att = L0->att;
            L->lse = L0->lse, L->mid = L0->mid, L->ln2 = L0->ln2, L->n2mean = L0->n2mean, L->n2rstd = L0->n2rstd;
            L->f1 = L0->f1, L->f2 = L0->f2;
            continue;
        }
        L->ln1 = take(base, &off, N * C);
        L->n1mean = take(base, &off, N);
        L->n1rstd = take(base, &off, N);
        L->qkv = take(base, &off, N * W3);
        L->att = take(base, &off, N * m->Qd);
        L->lse = take(base, &off, N * c->n_heads);
        L->mid = take(base, &off, N * C);
        L->ln2 = take(base, &off, N * C);
        L->n2mean = take(base, &off, N);
        L->n2rstd = take(base, &off, N);
        L->f1 = take(base, &off, N * I);
        L->f2 = m->gpt2 ? NULL : take(base, &off, N * I);
    }
    m->resL = take(base, &off, N * C);
    m->lnf = take(base, &off, N * C);
    m->nfmean = take(base, &off, N);
    m->nfrstd = take(base, &off, N);
    m->tmpC = take(base, &off, N * C);
    m->tmpI = take(base, &off, N * I);
    m->dres = take(base, &off, N * C);
    m->dln = take(base, &off, N * C);
    m->dqkv = take(base, &off, N * W3);
    m->datt = take(base, &off, N * m->Qd);
    m->d1 = take(base, &off, N * I);
    m->d2 = take(base, &off, N * I);
    m->dI = take(base, &off, N * I);
    m->ids = (int32_t *)take(base, &off, N);
    m->targets = (int32_t *)take(base, &off, N);
    m->rcos = take(base, &off, (size_t)T * c->head_dim / 2);
    m->rsin = take(base, &off, (size_t)T * c->head_dim / 2);
    m->lnref = take(base, &off, N * C);
    m->tokloss = take(base, &off, N);
    m->tokscale = take(base, &off, N);
    return off;
}

/* The rank the saved LoRA inputs are planned for: the larger of the
 * trained and the reference adapter's. */
static int act_rank(const model *m) {
    int r = m->ad ? m->ad->r : 0;
    if (m->nslots && m->pack_r > r) r = m->pack_r;
    return m->rad && m->rad->r > r ? m->rad->r : r;
}

int model__rope_tables(const model *m, int T, float *cos, float *sin, lr_err *err) {
    const hf_config *c = &m->cfg;
    if (m->gpt2) return 0;
    int half = c->head_dim / 2;
    float *h = malloc((size_t)T * half * 2 * sizeof(float));
    if (!h) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory for RoPE tables of %d positions", T);
    for (int i = 0; i < half; i++) {
        float inv = lr_rope_inv_freq(i, c->head_dim, c->rope_theta, c->rope_factor, c->rope_low_freq_factor,
                                     c->rope_high_freq_factor, c->rope_orig_max_pos);
        for (int t = 0; t < T; t++) {
            float f = (float)t * inv;
            h[(size_t)t * half + i] = cosf(f);
            h[(size_t)T * half + (size_t)t * half + i] = sinf(f);
        }
    }
    m->be->upload(m->be, cos, h, (size_t)T * half * sizeof(float));
    m->be->upload(m->be, sin, h + (size_t)T * half, (size_t)T * half * sizeof(float));
    free(h);
    return 0;
}

static int reserve(model *m, int B, int T, lr_err *err) {
    int r = act_rank(m);
    size_t N = (size_t)B * T;
    /* with slots live, one plan serves every adapter of rank up to cap_r */
    int same = m->cap_slots == !!m->nslots && (r == m->cap_r || (m->nslots && r < m->cap_r));
    if (m->amem && N <= m->capN && T <= m->capT && same) return 0;
    if (same) r = m->cap_r;
    if (r == m->cap_r) { /* grow to cover both shapes */
        if (N < m->capN) N = m->capN;
        if (T < m->capT) T = m->capT;
    }
    free_acts(m);
    size_t bytes = plan_acts(m, NULL, N, T, r);
    m->amem = m->be->alloc(m->be, bytes);
    m->htargets = malloc(N * sizeof(int32_t));
    m->hrow = malloc(N * sizeof(float));
    if (!m->amem || !m->htargets || !m->hrow) {
        free_acts(m);
        return lr_errp(err, LR_E_NOMEM, NULL, "out of memory for %zu MiB of activations (batch %d x %d tokens)",
                       bytes >> 20, B, T);
    }
    plan_acts(m, m->amem, N, T, r);
    m->capN = N, m->capT = T, m->cap_r = r, m->cap_slots = !!m->nslots;
    if (model__rope_tables(m, T, m->rcos, m->rsin, err)) {
        free_acts(m);
        return -1;
    }
    return 0;
}

void model_set_recompute(model *m, int on) {
    if (m->recompute == !!on) return;
    m->recompute = !!on;
    free_acts(m); /* planned the other way: plan again */
}

int model_reserve(model *m, int B, int T, lr_err *err) {
    if (B <= 0 || T <= 0 || (long long)B * T > (1 << 24))
        return lr_errp(err, LR_E_INVALID, NULL, "batch %d x %d tokens is out of range", B, T);
    return reserve(m, B, T, err);
}

/* ---- forward and backward ---- */

static void norm_fwd(model *m, float *out, float *mean, float *rstd, const float *x, const void *w, const void *b,
                     int N) {
    kb_backend *be = m->be;
    if (m->gpt2)
        be->layernorm_fwd(be, out, mean, rstd, x, w, b, N, m->cfg.hidden, m->cfg.norm_eps);
    else
        be->rmsnorm_fwd(be, out, rstd, x, w, N, m->cfg.hidden, m->cfg.norm_eps);
}

/* With full fine-tuning the norm's weight (and bias) gradients too. */
static void norm_bwd(model *m, float *dx, const float *dout, const float *x, const void *w, const void *b,
                     const float *mean, const float *rstd, int N) {
    kb_backend *be = m->be;
    if (m->gpt2)
        be->layernorm_bwd(be, dx, gradof(m, w), gradof(m, b), dout, x, w, mean, rstd, N, m->cfg.hidden);
    else
        be->rmsnorm_bwd(be, dx, gradof(m, w), dout, x, w, rstd, N, m->cfg.hidden);
}

/* Pointers to q, k, v inside a qkv-shaped buffer and their row strides. */
static void qkv_split(const model *m, float *buf, int N, float **q, float **k, float **v, int *ldq, int *ldkv) {
    if (m->gpt2) {
        int C = m->cfg.hidden;
        *q = buf, *k = buf + C, *v = buf + 2 * C, *ldq = *ldkv = 3 * C;
    } else {
        *q = buf, *k = buf + (size_t)N * m->Qd, *v = *k + (size_t)N * m->KVd, *ldq = m->Qd, *ldkv = m->KVd;
    }
}

/* Layer l's attention window, 0 for none: Mistral's sliding_window is on
 * every layer, Qwen2's (use_sliding_window) only on layers from
 * max_window_layers on, as transformers' layer_types has it. */
static int layer_window(const model *m, int l) {
    const hf_config *c = &m->cfg;
    if (c->arch == ARCH_QWEN2 && l < c->max_window_layers) return 0;
    return c->sliding_window;
}

/* ---- one pass, one adapter or several (co-training) ----
 * Outside model_fwd_bwd_pack a pass is one micro-batch of B x T rows and
 * these call the ops once. In a packed pass B x T is all rows x 1 (for the
 * row-wise ops) and m->pseg holds each adapter's micro-batch: the frozen
 * base runs once over all rows, the LoRA path, RoPE, attention and the
 * embeddings' positions per segment, on exactly the rows and shapes the
 * adapter's own pass would have, so each segment computes what it computes
 * alone. */

typedef struct pseg {
    int row0, B, T;
    model_slot *slot;
} pseg;

static kb_lora *slot_mod(model_slot *s, int l, int slot);

/* xa: the saved LoRA input of the module (decoding: scratch). */
static void lin_fwd(model *m, int l, int s, float *y, float *xa, const float *x, int N) {
    kb_backend *be = m->be;
    lin *li = &m->layers[l].m[s];
    if (!m->npseg) {
        be->linear_fwd(be, &li->L, y, xa, x, N);
        return;
    }
    kb_linear Lg = li->L;
    Lg.lora = NULL;
    be->linear_fwd(be, &Lg, y, NULL, x, N);
    for (int g = 0; g < m->npseg; g++) {
        const pseg *sg = &m->pseg[g];
        Lg.lora = slot_mod(sg->slot, l, s);
        if (!Lg.lora->A) continue;
        size_t r0 = (size_t)sg->row0;
        be->lora_fwd(be, &Lg, y + r0 * Lg.out, xa + r0 * m->cap_r, x + r0 * Lg.in, sg->B * sg->T);
    }
}

static void lin_bwd(model *m, int l, int s, float *dx, int dx_acc, const float *dy, const float *x, int N) {
    kb_backend *be = m->be;
    lin *li = &m->layers[l].m[s];
    if (!m->npseg) {
        be->linear_bwd(be, &li->L, dx, dx_acc, dy, x, li->xa, N);
        return;
    }
    kb_linear Lg = li->L;
    Lg.lora = NULL;
    be->linear_bwd(be, &Lg, dx, dx_acc, dy, x, NULL, N);
    for (int g = 0; g < m->npseg; g++) {
        const pseg *sg = &m->pseg[g];
        Lg.lora = slot_mod(sg->slot, l, s);
        if (!Lg.lora->A) continue;
        size_t r0 = (size_t)sg->row0;
        be->lora_bwd(be, &Lg, dx ? dx + r0 * Lg.in : NULL, dy + r0 * Lg.out, x + r0 * Lg.in, li->xa + r0 * m->cap_r,
                     sg->B * sg->T);
    }
}

/* RoPE (bwd: its inverse) on H heads of rows of stride ld. */
static void seg_rope(model *m, int bwd, float *x, int ld, int H, int B, int T) {
    kb_backend *be = m->be;
    void (*op)(kb_backend *, float *, int, const float *, const float *, int, int, int, int) =
        bwd ? be->rope_bwd : be->rope_fwd;
    if (!m->npseg) op(be, x, ld, m->rcos, m->rsin, B * T, T, H, m->cfg.head_dim);
    for (int g = 0; g < m->npseg; g++) {
        const pseg *sg = &m->pseg[g];
        op(be, x + (size_t)sg->row0 * ld, ld, m->rcos, m->rsin, sg->B * sg->T, sg->T, H, m->cfg.head_dim);
    }
}

/* Layer l's attention, from q, k, v to L->att and L->lse ([B, Hq, T] per segment). */
static void seg_attn_fwd(model *m, int l, const float *q, const float *k, const float *v, int ldq, int ldkv, int B,
                         int T) {
    const hf_config *c = &m->cfg;
    layer *L = &m->layers[l];
    pseg one = {0, B, T, NULL};
    for (int g = 0; g < (m->npseg ? m->npseg : 1); g++) {
        const pseg *sg = m->npseg ? &m->pseg[g] : &one;
        size_t r0 = (size_t)sg->row0;
        m->be->attn_fwd(m->be, L->att + r0 * m->Qd, L->lse + r0 * c->n_heads, q + r0 * ldq, k + r0 * ldkv,
                        v + r0 * ldkv, ldq, ldkv, sg->B, sg->T, c->n_heads, c->n_kv_heads, c->head_dim,
                        layer_window(m, l));
    }
}

static void seg_attn_bwd(model *m, int l, float *dq, float *dk, float *dv, const float *q, const float *k,
                         const float *v, int ldq, int ldkv, int B, int T) {
    const hf_config *c = &m->cfg;
    layer *L = &m->layers[l];
    pseg one = {0, B, T, NULL};
    for (int g = 0; g < (m->npseg ? m->npseg : 1); g++) {
        const pseg *sg = m->npseg ? &m->pseg[g] : &one;
        size_t r0 = (size_t)sg->row0;
        m->be->attn_bwd(m->be, dq + r0 * ldq, dk + r0 * ldkv, dv + r0 * ldkv, m->datt + r0 * m->Qd,
                        L->att + r0 * m->Qd, L->lse + r0 * c->n_heads, q + r0 * ldq, k + r0 * ldkv, v + r0 * ldkv, ldq,
                        ldkv, sg->B, sg->T, c->n_heads, c->n_kv_heads, c->head_dim, layer_window(m, l));
    }
}

/* What one layer's forward reads and writes. Training (train_io) points it
 * at the layer's activations, kept for the backward; decoding (dec_io) at
 * the KV cache's scratch, with the new rows' keys and values written into
 * the cache (kc set). */
typedef struct layer_io {
    int B, T;                /* B sequences of T positions; decoding: 1 x n new rows */
    float *res, *next;       /* the layer's input and output (decoding: the same buffer) */
    float *ln1, *n1mean, *n1rstd, *ln2, *n2mean, *n2rstd;
    float *qkv;              /* GPT-2: c_attn's fused rows */
    float *q, *k, *v;        /* q, k, v rows (inside qkv for GPT-2) */
    int ldq, ldkv;
    float *att, *lse, *mid, *f1, *f2, *act;
    float *xa[S_N];          /* LoRA inputs per module */
    /* decoding: the layer's cached keys and values of positions 0..p0+n-1
     * (stride ldkv) and the RoPE tables from position p0; kc NULL in training */
    const float *kc, *vc;
    int p0;
    const float *rcos, *rsin;
} layer_io;

static void train_io(model *m, int l, int B, int T, layer_io *io) {
    layer *L = &m->layers[l];
    *io = (layer_io){.B = B, .T = T, .res = L->res, .ln1 = L->ln1, .n1mean = L->n1mean, .n1rstd = L->n1rstd,
                     .ln2 = L->ln2, .n2mean = L->n2mean, .n2rstd = L->n2rstd, .qkv = L->qkv, .att = L->att,
                     .lse = L->lse, .mid = L->mid, .f1 = L->f1, .f2 = L->f2, .act = m->tmpI};
    io->next = l + 1 < m->cfg.n_layers ? m->layers[l + 1].res : m->resL;
    qkv_split(m, L->qkv, B * T, &io->q, &io->k, &io->v, &io->ldq, &io->ldkv);
    for (int s = 0; s < S_N; s++) io->xa[s] = L->m[s].xa;
}

/* Layer l from io->res to io->next. Training and decoding differ only in
 * where the rows sit: decoding's start at position p0 (RoPE) and attend to
 * the cache (attn_kv_fwd) instead of to each other (attn_fwd). */
static void layer_fwd(model *m, int l, const layer_io *io) {
    kb_backend *be = m->be;
    const hf_config *c = &m->cfg;
    int N = io->B * io->T, D = c->head_dim;
    size_t NC = (size_t)N * c->hidden, NI = (size_t)N * c->intermediate;
    layer *L = &m->layers[l];
    norm_fwd(m, io->ln1, io->n1mean, io->n1rstd, io->res, L->n1w, L->n1b, N);
    if (m->gpt2) {
        lin_fwd(m, l, S_Q, io->qkv, io->xa[S_Q], io->ln1, N);
    } else {
        lin_fwd(m, l, S_Q, io->q, io->xa[S_Q], io->ln1, N);
        lin_fwd(m, l, S_K, io->k, io->xa[S_K], io->ln1, N);
        lin_fwd(m, l, S_V, io->v, io->xa[S_V], io->ln1, N);
        if (io->kc) {
            be->rope_fwd(be, io->q, io->ldq, io->rcos, io->rsin, N, N, c->n_heads, D);
            be->rope_fwd(be, io->k, io->ldkv, io->rcos, io->rsin, N, N, c->n_kv_heads, D);
        } else {
            seg_rope(m, 0, io->q, io->ldq, c->n_heads, io->B, io->T);
            seg_rope(m, 0, io->k, io->ldkv, c->n_kv_heads, io->B, io->T);
        }
    }
    if (io->kc)
        be->attn_kv_fwd(be, io->att, io->q, io->ldq, io->kc, io->vc, io->ldkv, io->p0, N, c->n_heads, c->n_kv_heads,
                        D, layer_window(m, l));
    else
        seg_attn_fwd(m, l, io->q, io->k, io->v, io->ldq, io->ldkv, io->B, io->T);
    lin_fwd(m, l, S_O, io->mid, io->xa[S_O], io->att, N);
    be->add(be, io->mid, io->res, NC);
    norm_fwd(m, io->ln2, io->n2mean, io->n2rstd, io->mid, L->n2w, L->n2b, N);
    if (m->gpt2) {
        lin_fwd(m, l, S_UP, io->f1, io->xa[S_UP], io->ln2, N);
        be->gelu_fwd(be, io->act, io->f1, NI, m->exact_gelu);
    } else {
        lin_fwd(m, l, S_GATE, io->f1, io->xa[S_GATE], io->ln2, N);
        lin_fwd(m, l, S_UP, io->f2, io->xa[S_UP], io->ln2, N);
        be->swiglu_fwd(be, io->act, io->f1, io->f2, NI);
    }
    /* decoding: next is res, which the residual add above has consumed */
    lin_fwd(m, l, S_DOWN, io->next, io->xa[S_DOWN], io->act, N);
    be->add(be, io->next, io->mid, NC);
}

static void forward(model *m, int B, int T) {
    const hf_config *c = &m->cfg;
    int N = B * T;
    dora_refresh(m);
    pseg one = {0, B, T, NULL};
    for (int g = 0; g < (m->npseg ? m->npseg : 1); g++) { /* positions count from each segment's sequences */
        const pseg *sg = m->npseg ? &m->pseg[g] : &one;
        m->be->embed_fwd(m->be, m->layers[0].res + (size_t)sg->row0 * c->hidden, m->ids + sg->row0, m->wte,
                         m->gpt2 ? m->wpe : NULL, sg->B * sg->T, sg->T, c->hidden);
    }
    for (int l = 0; l < c->n_layers; l++) {
        layer_io io;
        train_io(m, l, B, T, &io);
        layer_fwd(m, l, &io);
    }
    norm_fwd(m, m->lnf, m->nfmean, m->nfrstd, m->resL, m->nfw, m->nfb, N);
}

/* Backward from dlnf (in m->dln) to the LoRA gradients, or with full
 * fine-tuning to every weight's. The residual-stream gradient is m->dres;
 * with a frozen base no weight gradient is formed and layer 0 stops before
 * the embeddings. */
static void backward(model *m, int B, int T) {
    kb_backend *be = m->be;
    const hf_config *c = &m->cfg;
    int N = B * T;
    size_t NC = (size_t)N * c->hidden, NI = (size_t)N * c->intermediate;
    be->zero(be, m->dres, NC * sizeof(float));
    norm_bwd(m, m->dres, m->dln, m->resL, m->nfw, m->nfb, m->nfmean, m->nfrstd, N);
    for (int l = c->n_layers - 1; l >= 0; l--) {
        layer *L = &m->layers[l];
        /* the forward left the last layer's activations in place; the same
         * ops on the same input give the same values bit for bit */
        if (m->recompute && l + 1 < c->n_layers) {
            layer_io io;
            train_io(m, l, B, T, &io);
            layer_fwd(m, l, &io);
        }
        float *q, *k, *v, *dq, *dk, *dv;
        int ldq, ldkv;
        qkv_split(m, L->qkv, N, &q, &k, &v, &ldq, &ldkv);
        qkv_split(m, m->dqkv, N, &dq, &dk, &dv, &ldq, &ldkv);
        /* MLP: next = mid + down(act(ln2)) */
        if (m->gpt2) {
            be->gelu_fwd(be, m->tmpI, L->f1, NI, m->exact_gelu);
            lin_bwd(m, l, S_DOWN, m->dI, 0, m->dres, m->tmpI, N);
            be->gelu_bwd(be, m->d1, m->dI, L->f1, NI, m->exact_gelu);
            lin_bwd(m, l, S_UP, m->dln, 0, m->d1, L->ln2, N);
        } else {
            be->swiglu_fwd(be, m->tmpI, L->f1, L->f2, NI);
            lin_bwd(m, l, S_DOWN, m->dI, 0, m->dres, m->tmpI, N);
            be->swiglu_bwd(be, m->d1, m->d2, m->dI, L->f1, L->f2, NI);
            lin_bwd(m, l, S_GATE, m->dln, 0, m->d1, L->ln2, N);
            lin_bwd(m, l, S_UP, m->dln, 1, m->d2, L->ln2, N);
        }
        norm_bwd(m, m->dres, m->dln, L->mid, L->n2w, L->n2b, L->n2mean, L->n2rstd, N);
        /* attention: mid = res + o(attn(q, k, v)) */
        lin_bwd(m, l, S_O, m->datt, 0, m->dres, L->att, N);
        seg_attn_bwd(m, l, dq, dk, dv, q, k, v, ldq, ldkv, B, T);
        /* below layer 0 only trained embeddings need an input gradient */
        float *dln = l > 0 || m->full ? m->dln : NULL;
        if (m->gpt2) {
            lin_bwd(m, l, S_Q, dln, 0, m->dqkv, L->ln1, N);
        } else {
            seg_rope(m, 1, dq, ldq, c->n_heads, B, T);
            seg_rope(m, 1, dk, ldkv, c->n_kv_heads, B, T);
            lin_bwd(m, l, S_Q, dln, 0, dq, L->ln1, N);
            lin_bwd(m, l, S_K, dln, 1, dk, L->ln1, N);
            lin_bwd(m, l, S_V, dln, 1, dv, L->ln1, N);
        }
        if (dln) norm_bwd(m, m->dres, m->dln, L->res, L->n1w, L->n1b, L->n1mean, L->n1rstd, N);
    }
    if (m->full) be->embed_bwd(be, gradof(m, m->wte), m->gpt2 ? gradof(m, m->wpe) : NULL, m->dres, m->ids, N, T, c->hidden);
}

static int stage(model *m, const int32_t *ids, const int32_t *labels, int B, int T, int row0, lr_err *err);
static void draw_masks(model *m, int bwd);

/* Checks a micro-batch, plans the activations, uploads ids and the shifted
 * targets and draws the dropout masks of this micro-batch (training with
 * gradients only). */
static int prep(model *m, const int32_t *ids, const int32_t *labels, int B, int T, int bwd, lr_err *err) {
    const hf_config *c = &m->cfg;
    if (B <= 0 || T <= 0 || (long long)B * T > (1 << 24))
        return lr_errp(err, LR_E_INVALID, NULL, "batch %d x %d tokens is out of range", B, T);
    if (m->gpt2 && T > c->max_pos)
        return lr_errp(err, LR_E_INVALID, "hyperparameters.max_seq_len",
                       "sequence length %d exceeds the model's %d positions", T, c->max_pos);
    if (bwd && !m->ad && !m->full) return lr_errf(err, "no LoRA adapters to train: attach or load one first");
    if (reserve(m, B, T, err) || stage(m, ids, labels, B, T, 0, err)) return -1;
    draw_masks(m, bwd);
    return 0;
}

/* Checks a micro-batch's ids and labels and uploads them, the labels
 * shifted, to rows row0.. of the pass. */
static int stage(model *m, const int32_t *ids, const int32_t *labels, int B, int T, int row0, lr_err *err) {
    const hf_config *c = &m->cfg;
    int N = B * T;
    for (int n = 0; n < N; n++) {
        if (ids[n] < 0 || ids[n] >= c->vocab_size)
            return lr_errp(err, LR_E_INVALID, "input_ids", "token id %d at [%d][%d] is outside the vocabulary (%d)",
                           ids[n], n / T, n % T, c->vocab_size);
        int32_t lab = labels[n];
        if (lab != LR_IGNORE_INDEX && (lab < 0 || lab >= c->vocab_size))
            return lr_errp(err, LR_E_INVALID, "labels", "label %d at [%d][%d] is neither -100 nor a token id", lab,
                           n / T, n % T);
        m->htargets[row0 + n] = n % T == T - 1 ? LR_IGNORE_INDEX : labels[n + 1];
    }
    kb_backend *be = m->be;
    be->upload(be, m->ids + row0, ids, (size_t)N * sizeof(int32_t));
    be->upload(be, m->targets + row0, m->htargets + row0, (size_t)N * sizeof(int32_t));
    return 0;
}

/* The attached adapter's dropout masks for the next micro-batch: dropout
 * only when training with gradients, fresh masks per micro-batch. */
static void draw_masks(model *m, int bwd) {
    const hf_config *c = &m->cfg;
    lr_rng rng;
    int drop = bwd && m->train && m->lcfg.dropout > 0.0f;
    if (drop) rng_stream(&rng, m->seed, m->micro++);
    for (int l = 0; m->ad && l < c->n_layers; l++)
        for (int s = 0; s < S_N; s++) {
            kb_lora *k = &m->layers[l].m[s].lora;
            if (!k->A) continue;
            k->dropout = drop ? m->lcfg.dropout : 0.0f;
            k->seed = drop ? rng_u64(&rng) : 0;
        }
}

static int run(model *m, const int32_t *ids, const int32_t *labels, int B, int T, int bwd, float grad_scale,
               double *loss_sum, int64_t *n_tokens, lr_err *err) {
    const hf_config *c = &m->cfg;
    *loss_sum = 0;
    *n_tokens = 0;
    m->n_correct = 0;
    if (prep(m, ids, labels, B, T, bwd, err)) return -1;
    int N = B * T;
    kb_backend *be = m->be;
    forward(m, B, T);
    *loss_sum = be->lmhead_ce(be, n_tokens, &m->n_correct, NULL, bwd ? m->dln : NULL, bwd ? gradof(m, m->lm) : NULL,
                              m->lnf, m->lm, m->targets, NULL, N, c->hidden, c->vocab_size, grad_scale, 0);
    if (bwd && *n_tokens) backward(m, B, T);
    if (be->check && be->check(be, err)) return -1; /* a deferred device failure */
    return 0;
}

int model_fwd_bwd(model *m, const int32_t *ids, const int32_t *labels, int B, int T, float grad_scale,
                  double *loss_sum, int64_t *n_tokens, lr_err *err) {
    return run(m, ids, labels, B, T, 1, grad_scale, loss_sum, n_tokens, err);
}

int model_loss(model *m, const int32_t *ids, const int32_t *labels, int B, int T, double *loss_sum,
               int64_t *n_tokens, lr_err *err) {
    return run(m, ids, labels, B, T, 0, 0.0f, loss_sum, n_tokens, err);
}

int64_t model_last_correct(const model *m) { return m->n_correct; }

/* ---- several adapters on one base (co-training) ---- */

struct model_slot {
    adapter *ad;
    model_lora_cfg lcfg;
    model_param *params;
    size_t nparams, numel;
    float *pmem, *gmem, *nmem;
    int train;
    uint64_t seed, micro;
    kb_lora *mods; /* [n_layers * S_N]: each module's adapter (A NULL: none) */
};

static kb_lora *slot_mod(model_slot *s, int l, int slot) { return &s->mods[(size_t)l * S_N + slot]; }

int model_slot_new(model *m, model_slot **out, lr_err *err) {
    model_slot *s = calloc(1, sizeof *s);
    if (s) s->mods = calloc((size_t)m->cfg.n_layers * S_N, sizeof *s->mods);
    if (!s || !s->mods) {
        free(s);
        return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
    }
    m->nslots++;
    *out = s;
    return 0;
}

#define SWAP(a, b)                                                                                                     \
    do {                                                                                                               \
        __typeof__(a) t_ = (a);                                                                                        \
        (a) = (b);                                                                                                     \
        (b) = t_;                                                                                                      \
    } while (0)

void model_slot_swap(model *m, model_slot *s) {
    SWAP(m->ad, s->ad);
    SWAP(m->lcfg, s->lcfg);
    SWAP(m->params, s->params);
    SWAP(m->nparams, s->nparams);
    SWAP(m->numel, s->numel);
    SWAP(m->pmem, s->pmem);
    SWAP(m->gmem, s->gmem);
    SWAP(m->nmem, s->nmem);
    SWAP(m->train, s->train);
    SWAP(m->seed, s->seed);
    SWAP(m->micro, s->micro);
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int k = 0; k < S_N; k++) {
            lin *li = &m->layers[l].m[k];
            SWAP(li->lora, *slot_mod(s, l, k));
            if (li->L.lora != &li->rlora) li->L.lora = li->lora.A ? &li->lora : NULL;
        }
    /* the activations are planned for the largest rank a slot has held */
    if (m->ad && m->ad->r > m->pack_r) m->pack_r = m->ad->r;
    if (s->ad && s->ad->r > m->pack_r) m->pack_r = s->ad->r;
}

void model_slot_free(model *m, model_slot *s) {
    if (!s) return;
    model_slot_swap(m, s);
    free_lora(m);
    model_slot_swap(m, s);
    free(s->mods);
    free(s);
    m->nslots--;
}

void model_slot_set_train(model_slot *s, int train, uint64_t seed) {
    s->train = train;
    s->seed = seed;
    s->micro = 0;
}

int model_fwd_bwd_pack(model *m, model_pack_mb *mb, int n, lr_err *err) {
    const hf_config *c = &m->cfg;
    kb_backend *be = m->be;
    if (!be->lora_fwd || !be->lora_bwd)
        return lr_errp(err, LR_E_INVALID, NULL, "co-training several adapters is not implemented by the %s backend yet",
                       be->name);
    if (n <= 0 || n > MODEL_PACK_MAX) return lr_errp(err, LR_E_INVALID, NULL, "a packed pass holds 1..%d adapters", MODEL_PACK_MAX);
    if (m->ad || m->full || m->rad)
        return lr_errf(err, "a packed pass needs every adapter in a slot and no other adapter attached");
    pseg sg[MODEL_PACK_MAX];
    long long N = 0;
    int Tmax = 0;
    for (int g = 0; g < n; g++) {
        int B = mb[g].B, T = mb[g].T;
        model_slot *s = mb[g].slot;
        if (B <= 0 || T <= 0 || (long long)B * T > (1 << 24))
            return lr_errp(err, LR_E_INVALID, NULL, "batch %d x %d tokens is out of range", B, T);
        if (m->gpt2 && T > c->max_pos)
            return lr_errp(err, LR_E_INVALID, "hyperparameters.max_seq_len",
                           "sequence length %d exceeds the model's %d positions", T, c->max_pos);
        if (!s || !s->ad || s->ad->use_dora)
            return lr_errf(err, "packed micro-batch %d: its slot holds no plain LoRA adapter (DoRA does not pack)", g);
        sg[g] = (pseg){(int)N, B, T, s};
        N += (long long)B * T;
        if (T > Tmax) Tmax = T;
        mb[g].loss_sum = 0, mb[g].n_tokens = mb[g].n_correct = 0;
    }
    if (N > (1 << 24)) return lr_errp(err, LR_E_INVALID, NULL, "a packed pass of %lld tokens is out of range", N);
    /* rows as whole sequences of the longest segment: the plan holds at least N */
    if (reserve(m, (int)((N + Tmax - 1) / Tmax), Tmax, err)) return -1;
    for (int g = 0; g < n; g++) {
        if (stage(m, mb[g].ids, mb[g].labels, mb[g].B, mb[g].T, sg[g].row0, err)) return -1;
        model_slot_swap(m, mb[g].slot); /* its own mask stream, as in its own pass */
        draw_masks(m, 1);
        model_slot_swap(m, mb[g].slot);
    }
    m->pseg = sg;
    m->npseg = n;
    forward(m, (int)N, 1);
    int any = 0, C = c->hidden;
    for (int g = 0; g < n; g++) {
        size_t r0 = (size_t)sg[g].row0;
        mb[g].loss_sum = be->lmhead_ce(be, &mb[g].n_tokens, &mb[g].n_correct, NULL, m->dln + r0 * C, NULL,
                                       m->lnf + r0 * C, m->lm, m->targets + r0, NULL, mb[g].B * mb[g].T, C,
                                       c->vocab_size, mb[g].grad_scale, 0);
        any |= mb[g].n_tokens > 0;
    }
    /* a segment without scored tokens has a zero gradient: its adapter's
     * sums gain exact zeros, as its own pass would skip them */
    if (any) backward(m, (int)N, 1);
    m->pseg = NULL;
    m->npseg = 0;
    if (be->check && be->check(be, err)) return -1; /* a deferred device failure */
    return 0;
}

void model_set_dropout(model *m, float p) {
    m->lcfg.dropout = p;
    if (m->ad) m->ad->dropout = p;
}

/* ---- the reference: base model or a frozen adapter ---- */

int model_ref_load(model *m, const char *adapter_dir, lr_err *err) {
    const hf_config *c = &m->cfg;
    hf_arch arch = m->gpt2 ? ARCH_GPT2 : ARCH_LLAMA;
    adapter *a = NULL;
    if (adapter_load(adapter_dir, &a, err)) return lr_err_prefix(err, "reference adapter %s: ", adapter_dir);
    if ((a->arch == ARCH_GPT2) != m->gpt2) {
        lr_errf(err, "reference adapter %s was made for a %s model, not %s", adapter_dir,
                a->arch == ARCH_GPT2 ? "gpt2" : "llama-family", c->model_type);
        goto fail;
    }
    if (adapter_check_model(a, c, err)) {
        lr_err_prefix(err, "reference adapter %s: ", adapter_dir);
        goto fail;
    }
    if (a->use_dora && dora_supported(m, err)) goto fail;
    free_ref(m);
    size_t off = 0;
    for (int pass = 0; pass < 2; pass++) {
        off = 0;
        for (int l = 0; l < c->n_layers; l++)
            for (int s = 0; s < S_N; s++) {
                if (!mod_name(m, s) || !adapter_targets_module(a, arch, l, mod_name(m, s))) continue;
                int in, out;
                slot_dims(m, s, &in, &out);
                const adapter_tensor *A = adapter_find(a, l, mod_name(m, s), ADAPTER_A);
                const adapter_tensor *B = adapter_find(a, l, mod_name(m, s), ADAPTER_B);
                const adapter_tensor *M = adapter_find(a, l, mod_name(m, s), ADAPTER_MAGNITUDE);
                if (!A || !B || (a->use_dora && !M)) {
                    lr_errf(err, "reference adapter %s: target_modules select layer %d %s but the file has no tensors for it",
                            adapter_dir, l, mod_name(m, s));
                    goto fail;
                }
                size_t na = (size_t)a->r * in, nb = (size_t)out * a->r;
                if (pass == 1) {
                    lin *li = &m->layers[l].m[s];
                    kb_lora *k = &li->rlora;
                    k->A = m->rmem + off, k->B = k->A + na;
                    k->r = a->r;
                    k->scale = adapter_scale(a);
                    m->be->upload(m->be, k->A, A->data, na * sizeof(float));
                    m->be->upload(m->be, k->B, B->data, nb * sizeof(float));
                    if (a->use_dora) {
                        k->mag = k->B + nb;
                        k->wnorm = k->mag + out;
                        m->be->upload(m->be, k->mag, M->data, (size_t)out * sizeof(float));
                    }
                }
                off += na + nb + (a->use_dora ? 2 * (size_t)out : 0);
            }
        if (pass == 0) {
            if (!off) {
                lr_errf(err, "reference adapter %s selects no module of this %s model", adapter_dir, c->model_type);
                goto fail;
            }
            m->rmem = m->be->alloc(m->be, off * sizeof(float));
            if (!m->rmem) {
                lr_errp(err, LR_E_NOMEM, NULL, "out of memory for the reference adapter");
                goto fail;
            }
        }
    }
    for (int k = 0; k < a->n_tensors; k++) free(a->t[k].data);
    free(a->t);
    a->t = NULL, a->n_tensors = a->cap_tensors = 0; /* the data live in the backend now */
    m->rad = a;
    free_acts(m); /* the saved LoRA inputs are planned per module: plan again */
    return 0;
fail:
    if (m->rmem) free_ref(m);
    adapter_free(a);
    return -1;
}

/* Points every module at the reference (keep[] gets the current pointers). */
static void ref_on(model *m, model_ref ref, const kb_lora **keep) {
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int s = 0; s < S_N; s++) {
            lin *li = &m->layers[l].m[s];
            keep[l * S_N + s] = li->L.lora;
            li->L.lora = ref == MODEL_REF_ADAPTER && li->rlora.A ? &li->rlora : NULL;
        }
}
static void ref_off(model *m, const kb_lora **keep) {
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int s = 0; s < S_N; s++) m->layers[l].m[s].L.lora = keep[l * S_N + s];
}

/* One forward of the reference on the uploaded batch (no dropout: the
 * reference is not trained). */
static int ref_forward(model *m, model_ref ref, int B, int T, lr_err *err) {
    const kb_lora **keep = malloc((size_t)m->cfg.n_layers * S_N * sizeof *keep);
    if (!keep) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
    ref_on(m, ref, keep);
    forward(m, B, T);
    ref_off(m, keep);
    free(keep);
    return 0;
}

int model_fwd_bwd_kl(model *m, const int32_t *ids, const int32_t *labels, int B, int T, float lambda, float tau,
                     float grad_scale, double *ce_sum, double *kl_sum, int64_t *n_tokens, lr_err *err) {
    const hf_config *c = &m->cfg;
    kb_backend *be = m->be;
    *ce_sum = *kl_sum = 0;
    *n_tokens = 0;
    m->n_correct = 0;
    if (!be->lmhead_ce_kl)
        return lr_errp(err, LR_E_INVALID, "method.type", "kl_sft is not implemented by the %s backend yet", be->name);
    if (m->full) return lr_errp(err, LR_E_INVALID, "method.type", "kl_sft trains adapters, not full weights");
    if (!(tau > 0.0f) || !(lambda >= 0.0f))
        return lr_errp(err, LR_E_INVALID, "method", "kl_sft needs kl_tau > 0 and kl_lambda >= 0");
    if (prep(m, ids, labels, B, T, 1, err)) return -1;
    size_t NC = (size_t)B * T * c->hidden;
    if (ref_forward(m, MODEL_REF_BASE, B, T, err)) return -1;
    be->zero(be, m->lnref, NC * sizeof(float)); /* a device copy from the ops there are */
    be->add(be, m->lnref, m->lnf, NC);
    forward(m, B, T);
    be->lmhead_ce_kl(be, ce_sum, kl_sum, n_tokens, &m->n_correct, m->dln, m->lnf, m->lnref, m->lm, m->targets, B * T,
                     c->hidden, c->vocab_size, tau, lambda * tau * tau, grad_scale, 0);
    if (*n_tokens) backward(m, B, T);
    if (be->check && be->check(be, err)) return -1;
    return 0;
}

/* Sum of the per-position log-probabilities of each row (from the host copy of tokloss). */
static void row_logps(const float *tokloss, int rows, int T, double *out) {
    for (int b = 0; b < rows; b++) {
        double s = 0;
        for (int t = 0; t < T; t++) s -= tokloss[(size_t)b * T + t];
        out[b] = s;
    }
}

int model_dpo(model *m, const int32_t *ids, const int32_t *labels, int pairs, int T, float beta, model_ref ref,
              int bwd, float grad_scale, model_dpo_out *out, lr_err *err) {
    const hf_config *c = &m->cfg;
    kb_backend *be = m->be;
    memset(out, 0, sizeof *out);
    if (pairs <= 0) return lr_errp(err, LR_E_INVALID, NULL, "a DPO batch needs at least one pair");
    if (m->full) return lr_errp(err, LR_E_INVALID, "method.type", "dpo trains adapters, not full weights");
    if (ref == MODEL_REF_ADAPTER && !m->rad) return lr_errf(err, "DPO: no reference adapter is loaded");
    if (!(beta > 0.0f)) return lr_errp(err, LR_E_INVALID, "method.beta", "DPO needs beta > 0");
    int B = 2 * pairs, N = B * T, C = c->hidden, V = c->vocab_size;
    if (prep(m, ids, labels, B, T, bwd, err)) return -1;
    double *lp = malloc((size_t)B * 2 * sizeof *lp), *rl = lp + B; /* policy, reference */
    if (!lp) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
    int64_t nv;
    if (ref_forward(m, ref, B, T, err)) goto fail;
    be->lmhead_ce(be, &nv, NULL, m->tokloss, NULL, NULL, m->lnf, m->lm, m->targets, NULL, N, C, V, 0.0f, 0);
    be->download(be, m->hrow, m->tokloss, (size_t)N * sizeof(float));
    row_logps(m->hrow, B, T, rl);
    forward(m, B, T);
    be->lmhead_ce(be, &out->n_tokens, NULL, m->tokloss, NULL, NULL, m->lnf, m->lm, m->targets, NULL, N, C, V, 0.0f, 0);
    be->download(be, m->hrow, m->tokloss, (size_t)N * sizeof(float));
    row_logps(m->hrow, B, T, lp);
    /* loss = softplus(-z), z = beta h; d loss / d(policy logp): -+ beta sigmoid(-z) */
    for (int i = 0; i < pairs; i++) {
        double rc = beta * (lp[i] - rl[i]), rr = beta * (lp[pairs + i] - rl[pairs + i]), z = rc - rr;
        out->loss_sum += z > 0 ? log1p(exp(-z)) : -z + log1p(exp(z));
        out->chosen_reward_sum += rc;
        out->rejected_reward_sum += rr;
        out->accurate += rc > rr;
        out->chosen_logp_sum += lp[i];
        out->rejected_logp_sum += lp[pairs + i];
        double g = beta / (1.0 + exp(z)); /* beta sigmoid(-z) */
        /* a token's loss is -log p: chosen tokens weigh +g, rejected -g */
        for (int t = 0; t < T; t++) {
            m->hrow[(size_t)i * T + t] = (float)g;
            m->hrow[(size_t)(pairs + i) * T + t] = (float)-g;
        }
    }
    out->pairs = pairs;
    if (bwd && out->n_tokens) {
        be->upload(be, m->tokscale, m->hrow, (size_t)N * sizeof(float));
        be->lmhead_ce(be, &nv, NULL, NULL, m->dln, NULL, m->lnf, m->lm, m->targets, m->tokscale, N, C, V, grad_scale,
                      0);
        backward(m, B, T);
    }
    free(lp);
    if (be->check && be->check(be, err)) return -1;
    return 0;
fail:
    free(lp);
    return -1;
}

/* ==== inference: logits, decoding, switching adapters off ====
 * Used by generation (worker/generate.c), merging checks and evaluation jobs.
 * Dropout is always off here. The full-forward functions reuse forward()
 * above, so they compute exactly what training computes; decoding
 * (model__decode, for worker/model_decode.c's KV cache) runs layer_fwd on
 * the rows appended to the cache. */

static void lora_no_dropout(model *m) {
    for (int l = 0; m->ad && l < m->cfg.n_layers; l++)
        for (int s = 0; s < S_N; s++) {
            m->layers[l].m[s].lora.dropout = 0.0f;
            m->layers[l].m[s].lora.seed = 0;
        }
}

int model__check_ids(const model *m, const int32_t *ids, int T, lr_err *err) {
    const hf_config *c = &m->cfg;
    if (T <= 0 || T > (1 << 24)) return lr_errp(err, LR_E_INVALID, NULL, "sequence of %d tokens is out of range", T);
    if (m->gpt2 && T > c->max_pos)
        return lr_errp(err, LR_E_INVALID, NULL, "sequence of %d tokens exceeds the model's %d positions", T, c->max_pos);
    for (int t = 0; t < T; t++)
        if (ids[t] < 0 || ids[t] >= c->vocab_size)
            return lr_errp(err, LR_E_INVALID, "input_ids", "token id %d at position %d is outside the vocabulary (%d)",
                           ids[t], t, c->vocab_size);
    return 0;
}

int model_lora_enable(model *m, int on) {
    int n = 0;
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int s = 0; s < S_N; s++) {
            lin *li = &m->layers[l].m[s];
            if (!li->lora.A) continue;
            li->L.lora = on ? &li->lora : NULL;
            n++;
        }
    free_acts(m); /* the saved LoRA inputs are planned per module: plan again */
    return n;
}

int model_hidden(model *m, const int32_t *ids, int T, float *hidden, lr_err *err) {
    if (model__check_ids(m, ids, T, err) || reserve(m, 1, T, err)) return -1;
    kb_backend *be = m->be;
    be->upload(be, m->ids, ids, (size_t)T * sizeof(int32_t));
    lora_no_dropout(m);
    forward(m, 1, T);
    be->download(be, hidden, m->lnf, (size_t)T * m->cfg.hidden * sizeof(float));
    if (be->check && be->check(be, err)) return -1;
    return 0;
}

int model_head(model *m, const float *hidden, int n, float *logits, lr_err *err) {
    kb_backend *be = m->be;
    int C = m->cfg.hidden, V = m->cfg.vocab_size, rows = n < MODEL_HEAD_ROWS ? n : MODEL_HEAD_ROWS;
    if (n <= 0) return 0;
    float *x = be->alloc(be, (size_t)rows * C * sizeof(float)), *y = be->alloc(be, (size_t)rows * V * sizeof(float));
    int rc = 0;
    if (!x || !y) {
        rc = lr_errp(err, LR_E_NOMEM, NULL, "out of memory for the logits of %d rows", rows);
        goto done;
    }
    kb_linear head = {.W = m->lm, .in = C, .out = V};
    for (int r0 = 0; r0 < n; r0 += rows) {
        int k = n - r0 < rows ? n - r0 : rows;
        be->upload(be, x, hidden + (size_t)r0 * C, (size_t)k * C * sizeof(float));
        be->linear_fwd(be, &head, y, NULL, x, k);
        be->download(be, logits + (size_t)r0 * V, y, (size_t)k * V * sizeof(float));
    }
    if (be->check && be->check(be, err)) rc = -1;
done:
    if (x) be->free(be, x);
    if (y) be->free(be, y);
    return rc;
}

int model_logits(model *m, const int32_t *ids, int T, float *logits, lr_err *err) {
    float *h = malloc((size_t)T * m->cfg.hidden * sizeof(float));
    if (T <= 0 || !h) {
        free(h);
        return T <= 0 ? lr_errp(err, LR_E_INVALID, NULL, "no tokens") : lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
    }
    int rc = model_hidden(m, ids, T, h, err) || model_head(m, h, T, logits, err) ? -1 : 0;
    free(h);
    return rc;
}

/* ---- decoding (the KV cache is worker/model_decode.c) ---- */

size_t model__kv_floats(const model *m) { return m->gpt2 ? 3 * (size_t)m->cfg.hidden : 2 * (size_t)m->KVd; }
int model__rank(const model *m) { return act_rank(m); }
kb_backend *model__backend(const model *m) { return m->be; }

void model__head_fwd(model *m, float *y, const float *x, int n) {
    kb_linear head = {.W = m->lm, .in = m->cfg.hidden, .out = m->cfg.vocab_size};
    m->be->linear_fwd(m->be, &head, y, NULL, x, n);
}

/* Layer l's rows of a decoding block: scratch for the activations, the
 * cache for k and v (the layout model_impl.h describes). */
static void dec_io(const model *m, int l, const model_dec *d, layer_io *io) {
    size_t C = m->cfg.hidden, cap = d->cap, p0 = d->p0, half = m->cfg.head_dim / 2;
    float *cache = d->cache + (size_t)l * cap * model__kv_floats(m);
    *io = (layer_io){.B = 1, .T = d->n, .res = d->x, .next = d->x, .ln1 = d->ln, .n1mean = d->mean,
                     .n1rstd = d->rstd, .ln2 = d->ln, .n2mean = d->mean, .n2rstd = d->rstd, .att = d->att,
                     .mid = d->mid, .f1 = d->f1, .f2 = d->f2, .act = d->act, .p0 = d->p0,
                     .rcos = d->rcos + p0 * half, .rsin = d->rsin + p0 * half};
    for (int s = 0; s < S_N; s++) io->xa[s] = d->xa;
    if (m->gpt2) {
        io->qkv = cache + p0 * 3 * C;
        io->q = io->qkv, io->k = io->qkv + C, io->v = io->qkv + 2 * C, io->ldq = io->ldkv = 3 * (int)C;
        io->kc = cache + C, io->vc = cache + 2 * C;
    } else {
        float *K = cache, *V = cache + cap * m->KVd;
        io->q = d->q, io->k = K + p0 * m->KVd, io->v = V + p0 * m->KVd, io->ldq = m->Qd, io->ldkv = m->KVd;
        io->kc = K, io->vc = V;
    }
}

void model__decode(model *m, const model_dec *d) {
    kb_backend *be = m->be;
    int C = m->cfg.hidden;
    lora_no_dropout(m);
    if (d->p0 == 0) dora_refresh(m);
    const void *wpe = m->gpt2 ? (const char *)m->wpe + (size_t)d->p0 * C * m->wsize : NULL;
    be->embed_fwd(be, d->x, d->ids, m->wte, wpe, d->n, d->n, C);
    for (int l = 0; l < m->cfg.n_layers; l++) {
        layer_io io;
        dec_io(m, l, d, &io);
        layer_fwd(m, l, &io);
    }
    norm_fwd(m, d->ln, d->mean, d->rstd, d->x, m->nfw, m->nfb, d->n);
}
