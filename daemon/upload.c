#include "daemon/upload.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "common/buf.h"
#include "daemon/multipart.h"

#define WBUF (256u << 10)

struct upload {
    char path[1100];
    int fd;
    mp_parser *mp;
    data_stream *ds;
    int in_file;      /* multipart: inside the part named "file" */
    int file_parts;   /* parts named "file" seen */
    int failed;       /* err holds why; later bytes are dropped */
    lr_err err;
    uint64_t bytes;   /* of the dataset itself */
    char filename[256];
    char purpose[32]; /* multipart: the part named "purpose" (OpenAI's files.create), cut to 31 bytes */
    int in_purpose;
    char *wbuf;
    size_t wlen;
};

static int record(upload *u, const lr_err *e) {
    if (!u->failed) u->err = *e;
    u->failed = 1;
    return -1;
}

static int flush(upload *u) {
    size_t off = 0;
    while (off < u->wlen) {
        ssize_t w = write(u->fd, u->wbuf + off, u->wlen - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            lr_err e = {0};
            lr_errp(&e, errno == ENOSPC ? LR_E_IO : LR_E_IO, NULL, "storing the upload: %s",
                    w < 0 ? strerror(errno) : "short write");
            return record(u, &e);
        }
        off += (size_t)w;
    }
    u->wlen = 0;
    return 0;
}

/* Dataset bytes: to the validator and the file. */
static int sink(upload *u, const char *d, size_t n) {
    if (u->failed) return 0;
    lr_err e = {0};
    u->bytes += n;
    if (data_stream_feed(u->ds, d, n, &e) < 0) return record(u, &e);
    while (n) {
        size_t k = WBUF - u->wlen < n ? WBUF - u->wlen : n;
        memcpy(u->wbuf + u->wlen, d, k);
        u->wlen += k, d += k, n -= k;
        if (u->wlen == WBUF && flush(u)) return -1;
    }
    return 0;
}

static int on_part(void *ud, const char *name, const char *filename) {
    upload *u = ud;
    u->in_file = !strcmp(name, "file") && u->file_parts++ == 0;
    u->in_purpose = !strcmp(name, "purpose");
    if (u->in_file && filename[0]) snprintf(u->filename, sizeof u->filename, "%s", filename);
    return 0;
}

static int on_data(void *ud, const char *d, size_t n) {
    upload *u = ud;
    if (u->in_file) sink(u, d, n);
    size_t have = strlen(u->purpose);
    if (u->in_purpose && have < sizeof u->purpose - 1) {
        size_t k = sizeof u->purpose - 1 - have < n ? sizeof u->purpose - 1 - have : n;
        memcpy(u->purpose + have, d, k);
        u->purpose[have + k] = 0;
    }
    return 0;
}

static int on_end(void *ud) {
    ((upload *)ud)->in_file = 0;
    ((upload *)ud)->in_purpose = 0;
    return 0;
}

int upload_open(const char *tmp_dir, const char *content_type, const char *filename, upload **out, lr_err *err) {
    *out = NULL;
    upload *u = calloc(1, sizeof *u);
    if (!u) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
    u->fd = -1;
    snprintf(u->filename, sizeof u->filename, "%s", filename && *filename ? filename : "upload.jsonl");
    u->wbuf = malloc(WBUF);
    if (!u->wbuf) {
        lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
        goto fail;
    }
    if (content_type && !strncasecmp(content_type, "multipart/form-data", 19)) {
        static const mp_callbacks cb = {on_part, on_data, on_end};
        if (mp_open(content_type, &cb, u, &u->mp, err)) goto fail;
    }
    if (data_stream_open(NULL, 0, &u->ds, err) || lr_mkdirs(tmp_dir, err)) goto fail;
    if (lr_pathf(u->path, sizeof u->path, "%s/upload-XXXXXX", tmp_dir)) {
        lr_errp(err, LR_E_INVALID, NULL, "data directory path too long");
        goto fail;
    }
    u->fd = mkstemp(u->path);
    if (u->fd < 0) {
        lr_errp(err, LR_E_IO, NULL, "cannot create a temporary file for the upload: %s", strerror(errno));
        u->path[0] = 0;
        goto fail;
    }
    *out = u;
    return 0;
fail:
    upload_free(u);
    return -1;
}

void upload_feed(upload *u, const char *data, size_t len) {
    if (u->failed || !len) return;
    if (!u->mp) {
        sink(u, data, len);
        return;
    }
    lr_err e = {0};
    if (mp_feed(u->mp, data, len, &e)) record(u, &e);
}

int upload_end(upload *u, data_report *r, lr_err *err) {
    lr_err e = {0};
    memset(r, 0, sizeof *r);
    if (!u->failed && u->mp && mp_end(u->mp, &e)) record(u, &e);
    if (!u->failed && u->mp && !u->file_parts) {
        lr_errp(&e, LR_E_INVALID, "file", "multipart upload without a part named \"file\"");
        record(u, &e);
    }
    if (!u->failed && u->bytes == 0) {
        lr_errp(&e, LR_E_INVALID, "file", "the dataset is empty");
        record(u, &e);
    }
    if (!u->failed && flush(u) == 0 && fsync(u->fd)) {
        lr_errp(&e, LR_E_IO, NULL, "storing the upload: %s", strerror(errno));
        record(u, &e);
    }
    if (u->failed) {
        *err = u->err;
        return -1;
    }
    return data_stream_end(u->ds, r, err);
}

uint64_t upload_bytes(const upload *u) { return u->bytes; }
const char *upload_filename(const upload *u) { return u->filename; }
const char *upload_purpose(const upload *u) { return u->purpose; }

int upload_take(upload *u, const char *path, lr_err *err) {
    if (rename(u->path, path))
        return lr_errp(err, LR_E_IO, NULL, "storing the dataset: %s", strerror(errno));
    u->path[0] = 0;
    return 0;
}

void upload_free(upload *u) {
    if (!u) return;
    if (u->fd >= 0) close(u->fd);
    if (u->path[0]) unlink(u->path);
    mp_free(u->mp);
    data_stream_free(u->ds);
    free(u->wbuf);
    free(u);
}

void upload_sweep(const char *tmp_dir) {
    DIR *d = opendir(tmp_dir);
    if (!d) return;
    struct dirent *e;
    char p[1400];
    while ((e = readdir(d)))
        if (!strncmp(e->d_name, "upload-", 7) && !lr_pathf(p, sizeof p, "%s/%s", tmp_dir, e->d_name)) unlink(p);
    closedir(d);
}
