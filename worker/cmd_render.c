/* lora-worker render: a dataset through a chat template, one JSON line per
 * row: {"text": the rendered string, "ids": [...], "labels": [...]}
 * (labels -100 where untrained); DPO rows add "rejected": {text, ids,
 * labels}. Used by the tests and by the daemon's dataset preview. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "formats/chat.h"
#include "worker/commands.h"
#include "formats/data.h"
#include "formats/tok.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: lora-worker render --tokenizer PATH [--template auto|chatml|llama3|mistral|alpaca|plain]\n"
            "                          [--max-seq-len N] [--system TEXT] [--generation-prompt] < FILE\n"
            "  FILE: a dataset (JSONL or CSV). --tokenizer: tokenizer.json or the model folder\n"
            "  (its tokenizer_config.json / config.json guide the template). --generation-prompt:\n"
            "  render each row up to its last assistant turn, then the assistant header.\n");
}

static json_t *ids_json(const int32_t *a, size_t n) {
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < n; i++)
        if (json_array_append_new(arr, json_integer(a[i]))) {
            json_decref(arr);
            return NULL;
        }
    return arr;
}

/* {"text","ids","labels"} of one rendering. */
static json_t *render_json(const chat *c, const chat_msg *m, int n, const char *sys, int gen, int max_len,
                           lr_err *err) {
    chat_out out;
    if (gen) {
        while (n > 0 && m[n - 1].role != CHAT_ASSISTANT) n--;
        if (n > 0) n--;
    }
    if (chat_render(c, m, n, sys, gen, 1, &out, err)) return NULL;
    size_t k = max_len > 0 && out.n > (size_t)max_len ? (size_t)max_len : out.n;
    json_t *o = json_pack("{s:o?,s:o?,s:o?}", "text", json_stringn(out.text, out.text_len), "ids",
                          ids_json(out.ids, k), "labels", ids_json(out.labels, k));
    chat_out_free(&out);
    if (!o) lr_errf(err, "out of memory");
    return o;
}

int cmd_render(int argc, char **argv) {
    const char *tok_path = NULL, *tpl_name = "auto", *sys = NULL;
    int max_len = 0, gen = 0, rc = 2;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--generation-prompt")) gen = 1;
        else if (v && !strcmp(a, "--tokenizer")) tok_path = argv[++i];
        else if (v && !strcmp(a, "--template")) tpl_name = argv[++i];
        else if (v && !strcmp(a, "--system")) sys = argv[++i];
        else if (v && !strcmp(a, "--max-seq-len")) {
            char *end;
            long n = strtol(argv[++i], &end, 10);
            if (*end || n < 0 || n > (1 << 24)) {
                fprintf(stderr, "render: --max-seq-len wants a count, not '%s'\n", v);
                return 1;
            }
            max_len = (int)n;
        } else {
            fprintf(stderr, "render: unknown or incomplete option '%s'\n", a);
            usage(stderr);
            return 1;
        }
    }
    if (!tok_path) {
        usage(stderr);
        return 1;
    }
    chat_tpl kind = TPL_AUTO;
    int found = 0;
    for (int k = TPL_AUTO; k <= TPL_PLAIN; k++)
        if (!strcmp(tpl_name, jobspec_template_name((chat_tpl)k))) {
            kind = (chat_tpl)k;
            found = 1;
        }
    if (!found) {
        fprintf(stderr, "render: unknown template '%s' (auto, chatml, llama3, mistral, alpaca, plain)\n", tpl_name);
        return 1;
    }

    lr_err err = {0};
    tok *t = NULL;
    chat c;
    data_file f = {0};
    lr_buf in;
    lr_buf_init(&in, DATA_MAX_FILE);
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, stdin)) > 0)
        if (lr_buf_add(&in, chunk, n)) {
            fprintf(stderr, "render: input is larger than %zu bytes\n", DATA_MAX_FILE);
            goto done;
        }
    if (tok_load(tok_path, &t, &err) || chat_init(&c, t, kind, tok_path, &err) ||
        data_parse(in.data ? in.data : "", in.len, &f, &err)) {
        fprintf(stderr, "render: %s\n", err.msg);
        goto done;
    }
    for (size_t i = 0; i < f.n_rows; i++) {
        const data_row *r = &f.rows[i];
        json_t *o = NULL;
        if (f.format == DATA_FMT_DPO) {
            chat_msg *pair = malloc((size_t)(r->n_msgs + r->n_rejected) * sizeof *pair);
            if (pair) {
                memcpy(pair, r->msgs, (size_t)r->n_msgs * sizeof *pair);
                memcpy(pair + r->n_msgs, r->msgs + r->n_msgs + r->n_chosen, (size_t)r->n_rejected * sizeof *pair);
                o = render_json(&c, r->msgs, r->n_msgs + r->n_chosen, sys, gen, max_len, &err);
                json_t *rej = o ? render_json(&c, pair, r->n_msgs + r->n_rejected, sys, gen, max_len, &err) : NULL;
                if (!rej || json_object_set_new(o, "rejected", rej)) {
                    json_decref(o);
                    o = NULL;
                }
                free(pair);
            } else {
                lr_errf(&err, "out of memory");
            }
        } else {
            o = render_json(&c, r->msgs, r->n_msgs, sys, gen, max_len, &err);
        }
        if (!o) {
            fprintf(stderr, "render: line %d: %s\n", r->line, err.msg);
            goto done;
        }
        char *s = json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII);
        json_decref(o);
        if (!s) {
            fprintf(stderr, "render: out of memory\n");
            goto done;
        }
        puts(s);
        free(s);
    }
    rc = fflush(stdout) ? 2 : 0;
done:
    data_file_free(&f);
    if (t) tok_free(t);
    lr_buf_free(&in);
    return rc;
}
