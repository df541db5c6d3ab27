#include "formats/hfconfig.h"

#include <limits.h>

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"

static const struct {
    const char *arch, *model_type;
} ARCHES[] = {
    [ARCH_LLAMA] = {"LlamaForCausalLM", "llama"},
    [ARCH_MISTRAL] = {"MistralForCausalLM", "mistral"},
    [ARCH_QWEN2] = {"Qwen2ForCausalLM", "qwen2"},
    [ARCH_GPT2] = {"GPT2LMHeadModel", "gpt2"},
};
#define N_ARCH 4
#define SUPPORTED "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, GPT2LMHeadModel"

/* Activations the kernels implement; gelu_new and gelu_pytorch_tanh are the
 * same tanh approximation. */
static const char *const ACTS[] = {"silu", "gelu_new", "gelu_pytorch_tanh", "gelu", "relu"};

const char *hf_arch_name(hf_arch a) { return (unsigned)a < N_ARCH ? ARCHES[a].arch : "?"; }
const char *hf_model_type(hf_arch a) { return (unsigned)a < N_ARCH ? ARCHES[a].model_type : "?"; }

void hf_config_defaults(hf_arch arch, hf_config *c) {
    memset(c, 0, sizeof *c);
    c->arch = arch;
    snprintf(c->arch_name, sizeof c->arch_name, "%s", hf_arch_name(arch));
    snprintf(c->model_type, sizeof c->model_type, "%s", hf_model_type(arch));
    c->rope_theta = 10000.0f;
    c->init_range = 0.02f;
    c->bos_id = c->eos_id = -1;
    snprintf(c->hidden_act, sizeof c->hidden_act, "silu");
    c->norm_eps = 1e-6f;
    switch (arch) {
    case ARCH_LLAMA: /* LlamaConfig() */
        c->vocab_size = 32000, c->hidden = 4096, c->intermediate = 11008, c->n_layers = 32, c->n_heads = 32;
        c->max_pos = 2048, c->bos_id = 1, c->eos_id = 2;
        break;
    case ARCH_MISTRAL: /* MistralConfig() */
        c->vocab_size = 32000, c->hidden = 4096, c->intermediate = 14336, c->n_layers = 32, c->n_heads = 32;
        c->n_kv_heads = 8, c->max_pos = 4096 * 32, c->bos_id = 1, c->eos_id = 2, c->sliding_window = 4096;
        break;
    case ARCH_QWEN2: /* Qwen2Config() */
        c->vocab_size = 151936, c->hidden = 4096, c->intermediate = 22016, c->n_layers = 32, c->n_heads = 32;
        c->n_kv_heads = 32, c->max_pos = 32768, c->attn_bias = 1, c->max_window_layers = 28;
        break;
    case ARCH_GPT2: /* GPT2Config() */
        c->vocab_size = 50257, c->hidden = 768, c->n_layers = 12, c->n_heads = 12, c->max_pos = 1024;
        c->norm_eps = 1e-5f, c->tie_embeddings = 1, c->attn_bias = c->o_bias = c->mlp_bias = 1;
        c->bos_id = c->eos_id = 50256;
        snprintf(c->hidden_act, sizeof c->hidden_act, "gelu_new");
        break;
    }
    if (!c->n_kv_heads) c->n_kv_heads = c->n_heads;
    c->head_dim = c->hidden / c->n_heads;
    if (!c->intermediate) c->intermediate = 4 * c->hidden;
    if (c->eos_id >= 0) c->eos_ids[0] = c->eos_id, c->n_eos = 1;
}

/* ---- parsing ---- */

/* The value of the first of the keys present and not null. */
static json_t *get(json_t *o, const char *k1, const char *k2, const char **used) {
    json_t *v = json_object_get(o, k1);
    *used = k1;
    if ((!v || json_is_null(v)) && k2) {
        v = json_object_get(o, k2);
        *used = k2;
    }
    if (v && json_is_null(v)) v = NULL;
    if (!v) *used = k1;
    return v;
}

static int get_int(json_t *o, const char *k1, const char *k2, int min, int *out, lr_err *err) {
    const char *k;
    json_t *v = get(o, k1, k2, &k);
    if (!v) return 0;
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > (1 << 30))
        return lr_errp(err, LR_E_INVALID, k, "config.json: %s must be %s integer", k,
                       min > 0 ? "a positive" : "a non-negative");
    *out = (int)json_integer_value(v);
    return 0;
}

static int get_pos_num(json_t *o, const char *k1, const char *k2, float *out, lr_err *err) {
    const char *k;
    json_t *v = get(o, k1, k2, &k);
    if (!v) return 0;
    double d = json_is_number(v) ? json_number_value(v) : -1;
    if (!(d > 0 && d < 1e30)) return lr_errp(err, LR_E_INVALID, k, "config.json: %s must be a positive number", k);
    *out = (float)d;
    return 0;
}

static int get_bool(json_t *o, const char *k, int *out, lr_err *err) {
    json_t *v = json_object_get(o, k);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_boolean(v)) return lr_errp(err, LR_E_INVALID, k, "config.json: %s must be true or false", k);
    *out = json_is_true(v);
    return 0;
}

static int get_str(json_t *o, const char *k1, const char *k2, char *out, size_t n, lr_err *err) {
    const char *k;
    json_t *v = get(o, k1, k2, &k);
    if (!v) return 0;
    if (!json_is_string(v) || json_string_length(v) >= n)
        return lr_errp(err, LR_E_INVALID, k, "config.json: %s must be a string of at most %zu bytes", k, n - 1);
    memcpy(out, json_string_value(v), json_string_length(v) + 1);
    return 0;
}

static int get_token_ids(json_t *o, hf_config *c, lr_err *err) {
    if (get_int(o, "bos_token_id", NULL, 0, &c->bos_id, err)) return -1;
    json_t *v = json_object_get(o, "eos_token_id");
    if (!v || json_is_null(v)) return 0;
    if (json_is_array(v)) {
        if (json_array_size(v) < 1 || json_array_size(v) > 8)
            return lr_errp(err, LR_E_INVALID, "eos_token_id", "config.json: eos_token_id must list 1 to 8 ids");
        c->n_eos = 0;
        for (size_t i = 0; i < json_array_size(v); i++) {
            json_t *e = json_array_get(v, i);
            if (!json_is_integer(e) || json_integer_value(e) < 0 || json_integer_value(e) > (1 << 30))
                return lr_errp(err, LR_E_INVALID, "eos_token_id",
                               "config.json: eos_token_id must be a non-negative integer or a list of them");
            c->eos_ids[c->n_eos++] = (int)json_integer_value(e);
        }
    } else {
        if (get_int(o, "eos_token_id", NULL, 0, &c->eos_ids[0], err)) return -1;
        c->n_eos = 1;
    }
    c->eos_id = c->eos_ids[0];
    return 0;
}

static int get_rope_scaling(json_t *o, hf_config *c, lr_err *err) {
    json_t *rs = json_object_get(o, "rope_scaling");
    if (!rs || json_is_null(rs)) return 0;
    if (!json_is_object(rs))
        return lr_errp(err, LR_E_INVALID, "rope_scaling", "config.json: rope_scaling must be an object or null");
    const char *k;
    json_t *t = get(rs, "rope_type", "type", &k);
    const char *type = json_is_string(t) ? json_string_value(t) : NULL;
    if (!type)
        return lr_errp(err, LR_E_INVALID, "rope_scaling.rope_type", "config.json: rope_scaling.rope_type must be a string");
    if (!strcmp(type, "default")) return 0;
    if (strcmp(type, "llama3"))
        return lr_errp(err, LR_E_INVALID, "rope_scaling.rope_type",
                       "config.json: rope_scaling type '%.40s' is not supported (supported: llama3)", type);
    static const char *const need[] = {"factor", "low_freq_factor", "high_freq_factor"};
    float *dst[] = {&c->rope_factor, &c->rope_low_freq_factor, &c->rope_high_freq_factor};
    for (int i = 0; i < 3; i++) {
        *dst[i] = 0;
        if (get_pos_num(rs, need[i], NULL, dst[i], err)) return lr_err_prefix(err, "rope_scaling: ");
        if (*dst[i] == 0)
            return lr_errp(err, LR_E_INVALID, need[i], "config.json: rope_scaling.%s is required for llama3", need[i]);
    }
    c->rope_orig_max_pos = 0;
    if (get_int(rs, "original_max_position_embeddings", NULL, 1, &c->rope_orig_max_pos, err))
        return lr_err_prefix(err, "rope_scaling: ");
    if (!c->rope_orig_max_pos)
        return lr_errp(err, LR_E_INVALID, "original_max_position_embeddings",
                       "config.json: rope_scaling.original_max_position_embeddings is required for llama3");
    if (c->rope_high_freq_factor <= c->rope_low_freq_factor)
        return lr_errp(err, LR_E_INVALID, "high_freq_factor",
                       "config.json: rope_scaling.high_freq_factor must be greater than low_freq_factor");
    return 0;
}

static int get_quantization(json_t *o, hf_config *c, lr_err *err) {
    json_t *q = json_object_get(o, "quantization_config");
    c->quant_type[0] = '\0';
    c->quant_double = 0;
    if (!q || json_is_null(q)) return 0;
    if (!json_is_object(q))
        return lr_errp(err, LR_E_INVALID, "quantization_config", "config.json: quantization_config must be an object");
    json_t *qm = json_object_get(q, "quant_method");
    const char *method = json_is_string(qm) ? json_string_value(qm) : "";
    int in4 = json_is_true(json_object_get(q, "load_in_4bit"));
    if (strcmp(method, "bitsandbytes") || !in4)
        return lr_errp(err, LR_E_INVALID, "quantization_config",
                       "config.json: quantization_config '%.40s'%s is not supported (bitsandbytes 4-bit only)", method,
                       strcmp(method, "bitsandbytes") ? "" : " without load_in_4bit");
    json_t *qt = json_object_get(q, "bnb_4bit_quant_type");
    const char *type = json_is_string(qt) ? json_string_value(qt) : "fp4"; /* BitsAndBytesConfig's default */
    if (strcmp(type, "nf4") && strcmp(type, "fp4"))
        return lr_errp(err, LR_E_INVALID, "bnb_4bit_quant_type",
                       "config.json: bnb_4bit_quant_type '%.40s' is not supported (nf4, fp4)", type);
    snprintf(c->quant_type, sizeof c->quant_type, "%s", type);
    c->quant_double = json_is_true(json_object_get(q, "bnb_4bit_use_double_quant"));
    return 0;
}

static int find_arch(json_t *root, hf_arch *arch, lr_err *err) {
    json_t *archs = json_object_get(root, "architectures");
    json_t *mt = json_object_get(root, "model_type");
    if (mt && !json_is_null(mt) && !json_is_string(mt))
        return lr_errp(err, LR_E_INVALID, "model_type", "config.json: model_type must be a string");
    const char *model_type = mt ? json_string_value(mt) : NULL;
    if (archs && !json_is_null(archs)) {
        json_t *a0 = json_is_array(archs) ? json_array_get(archs, 0) : NULL;
        if (!json_is_string(a0))
            return lr_errp(err, LR_E_INVALID, "architectures",
                           "config.json: architectures must be a list of class names");
        const char *name = json_string_value(a0);
        int i;
        for (i = 0; i < N_ARCH && strcmp(ARCHES[i].arch, name); i++) {}
        if (i == N_ARCH)
            return lr_errp(err, LR_E_INVALID, "architectures",
                           "config.json: architecture '%.64s' is not supported (supported: " SUPPORTED ")", name);
        if (model_type && strcmp(model_type, ARCHES[i].model_type))
            return lr_errp(err, LR_E_INVALID, "model_type",
                           "config.json: model_type '%.32s' does not match architecture %s (expected '%s')",
                           model_type, name, ARCHES[i].model_type);
        *arch = (hf_arch)i;
        return 0;
    }
    if (!model_type)
        return lr_errp(err, LR_E_INVALID, "architectures",
                       "config.json: neither architectures nor model_type is set");
    for (int i = 0; i < N_ARCH; i++)
        if (!strcmp(ARCHES[i].model_type, model_type)) {
            *arch = (hf_arch)i;
            return 0;
        }
    return lr_errp(err, LR_E_INVALID, "model_type",
                   "config.json: model_type '%.32s' is not supported (supported: llama, mistral, qwen2, gpt2)",
                   model_type);
}

/* Checks that apply to parsed and to hand-built configs. */
static int validate(const hf_config *c, lr_err *err) {
#define BAD(key, ...) return lr_errp(err, LR_E_INVALID, key, "config.json: " __VA_ARGS__)
    if (c->vocab_size <= 0) BAD("vocab_size", "vocab_size must be a positive integer");
    if (c->hidden <= 0) BAD("hidden_size", "hidden_size must be a positive integer");
    if (c->n_layers <= 0) BAD("num_hidden_layers", "num_hidden_layers must be a positive integer");
    if (c->n_heads <= 0) BAD("num_attention_heads", "num_attention_heads must be a positive integer");
    if (c->n_kv_heads <= 0) BAD("num_key_value_heads", "num_key_value_heads must be a positive integer");
    if (c->n_heads % c->n_kv_heads)
        BAD("num_key_value_heads", "num_attention_heads (%d) must be a multiple of num_key_value_heads (%d)",
            c->n_heads, c->n_kv_heads);
    if (c->head_dim <= 0 || (c->arch != ARCH_GPT2 && c->head_dim % 2)) /* RoPE rotates pairs */
        BAD("head_dim", "head_dim must be a positive even integer (got %d; hidden_size %d / %d heads)", c->head_dim,
            c->hidden, c->n_heads);
    if (c->arch == ARCH_GPT2 && (long long)c->head_dim * c->n_heads != c->hidden)
        BAD("n_head", "n_embd (%d) must be a multiple of n_head (%d)", c->hidden, c->n_heads);
    if (c->intermediate <= 0) BAD("intermediate_size", "intermediate_size must be a positive integer");
    if (c->max_pos <= 0) BAD("max_position_embeddings", "max_position_embeddings must be a positive integer");
    if (!(c->norm_eps > 0)) BAD("rms_norm_eps", "rms_norm_eps must be a positive number");
    if (!(c->rope_theta > 0)) BAD("rope_theta", "rope_theta must be a positive number");
    if (c->sliding_window < 0) BAD("sliding_window", "sliding_window must be a positive integer or null");
    /* sizes the engine multiplies: keep every product of two in int64 and
     * every per-row count in int */
    if ((long long)c->n_heads * c->head_dim > (1 << 20) || c->hidden > (1 << 20) || c->intermediate > (1 << 22) ||
        c->vocab_size > (1 << 24) || c->n_layers > 4096)
        BAD("hidden_size", "model dimensions are implausibly large");
    size_t i;
    for (i = 0; i < sizeof ACTS / sizeof *ACTS && strcmp(ACTS[i], c->hidden_act); i++) {}
    if (i == sizeof ACTS / sizeof *ACTS)
        BAD(c->arch == ARCH_GPT2 ? "activation_function" : "hidden_act",
            "activation '%s' is not supported (supported: silu, gelu_new, gelu_pytorch_tanh, gelu, relu)",
            c->hidden_act);
    if (c->torch_dtype[0] && strcmp(c->torch_dtype, "float32") && strcmp(c->torch_dtype, "bfloat16") &&
        strcmp(c->torch_dtype, "float16"))
        BAD("torch_dtype", "torch_dtype '%s' is not supported (float32, bfloat16, float16)", c->torch_dtype);
    return 0;
#undef BAD
}

static int parse_gpt2(json_t *o, hf_config *c, lr_err *err) {
    int inner = 0, scale = 1, by_layer = 0, cross = 0;
    if (get_int(o, "n_embd", "hidden_size", 1, &c->hidden, err) ||
        get_int(o, "n_layer", "num_hidden_layers", 1, &c->n_layers, err) ||
        get_int(o, "n_head", "num_attention_heads", 1, &c->n_heads, err) ||
        get_int(o, "n_positions", "max_position_embeddings", 1, &c->max_pos, err) ||
        get_int(o, "n_inner", NULL, 1, &inner, err) ||
        get_pos_num(o, "layer_norm_epsilon", NULL, &c->norm_eps, err) ||
        get_str(o, "activation_function", NULL, c->hidden_act, sizeof c->hidden_act, err) ||
        get_bool(o, "scale_attn_weights", &scale, err) ||
        get_bool(o, "scale_attn_by_inverse_layer_idx", &by_layer, err) ||
        get_bool(o, "add_cross_attention", &cross, err))
        return -1;
    if (!scale || by_layer || cross)
        return lr_errp(err, LR_E_INVALID, !scale ? "scale_attn_weights" : by_layer ? "scale_attn_by_inverse_layer_idx" : "add_cross_attention",
                       "config.json: %s is not supported",
                       !scale ? "scale_attn_weights false" : by_layer ? "scale_attn_by_inverse_layer_idx true" : "add_cross_attention true");
    c->n_kv_heads = c->n_heads;
    c->head_dim = c->hidden / c->n_heads;
    if (!inner && c->hidden > INT_MAX / 4)
        return lr_errp(err, LR_E_INVALID, "n_embd", "config.json: n_embd %d is too large", c->hidden);
    c->intermediate = inner ? inner : 4 * c->hidden;
    return 0;
}

static int parse_llama_family(json_t *o, hf_config *c, lr_err *err) {
    int attn_bias = c->attn_bias, use_sw = 0;
    /* LlamaConfig's num_key_value_heads defaults to None (= heads),
     * Mistral's to 8, Qwen2's to 32; an explicit null means "= heads" */
    json_t *kv = json_object_get(o, "num_key_value_heads");
    c->n_kv_heads = c->arch == ARCH_MISTRAL ? 8 : c->arch == ARCH_QWEN2 ? 32 : 0;
    if (kv && json_is_null(kv)) c->n_kv_heads = 0;
    c->head_dim = 0;
    if (get_int(o, "hidden_size", NULL, 1, &c->hidden, err) ||
        get_int(o, "num_hidden_layers", NULL, 1, &c->n_layers, err) ||
        get_int(o, "num_attention_heads", NULL, 1, &c->n_heads, err) ||
        get_int(o, "num_key_value_heads", NULL, 1, &c->n_kv_heads, err) ||
        get_int(o, "head_dim", NULL, 1, &c->head_dim, err) ||
        get_int(o, "intermediate_size", NULL, 1, &c->intermediate, err) ||
        get_int(o, "max_position_embeddings", NULL, 1, &c->max_pos, err) ||
        get_pos_num(o, "rms_norm_eps", NULL, &c->norm_eps, err) ||
        get_pos_num(o, "rope_theta", NULL, &c->rope_theta, err) ||
        get_str(o, "hidden_act", NULL, c->hidden_act, sizeof c->hidden_act, err) || get_rope_scaling(o, c, err))
        return -1;
    if (!c->n_kv_heads) c->n_kv_heads = c->n_heads;
    if (!c->head_dim) {
        if (c->hidden % c->n_heads)
            return lr_errp(err, LR_E_INVALID, "num_attention_heads",
                           "config.json: hidden_size (%d) must be a multiple of num_attention_heads (%d) when head_dim is not set",
                           c->hidden, c->n_heads);
        c->head_dim = c->hidden / c->n_heads;
    }
    switch (c->arch) {
    case ARCH_LLAMA:
        if (get_bool(o, "attention_bias", &attn_bias, err) || get_bool(o, "mlp_bias", &c->mlp_bias, err)) return -1;
        c->attn_bias = c->o_bias = attn_bias;
        break;
    case ARCH_MISTRAL: /* MistralConfig has no bias options */
        c->sliding_window = 4096;
        if (json_object_get(o, "sliding_window") && json_is_null(json_object_get(o, "sliding_window")))
            c->sliding_window = 0;
        else if (get_int(o, "sliding_window", NULL, 1, &c->sliding_window, err))
            return -1;
        break;
    case ARCH_QWEN2: /* q/k/v always have biases, o_proj never */
        if (get_bool(o, "use_sliding_window", &use_sw, err) ||
            get_int(o, "max_window_layers", NULL, 0, &c->max_window_layers, err))
            return -1;
        if (use_sw) {
            c->sliding_window = 4096;
            if (get_int(o, "sliding_window", NULL, 1, &c->sliding_window, err)) return -1;
        }
        break;
    case ARCH_GPT2:
        break;
    }
    return 0;
}

int hf_config_parse(const char *json, size_t len, hf_config *out, lr_err *err) {
    if (len > HF_MAX_CONFIG)
        return lr_errp(err, LR_E_TOOBIG, NULL, "config.json: %zu bytes is over the limit of %u", len, HF_MAX_CONFIG);
    json_error_t je;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &je);
    if (!root) return lr_errp(err, LR_E_INVALID, NULL, "config.json: line %d: %s", je.line, je.text);
    hf_config c;
    hf_arch arch = ARCH_LLAMA;
    if (!json_is_object(root)) {
        lr_errp(err, LR_E_INVALID, NULL, "config.json: not a JSON object");
        goto fail;
    }
    if (find_arch(root, &arch, err)) goto fail;
    hf_config_defaults(arch, &c);
    if (get_int(root, "vocab_size", NULL, 1, &c.vocab_size, err) ||
        get_bool(root, "tie_word_embeddings", &c.tie_embeddings, err) || get_token_ids(root, &c, err) ||
        get_pos_num(root, "initializer_range", NULL, &c.init_range, err) ||
        get_str(root, "torch_dtype", "dtype", c.torch_dtype, sizeof c.torch_dtype, err) ||
        get_quantization(root, &c, err))
        goto fail;
    if ((arch == ARCH_GPT2 ? parse_gpt2(root, &c, err) : parse_llama_family(root, &c, err)) || validate(&c, err))
        goto fail;
    json_decref(root);
    *out = c;
    return 0;
fail:
    json_decref(root);
    return -1;
}

int hf_config_load(const char *path, hf_config *out, lr_err *err) {
    char *text;
    size_t len;
    if (lr_read_file(path, HF_MAX_CONFIG, &text, &len, err)) return -1;
    int rc = hf_config_parse(text, len, out, err);
    free(text);
    if (rc) lr_err_prefix(err, "%s: ", path);
    return rc;
}

/* ---- writing ---- */

/* The double whose shortest decimal form is the float's shortest decimal
 * form, so that 1e-5f is written "1e-05" as Python writes it. */
static json_t *jfloat(float f) {
    char s[32];
    for (int p = 1; p <= 9; p++) {
        snprintf(s, sizeof s, "%.*g", p, (double)f);
        if ((float)strtod(s, NULL) == f) break;
    }
    return json_real(strtod(s, NULL));
}

static int set(json_t *o, const char *k, json_t *v) { return json_object_set_new(o, k, v); }

static json_t *eos_json(const hf_config *c) {
    if (c->n_eos > 1) {
        json_t *a = json_array();
        for (int i = 0; i < c->n_eos; i++) json_array_append_new(a, json_integer(c->eos_ids[i]));
        return a;
    }
    return c->eos_id >= 0 ? json_integer(c->eos_id) : json_null();
}

char *hf_config_json(const hf_config *cin, lr_err *err) {
    hf_config c = *cin;
    if (validate(&c, err)) return NULL;
    json_t *o = json_object();
    char *text = NULL;
    int bad = !o;
    json_t *archs = json_array();
    bad |= !archs || json_array_append_new(archs, json_string(hf_arch_name(c.arch)));
    bad |= set(o, "architectures", archs);
    bad |= set(o, "model_type", json_string(hf_model_type(c.arch)));
    bad |= set(o, "vocab_size", json_integer(c.vocab_size));
    bad |= set(o, "initializer_range", jfloat(c.init_range));
    bad |= set(o, "bos_token_id", c.bos_id >= 0 ? json_integer(c.bos_id) : json_null());
    bad |= set(o, "eos_token_id", eos_json(&c));
    bad |= set(o, "tie_word_embeddings", json_boolean(c.tie_embeddings));
    bad |= set(o, "use_cache", json_true());
    bad |= set(o, "transformers_version", json_string("4.45.0"));
    if (c.torch_dtype[0]) bad |= set(o, "torch_dtype", json_string(c.torch_dtype));
    if (c.arch == ARCH_GPT2) {
        if (c.head_dim * c.n_heads != c.hidden || c.n_kv_heads != c.n_heads || !c.attn_bias || !c.o_bias || !c.mlp_bias) {
            json_decref(o);
            lr_errf(err, "config.json: GPT-2 needs head_dim = hidden/heads, no GQA and all biases");
            return NULL;
        }
        bad |= set(o, "activation_function", json_string(c.hidden_act));
        bad |= set(o, "n_embd", json_integer(c.hidden));
        bad |= set(o, "n_layer", json_integer(c.n_layers));
        bad |= set(o, "n_head", json_integer(c.n_heads));
        bad |= set(o, "n_positions", json_integer(c.max_pos));
        bad |= set(o, "n_ctx", json_integer(c.max_pos));
        bad |= set(o, "n_inner", c.intermediate == 4 * c.hidden ? json_null() : json_integer(c.intermediate));
        bad |= set(o, "layer_norm_epsilon", jfloat(c.norm_eps));
        bad |= set(o, "attn_pdrop", json_real(0.1));
        bad |= set(o, "embd_pdrop", json_real(0.1));
        bad |= set(o, "resid_pdrop", json_real(0.1));
        bad |= set(o, "scale_attn_weights", json_true());
        bad |= set(o, "scale_attn_by_inverse_layer_idx", json_false());
        bad |= set(o, "reorder_and_upcast_attn", json_false());
    } else {
        bad |= set(o, "hidden_act", json_string(c.hidden_act));
        bad |= set(o, "hidden_size", json_integer(c.hidden));
        bad |= set(o, "num_hidden_layers", json_integer(c.n_layers));
        bad |= set(o, "num_attention_heads", json_integer(c.n_heads));
        bad |= set(o, "num_key_value_heads", json_integer(c.n_kv_heads));
        bad |= set(o, "intermediate_size", json_integer(c.intermediate));
        bad |= set(o, "max_position_embeddings", json_integer(c.max_pos));
        bad |= set(o, "rms_norm_eps", jfloat(c.norm_eps));
        bad |= set(o, "rope_theta", jfloat(c.rope_theta));
        bad |= set(o, "attention_dropout", json_real(0.0));
        if (c.arch != ARCH_QWEN2 || c.head_dim * c.n_heads != c.hidden)
            bad |= set(o, "head_dim", json_integer(c.head_dim));
        json_t *rs = json_null();
        if (c.rope_factor > 0)
            rs = json_pack("{s:o, s:o, s:o, s:i, s:s}", "factor", jfloat(c.rope_factor), "low_freq_factor",
                           jfloat(c.rope_low_freq_factor), "high_freq_factor", jfloat(c.rope_high_freq_factor),
                           "original_max_position_embeddings", c.rope_orig_max_pos, "rope_type", "llama3");
        bad |= set(o, "rope_scaling", rs);
        switch (c.arch) {
        case ARCH_LLAMA:
            if (c.attn_bias != c.o_bias) {
                json_decref(o);
                lr_errf(err, "config.json: Llama's attention_bias covers q/k/v and o_proj alike");
                return NULL;
            }
            bad |= set(o, "attention_bias", json_boolean(c.attn_bias));
            bad |= set(o, "mlp_bias", json_boolean(c.mlp_bias));
            bad |= set(o, "pretraining_tp", json_integer(1));
            break;
        case ARCH_MISTRAL:
            if (c.attn_bias || c.o_bias || c.mlp_bias) {
                json_decref(o);
                lr_errf(err, "config.json: Mistral has no biases");
                return NULL;
            }
            bad |= set(o, "sliding_window", c.sliding_window ? json_integer(c.sliding_window) : json_null());
            break;
        case ARCH_QWEN2:
            if (!c.attn_bias || c.o_bias || c.mlp_bias) {
                json_decref(o);
                lr_errf(err, "config.json: Qwen2 has q/k/v biases and no other");
                return NULL;
            }
            bad |= set(o, "use_sliding_window", json_boolean(c.sliding_window > 0));
            bad |= set(o, "sliding_window", json_integer(c.sliding_window ? c.sliding_window : c.max_pos));
            bad |= set(o, "max_window_layers", json_integer(c.max_window_layers));
            break;
        case ARCH_GPT2:
            break;
        }
    }
    if (!bad) text = json_dumps(o, JSON_INDENT(2) | JSON_SORT_KEYS | JSON_REAL_PRECISION(9));
    json_decref(o);
    if (!text) lr_errp(err, LR_E_NOMEM, NULL, "config.json: out of memory");
    return text;
}

int hf_config_write(const hf_config *c, const char *path, lr_err *err) {
    char *text = hf_config_json(c, err);
    if (!text) return -1;
    lr_buf b;
    lr_buf_init(&b, HF_MAX_CONFIG);
    int rc = lr_buf_adds(&b, text) || lr_buf_add(&b, "\n", 1)
                 ? lr_errp(err, LR_E_TOOBIG, NULL, "config.json too large")
                 : lr_write_file_atomic(path, b.data, b.len, err);
    free(text);
    lr_buf_free(&b);
    return rc;
}
