/* cli: what every `lora` command shares (see cli.h). */
#include "client/cli.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/buf.h"
#include "proto/jobspec.h"
#include "proto/jsonfmt.h"

/* ---- output helpers ---- */

int cli_fail(cli_ctx *c, int code) {
    fprintf(stderr, "lora: %s\n", c->err.msg);
    return code;
}

int cli_usage_fail(cli_ctx *c) {
    fprintf(stderr, "lora: %s (see 'lora %s --help')\n", c->err.msg, c->cmd);
    return CLI_EXIT_USAGE;
}

int cli_srv_fail(cli_ctx *c) {
    int code = http_exit_code(&c->h);
    if (c->h.status == 401 && !c->conf.token[0])
        fprintf(stderr, "lora: %s (no token: set LORA_TOKEN, pass --token or run 'lora login URL TOKEN')\n", c->err.msg);
    else if (code == HTTP_FAIL_CONNECT)
        fprintf(stderr, "lora: %s (URL from %s)\n", c->err.msg, c->conf.url_from);
    else
        fprintf(stderr, "lora: %s\n", c->err.msg);
    return code;
}

void cli_print_json(const json_t *j) {
    char *s = jsonfmt_dumps(j, JSON_INDENT(2));
    if (s) printf("%s\n", s);
    free(s);
}

const char *cli_jstr(const json_t *o, const char *k, const char *def) {
    const char *s = json_string_value(json_object_get(o, k));
    return s && *s ? s : def;
}

double cli_jnum(const json_t *o, const char *k) {
    const json_t *v = json_object_get(o, k);
    return json_is_number(v) ? json_number_value(v) : NAN;
}

double cli_now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

double cli_server_now(const cli_ctx *c) { return c->h.server_date > 0 ? c->h.server_date + 0.5 : cli_now_s(); }

void cli_fmt_time(double t, char *out, size_t cap) {
    if (!isfinite(t) || t <= 0) {
        snprintf(out, cap, "-");
        return;
    }
    time_t tt = (time_t)t;
    struct tm tm;
    localtime_r(&tt, &tm);
    strftime(out, cap, "%Y-%m-%d %H:%M:%S", &tm);
}

const char *cli_status_sgr(const char *st) {
    if (!strcmp(st, "succeeded") || !strcmp(st, "idle")) return "32";
    if (!strcmp(st, "failed") || !strcmp(st, "dead")) return "31";
    if (!strcmp(st, "cancelled")) return "33";
    if (!strcmp(st, "running") || !strcmp(st, "busy")) return "36";
    return NULL;
}

int cli_table_cell(table *t, int col, const char *text) { return table_set(t, col, text, NULL); }

const char *cli_seg(const char *s, char *buf, size_t cap) {
    http_escape(s, buf, cap);
    return buf;
}

int cli_fetch_list(cli_ctx *c, const char *path, long long limit, json_t **out) {
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
        if (more) cli_seg(cli_jstr(json_array_get(data, json_array_size(data) - 1), "id", ""), after, sizeof after);
        json_decref(page);
        if (!more || !after[0] || (limit > 0 && (long long)json_array_size(all) >= limit)) break;
    }
    *out = all;
    return 0;
}

void cli_print_fields(const json_t *o, const char *prefix) {
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)o, k, v) {
        char path[256];
        snprintf(path, sizeof path, "%s%s%s", prefix, *prefix ? "." : "", k);
        if (json_is_object(v) && json_object_size(v)) {
            cli_print_fields(v, path);
            continue;
        }
        char *s = json_is_string(v) ? NULL : json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT | JSON_REAL_PRECISION(10));
        printf("%-40s %s\n", path, s ? s : json_string_value(v));
        free(s);
    }
}

/* ---- job specs ---- */

int cli_load_spec(cli_ctx *c, const char *file, json_t **out) {
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
