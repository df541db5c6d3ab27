#include "daemon/config.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/buf.h"
#include "proto/jobspec.h"
#include "proto/tlink.h"

typedef enum { K_STR, K_INT, K_SIZE, K_WORKERS } key_type;

typedef struct key_def {
    const char *key;
    key_type type;
    size_t off, cap;
    long long lo, hi;
    const char *def, *help;
} key_def;

#define S(f) offsetof(lorad_config, f), sizeof(((lorad_config *)0)->f)
#define I(f) offsetof(lorad_config, f), 0

static const key_def keys[] = {
    {"data_dir", K_STR, S(data_dir), 0, 0, "/var/lib/lorad", "data directory: lorad.db, datasets/, runs/"},
    {"listen", K_STR, S(listen), 0, 0, "127.0.0.1:8080", "HTTP address:port (loopback by default)"},
    {"web_dir", K_STR, S(web_dir), 0, 0, "", "dashboard files served at / (default <exe>/../web, else <exe>/../share/lorad/web)"},
    {"migrations_dir", K_STR, S(migrations_dir), 0, 0, "", "schema migrations (default <exe>/../migrations, else <exe>/../share/lorad/migrations)"},
    {"worker_bin", K_STR, S(worker_bin), 0, 0, "", "lora-worker executable (default beside lorad)"},
    {"workers", K_WORKERS, 0, 0, 0, 0, "cpu", "workers to start: cpu, cpu:THREADS, cuda:N, comma-separated; NxWORKER is one worker of N ranks started with mpirun (2xcpu:4, 4xcuda:0 = GPUs 0-3) for jobs with resources.devices N"},
    {"worker_threads", K_INT, I(worker_threads), 0, 1024, "0", "threads per CPU worker (0 = all cores)"},
    {"http_threads", K_INT, I(http_threads), 1, 256, "4", "HTTP thread pool size"},
    {"max_connections", K_INT, I(max_connections), 1, 100000, "256", "concurrent HTTP connections"},
    {"request_timeout_s", K_INT, I(request_timeout_s), 1, 3600, "60", "idle HTTP connection timeout"},
    {"max_body_bytes", K_SIZE, I(max_body_bytes), 1024, 1LL << 30, "1048576", "largest JSON request body"},
    {"max_upload_bytes", K_SIZE, I(max_upload_bytes), 1024, 1LL << 40, "536870912", "largest dataset upload"},
    {"header_timeout_s", K_INT, I(header_timeout_s), 1, 3600, "10",
     "a client must send a request's headers within this (slow clients are cut off)"},
    {"max_connections_per_ip", K_INT, I(max_connections_per_ip), 0, 100000, "64",
     "concurrent HTTP connections from one address (0 = no limit; raise it behind a reverse proxy)"},
    {"max_uploads_per_user", K_INT, I(max_uploads_per_user), 1, 1000, "2", "dataset uploads one user may have in progress"},
    {"max_running_per_user", K_INT, I(max_running_per_user), 0, 1000, "0", "running jobs per user (0 = no limit)"},
    {"max_queued_per_user", K_INT, I(max_queued_per_user), 0, 1000000, "1000", "queued jobs per user; a submission past it gets 429 (0 = no limit)"},
    {"max_submits_per_minute", K_INT, I(max_submits_per_minute), 0, 1000000, "300", "jobs a user may submit in any 60 s, a sweep counting its jobs; past it 429 with Retry-After (0 = no limit)"},
    {"max_user_priority", K_INT, I(max_user_priority), -100, 100, "10", "highest job priority a non-admin may ask for; a higher one gets 400"},
    {"visibility", K_STR, S(visibility), 0, 0, "team", "team: every user sees every job, dataset and model; private: only their own and what an admin shares"},
    {"heartbeat_interval_s", K_INT, I(heartbeat_interval_s), 1, 600, "2", "worker heartbeat period"},
    {"heartbeat_timeout_s", K_INT, I(heartbeat_timeout_s), 2, 3600, "30", "a worker silent this long is killed"},
    {"shutdown_grace_s", K_INT, I(shutdown_grace_s), 0, 3600, "60", "on SIGTERM, wait this long for running jobs to checkpoint"},
    {"cancel_grace_s", K_INT, I(cancel_grace_s), 1, 3600, "10", "a worker that has not stopped this long after a cancel is killed and restarted"},
    {"min_free_bytes", K_SIZE, I(min_free_bytes), 0, 1LL << 50, "256M", "below this much free disk in data_dir, uploads and new jobs get 507 (0 = no floor)"},
    {"worker_listen", K_STR, S(worker_listen), 0, 0, "", "ADDRESS:PORT where remote workers connect (lora-worker agent --connect; off when empty); TLS with tls_cert/tls_key, plain TCP on loopback only"},
    {"tls_cert", K_STR, S(tls_cert), 0, 0, "", "PEM certificate (chain) lorad shows remote workers on worker_listen"},
    {"tls_key", K_STR, S(tls_key), 0, 0, "", "PEM private key of tls_cert"},
    {"slurm_devices", K_STR, S(slurm_devices), 0, 0, "", "job devices (cpu, cuda, any; comma-separated) whose jobs lorad runs through Slurm's sbatch instead of its own workers (needs worker_listen)"},
    {"slurm_partition", K_STR, S(slurm_partition), 0, 0, "", "Slurm partition of those jobs (sbatch --partition; empty: the cluster's default)"},
    {"slurm_sbatch_args", K_STR, S(slurm_sbatch_args), 0, 0, "", "more sbatch options, space-separated: --gres=gpu:1 --account=ml --time=04:00:00 --qos=..."},
    {"slurm_worker_args", K_STR, S(slurm_worker_args), 0, 0, "", "more lora-worker agent options for the node, space-separated: --ca FILE --data-dir /scratch/lw --shared-fs --device cuda:0"},
    {"slurm_worker_url", K_STR, S(slurm_worker_url), 0, 0, "", "the address a node's worker dials (default: https:// or tcp:// of worker_listen)"},
    {"slurm_token_file", K_STR, S(slurm_token_file), 0, 0, "", "file holding the worker token of Slurm's workers (lorad worker-token add slurm); passed in the job's environment"},
    {"packing", K_STR, S(packing), 0, 0, "auto", "auto: a worker that offers room (lora-worker agent --pack-max) co-trains queued jobs on the same base model, dtype and device in one pass, in the queue's order (a job opts out with resources.co_train: false); off: one job per worker"},
    {"pack_max_jobs", K_INT, I(pack_max_jobs), 1, CONFIG_MAX_PACK, "4", "most jobs that share one worker pass (the worker's own limit may be lower)"},
    {"gen_cache_bytes", K_SIZE, I(gen_cache_bytes), 0, 1LL << 50, "0", "memory the generation servers (lora-worker serve, one per generation slot, sharing it) keep loaded models in between chat/completions requests, least recently used unloaded first (0 = half the memory free at start)"},
    {"gen_backend", K_STR, S(gen_backend), 0, 0, "auto", "where the generation servers run: auto (cuda:0 when lora-worker has CUDA and a usable GPU, else cpu), cpu, or cuda:N (cpu keeps a GPU that trains free)"},
    {"gen_timeout_s", K_INT, I(gen_timeout_s), 1, 3600, "110", "a generation (chat/completions, side-by-side) past this fails with 504 and its generation server is restarted"},
    {"restart_backoff_max_s", K_INT, I(restart_backoff_max_s), 1, 3600, "30", "longest wait before restarting a crashed worker"},
};
#define NKEYS (sizeof keys / sizeof keys[0])

static const key_def *find_key(const char *k) {
    char norm[64];
    size_t n = strlen(k);
    if (n >= sizeof norm) return NULL;
    for (size_t i = 0; i <= n; i++) norm[i] = k[i] == '-' ? '_' : k[i];
    for (size_t i = 0; i < NKEYS; i++)
        if (!strcmp(keys[i].key, norm)) return &keys[i];
    return NULL;
}

int config_set_workers(lorad_config *c, const char *list, lr_err *err) {
    c->n_workers = 0;
    const char *p = list;
    while (*p) {
        const char *e = strchr(p, ',');
        size_t l = e ? (size_t)(e - p) : strlen(p);
        char item[64];
        if (l == 0 || l >= sizeof item) return lr_errp(err, LR_E_INVALID, "workers", "bad worker entry in '%s'", list);
        memcpy(item, p, l);
        item[l] = 0;
        if (c->n_workers == CONFIG_MAX_WORKERS)
            return lr_errp(err, LR_E_INVALID, "workers", "at most %d workers", CONFIG_MAX_WORKERS);
        config_worker *w = &c->workers[c->n_workers];
        memset(w, 0, sizeof *w);
        w->ranks = 1;
        char *x = strchr(item, 'x'), *at = item;
        if (x && x > item && strspn(item, "0123456789") == (size_t)(x - item)) {
            /* NxBACKEND: one worker of N ranks, for jobs with resources.devices N */
            w->ranks = atoi(item);
            if (w->ranks < 2 || w->ranks > 64)
                return lr_errp(err, LR_E_INVALID, "workers", "'%s': NxBACKEND needs 2..64 ranks", item);
            at = x + 1;
            memmove(item, at, strlen(at) + 1);
        }
        char *colon = strchr(item, ':');
        if (!strncmp(item, "cpu", 3) && (item[3] == 0 || item[3] == ':')) {
            snprintf(w->backend, sizeof w->backend, "cpu");
            if (colon) {
                char *end;
                long t = strtol(colon + 1, &end, 10);
                if (*end || t < 1 || t > 1024)
                    return lr_errp(err, LR_E_INVALID, "workers", "'%s': cpu:THREADS needs 1..1024", item);
                w->threads = (int)t;
            }
        } else if (!strncmp(item, "cuda", 4) && (item[4] == 0 || item[4] == ':')) {
            long dev = 0;
            if (colon) {
                char *end;
                dev = strtol(colon + 1, &end, 10);
                if (*end || dev < 0 || dev > 64) return lr_errp(err, LR_E_INVALID, "workers", "'%s': cuda:N", item);
            }
            snprintf(w->backend, sizeof w->backend, "cuda:%ld", dev);
        } else {
            return lr_errp(err, LR_E_INVALID, "workers", "'%s': a worker is cpu, cpu:THREADS or cuda:N", item);
        }
        c->n_workers++;
        if (!e) break;
        p = e + 1;
    }
    return 0;
}

int config_set(lorad_config *c, const char *key, const char *value, lr_err *err) {
    const key_def *k = find_key(key);
    if (!k) return lr_errp(err, LR_E_INVALID, key, "unknown setting '%s' (see lorad --help)", key);
    if (k->type == K_WORKERS) return config_set_workers(c, value, err);
    if (k->type == K_STR) {
        if (strlen(value) >= k->cap) return lr_errp(err, LR_E_INVALID, k->key, "%s is too long", k->key);
        memcpy((char *)c + k->off, value, strlen(value) + 1);
        return 0;
    }
    char *end;
    errno = 0;
    long long v = strtoll(value, &end, 10);
    if (k->type == K_SIZE && end != value) {
        if (*end == 'k' || *end == 'K') v <<= 10, end++;
        else if (*end == 'm' || *end == 'M') v <<= 20, end++;
        else if (*end == 'g' || *end == 'G') v <<= 30, end++;
    }
    if (errno || end == value || *end || v < k->lo || v > k->hi)
        return lr_errp(err, LR_E_INVALID, k->key, "%s must be an integer in %lld..%lld%s, not '%s'", k->key, k->lo, k->hi,
                       k->type == K_SIZE ? " (suffix K, M or G allowed)" : "", value);
    if (k->type == K_INT) *(int *)((char *)c + k->off) = (int)v;
    else *(long long *)((char *)c + k->off) = v;
    return 0;
}

void config_defaults(lorad_config *c) {
    memset(c, 0, sizeof *c);
    for (size_t i = 0; i < NKEYS; i++) {
        lr_err e = {0};
        if (config_set(c, keys[i].key, keys[i].def, &e)) abort(); /* the table itself is wrong */
    }
}

int config_load_file(lorad_config *c, const char *path, lr_err *err) {
    char *text = NULL;
    size_t len = 0;
    json_t *doc = NULL;
    int rc = -1;
    if (lr_read_file(path, 1 << 20, &text, &len, err)) return -1;
    if (jobspec_parse_text(text, len, &doc, err)) goto out;
    if (json_is_null(doc)) {
        rc = 0;
        goto out;
    }
    if (!json_is_object(doc)) {
        lr_errf(err, "%s: expected a mapping of settings", path);
        goto out;
    }
    const char *k;
    json_t *v;
    json_object_foreach(doc, k, v) {
        char val[1100];
        if (json_is_string(v)) snprintf(val, sizeof val, "%s", json_string_value(v));
        else if (json_is_integer(v)) snprintf(val, sizeof val, "%lld", (long long)json_integer_value(v));
        else if (json_is_array(v) && !strcmp(k, "workers")) {
            /* workers: [cpu, cpu:4] as a list as well as "cpu,cpu:4" */
            lr_buf b;
            lr_buf_init(&b, sizeof val - 1);
            size_t i;
            json_t *x;
            int bad = 0;
            json_array_foreach(v, i, x) {
                if (!json_is_string(x) || (i && lr_buf_adds(&b, ",")) || lr_buf_adds(&b, json_string_value(x))) bad = 1;
            }
            snprintf(val, sizeof val, "%s", b.data ? b.data : "");
            lr_buf_free(&b);
            if (bad) {
                lr_errp(err, LR_E_INVALID, k, "%s: workers must be a list of strings", path);
                goto out;
            }
        } else {
            lr_errp(err, LR_E_INVALID, k, "%s: '%s' must be a string or an integer", path, k);
            goto out;
        }
        if (config_set(c, k, val, err)) {
            lr_err_prefix(err, "%s: ", path);
            goto out;
        }
    }
    rc = 0;
out:
    json_decref(doc);
    free(text);
    return rc;
}

static void exe_dir(char *out, size_t cap) {
    char p[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", p, sizeof p - 1);
    if (n <= 0) {
        snprintf(out, cap, ".");
        return;
    }
    p[n] = 0;
    char *s = strrchr(p, '/');
    if (s) *s = 0;
    snprintf(out, cap, "%s", p);
}

static void copy_path(char *dst, size_t cap, const char *src) {
    size_t n = strlen(src);
    if (n >= cap) n = cap - 1; /* a cut path fails visibly when it is opened */
    memcpy(dst, src, n);
    dst[n] = 0;
}

/* The first of <exe>/../rel (a build/ tree beside the sources) and
 * <exe>/../share/lorad/rel (`make install` with any PREFIX) that exists,
 * else the system location. */
static void default_path(char *dst, size_t cap, const char *rel, const char *sys) {
    static const char *const under[] = {"", "share/lorad/"};
    char d[PATH_MAX], p[PATH_MAX + 64];
    exe_dir(d, sizeof d);
    for (size_t i = 0; i < sizeof under / sizeof *under; i++) {
        snprintf(p, sizeof p, "%s/../%s%s", d, under[i], rel);
        if (access(p, R_OK) == 0) {
            char *r = realpath(p, NULL);
            copy_path(dst, cap, r ? r : p);
            free(r);
            return;
        }
    }
    snprintf(dst, cap, "%s", sys);
}

/* cuda:N, N a device index */
static int cuda_name_ok(const char *s) {
    char *end;
    if (strncmp(s, "cuda:", 5)) return 0;
    long d = strtol(s + 5, &end, 10);
    return end != s + 5 && !*end && d >= 0 && d <= 64;
}

int config_finish(lorad_config *c, lr_err *err) {
    if (!c->web_dir[0]) default_path(c->web_dir, sizeof c->web_dir, "web", "/usr/share/lorad/web");
    if (!c->migrations_dir[0])
        default_path(c->migrations_dir, sizeof c->migrations_dir, "migrations", "/usr/share/lorad/migrations");
    if (!c->worker_bin[0]) {
        char d[PATH_MAX], p[PATH_MAX + 16];
        exe_dir(d, sizeof d);
        snprintf(p, sizeof p, "%s/lora-worker", d);
        copy_path(c->worker_bin, sizeof c->worker_bin, p);
    }
    if (c->heartbeat_timeout_s <= c->heartbeat_interval_s)
        return lr_errp(err, LR_E_INVALID, "heartbeat_timeout_s", "heartbeat_timeout_s must be longer than heartbeat_interval_s");
    if (strcmp(c->packing, "auto") && strcmp(c->packing, "off"))
        return lr_errp(err, LR_E_INVALID, "packing", "packing must be auto or off, not '%s'", c->packing);
    if (strcmp(c->gen_backend, "auto") && strcmp(c->gen_backend, "cpu") && strcmp(c->gen_backend, "cuda") &&
        !cuda_name_ok(c->gen_backend))
        return lr_errp(err, LR_E_INVALID, "gen_backend", "gen_backend must be auto, cpu or cuda:N, not '%s'",
                       c->gen_backend);
    if (strcmp(c->visibility, "team") && strcmp(c->visibility, "private"))
        return lr_errp(err, LR_E_INVALID, "visibility", "visibility must be team or private, not '%s'", c->visibility);
    if (!c->tls_cert[0] != !c->tls_key[0])
        return lr_errp(err, LR_E_INVALID, c->tls_cert[0] ? "tls_key" : "tls_cert", "tls_cert and tls_key go together");
    if (c->worker_listen[0]) {
        const char *wc = strrchr(c->worker_listen, ':');
        char host[128];
        if (!wc || wc == c->worker_listen || !wc[1])
            return lr_errp(err, LR_E_INVALID, "worker_listen", "worker_listen must be ADDRESS:PORT, not '%s'", c->worker_listen);
        snprintf(host, sizeof host, "%.*s", (int)(wc - c->worker_listen), c->worker_listen);
        if (!c->tls_cert[0] && !tl_is_loopback(host))
            return lr_errp(err, LR_E_INVALID, "worker_listen",
                           "worker_listen %s is not a loopback address: remote workers need TLS (set tls_cert and tls_key)",
                           c->worker_listen);
    }
    if (c->slurm_devices[0] && (!c->worker_listen[0] || !c->slurm_token_file[0]))
        return lr_errp(err, LR_E_INVALID, "slurm_devices",
                       "slurm_devices needs worker_listen (where Slurm's workers connect) and slurm_token_file");
    const char *colon = strrchr(c->listen, ':');
    if (!colon || colon == c->listen || !colon[1])
        return lr_errp(err, LR_E_INVALID, "listen", "listen must be ADDRESS:PORT, not '%s'", c->listen);
    return 0;
}

void config_print_help(FILE *f) {
    for (size_t i = 0; i < NKEYS; i++) {
        char flag[64];
        size_t n = strlen(keys[i].key);
        for (size_t j = 0; j <= n; j++) flag[j] = keys[i].key[j] == '_' ? '-' : keys[i].key[j];
        fprintf(f, "  --%-24s %s", flag, keys[i].help);
        if (keys[i].def[0]) fprintf(f, " [%s]", keys[i].def);
        fputc('\n', f);
    }
}
