#include "daemon/multipart.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/buf.h"

/* The window holds what is not yet consumed: at most a header block or a
 * delimiter's length of data beyond what was handed on. */
#define WIN_STEP 65536

typedef enum { MP_PRE, MP_AFTER, MP_HEAD, MP_DATA, MP_DONE, MP_FAIL } mp_state;

struct mp_parser {
    char delim[80]; /* CRLF "--" boundary */
    size_t dl;
    mp_state st;
    lr_buf win;
    size_t skipped; /* preamble bytes dropped */
    int parts;
    mp_callbacks cb;
    void *ud;
    lr_err err;
};

/* A parameter of a header value: name="x" or name=x, matched exactly (so
 * "name" does not match inside "filename"). */
static void header_param(const char *v, const char *key, char *out, size_t cap) {
    size_t kl = strlen(key);
    out[0] = 0;
    const char *p = strchr(v, ';');
    while (p) {
        p++;
        while (*p == ' ' || *p == '\t') p++;
        if (!strncasecmp(p, key, kl) && p[kl] == '=') {
            const char *s = p + kl + 1;
            size_t n = 0;
            if (*s == '"') {
                s++;
                while (s[n] && s[n] != '"') n++;
            } else {
                n = strcspn(s, "; \t");
            }
            if (n >= cap) n = cap - 1;
            memcpy(out, s, n);
            out[n] = 0;
            return;
        }
        p = strchr(p, ';');
    }
}

static int fail(mp_parser *p, const char *msg) {
    p->st = MP_FAIL;
    lr_errp(&p->err, LR_E_INVALID, "file", "malformed multipart body: %s", msg);
    return -1;
}

/* Parses a part's header block (without its final CRLF CRLF). */
static int part_headers(mp_parser *p, const char *h, size_t n) {
    char name[128] = "", filename[256] = "";
    char line[MP_MAX_HEADER + 1];
    size_t pos = 0;
    if (++p->parts > MP_MAX_PARTS) return fail(p, "too many parts");
    while (pos < n) {
        const char *e = memmem(h + pos, n - pos, "\r\n", 2);
        size_t ll = e ? (size_t)(e - (h + pos)) : n - pos;
        memcpy(line, h + pos, ll);
        line[ll] = 0;
        if (memchr(line, 0, ll)) return fail(p, "a NUL byte in a part header");
        if (!strncasecmp(line, "Content-Disposition:", 20)) {
            header_param(line + 20, "name", name, sizeof name);
            header_param(line + 20, "filename", filename, sizeof filename);
        }
        pos += ll + 2;
    }
    if (p->cb.part_begin && p->cb.part_begin(p->ud, name, filename)) return fail(p, "part refused");
    return 0;
}

/* Consumes what it can of d[0..n); returns the bytes consumed or -1. */
static long step(mp_parser *p, const char *d, size_t n) {
    const char *hit;
    switch (p->st) {
    case MP_PRE:
        hit = memmem(d, n, p->delim, p->dl);
        if (hit) {
            p->st = MP_AFTER;
            return (long)(hit - d + p->dl);
        }
        if (n < p->dl) return 0;
        p->skipped += n - (p->dl - 1);
        if (p->skipped > MP_MAX_PREAMBLE) return fail(p, "no boundary line found (is the Content-Type's boundary right?)");
        return (long)(n - (p->dl - 1));
    case MP_AFTER: {
        size_t k = 0;
        if (n >= 2 && d[0] == '-' && d[1] == '-') {
            p->st = MP_DONE;
            return (long)n;
        }
        while (k < n && (d[k] == ' ' || d[k] == '\t')) k++;
        if (k > 256) return fail(p, "a boundary line followed by too much white space");
        if (n - k < 2) return 0;
        if (d[k] != '\r' || d[k + 1] != '\n') return fail(p, "a boundary line not followed by CRLF");
        p->st = MP_HEAD;
        return (long)(k + 2);
    }
    case MP_HEAD:
        if (n >= 2 && d[0] == '\r' && d[1] == '\n') {
            if (part_headers(p, d, 0)) return -1;
            p->st = MP_DATA;
            return 2;
        }
        hit = memmem(d, n, "\r\n\r\n", 4);
        if (!hit) {
            if (n > MP_MAX_HEADER) return fail(p, "part headers over 8 KiB");
            return 0;
        }
        if ((size_t)(hit - d) > MP_MAX_HEADER) return fail(p, "part headers over 8 KiB");
        if (part_headers(p, d, (size_t)(hit - d))) return -1;
        p->st = MP_DATA;
        return (long)(hit - d + 4);
    case MP_DATA: {
        hit = memmem(d, n, p->delim, p->dl);
        size_t give = hit ? (size_t)(hit - d) : n >= p->dl ? n - (p->dl - 1) : 0;
        if (give && p->cb.part_data && p->cb.part_data(p->ud, d, give)) return fail(p, "part data refused");
        if (!hit) return (long)give;
        if (p->cb.part_end && p->cb.part_end(p->ud)) return fail(p, "part refused");
        p->st = MP_AFTER;
        return (long)(give + p->dl);
    }
    case MP_DONE: return (long)n; /* the epilogue is ignored */
    case MP_FAIL: return -1;
    }
    return -1;
}

int mp_open(const char *content_type, const mp_callbacks *cb, void *ud, mp_parser **out, lr_err *err) {
    *out = NULL;
    const char *bp = content_type ? strcasestr(content_type, "boundary=") : NULL;
    if (!bp) return lr_errp(err, LR_E_INVALID, "file", "multipart Content-Type without a boundary");
    bp += 9;
    size_t bl;
    if (*bp == '"') {
        bp++;
        bl = strcspn(bp, "\"");
    } else {
        bl = strcspn(bp, "; \t");
    }
    if (bl == 0 || bl > 70) return lr_errp(err, LR_E_INVALID, "file", "multipart boundary must have 1 to 70 characters");
    mp_parser *p = calloc(1, sizeof *p);
    if (!p) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
    p->dl = (size_t)snprintf(p->delim, sizeof p->delim, "\r\n--%.*s", (int)bl, bp);
    p->cb = *cb;
    p->ud = ud;
    lr_buf_init(&p->win, WIN_STEP + MP_MAX_HEADER + sizeof p->delim);
    /* The first boundary has no CRLF before it: pretend it has. */
    if (lr_buf_add(&p->win, "\r\n", 2)) {
        mp_free(p);
        return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
    }
    *out = p;
    return 0;
}

int mp_feed(mp_parser *p, const char *data, size_t len, lr_err *err) {
    while (p->st != MP_FAIL) {
        size_t room = p->win.max - p->win.len, take = len < room ? len : room;
        if (take && lr_buf_add(&p->win, data, take)) {
            fail(p, "out of memory");
            break;
        }
        data += take, len -= take;
        size_t pos = 0;
        for (;;) {
            long k = step(p, p->win.data + pos, p->win.len - pos);
            if (k <= 0) {
                if (k < 0) pos = 0;
                break;
            }
            pos += (size_t)k;
        }
        if (p->st == MP_FAIL) break;
        memmove(p->win.data, p->win.data + pos, p->win.len - pos);
        p->win.len -= pos;
        p->win.data[p->win.len] = 0;
        if (!len) return 0;
        if (!pos && p->win.len == p->win.max) {
            fail(p, "a part header block that does not end");
            break;
        }
    }
    *err = p->err;
    return -1;
}

int mp_end(mp_parser *p, lr_err *err) {
    if (p->st == MP_FAIL) {
        *err = p->err;
        return -1;
    }
    if (p->st != MP_DONE) {
        fail(p, p->parts ? "it ends before the closing boundary (was the upload cut short?)" : "no parts");
        *err = p->err;
        return -1;
    }
    return 0;
}

void mp_free(mp_parser *p) {
    if (!p) return;
    lr_buf_free(&p->win);
    free(p);
}
