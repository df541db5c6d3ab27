/* hfconfig: a Hugging Face config.json for the architectures lorad trains. */
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
    int bos_id, eos_id;     /* -1 when absent */
    char torch_dtype[16];   /* "float32", "bfloat16", "float16" or "" */
    char hidden_act[24];    /* "silu", "gelu_new", ... */
} hf_config;

/* Parses config.json text; unsupported architectures or missing keys are
 * errors naming the key. */
int hf_config_parse(const char *json, size_t len, hf_config *out, lr_err *err) LR_WARN_UNUSED;
int hf_config_load(const char *path, hf_config *out, lr_err *err) LR_WARN_UNUSED;
/* Writes config.json in the HF form for this architecture. */
int hf_config_write(const hf_config *c, const char *path, lr_err *err) LR_WARN_UNUSED;

#endif
