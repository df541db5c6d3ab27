#include "proto/frame.h"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "proto/jsonfmt.h"

int frame_encode(const json_t *msg, lr_buf *out, lr_err *err) {
    if (!json_is_object(msg) || !json_is_string(json_object_get(msg, "type")))
        return lr_errp(err, LR_E_INTERNAL, NULL, "frame: message is not an object with a type");
    char *body = jsonfmt_dumps(msg, JSON_COMPACT);
    if (!body) return lr_errp(err, LR_E_NOMEM, NULL, "frame: out of memory");
    size_t n = strlen(body);
    int rc = -1;
    if (n == 0 || n > FRAME_MAX) {
        lr_errp(err, LR_E_TOOBIG, NULL, "frame: %zu bytes is over the limit of %u", n, FRAME_MAX);
        goto out;
    }
    unsigned char hdr[4] = {(unsigned char)(n >> 24), (unsigned char)(n >> 16),
                            (unsigned char)(n >> 8), (unsigned char)n};
    if (lr_buf_add(out, hdr, 4) || lr_buf_add(out, body, n)) {
        lr_errp(err, LR_E_NOMEM, NULL, "frame: output buffer full");
        goto out;
    }
    rc = 0;
out:
    free(body);
    return rc;
}

void frame_dec_init(frame_dec *d, size_t max) {
    if (max == 0 || max > FRAME_MAX) max = FRAME_MAX;
    /* One maximal frame plus its header plus one read's worth of the next. */
    lr_buf_init(&d->buf, max + 4 + 65536);
    d->off = 0;
    d->max = max;
    d->failed = 0;
}

void frame_dec_free(frame_dec *d) { lr_buf_free(&d->buf); }

static void dec_compact(frame_dec *d) {
    if (d->off == 0) return;
    memmove(d->buf.data, d->buf.data + d->off, d->buf.len - d->off);
    d->buf.len -= d->off;
    d->buf.data[d->buf.len] = 0;
    d->off = 0;
}

int frame_dec_feed(frame_dec *d, const void *p, size_t n, lr_err *err) {
    if (d->failed) return lr_errp(err, LR_E_INVALID, NULL, "frame: connection already failed");
    dec_compact(d);
    if (lr_buf_add(&d->buf, p, n)) {
        d->failed = 1;
        return lr_errp(err, LR_E_TOOBIG, NULL, "frame: more than %zu pending bytes", d->buf.max);
    }
    return 0;
}

int frame_dec_next(frame_dec *d, json_t **out, lr_err *err) {
    *out = NULL;
    if (d->failed) return lr_errp(err, LR_E_INVALID, NULL, "frame: connection already failed");
    size_t avail = d->buf.len - d->off;
    if (avail < 4) return 0;
    const unsigned char *h = (const unsigned char *)d->buf.data + d->off;
    uint32_t n = (uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 | (uint32_t)h[2] << 8 | h[3];
    if (n == 0 || n > d->max) {
        d->failed = 1;
        return lr_errp(err, LR_E_TOOBIG, NULL, "frame: length %u outside 1..%zu", n, d->max);
    }
    if (avail - 4 < n) return 0;
    json_error_t je;
    json_t *j = json_loadb((const char *)h + 4, n, JSON_REJECT_DUPLICATES, &je);
    d->off += 4 + (size_t)n;
    if (!j) {
        d->failed = 1;
        return lr_errp(err, LR_E_INVALID, NULL, "frame: invalid JSON: %s", je.text);
    }
    if (!json_is_object(j) || !json_is_string(json_object_get(j, "type"))) {
        json_decref(j);
        d->failed = 1;
        return lr_errp(err, LR_E_INVALID, NULL, "frame: not an object with a string \"type\"");
    }
    *out = j;
    return 1;
}

int frame_write_fd(int fd, const json_t *msg, lr_err *err) {
    lr_buf b;
    lr_buf_init(&b, FRAME_MAX + 4);
    int rc = -1;
    if (frame_encode(msg, &b, err)) goto out;
    size_t done = 0;
    while (done < b.len) {
        ssize_t w = send(fd, b.data + done, b.len - done, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            lr_errp(err, LR_E_IO, NULL, "frame: write failed: %s", strerror(errno));
            goto out;
        }
        done += (size_t)w;
    }
    rc = 0;
out:
    lr_buf_free(&b);
    return rc;
}

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int frame_read_fd(int fd, frame_dec *d, int timeout_ms, json_t **out, lr_err *err) {
    int64_t deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
    for (;;) {
        int r = frame_dec_next(d, out, err);
        if (r) return r;
        int wait = -1;
        if (deadline >= 0) {
            int64_t left = deadline - now_ms();
            if (left <= 0) return 0;
            wait = (int)left;
        }
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int pr = poll(&p, 1, wait);
        if (pr < 0 && errno == EINTR) continue;
        if (pr < 0) return lr_errp(err, LR_E_IO, NULL, "frame: poll: %s", strerror(errno));
        if (pr == 0) return 0;
        char tmp[65536];
        ssize_t n = recv(fd, tmp, sizeof tmp, 0);
        if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (n < 0) return lr_errp(err, LR_E_IO, NULL, "frame: read: %s", strerror(errno));
        if (n == 0 && d->buf.len > d->off)
            return lr_errp(err, LR_E_IO, NULL, "frame: peer closed the connection in the middle of a frame");
        if (n == 0) {
            lr_errp(err, LR_E_IO, NULL, "frame: peer closed the connection");
            return FRAME_EOF;
        }
        if (frame_dec_feed(d, tmp, (size_t)n, err)) return -1;
    }
}

int frame_connect_unix(const char *path, lr_err *err) {
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path) return lr_errf(err, "socket path too long: %s", path);
    memcpy(sa.sun_path, path, strlen(path) + 1);
    for (int tries = 0; tries < 50; tries++) {
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) return lr_errf(err, "socket: %s", strerror(errno));
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) return fd;
        close(fd);
        usleep(100000);
    }
    return lr_errf(err, "cannot reach lorad's worker socket %s: %s", path, strerror(errno));
}
