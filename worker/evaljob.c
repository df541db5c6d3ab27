/* evaljob: base vs. tuned generation, format compliance, F1 and KL. */
#include "worker/evaljob.h"

#include <ctype.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <utf8proc.h>

#include "common/buf.h"
#include "kernels/backend.h"
#include "formats/chat.h"
#include "worker/fmtcheck.h"
#include "worker/generate.h"
#include "worker/model.h"
#include "worker/prompts.h"
#include "formats/tok.h"

#define EVAL_MAX_RESULTS ((size_t)1 << 30) /* bytes of eval_results.jsonl */

/* ---- SQuAD F1 ---------------------------------------------------------------- */

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Normalised tokens of s in *buf (NUL-separated) and *tok, sorted. */
static int squad_tokens(const char *s, size_t n, char **buf, char ***tok, size_t *nt) {
    char *o = malloc(n * 4 + 1);
    char **t = NULL;
    size_t k = 0, cap = 0;
    *buf = o, *tok = NULL, *nt = 0;
    if (!o) return -1;
    for (size_t i = 0; i < n;) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t l = utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(n - i), &cp);
        if (l <= 0) cp = 0xFFFD, l = 1;
        i += (size_t)l;
        if (cp < 128 && ispunct(cp)) continue; /* Python's string.punctuation */
        if (cp < 128 ? isspace(cp) : utf8proc_category(cp) == UTF8PROC_CATEGORY_ZS || cp == 0x2028 || cp == 0x2029)
            cp = 0;
        else
            cp = utf8proc_tolower(cp);
        k += cp ? (size_t)utf8proc_encode_char(cp, (utf8proc_uint8_t *)o + k) : (o[k] = 0, 1);
    }
    o[k] = 0;
    for (size_t i = 0; i < k;) {
        size_t l = strlen(o + i);
        if (l && strcmp(o + i, "a") && strcmp(o + i, "an") && strcmp(o + i, "the")) {
            if (*nt == cap) {
                cap = cap ? cap * 2 : 64;
                char **p = realloc(t, cap * sizeof *p);
                if (!p) return free(t), -1;
                t = p;
            }
            t[(*nt)++] = o + i;
        }
        i += l + 1;
    }
    if (*nt) qsort(t, *nt, sizeof *t, cmp_str);
    *tok = t;
    return 0;
}

double evaljob_f1(const char *pred, size_t np, const char *ref, size_t nr) {
    char *b1 = NULL, *b2 = NULL, **t1 = NULL, **t2 = NULL;
    size_t n1 = 0, n2 = 0, common = 0;
    double f1 = 0;
    if (squad_tokens(pred, np, &b1, &t1, &n1) || squad_tokens(ref, nr, &b2, &t2, &n2)) goto done;
    if (!n1 || !n2) {
        f1 = n1 == n2;
        goto done;
    }
    for (size_t i = 0, j = 0; i < n1 && j < n2;) { /* multiset intersection of sorted lists */
        int c = strcmp(t1[i], t2[j]);
        if (!c) common++, i++, j++;
        else if (c < 0) i++;
        else j++;
    }
    if (common) {
        double p = (double)common / (double)n1, r = (double)common / (double)n2;
        f1 = 2 * p * r / (p + r);
    }
done:
    free(b1), free(b2), free(t1), free(t2);
    return f1;
}

/* ---- the job -------------------------------------------------------------------- */

typedef struct side {
    char *text;
    int n_tokens;
    gen_stop stop;
    int compliant; /* -1: no rules */
    char why[160];
    double f1;     /* NAN: no reference */
    int done;
} side;

typedef struct row {
    int32_t *ids; /* the rendered prompt */
    int n;
    int32_t *tuned_ids; /* the tuned output, for the KL */
    int n_tuned;
    side s[2];    /* base, tuned */
    double kl;    /* NAN: not computed */
    int kl_tokens;
} row;

typedef struct ejob {
    const jobspec *spec;
    const train_paths *paths;
    const train_hooks *hooks;
    const char *file, *adapter;
    kb_backend *be;
    tok *tk;
    chat ch;
    model *m;  /* the model generating now: the base, then the tuned one */
    model *m0; /* the base, kept beside a tuned full model (full_sft); NULL with an adapter */
    model_kv *kv;
    prompt_set ps;
    fmt_checker *fc;
    gen_opts go;
    row *rows;
    size_t n;
    int cap; /* KV positions: the longest prompt + max_new_tokens, within the model */
    double t0;
} ejob;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void ev(ejob *J, const char *level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void ev(ejob *J, const char *level, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (J->hooks && J->hooks->event) J->hooks->event(J->hooks->ud, level, msg);
}

static int cancelled(ejob *J) { return J->hooks && J->hooks->cancelled && J->hooks->cancelled(J->hooks->ud); }

static int gen_cancelled(void *ud) { return cancelled(ud); }

static int setup(ejob *J, const train_opts *opts, lr_err *err) {
    const jobspec *s = J->spec;
    if (lr_mkdirs(J->paths->run_dir, err)) return -1;
    if (kb_create(opts && opts->backend ? opts->backend : "cpu", opts ? opts->threads : 0, &J->be, err)) return -1;
    if (tok_load(J->paths->model_dir, &J->tk, err)) return lr_err_prefix(err, "model tokenizer: ");
    if (chat_init(&J->ch, J->tk, s->chat_template, J->paths->model_dir, err)) return -1;
    model_quant mq = {(kq_type)s->lora.quantize, s->lora.double_quant, MODEL_MM_F32}; /* evaluate on the base a QLoRA job trained */
    if (model_load_quant(J->paths->model_dir, J->be, &mq, &J->m, err)) return -1;
    if (prompts_load(J->file, &J->ps, err)) return -1;
    if (fmt_has_rules(&s->eval.format) && fmt_new(&s->eval.format, &J->fc, err)) return -1;
    gen_opts_init(&J->go);
    /* a generation of 65,536 tokens takes minutes: cancel between tokens */
    J->go.cancelled = gen_cancelled;
    J->go.cancel_ud = J;
    J->go.max_new_tokens = s->eval.generation.max_new_tokens;
    J->go.temperature = (float)s->eval.generation.temperature;
    J->go.top_p = (float)s->eval.generation.top_p;
    J->go.top_k = s->eval.generation.top_k;
    J->go.seed = s->eval.generation.seed;
    for (int i = 0; i < s->eval.generation.n_stop; i++)
        if (gen_add_stop(&J->go, s->eval.generation.stop[i], err))
            return lr_errp(err, LR_E_INVALID, "eval.generation.stop", "eval.generation.stop: %s", err->msg);
    gen_add_model_stops(&J->go, model_config(J->m), J->tk, &J->ch);
    if (gen_opts_check(&J->go, err)) return -1;

    const hf_config *c = model_config(J->m);
    int limit = 1 << 20;
    if (c->arch == ARCH_GPT2) limit = c->max_pos;
    J->n = s->eval.max_rows > 0 && (size_t)s->eval.max_rows < J->ps.n ? (size_t)s->eval.max_rows : J->ps.n;
    J->rows = calloc(J->n, sizeof *J->rows);
    if (!J->rows) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
    int longest = 0, skipped = 0;
    for (size_t i = 0; i < J->n; i++) {
        const prompt_row *p = &J->ps.rows[i];
        row *r = &J->rows[i];
        r->kl = NAN;
        chat_out co = {0};
        if (chat_render(&J->ch, p->msgs, p->n_msgs, s->system_prompt, 1, 0, &co, err))
            return lr_err_prefix(err, "%s line %d: ", J->file, p->line);
        if ((int64_t)co.n >= limit || co.n > (size_t)s->hp.max_seq_len) { /* no room to answer */
            chat_out_free(&co);
            skipped++;
            continue;
        }
        r->ids = co.ids, r->n = (int)co.n;
        co.ids = NULL;
        chat_out_free(&co);
        longest = r->n > longest ? r->n : longest;
    }
    if (skipped)
        ev(J, "warning", "%d of %zu rows skipped: their prompts are longer than max_seq_len (%d) or the model's %d positions",
           skipped, J->n, s->hp.max_seq_len, limit);
    if (!longest) return lr_errf(err, "%s: no row has a prompt that fits", J->file);
    J->cap = longest + J->go.max_new_tokens < limit ? longest + J->go.max_new_tokens : limit;
    return 0;
}

static void score(ejob *J, size_t i, int which, const gen_result *g) {
    const prompt_row *p = &J->ps.rows[i];
    side *sd = &J->rows[i].s[which];
    sd->text = g->text ? strdup(g->text) : NULL;
    sd->n_tokens = g->n;
    sd->stop = g->stop;
    sd->compliant = J->fc ? fmt_check(J->fc, g->text, g->len, sd->why, sizeof sd->why) : -1;
    sd->f1 = p->reference ? evaljob_f1(g->text, g->len, p->reference, p->ref_len) : NAN;
    sd->done = 1;
}

/* KL(tuned || base) summed over the positions of prompt + tuned output
 * that predict a token of it; the adapter is on when called and after. */
static int row_kl(ejob *J, row *r, lr_err *err) {
    const hf_config *c = model_config(J->m);
    int T = r->n + r->n_tuned, C = c->hidden, V = c->vocab_size, P = T - 1, rows = 32;
    int32_t *seq = malloc((size_t)T * sizeof *seq);
    float *h1 = malloc((size_t)T * C * sizeof(float)), *h0 = malloc((size_t)T * C * sizeof(float));
    float *l1 = malloc((size_t)rows * V * sizeof(float)), *l0 = malloc((size_t)rows * V * sizeof(float));
    int rc = -1;
    if (!seq || !h1 || !h0 || !l1 || !l0) {
        lr_errp(err, LR_E_NOMEM, NULL, "out of memory for the KL of %d tokens", T);
        goto done;
    }
    memcpy(seq, r->ids, (size_t)r->n * sizeof *seq);
    memcpy(seq + r->n, r->tuned_ids, (size_t)r->n_tuned * sizeof *seq);
    model *base = J->m0 ? J->m0 : J->m;
    if (model_hidden(J->m, seq, T, h1, err)) goto done;
    if (!J->m0) model_lora_enable(J->m, 0);
    int brc = model_hidden(base, seq, T, h0, err);
    if (!J->m0) model_lora_enable(J->m, 1);
    if (brc) goto done;
    double sum = 0;
    for (int p0 = 0; p0 < P; p0 += rows) {
        int k = P - p0 < rows ? P - p0 : rows;
        if (model_head(J->m, h1 + (size_t)p0 * C, k, l1, err) || model_head(base, h0 + (size_t)p0 * C, k, l0, err))
            goto done;
        for (int q = 0; q < k; q++) {
            const float *a = l1 + (size_t)q * V, *b = l0 + (size_t)q * V;
            double ma = a[0], mb = b[0], za = 0, zb = 0, s = 0;
            for (int v = 1; v < V; v++) ma = a[v] > ma ? a[v] : ma, mb = b[v] > mb ? b[v] : mb;
            for (int v = 0; v < V; v++) za += exp(a[v] - ma), zb += exp(b[v] - mb);
            double la = ma + log(za), lb = mb + log(zb);
            for (int v = 0; v < V; v++) {
                double lpa = a[v] - la;
                s += exp(lpa) * (lpa - (b[v] - lb));
            }
            sum += s > 0 ? s : 0; /* rounding can leave a tiny negative */
        }
    }
    r->kl = P > 0 ? sum / P : 0;
    r->kl_tokens = P;
    rc = 0;
done:
    free(seq), free(h1), free(h0), free(l1), free(l0);
    return rc;
}

/* One model over every row; which 0 = base, 1 = tuned (+ the KL). */
static int pass(ejob *J, int which, int64_t *progress, int64_t total, int *stopped, lr_err *err) {
    model_kv_free(J->kv);
    J->kv = NULL;
    if (model_kv_new(J->m, J->cap, &J->kv, err)) return -1;
    for (size_t i = 0; i < J->n; i++) {
        row *r = &J->rows[i];
        if (!r->ids) continue;
        if (cancelled(J)) {
            *stopped = 1;
            return 0;
        }
        gen_result g;
        if (gen_run(J->kv, J->tk, r->ids, r->n, &J->go, &g, err))
            return lr_err_prefix(err, "%s row %zu: ", J->file, i + 1);
        if (g.stop == GEN_STOP_CANCELLED || (which == 1 && g.n && cancelled(J))) {
            /* a cut-off answer is not scored (nor its KL computed) */
            gen_result_free(&g);
            *stopped = 1;
            return 0;
        }
        score(J, i, which, &g);
        if (which == 1) {
            r->tuned_ids = g.ids, r->n_tuned = g.n;
            g.ids = NULL;
            if (r->n_tuned && row_kl(J, r, err)) {
                gen_result_free(&g);
                return -1;
            }
        }
        gen_result_free(&g);
        ++*progress;
        if (J->hooks && J->hooks->progress) J->hooks->progress(J->hooks->ud, *progress, total, 0.0);
    }
    return 0;
}

/* The tuned side: a PEFT adapter on the base, or a whole model folder (a
 * full_sft run: config.json and weights, no adapter_config.json) loaded
 * beside it, which must share the base's vocabulary. */
static int tuned_load(ejob *J, lr_err *err) {
    char path[4200];
    if (lr_pathf(path, sizeof path, "%s/adapter_config.json", J->adapter))
        return lr_errf(err, "path too long: %s", J->adapter);
    int full = access(path, F_OK) != 0;
    if (full && (lr_pathf(path, sizeof path, "%s/config.json", J->adapter) || access(path, F_OK)))
        return lr_errp(err, LR_E_INVALID, "method.adapter", "%s has neither an adapter (adapter_config.json) nor a model (config.json)",
                       J->adapter);
    if (!full) return model_lora_load(J->m, J->adapter, err);
    model *t = NULL;
    if (model_load(J->adapter, J->be, &t, err)) return -1;
    if (model_config(t)->vocab_size != model_config(J->m)->vocab_size) {
        lr_errp(err, LR_E_INVALID, "method.adapter", "model %s has %d tokens, the base %d: not a fine-tune of it", J->adapter,
                model_config(t)->vocab_size, model_config(J->m)->vocab_size);
        model_free(t);
        return -1;
    }
    J->m0 = J->m;
    J->m = t;
    return 0;
}

static json_t *num_or_null(double v) { return isnan(v) ? json_null() : json_real(v); }

/* A JSON string of text; a model can emit invalid UTF-8 (a character cut
 * by the token limit), which becomes U+FFFD as Python's errors="replace". */
static json_t *json_text(const char *t, size_t n) {
    json_t *j = json_stringn(t, n);
    if (j) return j;
    char *o = malloc(n * 3 + 1);
    size_t k = 0;
    if (!o) return json_null();
    for (size_t i = 0; i < n;) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t l = utf8proc_iterate((const utf8proc_uint8_t *)t + i, (utf8proc_ssize_t)(n - i), &cp);
        if (l <= 0) cp = 0xFFFD, l = 1;
        i += (size_t)l;
        k += (size_t)utf8proc_encode_char(cp, (utf8proc_uint8_t *)o + k);
    }
    j = json_stringn(o, k);
    free(o);
    return j ? j : json_null();
}

static json_t *side_json(const side *s) {
    json_t *o = json_object();
    json_object_set_new(o, "output", s->text ? json_text(s->text, strlen(s->text)) : json_null());
    json_object_set_new(o, "tokens", json_integer(s->n_tokens));
    json_object_set_new(o, "stop", json_string(gen_stop_name(s->stop)));
    json_object_set_new(o, "compliant", s->compliant < 0 ? json_null() : json_boolean(s->compliant));
    json_object_set_new(o, "reason", s->compliant == 0 ? json_string(s->why) : json_null());
    json_object_set_new(o, "f1", num_or_null(s->f1));
    return o;
}

typedef struct totals {
    int n, compliant[2], with_ref;
    double f1[2], kl_sum;
    int64_t kl_tokens;
} totals;

static void add_up(const ejob *J, totals *t) {
    memset(t, 0, sizeof *t);
    for (size_t i = 0; i < J->n; i++) {
        const row *r = &J->rows[i];
        if (!r->s[0].done) continue;
        t->n++;
        for (int w = 0; w < 2; w++) {
            t->compliant[w] += r->s[w].compliant > 0;
            if (!isnan(r->s[w].f1)) t->f1[w] += r->s[w].f1;
        }
        t->with_ref += !isnan(r->s[0].f1);
        if (!isnan(r->kl)) t->kl_sum += r->kl * r->kl_tokens, t->kl_tokens += r->kl_tokens;
    }
}

static int write_outputs(ejob *J, const totals *t, lr_err *err) {
    lr_buf b;
    char path[4200];
    char *js = NULL;
    int rc = -1, tuned = J->adapter != NULL;
    lr_buf_init(&b, EVAL_MAX_RESULTS);
    for (size_t i = 0; i < J->n; i++) {
        const row *r = &J->rows[i];
        const prompt_row *p = &J->ps.rows[i];
        if (!r->s[0].done) continue;
        json_t *o = json_pack("{s:I,s:s,s:i,s:i}", "row", (json_int_t)(i + 1), "id", p->id, "line", p->line,
                              "prompt_tokens", r->n);
        json_object_set_new(o, "reference", p->reference ? json_text(p->reference, p->ref_len) : json_null());
        json_object_set_new(o, "base", side_json(&r->s[0]));
        if (tuned) {
            json_object_set_new(o, "tuned", r->s[1].done ? side_json(&r->s[1]) : json_null());
            json_object_set_new(o, "kl", num_or_null(r->kl));
        }
        char *line = json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII);
        json_decref(o);
        int bad = !line || lr_buf_adds(&b, line) || lr_buf_adds(&b, "\n");
        free(line);
        if (bad) {
            lr_errf(err, "eval_results.jsonl is over %zu bytes", EVAL_MAX_RESULTS);
            goto done;
        }
    }
    if (lr_pathf(path, sizeof path, "%s/eval_results.jsonl", J->paths->run_dir) ||
        lr_write_file_atomic(path, b.data ? b.data : "", b.len, err))
        goto done;
    json_t *spec = jobspec_to_json(J->spec), *o = json_object();
    json_object_set_new(o, "file", json_string(J->file));
    json_object_set_new(o, "adapter", tuned ? json_string(J->adapter) : json_null());
    json_object_set_new(o, "rows", json_integer(t->n));
    json_object_set_new(o, "rows_with_reference", json_integer(t->with_ref));
    int rules = J->fc != NULL;
    json_object_set_new(o, "compliant_base", rules ? json_integer(t->compliant[0]) : json_null());
    json_object_set_new(o, "compliance_base", rules && t->n ? json_real((double)t->compliant[0] / t->n) : json_null());
    json_object_set_new(o, "f1_base", t->with_ref ? json_real(t->f1[0] / t->with_ref) : json_null());
    if (tuned) {
        json_object_set_new(o, "compliant_tuned", rules ? json_integer(t->compliant[1]) : json_null());
        json_object_set_new(o, "compliance_tuned", rules && t->n ? json_real((double)t->compliant[1] / t->n) : json_null());
        json_object_set_new(o, "f1_tuned", t->with_ref ? json_real(t->f1[1] / t->with_ref) : json_null());
        json_object_set_new(o, "kl", t->kl_tokens ? json_real(t->kl_sum / (double)t->kl_tokens) : json_null());
        json_object_set_new(o, "kl_tokens", json_integer(t->kl_tokens));
    }
    json_object_set(o, "settings", json_object_get(spec, "eval"));
    json_object_set_new(o, "seconds", json_real(now_s() - J->t0));
    js = json_dumps(o, JSON_INDENT(2) | JSON_SORT_KEYS);
    json_decref(o);
    json_decref(spec);
    if (!js || lr_pathf(path, sizeof path, "%s/eval_summary.json", J->paths->run_dir) ||
        lr_write_file_atomic(path, js, strlen(js), err))
        goto done;
    rc = 0;
done:
    if (rc && !err->msg[0]) lr_errf(err, "cannot write the evaluation results in %s", J->paths->run_dir);
    free(js);
    lr_buf_free(&b);
    return rc;
}

static void report(ejob *J, const totals *t) {
    const train_hooks *h = J->hooks;
    int tuned = J->adapter != NULL;
    if (!h || !h->metric || !t->n) return;
    if (J->fc) {
        h->metric(h->ud, t->n, 0.0, "compliance_base", (double)t->compliant[0] / t->n);
        if (tuned) h->metric(h->ud, t->n, 0.0, "compliance_tuned", (double)t->compliant[1] / t->n);
    }
    if (t->with_ref) {
        h->metric(h->ud, t->n, 0.0, "f1_base", t->f1[0] / t->with_ref);
        if (tuned) h->metric(h->ud, t->n, 0.0, "f1_tuned", t->f1[1] / t->with_ref);
    }
    if (tuned && t->kl_tokens) h->metric(h->ud, t->n, 0.0, "kl", t->kl_sum / (double)t->kl_tokens);
}

int evaljob_run(const jobspec *spec, const train_paths *paths, const train_opts *opts, const train_hooks *hooks,
                train_outcome *outcome, lr_err *err) {
    ejob J;
    memset(&J, 0, sizeof J);
    J.spec = spec, J.paths = paths, J.hooks = hooks, J.t0 = now_s();
    J.file = paths->validation_file ? paths->validation_file : paths->training_files[0];
    J.adapter = paths->reference_adapter_dir;
    *outcome = TRAIN_DONE;
    int rc = -1, stopped = 0;
    if (spec->method.type != METHOD_EVAL) {
        lr_errp(err, LR_E_INVALID, "method.type", "evaljob_run runs method eval only");
        goto done;
    }
    if (spec->method.adapter[0] && !J.adapter) {
        lr_errp(err, LR_E_INVALID, "method.adapter", "adapter '%s' was not resolved to a directory", spec->method.adapter);
        goto done;
    }
    if (!J.file) {
        lr_errp(err, LR_E_INVALID, "training_file", "an eval job needs a file of prompts");
        goto done;
    }
    if (setup(&J, opts, err)) goto done;
    int64_t progress = 0, total = (int64_t)J.n * (J.adapter ? 2 : 1);
    ev(&J, "info", "evaluating %zu rows of %s: the base model%s%s", J.n, J.file, J.adapter ? ", then with the adapter " : "",
       J.adapter ? J.adapter : "");
    if (pass(&J, 0, &progress, total, &stopped, err)) goto done;
    if (J.adapter && !stopped) {
        if (tuned_load(&J, err) || pass(&J, 1, &progress, total, &stopped, err)) goto done;
    }
    totals t;
    add_up(&J, &t);
    if (write_outputs(&J, &t, err)) goto done;
    report(&J, &t);
    if (J.fc) ev(&J, "info", "format compliance: base %d/%d", t.compliant[0], t.n);
    if (J.fc && J.adapter) ev(&J, "info", "format compliance: tuned %d/%d", t.compliant[1], t.n);
    if (stopped) {
        ev(&J, "info", "cancelled after %" PRId64 " of %" PRId64 " generations; partial results written", progress, total);
        *outcome = TRAIN_CANCELLED;
    }
    rc = 0;
done:
    if (rc && err->msg[0] && hooks && hooks->event) hooks->event(hooks->ud, "error", err->msg);
    for (size_t i = 0; J.rows && i < J.n; i++) {
        free(J.rows[i].ids);
        free(J.rows[i].tuned_ids);
        free(J.rows[i].s[0].text);
        free(J.rows[i].s[1].text);
    }
    free(J.rows);
    fmt_free(J.fc);
    prompts_free(&J.ps);
    model_kv_free(J.kv);
    model_free(J.m);
    model_free(J.m0);
    tok_free(J.tk);
    if (J.be) kb_destroy(J.be);
    return rc;
}
