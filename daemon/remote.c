#include "daemon/remote.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/buf.h"
#include "daemon/sha256.h"
#include "daemon/store.h"
#include "proto/frame.h"
#include "proto/tlink.h"

#define IO_TIMEOUT_S 60        /* a request or a file chunk stalled this long ends the connection */
#define MAX_CONNS 256
#define LIST_MAX_FILES 10000
#define LIST_MAX_DEPTH 8
#define PUT_MAX_BYTES (1LL << 40)
#define SHA_CACHE 1024         /* files whose SHA-256 is remembered (a model's shards, datasets) */

typedef struct rconn {
    struct remote *r;
    int fd, slot;
    char peer[64];
} rconn;

struct remote {
    const lorad_config *cfg;
    char db_path[1100], sock_path[1100], data_real[PATH_MAX];
    tl_server srv;
    int lfd, port, stop_pipe[2];
    pthread_t acceptor;
    pthread_mutex_t mu;
    pthread_cond_t idle;
    int fds[MAX_CONNS]; /* open connections, -1 free: shut down by remote_stop */
    int nconn;
    /* SHA-256 by (path, inode, size, mtime): every assignment lists the
     * model again, and hashing a large model each time would take minutes */
    pthread_mutex_t sha_mu;
    struct sha_ent {
        char path[1024];
        dev_t dev;
        ino_t ino;
        off_t size;
        struct timespec mtim;
        char hex[65];
    } *sha;
    unsigned sha_next;
};

static void logf_(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void logf_(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "lorad: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static void reply(tl_conn *c, json_t *m) {
    lr_err e = {0};
    json_object_set_new(m, "type", json_string("reply"));
    if (m && tl_send(c, m, &e)) logf_("answering a worker: %s", e.msg);
    json_decref(m);
}

static void refuse(tl_conn *c, const char *msg) { reply(c, json_pack("{s:b, s:s}", "ok", 0, "error", msg)); }

/* The worker token of a request: fills name, or err says why not. */
static int authenticate(store *st, const json_t *req, char name[64], lr_err *err) {
    const char *tok = json_string_value(json_object_get(req, "token"));
    if (!tok || !*tok) return lr_errp(err, LR_E_FORBIDDEN, NULL, "no worker token (lora-worker agent --token)");
    char hash[65];
    sha256_hex(tok, strlen(tok), hash);
    lr_err e = {0};
    if (!store_worker_token_auth(st, hash, name, &e)) return 0;
    if (e.code != LR_E_NOTFOUND) return lr_errp(err, LR_E_IO, NULL, "%s", e.msg);
    store_user u;
    if (!store_user_auth(st, hash, &u, &e))
        return lr_errp(err, LR_E_FORBIDDEN, NULL,
                       "that is a user's API token, not a worker token; an admin makes one with "
                       "`lorad worker-token add NAME`");
    return lr_errp(err, LR_E_FORBIDDEN, NULL, "unknown or revoked worker token");
}

/* ---- the agent relay ---- */

static void relay(remote *r, tl_conn *c, const char *token_name, const char *peer) {
    lr_err e = {0};
    json_t *hello = NULL;
    int ufd = frame_connect_unix(r->sock_path, &e);
    if (ufd < 0) {
        refuse(c, e.msg);
        logf_("remote worker from %s: %s", peer, e.msg);
        return;
    }
    reply(c, json_pack("{s:b}", "ok", 1));
    if (tl_recv(c, &hello, &e)) goto out;
    if (strcmp(json_string_value(json_object_get(hello, "type")) ? json_string_value(json_object_get(hello, "type")) : "", "hello")) {
        lr_errf(&e, "its first frame is not a hello");
        goto out;
    }
    json_object_set_new(hello, "remote", json_string(token_name));
    if (frame_write_fd(ufd, hello, &e)) goto out;
    logf_("remote worker '%s' (token %s) connected from %s", json_string_value(json_object_get(hello, "worker")),
          token_name, peer);
    tl_pump(c, ufd);
    logf_("remote worker '%s' from %s disconnected", json_string_value(json_object_get(hello, "worker")), peer);
out:
    if (e.msg[0]) logf_("remote worker from %s: %s", peer, e.msg);
    json_decref(hello);
    close(ufd);
}

/* ---- files ---- */

/* A path a worker may read: under data_dir's datasets/ or runs/, or a
 * registered model's directory. resolved gets its real path. */
static int readable(remote *r, store *st, const char *path, char *resolved, lr_err *err) {
    if (!path || !realpath(path, resolved))
        return lr_errp(err, LR_E_NOTFOUND, "path", "%s: no such file", path ? path : "(none)");
    static const char *const under[] = {"datasets/", "runs/"};
    size_t n = strlen(r->data_real);
    for (size_t i = 0; i < 2; i++)
        if (!strncmp(resolved, r->data_real, n) && resolved[n] == '/' && !strncmp(resolved + n + 1, under[i], strlen(under[i])))
            return 0;
    if (store_model_dir_holds(st, resolved)) return 0;
    return lr_errp(err, LR_E_FORBIDDEN, "path", "%s is not a dataset, run or model file of this lorad", path);
}

static int file_sha(remote *r, const char *path, long long *size, char hex[65], lr_err *err) {
    struct stat sb;
    if (stat(path, &sb)) return lr_errp(err, LR_E_IO, NULL, "%s: %s", path, strerror(errno));
    int cacheable = strlen(path) < sizeof r->sha->path;
    pthread_mutex_lock(&r->sha_mu);
    for (int i = 0; cacheable && i < SHA_CACHE; i++) {
        struct sha_ent *h = &r->sha[i];
        if (h->ino == sb.st_ino && h->dev == sb.st_dev && h->size == sb.st_size && h->mtim.tv_sec == sb.st_mtim.tv_sec &&
            h->mtim.tv_nsec == sb.st_mtim.tv_nsec && !strcmp(h->path, path)) {
            memcpy(hex, h->hex, 65);
            *size = sb.st_size;
            pthread_mutex_unlock(&r->sha_mu);
            return 0;
        }
    }
    pthread_mutex_unlock(&r->sha_mu);
    if (tl_sha256_file(path, size, hex, err)) return -1;
    if (!cacheable || *size != sb.st_size) return 0; /* changed while hashed: not remembered */
    pthread_mutex_lock(&r->sha_mu);
    struct sha_ent *h = &r->sha[r->sha_next++ % SHA_CACHE];
    snprintf(h->path, sizeof h->path, "%s", path);
    h->dev = sb.st_dev;
    h->ino = sb.st_ino;
    h->size = sb.st_size;
    h->mtim = sb.st_mtim;
    memcpy(h->hex, hex, 65);
    pthread_mutex_unlock(&r->sha_mu);
    return 0;
}

static int list_walk(remote *r, const char *root, const char *rel, int depth, json_t *out, lr_err *err) {
    char dir[PATH_MAX + 256];
    if (lr_pathf(dir, sizeof dir, "%s%s%s", root, rel[0] ? "/" : "", rel)) return lr_errf(err, "%s: path too long", root);
    DIR *d = opendir(dir);
    if (!d) return lr_errp(err, LR_E_IO, NULL, "%s: %s", dir, strerror(errno));
    struct dirent *de;
    int rc = 0;
    while (!rc && (de = readdir(d))) {
        const char *nm = de->d_name;
        size_t l = strlen(nm);
        /* checkpoints being written and uploads in progress are not files yet */
        if (nm[0] == '.' || (l > 4 && !strcmp(nm + l - 4, ".tmp")) || (l > 7 && !strcmp(nm + l - 7, ".upload")))
            continue;
        char sub[PATH_MAX], full[PATH_MAX + 512];
        struct stat sb;
        if (lr_pathf(sub, sizeof sub, "%s%s%s", rel, rel[0] ? "/" : "", nm) ||
            lr_pathf(full, sizeof full, "%s/%s", root, sub) || stat(full, &sb))
            continue;
        if (S_ISDIR(sb.st_mode)) {
            if (depth < LIST_MAX_DEPTH) rc = list_walk(r, root, sub, depth + 1, out, err);
        } else if (S_ISREG(sb.st_mode)) {
            if (json_array_size(out) >= LIST_MAX_FILES) {
                rc = lr_errf(err, "%s holds more than %d files", root, LIST_MAX_FILES);
                break;
            }
            char hex[65];
            long long size;
            if (file_sha(r, full, &size, hex, err)) rc = -1;
            else json_array_append_new(out, json_pack("{s:s, s:I, s:s}", "path", sub, "size", (json_int_t)size, "sha256", hex));
        }
    }
    closedir(d);
    return rc;
}

static void serve_list(remote *r, store *st, tl_conn *c, const json_t *req) {
    lr_err e = {0};
    char real[PATH_MAX];
    json_t *files = json_array();
    struct stat sb;
    const char *path = json_string_value(json_object_get(req, "path"));
    if (readable(r, st, path, real, &e) || stat(real, &sb)) goto fail;
    if (S_ISDIR(sb.st_mode)) {
        if (list_walk(r, real, "", 0, files, &e)) goto fail;
    } else {
        char hex[65];
        long long size;
        if (file_sha(r, real, &size, hex, &e)) goto fail;
        json_array_append_new(files, json_pack("{s:s, s:I, s:s}", "path", "", "size", (json_int_t)size, "sha256", hex));
    }
    reply(c, json_pack("{s:b, s:b, s:o}", "ok", 1, "dir", S_ISDIR(sb.st_mode), "files", files));
    return;
fail:
    json_decref(files);
    /* not_found lets a worker tell "nothing written yet" from a refusal */
    reply(c, json_pack("{s:b, s:s, s:s}", "ok", 0, "error", e.msg[0] ? e.msg : strerror(errno), "code",
                       e.code == LR_E_NOTFOUND ? "not_found" : "refused"));
}

static void serve_get(remote *r, store *st, tl_conn *c, const json_t *req) {
    lr_err e = {0};
    char real[PATH_MAX];
    static __thread char buf[1 << 16];
    int fd = -1;
    struct stat sb;
    json_int_t off = json_integer_value(json_object_get(req, "offset"));
    if (readable(r, st, json_string_value(json_object_get(req, "path")), real, &e)) goto fail;
    fd = open(real, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &sb) || !S_ISREG(sb.st_mode)) {
        lr_errf(&e, "%s: not a readable file", real);
        goto fail;
    }
    if (off < 0 || off > sb.st_size) {
        lr_errf(&e, "offset %lld is past the end of %s (%lld bytes)", (long long)off, real, (long long)sb.st_size);
        goto fail;
    }
    reply(c, json_pack("{s:b, s:I}", "ok", 1, "size", (json_int_t)sb.st_size));
    for (long long left = sb.st_size - off; left > 0;) {
        ssize_t n = pread(fd, buf, left < (long long)sizeof buf ? (size_t)left : sizeof buf, off);
        if (n <= 0 || tl_write_all(c, buf, (size_t)n, &e)) break;
        off += n;
        left -= n;
    }
    close(fd);
    return;
fail:
    if (fd >= 0) close(fd);
    refuse(c, e.msg);
}

/* path must be data_dir/runs/<a running job>/<relative path without . or ..> */
static int writable(remote *r, store *st, const char *path, lr_err *err) {
    char runs[1100];
    snprintf(runs, sizeof runs, "%s/runs/", r->cfg->data_dir);
    if (!path || strncmp(path, runs, strlen(runs)))
        return lr_errp(err, LR_E_FORBIDDEN, "path", "%s is not under %s", path ? path : "(none)", runs);
    const char *rel = path + strlen(runs);
    for (const char *p = rel; *p;) {
        size_t l = strcspn(p, "/");
        if (l == 0 || (l == 1 && p[0] == '.') || (l == 2 && p[0] == '.' && p[1] == '.'))
            return lr_errp(err, LR_E_FORBIDDEN, "path", "%s: empty, '.' or '..' in the path", path);
        p += l + (p[l] == '/');
    }
    char job[64];
    size_t jl = strcspn(rel, "/");
    if (jl >= sizeof job || !rel[jl]) return lr_errp(err, LR_E_FORBIDDEN, "path", "%s names no file of a job", path);
    snprintf(job, sizeof job, "%.*s", (int)jl, rel);
    lr_err e = {0};
    json_t *j = store_job_get(st, job, &e);
    const char *status = json_string_value(json_object_get(j, "status"));
    int ok = status && !strcmp(status, "running");
    json_decref(j);
    if (!ok) return lr_errp(err, LR_E_CONFLICT, "path", "job %s is not running: its files are not taken", job);
    return 0;
}

static void serve_put(remote *r, store *st, tl_conn *c, const json_t *req) {
    lr_err e = {0};
    static __thread char buf[1 << 16];
    const char *path = json_string_value(json_object_get(req, "path"));
    const char *want = json_string_value(json_object_get(req, "sha256"));
    json_int_t size = json_integer_value(json_object_get(req, "size"));
    char tmp[1200], dir[1200], hex[65];
    int fd = -1;
    tl_sha h = NULL;
    if (writable(r, st, path, &e)) goto fail;
    if (!want || strlen(want) != 64 || size < 0 || size > PUT_MAX_BYTES) {
        lr_errf(&e, "a put needs size (0..%lld) and sha256 (64 hex digits)", PUT_MAX_BYTES);
        goto fail;
    }
    snprintf(dir, sizeof dir, "%s", path);
    *strrchr(dir, '/') = 0;
    if (lr_pathf(tmp, sizeof tmp, "%s.upload", path) || lr_mkdirs(dir, &e)) goto fail;
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        lr_errf(&e, "%s: %s", tmp, strerror(errno));
        goto fail;
    }
    if (tl_sha_begin(&h, &e)) goto fail;
    /* the bytes follow the request at once: read them all before answering */
    for (long long left = size; left > 0;) {
        long n = tl_read(c, buf, left < (long long)sizeof buf ? (size_t)left : sizeof buf, &e);
        if (n <= 0) {
            if (!n) lr_errf(&e, "the worker closed the connection %lld bytes before the end", left);
            goto fail;
        }
        tl_sha_add(h, buf, (size_t)n);
        for (long off = 0; off < n;) {
            ssize_t w = write(fd, buf + off, (size_t)(n - off));
            if (w < 0 && errno == EINTR) continue;
            if (w < 0) {
                lr_errp(&e, LR_E_IO, NULL, "%s: %s", tmp, strerror(errno));
                goto fail;
            }
            off += w;
        }
        left -= n;
    }
    tl_sha_end(h, hex);
    h = NULL;
    if (strcmp(hex, want)) {
        lr_errf(&e, "sha256 mismatch for %s: the worker said %s, lorad received %s; not stored", path, want, hex);
        goto fail;
    }
    if (fsync(fd) || close(fd) || rename(tmp, path)) {
        fd = -1;
        lr_errp(&e, LR_E_IO, NULL, "storing %s: %s", path, strerror(errno));
        goto fail;
    }
    reply(c, json_pack("{s:b}", "ok", 1));
    return;
fail:
    if (h) tl_sha_end(h, hex);
    if (fd >= 0) close(fd);
    if (fd >= 0 || e.code == LR_E_IO) unlink(tmp);
    logf_("a worker's upload of %s was refused: %s", path ? path : "(none)", e.msg);
    refuse(c, e.msg);
}

/* A file the worker deleted (an old checkpoint save_total_limit pruned):
 * gone here too, with the directories it leaves empty. */
static void serve_rm(remote *r, store *st, tl_conn *c, const json_t *req) {
    lr_err e = {0};
    const char *path = json_string_value(json_object_get(req, "path"));
    char dir[1200], runs[1100];
    if (writable(r, st, path, &e)) {
        refuse(c, e.msg);
        return;
    }
    if (unlink(path) && errno != ENOENT) {
        lr_errp(&e, LR_E_IO, NULL, "%s: %s", path, strerror(errno));
        refuse(c, e.msg);
        return;
    }
    snprintf(runs, sizeof runs, "%s/runs/", r->cfg->data_dir);
    snprintf(dir, sizeof dir, "%s", path);
    /* up to, not including, runs/<job> */
    for (char *sl = strrchr(dir, '/'); sl && sl > dir + strlen(runs) + strcspn(dir + strlen(runs), "/"); sl = strrchr(dir, '/')) {
        *sl = 0;
        if (rmdir(dir)) break;
    }
    reply(c, json_pack("{s:b}", "ok", 1));
}

/* ---- connections ---- */

static void *conn_main(void *arg) {
    rconn *rc = arg;
    remote *r = rc->r;
    lr_err e = {0};
    tl_conn c;
    json_t *req = NULL;
    store *st = NULL;
    if (tl_accept(&r->srv, rc->fd, IO_TIMEOUT_S, &c, &e)) {
        logf_("worker connection from %s: %s", rc->peer, e.msg);
        goto out;
    }
    char name[64];
    const char *type;
    if (tl_recv(&c, &req, &e)) {
        logf_("worker connection from %s: %s", rc->peer, e.msg);
        goto done;
    }
    type = json_string_value(json_object_get(req, "type"));
    if (store_open(r->db_path, &st, &e) || authenticate(st, req, name, &e)) {
        logf_("refused a worker from %s: %s", rc->peer, e.msg);
        refuse(&c, e.msg);
        goto done;
    }
    if (!type) refuse(&c, "a request needs a type");
    else if (!strcmp(type, "auth")) {
        store_close(st); /* the relay may run for days */
        st = NULL;
        relay(r, &c, name, rc->peer);
    } else if (!strcmp(type, "list")) serve_list(r, st, &c, req);
    else if (!strcmp(type, "get")) serve_get(r, st, &c, req);
    else if (!strcmp(type, "put")) serve_put(r, st, &c, req);
    else if (!strcmp(type, "rm")) serve_rm(r, st, &c, req);
    else refuse(&c, "unknown request type (auth, list, get, put, rm)");
done:
    /* out of remote_stop's sight before the fd number can be reused */
    pthread_mutex_lock(&r->mu);
    r->fds[rc->slot] = -1;
    pthread_mutex_unlock(&r->mu);
    tl_close(&c);
out:
    json_decref(req);
    store_close(st);
    pthread_mutex_lock(&r->mu);
    r->fds[rc->slot] = -1;
    if (--r->nconn == 0) pthread_cond_broadcast(&r->idle);
    pthread_mutex_unlock(&r->mu);
    free(rc);
    return NULL;
}

static void *accept_main(void *arg) {
    remote *r = arg;
    for (;;) {
        struct pollfd p[2] = {{.fd = r->lfd, .events = POLLIN}, {.fd = r->stop_pipe[0], .events = POLLIN}};
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR) continue;
            break;
        }
        if (p[1].revents) break;
        struct sockaddr_storage sa;
        socklen_t sl = sizeof sa;
        int fd = accept4(r->lfd, (struct sockaddr *)&sa, &sl, SOCK_CLOEXEC);
        if (fd < 0) continue;
        rconn *rc = calloc(1, sizeof *rc);
        int slot = -1;
        pthread_mutex_lock(&r->mu);
        for (int i = 0; i < MAX_CONNS && slot < 0; i++)
            if (r->fds[i] < 0) slot = i;
        if (rc && slot >= 0) {
            r->fds[slot] = fd;
            r->nconn++;
        }
        pthread_mutex_unlock(&r->mu);
        if (!rc || slot < 0) {
            logf_("worker connections: more than %d at once; refusing one", MAX_CONNS);
            free(rc);
            close(fd);
            continue;
        }
        rc->r = r;
        rc->fd = fd;
        rc->slot = slot;
        if (getnameinfo((struct sockaddr *)&sa, sl, rc->peer, sizeof rc->peer, NULL, 0, NI_NUMERICHOST))
            snprintf(rc->peer, sizeof rc->peer, "?");
        pthread_t t;
        pthread_attr_t at;
        pthread_attr_init(&at);
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        if (pthread_create(&t, &at, conn_main, rc)) {
            pthread_mutex_lock(&r->mu);
            r->fds[slot] = -1;
            r->nconn--;
            pthread_mutex_unlock(&r->mu);
            close(fd);
            free(rc);
        }
        pthread_attr_destroy(&at);
    }
    return NULL;
}

static int listen_on(remote *r, lr_err *err) {
    const char *addr = r->cfg->worker_listen, *colon = strrchr(addr, ':');
    char host[128], port[16];
    snprintf(host, sizeof host, "%.*s", (int)(colon - addr), addr);
    snprintf(port, sizeof port, "%s", colon + 1);
    if (host[0] == '[' && host[strlen(host) - 1] == ']') {
        memmove(host, host + 1, strlen(host));
        host[strlen(host) - 1] = 0;
    }
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *ai = NULL;
    int g = getaddrinfo(host[0] ? host : NULL, port, &hints, &ai);
    if (g) return lr_errp(err, LR_E_INVALID, "worker_listen", "worker_listen %s: %s", addr, gai_strerror(g));
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
    if (fd >= 0) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (fd < 0 || bind(fd, ai->ai_addr, ai->ai_addrlen) || listen(fd, 64)) {
        int e = errno;
        if (fd >= 0) close(fd);
        freeaddrinfo(ai);
        return lr_errp(err, LR_E_IO, "worker_listen", "worker_listen %s: %s", addr, strerror(e));
    }
    freeaddrinfo(ai);
    struct sockaddr_storage sa;
    socklen_t sl = sizeof sa;
    getsockname(fd, (struct sockaddr *)&sa, &sl);
    r->port = ntohs(sa.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&sa)->sin6_port : ((struct sockaddr_in *)&sa)->sin_port);
    r->lfd = fd;
    return 0;
}

int remote_start(const lorad_config *cfg, const char *db_path, remote **out, lr_err *err) {
    *out = NULL;
    if (!cfg->worker_listen[0]) return 0;
    remote *r = calloc(1, sizeof *r);
    if (!r) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
    r->cfg = cfg;
    r->lfd = r->stop_pipe[0] = r->stop_pipe[1] = -1;
    for (int i = 0; i < MAX_CONNS; i++) r->fds[i] = -1;
    pthread_mutex_init(&r->mu, NULL);
    pthread_mutex_init(&r->sha_mu, NULL);
    pthread_cond_init(&r->idle, NULL);
    r->sha = calloc(SHA_CACHE, sizeof *r->sha);
    if (!r->sha) {
        lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
        goto fail;
    }
    snprintf(r->db_path, sizeof r->db_path, "%s", db_path);
    snprintf(r->sock_path, sizeof r->sock_path, "%s/lorad.sock", cfg->data_dir);
    if (!realpath(cfg->data_dir, r->data_real)) {
        lr_errp(err, LR_E_IO, "data_dir", "%s: %s", cfg->data_dir, strerror(errno));
        goto fail;
    }
    /* a worker that vanishes mid-write must not kill lorad */
    signal(SIGPIPE, SIG_IGN);
    if (tl_server_init(&r->srv, cfg->tls_cert[0] ? cfg->tls_cert : NULL, cfg->tls_key[0] ? cfg->tls_key : NULL, err) ||
        listen_on(r, err))
        goto fail;
    if (pipe2(r->stop_pipe, O_CLOEXEC) || pthread_create(&r->acceptor, NULL, accept_main, r)) {
        lr_errp(err, LR_E_IO, NULL, "worker listener: %s", strerror(errno));
        goto fail;
    }
    *out = r;
    return 0;
fail:
    if (r->lfd >= 0) close(r->lfd);
    if (r->stop_pipe[0] >= 0) close(r->stop_pipe[0]), close(r->stop_pipe[1]);
    tl_server_free(&r->srv);
    free(r->sha);
    free(r);
    return -1;
}

int remote_port(const remote *r) { return r ? r->port : 0; }

void remote_stop(remote *r) {
    if (!r) return;
    if (write(r->stop_pipe[1], "x", 1) < 0) logf_("worker listener: cannot stop it: %s", strerror(errno));
    pthread_join(r->acceptor, NULL);
    pthread_mutex_lock(&r->mu);
    for (int i = 0; i < MAX_CONNS; i++)
        if (r->fds[i] >= 0) shutdown(r->fds[i], SHUT_RDWR);
    while (r->nconn) pthread_cond_wait(&r->idle, &r->mu);
    pthread_mutex_unlock(&r->mu);
    close(r->lfd);
    close(r->stop_pipe[0]);
    close(r->stop_pipe[1]);
    tl_server_free(&r->srv);
    pthread_cond_destroy(&r->idle);
    pthread_mutex_destroy(&r->mu);
    pthread_mutex_destroy(&r->sha_mu);
    free(r->sha);
    free(r);
}
