#include "client/sweep.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/rng.h"
#include "proto/jobspec.h"

void sweep_plan_init(sweep_plan *pl) { memset(pl, 0, sizeof *pl); }

/* Copies the "key" of "key=rest" into p->key; returns rest or NULL. */
static const char *take_key(sweep_plan *pl, const char *arg, const char *flag, lr_err *err) {
    const char *eq = strchr(arg, '=');
    if (!eq || eq == arg) {
        lr_errp(err, LR_E_INVALID, flag, "--%s '%.100s' is not of the form key=%s", flag, arg,
                !strcmp(flag, "grid") ? "v1,v2,... (e.g. lora.r=8,16,32)" : "lo:hi[:log] (e.g. learning_rate=1e-5:1e-3:log)");
        return NULL;
    }
    if (pl->n == SWEEP_MAX_PARAMS) {
        lr_errp(err, LR_E_INVALID, flag, "a sweep varies at most %d parameters", SWEEP_MAX_PARAMS);
        return NULL;
    }
    size_t kl = (size_t)(eq - arg);
    if (kl >= sizeof pl->p[0].key) {
        lr_errp(err, LR_E_INVALID, flag, "--%s: key too long in '%.100s'", flag, arg);
        return NULL;
    }
    for (int i = 0; i < pl->n; i++)
        if (strlen(pl->p[i].key) == kl && !strncmp(pl->p[i].key, arg, kl)) {
            lr_errp(err, LR_E_INVALID, flag, "'%.*s' is swept twice", (int)kl, arg);
            return NULL;
        }
    sweep_param *p = &pl->p[pl->n];
    memset(p, 0, sizeof *p);
    memcpy(p->key, arg, kl);
    p->key[kl] = 0;
    return eq + 1;
}

int sweep_add_grid(sweep_plan *pl, const char *arg, lr_err *err) {
    const char *s = take_key(pl, arg, "grid", err);
    if (!s) return -1;
    sweep_param *p = &pl->p[pl->n];
    int depth = 0, quote = 0;
    const char *start = s;
    for (const char *c = s;; c++) {
        if (*c == '"') quote = !quote;
        if (!quote && (*c == '[' || *c == '{')) depth++;
        if (!quote && (*c == ']' || *c == '}')) depth--;
        if (*c && (*c != ',' || depth > 0 || quote)) continue;
        const char *a = start, *b = c;
        while (a < b && isspace((unsigned char)*a)) a++;
        while (b > a && isspace((unsigned char)b[-1])) b--;
        if (a == b) return lr_errp(err, LR_E_INVALID, "grid", "--grid %s: empty value in '%.100s'", p->key, s);
        if (p->nvalues == SWEEP_MAX_VALUES)
            return lr_errp(err, LR_E_INVALID, "grid", "--grid %s: more than %d values", p->key, SWEEP_MAX_VALUES);
        if ((size_t)(b - a) >= sizeof p->values[0])
            return lr_errp(err, LR_E_INVALID, "grid", "--grid %s: value too long", p->key);
        memcpy(p->values[p->nvalues], a, (size_t)(b - a));
        p->values[p->nvalues][b - a] = 0;
        p->nvalues++;
        if (!*c) break;
        start = c + 1;
    }
    if (depth || quote) return lr_errp(err, LR_E_INVALID, "grid", "--grid %s: unbalanced brackets or quotes", p->key);
    pl->n++;
    return 0;
}

static int parse_num(const char *s, size_t n, double *out) {
    char tmp[64];
    if (n == 0 || n >= sizeof tmp) return -1;
    memcpy(tmp, s, n);
    tmp[n] = 0;
    char *end;
    errno = 0;
    double d = strtod(tmp, &end);
    if (errno || *end || !isfinite(d)) return -1;
    *out = d;
    return 0;
}

int sweep_add_range(sweep_plan *pl, const char *arg, lr_err *err) {
    const char *s = take_key(pl, arg, "range", err);
    if (!s) return -1;
    sweep_param *p = &pl->p[pl->n];
    const char *parts[4];
    size_t lens[4];
    int np = 0;
    for (const char *c = s;; ) {
        const char *e = strchr(c, ':');
        if (np == 4) return lr_errp(err, LR_E_INVALID, "range", "--range %s: too many ':' in '%s'", p->key, s);
        parts[np] = c;
        lens[np++] = e ? (size_t)(e - c) : strlen(c);
        if (!e) break;
        c = e + 1;
    }
    if (np < 2 || parse_num(parts[0], lens[0], &p->lo) || parse_num(parts[1], lens[1], &p->hi))
        return lr_errp(err, LR_E_INVALID, "range", "--range %s: '%s' is not lo:hi[:log][:int] (e.g. 1e-5:1e-3:log)",
                       p->key, s);
    for (int i = 2; i < np; i++) {
        if (lens[i] == 3 && !strncmp(parts[i], "log", 3))
            p->log = 1;
        else if (lens[i] == 3 && !strncmp(parts[i], "lin", 3))
            p->log = 0;
        else if (lens[i] == 3 && !strncmp(parts[i], "int", 3))
            p->integer = 1;
        else
            return lr_errp(err, LR_E_INVALID, "range", "--range %s: unknown scale '%.*s' (lin, log or int)", p->key,
                           (int)lens[i], parts[i]);
    }
    if (!(p->lo < p->hi)) return lr_errp(err, LR_E_INVALID, "range", "--range %s: lo must be below hi", p->key);
    if (p->log && p->lo <= 0) return lr_errp(err, LR_E_INVALID, "range", "--range %s: a log range needs lo > 0", p->key);
    p->is_range = 1;
    pl->n++;
    return 0;
}

static json_t *assignment(const char *key, const char *val) {
    char buf[320];
    snprintf(buf, sizeof buf, "%s=%s", key, val);
    return json_string(buf);
}

static json_t *draw(const sweep_param *p, lr_rng *r) {
    char v[64];
    if (!p->is_range) return assignment(p->key, p->values[rng_below(r, (uint64_t)p->nvalues)]);
    double u = rng_uniform(r), x;
    if (p->integer) {
        double lo = ceil(p->lo), hi = floor(p->hi);
        if (p->log)
            x = floor(exp(log(lo) + u * (log(hi + 1) - log(lo))));
        else
            x = floor(lo + u * (hi - lo + 1));
        if (x > hi) x = hi;
        if (x < lo) x = lo;
        snprintf(v, sizeof v, "%.0f", x);
    } else {
        x = p->log ? exp(log(p->lo) + u * (log(p->hi) - log(p->lo))) : p->lo + u * (p->hi - p->lo);
        snprintf(v, sizeof v, "%.3g", x);
    }
    return assignment(p->key, v);
}

int sweep_points(const sweep_plan *pl, int n_random, uint64_t seed, json_t **out, lr_err *err) {
    *out = NULL;
    if (pl->n == 0) return lr_errp(err, LR_E_INVALID, "grid", "a sweep needs at least one --grid or --range");
    json_t *pts = json_array();
    if (!pts) return lr_errp(err, LR_E_NOMEM, "", "out of memory");
    if (n_random > 0) {
        if (n_random > SWEEP_MAX_POINTS) {
            json_decref(pts);
            return lr_errp(err, LR_E_INVALID, "random", "--random %d: the limit is %d points", n_random, SWEEP_MAX_POINTS);
        }
        lr_rng r;
        rng_seed(&r, seed);
        for (int k = 0; k < n_random; k++) {
            json_t *pt = json_array();
            for (int i = 0; i < pl->n; i++) json_array_append_new(pt, draw(&pl->p[i], &r));
            json_array_append_new(pts, pt);
        }
        *out = pts;
        return 0;
    }
    long total = 1;
    for (int i = 0; i < pl->n; i++) {
        if (pl->p[i].is_range) {
            json_decref(pts);
            return lr_errp(err, LR_E_INVALID, "range", "--range %s needs --random N (how many points to draw)",
                           pl->p[i].key);
        }
        total *= pl->p[i].nvalues;
        if (total > SWEEP_MAX_POINTS) {
            json_decref(pts);
            return lr_errp(err, LR_E_INVALID, "grid", "the grid has more than %d points", SWEEP_MAX_POINTS);
        }
    }
    /* Odometer order: the last parameter varies fastest, as in the listing. */
    int idx[SWEEP_MAX_PARAMS] = {0};
    for (long k = 0; k < total; k++) {
        json_t *pt = json_array();
        for (int i = 0; i < pl->n; i++) json_array_append_new(pt, assignment(pl->p[i].key, pl->p[i].values[idx[i]]));
        json_array_append_new(pts, pt);
        for (int i = pl->n - 1; i >= 0; i--) {
            if (++idx[i] < pl->p[i].nvalues) break;
            idx[i] = 0;
        }
    }
    *out = pts;
    return 0;
}

const json_t *sweep_get_path(const json_t *obj, const char *path) {
    char buf[256];
    snprintf(buf, sizeof buf, "%s", path);
    const json_t *cur = obj;
    char *save = NULL;
    for (char *tok = strtok_r(buf, ".", &save); tok; tok = strtok_r(NULL, ".", &save)) {
        if (!json_is_object(cur)) return NULL;
        cur = json_object_get(cur, tok);
    }
    return cur;
}

/* Adds the dotted leaf paths of o under prefix to set (an object used as a set). */
static void leaves(const json_t *o, const char *prefix, json_t *set) {
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)o, k, v) {
        char path[256];
        snprintf(path, sizeof path, "%s%s%s", prefix, *prefix ? "." : "", k);
        if (json_is_object(v))
            leaves(v, path, set);
        else
            json_object_set_new(set, path, json_true());
    }
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(json_string_value(*(json_t *const *)a), json_string_value(*(json_t *const *)b));
}

json_t *sweep_varied_paths(const json_t *specs) {
    json_t *set = json_object(), *out = json_array();
    size_t i;
    json_t *s;
    json_array_foreach((json_t *)specs, i, s) if (json_is_object(s)) leaves(s, "", set);
    const char *path;
    json_t *unused;
    json_object_foreach(set, path, unused) {
        const json_t *first = NULL;
        int differs = 0, seen = 0;
        json_array_foreach((json_t *)specs, i, s) {
            const json_t *v = sweep_get_path(s, path);
            if (!seen++) first = v;
            else if (!(first == v || (first && v && json_equal((json_t *)first, (json_t *)v)))) differs = 1;
        }
        if (differs) json_array_append_new(out, json_string(path));
    }
    json_decref(set);
    /* jansson arrays have no sort: sort the element pointers in a copy. */
    size_t n = json_array_size(out);
    json_t **items = n ? malloc(n * sizeof *items) : NULL;
    if (items) {
        for (i = 0; i < n; i++) items[i] = json_incref(json_array_get(out, i));
        qsort(items, n, sizeof *items, cmp_str);
        json_array_clear(out);
        for (i = 0; i < n; i++) json_array_append_new(out, items[i]);
        free(items);
    }
    return out;
}

static double metric(const json_t *job, const char *name) {
    const json_t *v = json_object_get(json_object_get(job, "metrics"), name);
    return json_is_number(v) ? json_number_value(v) : NAN;
}

typedef struct ranked {
    json_t *job;
    size_t idx;
} ranked;

static int cmp_rank(const void *a, const void *b) {
    const ranked *x = a, *y = b;
    double ex = metric(x->job, "eval_loss"), ey = metric(y->job, "eval_loss");
    double lx = metric(x->job, "loss"), ly = metric(y->job, "loss");
    int cx = isfinite(ex) ? 0 : isfinite(lx) ? 1 : 2, cy = isfinite(ey) ? 0 : isfinite(ly) ? 1 : 2;
    if (cx != cy) return cx - cy;
    double vx = cx == 0 ? ex : lx, vy = cy == 0 ? ey : ly;
    if (cx < 2 && vx != vy) return vx < vy ? -1 : 1;
    return x->idx < y->idx ? -1 : x->idx > y->idx; /* ties keep the server's order */
}

void sweep_rank(json_t *jobs) {
    size_t n = json_array_size(jobs);
    if (n < 2) return;
    ranked *items = malloc(n * sizeof *items);
    if (!items) return;
    for (size_t i = 0; i < n; i++) items[i] = (ranked){json_incref(json_array_get(jobs, i)), i};
    qsort(items, n, sizeof *items, cmp_rank);
    json_array_clear(jobs);
    for (size_t i = 0; i < n; i++) json_array_append_new(jobs, items[i].job);
    free(items);
}

/* Where an assignment lands and what it sets: jobspec_set on an empty
 * document gives the canonical path ("learning_rate" ->
 * "hyperparameters.learning_rate") and the typed value (new reference). */
static int canonical(const char *assignment, char *path, size_t cap, json_t **value, lr_err *err) {
    json_t *scratch = json_object(), *cur = scratch;
    if (!scratch) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
    if (jobspec_set(scratch, assignment, err)) {
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

/* A point's assignments as {canonical path: value}. */
static json_t *point_object(const json_t *pt, lr_err *err) {
    json_t *o = json_object(), *as, *v;
    size_t k;
    char path[256];
    if (!o) {
        lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
        return NULL;
    }
    json_array_foreach((json_t *)pt, k, as) {
        if (canonical(json_string_value(as), path, sizeof path, &v, err) || json_object_set_new(o, path, v)) {
            json_decref(o);
            return NULL;
        }
    }
    return o;
}

int sweep_body(const json_t *tpl, const sweep_plan *pl, const json_t *points, int random, json_t **out,
               lr_err *err) {
    json_t *params = json_object(), *list = json_array(), *pt, *as, *v;
    size_t i, k;
    char path[256], a[400];
    *out = NULL;
    if (!params || !list) {
        lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
        goto out;
    }
    json_array_foreach((json_t *)points, i, pt) {
        json_t *spec = json_deep_copy(tpl);
        jobspec s;
        int bad = spec ? 0 : lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
        json_array_foreach(pt, k, as) bad = bad || jobspec_set(spec, json_string_value(as), err);
        if (!bad && jobspec_from_json(spec, &s, err)) {
            char *desc = json_dumps(pt, JSON_COMPACT);
            lr_err_prefix(err, "sweep point %zu %s: ", i + 1, desc ? desc : "");
            free(desc);
            bad = 1;
        }
        json_decref(spec);
        if (bad) goto out;
        if (random && json_array_append_new(list, point_object(pt, err))) goto out;
    }
    for (int p = 0; !random && p < pl->n; p++) {
        const sweep_param *sp = &pl->p[p];
        json_t *vals = json_array();
        for (int x = 0; vals && x < sp->nvalues; x++) {
            snprintf(a, sizeof a, "%s=%s", sp->key, sp->values[x]);
            if (canonical(a, path, sizeof path, &v, err)) {
                json_decref(vals);
                goto out;
            }
            json_array_append_new(vals, v);
        }
        if (!vals || json_object_set_new(params, path, vals)) {
            lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
            goto out;
        }
    }
    *out = random ? json_pack("{s:O, s:O}", "template", tpl, "points", list)
                  : json_pack("{s:O, s:O}", "template", tpl, "parameters", params);
    if (!*out) lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
out:
    json_decref(params);
    json_decref(list);
    return *out ? 0 : -1;
}
