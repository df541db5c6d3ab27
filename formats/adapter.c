#include "formats/adapter.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <jansson.h>
#include <math.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "proto/jsonfmt.h"
#include "formats/safetensors.h"

#define PFX "base_model.model."

static const char *const LLAMA_MODULES[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                            "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
                                            "mlp.down_proj"};
static const char *const GPT2_MODULES[] = {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"};

static const char *const SUFFIX[] = {[ADAPTER_A] = ".lora_A.weight", [ADAPTER_B] = ".lora_B.weight",
                                     [ADAPTER_MAGNITUDE] = ".lora_magnitude_vector"};

static hf_arch layout(hf_arch a) { return a == ARCH_GPT2 ? ARCH_GPT2 : ARCH_LLAMA; }

const char *const *adapter_layer_modules(hf_arch arch, int *n) {
    if (layout(arch) == ARCH_GPT2) {
        *n = 4;
        return GPT2_MODULES;
    }
    *n = 7;
    return LLAMA_MODULES;
}

static int module_index(hf_arch arch, const char *module) {
    int n;
    const char *const *m = adapter_layer_modules(arch, &n);
    for (int i = 0; i < n; i++)
        if (!strcmp(m[i], module)) return i;
    return -1;
}

adapter *adapter_new(void) {
    adapter *a = calloc(1, sizeof *a);
    if (!a) return NULL;
    a->arch = ARCH_LLAMA;
    a->r = 8;
    a->alpha = 8;
    return a;
}

void adapter_free(adapter *a) {
    if (!a) return;
    for (int i = 0; i < a->n_tensors; i++) free(a->t[i].data);
    free(a->t);
    free(a);
}

float adapter_scale(const adapter *a) {
    return a->use_rslora ? a->alpha / sqrtf((float)a->r) : a->alpha / (float)a->r;
}

const char *adapter_module_key(hf_arch arch, int layer, const char *module, char *buf, size_t n) {
    int k = snprintf(buf, n, PFX "%s.%d.%s", layout(arch) == ARCH_GPT2 ? "transformer.h" : "model.layers", layer,
                     module);
    return k < 0 || (size_t)k >= n ? NULL : buf;
}

adapter_tensor *adapter_find(const adapter *a, int layer, const char *module, adapter_kind kind) {
    for (int i = 0; i < a->n_tensors; i++)
        if (a->t[i].layer == layer && a->t[i].kind == kind && !strcmp(a->t[i].module, module)) return &a->t[i];
    return NULL;
}

adapter_tensor *adapter_add(adapter *a, int layer, const char *module, adapter_kind kind, int rows, int cols,
                            lr_err *err) {
    if (module_index(a->arch, module) < 0) {
        lr_errf(err, "'%s' is not a LoRA-able module of a %s layer", module, hf_model_type(layout(a->arch)));
        return NULL;
    }
    if (layer < 0 || layer >= ADAPTER_MAX_LAYERS || rows <= 0 || cols <= 0 || (kind == ADAPTER_MAGNITUDE && cols != 1)) {
        lr_errf(err, "%s of layer %d: bad layer or shape [%d, %d]", module, layer, rows, cols);
        return NULL;
    }
    if (adapter_find(a, layer, module, kind)) {
        lr_errf(err, "%s%s of layer %d is there twice", module, SUFFIX[kind], layer);
        return NULL;
    }
    if (a->n_tensors == a->cap_tensors) {
        int cap = a->cap_tensors ? a->cap_tensors * 2 : 64;
        adapter_tensor *nt = realloc(a->t, (size_t)cap * sizeof *nt);
        if (!nt) {
            lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
            return NULL;
        }
        a->t = nt;
        a->cap_tensors = cap;
    }
    adapter_tensor *t = &a->t[a->n_tensors];
    memset(t, 0, sizeof *t);
    char pre[160];
    if (!adapter_module_key(a->arch, layer, module, pre, sizeof pre) ||
        snprintf(t->key, sizeof t->key, "%s%s", pre, SUFFIX[kind]) >= (int)sizeof t->key) {
        lr_errf(err, "%s: key too long", module);
        return NULL;
    }
    t->layer = layer;
    snprintf(t->module, sizeof t->module, "%s", module);
    t->kind = kind;
    t->rows = rows;
    t->cols = cols;
    if (!(t->data = calloc((size_t)rows * (size_t)cols, sizeof(float)))) {
        lr_errp(err, LR_E_NOMEM, NULL, "out of memory for a [%d, %d] LoRA matrix", rows, cols);
        return NULL;
    }
    a->n_tensors++;
    return t;
}

/* ---- adapter_config.json ---- */

#define CFG "adapter_config.json: "

/* Keys whose non-default values change the math or the saved tensors. */
static int reject_set(json_t *root, lr_err *err) {
    static const char *const must_be_null[] = {"modules_to_save",   "layers_to_transform",  "layers_pattern",
                                               "layer_replication", "exclude_modules",      "target_parameters",
                                               "trainable_token_indices", "alora_invocation_tokens"};
    for (size_t i = 0; i < sizeof must_be_null / sizeof *must_be_null; i++) {
        json_t *v = json_object_get(root, must_be_null[i]);
        if (v && !json_is_null(v) && !(json_is_array(v) && !json_array_size(v))) {
            char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
            lr_errp(err, LR_E_INVALID, must_be_null[i],
                    CFG "%s %.80s is not supported: lorad adapters hold LoRA matrices of every layer only",
                    must_be_null[i], s ? s : "");
            free(s);
            return -1;
        }
    }
    static const char *const must_be_empty[] = {"rank_pattern", "alpha_pattern"};
    for (int i = 0; i < 2; i++) {
        json_t *v = json_object_get(root, must_be_empty[i]);
        if (v && !json_is_null(v) && !(json_is_object(v) && !json_object_size(v)))
            return lr_errp(err, LR_E_INVALID, must_be_empty[i],
                           CFG "%s is not supported (one r and lora_alpha for every module)", must_be_empty[i]);
    }
    json_t *b = json_object_get(root, "bias");
    if (b && !json_is_null(b) && !(json_is_string(b) && !strcmp(json_string_value(b), "none")))
        return lr_errp(err, LR_E_INVALID, "bias", CFG "bias must be \"none\" (trained biases are not supported)");
    json_t *lb = json_object_get(root, "lora_bias");
    if (json_is_true(lb)) return lr_errp(err, LR_E_INVALID, "lora_bias", CFG "lora_bias true is not supported");
    return 0;
}

static int cfg_bool(json_t *root, const char *k, int *out, lr_err *err) {
    json_t *v = json_object_get(root, k);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_boolean(v)) return lr_errp(err, LR_E_INVALID, k, CFG "%s must be true or false", k);
    *out = json_is_true(v);
    return 0;
}

static int parse_targets(json_t *tm, adapter *a, lr_err *err) {
    a->n_targets = 0;
    a->target_regex[0] = 0;
    if (json_is_string(tm)) {
        if (json_string_length(tm) == 0 || json_string_length(tm) >= sizeof a->target_regex)
            return lr_errp(err, LR_E_INVALID, "target_modules", CFG "target_modules string must be 1 to %zu bytes",
                           sizeof a->target_regex - 1);
        memcpy(a->target_regex, json_string_value(tm), json_string_length(tm) + 1);
        return 0;
    }
    if (!json_is_array(tm) || !json_array_size(tm) || json_array_size(tm) > ADAPTER_MAX_TARGETS)
        return lr_errp(err, LR_E_INVALID, "target_modules",
                       CFG "target_modules must be a list of 1 to %d module names or a regex string",
                       ADAPTER_MAX_TARGETS);
    for (size_t i = 0; i < json_array_size(tm); i++) {
        json_t *e = json_array_get(tm, i);
        if (!json_is_string(e) || !json_string_length(e) || json_string_length(e) >= sizeof a->targets[0])
            return lr_errp(err, LR_E_INVALID, "target_modules",
                           CFG "target_modules entries must be module names of 1 to %zu bytes",
                           sizeof a->targets[0] - 1);
        memcpy(a->targets[a->n_targets++], json_string_value(e), json_string_length(e) + 1);
    }
    return 0;
}

int adapter_config_parse(const char *json, size_t len, adapter *a, lr_err *err) {
    if (len > ADAPTER_MAX_CONFIG)
        return lr_errp(err, LR_E_TOOBIG, NULL, CFG "%zu bytes is over the limit of %u", len, ADAPTER_MAX_CONFIG);
    json_error_t je;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &je);
    if (!root) return lr_errp(err, LR_E_INVALID, NULL, CFG "line %d: %s", je.line, je.text);
    if (!json_is_object(root)) {
        lr_errp(err, LR_E_INVALID, NULL, CFG "not a JSON object");
        goto fail;
    }
    json_t *pt = json_object_get(root, "peft_type");
    if (pt && !(json_is_string(pt) && !strcmp(json_string_value(pt), "LORA"))) {
        lr_errp(err, LR_E_INVALID, "peft_type", CFG "peft_type must be \"LORA\"");
        goto fail;
    }
    json_t *tt = json_object_get(root, "task_type");
    if (tt && !json_is_null(tt) && !(json_is_string(tt) && !strcmp(json_string_value(tt), "CAUSAL_LM"))) {
        lr_errp(err, LR_E_INVALID, "task_type",
                CFG "task_type %.40s is not supported: lorad trains and loads CAUSAL_LM adapters only",
                json_is_string(tt) ? json_string_value(tt) : "(not a string)");
        goto fail;
    }
    if (reject_set(root, err)) goto fail;
    json_t *r = json_object_get(root, "r");
    if (!json_is_integer(r) || json_integer_value(r) < 1 || json_integer_value(r) > 65536) {
        lr_errp(err, LR_E_INVALID, "r", CFG "r must be a positive integer");
        goto fail;
    }
    a->r = (int)json_integer_value(r);
    json_t *al = json_object_get(root, "lora_alpha");
    a->alpha = 8; /* PEFT's default */
    if (al && !json_is_null(al)) {
        if (!json_is_number(al) || !(json_number_value(al) > 0) || json_number_value(al) > 1e9) {
            lr_errp(err, LR_E_INVALID, "lora_alpha", CFG "lora_alpha must be a positive number");
            goto fail;
        }
        a->alpha = (float)json_number_value(al);
    }
    json_t *dr = json_object_get(root, "lora_dropout");
    a->dropout = 0;
    if (dr && !json_is_null(dr)) {
        if (!json_is_number(dr) || !(json_number_value(dr) >= 0 && json_number_value(dr) < 1)) {
            lr_errp(err, LR_E_INVALID, "lora_dropout", CFG "lora_dropout must be a number in [0, 1)");
            goto fail;
        }
        a->dropout = (float)json_number_value(dr);
    }
    a->use_rslora = a->use_dora = a->fan_in_fan_out = 0;
    if (cfg_bool(root, "use_rslora", &a->use_rslora, err) || cfg_bool(root, "use_dora", &a->use_dora, err) ||
        cfg_bool(root, "fan_in_fan_out", &a->fan_in_fan_out, err))
        goto fail;
    json_t *tm = json_object_get(root, "target_modules");
    if (!tm || json_is_null(tm)) {
        lr_errp(err, LR_E_INVALID, "target_modules", CFG "target_modules is required");
        goto fail;
    }
    if (parse_targets(tm, a, err)) goto fail;
    json_t *bm = json_object_get(root, "base_model_name_or_path");
    a->base_model[0] = 0;
    if (bm && !json_is_null(bm)) {
        if (!json_is_string(bm) || json_string_length(bm) >= sizeof a->base_model) {
            lr_errp(err, LR_E_INVALID, "base_model_name_or_path",
                    CFG "base_model_name_or_path must be a string of at most %zu bytes", sizeof a->base_model - 1);
            goto fail;
        }
        memcpy(a->base_model, json_string_value(bm), json_string_length(bm) + 1);
    }
    json_decref(root);
    return 0;
fail:
    json_decref(root);
    return -1;
}

/* ---- loading tensors ---- */

/* Splits a PEFT key into layout, layer, module and kind; -1 if it is not
 * a LoRA tensor of a decoder layer. */
static int parse_key(const char *key, hf_arch *arch, int *layer, char *module, size_t msz, adapter_kind *kind) {
    if (strncmp(key, PFX, strlen(PFX))) return -1;
    const char *p = key + strlen(PFX);
    if (!strncmp(p, "model.layers.", 13)) {
        *arch = ARCH_LLAMA;
        p += 13;
    } else if (!strncmp(p, "transformer.h.", 14)) {
        *arch = ARCH_GPT2;
        p += 14;
    } else {
        return -1;
    }
    if (*p < '0' || *p > '9' || (*p == '0' && p[1] != '.')) return -1;
    long n = 0;
    for (; *p >= '0' && *p <= '9'; p++)
        if ((n = n * 10 + (*p - '0')) >= ADAPTER_MAX_LAYERS) return -1;
    if (*p++ != '.') return -1;
    size_t len = strlen(p);
    for (int k = 0; k < 3; k++) {
        size_t sl = strlen(SUFFIX[k]);
        if (len > sl && !strcmp(p + len - sl, SUFFIX[k])) {
            if (len - sl >= msz) return -1;
            memcpy(module, p, len - sl);
            module[len - sl] = 0;
            if (module_index(*arch, module) < 0) return -1;
            *layer = (int)n;
            *kind = (adapter_kind)k;
            return 0;
        }
    }
    return -1;
}

static int cmp_tensor(const void *x, const void *y) {
    const adapter_tensor *a = x, *b = y;
    if (a->layer != b->layer) return a->layer - b->layer;
    int c = strcmp(a->module, b->module);
    return c ? c : (int)a->kind - (int)b->kind;
}

static int load_tensors(adapter *a, const st_file *f, const char *path, lr_err *err) {
    int arch_set = 0;
    for (size_t i = 0; i < st_count(f); i++) {
        const st_tensor *t = st_at(f, i);
        hf_arch arch;
        int layer;
        char module[24];
        adapter_kind kind;
        if (parse_key(t->name, &arch, &layer, module, sizeof module, &kind))
            return lr_errf(err, "%s: tensor '%.120s' is not a LoRA matrix of a decoder layer (lorad saves only those)",
                           path, t->name);
        if (arch_set && arch != a->arch)
            return lr_errf(err, "%s: keys of two model layouts (model.layers and transformer.h)", path);
        a->arch = arch;
        arch_set = 1;
        int want = kind == ADAPTER_MAGNITUDE ? 1 : 2;
        if (t->ndim != want || t->shape[0] <= 0 || t->shape[0] > (1 << 24) ||
            (want == 2 && (t->shape[1] <= 0 || t->shape[1] > (1 << 24))))
            return lr_errf(err, "%s: tensor '%.120s' must be a non-empty %d-D tensor", path, t->name, want);
        adapter_tensor *at = adapter_add(a, layer, module, kind, (int)t->shape[0], want == 2 ? (int)t->shape[1] : 1, err);
        if (!at || st_to_f32(t, at->data, (size_t)st_numel(t), err)) return lr_err_prefix(err, "%s: ", path);
    }
    if (!a->n_tensors) return lr_errf(err, "%s: no LoRA tensors", path);
    qsort(a->t, (size_t)a->n_tensors, sizeof *a->t, cmp_tensor);
    /* every module has its A and B, of rank r, and its magnitude under DoRA */
    for (int i = 0; i < a->n_tensors; i++) {
        const adapter_tensor *t = &a->t[i];
        const adapter_tensor *A = adapter_find(a, t->layer, t->module, ADAPTER_A);
        const adapter_tensor *B = adapter_find(a, t->layer, t->module, ADAPTER_B);
        const adapter_tensor *M = adapter_find(a, t->layer, t->module, ADAPTER_MAGNITUDE);
        if (!A || !B) return lr_errf(err, "%s: layer %d %s has lora_%s but no lora_%s", path, t->layer, t->module,
                                     A ? "A" : "B", A ? "B" : "A");
        if (A->rows != a->r || B->cols != a->r)
            return lr_errf(err, "%s: layer %d %s: lora_A is [%d, %d] and lora_B [%d, %d], r is %d", path, t->layer,
                           t->module, A->rows, A->cols, B->rows, B->cols, a->r);
        if (a->use_dora && (!M || M->rows != B->rows))
            return lr_errf(err, "%s: layer %d %s: use_dora needs lora_magnitude_vector of %d values", path, t->layer,
                           t->module, B->rows);
        if (!a->use_dora && M)
            return lr_errf(err, "%s: layer %d %s has lora_magnitude_vector but use_dora is false", path, t->layer,
                           t->module);
    }
    return 0;
}

int adapter_load(const char *dir, adapter **out, lr_err *err) {
    *out = NULL;
    char path[4096];
    char *text = NULL;
    size_t len;
    st_file *f = NULL;
    adapter *a = adapter_new();
    if (!a) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
    if (snprintf(path, sizeof path, "%s/adapter_config.json", dir) >= (int)sizeof path) {
        lr_errf(err, "%s: path too long", dir);
        goto fail;
    }
    if (lr_read_file(path, ADAPTER_MAX_CONFIG, &text, &len, err)) goto fail;
    if (adapter_config_parse(text, len, a, err)) {
        lr_err_prefix(err, "%s: ", dir);
        goto fail;
    }
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    if (st_open(path, &f, err) || load_tensors(a, f, path, err)) goto fail;
    free(text);
    st_close(f);
    *out = a;
    return 0;
fail:
    free(text);
    st_close(f);
    adapter_free(a);
    return -1;
}

/* ---- saving ---- */

/* A float as the double of its shortest decimal form (0.05f -> 0.05). */
static json_t *jfloat(float v) {
    char s[32];
    for (int p = 1; p <= 9; p++) {
        snprintf(s, sizeof s, "%.*g", p, (double)v);
        if ((float)strtod(s, NULL) == v) break;
    }
    return json_real(strtod(s, NULL));
}

static int cmp_str(const void *x, const void *y) { return strcmp(*(const char *const *)x, *(const char *const *)y); }

static char *config_json(const adapter *a) {
    json_t *o = json_object(), *tm;
    if (!o) return NULL;
    if (a->target_regex[0]) {
        tm = json_string(a->target_regex);
    } else {
        const char *names[ADAPTER_MAX_TARGETS];
        for (int i = 0; i < a->n_targets; i++) names[i] = a->targets[i];
        qsort(names, (size_t)a->n_targets, sizeof *names, cmp_str);
        tm = json_array();
        for (int i = 0; tm && i < a->n_targets; i++) json_array_append_new(tm, json_string(names[i]));
    }
    int bad = 0;
    bad |= json_object_set_new(o, "alpha_pattern", json_object());
    bad |= json_object_set_new(o, "auto_mapping", json_null());
    bad |= json_object_set_new(o, "base_model_name_or_path", a->base_model[0] ? json_string(a->base_model) : json_null());
    bad |= json_object_set_new(o, "bias", json_string("none"));
    bad |= json_object_set_new(o, "fan_in_fan_out", json_boolean(a->fan_in_fan_out));
    bad |= json_object_set_new(o, "inference_mode", json_true());
    bad |= json_object_set_new(o, "init_lora_weights", json_true());
    bad |= json_object_set_new(o, "layers_pattern", json_null());
    bad |= json_object_set_new(o, "layers_to_transform", json_null());
    bad |= json_object_set_new(o, "loftq_config", json_object());
    bad |= json_object_set_new(o, "lora_alpha", a->alpha == floorf(a->alpha) && a->alpha < 1e9f
                                                    ? json_integer((json_int_t)a->alpha)
                                                    : jfloat(a->alpha));
    bad |= json_object_set_new(o, "lora_dropout", jfloat(a->dropout));
    bad |= json_object_set_new(o, "megatron_config", json_null());
    bad |= json_object_set_new(o, "megatron_core", json_string("megatron.core"));
    bad |= json_object_set_new(o, "modules_to_save", json_null());
    bad |= json_object_set_new(o, "peft_type", json_string("LORA"));
    bad |= json_object_set_new(o, "r", json_integer(a->r));
    bad |= json_object_set_new(o, "rank_pattern", json_object());
    bad |= json_object_set_new(o, "revision", json_null());
    bad |= json_object_set_new(o, "target_modules", tm);
    bad |= json_object_set_new(o, "task_type", json_string("CAUSAL_LM"));
    bad |= json_object_set_new(o, "use_dora", json_boolean(a->use_dora));
    bad |= json_object_set_new(o, "use_rslora", json_boolean(a->use_rslora));
    /* PEFT writes json.dumps(indent=2, sort_keys=True), no newline at the end */
    char *s = bad ? NULL : jsonfmt_dumps(o, JSON_INDENT(2) | JSON_SORT_KEYS);
    json_decref(o);
    return s;
}

void adapter_base_name(const char *model_dir, char *out, size_t cap) {
    char path[4096];
    if (!cap) return;
    snprintf(path, sizeof path, "%s/config.json", model_dir);
    json_t *cfg = json_load_file(path, 0, NULL);
    const char *name = json_string_value(json_object_get(cfg, "_name_or_path"));
    char *abs = NULL;
    if (!name || !*name || strlen(name) >= cap) name = abs = realpath(model_dir, NULL);
    snprintf(out, cap, "%s", name ? name : model_dir);
    free(abs);
    json_decref(cfg);
}

int adapter_save(const adapter *a, const char *dir, lr_err *err) {
    char path[4096];
    int rc = -1;
    char *cfg = NULL;
    st_writer *w = NULL;
    if (a->r < 1 || !(a->alpha > 0) || !(a->dropout >= 0 && a->dropout < 1))
        return lr_errf(err, "adapter: r %d, lora_alpha %g, lora_dropout %g are not valid", a->r, (double)a->alpha,
                       (double)a->dropout);
    if (!a->n_targets && !a->target_regex[0]) return lr_errf(err, "adapter: no target_modules");
    if (lr_mkdirs(dir, err)) return -1;
    if (snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir) >= (int)sizeof path)
        return lr_errf(err, "%s: path too long", dir);
    if (!(w = st_writer_new()) || !(cfg = config_json(a))) {
        lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
        goto done;
    }
    for (int i = 0; i < a->n_tensors; i++) {
        const adapter_tensor *t = &a->t[i];
        char pre[160], key[192];
        if (!adapter_module_key(a->arch, t->layer, t->module, pre, sizeof pre) ||
            snprintf(key, sizeof key, "%s%s", pre, SUFFIX[t->kind]) >= (int)sizeof key) {
            lr_errf(err, "adapter: key of %s too long", t->module);
            goto done;
        }
        int64_t shape[2] = {t->rows, t->cols};
        if (st_writer_add(w, key, ST_F32, t->kind == ADAPTER_MAGNITUDE ? 1 : 2, shape, t->data, err)) goto done;
    }
    if (st_writer_meta(w, "format", "pt", err) || st_writer_write(w, path, err)) goto done;
    /* the config last, so that a directory with a config has its weights */
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    rc = lr_write_file_atomic(path, cfg, strlen(cfg), err);
done:
    free(cfg);
    st_writer_free(w);
    return rc;
}

/* ---- matching and checking ---- */

int adapter_targets_module(const adapter *a, hf_arch arch, int layer, const char *module) {
    char full[192];
    if (module_index(arch, module) < 0) return 0;
    if (!adapter_module_key(arch, layer, module, full, sizeof full)) return 0;
    const char *name = full + strlen(PFX); /* "model.layers.0.self_attn.q_proj" */
    if (a->target_regex[0]) {
        if (!strcmp(a->target_regex, "all-linear")) return 1;
        int ec;
        PCRE2_SIZE eo;
        pcre2_code *re = pcre2_compile((PCRE2_SPTR)a->target_regex, PCRE2_ZERO_TERMINATED,
                                       PCRE2_ANCHORED | PCRE2_ENDANCHORED | PCRE2_UTF, &ec, &eo, NULL);
        if (!re) return 0;
        pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
        int rc = md ? pcre2_match(re, (PCRE2_SPTR)name, strlen(name), 0, 0, md, NULL) : -1;
        pcre2_match_data_free(md);
        pcre2_code_free(re);
        return rc >= 0;
    }
    size_t nl = strlen(name);
    for (int i = 0; i < a->n_targets; i++) {
        size_t tl = strlen(a->targets[i]);
        if (!strcmp(name, a->targets[i])) return 1;
        if (nl > tl && name[nl - tl - 1] == '.' && !strcmp(name + nl - tl, a->targets[i])) return 1;
    }
    return 0;
}

int adapter_module_dims(const hf_config *c, const char *module, int *in, int *out) {
    int q = c->n_heads * c->head_dim, kv = c->n_kv_heads * c->head_dim;
    static const char *const names[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                        "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj",    "attn.c_attn",
                                        "attn.c_proj",      "mlp.c_fc",         "mlp.c_proj"};
    int dims[][2] = {{c->hidden, q},       {c->hidden, kv},           {c->hidden, kv},
                     {q, c->hidden},       {c->hidden, c->intermediate}, {c->hidden, c->intermediate},
                     {c->intermediate, c->hidden}, {c->hidden, 3 * c->hidden}, {c->hidden, c->hidden},
                     {c->hidden, c->intermediate}, {c->intermediate, c->hidden}};
    if (module_index(c->arch, module) < 0) return -1;
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        if (!strcmp(names[i], module)) {
            *in = dims[i][0];
            *out = dims[i][1];
            return 0;
        }
    return -1;
}

int adapter_check_model(const adapter *a, const hf_config *c, lr_err *err) {
    if (layout(a->arch) != layout(c->arch))
        return lr_errf(err, "the adapter's keys are for a %s model, the base model is %s",
                       layout(a->arch) == ARCH_GPT2 ? "GPT-2" : "Llama-family", c->arch_name);
    for (int i = 0; i < a->n_tensors; i++) {
        const adapter_tensor *t = &a->t[i];
        int in, out;
        if (t->layer >= c->n_layers)
            return lr_errf(err, "adapter has layer %d, the model has %d layers", t->layer, c->n_layers);
        if (adapter_module_dims(c, t->module, &in, &out))
            return lr_errf(err, "adapter module %s is not in a %s layer", t->module, c->arch_name);
        int er = t->kind == ADAPTER_A ? a->r : out, ec = t->kind == ADAPTER_A ? in : t->kind == ADAPTER_B ? a->r : 1;
        if (t->rows != er || t->cols != ec)
            return lr_errf(err, "adapter tensor %s is [%d, %d], the model needs [%d, %d]", t->key, t->rows, t->cols,
                           er, ec);
    }
    return 0;
}
