#include "daemon/openai.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "proto/jsonfmt.h"

/* ---- create ---- */

static double base_lr(double params) { return params <= 0 || params < 1e9 ? 2e-4 : params < 1e10 ? 1e-4 : 5e-5; }

static int auto_epochs(int64_t rows) {
    if (rows <= 0) return 3;
    int64_t e = (1000 + rows - 1) / rows;
    return e < 3 ? 3 : e > 10 ? 10 : (int)e;
}

static int auto_batch(int64_t rows) {
    int b = 1;
    while (b < 16 && (int64_t)b * 2 * 32 <= rows) b *= 2;
    return b;
}

static int is_auto(const json_t *v) { return json_is_string(v) && !strcmp(json_string_value(v), "auto"); }

static json_t *section(json_t *o, const char *k) {
    json_t *v = json_object_get(o, k);
    if (json_is_object(v)) return v;
    v = json_object();
    json_object_set_new(o, k, v);
    return v;
}

/* OpenAI's hyperparameters (from the top level or a method section) into
 * hp and meta: "auto" is left out for the resolution below. */
static int take_hyper(json_t *from, const char *where, json_t *hp, json_t *method, json_t *meta, lr_err *err) {
    static const char *const keys[] = {"n_epochs", "batch_size", "learning_rate_multiplier", "beta"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        json_t *v = json_object_get(from, keys[i]);
        if (!v) continue;
        char param[96];
        snprintf(param, sizeof param, "%s.%s", where, keys[i]);
        if (is_auto(v)) {
            json_object_del(from, keys[i]);
            continue;
        }
        if (!json_is_number(v) || json_number_value(v) <= 0 || (i < 2 && !json_is_integer(v)))
            return lr_errp(err, LR_E_INVALID, param, "%s must be \"auto\" or a positive %s", param,
                           i < 2 ? "integer" : "number");
        if (i == 2) json_object_set(meta, "learning_rate_multiplier", v);
        else if (i == 3) json_object_set(method, "beta", v);
        else if (from != hp) json_object_set(hp, keys[i], v);
        /* lorad's own hyperparameters section is also where n_epochs and
         * batch_size stay: deleting them there would drop what was asked */
        if (i >= 2 || from != hp) json_object_del(from, keys[i]);
    }
    return 0;
}

static int take_metadata(json_t *body, json_t *meta, lr_err *err) {
    json_t *m = json_object_get(body, "metadata");
    if (!m || json_is_null(m)) goto out;
    if (!json_is_object(m) || json_object_size(m) > OAI_METADATA_MAX)
        return lr_errp(err, LR_E_INVALID, "metadata", "metadata must be an object of at most %d key-value pairs",
                       OAI_METADATA_MAX);
    const char *k;
    json_t *v;
    json_object_foreach(m, k, v) {
        if (strlen(k) > 64 || !json_is_string(v) || json_string_length(v) > 512)
            return lr_errp(err, LR_E_INVALID, "metadata", "metadata keys have at most 64 characters and values are "
                                                          "strings of at most 512 ('%.64s')", k);
    }
    json_object_set(meta, "metadata", m);
out:
    json_object_del(body, "metadata");
    return 0;
}

static int take_suffix(json_t *body, json_t *meta, lr_err *err) {
    json_t *v = json_object_get(body, "suffix");
    if (!v || json_is_null(v)) goto out;
    const char *s = json_string_value(v);
    size_t n = s ? strlen(s) : 0;
    if (!s || n > OAI_SUFFIX_MAX ||
        strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.") != n)
        return lr_errp(err, LR_E_INVALID, "suffix", "suffix must be a string of at most %d letters, digits, '-', "
                                                    "'_' or '.'", OAI_SUFFIX_MAX);
    if (n) json_object_set(meta, "suffix", v);
out:
    json_object_del(body, "suffix");
    return 0;
}

static int take_integrations(json_t *body, json_t *meta, lr_err *err) {
    json_t *v = json_object_get(body, "integrations"), *x;
    size_t i;
    if (!v || json_is_null(v)) goto out;
    if (!json_is_array(v)) return lr_errp(err, LR_E_INVALID, "integrations", "integrations must be a list");
    json_array_foreach(v, i, x) {
        if (!json_is_object(x) || !json_is_string(json_object_get(x, "type")))
            return lr_errp(err, LR_E_INVALID, "integrations", "integrations[%zu] needs a type", i);
    }
    json_object_set(meta, "integrations", v);
out:
    json_object_del(body, "integrations");
    return 0;
}

/* OpenAI's method {type, supervised|dpo: {hyperparameters}} into lorad's
 * {type, beta, ...}; lorad's own types pass through. */
static int take_method(json_t *body, json_t *hp, json_t *meta, lr_err *err) {
    json_t *m = json_object_get(body, "method");
    if (!m) return 0;
    if (!json_is_object(m)) return lr_errp(err, LR_E_INVALID, "method", "method must be an object");
    const char *t = json_string_value(json_object_get(m, "type"));
    if (t && !strcmp(t, "reinforcement"))
        return lr_errp(err, LR_E_INVALID, "method.type", "method reinforcement is not supported: lorad trains "
                                                         "supervised and dpo (and its own sft, kl_sft, full_sft, eval)");
    if (t && !strcmp(t, "supervised")) json_object_set_new(m, "type", json_string("sft"));
    static const char *const secs[] = {"supervised", "dpo", "reinforcement"};
    for (size_t i = 0; i < 3; i++) {
        json_t *sec = json_object_get(m, secs[i]);
        if (!sec) continue;
        char name[32], where[64];
        snprintf(name, sizeof name, "method.%s", secs[i]);
        snprintf(where, sizeof where, "%s.hyperparameters", name);
        if (i == 2) return lr_errp(err, LR_E_INVALID, name, "%s is not supported", name);
        if (!json_is_object(sec)) return lr_errp(err, LR_E_INVALID, name, "%s must be an object", name);
        json_t *h = json_object_get(sec, "hyperparameters");
        if (h && !json_is_object(h)) return lr_errp(err, LR_E_INVALID, where, "%s must be an object", where);
        if (h && take_hyper(h, where, hp, m, meta, err)) return -1;
        json_object_del(m, secs[i]);
    }
    return 0;
}

int oai_create_prepare(json_t *body, const oai_create_ctx *x, json_t **meta, lr_err *err) {
    *meta = json_object();
    json_t *hp = json_object_get(body, "hyperparameters");
    if (hp && !json_is_object(hp)) {
        lr_errp(err, LR_E_INVALID, "hyperparameters", "hyperparameters must be an object");
        goto fail;
    }
    static const char *const objs[] = {"method", "lora"};
    for (size_t i = 0; i < 2; i++) {
        json_t *v = json_object_get(body, objs[i]);
        if (v && !json_is_object(v)) {
            lr_errp(err, LR_E_INVALID, objs[i], "%s must be an object", objs[i]);
            goto fail;
        }
    }
    hp = section(body, "hyperparameters");
    if (take_suffix(body, *meta, err) || take_metadata(body, *meta, err) || take_integrations(body, *meta, err) ||
        take_hyper(hp, "hyperparameters", hp, section(body, "method"), *meta, err) ||
        take_method(body, hp, *meta, err))
        goto fail;
    json_t *method = json_object_get(body, "method");
    if (!json_object_get(method, "type") && json_object_size(method) == 0) json_object_del(body, "method");
    json_t *seed = json_object_get(body, "seed");
    if (seed && !json_is_null(seed)) {
        if (!json_is_integer(seed) || json_integer_value(seed) < 0) {
            lr_errp(err, LR_E_INVALID, "seed", "seed must be a non-negative integer");
            goto fail;
        }
        json_object_set(hp, "seed", seed);
    } else if (x->openai_route && !json_object_get(hp, "seed")) {
        json_object_set_new(hp, "seed", json_integer((json_int_t)(x->random_seed & 0x7fffffff)));
    }
    json_object_del(body, "seed");
    /* "auto": on the OpenAI route whatever is not given; on lorad's, only
     * what said "auto" (lorad's defaults stay what `lora submit` knows). */
    double blr = base_lr(x->model_params);
    json_object_set_new(*meta, "base_learning_rate", json_real(blr));
    if (x->openai_route) {
        if (!json_object_get(hp, "n_epochs") && !json_object_get(hp, "max_steps"))
            json_object_set_new(hp, "n_epochs", json_integer(auto_epochs(x->train_rows)));
        if (!json_object_get(hp, "batch_size")) json_object_set_new(hp, "batch_size", json_integer(auto_batch(x->train_rows)));
        json_t *lora = section(body, "lora");
        if (!json_object_get(lora, "targets")) json_object_set_new(lora, "targets", json_string("all-linear"));
    }
    json_t *mult = json_object_get(*meta, "learning_rate_multiplier");
    if (!json_object_get(hp, "learning_rate") && (mult || x->openai_route))
        json_object_set_new(hp, "learning_rate", json_real(blr * (mult ? json_number_value(mult) : 1.0)));
    if (json_object_size(hp) == 0) json_object_del(body, "hyperparameters");
    return 0;
fail:
    json_decref(*meta);
    *meta = NULL;
    return -1;
}

void oai_model_name(const char *base, const char *user, const char *suffix, const char *job_id, char *out, size_t cap) {
    snprintf(out, cap, "ft:%s:%s:%s:%s", base, user, suffix ? suffix : "", job_id);
}

int oai_parse_model(const char *name, char *job_id, size_t cap, int64_t *step) {
    *step = -1;
    if (strncmp(name, "ft:", 3)) return 0;
    const char *last = strrchr(name, ':'), *job = last + 1, *end = job + strlen(job);
    if (!strncmp(job, "ckpt-step-", 10)) {
        char *e;
        long long s = strtoll(job + 10, &e, 10);
        if (*e || e == job + 10 || s < 0) return 0;
        *step = s;
        end = last;
        job = last;
        while (job > name && job[-1] != ':') job--;
    }
    size_t l = (size_t)(end - job);
    if (!l || l >= cap) return 0;
    memcpy(job_id, job, l);
    job_id[l] = 0;
    return !strncmp(job_id, "ftjob-", 6);
}

static const char *method_name(job_method m) { return m == METHOD_DPO ? "dpo" : "supervised"; }

json_t *oai_job_record(const jobspec *s, const json_t *meta, const char *job_id, const char *user) {
    double blr = json_number_value(json_object_get(meta, "base_learning_rate"));
    double mult = s->hp.learning_rate / (blr > 0 ? blr : base_lr(0));
    json_t *hyper = json_pack("{s:i, s:i, s:f}", "n_epochs", s->hp.n_epochs, "batch_size", s->hp.batch_size,
                              "learning_rate_multiplier", mult);
    json_t *mh = json_deep_copy(hyper);
    if (s->method.type == METHOD_DPO) json_object_set_new(mh, "beta", json_real(s->method.beta));
    const char *mn = method_name(s->method.type);
    json_t *method = json_pack("{s:s, s:{s:o}}", "type", mn, mn, "hyperparameters", mh);
    const char *suffix = json_string_value(json_object_get(meta, "suffix"));
    char ft[1024];
    oai_model_name(s->model, user, suffix, job_id, ft, sizeof ft);
    json_t *md = json_object_get(meta, "metadata"), *in = json_object_get(meta, "integrations");
    return json_pack("{s:s, s:o, s:o, s:o, s:I, s:o, s:O, s:O, s:s}", "training_file", s->training_files[0].name,
                     "validation_file", s->validation_file[0] ? json_string(s->validation_file) : json_null(),
                     "hyperparameters", hyper, "method", method, "seed", (json_int_t)s->hp.seed,
                     "user_provided_suffix", suffix ? json_string(suffix) : json_null(), "metadata",
                     md ? md : json_null(), "integrations", in ? in : json_null(), "fine_tuned_model", ft);
}

void oai_job_complete(json_t *job, int64_t now) {
    const char *status = json_string_value(json_object_get(job, "status"));
    int succeeded = status && !strcmp(status, "succeeded"), running = status && !strcmp(status, "running");
    if (!succeeded || !json_object_get(job, "fine_tuned_model"))
        json_object_set_new(job, "fine_tuned_model", json_null());
    json_object_set_new(job, "organization_id", json_string("org-lorad"));
    char rf[64];
    const char *id = json_string_value(json_object_get(job, "id"));
    json_t *files = json_array();
    if (succeeded && id && !oai_results_file_id(id, rf, sizeof rf)) json_array_append_new(files, json_string(rf));
    json_object_set_new(job, "result_files", files);
    if (!json_object_get(job, "trained_tokens")) json_object_set_new(job, "trained_tokens", json_null());
    static const char *const nullable[] = {"metadata", "integrations", "user_provided_suffix"};
    for (size_t i = 0; i < 3; i++)
        if (!json_object_get(job, nullable[i])) json_object_set_new(job, nullable[i], json_null());
    json_t *pr = json_object_get(job, "progress");
    int64_t step = json_integer_value(json_object_get(pr, "step")),
            total = json_integer_value(json_object_get(pr, "total_steps")),
            started = json_integer_value(json_object_get(job, "started_at"));
    json_t *eta = json_null();
    if (running && step > 0 && total > step && started > 0 && now >= started)
        eta = json_integer(now + (int64_t)((double)(now - started) * (double)(total - step) / (double)step + 0.5));
    json_object_set_new(job, "estimated_finish", eta);
}

void oai_job_status(json_t *job) {
    const char *status = json_string_value(json_object_get(job, "status"));
    json_t *mt = json_object_get(json_object_get(json_object_get(job, "spec"), "method"), "type");
    int64_t total = json_integer_value(json_object_get(json_object_get(job, "progress"), "total_steps"));
    if (!status || strcmp(status, "running") || total > 0) return;
    if (json_is_string(mt) && !strcmp(json_string_value(mt), jobspec_method_name(METHOD_EVAL))) return;
    json_object_set_new(job, "status", json_string("validating_files"));
}

int oai_results_file_id(const char *job_id, char *out, size_t cap) {
    if (strncmp(job_id, "ftjob-", 6)) return -1;
    return snprintf(out, cap, "file-results-%s", job_id + 6) < (int)cap ? 0 : -1;
}

int oai_results_file_job(const char *file_id, char *job_id, size_t cap) {
    if (strncmp(file_id, "file-results-", 13) || !file_id[13]) return -1;
    return snprintf(job_id, cap, "ftjob-%s", file_id + 13) < (int)cap ? 0 : -1;
}

/* ---- events, checkpoints ---- */

json_t *oai_event(const json_t *ev) {
    char id[40];
    snprintf(id, sizeof id, "ftevent-%lld", (long long)json_integer_value(json_object_get(ev, "id")));
    const char *level = json_string_value(json_object_get(ev, "level"));
    level = !level ? "info" : !strcmp(level, "warning") ? "warn" : !strcmp(level, "error") ? "error" : "info";
    json_t *o = json_deep_copy(ev);
    json_object_set_new(o, "id", json_string(id));
    json_object_set_new(o, "created_at", json_integer((json_int_t)json_number_value(json_object_get(ev, "created_at"))));
    json_object_set_new(o, "level", json_string(level));
    json_object_set_new(o, "type", json_string("message"));
    json_object_set_new(o, "data", json_null());
    return o;
}

json_t *oai_metrics_event(int64_t step, int64_t total_steps, double created_at, const json_t *values) {
    char id[48], msg[160];
    snprintf(id, sizeof id, "ftevent-m%lld", (long long)step);
    json_t *data = json_deep_copy(values);
    json_object_set_new(data, "step", json_integer(step));
    json_object_set_new(data, "total_steps", json_integer(total_steps));
    json_t *tl = json_object_get(values, "train_loss"), *vl = json_object_get(values, "valid_loss");
    int k = snprintf(msg, sizeof msg, "Step %lld/%lld", (long long)step, (long long)total_steps);
    if (json_is_number(tl)) k += snprintf(msg + k, sizeof msg - (size_t)k, ": training loss=%.4f", json_number_value(tl));
    if (json_is_number(vl) && k < (int)sizeof msg)
        snprintf(msg + k, sizeof msg - (size_t)k, ", validation loss=%.4f", json_number_value(vl));
    return json_pack("{s:s, s:s, s:I, s:s, s:s, s:s, s:o}", "object", "fine_tuning.job.event", "id", id, "created_at",
                     (json_int_t)created_at, "level", "info", "message", msg, "type", "metrics", "data", data);
}

void oai_checkpoint_complete(json_t *ck, const char *job_id, const char *fine_tuned_model, json_t *metrics) {
    int64_t step = json_integer_value(json_object_get(ck, "step"));
    char id[96], name[1200];
    snprintf(id, sizeof id, "ftckpt-%s-%lld", strncmp(job_id, "ftjob-", 6) ? job_id : job_id + 6, (long long)step);
    snprintf(name, sizeof name, "%s:ckpt-step-%lld", fine_tuned_model, (long long)step);
    json_object_set_new(ck, "id", json_string(id));
    json_object_set_new(ck, "fine_tuning_job_id", json_string(job_id));
    json_object_set_new(ck, "step_number", json_integer(step));
    json_object_set_new(ck, "fine_tuned_model_checkpoint", json_string(name));
    if (!metrics) metrics = json_object();
    json_object_set_new(metrics, "step", json_integer(step));
    json_object_set_new(ck, "metrics", metrics);
}

const char *oai_error_type(int status) {
    switch (status) {
    case 401: return "authentication_error";
    case 403: return "permission_error";
    case 404: return "not_found_error";
    case 409: return "conflict_error";
    case 429: return "rate_limit_error";
    default: return status >= 500 ? "server_error" : "invalid_request_error";
    }
}

/* ---- completions ---- */

static const char *finish_reason(const json_t *gen) {
    const char *s = json_string_value(json_object_get(gen, "stop"));
    return s && !strcmp(s, "length") ? "length" : "stop";
}

static json_t *usage(const json_t *gen) {
    json_int_t p = json_integer_value(json_object_get(gen, "prompt_tokens")),
               c = json_integer_value(json_object_get(gen, "tokens"));
    return json_pack("{s:I, s:I, s:I}", "prompt_tokens", p, "completion_tokens", c, "total_tokens", p + c);
}

json_t *oai_completion(int chat, const char *id, const char *model, int64_t created, const json_t *gen) {
    json_t *text = json_object_get(gen, "text");
    json_t *choice = chat ? json_pack("{s:i, s:{s:s, s:O, s:n}, s:s, s:n}", "index", 0, "message", "role", "assistant",
                                      "content", text, "refusal", "finish_reason", finish_reason(gen), "logprobs")
                          : json_pack("{s:i, s:O, s:s, s:n}", "index", 0, "text", text, "finish_reason",
                                      finish_reason(gen), "logprobs");
    return json_pack("{s:s, s:s, s:I, s:s, s:[o], s:o, s:s}", "id", id, "object",
                     chat ? "chat.completion" : "text_completion", "created", (json_int_t)created, "model", model,
                     "choices", choice, "usage", usage(gen), "system_fingerprint", "lorad");
}

static int sse_event(lr_buf *b, json_t *o) {
    char *s = o ? jsonfmt_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    int bad = !s || lr_buf_adds(b, "data: ") || lr_buf_adds(b, s) || lr_buf_adds(b, "\n\n");
    free(s);
    return bad;
}

static json_t *chunk(int chat, const char *id, const char *model, int64_t created, json_t *choice) {
    return json_pack("{s:s, s:s, s:I, s:s, s:[o], s:s}", "id", id, "object",
                     chat ? "chat.completion.chunk" : "text_completion", "created", (json_int_t)created, "model",
                     model, "choices", choice, "system_fingerprint", "lorad");
}

int oai_sse_open(lr_buf *b, int chat, const char *id, const char *model, int64_t created) {
    if (!chat) return 0;
    return sse_event(b, chunk(1, id, model, created,
                              json_pack("{s:i, s:{s:s, s:s}, s:n, s:n}", "index", 0, "delta", "role", "assistant",
                                        "content", "", "finish_reason", "logprobs")));
}

int oai_sse_text(lr_buf *b, int chat, const char *id, const char *model, int64_t created, const char *text,
                 size_t n) {
    json_t *piece = json_stringn(text, n);
    if (!piece) return -1;
    return sse_event(b, chunk(chat, id, model, created,
                              chat ? json_pack("{s:i, s:{s:o}, s:n, s:n}", "index", 0, "delta", "content", piece,
                                               "finish_reason", "logprobs")
                                   : json_pack("{s:i, s:o, s:n, s:n}", "index", 0, "text", piece, "finish_reason",
                                               "logprobs")));
}

int oai_sse_close(lr_buf *b, int chat, const char *id, const char *model, int64_t created, const json_t *gen,
                  int include_usage) {
    int bad = sse_event(b, chunk(chat, id, model, created,
                                 chat ? json_pack("{s:i, s:{}, s:s, s:n}", "index", 0, "delta", "finish_reason",
                                                  finish_reason(gen), "logprobs")
                                      : json_pack("{s:i, s:s, s:s, s:n}", "index", 0, "text", "", "finish_reason",
                                                  finish_reason(gen), "logprobs")));
    if (!bad && include_usage) {
        json_t *u = json_pack("{s:s, s:s, s:I, s:s, s:[], s:o}", "id", id, "object",
                              chat ? "chat.completion.chunk" : "text_completion", "created", (json_int_t)created,
                              "model", model, "choices", "usage", usage(gen));
        bad = sse_event(b, u);
    }
    return bad || lr_buf_adds(b, "data: [DONE]\n\n") ? -1 : 0;
}

char *oai_sse(int chat, const char *id, const char *model, int64_t created, const json_t *gen, int include_usage,
              size_t chunk_bytes, size_t *len) {
    const char *text = json_string_value(json_object_get(gen, "text"));
    size_t n = text ? strlen(text) : 0, at = 0;
    lr_buf b;
    lr_buf_init(&b, (n + 1024) * 8 + (1u << 16));
    int bad = oai_sse_open(&b, chat, id, model, created);
    while (!bad && at < n) {
        size_t k = chunk_bytes < n - at ? chunk_bytes : n - at;
        while (at + k < n && ((unsigned char)text[at + k] & 0xC0) == 0x80) k++; /* whole UTF-8 characters */
        bad = oai_sse_text(&b, chat, id, model, created, text + at, k);
        at += k;
    }
    if (bad || oai_sse_close(&b, chat, id, model, created, gen, include_usage)) {
        lr_buf_free(&b);
        return NULL;
    }
    return lr_buf_take(&b, len);
}
