/* api: lorad's REST API, independent of the HTTP server.
 *
 * A request (method, path, query, body, Authorization) becomes a response
 * (status + JSON, or an open file to stream). The route table below is the
 * one list of routes; tests compare it with proto/openapi.yaml. Every /v1
 * route needs a bearer token; /healthz and /metrics do not; other GET paths
 * serve the dashboard from web_dir. Errors are
 * {"error":{"code","message","param"}} with a 4xx/5xx status. api_handle is
 * called from many HTTP threads at once: each uses its own store connection
 * (env.db) and the api's counters are atomic. */
#ifndef LR_API_H
#define LR_API_H

#include <stddef.h>
#include <stdint.h>
#include "common/err.h"
#include "daemon/config.h"
#include "daemon/runner.h"
#include "daemon/store.h"

typedef struct api_env {
    const lorad_config *cfg;
    /* The calling thread's store connection (opened on first use). */
    store *(*db)(void *db_ud, lr_err *err);
    void *db_ud;
    /* Wakes the scheduler (uv_async_send); may be NULL in tests. */
    void (*wake)(void *wake_ud);
    void *wake_ud;
    /* Runs lora-worker for generate and merge; NULL: those routes answer 503. */
    runner *runner;
} api_env;

typedef struct api_req {
    const char *method, *path;   /* path without the query string, percent-decoded */
    /* Query parameter lookup (NULL when absent). */
    const char *(*query)(void *qctx, const char *key);
    /* Calls fn for every query parameter until it returns non-zero (for
     * keys not known in advance: metadata[k]=v); may be NULL. */
    void (*query_each)(void *qctx, int (*fn)(void *ud, const char *key, const char *value), void *ud);
    void *qctx;
    const char *body;
    size_t body_len;
    const char *authorization, *content_type;
    /* POST /v1/datasets from the HTTP layer: the body, already streamed to
     * disk and validated (body is then empty); NULL: use body. */
    struct upload *upload;
} api_req;

typedef struct api_resp {
    int status;
    char *body;                  /* malloc'd, body_len bytes */
    size_t body_len;
    const char *content_type;
    int fd;                      /* >= 0: stream this file of fd_size bytes instead */
    uint64_t fd_size;
    char disposition[300];       /* Content-Disposition value or "" */
    int retry_after;             /* > 0: a Retry-After header of this many seconds (429) */
    /* set: the body is written as it is produced (server-sent events):
     * read blocks for the next bytes (at most max) and returns how many,
     * 0 at the end, -1 to cut the response; read_done frees read_ud, once,
     * whether or not the body was sent */
    long (*read)(void *ud, char *buf, size_t max);
    void (*read_done)(void *ud);
    void *read_ud;
} api_resp;

typedef struct api api;

api *api_new(const api_env *env);
void api_free(api *a);
/* Always fills rs (status 500 with a JSON error when something fails). */
void api_handle(api *a, const api_req *rq, api_resp *rs);
void api_resp_free(api_resp *rs);
/* The largest body this method + path accepts (uploads are larger). */
size_t api_body_limit(const api *a, const char *method, const char *path);
/* Checked from the headers alone, before any body is read: the route
 * exists and takes this method, and its token is valid. 0: go on (user
 * holds the token's user for routes that need one, else ""); -1: rs holds
 * the answer (401, 404, 405, 503), to send at once. */
int api_precheck(api *a, const char *method, const char *path, const char *authorization, char *user, size_t cap,
                 api_resp *rs);
/* 1 for the route whose body is streamed to disk (api_req.upload). */
int api_streams_body(const char *method, const char *path);
/* A slot for one more upload of this user (max_uploads_per_user): 0, or -1
 * with rs holding a 429; every 0 is paired with a release. */
int api_upload_acquire(api *a, const char *user, api_resp *rs);
void api_upload_release(api *a, const char *user);
/* Counts a request the HTTP layer refused before routing (413, 503). */
void api_count_refused(api *a, int status);

/* The route table: n routes, each "METHOD" and "/path/{param}". */
int api_route_count(void);
const char *api_route_method(int i);
const char *api_route_path(int i);

#endif
