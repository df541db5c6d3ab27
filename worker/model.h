/* model: a Hugging Face decoder (Llama, Mistral, Qwen2, GPT-2) with LoRA
 * adapters, forward and backward, on a compute backend (kernels/backend.h).
 *
 * The frozen base weights live in one backend allocation (converted from
 * f32/f16/bf16 to the backend's weight dtype at load), the LoRA parameters
 * in a second, their gradients in a third, and the activations in a fourth
 * sized from (B, T) and reused across steps (llm.c's layout). LoRA follows
 * PEFT exactly: A [r, in], B [out, r], y += scale * B A dropout(x) with
 * scale = alpha / r (alpha / sqrt(r) with rslora), dropout on the LoRA input
 * only; parameter names are PEFT's saved keys. DoRA (use_dora) as PEFT:
 * a trainable magnitude m [out] per module, initialised to the row norms of
 * W + scale B A, and y = (m / ||W + scale B A||) * (x W^T + scale x A^T B^T)
 * + b with the norm detached (see kernels/backend.h for the dropout form).
 *
 * Objectives beyond SFT (model_fwd_bwd_kl, model_dpo) compare the trained
 * adapter with a reference computed in the same call without gradient:
 * the base model (adapters switched off) or a frozen reference adapter
 * (model_ref_load). */
#ifndef LR_MODEL_H
#define LR_MODEL_H

#include <stddef.h>
#include <stdint.h>
#include "common/err.h"
#include "kernels/backend.h"
#include "kernels/quant.h"
#include "formats/hfconfig.h"

#define MODEL_MAX_TARGETS 16

typedef struct model model;

/* Which modules get an adapter and how. targets are PEFT target_modules
 * names matched as PEFT does, against the end of the module's dotted name:
 * "q_proj" ... "down_proj" for llama/mistral/qwen2; "c_attn", "c_proj"
 * (attn.c_proj and mlp.c_proj both), "c_fc" for gpt2; a longer suffix such
 * as "mlp.c_proj" selects one; the single target "all-linear" selects every
 * linear module of the decoder layers (not the LM head), as in PEFT. */
typedef struct model_lora_cfg {
    int r;
    float alpha;
    float dropout;
    int use_rslora;
    int n_targets;
    char targets[MODEL_MAX_TARGETS][48];
    int use_dora;
} model_lora_cfg;

/* One trainable tensor. Data are at offset floats into model_params() and
 * its gradient at the same offset into model_grads(). */
typedef struct model_param {
    char name[192];  /* PEFT key: base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight */
    int64_t shape[2]; /* a DoRA magnitude ("...q_proj.lora_magnitude_vector") is [out, 1] */
    size_t offset, numel;
    int ndim;         /* as PEFT saves it: 2, or 1 for a magnitude */
    int no_decay;     /* 1: AdamW without weight decay (full fine-tuning's biases and norms) */
} model_param;

/* Loads config.json and the safetensors weights of an HF model directory.
 * On a GPU backend it first sets be->weight_dtype to model_weight_dtype(),
 * so one GPU backend serves models of one storage dtype. */
int model_load(const char *dir, kb_backend *be, model **out, lr_err *err) LR_WARN_UNUSED;
void model_free(model *m);

/* QLoRA: the frozen weights of every linear module of the decoder layers
 * (not the embeddings, norms or LM head, as bitsandbytes + transformers)
 * quantized at load with bitsandbytes' blockwise NF4 or FP4
 * (kernels/quant.h), optionally with double quantization of the scales,
 * and kept 4-bit in memory; the backend dequantizes tiles on the fly
 * (needs a backend with quant4). A checkpoint that transformers saved 4-bit
 * (quantization_config, bitsandbytes layout) loads 4-bit as stored with any
 * q, NULL included. */
/* How the frozen linears' matmuls run (the job spec's compute_dtype):
 * MODEL_MM_F32, the default, in weight_dtype; MODEL_MM_BF16 with weights
 * packed in bf16 where the backend has bf16_pack (the CPU with
 * AVX512_BF16; elsewhere an error naming what is missing), except on a
 * backend that keeps weights in 16 bits anyway (a GPU); MODEL_MM_AUTO as
 * bf16 where the backend runs it and the model is stored in 16 bits
 * (torch_dtype bfloat16 or float16), f32 otherwise. Not with 4-bit
 * weights (auto is then f32). */
enum { MODEL_MM_F32 = 0, MODEL_MM_AUTO, MODEL_MM_BF16 };

typedef struct model_quant {
    kq_type type;     /* KQ_NONE: weights as the checkpoint stores them */
    int double_quant; /* bnb_4bit_use_double_quant */
    int matmul;       /* MODEL_MM_* */
} model_quant;
int model_load_quant(const char *dir, kb_backend *be, const model_quant *q, model **out, lr_err *err) LR_WARN_UNUSED;
/* The 4-bit weights in use: their type (KQ_NONE: none) and double
 * quantization, their bytes and the bytes of the same weights in f32. */
kq_type model_quant_info(const model *m, int *double_quant, size_t *qbytes, size_t *f32_bytes);
/* 1 when the frozen linears run in bf16 (packed weights, MODEL_MM_*). */
int model_bf16(const model *m);
/* The dtype a GPU keeps this model's frozen weights in, given the backend's
 * default (bf16): f16 for a model stored in f16 ("torch_dtype": "float16"),
 * whose weights f16 holds exactly where bf16 would drop three bits of each;
 * the default otherwise. */
kb_dtype model_weight_dtype(const hf_config *c, kb_dtype dflt);
const hf_config *model_config(const model *m);

/* Attaches fresh adapters: A Kaiming-uniform as PEFT (bound 1/sqrt(in)),
 * drawn from a stream of seed per tensor name, B zero, and with use_dora
 * the magnitudes ||W|| per output row (so the model starts as the base
 * model). Replaces any previous adapters. DoRA needs a backend with
 * dora_norm. */
int model_lora_init(model *m, const model_lora_cfg *cfg, uint64_t seed, lr_err *err) LR_WARN_UNUSED;
/* Attaches the adapters of a PEFT adapter directory (adapter_config.json +
 * adapter_model.safetensors) with their weights. */
int model_lora_load(model *m, const char *adapter_dir, lr_err *err) LR_WARN_UNUSED;
/* Writes the adapters as a PEFT adapter directory. */
int model_lora_save(model *m, const char *adapter_dir, lr_err *err) LR_WARN_UNUSED;
/* The adapter configuration in use (NULL before init/load). */
const model_lora_cfg *model_lora(const model *m);

/* Full fine-tuning (method full_sft): every base weight becomes trainable
 * in place of adapters (which are dropped), with HF's names, shapes and
 * order of the checkpoint; model_params() is then the weight arena itself
 * and the gradients of tied embeddings add up in one tensor. Needs a
 * backend with weight_grads and f32 weights (the CPU). */
int model_full_init(model *m, lr_err *err) LR_WARN_UNUSED;
int model_is_full(const model *m);
/* Writes the trained weights as an HF model folder: model.safetensors in
 * each tensor's checkpoint dtype (keep_f32: all f32, for a checkpoint that
 * resumes exactly) and config.json and the tokenizer files of src_dir. */
int model_full_save(model *m, const char *src_dir, const char *out_dir, int keep_f32, lr_err *err) LR_WARN_UNUSED;
/* Reads the weights of such a folder back into the trained model (resume). */
int model_full_restore(model *m, const char *dir, lr_err *err) LR_WARN_UNUSED;

/* The trainable tensors, in a fixed order (layer, then module: A, B, then
 * the DoRA magnitude). */
size_t model_n_params(const model *m);
const model_param *model_param_at(const model *m, size_t i);
/* Flat parameter and gradient arrays (backend memory) of model_numel floats. */
float *model_params(model *m);
float *model_grads(model *m);
size_t model_numel(const model *m);
void model_zero_grad(model *m);
/* Copies one tensor between host memory and the model (n = numel). */
int model_param_get(model *m, size_t i, float *host, size_t n, lr_err *err) LR_WARN_UNUSED;
int model_param_set(model *m, size_t i, const float *host, size_t n, lr_err *err) LR_WARN_UNUSED;
/* Same for a tensor's gradient. */
int model_grad_get(model *m, size_t i, float *host, size_t n, lr_err *err) LR_WARN_UNUSED;

/* Sets the LoRA dropout of the attached adapter (what training uses and
 * adapter_config.json records); model_lora_load takes the file's. */
void model_set_dropout(model *m, float p);

/* Training mode turns LoRA dropout on; each model_fwd_bwd in training mode
 * draws fresh masks from a stream of seed and a micro-batch counter, so a
 * run is reproducible. Default: eval mode. */
void model_set_train(model *m, int train, uint64_t seed);

/* Activation checkpointing: keep only each layer's input through the
 * forward and recompute the layer's activations in the backward, so that
 * activation memory no longer grows with the layer count (one more
 * forward's work per step; the gradients are bit for bit the same). */
void model_set_recompute(model *m, int on);

/* Plans the activations for micro-batches of up to B x T tokens (done
 * implicitly by the first larger call; call it first to fail early). */
int model_reserve(model *m, int B, int T, lr_err *err) LR_WARN_UNUSED;

/* One micro-batch: ids and labels are [B, T] row-major; labels are aligned
 * with ids and shifted inside as HF does (position t is scored on
 * labels[t + 1]; -100 ignored). Sets *loss_sum to the sum of token
 * cross-entropies over the scored targets and *n_tokens to their count,
 * and adds grad_scale * d(loss_sum)/d(param) into the gradients. */
int model_fwd_bwd(model *m, const int32_t *ids, const int32_t *labels, int B, int T, float grad_scale,
                  double *loss_sum, int64_t *n_tokens, lr_err *err) LR_WARN_UNUSED;
/* The same loss without gradients (evaluation). */
int model_loss(model *m, const int32_t *ids, const int32_t *labels, int B, int T, double *loss_sum,
               int64_t *n_tokens, lr_err *err) LR_WARN_UNUSED;
/* Of the scored targets of the last model_fwd_bwd, model_fwd_bwd_kl or
 * model_loss, how many
 * were the argmax of their logits (torch.argmax's first of equal maxima):
 * token accuracy is this over *n_tokens. */
int64_t model_last_correct(const model *m);

/* ---- several adapters on one base (co-training, worker/pack.c) ----
 * A slot holds a trained adapter (parameters, gradients, settings, train
 * mode and dropout stream) apart from the model. model_slot_swap
 * exchanges the model's attached adapter with the slot's, so every
 * function above works on a slot's adapter while it is swapped in (attach
 * one with model_lora_init or model_lora_load, then swap it out into an
 * empty slot). While any slot lives, the activations hold every module's
 * LoRA input, for the largest rank a slot has held. */

#define MODEL_PACK_MAX 16 /* adapters in one packed pass */

typedef struct model_slot model_slot;
int model_slot_new(model *m, model_slot **out, lr_err *err) LR_WARN_UNUSED;
void model_slot_swap(model *m, model_slot *s);
/* Frees the slot and the adapter it holds (not the model's attached one). */
void model_slot_free(model *m, model_slot *s);
/* model_set_train for the slot's adapter. */
void model_slot_set_train(model_slot *s, int train, uint64_t seed);

/* One adapter's micro-batch in a packed pass: the inputs (as model_fwd_bwd)
 * and, after the pass, its sums. */
typedef struct model_pack_mb {
    model_slot *slot;
    const int32_t *ids, *labels;
    int B, T;
    float grad_scale;
    double loss_sum;
    int64_t n_tokens, n_correct;
} model_pack_mb;

/* model_fwd_bwd for n adapters (plain LoRA, each in a slot, none attached
 * to the model) at once: the frozen base runs once over the rows of all n
 * micro-batches (one GEMM per base weight), each adapter's LoRA path,
 * positions, attention and loss on its own rows, and its gradients go to
 * its slot. Each micro-batch's sums and gradients are those of
 * model_fwd_bwd with its adapter alone: bit for bit when the backend's GEMM
 * computes a row the same whichever rows surround it (the CPU reference
 * kernel), to ~1e-7 relative otherwise (OpenBLAS and cuBLAS pick their
 * blocking by the row count). Needs a backend with lora_fwd (CPU, CUDA). */
int model_fwd_bwd_pack(model *m, model_pack_mb *mb, int n, lr_err *err) LR_WARN_UNUSED;

/* ---- objectives with a reference (KL-regularised SFT, DPO) ---- */

typedef enum {
    MODEL_REF_BASE = 0,    /* the base model: adapters switched off */
    MODEL_REF_ADAPTER = 1, /* the frozen adapter of model_ref_load */
} model_ref;

/* Loads a PEFT adapter directory as the frozen reference adapter (any
 * targets and rank; DoRA or not). It is never trained nor saved, and
 * survives model_lora_load (resuming). */
int model_ref_load(model *m, const char *adapter_dir, lr_err *err) LR_WARN_UNUSED;

/* KL-regularised SFT on one micro-batch (ids, labels as model_fwd_bwd).
 * Over the scored positions n (label not -100 after the shift), with
 * logits l of the adapted model and l0 of the base model (adapters off, no
 * gradient, computed here on the same batch):
 *   ce_n = -log softmax(l)[target_n]
 *   kl_n = KL(softmax(l0 / tau) || softmax(l / tau))
 *        = sum_v q_v (log q_v - log softmax(l / tau)_v),  q = softmax(l0 / tau)
 * Sets *ce_sum = sum_n ce_n, *kl_sum = sum_n kl_n, *n_tokens, and adds
 * grad_scale * d(sum_n ce_n + lambda tau^2 kl_n)/d(param) into the
 * gradients; with grad_scale = 1 / (scored tokens of the step) the
 * objective is mean CE + lambda tau^2 mean KL, both per scored token. */
int model_fwd_bwd_kl(model *m, const int32_t *ids, const int32_t *labels, int B, int T, float lambda, float tau,
                     float grad_scale, double *ce_sum, double *kl_sum, int64_t *n_tokens, lr_err *err) LR_WARN_UNUSED;

/* DPO sums over the pairs of one micro-batch. */
typedef struct model_dpo_out {
    double loss_sum;            /* sum of -log sigmoid(beta ((pc - rc) - (pr - rr))) */
    double chosen_reward_sum;   /* sum of beta (pc - rc): TRL's rewards/chosen */
    double rejected_reward_sum; /* sum of beta (pr - rr) */
    double accurate;            /* pairs whose chosen reward is strictly above the rejected one */
    double chosen_logp_sum, rejected_logp_sum; /* sum of pc, pr */
    int pairs;
    int64_t n_tokens;           /* scored answer tokens, both answers */
} model_dpo_out;

/* DPO (sigmoid loss) on one micro-batch of 2 * pairs rows of T tokens:
 * rows [0, pairs) the chosen answers, rows [pairs, 2 pairs) the rejected
 * ones, in pair order; labels -100 except on the answer. A sequence's
 * log-probability (pc, pr for the policy, rc, rr for the reference) is the
 * sum over its scored tokens of log softmax(logits)[label], the reference
 * computed here without gradient (ref: base model or reference adapter).
 * With bwd, adds grad_scale * d(loss_sum)/d(param) into the gradients
 * (grad_scale = 1 / pairs of the step: the mean over pairs). */
int model_dpo(model *m, const int32_t *ids, const int32_t *labels, int pairs, int T, float beta, model_ref ref,
              int bwd, float grad_scale, model_dpo_out *out, lr_err *err) LR_WARN_UNUSED;

/* ---- inference (generation, merge checks, evaluation jobs) ----
 * Dropout is off in all of these. */

/* Switches the attached adapters off (on = 0: the base model) or back on;
 * returns how many modules carry one. */
int model_lora_enable(model *m, int on);

/* Final-norm hidden states [T, C] (host memory) of one sequence by the
 * training forward. */
int model_hidden(model *m, const int32_t *ids, int T, float *hidden, lr_err *err) LR_WARN_UNUSED;
/* logits [n, V] = hidden [n, C] times the LM head (host arrays; computed a
 * chunk of rows at a time). */
int model_head(model *m, const float *hidden, int n, float *logits, lr_err *err) LR_WARN_UNUSED;
/* Both: the logits [T, V] of every position of one sequence. */
int model_logits(model *m, const int32_t *ids, int T, float *logits, lr_err *err) LR_WARN_UNUSED;

/* A KV cache for decoding (worker/model_decode.c): keys (after RoPE) and
 * values of every layer for up to max_len positions, plus the scratch to
 * run new tokens, in the model's backend memory (any backend). Tokens run
 * through the training forward's layer code. Attach or load adapters
 * before making it (its scratch fits the rank in use then). */
typedef struct model_kv model_kv;
int model_kv_new(model *m, int max_len, model_kv **out, lr_err *err) LR_WARN_UNUSED;
void model_kv_free(model_kv *kv);
/* Empties the cache (a new sequence). */
void model_kv_reset(model_kv *kv);
/* Positions filled, positions held, the model it runs. */
int model_kv_len(const model_kv *kv);
int model_kv_cap(const model_kv *kv);
model *model_kv_model(const model_kv *kv);
/* Appends n tokens at the next positions, run as one block (causal among
 * themselves, attending to the cached positions): a prompt at once, then a
 * token per decoding step. logits (may be NULL) receives [V] for the last
 * token, or [n, V] for all of them with all_logits. */
int model_kv_append(model_kv *kv, const int32_t *ids, int n, float *logits, int all_logits,
                    lr_err *err) LR_WARN_UNUSED;

#endif
