/* cmd_jobs: `lora submit`, `ls`, `show`, `cancel`, `watch`, `logs`, `metrics`. */
#include "client/cmd_jobs.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "client/fmt.h"
#include "client/watch.h"
#include "proto/jsonfmt.h"

/* ---- submit ---- */

static int watch_opts_from(cli_ctx *c, watch_opts *o) {
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

static int do_watch(cli_ctx *c, const char *id) {
    watch_opts o;
    int code;
    if (watch_opts_from(c, &o)) return cli_usage_fail(c);
    if (watch_run(&c->h, id, &o, &code, &c->err)) return cli_srv_fail(c);
    if (code == WATCH_EXIT_INTERRUPTED)
        fprintf(stderr, "lora: stopped watching; %s goes on (lora cancel %s to stop it)\n", id, id);
    return code;
}

int lora_cmd_submit(cli_ctx *c) {
    json_t *doc, *r;
    if (cli_load_spec(c, c->a.pos[0], &doc)) return cli_fail(c, CLI_EXIT_USAGE);
    int rc = http_json(&c->h, "POST", "/v1/jobs", doc, &r, &c->err);
    json_decref(doc);
    if (rc) return cli_srv_fail(c);
    char id[128];
    snprintf(id, sizeof id, "%s", cli_jstr(r, "id", "?"));
    if (c->json && !args_count(&c->a, "watch")) cli_print_json(r);
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
        snprintf(p, sizeof p, "/v1/jobs/%s", cli_seg(id, e, sizeof e));
        if (!http_json(&c->h, "GET", p, NULL, &r, &c->err)) {
            cli_print_json(r);
            json_decref(r);
        }
    }
    return code;
}

/* ---- jobs ---- */

static int job_row(table *t, const json_t *j, double now) {
    const json_t *pg = json_object_get(j, "progress"), *m = json_object_get(j, "metrics");
    const char *st = cli_jstr(j, "status", "?");
    double step = cli_jnum(pg, "step"), total = cli_jnum(pg, "total_steps"), elapsed, eta;
    char pct[16] = "-", steps[48] = "-", loss[32], ev[32], el[32], et[32];
    if (total > 0 && isfinite(step)) {
        snprintf(pct, sizeof pct, "%.0f%%", 100 * (!strcmp(st, "succeeded") ? total : step) / total);
        snprintf(steps, sizeof steps, "%.0f/%.0f", step, total);
    }
    fmt_num(cli_jnum(m, "loss"), loss, sizeof loss);
    fmt_num(cli_jnum(m, "eval_loss"), ev, sizeof ev);
    watch_times(j, now, &elapsed, &eta);
    fmt_duration(elapsed, el, sizeof el);
    if (watch_is_final(st) || !strcmp(st, "queued"))
        snprintf(et, sizeof et, "-");
    else
        fmt_duration(eta, et, sizeof et);
    return table_add_row(t) || cli_table_cell(t, 0, cli_jstr(j, "id", "")) ||
           cli_table_cell(t, 1, cli_jstr(j, "name", "-")) || cli_table_cell(t, 2, cli_jstr(j, "user", "")) ||
           table_set(t, 3, st, cli_status_sgr(st)) || cli_table_cell(t, 4, pct) || cli_table_cell(t, 5, steps) ||
           cli_table_cell(t, 6, loss) || cli_table_cell(t, 7, ev) || cli_table_cell(t, 8, el) || cli_table_cell(t, 9, et);
}

int lora_cmd_ls(cli_ctx *c) {
    char path[1024] = "/v1/jobs", e[256];
    static const char *const filters[] = {"status", "user", "sweep"};
    static const char *const query[] = {"status", "user", "sweep_id"};
    long long limit;
    if (args_int(&c->a, "limit", 50, 1, 100000, &limit, &c->err)) return cli_usage_fail(c);
    for (int i = 0; i < 3; i++) {
        const char *v = args_get(&c->a, filters[i], NULL);
        if (!v) continue;
        size_t l = strlen(path);
        snprintf(path + l, sizeof path - l, "%c%s=%s", strchr(path, '?') ? '&' : '?', query[i],
                 cli_seg(v, e, sizeof e));
    }
    json_t *list;
    if (cli_fetch_list(c, path, limit, &list)) return cli_srv_fail(c);
    if (c->json) {
        cli_print_json(list);
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
    double now = cli_server_now(c);
    json_t *j;
    size_t i;
    json_array_foreach(list, i, j) bad |= !t || job_row(t, j, now);
    if (!bad) table_print(t, stdout, c->utf8, c->color);
    table_free(t);
    json_decref(list);
    if (bad) return lr_errf(&c->err, "out of memory"), cli_fail(c, 1);
    return 0;
}

static int get_job(cli_ctx *c, const char *id, json_t **out) {
    char p[256], e[160];
    snprintf(p, sizeof p, "/v1/jobs/%s", cli_seg(id, e, sizeof e));
    return http_json(&c->h, "GET", p, NULL, out, &c->err);
}

int lora_cmd_show(cli_ctx *c) {
    json_t *j;
    if (get_job(c, c->a.pos[0], &j)) return cli_srv_fail(c);
    if (c->json) {
        cli_print_json(j);
        json_decref(j);
        return 0;
    }
    const json_t *pg = json_object_get(j, "progress"), *m = json_object_get(j, "metrics");
    const char *st = cli_jstr(j, "status", "?");
    char a[64], b[64], cc[64];
    double elapsed, eta;
    watch_times(j, cli_server_now(c), &elapsed, &eta);
    printf("%-14s %s\n", "id", cli_jstr(j, "id", "?"));
    printf("%-14s %s\n", "name", cli_jstr(j, "name", "-"));
    const char *sgr = c->color ? cli_status_sgr(st) : NULL;
    printf("%-14s %s%s%s%s\n", "status", sgr ? "\x1b[" : "", sgr ? sgr : "", sgr ? "m" : "", st);
    if (sgr) fputs("\x1b[0m", stdout);
    printf("%-14s %s\n", "user", cli_jstr(j, "user", "-"));
    printf("%-14s %s\n", "model", cli_jstr(j, "model", "-"));
    printf("%-14s %s\n", "worker", cli_jstr(j, "worker", "-"));
    printf("%-14s %s\n", "sweep", cli_jstr(j, "sweep_id", "-"));
    cli_fmt_time(cli_jnum(j, "created_at"), a, sizeof a);
    printf("%-14s %s\n", "created", a);
    cli_fmt_time(cli_jnum(j, "started_at"), a, sizeof a);
    printf("%-14s %s\n", "started", a);
    cli_fmt_time(cli_jnum(j, "finished_at"), a, sizeof a);
    printf("%-14s %s\n", "finished", a);
    fmt_duration(elapsed, a, sizeof a);
    fmt_duration(eta, b, sizeof b);
    printf("%-14s %s (ETA %s)\n", "elapsed", a, watch_is_final(st) ? "-" : b);
    printf("%-14s %.0f/%.0f (epoch %.2f)\n", "step", isfinite(cli_jnum(pg, "step")) ? cli_jnum(pg, "step") : 0,
           isfinite(cli_jnum(pg, "total_steps")) ? cli_jnum(pg, "total_steps") : 0,
           isfinite(cli_jnum(pg, "epoch")) ? cli_jnum(pg, "epoch") : 0);
    fmt_num(cli_jnum(m, "loss"), a, sizeof a);
    fmt_num(cli_jnum(m, "eval_loss"), b, sizeof b);
    fmt_num(cli_jnum(m, "lr"), cc, sizeof cc);
    char tl[64];
    watch_tps_label(j, tl, sizeof tl);
    printf("%-14s %s  eval loss %s  lr %s  %s %.0f\n", "loss", a, b, cc, tl,
           isfinite(cli_jnum(m, "tokens_per_s")) ? cli_jnum(m, "tokens_per_s") : 0);
    if (!strcmp(st, "queued") && json_is_string(json_object_get(j, "waiting_reason")))
        printf("%-14s %s\n", "waiting", cli_jstr(j, "waiting_reason", "?"));
    const json_t *e = json_object_get(j, "error");
    if (json_is_object(e)) printf("%-14s %s (%s)\n", "error", cli_jstr(e, "message", "?"), cli_jstr(e, "code", "?"));
    if (json_is_string(json_object_get(j, "stop_reason"))) printf("%-14s %s\n", "stop reason", cli_jstr(j, "stop_reason", "?"));
    const json_t *mates = json_object_get(json_object_get(j, "pack"), "jobs");
    if (json_array_size(mates) > 1) { /* co-trained in one worker pass (issue 19): the others */
        printf("%-14s shared a pass with:", "pack");
        const char *self = cli_jstr(j, "id", "");
        size_t i;
        json_t *v;
        json_array_foreach(mates, i, v)
            if (json_is_string(v) && strcmp(json_string_value(v), self)) printf(" %s", json_string_value(v));
        printf(" (%.0f steps packed)\n", isfinite(cli_jnum(json_object_get(j, "pack"), "steps"))
                                             ? cli_jnum(json_object_get(j, "pack"), "steps") : 0);
    }
    const json_t *spec = json_object_get(j, "spec");
    if (json_is_object(spec)) {
        printf("spec:\n");
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)spec, k, v) {
            if (json_is_object(v)) {
                cli_print_fields(v, k);
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

int lora_cmd_cancel(cli_ctx *c) {
    int code = 0;
    for (int i = 0; i < c->a.npos; i++) {
        char p[256], e[160];
        json_t *r;
        snprintf(p, sizeof p, "/v1/jobs/%s/cancel", cli_seg(c->a.pos[i], e, sizeof e));
        if (http_json(&c->h, "POST", p, NULL, &r, &c->err)) {
            int k = cli_srv_fail(c);
            if (code != HTTP_FAIL_CONNECT) code = k;
            continue;
        }
        if (c->json)
            cli_print_json(r);
        else
            printf("%s %s\n", c->a.pos[i],
                   !strcmp(cli_jstr(r, "status", ""), "cancelled") ? "cancelled" : "cancelling");
        json_decref(r);
    }
    return code;
}

int lora_cmd_watch(cli_ctx *c) { return do_watch(c, c->a.pos[0]); }

static void print_event(cli_ctx *c, const json_t *ev) {
    char t[32];
    cli_fmt_time(cli_jnum(ev, "created_at"), t, sizeof t);
    if (c->json) {
        char *s = jsonfmt_dumps(ev, JSON_COMPACT);
        if (s) printf("%s\n", s);
        free(s);
        return;
    }
    const char *lvl = cli_jstr(ev, "level", "info");
    const char *sgr = !c->color ? NULL : !strcmp(lvl, "error") ? "31" : !strcmp(lvl, "warning") || !strcmp(lvl, "warn") ? "33" : NULL;
    if (sgr)
        printf("%s  \x1b[%sm%-7s\x1b[0m %s\n", t, sgr, lvl, cli_jstr(ev, "message", ""));
    else
        printf("%s  %-7s %s\n", t, lvl, cli_jstr(ev, "message", ""));
}

int lora_cmd_logs(cli_ctx *c) {
    char base[256], p[512], e[160];
    long long after = 0;
    int follow = args_count(&c->a, "follow") > 0;
    watch_opts o;
    if (watch_opts_from(c, &o)) return cli_usage_fail(c);
    snprintf(base, sizeof base, "/v1/jobs/%s", cli_seg(c->a.pos[0], e, sizeof e));
    for (;;) {
        json_t *r;
        int more;
        do {
            snprintf(p, sizeof p, "%s/events?limit=500&after=%lld", base, after);
            if (http_json(&c->h, "GET", p, NULL, &r, &c->err)) return cli_srv_fail(c);
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
        if (get_job(c, c->a.pos[0], &j)) return cli_srv_fail(c);
        int final = watch_is_final(cli_jstr(j, "status", ""));
        int code = watch_exit_code(cli_jstr(j, "status", ""));
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
int lora_cmd_metrics(cli_ctx *c) {
    char p[1024], e[160], n[256];
    const char *names = args_get(&c->a, "names", NULL);
    snprintf(p, sizeof p, "/v1/jobs/%s/metrics%s%s", cli_seg(c->a.pos[0], e, sizeof e), names ? "?names=" : "",
             names ? cli_seg(names, n, sizeof n) : "");
    json_t *r;
    if (http_json(&c->h, "GET", p, NULL, &r, &c->err)) return cli_srv_fail(c);
    if (c->json) {
        cli_print_json(r);
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
    for (size_t s = 0; s < ns; s++) hd[s + 1] = cli_jstr(json_array_get(series, s), "name", "?");
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
        else bad |= table_add_row(t) || cli_table_cell(t, 0, cell);
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
            else bad |= cli_table_cell(t, (int)s + 1, cell);
        }
        if (csv) printf("\n");
    }
    if (t && !bad) table_print(t, stdout, c->utf8, c->color);
    table_free(t);
    free(pos);
    json_decref(r);
    if (bad) return lr_errf(&c->err, "out of memory"), cli_fail(c, 1);
    return 0;
}
