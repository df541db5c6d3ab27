/* cmd_sweep: `lora sweep` and `lora sweep show`. */
#include "client/cmd_sweep.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "client/fmt.h"
#include "client/sweep.h"
#include "client/watch.h"

int lora_cmd_sweep(cli_ctx *c) {
    sweep_plan pl;
    sweep_plan_init(&pl);
    const char *const *l;
    int n = args_list(&c->a, "grid", &l);
    for (int i = 0; i < n; i++)
        if (sweep_add_grid(&pl, l[i], &c->err)) return cli_usage_fail(c);
    n = args_list(&c->a, "range", &l);
    for (int i = 0; i < n; i++)
        if (sweep_add_range(&pl, l[i], &c->err)) return cli_usage_fail(c);
    long long nrand, seed;
    if (args_int(&c->a, "random", 0, 1, SWEEP_MAX_POINTS, &nrand, &c->err) ||
        args_int(&c->a, "seed", 0, 0, (long long)1 << 62, &seed, &c->err))
        return cli_usage_fail(c);
    if (!args_get(&c->a, "seed", NULL)) seed = (long long)time(NULL);
    json_t *points, *tpl, *body, *r;
    if (sweep_points(&pl, (int)nrand, (uint64_t)seed, &points, &c->err)) return cli_usage_fail(c);
    if (cli_load_spec(c, c->a.pos[0], &tpl)) {
        json_decref(points);
        return cli_fail(c, CLI_EXIT_USAGE);
    }
    size_t npts = json_array_size(points);
    int rc = sweep_body(tpl, &pl, points, nrand > 0, &body, &c->err);
    json_decref(points);
    json_decref(tpl);
    if (rc) return cli_fail(c, CLI_EXIT_USAGE);
    rc = http_json(&c->h, "POST", "/v1/sweeps", body, &r, &c->err);
    json_decref(body);
    if (rc) return cli_srv_fail(c);
    if (c->json) {
        cli_print_json(r);
    } else {
        printf("%s\n", cli_jstr(r, "id", "?"));
        if (c->err_tty)
            fprintf(stderr, "submitted %zu jobs: rank them with 'lora sweep show %s'\n", npts, cli_jstr(r, "id", "?"));
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

int lora_cmd_sweep_show(cli_ctx *c) {
    char p[256], e[160];
    json_t *r;
    snprintf(p, sizeof p, "/v1/sweeps/%s", cli_seg(c->a.pos[0], e, sizeof e));
    if (http_json(&c->h, "GET", p, NULL, &r, &c->err)) return cli_srv_fail(c);
    json_t *jobs = json_object_get(r, "jobs");
    sweep_rank(jobs);
    if (c->json) {
        cli_print_json(r);
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
    double now = cli_server_now(c);
    json_array_foreach(jobs, i, j) {
        char rank[24], cell[96], loss[32], ev[32], el[32], steps[48] = "-";
        const json_t *pg = json_object_get(j, "progress"), *m = json_object_get(j, "metrics");
        const char *st = cli_jstr(j, "status", "?");
        double elapsed, eta;
        snprintf(rank, sizeof rank, "%zu", i + 1);
        bad |= !t || table_add_row(t) || cli_table_cell(t, 0, rank) || cli_table_cell(t, 1, cli_jstr(j, "id", ""));
        for (size_t k = 0; !bad && k < nv; k++) {
            const json_t *v = sweep_get_path(json_object_get(j, "spec"), json_string_value(json_array_get(varied, k)));
            char *s = v ? json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT | JSON_REAL_PRECISION(10)) : NULL;
            snprintf(cell, sizeof cell, "%s", json_is_string(v) ? json_string_value(v) : s ? s : "-");
            free(s);
            bad |= cli_table_cell(t, 2 + (int)k, cell);
        }
        if (cli_jnum(pg, "total_steps") > 0) snprintf(steps, sizeof steps, "%.0f/%.0f", cli_jnum(pg, "step"), cli_jnum(pg, "total_steps"));
        fmt_num(cli_jnum(m, "loss"), loss, sizeof loss);
        fmt_num(cli_jnum(m, "eval_loss"), ev, sizeof ev);
        watch_times(j, now, &elapsed, &eta);
        fmt_duration(elapsed, el, sizeof el);
        bad |= !t || table_set(t, first_metric, st, cli_status_sgr(st)) || cli_table_cell(t, first_metric + 1, steps) ||
               cli_table_cell(t, first_metric + 2, loss) || cli_table_cell(t, first_metric + 3, ev) ||
               cli_table_cell(t, first_metric + 4, el);
    }
    if (!bad) {
        printf("sweep %s  (%zu jobs, ranked by eval loss)\n", cli_jstr(r, "id", "?"), json_array_size(jobs));
        table_print(t, stdout, c->utf8, c->color);
    }
    table_free(t);
    json_decref(varied);
    json_decref(r);
    if (bad) return lr_errf(&c->err, "out of memory"), cli_fail(c, 1);
    return 0;
}
