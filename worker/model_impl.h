/* model_impl: what worker/model.c shares with worker/model_decode.c (the
 * KV cache and decoding API of worker/model.h) and with nothing else.
 *
 * There is one decoder: a decoding step runs model.c's layer_fwd, the
 * function a training forward runs, on the n rows appended to the cache
 * (model__decode). The cache, its scratch and the RoPE tables are backend
 * memory, so generation runs on any backend. model_decode.c owns the cache
 * object and its memory; model.c owns the layout of a layer's cache rows,
 * which follows the projections' outputs so that they write into it
 * directly: Llama-style models keep keys [cap, KVd] then values
 * [cap, KVd]; GPT-2 keeps c_attn's fused q|k|v rows [cap, 3C], a third of
 * them the (unused) queries, since the backend has no strided copy. */
#ifndef LR_MODEL_IMPL_H
#define LR_MODEL_IMPL_H

#include <stddef.h>
#include <stdint.h>
#include "common/err.h"
#include "kernels/backend.h"
#include "worker/model.h"

/* LM-head rows computed at once (logits exist for one chunk of rows). */
#define MODEL_HEAD_ROWS 64

/* One block of decoding: n new rows at positions p0..p0+n-1 of a sequence
 * whose cache then holds positions 0..p0+n-1. Backend memory throughout. */
typedef struct model_dec {
    int p0, n, cap;
    const int32_t *ids;       /* [n] the new tokens */
    float *cache;             /* [n_layers][cap * model__kv_floats()] */
    const float *rcos, *rsin; /* RoPE tables of positions 0..cap-1 (model__rope_tables) */
    /* scratch for n rows: x [n,C] (residual stream), ln [n,C] (after the
     * run: the final-norm hidden states), q [n,Qd], att [n,Qd], mid [n,C],
     * f1, f2, act [n,I], xa [n,r], mean, rstd [n] */
    float *x, *ln, *q, *att, *mid, *f1, *f2, *act, *xa, *mean, *rstd;
} model_dec;

/* Runs a block through the embeddings, every layer (layer_fwd, writing
 * the new keys and values into the cache) and the final norm. Adapters run
 * without dropout; DoRA's norms are refreshed at p0 = 0 (the adapter is
 * fixed while a sequence is generated). */
void model__decode(model *m, const model_dec *d);

/* Floats per position in one layer's cache. */
size_t model__kv_floats(const model *m);
/* The rank LoRA inputs need scratch for (0: no adapter). */
int model__rank(const model *m);
kb_backend *model__backend(const model *m);
/* Token ids in range, sequence length in range (GPT-2: its positions). */
int model__check_ids(const model *m, const int32_t *ids, int T, lr_err *err) LR_WARN_UNUSED;
/* Uploads the RoPE tables cos, sin [T, head_dim/2] of positions 0..T-1 (f32
 * as HF computes them); nothing for GPT-2. */
int model__rope_tables(const model *m, int T, float *cos, float *sin, lr_err *err) LR_WARN_UNUSED;
/* logits y [n, V] = x [n, C] times the LM head (backend memory). */
void model__head_fwd(model *m, float *y, const float *x, int n);

#endif
