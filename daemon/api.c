/* api.c: the REST handlers (daemon/api.h says what the API is).
 * Why this file is long: it holds the route table and every handler it
 * names (datasets, models, jobs, sweeps, the OpenAI routes, completions,
 * static files), which share the request helpers, the error replies and
 * the visibility rules at its top. A split by resource (issue 13) waits
 * until the handlers being edited by several engineers now have landed. */
#include "daemon/api.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <jansson.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "common/buf.h"
#include "daemon/models.h"
#include "daemon/openai.h"
#include "daemon/sched.h"
#include "daemon/slurm.h"
#include "daemon/sha256.h"
#include "daemon/upload.h"
#include "proto/jobspec.h"
#include "proto/jsonfmt.h"
#include "formats/chat.h"
#include "formats/data.h"
#include "formats/tok.h"

#define MAX_PARAMS 4
#define PARAM_LEN 160
#define SWEEP_MAX_POINTS 256
#define SWEEP_MAX_AXES 8
#define SWEEP_MAX_POINT_KEYS 32

typedef struct ctx {
    api *a;
    const api_req *rq;
    api_resp *rs;
    store *st;
    store_user user;
    char p[MAX_PARAMS][PARAM_LEN]; /* path parameters in order */
} ctx;

typedef void (*handler)(ctx *c);

typedef struct route {
    const char *method, *path;
    handler fn;
    int auth;
} route;

static void h_healthz(ctx *c);
static void h_metrics(ctx *c);
static void h_me(ctx *c);
static void h_jobspec(ctx *c);
static void h_dataset_upload(ctx *c);
static void h_datasets_list(ctx *c);
static void h_dataset_get(ctx *c);
static void h_dataset_delete(ctx *c);
static void h_dataset_preview(ctx *c);
static void h_models_list(ctx *c);
static void h_model_get(ctx *c);
static void h_model_delete(ctx *c);
static void h_job_create(ctx *c);
static void h_jobs_list(ctx *c);
static void h_job_get(ctx *c);
static void h_job_cancel(ctx *c);
static void h_job_metrics(ctx *c);
static void h_job_events(ctx *c);
static void h_job_checkpoints(ctx *c);
static void h_job_artifacts(ctx *c);
static void h_job_artifact(ctx *c);
static void h_job_generate(ctx *c);
static void h_job_merge(ctx *c);
static void h_sweep_create(ctx *c);
static void h_sweep_get(ctx *c);
static void h_workers(ctx *c);
static void h_files_list(ctx *c);
static void h_file_content(ctx *c);
static void h_ft_create(ctx *c);
static void h_ft_list(ctx *c);
static void h_job_pause(ctx *c);
static void h_job_resume(ctx *c);
static void h_ft_events(ctx *c);
static void h_chat_completions(ctx *c);
static void h_completions(ctx *c);

/* The one route table: dispatch, metrics labels and the openapi test. */
static const route routes[] = {
    {"GET", "/healthz", h_healthz, 0},
    {"GET", "/metrics", h_metrics, 0},
    {"GET", "/v1/me", h_me, 1},
    {"GET", "/v1/jobspec", h_jobspec, 0},
    {"POST", "/v1/datasets", h_dataset_upload, 1},
    {"GET", "/v1/datasets", h_datasets_list, 1},
    {"GET", "/v1/datasets/{id}", h_dataset_get, 1},
    {"DELETE", "/v1/datasets/{id}", h_dataset_delete, 1},
    {"GET", "/v1/datasets/{id}/preview", h_dataset_preview, 1},
    {"GET", "/v1/models", h_models_list, 1},
    {"GET", "/v1/models/{id}", h_model_get, 1},
    {"DELETE", "/v1/models/{id}", h_model_delete, 1},
    {"POST", "/v1/jobs", h_job_create, 1},
    {"GET", "/v1/jobs", h_jobs_list, 1},
    {"GET", "/v1/jobs/{id}", h_job_get, 1},
    {"POST", "/v1/jobs/{id}/cancel", h_job_cancel, 1},
    {"GET", "/v1/jobs/{id}/metrics", h_job_metrics, 1},
    {"GET", "/v1/jobs/{id}/events", h_job_events, 1},
    {"GET", "/v1/jobs/{id}/checkpoints", h_job_checkpoints, 1},
    {"GET", "/v1/jobs/{id}/artifacts", h_job_artifacts, 1},
    {"GET", "/v1/jobs/{id}/artifacts/{file}", h_job_artifact, 1},
    {"POST", "/v1/jobs/{id}/generate", h_job_generate, 1},
    {"POST", "/v1/jobs/{id}/merge", h_job_merge, 1},
    {"POST", "/v1/sweeps", h_sweep_create, 1},
    {"GET", "/v1/sweeps/{id}", h_sweep_get, 1},
    {"GET", "/v1/workers", h_workers, 1},
    /* OpenAI's routes: the same handlers as lorad's where the objects are one */
    {"POST", "/v1/files", h_dataset_upload, 1},
    {"GET", "/v1/files", h_files_list, 1},
    {"GET", "/v1/files/{id}", h_dataset_get, 1},
    {"DELETE", "/v1/files/{id}", h_dataset_delete, 1},
    {"GET", "/v1/files/{id}/content", h_file_content, 1},
    {"POST", "/v1/fine_tuning/jobs", h_ft_create, 1},
    {"GET", "/v1/fine_tuning/jobs", h_ft_list, 1},
    {"GET", "/v1/fine_tuning/jobs/{id}", h_job_get, 1},
    {"POST", "/v1/fine_tuning/jobs/{id}/cancel", h_job_cancel, 1},
    {"POST", "/v1/fine_tuning/jobs/{id}/pause", h_job_pause, 1},
    {"POST", "/v1/fine_tuning/jobs/{id}/resume", h_job_resume, 1},
    {"GET", "/v1/fine_tuning/jobs/{id}/events", h_ft_events, 1},
    {"GET", "/v1/fine_tuning/jobs/{id}/checkpoints", h_job_checkpoints, 1},
    {"POST", "/v1/chat/completions", h_chat_completions, 1},
    {"POST", "/v1/completions", h_completions, 1},
};
#define NROUTES ((int)(sizeof routes / sizeof routes[0]))
#define R_OTHER NROUTES /* static files, 404s, refused requests */

int api_route_count(void) { return NROUTES; }
const char *api_route_method(int i) { return i >= 0 && i < NROUTES ? routes[i].method : NULL; }
const char *api_route_path(int i) { return i >= 0 && i < NROUTES ? routes[i].path : NULL; }

static const double buckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10};
#define NBUCKETS ((int)(sizeof buckets / sizeof buckets[0]))

/* Users with uploads in progress at once (beyond it, uploads wait: 429). */
#define UPLOAD_USERS 64

struct api {
    api_env env;
    pthread_mutex_t up_mu;
    struct {
        char user[64];
        int n;
    } up[UPLOAD_USERS];
    _Atomic unsigned long long count[NROUTES + 1][6]; /* by status class 1xx..5xx, [0] unused */
    _Atomic unsigned long long hist[NROUTES + 1][NBUCKETS + 1];
    _Atomic unsigned long long sum_us[NROUTES + 1];
};

api *api_new(const api_env *env) {
    api *a = calloc(1, sizeof *a);
    if (!a) return NULL;
    a->env = *env;
    pthread_mutex_init(&a->up_mu, NULL);
    return a;
}

void api_free(api *a) {
    if (!a) return;
    pthread_mutex_destroy(&a->up_mu);
    free(a);
}

void api_resp_free(api_resp *rs) {
    free(rs->body);
    rs->body = NULL;
    if (rs->fd >= 0) close(rs->fd);
    rs->fd = -1;
    if (rs->read_done) rs->read_done(rs->read_ud);
    rs->read = NULL, rs->read_done = NULL, rs->read_ud = NULL;
}

size_t api_body_limit(const api *a, const char *method, const char *path) {
    if (api_streams_body(method, path)) return (size_t)a->env.cfg->max_upload_bytes;
    return (size_t)a->env.cfg->max_body_bytes;
}

static void observe(api *a, int r, int status, double secs) {
    int cls = status / 100;
    if (cls < 1 || cls > 5) cls = 5;
    atomic_fetch_add(&a->count[r][cls], 1);
    int b = 0;
    while (b < NBUCKETS && secs > buckets[b]) b++;
    atomic_fetch_add(&a->hist[r][b], 1);
    atomic_fetch_add(&a->sum_us[r], (unsigned long long)(secs * 1e6));
}

void api_count_refused(api *a, int status) { observe(a, R_OTHER, status, 0); }

/* ---- responses ---- */

static void set_json(api_resp *rs, int status, json_t *o) {
    free(rs->body);
    rs->body = NULL;
    rs->status = status;
    rs->content_type = "application/json";
    char *s = o ? jsonfmt_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!s) {
        rs->status = 500;
        s = strdup("{\"error\":{\"code\":\"internal\",\"message\":\"out of memory\",\"param\":null}}");
    }
    rs->body = s;
    rs->body_len = s ? strlen(s) : 0;
}

static void fail(ctx *c, int status, const char *code, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static void fail(ctx *c, int status, const char *code, const char *param, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    json_t *m = json_string(msg);
    if (!m) m = json_string("(message not UTF-8)");
    set_json(c->rs, status,
             json_pack("{s:{s:s, s:o, s:o, s:s}}", "error", "code", code, "message", m, "param",
                       param && *param ? json_string(param) : json_null(), "type", oai_error_type(status)));
}

static int status_of(const lr_err *e) {
    switch (e->code) {
    case LR_E_INVALID: return 400;
    case LR_E_NOTFOUND: return 404;
    case LR_E_CONFLICT: return 409;
    case LR_E_FORBIDDEN: return 403;
    case LR_E_TOOBIG: return 413;
    default: return 500;
    }
}

static const char *code_of(const lr_err *e) {
    switch (e->code) {
    case LR_E_INVALID: return "invalid_request";
    case LR_E_NOTFOUND: return "not_found";
    case LR_E_CONFLICT: return "conflict";
    case LR_E_FORBIDDEN: return "forbidden";
    case LR_E_TOOBIG: return "too_large";
    default: return "internal";
    }
}

static void fail_err(ctx *c, const lr_err *e) { fail(c, status_of(e), code_of(e), e->param, "%s", e->msg); }

/* A store call that returned NULL: its error, or out of memory. */
static void reply(ctx *c, json_t *o, const lr_err *e) {
    if (o) set_json(c->rs, 200, o);
    else fail_err(c, e);
}

/* ---- request helpers ---- */

static const char *qget(ctx *c, const char *k) {
    const char *v = c->rq->query ? c->rq->query(c->rq->qctx, k) : NULL;
    return v && *v ? v : NULL;
}

static int qint(ctx *c, const char *k, long long def, long long lo, long long hi, long long *out) {
    const char *v = qget(c, k);
    if (!v) {
        *out = def;
        return 0;
    }
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || *end || x < lo || x > hi) {
        fail(c, 400, "invalid_request", k, "query parameter %s must be an integer in %lld..%lld", k, lo, hi);
        return -1;
    }
    *out = x;
    return 0;
}

/* Query strings naming things (ids, statuses) are short and plain. */
static int qtoken(ctx *c, const char *k, const char **out) {
    const char *v = qget(c, k);
    *out = v;
    if (!v) return 0;
    size_t n = strlen(v);
    for (size_t i = 0; i < n; i++)
        if (!(v[i] == '-' || v[i] == '_' || v[i] == '.' || v[i] == ',' || (v[i] >= '0' && v[i] <= '9') ||
              (v[i] >= 'a' && v[i] <= 'z') || (v[i] >= 'A' && v[i] <= 'Z')))
            n = 1000;
    if (n > 256) {
        fail(c, 400, "invalid_request", k, "query parameter %s has characters outside [A-Za-z0-9._,-]", k);
        return -1;
    }
    return 0;
}

static json_t *body_object(ctx *c) {
    json_error_t je;
    if (c->rq->body_len == 0) {
        fail(c, 400, "invalid_json", NULL, "the request needs a JSON object body");
        return NULL;
    }
    json_t *o = json_loadb(c->rq->body ? c->rq->body : "", c->rq->body_len, JSON_REJECT_DUPLICATES, &je);
    if (!o) {
        fail(c, 400, "invalid_json", NULL, "invalid JSON at line %d, column %d: %s", je.line, je.column, je.text);
        return NULL;
    }
    if (!json_is_object(o)) {
        json_decref(o);
        fail(c, 400, "invalid_json", NULL, "the body must be a JSON object");
        return NULL;
    }
    return o;
}

static int authenticate(ctx *c) {
    const char *h = c->rq->authorization;
    if (!h || strncasecmp(h, "Bearer ", 7) || !h[7]) {
        fail(c, 401, "unauthorized", NULL, "this route needs an 'Authorization: Bearer <token>' header "
                                           "(tokens come from `lorad user add NAME`)");
        return -1;
    }
    char hash[65];
    sha256_hex(h + 7, strlen(h + 7), hash);
    lr_err e = {0};
    if (store_user_auth(c->st, hash, &c->user, &e)) {
        if (e.code == LR_E_NOTFOUND) fail(c, 401, "unauthorized", NULL, "the bearer token is not valid");
        else fail_err(c, &e);
        return -1;
    }
    return 0;
}

/* ---- who sees what ---- */

/* visibility: private hides from a non-admin what is neither theirs nor
 * shared with them (`lorad share`); team, the default, hides nothing. What
 * is hidden answers 404 exactly as if it did not exist, so an id does not
 * even tell that it is someone else's. */
static int private_view(ctx *c) { return !c->user.admin && !strcmp(c->a->env.cfg->visibility, "private"); }

/* owner "": a model without owner (a base model), which everyone sees. */
static int can_see(ctx *c, const char *kind, const char *id, const char *owner) {
    return !private_view(c) || !owner[0] || !strcmp(owner, c->user.name) || store_shared(c->st, kind, id, c->user.name);
}

/* The dataset if the caller may see it (d and *obj as store_dataset_get);
 * else answers 404 (or the store's error) and returns -1. */
static int visible_dataset(ctx *c, const char *id, store_dataset *d, json_t **obj) {
    store_dataset own;
    lr_err e = {0};
    if (!d) d = &own;
    if (store_dataset_get(c->st, id, d, obj, &e)) {
        fail_err(c, &e);
        return -1;
    }
    if (can_see(c, "dataset", id, d->user)) return 0;
    if (obj) json_decref(*obj);
    fail(c, 404, "not_found", NULL, "no dataset with id '%s'", id);
    return -1;
}

/* 0 when model name is registered and the caller may see it; else fills e
 * (LR_E_NOTFOUND for a hidden model too). */
static int visible_model(ctx *c, const char *name, lr_err *e) {
    char owner[64];
    if (store_model_owner(c->st, name, owner, sizeof owner, e)) return -1;
    if (can_see(c, "model", name, owner)) return 0;
    return lr_errp(e, LR_E_NOTFOUND, "model", "no model named '%s' is registered", name);
}

/* The job object if the caller may see it; else answers 404 and NULL. */
static json_t *visible_job(ctx *c, const char *id) {
    lr_err e = {0};
    json_t *j = store_job_get(c->st, id, &e);
    if (!j) {
        fail_err(c, &e);
        return NULL;
    }
    const char *owner = json_string_value(json_object_get(j, "user"));
    if (can_see(c, "job", id, owner ? owner : "")) return j;
    json_decref(j);
    fail(c, 404, "not_found", NULL, "no job with id '%s'", id);
    return NULL;
}

/* Error texts from files name them by the server's paths; a user knows
 * them by id: each occurrence of path in msg becomes name. */
static void path_to_name(char *msg, size_t cap, const char *path, const char *name) {
    size_t pl = strlen(path), nl = strlen(name);
    char *p;
    if (!pl) return;
    while ((p = strstr(msg, path))) {
        size_t tail = strlen(p + pl);
        if ((size_t)(p - msg) + nl + tail >= cap) break;
        memmove(p + nl, p + pl, tail + 1);
        memcpy(p, name, nl);
    }
}

/* Texts the workers wrote (events, a job's error) name files by their path
 * on the server: shown relative to the data directory ("datasets/<id>.jsonl",
 * "runs/<job>/..."). */
static void relative_paths(ctx *c, json_t *o, const char *key) {
    const char *m = json_string_value(json_object_get(o, key));
    char buf[4096], root[1100];
    snprintf(root, sizeof root, "%s/", c->a->env.cfg->data_dir);
    if (!m || strlen(m) >= sizeof buf || !strstr(m, root)) return;
    snprintf(buf, sizeof buf, "%s", m);
    path_to_name(buf, sizeof buf, root, "");
    json_t *v = json_string(buf);
    if (v) json_object_set_new(o, key, v);
}

/* ---- routing ---- */

/* Matches a path against a pattern, capturing {params}. */
static int match(const char *pat, const char *path, char p[MAX_PARAMS][PARAM_LEN]) {
    int np = 0;
    while (*pat && *path) {
        if (*pat != '/' || *path != '/') return 0;
        pat++, path++;
        const char *pe = strchr(pat, '/'), *se = strchr(path, '/');
        size_t pl = pe ? (size_t)(pe - pat) : strlen(pat), sl = se ? (size_t)(se - path) : strlen(path);
        if (pat[0] == '{') {
            if (sl == 0 || sl >= PARAM_LEN || np == MAX_PARAMS) return 0;
            memcpy(p[np], path, sl);
            p[np][sl] = 0;
            np++;
        } else if (pl != sl || memcmp(pat, path, pl)) {
            return 0;
        }
        pat += pl, path += sl;
    }
    return !*pat && !*path;
}

static void serve_static(ctx *c);

/* The route of a request: 0 with *r set; 1 for a dashboard file; -1 when
 * refused (c's response says why). */
static int route_find(ctx *c, int *r) {
    const api_req *rq = c->rq;
    int path_known = 0;
    *r = R_OTHER;
    for (int i = 0; i < NROUTES; i++) {
        char p[MAX_PARAMS][PARAM_LEN];
        if (!match(routes[i].path, rq->path, p)) continue;
        path_known = 1;
        if (strcmp(routes[i].method, rq->method)) continue;
        *r = i;
        memcpy(c->p, p, sizeof p);
        return 0;
    }
    if (path_known) fail(c, 405, "method_not_allowed", NULL, "%s is not allowed on %s", rq->method, rq->path);
    else if (!strncmp(rq->path, "/v1/", 4) || !strcmp(rq->path, "/v1"))
        fail(c, 404, "not_found", NULL, "no route %s %s", rq->method, rq->path);
    else if (strcmp(rq->method, "GET") && strcmp(rq->method, "HEAD"))
        fail(c, 405, "method_not_allowed", NULL, "%s is not allowed on %s", rq->method, rq->path);
    else return 1;
    return -1;
}

/* The thread's store connection and, for routes that need it, the user. */
static int open_and_auth(ctx *c, int r) {
    lr_err e = {0};
    c->st = c->a->env.db(c->a->env.db_ud, &e);
    if (!c->st) {
        fail(c, 503, "unavailable", NULL, "database unavailable: %s", e.msg);
        return -1;
    }
    return routes[r].auth ? authenticate(c) : 0;
}

static void ctx_init(ctx *c, api *a, const api_req *rq, api_resp *rs) {
    memset(rs, 0, sizeof *rs);
    rs->fd = -1;
    memset(c, 0, sizeof *c);
    c->a = a;
    c->rq = rq;
    c->rs = rs;
}

void api_handle(api *a, const api_req *rq, api_resp *rs) {
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    ctx c;
    ctx_init(&c, a, rq, rs);
    int r, found = route_find(&c, &r);
    if (found == 1) serve_static(&c);
    if (found) goto done;
    if (open_and_auth(&c, r)) goto done;
    routes[r].fn(&c);
    if (!rs->body && rs->fd < 0 && !rs->read) fail(&c, 500, "internal", NULL, "the handler produced no response");
done:
    clock_gettime(CLOCK_MONOTONIC, &t1);
    observe(a, r, rs->status, (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9);
}

static int disk_ok(ctx *c);

int api_precheck(api *a, const char *method, const char *path, const char *authorization, char *user, size_t cap,
                 api_resp *rs) {
    api_req rq = {.method = method, .path = path, .authorization = authorization};
    ctx c;
    ctx_init(&c, a, &rq, rs);
    user[0] = 0;
    int r, found = route_find(&c, &r);
    if (found == 1) return 0;
    /* An upload is refused for a full disk before its body is stored. */
    if (found == 0 && open_and_auth(&c, r) == 0 && (!api_streams_body(method, path) || disk_ok(&c))) {
        if (routes[r].auth) snprintf(user, cap, "%s", c.user.name);
        return 0;
    }
    observe(a, r, rs->status, 0);
    return -1;
}

int api_streams_body(const char *method, const char *path) {
    return !strcmp(method, "POST") && (!strcmp(path, "/v1/datasets") || !strcmp(path, "/v1/files"));
}

int api_upload_acquire(api *a, const char *user, api_resp *rs) {
    int max = a->env.cfg->max_uploads_per_user, slot = -1, ok = 0;
    pthread_mutex_lock(&a->up_mu);
    for (int i = 0; i < UPLOAD_USERS; i++) {
        if (a->up[i].n && !strcmp(a->up[i].user, user)) {
            slot = i;
            break;
        }
        if (!a->up[i].n && slot < 0) slot = i;
    }
    if (slot >= 0 && a->up[slot].n < (max > 0 ? max : 1)) {
        snprintf(a->up[slot].user, sizeof a->up[slot].user, "%s", user);
        a->up[slot].n++;
        ok = 1;
    }
    pthread_mutex_unlock(&a->up_mu);
    if (ok) return 0;
    ctx c;
    api_req rq = {.method = "POST", .path = "/v1/datasets"};
    ctx_init(&c, a, &rq, rs);
    fail(&c, 429, "too_many_uploads", NULL,
         "%s already has %d uploads in progress (max_uploads_per_user); wait for one to finish", user, max);
    rs->retry_after = 5;
    observe(a, R_OTHER, 429, 0);
    return -1;
}

void api_upload_release(api *a, const char *user) {
    pthread_mutex_lock(&a->up_mu);
    for (int i = 0; i < UPLOAD_USERS; i++)
        if (a->up[i].n && !strcmp(a->up[i].user, user)) {
            a->up[i].n--;
            break;
        }
    pthread_mutex_unlock(&a->up_mu);
}

static void wake(ctx *c) {
    if (c->a->env.wake) c->a->env.wake(c->a->env.wake_ud);
}

/* Free bytes of the file system holding data_dir; -1 when unknown. */
static long long disk_free(const api *a) {
    struct statvfs v;
    if (statvfs(a->env.cfg->data_dir, &v)) return -1;
    return (long long)v.f_bavail * (long long)v.f_frsize;
}

static int disk_low(const api *a, long long free_bytes) {
    return a->env.cfg->min_free_bytes > 0 && free_bytes >= 0 && free_bytes < a->env.cfg->min_free_bytes;
}

/* Below the min_free_bytes floor an upload or a new job would take the
 * space the running jobs need for checkpoints and results: 507. */
static int disk_ok(ctx *c) {
    long long f = disk_free(c->a);
    if (!disk_low(c->a, f)) return 1;
    fail(c, 507, "insufficient_storage", NULL,
         "the server's data directory has %lld MiB free, below min_free_bytes (%lld MiB); uploads and new jobs are "
         "refused until space is freed",
         f >> 20, c->a->env.cfg->min_free_bytes >> 20);
    return 0;
}

/* ---- health and metrics ---- */

static void h_healthz(ctx *c) {
    lr_err e = {0};
    json_t *s = store_stats(c->st, &e);
    if (!s) {
        fail(c, 503, "unavailable", NULL, "database: %s", e.msg);
        return;
    }
    long long f = disk_free(c->a);
    json_object_set_new(s, "status", json_string(disk_low(c->a, f) ? "degraded" : "ok"));
    json_object_set_new(s, "disk_free_bytes", f >= 0 ? json_integer(f) : json_null());
    json_object_set_new(s, "min_free_bytes", json_integer(c->a->env.cfg->min_free_bytes));
    set_json(c->rs, 200, s);
}

static void h_metrics(ctx *c) {
    lr_err e = {0};
    json_t *s = store_stats(c->st, &e);
    if (!s) {
        fail_err(c, &e);
        return;
    }
    lr_buf b;
    lr_buf_init(&b, 4u << 20);
    int bad = 0;
    bad |= lr_buf_printf(&b, "# HELP lorad_queue_depth Jobs waiting for a worker.\n# TYPE lorad_queue_depth gauge\n"
                             "lorad_queue_depth %lld\n",
                         (long long)json_integer_value(json_object_get(s, "queue_depth")));
    runner_gen_stats gs = {0};
    if (c->a->env.runner) runner_stats(c->a->env.runner, &gs);
    bad |= lr_buf_printf(&b, "# HELP lorad_gen_model_loads_total Models the generation servers loaded for a request.\n"
                             "# TYPE lorad_gen_model_loads_total counter\nlorad_gen_model_loads_total %llu\n"
                             "# HELP lorad_gen_model_unloads_total Models they unloaded to make room (gen_cache_bytes).\n"
                             "# TYPE lorad_gen_model_unloads_total counter\nlorad_gen_model_unloads_total %llu\n"
                             "# HELP lorad_gen_server_starts_total Generation servers (lora-worker serve) started.\n"
                             "# TYPE lorad_gen_server_starts_total counter\nlorad_gen_server_starts_total %llu\n"
                             "# HELP lorad_gen_running Generations running now (a streamed one until its last event).\n"
                             "# TYPE lorad_gen_running gauge\nlorad_gen_running %d\n"
                             "# HELP lorad_gen_waiting Completion requests waiting for a generation slot.\n"
                             "# TYPE lorad_gen_waiting gauge\nlorad_gen_waiting %d\n",
                         gs.model_loads, gs.model_unloads, gs.server_starts, gs.running, gs.waiting);
    long long disk = disk_free(c->a);
    if (disk >= 0)
        bad |= lr_buf_printf(&b, "# HELP lorad_disk_free_bytes Free space of the data directory's file system.\n"
                                 "# TYPE lorad_disk_free_bytes gauge\nlorad_disk_free_bytes %lld\n",
                             disk);
    bad |= lr_buf_printf(&b, "# HELP lorad_disk_min_free_bytes Below this, uploads and new jobs get 507.\n"
                             "# TYPE lorad_disk_min_free_bytes gauge\nlorad_disk_min_free_bytes %lld\n",
                         c->a->env.cfg->min_free_bytes);
    bad |= lr_buf_adds(&b, "# HELP lorad_jobs Jobs by status.\n# TYPE lorad_jobs gauge\n");
    const char *k;
    json_t *v;
    json_object_foreach(json_object_get(s, "jobs"), k, v)
        bad |= lr_buf_printf(&b, "lorad_jobs{status=\"%s\"} %lld\n", k, (long long)json_integer_value(v));
    bad |= lr_buf_adds(&b, "# HELP lorad_workers Workers by status.\n# TYPE lorad_workers gauge\n");
    json_object_foreach(json_object_get(s, "workers"), k, v)
        bad |= lr_buf_printf(&b, "lorad_workers{status=\"%s\"} %lld\n", k, (long long)json_integer_value(v));
    bad |= lr_buf_printf(&b, "# HELP lorad_packed_steps_total Training steps jobs ran sharing a worker pass (packing).\n"
                             "# TYPE lorad_packed_steps_total counter\nlorad_packed_steps_total %lld\n"
                             "# HELP lorad_packs_running Worker passes co-training two or more jobs now.\n"
                             "# TYPE lorad_packs_running gauge\nlorad_packs_running %lld\n",
                         (long long)json_integer_value(json_object_get(s, "packed_steps")),
                         (long long)json_integer_value(json_object_get(s, "packs_running")));
    json_decref(s);
    bad |= lr_buf_adds(&b, "# HELP lorad_http_requests_total HTTP requests by route and status class.\n"
                           "# TYPE lorad_http_requests_total counter\n");
    for (int r = 0; r <= NROUTES; r++) {
        char label[128];
        snprintf(label, sizeof label, "%s %s", r < NROUTES ? routes[r].method : "ANY",
                 r < NROUTES ? routes[r].path : "other");
        for (int cls = 1; cls <= 5; cls++) {
            unsigned long long n = atomic_load(&c->a->count[r][cls]);
            if (n) bad |= lr_buf_printf(&b, "lorad_http_requests_total{route=\"%s\",code=\"%dxx\"} %llu\n", label, cls, n);
        }
    }
    bad |= lr_buf_adds(&b, "# HELP lorad_http_request_duration_seconds Time to handle a request.\n"
                           "# TYPE lorad_http_request_duration_seconds histogram\n");
    for (int r = 0; r <= NROUTES; r++) {
        unsigned long long cum = 0, total = 0;
        for (int i = 0; i <= NBUCKETS; i++) total += atomic_load(&c->a->hist[r][i]);
        if (!total) continue;
        char label[128];
        snprintf(label, sizeof label, "%s %s", r < NROUTES ? routes[r].method : "ANY",
                 r < NROUTES ? routes[r].path : "other");
        for (int i = 0; i < NBUCKETS; i++) {
            cum += atomic_load(&c->a->hist[r][i]);
            bad |= lr_buf_printf(&b, "lorad_http_request_duration_seconds_bucket{route=\"%s\",le=\"%g\"} %llu\n", label,
                                 buckets[i], cum);
        }
        bad |= lr_buf_printf(&b, "lorad_http_request_duration_seconds_bucket{route=\"%s\",le=\"+Inf\"} %llu\n", label, total);
        bad |= lr_buf_printf(&b, "lorad_http_request_duration_seconds_sum{route=\"%s\"} %.6f\n", label,
                             atomic_load(&c->a->sum_us[r]) * 1e-6);
        bad |= lr_buf_printf(&b, "lorad_http_request_duration_seconds_count{route=\"%s\"} %llu\n", label, total);
    }
    if (bad) {
        lr_buf_free(&b);
        fail(c, 500, "internal", NULL, "metrics output too large");
        return;
    }
    c->rs->status = 200;
    c->rs->content_type = "text/plain; version=0.0.4";
    c->rs->body = lr_buf_take(&b, &c->rs->body_len);
}

static void h_me(ctx *c) {
    set_json(c->rs, 200, json_pack("{s:s, s:s, s:b}", "object", "user", "name", c->user.name, "admin", c->user.admin));
}

/* The job schema from proto/jobspec.c's table, for the dashboard's submit
 * form. No token: it is the same for everyone and public in openapi.yaml. */
static void h_jobspec(ctx *c) { set_json(c->rs, 200, jobspec_schema_json()); }

/* ---- datasets ---- */

/* A file name as the user gave it, kept for display only (never a path). */
static void clean_filename(char *s) {
    char *b = strrchr(s, '/');
    if (b) memmove(s, b + 1, strlen(b + 1) + 1);
    for (char *p = s; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == '"' || *p == '\\') *p = '_';
    if (!*s) strcpy(s, "upload");
}

static void h_dataset_upload(ctx *c) {
    if (!disk_ok(c)) return;
    lr_err e = {0};
    upload *own = NULL, *up = c->rq->upload;
    char tmp[1100];
    if (lr_pathf(tmp, sizeof tmp, "%s/tmp", c->a->env.cfg->data_dir)) {
        fail(c, 500, "internal", NULL, "data directory path too long");
        return;
    }
    if (!up) { /* called with the body in memory (tests, the fuzz target) */
        if (upload_open(tmp, c->rq->content_type, qget(c, "filename"), &own, &e)) {
            fail_err(c, &e);
            return;
        }
        upload_feed(own, c->rq->body ? c->rq->body : "", c->rq->body_len);
        up = own;
    }
    char filename[256];
    snprintf(filename, sizeof filename, "%s", upload_filename(up));
    clean_filename(filename);
    const char *purpose = upload_purpose(up)[0] ? upload_purpose(up) : qget(c, "purpose");
    if (purpose && strcmp(purpose, "fine-tune")) {
        fail(c, 400, "invalid_request", "purpose", "purpose must be fine-tune: lorad stores training and validation "
                                                   "files, not '%.40s'", purpose);
        goto out;
    }
    data_report rep;
    store_dataset d;
    memset(&d, 0, sizeof d);
    if (upload_end(up, &rep, &e)) {
        if (e.code != LR_E_INVALID && e.code != LR_E_TOOBIG) {
            fail_err(c, &e);
            goto out;
        }
        json_t *errs = json_array();
        for (int i = 0; i < rep.n_errors; i++) json_array_append_new(errs, json_string(rep.errors[i]));
        json_t *m = json_string(e.msg);
        set_json(c->rs, e.code == LR_E_TOOBIG ? 413 : 400,
                 json_pack("{s:{s:s, s:o, s:s, s:o, s:I, s:I, s:s}}", "error", "code", "invalid_dataset", "message",
                           m ? m : json_string("invalid dataset"), "param", "file", "errors", errs, "rows",
                           (json_int_t)rep.n_rows, "invalid_rows", (json_int_t)rep.n_invalid, "type",
                           oai_error_type(e.code == LR_E_TOOBIG ? 413 : 400)));
        goto out;
    }
    store_new_id("file", d.id, sizeof d.id);
    snprintf(d.user, sizeof d.user, "%s", c->user.name);
    snprintf(d.filename, sizeof d.filename, "%s", filename);
    snprintf(d.format, sizeof d.format, "%s", rep.csv ? "csv" : "jsonl");
    snprintf(d.kind, sizeof d.kind, "%s", data_format_name(rep.format));
    snprintf(d.purpose, sizeof d.purpose, "fine-tune");
    d.rows = rep.n_rows;
    d.duplicates = rep.n_duplicates;
    d.bytes = (int64_t)upload_bytes(up);
    char dir[1100];
    snprintf(dir, sizeof dir, "%s/datasets", c->a->env.cfg->data_dir);
    if (snprintf(d.path, sizeof d.path, "%s/%s.%s", dir, d.id, d.format) >= (int)sizeof d.path) {
        fail(c, 500, "internal", NULL, "data directory path too long");
        goto out;
    }
    if (lr_mkdirs(dir, &e) || upload_take(up, d.path, &e)) {
        path_to_name(e.msg, sizeof e.msg, d.path, d.id);
        path_to_name(e.msg, sizeof e.msg, c->a->env.cfg->data_dir, "<data_dir>");
        fail(c, 500, "internal", NULL, "storing the dataset: %s", e.msg);
        goto out;
    }
    json_t *info = json_pack("{s:s}", "format_detail", data_format_name(rep.format));
    if (store_dataset_add(c->st, &d, info, &e)) {
        unlink(d.path);
        json_decref(info);
        fail_err(c, &e);
        goto out;
    }
    json_decref(info);
    json_t *o = NULL;
    if (store_dataset_get(c->st, d.id, NULL, &o, &e)) {
        fail_err(c, &e);
        goto out;
    }
    /* Said now, not first in a job's events: jobs drop exact duplicates. */
    if (d.duplicates)
        json_object_set_new(o, "warning",
                            json_sprintf("%lld of %lld rows repeat an earlier row; a job trains on each distinct "
                                         "row once", (long long)d.duplicates, (long long)d.rows));
    set_json(c->rs, 200, o);
out:
    upload_free(own);
}

static void h_datasets_list(ctx *c) {
    long long limit;
    const char *after;
    if (qint(c, "limit", 20, 1, 1000, &limit) || qtoken(c, "after", &after)) return;
    lr_err e = {0};
    reply(c, store_datasets_list(c->st, (int)limit, after, private_view(c) ? c->user.name : NULL, &e), &e);
}

static int results_file(ctx *c, int content);

static void h_dataset_get(ctx *c) {
    json_t *o = NULL;
    if (results_file(c, 0)) return;
    if (!visible_dataset(c, c->p[0], NULL, &o)) set_json(c->rs, 200, o);
}

static void h_dataset_delete(ctx *c) {
    store_dataset d;
    lr_err e = {0};
    if (visible_dataset(c, c->p[0], &d, NULL)) return;
    if (!c->user.admin && strcmp(d.user, c->user.name)) {
        fail(c, 403, "forbidden", NULL, "dataset %s belongs to %s; only its owner or an admin can delete it", d.id, d.user);
        return;
    }
    if (store_dataset_delete(c->st, d.id, &e)) {
        fail_err(c, &e);
        return;
    }
    unlink(d.path);
    set_json(c->rs, 200, json_pack("{s:s, s:s, s:b}", "id", d.id, "object", "file", "deleted", 1));
}

/* Rows as the model will see them: each rendered through the chat template,
 * cut into runs of trained and untrained tokens. */
static json_t *preview_rendered(ctx *c, const data_file *f, int n, const char *model, chat_tpl *tpl, lr_err *e) {
    char dir[1024];
    tok *t = NULL;
    json_t *rows = NULL;
    if (visible_model(c, model, e) || store_model_dir(c->st, model, dir, sizeof dir, e)) return NULL;
    chat ch;
    if (tok_load(dir, &t, e) || chat_init(&ch, t, *tpl, dir, e)) {
        path_to_name(e->msg, sizeof e->msg, dir, model);
        goto out;
    }
    *tpl = ch.kind;
    rows = json_array();
    for (int i = 0; i < n && (size_t)i < f->n_rows; i++) {
        const data_row *r = &f->rows[i];
        chat_out o = {0};
        if (chat_render(&ch, r->msgs, r->n_msgs + r->n_chosen, NULL, 0, 0, &o, e)) {
            json_array_append_new(rows, json_pack("{s:i, s:s}", "line", r->line, "error", e->msg));
            lr_err_clear(e);
            continue;
        }
        json_t *segs = json_array();
        size_t s = 0;
        int64_t trained = 0;
        while (s < o.n) {
            int tr = o.labels[s] != CHAT_IGNORE;
            size_t k = s;
            while (k < o.n && (o.labels[k] != CHAT_IGNORE) == tr) k++;
            if (tr) trained += (int64_t)(k - s);
            char *txt = NULL;
            size_t tl = 0;
            if (tok_decode(t, o.ids + s, k - s, &txt, &tl, e) == 0) {
                json_t *js = json_stringn(txt, tl);
                json_array_append_new(segs, json_pack("{s:o, s:b, s:I}", "text", js ? js : json_string("\xef\xbf\xbd"),
                                                      "trained", tr, "tokens", (json_int_t)(k - s)));
            }
            free(txt);
            s = k;
        }
        json_array_append_new(rows, json_pack("{s:i, s:I, s:I, s:o}", "line", r->line, "tokens", (json_int_t)o.n,
                                              "trained_tokens", (json_int_t)trained, "segments", segs));
        chat_out_free(&o);
    }
out:
    tok_free(t);
    return rows;
}

/* The preview's chat_template query parameter: a job spec's template name. */
static int template_arg(ctx *c, const char *name, const char *model, chat_tpl *out) {
    char names[128] = "";
    for (int t = TPL_AUTO; t <= TPL_PLAIN; t++) {
        if (!strcmp(name, jobspec_template_name((chat_tpl)t))) *out = (chat_tpl)t;
        size_t k = strlen(names);
        snprintf(names + k, sizeof names - k, "%s%s", t ? ", " : "", jobspec_template_name((chat_tpl)t));
    }
    if (strcmp(name, jobspec_template_name(*out))) {
        fail(c, 400, "invalid_request", "chat_template", "chat_template must be one of %s, not '%s'", names, name);
        return 0;
    }
    if (!model) {
        fail(c, 400, "invalid_request", "chat_template", "chat_template renders rows with a model's tokenizer: "
                                                         "give model too");
        return 0;
    }
    return 1;
}

static void h_dataset_preview(ctx *c) {
    store_dataset d;
    lr_err e = {0};
    long long n;
    const char *model, *tpl_name;
    if (qint(c, "n", 5, 1, 100, &n) || qtoken(c, "model", &model) || qtoken(c, "chat_template", &tpl_name)) return;
    chat_tpl tpl = TPL_AUTO; /* as a job with this template would render the rows */
    if (tpl_name && !template_arg(c, tpl_name, model, &tpl)) return;
    if (visible_dataset(c, c->p[0], &d, NULL)) return;
    data_file f;
    memset(&f, 0, sizeof f);
    if (data_load_head(d.path, n, &f, &e)) { /* only the rows shown: a preview costs the same on any size */
        path_to_name(e.msg, sizeof e.msg, d.path, d.id);
        fail(c, 500, "internal", NULL, "reading dataset %s: %s", d.id, e.msg);
        return;
    }
    json_t *rows;
    if (model) {
        rows = preview_rendered(c, &f, (int)n, model, &tpl, &e);
        if (!rows) {
            data_file_free(&f);
            if (e.code == LR_E_NOTFOUND) fail(c, 400, "invalid_request", "model", "%s", e.msg);
            else fail_err(c, &e);
            return;
        }
    } else {
        rows = json_array();
        for (int i = 0; i < n && (size_t)i < f.n_rows; i++) {
            const data_row *r = &f.rows[i];
            json_t *msgs = json_array();
            for (int m = 0; m < r->n_msgs + r->n_chosen + r->n_rejected; m++) {
                const chat_msg *cm = &r->msgs[m];
                const char *part = m < r->n_msgs ? "prompt" : m < r->n_msgs + r->n_chosen ? "chosen" : "rejected";
                json_t *txt = json_stringn(cm->text, cm->len);
                json_array_append_new(msgs, json_pack("{s:s, s:o, s:b, s:s}", "role", chat_role_name(cm->role),
                                                      "content", txt ? txt : json_string("\xef\xbf\xbd"), "trained",
                                                      cm->role == CHAT_ASSISTANT && cm->train, "part", part));
            }
            json_array_append_new(rows, json_pack("{s:i, s:o}", "line", r->line, "messages", msgs));
        }
    }
    json_t *o = json_pack("{s:s, s:s, s:I, s:o}", "object", "dataset.preview", "id", d.id, "rows_total",
                          (json_int_t)d.rows, "rows", rows);
    if (o && model) json_object_set_new(o, "chat_template", json_string(jobspec_template_name(tpl)));
    set_json(c->rs, 200, o);
    data_file_free(&f);
}

/* ---- models ---- */

static void tuned_models_add(ctx *c, json_t *list);
static int tuned_model(ctx *c, const char *name, int del);

static void h_models_list(ctx *c) {
    lr_err e = {0};
    json_t *l = store_models_list(c->st, private_view(c) ? c->user.name : NULL, &e), *m;
    size_t i;
    /* OpenAI's owned_by: the user whose merge made it, else lorad's operator */
    json_array_foreach(json_object_get(l, "data"), i, m) {
        json_t *o = json_object_get(m, "owner");
        json_object_set_new(m, "owned_by", json_is_string(o) ? json_copy(o) : json_string("lorad"));
    }
    if (l) tuned_models_add(c, l);
    reply(c, l, &e);
}

static void h_model_get(ctx *c) {
    if (tuned_model(c, c->p[0], 0)) return;
    lr_err e = {0};
    json_t *l = store_models_list(c->st, private_view(c) ? c->user.name : NULL, &e);
    if (!l) {
        fail_err(c, &e);
        return;
    }
    size_t i;
    json_t *m;
    json_array_foreach(json_object_get(l, "data"), i, m) {
        if (!strcmp(json_string_value(json_object_get(m, "id")), c->p[0])) {
            set_json(c->rs, 200, json_incref(m));
            json_decref(l);
            return;
        }
    }
    json_decref(l);
    fail(c, 404, "not_found", NULL, "no model named '%s' is registered", c->p[0]);
}

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    remove(p);
    return 0;
}

/* Unregisters a model: its owner or an admin; one without owner (an
 * operator's `lorad model add`) only an admin. A folder lorad made under
 * <data_dir>/models (a merge) is removed; an operator's folder stays. */
static void h_model_delete(ctx *c) {
    if (tuned_model(c, c->p[0], 1)) return;
    lr_err e = {0};
    char owner[64], dir[1024];
    const char *name = c->p[0];
    if (store_model_owner(c->st, name, owner, sizeof owner, &e)) {
        fail_err(c, &e);
        return;
    }
    if (!can_see(c, "model", name, owner)) {
        fail(c, 404, "not_found", NULL, "no model named '%s' is registered", name);
        return;
    }
    if (!c->user.admin && strcmp(owner, c->user.name)) {
        fail(c, 403, "forbidden", NULL, "model %s %s%s; only %s can delete it", name,
             owner[0] ? "belongs to " : "was registered by lorad's operator", owner, owner[0] ? "its owner or an admin"
                                                                                             : "an admin");
        return;
    }
    if (store_model_delete(c->st, name, dir, sizeof dir, &e)) {
        fail_err(c, &e);
        return;
    }
    char models[1100], *root = NULL;
    snprintf(models, sizeof models, "%s/models", c->a->env.cfg->data_dir);
    root = realpath(models, NULL);
    size_t rl = root ? strlen(root) : 0;
    if (root && !strncmp(dir, root, rl) && dir[rl] == '/' && !strchr(dir + rl + 1, '/') && strcmp(dir + rl + 1, ".."))
        nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    free(root);
    set_json(c->rs, 200, json_pack("{s:s, s:s, s:b}", "id", name, "object", "model", "deleted", 1));
}

/* ---- jobs ---- */

/* Checks that the spec's model and datasets exist; the ids become paths
 * only in the loop, from the database. */
static int check_refs(ctx *c, const jobspec *s, const char *prefix) {
    char param[160];
    lr_err e = {0};
    if (visible_model(c, s->model, &e)) {
        snprintf(param, sizeof param, "%smodel", prefix);
        if (e.code == LR_E_NOTFOUND)
            fail(c, 400, "model_not_found", param, "no model named '%s' is registered (GET /v1/models lists them)", s->model);
        else fail_err(c, &e);
        return -1;
    }
    for (int i = 0; i < s->n_training_files + (s->validation_file[0] ? 1 : 0); i++) {
        const char *id = i < s->n_training_files ? s->training_files[i].name : s->validation_file;
        store_dataset d;
        int bad = store_dataset_get(c->st, id, &d, NULL, &e);
        if (bad || !can_see(c, "dataset", id, d.user)) {
            snprintf(param, sizeof param, "%s%s", prefix, i < s->n_training_files ? "training_file" : "validation_file");
            if (!bad || e.code == LR_E_NOTFOUND) fail(c, 400, "dataset_not_found", param, "no dataset with id '%s'", id);
            else fail_err(c, &e);
            return -1;
        }
        int dpo_rows = !strcmp(d.kind, "dpo");
        if ((s->method.type == METHOD_DPO) != dpo_rows) {
            snprintf(param, sizeof param, "%s%s", prefix, i < s->n_training_files ? "training_file" : "validation_file");
            fail(c, 400, "invalid_request", param, "dataset %s holds %s rows; method %s needs %s", id, d.kind,
                 jobspec_method_name(s->method.type), s->method.type == METHOD_DPO ? "prompt/chosen/rejected rows"
                                                                                 : "SFT rows, not preference pairs");
            return -1;
        }
    }
    /* dpo's reference adapter and an eval's adapter are other jobs' results. */
    const char *const refs[2][2] = {{s->method.reference_adapter, "method.reference_adapter"},
                                    {s->method.adapter, "method.adapter"}};
    for (int i = 0; i < 2 && private_view(c); i++) {
        if (!refs[i][0][0]) continue;
        json_t *j = store_job_get(c->st, refs[i][0], &e);
        const char *owner = json_string_value(json_object_get(j, "user"));
        int ok = owner && can_see(c, "job", refs[i][0], owner);
        json_decref(j);
        lr_err_clear(&e);
        if (!ok) {
            snprintf(param, sizeof param, "%s%s", prefix, refs[i][1]);
            fail(c, 400, "invalid_request", param, "no job with id '%s'", refs[i][0]);
            return -1;
        }
    }
    return 0;
}

/* meta: what oai_create_prepare kept (NULL for a sweep's points: no
 * OpenAI fields, but the record all jobs have). */
static int insert_job(ctx *c, const jobspec *s, const json_t *meta, const char *sweep_id, char *id, size_t idcap) {
    json_t *sj = jobspec_to_json(s);
    char *txt = sj ? jsonfmt_dumps(sj, JSON_COMPACT | JSON_SORT_KEYS) : NULL, *otxt = NULL;
    json_decref(sj);
    lr_err e = {0};
    store_new_id("ftjob", id, idcap);
    json_t *none = meta ? NULL : json_object();
    json_t *rec = oai_job_record(s, meta ? meta : none, id, c->user.name);
    otxt = rec ? jsonfmt_dumps(rec, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    json_decref(rec);
    json_decref(none);
    if (!txt || !otxt) {
        free(txt);
        free(otxt);
        fail(c, 500, "internal", NULL, "out of memory");
        return -1;
    }
    store_job_new j = {.id = id, .name = s->name, .user = c->user.name, .model = s->model,
                       .device = jobspec_device_name(s->device), .spec_json = txt, .sweep_id = sweep_id,
                       .priority = s->priority, .max_retries = s->max_retries, .openai_json = otxt};
    int rc = store_job_insert(c->st, &j, &e);
    free(txt);
    free(otxt);
    if (rc) fail_err(c, &e);
    return rc;
}

/* Priority orders the one queue everybody shares: past max_user_priority
 * only an admin may ask (refused, not clamped, so the job never runs at a
 * priority its owner did not choose). */
static int priority_ok(ctx *c, const jobspec *s, const char *param) {
    int cap = c->a->env.cfg->max_user_priority;
    if (c->user.admin || s->priority <= cap) return 1;
    fail(c, 400, "invalid_request", param, "priority %d is above %d, the highest a non-admin may ask for "
                                           "(max_user_priority)", s->priority, cap);
    return 0;
}

/* A job that no configured worker could ever run is refused, not queued to
 * wait forever. */
static int device_ok(ctx *c, const jobspec *s, const char *param) {
    const lorad_config *cfg = c->a->env.cfg;
    if (cfg->worker_listen[0]) return 1; /* a remote worker of any device may connect (daemon/remote.h) */
    sched_wstate w[CONFIG_MAX_WORKERS];
    for (int i = 0; i < cfg->n_workers; i++) w[i] = (sched_wstate){cfg->workers[i].backend, "idle"};
    char why[400];
    const char *dev = jobspec_device_name(s->device);
    if (sched_wait_reason(dev, w, cfg->n_workers, why, sizeof why) != 2) return 1;
    fail(c, 400, "invalid_request", param, "%s: ask for device any%s, or have an admin start lorad with a "
         "worker for it (--workers)", why, s->device == DEV_CUDA ? " or cpu" : "");
    return 0;
}

/* sched_wait_reason over the configured workers (super.c names them w0,
 * w1, ... in that order), each as lorad last recorded it: one not recorded
 * yet is still starting, not missing. */
static int workers_wait_reason(ctx *c, const char *device, char *buf, size_t cap) {
    const lorad_config *cfg = c->a->env.cfg;
    if (slurm_routes(cfg, device)) {
        snprintf(buf, cap, "device %s runs through Slurm: lorad submits the job when its queue reaches it "
                 "(its events and \"slurm\" say where it is)", device);
        return 1;
    }
    lr_err e = {0};
    json_t *l = store_workers_list(c->st, &e), *o;
    sched_wstate w[CONFIG_MAX_WORKERS];
    for (int k = 0; k < cfg->n_workers; k++) w[k] = (sched_wstate){cfg->workers[k].backend, "starting"};
    size_t i;
    json_array_foreach(json_object_get(l, "data"), i, o) {
        const char *name = json_string_value(json_object_get(o, "id")),
                   *status = json_string_value(json_object_get(o, "status"));
        char *end;
        long k = name && name[0] == 'w' ? strtol(name + 1, &end, 10) : -1;
        if (k >= 0 && k < cfg->n_workers && !*end && status) w[k].status = status;
    }
    int rc = sched_wait_reason(device, w, cfg->n_workers, buf, cap);
    json_decref(l);
    if (rc == 2 && cfg->worker_listen[0]) { /* remote workers (daemon/remote.h) are not in the list above */
        snprintf(buf, cap, "waiting for a worker that can run device %s: none of lorad's own can, and no remote "
                 "worker that can is connected and free", device);
        rc = 1;
    }
    return rc;
}

/* The per-user limits on submitting n more jobs (a sweep counts its
 * points): queued jobs and jobs per minute. Called inside the submission's
 * transaction, so two submissions at once cannot both pass on one count. */
static int admit(ctx *c, int n) {
    const lorad_config *cfg = c->a->env.cfg;
    int per_min = cfg->max_submits_per_minute, max_q = cfg->max_queued_per_user, queued = 0;
    if ((per_min && n > per_min) || (max_q && n > max_q)) {
        fail(c, 400, "invalid_request", "parameters", "the sweep has %d jobs; a user may submit at most %d a minute "
             "(max_submits_per_minute) and queue at most %d (max_queued_per_user)", n, per_min, max_q);
        return 0;
    }
    /* The window holds room for n more when the user's (per_min - n + 1)th
     * most recent job is older than 60 s; it is that job's age that frees it. */
    int64_t kth = 0, now = (int64_t)time(NULL);
    lr_err e = {0};
    if (store_user_queue(c->st, c->user.name, per_min ? per_min - n + 1 : 0, &queued, &kth, &e)) {
        fail_err(c, &e);
        return 0;
    }
    if (max_q && queued + n > max_q) {
        fail(c, 429, "too_many_queued", NULL, "%s has %d queued jobs and may have at most %d (max_queued_per_user): "
             "wait for some to start or cancel some", c->user.name, queued, max_q);
        return 0;
    }
    if (per_min && kth > now - 60) {
        int wait = (int)(kth + 60 - now);
        fail(c, 429, "rate_limited", NULL, "%s may submit at most %d jobs a minute (max_submits_per_minute); "
             "retry in %d s", c->user.name, per_min, wait);
        c->rs->retry_after = wait;
        return 0;
    }
    return 1;
}

/* On OpenAI's routes, OpenAI's status (validating_files, oai_job_status). */
static json_t *ft_view(ctx *c, json_t *job) {
    if (job && !strncmp(c->rq->path, "/v1/fine_tuning/", 16)) oai_job_status(job);
    return job;
}

/* Adds waiting_reason: why a queued job has no worker yet, else null. */
static json_t *job_with_wait(ctx *c, json_t *job) {
    char why[400];
    const char *dev = json_string_value(json_object_get(job, "device")),
               *st = json_string_value(json_object_get(job, "status"));
    int waits = dev && st && !strcmp(st, "queued") && workers_wait_reason(c, dev, why, sizeof why);
    if (job) json_object_set_new(job, "waiting_reason", waits ? json_string(why) : json_null());
    return ft_view(c, job);
}

/* What "auto" needs to know: the training file's rows and the model's
 * size (about 12·layers·hidden² + vocab·hidden parameters). Unknown ones
 * stay 0; check_refs reports a missing file or model later. */
static void create_ctx(ctx *c, const json_t *body, int openai_route, oai_create_ctx *x) {
    memset(x, 0, sizeof *x);
    x->openai_route = openai_route;
    char rnd[32]; /* "s-" and 12 random hex digits */
    store_new_id("s", rnd, sizeof rnd);
    x->random_seed = strtoull(rnd + 2, NULL, 16);
    lr_err e = {0};
    store_dataset d;
    const char *tf = json_string_value(json_object_get(body, "training_file"));
    if (tf && !store_dataset_get(c->st, tf, &d, NULL, &e)) x->train_rows = d.rows;
    const char *model = json_string_value(json_object_get(body, "model"));
    json_t *l = model ? store_models_list(c->st, NULL, &e) : NULL, *m;
    size_t i;
    json_array_foreach(json_object_get(l, "data"), i, m) {
        if (strcmp(json_string_value(json_object_get(m, "id")), model)) continue;
        double h = (double)json_integer_value(json_object_get(m, "hidden_size")),
               layers = (double)json_integer_value(json_object_get(m, "num_layers")),
               vocab = (double)json_integer_value(json_object_get(m, "vocab_size"));
        x->model_params = 12 * layers * h * h + vocab * h;
    }
    json_decref(l);
}

/* POST /v1/jobs (lorad's spec, OpenAI's fields accepted) and POST
 * /v1/fine_tuning/jobs (the same, with "auto" for what is not given). */
static void job_create(ctx *c, int openai_route) {
    if (!disk_ok(c)) return;
    json_t *o = body_object(c), *meta = NULL;
    if (!o) return;
    jobspec *s = malloc(sizeof *s);
    lr_err e = {0};
    char id[32];
    int in_tx = 0;
    if (!s) {
        fail(c, 500, "internal", NULL, "out of memory");
        goto out;
    }
    oai_create_ctx x;
    create_ctx(c, o, openai_route, &x);
    if (oai_create_prepare(o, &x, &meta, &e)) {
        fail(c, 400, "invalid_request", e.param, "%s", e.msg);
        goto out;
    }
    if (jobspec_from_json(o, s, &e)) {
        fail(c, 400, "invalid_request", e.param, "%s", e.msg);
        goto out;
    }
    if (!priority_ok(c, s, "priority") || !device_ok(c, s, "device")) goto out;
    if (store_begin(c->st, &e)) {
        fail_err(c, &e);
        goto out;
    }
    in_tx = 1;
    if (!admit(c, 1) || check_refs(c, s, "") || insert_job(c, s, meta, NULL, id, sizeof id)) goto out;
    if (store_commit(c->st, &e)) {
        fail_err(c, &e);
        goto out;
    }
    in_tx = 0;
    char why[400];
    /* said once in its events when no worker that could run it is alive */
    if (workers_wait_reason(c, jobspec_device_name(s->device), why, sizeof why) == 2 &&
        store_event_add(c->st, id, "warning", why, &e))
        e.msg[0] = 0; /* the job is queued; a lost note is not worth failing it */
    json_t *integ;
    size_t ii;
    json_array_foreach(json_object_get(meta, "integrations"), ii, integ) {
        char note[320];
        snprintf(note, sizeof note, "integration %.40s recorded but not run: lorad reaches no outside service; "
                 "the job's metrics are in its events and GET /v1/jobs/%s/metrics",
                 json_string_value(json_object_get(integ, "type")), id);
        if (store_event_add(c->st, id, "warning", note, &e)) e.msg[0] = 0;
    }
    wake(c);
    reply(c, job_with_wait(c, store_job_get(c->st, id, &e)), &e);
out:
    if (in_tx) store_rollback(c->st);
    free(s);
    json_decref(meta);
    json_decref(o);
}

static void h_job_create(ctx *c) { job_create(c, 0); }

static const char *const statuses[] = {"queued", "running", "succeeded", "failed", "cancelled"};

static void h_jobs_list(ctx *c) {
    long long limit;
    const char *status, *user, *after, *sweep;
    if (qint(c, "limit", 20, 1, 1000, &limit) || qtoken(c, "status", &status) || qtoken(c, "user", &user) ||
        qtoken(c, "after", &after) || qtoken(c, "sweep_id", &sweep))
        return;
    if (status) {
        int ok = 0;
        for (size_t i = 0; i < sizeof statuses / sizeof statuses[0]; i++) ok |= !strcmp(status, statuses[i]);
        if (!ok) {
            fail(c, 400, "invalid_request", "status", "status must be queued, running, succeeded, failed or cancelled");
            return;
        }
    }
    /* private: a user lists their own jobs (shared ones are reached by id). */
    if (private_view(c)) {
        if (user && strcmp(user, c->user.name)) {
            set_json(c->rs, 200, json_pack("{s:s, s:[], s:b}", "object", "list", "data", "has_more", 0));
            return;
        }
        user = c->user.name;
    }
    lr_err e = {0};
    size_t len = 0;
    char *body = store_jobs_list_text(c->st, status, user, sweep, (int)limit, after, &len, &e);
    if (!body) {
        fail_err(c, &e);
        return;
    }
    /* Already serialized: the stored specs are copied in, not re-encoded. */
    free(c->rs->body);
    c->rs->status = 200;
    c->rs->content_type = "application/json";
    c->rs->body = body;
    c->rs->body_len = len;
}

/* OpenAI's trained_tokens: the run's count (time_metrics.json) once it has
 * succeeded. */
static void trained_tokens(ctx *c, json_t *job) {
    const char *st = json_string_value(json_object_get(job, "status"));
    if (!st || strcmp(st, "succeeded")) return;
    char p[1400];
    snprintf(p, sizeof p, "%s/runs/%s/time_metrics.json", c->a->env.cfg->data_dir, c->p[0]);
    json_t *tm = json_load_file(p, 0, NULL), *n = json_object_get(tm, "tokens");
    if (json_is_integer(n)) json_object_set(job, "trained_tokens", n);
    json_decref(tm);
}

static void h_job_get(ctx *c) {
    json_t *j = visible_job(c, c->p[0]);
    if (!j) return;
    trained_tokens(c, j);
    relative_paths(c, json_object_get(j, "error"), "message");
    set_json(c->rs, 200, job_with_wait(c, j));
}

static void h_job_cancel(ctx *c) {
    lr_err e = {0};
    int running = 0;
    json_t *j = visible_job(c, c->p[0]);
    if (!j) return;
    json_decref(j);
    if (store_job_cancel(c->st, c->p[0], &c->user, &running, &e)) {
        fail_err(c, &e);
        return;
    }
    if (running) wake(c);
    reply(c, ft_view(c, store_job_get(c->st, c->p[0], &e)), &e);
}

/* The job must exist, and be one the caller may see, before any of its
 * sub-resources is read. */
static int job_exists(ctx *c) {
    json_t *j = visible_job(c, c->p[0]);
    json_decref(j);
    return j != NULL;
}

static void h_job_metrics(ctx *c) {
    long long after, maxp;
    const char *names;
    if (qint(c, "after_step", -1, -1, INT64_MAX, &after) || qint(c, "max_points", 0, 0, 100000, &maxp) ||
        qtoken(c, "names", &names) || !job_exists(c))
        return;
    lr_err e = {0};
    reply(c, store_metrics_query(c->st, c->p[0], after, names, (int)maxp, &e), &e);
}

static void h_job_events(ctx *c) {
    long long after, limit;
    if (qint(c, "after", 0, 0, INT64_MAX, &after) || qint(c, "limit", 100, 1, 10000, &limit) || !job_exists(c)) return;
    lr_err e = {0};
    json_t *l = store_events_list(c->st, c->p[0], after, (int)limit, &e), *ev;
    size_t i;
    json_array_foreach(json_object_get(l, "data"), i, ev) relative_paths(c, ev, "message");
    reply(c, l, &e);
}

static json_t *step_metrics(json_t *mq, int64_t step, int exact_train);
#define METRIC_NAMES "loss,eval_loss,train_accuracy,eval_accuracy,rewards/accuracy,eval_rewards/accuracy"

/* Checkpoints with OpenAI's fields (the fine-tuned model name of each, the
 * metrics logged by its step); /v1/fine_tuning/... lists them newest first
 * with after/limit paging as OpenAI does, /v1/jobs/... oldest first. */
static void h_job_checkpoints(ctx *c) {
    long long limit;
    const char *after;
    if (qint(c, "limit", 1000, 1, 1000, &limit) || qtoken(c, "after", &after)) return;
    json_t *job = visible_job(c, c->p[0]), *l = NULL, *mq = NULL, *ck;
    if (!job) return;
    lr_err e = {0};
    int newest_first = !strncmp(c->rq->path, "/v1/fine_tuning/", 16);
    l = store_checkpoints_list(c->st, c->p[0], &e);
    mq = l ? store_metrics_query(c->st, c->p[0], -1, METRIC_NAMES, 0, &e) : NULL;
    if (!mq) {
        fail_err(c, &e);
        goto out;
    }
    const char *owner = json_string_value(json_object_get(job, "user"));
    char ft[1024];
    oai_model_name(json_string_value(json_object_get(job, "model")), owner ? owner : "",
                   json_string_value(json_object_get(job, "user_provided_suffix")), c->p[0], ft, sizeof ft);
    json_t *src = json_object_get(l, "data"), *data = json_array();
    size_t n = json_array_size(src), i, from = 0;
    for (i = 0; i < n; i++) {
        ck = json_array_get(src, newest_first ? n - 1 - i : i);
        oai_checkpoint_complete(ck, c->p[0], ft, step_metrics(mq, json_integer_value(json_object_get(ck, "step")), 0));
        if (after && !strcmp(json_string_value(json_object_get(ck, "id")), after)) from = i + 1;
    }
    for (i = from; i < n && i < from + (size_t)limit; i++)
        json_array_append(data, json_array_get(src, newest_first ? n - 1 - i : i));
    size_t k = json_array_size(data);
    set_json(c->rs, 200, json_pack("{s:s, s:o, s:b, s:O, s:O}", "object", "list", "data", data, "has_more",
                                   from + (size_t)limit < n, "first_id",
                                   k ? json_object_get(json_array_get(data, 0), "id") : json_null(), "last_id",
                                   k ? json_object_get(json_array_get(data, k - 1), "id") : json_null()));
out:
    json_decref(mq);
    json_decref(l);
    json_decref(job);
}

/* An artifact is a plain file name in the run directory: letters, digits,
 * '.', '_', '-', not starting with '.', so no path can be formed. */
static int artifact_name_ok(const char *n) {
    size_t l = strlen(n);
    if (l == 0 || l > 128 || n[0] == '.') return 0;
    for (size_t i = 0; i < l; i++)
        if (!((n[i] >= 'a' && n[i] <= 'z') || (n[i] >= 'A' && n[i] <= 'Z') || (n[i] >= '0' && n[i] <= '9') ||
              n[i] == '.' || n[i] == '_' || n[i] == '-'))
            return 0;
    return 1;
}

static void h_job_artifacts(ctx *c) {
    if (!job_exists(c)) return;
    char dir[1300];
    snprintf(dir, sizeof dir, "%s/runs/%s", c->a->env.cfg->data_dir, c->p[0]);
    json_t *a = json_array();
    DIR *d = opendir(dir);
    struct dirent *de;
    while (d && (de = readdir(d))) {
        if (!artifact_name_ok(de->d_name)) continue;
        struct stat st;
        if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) || !S_ISREG(st.st_mode)) continue;
        json_array_append_new(a, json_pack("{s:s, s:s, s:I}", "object", "artifact", "name", de->d_name, "bytes",
                                           (json_int_t)st.st_size));
    }
    if (d) closedir(d);
    set_json(c->rs, 200, json_pack("{s:s, s:o, s:b}", "object", "list", "data", a, "has_more", 0));
}

static void h_job_artifact(ctx *c) {
    const char *name = c->p[1];
    if (!artifact_name_ok(name)) {
        fail(c, 400, "invalid_request", "file", "'%s' is not an artifact name (a plain file name, no '/', not "
                                                "starting with '.')", name);
        return;
    }
    if (!job_exists(c)) return;
    char path[1500];
    snprintf(path, sizeof path, "%s/runs/%s/%s", c->a->env.cfg->data_dir, c->p[0], name);
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) || !S_ISREG(st.st_mode)) {
        if (fd >= 0) close(fd);
        fail(c, 404, "not_found", "file", "job %s has no artifact '%s'", c->p[0], name);
        return;
    }
    c->rs->status = 200;
    c->rs->fd = fd;
    c->rs->fd_size = (uint64_t)st.st_size;
    size_t l = strlen(name);
    c->rs->content_type = l > 5 && !strcmp(name + l - 5, ".json") ? "application/json"
                          : l > 4 && !strcmp(name + l - 4, ".csv") ? "text/csv"
                                                                   : "application/octet-stream";
    snprintf(c->rs->disposition, sizeof c->rs->disposition, "attachment; filename=\"%s\"", name);
}

/* ---- trying and merging what a job trained ---- */

/* One argv string each: far below the kernel's 128 KiB per argument. */
#define GEN_MAX_PROMPT 32768
#define GEN_MAX_SYSTEM 8192

/* A body field that is a string of 1..max bytes (0..max when empty_ok).
 * body_object already refused "\u0000", which could not reach argv. */
static int body_string(ctx *c, json_t *v, const char *k, size_t max, int empty_ok, const char **out) {
    if (!json_is_string(v) || json_string_length(v) > max || (!empty_ok && !json_string_length(v))) {
        fail(c, 400, "invalid_request", k, "%s must be a%s string of at most %zu bytes", k, empty_ok ? "" : " non-empty",
             max);
        return -1;
    }
    *out = json_string_value(v);
    return 0;
}

static int body_number(ctx *c, json_t *v, const char *k, double lo, double hi, int integer, double *out) {
    double x = json_number_value(v);
    if ((integer ? !json_is_integer(v) : !json_is_number(v)) || !(x >= lo && x <= hi)) {
        fail(c, 400, "invalid_request", k, "%s must be %s in %g..%g", k, integer ? "an integer" : "a number", lo, hi);
        return -1;
    }
    *out = x;
    return 0;
}

static int body_stops(ctx *c, json_t *v, runner_gen *g) {
    json_t *one = json_is_string(v) ? v : NULL, *x;
    size_t n = one ? 1 : json_array_size(v), i;
    if ((!one && !json_is_array(v)) || n > RUNNER_MAX_STOP) {
        fail(c, 400, "invalid_request", "stop", "stop must be a string or a list of at most %d strings",
             RUNNER_MAX_STOP);
        return -1;
    }
    for (i = 0; i < n; i++) {
        x = one ? one : json_array_get(v, i);
        char param[32];
        snprintf(param, sizeof param, one ? "stop" : "stop[%zu]", i);
        if (body_string(c, x, param, RUNNER_MAX_STOP_LEN, 0, &g->stop[i])) return -1;
    }
    g->n_stop = (int)n;
    return 0;
}

/* What a finished job trained: an adapter in its run directory or, for a
 * full_sft job, a whole model folder there (the run directory itself). */
typedef struct trained {
    char run_dir[1300];
    char model_dir[1024]; /* the base model's folder; "" when not asked for */
    int full;
} trained;

/* Whether job j (GET /v1/jobs/{id}) has finished with its adapter (or
 * model); fills t, else answers 409. The base model must still be
 * registered, except to merge a full_sft job: its folder is registered as
 * it is. */
static int trained_ready(ctx *c, json_t *j, int merge, trained *t) {
    const char *status = json_string_value(json_object_get(j, "status"));
    const char *model = json_string_value(json_object_get(j, "model"));
    json_t *method = json_object_get(json_object_get(json_object_get(j, "spec"), "method"), "type");
    char path[1600];
    struct stat st;
    status = status ? status : "?";
    t->full = json_is_string(method) && !strcmp(json_string_value(method), jobspec_method_name(METHOD_FULL_SFT));
    t->model_dir[0] = 0;
    const char *what = t->full ? "model" : "adapter";
    const char *file = t->full ? "model.safetensors" : "adapter_model.safetensors";
    if (!strcmp(status, "queued") || !strcmp(status, "running")) {
        fail(c, 409, "conflict", NULL, "job %s is %s: its %s can be used once it has finished", c->p[0], status, what);
        return 0;
    }
    snprintf(t->run_dir, sizeof t->run_dir, "%s/runs/%s", c->a->env.cfg->data_dir, c->p[0]);
    snprintf(path, sizeof path, "%s/%s", t->run_dir, file);
    if (stat(path, &st) || !S_ISREG(st.st_mode)) {
        fail(c, 409, "conflict", NULL, "job %s (%s) has no %s%s: it ended before saving %s", c->p[0], status,
             t->full ? "trained " : "", what, file);
        return 0;
    }
    if (merge && t->full) return 1;
    lr_err e = {0};
    if (store_model_dir(c->st, model ? model : "", t->model_dir, sizeof t->model_dir, &e)) {
        if (e.code == LR_E_NOTFOUND)
            fail(c, 409, "conflict", NULL, "job %s's base model '%s' is no longer registered", c->p[0], model ? model : "?");
        else fail_err(c, &e);
        return 0;
    }
    return 1;
}

static int runner_ready(ctx *c) {
    if (c->a->env.runner) return 1;
    fail(c, 503, "unavailable", NULL, "this lorad runs no lora-worker for generations and merges");
    return 0;
}

static void h_job_generate(ctx *c) {
    lr_err e = {0};
    json_t *job = visible_job(c, c->p[0]), *o = NULL, *out = NULL;
    if (!job) return;
    if (!(o = body_object(c))) goto out;
    runner_gen g = {.max_new_tokens = 128, .top_p = 1.0};
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v) {
        double x = 0;
        int bad;
        if (!strcmp(k, "prompt")) bad = body_string(c, v, k, GEN_MAX_PROMPT, 0, &g.prompt);
        else if (!strcmp(k, "system")) bad = body_string(c, v, k, GEN_MAX_SYSTEM, 1, &g.system);
        else if (!strcmp(k, "max_new_tokens")) bad = body_number(c, v, k, 1, 1024, 1, &x), g.max_new_tokens = (int)x;
        else if (!strcmp(k, "temperature")) bad = body_number(c, v, k, 0, 5, 0, &g.temperature);
        else if (!strcmp(k, "top_p")) {
            bad = body_number(c, v, k, 0, 1, 0, &g.top_p);
            if (!bad && g.top_p <= 0) bad = 1, fail(c, 400, "invalid_request", k, "top_p must be in (0, 1]");
        } else if (!strcmp(k, "top_k")) bad = body_number(c, v, k, 0, 1e6, 1, &x), g.top_k = (int)x;
        else if (!strcmp(k, "seed")) bad = body_number(c, v, k, 0, 9007199254740992.0, 1, &x), g.seed = (long long)x;
        else if (!strcmp(k, "stop")) bad = body_stops(c, v, &g);
        else {
            fail(c, 400, "invalid_request", k, "unknown field '%s' (a generation takes prompt, max_new_tokens, "
                                              "temperature, top_p, top_k, seed, stop, system)", k);
            bad = 1;
        }
        if (bad) goto out;
    }
    if (!g.prompt) {
        fail(c, 400, "invalid_request", "prompt", "prompt is required");
        goto out;
    }
    trained t;
    if (!trained_ready(c, job, 0, &t) || !runner_ready(c)) goto out;
    json_t *spec = json_object_get(job, "spec");
    g.model_dir = t.model_dir;
    if (t.full) g.tuned_model_dir = t.run_dir;
    else g.adapter_dir = t.run_dir;
    g.chat_template = json_string_value(json_object_get(spec, "chat_template"));
    if (!g.system) g.system = json_string_value(json_object_get(spec, "system_prompt")); /* as it was trained */
    if (runner_generate(c->a->env.runner, &g, &out, &e)) {
        const char *model = json_string_value(json_object_get(job, "model"));
        path_to_name(e.msg, sizeof e.msg, t.run_dir, c->p[0]);
        path_to_name(e.msg, sizeof e.msg, t.model_dir, model ? model : "the base model");
        if (e.code == LR_E_BUSY) fail(c, 429, "busy", NULL, "%s", e.msg);
        else if (e.code == LR_E_TIMEOUT) fail(c, 504, "timeout", NULL, "%s", e.msg);
        else if (e.code == LR_E_INVALID) fail(c, 400, "invalid_request", "prompt", "%s", e.msg);
        else fail(c, 500, "generation_failed", NULL, "%s", e.msg);
        goto out;
    }
    json_t *r = json_pack("{s:s, s:s, s:O, s:O}", "object", "generation", "job", c->p[0], "model",
                          json_object_get(job, "model"), "prompt", json_object_get(o, "prompt"));
    if (r) json_object_update(r, out);
    set_json(c->rs, 200, r);
out:
    json_decref(out);
    json_decref(o);
    json_decref(job);
}

/* "<job name or id>-merged", made a valid model name. */
static void default_merge_name(const json_t *job, char *out, size_t cap) {
    const char *src = json_string_value(json_object_get(job, "name"));
    char base[57];
    size_t n = 0;
    for (const char *p = src ? src : ""; *p && n < sizeof base - 1; p++) {
        char ch = *p;
        int ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '.' ||
                 ch == '_' || ch == '-';
        if (!n && (ch == '.' || ch == '-' || !ok)) continue;
        base[n++] = ok ? ch : '-';
    }
    base[n] = 0;
    snprintf(out, cap, "%s-merged", n ? base : json_string_value(json_object_get(job, "id")));
}

static void h_job_merge(ctx *c) {
    lr_err e = {0};
    json_t *job = visible_job(c, c->p[0]), *o = NULL;
    if (!job) return;
    const char *name = NULL, *k;
    json_t *v;
    if (c->rq->body_len) { /* the body is optional */
        if (!(o = body_object(c))) goto out;
        json_object_foreach(o, k, v) {
            if (strcmp(k, "name")) {
                fail(c, 400, "invalid_request", k, "unknown field '%s' (a merge takes name)", k);
                goto out;
            }
            if (body_string(c, v, k, 63, 0, &name)) goto out;
            if (!models_name_ok(name)) {
                fail(c, 400, "invalid_request", k, "a model name has 1..63 letters, digits, '.', '_' or '-' and does "
                                                   "not start with '.' or '-'");
                goto out;
            }
        }
    }
    const char *owner = json_string_value(json_object_get(job, "user"));
    if (!c->user.admin && strcmp(owner ? owner : "", c->user.name)) {
        fail(c, 403, "forbidden", NULL, "job %s belongs to %s; only its owner or an admin can merge it", c->p[0],
             owner ? owner : "?");
        goto out;
    }
    char defname[80], other[1024];
    if (!name) {
        default_merge_name(job, defname, sizeof defname);
        name = defname;
    }
    trained t;
    if (!trained_ready(c, job, 1, &t)) goto out;
    if (!store_model_dir(c->st, name, other, sizeof other, &e)) {
        fail(c, 409, "conflict", "name", "a model named '%s' is already registered", name);
        goto out;
    }
    if (e.code != LR_E_NOTFOUND) {
        fail_err(c, &e);
        goto out;
    }
    lr_err_clear(&e);
    if (!runner_ready(c)) goto out;
    runner_merge m = {.job_id = c->p[0], .name = name};
    if (t.full) m.tuned_model_dir = t.run_dir;
    else m.model_dir = t.model_dir, m.adapter_dir = t.run_dir;
    if (runner_merge_start(c->a->env.runner, &m, &e)) {
        if (e.code == LR_E_BUSY) fail(c, 503, "unavailable", NULL, "%s", e.msg);
        else fail_err(c, &e);
        goto out;
    }
    /* Once this merge (not a refused one) runs: its model belongs to the
     * job's owner. */
    if (store_model_merge_begin(c->st, name, owner ? owner : c->user.name, c->p[0], &e)) {
        fail(c, 500, "internal", NULL, "the merge into %s started, but recording its owner failed: %s", name, e.msg);
        goto out;
    }
    set_json(c->rs, 202, json_pack("{s:s, s:s, s:s, s:s, s:O, s:f}", "object", "model", "id", name, "status",
                                   t.full ? "registering" : "merging",
                                   "job", c->p[0], "base_model", json_object_get(job, "model"), "created", store_now()));
out:
    json_decref(o);
    json_decref(job);
}

/* ---- sweeps ---- */

/* Sets a dotted path in a JSON object, creating objects on the way. */
static int set_path(json_t *doc, const char *path, json_t *v) {
    char buf[256];
    snprintf(buf, sizeof buf, "%s", path);
    json_t *cur = doc;
    char *save = NULL, *tok = strtok_r(buf, ".", &save);
    while (tok) {
        char *next = strtok_r(NULL, ".", &save);
        if (!next) return json_object_set(cur, tok, v);
        json_t *child = json_object_get(cur, tok);
        if (!child) {
            child = json_object();
            if (json_object_set_new(cur, tok, child)) return -1;
        }
        if (!json_is_object(child)) return -1;
        cur = child;
        tok = next;
    }
    return -1;
}

/* A grid: 1..SWEEP_MAX_AXES dotted paths to non-empty lists of values whose
 * product has at most SWEEP_MAX_POINTS points; fills the axes and *total. */
static int sweep_grid_ok(ctx *c, json_t *params, const char **axis_name, json_t **axis, int *na, size_t *total) {
    if (!json_is_object(params) || json_object_size(params) == 0 || json_object_size(params) > SWEEP_MAX_AXES) {
        fail(c, 400, "invalid_request", "parameters",
             "parameters must map 1..%d dotted spec paths to lists of values", SWEEP_MAX_AXES);
        return 0;
    }
    const char *k;
    json_t *v;
    json_object_foreach(params, k, v) {
        char param[200];
        snprintf(param, sizeof param, "parameters.%s", k);
        if (!json_is_array(v) || json_array_size(v) == 0 || strlen(k) > 200) {
            fail(c, 400, "invalid_request", param, "%s must be a non-empty list of values", param);
            return 0;
        }
        *total *= json_array_size(v);
        if (*total > SWEEP_MAX_POINTS) {
            fail(c, 400, "invalid_request", "parameters", "the sweep has more than %d points", SWEEP_MAX_POINTS);
            return 0;
        }
        axis_name[*na] = k;
        axis[(*na)++] = v;
    }
    return 1;
}

/* Explicit points (a random search, a hand-picked list): 1..SWEEP_MAX_POINTS
 * objects of at most SWEEP_MAX_POINT_KEYS dotted paths each. */
static int sweep_points_ok(ctx *c, json_t *points) {
    if (!json_is_array(points) || json_array_size(points) == 0 || json_array_size(points) > SWEEP_MAX_POINTS) {
        fail(c, 400, "invalid_request", "points", "points must be a list of 1..%d objects", SWEEP_MAX_POINTS);
        return 0;
    }
    size_t i;
    json_t *pt;
    json_array_foreach(points, i, pt) {
        char param[32];
        snprintf(param, sizeof param, "points.%zu", i);
        if (!json_is_object(pt) || json_object_size(pt) > SWEEP_MAX_POINT_KEYS) {
            fail(c, 400, "invalid_request", param, "%s must be an object of at most %d dotted spec paths to values",
                 param, SWEEP_MAX_POINT_KEYS);
            return 0;
        }
        const char *k;
        json_t *v;
        json_object_foreach(pt, k, v)
            if (strlen(k) > 200) {
                fail(c, 400, "invalid_request", param, "%s: '%.40s...' is not a spec path", param, k);
                return 0;
            }
    }
    return 1;
}

static void h_sweep_create(ctx *c) {
    if (!disk_ok(c)) return;
    json_t *o = body_object(c);
    if (!o) return;
    jobspec *s = malloc(sizeof *s);
    char *tpl_txt = NULL, *par_txt = NULL;
    int in_tx = 0;
    lr_err e = {0};
    if (!s) {
        fail(c, 500, "internal", NULL, "out of memory");
        goto out;
    }
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v) {
        if (strcmp(k, "template") && strcmp(k, "parameters") && strcmp(k, "points")) {
            fail(c, 400, "invalid_request", k, "unknown field '%s' (a sweep has template and parameters or points)", k);
            goto out;
        }
    }
    json_t *tpl = json_object_get(o, "template"), *params = json_object_get(o, "parameters");
    json_t *points = json_object_get(o, "points");
    if (!json_is_object(tpl)) {
        fail(c, 400, "invalid_request", "template", "template must be a job spec object");
        goto out;
    }
    if (!params == !points) {
        fail(c, 400, "invalid_request", "parameters",
             "a sweep has either parameters (dotted spec paths to lists of values: their product) or points "
             "(a list of objects of dotted spec paths to values: one job each)");
        goto out;
    }
    const char *axis_name[SWEEP_MAX_AXES];
    json_t *axis[SWEEP_MAX_AXES];
    int na = 0;
    size_t total = points ? json_array_size(points) : 1;
    if (points ? !sweep_points_ok(c, points) : !sweep_grid_ok(c, params, axis_name, axis, &na, &total)) goto out;
    /* Validate every point before creating any job: a sweep is all or nothing. */
    char sweep_id[32];
    store_new_id("sweep", sweep_id, sizeof sweep_id);
    tpl_txt = jsonfmt_dumps(tpl, JSON_COMPACT);
    par_txt = jsonfmt_dumps(points ? points : params, JSON_COMPACT); /* store_sweep_get tells them apart */
    if (!tpl_txt || !par_txt) {
        fail(c, 500, "internal", NULL, "out of memory");
        goto out;
    }
    if (store_begin(c->st, &e)) {
        fail_err(c, &e);
        goto out;
    }
    in_tx = 1;
    if (!admit(c, (int)total)) goto out;
    if (store_sweep_insert(c->st, sweep_id, c->user.name, tpl_txt, par_txt, &e)) {
        fail_err(c, &e);
        goto out;
    }
    for (size_t pt = 0; pt < total; pt++) {
        json_t *doc = json_deep_copy(tpl);
        size_t rest = pt;
        char suffix[24] = "";
        for (int a = na - 1; a >= 0; a--) {
            size_t n = json_array_size(axis[a]), idx = rest % n;
            rest /= n;
            if (set_path(doc, axis_name[a], json_array_get(axis[a], idx))) {
                json_decref(doc);
                fail(c, 400, "invalid_request", "parameters", "cannot set '%s' in the template", axis_name[a]);
                goto out;
            }
        }
        json_object_foreach(json_array_get(points, pt), k, v) {
            if (set_path(doc, k, v)) {
                json_decref(doc);
                fail(c, 400, "invalid_request", "points", "point %zu: cannot set '%s' in the template", pt, k);
                goto out;
            }
        }
        snprintf(suffix, sizeof suffix, "%zu", pt);
        int bad = jobspec_from_json(doc, s, &e);
        json_decref(doc);
        if (bad) {
            char param[200];
            snprintf(param, sizeof param, "template.%s", e.param);
            fail(c, 400, "invalid_request", param, "sweep point %zu: %s", pt, e.msg);
            goto out;
        }
        if (!priority_ok(c, s, "template.priority") || !device_ok(c, s, "template.device")) goto out;
        char name[128];
        snprintf(name, sizeof name, "%.100s-%s", s->name[0] ? s->name : sweep_id, suffix);
        snprintf(s->name, sizeof s->name, "%s", name);
        char id[32];
        if (check_refs(c, s, "template.") || insert_job(c, s, NULL, sweep_id, id, sizeof id)) goto out;
    }
    if (store_commit(c->st, &e)) {
        fail_err(c, &e);
        goto out;
    }
    in_tx = 0;
    wake(c);
    reply(c, store_sweep_get(c->st, sweep_id, &e), &e);
out:
    if (in_tx) store_rollback(c->st);
    free(tpl_txt);
    free(par_txt);
    free(s);
    json_decref(o);
}

static void h_sweep_get(ctx *c) {
    lr_err e = {0};
    json_t *sw = store_sweep_get(c->st, c->p[0], &e);
    const char *owner = json_string_value(json_object_get(sw, "user"));
    if (sw && private_view(c) && strcmp(owner ? owner : "", c->user.name)) { /* sweeps are not shared */
        json_decref(sw);
        fail(c, 404, "not_found", NULL, "no sweep with id '%s'", c->p[0]);
        return;
    }
    reply(c, sw, &e);
}

static void h_workers(ctx *c) {
    lr_err e = {0};
    json_t *l = store_workers_list(c->st, &e), *w;
    size_t i;
    /* private: a worker busy with someone else's job shows no job id */
    json_array_foreach(private_view(c) ? json_object_get(l, "data") : NULL, i, w) {
        const char *id = json_string_value(json_object_get(w, "job_id"));
        json_t *j = id ? store_job_get(c->st, id, &e) : NULL;
        const char *owner = json_string_value(json_object_get(j, "user"));
        if (id && !(owner && can_see(c, "job", id, owner))) json_object_set_new(w, "job_id", json_null());
        json_decref(j);
        lr_err_clear(&e);
    }
    reply(c, l, &e);
}

/* ---- the OpenAI API: files, fine-tuning jobs, completions ---- */

static void h_ft_create(ctx *c) { job_create(c, 1); }

static void h_files_list(ctx *c) {
    long long limit;
    const char *after, *purpose, *order;
    if (qint(c, "limit", 10000, 1, 10000, &limit) || qtoken(c, "after", &after) || qtoken(c, "purpose", &purpose) ||
        qtoken(c, "order", &order))
        return;
    if (order && strcmp(order, "asc") && strcmp(order, "desc")) {
        fail(c, 400, "invalid_request", "order", "order must be asc or desc");
        return;
    }
    lr_err e = {0};
    reply(c, store_files_list(c->st, (int)limit, after, private_view(c) ? c->user.name : NULL, purpose,
                              order && !strcmp(order, "asc"), &e), &e);
}

/* A succeeded job's results file: its logged metrics as CSV, one row per
 * logged step (0: its file object, 1: the CSV). 0 when c->p[0] is not a
 * results file id. */
static int results_file(ctx *c, int content) {
    char jid[64];
    if (oai_results_file_job(c->p[0], jid, sizeof jid)) return 0;
    lr_err e = {0};
    char fid[PARAM_LEN];
    snprintf(fid, sizeof fid, "%s", c->p[0]);
    snprintf(c->p[0], sizeof c->p[0], "%s", jid);
    json_t *job = visible_job(c, jid), *mq = NULL, *loss = NULL, *sr;
    if (!job) return 1;
    lr_buf b;
    lr_buf_init(&b, 64u << 20);
    if (strcmp(json_string_value(json_object_get(job, "status")), "succeeded")) {
        fail(c, 404, "not_found", NULL, "no file with id '%s' (job %s has not succeeded)", fid, jid);
        goto out;
    }
    if (!(mq = store_metrics_query(c->st, jid, -1, METRIC_NAMES ",lr", 0, &e))) {
        fail_err(c, &e);
        goto out;
    }
    size_t i;
    json_array_foreach(json_object_get(mq, "series"), i, sr) if (!strcmp(json_string_value(json_object_get(sr, "name")), "loss")) loss = sr;
    /* OpenAI's columns, then lorad's learning rate */
    int bad = lr_buf_adds(&b, "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy,learning_rate\n");
    json_t *steps = json_object_get(loss, "steps");
    for (i = 0; !bad && i < json_array_size(steps); i++) {
        int64_t st = json_integer_value(json_array_get(steps, i));
        json_t *m = step_metrics(mq, st, 1);
        char lr[32] = "";
        json_t *l = NULL, *x;
        size_t k;
        json_array_foreach(json_object_get(mq, "series"), k, x) if (!strcmp(json_string_value(json_object_get(x, "name")), "lr")) l = x;
        for (k = 0; k < json_array_size(json_object_get(l, "steps")); k++)
            if (json_integer_value(json_array_get(json_object_get(l, "steps"), k)) == st)
                snprintf(lr, sizeof lr, "%.9g", json_number_value(json_array_get(json_object_get(l, "values"), k)));
        static const char *const col[] = {"train_loss", "train_mean_token_accuracy", "valid_loss",
                                          "valid_mean_token_accuracy"};
        char cell[4][32] = {""};
        for (k = 0; k < 4; k++)
            if ((x = json_object_get(m, col[k]))) snprintf(cell[k], sizeof cell[k], "%.9g", json_number_value(x));
        bad = lr_buf_printf(&b, "%lld,%s,%s,%s,%s,%s\n", (long long)st, cell[0], cell[1], cell[2], cell[3], lr);
        json_decref(m);
    }
    if (bad) {
        fail(c, 500, "internal", NULL, "the results of %s are too large", jid);
        goto out;
    }
    if (content) {
        c->rs->status = 200;
        c->rs->content_type = "text/csv";
        snprintf(c->rs->disposition, sizeof c->rs->disposition, "attachment; filename=\"step_metrics.csv\"");
        c->rs->body = lr_buf_take(&b, &c->rs->body_len);
    } else {
        set_json(c->rs, 200, json_pack("{s:s, s:s, s:I, s:O, s:s, s:s, s:s, s:s}", "id", fid, "object", "file", "bytes",
                                       (json_int_t)b.len, "created_at", json_object_get(job, "finished_at"), "filename",
                                       "step_metrics.csv", "purpose", "fine-tune-results", "status", "processed", "job",
                                       jid));
    }
out:
    lr_buf_free(&b);
    json_decref(mq);
    json_decref(job);
    return 1;
}

static void h_file_content(ctx *c) {
    store_dataset d;
    if (results_file(c, 1)) return;
    if (visible_dataset(c, c->p[0], &d, NULL)) return;
    int fd = open(d.path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) || !S_ISREG(st.st_mode)) {
        if (fd >= 0) close(fd);
        fail(c, 500, "internal", NULL, "file %s is recorded but its content is missing on the server", d.id);
        return;
    }
    c->rs->status = 200;
    c->rs->fd = fd;
    c->rs->fd_size = (uint64_t)st.st_size;
    c->rs->content_type = strcmp(d.format, "csv") ? "application/jsonl" : "text/csv";
    snprintf(c->rs->disposition, sizeof c->rs->disposition, "attachment; filename=\"%s\"", d.filename);
}

typedef struct meta_filter {
    char key[80], value[520];
    int n;
} meta_filter;

static int meta_arg(void *ud, const char *k, const char *v) {
    meta_filter *m = ud;
    size_t kl = strlen(k);
    if (strncmp(k, "metadata[", 9) || kl < 11 || k[kl - 1] != ']') return 0;
    if (m->n++ == 0) {
        snprintf(m->key, sizeof m->key, "%.*s", (int)(kl - 10), k + 9);
        snprintf(m->value, sizeof m->value, "%s", v);
    }
    return 0;
}

static void h_ft_list(ctx *c) {
    long long limit;
    const char *after;
    if (qint(c, "limit", 20, 1, 1000, &limit) || qtoken(c, "after", &after)) return;
    meta_filter mf = {0};
    if (c->rq->query_each) c->rq->query_each(c->rq->qctx, meta_arg, &mf);
    if (mf.n > 1) {
        fail(c, 400, "invalid_request", "metadata", "filter on one metadata key at a time");
        return;
    }
    lr_err e = {0};
    const char *user = private_view(c) ? c->user.name : NULL;
    json_t *l = mf.n ? store_jobs_list_meta(c->st, user, mf.key, mf.value, (int)limit, after, &e)
                     : store_jobs_list(c->st, NULL, user, NULL, (int)limit, after, &e);
    if (!l) {
        fail_err(c, &e);
        return;
    }
    json_t *j;
    size_t i;
    json_array_foreach(json_object_get(l, "data"), i, j) {
        relative_paths(c, json_object_get(j, "error"), "message");
        ft_view(c, j);
    }
    set_json(c->rs, 200, l);
}

static void pause_or_resume(ctx *c, int pause) {
    lr_err e = {0};
    int running = 0;
    json_t *j = visible_job(c, c->p[0]);
    if (!j) return;
    json_decref(j);
    if (pause ? store_job_pause(c->st, c->p[0], &c->user, &running, &e) : store_job_resume(c->st, c->p[0], &c->user, &e)) {
        fail_err(c, &e);
        return;
    }
    if (running || !pause) wake(c);
    reply(c, ft_view(c, store_job_get(c->st, c->p[0], &e)), &e);
}

static void h_job_pause(ctx *c) { pause_or_resume(c, 1); }
static void h_job_resume(ctx *c) { pause_or_resume(c, 0); }

/* The value of series name at step (exact: only that step; else the last
 * one at or before it); NULL when none. */
static json_t *series_at(json_t *mq, const char *name, int64_t step, int exact) {
    json_t *sr, *best = NULL;
    size_t i, k;
    json_array_foreach(json_object_get(mq, "series"), i, sr) {
        if (strcmp(json_string_value(json_object_get(sr, "name")), name)) continue;
        json_t *steps = json_object_get(sr, "steps"), *vals = json_object_get(sr, "values");
        for (k = 0; k < json_array_size(steps); k++) {
            int64_t s = json_integer_value(json_array_get(steps, k));
            if (s > step) break;
            if (!exact || s == step) best = json_array_get(vals, k);
        }
    }
    return json_is_number(best) ? best : NULL;
}

/* OpenAI's metric names for what lorad logs at a step. */
static json_t *step_metrics(json_t *mq, int64_t step, int exact_train) {
    json_t *m = json_object(), *v;
    if ((v = series_at(mq, "loss", step, exact_train))) json_object_set(m, "train_loss", v);
    if ((v = series_at(mq, "eval_loss", step, 1))) json_object_set(m, "valid_loss", v);
    if ((v = series_at(mq, "train_accuracy", step, exact_train))) json_object_set(m, "train_mean_token_accuracy", v);
    if ((v = series_at(mq, "eval_accuracy", step, 1))) json_object_set(m, "valid_mean_token_accuracy", v);
    if ((v = series_at(mq, "rewards/accuracy", step, exact_train))) json_object_set(m, "train_mean_reward_accuracy", v);
    if ((v = series_at(mq, "eval_rewards/accuracy", step, 1))) json_object_set(m, "valid_mean_reward_accuracy", v);
    return m;
}

typedef struct timed {
    json_t *o;
    double t;
    int seq;
} timed;

static int timed_newest_first(const void *a, const void *b) {
    const timed *x = a, *y = b;
    if (x->t != y->t) return x->t < y->t ? 1 : -1;
    return y->seq - x->seq;
}

/* OpenAI's events: lorad's messages and a metrics event per logged step,
 * newest first; after = an event id, as OpenAI pages them. */
static void h_ft_events(ctx *c) {
    long long limit;
    const char *after;
    if (qint(c, "limit", 20, 1, 1000, &limit) || qtoken(c, "after", &after)) return;
    json_t *job = visible_job(c, c->p[0]), *evs = NULL, *mq = NULL, *data = NULL;
    timed *all = NULL;
    if (!job) return;
    lr_err e = {0};
    int64_t total = json_integer_value(json_object_get(json_object_get(job, "progress"), "total_steps"));
    evs = store_events_list(c->st, c->p[0], 0, 100000, &e);
    mq = evs ? store_metrics_query(c->st, c->p[0], -1, METRIC_NAMES, 0, &e) : NULL;
    if (!mq) {
        fail_err(c, &e);
        goto out;
    }
    json_t *loss = NULL, *sr, *ev;
    size_t i, n = 0;
    json_array_foreach(json_object_get(mq, "series"), i, sr) if (!strcmp(json_string_value(json_object_get(sr, "name")), "loss")) loss = sr;
    size_t cap = json_array_size(json_object_get(evs, "data")) + json_array_size(json_object_get(loss, "steps"));
    all = calloc(cap ? cap : 1, sizeof *all);
    if (!all) {
        fail(c, 500, "internal", NULL, "out of memory");
        goto out;
    }
    json_array_foreach(json_object_get(evs, "data"), i, ev) {
        relative_paths(c, ev, "message");
        all[n] = (timed){oai_event(ev), json_number_value(json_object_get(ev, "created_at")), (int)n};
        n++;
    }
    json_t *steps = json_object_get(loss, "steps"), *walls = json_object_get(loss, "wall_times");
    for (i = 0; i < json_array_size(steps); i++) {
        int64_t st = json_integer_value(json_array_get(steps, i));
        double t = json_number_value(json_array_get(walls, i));
        json_t *vals = step_metrics(mq, st, 1);
        all[n] = (timed){oai_metrics_event(st, total, t, vals), t, (int)n};
        json_decref(vals);
        n++;
    }
    qsort(all, n, sizeof *all, timed_newest_first);
    size_t from = 0;
    if (after) {
        from = n;
        for (i = 0; i < n; i++)
            if (!strcmp(json_string_value(json_object_get(all[i].o, "id")), after)) from = i + 1;
    }
    data = json_array();
    for (i = from; i < n && i < from + (size_t)limit; i++) json_array_append(data, all[i].o);
    set_json(c->rs, 200, json_pack("{s:s, s:o, s:b}", "object", "list", "data", data, "has_more",
                                   from + (size_t)limit < n));
out:
    for (i = 0; all && i < n; i++) json_decref(all[i].o);
    free(all);
    json_decref(mq);
    json_decref(evs);
    json_decref(job);
}

/* ---- fine-tuned models ---- */

/* Whether job j's result is still there: its adapter, or a full_sft run's
 * model (a DELETE of the fine-tuned model removes it). */
static int tuned_exists(ctx *c, json_t *j) {
    const char *id = json_string_value(json_object_get(j, "id"));
    json_t *mt = json_object_get(json_object_get(json_object_get(j, "spec"), "method"), "type");
    int full = json_is_string(mt) && !strcmp(json_string_value(mt), jobspec_method_name(METHOD_FULL_SFT));
    char p[1400];
    struct stat st;
    snprintf(p, sizeof p, "%s/runs/%s/%s", c->a->env.cfg->data_dir, id ? id : "",
             full ? "model.safetensors" : "adapter_model.safetensors");
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

static json_t *tuned_model_json(json_t *j) {
    /* owner as on registered models (lorad's field), owned_by as OpenAI's */
    return json_pack("{s:O, s:s, s:O, s:O, s:O, s:O, s:O}", "id", json_object_get(j, "fine_tuned_model"), "object",
                     "model", "created", json_object_get(j, "finished_at"), "owned_by", json_object_get(j, "user"),
                     "owner", json_object_get(j, "user"), "job", json_object_get(j, "id"), "base_model",
                     json_object_get(j, "model"));
}

/* GET /v1/models lists the fine-tuned models after the registered ones:
 * the caller's succeeded jobs (everyone's in team visibility), newest
 * first, up to 1000, whose result is still there. */
static void tuned_models_add(ctx *c, json_t *list) {
    lr_err e = {0};
    json_t *jobs = store_jobs_list(c->st, "succeeded", private_view(c) ? c->user.name : NULL, NULL, 1000, NULL, &e), *j;
    size_t i;
    json_array_foreach(json_object_get(jobs, "data"), i, j) {
        const char *mt = json_string_value(json_object_get(json_object_get(json_object_get(j, "spec"), "method"), "type"));
        if (!json_is_string(json_object_get(j, "fine_tuned_model")) || (mt && !strcmp(mt, "eval")) || !tuned_exists(c, j))
            continue;
        json_array_append_new(json_object_get(list, "data"), tuned_model_json(j));
    }
    json_decref(jobs);
}

/* GET or DELETE /v1/models/ft:...: 0 when name is no fine-tuned model's
 * (the caller goes on with registered models); else 1, answered. A delete
 * (owner or admin) removes the adapter (or full_sft model) from the run;
 * the job, its checkpoints and its other files stay. */
static int tuned_model(ctx *c, const char *name, int del) {
    char jid[64];
    int64_t step;
    if (!oai_parse_model(name, jid, sizeof jid, &step)) return 0;
    lr_err e = {0};
    json_t *j = store_job_get(c->st, jid, &e);
    const char *ft = json_string_value(json_object_get(j, "fine_tuned_model")),
               *owner = json_string_value(json_object_get(j, "user"));
    if (!j || step >= 0 || !ft || strcmp(ft, name) || !can_see(c, "job", jid, owner ? owner : "") || !tuned_exists(c, j)) {
        fail(c, 404, "model_not_found", "model", "the model '%s' does not exist", name);
    } else if (!del) {
        set_json(c->rs, 200, tuned_model_json(j));
    } else if (!c->user.admin && strcmp(owner ? owner : "", c->user.name)) {
        fail(c, 403, "forbidden", NULL, "model %s belongs to %s; only its owner or an admin can delete it", name,
             owner ? owner : "?");
    } else {
        static const char *const files[] = {"adapter_model.safetensors", "adapter_config.json", "model.safetensors"};
        char p[1400];
        for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
            snprintf(p, sizeof p, "%s/runs/%s/%s", c->a->env.cfg->data_dir, jid, files[i]);
            unlink(p);
        }
        if (store_event_add(c->st, jid, "info", "its fine-tuned model was deleted (the adapter files are gone)", &e))
            e.msg[0] = 0;
        set_json(c->rs, 200, json_pack("{s:s, s:s, s:b}", "id", name, "object", "model", "deleted", 1));
    }
    json_decref(j);
    return 1;
}

/* ---- chat and text completions ---- */

#define CHAT_MAX_MESSAGES 64
#define CHAT_MAX_TOKENS 1024

/* A message's content: a string or a list of {type: text, text} parts. */
static int content_text(json_t *v, lr_buf *b) {
    if (json_is_string(v)) return lr_buf_add(b, json_string_value(v), json_string_length(v));
    size_t i;
    json_t *p;
    if (!json_is_array(v)) return -1;
    json_array_foreach(v, i, p) {
        json_t *t = json_object_get(p, "text");
        if (!json_is_string(t) || lr_buf_add(b, json_string_value(t), json_string_length(t))) return -1;
    }
    return 0;
}

/* The model of a completion request: a base model (tuned 0), a fine-tuned
 * model (its job's adapter or full_sft model) or one of its checkpoints. */
typedef struct gen_model {
    trained t;
    char ckpt[1500];
    int tuned;
    const char *chat_template, *system_prompt;
} gen_model;

static int completion_model(ctx *c, const char *name, json_t **job, gen_model *gm) {
    char jid[64];
    int64_t step;
    lr_err e = {0};
    memset(gm, 0, sizeof *gm);
    if (!oai_parse_model(name, jid, sizeof jid, &step)) {
        if (visible_model(c, name, &e) || store_model_dir(c->st, name, gm->t.model_dir, sizeof gm->t.model_dir, &e)) {
            if (e.code == LR_E_NOTFOUND)
                fail(c, 404, "model_not_found", "model", "the model '%s' does not exist (GET /v1/models lists base "
                     "models; a fine-tuned one is ft:...:<job id>)", name);
            else fail_err(c, &e);
            return -1;
        }
        return 0;
    }
    *job = store_job_get(c->st, jid, &e);
    const char *owner = json_string_value(json_object_get(*job, "user"));
    char ft[1024];
    oai_model_name(json_string_value(json_object_get(*job, "model")), owner ? owner : "",
                   json_string_value(json_object_get(*job, "user_provided_suffix")), jid, ft, sizeof ft);
    size_t fl = strlen(ft);
    if (!*job || !can_see(c, "job", jid, owner ? owner : "") || strncmp(name, ft, fl) ||
        (name[fl] && step < 0)) {
        fail(c, 404, "model_not_found", "model", "the model '%s' does not exist", name);
        return -1;
    }
    json_t *spec = json_object_get(*job, "spec");
    gm->chat_template = json_string_value(json_object_get(spec, "chat_template"));
    gm->system_prompt = json_string_value(json_object_get(spec, "system_prompt"));
    gm->tuned = 1;
    snprintf(c->p[0], sizeof c->p[0], "%s", jid);
    if (step < 0 && !tuned_exists(c, *job) && !strcmp(json_string_value(json_object_get(*job, "status")), "succeeded")) {
        fail(c, 404, "model_not_found", "model", "the model '%s' was deleted", name);
        return -1;
    }
    if (step < 0) return trained_ready(c, *job, 0, &gm->t) ? 0 : -1;
    char done[1600];
    snprintf(gm->ckpt, sizeof gm->ckpt, "%s/runs/%s/checkpoints/checkpoint-%lld", c->a->env.cfg->data_dir, jid,
             (long long)step);
    snprintf(done, sizeof done, "%s/DONE", gm->ckpt);
    const char *base = json_string_value(json_object_get(*job, "model"));
    if (access(done, F_OK) || store_model_dir(c->st, base ? base : "", gm->t.model_dir, sizeof gm->t.model_dir, &e)) {
        fail(c, 404, "model_not_found", "model", "the checkpoint '%s' does not exist (any more)", name);
        return -1;
    }
    return 0;
}

/* The request's sampling fields into g; others (user, logprobs: false, ...)
 * are accepted and ignored as OpenAI's optional extras. */
static int completion_args(ctx *c, json_t *o, runner_gen *g, int *stream, int *usage) {
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v) {
        double x = 0;
        int bad = 0;
        if (json_is_null(v)) continue;
        if (!strcmp(k, "max_tokens") || !strcmp(k, "max_completion_tokens"))
            bad = body_number(c, v, k, 1, CHAT_MAX_TOKENS, 1, &x), g->max_new_tokens = (int)x;
        else if (!strcmp(k, "temperature")) bad = body_number(c, v, k, 0, 2, 0, &g->temperature);
        else if (!strcmp(k, "top_p")) {
            bad = body_number(c, v, k, 0, 1, 0, &g->top_p);
            if (!bad && g->top_p <= 0) bad = 1, fail(c, 400, "invalid_request", k, "top_p must be in (0, 1]");
        } else if (!strcmp(k, "seed")) bad = body_number(c, v, k, 0, 9007199254740992.0, 1, &x), g->seed = (long long)x;
        else if (!strcmp(k, "stop")) bad = body_stops(c, v, g);
        else if (!strcmp(k, "n")) {
            if (!json_is_integer(v) || json_integer_value(v) != 1)
                bad = 1, fail(c, 400, "invalid_request", k, "n must be 1: lorad answers with one choice");
        } else if (!strcmp(k, "stream")) {
            if (!json_is_boolean(v)) bad = 1, fail(c, 400, "invalid_request", k, "stream must be true or false");
            *stream = json_is_true(v);
        } else if (!strcmp(k, "stream_options")) {
            *usage = json_is_true(json_object_get(v, "include_usage"));
        }
        if (bad) return -1;
    }
    return 0;
}

/* A conversation that is more than [system..., user] goes to lora-worker
 * as a one-row JSONL file (its --prompts). */
static int write_messages(ctx *c, json_t *msgs, char *path, size_t cap, lr_err *e) {
    char dir[1100];
    snprintf(dir, sizeof dir, "%s/tmp", c->a->env.cfg->data_dir);
    if (lr_mkdirs(dir, e)) return -1;
    if (snprintf(path, cap, "%s/chat-XXXXXX.jsonl", dir) >= (int)cap)
        return lr_errp(e, LR_E_INVALID, NULL, "data directory path too long");
    int fd = mkstemps(path, 6);
    if (fd < 0) return lr_errp(e, LR_E_IO, NULL, "cannot create a temporary file: %s", strerror(errno));
    json_t *row = json_pack("{s:O}", "messages", msgs);
    char *txt = row ? jsonfmt_dumps(row, JSON_COMPACT) : NULL;
    json_decref(row);
    size_t n = txt ? strlen(txt) : 0;
    int bad = !txt || write(fd, txt, n) != (ssize_t)n || write(fd, "\n", 1) != 1;
    free(txt);
    close(fd);
    if (bad) {
        unlink(path);
        path[0] = 0;
        return lr_errp(e, LR_E_IO, NULL, "cannot write the conversation for lora-worker");
    }
    return 0;
}

static void generation_fail(ctx *c, int chat, lr_err *e) {
    path_to_name(e->msg, sizeof e->msg, c->a->env.cfg->data_dir, "<data_dir>");
    if (e->code == LR_E_BUSY) {
        fail(c, 429, "rate_limit_exceeded", NULL, "%s (max_generations)", e->msg);
        c->rs->retry_after = 1;
    } else if (e->code == LR_E_TIMEOUT) fail(c, 504, "timeout", NULL, "%s", e->msg);
    else if (e->code == LR_E_INVALID) fail(c, 400, "invalid_request", chat ? "messages" : "prompt", "%s", e->msg);
    else fail(c, 500, "generation_failed", NULL, "%s", e->msg);
}

/* A streamed completion: server-sent events written as the text is
 * generated (http.c calls sse_read for the body). */
typedef struct sse_state {
    runner_stream *st;
    char id[48], model[520], data_dir[1024];
    int64_t created;
    int chat, usage, ended;
    lr_buf out; /* events not yet sent, from out.data + sent */
    size_t sent;
} sse_state;

/* An error after the 200 went out: an event the SDKs raise as an error. */
static int sse_error(sse_state *s, lr_err *e) {
    path_to_name(e->msg, sizeof e->msg, s->data_dir, "<data_dir>");
    int status = e->code == LR_E_TIMEOUT ? 504 : 500;
    json_t *o = json_pack("{s:{s:s, s:s, s:n, s:s}}", "error", "message", e->msg, "type", oai_error_type(status),
                          "param", "code", status == 504 ? "timeout" : "generation_failed");
    char *t = o ? jsonfmt_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    int bad = !t || lr_buf_adds(&s->out, "data: ") || lr_buf_adds(&s->out, t) || lr_buf_adds(&s->out, "\n\n");
    free(t);
    return bad;
}

static long sse_read(void *ud, char *buf, size_t max) {
    sse_state *s = ud;
    while (s->sent == s->out.len && !s->ended) {
        s->out.len = s->sent = 0;
        const char *d;
        size_t n;
        json_t *gen = NULL;
        lr_err e = {0};
        int rc = runner_stream_next(s->st, &d, &n, &gen, &e), bad;
        if (rc == 0) bad = n && oai_sse_text(&s->out, s->chat, s->id, s->model, s->created, d, n);
        else if (rc == 1) bad = oai_sse_close(&s->out, s->chat, s->id, s->model, s->created, gen, s->usage);
        else bad = sse_error(s, &e);
        json_decref(gen);
        s->ended = rc != 0;
        if (bad) return -1;
    }
    size_t k = s->out.len - s->sent < max ? s->out.len - s->sent : max;
    memcpy(buf, s->out.data + s->sent, k);
    s->sent += k;
    return (long)k;
}

static void sse_done(void *ud) {
    sse_state *s = ud;
    runner_stream_free(s->st);
    lr_buf_free(&s->out);
    free(s);
}

static void completion_stream(ctx *c, int chat, const char *model, const runner_gen *g, int tuned, int usage) {
    lr_err e = {0};
    sse_state *s = calloc(1, sizeof *s);
    if (!s) {
        fail(c, 500, "internal", NULL, "out of memory");
        return;
    }
    lr_buf_init(&s->out, 1u << 20);
    if (runner_stream_start(c->a->env.runner, g, tuned, &s->st, &e)) {
        generation_fail(c, chat, &e);
        sse_done(s);
        return;
    }
    store_new_id(chat ? "chatcmpl" : "cmpl", s->id, sizeof s->id);
    snprintf(s->model, sizeof s->model, "%s", model);
    snprintf(s->data_dir, sizeof s->data_dir, "%s", c->a->env.cfg->data_dir);
    s->created = (int64_t)time(NULL);
    s->chat = chat;
    s->usage = usage;
    if (oai_sse_open(&s->out, chat, s->id, s->model, s->created)) {
        fail(c, 500, "internal", NULL, "out of memory");
        sse_done(s);
        return;
    }
    free(c->rs->body);
    c->rs->body = NULL;
    c->rs->body_len = 0;
    c->rs->status = 200;
    c->rs->content_type = "text/event-stream";
    c->rs->read = sse_read;
    c->rs->read_done = sse_done;
    c->rs->read_ud = s;
}

static void completion(ctx *c, int chat) {
    json_t *o = body_object(c), *job = NULL, *out = NULL, *msgs = NULL;
    lr_buf user, sys;
    lr_buf_init(&user, GEN_MAX_PROMPT + 1);
    lr_buf_init(&sys, GEN_MAX_SYSTEM + 1);
    char prompts[1200] = "";
    lr_err e = {0};
    if (!o) goto out;
    const char *model;
    if (body_string(c, json_object_get(o, "model"), "model", 512, 0, &model)) goto out;
    runner_gen g = {.max_new_tokens = 256, .temperature = 1.0, .top_p = 1.0};
    int stream = 0, usage = 0;
    if (completion_args(c, o, &g, &stream, &usage)) goto out;
    if (chat) {
        json_t *in = json_object_get(o, "messages"), *m;
        size_t i, n = json_array_size(in), last_user = (size_t)-1;
        if (!json_is_array(in) || !n || n > CHAT_MAX_MESSAGES) {
            fail(c, 400, "invalid_request", "messages", "messages must be a list of 1..%d messages", CHAT_MAX_MESSAGES);
            goto out;
        }
        msgs = json_array();
        int simple = 1;
        json_array_foreach(in, i, m) {
            const char *role = json_string_value(json_object_get(m, "role"));
            char param[48];
            snprintf(param, sizeof param, "messages[%zu]", i);
            int is_sys = role && (!strcmp(role, "system") || !strcmp(role, "developer"));
            if (!role || (!is_sys && strcmp(role, "user") && strcmp(role, "assistant"))) {
                fail(c, 400, "invalid_request", param, "%s.role must be system, developer, user or assistant", param);
                goto out;
            }
            lr_buf b;
            lr_buf_init(&b, GEN_MAX_PROMPT + 1);
            if (content_text(json_object_get(m, "content"), &b) || lr_buf_add(&b, "", 1)) {
                lr_buf_free(&b);
                fail(c, 400, "invalid_request", param, "%s.content must be text (a string or text parts) of at most "
                     "%d bytes", param, GEN_MAX_PROMPT);
                goto out;
            }
            int long_ = 0;
            if (is_sys) long_ = (sys.len && lr_buf_adds(&sys, "\n")) || lr_buf_adds(&sys, b.data);
            else if (!strcmp(role, "user")) {
                last_user = i;
                user.len = 0;
                long_ = lr_buf_adds(&user, b.data);
            }
            if (long_) {
                lr_buf_free(&b);
                fail(c, 400, "invalid_request", param, "the system text or the last user message is over %d bytes",
                     GEN_MAX_PROMPT);
                goto out;
            }
            simple &= is_sys || (!strcmp(role, "user") && i == n - 1);
            json_array_append_new(msgs, json_pack("{s:s, s:s}", "role", is_sys ? "system" : role, "content", b.data));
            lr_buf_free(&b);
        }
        if (last_user != n - 1) {
            fail(c, 400, "invalid_request", "messages", "the last message must be the user's, to be answered");
            goto out;
        }
        if (!simple && write_messages(c, msgs, prompts, sizeof prompts, &e)) {
            fail_err(c, &e);
            goto out;
        }
        if (lr_buf_add(&user, "", 1) || lr_buf_add(&sys, "", 1)) {
            fail(c, 400, "invalid_request", "messages", "the conversation is too long");
            goto out;
        }
        g.prompt = user.data;
        g.system = sys.len > 1 ? sys.data : NULL;
        if (prompts[0]) g.prompts_file = prompts, g.system = NULL;
    } else {
        json_t *p = json_object_get(o, "prompt");
        if (json_is_array(p) && json_array_size(p) == 1) p = json_array_get(p, 0);
        if (body_string(c, p, "prompt", GEN_MAX_PROMPT, 0, &g.prompt)) goto out;
    }
    gen_model gm;
    if (completion_model(c, model, &job, &gm) || !runner_ready(c)) goto out;
    g.model_dir = gm.t.model_dir;
    if (gm.ckpt[0]) g.adapter_dir = gm.ckpt;
    else if (gm.t.full) g.tuned_model_dir = gm.t.run_dir;
    else g.adapter_dir = gm.t.run_dir;
    /* a completion continues the text as is; a chat renders the model's template */
    g.chat_template = chat ? (gm.chat_template ? gm.chat_template : "auto") : "plain";
    if (chat && !g.system && !g.prompts_file && gm.system_prompt && *gm.system_prompt) g.system = gm.system_prompt;
    if (stream) {
        completion_stream(c, chat, model, &g, gm.tuned, usage);
        goto out;
    }
    if (runner_generate_one(c->a->env.runner, &g, gm.tuned, &out, &e)) {
        generation_fail(c, chat, &e);
        goto out;
    }
    char id[48];
    store_new_id(chat ? "chatcmpl" : "cmpl", id, sizeof id);
    set_json(c->rs, 200, oai_completion(chat, id, model, (int64_t)time(NULL), out));
out:
    if (prompts[0]) unlink(prompts);
    lr_buf_free(&user);
    lr_buf_free(&sys);
    json_decref(msgs);
    json_decref(out);
    json_decref(job);
    json_decref(o);
}

static void h_chat_completions(ctx *c) { completion(c, 1); }
static void h_completions(ctx *c) { completion(c, 0); }

/* ---- static files ---- */

static const char *mime(const char *path) {
    static const char *const m[][2] = {
        {".html", "text/html; charset=utf-8"}, {".js", "text/javascript"}, {".mjs", "text/javascript"},
        {".css", "text/css"}, {".json", "application/json"}, {".svg", "image/svg+xml"}, {".png", "image/png"},
        {".ico", "image/x-icon"}, {".txt", "text/plain; charset=utf-8"}, {".map", "application/json"},
        {".woff2", "font/woff2"},
    };
    size_t l = strlen(path);
    for (size_t i = 0; i < sizeof m / sizeof m[0]; i++) {
        size_t el = strlen(m[i][0]);
        if (l > el && !strcmp(path + l - el, m[i][0])) return m[i][1];
    }
    return "application/octet-stream";
}

static void serve_static(ctx *c) {
    const char *p = c->rq->path;
    /* Refuse any ".." segment and anything odd before touching the disk;
     * realpath below is the second line. */
    if (p[0] != '/' || strstr(p, "/..") || strchr(p, '\\') || strstr(p, "//")) {
        fail(c, 404, "not_found", NULL, "no such file");
        return;
    }
    char want[PATH_MAX + 64];
    const char *web = c->a->env.cfg->web_dir;
    snprintf(want, sizeof want, "%s%s%s", web, p, p[strlen(p) - 1] == '/' ? "index.html" : "");
    char *real = realpath(want, NULL), *root = realpath(web, NULL);
    size_t rl = root ? strlen(root) : 0;
    int fd = -1;
    struct stat st;
    if (real && root && !strncmp(real, root, rl) && real[rl] == '/') fd = open(real, O_RDONLY | O_CLOEXEC);
    if (fd >= 0 && (fstat(fd, &st) || !S_ISREG(st.st_mode))) {
        close(fd);
        fd = -1;
    }
    if (fd < 0) fail(c, 404, "not_found", NULL, "no such file: %s", p);
    else {
        c->rs->status = 200;
        c->rs->fd = fd;
        c->rs->fd_size = (uint64_t)st.st_size;
        c->rs->content_type = mime(real);
    }
    free(real);
    free(root);
}
