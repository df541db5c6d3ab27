/* prompts: dataset rows as prompts (+ reference answers). */
#include "worker/prompts.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/buf.h"
#include "formats/data.h"

typedef struct impl {
    json_t *roots;  /* JSONL: every parsed line (the texts point into them) */
    data_file df;   /* CSV */
    chat_msg **msgs; /* per row, owned */
} impl;

typedef struct mvec {
    chat_msg m[DATA_MAX_MSGS];
    int n;
} mvec;

static int add_msg(mvec *v, chat_role role, const json_t *s, char *why, size_t cap) {
    if (v->n == DATA_MAX_MSGS) return snprintf(why, cap, "more than %d messages", DATA_MAX_MSGS), -1;
    v->m[v->n++] = (chat_msg){.role = role, .text = json_string_value(s), .len = json_string_length(s)};
    return 0;
}

/* A string, or a messages list (role/content objects). */
static int add_turns(mvec *v, const json_t *x, chat_role role, const char *field, char *why, size_t cap) {
    if (json_is_string(x)) return add_msg(v, role, x, why, cap);
    if (!json_is_array(x) || !json_array_size(x))
        return snprintf(why, cap, "field '%s' must be a string or a non-empty messages list", field), -1;
    size_t i;
    json_t *e;
    json_array_foreach(x, i, e) {
        json_t *r = json_object_get(e, "role"), *c = json_object_get(e, "content");
        int ro = json_is_string(r) ? chat_role_parse(json_string_value(r)) : -1;
        if (ro < 0 || !json_is_string(c))
            return snprintf(why, cap, "%s[%zu] needs a role (system, user, assistant) and a string content", field, i),
                   -1;
        if (add_msg(v, (chat_role)ro, c, why, cap)) return -1;
    }
    return 0;
}

static const json_t *opt_str(const json_t *o, const char *k, char *why, size_t cap, int *bad) {
    const json_t *x = json_object_get(o, k);
    if (!x || json_is_null(x)) return NULL;
    if (!json_is_string(x)) {
        snprintf(why, cap, "field '%s' is not a string", k);
        *bad = 1;
    }
    return x;
}

/* One JSONL row into v and its reference. */
static int parse_row(const json_t *o, mvec *v, const char **ref, size_t *ref_len, char *why, size_t cap) {
    int bad = 0;
    *ref = NULL, *ref_len = 0;
    v->n = 0;
    if (json_is_string(o)) return add_msg(v, CHAT_USER, o, why, cap);
    if (!json_is_object(o)) return snprintf(why, cap, "a row must be a JSON object or a string"), -1;
    const json_t *x, *ans = NULL;
    if ((x = json_object_get(o, "messages"))) {
        if (add_turns(v, x, CHAT_USER, "messages", why, cap)) return -1;
        if (v->n > 1 && v->m[v->n - 1].role == CHAT_ASSISTANT) {
            v->n--;
            *ref = v->m[v->n].text, *ref_len = v->m[v->n].len;
        }
        if (v->m[v->n - 1].role == CHAT_ASSISTANT)
            return snprintf(why, cap, "'messages' has no user message to answer"), -1;
        return 0;
    } else if ((x = json_object_get(o, "prompt"))) {
        if (add_turns(v, x, CHAT_USER, "prompt", why, cap)) return -1;
        ans = opt_str(o, "completion", why, cap, &bad);
        if (!ans) {
            const json_t *ch = json_object_get(o, "chosen");
            if (json_is_array(ch) && json_array_size(ch)) ch = json_object_get(json_array_get(ch, 0), "content");
            if (ch && !json_is_string(ch)) return snprintf(why, cap, "field 'chosen' has no answer text"), -1;
            ans = ch;
        }
    } else if ((x = json_object_get(o, "instruction"))) {
        const json_t *in = opt_str(o, "input", why, cap, &bad);
        if (!json_is_string(x)) return snprintf(why, cap, "field 'instruction' is not a string"), -1;
        if (add_msg(v, CHAT_USER, x, why, cap) ||
            (in && !bad && json_string_length(in) && add_msg(v, CHAT_INPUT, in, why, cap)))
            return -1;
        ans = opt_str(o, "output", why, cap, &bad);
    } else if ((x = json_object_get(o, "input")) || (x = json_object_get(o, "question"))) {
        int q = !json_object_get(o, "input");
        if (!json_is_string(x)) return snprintf(why, cap, "field '%s' is not a string", q ? "question" : "input"), -1;
        if (add_msg(v, CHAT_USER, x, why, cap)) return -1;
        ans = opt_str(o, q ? "answer" : "output", why, cap, &bad);
    } else {
        return snprintf(why, cap, "no prompt field: expected 'messages', 'prompt', 'instruction', 'input' or 'question'"),
               -1;
    }
    if (bad) return -1;
    if (ans) *ref = json_string_value(ans), *ref_len = json_string_length(ans);
    return 0;
}

static void set_id(prompt_row *r, const json_t *o) {
    const json_t *id = json_is_object(o) ? json_object_get(o, "id") : NULL;
    if (json_is_string(id)) snprintf(r->id, sizeof r->id, "%s", json_string_value(id));
    else if (json_is_integer(id)) snprintf(r->id, sizeof r->id, "%lld", (long long)json_integer_value(id));
    else snprintf(r->id, sizeof r->id, "line %d", r->line);
}

static int keep_row(prompt_set *ps, impl *im, size_t *cap, const mvec *v, lr_err *err) {
    if (ps->n == *cap) {
        size_t nc = *cap ? *cap * 2 : 64;
        prompt_row *r = realloc(ps->rows, nc * sizeof *r);
        chat_msg **mm = realloc(im->msgs, nc * sizeof *mm);
        if (r) ps->rows = r;
        if (mm) im->msgs = mm;
        if (!r || !mm) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
        *cap = nc;
    }
    im->msgs[ps->n] = malloc((size_t)v->n * sizeof(chat_msg));
    if (!im->msgs[ps->n]) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
    memcpy(im->msgs[ps->n], v->m, (size_t)v->n * sizeof(chat_msg));
    memset(&ps->rows[ps->n], 0, sizeof ps->rows[ps->n]);
    ps->rows[ps->n].msgs = im->msgs[ps->n];
    ps->rows[ps->n].n_msgs = v->n;
    ps->n++;
    return 0;
}

int prompts_parse(const char *buf, size_t len, prompt_set *ps, lr_err *err) {
    memset(ps, 0, sizeof *ps);
    impl *im = calloc(1, sizeof *im);
    mvec *v = malloc(sizeof *v);
    size_t cap = 0;
    int line = 0;
    if (!im || !v || !(im->roots = json_array())) {
        free(v);
        free(im);
        return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
    }
    ps->impl = im;
    for (size_t pos = 0; pos < len;) {
        const char *s = buf + pos, *nl = memchr(s, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - s) : len - pos;
        pos += n + 1;
        line++;
        size_t k = 0;
        while (k < n && (s[k] == ' ' || s[k] == '\t' || s[k] == '\r')) k++;
        if (k == n) continue;
        if (n > DATA_MAX_LINE) {
            lr_errp(err, LR_E_TOOBIG, NULL, "line %d is over %zu bytes", line, DATA_MAX_LINE);
            goto fail;
        }
        if (ps->n == PROMPTS_MAX_ROWS) {
            lr_errp(err, LR_E_TOOBIG, NULL, "more than %d rows", PROMPTS_MAX_ROWS);
            goto fail;
        }
        json_error_t je;
        json_t *o = json_loadb(s, n, JSON_DECODE_ANY, &je);
        if (!o) {
            lr_errp(err, LR_E_INVALID, NULL, "line %d: invalid JSON: %s", line, je.text);
            goto fail;
        }
        json_array_append_new(im->roots, o);
        char why[256] = "";
        const char *ref;
        size_t rl;
        if (parse_row(o, v, &ref, &rl, why, sizeof why)) {
            lr_errp(err, LR_E_INVALID, NULL, "line %d: %s", line, why);
            goto fail;
        }
        if (keep_row(ps, im, &cap, v, err)) goto fail;
        prompt_row *r = &ps->rows[ps->n - 1];
        r->line = line;
        r->reference = ref, r->ref_len = rl;
        set_id(r, o);
    }
    free(v);
    if (!ps->n) {
        prompts_free(ps);
        return lr_errp(err, LR_E_INVALID, NULL, "no rows");
    }
    return 0;
fail:
    free(v);
    prompts_free(ps);
    return -1;
}

static int load_csv(const char *path, prompt_set *ps, lr_err *err) {
    memset(ps, 0, sizeof *ps);
    impl *im = calloc(1, sizeof *im);
    mvec *v = malloc(sizeof *v);
    size_t cap = 0;
    if (!im || !v) {
        free(v);
        free(im);
        return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
    }
    ps->impl = im;
    if (data_load(path, &im->df, err)) goto fail;
    for (size_t i = 0; i < im->df.n_rows; i++) {
        const data_row *d = &im->df.rows[i];
        int np = d->n_msgs;
        const chat_msg *ans = NULL;
        if (im->df.format == DATA_FMT_DPO) {
            ans = d->n_chosen ? &d->msgs[np] : NULL;
        } else if (np > 1 && d->msgs[np - 1].role == CHAT_ASSISTANT) {
            ans = &d->msgs[--np];
        }
        v->n = np;
        memcpy(v->m, d->msgs, (size_t)np * sizeof(chat_msg));
        if (keep_row(ps, im, &cap, v, err)) goto fail;
        prompt_row *r = &ps->rows[ps->n - 1];
        r->line = d->line;
        snprintf(r->id, sizeof r->id, "line %d", d->line);
        if (ans) r->reference = ans->text, r->ref_len = ans->len;
    }
    free(v);
    return 0;
fail:
    free(v);
    prompts_free(ps);
    return -1;
}

int prompts_load(const char *path, prompt_set *ps, lr_err *err) {
    size_t pl = strlen(path);
    if (pl > 4 && !strcasecmp(path + pl - 4, ".csv")) return load_csv(path, ps, err);
    char *buf = NULL;
    size_t len;
    memset(ps, 0, sizeof *ps);
    if (lr_read_file(path, DATA_MAX_FILE, &buf, &len, err)) return -1;
    int rc = prompts_parse(buf, len, ps, err);
    free(buf);
    if (rc) lr_err_prefix(err, "%s: ", path);
    return rc;
}

void prompts_free(prompt_set *ps) {
    impl *im = ps->impl;
    if (im) {
        for (size_t i = 0; i < ps->n; i++) free(im->msgs[i]);
        free(im->msgs);
        json_decref(im->roots);
        data_file_free(&im->df);
        free(im);
    }
    free(ps->rows);
    memset(ps, 0, sizeof *ps);
}
