/* A whole HTTP request through lorad's front door: libmicrohttpd, the
 * header checks before any body (daemon/http.c), streamed uploads and the
 * API with a real store, in this process on a loopback port. The input is
 * sent as the raw bytes of a connection, "Connection: close" added to the
 * first request's headers (the token "tok-fuzz" is valid, so
 * seeds reach the authenticated routes). Invariants: no crash or sanitizer
 * report in any thread; whatever comes back starts as an HTTP response. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "common/buf.h"
#include "daemon/api.h"
#include "daemon/config.h"
#include "daemon/http.h"
#include "daemon/sha256.h"
#include "daemon/store.h"

static lorad_config cfg;
static char db_path[1200];
static int port;

static void setup(void) {
    char dir[] = "/tmp/lrfuzz.XXXXXX";
    lr_err e = {0};
    store *st = NULL;
    int applied;
    char h[65];
    if (!mkdtemp(dir)) abort();
    config_defaults(&cfg);
    snprintf(cfg.data_dir, sizeof cfg.data_dir, "%s", dir);
    snprintf(cfg.web_dir, sizeof cfg.web_dir, "web");
    snprintf(cfg.listen, sizeof cfg.listen, "127.0.0.1:0");
    cfg.http_threads = 2;
    cfg.max_upload_bytes = 1 << 20;
    snprintf(db_path, sizeof db_path, "%s/lorad.db", dir);
    sha256_hex("tok-fuzz", 8, h);
    if (store_open(db_path, &st, &e) || store_migrate(st, "migrations", &applied, &e) ||
        store_user_add(st, "fuzz", 1, h, &e)) {
        fprintf(stderr, "fuzz_http_request setup: %s\n", e.msg);
        abort();
    }
    store_close(st);
    api_env env = {.cfg = &cfg, .db = http_thread_store, .db_ud = db_path};
    api *a = api_new(&env);
    http_server *srv = NULL;
    if (!a || http_start(&cfg, a, &srv, &e)) {
        fprintf(stderr, "fuzz_http_request setup: %s\n", e.msg);
        abort();
    }
    port = http_port(srv);
}

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) {
    if (!port) setup();
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return 0;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval tv = {.tv_sec = 1};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa)) {
        close(fd);
        return 0;
    }
    /* A kept-alive connection would wait for the next request until the
     * header deadline: the first request asks to close instead. */
    const uint8_t *hend = memmem(d, n, "\r\n\r\n", 4);
    size_t cut = hend ? (size_t)(hend - d) + 2 : n;
    static const char closing[] = "Connection: close\r\n";
    const struct {
        const void *p;
        size_t n;
    } parts[3] = {{d, cut}, {closing, hend ? sizeof closing - 1 : 0}, {d + cut, n - cut}};
    for (int k = 0; k < 3; k++)
        for (size_t off = 0; off < parts[k].n;) {
            ssize_t w = send(fd, (const char *)parts[k].p + off, parts[k].n - off, MSG_NOSIGNAL);
            if (w <= 0) break;
            off += (size_t)w;
        }
    shutdown(fd, SHUT_WR);
    char buf[4096];
    size_t got = 0;
    char head[8];
    for (;;) {
        ssize_t r = recv(fd, buf, sizeof buf, 0);
        if (r <= 0) break;
        if (got < sizeof head) memcpy(head + got, buf, (size_t)r < sizeof head - got ? (size_t)r : sizeof head - got);
        got += (size_t)r;
    }
    close(fd);
    if (got >= 7 && memcmp(head, "HTTP/1.", 7)) abort();
    return 0;
}
