#include "client/watch.h"

#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include "client/fmt.h"

#define WATCH_MAX_POINTS 200000
#define WATCH_MAX_OUTAGE_S 60.0

static double num(const json_t *o, const char *k) {
    const json_t *v = json_object_get(o, k);
    return json_is_number(v) ? json_number_value(v) : NAN;
}

static const char *str(const json_t *o, const char *k, const char *def) {
    const char *s = json_string_value(json_object_get(o, k));
    return s && *s ? s : def;
}

int watch_is_final(const char *st) {
    return st && (!strcmp(st, "succeeded") || !strcmp(st, "failed") || !strcmp(st, "cancelled"));
}

int watch_exit_code(const char *st) {
    if (!st) return -1;
    if (!strcmp(st, "succeeded")) return 0;
    if (!strcmp(st, "failed")) return WATCH_EXIT_FAILED;
    if (!strcmp(st, "cancelled")) return WATCH_EXIT_CANCELLED;
    return -1;
}

void watch_times(const json_t *job, double now, double *elapsed, double *eta) {
    double start = num(job, "started_at"), end = num(job, "finished_at");
    const json_t *pg = json_object_get(job, "progress");
    *elapsed = isfinite(start) ? (isfinite(end) ? end : now) - start : NAN;
    if (isfinite(*elapsed) && *elapsed < 0) *elapsed = 0;
    *eta = watch_is_final(str(job, "status", "")) ? -1
                                                  : fmt_eta(*elapsed, num(pg, "step"), num(pg, "total_steps"));
}

void watch_tps_label(const json_t *job, char *out, size_t cap) {
    double ls = num(json_object_get(json_object_get(job, "spec"), "hyperparameters"), "logging_steps");
    if (ls >= 1)
        snprintf(out, cap, "tokens/s (last %.0f step%s)", ls, ls == 1 ? "" : "s");
    else
        snprintf(out, cap, "tokens/s (last log window)");
}

void watch_clock_sample(watch_clock *c, double server_date, double client_now) {
    if (!(server_date > 0)) return;
    double low = server_date - client_now;
    if (!c->have || low > c->offset) c->offset = low;
    c->have = 1;
}

double watch_clock_now(watch_clock *c, double client_now) {
    double t = client_now + (c->have ? c->offset : 0);
    if (t < c->last) t = c->last;
    c->last = t;
    return t;
}

static const char *status_sgr(const char *st) {
    if (!strcmp(st, "succeeded")) return "32";
    if (!strcmp(st, "failed")) return "31";
    if (!strcmp(st, "cancelled")) return "33";
    if (!strcmp(st, "running")) return "36";
    return "";
}

/* Prints one line cut to the width; when the line fits whole, the first
 * occurrence of `hl` is coloured (colour codes would break the cut). */
static void emit(FILE *f, const char *line, const watch_view *v, const char *hl, const char *sgr) {
    char cut[4096];
    int w = v->width > 1 ? v->width - 1 : 1; /* the last column would make some terminals wrap */
    const char *at = hl && *hl && sgr && *sgr && v->color ? strstr(line, hl) : NULL;
    if (fmt_width(line) <= w && at) {
        fprintf(f, "%.*s\x1b[%sm%s\x1b[0m%s\n", (int)(at - line), line, sgr, hl, at + strlen(hl));
        return;
    }
    fmt_truncate(line, w, v->utf8, cut, sizeof cut);
    fprintf(f, "%s\n", cut);
}

int watch_render(FILE *f, const json_t *job, const double *loss, size_t n, const watch_view *v) {
    char line[4096], a[64], b[64], c[64], d[64], bar[512], spark[2048];
    const json_t *pg = json_object_get(job, "progress"), *m = json_object_get(job, "metrics");
    const char *st = str(job, "status", "?");
    int lines = 0;
    double elapsed, eta;
    watch_times(job, v->now, &elapsed, &eta);

    snprintf(line, sizeof line, "%s  %s  %s  user %s%s%s", str(job, "id", "?"), str(job, "name", "(no name)"), st,
             str(job, "user", "?"), json_is_string(json_object_get(job, "worker")) ? "  worker " : "",
             str(job, "worker", ""));
    emit(f, line, v, st, status_sgr(st));
    lines++;

    double step = num(pg, "step"), total = num(pg, "total_steps");
    double frac = total > 0 && step >= 0 ? step / total : 0;
    if (!strcmp(st, "succeeded")) frac = 1;
    fmt_duration(elapsed, a, sizeof a);
    fmt_duration(eta, b, sizeof b);
    char pct[16], steps[64];
    snprintf(pct, sizeof pct, "%3.0f%%", frac * 100);
    if (total > 0)
        snprintf(steps, sizeof steps, "step %.0f/%.0f", isfinite(step) ? step : 0, total);
    else
        snprintf(steps, sizeof steps, "step -");
    /* the bar takes what the text leaves, between 10 and 50 cells */
    char tail[256];
    /* most telling first: a narrow terminal cuts from the right */
    snprintf(tail, sizeof tail, " %s  ETA %s  %s  elapsed %s  epoch %.2f", pct, !strcmp(st, "queued") ? "-" : b,
             steps, a, isfinite(num(pg, "epoch")) ? num(pg, "epoch") : 0.0);
    int bw = v->width - 3 - fmt_width(tail);
    if (bw > 50) bw = 50;
    if (bw < 10) bw = 10;
    fmt_bar(frac, bw, v->utf8, bar, sizeof bar);
    snprintf(line, sizeof line, "%s%s%s%s", v->utf8 ? "" : "[", bar, v->utf8 ? "" : "]", tail);
    emit(f, line, v, NULL, NULL);
    lines++;

    fmt_num(num(m, "loss"), a, sizeof a);
    fmt_num(num(m, "eval_loss"), b, sizeof b);
    fmt_num(num(m, "lr"), c, sizeof c);
    double tps = num(m, "tokens_per_s");
    if (isfinite(tps))
        snprintf(d, sizeof d, "%.0f", tps);
    else
        snprintf(d, sizeof d, "-");
    char tl[64];
    watch_tps_label(job, tl, sizeof tl);
    snprintf(line, sizeof line, "loss %s  eval loss %s  lr %s  %s %s", a, b, c, tl, d);
    emit(f, line, v, NULL, NULL);
    lines++;
    const char *wait = str(job, "waiting_reason", NULL);
    if (!strcmp(st, "queued") && wait) {
        snprintf(line, sizeof line, "queued: %s", wait);
        emit(f, line, v, NULL, NULL);
        lines++;
    }

    double lo = INFINITY, hi = -INFINITY;
    for (size_t i = 0; i < n; i++)
        if (isfinite(loss[i])) {
            if (loss[i] < lo) lo = loss[i];
            if (loss[i] > hi) hi = loss[i];
        }
    if (isfinite(lo)) {
        fmt_num(hi, a, sizeof a);
        fmt_num(lo, b, sizeof b);
        char range[192];
        snprintf(range, sizeof range, "  max %s min %s", a, b);
        int sw = v->width - 6 - fmt_width(range);
        fmt_sparkline(loss, n, sw < 8 ? 8 : sw, v->utf8, spark, sizeof spark);
        snprintf(line, sizeof line, "loss %s%s", spark, range);
    } else {
        snprintf(line, sizeof line, "loss (no points yet)");
    }
    emit(f, line, v, NULL, NULL);
    lines++;

    const json_t *e = json_object_get(job, "error");
    if (!strcmp(st, "failed") || (!strcmp(st, "cancelled") && json_is_object(e))) {
        snprintf(line, sizeof line, "%s: %s", st, str(e, "message", "no reason given"));
        emit(f, line, v, st, status_sgr(st));
        lines++;
    }
    /* A stopping rule ended the run: say which, the way a failure says why. */
    const char *why = str(job, "stop_reason", NULL);
    if (why) {
        snprintf(line, sizeof line, "%s: %s", st, why);
        emit(f, line, v, st, status_sgr(st));
        lines++;
    }
    return lines;
}

void watch_line(const json_t *job, double now, char *out, size_t cap) {
    const json_t *pg = json_object_get(job, "progress"), *m = json_object_get(job, "metrics");
    char l[64], e[64], lr[64], el[64], eta_s[64];
    double elapsed, eta;
    watch_times(job, now, &elapsed, &eta);
    fmt_num(num(m, "loss"), l, sizeof l);
    fmt_num(num(m, "eval_loss"), e, sizeof e);
    fmt_num(num(m, "lr"), lr, sizeof lr);
    fmt_duration(elapsed, el, sizeof el);
    fmt_duration(eta, eta_s, sizeof eta_s);
    double step = num(pg, "step"), total = num(pg, "total_steps");
    const char *st = str(job, "status", "?");
    int n = snprintf(out, cap, "%s %s step %.0f/%.0f (%.0f%%) loss %s eval_loss %s lr %s elapsed %s eta %s",
                     str(job, "id", "?"), st, isfinite(step) ? step : 0, isfinite(total) ? total : 0,
                     total > 0 && isfinite(step) ? 100 * step / total : 0, l, e, lr, el, eta_s);
    const json_t *err = json_object_get(job, "error");
    if (n > 0 && (size_t)n < cap && json_is_object(err))
        n += snprintf(out + n, cap - (size_t)n, " error \"%s\"", str(err, "message", "no reason given"));
    const char *why = str(job, "stop_reason", NULL);
    if (n > 0 && (size_t)n < cap && why) n += snprintf(out + n, cap - (size_t)n, " stop_reason \"%s\"", why);
    const char *wait = str(job, "waiting_reason", NULL);
    if (n > 0 && (size_t)n < cap && wait && !strcmp(st, "queued"))
        snprintf(out + n, cap - (size_t)n, " waiting \"%s\"", wait);
}

/* ---- the loop ---- */

static volatile sig_atomic_t interrupted;
static void on_sigint(int sig) {
    (void)sig;
    interrupted = 1;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int term_width(void) {
    struct winsize ws;
    if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
    const char *c = getenv("COLUMNS");
    int w = c ? atoi(c) : 0;
    return w > 20 ? w : 80;
}

typedef struct series {
    double *v;
    size_t n, cap;
    long long last_step;
} series;

/* Fetches the loss points after the last one seen. Failures only mean an
 * older picture: the status poll decides about errors. */
static void fetch_loss(http_client *h, const char *id, series *s) {
    char path[256];
    json_t *r = NULL;
    lr_err err;
    snprintf(path, sizeof path, "/v1/jobs/%s/metrics?names=loss&after_step=%lld", id, s->last_step);
    if (http_json(h, "GET", path, NULL, &r, &err)) return;
    size_t i;
    json_t *sr;
    json_array_foreach(json_object_get(r, "series"), i, sr) {
        if (strcmp(str(sr, "name", ""), "loss")) continue;
        json_t *steps = json_object_get(sr, "steps"), *vals = json_object_get(sr, "values");
        for (size_t k = 0; k < json_array_size(vals) && s->n < WATCH_MAX_POINTS; k++) {
            if (s->n == s->cap) {
                size_t cap = s->cap ? s->cap * 2 : 256;
                double *p = realloc(s->v, cap * sizeof *p);
                if (!p) break;
                s->v = p;
                s->cap = cap;
            }
            json_t *x = json_array_get(vals, k);
            s->v[s->n++] = json_is_number(x) ? json_number_value(x) : NAN;
            long long st = json_integer_value(json_array_get(steps, k));
            if (st > s->last_step) s->last_step = st;
        }
    }
    json_decref(r);
}

int watch_run(http_client *h, const char *id, const watch_opts *o, int *exit_code, lr_err *err) {
    char path[256], esc[128], line[1024];
    series s = {.last_step = -1};
    watch_clock clk = {0};
    int prev_lines = 0, rc = -1;
    double outage_since = 0;
    long long last_step_printed = -2;
    char last_status[32] = "";
    struct sigaction sa = {.sa_handler = on_sigint}, old_int, old_term;
    interrupted = 0;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    http_escape(id, esc, sizeof esc);
    snprintf(path, sizeof path, "/v1/jobs/%s", esc);
    if (o->tty) fputs("\x1b[?25l", stdout); /* hide the cursor while redrawing */
    *exit_code = -1;
    while (!interrupted) {
        json_t *job = NULL;
        if (http_json(h, "GET", path, NULL, &job, err)) {
            /* A restarting daemon is a pause, not the end: retry for a while. */
            if (h->fail != HTTP_FAIL_CONNECT) goto out;
            if (!outage_since) outage_since = now_s();
            if (now_s() - outage_since > WATCH_MAX_OUTAGE_S) goto out;
        } else {
            outage_since = 0;
            watch_clock_sample(&clk, h->server_date, now_s());
            const char *st = str(job, "status", "?");
            fetch_loss(h, esc, &s);
            if (o->tty) {
                watch_view v = {.utf8 = o->utf8, .color = o->color, .width = term_width(),
                                .now = watch_clock_now(&clk, now_s())};
                if (prev_lines) printf("\x1b[%dF", prev_lines); /* back to the view's first line */
                fputs("\x1b[J", stdout);                          /* and clear what was below */
                prev_lines = watch_render(stdout, job, s.v, s.n, &v);
            } else {
                long long step = (long long)num(json_object_get(job, "progress"), "step");
                if (step != last_step_printed || strcmp(st, last_status)) {
                    watch_line(job, watch_clock_now(&clk, now_s()), line, sizeof line);
                    printf("%s\n", line);
                    last_step_printed = step;
                    snprintf(last_status, sizeof last_status, "%s", st);
                }
            }
            fflush(stdout);
            int final = watch_is_final(st);
            if (final) *exit_code = watch_exit_code(st);
            json_decref(job);
            if (final) {
                rc = 0;
                goto out;
            }
        }
        for (double t = 0; t < o->interval && !interrupted; t += 0.05) usleep(50000);
    }
    *exit_code = WATCH_EXIT_INTERRUPTED;
    rc = 0;
out:
    if (o->tty) fputs("\x1b[?25h", stdout);
    fflush(stdout);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    free(s.v);
    return rc;
}
