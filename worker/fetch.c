#include "worker/fetch.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/buf.h"
#include "proto/tlink.h"

#define IO_TIMEOUT_S 60
#define WALK_MAX_DEPTH 8

/* One request on a fresh connection: req (stolen) gets the token; *c stays
 * open for the bytes that follow when body is NULL, else body's bytes go
 * out before the answer is read. */
static int request(const fetch_ctx *f, json_t *req, tl_conn *c, json_t **ans, lr_err *err) {
    *ans = NULL;
    json_object_set_new(req, "token", json_string(f->token));
    int rc = tl_dial(f->url, f->ca, IO_TIMEOUT_S, c, err) || tl_send(c, req, err) || tl_recv(c, ans, err) ? -1 : 0;
    json_decref(req);
    if (!rc && !json_is_true(json_object_get(*ans, "ok"))) {
        const char *why = json_string_value(json_object_get(*ans, "error"));
        lr_errp(err, !strcmp(json_string_value(json_object_get(*ans, "code")) ? json_string_value(json_object_get(*ans, "code")) : "", "not_found")
                         ? LR_E_NOTFOUND : LR_E_IO,
                NULL, "lorad refused: %s", why ? why : "no reason given");
        rc = -1;
    }
    if (rc) {
        json_decref(*ans);
        *ans = NULL;
        tl_close(c);
    }
    return rc;
}

static int list(const fetch_ctx *f, const char *remote, json_t **ans, lr_err *err) {
    tl_conn c;
    if (request(f, json_pack("{s:s, s:s}", "type", "list", "path", remote), &c, ans, err)) return -1;
    tl_close(&c);
    if (!json_is_array(json_object_get(*ans, "files"))) {
        json_decref(*ans);
        *ans = NULL;
        return lr_errf(err, "lorad's listing of %s has no files", remote);
    }
    return 0;
}

static int is_hex64(const char *s) { return s && strlen(s) == 64 && strspn(s, "0123456789abcdef") == 64; }

/* lorad's file remote (size bytes, sha256 want) into dest, through
 * dest.part: resumed where a cut download stopped, checked, renamed. */
static int download(const fetch_ctx *f, const char *remote, long long size, const char *want, const char *dest,
                    lr_err *err) {
    static __thread char buf[1 << 16];
    char part[PATH_MAX + 8], hex[65];
    if (lr_pathf(part, sizeof part, "%s.part", dest)) return lr_errf(err, "%s: path too long", dest);
    struct stat sb;
    long long off = stat(part, &sb) == 0 ? (long long)sb.st_size : 0, got = 0;
    if (off > size) {
        unlink(part);
        off = 0;
    }
    if (off < size) {
        tl_conn c;
        json_t *ans = NULL;
        if (request(f, json_pack("{s:s, s:s, s:I}", "type", "get", "path", remote, "offset", (json_int_t)off), &c, &ans, err))
            return lr_err_prefix(err, "downloading %s: ", remote);
        long long now = json_integer_value(json_object_get(ans, "size"));
        json_decref(ans);
        if (now != size) {
            tl_close(&c);
            return lr_errf(err, "%s changed on lorad while it was copied (%lld bytes, listed %lld); try again", remote,
                           now, size);
        }
        int fd = open(part, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (fd < 0) {
            tl_close(&c);
            return lr_errp(err, LR_E_IO, NULL, "%s: %s", part, strerror(errno));
        }
        int rc = 0;
        for (long long left = size - off; left > 0 && !rc;) {
            long n = tl_read(&c, buf, left < (long long)sizeof buf ? (size_t)left : sizeof buf, err);
            if (n <= 0) {
                rc = n ? -1 : lr_errf(err, "lorad closed the connection %lld bytes before the end", left);
                break;
            }
            if (write(fd, buf, (size_t)n) != n) rc = lr_errp(err, LR_E_IO, NULL, "%s: %s", part, strerror(errno));
            left -= n;
        }
        tl_close(&c);
        if (close(fd) && !rc) rc = lr_errp(err, LR_E_IO, NULL, "%s: %s", part, strerror(errno));
        if (rc) return lr_err_prefix(err, "downloading %s (kept %s to continue): ", remote, part);
    }
    if (size == 0) { /* nothing to download, but an empty file to keep */
        int fd = open(part, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
        if (fd < 0) return lr_errp(err, LR_E_IO, NULL, "%s: %s", part, strerror(errno));
        close(fd);
    }
    if (tl_sha256_file(part, &got, hex, err)) return -1;
    if (got != size || strcmp(hex, want)) {
        unlink(part);
        return lr_errp(err, LR_E_IO, NULL,
                       "sha256 mismatch for %s: lorad listed %lld bytes with sha256 %s, the download has %lld bytes "
                       "with sha256 %s; it was discarded",
                       remote, size, want, got, hex);
    }
    if (rename(part, dest)) return lr_errp(err, LR_E_IO, NULL, "%s: %s", dest, strerror(errno));
    return 0;
}

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    remove(p);
    return 0;
}

static void rm_tree(const char *dir) { nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS); }

static int mkparent(const char *path, lr_err *err) {
    char d[PATH_MAX];
    if (lr_pathf(d, sizeof d, "%s", path)) return lr_errf(err, "%s: path too long", path);
    char *s = strrchr(d, '/');
    if (!s) return 0;
    *s = 0;
    return lr_mkdirs(d, err);
}

/* A file of a listing: its fields checked (lorad's answer is input too). */
static int entry(const json_t *o, const char **rel, long long *size, const char **sha, lr_err *err) {
    *rel = json_string_value(json_object_get(o, "path"));
    *size = json_integer_value(json_object_get(o, "size"));
    *sha = json_string_value(json_object_get(o, "sha256"));
    if (!*rel || strstr(*rel, "..") || (*rel)[0] == '/' || *size < 0 || !is_hex64(*sha))
        return lr_errf(err, "lorad listed a file with a bad path, size or sha256");
    return 0;
}

int fetch_input(const fetch_ctx *f, const char *remote, char *local, size_t cap, lr_err *err) {
    json_t *ans = NULL;
    char root[PATH_MAX], blobs[PATH_MAX + 8], view[PATH_MAX + 128], tmp[PATH_MAX + 160], blob[PATH_MAX + 80],
        link_[PATH_MAX + 800], key[65];
    int rc = -1;
    if (lr_mkdirs(f->cache_dir, err) || !realpath(f->cache_dir, root) ||
        lr_pathf(blobs, sizeof blobs, "%s/blobs", root) || lr_mkdirs(blobs, err))
        return err->msg[0] ? -1 : lr_errf(err, "cache %s: %s", f->cache_dir, strerror(errno));
    if (list(f, remote, &ans, err)) return -1;
    int dir = json_is_true(json_object_get(ans, "dir"));
    const char *base = strrchr(remote, '/') ? strrchr(remote, '/') + 1 : remote;
    /* the view is named by what it holds, so it is never rebuilt under a reader */
    char *listing = json_dumps(json_object_get(ans, "files"), JSON_COMPACT | JSON_SORT_KEYS);
    if (!listing) {
        lr_errf(err, "out of memory");
        goto out;
    }
    lr_buf kb;
    lr_buf_init(&kb, 1u << 30);
    int kbad = lr_buf_adds(&kb, base) || lr_buf_adds(&kb, "\n") || lr_buf_adds(&kb, listing);
    free(listing);
    tl_sha h = NULL;
    if (kbad || tl_sha_begin(&h, err)) {
        lr_buf_free(&kb);
        if (kbad) lr_errf(err, "out of memory");
        goto out;
    }
    tl_sha_add(h, kb.data, kb.len);
    tl_sha_end(h, key);
    lr_buf_free(&kb);
    if (lr_pathf(view, sizeof view, "%s/views/%s", root, key)) goto toolong;
    struct stat sb;
    size_t i;
    json_t *o;
    json_array_foreach(json_object_get(ans, "files"), i, o) {
        const char *rel, *sha;
        long long size;
        char from[PATH_MAX + 600];
        if (entry(o, &rel, &size, &sha, err)) goto out;
        if (lr_pathf(blob, sizeof blob, "%s/%s", blobs, sha) ||
            lr_pathf(from, sizeof from, "%s%s%s", remote, rel[0] ? "/" : "", rel))
            goto toolong;
        if (!(stat(blob, &sb) == 0 && sb.st_size == size) && download(f, from, size, sha, blob, err)) goto out;
    }
    if (stat(view, &sb)) {
        if (lr_pathf(tmp, sizeof tmp, "%s.tmp%ld", view, (long)getpid())) goto toolong;
        rm_tree(tmp);
        json_array_foreach(json_object_get(ans, "files"), i, o) {
            const char *rel, *sha;
            long long size;
            if (entry(o, &rel, &size, &sha, err)) goto out;
            if (lr_pathf(blob, sizeof blob, "%s/%s", blobs, sha) ||
                lr_pathf(link_, sizeof link_, "%s/%s", tmp, dir ? rel : base))
                goto toolong;
            if (mkparent(link_, err)) goto out;
            if (symlink(blob, link_)) {
                lr_errp(err, LR_E_IO, NULL, "%s: %s", link_, strerror(errno));
                goto out;
            }
        }
        if (lr_mkdirs(tmp, err)) goto out; /* an empty directory has no files to make it */
        if (rename(tmp, view)) rm_tree(tmp); /* another agent made the same view meanwhile */
    }
    if ((dir ? snprintf(local, cap, "%s", view) : snprintf(local, cap, "%s/%s", view, base)) >= (int)cap) goto toolong;
    rc = 0;
    goto out;
toolong:
    lr_errf(err, "a cache path for %s is too long", remote);
out:
    json_decref(ans);
    return rc;
}

static int is_done(const char *rel) {
    const char *b = strrchr(rel, '/');
    return !strcmp(b ? b + 1 : rel, "DONE");
}

int fetch_pull(const fetch_ctx *f, const char *remote_dir, const char *local_dir, lr_err *err) {
    json_t *ans = NULL;
    lr_err e = {0};
    rm_tree(local_dir);
    if (lr_mkdirs(local_dir, err)) return -1;
    if (list(f, remote_dir, &ans, &e)) {
        if (e.code == LR_E_NOTFOUND) return 0; /* nothing written there yet */
        *err = e;
        return -1;
    }
    int rc = 0;
    /* DONE markers last: a cut pull never leaves a checkpoint that looks whole */
    for (int pass = 0; pass < 2 && !rc; pass++) {
        size_t i;
        json_t *o;
        json_array_foreach(json_object_get(ans, "files"), i, o) {
            const char *rel, *sha;
            long long size;
            char from[PATH_MAX], to[PATH_MAX];
            if ((rc = entry(o, &rel, &size, &sha, err))) break;
            if (!rel[0] || is_done(rel) != pass) continue;
            if (lr_pathf(from, sizeof from, "%s/%s", remote_dir, rel) || lr_pathf(to, sizeof to, "%s/%s", local_dir, rel)) {
                rc = lr_errf(err, "%s: path too long", rel);
                break;
            }
            if ((rc = mkparent(to, err)) || (rc = download(f, from, size, sha, to, err))) break;
        }
    }
    json_decref(ans);
    return rc;
}

static int upload(const fetch_ctx *f, const char *local, const char *remote, lr_err *err) {
    static __thread char buf[1 << 16];
    char hex[65];
    long long size;
    if (tl_sha256_file(local, &size, hex, err)) return -1;
    int fd = open(local, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return lr_errp(err, LR_E_IO, NULL, "%s: %s", local, strerror(errno));
    tl_conn c;
    json_t *req = json_pack("{s:s, s:s, s:I, s:s, s:s}", "type", "put", "path", remote, "size", (json_int_t)size,
                            "sha256", hex, "token", f->token);
    json_t *ans = NULL;
    int rc = tl_dial(f->url, f->ca, IO_TIMEOUT_S, &c, err) || tl_send(&c, req, err) ? -1 : 0;
    json_decref(req);
    for (long long left = size; !rc && left > 0;) {
        ssize_t n = read(fd, buf, left < (long long)sizeof buf ? (size_t)left : sizeof buf);
        if (n <= 0) rc = lr_errp(err, LR_E_IO, NULL, "%s: %s", local, n ? strerror(errno) : "shorter than a moment ago");
        else rc = tl_write_all(&c, buf, (size_t)n, err);
        left -= n;
    }
    close(fd);
    if (!rc && !tl_recv(&c, &ans, err) && !json_is_true(json_object_get(ans, "ok"))) {
        const char *why = json_string_value(json_object_get(ans, "error"));
        rc = lr_errf(err, "lorad refused %s: %s", remote, why ? why : "no reason given");
    } else if (!ans) {
        rc = -1;
    }
    json_decref(ans);
    if (c.fd >= 0) tl_close(&c);
    return rc;
}

static int walk(const char *root, const char *rel, int depth, json_t *out) {
    char d[PATH_MAX];
    if (lr_pathf(d, sizeof d, "%s%s%s", root, rel[0] ? "/" : "", rel)) return -1;
    DIR *dp = opendir(d);
    if (!dp) return -1;
    struct dirent *de;
    while ((de = readdir(dp))) {
        const char *nm = de->d_name;
        size_t l = strlen(nm);
        if (nm[0] == '.' || (l > 4 && !strcmp(nm + l - 4, ".tmp")) || (l > 5 && !strcmp(nm + l - 5, ".part"))) continue;
        char sub[PATH_MAX], full[PATH_MAX * 2];
        struct stat sb;
        if (lr_pathf(sub, sizeof sub, "%s%s%s", rel, rel[0] ? "/" : "", nm) ||
            lr_pathf(full, sizeof full, "%s/%s", root, sub) || lstat(full, &sb))
            continue;
        if (S_ISDIR(sb.st_mode) && depth < WALK_MAX_DEPTH) walk(root, sub, depth + 1, out);
        else if (S_ISREG(sb.st_mode)) json_array_append_new(out, json_string(sub));
    }
    closedir(dp);
    return 0;
}

/* Records rel as sent with its size and mtime; the index of its entry, or -1 out of memory. */
static long note_sent(fetch_sent *sent, const char *rel, const struct stat *sb) {
    size_t k = 0;
    while (k < sent->n && strcmp(sent->f[k].rel, rel)) k++;
    if (k == sent->n) {
        if (sent->n == sent->cap) {
            size_t nc = sent->cap ? sent->cap * 2 : 64;
            void *p = realloc(sent->f, nc * sizeof *sent->f);
            if (!p) return -1;
            sent->f = p;
            sent->cap = nc;
        }
        snprintf(sent->f[sent->n++].rel, sizeof sent->f->rel, "%s", rel);
    }
    sent->f[k].size = (long long)sb->st_size;
    sent->f[k].mtime_ns = (long long)sb->st_mtim.tv_sec * 1000000000LL + sb->st_mtim.tv_nsec;
    return (long)k;
}

int fetch_mark_sent(fetch_sent *sent, const char *local_dir, lr_err *err) {
    json_t *files = json_array();
    int rc = 0;
    size_t i;
    json_t *v;
    walk(local_dir, "", 0, files);
    json_array_foreach(files, i, v) {
        char p[PATH_MAX];
        struct stat sb;
        const char *rel = json_string_value(v);
        if (strlen(rel) >= sizeof sent->f->rel || lr_pathf(p, sizeof p, "%s/%s", local_dir, rel) || stat(p, &sb)) continue;
        if (note_sent(sent, rel, &sb) < 0) {
            rc = lr_errf(err, "out of memory");
            break;
        }
    }
    json_decref(files);
    return rc;
}

int fetch_push(const fetch_ctx *f, fetch_sent *sent, const char *local_dir, const char *remote_dir, lr_err *err) {
    json_t *files = json_array();
    int rc = 0;
    walk(local_dir, "", 0, files);
    for (int pass = 0; pass < 2 && !rc; pass++) {
        size_t i;
        json_t *v;
        json_array_foreach(files, i, v) {
            const char *rel = json_string_value(v);
            if (is_done(rel) != pass) continue;
            char from[PATH_MAX], to[PATH_MAX];
            struct stat sb;
            if (lr_pathf(from, sizeof from, "%s/%s", local_dir, rel) || lr_pathf(to, sizeof to, "%s/%s", remote_dir, rel) ||
                strlen(rel) >= sizeof sent->f->rel || stat(from, &sb))
                continue; /* pruned meanwhile (save_total_limit) */
            long long mt = (long long)sb.st_mtim.tv_sec * 1000000000LL + sb.st_mtim.tv_nsec;
            size_t k = 0;
            while (k < sent->n && strcmp(sent->f[k].rel, rel)) k++;
            if (k < sent->n && sent->f[k].size == (long long)sb.st_size && sent->f[k].mtime_ns == mt) continue;
            if ((rc = upload(f, from, to, err))) break;
            if (note_sent(sent, rel, &sb) < 0) {
                rc = lr_errf(err, "out of memory");
                break;
            }
        }
    }
    /* what the trainer deleted since (older checkpoints) goes on lorad's
     * side too, DONE markers first: a half-deleted checkpoint never looks whole */
    for (int pass = 1; pass >= 0 && !rc; pass--)
        for (size_t k = 0; k < sent->n && !rc;) {
            char from[PATH_MAX], to[PATH_MAX];
            struct stat sb;
            if (is_done(sent->f[k].rel) != pass || lr_pathf(from, sizeof from, "%s/%s", local_dir, sent->f[k].rel) ||
                lstat(from, &sb) == 0 || lr_pathf(to, sizeof to, "%s/%s", remote_dir, sent->f[k].rel)) {
                k++;
                continue;
            }
            tl_conn c;
            json_t *ans = NULL;
            if ((rc = request(f, json_pack("{s:s, s:s}", "type", "rm", "path", to), &c, &ans, err))) break;
            tl_close(&c);
            json_decref(ans);
            sent->f[k] = sent->f[--sent->n];
        }
    json_decref(files);
    return rc;
}

void fetch_sent_free(fetch_sent *s) {
    free(s->f);
    memset(s, 0, sizeof *s);
}
