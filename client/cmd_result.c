/* cmd_result: what a job made: `lora generate`, `lora merge`, `lora download`. */
#include "client/cmd_result.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "client/fmt.h"
#include "common/buf.h"

/* ---- trying and merging an adapter (registering a full_sft model) ---- */

/* A number option in [lo, hi] into obj[key] (absent: nothing set). */
static int num_opt(cli_ctx *c, const char *opt, const char *key, double lo, double hi, int integer, json_t *obj) {
    const char *v = args_get(&c->a, opt, NULL);
    if (!v) return 0;
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || end == v || *end || !(x >= lo && x <= hi) || (integer && x != floor(x))) {
        lr_errf(&c->err, "--%s must be %s in %g..%g (got '%s')", opt, integer ? "an integer" : "a number", lo, hi, v);
        return -1;
    }
    json_object_set_new(obj, key, integer ? json_integer((json_int_t)x) : json_real(x));
    return 0;
}

static void print_side(cli_ctx *c, const char *label, const json_t *s) {
    const char *on = c->color ? "\x1b[1m" : "", *off = c->color ? "\x1b[0m" : "";
    printf("%s%s %s%s  (%.0f tokens, %s)\n", on, c->utf8 ? "──" : "--", label, off, cli_jnum(s, "tokens"),
           cli_jstr(s, "stop", "?"));
    const char *t = cli_jstr(s, "text", "");
    printf("%s%s", t, *t && t[strlen(t) - 1] == '\n' ? "" : "\n");
}

int lora_cmd_generate(cli_ctx *c) {
    const char *id = c->a.pos[0], *prompt = c->a.pos[1];
    char *stdin_text = NULL;
    json_t *body = json_object(), *r = NULL;
    int code = CLI_EXIT_USAGE;
    if (!strcmp(prompt, "-")) { /* a prompt of several lines */
        lr_buf b;
        lr_buf_init(&b, 32768);
        char chunk[4096];
        size_t n;
        int over = 0;
        while (!over && (n = fread(chunk, 1, sizeof chunk, stdin)) > 0) over = lr_buf_add(&b, chunk, n);
        if (over) {
            lr_buf_free(&b);
            lr_errf(&c->err, "the prompt on stdin is over 32768 bytes");
            goto out;
        }
        stdin_text = lr_buf_take(&b, &n);
        prompt = stdin_text ? stdin_text : "";
    }
    json_object_set_new(body, "prompt", json_string(prompt));
    if (!json_object_get(body, "prompt")) {
        lr_errf(&c->err, "the prompt is not UTF-8 text");
        goto out;
    }
    if (num_opt(c, "max-new-tokens", "max_new_tokens", 1, 1024, 1, body) ||
        num_opt(c, "temperature", "temperature", 0, 5, 0, body) || num_opt(c, "top-p", "top_p", 1e-9, 1, 0, body) ||
        num_opt(c, "top-k", "top_k", 0, 1e6, 1, body) || num_opt(c, "seed", "seed", 0, 9007199254740992.0, 1, body))
        goto out;
    const char *const *stops;
    int ns = args_list(&c->a, "stop", &stops);
    if (ns) {
        json_t *a = json_array();
        for (int i = 0; i < ns; i++) json_array_append_new(a, json_string(stops[i]));
        json_object_set_new(body, "stop", a);
    }
    const char *sys = args_get(&c->a, "system", NULL);
    if (sys) json_object_set_new(body, "system", json_string(sys));
    char p[256], e[160];
    snprintf(p, sizeof p, "/v1/jobs/%s/generate", cli_seg(id, e, sizeof e));
    if (c->err_tty && !c->json) fprintf(stderr, "generating with the base model and with what %s trained...\n", id);
    if (http_json(&c->h, "POST", p, body, &r, &c->err)) {
        code = cli_srv_fail(c);
        goto done;
    }
    if (c->json) {
        cli_print_json(r);
    } else {
        char label[200];
        snprintf(label, sizeof label, "base (%s)", cli_jstr(r, "model", "?"));
        print_side(c, label, json_object_get(r, "base"));
        snprintf(label, sizeof label, "tuned (%s)", id);
        print_side(c, label, json_object_get(r, "tuned"));
        fprintf(stderr, "%.0f prompt tokens, %.1f s\n", cli_jnum(r, "prompt_tokens"), cli_jnum(r, "seconds"));
    }
    code = 0;
    goto done;
out:
    code = cli_usage_fail(c);
done:
    json_decref(r);
    json_decref(body);
    free(stdin_text);
    return code;
}

/* The id of the job's newest event (0 when none), so that --wait reads only
 * what this merge adds. */
static int last_event_id(cli_ctx *c, const char *jid_seg, long long *out) {
    char p[256];
    json_t *r;
    *out = 0;
    for (;;) {
        snprintf(p, sizeof p, "/v1/jobs/%s/events?limit=10000&after=%lld", jid_seg, *out);
        if (http_json(&c->h, "GET", p, NULL, &r, &c->err)) return -1;
        json_t *d = json_object_get(r, "data");
        size_t n = json_array_size(d);
        if (n) *out = (long long)cli_jnum(json_array_get(d, n - 1), "id");
        json_decref(r);
        if (n < 10000) return 0;
    }
}

int lora_cmd_merge(cli_ctx *c) {
    const char *id = c->a.pos[0], *name = args_get(&c->a, "name", NULL);
    int wait = args_count(&c->a, "wait") > 0, code = 0;
    char p[512], e[160], ne[200];
    long long after = 0;
    json_t *body = json_object(), *r = NULL;
    if (name) json_object_set_new(body, "name", json_string(name));
    cli_seg(id, e, sizeof e);
    if (wait && last_event_id(c, e, &after)) {
        code = cli_srv_fail(c);
        goto out;
    }
    snprintf(p, sizeof p, "/v1/jobs/%s/merge", e);
    if (http_json(&c->h, "POST", p, body, &r, &c->err)) {
        code = cli_srv_fail(c);
        goto out;
    }
    char model[128], doing[300];
    snprintf(model, sizeof model, "%s", cli_jstr(r, "id", "?"));
    /* A full_sft job's model is registered as it is, not merged. */
    int reg = !strcmp(cli_jstr(r, "status", ""), "registering");
    snprintf(doing, sizeof doing, reg ? "registering %s's model as model %s" : "merging %s into model %s", id, model);
    if (!wait) {
        if (c->json) cli_print_json(r);
        else printf("%s\n", model);
        if (!c->json) fprintf(stderr, "%s (lora models ls lists it when done)\n", doing);
        goto out;
    }
    if (!c->json && c->err_tty) fprintf(stderr, "%s...\n", doing);
    char failed[64 + 128], mp[300];
    snprintf(failed, sizeof failed, reg ? "registering the full_sft model as %s failed" : "merge into model %s failed",
             model);
    snprintf(mp, sizeof mp, "/v1/models/%s", cli_seg(model, ne, sizeof ne));
    for (;;) {
        json_t *m = NULL, *ev = NULL;
        if (!http_json(&c->h, "GET", mp, NULL, &m, &c->err)) {
            if (c->json) cli_print_json(m);
            else printf("%s\n", model);
            if (!c->json) fprintf(stderr, reg ? "registered %s's model as model %s\n" : "merged %s into model %s\n", id, model);
            json_decref(m);
            break;
        }
        if (c->h.status != 404) {
            code = cli_srv_fail(c);
            break;
        }
        snprintf(p, sizeof p, "/v1/jobs/%s/events?limit=10000&after=%lld", e, after);
        if (http_json(&c->h, "GET", p, NULL, &ev, &c->err)) {
            code = cli_srv_fail(c);
            break;
        }
        json_t *x;
        size_t i;
        const char *why = NULL;
        json_array_foreach(json_object_get(ev, "data"), i, x) {
            after = (long long)cli_jnum(x, "id");
            if (!strncmp(cli_jstr(x, "message", ""), failed, strlen(failed))) why = cli_jstr(x, "message", "");
        }
        if (why) {
            fprintf(stderr, "lora: %s\n", why);
            json_decref(ev);
            code = 4;
            break;
        }
        json_decref(ev);
        usleep(500000);
    }
out:
    json_decref(r);
    json_decref(body);
    return code;
}

/* ---- download ---- */

static void dl_progress(void *ud, int64_t done, int64_t total) {
    const char *file = ud;
    char a[32], b[32];
    fmt_bytes((double)done, a, sizeof a);
    fmt_bytes((double)total, b, sizeof b);
    if (total > 0) fprintf(stderr, "\r\x1b[K%s  %3.0f%%  %s / %s", file, 100.0 * (double)done / (double)total, a, b);
}

/* A file name from the server must stay inside --out. */
static int safe_name(const char *n) {
    return *n && n[0] != '.' && !strchr(n, '/') && !strchr(n, '\\') && strlen(n) < 200;
}

int lora_cmd_download(cli_ctx *c) {
    const char *id = c->a.pos[0];
    char dir[1024], p[512], e[160], fe[512], dest[1400];
    snprintf(dir, sizeof dir, "%s", args_get(&c->a, "out", id));
    json_t *list = NULL, *r;
    snprintf(p, sizeof p, "/v1/jobs/%s/artifacts", cli_seg(id, e, sizeof e));
    if (http_json(&c->h, "GET", p, NULL, &r, &c->err)) return cli_srv_fail(c);
    list = json_object_get(r, "data");
    if (!json_array_size(list)) {
        json_decref(r);
        lr_errf(&c->err, "%s has no artifacts yet (the adapter, or a full_sft job's model, is written when training ends)",
                id);
        return cli_fail(c, 2);
    }
    if (lr_mkdirs(dir, &c->err)) {
        json_decref(r);
        return cli_fail(c, 1);
    }
    json_t *files = json_array(), *f;
    size_t i;
    int code = 0;
    json_array_foreach(list, i, f) {
        const char *name = json_is_string(f) ? json_string_value(f) : cli_jstr(f, "name", cli_jstr(f, "id", ""));
        if (!safe_name(name)) continue;
        char url[1024];
        snprintf(url, sizeof url, "/v1/jobs/%s/artifacts/%s", e, cli_seg(name, fe, sizeof fe));
        snprintf(dest, sizeof dest, "%s/%s", dir, name);
        int64_t bytes = 0;
        int rc = http_download(&c->h, url, dest, c->err_tty ? dl_progress : NULL, (void *)name, &bytes, &c->err);
        if (c->err_tty) fputs("\r\x1b[K", stderr);
        if (rc) {
            code = cli_srv_fail(c);
            break;
        }
        json_array_append_new(files, json_pack("{s:s, s:s, s:I}", "name", name, "path", dest, "bytes", (json_int_t)bytes));
        if (!c->json) {
            char b[32];
            fmt_bytes((double)bytes, b, sizeof b);
            printf("%s  %s\n", dest, b);
        }
    }
    if (c->json && !code) {
        json_t *o = json_pack("{s:s, s:s, s:O}", "job", id, "dir", dir, "files", files);
        cli_print_json(o);
        json_decref(o);
    }
    json_decref(files);
    json_decref(r);
    return code;
}
