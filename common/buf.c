#include "common/buf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void lr_buf_init(lr_buf *b, size_t max) {
    b->data = NULL;
    b->len = b->cap = 0;
    b->max = max;
}

void lr_buf_free(lr_buf *b) {
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

void lr_buf_reset(lr_buf *b) {
    b->len = 0;
    if (b->data) b->data[0] = 0;
}

static int buf_reserve(lr_buf *b, size_t n) {
    if (n > b->max || b->len > b->max - n) return -1;
    size_t need = b->len + n + 1;
    if (need <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need) cap = cap > ((size_t)-1) / 2 ? need : cap * 2;
    char *p = realloc(b->data, cap);
    if (!p) return -1;
    b->data = p;
    b->cap = cap;
    return 0;
}

int lr_buf_add(lr_buf *b, const void *p, size_t n) {
    if (buf_reserve(b, n)) return -1;
    if (n) memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = 0;
    return 0;
}

int lr_buf_adds(lr_buf *b, const char *s) { return lr_buf_add(b, s, strlen(s)); }

int lr_buf_printf(lr_buf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || buf_reserve(b, (size_t)n)) return -1;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

char *lr_buf_take(lr_buf *b, size_t *len) {
    if (!b->data && lr_buf_add(b, "", 0)) return NULL;
    char *d = b->data;
    if (len) *len = b->len;
    b->data = NULL;
    b->len = b->cap = 0;
    return d;
}

int lr_read_file(const char *path, size_t max, char **out, size_t *len, lr_err *err) {
    *out = NULL;
    if (len) *len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return lr_errp(err, LR_E_IO, NULL, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
        close(fd);
        return lr_errp(err, LR_E_IO, NULL, "%s: not a regular file", path);
    }
    if ((unsigned long long)st.st_size > max) {
        close(fd);
        return lr_errp(err, LR_E_TOOBIG, NULL, "%s: %lld bytes is over the limit of %zu",
                       path, (long long)st.st_size, max);
    }
    size_t n = (size_t)st.st_size;
    char *p = malloc(n + 1);
    if (!p) {
        close(fd);
        return lr_errp(err, LR_E_NOMEM, NULL, "%s: out of memory", path);
    }
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, p + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            free(p);
            close(fd);
            return lr_errp(err, LR_E_IO, NULL, "%s: read failed", path);
        }
        got += (size_t)r;
    }
    close(fd);
    p[n] = 0;
    *out = p;
    if (len) *len = n;
    return 0;
}

int lr_write_file_atomic(const char *path, const void *data, size_t len, lr_err *err) {
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid()) >= (int)sizeof tmp)
        return lr_errp(err, LR_E_IO, NULL, "%s: path too long", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return lr_errp(err, LR_E_IO, NULL, "%s: %s", tmp, strerror(errno));
    const char *p = data;
    size_t done = 0;
    while (done < len) {
        ssize_t w = write(fd, p + done, len - done);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            close(fd);
            unlink(tmp);
            return lr_errp(err, LR_E_IO, NULL, "%s: write failed: %s", path, strerror(errno));
        }
        done += (size_t)w;
    }
    if (fsync(fd) || close(fd)) {
        unlink(tmp);
        return lr_errp(err, LR_E_IO, NULL, "%s: fsync failed", path);
    }
    if (rename(tmp, path)) {
        unlink(tmp);
        return lr_errp(err, LR_E_IO, NULL, "%s: rename failed: %s", path, strerror(errno));
    }
    return 0;
}

int lr_mkdirs(const char *path, lr_err *err) {
    char p[4096];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof p) return lr_errp(err, LR_E_IO, NULL, "bad directory path");
    memcpy(p, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (p[i] == '/' || p[i] == 0) {
            char c = p[i];
            p[i] = 0;
            if (mkdir(p, 0755) && errno != EEXIST)
                return lr_errp(err, LR_E_IO, NULL, "mkdir %s: %s", p, strerror(errno));
            p[i] = c;
        }
    }
    return 0;
}

int lr_pathf(char *out, size_t cap, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out, cap, fmt, ap);
    va_end(ap);
    return n < 0 || (size_t)n >= cap ? -1 : 0;
}
