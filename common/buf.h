/* buf: a growable byte buffer with a hard cap set at creation, so that no
 * input can grow memory without bound (curl's dynbuf habit). */
#ifndef LR_BUF_H
#define LR_BUF_H

#include <stddef.h>
#include "common/err.h"

typedef struct lr_buf {
    char *data;   /* always NUL-terminated when non-NULL */
    size_t len;
    size_t cap;   /* allocated */
    size_t max;   /* hard limit on len */
} lr_buf;

void lr_buf_init(lr_buf *b, size_t max);
void lr_buf_free(lr_buf *b);
void lr_buf_reset(lr_buf *b);
/* Append n bytes; fails (no change) when it would pass the cap or on OOM. */
int lr_buf_add(lr_buf *b, const void *p, size_t n) LR_WARN_UNUSED;
int lr_buf_adds(lr_buf *b, const char *s) LR_WARN_UNUSED;
int lr_buf_printf(lr_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3))) LR_WARN_UNUSED;
/* Hands the data to the caller (who frees it) and resets the buffer. */
char *lr_buf_take(lr_buf *b, size_t *len);

/* Reads a whole file of at most max bytes; the result is NUL-terminated and
 * owned by the caller. */
int lr_read_file(const char *path, size_t max, char **out, size_t *len, lr_err *err) LR_WARN_UNUSED;
/* Writes a file atomically: a temporary beside it, fsync, rename. */
int lr_write_file_atomic(const char *path, const void *data, size_t len, lr_err *err) LR_WARN_UNUSED;
/* snprintf for paths: returns -1 (out cut short) when the result does not fit. */
int lr_pathf(char *out, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* mkdir -p */
int lr_mkdirs(const char *path, lr_err *err) LR_WARN_UNUSED;

#endif
