/* hfconfig: a Hugging Face config.json for the architectures lorad trains.
 *
 * The parser reads what transformers reads: a key that is absent (or null)
 * takes the default of that model_type's config class in transformers
 * (LlamaConfig, MistralConfig, Qwen2Config, GPT2Config), GPT-2's aliases
 * (hidden_size for n_embd, ...) are accepted, and every value is checked
 * (type, range, heads dividing evenly) with an error that names the key:
 * "config.json: num_attention_heads must be a positive integer". Features
 * whose math lorad does not implement (rope_scaling other than llama3,
 * GPT-2's scale_attn_by_inverse_layer_idx, ...) are errors, not silently
 * ignored. */
#ifndef LR_HFCONFIG_H
#define LR_HFCONFIG_H

#include <stddef.h>
#include "common/err.h"

#define HF_MAX_CONFIG (4u << 20)

typedef enum { ARCH_LLAMA, ARCH_MISTRAL, ARCH_QWEN2, ARCH_GPT2 } hf_arch;

typedef struct hf_config {
    hf_arch arch;
    char arch_name[64];     /* "LlamaForCausalLM", ... as written in the file */
    char model_type[32];    /* "llama", "mistral", "qwen2", "gpt2" */
    int vocab_size;
    int hidden;             /* hidden_size / n_embd */
    int n_layers;           /* num_hidden_layers / n_layer */
    int n_heads;            /* num_attention_heads / n_head */
    int n_kv_heads;         /* num_key_value_heads (= n_heads when absent; gpt2: n_heads) */
    int head_dim;           /* head_dim or hidden / n_heads */
    int intermediate;       /* intermediate_size / n_inner (gpt2 default 4*hidden) */
    int max_pos;            /* max_position_embeddings / n_positions */
    float norm_eps;         /* rms_norm_eps / layer_norm_epsilon */
    float rope_theta;       /* default 10000 */
    /* rope_scaling of type "llama3"; factor 0 when absent */
    float rope_factor, rope_low_freq_factor, rope_high_freq_factor;
    int rope_orig_max_pos;
    int tie_embeddings;     /* tie_word_embeddings (gpt2 default 1, llama default 0) */
    int attn_bias;          /* q/k/v biases: qwen2 1, llama attention_bias, gpt2 1 (all linear) */
    int mlp_bias;           /* gpt2 1, llama mlp_bias */
    int o_bias;             /* o_proj / c_proj bias: llama attention_bias, gpt2 1, qwen2 0 */
    int bos_id, eos_id;     /* -1 when absent; eos_id is the first of eos_ids */
    int eos_ids[8], n_eos;  /* eos_token_id may be a list (Llama-3) */
    int sliding_window;     /* 0: none (mistral null, qwen2 use_sliding_window false) */
    int max_window_layers;  /* qwen2: layers from this index on use the window */
    float init_range;       /* initializer_range, 0.02 */
    char torch_dtype[16];   /* "float32", "bfloat16", "float16" or "" */
    char hidden_act[24];    /* "silu", "gelu_new", ... */
    /* quantization_config of a model saved 4-bit by transformers with
     * bitsandbytes (quant_method "bitsandbytes", load_in_4bit): "nf4" or
     * "fp4" (bnb_4bit_quant_type), "" for an unquantized model; other
     * methods (8-bit, GPTQ, AWQ, ...) are errors. */
    char quant_type[8];
    int quant_double;       /* bnb_4bit_use_double_quant */
} hf_config;

/* Parses config.json text (at most HF_MAX_CONFIG bytes); unsupported
 * architectures and bad values are errors naming the key. */
int hf_config_parse(const char *json, size_t len, hf_config *out, lr_err *err) LR_WARN_UNUSED;
int hf_config_load(const char *path, hf_config *out, lr_err *err) LR_WARN_UNUSED;
/* Writes config.json in the HF form for c->arch (sorted keys, 2-space
 * indent, as transformers' save_pretrained), atomically. c is validated as
 * the parser validates; arch_name and model_type are taken from c->arch. */
int hf_config_write(const hf_config *c, const char *path, lr_err *err) LR_WARN_UNUSED;
/* The same text (without the final newline), malloc-ed; NULL with err set. */
char *hf_config_json(const hf_config *c, lr_err *err);
/* c filled with the transformers defaults of arch (LlamaConfig() etc.). */
void hf_config_defaults(hf_arch arch, hf_config *c);
/* "LlamaForCausalLM", ... and "llama", ... */
const char *hf_arch_name(hf_arch arch);
const char *hf_model_type(hf_arch arch);

#endif
