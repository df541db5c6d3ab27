/* http: the libmicrohttpd server in front of api.
 *
 * A thread pool (http_threads), a connection limit, an idle timeout, and a
 * body limit per route checked against Content-Length before the body is
 * read and again while it arrives (413). Each pool thread has its own
 * SQLite connection, opened on first use and closed when the thread ends. */
#ifndef LR_HTTP_H
#define LR_HTTP_H

#include "common/err.h"
#include "daemon/api.h"
#include "daemon/config.h"
#include "daemon/store.h"

typedef struct http_server http_server;

/* The api_env.db of HTTP threads: db_ud is the database path (a string
 * that outlives the server). */
store *http_thread_store(void *db_path, lr_err *err);

int http_start(const lorad_config *cfg, api *a, http_server **out, lr_err *err) LR_WARN_UNUSED;
/* The port actually bound (useful with port 0). */
int http_port(const http_server *s);
/* Stops accepting new connections; requests in progress finish. */
void http_quiesce(http_server *s);
void http_stop(http_server *s);

#endif
