#include "daemon/http.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/buf.h"
#include "daemon/upload.h"

/* A connection while it waits for a request's headers (header_timeout_s). */
typedef struct hconn {
    struct hconn *prev, *next;
    int fd;
    int waiting;         /* for headers: since counts */
    struct timespec since;
} hconn;

struct http_server {
    struct MHD_Daemon *d;
    api *a;
    const lorad_config *cfg;
    int port;
    pthread_mutex_t mu;  /* conns */
    hconn *conns;
    pthread_t watchdog;
    int watching, stop;
    pthread_cond_t wake;
};

static pthread_key_t store_key;
static pthread_once_t store_once = PTHREAD_ONCE_INIT;

static void store_destroy(void *p) { store_close(p); }
static void store_key_init(void) { pthread_key_create(&store_key, store_destroy); }

store *http_thread_store(void *db_path, lr_err *err) {
    pthread_once(&store_once, store_key_init);
    store *st = pthread_getspecific(store_key);
    if (st) return st;
    if (store_open(db_path, &st, err)) return NULL;
    pthread_setspecific(store_key, st);
    return st;
}

typedef struct req_state {
    lr_buf body;
    int too_big;         /* 1: over the limit while arriving; 2: answered at once */
    uint64_t received;
    upload *up;
    char user[64];       /* holds an upload slot when up */
} req_state;

static const char *query_get(void *conn, const char *key) {
    return MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, key);
}

typedef struct query_iter {
    int (*fn)(void *ud, const char *key, const char *value);
    void *ud;
} query_iter;

static enum MHD_Result query_one(void *cls, enum MHD_ValueKind kind, const char *key, const char *value) {
    (void)kind;
    query_iter *it = cls;
    return it->fn(it->ud, key, value ? value : "") ? MHD_NO : MHD_YES;
}

static void query_each(void *conn, int (*fn)(void *ud, const char *key, const char *value), void *ud) {
    query_iter it = {fn, ud};
    MHD_get_connection_values(conn, MHD_GET_ARGUMENT_KIND, query_one, &it);
}

/* A body written as it is produced (api_resp.read). */
typedef struct body_reader {
    long (*read)(void *ud, char *buf, size_t max);
    void (*done)(void *ud);
    void *ud;
} body_reader;

static ssize_t body_read(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    body_reader *br = cls;
    long n = br->read(br->ud, buf, max);
    return n > 0 ? (ssize_t)n : n == 0 ? MHD_CONTENT_READER_END_OF_STREAM : MHD_CONTENT_READER_END_WITH_ERROR;
}

static void body_done(void *cls) {
    body_reader *br = cls;
    br->done(br->ud);
    free(br);
}

static enum MHD_Result send_resp(struct MHD_Connection *conn, api_resp *rs) {
    struct MHD_Response *r;
    body_reader *br = rs->read ? malloc(sizeof *br) : NULL;
    if (br) {
        *br = (body_reader){rs->read, rs->read_done, rs->read_ud};
        /* MHD calls body_read in this connection's thread, which the read
         * blocks as a generation always has; body_done runs once, even when
         * the client is gone */
        r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, body_read, br, body_done);
        if (r) rs->read = NULL, rs->read_done = NULL, rs->read_ud = NULL;
        else free(br);
    } else if (rs->read) {
        r = NULL;
    } else if (rs->fd >= 0) {
        r = MHD_create_response_from_fd64(rs->fd_size, rs->fd);
        if (r) rs->fd = -1; /* MHD owns it now */
    } else {
        r = MHD_create_response_from_buffer(rs->body_len, rs->body, MHD_RESPMEM_MUST_FREE);
        if (r) rs->body = NULL;
    }
    if (!r) {
        api_resp_free(rs);
        return MHD_NO;
    }
    if (rs->content_type) MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, rs->content_type);
    if (rs->disposition[0]) MHD_add_response_header(r, "Content-Disposition", rs->disposition);
    char retry[16];
    if (rs->retry_after > 0 && snprintf(retry, sizeof retry, "%d", rs->retry_after) > 0)
        MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, retry);
    MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
    MHD_add_response_header(r, "Cache-Control", "no-store");
    enum MHD_Result ret = MHD_queue_response(conn, (unsigned)rs->status, r);
    MHD_destroy_response(r);
    api_resp_free(rs);
    return ret;
}

static enum MHD_Result refuse(struct MHD_Connection *conn, http_server *s, int status, const char *msg) {
    api_resp rs = {.status = status, .fd = -1, .content_type = "application/json"};
    char *b = NULL;
    json_t *o = json_pack("{s:{s:s, s:s, s:n}}", "error", "code", status == 413 ? "too_large" : "invalid_request",
                          "message", msg, "param");
    if (o) b = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (!b) return MHD_NO;
    rs.body = b;
    rs.body_len = strlen(b);
    api_count_refused(s->a, status);
    return send_resp(conn, &rs);
}

static void since_now(http_server *s, hconn *h, int waiting) {
    if (!h) return;
    pthread_mutex_lock(&s->mu);
    clock_gettime(CLOCK_MONOTONIC, &h->since);
    h->waiting = waiting;
    pthread_mutex_unlock(&s->mu);
}

static hconn *conn_hc(struct MHD_Connection *conn) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci ? ci->socket_context : NULL;
}

static enum MHD_Result header_count(void *cls, enum MHD_ValueKind kind, const char *key, const char *value) {
    (void)kind, (void)value;
    int *n = cls;
    if (!strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH)) n[0]++;
    else if (!strcasecmp(key, MHD_HTTP_HEADER_TRANSFER_ENCODING)) n[1]++;
    return MHD_YES;
}

/* The headers have arrived: everything that can be refused from them alone
 * is refused now, before a byte of the body is read or stored. */
static enum MHD_Result on_headers(struct MHD_Connection *conn, http_server *s, const char *url, const char *method,
                                  req_state *rq) {
    int n[2] = {0, 0};
    MHD_get_connection_values(conn, MHD_HEADER_KIND, header_count, n);
    /* Two lengths, or a length beside chunked encoding, is how requests are
     * smuggled past a proxy that reads them differently. */
    if (n[0] > 1 || (n[0] && n[1])) {
        rq->too_big = 2;
        return refuse(conn, s, 400, n[0] > 1 ? "the request has more than one Content-Length header"
                                             : "the request has both Content-Length and Transfer-Encoding");
    }
    size_t limit = api_body_limit(s->a, method, url);
    const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    unsigned long long len = cl ? strtoull(cl, NULL, 10) : 0;
    if (len > limit) {
        char msg[128];
        snprintf(msg, sizeof msg, "the request body is over the limit of %zu bytes", limit);
        rq->too_big = 2;
        return refuse(conn, s, 413, msg);
    }
    if (len == 0 && !n[1]) return MHD_YES; /* no body: the handler checks everything */
    api_resp rs;
    const char *auth = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (api_precheck(s->a, method, url, auth, rq->user, sizeof rq->user, &rs)) {
        rq->too_big = 2;
        return send_resp(conn, &rs);
    }
    if (!api_streams_body(method, url)) return MHD_YES;
    if (api_upload_acquire(s->a, rq->user, &rs)) {
        rq->too_big = 2;
        return send_resp(conn, &rs);
    }
    char tmp[1100];
    lr_err e = {0};
    if (lr_pathf(tmp, sizeof tmp, "%s/tmp", s->cfg->data_dir) ||
        upload_open(tmp, MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE),
                    query_get(conn, "filename"), &rq->up, &e)) {
        api_upload_release(s->a, rq->user);
        rq->too_big = 2;
        return refuse(conn, s, 500, e.msg[0] ? e.msg : "cannot store the upload");
    }
    return MHD_YES;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_data_size,
                                  void **con_cls) {
    (void)version;
    http_server *s = cls;
    req_state *rq = *con_cls;
    if (!rq) {
        since_now(s, conn_hc(conn), 0);
        rq = calloc(1, sizeof *rq);
        if (!rq) return MHD_NO;
        lr_buf_init(&rq->body, api_body_limit(s->a, method, url));
        *con_cls = rq;
        return on_headers(conn, s, url, method, rq);
    }
    if (*upload_data_size) {
        rq->received += *upload_data_size;
        if (!rq->too_big && rq->up && rq->received <= rq->body.max) upload_feed(rq->up, upload_data, *upload_data_size);
        else if (!rq->too_big && rq->up) rq->too_big = 1;
        else if (!rq->too_big && lr_buf_add(&rq->body, upload_data, *upload_data_size)) rq->too_big = 1;
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (rq->too_big == 2) return MHD_YES; /* answered already */
    if (rq->too_big) {
        char msg[128];
        snprintf(msg, sizeof msg, "the request body is over the limit of %zu bytes", rq->body.max);
        return refuse(conn, s, 413, msg);
    }
    api_req ar = {
        .method = method,
        .path = url,
        .query = (const char *(*)(void *, const char *))query_get,
        .query_each = query_each,
        .qctx = conn,
        .body = rq->body.data,
        .body_len = rq->body.len,
        .authorization = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION),
        .content_type = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE),
        .upload = rq->up,
    };
    api_resp rs;
    api_handle(s->a, &ar, &rs);
    return send_resp(conn, &rs);
}

static void on_done(void *cls, struct MHD_Connection *conn, void **con_cls, enum MHD_RequestTerminationCode toe) {
    (void)toe;
    http_server *s = cls;
    req_state *rq = *con_cls;
    since_now(s, conn_hc(conn), 1); /* a kept-alive connection now waits for the next request's headers */
    if (rq) {
        if (rq->up) {
            upload_free(rq->up);
            api_upload_release(s->a, rq->user);
        }
        lr_buf_free(&rq->body);
        free(rq);
        *con_cls = NULL;
    }
}

static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe) {
    http_server *s = cls;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        hconn *h = calloc(1, sizeof *h);
        if (!h || !ci) {
            free(h);
            *socket_context = NULL;
            return;
        }
        h->fd = ci->connect_fd;
        h->waiting = 1;
        clock_gettime(CLOCK_MONOTONIC, &h->since);
        pthread_mutex_lock(&s->mu);
        h->next = s->conns;
        if (s->conns) s->conns->prev = h;
        s->conns = h;
        pthread_mutex_unlock(&s->mu);
        *socket_context = h;
        return;
    }
    hconn *h = *socket_context;
    if (!h) return;
    /* MHD calls this before it closes the socket, so under mu the watchdog
     * never shuts down a descriptor that was closed and reused. */
    pthread_mutex_lock(&s->mu);
    if (h->prev) h->prev->next = h->next;
    else s->conns = h->next;
    if (h->next) h->next->prev = h->prev;
    pthread_mutex_unlock(&s->mu);
    free(h);
    *socket_context = NULL;
}

/* Slow clients (slowloris) hold a connection by sending a header byte now
 * and then, which the idle timeout never sees: past header_timeout_s the
 * connection is shut down, and MHD closes it. */
static void *watchdog(void *arg) {
    http_server *s = arg;
    pthread_mutex_lock(&s->mu);
    while (!s->stop) {
        struct timespec now, until;
        clock_gettime(CLOCK_MONOTONIC, &now);
        for (hconn *h = s->conns; h; h = h->next) {
            double age = (double)(now.tv_sec - h->since.tv_sec) + (now.tv_nsec - h->since.tv_nsec) * 1e-9;
            if (h->waiting && h->fd >= 0 && age > s->cfg->header_timeout_s) {
                shutdown(h->fd, SHUT_RDWR);
                h->waiting = 0;
            }
        }
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += 250 * 1000000L;
        if (until.tv_nsec >= 1000000000L) until.tv_sec++, until.tv_nsec -= 1000000000L;
        pthread_cond_timedwait(&s->wake, &s->mu, &until);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

static int parse_listen(const char *listen, struct sockaddr_storage *ss, lr_err *err) {
    char host[128];
    const char *colon = strrchr(listen, ':');
    if (!colon) return lr_errp(err, LR_E_INVALID, "listen", "listen must be ADDRESS:PORT");
    size_t hl = (size_t)(colon - listen);
    if (hl >= sizeof host) return lr_errp(err, LR_E_INVALID, "listen", "listen address too long");
    memcpy(host, listen, hl);
    host[hl] = 0;
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || port < 0 || port > 65535) return lr_errp(err, LR_E_INVALID, "listen", "bad port in '%s'", listen);
    memset(ss, 0, sizeof *ss);
    if (host[0] == '[' && hl > 2 && host[hl - 1] == ']') {
        host[hl - 1] = 0;
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((uint16_t)port);
        if (inet_pton(AF_INET6, host + 1, &a->sin6_addr) != 1)
            return lr_errp(err, LR_E_INVALID, "listen", "bad IPv6 address in '%s'", listen);
        return 0;
    }
    struct sockaddr_in *a = (struct sockaddr_in *)ss;
    a->sin_family = AF_INET;
    a->sin_port = htons((uint16_t)port);
    if (!strcmp(host, "localhost")) strcpy(host, "127.0.0.1");
    if (inet_pton(AF_INET, host, &a->sin_addr) != 1)
        return lr_errp(err, LR_E_INVALID, "listen", "bad IPv4 address in '%s' (use [::1]:PORT for IPv6)", listen);
    return 0;
}

int http_start(const lorad_config *cfg, api *a, http_server **out, lr_err *err) {
    *out = NULL;
    struct sockaddr_storage ss;
    if (parse_listen(cfg->listen, &ss, err)) return -1;
    http_server *s = calloc(1, sizeof *s);
    if (!s) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
    s->a = a;
    s->cfg = cfg;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->wake, NULL);
    /* ITC: quiesce (stop accepting on SIGTERM) needs it with a thread pool.
     * No SO_REUSEPORT: a second lorad on a busy port must fail, not share it
     * (MHD's default SO_REUSEADDR still allows a restart over TIME_WAIT). */
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL_LINUX_ONLY | MHD_USE_ERROR_LOG | MHD_USE_ITC;
    if (ss.ss_family == AF_INET6) flags |= MHD_USE_IPv6;
    s->d = MHD_start_daemon(flags, 0, NULL, NULL, on_request, s, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
                            MHD_OPTION_THREAD_POOL_SIZE, (unsigned)cfg->http_threads, MHD_OPTION_CONNECTION_LIMIT,
                            (unsigned)cfg->max_connections, MHD_OPTION_PER_IP_CONNECTION_LIMIT,
                            (unsigned)cfg->max_connections_per_ip, MHD_OPTION_CONNECTION_TIMEOUT,
                            (unsigned)cfg->request_timeout_s, MHD_OPTION_NOTIFY_COMPLETED, on_done, s,
                            MHD_OPTION_NOTIFY_CONNECTION, on_connection, s, MHD_OPTION_END);
    if (!s->d) {
        http_stop(s);
        return lr_errp(err, LR_E_IO, "listen", "cannot listen on %s (in use, or not an address of this host)",
                       cfg->listen);
    }
    if (pthread_create(&s->watchdog, NULL, watchdog, s)) {
        http_stop(s);
        return lr_errp(err, LR_E_IO, NULL, "cannot start the HTTP watchdog thread");
    }
    s->watching = 1;
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
    s->port = di ? di->port : 0;
    *out = s;
    return 0;
}

int http_port(const http_server *s) { return s->port; }

void http_quiesce(http_server *s) {
    if (!s || !s->d) return;
    MHD_socket fd = MHD_quiesce_daemon(s->d);
    if (fd != MHD_INVALID_SOCKET) close(fd);
}

void http_stop(http_server *s) {
    if (!s) return;
    if (s->watching) {
        pthread_mutex_lock(&s->mu);
        s->stop = 1;
        pthread_cond_signal(&s->wake);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->watchdog, NULL);
    }
    if (s->d) MHD_stop_daemon(s->d);
    pthread_cond_destroy(&s->wake);
    pthread_mutex_destroy(&s->mu);
    free(s);
}
