/* runner.c: the children lorad runs outside the scheduler (daemon/runner.h).
 * Why this file is long: the generation servers with their queue and slots,
 * the generation requests and the merges share one layer of child
 * processes with captured output and one lock over the slots. */
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

/* One `lora-worker serve` (worker/cmd_serve.c): owned by the generation
 * that marked it busy, so only the pick and the release take smu. */
typedef struct gen_server {
    pid_t pid;   /* -1: not running (started on first use) */
    int to, from;  /* its stdin (ours non-blocking), its stdout */
    lr_buf in;     /* read, not yet a whole line */
    int busy;
    char key[2 * PATH_MAX + 2]; /* model and adapter of its last answer, which it keeps loaded */
} gen_server;

static void server_close(gen_server *s);

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
    char gen_backend[32];
    size_t serve_bytes; /* --max-bytes of each server */
    pthread_mutex_t smu; /* guards servers[].busy */
    gen_server *servers;
    int n_servers;      /* max_generations: a slot always finds one idle */
    atomic_llong request_ids;
    atomic_ullong loads, unloads, server_starts;
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
/* Spawns argv with in_fd (-1: /dev/null) as stdin, out_fd as stdout and
 * err_fd (-1: lorad's own) as stderr. The pipes' own ends are close-on-exec;
 * dup2 makes fresh 0, 1 and 2. The child starts with no blocked signals and
 * default dispositions (lorad ignores SIGPIPE; the HTTP threads block some
 * signals). */
static int spawn_clean(char *const argv[], int in_fd, int out_fd, int err_fd, pid_t *pid, lr_err *err) {
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t at;
    int fa_ok = !posix_spawn_file_actions_init(&fa), at_ok = !posix_spawnattr_init(&at), rc = -1;
    sigset_t none, dfl;
    sigemptyset(&none);
    sigfillset(&dfl);
    sigdelset(&dfl, SIGKILL);
    sigdelset(&dfl, SIGSTOP);
    if (!fa_ok || !at_ok ||
        (in_fd < 0 ? posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0)
                   : posix_spawn_file_actions_adddup2(&fa, in_fd, 0)) ||
        posix_spawn_file_actions_adddup2(&fa, out_fd, 1) ||
        (err_fd >= 0 && posix_spawn_file_actions_adddup2(&fa, err_fd, 2)) ||
        posix_spawnattr_setsigmask(&at, &none) || posix_spawnattr_setsigdefault(&at, &dfl) ||
        posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF)) {
        lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
        goto out;
    }
    int e = posix_spawn(pid, argv[0], &fa, &at, argv, environ);
    if (e) {
        lr_errp(err, LR_E_IO, NULL, "cannot run %s: %s", argv[0], strerror(e));
        goto out;
    }
    rc = 0;
out:
    if (fa_ok) posix_spawn_file_actions_destroy(&fa);
    if (at_ok) posix_spawnattr_destroy(&at);
    return rc;
}

static int child_run(runner *r, char *const argv[], double deadline, size_t out_cap, child_result *res, lr_err *err) {
    memset(res, 0, sizeof *res);
    lr_buf_init(&res->out, out_cap);
    int op[2] = {-1, -1}, ep[2] = {-1, -1}, rc = -1;
    pid_t pid = -1;
    if (pipe2(op, O_CLOEXEC) || pipe2(ep, O_CLOEXEC)) {
        lr_errp(err, LR_E_IO, NULL, "pipe: %s", strerror(errno));
        goto out;
    }
    if (spawn_clean(argv, -1, op[1], ep[1], &pid, err)) {
        pid = -1;
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
    snprintf(r->gen_backend, sizeof r->gen_backend, "%s", cfg->gen_backend ? cfg->gen_backend : "auto");
    size_t budget = cfg->gen_cache_bytes;
    if (!budget) { /* half the memory free now: training workers need the rest */
        long pages = sysconf(_SC_AVPHYS_PAGES), page = sysconf(_SC_PAGESIZE);
        budget = pages > 0 && page > 0 ? (size_t)pages * (size_t)page / 2 : (size_t)1 << 30;
    }
    r->n_servers = r->max_generations > 0 ? r->max_generations : 1;
    r->serve_bytes = budget / (size_t)r->n_servers;
    r->servers = calloc((size_t)r->n_servers, sizeof *r->servers);
    for (int i = 0; r->servers && i < r->n_servers; i++) {
        r->servers[i].pid = -1;
        r->servers[i].to = r->servers[i].from = -1;
        lr_buf_init(&r->servers[i].in, RUNNER_MAX_OUTPUT);
    }
    pthread_mutex_init(&r->mu, NULL);
    pthread_mutex_init(&r->smu, NULL);
    if (!r->worker_bin || !r->data_dir || !r->db_path || !r->servers) {
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
    for (int i = 0; r->servers && i < r->n_servers; i++) {
        server_close(&r->servers[i]);
        lr_buf_free(&r->servers[i].in);
    }
    free(r->servers);
    pthread_mutex_destroy(&r->mu);
    pthread_mutex_destroy(&r->smu);
    free(r->worker_bin);
    free(r->data_dir);
    free(r->db_path);
    free(r);
}

/* ---- generation servers ---- */

static void server_close(gen_server *s) {
    if (s->to >= 0) close(s->to);
    if (s->from >= 0) close(s->from);
    s->to = s->from = -1;
    if (s->pid > 0) {
        kill(s->pid, SIGKILL);
        while (waitpid(s->pid, NULL, 0) < 0 && errno == EINTR) {
        }
    }
    s->pid = -1;
    s->in.len = 0;
    s->key[0] = 0;
}

/* Starts `lora-worker serve`: its stdin and stdout on close-on-exec pipes
 * (no other child holds them, so either side sees the other go), stderr
 * lorad's own (its log). */
static int server_start(runner *r, gen_server *s, lr_err *err) {
    int ip[2] = {-1, -1}, op[2] = {-1, -1}, rc = -1;
    char bytes[32], threads[16];
    snprintf(bytes, sizeof bytes, "%zu", r->serve_bytes);
    snprintf(threads, sizeof threads, "%d", r->gen_threads);
    char *const argv[] = {r->worker_bin, "serve", "--backend", r->gen_backend, "--max-bytes", bytes, "--threads",
                          threads, NULL};
    if (pipe2(ip, O_CLOEXEC) || pipe2(op, O_CLOEXEC)) {
        lr_errp(err, LR_E_IO, NULL, "pipe: %s", strerror(errno));
        goto out;
    }
    pid_t pid;
    if (spawn_clean(argv, ip[0], op[1], -1, &pid, err)) goto out;
    /* lorad ignores SIGPIPE: a dead server is an EPIPE here, not a signal */
    if (fcntl(ip[1], F_SETFL, O_NONBLOCK)) {
        kill(pid, SIGKILL);
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
        }
        lr_errp(err, LR_E_IO, NULL, "fcntl: %s", strerror(errno));
        goto out;
    }
    s->pid = pid;
    s->to = ip[1];
    s->from = op[0];
    ip[1] = op[0] = -1;
    s->in.len = 0;
    s->key[0] = 0;
    atomic_fetch_add(&r->server_starts, 1);
    rc = 0;
out:
    for (int i = 0; i < 2; i++) {
        if (ip[i] >= 0) close(ip[i]);
        if (op[i] >= 0) close(op[i]);
    }
    return rc;
}

/* Why a server is gone (it died, was killed, or lorad stops): the server is
 * closed (killed, reaped) and the error says so. *died: it ended on its own,
 * where one more try on a fresh server is sound. */
static int server_lost(runner *r, gen_server *s, int timed_out, int *died, lr_err *err) {
    int status = 0;
    pid_t pid = s->pid;
    if (!timed_out && !atomic_load(&r->stopping) && pid > 0) {
        /* EOF on its stdout: it is exiting, or has; its status says why */
        for (int i = 0; i < KILL_GRACE_S * 100; i++) {
            pid_t w = waitpid(pid, &status, WNOHANG);
            if (w == pid || (w < 0 && errno != EINTR)) {
                s->pid = -1;
                break;
            }
            nanosleep(&(struct timespec){0, 10 * 1000 * 1000}, NULL);
        }
    }
    server_close(s);
    if (died) *died = 0;
    if (atomic_load(&r->stopping)) return lr_errp(err, LR_E_INTERNAL, NULL, "stopped: lorad is shutting down");
    if (timed_out)
        return lr_errp(err, LR_E_TIMEOUT, NULL, "ran past its time limit of %d s and was stopped (the generation "
                       "server is restarted for the next request)", r->gen_timeout_s);
    if (died) *died = 1;
    if (WIFSIGNALED(status))
        return lr_errp(err, LR_E_INTERNAL, NULL, "the generation server died of signal %d", WTERMSIG(status));
    return lr_errp(err, LR_E_INTERNAL, NULL, "the generation server exited with status %d", WEXITSTATUS(status));
}

static int server_send(runner *r, gen_server *s, const char *p, size_t n, double deadline, int *died, lr_err *err) {
    while (n) {
        if (atomic_load(&r->stopping)) return server_lost(r, s, 0, died, err);
        double now = now_mono();
        if (now >= deadline) return server_lost(r, s, 1, died, err);
        struct pollfd pf = {.fd = s->to, .events = POLLOUT};
        int wait_ms = (deadline - now) * 1000 < POLL_MS ? (int)((deadline - now) * 1000) + 1 : POLL_MS;
        if (poll(&pf, 1, wait_ms) <= 0) continue;
        ssize_t w = write(s->to, p, n);
        if (w < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (w < 0) return server_lost(r, s, 0, died, err);
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* The server's next answer line for request id (lines for other ids, such
 * as its hello, are skipped), parsed. */
static int server_line(runner *r, gen_server *s, long long id, double deadline, json_t **line, int *died,
                       lr_err *err) {
    *line = NULL;
    for (;;) {
        char *nl = s->in.len ? memchr(s->in.data, '\n', s->in.len) : NULL;
        if (nl) {
            size_t n = (size_t)(nl - s->in.data);
            json_t *o = json_loadb(s->in.data, n, JSON_ALLOW_NUL, NULL); /* a model may well generate a NUL */
            memmove(s->in.data, nl + 1, s->in.len - n - 1);
            s->in.len -= n + 1;
            if (!json_is_object(o)) {
                json_decref(o);
                server_close(s);
                return lr_errp(err, LR_E_INTERNAL, NULL, "the generation server wrote a line that is not JSON");
            }
            if (json_integer_value(json_object_get(o, "id")) == id) {
                *line = o;
                return 0;
            }
            json_decref(o);
            continue;
        }
        if (s->in.len == s->in.max) {
            server_close(s);
            return lr_errp(err, LR_E_INTERNAL, NULL, "the generation server wrote a line over %zu bytes", s->in.max);
        }
        if (atomic_load(&r->stopping)) return server_lost(r, s, 0, died, err);
        double now = now_mono();
        if (now >= deadline) return server_lost(r, s, 1, died, err);
        struct pollfd pf = {.fd = s->from, .events = POLLIN};
        int wait_ms = (deadline - now) * 1000 < POLL_MS ? (int)((deadline - now) * 1000) + 1 : POLL_MS;
        if (poll(&pf, 1, wait_ms) <= 0) continue;
        char chunk[65536];
        size_t room = s->in.max - s->in.len;
        ssize_t got = read(s->from, chunk, room < sizeof chunk ? room : sizeof chunk);
        if (got < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (got <= 0) return server_lost(r, s, 0, died, err);
        if (lr_buf_add(&s->in, chunk, (size_t)got)) {
            server_close(s);
            return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
        }
    }
}

/* An idle server for model+adapter key: the one that served it last (it
 * still has it loaded), else a running one, else any. A generation slot is
 * held, and there are as many servers as slots, so one is idle. */
static gen_server *server_take(runner *r, const char *key) {
    gen_server *best = NULL;
    pthread_mutex_lock(&r->smu);
    for (int i = 0; i < r->n_servers; i++) {
        gen_server *s = &r->servers[i];
        if (s->busy) continue;
        int score = !strcmp(s->key, key) ? 2 : s->pid > 0;
        int bs = !best ? -1 : !strcmp(best->key, key) ? 2 : best->pid > 0;
        if (score > bs) best = s;
    }
    if (best) best->busy = 1;
    pthread_mutex_unlock(&r->smu);
    return best;
}

static void server_give(runner *r, gen_server *s) {
    pthread_mutex_lock(&r->smu);
    s->busy = 0;
    pthread_mutex_unlock(&r->smu);
}

/* ---- generation ---- */

struct runner_stream {
    runner *r;
    gen_server *s;
    long long id;
    int done, slot;
    double t0, deadline;
    const char *what;
    json_t *first;  /* the answer line read by runner_stream_start, not yet handed out */
    json_t *delta;  /* the line whose text *delta points into */
};

static const char *side_name(const runner_gen *g, int tuned) {
    return !tuned ? "generation with the base model"
           : g->tuned_model_dir ? "generation with the tuned model"
                                : "generation with the adapter";
}

static json_t *request_json(const runner_gen *g, int tuned, long long id, int stream) {
    json_t *stop = json_array();
    for (int i = 0; i < g->n_stop && i < RUNNER_MAX_STOP; i++) json_array_append_new(stop, json_string(g->stop[i]));
    json_t *o = json_pack("{s:I, s:s, s:s, s:i, s:f, s:f, s:i, s:I, s:o, s:b}", "id", (json_int_t)id, "model",
                          tuned && g->tuned_model_dir ? g->tuned_model_dir : g->model_dir, "template",
                          g->chat_template && *g->chat_template ? g->chat_template : "auto", "max_new_tokens",
                          g->max_new_tokens, "temperature", g->temperature, "top_p", g->top_p, "top_k", g->top_k,
                          "seed", (json_int_t)g->seed, "stop", stop, "stream", stream);
    if (!o) return NULL;
    if (tuned && !g->tuned_model_dir) json_object_set_new(o, "adapter", json_string(g->adapter_dir));
    if (g->prompts_file) json_object_set_new(o, "prompts_file", json_string(g->prompts_file));
    else json_object_set_new(o, "prompt", json_string(g->prompt ? g->prompt : ""));
    if (g->system && *g->system) json_object_set_new(o, "system", json_string(g->system));
    return o;
}

/* An error line from the server into err. Of a request's inputs only the
 * prompt comes from the client: a prompt the server refuses (too long, not
 * renderable) is the request's fault; a model or an adapter it refuses, the
 * server's. */
static int answer_error(const json_t *line, const char *what, lr_err *err) {
    char *s = json_dumps(line, JSON_COMPACT);
    lr_err ce = {0};
    int found = s && !msg_child_error_parse(s, strlen(s), &ce);
    free(s);
    if (!found) return lr_errp(err, LR_E_INTERNAL, NULL, "%s: the generation server's answer has no result", what);
    lr_errp(err, ce.code, ce.param, "%s: %s", what, ce.msg);
    int prompt = err->code == LR_E_INVALID && !strcmp(err->param, "prompt");
    if (!prompt && err->code != LR_E_NOMEM) {
        err->code = LR_E_INTERNAL;
        err->param[0] = 0;
    }
    return -1;
}

/* Sends the request and reads its first answer line into st->first. One
 * more try on a fresh server when the server turns out to have died
 * (killed between requests): the request had not started. */
static int stream_begin(runner_stream *st, const runner_gen *g, int tuned, int stream, lr_err *err) {
    runner *r = st->r;
    gen_server *s = st->s;
    for (int attempt = 0;; attempt++) {
        int died = 0;
        if (s->pid <= 0 && server_start(r, s, err)) break;
        st->id = atomic_fetch_add(&r->request_ids, 1) + 1;
        json_t *rq = request_json(g, tuned, st->id, stream);
        char *text = rq ? json_dumps(rq, JSON_COMPACT) : NULL;
        json_decref(rq);
        if (!text) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
        size_t n = strlen(text);
        text[n] = '\n'; /* json_dumps's NUL: the line's end goes out with it */
        int rc = server_send(r, s, text, n + 1, st->deadline, &died, err);
        free(text);
        if (!rc) rc = server_line(r, s, st->id, st->deadline, &st->first, &died, err);
        if (!rc) break;
        if (!died || attempt) break;
    }
    if (!st->first) {
        lr_err_prefix(err, "%s: ", st->what);
        return -1;
    }
    if (json_object_get(st->first, "error")) {
        answer_error(st->first, st->what, err);
        json_decref(st->first);
        st->first = NULL;
        return -1;
    }
    return 0;
}

/* The final answer into runner_generate_one's object. */
static json_t *final_object(runner_stream *st, json_t *line) {
    runner *r = st->r;
    json_int_t loaded = json_integer_value(json_object_get(line, "loaded"));
    atomic_fetch_add(&r->loads, (unsigned long long)loaded);
    atomic_fetch_add(&r->unloads, (unsigned long long)json_integer_value(json_object_get(line, "evicted")));
    json_t *text = json_object_get(line, "text"), *stop = json_object_get(line, "stop");
    return json_pack("{s:o, s:I, s:o, s:I, s:f, s:b}", "text",
                     json_is_string(text) ? json_incref(text) : json_string(""), "tokens",
                     json_integer_value(json_object_get(line, "tokens")), "stop",
                     json_is_string(stop) ? json_incref(stop) : json_string("length"), "prompt_tokens",
                     json_integer_value(json_object_get(line, "prompt_tokens")), "seconds", now_mono() - st->t0,
                     "model_loaded", (int)loaded);
}

int runner_stream_next(runner_stream *st, const char **delta, size_t *n, json_t **result, lr_err *err) {
    *delta = NULL, *n = 0, *result = NULL;
    json_decref(st->delta);
    st->delta = NULL;
    if (st->done) return lr_errp(err, LR_E_INTERNAL, NULL, "the generation has ended");
    json_t *line = st->first;
    st->first = NULL;
    if (!line && server_line(st->r, st->s, st->id, st->deadline, &line, NULL, err)) {
        st->done = 1;
        lr_err_prefix(err, "%s: ", st->what);
        return -1;
    }
    json_t *d = json_object_get(line, "delta");
    if (json_is_string(d)) {
        st->delta = line;
        *delta = json_string_value(d);
        *n = json_string_length(d);
        return 0;
    }
    st->done = 1;
    if (json_object_get(line, "error")) {
        answer_error(line, st->what, err);
        json_decref(line);
        return -1;
    }
    *result = final_object(st, line);
    json_decref(line);
    return *result ? 1 : lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
}

/* A server and a started request for one side; the slot is the caller's. */
static int stream_open(runner *r, const runner_gen *g, int tuned, int stream, double t0, double deadline,
                       runner_stream **out, lr_err *err) {
    *out = NULL;
    runner_stream *st = calloc(1, sizeof *st);
    if (!st) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
    char key[2 * PATH_MAX + 2];
    snprintf(key, sizeof key, "%s\n%s", tuned && g->tuned_model_dir ? g->tuned_model_dir : g->model_dir,
             tuned && !g->tuned_model_dir ? g->adapter_dir : "");
    st->r = r;
    st->t0 = t0;
    st->deadline = deadline;
    st->what = side_name(g, tuned);
    st->s = server_take(r, key);
    if (!st->s) {
        free(st);
        return lr_errp(err, LR_E_BUSY, NULL, "no generation server is free; try again in a moment");
    }
    if (stream_begin(st, g, tuned, stream, err)) {
        server_give(r, st->s);
        free(st);
        return -1;
    }
    snprintf(st->s->key, sizeof st->s->key, "%s", key);
    *out = st;
    return 0;
}

/* Reads a stream to its end, dropping the text: the final object. */
static int stream_finish(runner_stream *st, json_t **result, lr_err *err) {
    const char *d;
    size_t n;
    int rc;
    while (!(rc = runner_stream_next(st, &d, &n, result, err))) {
    }
    return rc < 0 ? -1 : 0;
}

void runner_stream_free(runner_stream *st) {
    if (!st) return;
    runner *r = st->r;
    json_decref(st->first);
    st->first = NULL;
    /* The client left mid-answer: the server finishes it (within the
     * deadline) and stays loaded for the next one. */
    json_t *rest = NULL;
    lr_err e = {0};
    if (!st->done && !stream_finish(st, &rest, &e)) json_decref(rest);
    json_decref(st->delta);
    server_give(r, st->s);
    if (st->slot) atomic_fetch_sub(&r->generations, 1);
    free(st);
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
    json_t *side[2] = {NULL, NULL};
    int rc = -1;
    for (int tuned = 0; tuned < 2; tuned++) {
        runner_stream *st = NULL;
        int bad = stream_open(r, g, tuned, 0, t0, deadline, &st, err) || stream_finish(st, &side[tuned], err);
        runner_stream_free(st);
        if (bad) goto out;
    }
    json_t *pt = json_object_get(side[0], "prompt_tokens");
    *out = json_pack("{s:O, s:{s:O, s:O, s:O}, s:{s:O, s:O, s:O}, s:f}", "prompt_tokens", pt, "base", "text",
                     json_object_get(side[0], "text"), "tokens", json_object_get(side[0], "tokens"), "stop",
                     json_object_get(side[0], "stop"), "tuned", "text", json_object_get(side[1], "text"), "tokens",
                     json_object_get(side[1], "tokens"), "stop", json_object_get(side[1], "stop"), "seconds",
                     now_mono() - t0);
    rc = *out ? 0 : lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
out:
    json_decref(side[0]);
    json_decref(side[1]);
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

int runner_stream_start(runner *r, const runner_gen *g, int tuned, runner_stream **out, lr_err *err) {
    double t0 = now_mono();
    *out = NULL;
    if (gen_slot(r, t0 + r->gen_timeout_s, err)) return -1;
    if (stream_open(r, g, tuned, 1, t0, t0 + r->gen_timeout_s, out, err)) {
        atomic_fetch_sub(&r->generations, 1);
        return -1;
    }
    (*out)->slot = 1;
    return 0;
}

int runner_generate_one(runner *r, const runner_gen *g, int tuned, json_t **out, lr_err *err) {
    double t0 = now_mono();
    runner_stream *st = NULL;
    *out = NULL;
    if (gen_slot(r, t0 + r->gen_timeout_s, err)) return -1;
    int rc = stream_open(r, g, tuned, 0, t0, t0 + r->gen_timeout_s, &st, err) || stream_finish(st, out, err) ? -1 : 0;
    runner_stream_free(st);
    atomic_fetch_sub(&r->generations, 1);
    return rc;
}

void runner_stats(runner *r, runner_gen_stats *st) {
    st->model_loads = atomic_load(&r->loads);
    st->model_unloads = atomic_load(&r->unloads);
    st->server_starts = atomic_load(&r->server_starts);
    st->running = atomic_load(&r->generations);
    st->waiting = atomic_load(&r->gen_waiting);
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
