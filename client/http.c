#include "client/http.h"

#include <curl/curl.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/buf.h"
#include "proto/jsonfmt.h"

#define CONNECT_TIMEOUT_S 10L
#define REQUEST_TIMEOUT_S 120L
#define STALL_TIMEOUT_S 120L

typedef struct sink {
    CURL *curl;
    lr_buf body;          /* the JSON answer, or an error answer of a download */
    FILE *file;           /* download target, NULL for JSON */
    int to_buf;           /* set once the status is known to be an error */
    int write_failed;
    int64_t written;
    http_progress_fn fn;
    void *ctx;
} sink;

int http_init(http_client *h, const char *base, const char *token, lr_err *err) {
    memset(h, 0, sizeof *h);
    h->curl = curl_easy_init();
    if (!h->curl) return lr_errp(err, LR_E_NOMEM, "", "cannot initialise libcurl");
    snprintf(h->base, sizeof h->base, "%s", base);
    snprintf(h->token, sizeof h->token, "%s", token ? token : "");
    return 0;
}

void http_free(http_client *h) {
    if (h->curl) curl_easy_cleanup(h->curl);
    json_decref(h->error_body);
    memset(h, 0, sizeof *h);
}

int http_exit_code(const http_client *h) { return h->fail ? h->fail : 1; }

void http_escape(const char *s, char *out, size_t cap) {
    static const char hex[] = "0123456789ABCDEF";
    size_t n = 0;
    if (!cap) return;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        int plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
                    c == '_' || c == '.' || c == '~';
        if (n + (plain ? 1 : 3) + 1 > cap) break;
        if (plain) {
            out[n++] = (char)c;
        } else {
            out[n++] = '%';
            out[n++] = hex[c >> 4];
            out[n++] = hex[c & 15];
        }
    }
    out[n] = 0;
}

void http_error_message(long status, const char *body, size_t len, lr_err *err) {
    json_t *j = body && len ? json_loadb(body, len, 0, NULL) : NULL;
    json_t *e = json_object_get(j, "error");
    const char *msg = json_string_value(json_object_get(e, "message"));
    if (!msg && json_is_string(e)) msg = json_string_value(e);
    if (msg && *msg) {
        const char *param = json_string_value(json_object_get(e, "param"));
        lr_errp(err, LR_E_INVALID, param ? param : "", "%s", msg);
    } else {
        /* not lorad's error shape (a proxy's page, an old server): its first line */
        size_t n = 0;
        while (body && n < len && n < 200 && body[n] != '\n' && body[n] != '\r') n++;
        if (n)
            lr_errp(err, LR_E_INVALID, "", "HTTP %ld: %.*s", status, (int)n, body);
        else
            lr_errp(err, LR_E_INVALID, "", "HTTP %ld from the server", status);
    }
    json_decref(j);
}

static size_t on_write(char *p, size_t sz, size_t nm, void *ud) {
    sink *s = ud;
    size_t n = sz * nm;
    if (s->file && !s->to_buf) {
        long code = 0;
        curl_easy_getinfo(s->curl, CURLINFO_RESPONSE_CODE, &code);
        if (code >= 400) s->to_buf = 1;
    }
    if (s->file && !s->to_buf) {
        if (fwrite(p, 1, n, s->file) != n) {
            s->write_failed = 1;
            return 0;
        }
        s->written += (int64_t)n;
        return n;
    }
    if (lr_buf_add(&s->body, p, n)) {
        s->write_failed = 1;
        return 0;
    }
    return n;
}

static int on_progress(void *ud, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow) {
    sink *s = ud;
    if (s->fn) {
        if (ultotal > 0)
            s->fn(s->ctx, (int64_t)ulnow, (int64_t)ultotal);
        else
            s->fn(s->ctx, (int64_t)dlnow, (int64_t)dltotal);
    }
    return 0;
}

/* The options every request shares; the caller adds its body options after. */
static struct curl_slist *setup(http_client *h, const char *method, const char *path, sink *s, char *errbuf,
                                int long_transfer, int json_body) {
    CURL *c = h->curl;
    char url[2048], auth[600];
    curl_easy_reset(c);
    snprintf(url, sizeof url, "%s%s", h->base, path);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "lora/0.1");
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, CONNECT_TIMEOUT_S);
    if (long_transfer) {
        curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
        curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, STALL_TIMEOUT_S);
    } else {
        curl_easy_setopt(c, CURLOPT_TIMEOUT, REQUEST_TIMEOUT_S);
    }
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, s);
    if (s->fn) {
        curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
        curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
        curl_easy_setopt(c, CURLOPT_XFERINFODATA, s);
    }
    struct curl_slist *hd = curl_slist_append(NULL, "Accept: application/json");
    if (json_body) hd = curl_slist_append(hd, "Content-Type: application/json");
    /* curl would send "Expect: 100-continue" for large bodies: a round trip for nothing */
    hd = curl_slist_append(hd, "Expect:");
    if (h->token[0]) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", h->token);
        hd = curl_slist_append(hd, auth);
    }
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hd);
    return hd;
}

/* Runs the request and turns the outcome into 0 / -1 + err + h->fail. */
static int finish(http_client *h, CURLcode rc, sink *s, const char *errbuf, json_t **out, lr_err *err) {
    json_decref(h->error_body);
    h->error_body = NULL;
    h->status = 0;
    h->fail = 0;
    if (out) *out = NULL;
    if (rc != CURLE_OK) {
        if (s->write_failed) {
            h->fail = HTTP_FAIL_SERVER;
            return lr_errp(err, LR_E_IO, "", s->file ? "cannot write the downloaded file: %s"
                                                     : "the server's answer is larger than %s",
                           s->file ? strerror(errno) : "64 MiB");
        }
        h->fail = HTTP_FAIL_CONNECT;
        return lr_errp(err, LR_E_IO, "", "cannot connect to %s: %s", h->base, errbuf[0] ? errbuf : curl_easy_strerror(rc));
    }
    curl_easy_getinfo(h->curl, CURLINFO_RESPONSE_CODE, &h->status);
    /* the server's clock, for times measured against its started_at */
    struct curl_header *date = NULL;
    h->server_date = 0;
    if (curl_easy_header(h->curl, "Date", 0, CURLH_HEADER, -1, &date) == CURLHE_OK) {
        time_t t = curl_getdate(date->value, NULL);
        if (t > 0) h->server_date = (double)t;
    }
    if (h->status >= 400 || h->status < 200) {
        h->fail = HTTP_FAIL_SERVER;
        http_error_message(h->status, s->body.data, s->body.len, err);
        h->error_body = s->body.len ? json_loadb(s->body.data, s->body.len, 0, NULL) : NULL;
        return -1;
    }
    if (out && !s->file) {
        if (!s->body.len) {
            *out = json_object(); /* 204 and friends */
            return 0;
        }
        json_error_t je;
        *out = json_loadb(s->body.data, s->body.len, 0, &je);
        if (!*out) {
            h->fail = HTTP_FAIL_SERVER;
            return lr_errp(err, LR_E_INVALID, "", "the server's answer is not JSON (%s): is %s a lorad server?",
                           je.text, h->base);
        }
    }
    return 0;
}

int http_json(http_client *h, const char *method, const char *path, const json_t *body, json_t **out,
              lr_err *err) {
    sink s = {.curl = h->curl};
    char errbuf[CURL_ERROR_SIZE] = {0};
    char *text = NULL;
    lr_buf_init(&s.body, HTTP_MAX_JSON);
    struct curl_slist *hd = setup(h, method, path, &s, errbuf, 0, body != NULL);
    if (body) {
        text = jsonfmt_dumps(body, JSON_COMPACT);
        if (!text) {
            curl_slist_free_all(hd);
            return lr_errp(err, LR_E_NOMEM, "", "out of memory");
        }
        curl_easy_setopt(h->curl, CURLOPT_POSTFIELDS, text);
        curl_easy_setopt(h->curl, CURLOPT_POSTFIELDSIZE, (long)strlen(text));
    } else if (!strcmp(method, "POST")) {
        curl_easy_setopt(h->curl, CURLOPT_POSTFIELDS, "");
        curl_easy_setopt(h->curl, CURLOPT_POSTFIELDSIZE, 0L);
    }
    CURLcode rc = curl_easy_perform(h->curl);
    int r = finish(h, rc, &s, errbuf, out, err);
    curl_slist_free_all(hd);
    free(text);
    lr_buf_free(&s.body);
    return r;
}

int http_upload(http_client *h, const char *path, const char *file, const char *name, http_progress_fn fn,
                void *ctx, json_t **out, lr_err *err) {
    sink s = {.curl = h->curl, .fn = fn, .ctx = ctx};
    char errbuf[CURL_ERROR_SIZE] = {0};
    if (access(file, R_OK) != 0) return lr_errp(err, LR_E_INVALID, "", "%s: %s", file, strerror(errno));
    lr_buf_init(&s.body, HTTP_MAX_JSON);
    struct curl_slist *hd = setup(h, "POST", path, &s, errbuf, 1, 0);
    curl_mime *mime = curl_mime_init(h->curl);
    curl_mimepart *part = curl_mime_addpart(mime);
    curl_mime_name(part, "file");
    curl_mime_filedata(part, file);
    if (name) curl_mime_filename(part, name);
    curl_easy_setopt(h->curl, CURLOPT_MIMEPOST, mime);
    CURLcode rc = curl_easy_perform(h->curl);
    int r = finish(h, rc, &s, errbuf, out, err);
    curl_mime_free(mime);
    curl_slist_free_all(hd);
    lr_buf_free(&s.body);
    return r;
}

int http_download(http_client *h, const char *path, const char *dest, http_progress_fn fn, void *ctx,
                  int64_t *bytes, lr_err *err) {
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.part", dest);
    FILE *f = fopen(tmp, "wb");
    if (!f) return lr_errp(err, LR_E_IO, "", "%s: %s", tmp, strerror(errno));
    sink s = {.curl = h->curl, .file = f, .fn = fn, .ctx = ctx};
    char errbuf[CURL_ERROR_SIZE] = {0};
    lr_buf_init(&s.body, 1u << 20);
    struct curl_slist *hd = setup(h, "GET", path, &s, errbuf, 1, 0);
    CURLcode rc = curl_easy_perform(h->curl);
    int r = finish(h, rc, &s, errbuf, NULL, err);
    if (fclose(f) && !r) r = lr_errp(err, LR_E_IO, "", "%s: %s", tmp, strerror(errno));
    if (!r && rename(tmp, dest)) r = lr_errp(err, LR_E_IO, "", "%s: %s", dest, strerror(errno));
    if (r) unlink(tmp);
    if (bytes) *bytes = s.written;
    curl_slist_free_all(hd);
    lr_buf_free(&s.body);
    return r;
}
