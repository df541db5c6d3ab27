/* The streaming multipart parser (daemon/multipart.c). The first byte picks
 * a chunk size; the rest is the body, with boundary "b0undary".
 * Invariants: no crash; fed whole or in chunks, the parser gives the same
 * verdict and hands on the same parts, byte for byte. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "daemon/multipart.h"

typedef struct seen {
    lr_buf out; /* names, filenames and data, with separators */
} seen;

static int begin(void *ud, const char *name, const char *filename) {
    seen *s = ud;
    return lr_buf_printf(&s->out, "\n[%s|%s]", name, filename) ? 1 : 0;
}
static int data(void *ud, const char *d, size_t n) { return lr_buf_add(&((seen *)ud)->out, d, n) ? 1 : 0; }
static int end(void *ud) { return lr_buf_adds(&((seen *)ud)->out, "[end]") ? 1 : 0; }

static int run(const uint8_t *d, size_t n, size_t chunk, seen *s) {
    static const mp_callbacks cb = {begin, data, end};
    mp_parser *p;
    lr_err e = {0};
    lr_buf_init(&s->out, 1 << 22);
    if (mp_open("multipart/form-data; boundary=b0undary", &cb, s, &p, &e)) abort();
    int rc = 0;
    for (size_t off = 0; off < n && !rc; off += chunk)
        rc = mp_feed(p, (const char *)d + off, n - off < chunk ? n - off : chunk, &e);
    if (!rc) rc = mp_end(p, &e);
    mp_free(p);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) {
    if (n < 1) return 0;
    size_t chunk = 1 + d[0] % 97;
    seen a, b;
    int ra = run(d + 1, n - 1, n, &a), rb = run(d + 1, n - 1, chunk, &b);
    if (ra != rb) abort();
    if (!ra && (a.out.len != b.out.len || (a.out.len && memcmp(a.out.data, b.out.data, a.out.len)))) abort();
    lr_buf_free(&a.out);
    lr_buf_free(&b.out);
    return 0;
}
