#include "worker/ckpt.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/buf.h"
#include "formats/safetensors.h"

#define CKPT_MAX_STATE (16u << 20)
#define CKPT_MAX_LIST 4096

static int rm_tree(const char *path) {
    DIR *d = opendir(path);
    if (!d) return unlink(path) == 0 || errno == ENOENT ? 0 : -1;
    struct dirent *e;
    int rc = 0;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char p[4096];
        if (lr_pathf(p, sizeof p, "%s/%s", path, e->d_name) || rm_tree(p)) rc = -1;
    }
    closedir(d);
    if (rmdir(path)) rc = -1;
    return rc;
}

static int is_complete(const char *dir) {
    char p[4200];
    return !lr_pathf(p, sizeof p, "%s/DONE", dir) && access(p, F_OK) == 0;
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

int ckpt_list(const char *run_dir, int64_t *steps, int cap, lr_err *err) {
    char root[4096];
    snprintf(root, sizeof root, "%s/checkpoints", run_dir);
    DIR *d = opendir(root);
    if (!d) return errno == ENOENT ? 0 : lr_errp(err, LR_E_IO, NULL, "%s: %s", root, strerror(errno));
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < cap) {
        char *end;
        if (strncmp(e->d_name, "checkpoint-", 11)) continue;
        long long s = strtoll(e->d_name + 11, &end, 10);
        if (*end || s < 0) continue; /* temporaries end in ".tmp" */
        char p[4200];
        if (!lr_pathf(p, sizeof p, "%s/%s", root, e->d_name) && is_complete(p)) steps[n++] = s;
    }
    closedir(d);
    qsort(steps, (size_t)n, sizeof *steps, cmp_i64);
    return n;
}

int ckpt_latest(const char *run_dir, char *dir, size_t cap, int64_t *step, lr_err *err) {
    int64_t *steps = malloc(CKPT_MAX_LIST * sizeof *steps);
    if (!steps) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
    int n = ckpt_list(run_dir, steps, CKPT_MAX_LIST, err);
    int rc = n < 0 ? -1 : 0;
    if (n > 0) {
        *step = steps[n - 1];
        snprintf(dir, cap, "%s/checkpoints/checkpoint-%" PRId64, run_dir, *step);
        rc = 1;
    }
    free(steps);
    return rc;
}

static int write_marker(const char *dir, lr_err *err) {
    char p[4200];
    if (lr_pathf(p, sizeof p, "%s/DONE", dir)) return lr_errp(err, LR_E_IO, NULL, "%s: path too long", dir);
    return lr_write_file_atomic(p, "", 0, err);
}

static int fsync_dir(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

/* Drops the oldest complete checkpoints beyond keep, and stale temporaries. */
static void rotate(const char *run_dir, int keep) {
    char root[4096];
    snprintf(root, sizeof root, "%s/checkpoints", run_dir);
    DIR *d = opendir(root);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            size_t l = strlen(e->d_name);
            if (l > 4 && !strcmp(e->d_name + l - 4, ".tmp")) {
                char p[4200];
                if (!lr_pathf(p, sizeof p, "%s/%s", root, e->d_name)) rm_tree(p);
            }
        }
        closedir(d);
    }
    if (keep <= 0) return;
    int64_t steps[CKPT_MAX_LIST];
    lr_err ignored;
    int n = ckpt_list(run_dir, steps, CKPT_MAX_LIST, &ignored);
    for (int i = 0; i < n - keep; i++) {
        char p[4200];
        snprintf(p, sizeof p, "%s/checkpoint-%" PRId64, root, steps[i]);
        rm_tree(p);
    }
}

int ckpt_save(const char *run_dir, int64_t step, ckpt_write_fn write_adapter, void *ud, const ckpt_tensor *extra,
              int n_extra, const json_t *state, int keep, char *dir_out, size_t dir_cap, lr_err *err) {
    char root[4096], tmp[4200], final[4200], p[4300];
    st_writer *w = NULL;
    char *text = NULL;
    snprintf(root, sizeof root, "%s/checkpoints", run_dir);
    snprintf(tmp, sizeof tmp, "%s/checkpoint-%" PRId64 ".tmp", root, step);
    snprintf(final, sizeof final, "%s/checkpoint-%" PRId64, root, step);
    if (lr_mkdirs(root, err)) return -1;
    rm_tree(tmp);
    if (lr_mkdirs(tmp, err)) return -1;
    if (write_adapter(ud, tmp, err)) goto fail;

    w = st_writer_new();
    if (!w) {
        lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
        goto fail;
    }
    for (int i = 0; i < n_extra; i++) {
        int64_t shape[1] = {(int64_t)extra[i].n};
        if (st_writer_add(w, extra[i].name, ST_F32, 1, shape, extra[i].data, err)) goto fail;
    }
    snprintf(p, sizeof p, "%s/optimizer.safetensors", tmp);
    if (st_writer_write(w, p, err)) goto fail;

    text = json_dumps(state, JSON_INDENT(2) | JSON_SORT_KEYS);
    if (!text) {
        lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
        goto fail;
    }
    snprintf(p, sizeof p, "%s/state.json", tmp);
    if (lr_write_file_atomic(p, text, strlen(text), err)) goto fail;
    if (write_marker(tmp, err)) goto fail;
    rm_tree(final); /* a re-run of the same step after a resume replaces it */
    if (rename(tmp, final)) {
        lr_errp(err, LR_E_IO, NULL, "checkpoint %s: rename failed: %s", final, strerror(errno));
        goto fail;
    }
    fsync_dir(root);
    free(text);
    st_writer_free(w);
    rotate(run_dir, keep);
    if (dir_out) snprintf(dir_out, dir_cap, "%s", final);
    return 0;
fail:
    lr_err_prefix(err, "saving checkpoint at step %" PRId64 ": ", step);
    free(text);
    st_writer_free(w);
    rm_tree(tmp);
    return -1;
}

int ckpt_load(const char *dir, ckpt_tensor *extra, int n_extra, json_t **state, lr_err *err) {
    char p[4200];
    st_file *f = NULL;
    char *text = NULL;
    *state = NULL;
    if (!is_complete(dir)) return lr_errp(err, LR_E_IO, NULL, "checkpoint %s is incomplete (no DONE marker)", dir);
    snprintf(p, sizeof p, "%s/optimizer.safetensors", dir);
    if (st_open(p, &f, err)) goto fail;
    for (int i = 0; i < n_extra; i++) {
        const st_tensor *t = st_find(f, extra[i].name);
        if (!t || t->dtype != ST_F32 || (size_t)st_numel(t) != extra[i].n) {
            lr_errp(err, LR_E_IO, NULL, "%s: tensor '%s' is missing or has the wrong size", p, extra[i].name);
            goto fail;
        }
        memcpy(extra[i].data, t->data, extra[i].n * sizeof(float));
    }
    snprintf(p, sizeof p, "%s/state.json", dir);
    size_t len;
    if (lr_read_file(p, CKPT_MAX_STATE, &text, &len, err)) goto fail;
    json_error_t je;
    *state = json_loadb(text, len, 0, &je);
    if (!*state) {
        lr_errp(err, LR_E_IO, NULL, "%s: invalid JSON: %s", p, je.text);
        goto fail;
    }
    free(text);
    st_close(f);
    return 0;
fail:
    lr_err_prefix(err, "loading checkpoint: ");
    free(text);
    if (f) st_close(f);
    return -1;
}
