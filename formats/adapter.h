/* adapter: PEFT LoRA adapters in memory and on disk.
 *
 * On disk an adapter is a directory with adapter_config.json and
 * adapter_model.safetensors, exactly as PEFT's save_pretrained writes them,
 * so that PEFT, vLLM and llama.cpp's converter load what lorad trains and
 * lorad continues from what they wrote. Tensor keys are PEFT's, with the
 * adapter name stripped:
 *   base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight  [r, in]
 *   base_model.model.model.layers.N.self_attn.q_proj.lora_B.weight  [out, r]
 *   base_model.model.model.layers.N.self_attn.q_proj.lora_magnitude_vector  [out]  (DoRA)
 * (llama, mistral, qwen2) and base_model.model.transformer.h.N.attn.c_attn...
 * for GPT-2. GPT-2's Conv1D weights are stored [in, out], but PEFT's LoRA
 * matrices for them are not: A is [r, in] and B [out, r] there too, with
 * fan_in_fan_out true in the config (checked on the gpt2 fixture).
 *
 * In memory every matrix is f32, row-major, in those same shapes; delta W =
 * scale * B @ A with scale = alpha / r (alpha / sqrt(r) with rslora).
 *
 * Loading is strict: options whose effect lorad does not implement
 * (modules_to_save, task types other than CAUSAL_LM, bias other than "none",
 * rank/alpha patterns, layers_to_transform, ...) are errors that say so, and
 * every tensor must be an A, B or magnitude of a known decoder-layer module
 * with consistent shapes. */
#ifndef LR_ADAPTER_H
#define LR_ADAPTER_H

#include <stddef.h>
#include "common/err.h"
#include "formats/hfconfig.h"

#define ADAPTER_MAX_CONFIG (1u << 20)
#define ADAPTER_MAX_TARGETS 16
#define ADAPTER_MAX_LAYERS 1024

typedef enum { ADAPTER_A, ADAPTER_B, ADAPTER_MAGNITUDE } adapter_kind;

typedef struct adapter_tensor {
    char key[192];    /* PEFT key */
    int layer;
    char module[24];  /* path inside the layer: "self_attn.q_proj", "mlp.down_proj", "attn.c_attn", "mlp.c_proj" */
    adapter_kind kind;
    int rows, cols;   /* A: [r, in]; B: [out, r]; magnitude: [out, 1] (1-D [out] on disk) */
    float *data;      /* rows * cols, owned */
} adapter_tensor;

typedef struct adapter {
    hf_arch arch;     /* key layout: ARCH_GPT2, or ARCH_LLAMA for the llama family (mistral and qwen2 alike) */
    int r;
    float alpha, dropout;
    int use_rslora, use_dora, fan_in_fan_out;
    char base_model[512];                          /* base_model_name_or_path */
    char targets[ADAPTER_MAX_TARGETS][32];         /* target_modules as a list (module names) */
    int n_targets;
    char target_regex[256];                        /* target_modules as a string; "" with the list form */
    adapter_tensor *t;
    int n_tensors, cap_tensors;
} adapter;

/* A new empty adapter (r 8, alpha 8, the llama layout); NULL when out of memory. */
adapter *adapter_new(void);
void adapter_free(adapter *a);

/* Parses adapter_config.json text into a's settings (tensors untouched). */
int adapter_config_parse(const char *json, size_t len, adapter *a, lr_err *err) LR_WARN_UNUSED;

/* Reads dir/adapter_config.json and dir/adapter_model.safetensors. */
int adapter_load(const char *dir, adapter **out, lr_err *err) LR_WARN_UNUSED;
/* Writes both files (dir is created; each file atomically; tensors as F32
 * with {"format":"pt"} metadata; config keys sorted as PEFT writes them). */
int adapter_save(const adapter *a, const char *dir, lr_err *err) LR_WARN_UNUSED;
/* What base_model_name_or_path should say for the model in model_dir (PEFT's
 * AutoPeftModel loads the base from it): its config.json's _name_or_path
 * (the Hugging Face name it was saved from) when set, else the directory's
 * absolute path. Never fails; out is empty only when cap is 0. */
void adapter_base_name(const char *model_dir, char *out, size_t cap);

/* Adds a zero-filled tensor (its key built from a->arch); NULL with err set
 * when the name is unknown for the layout, the tensor exists, or on OOM. */
adapter_tensor *adapter_add(adapter *a, int layer, const char *module, adapter_kind kind, int rows, int cols,
                            lr_err *err);
adapter_tensor *adapter_find(const adapter *a, int layer, const char *module, adapter_kind kind);

/* alpha / r, or alpha / sqrt(r) with use_rslora. */
float adapter_scale(const adapter *a);

/* The PEFT key prefix of a module: "base_model.model.model.layers.3.self_attn.q_proj".
 * Returns buf, or NULL when it does not fit. */
const char *adapter_module_key(hf_arch arch, int layer, const char *module, char *buf, size_t n);

/* The LoRA-able linear modules of one decoder layer of arch, in forward
 * order: llama family q,k,v,o_proj then gate,up,down_proj; gpt2 attn.c_attn,
 * attn.c_proj, mlp.c_fc, mlp.c_proj. */
const char *const *adapter_layer_modules(hf_arch arch, int *n);
/* in/out features of a module for a model; -1 if the module is unknown. */
int adapter_module_dims(const hf_config *c, const char *module, int *in, int *out);

/* Whether target_modules selects this module, as PEFT decides: a list entry
 * matches the module's full name or its last dotted components ("c_proj"
 * selects attn.c_proj and mlp.c_proj); a string is a regex that must match
 * the full name ("model.layers.0.self_attn.q_proj"), except "all-linear",
 * which selects every module of adapter_layer_modules. */
int adapter_targets_module(const adapter *a, hf_arch arch, int layer, const char *module);

/* Checks that every tensor fits the model (layer range, module dims, r). */
int adapter_check_model(const adapter *a, const hf_config *c, lr_err *err) LR_WARN_UNUSED;

#endif
