/* http: the lora CLI's libcurl client of lorad's REST API.
 *
 * Every call returns 0 on a 2xx answer and -1 otherwise, with err holding a
 * message a user can act on: the server's own words for an error answer
 * ({"error":{"message":...}}), or why the server could not be reached. The
 * client remembers which of the two it was (http_exit_code), because the CLI's
 * exit status tells them apart: 2 the server said no, 3 cannot connect. */
#ifndef LR_CLIENT_HTTP_H
#define LR_CLIENT_HTTP_H

#include <jansson.h>
#include <stdint.h>
#include "common/err.h"

#define HTTP_MAX_JSON (64u << 20)

/* Progress of an upload or a download: bytes done of total (0 = unknown). */
typedef void (*http_progress_fn)(void *ctx, int64_t done, int64_t total);

typedef struct http_client {
    void *curl;               /* CURL *, reused so connections are kept alive */
    char base[512];
    char token[512];
    long status;              /* HTTP status of the last answer, 0 when none */
    int fail;                 /* 0, HTTP_FAIL_SERVER or HTTP_FAIL_CONNECT */
    json_t *error_body;       /* the last error answer's JSON, or NULL */
    double server_date;       /* the last answer's Date header (Unix seconds, whole); 0 when none */
} http_client;

enum { HTTP_FAIL_SERVER = 2, HTTP_FAIL_CONNECT = 3 };

/* base: "http://host:port" (no trailing slash); token may be "". */
int http_init(http_client *h, const char *base, const char *token, lr_err *err) LR_WARN_UNUSED;
void http_free(http_client *h);

/* method "GET", "POST", "DELETE"; path starts with '/' and carries its query;
 * body may be NULL; *out (may be NULL) gets the answer's JSON. */
int http_json(http_client *h, const char *method, const char *path, const json_t *body, json_t **out,
              lr_err *err) LR_WARN_UNUSED;
/* Uploads a file as the multipart/form-data part "file" with POST; name
 * (when non-NULL) replaces the file name the server records. */
int http_upload(http_client *h, const char *path, const char *file, const char *name, http_progress_fn fn,
                void *ctx, json_t **out, lr_err *err) LR_WARN_UNUSED;
/* GETs path into the file dest (written beside it, renamed when complete). */
int http_download(http_client *h, const char *path, const char *dest, http_progress_fn fn, void *ctx,
                  int64_t *bytes, lr_err *err) LR_WARN_UNUSED;

/* The exit status for the last failure: 2 or 3 (1 when there was none). */
int http_exit_code(const http_client *h);

/* Builds the message of an error answer: the server's "error.message"
 * when the body is lorad's error JSON, else "HTTP <status>: <first line>". */
void http_error_message(long status, const char *body, size_t len, lr_err *err);

/* Percent-encodes s for a URL path segment or query value. */
void http_escape(const char *s, char *out, size_t cap);

#endif
