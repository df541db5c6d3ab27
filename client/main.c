/* lora: the command-line client of lorad.
 *
 * Exit statuses (documented in client/README.md and `lora --help`):
 *   0 ok, 1 usage or local error (unknown flag, missing file, bad --set),
 *   2 the server said no (4xx/5xx: its message is printed as it worded it),
 *   3 cannot connect, 4 the watched job failed (or, for merge --wait, the merge), 5 it was cancelled,
 *   130 interrupted.
 * Output: tables and plain lines for people, --json for programs (the
 * server's objects; lists as a JSON array). Colours and in-place redraws only
 * when stdout is a terminal. Ids go to stdout, commentary to stderr, so
 * `id=$(lora submit job.yaml)` works. */
#include <curl/curl.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "client/args.h"
#include "client/cfg.h"
#include "client/fmt.h"
#include "client/http.h"
#include "client/sweep.h"
#include "client/table.h"
#include "client/watch.h"
#include "common/buf.h"
#include "proto/jobspec.h"

#define LORA_VERSION "0.1.0"
#define EXIT_USAGE 1

typedef struct ctx {
    args a;
    const char *cmd;        /* "datasets upload": for messages */
    cfg conf;
    char cfg_path[1024];
    http_client h;
    int json, tty, err_tty, color, utf8;
    lr_err err;
} ctx;

typedef struct command {
    const char *name;       /* one or two words */
    int (*fn)(ctx *c);
    int min_pos, max_pos;   /* positional arguments */
    const char *usage;      /* after "lora <name> " */
    const char *summary;
    const arg_opt *opts;
} command;

static const arg_opt global_opts[] = {
    {"url", 0, ARG_VALUE, "URL", "server URL (or LORA_URL, or `lora login`)"},
    {"token", 0, ARG_VALUE, "TOKEN", "API token (or LORA_TOKEN, or `lora login`)"},
    {"json", 0, ARG_FLAG, NULL, "machine-readable JSON on stdout"},
    {"no-color", 0, ARG_FLAG, NULL, "no colours even on a terminal (also NO_COLOR)"},
    {"help", 'h', ARG_FLAG, NULL, "this help"},
    {NULL, 0, 0, NULL, NULL},
};

/* ---- output helpers ---- */

static int fail(ctx *c, int code) {
    fprintf(stderr, "lora: %s\n", c->err.msg);
    return code;
}

static int usage_fail(ctx *c) {
    fprintf(stderr, "lora: %s (see 'lora %s --help')\n", c->err.msg, c->cmd);
    return EXIT_USAGE;
}

/* The server said no or could not be reached: its words, one line. */
static int srv_fail(ctx *c) {
    int code = http_exit_code(&c->h);
    if (c->h.status == 401 && !c->conf.token[0])
        fprintf(stderr, "lora: %s (no token: set LORA_TOKEN, pass --token or run 'lora login URL TOKEN')\n", c->err.msg);
    else if (code == HTTP_FAIL_CONNECT)
        fprintf(stderr, "lora: %s (URL from %s)\n", c->err.msg, c->conf.url_from);
    else
        fprintf(stderr, "lora: %s\n", c->err.msg);
    return code;
}

static void print_json(const json_t *j) {
    json_dumpf(j, stdout, JSON_INDENT(2));
    fputc('\n', stdout);
}

static const char *jstr(const json_t *o, const char *k, const char *def) {
    const char *s = json_string_value(json_object_get(o, k));
    return s && *s ? s : def;
}

static double jnum(const json_t *o, const char *k) {
    const json_t *v = json_object_get(o, k);
    return json_is_number(v) ? json_number_value(v) : NAN;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void fmt_time(double t, char *out, size_t cap) {
    if (!isfinite(t) || t <= 0) {
        snprintf(out, cap, "-");
        return;
    }
    time_t tt = (time_t)t;
    struct tm tm;
    localtime_r(&tt, &tm);
    strftime(out, cap, "%Y-%m-%d %H:%M:%S", &tm);
}

static const char *status_sgr(const char *st) {
    if (!strcmp(st, "succeeded") || !strcmp(st, "idle")) return "32";
    if (!strcmp(st, "failed") || !strcmp(st, "dead")) return "31";
    if (!strcmp(st, "cancelled")) return "33";
    if (!strcmp(st, "running") || !strcmp(st, "busy")) return "36";
    return NULL;
}

static int table_cell(table *t, int col, const char *text) { return table_set(t, col, text, NULL); }

/* Path segment from user input, percent-encoded. */
static const char *seg(const char *s, char *buf, size_t cap) {
    http_escape(s, buf, cap);
    return buf;
}

/* GETs a list route, following has_more/after until `limit` items (0 = all). */
static int fetch_list(ctx *c, const char *path, long long limit, json_t **out) {
    json_t *all = json_array();
    char url[2048], after[128] = "";
    for (;;) {
        long long want = limit > 0 ? limit - (long long)json_array_size(all) : 100;
        if (want > 100) want = 100;
        snprintf(url, sizeof url, "%s%slimit=%lld%s%s", path, strchr(path, '?') ? "&" : "?", want,
                 after[0] ? "&after=" : "", after);
        json_t *page;
        if (http_json(&c->h, "GET", url, NULL, &page, &c->err)) {
            json_decref(all);
            return -1;
        }
        json_t *data = json_object_get(page, "data"), *it;
        size_t i;
        json_array_foreach(data, i, it) json_array_append(all, it);
        int more = json_is_true(json_object_get(page, "has_more")) && json_array_size(data) > 0;
        if (more) seg(jstr(json_array_get(data, json_array_size(data) - 1), "id", ""), after, sizeof after);
        json_decref(page);
        if (!more || !after[0] || (limit > 0 && (long long)json_array_size(all) >= limit)) break;
    }
    *out = all;
    return 0;
}

/* ---- login ---- */

static int cmd_login(ctx *c) {
    cfg file = {0}, resolved;
    cfg_resolve(&resolved, c->a.pos[0], c->a.pos[1], NULL, NULL, NULL, NULL);
    http_client h;
    if (http_init(&h, resolved.url, resolved.token, &c->err)) return fail(c, 1);
    json_t *r = NULL;
    int rc = http_json(&h, "GET", "/v1/jobs?limit=1", NULL, &r, &c->err);
    json_decref(r);
    if (rc) {
        c->h.status = h.status;
        int code = http_exit_code(&h);
        http_free(&h);
        fprintf(stderr, "lora: %s\n", c->err.msg);
        return code;
    }
    http_free(&h);
    snprintf(file.url, sizeof file.url, "%s", resolved.url);
    snprintf(file.token, sizeof file.token, "%s", resolved.token);
    if (cfg_save(c->cfg_path, &file, &c->err)) return fail(c, 1);
    fprintf(stderr, "logged in to %s (saved in %s)\n", file.url, c->cfg_path);
    return 0;
}

/* ---- datasets ---- */

static void upload_progress(void *ud, int64_t done, int64_t total) {
    const char *file = ud;
    char a[32], b[32];
    if (total <= 0) return;
    fmt_bytes((double)done, a, sizeof a);
    fmt_bytes((double)total, b, sizeof b);
    fprintf(stderr, "\r\x1b[Kuploading %s  %3.0f%%  %s / %s", file, 100.0 * (double)done / (double)total, a, b);
}

static int cmd_ds_upload(ctx *c) {
    const char *file = c->a.pos[0], *name = args_get(&c->a, "name", NULL);
    struct stat st;
    if (stat(file, &st) || !S_ISREG(st.st_mode)) {
        lr_errf(&c->err, "%s: %s", file, errno ? strerror(errno) : "not a regular file");
        return fail(c, EXIT_USAGE);
    }
    json_t *r;
    int rc = http_upload(&c->h, "/v1/datasets", file, name, c->err_tty ? upload_progress : NULL, (void *)file, &r,
                         &c->err);
    if (c->err_tty) fputs("\r\x1b[K", stderr);
    if (rc) {
        int code = srv_fail(c);
        /* the validation report: one line per bad row, as the server numbered them */
        json_t *errs = json_object_get(json_object_get(c->h.error_body, "error"), "errors"), *e;
        size_t i;
        json_array_foreach(errs, i, e) {
            if (json_is_string(e))
                fprintf(stderr, "  %s\n", json_string_value(e));
            else if (json_is_integer(json_object_get(e, "line")))
                fprintf(stderr, "  %s line %lld: %s\n", file, (long long)json_integer_value(json_object_get(e, "line")),
                        jstr(e, "message", "?"));
            else
                fprintf(stderr, "  %s\n", jstr(e, "message", "?"));
        }
        return code;
    }
    if (c->json) {
        print_json(r);
    } else {
        printf("%s\n", jstr(r, "id", "?"));
        char b[32];
        fmt_bytes(jnum(r, "bytes"), b, sizeof b);
        fprintf(stderr, "uploaded %s: %.0f rows, %s, %s %s\n", file, jnum(r, "rows"), b, jstr(r, "format", "?"),
                jstr(r, "kind", ""));
    }
    json_decref(r);
    return 0;
}

static int cmd_ds_ls(ctx *c) {
    json_t *list;
    if (fetch_list(c, "/v1/datasets", 0, &list)) return srv_fail(c);
    if (c->json) {
        print_json(list);
        json_decref(list);
        return 0;
    }
    static const char *const hd[] = {"ID", "FILE", "FORMAT", "KIND", "ROWS", "SIZE", "USER", "CREATED"};
    table *t = table_new(8, hd);
    table_align_right(t, 4);
    table_align_right(t, 5);
    table_max_width(t, 1, 40);
    json_t *d;
    size_t i;
    int bad = !t;
    json_array_foreach(list, i, d) {
        char rows[32], size[32], created[32];
        snprintf(rows, sizeof rows, "%.0f", jnum(d, "rows"));
        fmt_bytes(jnum(d, "bytes"), size, sizeof size);
        fmt_time(jnum(d, "created_at"), created, sizeof created);
        bad |= table_add_row(t) || table_cell(t, 0, jstr(d, "id", "")) ||
               table_cell(t, 1, jstr(d, "filename", jstr(d, "name", ""))) || table_cell(t, 2, jstr(d, "format", "")) ||
               table_cell(t, 3, jstr(d, "kind", "")) || table_cell(t, 4, rows) || table_cell(t, 5, size) ||
               table_cell(t, 6, jstr(d, "user", "")) || table_cell(t, 7, created);
    }
    if (!bad) table_print(t, stdout, c->utf8, c->color);
    table_free(t);
    json_decref(list);
    if (bad) return lr_errf(&c->err, "out of memory"), fail(c, 1);
    return 0;
}

/* key: value lines for an object, nested objects flattened with dots. */
static void print_fields(const json_t *o, const char *prefix) {
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)o, k, v) {
        char path[256];
        snprintf(path, sizeof path, "%s%s%s", prefix, *prefix ? "." : "", k);
        if (json_is_object(v) && json_object_size(v)) {
            print_fields(v, path);
            continue;
        }
        char *s = json_is_string(v) ? NULL : json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT | JSON_REAL_PRECISION(10));
        printf("%-40s %s\n", path, s ? s : json_string_value(v));
        free(s);
    }
}

static int cmd_ds_show(ctx *c) {
    char p[512], e[256];
    json_t *r;
    snprintf(p, sizeof p, "/v1/datasets/%s", seg(c->a.pos[0], e, sizeof e));
    if (http_json(&c->h, "GET", p, NULL, &r, &c->err)) return srv_fail(c);
    if (c->json)
        print_json(r);
    else
        print_fields(r, "");
    json_decref(r);
    return 0;
}

/* Rows as lorad previews them: rendered segments (with --model) where the
 * trained tokens are marked, or the parsed messages. */
static int cmd_ds_preview(ctx *c) {
    char p[1024], e[256], m[256];
    long long n;
    if (args_int(&c->a, "limit", 3, 1, 100, &n, &c->err)) return usage_fail(c);
    const char *model = args_get(&c->a, "model", NULL);
    snprintf(p, sizeof p, "/v1/datasets/%s/preview?n=%lld%s%s", seg(c->a.pos[0], e, sizeof e), n,
             model ? "&model=" : "", model ? seg(model, m, sizeof m) : "");
    json_t *r;
    if (http_json(&c->h, "GET", p, NULL, &r, &c->err)) return srv_fail(c);
    if (c->json) {
        print_json(r);
        json_decref(r);
        return 0;
    }
    /* trained text: green on a terminal, between markers when piped */
    const char *on = c->color ? "\x1b[32m" : c->utf8 ? "«" : "<<", *off = c->color ? "\x1b[0m" : c->utf8 ? "»" : ">>";
    json_t *rows = json_object_get(r, "rows"), *row, *x;
    size_t i, k;
    json_array_foreach(rows, i, row) {
        printf("── line %lld", (long long)json_integer_value(json_object_get(row, "line")));
        if (json_is_integer(json_object_get(row, "tokens")))
            printf(" (%lld tokens, %lld trained)", (long long)json_integer_value(json_object_get(row, "tokens")),
                   (long long)json_integer_value(json_object_get(row, "trained_tokens")));
        printf(" ──\n");
        if (json_is_string(json_object_get(row, "error"))) printf("error: %s\n", jstr(row, "error", ""));
        json_array_foreach(json_object_get(row, "segments"), k, x) {
            int tr = json_is_true(json_object_get(x, "trained"));
            printf("%s%s%s", tr ? on : "", jstr(x, "text", ""), tr ? off : "");
        }
        if (json_array_size(json_object_get(row, "segments"))) printf("\n");
        json_array_foreach(json_object_get(row, "messages"), k, x) {
            const char *part = jstr(x, "part", "prompt");
            int tr = json_is_true(json_object_get(x, "trained"));
            printf("[%s%s%s] %s%s%s\n", jstr(x, "role", "?"), strcmp(part, "prompt") ? ", " : "",
                   strcmp(part, "prompt") ? part : "", tr ? on : "", jstr(x, "content", ""), tr ? off : "");
        }
    }
    fprintf(stderr, "%zu of %lld rows%s\n", json_array_size(rows), (long long)json_integer_value(json_object_get(r, "rows_total")),
            model ? "" : " (add --model M to see them through its chat template)");
    json_decref(r);
    return 0;
}

static int cmd_ds_rm(ctx *c) {
    int code = 0;
    for (int i = 0; i < c->a.npos; i++) {
        char p[512], e[256];
        json_t *r;
        snprintf(p, sizeof p, "/v1/datasets/%s", seg(c->a.pos[i], e, sizeof e));
        if (http_json(&c->h, "DELETE", p, NULL, &r, &c->err)) {
            code = srv_fail(c);
            continue;
        }
        if (c->json) print_json(r);
        else printf("deleted %s\n", c->a.pos[i]);
        json_decref(r);
    }
    return code;
}

/* ---- models, workers ---- */

static int cmd_models(ctx *c) {
    json_t *list;
    if (fetch_list(c, "/v1/models", 0, &list)) return srv_fail(c);
    if (c->json) {
        print_json(list);
        json_decref(list);
        return 0;
    }
    static const char *const hd[] = {"ID", "ARCH", "LAYERS", "HIDDEN", "HEADS", "VOCAB", "DTYPE", "CREATED"};
    static const char *const ints[] = {"num_layers", "hidden_size", "num_heads", "vocab_size"};
    table *t = table_new(8, hd);
    int bad = !t;
    for (int col = 2; t && col < 6; col++) table_align_right(t, col);
    json_t *m;
    size_t i;
    json_array_foreach(list, i, m) {
        char created[32];
        fmt_time(jnum(m, "created"), created, sizeof created);
        bad |= !t || table_add_row(t) || table_cell(t, 0, jstr(m, "id", "")) ||
               table_cell(t, 1, jstr(m, "architecture", "-")) || table_cell(t, 6, jstr(m, "torch_dtype", "-")) ||
               table_cell(t, 7, created);
        for (int k = 0; !bad && k < 4; k++) {
            char v[32] = "-";
            if (isfinite(jnum(m, ints[k]))) snprintf(v, sizeof v, "%.0f", jnum(m, ints[k]));
            bad |= table_cell(t, 2 + k, v);
        }
    }
    if (!bad) table_print(t, stdout, c->utf8, c->color);
    table_free(t);
    json_decref(list);
    if (bad) return lr_errf(&c->err, "out of memory"), fail(c, 1);
    return 0;
}

static int cmd_workers(ctx *c) {
    json_t *list;
    if (fetch_list(c, "/v1/workers", 0, &list)) return srv_fail(c);
    if (c->json) {
        print_json(list);
        json_decref(list);
        return 0;
    }
    static const char *const hd[] = {"ID", "BACKEND", "DEVICE", "STATUS", "JOB", "MEMORY", "THREADS", "RESTARTS", "SEEN"};
    table *t = table_new(9, hd);
    int bad = !t;
    if (t) {
        table_align_right(t, 5);
        table_align_right(t, 6);
        table_align_right(t, 7);
        table_max_width(t, 2, 32);
    }
    json_t *w;
    size_t i;
    json_array_foreach(list, i, w) {
        char mem[32], thr[16], rs[16], seen[32];
        const char *st = jstr(w, "status", "?");
        fmt_bytes(jnum(w, "mem_bytes"), mem, sizeof mem);
        snprintf(thr, sizeof thr, "%.0f", isfinite(jnum(w, "threads")) ? jnum(w, "threads") : 0);
        snprintf(rs, sizeof rs, "%.0f", isfinite(jnum(w, "restarts")) ? jnum(w, "restarts") : 0);
        double ls = jnum(w, "last_seen");
        if (isfinite(ls)) {
            fmt_duration(now_s() - ls, seen, sizeof seen);
            strncat(seen, " ago", sizeof seen - strlen(seen) - 1);
        } else {
            snprintf(seen, sizeof seen, "-");
        }
        bad |= !t || table_add_row(t) || table_cell(t, 0, jstr(w, "id", "")) || table_cell(t, 1, jstr(w, "backend", "")) ||
               table_cell(t, 2, jstr(w, "device", "")) || table_set(t, 3, st, status_sgr(st)) ||
               table_cell(t, 4, jstr(w, "job_id", "-")) || table_cell(t, 5, mem) || table_cell(t, 6, thr) ||
               table_cell(t, 7, rs) || table_cell(t, 8, seen);
    }
    if (!bad) table_print(t, stdout, c->utf8, c->color);
    table_free(t);
    json_decref(list);
    if (bad) return lr_errf(&c->err, "out of memory"), fail(c, 1);
    return 0;
}

/* ---- job specs ---- */

/* Reads a job file and applies --set overrides and --name; validates the
 * result with the same code as the server. On error: exit status 1. */
static int load_spec(ctx *c, const char *file, json_t **out) {
    char *text = NULL;
    size_t len;
    json_t *doc = NULL;
    *out = NULL;
    if (lr_read_file(file, JOBSPEC_MAX_TEXT, &text, &len, &c->err)) goto fail;
    if (jobspec_parse_text(text, len, &doc, &c->err)) {
        lr_err_prefix(&c->err, "%s: ", file);
        goto fail;
    }
    if (!json_is_object(doc)) {
        lr_errf(&c->err, "%s: a job spec is a mapping (name:, model:, training_file:, ...)", file);
        goto fail;
    }
    const char *const *sets;
    int n = args_list(&c->a, "set", &sets);
    for (int i = 0; i < n; i++)
        if (jobspec_set(doc, sets[i], &c->err)) goto fail;
    const char *name = args_get(&c->a, "name", NULL);
    if (name) json_object_set_new(doc, "name", json_string(name));
    jobspec s;
    if (jobspec_from_json(doc, &s, &c->err)) {
        lr_err_prefix(&c->err, "%s: ", file);
        goto fail;
    }
    free(text);
    *out = doc;
    return 0;
fail:
    free(text);
    json_decref(doc);
    return -1;
}

static int watch_opts_from(ctx *c, watch_opts *o) {
    const char *iv = args_get(&c->a, "interval", "1");
    char *end;
    double d = strtod(iv, &end);
    if (*end || !(d >= 0.05 && d <= 3600)) {
        lr_errf(&c->err, "--interval must be seconds between 0.05 and 3600 (got '%s')", iv);
        return -1;
    }
    o->interval = d;
    o->tty = c->tty;
    o->utf8 = c->utf8;
    o->color = c->color;
    return 0;
}

static int do_watch(ctx *c, const char *id) {
    watch_opts o;
    int code;
    if (watch_opts_from(c, &o)) return usage_fail(c);
    if (watch_run(&c->h, id, &o, &code, &c->err)) return srv_fail(c);
    if (code == WATCH_EXIT_INTERRUPTED)
        fprintf(stderr, "lora: stopped watching; %s goes on (lora cancel %s to stop it)\n", id, id);
    return code;
}

static int cmd_submit(ctx *c) {
    json_t *doc, *r;
    if (load_spec(c, c->a.pos[0], &doc)) return fail(c, EXIT_USAGE);
    int rc = http_json(&c->h, "POST", "/v1/jobs", doc, &r, &c->err);
    json_decref(doc);
    if (rc) return srv_fail(c);
    char id[128];
    snprintf(id, sizeof id, "%s", jstr(r, "id", "?"));
    if (c->json && !args_count(&c->a, "watch")) print_json(r);
    else if (!c->json) printf("%s\n", id);
    json_decref(r);
    if (!args_count(&c->a, "watch")) {
        if (c->err_tty) fprintf(stderr, "submitted %s: follow it with 'lora watch %s'\n", id, id);
        return 0;
    }
    fflush(stdout);
    int code = do_watch(c, id);
    if (c->json && code != 2 && code != 3) {
        char p[256], e[160];
        snprintf(p, sizeof p, "/v1/jobs/%s", seg(id, e, sizeof e));
        if (!http_json(&c->h, "GET", p, NULL, &r, &c->err)) {
            print_json(r);
            json_decref(r);
        }
    }
    return code;
}

/* ---- jobs ---- */

static int job_row(table *t, const json_t *j, double now) {
    const json_t *pg = json_object_get(j, "progress"), *m = json_object_get(j, "metrics");
    const char *st = jstr(j, "status", "?");
    double step = jnum(pg, "step"), total = jnum(pg, "total_steps"), elapsed, eta;
    char pct[16] = "-", steps[48] = "-", loss[32], ev[32], el[32], et[32];
    if (total > 0 && isfinite(step)) {
        snprintf(pct, sizeof pct, "%.0f%%", 100 * (!strcmp(st, "succeeded") ? total : step) / total);
        snprintf(steps, sizeof steps, "%.0f/%.0f", step, total);
    }
    fmt_num(jnum(m, "loss"), loss, sizeof loss);
    fmt_num(jnum(m, "eval_loss"), ev, sizeof ev);
    watch_times(j, now, &elapsed, &eta);
    fmt_duration(elapsed, el, sizeof el);
    if (watch_is_final(st) || !strcmp(st, "queued"))
        snprintf(et, sizeof et, "-");
    else
        fmt_duration(eta, et, sizeof et);
    return table_add_row(t) || table_cell(t, 0, jstr(j, "id", "")) || table_cell(t, 1, jstr(j, "name", "-")) ||
           table_cell(t, 2, jstr(j, "user", "")) || table_set(t, 3, st, status_sgr(st)) || table_cell(t, 4, pct) ||
           table_cell(t, 5, steps) || table_cell(t, 6, loss) || table_cell(t, 7, ev) || table_cell(t, 8, el) ||
           table_cell(t, 9, et);
}

static int cmd_ls(ctx *c) {
    char path[1024] = "/v1/jobs", e[256];
    static const char *const filters[] = {"status", "user", "sweep"};
    static const char *const query[] = {"status", "user", "sweep_id"};
    long long limit;
    if (args_int(&c->a, "limit", 50, 1, 100000, &limit, &c->err)) return usage_fail(c);
    for (int i = 0; i < 3; i++) {
        const char *v = args_get(&c->a, filters[i], NULL);
        if (!v) continue;
        size_t l = strlen(path);
        snprintf(path + l, sizeof path - l, "%c%s=%s", strchr(path, '?') ? '&' : '?', query[i],
                 seg(v, e, sizeof e));
    }
    json_t *list;
    if (fetch_list(c, path, limit, &list)) return srv_fail(c);
    if (c->json) {
        print_json(list);
        json_decref(list);
        return 0;
    }
    static const char *const hd[] = {"ID", "NAME", "USER", "STATUS", "PROGRESS", "STEP", "LOSS", "EVAL LOSS", "ELAPSED", "ETA"};
    table *t = table_new(10, hd);
    int bad = !t;
    if (t) {
        for (int col = 4; col < 10; col++) table_align_right(t, col);
        table_max_width(t, 1, 32);
    }
    double now = now_s();
    json_t *j;
    size_t i;
    json_array_foreach(list, i, j) bad |= !t || job_row(t, j, now);
    if (!bad) table_print(t, stdout, c->utf8, c->color);
    table_free(t);
    json_decref(list);
    if (bad) return lr_errf(&c->err, "out of memory"), fail(c, 1);
    return 0;
}

static int get_job(ctx *c, const char *id, json_t **out) {
    char p[256], e[160];
    snprintf(p, sizeof p, "/v1/jobs/%s", seg(id, e, sizeof e));
    return http_json(&c->h, "GET", p, NULL, out, &c->err);
}

static int cmd_show(ctx *c) {
    json_t *j;
    if (get_job(c, c->a.pos[0], &j)) return srv_fail(c);
    if (c->json) {
        print_json(j);
        json_decref(j);
        return 0;
    }
    const json_t *pg = json_object_get(j, "progress"), *m = json_object_get(j, "metrics");
    const char *st = jstr(j, "status", "?");
    char a[64], b[64], cc[64];
    double elapsed, eta;
    watch_times(j, now_s(), &elapsed, &eta);
    printf("%-14s %s\n", "id", jstr(j, "id", "?"));
    printf("%-14s %s\n", "name", jstr(j, "name", "-"));
    const char *sgr = c->color ? status_sgr(st) : NULL;
    printf("%-14s %s%s%s%s\n", "status", sgr ? "\x1b[" : "", sgr ? sgr : "", sgr ? "m" : "", st);
    if (sgr) fputs("\x1b[0m", stdout);
    printf("%-14s %s\n", "user", jstr(j, "user", "-"));
    printf("%-14s %s\n", "model", jstr(j, "model", "-"));
    printf("%-14s %s\n", "worker", jstr(j, "worker", "-"));
    printf("%-14s %s\n", "sweep", jstr(j, "sweep_id", "-"));
    fmt_time(jnum(j, "created_at"), a, sizeof a);
    printf("%-14s %s\n", "created", a);
    fmt_time(jnum(j, "started_at"), a, sizeof a);
    printf("%-14s %s\n", "started", a);
    fmt_time(jnum(j, "finished_at"), a, sizeof a);
    printf("%-14s %s\n", "finished", a);
    fmt_duration(elapsed, a, sizeof a);
    fmt_duration(eta, b, sizeof b);
    printf("%-14s %s (ETA %s)\n", "elapsed", a, watch_is_final(st) ? "-" : b);
    printf("%-14s %.0f/%.0f (epoch %.2f)\n", "step", isfinite(jnum(pg, "step")) ? jnum(pg, "step") : 0,
           isfinite(jnum(pg, "total_steps")) ? jnum(pg, "total_steps") : 0,
           isfinite(jnum(pg, "epoch")) ? jnum(pg, "epoch") : 0);
    fmt_num(jnum(m, "loss"), a, sizeof a);
    fmt_num(jnum(m, "eval_loss"), b, sizeof b);
    fmt_num(jnum(m, "lr"), cc, sizeof cc);
    printf("%-14s %s  eval loss %s  lr %s  tokens/s %.0f\n", "loss", a, b, cc,
           isfinite(jnum(m, "tokens_per_s")) ? jnum(m, "tokens_per_s") : 0);
    const json_t *e = json_object_get(j, "error");
    if (json_is_object(e)) printf("%-14s %s (%s)\n", "error", jstr(e, "message", "?"), jstr(e, "code", "?"));
    if (json_is_string(json_object_get(j, "stop_reason"))) printf("%-14s %s\n", "stop reason", jstr(j, "stop_reason", "?"));
    const json_t *spec = json_object_get(j, "spec");
    if (json_is_object(spec)) {
        printf("spec:\n");
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)spec, k, v) {
            if (json_is_object(v)) {
                print_fields(v, k);
                continue;
            }
            char *s = json_is_string(v) ? NULL : json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT | JSON_REAL_PRECISION(10));
            printf("%-40s %s\n", k, s ? s : json_string_value(v));
            free(s);
        }
    }
    json_decref(j);
    return 0;
}

static int cmd_cancel(ctx *c) {
    int code = 0;
    for (int i = 0; i < c->a.npos; i++) {
        char p[256], e[160];
        json_t *r;
        snprintf(p, sizeof p, "/v1/jobs/%s/cancel", seg(c->a.pos[i], e, sizeof e));
        if (http_json(&c->h, "POST", p, NULL, &r, &c->err)) {
            int k = srv_fail(c);
            if (code != HTTP_FAIL_CONNECT) code = k;
            continue;
        }
        if (c->json)
            print_json(r);
        else
            printf("%s %s\n", c->a.pos[i], !strcmp(jstr(r, "status", ""), "cancelled") ? "cancelled" : "cancelling");
        json_decref(r);
    }
    return code;
}

static int cmd_watch(ctx *c) { return do_watch(c, c->a.pos[0]); }

static void print_event(ctx *c, const json_t *ev) {
    char t[32];
    fmt_time(jnum(ev, "created_at"), t, sizeof t);
    if (c->json) {
        char *s = json_dumps(ev, JSON_COMPACT);
        if (s) printf("%s\n", s);
        free(s);
        return;
    }
    const char *lvl = jstr(ev, "level", "info");
    const char *sgr = !c->color ? NULL : !strcmp(lvl, "error") ? "31" : !strcmp(lvl, "warning") || !strcmp(lvl, "warn") ? "33" : NULL;
    if (sgr)
        printf("%s  \x1b[%sm%-7s\x1b[0m %s\n", t, sgr, lvl, jstr(ev, "message", ""));
    else
        printf("%s  %-7s %s\n", t, lvl, jstr(ev, "message", ""));
}

static int cmd_logs(ctx *c) {
    char base[256], p[512], e[160];
    long long after = 0;
    int follow = args_count(&c->a, "follow") > 0;
    watch_opts o;
    if (watch_opts_from(c, &o)) return usage_fail(c);
    snprintf(base, sizeof base, "/v1/jobs/%s", seg(c->a.pos[0], e, sizeof e));
    for (;;) {
        json_t *r;
        int more;
        do {
            snprintf(p, sizeof p, "%s/events?limit=500&after=%lld", base, after);
            if (http_json(&c->h, "GET", p, NULL, &r, &c->err)) return srv_fail(c);
            json_t *ev;
            size_t i;
            json_array_foreach(json_object_get(r, "data"), i, ev) {
                print_event(c, ev);
                long long id = (long long)json_integer_value(json_object_get(ev, "id"));
                if (id > after) after = id;
            }
            more = json_is_true(json_object_get(r, "has_more"));
            json_decref(r);
        } while (more);
        fflush(stdout);
        if (!follow) return 0;
        /* -f: until the job ends (one last read catches its closing events) */
        json_t *j;
        if (get_job(c, c->a.pos[0], &j)) return srv_fail(c);
        int final = watch_is_final(jstr(j, "status", ""));
        int code = watch_exit_code(jstr(j, "status", ""));
        json_decref(j);
        if (final) {
            follow = 0;
            (void)code;
            continue;
        }
        usleep((useconds_t)(o.interval * 1e6));
    }
}

/* The metric series as one row per step, one column per series. */
static int cmd_metrics(ctx *c) {
    char p[1024], e[160], n[256];
    const char *names = args_get(&c->a, "names", NULL);
    snprintf(p, sizeof p, "/v1/jobs/%s/metrics%s%s", seg(c->a.pos[0], e, sizeof e), names ? "?names=" : "",
             names ? seg(names, n, sizeof n) : "");
    json_t *r;
    if (http_json(&c->h, "GET", p, NULL, &r, &c->err)) return srv_fail(c);
    if (c->json) {
        print_json(r);
        json_decref(r);
        return 0;
    }
    json_t *series = json_object_get(r, "series");
    size_t ns = json_array_size(series);
    if (ns > 30) ns = 30;
    /* merge the step lists: each series is sorted by step */
    size_t *pos = calloc(ns + 1, sizeof *pos);
    const char *hd[31];
    hd[0] = "step";
    for (size_t s = 0; s < ns; s++) hd[s + 1] = jstr(json_array_get(series, s), "name", "?");
    int csv = args_count(&c->a, "csv") > 0, bad = !pos;
    table *t = csv ? NULL : table_new((int)ns + 1, hd);
    if (!csv) {
        bad |= !t;
        for (size_t s = 0; t && s <= ns; s++) table_align_right(t, (int)s);
    } else {
        for (size_t s = 0; s <= ns; s++) printf("%s%s", s ? "," : "", hd[s]);
        printf("\n");
    }
    while (!bad) {
        long long step = -1;
        for (size_t s = 0; s < ns; s++) {
            json_t *st = json_object_get(json_array_get(series, s), "steps");
            if (pos[s] < json_array_size(st)) {
                long long v = json_integer_value(json_array_get(st, pos[s]));
                if (step < 0 || v < step) step = v;
            }
        }
        if (step < 0) break;
        char cell[64];
        snprintf(cell, sizeof cell, "%lld", step);
        if (csv) printf("%s", cell);
        else bad |= table_add_row(t) || table_cell(t, 0, cell);
        for (size_t s = 0; s < ns; s++) {
            json_t *sr = json_array_get(series, s);
            json_t *st = json_object_get(sr, "steps"), *vals = json_object_get(sr, "values");
            cell[0] = 0;
            if (pos[s] < json_array_size(st) && json_integer_value(json_array_get(st, pos[s])) == step) {
                json_t *v = json_array_get(vals, pos[s]);
                if (json_is_number(v)) {
                    if (csv) snprintf(cell, sizeof cell, "%.9g", json_number_value(v));
                    else fmt_num(json_number_value(v), cell, sizeof cell);
                } else if (!csv) {
                    snprintf(cell, sizeof cell, "nan");
                }
                pos[s]++;
            }
            if (csv) printf(",%s", cell);
            else bad |= table_cell(t, (int)s + 1, cell);
        }
        if (csv) printf("\n");
    }
    if (t && !bad) table_print(t, stdout, c->utf8, c->color);
    table_free(t);
    free(pos);
    json_decref(r);
    if (bad) return lr_errf(&c->err, "out of memory"), fail(c, 1);
    return 0;
}

/* ---- sweeps ---- */

/* Where an assignment lands and what it sets: jobspec_set on an empty
 * document gives the canonical path ("learning_rate" ->
 * "hyperparameters.learning_rate") and the typed value (new reference). */
static int canonical(ctx *c, const char *assignment, char *path, size_t cap, json_t **value) {
    json_t *scratch = json_object(), *cur = scratch;
    if (jobspec_set(scratch, assignment, &c->err)) {
        json_decref(scratch);
        return -1;
    }
    path[0] = 0;
    while (json_is_object(cur) && json_object_size(cur) == 1) {
        void *it = json_object_iter(cur);
        size_t l = strlen(path);
        snprintf(path + l, cap - l, "%s%s", l ? "." : "", json_object_iter_key(it));
        cur = json_object_iter_value(it);
    }
    *value = json_incref(cur);
    json_decref(scratch);
    return 0;
}

/* The body of POST /v1/sweeps: {template, parameters: {path: [values]}},
 * the server making one job per point of the product. Every point is
 * validated here first, as the server will. A --random sweep is not a
 * product: its points go as one axis holding whole sections (e.g. N
 * "hyperparameters" objects), which works when every randomized field lives
 * in one section. */
static int sweep_body(ctx *c, const json_t *tpl, const sweep_plan *pl, const json_t *points, int random,
                      json_t **out) {
    json_t *params = json_object(), *specs = json_array(), *pt, *as;
    size_t i, k;
    char path[256], top[256] = "";
    *out = NULL;
    json_array_foreach((json_t *)points, i, pt) {
        json_t *spec = json_deep_copy(tpl);
        json_array_append_new(specs, spec);
        json_array_foreach(pt, k, as)
            if (jobspec_set(spec, json_string_value(as), &c->err)) goto fail;
        jobspec s;
        if (jobspec_from_json(spec, &s, &c->err)) {
            char *desc = json_dumps(pt, JSON_COMPACT);
            lr_err_prefix(&c->err, "sweep point %zu %s: ", i + 1, desc ? desc : "");
            free(desc);
            goto fail;
        }
    }
    for (int p = 0; p < pl->n; p++) {
        const sweep_param *sp = &pl->p[p];
        char a[400];
        json_t *v, *vals = json_array();
        for (int x = 0; x < (sp->is_range ? 1 : sp->nvalues); x++) {
            snprintf(a, sizeof a, "%s=%s", sp->key, sp->is_range ? "0" : sp->values[x]);
            if (canonical(c, a, path, sizeof path, &v)) {
                json_decref(vals);
                goto fail;
            }
            json_array_append_new(vals, v);
        }
        if (!random) {
            json_object_set_new(params, path, vals);
            continue;
        }
        json_decref(vals);
        char *dot = strchr(path, '.');
        if (dot) *dot = 0;
        if (!dot || (top[0] && strcmp(top, path))) {
            lr_errf(&c->err, "--random can only vary fields of one section (all lora.* or all hyperparameters.*): "
                             "lorad's POST /v1/sweeps takes a product of value lists, not a list of points");
            goto fail;
        }
        snprintf(top, sizeof top, "%s", path);
    }
    if (random) {
        json_t *vals = json_array(), *spec;
        json_array_foreach(specs, i, spec) json_array_append(vals, json_object_get(spec, top));
        json_object_set_new(params, top, vals);
    }
    json_decref(specs);
    *out = json_pack("{s:O, s:o}", "template", tpl, "parameters", params);
    return 0;
fail:
    json_decref(specs);
    json_decref(params);
    return -1;
}

static int cmd_sweep(ctx *c) {
    sweep_plan pl;
    sweep_plan_init(&pl);
    const char *const *l;
    int n = args_list(&c->a, "grid", &l);
    for (int i = 0; i < n; i++)
        if (sweep_add_grid(&pl, l[i], &c->err)) return usage_fail(c);
    n = args_list(&c->a, "range", &l);
    for (int i = 0; i < n; i++)
        if (sweep_add_range(&pl, l[i], &c->err)) return usage_fail(c);
    long long nrand, seed;
    if (args_int(&c->a, "random", 0, 1, SWEEP_MAX_POINTS, &nrand, &c->err) ||
        args_int(&c->a, "seed", 0, 0, (long long)1 << 62, &seed, &c->err))
        return usage_fail(c);
    if (!args_get(&c->a, "seed", NULL)) seed = (long long)time(NULL);
    json_t *points, *tpl, *body, *r;
    if (sweep_points(&pl, (int)nrand, (uint64_t)seed, &points, &c->err)) return usage_fail(c);
    if (load_spec(c, c->a.pos[0], &tpl)) {
        json_decref(points);
        return fail(c, EXIT_USAGE);
    }
    size_t npts = json_array_size(points);
    int rc = sweep_body(c, tpl, &pl, points, nrand > 0, &body);
    json_decref(points);
    json_decref(tpl);
    if (rc) return fail(c, EXIT_USAGE);
    rc = http_json(&c->h, "POST", "/v1/sweeps", body, &r, &c->err);
    json_decref(body);
    if (rc) return srv_fail(c);
    if (c->json) {
        print_json(r);
    } else {
        printf("%s\n", jstr(r, "id", "?"));
        if (c->err_tty)
            fprintf(stderr, "submitted %zu jobs: rank them with 'lora sweep show %s'\n", npts, jstr(r, "id", "?"));
    }
    json_decref(r);
    return 0;
}

/* The last dotted component, for column headers ("lora.r" -> "r" is too
 * short to read: keep two components when there are). */
static const char *short_key(const char *path) {
    const char *d = strrchr(path, '.');
    if (!d) return path;
    if (!strncmp(path, "hyperparameters.", 16)) return path + 16;
    return path;
}

static int cmd_sweep_show(ctx *c) {
    char p[256], e[160];
    json_t *r;
    snprintf(p, sizeof p, "/v1/sweeps/%s", seg(c->a.pos[0], e, sizeof e));
    if (http_json(&c->h, "GET", p, NULL, &r, &c->err)) return srv_fail(c);
    json_t *jobs = json_object_get(r, "jobs");
    sweep_rank(jobs);
    if (c->json) {
        print_json(r);
        json_decref(r);
        return 0;
    }
    json_t *specs = json_array(), *j;
    size_t i;
    json_array_foreach(jobs, i, j) json_array_append(specs, json_object_get(j, "spec"));
    json_t *varied = sweep_varied_paths(specs);
    json_decref(specs);
    /* "name" differs between points because the server numbers them: not a knob */
    for (size_t k = 0; k < json_array_size(varied); k++)
        if (!strcmp(json_string_value(json_array_get(varied, k)), "name")) {
            json_array_remove(varied, k);
            break;
        }
    size_t nv = json_array_size(varied);
    if (nv > 16) nv = 16;
    const char *hd[24];
    int nc = 0;
    hd[nc++] = "RANK";
    hd[nc++] = "ID";
    for (size_t k = 0; k < nv; k++) hd[nc++] = short_key(json_string_value(json_array_get(varied, k)));
    int first_metric = nc;
    hd[nc++] = "STATUS";
    hd[nc++] = "STEP";
    hd[nc++] = "LOSS";
    hd[nc++] = "EVAL LOSS";
    hd[nc++] = "ELAPSED";
    table *t = table_new(nc, hd);
    int bad = !t;
    if (t) {
        table_align_right(t, 0);
        for (int col = first_metric + 1; col < nc; col++) table_align_right(t, col);
    }
    double now = now_s();
    json_array_foreach(jobs, i, j) {
        char rank[24], cell[96], loss[32], ev[32], el[32], steps[48] = "-";
        const json_t *pg = json_object_get(j, "progress"), *m = json_object_get(j, "metrics");
        const char *st = jstr(j, "status", "?");
        double elapsed, eta;
        snprintf(rank, sizeof rank, "%zu", i + 1);
        bad |= !t || table_add_row(t) || table_cell(t, 0, rank) || table_cell(t, 1, jstr(j, "id", ""));
        for (size_t k = 0; !bad && k < nv; k++) {
            const json_t *v = sweep_get_path(json_object_get(j, "spec"), json_string_value(json_array_get(varied, k)));
            char *s = v ? json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT | JSON_REAL_PRECISION(10)) : NULL;
            snprintf(cell, sizeof cell, "%s", json_is_string(v) ? json_string_value(v) : s ? s : "-");
            free(s);
            bad |= table_cell(t, 2 + (int)k, cell);
        }
        if (jnum(pg, "total_steps") > 0) snprintf(steps, sizeof steps, "%.0f/%.0f", jnum(pg, "step"), jnum(pg, "total_steps"));
        fmt_num(jnum(m, "loss"), loss, sizeof loss);
        fmt_num(jnum(m, "eval_loss"), ev, sizeof ev);
        watch_times(j, now, &elapsed, &eta);
        fmt_duration(elapsed, el, sizeof el);
        bad |= !t || table_set(t, first_metric, st, status_sgr(st)) || table_cell(t, first_metric + 1, steps) ||
               table_cell(t, first_metric + 2, loss) || table_cell(t, first_metric + 3, ev) ||
               table_cell(t, first_metric + 4, el);
    }
    if (!bad) {
        printf("sweep %s  (%zu jobs, ranked by eval loss)\n", jstr(r, "id", "?"), json_array_size(jobs));
        table_print(t, stdout, c->utf8, c->color);
    }
    table_free(t);
    json_decref(varied);
    json_decref(r);
    if (bad) return lr_errf(&c->err, "out of memory"), fail(c, 1);
    return 0;
}

/* ---- trying and merging an adapter (registering a full_sft model) ---- */

/* A number option in [lo, hi] into obj[key] (absent: nothing set). */
static int num_opt(ctx *c, const char *opt, const char *key, double lo, double hi, int integer, json_t *obj) {
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

static void print_side(ctx *c, const char *label, const json_t *s) {
    const char *on = c->color ? "\x1b[1m" : "", *off = c->color ? "\x1b[0m" : "";
    printf("%s%s %s%s  (%.0f tokens, %s)\n", on, c->utf8 ? "──" : "--", label, off, jnum(s, "tokens"),
           jstr(s, "stop", "?"));
    const char *t = jstr(s, "text", "");
    printf("%s%s", t, *t && t[strlen(t) - 1] == '\n' ? "" : "\n");
}

static int cmd_generate(ctx *c) {
    const char *id = c->a.pos[0], *prompt = c->a.pos[1];
    char *stdin_text = NULL;
    json_t *body = json_object(), *r = NULL;
    int code = EXIT_USAGE;
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
    snprintf(p, sizeof p, "/v1/jobs/%s/generate", seg(id, e, sizeof e));
    if (c->err_tty && !c->json) fprintf(stderr, "generating with the base model and with what %s trained...\n", id);
    if (http_json(&c->h, "POST", p, body, &r, &c->err)) {
        code = srv_fail(c);
        goto done;
    }
    if (c->json) {
        print_json(r);
    } else {
        char label[200];
        snprintf(label, sizeof label, "base (%s)", jstr(r, "model", "?"));
        print_side(c, label, json_object_get(r, "base"));
        snprintf(label, sizeof label, "tuned (%s)", id);
        print_side(c, label, json_object_get(r, "tuned"));
        fprintf(stderr, "%.0f prompt tokens, %.1f s\n", jnum(r, "prompt_tokens"), jnum(r, "seconds"));
    }
    code = 0;
    goto done;
out:
    code = usage_fail(c);
done:
    json_decref(r);
    json_decref(body);
    free(stdin_text);
    return code;
}

/* The id of the job's newest event (0 when none), so that --wait reads only
 * what this merge adds. */
static int last_event_id(ctx *c, const char *jid_seg, long long *out) {
    char p[256];
    json_t *r;
    *out = 0;
    for (;;) {
        snprintf(p, sizeof p, "/v1/jobs/%s/events?limit=10000&after=%lld", jid_seg, *out);
        if (http_json(&c->h, "GET", p, NULL, &r, &c->err)) return -1;
        json_t *d = json_object_get(r, "data");
        size_t n = json_array_size(d);
        if (n) *out = (long long)jnum(json_array_get(d, n - 1), "id");
        json_decref(r);
        if (n < 10000) return 0;
    }
}

static int cmd_merge(ctx *c) {
    const char *id = c->a.pos[0], *name = args_get(&c->a, "name", NULL);
    int wait = args_count(&c->a, "wait") > 0, code = 0;
    char p[512], e[160], ne[200];
    long long after = 0;
    json_t *body = json_object(), *r = NULL;
    if (name) json_object_set_new(body, "name", json_string(name));
    seg(id, e, sizeof e);
    if (wait && last_event_id(c, e, &after)) {
        code = srv_fail(c);
        goto out;
    }
    snprintf(p, sizeof p, "/v1/jobs/%s/merge", e);
    if (http_json(&c->h, "POST", p, body, &r, &c->err)) {
        code = srv_fail(c);
        goto out;
    }
    char model[128], doing[300];
    snprintf(model, sizeof model, "%s", jstr(r, "id", "?"));
    /* A full_sft job's model is registered as it is, not merged. */
    int reg = !strcmp(jstr(r, "status", ""), "registering");
    snprintf(doing, sizeof doing, reg ? "registering %s's model as model %s" : "merging %s into model %s", id, model);
    if (!wait) {
        if (c->json) print_json(r);
        else printf("%s\n", model);
        if (!c->json) fprintf(stderr, "%s (lora models ls lists it when done)\n", doing);
        goto out;
    }
    if (!c->json && c->err_tty) fprintf(stderr, "%s...\n", doing);
    char failed[64 + 128], mp[300];
    snprintf(failed, sizeof failed, reg ? "registering the full_sft model as %s failed" : "merge into model %s failed",
             model);
    snprintf(mp, sizeof mp, "/v1/models/%s", seg(model, ne, sizeof ne));
    for (;;) {
        json_t *m = NULL, *ev = NULL;
        if (!http_json(&c->h, "GET", mp, NULL, &m, &c->err)) {
            if (c->json) print_json(m);
            else printf("%s\n", model);
            if (!c->json) fprintf(stderr, reg ? "registered %s's model as model %s\n" : "merged %s into model %s\n", id, model);
            json_decref(m);
            break;
        }
        if (c->h.status != 404) {
            code = srv_fail(c);
            break;
        }
        snprintf(p, sizeof p, "/v1/jobs/%s/events?limit=10000&after=%lld", e, after);
        if (http_json(&c->h, "GET", p, NULL, &ev, &c->err)) {
            code = srv_fail(c);
            break;
        }
        json_t *x;
        size_t i;
        const char *why = NULL;
        json_array_foreach(json_object_get(ev, "data"), i, x) {
            after = (long long)jnum(x, "id");
            if (!strncmp(jstr(x, "message", ""), failed, strlen(failed))) why = jstr(x, "message", "");
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

static int cmd_download(ctx *c) {
    const char *id = c->a.pos[0];
    char dir[1024], p[512], e[160], fe[512], dest[1400];
    snprintf(dir, sizeof dir, "%s", args_get(&c->a, "out", id));
    json_t *list = NULL, *r;
    snprintf(p, sizeof p, "/v1/jobs/%s/artifacts", seg(id, e, sizeof e));
    if (http_json(&c->h, "GET", p, NULL, &r, &c->err)) return srv_fail(c);
    list = json_object_get(r, "data");
    if (!json_array_size(list)) {
        json_decref(r);
        lr_errf(&c->err, "%s has no artifacts yet (the adapter, or a full_sft job's model, is written when training ends)",
                id);
        return fail(c, 2);
    }
    if (lr_mkdirs(dir, &c->err)) {
        json_decref(r);
        return fail(c, 1);
    }
    json_t *files = json_array(), *f;
    size_t i;
    int code = 0;
    json_array_foreach(list, i, f) {
        const char *name = json_is_string(f) ? json_string_value(f) : jstr(f, "name", jstr(f, "id", ""));
        if (!safe_name(name)) continue;
        char url[1024];
        snprintf(url, sizeof url, "/v1/jobs/%s/artifacts/%s", e, seg(name, fe, sizeof fe));
        snprintf(dest, sizeof dest, "%s/%s", dir, name);
        int64_t bytes = 0;
        int rc = http_download(&c->h, url, dest, c->err_tty ? dl_progress : NULL, (void *)name, &bytes, &c->err);
        if (c->err_tty) fputs("\r\x1b[K", stderr);
        if (rc) {
            code = srv_fail(c);
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
        print_json(o);
        json_decref(o);
    }
    json_decref(files);
    json_decref(r);
    return code;
}

/* ---- the command table ---- */

static const arg_opt upload_opts[] = {{"name", 0, ARG_VALUE, "N", "the dataset's name (default: the file name)"}, {0}};
static const arg_opt preview_opts[] = {
    {"model", 0, ARG_VALUE, "M", "render with this model's chat template"},
    {"limit", 'n', ARG_VALUE, "N", "rows to show (default 3)"},
    {0}};
static const arg_opt submit_opts[] = {
    {"set", 's', ARG_LIST, "KEY=VALUE", "override a field (repeatable): --set lora.r=32 --set learning_rate=1e-4"},
    {"name", 0, ARG_VALUE, "N", "the job's name"},
    {"watch", 'w', ARG_FLAG, NULL, "follow the job like `lora watch` and exit with its outcome"},
    {"interval", 0, ARG_VALUE, "SECONDS", "refresh period with --watch (default 1)"},
    {0}};
static const arg_opt ls_opts[] = {
    {"status", 0, ARG_VALUE, "S", "queued, running, succeeded, failed or cancelled"},
    {"user", 0, ARG_VALUE, "U", "only this user's jobs"},
    {"sweep", 0, ARG_VALUE, "ID", "only this sweep's jobs"},
    {"limit", 'n', ARG_VALUE, "N", "at most N jobs, newest first (default 50)"},
    {0}};
static const arg_opt watch_cmd_opts[] = {{"interval", 0, ARG_VALUE, "SECONDS", "refresh period (default 1)"}, {0}};
static const arg_opt logs_opts[] = {
    {"follow", 'f', ARG_FLAG, NULL, "keep printing new events until the job ends"},
    {"interval", 0, ARG_VALUE, "SECONDS", "poll period with -f (default 1)"},
    {0}};
static const arg_opt metrics_opts[] = {
    {"csv", 0, ARG_FLAG, NULL, "CSV: step,loss,eval_loss,... (empty where a series has no point)"},
    {"names", 0, ARG_VALUE, "A,B", "only these series (e.g. loss,eval_loss)"},
    {0}};
static const arg_opt sweep_opts[] = {
    {"grid", 'g', ARG_LIST, "KEY=V1,V2", "values of one field (repeatable; the points are the product)"},
    {"range", 'r', ARG_LIST, "KEY=LO:HI[:log][:int]", "an interval to draw from (with --random)"},
    {"random", 0, ARG_VALUE, "N", "draw N random points instead of the full grid"},
    {"seed", 0, ARG_VALUE, "S", "seed of --random (default: the clock)"},
    {"set", 's', ARG_LIST, "KEY=VALUE", "override a field of the template (repeatable)"},
    {"name", 0, ARG_VALUE, "N", "the template's name"},
    {0}};
static const arg_opt download_opts[] = {{"out", 'o', ARG_VALUE, "DIR", "directory to write into (default ./ID)"}, {0}};
static const arg_opt generate_opts[] = {
    {"max-new-tokens", 'n', ARG_VALUE, "N", "new tokens at most, 1..1024 (default 128)"},
    {"temperature", 't', ARG_VALUE, "T", "0..5; 0 (default) is greedy: the same text every time"},
    {"top-p", 0, ARG_VALUE, "P", "nucleus sampling, (0, 1] (default 1)"},
    {"top-k", 0, ARG_VALUE, "K", "sample from the K likeliest tokens (default 0: off)"},
    {"seed", 0, ARG_VALUE, "S", "sampling seed (default 0)"},
    {"stop", 0, ARG_LIST, "STR", "stop at this string, cut from the text (repeatable, at most 8)"},
    {"system", 0, ARG_VALUE, "TEXT", "system message (default the job's system_prompt)"},
    {0}};
static const arg_opt merge_opts[] = {
    {"name", 0, ARG_VALUE, "NAME", "the new model's name (default <job name or id>-merged)"},
    {"wait", 'w', ARG_FLAG, NULL, "wait until the model is registered; exit 4 if the merge fails"},
    {0}};

static int cmd_help(ctx *c);

static const command commands[] = {
    {"login", cmd_login, 2, 2, "URL TOKEN", "check a token with the server and save both in the config file", NULL},
    {"datasets upload", cmd_ds_upload, 1, 1, "FILE [--name N]", "upload a JSONL/CSV dataset (validated by the server)", upload_opts},
    {"datasets ls", cmd_ds_ls, 0, 0, "", "list datasets", NULL},
    {"datasets show", cmd_ds_show, 1, 1, "ID", "a dataset's details and statistics", NULL},
    {"datasets preview", cmd_ds_preview, 1, 1, "ID [--model M] [-n N]", "rows as the model will see them", preview_opts},
    {"datasets rm", cmd_ds_rm, 1, ARGS_MAX_POS, "ID...", "delete datasets", NULL},
    {"models ls", cmd_models, 0, 0, "", "list the base models the admin registered", NULL},
    {"submit", cmd_submit, 1, 1, "JOB.yaml|JOB.json [--set K=V ...] [--watch]", "submit a job; prints its id", submit_opts},
    {"ls", cmd_ls, 0, 0, "[--status S] [--user U] [--sweep ID]", "list jobs", ls_opts},
    {"show", cmd_show, 1, 1, "ID", "a job's details and full spec", NULL},
    {"logs", cmd_logs, 1, 1, "ID [-f]", "a job's events", logs_opts},
    {"cancel", cmd_cancel, 1, ARGS_MAX_POS, "ID...", "cancel jobs (yours, or any as an admin)", NULL},
    {"watch", cmd_watch, 1, 1, "ID", "follow a job live; exit 0 if it succeeds, 4 failed, 5 cancelled", watch_cmd_opts},
    {"metrics", cmd_metrics, 1, 1, "ID [--csv]", "a job's metric series", metrics_opts},
    {"sweep", cmd_sweep, 1, 1, "JOB.yaml --grid K=V1,V2 ... | --random N --range K=LO:HI[:log]", "submit a sweep; prints its id", sweep_opts},
    {"sweep show", cmd_sweep_show, 1, 1, "ID", "a sweep's jobs ranked by eval loss", NULL},
    {"download", cmd_download, 1, 1, "ID [--out DIR]", "the adapter (adapter_model.safetensors, adapter_config.json; full_sft: the model folder) and logs",
     download_opts},
    {"generate", cmd_generate, 2, 2, "ID PROMPT [-n N] [-t T] [--stop STR]...",
     "answer PROMPT (or - for stdin) with the base model and with the job's adapter (full_sft: its model), side by side",
     generate_opts},
    {"merge", cmd_merge, 1, 1, "ID [--name NAME] [--wait]",
     "merge the job's adapter into its base model (full_sft: take its model as is), registered as a new model (owner "
     "or admin)", merge_opts},
    {"workers", cmd_workers, 0, 0, "", "the training workers and what they run", NULL},
    {"help", cmd_help, 0, 2, "[COMMAND]", "help on a command", NULL},
    {NULL, NULL, 0, 0, NULL, NULL, NULL},
};

/* Aliases people type from habit. */
static const char *const aliases[][2] = {
    {"datasets list", "datasets ls"}, {"models", "models ls"}, {"models list", "models ls"}, {"list", "ls"},
    {"jobs", "ls"}, {"datasets delete", "datasets rm"}, {"log", "logs"}, {"dataset upload", "datasets upload"},
};

static void usage_all(FILE *f) {
    fprintf(f, "lora: the command-line client of lorad (LoRA fine-tuning service)\n\nusage: lora COMMAND [options]\n\ncommands:\n");
    for (const command *k = commands; k->name; k++) {
        char left[128];
        snprintf(left, sizeof left, "%s %s", k->name, k->usage);
        if (strlen(left) > 40) snprintf(left, sizeof left, "%s ...", k->name);
        fprintf(f, "  %-40s %s\n", left, k->summary);
    }
    fprintf(f, "\noptions of every command:\n");
    args_print_opts(f, global_opts);
    fprintf(f, "\nserver: --url/--token, else LORA_URL/LORA_TOKEN, else `lora login` (%s)\n"
               "exit status: 0 ok, 1 usage or local error, 2 the server said no, 3 cannot connect,\n"
               "             4 job failed (watch, submit --watch) or merge failed (merge --wait),\n"
               "             5 job cancelled (watch, submit --watch), 130 interrupted\n",
            "~/.config/lora/config");
}

static void usage_cmd(FILE *f, const command *k) {
    fprintf(f, "usage: lora %s %s\n\n%s\n", k->name, k->usage, k->summary);
    if (k->opts) {
        fprintf(f, "\noptions:\n");
        args_print_opts(f, k->opts);
    }
    fprintf(f, "\noptions of every command:\n");
    args_print_opts(f, global_opts);
}

static const command *find_cmd(const char *name) {
    for (size_t i = 0; i < sizeof aliases / sizeof aliases[0]; i++)
        if (!strcmp(aliases[i][0], name)) name = aliases[i][1];
    for (const command *k = commands; k->name; k++)
        if (!strcmp(k->name, name)) return k;
    return NULL;
}

static int cmd_help(ctx *c) {
    char name[128] = "";
    for (int i = 0; i < c->a.npos; i++) {
        size_t l = strlen(name);
        snprintf(name + l, sizeof name - l, "%s%s", i ? " " : "", c->a.pos[i]);
    }
    if (!name[0]) {
        usage_all(stdout);
        return 0;
    }
    const command *k = find_cmd(name);
    if (!k) {
        lr_errf(&c->err, "no command '%s' (see 'lora --help')", name);
        return fail(c, EXIT_USAGE);
    }
    usage_cmd(stdout, k);
    return 0;
}

/* Finds the command words in argv, skipping global options and their values;
 * removes them from argv. */
static const command *pick_cmd(int *argc, char **argv, char *name, size_t cap) {
    int words[2], nw = 0;
    for (int i = 1; i < *argc && nw < 2; i++) {
        const char *s = argv[i];
        if (!strcmp(s, "--")) break;
        if (s[0] == '-') {
            if ((!strcmp(s, "--url") || !strcmp(s, "--token")) && i + 1 < *argc) i++;
            continue;
        }
        if (nw == 1) {
            /* a second word only counts when it makes a known command */
            char two[128];
            snprintf(two, sizeof two, "%s %s", argv[words[0]], s);
            if (!find_cmd(two)) break;
        }
        words[nw++] = i;
        if (nw == 1 && strcmp(s, "datasets") && strcmp(s, "dataset") && strcmp(s, "models") && strcmp(s, "sweep")) break;
    }
    if (!nw) return NULL;
    if (nw == 2)
        snprintf(name, cap, "%s %s", argv[words[0]], argv[words[1]]);
    else
        snprintf(name, cap, "%s", argv[words[0]]);
    const command *k = find_cmd(name);
    if (!k) return NULL;
    for (int w = nw - 1; w >= 0; w--) {
        memmove(&argv[words[w]], &argv[words[w] + 1], (size_t)(*argc - words[w] - 1) * sizeof *argv);
        (*argc)--;
    }
    return k;
}

int main(int argc, char **argv) {
    static ctx c; /* large (args tables): not on the stack */
    char name[128] = "";
    if (argc >= 2 && !strcmp(argv[1], "--version")) {
        printf("lora %s\n", LORA_VERSION);
        return 0;
    }
    const command *k = pick_cmd(&argc, argv, name, sizeof name);
    if (!k) {
        /* no command: --help, nothing, or an unknown word */
        for (int i = 1; i < argc; i++)
            if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
                usage_all(stdout);
                return 0;
            }
        if (argc < 2 || name[0] == 0) {
            for (int i = 1; i < argc; i++)
                if (argv[i][0] != '-') {
                    fprintf(stderr, "lora: unknown command '%s' (see 'lora --help')\n", argv[i]);
                    return EXIT_USAGE;
                }
            usage_all(stderr);
            return EXIT_USAGE;
        }
        fprintf(stderr, "lora: unknown command '%s' (see 'lora --help')\n", name);
        return EXIT_USAGE;
    }
    c.cmd = k->name;
    if (args_parse(&c.a, global_opts, k->opts, argc - 1, argv + 1, &c.err)) return usage_fail(&c);
    if (args_count(&c.a, "help")) {
        usage_cmd(stdout, k);
        return 0;
    }
    if (c.a.npos < k->min_pos || c.a.npos > k->max_pos) {
        if (c.a.npos < k->min_pos)
            lr_errf(&c.err, "missing argument: lora %s %s", k->name, k->usage);
        else
            lr_errf(&c.err, "unexpected argument '%s'", c.a.pos[k->max_pos]);
        return usage_fail(&c);
    }
    c.json = args_count(&c.a, "json") > 0;
    c.tty = isatty(STDOUT_FILENO) && !c.json;
    c.err_tty = isatty(STDERR_FILENO);
    c.utf8 = fmt_locale_utf8(getenv("LC_ALL"), getenv("LC_CTYPE"), getenv("LANG"));
    const char *nc = getenv("NO_COLOR");
    c.color = c.tty && !args_count(&c.a, "no-color") && !(nc && *nc) && strcmp(getenv("TERM") ? getenv("TERM") : "", "dumb");

    cfg file = {0};
    if (cfg_path(getenv("LORA_CONFIG"), getenv("XDG_CONFIG_HOME"), getenv("HOME"), c.cfg_path, sizeof c.cfg_path,
                 &c.err))
        return fail(&c, 1);
    if (k->fn != cmd_login && k->fn != cmd_help && cfg_load(c.cfg_path, &file, &c.err)) return fail(&c, 1);
    cfg_resolve(&c.conf, args_get(&c.a, "url", NULL), args_get(&c.a, "token", NULL), getenv("LORA_URL"),
                getenv("LORA_TOKEN"), &file, c.cfg_path);

    if (curl_global_init(CURL_GLOBAL_DEFAULT)) {
        lr_errf(&c.err, "cannot initialise libcurl");
        return fail(&c, 1);
    }
    int code;
    if (http_init(&c.h, c.conf.url, c.conf.token, &c.err)) {
        code = fail(&c, 1);
    } else {
        code = k->fn(&c);
        http_free(&c.h);
    }
    curl_global_cleanup();
    fflush(stdout);
    return code;
}
