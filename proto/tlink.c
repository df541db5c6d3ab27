#include "proto/tlink.h"

#include <arpa/inet.h>
#include <errno.h>
#include <gnutls/gnutls.h>
#include <gnutls/crypto.h>
#include <gnutls/x509.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "common/buf.h"
#include "proto/frame.h"

int tl_parse_url(const char *url, int *tls, char *host, size_t hcap, char *port, size_t pcap, lr_err *err) {
    const char *p;
    if (!strncmp(url, "https://", 8)) *tls = 1, p = url + 8;
    else if (!strncmp(url, "tcp://", 6)) *tls = 0, p = url + 6;
    else return lr_errp(err, LR_E_INVALID, "connect", "'%s': lorad's worker address is https://HOST:PORT (or tcp://127.0.0.1:PORT on one machine)", url);
    const char *end = p + strcspn(p, "/");
    const char *colon = NULL;
    if (*p == '[') { /* [v6]:port */
        const char *rb = memchr(p, ']', (size_t)(end - p));
        if (!rb || rb[1] != ':') return lr_errp(err, LR_E_INVALID, "connect", "'%s': bad [IPv6]:PORT", url);
        p++;
        colon = rb + 1;
        if ((size_t)(rb - p) >= hcap) return lr_errp(err, LR_E_INVALID, "connect", "'%s': host too long", url);
        snprintf(host, hcap, "%.*s", (int)(rb - p), p);
    } else {
        for (const char *q = p; q < end; q++)
            if (*q == ':') colon = q;
        if (!colon || colon == p) return lr_errp(err, LR_E_INVALID, "connect", "'%s': the address needs HOST:PORT", url);
        if ((size_t)(colon - p) >= hcap) return lr_errp(err, LR_E_INVALID, "connect", "'%s': host too long", url);
        snprintf(host, hcap, "%.*s", (int)(colon - p), p);
    }
    size_t pl = (size_t)(end - colon - 1);
    if (!pl || pl >= pcap || strspn(colon + 1, "0123456789") < pl)
        return lr_errp(err, LR_E_INVALID, "connect", "'%s': the port must be a number", url);
    snprintf(port, pcap, "%.*s", (int)pl, colon + 1);
    return 0;
}

int tl_is_loopback(const char *host) {
    if (!strcmp(host, "localhost") || !strcmp(host, "::1")) return 1;
    struct in_addr a;
    return inet_pton(AF_INET, host, &a) == 1 && (ntohl(a.s_addr) >> 24) == 127;
}

static void set_timeouts(int fd, int s) {
    if (s <= 0) return;
    struct timeval tv = {.tv_sec = s};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

static int tls_fail(int rc, const char *what, lr_err *err) {
    return lr_errp(err, LR_E_IO, NULL, "%s: %s", what, gnutls_strerror(rc));
}

static int handshake(tl_conn *c, lr_err *err) {
    gnutls_session_t s = c->tls;
    int rc;
    do rc = gnutls_handshake(s);
    while (rc < 0 && !gnutls_error_is_fatal(rc));
    if (rc == GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR) {
        gnutls_datum_t out = {0};
        unsigned status = gnutls_session_get_verify_cert_status(s);
        gnutls_certificate_verification_status_print(status, gnutls_certificate_type_get(s), &out, 0);
        lr_errp(err, LR_E_FORBIDDEN, NULL, "TLS: lorad's certificate is not trusted (%s); give its CA with --ca FILE",
                out.data ? (const char *)out.data : "verification failed");
        gnutls_free(out.data);
        return -1;
    }
    if (rc < 0) return tls_fail(rc, "TLS handshake", err);
    return 0;
}

int tl_dial(const char *url, const char *ca_file, int io_timeout_s, tl_conn *c, lr_err *err) {
    memset(c, 0, sizeof *c);
    c->fd = -1;
    int tls;
    char host[256], port[16];
    if (tl_parse_url(url, &tls, host, sizeof host, port, sizeof port, err)) return -1;
    if (!tls && !tl_is_loopback(host))
        return lr_errp(err, LR_E_INVALID, "connect", "plain tcp:// only reaches lorad on this machine (loopback); use https://%s:%s", host, port);
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai = NULL;
    int g = getaddrinfo(host, port, &hints, &ai);
    if (g) return lr_errp(err, LR_E_IO, NULL, "cannot resolve %s: %s", host, gai_strerror(g));
    int last = 0;
    for (struct addrinfo *a = ai; a && c->fd < 0; a = a->ai_next) {
        int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) continue;
        if (connect(fd, a->ai_addr, a->ai_addrlen) == 0) c->fd = fd;
        else last = errno, close(fd);
    }
    freeaddrinfo(ai);
    if (c->fd < 0) return lr_errp(err, LR_E_IO, NULL, "cannot connect to lorad at %s:%s: %s", host, port, strerror(last));
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    set_timeouts(c->fd, io_timeout_s);
    c->timeout_s = io_timeout_s;
    if (!tls) return 0;
    gnutls_certificate_credentials_t cred;
    gnutls_session_t s;
    int rc = gnutls_certificate_allocate_credentials(&cred);
    if (rc < 0) goto tls_err;
    c->cred = cred;
    rc = ca_file ? gnutls_certificate_set_x509_trust_file(cred, ca_file, GNUTLS_X509_FMT_PEM)
                 : gnutls_certificate_set_x509_system_trust(cred);
    if (rc <= 0) {
        lr_errp(err, LR_E_INVALID, "ca", "%s: no CA certificate could be loaded%s%s", ca_file ? ca_file : "system trust store",
                rc < 0 ? ": " : "", rc < 0 ? gnutls_strerror(rc) : "");
        goto fail;
    }
    if ((rc = gnutls_init(&s, GNUTLS_CLIENT)) < 0) goto tls_err;
    c->tls = s;
    struct in6_addr ip;
    /* SNI carries DNS names only */
    if (inet_pton(AF_INET, host, &ip) != 1 && inet_pton(AF_INET6, host, &ip) != 1)
        gnutls_server_name_set(s, GNUTLS_NAME_DNS, host, strlen(host));
    if ((rc = gnutls_set_default_priority(s)) < 0 || (rc = gnutls_credentials_set(s, GNUTLS_CRD_CERTIFICATE, cred)) < 0)
        goto tls_err;
    gnutls_session_set_verify_cert(s, host, 0);
    gnutls_transport_set_int(s, c->fd);
    gnutls_handshake_set_timeout(s, GNUTLS_DEFAULT_HANDSHAKE_TIMEOUT);
    if (handshake(c, err)) goto fail;
    return 0;
tls_err:
    tls_fail(rc, "TLS", err);
fail:
    tl_close(c);
    return -1;
}

int tl_server_init(tl_server *s, const char *cert_file, const char *key_file, lr_err *err) {
    s->cred = NULL;
    if (!cert_file) return 0;
    gnutls_certificate_credentials_t cred;
    int rc = gnutls_certificate_allocate_credentials(&cred);
    if (rc < 0) return tls_fail(rc, "TLS", err);
    rc = gnutls_certificate_set_x509_key_file(cred, cert_file, key_file, GNUTLS_X509_FMT_PEM);
    if (rc < 0) {
        gnutls_certificate_free_credentials(cred);
        return lr_errp(err, LR_E_INVALID, "tls_cert", "tls_cert %s / tls_key %s: %s", cert_file, key_file, gnutls_strerror(rc));
    }
    s->cred = cred;
    return 0;
}

void tl_server_free(tl_server *s) {
    if (s->cred) gnutls_certificate_free_credentials(s->cred);
    s->cred = NULL;
}

int tl_accept(tl_server *srv, int fd, int io_timeout_s, tl_conn *c, lr_err *err) {
    memset(c, 0, sizeof *c);
    c->fd = fd;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    set_timeouts(fd, io_timeout_s);
    c->timeout_s = io_timeout_s;
    if (!srv->cred) return 0;
    gnutls_session_t s;
    int rc = gnutls_init(&s, GNUTLS_SERVER);
    if (rc < 0) {
        tl_close(c);
        return tls_fail(rc, "TLS", err);
    }
    c->tls = s;
    if ((rc = gnutls_set_default_priority(s)) < 0 || (rc = gnutls_credentials_set(s, GNUTLS_CRD_CERTIFICATE, srv->cred)) < 0) {
        tl_close(c);
        return tls_fail(rc, "TLS", err);
    }
    gnutls_certificate_server_set_request(s, GNUTLS_CERT_IGNORE);
    gnutls_transport_set_int(s, fd);
    gnutls_handshake_set_timeout(s, GNUTLS_DEFAULT_HANDSHAKE_TIMEOUT);
    if (handshake(c, err)) {
        lr_err_prefix(err, "a worker connection without a working TLS session was refused: ");
        tl_close(c);
        return -1;
    }
    return 0;
}

long tl_read(tl_conn *c, void *p, size_t n, lr_err *err) {
    for (;;) {
        if (!c->tls) {
            ssize_t r = read(c->fd, p, n);
            if (r >= 0) return (long)r;
            if (errno == EINTR) continue;
            return lr_errp(err, LR_E_IO, NULL, "%s", errno == EAGAIN ? "timed out" : strerror(errno));
        }
        ssize_t r = gnutls_record_recv(c->tls, p, n);
        if (r >= 0) return (long)r;
        if (r == GNUTLS_E_INTERRUPTED) continue;
        if (r == GNUTLS_E_AGAIN) {
            /* also after a post-handshake message (a TLS 1.3 session ticket)
             * with no data yet: wait for more, up to the timeout */
            struct pollfd pf = {.fd = c->fd, .events = POLLIN};
            int w = gnutls_record_check_pending(c->tls) ? 1 : poll(&pf, 1, c->timeout_s > 0 ? c->timeout_s * 1000 : -1);
            if (w > 0 || (w < 0 && errno == EINTR)) continue;
            return lr_errp(err, LR_E_IO, NULL, "TLS: %s", w ? strerror(errno) : "timed out");
        }
        if (r == GNUTLS_E_PREMATURE_TERMINATION) return 0;
        return lr_errp(err, LR_E_IO, NULL, "TLS: %s", gnutls_strerror((int)r));
    }
}

int tl_read_full(tl_conn *c, void *p, size_t n, lr_err *err) {
    char *q = p;
    while (n) {
        long r = tl_read(c, q, n, err);
        if (r < 0) return -1;
        if (r == 0) return lr_errp(err, LR_E_IO, NULL, "the peer closed the connection");
        q += r;
        n -= (size_t)r;
    }
    return 0;
}

int tl_write_all(tl_conn *c, const void *p, size_t n, lr_err *err) {
    const char *q = p;
    while (n) {
        ssize_t r = c->tls ? gnutls_record_send(c->tls, q, n) : write(c->fd, q, n);
        if (r < 0) {
            if (c->tls ? r == GNUTLS_E_INTERRUPTED : errno == EINTR) continue;
            if (c->tls ? r == GNUTLS_E_AGAIN : errno == EAGAIN) { /* SO_SNDTIMEO ran out, or a spurious wake */
                struct pollfd pf = {.fd = c->fd, .events = POLLOUT};
                if (poll(&pf, 1, c->timeout_s > 0 ? c->timeout_s * 1000 : -1) > 0) continue;
                return lr_errp(err, LR_E_IO, NULL, "write: timed out");
            }
            return lr_errp(err, LR_E_IO, NULL, "write: %s", c->tls ? gnutls_strerror((int)r) : strerror(errno));
        }
        q += r;
        n -= (size_t)r;
    }
    return 0;
}

int tl_send(tl_conn *c, const json_t *msg, lr_err *err) {
    lr_buf b;
    lr_buf_init(&b, TL_FRAME_MAX + 4);
    int rc = frame_encode(msg, &b, err) || tl_write_all(c, b.data, b.len, err) ? -1 : 0;
    lr_buf_free(&b);
    return rc;
}

int tl_recv(tl_conn *c, json_t **out, lr_err *err) {
    *out = NULL;
    unsigned char h[4];
    if (tl_read_full(c, h, 4, err)) return -1;
    uint32_t n = (uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 | (uint32_t)h[2] << 8 | h[3];
    if (n == 0 || n > TL_FRAME_MAX) return lr_errp(err, LR_E_INVALID, NULL, "a frame of %u bytes (not TLS? a protocol mismatch?)", n);
    char *body = malloc(n);
    if (!body) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
    int rc = tl_read_full(c, body, n, err);
    if (!rc) {
        *out = json_loadb(body, n, JSON_REJECT_DUPLICATES, NULL);
        if (!json_is_object(*out)) {
            json_decref(*out);
            *out = NULL;
            rc = lr_errp(err, LR_E_INVALID, NULL, "a frame that is not a JSON object");
        }
    }
    free(body);
    return rc;
}

void tl_pump(tl_conn *c, int fd) {
    char buf[65536];
    lr_err e = {0};
    struct timeval none = {0};
    c->timeout_s = 0;
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &none, sizeof none);
    setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &none, sizeof none);
    for (;;) {
        /* bytes GnuTLS already decrypted do not show on the socket */
        int pending = c->tls && gnutls_record_check_pending(c->tls) > 0;
        struct pollfd p[2] = {{.fd = c->fd, .events = POLLIN}, {.fd = fd, .events = POLLIN}};
        if (!pending && poll(p, 2, -1) < 0) {
            if (errno == EINTR) continue;
            return;
        }
        if (pending || (p[0].revents & (POLLIN | POLLHUP | POLLERR))) {
            long r = tl_read(c, buf, sizeof buf, &e);
            if (r <= 0) return;
            for (long off = 0; off < r;) {
                ssize_t w = write(fd, buf + off, (size_t)(r - off));
                if (w < 0 && errno == EINTR) continue;
                if (w <= 0) return;
                off += w;
            }
        }
        if (p[1].revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t r = read(fd, buf, sizeof buf);
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0 || tl_write_all(c, buf, (size_t)r, &e)) return;
        }
    }
}

void tl_close(tl_conn *c) {
    if (c->tls) {
        gnutls_bye(c->tls, GNUTLS_SHUT_WR);
        gnutls_deinit(c->tls);
    }
    if (c->cred) gnutls_certificate_free_credentials(c->cred);
    if (c->fd >= 0) close(c->fd);
    memset(c, 0, sizeof *c);
    c->fd = -1;
}

int tl_sha_begin(tl_sha *h, lr_err *err) {
    gnutls_hash_hd_t d;
    int rc = gnutls_hash_init(&d, GNUTLS_DIG_SHA256);
    if (rc < 0) return tls_fail(rc, "sha256", err);
    *h = d;
    return 0;
}

void tl_sha_add(tl_sha h, const void *p, size_t n) { gnutls_hash(h, p, n); }

void tl_sha_end(tl_sha h, char hex[65]) {
    unsigned char d[32];
    gnutls_hash_deinit(h, d);
    for (int i = 0; i < 32; i++) snprintf(hex + 2 * i, 3, "%02x", d[i]);
}

int tl_sha256_file(const char *path, long long *size, char hex[65], lr_err *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return lr_errp(err, LR_E_IO, NULL, "%s: %s", path, strerror(errno));
    tl_sha h = NULL;
    if (tl_sha_begin(&h, err)) {
        close(fd);
        return -1;
    }
    static __thread char buf[1 << 16];
    long long n = 0;
    ssize_t r;
    while ((r = read(fd, buf, sizeof buf)) > 0 || (r < 0 && errno == EINTR))
        if (r > 0) tl_sha_add(h, buf, (size_t)r), n += r;
    int e = errno;
    close(fd);
    tl_sha_end(h, hex);
    if (r < 0) return lr_errp(err, LR_E_IO, NULL, "%s: %s", path, strerror(e));
    *size = n;
    return 0;
}
