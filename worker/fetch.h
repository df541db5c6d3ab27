/* fetch: the files of a job for a worker that does not share lorad's disk.
 *
 * Inputs (datasets, a model directory, a reference adapter) are copied from
 * lorad (daemon/remote.c's list/get) into a content-addressed cache:
 * DIR/blobs/<sha256> holds each file once, downloaded to <sha256>.part
 * first (a cut download continues from its size), checked for its size and
 * SHA-256 and only then renamed; a mismatch is an error and the bytes are
 * discarded. DIR/views/<sha256 of the listing>/ gives each input its
 * original names as symbolic links to the blobs (immutable, so jobs reading
 * it never see it change).
 *
 * Outputs go the other way: fetch_push uploads what changed in a local run
 * directory since its last push (DONE markers last, so lorad never holds a
 * checkpoint that looks complete without its files) and deletes there what
 * was deleted here (older checkpoints, DONE first); fetch_pull brings a
 * run's checkpoints from lorad to resume it on this machine. */
#ifndef LR_FETCH_H
#define LR_FETCH_H

#include <stddef.h>
#include <stdint.h>
#include "common/err.h"

typedef struct fetch_ctx {
    const char *url, *token, *ca; /* lorad's worker address, the worker token, a CA file or NULL */
    const char *cache_dir;        /* DIR of the cache (created) */
} fetch_ctx;

/* What fetch_push has sent: (path, size, mtime) of each file. */
typedef struct fetch_sent {
    struct fetch_sent_file {
        char rel[512];
        long long size, mtime_ns;
    } *f;
    size_t n, cap;
} fetch_sent;

/* A local copy of lorad's file or directory `remote`: local gets the path
 * to read it at (a file keeps its base name, a directory its layout). */
int fetch_input(const fetch_ctx *f, const char *remote, char *local, size_t cap, lr_err *err) LR_WARN_UNUSED;
/* Empties local_dir and fills it with lorad's remote_dir (none there: left empty). */
int fetch_pull(const fetch_ctx *f, const char *remote_dir, const char *local_dir, lr_err *err) LR_WARN_UNUSED;
/* Uploads the files of local_dir that changed since the last push into
 * remote_dir (same relative paths). */
int fetch_push(const fetch_ctx *f, fetch_sent *sent, const char *local_dir, const char *remote_dir, lr_err *err) LR_WARN_UNUSED;
/* Records every file of local_dir as on lorad already (what fetch_pull
 * brought), so that deleting one later deletes it there too. */
int fetch_mark_sent(fetch_sent *sent, const char *local_dir, lr_err *err) LR_WARN_UNUSED;
void fetch_sent_free(fetch_sent *s);

#endif
