#include "proto/jobspec.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <strings.h>
#include <yaml.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

/* ---- names ---------------------------------------------------------------- */

static const char *const method_names[] = {"sft", "kl_sft", "dpo", "full_sft", "eval"};
static const char *const sched_names[] = {"cosine", "linear", "constant"};
static const char *const device_names[] = {"any", "cpu", "cuda"};
static const char *const tpl_names[] = {"auto", "chatml", "llama3", "mistral", "alpaca", "plain"};
static const char *const cdt_names[] = {"auto", "f32", "bf16"};
static const char *const target_sets[] = {"attn", "attn_mlp", "all-linear"};
/* Module names a target list may hold: the projections of llama/mistral/qwen2
 * and of GPT-2 (where "c_proj" means both attn.c_proj and mlp.c_proj, as a
 * PEFT suffix match does). */
static const char *const known_modules[] = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                            "up_proj", "down_proj", "c_attn", "c_proj", "c_fc",
                                            "attn.c_proj", "mlp.c_proj"};

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

const char *jobspec_method_name(job_method m) { return method_names[m]; }
const char *jobspec_device_name(job_device d) { return device_names[d]; }
const char *jobspec_template_name(chat_tpl t) { return tpl_names[t]; }
const char *jobspec_sched_name(lr_sched s) { return sched_names[s]; }
const char *jobspec_compute_dtype_name(compute_dt d) { return cdt_names[d]; }

static int name_index(const char *const *names, size_t n, const char *s) {
    for (size_t i = 0; i < n; i++)
        if (!strcmp(names[i], s)) return (int)i;
    return -1;
}

static void join_names(const char *const *names, size_t n, char *out, size_t cap) {
    out[0] = 0;
    for (size_t i = 0; i < n; i++) {
        size_t l = strlen(out);
        snprintf(out + l, cap - l, "%s%s", i ? ", " : "", names[i]);
    }
}

void jobspec_init(jobspec *s) {
    memset(s, 0, sizeof *s);
    s->training_files[0].weight = 1.0;
    s->method.type = METHOD_SFT;
    s->method.kl_lambda = 0.1;
    s->method.kl_tau = 1.0;
    s->method.beta = 0.1;
    s->eval.generation.max_new_tokens = 256;
    s->eval.generation.top_p = 1.0;
    s->eval.format.in_order = 1;
    s->hp.n_epochs = 3;
    s->hp.batch_size = 4;
    s->hp.grad_accum = 1;
    s->hp.learning_rate = 2e-4;
    s->hp.lr_scheduler = SCHED_COSINE;
    s->hp.max_grad_norm = 1.0;
    s->hp.adam_beta1 = 0.9;
    s->hp.adam_beta2 = 0.999;
    s->hp.adam_eps = 1e-8;
    s->hp.max_seq_len = 512;
    s->hp.val_ratio = 0.1;
    s->hp.logging_steps = 10;
    s->hp.eval_steps = 50;
    s->hp.save_steps = 100;
    s->hp.save_total_limit = 2;
    s->hp.seed = 42;
    s->hp.activation_checkpointing = -1;
    s->lora.r = 16;
    s->lora.alpha = 32;
    s->lora.dropout = 0.05;
    snprintf(s->lora.target_set, sizeof s->lora.target_set, "attn_mlp");
    s->chat_template = TPL_AUTO;
    s->device = DEV_ANY;
    s->max_retries = 3;
    s->resources.devices = 1;
    s->resources.co_train = 1;
    s->compute_dtype = CDT_AUTO;
}

/* ---- typed field readers ---------------------------------------------------- */

static int bad(lr_err *err, const char *param, const char *fmt, const char *what) {
    return lr_errp(err, LR_E_INVALID, param, fmt, param, what);
}

static int get_num(const json_t *v, const char *param, double lo, double hi, int lo_open,
                   double *out, lr_err *err) {
    if (!json_is_number(v)) return bad(err, param, "%s must be a number%s", "");
    double d = json_number_value(v);
    if (!isfinite(d) || d < lo || d > hi || (lo_open && d == lo)) {
        return lr_errp(err, LR_E_INVALID, param, "%s must be %s %g and <= %g (got %g)", param,
                       lo_open ? ">" : ">=", lo, hi, d);
    }
    *out = d;
    return 0;
}

static int get_int(const json_t *v, const char *param, long long lo, long long hi, long long *out,
                   lr_err *err) {
    long long x;
    if (json_is_integer(v)) {
        x = json_integer_value(v);
    } else if (json_is_real(v) && json_real_value(v) == floor(json_real_value(v)) &&
               fabs(json_real_value(v)) < 9e15) {
        x = (long long)json_real_value(v); /* YAML "1e3" style integers */
    } else {
        return bad(err, param, "%s must be an integer%s", "");
    }
    if (x < lo || x > hi)
        return lr_errp(err, LR_E_INVALID, param, "%s must be between %lld and %lld (got %lld)", param,
                       lo, hi, x);
    *out = x;
    return 0;
}

static int get_int32(const json_t *v, const char *param, int lo, int hi, int *out, lr_err *err) {
    long long x;
    if (get_int(v, param, lo, hi, &x, err)) return -1;
    *out = (int)x;
    return 0;
}

static int get_bool(const json_t *v, const char *param, int *out, lr_err *err) {
    if (!json_is_boolean(v)) return bad(err, param, "%s must be true or false%s", "");
    *out = json_is_true(v);
    return 0;
}

static int get_str(const json_t *v, const char *param, char *out, size_t cap, lr_err *err) {
    if (!json_is_string(v)) return bad(err, param, "%s must be a string%s", "");
    size_t n = json_string_length(v);
    if (n >= cap)
        return lr_errp(err, LR_E_INVALID, param, "%s is too long (%zu bytes, at most %zu)", param, n,
                       cap - 1);
    const char *s = json_string_value(v);
    if (memchr(s, 0, n)) return bad(err, param, "%s must not contain NUL bytes%s", "");
    memcpy(out, s, n + 1);
    return 0;
}

static int get_enum(const json_t *v, const char *param, const char *const *names, size_t n,
                    int *out, lr_err *err) {
    char buf[64], all[256];
    join_names(names, n, all, sizeof all);
    if (!json_is_string(v) || json_string_length(v) >= sizeof buf)
        return lr_errp(err, LR_E_INVALID, param, "%s must be one of: %s", param, all);
    snprintf(buf, sizeof buf, "%s", json_string_value(v));
    int i = name_index(names, n, buf);
    if (i < 0)
        return lr_errp(err, LR_E_INVALID, param, "%s: '%s' is not one of: %s", param, buf, all);
    *out = i;
    return 0;
}

static int check_object(const json_t *v, const char *param, const char *const *allowed, size_t n,
                        lr_err *err) {
    if (!json_is_object(v)) return bad(err, param, "%s must be an object%s", "");
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)v, key, val) {
        (void)val;
        if (name_index(allowed, n, key) < 0) {
            char all[768], p[128];
            join_names(allowed, n, all, sizeof all);
            snprintf(p, sizeof p, "%s%s%s", param, *param ? "." : "", key);
            return lr_errp(err, LR_E_INVALID, p, "unknown field '%s' (allowed here: %s)", p, all);
        }
    }
    return 0;
}

/* ---- sections ------------------------------------------------------------ */

static int parse_files(const json_t *v, jobspec *s, lr_err *err) {
    const char *P = "training_file";
    if (json_is_string(v)) {
        s->n_training_files = 1;
        s->training_files[0].weight = 1.0;
        if (get_str(v, P, s->training_files[0].name, sizeof s->training_files[0].name, err)) return -1;
        if (!s->training_files[0].name[0]) return bad(err, P, "%s must not be empty%s", "");
        return 0;
    }
    if (!json_is_array(v) || json_array_size(v) == 0 || json_array_size(v) > JOBSPEC_MAX_FILES)
        return lr_errp(err, LR_E_INVALID, P,
                       "training_file must be a dataset id or a list of 1 to %d {file, weight} entries",
                       JOBSPEC_MAX_FILES);
    size_t i;
    json_t *e;
    json_array_foreach(v, i, e) {
        char p[64];
        jobspec_file *f = &s->training_files[i];
        f->weight = 1.0;
        if (json_is_string(e)) {
            snprintf(p, sizeof p, "%s[%zu]", P, i);
            if (get_str(e, p, f->name, sizeof f->name, err)) return -1;
        } else {
            static const char *const keys[] = {"file", "weight"};
            snprintf(p, sizeof p, "%s[%zu]", P, i);
            if (check_object(e, p, keys, NELEM(keys), err)) return -1;
            snprintf(p, sizeof p, "%s[%zu].file", P, i);
            json_t *fv = json_object_get(e, "file");
            if (!fv) return lr_errp(err, LR_E_INVALID, p, "%s is required", p);
            if (get_str(fv, p, f->name, sizeof f->name, err)) return -1;
            json_t *wv = json_object_get(e, "weight");
            snprintf(p, sizeof p, "%s[%zu].weight", P, i);
            if (wv && get_num(wv, p, 0, 1e6, 1, &f->weight, err)) return -1;
        }
        if (!f->name[0]) return lr_errp(err, LR_E_INVALID, p, "%s must not be empty", p);
    }
    s->n_training_files = (int)json_array_size(v);
    return 0;
}

static int parse_method(const json_t *v, jobspec *s, lr_err *err) {
    static const char *const keys[] = {"type", "kl_lambda", "kl_tau", "beta", "reference_adapter", "adapter"};
    if (json_is_string(v)) { /* shorthand: method: dpo */
        int t;
        if (get_enum(v, "method", method_names, NELEM(method_names), &t, err)) return -1;
        s->method.type = (job_method)t;
        return 0;
    }
    if (check_object(v, "method", keys, NELEM(keys), err)) return -1;
    json_t *t = json_object_get(v, "type");
    if (!t) return lr_errp(err, LR_E_INVALID, "method.type", "method.type is required");
    int ti;
    if (get_enum(t, "method.type", method_names, NELEM(method_names), &ti, err)) return -1;
    s->method.type = (job_method)ti;
    json_t *x;
    if ((x = json_object_get(v, "kl_lambda"))) {
        if (s->method.type != METHOD_KL_SFT)
            return lr_errp(err, LR_E_INVALID, "method.kl_lambda", "method.kl_lambda applies to kl_sft only");
        if (get_num(x, "method.kl_lambda", 0, 1e4, 0, &s->method.kl_lambda, err)) return -1;
    }
    if ((x = json_object_get(v, "kl_tau"))) {
        if (s->method.type != METHOD_KL_SFT)
            return lr_errp(err, LR_E_INVALID, "method.kl_tau", "method.kl_tau applies to kl_sft only");
        if (get_num(x, "method.kl_tau", 0, 100, 1, &s->method.kl_tau, err)) return -1;
    }
    if ((x = json_object_get(v, "beta"))) {
        if (s->method.type != METHOD_DPO)
            return lr_errp(err, LR_E_INVALID, "method.beta", "method.beta applies to dpo only");
        if (get_num(x, "method.beta", 0, 100, 1, &s->method.beta, err)) return -1;
    }
    if ((x = json_object_get(v, "reference_adapter"))) {
        if (s->method.type != METHOD_DPO)
            return lr_errp(err, LR_E_INVALID, "method.reference_adapter",
                           "method.reference_adapter applies to dpo only");
        if (!json_is_null(x) && get_str(x, "method.reference_adapter", s->method.reference_adapter,
                                        sizeof s->method.reference_adapter, err))
            return -1;
    }
    if ((x = json_object_get(v, "adapter"))) {
        if (s->method.type != METHOD_EVAL)
            return lr_errp(err, LR_E_INVALID, "method.adapter", "method.adapter applies to eval only");
        if (!json_is_null(x) && get_str(x, "method.adapter", s->method.adapter, sizeof s->method.adapter, err))
            return -1;
    }
    return 0;
}

/* eval.format.sections[i]: a name, or {name, bullets, ends_with}. */
static int parse_section(const json_t *v, const char *p, jobspec_section *sec, lr_err *err) {
    static const char *const keys[] = {"name", "bullets", "ends_with"};
    char q[96];
    sec->bullets = -1;
    if (json_is_string(v)) {
        if (get_str(v, p, sec->name, sizeof sec->name, err)) return -1;
    } else {
        if (check_object(v, p, keys, NELEM(keys), err)) return -1;
        json_t *x = json_object_get(v, "name");
        snprintf(q, sizeof q, "%s.name", p);
        if (!x) return lr_errp(err, LR_E_INVALID, q, "%s is required", q);
        if (get_str(x, q, sec->name, sizeof sec->name, err)) return -1;
        snprintf(q, sizeof q, "%s.bullets", p);
        if ((x = json_object_get(v, "bullets")) && !json_is_null(x) && get_int32(x, q, 0, 1000, &sec->bullets, err))
            return -1;
        snprintf(q, sizeof q, "%s.ends_with", p);
        if ((x = json_object_get(v, "ends_with")) && !json_is_null(x) &&
            get_str(x, q, sec->ends_with, sizeof sec->ends_with, err))
            return -1;
    }
    if (!sec->name[0] || strchr(sec->name, '\n') || strchr(sec->name, ':'))
        return lr_errp(err, LR_E_INVALID, p, "%s: a section name must be non-empty, one line, without ':'", p);
    return 0;
}

static int parse_format(const json_t *v, jobspec_format *f, lr_err *err) {
    static const char *const keys[] = {"sections", "in_order", "exact_headers", "nothing_after", "regex"};
    const char *P = "eval.format";
    if (check_object(v, P, keys, NELEM(keys), err)) return -1;
    json_t *x;
    if ((x = json_object_get(v, "sections"))) {
        if (!json_is_array(x) || json_array_size(x) > JOBSPEC_MAX_SECTIONS)
            return lr_errp(err, LR_E_INVALID, "eval.format.sections",
                           "eval.format.sections must be a list of up to %d sections", JOBSPEC_MAX_SECTIONS);
        size_t i;
        json_t *e;
        json_array_foreach(x, i, e) {
            char p[64];
            snprintf(p, sizeof p, "eval.format.sections[%zu]", i);
            if (parse_section(e, p, &f->sections[i], err)) return -1;
            for (size_t k = 0; k < i; k++)
                if (!strcasecmp(f->sections[k].name, f->sections[i].name))
                    return lr_errp(err, LR_E_INVALID, p, "%s: section '%s' is listed twice", p, f->sections[i].name);
        }
        f->n_sections = (int)json_array_size(x);
    }
    if ((x = json_object_get(v, "in_order")) && get_bool(x, "eval.format.in_order", &f->in_order, err)) return -1;
    if ((x = json_object_get(v, "exact_headers")) && get_bool(x, "eval.format.exact_headers", &f->exact_headers, err))
        return -1;
    if ((x = json_object_get(v, "nothing_after")) && get_bool(x, "eval.format.nothing_after", &f->nothing_after, err))
        return -1;
    if (f->nothing_after && !f->n_sections)
        return lr_errp(err, LR_E_INVALID, "eval.format.nothing_after", "eval.format.nothing_after needs sections");
    if ((x = json_object_get(v, "regex")) && !json_is_null(x)) {
        if (get_str(x, "eval.format.regex", f->regex, sizeof f->regex, err)) return -1;
        int ec;
        PCRE2_SIZE off;
        pcre2_code *re = pcre2_compile((PCRE2_SPTR)f->regex, PCRE2_ZERO_TERMINATED, PCRE2_UTF, &ec, &off, NULL);
        if (!re) {
            PCRE2_UCHAR msg[160];
            pcre2_get_error_message(ec, msg, sizeof msg);
            return lr_errp(err, LR_E_INVALID, "eval.format.regex", "eval.format.regex: %s at offset %zu", (char *)msg,
                           (size_t)off);
        }
        pcre2_code_free(re);
    }
    return 0;
}

static int parse_eval(const json_t *v, jobspec *s, lr_err *err) {
    static const char *const keys[] = {"max_rows", "generation", "format"};
    static const char *const gkeys[] = {"max_new_tokens", "temperature", "top_p", "top_k", "seed", "stop"};
    if (check_object(v, "eval", keys, NELEM(keys), err)) return -1;
    json_t *x, *g;
    long long ll;
    if ((x = json_object_get(v, "max_rows")) && get_int32(x, "eval.max_rows", 0, 1000000, &s->eval.max_rows, err))
        return -1;
    if ((g = json_object_get(v, "generation"))) {
        if (check_object(g, "eval.generation", gkeys, NELEM(gkeys), err)) return -1;
        if ((x = json_object_get(g, "max_new_tokens")) &&
            get_int32(x, "eval.generation.max_new_tokens", 1, 65536, &s->eval.generation.max_new_tokens, err))
            return -1;
        if ((x = json_object_get(g, "temperature")) &&
            get_num(x, "eval.generation.temperature", 0, 100, 0, &s->eval.generation.temperature, err))
            return -1;
        if ((x = json_object_get(g, "top_p")) && get_num(x, "eval.generation.top_p", 0, 1, 1, &s->eval.generation.top_p, err))
            return -1;
        if ((x = json_object_get(g, "top_k")) && get_int32(x, "eval.generation.top_k", 0, 1000000, &s->eval.generation.top_k, err))
            return -1;
        if ((x = json_object_get(g, "seed"))) {
            if (get_int(x, "eval.generation.seed", 0, 0x7fffffffffffffffLL, &ll, err)) return -1;
            s->eval.generation.seed = (uint64_t)ll;
        }
        if ((x = json_object_get(g, "stop")) && !json_is_null(x)) {
            if (json_is_string(x)) {
                s->eval.generation.n_stop = 1;
                if (get_str(x, "eval.generation.stop", s->eval.generation.stop[0], sizeof s->eval.generation.stop[0], err))
                    return -1;
            } else if (json_is_array(x) && json_array_size(x) <= JOBSPEC_MAX_STOP) {
                size_t i;
                json_t *e;
                json_array_foreach(x, i, e) {
                    char p[48];
                    snprintf(p, sizeof p, "eval.generation.stop[%zu]", i);
                    if (get_str(e, p, s->eval.generation.stop[i], sizeof s->eval.generation.stop[i], err)) return -1;
                    if (!s->eval.generation.stop[i][0]) return lr_errp(err, LR_E_INVALID, p, "%s must not be empty", p);
                }
                s->eval.generation.n_stop = (int)json_array_size(x);
            } else {
                return lr_errp(err, LR_E_INVALID, "eval.generation.stop",
                               "eval.generation.stop must be a string or a list of up to %d strings", JOBSPEC_MAX_STOP);
            }
            if (s->eval.generation.n_stop == 1 && !s->eval.generation.stop[0][0])
                return lr_errp(err, LR_E_INVALID, "eval.generation.stop", "eval.generation.stop must not be empty");
        }
    }
    if ((x = json_object_get(v, "format")) && parse_format(x, &s->eval.format, err)) return -1;
    return 0;
}

static int parse_hp(const json_t *v, jobspec *s, lr_err *err) {
    static const char *const keys[] = {
        "n_epochs", "max_steps", "batch_size", "grad_accum", "learning_rate", "lr_scheduler",
        "warmup_ratio", "warmup_steps", "weight_decay", "max_grad_norm", "adam_beta1", "adam_beta2",
        "adam_eps", "max_seq_len", "packing", "val_ratio", "logging_steps", "eval_steps", "save_steps",
        "save_total_limit", "seed", "activation_checkpointing", "patience", "min_delta", "min_steps",
        "max_minutes"};
    if (check_object(v, "hyperparameters", keys, NELEM(keys), err)) return -1;
    json_t *x;
    long long ll;
    int e;
#define HP(key) (x = json_object_get(v, key))
    if (HP("n_epochs")) {
        if (json_is_string(x) && !strcmp(json_string_value(x), "auto")) s->hp.n_epochs = 3;
        else if (get_int32(x, "hyperparameters.n_epochs", 1, 1000, &s->hp.n_epochs, err)) return -1;
    }
    if (HP("max_steps")) {
        if (get_int(x, "hyperparameters.max_steps", 0, 100000000, &ll, err)) return -1;
        s->hp.max_steps = ll;
    }
    if (HP("batch_size") && get_int32(x, "hyperparameters.batch_size", 1, 1024, &s->hp.batch_size, err)) return -1;
    if (HP("grad_accum") && get_int32(x, "hyperparameters.grad_accum", 1, 1024, &s->hp.grad_accum, err)) return -1;
    if (HP("learning_rate") && get_num(x, "hyperparameters.learning_rate", 0, 1, 1, &s->hp.learning_rate, err)) return -1;
    if (HP("lr_scheduler")) {
        if (get_enum(x, "hyperparameters.lr_scheduler", sched_names, NELEM(sched_names), &e, err)) return -1;
        s->hp.lr_scheduler = (lr_sched)e;
    }
    if (HP("warmup_ratio") && get_num(x, "hyperparameters.warmup_ratio", 0, 0.99, 0, &s->hp.warmup_ratio, err)) return -1;
    if (HP("warmup_steps")) {
        if (get_int(x, "hyperparameters.warmup_steps", 0, 100000000, &ll, err)) return -1;
        s->hp.warmup_steps = ll;
    }
    if (HP("weight_decay") && get_num(x, "hyperparameters.weight_decay", 0, 10, 0, &s->hp.weight_decay, err)) return -1;
    if (HP("max_grad_norm") && get_num(x, "hyperparameters.max_grad_norm", 0, 1e6, 0, &s->hp.max_grad_norm, err)) return -1;
    if (HP("adam_beta1") && get_num(x, "hyperparameters.adam_beta1", 0, 0.9999999, 0, &s->hp.adam_beta1, err)) return -1;
    if (HP("adam_beta2") && get_num(x, "hyperparameters.adam_beta2", 0, 0.9999999, 0, &s->hp.adam_beta2, err)) return -1;
    if (HP("adam_eps") && get_num(x, "hyperparameters.adam_eps", 0, 1, 1, &s->hp.adam_eps, err)) return -1;
    if (HP("max_seq_len") && get_int32(x, "hyperparameters.max_seq_len", 8, 131072, &s->hp.max_seq_len, err)) return -1;
    if (HP("packing") && get_bool(x, "hyperparameters.packing", &s->hp.packing, err)) return -1;
    if (HP("val_ratio") && get_num(x, "hyperparameters.val_ratio", 0, 0.5, 0, &s->hp.val_ratio, err)) return -1;
    if (HP("logging_steps") && get_int32(x, "hyperparameters.logging_steps", 1, 1000000, &s->hp.logging_steps, err)) return -1;
    if (HP("eval_steps") && get_int32(x, "hyperparameters.eval_steps", 0, 1000000, &s->hp.eval_steps, err)) return -1;
    if (HP("save_steps") && get_int32(x, "hyperparameters.save_steps", 0, 1000000, &s->hp.save_steps, err)) return -1;
    if (HP("save_total_limit") && get_int32(x, "hyperparameters.save_total_limit", 0, 1000, &s->hp.save_total_limit, err)) return -1;
    if (HP("seed")) {
        if (get_int(x, "hyperparameters.seed", 0, 0x7fffffffffffffffLL, &ll, err)) return -1;
        s->hp.seed = (uint64_t)ll;
    }
    if (HP("activation_checkpointing")) {
        if (json_is_string(x) && !strcmp(json_string_value(x), "auto")) s->hp.activation_checkpointing = -1;
        else if (get_bool(x, "hyperparameters.activation_checkpointing", &s->hp.activation_checkpointing, err))
            return lr_errp(err, LR_E_INVALID, "hyperparameters.activation_checkpointing",
                           "hyperparameters.activation_checkpointing must be true, false or \"auto\"");
    }
    if (HP("patience") && get_int32(x, "hyperparameters.patience", 0, 1000000, &s->hp.patience, err)) return -1;
    if (HP("min_delta") && get_num(x, "hyperparameters.min_delta", 0, 1e6, 0, &s->hp.min_delta, err)) return -1;
    if (HP("min_steps")) {
        if (get_int(x, "hyperparameters.min_steps", 0, 100000000, &ll, err)) return -1;
        s->hp.min_steps = ll;
    }
    if (HP("max_minutes") && get_num(x, "hyperparameters.max_minutes", 0, 1e6, 0, &s->hp.max_minutes, err)) return -1;
#undef HP
    return 0;
}

/* lora.quantize, indexed by jobspec.lora.quantize (kq_type's order) */
static const char *const quant_names[] = {"none", "nf4", "fp4"};

static int parse_lora(const json_t *v, jobspec *s, lr_err *err) {
    static const char *const keys[] = {"r", "alpha", "dropout", "targets", "use_dora", "use_rslora", "quantize",
                                       "double_quant"};
    if (check_object(v, "lora", keys, NELEM(keys), err)) return -1;
    json_t *x;
    if ((x = json_object_get(v, "r")) && get_int32(x, "lora.r", 1, 1024, &s->lora.r, err)) return -1;
    if ((x = json_object_get(v, "alpha")) && get_num(x, "lora.alpha", 0, 1e6, 1, &s->lora.alpha, err)) return -1;
    if ((x = json_object_get(v, "dropout")) && get_num(x, "lora.dropout", 0, 0.99, 0, &s->lora.dropout, err)) return -1;
    if ((x = json_object_get(v, "use_dora")) && get_bool(x, "lora.use_dora", &s->lora.use_dora, err)) return -1;
    if ((x = json_object_get(v, "use_rslora")) && get_bool(x, "lora.use_rslora", &s->lora.use_rslora, err)) return -1;
    if ((x = json_object_get(v, "quantize")) &&
        get_enum(x, "lora.quantize", quant_names, NELEM(quant_names), &s->lora.quantize, err))
        return -1;
    if ((x = json_object_get(v, "double_quant")) && get_bool(x, "lora.double_quant", &s->lora.double_quant, err))
        return -1;
    if ((x = json_object_get(v, "targets"))) {
        if (json_is_string(x)) {
            char all[128];
            join_names(target_sets, NELEM(target_sets), all, sizeof all);
            const char *t = json_string_value(x);
            if (name_index(target_sets, NELEM(target_sets), t) < 0)
                return lr_errp(err, LR_E_INVALID, "lora.targets",
                               "lora.targets: '%.64s' is not one of: %s, or a list of module names", t, all);
            snprintf(s->lora.target_set, sizeof s->lora.target_set, "%s", t);
            s->lora.n_targets = 0;
        } else if (json_is_array(x) && json_array_size(x) > 0 && json_array_size(x) <= JOBSPEC_MAX_TARGETS) {
            size_t i;
            json_t *e;
            char all[256], p[48];
            join_names(known_modules, NELEM(known_modules), all, sizeof all);
            json_array_foreach(x, i, e) {
                snprintf(p, sizeof p, "lora.targets[%zu]", i);
                if (get_str(e, p, s->lora.targets[i], sizeof s->lora.targets[i], err)) return -1;
                if (name_index(known_modules, NELEM(known_modules), s->lora.targets[i]) < 0)
                    return lr_errp(err, LR_E_INVALID, p, "%s: '%s' is not a module lorad can adapt (%s)", p,
                                   s->lora.targets[i], all);
            }
            s->lora.n_targets = (int)json_array_size(x);
            snprintf(s->lora.target_set, sizeof s->lora.target_set, "list");
        } else {
            return lr_errp(err, LR_E_INVALID, "lora.targets",
                           "lora.targets must be attn, attn_mlp, all-linear or a list of 1 to %d module names",
                           JOBSPEC_MAX_TARGETS);
        }
    }
    return 0;
}

int jobspec_from_json(const json_t *obj, jobspec *s, lr_err *err) {
    static const char *const keys[] = {"name", "model", "training_file", "validation_file", "method",
                                       "hyperparameters", "lora", "chat_template", "system_prompt",
                                       "device", "priority", "max_retries", "eval", "resources",
                                       "compute_dtype"};
    static const char *const res_keys[] = {"devices", "co_train"};
    jobspec_init(s);
    if (!json_is_object(obj)) return lr_errp(err, LR_E_INVALID, "", "a job spec must be a JSON object");
    if (check_object(obj, "", keys, NELEM(keys), err)) return -1;
    json_t *x;
    int e;
    if ((x = json_object_get(obj, "name")) && !json_is_null(x) &&
        get_str(x, "name", s->name, sizeof s->name, err))
        return -1;
    if (!(x = json_object_get(obj, "model")))
        return lr_errp(err, LR_E_INVALID, "model", "model is required (a registered model name)");
    if (get_str(x, "model", s->model, sizeof s->model, err)) return -1;
    if (!s->model[0]) return lr_errp(err, LR_E_INVALID, "model", "model must not be empty");
    if (!(x = json_object_get(obj, "training_file")))
        return lr_errp(err, LR_E_INVALID, "training_file", "training_file is required (a dataset id)");
    if (parse_files(x, s, err)) return -1;
    if ((x = json_object_get(obj, "validation_file")) && !json_is_null(x) &&
        get_str(x, "validation_file", s->validation_file, sizeof s->validation_file, err))
        return -1;
    if ((x = json_object_get(obj, "method")) && parse_method(x, s, err)) return -1;
    if ((x = json_object_get(obj, "eval"))) {
        if (s->method.type != METHOD_EVAL)
            return lr_errp(err, LR_E_INVALID, "eval", "eval applies to method eval only");
        if (parse_eval(x, s, err)) return -1;
    }
    if ((x = json_object_get(obj, "hyperparameters")) && parse_hp(x, s, err)) return -1;
    if ((x = json_object_get(obj, "lora")) && parse_lora(x, s, err)) return -1;
    if ((x = json_object_get(obj, "chat_template"))) {
        if (get_enum(x, "chat_template", tpl_names, NELEM(tpl_names), &e, err)) return -1;
        s->chat_template = (chat_tpl)e;
    }
    if ((x = json_object_get(obj, "system_prompt")) && !json_is_null(x) &&
        get_str(x, "system_prompt", s->system_prompt, sizeof s->system_prompt, err))
        return -1;
    if ((x = json_object_get(obj, "device"))) {
        if (get_enum(x, "device", device_names, NELEM(device_names), &e, err)) return -1;
        s->device = (job_device)e;
    }
    if ((x = json_object_get(obj, "priority")) && get_int32(x, "priority", -100, 100, &s->priority, err)) return -1;
    if ((x = json_object_get(obj, "max_retries")) && get_int32(x, "max_retries", 0, 100, &s->max_retries, err)) return -1;
    if ((x = json_object_get(obj, "resources"))) {
        json_t *d;
        if (check_object(x, "resources", res_keys, NELEM(res_keys), err)) return -1;
        if ((d = json_object_get(x, "devices")) &&
            get_int32(d, "resources.devices", 1, JOBSPEC_MAX_DEVICES, &s->resources.devices, err))
            return -1;
        if ((d = json_object_get(x, "co_train")) && get_bool(d, "resources.co_train", &s->resources.co_train, err))
            return -1;
    }
    if ((x = json_object_get(obj, "compute_dtype"))) {
        if (get_enum(x, "compute_dtype", cdt_names, NELEM(cdt_names), &e, err)) return -1;
        s->compute_dtype = (compute_dt)e;
    }

    /* Rules that tie fields together. */
    if (s->hp.warmup_ratio > 0 && s->hp.warmup_steps > 0)
        return lr_errp(err, LR_E_INVALID, "hyperparameters.warmup_steps",
                       "give hyperparameters.warmup_ratio or warmup_steps, not both");
    if (s->validation_file[0] && json_object_get(json_object_get(obj, "hyperparameters"), "val_ratio") &&
        s->hp.val_ratio > 0)
        return lr_errp(err, LR_E_INVALID, "hyperparameters.val_ratio",
                       "hyperparameters.val_ratio splits the training file; it cannot be used with validation_file");
    if (s->validation_file[0]) s->hp.val_ratio = 0;
    if (s->lora.use_dora && s->method.type == METHOD_FULL_SFT)
        return lr_errp(err, LR_E_INVALID, "lora.use_dora", "lora.use_dora has no meaning with method full_sft");
    if (s->lora.quantize && s->method.type == METHOD_FULL_SFT)
        return lr_errp(err, LR_E_INVALID, "lora.quantize",
                       "lora.quantize keeps the base frozen in 4 bits; method full_sft trains it: use quantize none");
    if (s->lora.double_quant && !s->lora.quantize)
        return lr_errp(err, LR_E_INVALID, "lora.double_quant", "lora.double_quant needs lora.quantize nf4 or fp4");
    return 0;
}

json_t *jobspec_to_json(const jobspec *s) {
    json_t *o = json_object();
    json_object_set_new(o, "name", json_string(s->name));
    json_object_set_new(o, "model", json_string(s->model));
    if (s->n_training_files == 1 && s->training_files[0].weight == 1.0) {
        json_object_set_new(o, "training_file", json_string(s->training_files[0].name));
    } else {
        json_t *a = json_array();
        for (int i = 0; i < s->n_training_files; i++)
            json_array_append_new(a, json_pack("{s:s,s:f}", "file", s->training_files[i].name, "weight",
                                               s->training_files[i].weight));
        json_object_set_new(o, "training_file", a);
    }
    json_object_set_new(o, "validation_file", s->validation_file[0] ? json_string(s->validation_file) : json_null());

    json_t *m = json_pack("{s:s}", "type", method_names[s->method.type]);
    if (s->method.type == METHOD_KL_SFT) {
        json_object_set_new(m, "kl_lambda", json_real(s->method.kl_lambda));
        json_object_set_new(m, "kl_tau", json_real(s->method.kl_tau));
    }
    if (s->method.type == METHOD_DPO) {
        json_object_set_new(m, "beta", json_real(s->method.beta));
        json_object_set_new(m, "reference_adapter",
                            s->method.reference_adapter[0] ? json_string(s->method.reference_adapter) : json_null());
    }
    if (s->method.type == METHOD_EVAL) {
        json_object_set_new(m, "adapter", s->method.adapter[0] ? json_string(s->method.adapter) : json_null());
        json_t *e = json_object(), *g = json_object(), *f = json_object(), *secs = json_array();
        json_object_set_new(e, "max_rows", json_integer(s->eval.max_rows));
        json_object_set_new(g, "max_new_tokens", json_integer(s->eval.generation.max_new_tokens));
        json_object_set_new(g, "temperature", json_real(s->eval.generation.temperature));
        json_object_set_new(g, "top_p", json_real(s->eval.generation.top_p));
        json_object_set_new(g, "top_k", json_integer(s->eval.generation.top_k));
        json_object_set_new(g, "seed", json_integer((json_int_t)s->eval.generation.seed));
        json_t *stop = json_array();
        for (int i = 0; i < s->eval.generation.n_stop; i++) json_array_append_new(stop, json_string(s->eval.generation.stop[i]));
        json_object_set_new(g, "stop", stop);
        json_object_set_new(e, "generation", g);
        for (int i = 0; i < s->eval.format.n_sections; i++) {
            const jobspec_section *sec = &s->eval.format.sections[i];
            json_t *so = json_pack("{s:s}", "name", sec->name);
            json_object_set_new(so, "bullets", sec->bullets >= 0 ? json_integer(sec->bullets) : json_null());
            json_object_set_new(so, "ends_with", sec->ends_with[0] ? json_string(sec->ends_with) : json_null());
            json_array_append_new(secs, so);
        }
        json_object_set_new(f, "sections", secs);
        json_object_set_new(f, "in_order", json_boolean(s->eval.format.in_order));
        json_object_set_new(f, "exact_headers", json_boolean(s->eval.format.exact_headers));
        json_object_set_new(f, "nothing_after", json_boolean(s->eval.format.nothing_after));
        json_object_set_new(f, "regex", s->eval.format.regex[0] ? json_string(s->eval.format.regex) : json_null());
        json_object_set_new(e, "format", f);
        json_object_set_new(o, "eval", e);
    }
    json_object_set_new(o, "method", m);

    json_t *h = json_object();
    json_object_set_new(h, "n_epochs", json_integer(s->hp.n_epochs));
    json_object_set_new(h, "max_steps", json_integer(s->hp.max_steps));
    json_object_set_new(h, "batch_size", json_integer(s->hp.batch_size));
    json_object_set_new(h, "grad_accum", json_integer(s->hp.grad_accum));
    json_object_set_new(h, "learning_rate", json_real(s->hp.learning_rate));
    json_object_set_new(h, "lr_scheduler", json_string(sched_names[s->hp.lr_scheduler]));
    json_object_set_new(h, "warmup_ratio", json_real(s->hp.warmup_ratio));
    json_object_set_new(h, "warmup_steps", json_integer(s->hp.warmup_steps));
    json_object_set_new(h, "weight_decay", json_real(s->hp.weight_decay));
    json_object_set_new(h, "max_grad_norm", json_real(s->hp.max_grad_norm));
    json_object_set_new(h, "adam_beta1", json_real(s->hp.adam_beta1));
    json_object_set_new(h, "adam_beta2", json_real(s->hp.adam_beta2));
    json_object_set_new(h, "adam_eps", json_real(s->hp.adam_eps));
    json_object_set_new(h, "max_seq_len", json_integer(s->hp.max_seq_len));
    json_object_set_new(h, "packing", json_boolean(s->hp.packing));
    json_object_set_new(h, "val_ratio", json_real(s->hp.val_ratio));
    json_object_set_new(h, "logging_steps", json_integer(s->hp.logging_steps));
    json_object_set_new(h, "eval_steps", json_integer(s->hp.eval_steps));
    json_object_set_new(h, "save_steps", json_integer(s->hp.save_steps));
    json_object_set_new(h, "save_total_limit", json_integer(s->hp.save_total_limit));
    json_object_set_new(h, "seed", json_integer((json_int_t)s->hp.seed));
    json_object_set_new(h, "activation_checkpointing",
                        s->hp.activation_checkpointing < 0 ? json_string("auto")
                                                           : json_boolean(s->hp.activation_checkpointing));
    json_object_set_new(h, "patience", json_integer(s->hp.patience));
    json_object_set_new(h, "min_delta", json_real(s->hp.min_delta));
    json_object_set_new(h, "min_steps", json_integer(s->hp.min_steps));
    json_object_set_new(h, "max_minutes", json_real(s->hp.max_minutes));
    json_object_set_new(o, "hyperparameters", h);

    json_t *l = json_object();
    json_object_set_new(l, "r", json_integer(s->lora.r));
    json_object_set_new(l, "alpha", json_real(s->lora.alpha));
    json_object_set_new(l, "dropout", json_real(s->lora.dropout));
    if (s->lora.n_targets > 0) {
        json_t *a = json_array();
        for (int i = 0; i < s->lora.n_targets; i++) json_array_append_new(a, json_string(s->lora.targets[i]));
        json_object_set_new(l, "targets", a);
    } else {
        json_object_set_new(l, "targets", json_string(s->lora.target_set));
    }
    json_object_set_new(l, "use_dora", json_boolean(s->lora.use_dora));
    json_object_set_new(l, "use_rslora", json_boolean(s->lora.use_rslora));
    json_object_set_new(l, "quantize", json_string(quant_names[s->lora.quantize]));
    json_object_set_new(l, "double_quant", json_boolean(s->lora.double_quant));
    json_object_set_new(o, "lora", l);

    json_object_set_new(o, "chat_template", json_string(tpl_names[s->chat_template]));
    json_object_set_new(o, "system_prompt", s->system_prompt[0] ? json_string(s->system_prompt) : json_null());
    json_object_set_new(o, "device", json_string(device_names[s->device]));
    json_object_set_new(o, "priority", json_integer(s->priority));
    json_object_set_new(o, "max_retries", json_integer(s->max_retries));
    json_object_set_new(o, "resources", json_pack("{s:i,s:b}", "devices", s->resources.devices, "co_train",
                                                      s->resources.co_train));
    json_object_set_new(o, "compute_dtype", json_string(cdt_names[s->compute_dtype]));
    return o;
}

/* ---- YAML -> JSON ---------------------------------------------------------- */

#define YAML_MAX_DEPTH 32
#define YAML_MAX_NODES 100000

typedef struct {
    yaml_parser_t p;
    int nodes;
    lr_err *err;
} yctx;

static int y_next(yctx *y, yaml_event_t *ev) {
    if (!yaml_parser_parse(&y->p, ev))
        return lr_errp(y->err, LR_E_INVALID, "", "YAML line %zu: %s", y->p.problem_mark.line + 1,
                       y->p.problem ? y->p.problem : "syntax error");
    if (++y->nodes > YAML_MAX_NODES) {
        yaml_event_delete(ev);
        return lr_errp(y->err, LR_E_TOOBIG, "", "YAML document has too many nodes");
    }
    return 0;
}

/* A plain scalar is typed as YAML 1.2's core schema does; quoted ones are strings. */
static json_t *y_scalar(const yaml_event_t *ev) {
    const char *s = (const char *)ev->data.scalar.value;
    size_t n = ev->data.scalar.length;
    if (ev->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) return json_stringn(s, n);
    if (n == 0 || !strcmp(s, "~") || !strcmp(s, "null") || !strcmp(s, "Null") || !strcmp(s, "NULL"))
        return json_null();
    if (!strcmp(s, "true") || !strcmp(s, "True") || !strcmp(s, "TRUE")) return json_true();
    if (!strcmp(s, "false") || !strcmp(s, "False") || !strcmp(s, "FALSE")) return json_false();
    char *end;
    const char *q = s + (s[0] == '+' || s[0] == '-');
    if (isdigit((unsigned char)q[0]) || (q[0] == '.' && isdigit((unsigned char)q[1]))) {
        long long i = strtoll(s, &end, 10);
        if (*end == 0 && end != s) return json_integer(i);
        double d = strtod(s, &end);
        if (*end == 0 && end != s && isfinite(d)) return json_real(d);
    }
    return json_stringn(s, n);
}

static int y_node(yctx *y, yaml_event_t *ev, int depth, json_t **out);

static int y_collection(yctx *y, int is_map, int depth, json_t **out) {
    json_t *c = is_map ? json_object() : json_array();
    for (;;) {
        yaml_event_t ev;
        if (y_next(y, &ev)) goto fail;
        if (ev.type == (is_map ? YAML_MAPPING_END_EVENT : YAML_SEQUENCE_END_EVENT)) {
            yaml_event_delete(&ev);
            break;
        }
        if (is_map) {
            if (ev.type != YAML_SCALAR_EVENT) {
                yaml_event_delete(&ev);
                lr_errp(y->err, LR_E_INVALID, "", "YAML line %zu: mapping keys must be plain strings",
                        y->p.mark.line + 1);
                goto fail;
            }
            char key[256];
            snprintf(key, sizeof key, "%.*s", (int)ev.data.scalar.length, (const char *)ev.data.scalar.value);
            size_t line = ev.start_mark.line + 1;
            yaml_event_delete(&ev);
            if (json_object_get(c, key)) {
                lr_errp(y->err, LR_E_INVALID, key, "YAML line %zu: duplicate key '%s'", line, key);
                goto fail;
            }
            yaml_event_t vev;
            json_t *v;
            if (y_next(y, &vev)) goto fail;
            if (y_node(y, &vev, depth + 1, &v)) goto fail;
            json_object_set_new(c, key, v);
        } else {
            json_t *v;
            if (y_node(y, &ev, depth + 1, &v)) goto fail;
            json_array_append_new(c, v);
        }
    }
    *out = c;
    return 0;
fail:
    json_decref(c);
    return -1;
}

/* Consumes ev (deletes it) and builds the node it starts. */
static int y_node(yctx *y, yaml_event_t *ev, int depth, json_t **out) {
    int rc = -1;
    if (depth > YAML_MAX_DEPTH) {
        lr_errp(y->err, LR_E_INVALID, "", "YAML nesting is deeper than %d", YAML_MAX_DEPTH);
    } else if (ev->type == YAML_ALIAS_EVENT ||
               (ev->type == YAML_SCALAR_EVENT && ev->data.scalar.anchor) ||
               (ev->type == YAML_MAPPING_START_EVENT && ev->data.mapping_start.anchor) ||
               (ev->type == YAML_SEQUENCE_START_EVENT && ev->data.sequence_start.anchor)) {
        /* Anchors make a small file expand without bound; a job spec needs none. */
        lr_errp(y->err, LR_E_INVALID, "", "YAML line %zu: anchors and aliases are not supported in job specs",
                ev->start_mark.line + 1);
    } else if (ev->type == YAML_SCALAR_EVENT) {
        *out = y_scalar(ev);
        rc = *out ? 0 : lr_errp(y->err, LR_E_INVALID, "", "YAML line %zu: invalid UTF-8", ev->start_mark.line + 1);
    } else if (ev->type == YAML_MAPPING_START_EVENT) {
        rc = y_collection(y, 1, depth, out);
    } else if (ev->type == YAML_SEQUENCE_START_EVENT) {
        rc = y_collection(y, 0, depth, out);
    } else {
        lr_errp(y->err, LR_E_INVALID, "", "YAML line %zu: unexpected content", ev->start_mark.line + 1);
    }
    yaml_event_delete(ev);
    return rc;
}

static int yaml_to_json(const char *text, size_t len, json_t **out, lr_err *err) {
    yctx y = {.err = err};
    json_t *doc = NULL;
    if (!yaml_parser_initialize(&y.p)) return lr_errp(err, LR_E_NOMEM, "", "out of memory");
    yaml_parser_set_input_string(&y.p, (const unsigned char *)text, len);
    yaml_event_t ev;
    int rc = -1;
    /* stream start, document start, root node, document end, stream end */
    if (y_next(&y, &ev)) goto done;
    yaml_event_delete(&ev);
    if (y_next(&y, &ev)) goto done;
    if (ev.type == YAML_STREAM_END_EVENT) {
        yaml_event_delete(&ev);
        lr_errp(err, LR_E_INVALID, "", "the job spec is empty");
        goto done;
    }
    yaml_event_delete(&ev);
    if (y_next(&y, &ev)) goto done;
    if (y_node(&y, &ev, 0, &doc)) goto done;
    if (y_next(&y, &ev)) goto done;
    yaml_event_delete(&ev);
    if (y_next(&y, &ev)) goto done;
    if (ev.type != YAML_STREAM_END_EVENT) {
        yaml_event_delete(&ev);
        lr_errp(err, LR_E_INVALID, "", "the job spec must be one YAML document");
        goto done;
    }
    yaml_event_delete(&ev);
    *out = doc;
    doc = NULL;
    rc = 0;
done:
    json_decref(doc);
    yaml_parser_delete(&y.p);
    return rc;
}

int jobspec_parse_text(const char *text, size_t len, json_t **out, lr_err *err) {
    *out = NULL;
    if (len > JOBSPEC_MAX_TEXT)
        return lr_errp(err, LR_E_TOOBIG, "", "the job spec is %zu bytes; the limit is %u", len, JOBSPEC_MAX_TEXT);
    size_t i = 0;
    while (i < len && isspace((unsigned char)text[i])) i++;
    if (i < len && text[i] == '{') {
        json_error_t je;
        json_t *j = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
        if (!j) return lr_errp(err, LR_E_INVALID, "", "invalid JSON at line %d, column %d: %s", je.line, je.column, je.text);
        *out = j;
        return 0;
    }
    return yaml_to_json(text, len, out, err);
}

/* ---- --set a.b.c=value ---------------------------------------------------- */

static int is_hp_key(const char *k) {
    static const char *const keys[] = {
        "n_epochs", "max_steps", "batch_size", "grad_accum", "learning_rate", "lr_scheduler",
        "warmup_ratio", "warmup_steps", "weight_decay", "max_grad_norm", "adam_beta1", "adam_beta2",
        "adam_eps", "max_seq_len", "packing", "val_ratio", "logging_steps", "eval_steps", "save_steps",
        "save_total_limit", "seed", "activation_checkpointing", "patience", "min_delta", "min_steps",
        "max_minutes"};
    return name_index(keys, NELEM(keys), k) >= 0;
}

int jobspec_set(json_t *doc, const char *assignment, lr_err *err) {
    const char *eq = strchr(assignment, '=');
    if (!eq || eq == assignment)
        return lr_errp(err, LR_E_INVALID, "", "'%.100s' is not of the form key=value (e.g. lora.r=32)", assignment);
    char path[256];
    size_t pl = (size_t)(eq - assignment);
    if (pl >= sizeof path) return lr_errp(err, LR_E_INVALID, "", "key too long in '%.100s'", assignment);
    memcpy(path, assignment, pl);
    path[pl] = 0;
    /* A bare hyperparameter name is the short form people type. */
    if (!strchr(path, '.') && is_hp_key(path)) {
        static const char pre[] = "hyperparameters.";
        memmove(path + sizeof pre - 1, path, pl + 1); /* hp names are short: it fits */
        memcpy(path, pre, sizeof pre - 1);
    }
    /* The value is typed as a YAML value would be: 32, 1e-4, true, [a, b], text. */
    const char *val = eq + 1;
    size_t vl = strlen(val);
    char *wrapped = malloc(vl + 8);
    if (!wrapped) return lr_errp(err, LR_E_NOMEM, "", "out of memory");
    memcpy(wrapped, "v: ", 3);
    memcpy(wrapped + 3, val, vl + 1);
    json_t *parsed = NULL;
    int rc = yaml_to_json(wrapped, vl + 3, &parsed, err);
    free(wrapped);
    if (rc) return lr_err_prefix(err, "--set %s: ", path);
    json_t *v = json_incref(json_object_get(parsed, "v"));
    json_decref(parsed);
    if (!v) v = json_null();

    json_t *cur = doc;
    char *save = NULL, *tok = strtok_r(path, ".", &save);
    while (tok) {
        char *next = strtok_r(NULL, ".", &save);
        if (!json_is_object(cur)) {
            json_decref(v);
            return lr_errp(err, LR_E_INVALID, "", "--set: '%s' is not inside an object", tok);
        }
        if (!next) {
            json_object_set_new(cur, tok, v);
            return 0;
        }
        json_t *child = json_object_get(cur, tok);
        if (!child) {
            child = json_object();
            json_object_set_new(cur, tok, child);
        }
        cur = child;
        tok = next;
    }
    json_decref(v);
    return lr_errp(err, LR_E_INVALID, "", "--set: empty key");
}
