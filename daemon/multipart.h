/* multipart: a streaming multipart/form-data parser (RFC 7578).
 *
 * Bytes go in as they arrive, in pieces of any size; parts come out through
 * callbacks, their data in pieces too, so an upload of any size is never
 * held in memory. Limits: a boundary of 1..70 characters, part headers of at
 * most MP_MAX_HEADER bytes, at most MP_MAX_PARTS parts, and a preamble of at
 * most MP_MAX_PREAMBLE bytes. Anything else is a clear error. */
#ifndef LR_MULTIPART_H
#define LR_MULTIPART_H

#include <stddef.h>
#include "common/err.h"

#define MP_MAX_HEADER 8192
#define MP_MAX_PARTS 64
#define MP_MAX_PREAMBLE 65536

typedef struct mp_callbacks {
    /* A part starts: its Content-Disposition name and filename ("" when
     * absent; both cut to their buffers' sizes). */
    int (*part_begin)(void *ud, const char *name, const char *filename);
    int (*part_data)(void *ud, const char *data, size_t len);
    int (*part_end)(void *ud);
} mp_callbacks;

typedef struct mp_parser mp_parser;

/* content_type: the request's Content-Type (its boundary parameter is used). */
int mp_open(const char *content_type, const mp_callbacks *cb, void *ud, mp_parser **out, lr_err *err) LR_WARN_UNUSED;
/* -1 when the body is malformed or a callback returned non-zero (err says
 * which); later calls keep failing. */
int mp_feed(mp_parser *p, const char *data, size_t len, lr_err *err);
/* The body has ended: -1 unless the closing boundary was seen. */
int mp_end(mp_parser *p, lr_err *err);
void mp_free(mp_parser *p);

#endif
