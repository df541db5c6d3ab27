/* tlink: the TCP link between lorad and a remote worker, TLS by GnuTLS.
 *
 * A remote worker dials lorad's worker_listen address. Every connection
 * starts with one request frame (frame.h's framing) carrying the worker
 * token: "auth" turns the connection into an agent's frame stream (lorad
 * relays it to its worker socket, so a remote agent speaks exactly the
 * protocol of a local one); "list", "get" and "put" move the files of a job
 * (daemon/remote.c serves them, worker/fetch.c asks). lorad answers each
 * request with one frame {"ok": true, ...} or {"ok": false, "error": ...}.
 *
 * https:// is TLS with the server's certificate verified against the CA
 * file given (or the system's trust store) and its host name; tcp:// is
 * plain TCP, which both sides allow on loopback addresses only. */
#ifndef LR_TLINK_H
#define LR_TLINK_H

#include <jansson.h>
#include <stddef.h>
#include "common/err.h"

typedef struct tl_conn {
    int fd;
    void *tls;  /* gnutls_session_t, NULL for plain TCP */
    void *cred; /* the client's credentials (a server's belong to its tl_server) */
    int timeout_s; /* reads and writes; 0 none */
} tl_conn;

typedef struct tl_server {
    void *cred; /* NULL: plain TCP (loopback only) */
} tl_server;

/* The largest request or answer frame (file bytes travel outside frames). */
#define TL_FRAME_MAX (1u << 20)

/* Splits "https://HOST:PORT" or "tcp://HOST:PORT". */
int tl_parse_url(const char *url, int *tls, char *host, size_t hcap, char *port, size_t pcap, lr_err *err) LR_WARN_UNUSED;
/* 1 when host names a loopback address (127.0.0.0/8, ::1, localhost). */
int tl_is_loopback(const char *host);
/* Connects and, for https, handshakes and verifies lorad's certificate
 * (ca_file: a PEM bundle, NULL: the system's trust store). io_timeout_s
 * bounds every later read and write (0: none). */
int tl_dial(const char *url, const char *ca_file, int io_timeout_s, tl_conn *c, lr_err *err) LR_WARN_UNUSED;

/* cert/key NULL: plain TCP. */
int tl_server_init(tl_server *s, const char *cert_file, const char *key_file, lr_err *err) LR_WARN_UNUSED;
void tl_server_free(tl_server *s);
/* Takes an accepted fd (closed by tl_close, also on failure) and handshakes. */
int tl_accept(tl_server *s, int fd, int io_timeout_s, tl_conn *c, lr_err *err) LR_WARN_UNUSED;

/* Reads up to n bytes: >0 read, 0 the peer closed, -1 an error. */
long tl_read(tl_conn *c, void *p, size_t n, lr_err *err);
int tl_read_full(tl_conn *c, void *p, size_t n, lr_err *err) LR_WARN_UNUSED;
int tl_write_all(tl_conn *c, const void *p, size_t n, lr_err *err) LR_WARN_UNUSED;
/* One frame each way (msg is borrowed). */
int tl_send(tl_conn *c, const json_t *msg, lr_err *err) LR_WARN_UNUSED;
int tl_recv(tl_conn *c, json_t **out, lr_err *err) LR_WARN_UNUSED;
/* Copies bytes both ways between the link and fd until either side closes
 * or fails. */
void tl_pump(tl_conn *c, int fd);
void tl_close(tl_conn *c);

/* SHA-256 of a whole file (lower-case hex) and its size. */
int tl_sha256_file(const char *path, long long *size, char hex[65], lr_err *err) LR_WARN_UNUSED;
/* Incremental SHA-256 (GnuTLS's); tl_sha_end frees h and writes hex. */
typedef void *tl_sha;
int tl_sha_begin(tl_sha *h, lr_err *err) LR_WARN_UNUSED;
void tl_sha_add(tl_sha h, const void *p, size_t n);
void tl_sha_end(tl_sha h, char hex[65]);

#endif
