/* cmd_data: `lora login`, `lora datasets ...`, `lora models ls`, `lora workers`. */
#include "client/cmd_data.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "client/fmt.h"

/* ---- login ---- */

int lora_cmd_login(cli_ctx *c) {
    cfg file = {0}, resolved;
    cfg_resolve(&resolved, c->a.pos[0], c->a.pos[1], NULL, NULL, NULL, NULL);
    http_client h;
    if (http_init(&h, resolved.url, resolved.token, &c->err)) return cli_fail(c, 1);
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
    if (cfg_save(c->cfg_path, &file, &c->err)) return cli_fail(c, 1);
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

int lora_cmd_ds_upload(cli_ctx *c) {
    const char *file = c->a.pos[0], *name = args_get(&c->a, "name", NULL);
    struct stat st;
    if (stat(file, &st) || !S_ISREG(st.st_mode)) {
        lr_errf(&c->err, "%s: %s", file, errno ? strerror(errno) : "not a regular file");
        return cli_fail(c, CLI_EXIT_USAGE);
    }
    json_t *r;
    int rc = http_upload(&c->h, "/v1/datasets", file, name, c->err_tty ? upload_progress : NULL, (void *)file, &r,
                         &c->err);
    if (c->err_tty) fputs("\r\x1b[K", stderr);
    if (rc) {
        int code = cli_srv_fail(c);
        /* the validation report: one line per bad row, as the server numbered them */
        json_t *errs = json_object_get(json_object_get(c->h.error_body, "error"), "errors"), *e;
        size_t i;
        json_array_foreach(errs, i, e) {
            if (json_is_string(e))
                fprintf(stderr, "  %s\n", json_string_value(e));
            else if (json_is_integer(json_object_get(e, "line")))
                fprintf(stderr, "  %s line %lld: %s\n", file, (long long)json_integer_value(json_object_get(e, "line")),
                        cli_jstr(e, "message", "?"));
            else
                fprintf(stderr, "  %s\n", cli_jstr(e, "message", "?"));
        }
        return code;
    }
    if (c->json) {
        cli_print_json(r);
    } else {
        printf("%s\n", cli_jstr(r, "id", "?"));
        char b[32];
        fmt_bytes(cli_jnum(r, "bytes"), b, sizeof b);
        fprintf(stderr, "uploaded %s: %.0f rows, %s, %s %s\n", file, cli_jnum(r, "rows"), b, cli_jstr(r, "format", "?"),
                cli_jstr(r, "kind", ""));
    }
    /* on stderr with --json too: stdout stays the server's object */
    if (json_is_string(json_object_get(r, "warning"))) fprintf(stderr, "warning: %s\n", cli_jstr(r, "warning", ""));
    json_decref(r);
    return 0;
}

int lora_cmd_ds_ls(cli_ctx *c) {
    json_t *list;
    if (cli_fetch_list(c, "/v1/datasets", 0, &list)) return cli_srv_fail(c);
    if (c->json) {
        cli_print_json(list);
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
        snprintf(rows, sizeof rows, "%.0f", cli_jnum(d, "rows"));
        fmt_bytes(cli_jnum(d, "bytes"), size, sizeof size);
        cli_fmt_time(cli_jnum(d, "created_at"), created, sizeof created);
        bad |= table_add_row(t) || cli_table_cell(t, 0, cli_jstr(d, "id", "")) ||
               cli_table_cell(t, 1, cli_jstr(d, "filename", cli_jstr(d, "name", ""))) ||
               cli_table_cell(t, 2, cli_jstr(d, "format", "")) || cli_table_cell(t, 3, cli_jstr(d, "kind", "")) ||
               cli_table_cell(t, 4, rows) || cli_table_cell(t, 5, size) || cli_table_cell(t, 6, cli_jstr(d, "user", "")) ||
               cli_table_cell(t, 7, created);
    }
    if (!bad) table_print(t, stdout, c->utf8, c->color);
    table_free(t);
    json_decref(list);
    if (bad) return lr_errf(&c->err, "out of memory"), cli_fail(c, 1);
    return 0;
}

int lora_cmd_ds_show(cli_ctx *c) {
    char p[512], e[256];
    json_t *r;
    snprintf(p, sizeof p, "/v1/datasets/%s", cli_seg(c->a.pos[0], e, sizeof e));
    if (http_json(&c->h, "GET", p, NULL, &r, &c->err)) return cli_srv_fail(c);
    if (c->json)
        cli_print_json(r);
    else
        cli_print_fields(r, "");
    json_decref(r);
    return 0;
}

/* Rows as lorad previews them: rendered segments (with --model) where the
 * trained tokens are marked, or the parsed messages. */
int lora_cmd_ds_preview(cli_ctx *c) {
    char p[1400], e[256], m[256], t[256];
    long long n;
    if (args_int(&c->a, "limit", 3, 1, 100, &n, &c->err)) return cli_usage_fail(c);
    const char *model = args_get(&c->a, "model", NULL), *tpl = args_get(&c->a, "chat-template", NULL);
    if (tpl && !model) {
        lr_errf(&c->err, "--chat-template renders rows with a model's tokenizer: give --model too");
        return cli_usage_fail(c);
    }
    snprintf(p, sizeof p, "/v1/datasets/%s/preview?n=%lld%s%s%s%s", cli_seg(c->a.pos[0], e, sizeof e), n,
             model ? "&model=" : "", model ? cli_seg(model, m, sizeof m) : "", tpl ? "&chat_template=" : "",
             tpl ? cli_seg(tpl, t, sizeof t) : "");
    json_t *r;
    if (http_json(&c->h, "GET", p, NULL, &r, &c->err)) return cli_srv_fail(c);
    if (c->json) {
        cli_print_json(r);
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
        if (json_is_string(json_object_get(row, "error"))) printf("error: %s\n", cli_jstr(row, "error", ""));
        json_array_foreach(json_object_get(row, "segments"), k, x) {
            int tr = json_is_true(json_object_get(x, "trained"));
            printf("%s%s%s", tr ? on : "", cli_jstr(x, "text", ""), tr ? off : "");
        }
        if (json_array_size(json_object_get(row, "segments"))) printf("\n");
        json_array_foreach(json_object_get(row, "messages"), k, x) {
            const char *part = cli_jstr(x, "part", "prompt");
            int tr = json_is_true(json_object_get(x, "trained"));
            printf("[%s%s%s] %s%s%s\n", cli_jstr(x, "role", "?"), strcmp(part, "prompt") ? ", " : "",
                   strcmp(part, "prompt") ? part : "", tr ? on : "", cli_jstr(x, "content", ""), tr ? off : "");
        }
    }
    if (model)
        fprintf(stderr, "%zu of %lld rows, chat template %s\n", json_array_size(rows),
                (long long)json_integer_value(json_object_get(r, "rows_total")), cli_jstr(r, "chat_template", "?"));
    else
        fprintf(stderr, "%zu of %lld rows (add --model M to see them through its chat template)\n", json_array_size(rows),
                (long long)json_integer_value(json_object_get(r, "rows_total")));
    json_decref(r);
    return 0;
}

int lora_cmd_ds_rm(cli_ctx *c) {
    int code = 0;
    for (int i = 0; i < c->a.npos; i++) {
        char p[512], e[256];
        json_t *r;
        snprintf(p, sizeof p, "/v1/datasets/%s", cli_seg(c->a.pos[i], e, sizeof e));
        if (http_json(&c->h, "DELETE", p, NULL, &r, &c->err)) {
            code = cli_srv_fail(c);
            continue;
        }
        if (c->json) cli_print_json(r);
        else printf("deleted %s\n", c->a.pos[i]);
        json_decref(r);
    }
    return code;
}

/* ---- models, workers ---- */

int lora_cmd_models_rm(cli_ctx *c) {
    int code = 0;
    for (int i = 0; i < c->a.npos; i++) {
        char p[512], e[256];
        json_t *r;
        snprintf(p, sizeof p, "/v1/models/%s", cli_seg(c->a.pos[i], e, sizeof e));
        if (http_json(&c->h, "DELETE", p, NULL, &r, &c->err)) {
            code = cli_srv_fail(c);
            continue;
        }
        if (c->json) cli_print_json(r);
        else printf("deleted model %s\n", c->a.pos[i]);
        json_decref(r);
    }
    return code;
}

int lora_cmd_models(cli_ctx *c) {
    json_t *list;
    if (cli_fetch_list(c, "/v1/models", 0, &list)) return cli_srv_fail(c);
    if (c->json) {
        cli_print_json(list);
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
        cli_fmt_time(cli_jnum(m, "created"), created, sizeof created);
        bad |= !t || table_add_row(t) || cli_table_cell(t, 0, cli_jstr(m, "id", "")) ||
               cli_table_cell(t, 1, cli_jstr(m, "architecture", "-")) ||
               cli_table_cell(t, 6, cli_jstr(m, "torch_dtype", "-")) || cli_table_cell(t, 7, created);
        for (int k = 0; !bad && k < 4; k++) {
            char v[32] = "-";
            if (isfinite(cli_jnum(m, ints[k]))) snprintf(v, sizeof v, "%.0f", cli_jnum(m, ints[k]));
            bad |= cli_table_cell(t, 2 + k, v);
        }
    }
    if (!bad) table_print(t, stdout, c->utf8, c->color);
    table_free(t);
    json_decref(list);
    if (bad) return lr_errf(&c->err, "out of memory"), cli_fail(c, 1);
    return 0;
}

int lora_cmd_workers(cli_ctx *c) {
    json_t *list;
    if (cli_fetch_list(c, "/v1/workers", 0, &list)) return cli_srv_fail(c);
    if (c->json) {
        cli_print_json(list);
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
        const char *st = cli_jstr(w, "status", "?");
        fmt_bytes(cli_jnum(w, "mem_bytes"), mem, sizeof mem);
        snprintf(thr, sizeof thr, "%.0f", isfinite(cli_jnum(w, "threads")) ? cli_jnum(w, "threads") : 0);
        snprintf(rs, sizeof rs, "%.0f", isfinite(cli_jnum(w, "restarts")) ? cli_jnum(w, "restarts") : 0);
        double ls = cli_jnum(w, "last_seen");
        if (isfinite(ls)) {
            /* the server's clock comes from its Date header, whole seconds:
             * a heartbeat within the last second can read as up to 1 s ahead */
            double ago = cli_server_now(c) - ls;
            fmt_duration(ago < 0 && ago > -1 ? 0 : ago, seen, sizeof seen);
            strncat(seen, " ago", sizeof seen - strlen(seen) - 1);
        } else {
            snprintf(seen, sizeof seen, "-");
        }
        bad |= !t || table_add_row(t) || cli_table_cell(t, 0, cli_jstr(w, "id", "")) ||
               cli_table_cell(t, 1, cli_jstr(w, "backend", "")) || cli_table_cell(t, 2, cli_jstr(w, "device", "")) ||
               table_set(t, 3, st, cli_status_sgr(st)) ||
               cli_table_cell(t, 4, cli_jstr(w, "job_id", "-")) || cli_table_cell(t, 5, mem) || cli_table_cell(t, 6, thr) ||
               cli_table_cell(t, 7, rs) || cli_table_cell(t, 8, seen);
    }
    if (!bad) table_print(t, stdout, c->utf8, c->color);
    table_free(t);
    json_decref(list);
    if (bad) return lr_errf(&c->err, "out of memory"), cli_fail(c, 1);
    return 0;
}
