/* jobspec: the job schema as one table (docs/jobspec-table.md).
 *
 * Each field of the spec is one row of fields[] below: its dotted path, type,
 * place in the struct, range or enum names, default (JSON text), one-sentence
 * help and flags. The parser, jobspec_init's defaults, the allowed keys of
 * every object, jobspec_to_json, the bare names of `--set`, the validation
 * messages and GET /v1/jobspec (jobspec_schema_json) all come from it; only
 * the rules that tie fields together are code (spec_rules). proto/openapi.yaml
 * holds the same schema for readers without a server, and
 * tests/unit/test_jobspec_schema.c fails when the two disagree. A field added
 * to the struct gets a row here, beside the rows of its object. YAML text is
 * read by proto/yamljson.c. */
#include "proto/jobspec.h"
#include "proto/yamljson.h"

#include <ctype.h>
#include <math.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <strings.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

/* ---- names ---------------------------------------------------------------- */

static const char *const method_names[] = {"sft", "kl_sft", "dpo", "full_sft", "eval"};
static const char *const sched_names[] = {"cosine", "linear", "constant"};
static const char *const device_names[] = {"any", "cpu", "cuda"};
static const char *const tpl_names[] = {"auto", "chatml", "llama3", "mistral", "alpaca", "plain"};
static const char *const cdt_names[] = {"auto", "f32", "bf16"};
/* lora.quantize, indexed by jobspec.lora.quantize (kq_type's order) */
static const char *const quant_names[] = {"none", "nf4", "fp4"};
static const char *const target_sets[] = {"attn", "attn_mlp", "all-linear"};
/* Module names a target list may hold: the projections of llama/mistral/qwen2
 * and of GPT-2 (where "c_proj" means both attn.c_proj and mlp.c_proj, as a
 * PEFT suffix match does). */
static const char *const known_modules[] = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                            "up_proj", "down_proj", "c_attn", "c_proj", "c_fc",
                                            "attn.c_proj", "mlp.c_proj"};

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

/* Enum members are read and written as int through the table. */
_Static_assert(sizeof(job_method) == sizeof(int) && sizeof(lr_sched) == sizeof(int) &&
                   sizeof(job_device) == sizeof(int) && sizeof(chat_tpl) == sizeof(int) &&
                   sizeof(compute_dt) == sizeof(int),
               "jobspec enums must be int-sized");

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

/* ---- fields with a shape of their own --------------------------------------- */

/* training_file: one dataset id, or a list of ids and {file, weight}. */
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

static json_t *write_files(const jobspec *s) {
    if (s->n_training_files == 1 && s->training_files[0].weight == 1.0)
        return json_string(s->training_files[0].name);
    json_t *a = json_array();
    for (int i = 0; i < s->n_training_files; i++)
        json_array_append_new(a, json_pack("{s:s,s:f}", "file", s->training_files[i].name, "weight",
                                           s->training_files[i].weight));
    return a;
}

/* lora.targets: a named set, or a list of module names. */
static int parse_targets(const json_t *x, jobspec *s, lr_err *err) {
    if (json_is_string(x)) {
        char all[128];
        join_names(target_sets, NELEM(target_sets), all, sizeof all);
        const char *t = json_string_value(x);
        if (name_index(target_sets, NELEM(target_sets), t) < 0)
            return lr_errp(err, LR_E_INVALID, "lora.targets",
                           "lora.targets: '%.64s' is not one of: %s, or a list of module names", t, all);
        snprintf(s->lora.target_set, sizeof s->lora.target_set, "%s", t);
        s->lora.n_targets = 0;
        return 0;
    }
    if (!json_is_array(x) || json_array_size(x) == 0 || json_array_size(x) > JOBSPEC_MAX_TARGETS)
        return lr_errp(err, LR_E_INVALID, "lora.targets",
                       "lora.targets must be attn, attn_mlp, all-linear or a list of 1 to %d module names",
                       JOBSPEC_MAX_TARGETS);
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
    return 0;
}

static json_t *write_targets(const jobspec *s) {
    if (!s->lora.n_targets) return json_string(s->lora.target_set);
    json_t *a = json_array();
    for (int i = 0; i < s->lora.n_targets; i++) json_array_append_new(a, json_string(s->lora.targets[i]));
    return a;
}

/* eval.generation.stop: a string or a list of strings; null = none. */
static int parse_stop(const json_t *x, jobspec *s, lr_err *err) {
    const char *P = "eval.generation.stop";
    if (json_is_null(x)) return 0;
    if (json_is_string(x)) {
        s->eval.generation.n_stop = 1;
        if (get_str(x, P, s->eval.generation.stop[0], sizeof s->eval.generation.stop[0], err)) return -1;
    } else if (json_is_array(x) && json_array_size(x) <= JOBSPEC_MAX_STOP) {
        size_t i;
        json_t *e;
        json_array_foreach(x, i, e) {
            char p[48];
            snprintf(p, sizeof p, "%s[%zu]", P, i);
            if (get_str(e, p, s->eval.generation.stop[i], sizeof s->eval.generation.stop[i], err)) return -1;
            if (!s->eval.generation.stop[i][0]) return lr_errp(err, LR_E_INVALID, p, "%s must not be empty", p);
        }
        s->eval.generation.n_stop = (int)json_array_size(x);
    } else {
        return lr_errp(err, LR_E_INVALID, P, "%s must be a string or a list of up to %d strings", P,
                       JOBSPEC_MAX_STOP);
    }
    if (s->eval.generation.n_stop == 1 && !s->eval.generation.stop[0][0])
        return lr_errp(err, LR_E_INVALID, P, "%s must not be empty", P);
    return 0;
}

static json_t *write_stop(const jobspec *s) {
    json_t *a = json_array();
    for (int i = 0; i < s->eval.generation.n_stop; i++) json_array_append_new(a, json_string(s->eval.generation.stop[i]));
    return a;
}

/* eval.format.sections[i]: a name, or {name, bullets, ends_with}. */
static int parse_section(const json_t *v, const char *p, jobspec_section *sec, lr_err *err) {
    static const char *const keys[] = {"name", "bullets", "ends_with"};
    char q[96];
    long long b;
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
        if ((x = json_object_get(v, "bullets")) && !json_is_null(x)) {
            if (get_int(x, q, 0, 1000, &b, err)) return -1;
            sec->bullets = (int)b;
        }
        snprintf(q, sizeof q, "%s.ends_with", p);
        if ((x = json_object_get(v, "ends_with")) && !json_is_null(x) &&
            get_str(x, q, sec->ends_with, sizeof sec->ends_with, err))
            return -1;
    }
    if (!sec->name[0] || strchr(sec->name, '\n') || strchr(sec->name, ':'))
        return lr_errp(err, LR_E_INVALID, p, "%s: a section name must be non-empty, one line, without ':'", p);
    return 0;
}

static int parse_sections(const json_t *x, jobspec *s, lr_err *err) {
    jobspec_format *f = &s->eval.format;
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
    return 0;
}

static json_t *write_sections(const jobspec *s) {
    json_t *secs = json_array();
    for (int i = 0; i < s->eval.format.n_sections; i++) {
        const jobspec_section *sec = &s->eval.format.sections[i];
        json_t *so = json_pack("{s:s}", "name", sec->name);
        json_object_set_new(so, "bullets", sec->bullets >= 0 ? json_integer(sec->bullets) : json_null());
        json_object_set_new(so, "ends_with", sec->ends_with[0] ? json_string(sec->ends_with) : json_null());
        json_array_append_new(secs, so);
    }
    return secs;
}

/* eval.format.regex, once read: it must compile. */
static int check_regex(const jobspec *s, lr_err *err) {
    int ec;
    PCRE2_SIZE off;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)s->eval.format.regex, PCRE2_ZERO_TERMINATED, PCRE2_UTF, &ec, &off, NULL);
    if (!re) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(ec, msg, sizeof msg);
        return lr_errp(err, LR_E_INVALID, "eval.format.regex", "eval.format.regex: %s at offset %zu", (char *)msg,
                       (size_t)off);
    }
    pcre2_code_free(re);
    return 0;
}

/* ---- the table --------------------------------------------------------------- */

typedef enum { JT_INT, JT_I64, JT_U64, JT_NUM, JT_BOOL, JT_STR, JT_ENUM, JT_CUSTOM } jt_type;

enum {
    JF_REQUIRED = 1 << 0,   /* must be given whenever its object is */
    JF_NONEMPTY = 1 << 1,   /* a string that must not be "" */
    JF_NULLABLE = 1 << 2,   /* null accepted (keeps the default); an empty string is written as null */
    JF_KEEP_EMPTY = 1 << 3, /* with JF_NULLABLE: written as "" all the same (name) */
    JF_AUTO = 1 << 4,       /* "auto" accepted: the default for a number, -1 in a bool's int */
    JF_LO_OPEN = 1 << 5,    /* JT_NUM: lo itself is refused */
    JF_FORM = 1 << 6,       /* on the dashboard's submit form */
    JF_SHORTHAND = 1 << 7,  /* its object may be just this field's value, a string ("method: dpo") */
};

typedef struct js_field {
    const char *path;         /* dotted; the rows of one object are consecutive */
    jt_type type;
    size_t off, cap;          /* the member: offset and size */
    long long ilo, ihi;       /* JT_INT, JT_I64 range */
    double lo, hi;            /* JT_NUM range */
    const char *const *names; /* JT_ENUM: the values, index = the C enum */
    size_t n_names;
    int only;                 /* 1 + the method the field belongs to; 0: every method */
    const char *def;          /* the default as JSON text; NULL: none (a required field) */
    unsigned flags;
    const char *help;         /* one sentence: openapi.yaml's description, the form's hint */
    /* JT_CUSTOM: its reader, writer and JSON Schema (JSON text) */
    int (*parse)(const json_t *v, jobspec *s, lr_err *err);
    json_t *(*write)(const jobspec *s);
    const char *schema;
    int (*check)(const jobspec *s, lr_err *err); /* after a successful read */
} js_field;

#define ROW(p, t, m, ...) \
    {.path = p, .type = t, .off = offsetof(jobspec, m), .cap = sizeof(((jobspec *)0)->m), __VA_ARGS__}
#define CUSTOM(p, rd, wr, sch, ...) {.path = p, .type = JT_CUSTOM, .parse = rd, .write = wr, .schema = sch, __VA_ARGS__}
#define NAMES(a) .names = a, .n_names = NELEM(a)
#define ONLY(m) .only = 1 + (m)
#define I64MAX 0x7fffffffffffffffLL

static const js_field fields[] = {
    ROW("name", JT_STR, name, .def = "\"\"", .flags = JF_NULLABLE | JF_KEEP_EMPTY | JF_FORM,
        .help = "a label for the job"),
    ROW("model", JT_STR, model, .flags = JF_REQUIRED | JF_NONEMPTY | JF_FORM,
        .help = "the name of a registered model (GET /v1/models)"),
    CUSTOM("training_file", parse_files, write_files,
           "{\"oneOf\": [{\"type\": \"string\", \"minLength\": 1, \"maxLength\": 511}, {\"type\": \"array\","
           " \"minItems\": 1, \"maxItems\": 8, \"items\": {\"oneOf\": [{\"type\": \"string\", \"minLength\": 1,"
           " \"maxLength\": 511}, {\"type\": \"object\", \"additionalProperties\": false, \"required\": [\"file\"],"
           " \"properties\": {\"file\": {\"type\": \"string\", \"minLength\": 1, \"maxLength\": 511}, \"weight\":"
           " {\"type\": \"number\", \"minimum\": 0, \"exclusiveMinimum\": true, \"maximum\": 1e6, \"default\": 1}}}]}}]}",
           .flags = JF_REQUIRED | JF_FORM, .help = "a dataset id, or a list of {file, weight} to mix several"),
    ROW("validation_file", JT_STR, validation_file, .def = "null", .flags = JF_NULLABLE | JF_FORM,
        .help = "a dataset id held out for the eval loss; without one, val_ratio of the training rows"),

    ROW("method.type", JT_ENUM, method.type, NAMES(method_names), .def = "\"sft\"",
        .flags = JF_REQUIRED | JF_SHORTHAND | JF_FORM,
        .help = "what the job does: sft, kl_sft, dpo, full_sft (every weight, CPU backend; the run directory "
                "then holds a full HF model folder instead of an adapter) or eval"),
    ROW("method.kl_lambda", JT_NUM, method.kl_lambda, .lo = 0, .hi = 1e4, ONLY(METHOD_KL_SFT), .def = "0.1",
        .help = "kl_sft: the weight of the KL term"),
    ROW("method.kl_tau", JT_NUM, method.kl_tau, .lo = 0, .hi = 100, ONLY(METHOD_KL_SFT), .def = "1",
        .flags = JF_LO_OPEN, .help = "kl_sft: the temperature of the KL term's distributions"),
    ROW("method.beta", JT_NUM, method.beta, .lo = 0, .hi = 100, ONLY(METHOD_DPO), .def = "0.1",
        .flags = JF_LO_OPEN, .help = "dpo: the strength of the preference (the beta of the DPO loss)"),
    ROW("method.reference_adapter", JT_STR, method.reference_adapter, ONLY(METHOD_DPO), .def = "null",
        .flags = JF_NULLABLE, .help = "dpo: the finished job whose adapter is the reference (none: the base model)"),
    ROW("method.adapter", JT_STR, method.adapter, ONLY(METHOD_EVAL), .def = "null", .flags = JF_NULLABLE,
        .help = "eval: the finished job whose adapter is evaluated (none: the base model only)"),

    ROW("eval.max_rows", JT_INT, eval.max_rows, .ilo = 0, .ihi = 1000000, ONLY(METHOD_EVAL), .def = "0",
        .help = "rows evaluated, 0 = all"),
    ROW("eval.generation.max_new_tokens", JT_INT, eval.generation.max_new_tokens, .ilo = 1, .ihi = 65536,
        ONLY(METHOD_EVAL), .def = "256", .help = "the longest answer, in tokens"),
    ROW("eval.generation.temperature", JT_NUM, eval.generation.temperature, .lo = 0, .hi = 100, ONLY(METHOD_EVAL),
        .def = "0", .help = "0 = greedy"),
    ROW("eval.generation.top_p", JT_NUM, eval.generation.top_p, .lo = 0, .hi = 1, ONLY(METHOD_EVAL), .def = "1",
        .flags = JF_LO_OPEN, .help = "sample from the most likely tokens that hold this much probability"),
    ROW("eval.generation.top_k", JT_INT, eval.generation.top_k, .ilo = 0, .ihi = 1000000, ONLY(METHOD_EVAL),
        .def = "0", .help = "sample from this many most likely tokens, 0 = off"),
    ROW("eval.generation.seed", JT_U64, eval.generation.seed, ONLY(METHOD_EVAL), .def = "0",
        .help = "seed of the sampling"),
    CUSTOM("eval.generation.stop", parse_stop, write_stop,
           "{\"oneOf\": [{\"type\": \"string\", \"minLength\": 1, \"maxLength\": 255}, {\"type\": \"array\","
           " \"maxItems\": 8, \"items\": {\"type\": \"string\", \"minLength\": 1, \"maxLength\": 255}}]}",
           ONLY(METHOD_EVAL), .def = "[]", .help = "text that ends an answer: a string or a list of up to 8"),
    CUSTOM("eval.format.sections", parse_sections, write_sections,
           "{\"type\": \"array\", \"maxItems\": 16, \"items\": {\"oneOf\": [{\"type\": \"string\", \"maxLength\": 63},"
           " {\"type\": \"object\", \"additionalProperties\": false, \"required\": [\"name\"], \"properties\":"
           " {\"name\": {\"type\": \"string\", \"maxLength\": 63}, \"bullets\": {\"type\": \"integer\", \"minimum\": 0,"
           " \"maximum\": 1000, \"nullable\": true, \"description\": \"exact bullet lines in the section\"},"
           " \"ends_with\": {\"type\": \"string\", \"maxLength\": 15, \"nullable\": true}}}]}}",
           ONLY(METHOD_EVAL), .def = "[]",
           .help = "the sections a compliant answer has, each a name or {name, bullets, ends_with}"),
    ROW("eval.format.in_order", JT_BOOL, eval.format.in_order, ONLY(METHOD_EVAL), .def = "true",
        .help = "the sections appear in the listed order"),
    ROW("eval.format.exact_headers", JT_BOOL, eval.format.exact_headers, ONLY(METHOD_EVAL), .def = "false",
        .help = "headers as written: case, and no space before ':'"),
    ROW("eval.format.nothing_after", JT_BOOL, eval.format.nothing_after, ONLY(METHOD_EVAL), .def = "false",
        .help = "the final section is one line and the end"),
    ROW("eval.format.regex", JT_STR, eval.format.regex, ONLY(METHOD_EVAL), .def = "null", .flags = JF_NULLABLE,
        .check = check_regex, .help = "PCRE2 that must match somewhere"),

    ROW("hyperparameters.n_epochs", JT_INT, hp.n_epochs, .ilo = 1, .ihi = 1000, .def = "3",
        .flags = JF_AUTO | JF_FORM, .help = "passes over the training rows, used when max_steps is 0 (auto = 3)"),
    ROW("hyperparameters.max_steps", JT_I64, hp.max_steps, .ilo = 0, .ihi = 100000000, .def = "0",
        .flags = JF_FORM, .help = "optimizer steps; wins over n_epochs when > 0"),
    ROW("hyperparameters.batch_size", JT_INT, hp.batch_size, .ilo = 1, .ihi = 1024, .def = "4", .flags = JF_FORM,
        .help = "rows per micro-batch"),
    ROW("hyperparameters.grad_accum", JT_INT, hp.grad_accum, .ilo = 1, .ihi = 1024, .def = "1", .flags = JF_FORM,
        .help = "micro-batches per optimizer step"),
    ROW("hyperparameters.learning_rate", JT_NUM, hp.learning_rate, .lo = 0, .hi = 1, .def = "2e-4",
        .flags = JF_LO_OPEN | JF_FORM, .help = "the peak learning rate"),
    ROW("hyperparameters.lr_scheduler", JT_ENUM, hp.lr_scheduler, NAMES(sched_names), .def = "\"cosine\"",
        .flags = JF_FORM, .help = "the decay after warmup"),
    ROW("hyperparameters.warmup_ratio", JT_NUM, hp.warmup_ratio, .lo = 0, .hi = 0.99, .def = "0", .flags = JF_FORM,
        .help = "the fraction of the steps that warm up linearly"),
    ROW("hyperparameters.warmup_steps", JT_I64, hp.warmup_steps, .ilo = 0, .ihi = 100000000, .def = "0",
        .help = "warmup in steps, instead of warmup_ratio"),
    ROW("hyperparameters.weight_decay", JT_NUM, hp.weight_decay, .lo = 0, .hi = 10, .def = "0",
        .help = "AdamW's decoupled weight decay"),
    ROW("hyperparameters.max_grad_norm", JT_NUM, hp.max_grad_norm, .lo = 0, .hi = 1e6, .def = "1",
        .help = "the gradient is scaled down to this norm when longer, 0 = off"),
    ROW("hyperparameters.adam_beta1", JT_NUM, hp.adam_beta1, .lo = 0, .hi = 0.9999999, .def = "0.9",
        .help = "AdamW's first-moment decay"),
    ROW("hyperparameters.adam_beta2", JT_NUM, hp.adam_beta2, .lo = 0, .hi = 0.9999999, .def = "0.999",
        .help = "AdamW's second-moment decay"),
    ROW("hyperparameters.adam_eps", JT_NUM, hp.adam_eps, .lo = 0, .hi = 1, .def = "1e-8", .flags = JF_LO_OPEN,
        .help = "AdamW's epsilon"),
    ROW("hyperparameters.max_seq_len", JT_INT, hp.max_seq_len, .ilo = 8, .ihi = 131072, .def = "512",
        .flags = JF_FORM, .help = "the most tokens of a row that are trained on"),
    ROW("hyperparameters.packing", JT_BOOL, hp.packing, .def = "false",
        .help = "pack several rows into each sequence instead of padding each micro-batch"),
    ROW("hyperparameters.val_ratio", JT_NUM, hp.val_ratio, .lo = 0, .hi = 0.5, .def = "0.1", .flags = JF_FORM,
        .help = "the fraction of the training rows held out for the eval loss when there is no validation_file"),
    ROW("hyperparameters.logging_steps", JT_INT, hp.logging_steps, .ilo = 1, .ihi = 1000000, .def = "10",
        .flags = JF_FORM, .help = "the train loss is logged every this many steps"),
    ROW("hyperparameters.eval_steps", JT_INT, hp.eval_steps, .ilo = 0, .ihi = 1000000, .def = "50",
        .flags = JF_FORM, .help = "the eval loss every this many steps and at the end, 0 = at the end only"),
    ROW("hyperparameters.save_steps", JT_INT, hp.save_steps, .ilo = 0, .ihi = 1000000, .def = "100",
        .flags = JF_FORM, .help = "a checkpoint every this many steps, 0 = none"),
    ROW("hyperparameters.save_total_limit", JT_INT, hp.save_total_limit, .ilo = 0, .ihi = 1000, .def = "2",
        .help = "checkpoints kept, the oldest deleted first"),
    ROW("hyperparameters.seed", JT_U64, hp.seed, .def = "42", .flags = JF_FORM,
        .help = "the seed of initialization, shuffling and dropout"),
    ROW("hyperparameters.activation_checkpointing", JT_BOOL, hp.activation_checkpointing, .def = "\"auto\"",
        .flags = JF_AUTO,
        .help = "recompute each layer's activations in the backward; auto = on when max_seq_len >= 2048"),
    ROW("hyperparameters.patience", JT_INT, hp.patience, .ilo = 0, .ihi = 1000000, .def = "0",
        .help = "0 = off. Stop after this many checks in a row without a min_delta improvement of the best "
                "loss: the eval loss at each eval_steps evaluation, or with no validation set the train loss "
                "at each logging step. The job succeeds with stop_reason set."),
    ROW("hyperparameters.min_delta", JT_NUM, hp.min_delta, .lo = 0, .hi = 1e6, .def = "0",
        .help = "an improvement smaller than this does not count"),
    ROW("hyperparameters.min_steps", JT_I64, hp.min_steps, .ilo = 0, .ihi = 100000000, .def = "0",
        .help = "no patience stop before this step"),
    ROW("hyperparameters.max_minutes", JT_NUM, hp.max_minutes, .lo = 0, .hi = 1e6, .def = "0",
        .help = "0 = no limit. Stop after the first step that ends past this many minutes of training (setup "
                "excluded); the job succeeds with stop_reason set."),

    ROW("lora.r", JT_INT, lora.r, .ilo = 1, .ihi = 1024, .def = "16", .flags = JF_FORM,
        .help = "the rank of the adapter"),
    ROW("lora.alpha", JT_NUM, lora.alpha, .lo = 0, .hi = 1e6, .def = "32", .flags = JF_LO_OPEN | JF_FORM,
        .help = "the update is scaled by alpha / r (alpha / sqrt(r) with use_rslora)"),
    ROW("lora.dropout", JT_NUM, lora.dropout, .lo = 0, .hi = 0.99, .def = "0.05", .flags = JF_FORM,
        .help = "dropout on the adapter's input"),
    CUSTOM("lora.targets", parse_targets, write_targets,
           "{\"oneOf\": [{\"type\": \"string\", \"enum\": [\"attn\", \"attn_mlp\", \"all-linear\"]}, {\"type\":"
           " \"array\", \"minItems\": 1, \"maxItems\": 16, \"items\": {\"type\": \"string\", \"enum\": [\"q_proj\","
           " \"k_proj\", \"v_proj\", \"o_proj\", \"gate_proj\", \"up_proj\", \"down_proj\", \"c_attn\", \"c_proj\","
           " \"c_fc\", \"attn.c_proj\", \"mlp.c_proj\"]}}]}",
           .def = "\"attn_mlp\"", .flags = JF_FORM,
           .help = "the modules adapted: attn, attn_mlp, all-linear, or a list of module names"),
    ROW("lora.use_dora", JT_BOOL, lora.use_dora, .def = "false", .flags = JF_FORM,
        .help = "DoRA: a learned magnitude per output column beside the low-rank update"),
    ROW("lora.use_rslora", JT_BOOL, lora.use_rslora, .def = "false", .flags = JF_FORM,
        .help = "rsLoRA: the update is scaled by alpha / sqrt(r)"),
    ROW("lora.quantize", JT_ENUM, lora.quantize, NAMES(quant_names), .def = "\"none\"", .flags = JF_FORM,
        .help = "QLoRA: the frozen base's linear weights quantized at load to 4 bits as bitsandbytes does "
                "(blocks of 64, absmax) and kept 4-bit in memory; a model saved 4-bit by transformers is "
                "4-bit whatever this says"),
    ROW("lora.double_quant", JT_BOOL, lora.double_quant, .def = "false", .flags = JF_FORM,
        .help = "with quantize: the blocks' scales quantized to 8 bits too (bitsandbytes' "
                "bnb_4bit_use_double_quant)"),

    ROW("chat_template", JT_ENUM, chat_template, NAMES(tpl_names), .def = "\"auto\"", .flags = JF_FORM,
        .help = "how rows are rendered into text; auto = the model's own template"),
    ROW("system_prompt", JT_STR, system_prompt, .def = "null", .flags = JF_NULLABLE,
        .help = "a system message added to every row"),
    ROW("device", JT_ENUM, device, NAMES(device_names), .def = "\"any\"", .flags = JF_FORM,
        .help = "the kind of worker that may run the job"),
    ROW("priority", JT_INT, priority, .ilo = -100, .ihi = 100, .def = "0", .flags = JF_FORM,
        .help = "higher runs first"),
    ROW("max_retries", JT_INT, max_retries, .ilo = 0, .ihi = 100, .def = "3",
        .help = "re-queues after the job's worker dies"),
    ROW("resources.devices", JT_INT, resources.devices, .ilo = 1, .ihi = JOBSPEC_MAX_DEVICES, .def = "1",
        .help = "data-parallel ranks (one CPU worker or GPU each); runs on a worker lorad starts with that "
                "many ranks (--workers 2xcpu)"),
    ROW("resources.co_train", JT_BOOL, resources.co_train, .def = "true",
        .help = "the job may share one worker pass with other queued jobs on the same base model (lorad.yaml "
                "packing); false trains it alone"),
    ROW("compute_dtype", JT_ENUM, compute_dtype, NAMES(cdt_names), .def = "\"auto\"", .flags = JF_FORM,
        .help = "arithmetic of the frozen base's matmuls; auto is bf16 where the hardware has bf16 units and the "
                "model is stored in 16 bits"),
};
#define NFIELDS NELEM(fields)

/* ---- reading and writing one field -------------------------------------------- */

static int read_default(const js_field *f, jobspec *s, lr_err *err);

/* v into f's member; param names it in errors (the shorthand "method" differs from the path). */
static int read_field(const js_field *f, const json_t *v, const char *param, jobspec *s, lr_err *err) {
    char *m = (char *)s + f->off;
    long long ll;
    int rc = 0;
    if ((f->flags & JF_NULLABLE) && json_is_null(v)) return 0;
    if ((f->flags & JF_AUTO) && json_is_string(v) && !strcmp(json_string_value(v), "auto")) {
        if (f->type != JT_BOOL) return read_default(f, s, err);
        *(int *)m = -1;
        return 0;
    }
    switch (f->type) {
    case JT_INT:
        if (!(rc = get_int(v, param, f->ilo, f->ihi, &ll, err))) *(int *)m = (int)ll;
        break;
    case JT_I64:
        if (!(rc = get_int(v, param, f->ilo, f->ihi, &ll, err))) *(int64_t *)m = ll;
        break;
    case JT_U64:
        if (!(rc = get_int(v, param, 0, I64MAX, &ll, err))) *(uint64_t *)m = (uint64_t)ll;
        break;
    case JT_NUM:
        rc = get_num(v, param, f->lo, f->hi, !!(f->flags & JF_LO_OPEN), (double *)m, err);
        break;
    case JT_BOOL:
        if ((rc = get_bool(v, param, (int *)m, err)) && (f->flags & JF_AUTO))
            rc = lr_errp(err, LR_E_INVALID, param, "%s must be true, false or \"auto\"", param);
        break;
    case JT_STR:
        if (!(rc = get_str(v, param, m, f->cap, err)) && (f->flags & JF_NONEMPTY) && !m[0])
            rc = bad(err, param, "%s must not be empty%s", "");
        break;
    case JT_ENUM:
        rc = get_enum(v, param, f->names, f->n_names, (int *)m, err);
        break;
    case JT_CUSTOM:
        rc = f->parse(v, s, err);
        break;
    }
    if (!rc && f->check) rc = f->check(s, err);
    return rc;
}

static int read_default(const js_field *f, jobspec *s, lr_err *err) {
    json_t *d = f->def ? json_loads(f->def, JSON_DECODE_ANY, NULL) : NULL;
    if (!d) return f->def ? lr_errp(err, LR_E_INVALID, f->path, "%s: bad default %s", f->path, f->def) : 0;
    int rc = read_field(f, d, f->path, s, err);
    json_decref(d);
    return rc;
}

static json_t *write_field(const js_field *f, const jobspec *s) {
    const char *m = (const char *)s + f->off;
    switch (f->type) {
    case JT_INT: return json_integer(*(const int *)m);
    case JT_I64: return json_integer(*(const int64_t *)m);
    case JT_U64: return json_integer((json_int_t)*(const uint64_t *)m);
    case JT_NUM: return json_real(*(const double *)m);
    case JT_BOOL:
        return (f->flags & JF_AUTO) && *(const int *)m < 0 ? json_string("auto") : json_boolean(*(const int *)m);
    case JT_STR:
        return !m[0] && (f->flags & (JF_NULLABLE | JF_KEEP_EMPTY)) == JF_NULLABLE ? json_null() : json_string(m);
    case JT_ENUM: return json_string(f->names[*(const int *)m]);
    case JT_CUSTOM: return f->write(s);
    }
    return json_null();
}

/* Whether row f applies to the spec's method. */
static int applies(const js_field *f, const jobspec *s) { return !f->only || (int)s->method.type == f->only - 1; }

/* ---- the spec ---------------------------------------------------------------------- */

static jobspec g_defaults;
static pthread_once_t g_defaults_once = PTHREAD_ONCE_INIT;

/* The defaults are the table's, read once through the rows' own readers;
 * test_jobspec_schema checks that every default is one its row accepts. */
static void make_defaults(void) {
    jobspec *s = &g_defaults;
    memset(s, 0, sizeof *s);
    s->training_files[0].weight = 1.0;
    for (size_t i = 0; i < NFIELDS; i++) {
        lr_err e = {0};
        (void)read_default(&fields[i], s, &e);
    }
}

void jobspec_init(jobspec *s) {
    pthread_once(&g_defaults_once, make_defaults);
    *s = g_defaults;
}

/* The rows [a, b) of one object (path prefix pre, "" at the top): its keys
 * are checked against their names first, then each row is read in order;
 * rows under a deeper prefix are that nested object's. */
static int parse_rows(const json_t *v, size_t a, size_t b, const char *pre, jobspec *s, lr_err *err);

static int parse_object(const json_t *v, size_t a, size_t b, const char *pre, jobspec *s, lr_err *err) {
    const js_field *first = &fields[a];
    if (json_is_string(v) && (first->flags & JF_SHORTHAND)) return read_field(first, v, pre, s, err);
    int only = first->only;
    for (size_t i = a; i < b; i++)
        if (fields[i].only != only) only = 0;
    if (only && (int)s->method.type != only - 1)
        return lr_errp(err, LR_E_INVALID, pre, "%s applies to method %s only", pre, method_names[only - 1]);
    return parse_rows(v, a, b, pre, s, err);
}

static int parse_rows(const json_t *v, size_t a, size_t b, const char *pre, jobspec *s, lr_err *err) {
    size_t pl = *pre ? strlen(pre) + 1 : 0, n = 0;
    char keys[NFIELDS][32]; /* the object's keys: its leaves and nested objects, each once */
    const char *kp[NFIELDS] = {0};
    for (size_t i = a; i < b; i++) {
        const char *name = fields[i].path + pl;
        size_t kl = strcspn(name, ".");
        if (n && strlen(kp[n - 1]) == kl && !strncmp(kp[n - 1], name, kl)) continue;
        snprintf(keys[n], sizeof keys[n], "%.*s", (int)kl, name);
        kp[n] = keys[n];
        n++;
    }
    if (check_object(v, pre, kp, n, err)) return -1;
    for (size_t i = a; i < b;) {
        const js_field *f = &fields[i];
        const char *name = f->path + pl, *dot = strchr(name, '.');
        if (dot) {
            size_t kl = (size_t)(dot - name) + 1, j = i + 1;
            while (j < b && !strncmp(fields[j].path + pl, name, kl)) j++;
            char sub[96], key[32];
            snprintf(sub, sizeof sub, "%.*s", (int)(pl + kl - 1), f->path);
            snprintf(key, sizeof key, "%.*s", (int)(kl - 1), name);
            const json_t *x = json_object_get(v, key);
            if (x && parse_object(x, i, j, sub, s, err)) return -1;
            i = j;
            continue;
        }
        const json_t *x = json_object_get(v, name);
        if (!x && (f->flags & JF_REQUIRED))
            return lr_errp(err, LR_E_INVALID, f->path, "%s is required: %s", f->path, f->help);
        if (x && !applies(f, s)) {
            return lr_errp(err, LR_E_INVALID, f->path, "%s applies to method %s only", f->path,
                           method_names[f->only - 1]);
        }
        if (x && read_field(f, x, f->path, s, err)) return -1;
        i++;
    }
    return 0;
}

/* The rules that tie fields together. */
static int spec_rules(const json_t *obj, jobspec *s, lr_err *err) {
    if (s->eval.format.nothing_after && !s->eval.format.n_sections)
        return lr_errp(err, LR_E_INVALID, "eval.format.nothing_after", "eval.format.nothing_after needs sections");
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

int jobspec_from_json(const json_t *obj, jobspec *s, lr_err *err) {
    jobspec_init(s);
    if (!json_is_object(obj)) return lr_errp(err, LR_E_INVALID, "", "a job spec must be a JSON object");
    if (parse_rows(obj, 0, NFIELDS, "", s, err)) return -1;
    return spec_rules(obj, s, err);
}

/* The object a dotted path's last key belongs in, made on the way. */
static json_t *parent_of(json_t *root, const char *path, const char **leaf) {
    json_t *o = root;
    const char *p = path, *dot;
    while ((dot = strchr(p, '.'))) {
        char key[32];
        snprintf(key, sizeof key, "%.*s", (int)(dot - p), p);
        json_t *c = json_object_get(o, key);
        if (!c) json_object_set_new(o, key, c = json_object());
        o = c;
        p = dot + 1;
    }
    *leaf = p;
    return o;
}

json_t *jobspec_to_json(const jobspec *s) {
    json_t *o = json_object();
    for (size_t i = 0; i < NFIELDS; i++) {
        const js_field *f = &fields[i];
        if (!applies(f, s)) continue;
        const char *leaf;
        json_t *parent = parent_of(o, f->path, &leaf);
        json_object_set_new(parent, leaf, write_field(f, s));
    }
    return o;
}

/* ---- the schema as JSON ---------------------------------------------------------- */

/* Row f as a JSON Schema property, as proto/openapi.yaml's JobSpec has it. */
static json_t *field_schema(const js_field *f) {
    json_t *p = NULL;
    switch (f->type) {
    case JT_INT:
    case JT_I64:
        p = json_pack("{s:s,s:I,s:I}", "type", "integer", "minimum", (json_int_t)f->ilo, "maximum", (json_int_t)f->ihi);
        break;
    case JT_U64: p = json_pack("{s:s,s:i,s:I}", "type", "integer", "minimum", 0, "maximum", (json_int_t)I64MAX); break;
    case JT_NUM:
        p = json_pack("{s:s,s:f,s:f}", "type", "number", "minimum", f->lo, "maximum", f->hi);
        if (f->flags & JF_LO_OPEN) json_object_set_new(p, "exclusiveMinimum", json_true());
        break;
    case JT_BOOL: p = json_pack("{s:s}", "type", "boolean"); break;
    case JT_STR:
        p = json_pack("{s:s,s:I}", "type", "string", "maxLength", (json_int_t)f->cap - 1);
        if (f->flags & JF_NONEMPTY) json_object_set_new(p, "minLength", json_integer(1));
        break;
    case JT_ENUM: {
        json_t *e = json_array();
        for (size_t i = 0; i < f->n_names; i++) json_array_append_new(e, json_string(f->names[i]));
        p = json_pack("{s:s,s:o}", "type", "string", "enum", e);
        break;
    }
    case JT_CUSTOM: p = json_loads(f->schema, 0, NULL); break;
    }
    if (!p) return NULL;
    if (f->flags & JF_AUTO) {
        json_t *alt = json_pack("{s:s,s:[s]}", "type", "string", "enum", "auto");
        if (f->type == JT_BOOL) {
            json_decref(p);
            p = json_pack("{s:[{s:s},o]}", "oneOf", "type", "boolean", alt);
        } else {
            p = json_pack("{s:[o,o]}", "oneOf", p, alt);
        }
    }
    if (f->flags & JF_NULLABLE) json_object_set_new(p, "nullable", json_true());
    json_t *d = f->def ? json_loads(f->def, JSON_DECODE_ANY, NULL) : NULL;
    if (d) json_object_set_new(p, "default", d);
    json_object_set_new(p, "description", json_string(f->help));
    return p;
}

json_t *jobspec_schema_json(void) {
    json_t *a = json_array();
    for (size_t i = 0; i < NFIELDS; i++) {
        const js_field *f = &fields[i];
        json_t *p = field_schema(f);
        if (!p) {
            json_decref(a);
            return NULL;
        }
        json_object_set_new(p, "path", json_string(f->path));
        if (f->flags & JF_REQUIRED) json_object_set_new(p, "required", json_true());
        if (f->flags & JF_AUTO) json_object_set_new(p, "auto", json_true());
        if (f->flags & JF_FORM) json_object_set_new(p, "form", json_true());
        if (f->only) json_object_set_new(p, "method", json_string(method_names[f->only - 1]));
        json_array_append_new(a, p);
    }
    return json_pack("{s:s,s:o}", "object", "jobspec.schema", "fields", a);
}

/* ---- text ------------------------------------------------------------------ */

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
    return yamljson_parse(text, len, out, err);
}

/* ---- --set a.b.c=value ---------------------------------------------------- */

/* A bare hyperparameter name ("learning_rate") is the short form people type. */
static int is_hp_key(const char *k) {
    static const char pre[] = "hyperparameters.";
    for (size_t i = 0; i < NFIELDS; i++)
        if (!strncmp(fields[i].path, pre, sizeof pre - 1) && !strcmp(fields[i].path + sizeof pre - 1, k)) return 1;
    return 0;
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
    int rc = yamljson_parse(wrapped, vl + 3, &parsed, err);
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
