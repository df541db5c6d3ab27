/* lorad: the daemon and its admin commands. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "common/buf.h"
#include "daemon/api.h"
#include "daemon/config.h"
#include "daemon/http.h"
#include "daemon/models.h"
#include "daemon/remote.h"
#include "daemon/sha256.h"
#include "daemon/store.h"
#include "daemon/upload.h"
#include "daemon/super.h"

/* Side-by-side generations (POST /v1/jobs/{id}/generate): at most this many
 * at once, both runs within the time limit (below the CLI's 120 s request
 * timeout, so the CLI sees lorad's 504), one thread each: two OpenMP
 * processes of two threads on a busy two-core box were 60x slower than two
 * of one thread, and a generation is latency-bound anyway. */
#define GEN_MAX_AT_ONCE 2
#define GEN_THREADS 1

static void usage(FILE *f) {
    fprintf(f,
            "usage: lorad serve [--config FILE] [settings...]   run the daemon (REST API + workers)\n"
            "       lorad user add NAME [--admin]               create a user; prints its API token once\n"
            "       lorad model add NAME DIR                    register a Hugging Face model directory\n"
            "       lorad model ls                              list registered models\n"
            "       lorad worker-token add|rm NAME              make (prints it once) or revoke the token\n"
            "                                                   of remote workers (lora-worker agent --connect)\n"
            "       lorad backup FILE                           copy the database, also while lorad runs\n"
            "       lorad restore FILE                          make --data-dir's database from a backup\n"
            "       lorad share|unshare KIND ID USER            visibility private: let USER see and use a\n"
            "                                                   dataset, job or model (KIND) of another user\n"
            "\n"
            "Every command takes --config FILE (YAML, flat keys as below) and the settings as\n"
            "flags; flags win over the file. Settings:\n");
    config_print_help(f);
    fprintf(f, "\nThe API listens on loopback unless --listen says otherwise; put a TLS reverse\n"
               "proxy in front for remote users (deploy/). Routes: proto/openapi.yaml.\n");
}

/* Parses --config and the settings out of argv; what remains (positional
 * arguments and --admin) is left in rest. */
static int parse_args(int argc, char **argv, lorad_config *c, char **rest, int *nrest, int *admin) {
    lr_err e = {0};
    config_defaults(c);
    *nrest = 0;
    *admin = 0;
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--config")) {
            if (i + 1 >= argc) {
                fprintf(stderr, "lorad: --config needs a file\n");
                return -1;
            }
            if (config_load_file(c, argv[i + 1], &e)) {
                fprintf(stderr, "lorad: %s\n", e.msg);
                return -1;
            }
        }
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--config")) {
            i++;
        } else if (!strcmp(argv[i], "--admin")) {
            *admin = 1;
        } else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            exit(0);
        } else if (!strncmp(argv[i], "--", 2)) {
            const char *key = argv[i] + 2, *val = NULL;
            char k[64];
            const char *eq = strchr(key, '=');
            if (eq) {
                snprintf(k, sizeof k, "%.*s", (int)(eq - key), key);
                key = k;
                val = eq + 1;
            } else if (i + 1 < argc) {
                val = argv[++i];
            } else {
                fprintf(stderr, "lorad: --%s needs a value\n", key);
                return -1;
            }
            if (config_set(c, key, val, &e)) {
                fprintf(stderr, "lorad: %s\n", e.msg);
                return -1;
            }
        } else {
            rest[(*nrest)++] = argv[i];
        }
    }
    if (config_finish(c, &e)) {
        fprintf(stderr, "lorad: %s\n", e.msg);
        return -1;
    }
    return 0;
}

static int open_db(const lorad_config *c, char *db_path, size_t cap, store **st) {
    lr_err e = {0};
    char sub[1100];
    snprintf(db_path, cap, "%s/lorad.db", c->data_dir);
    snprintf(sub, sizeof sub, "%s/datasets", c->data_dir);
    if (lr_mkdirs(sub, &e)) goto fail;
    snprintf(sub, sizeof sub, "%s/runs", c->data_dir);
    if (lr_mkdirs(sub, &e)) goto fail;
    int applied = 0;
    if (store_open(db_path, st, &e)) goto fail;
    if (store_migrate(*st, c->migrations_dir, &applied, &e)) {
        store_close(*st);
        *st = NULL;
        goto fail;
    }
    if (applied) fprintf(stderr, "lorad: applied %d schema migration(s) to %s\n", applied, db_path);
    return 0;
fail:
    fprintf(stderr, "lorad: %s\n", e.msg);
    return -1;
}

/* A fresh token: prefix ("lr_" users, "lw_" workers) and 48 random hex digits. */
static int new_token(const char *prefix, char token[64]) {
    unsigned char r[24];
    size_t got = 0;
    while (got < sizeof r) {
        ssize_t n = getrandom(r + got, sizeof r - got, 0);
        if (n < 0 && errno != EINTR) {
            perror("lorad: getrandom");
            return -1;
        }
        if (n > 0) got += (size_t)n;
    }
    snprintf(token, 64, "%s", prefix);
    for (size_t i = 0; i < sizeof r; i++) snprintf(token + 3 + 2 * i, 3, "%02x", r[i]);
    return 0;
}

static int cmd_user_add(const lorad_config *c, const char *name, int admin) {
    if (!models_name_ok(name)) {
        fprintf(stderr, "lorad: a user name has 1..63 letters, digits, '.', '_' or '-'\n");
        return 1;
    }
    char token[64];
    if (new_token("lr_", token)) return 2;
    char hash[65], db[1100];
    sha256_hex(token, strlen(token), hash);
    store *st = NULL;
    if (open_db(c, db, sizeof db, &st)) return 2;
    lr_err e = {0};
    int rc = store_user_add(st, name, admin, hash, &e);
    store_close(st);
    if (rc) {
        fprintf(stderr, "lorad: %s\n", e.msg);
        return 2;
    }
    fprintf(stderr, "lorad: user %s%s created; its token (shown only now):\n", name, admin ? " (admin)" : "");
    printf("%s\n", token);
    return 0;
}

/* Remote workers' tokens (lora-worker agent --connect ... --token). */
static int cmd_worker_token(const lorad_config *c, const char *verb, const char *name) {
    if (!models_name_ok(name)) {
        fprintf(stderr, "lorad: a worker token's name has 1..63 letters, digits, '.', '_' or '-'\n");
        return 1;
    }
    char token[64], hash[65], db[1100];
    int add = !strcmp(verb, "add");
    if (add && new_token("lw_", token)) return 2;
    store *st = NULL;
    if (open_db(c, db, sizeof db, &st)) return 2;
    lr_err e = {0};
    if (add) sha256_hex(token, strlen(token), hash);
    int rc = add ? store_worker_token_add(st, name, hash, &e) : store_worker_token_rm(st, name, &e);
    store_close(st);
    if (rc) {
        fprintf(stderr, "lorad: %s\n", e.msg);
        return e.code == LR_E_CONFLICT || e.code == LR_E_NOTFOUND ? 1 : 2;
    }
    if (!add) {
        printf("revoked worker token %s; a worker using it is refused from its next connection\n", name);
        return 0;
    }
    fprintf(stderr, "lorad: worker token %s created; give it to lora-worker agent --token (shown only now):\n", name);
    printf("%s\n", token);
    return 0;
}

static int cmd_model_add(const lorad_config *c, const char *name, const char *dir_arg) {
    if (!models_name_ok(name)) {
        fprintf(stderr, "lorad: a model name has 1..63 letters, digits, '.', '_' or '-'\n");
        return 1;
    }
    char *dir = realpath(dir_arg, NULL);
    if (!dir) {
        fprintf(stderr, "lorad: %s: %s\n", dir_arg, strerror(errno));
        return 2;
    }
    int rc = 2;
    store *st = NULL;
    json_t *info = NULL;
    lr_err e = {0};
    char db[1100];
    if (models_inspect(dir, &info, &e)) {
        fprintf(stderr, "lorad: %s\n", e.msg);
        goto out;
    }
    if (open_db(c, db, sizeof db, &st)) goto out;
    /* An operator's model has no owner, whatever a failed merge left. */
    if (store_model_merge_end(st, name, &e) || store_model_add(st, name, dir, info, &e))
        fprintf(stderr, "lorad: %s\n", e.msg);
    else {
        printf("registered model %s (%s, %lld layers, hidden %lld) from %s\n", name,
               json_string_value(json_object_get(info, "architecture")),
               (long long)json_integer_value(json_object_get(info, "num_layers")),
               (long long)json_integer_value(json_object_get(info, "hidden_size")), dir);
        rc = 0;
    }
out:
    json_decref(info);
    store_close(st);
    free(dir);
    return rc;
}

static int cmd_model_ls(const lorad_config *c) {
    store *st = NULL;
    char db[1100];
    if (open_db(c, db, sizeof db, &st)) return 2;
    lr_err e = {0};
    json_t *l = store_models_list(st, NULL, &e);
    store_close(st);
    if (!l) {
        fprintf(stderr, "lorad: %s\n", e.msg);
        return 2;
    }
    size_t i;
    json_t *m;
    json_array_foreach(json_object_get(l, "data"), i, m)
        printf("%-32s %-20s layers=%lld hidden=%lld\n", json_string_value(json_object_get(m, "id")),
               json_string_value(json_object_get(m, "architecture")),
               (long long)json_integer_value(json_object_get(m, "num_layers")),
               (long long)json_integer_value(json_object_get(m, "hidden_size")));
    json_decref(l);
    return 0;
}

/* The database only: datasets/, runs/ and models/ are plain files the
 * operator copies beside it (README, "Backups"). */
static int cmd_backup(const lorad_config *c, const char *file) {
    store *st = NULL;
    char db[1100];
    if (open_db(c, db, sizeof db, &st)) return 2;
    lr_err e = {0};
    int rc = store_backup(st, file, c->data_dir, &e);
    store_close(st);
    if (rc) {
        fprintf(stderr, "lorad: backup to %s failed: %s\n", file, e.msg);
        return 2;
    }
    printf("backed up %s to %s\n", db, file);
    return 0;
}

static int cmd_restore(const lorad_config *c, const char *file) {
    lr_err e = {0};
    store *st = NULL;
    char db[1100];
    if (lr_mkdirs(c->data_dir, &e) || store_restore(file, c->data_dir, &e)) {
        fprintf(stderr, "lorad: restore from %s failed: %s\n", file, e.msg);
        return 2;
    }
    /* A backup of an older lorad gets this one's schema now. */
    if (open_db(c, db, sizeof db, &st)) return 2;
    store_close(st);
    printf("restored %s from %s\n", db, file);
    return 0;
}

static int cmd_share(const lorad_config *c, int on, const char *kind, const char *id, const char *user) {
    store *st = NULL;
    char db[1100];
    if (open_db(c, db, sizeof db, &st)) return 2;
    lr_err e = {0};
    int rc = store_share(st, kind, id, user, on, &e);
    store_close(st);
    if (rc) {
        fprintf(stderr, "lorad: %s\n", e.msg);
        return e.code == LR_E_INVALID ? 1 : 2;
    }
    printf("%s %s %s %s %s\n", on ? "shared" : "unshared", kind, id, on ? "with" : "from", user);
    if (strcmp(c->visibility, "private"))
        fprintf(stderr, "lorad: note: visibility is %s, where every user sees everything anyway\n", c->visibility);
    return 0;
}

static int cmd_serve(const lorad_config *c) {
    char db[1100];
    store *st = NULL;
    if (open_db(c, db, sizeof db, &st)) return 2;
    store_close(st); /* each thread opens its own connection */
    char tmp[1100];
    if (!lr_pathf(tmp, sizeof tmp, "%s/tmp", c->data_dir)) upload_sweep(tmp); /* uploads a crash cut short */
    lr_err e = {0};
    super *sv = NULL;
    api *a = NULL;
    http_server *h = NULL;
    runner *rn = NULL;
    remote *rm = NULL;
    int rc = 2;
    /* Generations hold an HTTP thread each: leave at least one for the rest. */
    int max_gen = c->http_threads > GEN_MAX_AT_ONCE ? GEN_MAX_AT_ONCE : c->http_threads - 1;
    /* completions waiting for a slot hold one too, so the same floor */
    int gen_queue = c->http_threads - max_gen - 1;
    runner_config rconf = {.worker_bin = c->worker_bin, .data_dir = c->data_dir, .db_path = db,
                         .max_generations = max_gen, .gen_timeout_s = c->gen_timeout_s, .gen_threads = GEN_THREADS,
                         .gen_queue = gen_queue > RUNNER_GEN_QUEUE ? RUNNER_GEN_QUEUE : gen_queue,
                         .gen_cache_bytes = (size_t)c->gen_cache_bytes, .gen_backend = c->gen_backend};
    if (super_init(&sv, c, db, &e) || runner_new(&rconf, &rn, &e)) goto out;
    api_env env = {.cfg = c, .db = http_thread_store, .db_ud = db, .wake = super_wake, .wake_ud = sv, .runner = rn};
    a = api_new(&env);
    if (!a) {
        lr_errf(&e, "out of memory");
        goto out;
    }
    if (http_start(c, a, &h, &e)) goto out;
    fprintf(stderr, "lorad: listening on http://%s (port %d), data in %s, %d worker(s)\n", c->listen, http_port(h),
            c->data_dir, c->n_workers);
    if (remote_start(c, db, &rm, &e)) goto out;
    if (rm)
        fprintf(stderr, "lorad: remote workers connect to %s://%s (port %d)\n", c->tls_cert[0] ? "https" : "tcp",
                c->worker_listen, remote_port(rm));
    if (super_run(sv, h, &e)) goto out;
    rc = 0;
out:
    if (rc) fprintf(stderr, "lorad: %s\n", e.msg);
    remote_stop(rm);
    runner_stop(rn); /* generations in HTTP threads end now, so http_stop does not wait for them */
    http_stop(h);
    api_free(a);
    runner_free(rn);
    super_free(sv);
    return rc;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 1;
    }
    lorad_config cfg;
    char *rest[64];
    int nrest = 0, admin = 0;
    if (argc > 64 || parse_args(argc, argv, &cfg, rest, &nrest, &admin)) return 1;
    if (nrest == 1 && !strcmp(rest[0], "serve")) return cmd_serve(&cfg);
    if (nrest == 3 && !strcmp(rest[0], "user") && !strcmp(rest[1], "add")) return cmd_user_add(&cfg, rest[2], admin);
    if (nrest == 4 && !strcmp(rest[0], "model") && !strcmp(rest[1], "add")) return cmd_model_add(&cfg, rest[2], rest[3]);
    if (nrest == 2 && !strcmp(rest[0], "model") && !strcmp(rest[1], "ls")) return cmd_model_ls(&cfg);
    if (nrest == 3 && !strcmp(rest[0], "worker-token") && (!strcmp(rest[1], "add") || !strcmp(rest[1], "rm")))
        return cmd_worker_token(&cfg, rest[1], rest[2]);
    if (nrest == 2 && !strcmp(rest[0], "backup")) return cmd_backup(&cfg, rest[1]);
    if (nrest == 4 && (!strcmp(rest[0], "share") || !strcmp(rest[0], "unshare")))
        return cmd_share(&cfg, !strcmp(rest[0], "share"), rest[1], rest[2], rest[3]);
    if (nrest == 2 && !strcmp(rest[0], "restore")) return cmd_restore(&cfg, rest[1]);
    usage(stderr);
    return 1;
}
