#include "daemon/runner.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/buf.h"
#include "daemon/models.h"
#include "daemon/store.h"
#include "proto/msg.h"
#include "formats/merge.h"

extern char **environ;

#define POLL_MS 200         /* how soon a child notices runner_stop */
#define KILL_GRACE_S 5.0    /* after SIGKILL, how long to wait for the pipes to close */
#define ERR_TAIL 2048       /* bytes of a child's stderr kept for the message */
#define MERGE_OUTPUT (64u << 10)
#define MERGING_PREFIX ".merging-"
#define COPY_CHUNK (8u << 20)

typedef struct merge_task {
    struct merge_task *next;
    runner *r;
    pthread_t th;
    atomic_int done;
    int full; /* model_dir is a full_sft run directory, copied instead of merged */
    char job[64], name[64];
    char model_dir[PATH_MAX], adapter_dir[PATH_MAX], tmp_dir[PATH_MAX], final_dir[PATH_MAX];
} merge_task;

struct runner {
    char *worker_bin, *data_dir, *db_path;
    int max_generations, gen_timeout_s, gen_threads, gen_queue;
    atomic_int generations;
    atomic_int gen_waiting; /* runner_generate_one calls waiting for a slot */
    atomic_int stopping;
    pthread_mutex_t mu; /* guards merges */
    merge_task *merges;
};

static double now_mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- one child with captured output ---- */

typedef struct child_result {
    lr_buf out;            /* stdout, at most the cap given */
    char err_tail[ERR_TAIL];
    size_t err_len;
    int status;            /* from waitpid */
    int timed_out, stopped, overflow;
} child_result;

static void tail_add(child_result *res, const char *p, size_t n) {
    size_t keep = ERR_TAIL - 1;
    if (n >= keep) {
        memcpy(res->err_tail, p + n - keep, keep);
        res->err_len = keep;
    } else {
        if (res->err_len + n > keep) {
            size_t drop = res->err_len + n - keep;
            memmove(res->err_tail, res->err_tail + drop, res->err_len - drop);
            res->err_len -= drop;
        }
        memcpy(res->err_tail + res->err_len, p, n);
        res->err_len += n;
    }
    res->err_tail[res->err_len] = 0;
}

/* The last non-empty line of the child's stderr: lora-worker says what went
 * wrong there, last. */
static const char *last_line(child_result *res) {
    char *s = res->err_tail;
    size_t n = res->err_len;
    while (n && (s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == ' ')) s[--n] = 0;
    char *nl = memrchr(s, '\n', n);
    return nl ? nl + 1 : s;
}

/* Runs argv to completion: stdout into res->out (killed past out_cap),
 * stderr's tail kept. deadline: monotonic seconds, 0 = none. Returns -1
 * only when the child could not be started; how it ended is in res. */
static int child_run(runner *r, char *const argv[], double deadline, size_t out_cap, child_result *res, lr_err *err) {
    memset(res, 0, sizeof *res);
    lr_buf_init(&res->out, out_cap);
    int op[2] = {-1, -1}, ep[2] = {-1, -1};
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t at;
    int fa_ok = 0, at_ok = 0, rc = -1;
    pid_t pid = -1;
    if (pipe2(op, O_CLOEXEC) || pipe2(ep, O_CLOEXEC)) {
        lr_errp(err, LR_E_IO, NULL, "pipe: %s", strerror(errno));
        goto out;
    }
    fa_ok = !posix_spawn_file_actions_init(&fa);
    at_ok = !posix_spawnattr_init(&at);
    sigset_t none, dfl;
    sigemptyset(&none);
    sigfillset(&dfl);
    sigdelset(&dfl, SIGKILL);
    sigdelset(&dfl, SIGSTOP);
    /* The pipes' own ends are close-on-exec; dup2 makes fresh 1 and 2. The
     * child starts with no blocked signals and default dispositions (lorad
     * ignores SIGPIPE; the HTTP threads block some signals). */
    if (!fa_ok || !at_ok || posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0) ||
        posix_spawn_file_actions_adddup2(&fa, op[1], 1) || posix_spawn_file_actions_adddup2(&fa, ep[1], 2) ||
        posix_spawnattr_setsigmask(&at, &none) || posix_spawnattr_setsigdefault(&at, &dfl) ||
        posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF)) {
        lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
        goto out;
    }
    int e = posix_spawn(&pid, argv[0], &fa, &at, argv, environ);
    if (e) {
        pid = -1;
        lr_errp(err, LR_E_IO, NULL, "cannot run %s: %s", argv[0], strerror(e));
        goto out;
    }
    close(op[1]);
    close(ep[1]);
    op[1] = ep[1] = -1;
    struct pollfd pf[2] = {{.fd = op[0], .events = POLLIN}, {.fd = ep[0], .events = POLLIN}};
    double killed_at = 0;
    char chunk[65536];
    while (pf[0].fd >= 0 || pf[1].fd >= 0) {
        double now = now_mono();
        if (!killed_at) {
            int why = atomic_load(&r->stopping) ? 1 : deadline > 0 && now >= deadline ? 2 : res->overflow ? 3 : 0;
            if (why) {
                res->stopped = why == 1;
                res->timed_out = why == 2;
                kill(pid, SIGKILL);
                killed_at = now;
            }
        } else if (now - killed_at > KILL_GRACE_S) {
            break; /* something else holds the pipes open; the child itself is gone */
        }
        int wait_ms = POLL_MS;
        if (!killed_at && deadline > 0 && (deadline - now) * 1000 < wait_ms) wait_ms = (int)((deadline - now) * 1000) + 1;
        int n = poll(pf, 2, wait_ms);
        if (n < 0 && errno != EINTR) {
            res->stopped = 1;
            kill(pid, SIGKILL);
            break;
        }
        for (int i = 0; n > 0 && i < 2; i++) {
            if (pf[i].fd < 0 || !pf[i].revents) continue;
            ssize_t got = read(pf[i].fd, chunk, sizeof chunk);
            if (got < 0 && (errno == EINTR || errno == EAGAIN)) continue;
            if (got <= 0) {
                close(pf[i].fd);
                pf[i].fd = -1;
                if (i == 0) op[0] = -1;
                else ep[0] = -1;
                continue;
            }
            if (i == 1) tail_add(res, chunk, (size_t)got);
            else if (!res->overflow && lr_buf_add(&res->out, chunk, (size_t)got)) res->overflow = 1;
        }
    }
    while (waitpid(pid, &res->status, 0) < 0 && errno == EINTR) {
    }
    rc = 0;
out:
    for (int i = 0; i < 2; i++) {
        if (op[i] >= 0) close(op[i]);
        if (ep[i] >= 0) close(ep[i]);
    }
    if (fa_ok) posix_spawn_file_actions_destroy(&fa);
    if (at_ok) posix_spawnattr_destroy(&at);
    return rc;
}

static void child_free(child_result *res) { lr_buf_free(&res->out); }

/* Turns how a finished child ended into an error, 0 when it succeeded. A
 * lora-worker command run with --json says why it failed in an error
 * object, its class and the input it refused included (msg_child_error);
 * a child that died before writing one is told by its last stderr line,
 * unclassified. */
static int child_error(child_result *res, const char *what, lr_err *err) {
    if (res->stopped) return lr_errp(err, LR_E_INTERNAL, NULL, "%s was stopped: lorad is shutting down", what);
    if (res->timed_out) return lr_errp(err, LR_E_TIMEOUT, NULL, "%s ran past its time limit and was stopped", what);
    if (res->overflow)
        return lr_errp(err, LR_E_INTERNAL, NULL, "%s printed more than %zu bytes and was stopped", what, res->out.max);
    if (WIFEXITED(res->status) && WEXITSTATUS(res->status) == 0) return 0;
    lr_err ce = {0};
    if (res->out.data && !msg_child_error_parse(res->out.data, res->out.len, &ce))
        return lr_errp(err, ce.code, ce.param, "%s: %s", what, ce.msg);
    const char *msg = last_line(res);
    if (*msg) return lr_errp(err, LR_E_INTERNAL, NULL, "%s: %s", what, msg);
    if (WIFSIGNALED(res->status))
        return lr_errp(err, LR_E_INTERNAL, NULL, "%s died of signal %d", what, WTERMSIG(res->status));
    return lr_errp(err, LR_E_INTERNAL, NULL, "%s exited with status %d", what, WEXITSTATUS(res->status));
}

/* ---- removing a partial folder ---- */

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)ftw;
    return flag == FTW_DP ? rmdir(path) : unlink(path);
}

static void rm_tree(const char *dir) { nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS); }

/* ---- life cycle ---- */

int runner_new(const runner_config *cfg, runner **out, lr_err *err) {
    *out = NULL;
    runner *r = calloc(1, sizeof *r);
    if (!r) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
    r->worker_bin = strdup(cfg->worker_bin);
    r->data_dir = strdup(cfg->data_dir);
    r->db_path = strdup(cfg->db_path);
    r->max_generations = cfg->max_generations;
    r->gen_timeout_s = cfg->gen_timeout_s;
    r->gen_threads = cfg->gen_threads > 0 ? cfg->gen_threads : 1;
    r->gen_queue = cfg->gen_queue < 0 ? 0 : cfg->gen_queue > RUNNER_GEN_QUEUE ? RUNNER_GEN_QUEUE : cfg->gen_queue;
    pthread_mutex_init(&r->mu, NULL);
    if (!r->worker_bin || !r->data_dir || !r->db_path) {
        runner_free(r);
        return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
    }
    /* No merge runs yet: any .merging-* folder is what a killed lorad left. */
    char dir[PATH_MAX], p[PATH_MAX];
    if (!lr_pathf(dir, sizeof dir, "%s/models", r->data_dir)) {
        DIR *d = opendir(dir);
        struct dirent *de;
        while (d && (de = readdir(d)))
            if (!strncmp(de->d_name, MERGING_PREFIX, strlen(MERGING_PREFIX)) &&
                !lr_pathf(p, sizeof p, "%s/%s", dir, de->d_name))
                rm_tree(p);
        if (d) closedir(d);
    }
    *out = r;
    return 0;
}

void runner_stop(runner *r) {
    if (r) atomic_store(&r->stopping, 1);
}

void runner_wait(runner *r) {
    pthread_mutex_lock(&r->mu);
    merge_task *t = r->merges;
    r->merges = NULL;
    pthread_mutex_unlock(&r->mu);
    while (t) {
        merge_task *next = t->next;
        pthread_join(t->th, NULL);
        free(t);
        t = next;
    }
}

void runner_free(runner *r) {
    if (!r) return;
    runner_stop(r);
    runner_wait(r);
    pthread_mutex_destroy(&r->mu);
    free(r->worker_bin);
    free(r->data_dir);
    free(r->db_path);
    free(r);
}

/* ---- generation ---- */

static int parse_generation(const child_result *res, json_t **side, int *prompt_tokens, lr_err *err) {
    json_error_t je;
    json_t *o = json_loadb(res->out.data ? res->out.data : "", res->out.len, JSON_DISABLE_EOF_CHECK | JSON_ALLOW_NUL, &je);
    json_t *ids = json_object_get(o, "ids"), *text = json_object_get(o, "text"), *stop = json_object_get(o, "stop");
    if (!json_is_object(o) || !json_is_array(ids) || !json_is_string(stop)) {
        json_decref(o);
        return lr_errp(err, LR_E_INTERNAL, NULL, "lora-worker generate printed no result object");
    }
    *prompt_tokens = (int)json_integer_value(json_object_get(o, "prompt_tokens"));
    *side = json_pack("{s:O, s:I, s:O}", "text", json_is_string(text) ? text : json_string(""), "tokens",
                      (json_int_t)json_array_size(ids), "stop", stop);
    json_decref(o);
    return *side ? 0 : lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
}

static int generate_one(runner *r, const runner_gen *g, int tuned, double deadline, json_t **side,
                        int *prompt_tokens, lr_err *err) {
    char mnt[16], temp[32], topp[32], topk[16], seed[32], threads[16];
    snprintf(mnt, sizeof mnt, "%d", g->max_new_tokens);
    snprintf(temp, sizeof temp, "%.9g", g->temperature);
    snprintf(topp, sizeof topp, "%.9g", g->top_p);
    snprintf(topk, sizeof topk, "%d", g->top_k);
    snprintf(seed, sizeof seed, "%lld", g->seed);
    snprintf(threads, sizeof threads, "%d", r->gen_threads);
    const char *argv[48];
    int n = 0;
    argv[n++] = r->worker_bin;
    argv[n++] = "generate";
    argv[n++] = "--json";
    argv[n++] = "--model";
    argv[n++] = tuned && g->tuned_model_dir ? g->tuned_model_dir : g->model_dir;
    if (tuned && !g->tuned_model_dir) {
        argv[n++] = "--adapter";
        argv[n++] = g->adapter_dir;
    }
    argv[n++] = "--template";
    argv[n++] = g->chat_template && *g->chat_template ? g->chat_template : "auto";
    argv[n++] = g->prompts_file ? "--prompts" : "--prompt";
    argv[n++] = g->prompts_file ? g->prompts_file : g->prompt;
    if (g->system && *g->system) {
        argv[n++] = "--system";
        argv[n++] = g->system;
    }
    for (int i = 0; i < g->n_stop && i < RUNNER_MAX_STOP; i++) {
        argv[n++] = "--stop";
        argv[n++] = g->stop[i];
    }
    const char *const tail[] = {"--max-new-tokens", mnt, "--temperature", temp, "--top-p", topp, "--top-k", topk,
                                "--seed", seed, "--threads", threads};
    for (size_t i = 0; i < sizeof tail / sizeof tail[0]; i++) argv[n++] = tail[i];
    argv[n] = NULL;
    child_result res;
    const char *what = !tuned ? "generation with the base model"
                       : g->tuned_model_dir ? "generation with the tuned model"
                                            : "generation with the adapter";
    if (child_run(r, (char *const *)argv, deadline, RUNNER_MAX_OUTPUT, &res, err)) {
        child_free(&res);
        return -1;
    }
    int rc = child_error(&res, what, err);
    /* Of the child's inputs only the prompt comes from the request: a prompt
     * it refuses (too long, not renderable) is the request's fault; a model
     * or an adapter it refuses, the server's. */
    int prompt = err->code == LR_E_INVALID && !strcmp(err->param, "prompt");
    if (rc && !prompt && err->code != LR_E_TIMEOUT && err->code != LR_E_NOMEM) {
        err->code = LR_E_INTERNAL;
        err->param[0] = 0;
    }
    if (!rc) rc = parse_generation(&res, side, prompt_tokens, err);
    child_free(&res);
    return rc;
}

int runner_generate(runner *r, const runner_gen *g, json_t **out, lr_err *err) {
    *out = NULL;
    if (atomic_load(&r->stopping)) return lr_errp(err, LR_E_BUSY, NULL, "lorad is shutting down");
    if (atomic_fetch_add(&r->generations, 1) >= r->max_generations) {
        atomic_fetch_sub(&r->generations, 1);
        return lr_errp(err, LR_E_BUSY, NULL, "%d generation(s) are already running; try again in a moment",
                       r->max_generations);
    }
    double t0 = now_mono(), deadline = t0 + r->gen_timeout_s;
    json_t *base = NULL, *tuned = NULL;
    int pt = 0, rc = -1;
    if (generate_one(r, g, 0, deadline, &base, &pt, err) || generate_one(r, g, 1, deadline, &tuned, &pt, err)) goto out;
    *out = json_pack("{s:i, s:o, s:o, s:f}", "prompt_tokens", pt, "base", base, "tuned", tuned, "seconds",
                     now_mono() - t0);
    base = tuned = NULL;
    rc = *out ? 0 : lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
out:
    json_decref(base);
    json_decref(tuned);
    atomic_fetch_sub(&r->generations, 1);
    return rc;
}

/* A generation slot for runner_generate_one: taken at once when one is
 * free, else waited for (polled every 50 ms, so runner_generate's releases
 * need no signal) by at most gen_queue callers until the deadline. */
static int gen_slot(runner *r, double deadline, lr_err *err) {
    int queued = 0;
    for (;;) {
        if (atomic_load(&r->stopping)) {
            if (queued) atomic_fetch_sub(&r->gen_waiting, 1);
            return lr_errp(err, LR_E_BUSY, NULL, "lorad is shutting down");
        }
        int n = atomic_load(&r->generations);
        while (n < r->max_generations && !atomic_compare_exchange_weak(&r->generations, &n, n + 1)) {
        }
        if (n < r->max_generations) break;
        if (!queued && atomic_fetch_add(&r->gen_waiting, 1) >= r->gen_queue) {
            atomic_fetch_sub(&r->gen_waiting, 1);
            return lr_errp(err, LR_E_BUSY, NULL, "%d generation(s) are running and %d waiting; try again in a moment",
                           r->max_generations, r->gen_queue);
        }
        queued = 1;
        if (now_mono() >= deadline) {
            atomic_fetch_sub(&r->gen_waiting, 1);
            return lr_errp(err, LR_E_TIMEOUT, NULL, "no generation slot freed within %d s", r->gen_timeout_s);
        }
        nanosleep(&(struct timespec){0, 50 * 1000 * 1000}, NULL);
    }
    if (queued) atomic_fetch_sub(&r->gen_waiting, 1);
    return 0;
}

int runner_generate_one(runner *r, const runner_gen *g, int tuned, json_t **out, lr_err *err) {
    *out = NULL;
    double t0 = now_mono();
    if (gen_slot(r, t0 + r->gen_timeout_s, err)) return -1;
    int pt = 0, rc = generate_one(r, g, tuned, t0 + r->gen_timeout_s, out, &pt, err);
    if (!rc) {
        json_object_set_new(*out, "prompt_tokens", json_integer(pt));
        json_object_set_new(*out, "seconds", json_real(now_mono() - t0));
    }
    atomic_fetch_sub(&r->generations, 1);
    return rc;
}

/* ---- merge ---- */

static void merge_event(store *st, const char *job, const char *level, const char *msg, const char *why) {
    lr_err e = {0};
    if (!st || store_event_add(st, job, level, msg, &e))
        fprintf(stderr, "lorad: job %s: %s (not recorded: %s)\n", job, msg, st ? e.msg : why);
}

static int write_all(int fd, const char *p, size_t n) {
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Copies src to dst (created), fsynced, giving up at runner_stop. Tries
 * copy_file_range first: runs and models share the data directory, where a
 * filesystem with reflinks copies gigabytes of weights in no time. */
static int copy_file(runner *r, const char *src, const char *dst, lr_err *err) {
    int in = open(src, O_RDONLY | O_NOFOLLOW | O_CLOEXEC), out = -1, rc = -1, plain = 0;
    char *buf = NULL;
    if (in < 0) return lr_errp(err, LR_E_IO, NULL, "%s: %s", src, strerror(errno));
    out = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (out < 0) {
        lr_errp(err, LR_E_IO, NULL, "%s: %s", dst, strerror(errno));
        goto done;
    }
    for (off_t copied = 0;;) {
        if (atomic_load(&r->stopping)) {
            lr_errp(err, LR_E_INTERNAL, NULL, "copying %s was stopped: lorad is shutting down", src);
            goto done;
        }
        ssize_t n;
        if (!plain) {
            n = copy_file_range(in, NULL, out, NULL, COPY_CHUNK, 0);
            if (n < 0 && !copied && (errno == EXDEV || errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP)) {
                plain = 1; /* no in-kernel copy between these files: read and write */
                continue;
            }
        } else {
            if (!buf && !(buf = malloc(COPY_CHUNK))) {
                lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
                goto done;
            }
            n = read(in, buf, COPY_CHUNK);
            if (n > 0 && write_all(out, buf, (size_t)n)) {
                lr_errp(err, LR_E_IO, NULL, "writing %s: %s", dst, strerror(errno));
                goto done;
            }
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            lr_errp(err, LR_E_IO, NULL, "copying %s to %s: %s", src, dst, strerror(errno));
            goto done;
        }
        if (n == 0) break;
        copied += n;
    }
    if (fsync(out)) {
        lr_errp(err, LR_E_IO, NULL, "writing %s: %s", dst, strerror(errno));
        goto done;
    }
    rc = 0;
done:
    free(buf);
    close(in);
    if (out >= 0 && close(out) && !rc) rc = lr_errp(err, LR_E_IO, NULL, "writing %s: %s", dst, strerror(errno));
    return rc;
}

static int has_suffix(const char *s, const char *suffix) {
    size_t l = strlen(s), sl = strlen(suffix);
    return l > sl && !strcmp(s + l - sl, suffix);
}

/* A full_sft run directory's model into t->tmp_dir: the weights (lora-worker
 * writes one model.safetensors; a sharded folder's index goes with its
 * shards), then config.json and the tokenizer and generation files, the
 * same set `lora-worker merge` copies from a base. Checkpoints, logs and
 * the rest of the run stay behind. */
static int copy_model(merge_task *t, lr_err *err) {
    if (mkdir(t->tmp_dir, 0755)) return lr_errp(err, LR_E_IO, NULL, "%s: %s", t->tmp_dir, strerror(errno));
    DIR *d = opendir(t->model_dir);
    if (!d) return lr_errp(err, LR_E_IO, NULL, "%s: %s", t->model_dir, strerror(errno));
    char src[PATH_MAX], dst[PATH_MAX];
    struct dirent *de;
    struct stat sb;
    int rc = 0, weights = 0;
    while (!rc && (de = readdir(d))) {
        const char *n = de->d_name;
        if (n[0] == '.' || !(has_suffix(n, ".safetensors") || has_suffix(n, ".safetensors.index.json"))) continue;
        if (fstatat(dirfd(d), n, &sb, AT_SYMLINK_NOFOLLOW) || !S_ISREG(sb.st_mode)) continue;
        if (lr_pathf(src, sizeof src, "%s/%s", t->model_dir, n) || lr_pathf(dst, sizeof dst, "%s/%s", t->tmp_dir, n))
            rc = lr_errp(err, LR_E_INVALID, NULL, "path too long in %s", t->model_dir);
        else rc = copy_file(t->r, src, dst, err);
        weights += has_suffix(n, ".safetensors");
    }
    closedir(d);
    if (!rc && !weights) rc = lr_errp(err, LR_E_INVALID, NULL, "%s has no *.safetensors weights", t->model_dir);
    return rc ? rc : merge_copy_side_files(t->model_dir, t->tmp_dir, err);
}

static void *merge_main(void *p) {
    merge_task *t = p;
    runner *r = t->r;
    lr_err e = {0}, se = {0};
    child_result res = {0}; /* freed at the end even when no child ran */
    json_t *info = NULL;
    store *st = NULL;
    int ok = 0, renamed = 0;
    char *real = NULL, msg[700];
    char *const argv[] = {r->worker_bin, "merge", "--json", "--model", t->model_dir, "--adapter", t->adapter_dir,
                          "--out", t->tmp_dir, NULL};
    /* This thread's own connection: the HTTP thread's is not to be shared. */
    if (store_open(r->db_path, &st, &se)) st = NULL;
    snprintf(msg, sizeof msg, t->full ? "registering the full_sft model as a new model %s"
                                      : "merging the adapter into a new model %s", t->name);
    merge_event(st, t->job, "info", msg, se.msg);
    if (t->full ? copy_model(t, &e)
                : child_run(r, argv, 0, MERGE_OUTPUT, &res, &e) || child_error(&res, "lora-worker merge", &e))
        goto done;
    /* The final name appears only once the folder is complete. */
    if (renameat2(AT_FDCWD, t->tmp_dir, AT_FDCWD, t->final_dir, RENAME_NOREPLACE)) {
        lr_errp(&e, LR_E_IO, NULL, "renaming %s to %s: %s", t->tmp_dir, t->final_dir, strerror(errno));
        goto done;
    }
    renamed = 1;
    real = realpath(t->final_dir, NULL);
    if (!real) {
        lr_errp(&e, LR_E_IO, NULL, "%s: %s", t->final_dir, strerror(errno));
        goto done;
    }
    if (models_inspect(real, &info, &e)) goto done;
    if (!st) {
        lr_errp(&e, LR_E_IO, NULL, "database: %s", se.msg);
        goto done;
    }
    /* The model and the event that says so appear together: whoever sees
     * the one sees the other. */
    if (store_begin(st, &e)) goto done;
    if (store_model_add(st, t->name, real, info, &e)) {
        store_rollback(st);
        goto done;
    }
    snprintf(msg, sizeof msg, t->full ? "registered the full_sft model as %s (%s)" : "merged into model %s (%s)",
             t->name, real);
    merge_event(st, t->job, "info", msg, se.msg);
    if (store_commit(st, &e)) {
        store_rollback(st);
        goto done;
    }
    ok = 1;
done:
    child_free(&res);
    if (!ok) {
        rm_tree(renamed ? t->final_dir : t->tmp_dir);
        snprintf(msg, sizeof msg, t->full ? "registering the full_sft model as %s failed: %s"
                                          : "merge into model %s failed: %s", t->name, e.msg);
        merge_event(st, t->job, "error", msg, se.msg);
    }
    store_close(st);
    json_decref(info);
    free(real);
    atomic_store(&t->done, 1);
    return NULL;
}

int runner_merge_start(runner *r, const runner_merge *m, lr_err *err) {
    if (atomic_load(&r->stopping)) return lr_errp(err, LR_E_BUSY, NULL, "lorad is shutting down");
    if (!models_name_ok(m->name)) return lr_errp(err, LR_E_INVALID, "name", "'%s' is not a valid model name", m->name);
    merge_task *t = calloc(1, sizeof *t), *done = NULL;
    if (!t) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
    t->r = r;
    snprintf(t->job, sizeof t->job, "%s", m->job_id);
    snprintf(t->name, sizeof t->name, "%s", m->name);
    t->full = m->tuned_model_dir != NULL;
    char dir[PATH_MAX];
    if (lr_pathf(dir, sizeof dir, "%s/models", r->data_dir) ||
        lr_pathf(t->model_dir, sizeof t->model_dir, "%s", t->full ? m->tuned_model_dir : m->model_dir) ||
        lr_pathf(t->adapter_dir, sizeof t->adapter_dir, "%s", t->full ? "" : m->adapter_dir) ||
        lr_pathf(t->tmp_dir, sizeof t->tmp_dir, "%s/" MERGING_PREFIX "%s", dir, m->name) ||
        lr_pathf(t->final_dir, sizeof t->final_dir, "%s/%s", dir, m->name)) {
        free(t);
        return lr_errp(err, LR_E_INVALID, NULL, "path too long");
    }
    int rc = -1;
    pthread_mutex_lock(&r->mu);
    /* Join the merges that ended; refuse a name being merged into. */
    for (merge_task **pp = &r->merges; *pp;) {
        merge_task *x = *pp;
        if (atomic_load(&x->done)) {
            *pp = x->next;
            x->next = done;
            done = x;
            continue;
        }
        if (!strcmp(x->name, m->name)) {
            lr_errp(err, LR_E_CONFLICT, "name", "a merge into model '%s' is already under way", m->name);
            goto unlock;
        }
        pp = &x->next;
    }
    struct stat sb;
    if (lstat(t->final_dir, &sb) == 0) {
        lr_errp(err, LR_E_CONFLICT, "name", "%s already exists; pick another name (or an admin removes it)", t->final_dir);
        goto unlock;
    }
    if (lr_mkdirs(dir, err)) goto unlock;
    rm_tree(t->tmp_dir); /* a failed merge's leftover, if any */
    int e = pthread_create(&t->th, NULL, merge_main, t);
    if (e) {
        lr_errp(err, LR_E_NOMEM, NULL, "cannot start a thread: %s", strerror(e));
        goto unlock;
    }
    t->next = r->merges;
    r->merges = t;
    t = NULL;
    rc = 0;
unlock:
    pthread_mutex_unlock(&r->mu);
    free(t);
    while (done) {
        merge_task *next = done->next;
        pthread_join(done->th, NULL);
        free(done);
        done = next;
    }
    return rc;
}
