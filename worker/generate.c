/* generate: KV-cached decoding with transformers' sampling rules. */
#include "worker/generate.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void gen_opts_init(gen_opts *o) {
    memset(o, 0, sizeof *o);
    o->max_new_tokens = 256;
    o->top_p = 1.0f;
}

int gen_opts_check(const gen_opts *o, lr_err *err) {
    if (o->max_new_tokens < 1 || o->max_new_tokens > GEN_MAX_NEW_TOKENS)
        return lr_errp(err, LR_E_INVALID, "max_new_tokens", "max_new_tokens must be between 1 and %d (got %d)",
                       GEN_MAX_NEW_TOKENS, o->max_new_tokens);
    if (!(o->temperature >= 0.0f && o->temperature <= 100.0f))
        return lr_errp(err, LR_E_INVALID, "temperature", "temperature must be between 0 and 100 (0 = greedy)");
    if (!(o->top_p > 0.0f && o->top_p <= 1.0f))
        return lr_errp(err, LR_E_INVALID, "top_p", "top_p must be > 0 and <= 1");
    if (o->top_k < 0) return lr_errp(err, LR_E_INVALID, "top_k", "top_k must be >= 0 (0 = off)");
    return 0;
}

int gen_add_stop(gen_opts *o, const char *s, lr_err *err) {
    if (o->n_stop == GEN_MAX_STOP) return lr_errp(err, LR_E_INVALID, "stop", "at most %d stop strings", GEN_MAX_STOP);
    size_t n = strlen(s);
    if (n == 0 || n >= GEN_MAX_STOP_LEN)
        return lr_errp(err, LR_E_INVALID, "stop", "a stop string must have 1 to %d bytes", GEN_MAX_STOP_LEN - 1);
    memcpy(o->stop[o->n_stop++], s, n + 1);
    return 0;
}

static void add_stop_id(gen_opts *o, int32_t id) {
    if (id < 0 || o->n_stop_ids == GEN_MAX_STOP_IDS) return;
    for (int i = 0; i < o->n_stop_ids; i++)
        if (o->stop_ids[i] == id) return;
    o->stop_ids[o->n_stop_ids++] = id;
}

void gen_add_model_stops(gen_opts *o, const hf_config *c, const tok *t, const chat *ch) {
    for (int i = 0; c && i < c->n_eos; i++) add_stop_id(o, c->eos_ids[i]);
    if (c && !c->n_eos) add_stop_id(o, c->eos_id);
    if (t) add_stop_id(o, tok_eos_id(t));
    if (ch) {
        if (ch->kind == TPL_CHATML) add_stop_id(o, ch->im_end);
        if (ch->kind == TPL_LLAMA3) add_stop_id(o, ch->eot);
        add_stop_id(o, ch->eos);
    }
}

const char *gen_stop_name(gen_stop s) {
    return s == GEN_STOP_TOKEN ? "stop_token" : s == GEN_STOP_STRING ? "stop_string" : s == GEN_STOP_LENGTH ? "length"
                                                                                               : "cancelled";
}

typedef struct cand {
    float p;
    int32_t id;
} cand;

/* Descending probability; ties by id so the order is total. */
static int cand_cmp(const void *a, const void *b) {
    const cand *x = a, *y = b;
    if (x->p != y->p) return x->p < y->p ? 1 : -1;
    return x->id < y->id ? -1 : x->id > y->id;
}

static int32_t argmax(const float *v, int n) {
    int32_t best = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[best]) best = i;
    return best;
}

int32_t gen_pick(float *logits, int V, const gen_opts *o, lr_rng *rng) {
    if (o->temperature <= 0.0f) return argmax(logits, V);
    float mx = -INFINITY;
    for (int i = 0; i < V; i++) {
        logits[i] /= o->temperature;
        mx = logits[i] > mx ? logits[i] : mx;
    }
    /* Tokens whose probability underflows to 0 can never be drawn or count
     * towards top_p: only the others are sorted. */
    cand *c = malloc((size_t)V * sizeof *c);
    if (!c) return argmax(logits, V);
    int n = 0;
    for (int i = 0; i < V; i++) {
        float p = expf(logits[i] - mx);
        if (p > 0.0f) c[n].p = p, c[n].id = i, n++;
    }
    int keep = n;
    if (o->top_k > 0 || o->top_p < 1.0f) {
        qsort(c, (size_t)n, sizeof *c, cand_cmp);
        if (o->top_k > 0 && o->top_k < keep) {
            /* transformers' TopKLogitsWarper keeps every token tied with the k-th */
            float kth = c[o->top_k - 1].p;
            keep = o->top_k;
            while (keep < n && c[keep].p == kth) keep++;
        }
        if (o->top_p < 1.0f) {
            double tot = 0, cum = 0;
            for (int i = 0; i < keep; i++) tot += c[i].p;
            int k = 0;
            while (k < keep) { /* the smallest prefix whose mass reaches top_p */
                cum += c[k++].p;
                if (cum >= o->top_p * tot) break;
            }
            keep = k;
        }
    }
    double tot = 0;
    for (int i = 0; i < keep; i++) tot += c[i].p;
    double u = rng_uniform(rng) * tot, cum = 0;
    int32_t id = c[keep - 1].id;
    for (int i = 0; i < keep; i++) {
        cum += c[i].p;
        if (u < cum) {
            id = c[i].id;
            break;
        }
    }
    free(c);
    return id;
}

/* The first stop string found in text: its offset, or -1. */
static long find_stop(const gen_opts *o, const char *text, size_t len) {
    long best = -1;
    for (int i = 0; i < o->n_stop; i++) {
        const char *p = memmem(text, len, o->stop[i], strlen(o->stop[i]));
        if (p && (best < 0 || p - text < best)) best = p - text;
    }
    return best;
}

int gen_run(model_kv *kv, const tok *t, const int32_t *prompt, int n_prompt, const gen_opts *o, gen_result *out,
            lr_err *err) {
    memset(out, 0, sizeof *out);
    out->n_prompt = n_prompt;
    if (gen_opts_check(o, err)) return -1;
    if (o->n_stop && !t) return lr_errp(err, LR_E_INVALID, "stop", "stop strings need a tokenizer");
    if (n_prompt <= 0) return lr_errp(err, LR_E_INVALID, "prompt", "the prompt has no tokens");
    const hf_config *c = model_config(model_kv_model(kv));
    int V = c->vocab_size;
    model_kv_reset(kv);
    float *logits = malloc((size_t)V * sizeof(float));
    out->ids = malloc((size_t)o->max_new_tokens * sizeof(int32_t));
    if (!logits || !out->ids) {
        free(logits);
        gen_result_free(out);
        return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
    }
    lr_rng rng;
    rng_seed(&rng, o->seed);
    out->stop = GEN_STOP_LENGTH;
    int rc = model_kv_append(kv, prompt, n_prompt, logits, 0, err);
    while (!rc) {
        int32_t id = gen_pick(logits, V, o, &rng);
        int is_stop = 0;
        for (int i = 0; i < o->n_stop_ids; i++) is_stop |= id == o->stop_ids[i];
        if (is_stop) {
            out->stop = GEN_STOP_TOKEN;
            break;
        }
        out->ids[out->n++] = id;
        if (o->n_stop) {
            char *s = NULL;
            size_t len;
            if ((rc = tok_decode(t, out->ids, (size_t)out->n, &s, &len, err))) break;
            long at = find_stop(o, s, len);
            free(s);
            if (at >= 0) {
                out->stop = GEN_STOP_STRING;
                break;
            }
        }
        if (o->on_token && o->on_token(o->token_ud, out->ids, out->n)) {
            out->stop = GEN_STOP_CANCELLED;
            break;
        }
        if (out->n == o->max_new_tokens || model_kv_len(kv) == model_kv_cap(kv)) break;
        if (o->cancelled && o->cancelled(o->cancel_ud)) {
            out->stop = GEN_STOP_CANCELLED;
            break;
        }
        rc = model_kv_append(kv, &id, 1, logits, 0, err);
    }
    free(logits);
    if (!rc && t) {
        rc = tok_decode(t, out->ids, (size_t)out->n, &out->text, &out->len, err);
        long at = rc ? -1 : find_stop(o, out->text, out->len);
        if (at >= 0) out->text[at] = 0, out->len = (size_t)at;
    }
    if (rc) gen_result_free(out);
    return rc;
}

void gen_result_free(gen_result *r) {
    free(r->ids);
    free(r->text);
    r->ids = NULL, r->text = NULL;
    r->n = 0, r->len = 0;
}
