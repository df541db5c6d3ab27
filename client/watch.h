/* watch: `lora watch ID`, the live view of one job.
 *
 * On a terminal the view is redrawn in place every poll: a header (id, name,
 * status, user, worker), a progress bar with percent, step/total, elapsed and
 * ETA, the latest loss / eval loss / learning rate / tokens per second, and a
 * sparkline of the whole loss curve, and why the job ended when it failed or
 * a stopping rule ended it. Piped, it prints one plain line whenever
 * the step or the status changes. Either way it returns when the job ends,
 * with the job's outcome as the exit status (watch_exit_code). */
#ifndef LR_CLIENT_WATCH_H
#define LR_CLIENT_WATCH_H

#include <jansson.h>
#include <stdio.h>
#include "client/http.h"
#include "common/err.h"

/* Exit statuses of a finished job (0 succeeded). */
enum { WATCH_EXIT_FAILED = 4, WATCH_EXIT_CANCELLED = 5, WATCH_EXIT_INTERRUPTED = 130 };

typedef struct watch_view {
    int utf8, color;
    int width;        /* terminal columns */
    double now;       /* unix seconds */
} watch_view;

/* Whether a status is final (succeeded, failed, cancelled). */
int watch_is_final(const char *status);
/* 0 succeeded, WATCH_EXIT_FAILED, WATCH_EXIT_CANCELLED; -1 not final. */
int watch_exit_code(const char *status);
/* Seconds the job has run (to finished_at or now) and its ETA in seconds
 * (-1 unknown or finished), from the job object. */
void watch_times(const json_t *job, double now, double *elapsed, double *eta);

/* The label of a job's metrics.tokens_per_s, which is the rate of the last
 * logging window, not the run's average: "tokens/s (last 10 steps)" from
 * the spec's logging_steps, else "tokens/s (last log window)". */
void watch_tps_label(const json_t *job, char *out, size_t cap);

/* The server's clock as the client sees it, so elapsed times computed
 * against the server's started_at neither depend on the client's clock nor
 * go back. An answer's Date header (whole seconds: the server's time was at
 * least date when the client got it) bounds server minus client time from
 * below; the estimate keeps the highest bound, and now never decreases. */
typedef struct watch_clock {
    double offset;     /* server minus client seconds, when have */
    int have;
    double last;       /* the last time handed out */
} watch_clock;
/* server_date 0 (no Date header) is ignored. */
void watch_clock_sample(watch_clock *c, double server_date, double client_now);
/* The server's time now; the client's own time until a sample came. */
double watch_clock_now(watch_clock *c, double client_now);

/* Writes the view's lines (each ending in '\n', none wider than v->width)
 * to f; returns how many lines. loss[0..n) is the loss series. Pure. */
int watch_render(FILE *f, const json_t *job, const double *loss, size_t n, const watch_view *v);
/* The one-line form for piped output. Pure. */
void watch_line(const json_t *job, double now, char *out, size_t cap);

typedef struct watch_opts {
    double interval;  /* seconds between polls */
    int tty, utf8, color;
} watch_opts;

/* Follows the job until it ends; *exit_code gets watch_exit_code of its
 * final status (or WATCH_EXIT_INTERRUPTED on Ctrl-C). -1 + err when the
 * server cannot tell (h->fail says why). */
int watch_run(http_client *h, const char *id, const watch_opts *o, int *exit_code, lr_err *err) LR_WARN_UNUSED;

#endif
