/* frame: the daemon <-> worker framing.
 *
 * A frame is a 4-byte big-endian length followed by that many bytes holding
 * one JSON object with a string "type". A length of 0, over the decoder's
 * maximum, a body that is not one JSON object, or a missing "type" is a
 * protocol error after which the connection must be closed: the decoder stays
 * in its error state and refuses more input. */
#ifndef LR_FRAME_H
#define LR_FRAME_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include "common/buf.h"
#include "common/err.h"

/* The largest frame either side sends or accepts (an ASSIGN with a full spec
 * is a few KiB; metrics are one point each). */
#define FRAME_MAX (1u << 20)

/* Appends the frame of msg (which must be an object with a "type") to out. */
int frame_encode(const json_t *msg, lr_buf *out, lr_err *err) LR_WARN_UNUSED;

/* An incremental decoder: feed bytes as they arrive, then take frames. */
typedef struct frame_dec {
    lr_buf buf;
    size_t off;      /* bytes of buf already consumed */
    size_t max;      /* largest body accepted */
    int failed;
} frame_dec;

void frame_dec_init(frame_dec *d, size_t max);
void frame_dec_free(frame_dec *d);
/* Adds received bytes. Fails when the decoder has failed before or when the
 * pending bytes would exceed what one maximal frame can hold. */
int frame_dec_feed(frame_dec *d, const void *p, size_t n, lr_err *err) LR_WARN_UNUSED;
/* 1 and *out (new reference) when a whole frame is there, 0 when more bytes
 * are needed, -1 on a protocol error. */
int frame_dec_next(frame_dec *d, json_t **out, lr_err *err) LR_WARN_UNUSED;

/* Blocking helpers for the worker side (a plain socket fd). */
int frame_write_fd(int fd, const json_t *msg, lr_err *err) LR_WARN_UNUSED;
/* What frame_read_fd returns when the peer closed the connection between
 * frames: the normal end of a conversation, told apart from an error by
 * its value, not its message. */
#define FRAME_EOF (-2)

/* Waits at most timeout_ms (-1: forever) for one frame. Returns 1 with *out,
 * 0 on timeout, FRAME_EOF when the peer closed between frames, -1 on an
 * error (a close in the middle of a frame is one). */
int frame_read_fd(int fd, frame_dec *d, int timeout_ms, json_t **out, lr_err *err) LR_WARN_UNUSED;

/* Connects to lorad's worker socket at path (close-on-exec), retrying for
 * 5 s: lorad may spawn a worker, or accept a remote one, a moment before its
 * loop has bound the socket. The fd, or -1 with err. */
int frame_connect_unix(const char *path, lr_err *err) LR_WARN_UNUSED;

#endif
