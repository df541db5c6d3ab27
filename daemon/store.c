/* store.c: lorad's SQLite store (daemon/store.h says what it keeps).
 * Why this file is long: every SQL statement of the store is here, beside
 * the code that turns its rows into the REST objects by column index, so a
 * column list and its readers change together; one section per table
 * (users, tokens, models, datasets, jobs, metrics and events, sweeps,
 * workers) and backup. */
#include "daemon/store.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "common/buf.h"
#include "daemon/openai.h"
#include "daemon/rowcache.h"
#include "proto/jsonfmt.h"

/* Prepared statements are cached by the address of their SQL literal: every
 * query in this file is a string constant, so the pointer is its identity. */
#define STMT_CACHE 128

struct store {
    sqlite3 *db;
    struct {
        const char *sql;
        sqlite3_stmt *st;
    } cache[STMT_CACHE];
    int ncache;
    rowcache *items; /* the jobs list's item texts (store_jobs_list_text) */
    uint64_t items_epoch; /* their rowcache epoch, and the data version it is for */
    unsigned items_version;
};

static int db_err(store *st, lr_err *err, const char *what) {
    int code = sqlite3_extended_errcode(st->db);
    int cls = (code & 0xff) == SQLITE_CONSTRAINT ? LR_E_CONFLICT : LR_E_IO;
    return lr_errp(err, cls, NULL, "database: %s: %s", what, sqlite3_errmsg(st->db));
}

static sqlite3_stmt *q(store *st, const char *sql, lr_err *err) {
    for (int i = 0; i < st->ncache; i++)
        if (st->cache[i].sql == sql) {
            sqlite3_reset(st->cache[i].st);
            sqlite3_clear_bindings(st->cache[i].st);
            return st->cache[i].st;
        }
    sqlite3_stmt *s = NULL;
    if (sqlite3_prepare_v3(st->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &s, NULL) != SQLITE_OK) {
        db_err(st, err, "prepare");
        return NULL;
    }
    if (st->ncache < STMT_CACHE) {
        st->cache[st->ncache].sql = sql;
        st->cache[st->ncache].st = s;
        st->ncache++;
    }
    /* A full cache is a bug in this file (more than STMT_CACHE queries);
     * the statement still works but leaks, so fail loudly in tests. */
    else {
        sqlite3_finalize(s);
        lr_errp(err, LR_E_INTERNAL, NULL, "database: statement cache full");
        return NULL;
    }
    return s;
}

static void bt(sqlite3_stmt *s, int i, const char *v) {
    if (v) sqlite3_bind_text(s, i, v, -1, SQLITE_TRANSIENT);
    else sqlite3_bind_null(s, i);
}
static void bi(sqlite3_stmt *s, int i, int64_t v) { sqlite3_bind_int64(s, i, v); }
static void bd(sqlite3_stmt *s, int i, double v) {
    if (isfinite(v)) sqlite3_bind_double(s, i, v);
    else sqlite3_bind_null(s, i);
}
static const char *ct(sqlite3_stmt *s, int i) {
    const unsigned char *t = sqlite3_column_text(s, i);
    return t ? (const char *)t : "";
}
static json_t *cj_text(sqlite3_stmt *s, int i) {
    return sqlite3_column_type(s, i) == SQLITE_NULL ? json_null() : json_string(ct(s, i));
}
static json_t *cj_int(sqlite3_stmt *s, int i) {
    return sqlite3_column_type(s, i) == SQLITE_NULL ? json_null() : json_integer(sqlite3_column_int64(s, i));
}
static json_t *cj_real(sqlite3_stmt *s, int i) {
    return sqlite3_column_type(s, i) == SQLITE_NULL ? json_null() : json_real(sqlite3_column_double(s, i));
}

/* Runs a statement that returns no rows. */
static int exec1(store *st, sqlite3_stmt *s, lr_err *err, const char *what) {
    int rc = sqlite3_step(s);
    sqlite3_reset(s);
    if (rc != SQLITE_DONE) return db_err(st, err, what);
    return 0;
}

static int exec_sql(store *st, const char *sql, lr_err *err) {
    char *msg = NULL;
    if (sqlite3_exec(st->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        lr_errp(err, LR_E_IO, NULL, "database: %s", msg ? msg : sqlite3_errmsg(st->db));
        sqlite3_free(msg);
        return -1;
    }
    return 0;
}

int store_open(const char *path, store **out, lr_err *err) {
    *out = NULL;
    store *st = calloc(1, sizeof *st);
    if (!st) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
    if (sqlite3_open_v2(path, &st->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                        NULL) != SQLITE_OK) {
        lr_errp(err, LR_E_IO, NULL, "database %s: %s", path,
                st->db ? sqlite3_errmsg(st->db) : "out of memory");
        goto fail;
    }
    sqlite3_busy_timeout(st->db, 10000);
    /* synchronous=FULL: a metric is acknowledged to the worker only after
     * its commit, so the commit must survive a power cut, not just a crash. */
    if (exec_sql(st, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;", err))
        goto fail;
    *out = st;
    return 0;
fail:
    store_close(st);
    return -1;
}

void store_close(store *st) {
    if (!st) return;
    for (int i = 0; i < st->ncache; i++) sqlite3_finalize(st->cache[i].st);
    rowcache_free(st->items);
    sqlite3_close(st->db);
    free(st);
}

int store_begin(store *st, lr_err *err) { return exec_sql(st, "BEGIN IMMEDIATE", err); }
int store_commit(store *st, lr_err *err) { return exec_sql(st, "COMMIT", err); }
void store_rollback(store *st) {
    if (!sqlite3_get_autocommit(st->db)) sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
}

static int name_cmp(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* NNNN_name.sql: four digits, an underscore, a name, .sql */
static int is_migration(const char *n) {
    size_t l = strlen(n);
    if (l < 10 || strcmp(n + l - 4, ".sql")) return 0;
    for (int i = 0; i < 4; i++)
        if (n[i] < '0' || n[i] > '9') return 0;
    return n[4] == '_';
}

int store_migrate(store *st, const char *dir, int *applied, lr_err *err) {
    int rc = -1, nfiles = 0;
    char *files[1000];
    char *sql = NULL;
    if (applied) *applied = 0;
    if (exec_sql(st, "CREATE TABLE IF NOT EXISTS schema_migrations (version TEXT PRIMARY KEY, "
                     "applied_at INTEGER NOT NULL)", err))
        return -1;
    DIR *d = opendir(dir);
    if (!d) return lr_errp(err, LR_E_IO, NULL, "migrations directory %s: %s", dir, strerror(errno));
    struct dirent *e;
    while ((e = readdir(d)) && nfiles < 1000)
        if (is_migration(e->d_name)) files[nfiles++] = strdup(e->d_name);
    closedir(d);
    if (nfiles == 0) {
        lr_errp(err, LR_E_IO, NULL, "migrations directory %s holds no NNNN_name.sql file", dir);
        goto out;
    }
    qsort(files, (size_t)nfiles, sizeof files[0], name_cmp);
    for (int i = 0; i < nfiles; i++) {
        if (!files[i]) {
            lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
            goto out;
        }
        sqlite3_stmt *s = q(st, "SELECT 1 FROM schema_migrations WHERE version = ?", err);
        if (!s) goto out;
        bt(s, 1, files[i]);
        int have = sqlite3_step(s) == SQLITE_ROW;
        sqlite3_reset(s);
        if (have) continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        if (lr_read_file(path, 16u << 20, &sql, NULL, err)) goto out;
        if (store_begin(st, err)) goto out;
        if (exec_sql(st, sql, err)) {
            store_rollback(st);
            lr_err_prefix(err, "migration %s: ", files[i]);
            goto out;
        }
        s = q(st, "INSERT INTO schema_migrations(version, applied_at) VALUES (?, ?)", err);
        if (!s) {
            store_rollback(st);
            goto out;
        }
        bt(s, 1, files[i]);
        bi(s, 2, (int64_t)time(NULL));
        if (exec1(st, s, err, "record migration") || store_commit(st, err)) {
            store_rollback(st);
            goto out;
        }
        free(sql);
        sql = NULL;
        if (applied) (*applied)++;
    }
    rc = 0;
out:
    free(sql);
    for (int i = 0; i < nfiles; i++) free(files[i]);
    return rc;
}

/* ---- backup and restore ---- */

/* src's main database into a new file dest, in one backup step: a
 * consistent snapshot under a read lock, which in WAL mode does not stop
 * writers. Written to dest.partial and renamed, so dest is whole or absent;
 * in rollback-journal mode, so the copy is one self-contained file. */
static int copy_db(sqlite3 *src, const char *dest, lr_err *err) {
    char tmp[4200];
    sqlite3 *out = NULL;
    sqlite3_backup *b = NULL;
    if (snprintf(tmp, sizeof tmp, "%s.partial", dest) >= (int)sizeof tmp)
        return lr_errp(err, LR_E_INVALID, NULL, "%s: path too long", dest);
    unlink(tmp);
    if (sqlite3_open_v2(tmp, &out, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) != SQLITE_OK) {
        lr_errp(err, LR_E_IO, NULL, "%s: %s", tmp, out ? sqlite3_errmsg(out) : "out of memory");
        goto fail;
    }
    b = sqlite3_backup_init(out, "main", src, "main");
    if (!b) {
        lr_errp(err, LR_E_IO, NULL, "backup: %s", sqlite3_errmsg(out));
        goto fail;
    }
    int rc, tries = 0;
    /* BUSY/LOCKED: a writer holds what the first read needs; wait and retry
     * for up to 10 s, like the busy timeout of lorad's own connections. */
    while ((rc = sqlite3_backup_step(b, -1)) == SQLITE_BUSY || rc == SQLITE_LOCKED) {
        if (++tries > 200) break;
        sqlite3_sleep(50);
    }
    sqlite3_backup_finish(b);
    if (rc != SQLITE_DONE) {
        lr_errp(err, LR_E_IO, NULL, "backup: %s", sqlite3_errstr(rc));
        goto fail;
    }
    char *msg = NULL;
    if (sqlite3_exec(out, "PRAGMA journal_mode=DELETE", NULL, NULL, &msg) != SQLITE_OK) {
        lr_errp(err, LR_E_IO, NULL, "backup: %s", msg ? msg : sqlite3_errmsg(out));
        sqlite3_free(msg);
        goto fail;
    }
    if (sqlite3_close(out) != SQLITE_OK) {
        out = NULL;
        lr_errp(err, LR_E_IO, NULL, "backup: closing %s failed", tmp);
        goto fail;
    }
    out = NULL;
    if (rename(tmp, dest)) {
        lr_errp(err, LR_E_IO, NULL, "%s: %s", dest, strerror(errno));
        goto fail;
    }
    return 0;
fail:
    sqlite3_close(out);
    unlink(tmp);
    return -1;
}

int store_backup(store *st, const char *dest, const char *data_dir, lr_err *err) {
    if (copy_db(st->db, dest, err)) return -1;
    /* The copy remembers where its files lived, for store_restore. */
    store *b = NULL;
    int rc = -1;
    if (store_open(dest, &b, err)) goto out;
    sqlite3_stmt *s = NULL;
    if (exec_sql(b, "PRAGMA journal_mode=DELETE; CREATE TABLE IF NOT EXISTS backup_info (data_dir TEXT NOT NULL, "
                    "created_at REAL NOT NULL); DELETE FROM backup_info", err) ||
        !(s = q(b, "INSERT INTO backup_info(data_dir, created_at) VALUES (?, ?)", err)))
        goto out;
    bt(s, 1, data_dir);
    bd(s, 2, store_now());
    rc = exec1(b, s, err, "record backup");
out:
    store_close(b);
    if (rc) unlink(dest);
    return rc;
}

int store_restore(const char *backup, const char *data_dir, lr_err *err) {
    char db[4200];
    sqlite3 *src = NULL;
    store *st = NULL;
    int rc = -1, made = 0;
    if (snprintf(db, sizeof db, "%s/lorad.db", data_dir) >= (int)sizeof db)
        return lr_errp(err, LR_E_INVALID, NULL, "%s: path too long", data_dir);
    if (access(db, F_OK) == 0)
        return lr_errp(err, LR_E_CONFLICT, NULL, "%s exists: restore into a data directory without a database "
                       "(stop lorad and move it away first)", db);
    if (sqlite3_open_v2(backup, &src, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
        lr_errp(err, LR_E_IO, NULL, "%s: %s", backup, src ? sqlite3_errmsg(src) : "out of memory");
        goto out;
    }
    if (copy_db(src, db, err)) goto out;
    made = 1;
    if (store_open(db, &st, err)) goto out;
    sqlite3_stmt *s = q(st, "SELECT data_dir FROM backup_info LIMIT 1", err);
    if (!s) {
        lr_errp(err, LR_E_INVALID, NULL, "%s was not written by `lorad backup` (it has no backup_info table)", backup);
        goto out;
    }
    char old[2048] = "";
    if (sqlite3_step(s) == SQLITE_ROW) snprintf(old, sizeof old, "%s", ct(s, 0));
    sqlite3_reset(s);
    /* Datasets, checkpoints and merged models are stored by absolute path:
     * the ones under the old data directory move to the new one. */
    static const char *const moves[] = {
        "UPDATE datasets SET path = ?2 || substr(path, length(?1) + 1) WHERE substr(path, 1, length(?1) + 1) = ?1 || '/'",
        "UPDATE checkpoints SET dir = ?2 || substr(dir, length(?1) + 1) WHERE substr(dir, 1, length(?1) + 1) = ?1 || '/'",
        "UPDATE models SET dir = ?2 || substr(dir, length(?1) + 1) WHERE substr(dir, 1, length(?1) + 1) = ?1 || '/'",
    };
    if (store_begin(st, err)) goto out;
    for (size_t i = 0; i < sizeof moves / sizeof moves[0]; i++) {
        if (!old[0] || !strcmp(old, data_dir)) break;
        if (!(s = q(st, moves[i], err))) goto out;
        bt(s, 1, old);
        bt(s, 2, data_dir);
        if (exec1(st, s, err, "move paths")) goto out;
    }
    if (exec_sql(st, "DROP TABLE backup_info", err) || store_commit(st, err)) goto out;
    rc = 0;
out:
    if (st) store_rollback(st);
    store_close(st);
    sqlite3_close(src);
    if (rc && made) unlink(db);
    return rc;
}

void store_new_id(const char *prefix, char *out, size_t cap) {
    unsigned char r[6];
    size_t got = 0;
    while (got < sizeof r) {
        ssize_t n = getrandom(r + got, sizeof r - got, 0);
        if (n > 0) got += (size_t)n;
        else if (errno != EINTR) break;
    }
    snprintf(out, cap, "%s-%02x%02x%02x%02x%02x%02x", prefix, r[0], r[1], r[2], r[3], r[4], r[5]);
}

double store_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- users ---- */

int store_user_add(store *st, const char *name, int admin, const char *token_hash, lr_err *err) {
    sqlite3_stmt *s = q(st, "INSERT INTO users(name, token_hash, is_admin, created_at) VALUES (?,?,?,?)", err);
    if (!s) return -1;
    bt(s, 1, name);
    bt(s, 2, token_hash);
    bi(s, 3, admin ? 1 : 0);
    bi(s, 4, (int64_t)time(NULL));
    if (exec1(st, s, err, "add user")) {
        if (err && err->code == LR_E_CONFLICT)
            lr_errp(err, LR_E_CONFLICT, "name", "a user named '%s' exists", name);
        return -1;
    }
    return 0;
}

/* Looked up by the hash on token_hash's index, not by comparing every row:
 * the lookup's time can only tell how the SHA-256 of a guessed token sorts
 * among the stored hashes, and knowing hash prefixes does not help make a
 * token with a wanted hash (tokens are 192 random bits, so no guessing of
 * the token itself either). A scan cost ~0.3 us per user on every request. */
int store_user_auth(store *st, const char *token_hash, store_user *out, lr_err *err) {
    if (strlen(token_hash) != 64) return lr_errp(err, LR_E_NOTFOUND, NULL, "unknown token");
    sqlite3_stmt *s = q(st, "SELECT name, is_admin FROM users WHERE token_hash = ?", err);
    if (!s) return -1;
    bt(s, 1, token_hash);
    int found = sqlite3_step(s) == SQLITE_ROW;
    if (found) {
        snprintf(out->name, sizeof out->name, "%s", ct(s, 0));
        out->admin = sqlite3_column_int(s, 1) != 0;
    }
    sqlite3_reset(s);
    if (!found) return lr_errp(err, LR_E_NOTFOUND, NULL, "unknown token");
    return 0;
}

/* ---- worker tokens ---- */

int store_worker_token_add(store *st, const char *name, const char *token_hash, lr_err *err) {
    sqlite3_stmt *s = q(st, "INSERT INTO worker_tokens(name, token_hash, created_at) VALUES (?,?,?)", err);
    if (!s) return -1;
    bt(s, 1, name);
    bt(s, 2, token_hash);
    bi(s, 3, (int64_t)time(NULL));
    if (exec1(st, s, err, "add worker token")) {
        if (err && err->code == LR_E_CONFLICT)
            lr_errp(err, LR_E_CONFLICT, "name", "a worker token named '%s' exists (lorad worker-token rm %s first)", name, name);
        return -1;
    }
    return 0;
}

int store_worker_token_rm(store *st, const char *name, lr_err *err) {
    sqlite3_stmt *s = q(st, "DELETE FROM worker_tokens WHERE name = ?", err);
    if (!s) return -1;
    bt(s, 1, name);
    if (exec1(st, s, err, "remove worker token")) return -1;
    if (sqlite3_changes(st->db) == 0) return lr_errp(err, LR_E_NOTFOUND, "name", "no worker token is named '%s'", name);
    return 0;
}

int store_worker_token_auth(store *st, const char *token_hash, char *name, lr_err *err) {
    if (strlen(token_hash) != 64) return lr_errp(err, LR_E_NOTFOUND, NULL, "unknown worker token");
    /* by the hash's index, as store_user_auth */
    sqlite3_stmt *s = q(st, "SELECT name FROM worker_tokens WHERE token_hash = ?", err);
    if (!s) return -1;
    bt(s, 1, token_hash);
    int found = sqlite3_step(s) == SQLITE_ROW;
    if (found) snprintf(name, 64, "%s", ct(s, 0));
    sqlite3_reset(s);
    if (!found) return lr_errp(err, LR_E_NOTFOUND, NULL, "unknown worker token");
    return 0;
}

int store_model_dir_holds(store *st, const char *path) {
    sqlite3_stmt *s = q(st, "SELECT dir FROM models", NULL);
    if (!s) return 0;
    int found = 0;
    while (!found && sqlite3_step(s) == SQLITE_ROW) {
        const char *d = ct(s, 0);
        size_t n = strlen(d);
        found = n && !strncmp(path, d, n) && (path[n] == 0 || path[n] == '/');
    }
    sqlite3_reset(s);
    return found;
}

/* ---- models ---- */

int store_model_add(store *st, const char *name, const char *dir, const json_t *info, lr_err *err) {
    char *txt = json_dumps(info, JSON_COMPACT);
    /* A merge's model takes the owner its merge recorded (the record is
     * used up); any other model has none. */
    sqlite3_stmt *s = q(st, "INSERT INTO models(name, dir, info, created_at, owner) VALUES (?1,?2,?3,?4, "
                            "(SELECT user FROM model_merges WHERE name = ?1)) ON CONFLICT(name) DO UPDATE SET "
                            "dir=excluded.dir, info=excluded.info, owner=excluded.owner", err);
    int rc = -1;
    if (!s || !txt) goto out;
    bt(s, 1, name);
    bt(s, 2, dir);
    bt(s, 3, txt);
    bi(s, 4, (int64_t)time(NULL));
    if (exec1(st, s, err, "add model")) goto out;
    rc = store_model_merge_end(st, name, err);
out:
    free(txt);
    return rc;
}

int store_model_merge_begin(store *st, const char *name, const char *user, const char *job, lr_err *err) {
    if (store_begin(st, err)) return -1;
    /* A quick merge may have registered its model already, without owner. */
    sqlite3_stmt *s = q(st, "UPDATE models SET owner = ? WHERE name = ? AND owner IS NULL", err);
    if (!s) goto fail;
    bt(s, 1, user);
    bt(s, 2, name);
    if (exec1(st, s, err, "set model owner")) goto fail;
    if (sqlite3_changes(st->db) == 0) {
        if (!(s = q(st, "INSERT OR REPLACE INTO model_merges(name, user, job_id, created_at) VALUES (?,?,?,?)", err)))
            goto fail;
        bt(s, 1, name);
        bt(s, 2, user);
        bt(s, 3, job);
        bi(s, 4, (int64_t)time(NULL));
        if (exec1(st, s, err, "record merge")) goto fail;
    }
    if (store_commit(st, err)) goto fail;
    return 0;
fail:
    store_rollback(st);
    return -1;
}

int store_model_merge_end(store *st, const char *name, lr_err *err) {
    sqlite3_stmt *s = q(st, "DELETE FROM model_merges WHERE name = ?", err);
    if (!s) return -1;
    bt(s, 1, name);
    return exec1(st, s, err, "forget merge");
}

int store_model_owner(store *st, const char *name, char *owner, size_t cap, lr_err *err) {
    sqlite3_stmt *s = q(st, "SELECT coalesce(owner, '') FROM models WHERE name = ?", err);
    if (!s) return -1;
    bt(s, 1, name);
    int rc = 0;
    if (sqlite3_step(s) == SQLITE_ROW) snprintf(owner, cap, "%s", ct(s, 0));
    else rc = lr_errp(err, LR_E_NOTFOUND, "model", "no model named '%s' is registered", name);
    sqlite3_reset(s);
    return rc;
}

int store_model_delete(store *st, const char *name, char *dir, size_t cap, lr_err *err) {
    if (store_begin(st, err)) return -1;
    sqlite3_stmt *s = q(st, "SELECT id FROM jobs WHERE model = ? AND status IN ('queued','running') LIMIT 1", err);
    if (!s) goto fail;
    bt(s, 1, name);
    if (sqlite3_step(s) == SQLITE_ROW) {
        char job[64];
        snprintf(job, sizeof job, "%s", ct(s, 0));
        sqlite3_reset(s);
        lr_errp(err, LR_E_CONFLICT, NULL, "model %s is used by job %s, which has not finished", name, job);
        goto fail;
    }
    sqlite3_reset(s);
    if (store_model_dir(st, name, dir, cap, err)) goto fail;
    if (!(s = q(st, "DELETE FROM models WHERE name = ?", err))) goto fail;
    bt(s, 1, name);
    if (exec1(st, s, err, "delete model")) goto fail;
    if (!(s = q(st, "DELETE FROM shares WHERE kind = 'model' AND id = ?", err))) goto fail;
    bt(s, 1, name);
    if (exec1(st, s, err, "delete model shares") || store_commit(st, err)) goto fail;
    return 0;
fail:
    store_rollback(st);
    return -1;
}

static const char *const share_kinds[] = {"dataset", "job", "model"};

int store_share(store *st, const char *kind, const char *id, const char *user, int on, lr_err *err) {
    static const char *const exists[] = {"SELECT 1 FROM datasets WHERE id = ?", "SELECT 1 FROM jobs WHERE id = ?",
                                         "SELECT 1 FROM models WHERE name = ?"};
    int k = -1;
    for (int i = 0; i < 3; i++)
        if (!strcmp(kind, share_kinds[i])) k = i;
    if (k < 0) return lr_errp(err, LR_E_INVALID, "kind", "'%s' cannot be shared: dataset, job or model", kind);
    sqlite3_stmt *s = q(st, exists[k], err);
    if (!s) return -1;
    bt(s, 1, id);
    int found = sqlite3_step(s) == SQLITE_ROW;
    sqlite3_reset(s);
    if (!found) return lr_errp(err, LR_E_NOTFOUND, "id", "no %s '%s'", kind, id);
    if (!(s = q(st, "SELECT 1 FROM users WHERE name = ?", err))) return -1;
    bt(s, 1, user);
    found = sqlite3_step(s) == SQLITE_ROW;
    sqlite3_reset(s);
    if (!found) return lr_errp(err, LR_E_NOTFOUND, "user", "no user named '%s'", user);
    s = on ? q(st, "INSERT OR IGNORE INTO shares(kind, id, user, created_at) VALUES (?,?,?,?)", err)
           : q(st, "DELETE FROM shares WHERE kind = ? AND id = ? AND user = ?", err);
    if (!s) return -1;
    bt(s, 1, share_kinds[k]);
    bt(s, 2, id);
    bt(s, 3, user);
    if (on) bi(s, 4, (int64_t)time(NULL));
    return exec1(st, s, err, on ? "share" : "unshare");
}

int store_shared(store *st, const char *kind, const char *id, const char *user) {
    lr_err e = {0};
    sqlite3_stmt *s = q(st, "SELECT 1 FROM shares WHERE kind = ? AND id = ? AND user = ?", &e);
    if (!s) return 0;
    bt(s, 1, kind);
    bt(s, 2, id);
    bt(s, 3, user);
    int yes = sqlite3_step(s) == SQLITE_ROW;
    sqlite3_reset(s);
    return yes;
}

int store_model_dir(store *st, const char *name, char *dir, size_t cap, lr_err *err) {
    sqlite3_stmt *s = q(st, "SELECT dir FROM models WHERE name = ?", err);
    if (!s) return -1;
    bt(s, 1, name);
    int rc = 0;
    if (sqlite3_step(s) == SQLITE_ROW) snprintf(dir, cap, "%s", ct(s, 0));
    else rc = lr_errp(err, LR_E_NOTFOUND, "model", "no model named '%s' is registered", name);
    sqlite3_reset(s);
    return rc;
}

static json_t *list_obj(json_t *data, int has_more) {
    return json_pack("{s:s, s:o, s:b}", "object", "list", "data", data, "has_more", has_more);
}

/* One page of a list: the statement asks for limit + 1 rows, so a row past
 * the limit means has_more without a second COUNT query. */
static json_t *list_page(sqlite3_stmt *s, int limit, json_t *(*row)(sqlite3_stmt *)) {
    json_t *a = json_array();
    int n = 0, more = 0;
    while (sqlite3_step(s) == SQLITE_ROW) {
        if (n++ == limit) {
            more = 1;
            break;
        }
        json_array_append_new(a, row(s));
    }
    sqlite3_reset(s);
    return list_obj(a, more);
}

json_t *store_models_list(store *st, const char *visible_to, lr_err *err) {
    sqlite3_stmt *s = q(st, "SELECT name, info, created_at, owner FROM models WHERE ?1 IS NULL OR owner IS NULL OR "
                            "owner = ?1 OR name IN (SELECT id FROM shares WHERE kind = 'model' AND user = ?1) "
                            "ORDER BY name", err);
    if (!s) return NULL;
    bt(s, 1, visible_to);
    json_t *a = json_array();
    while (sqlite3_step(s) == SQLITE_ROW) {
        json_t *info = json_loads(ct(s, 1), 0, NULL);
        json_t *o = json_pack("{s:s, s:s, s:I, s:o}", "id", ct(s, 0), "object", "model", "created",
                              (json_int_t)sqlite3_column_int64(s, 2), "owner", cj_text(s, 3));
        if (json_is_object(info)) json_object_update(o, info);
        json_decref(info);
        json_array_append_new(a, o);
    }
    sqlite3_reset(s);
    return list_obj(a, 0);
}

/* ---- datasets ---- */

int store_dataset_add(store *st, const store_dataset *d, const json_t *info, lr_err *err) {
    char *txt = info ? json_dumps(info, JSON_COMPACT) : strdup("{}");
    sqlite3_stmt *s = q(st, "INSERT INTO datasets(id, user, filename, format, kind, rows, bytes, path, info, "
                            "created_at, duplicates, purpose) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", err);
    int rc = -1;
    if (!s || !txt) goto out;
    bt(s, 1, d->id);
    bt(s, 2, d->user);
    bt(s, 3, d->filename);
    bt(s, 4, d->format);
    bt(s, 5, d->kind);
    bi(s, 6, d->rows);
    bi(s, 7, d->bytes);
    bt(s, 8, d->path);
    bt(s, 9, txt);
    bi(s, 10, (int64_t)time(NULL));
    bi(s, 11, d->duplicates);
    bt(s, 12, d->purpose[0] ? d->purpose : "fine-tune");
    rc = exec1(st, s, err, "add dataset");
out:
    free(txt);
    return rc;
}

#define DS_COLS "id, user, filename, format, kind, rows, bytes, path, info, created_at, duplicates, purpose"

static json_t *ds_json(sqlite3_stmt *s) {
    json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:I, s:I, s:I}", "id", ct(s, 0), "object",
                          "file", "user", ct(s, 1), "filename", ct(s, 2), "format", ct(s, 3), "kind",
                          ct(s, 4), "rows", (json_int_t)sqlite3_column_int64(s, 5), "bytes",
                          (json_int_t)sqlite3_column_int64(s, 6), "created_at",
                          (json_int_t)sqlite3_column_int64(s, 9));
    json_object_set_new(o, "duplicates", json_integer(sqlite3_column_int64(s, 10)));
    /* OpenAI's file object: validated on upload, so a stored file is processed */
    json_object_set_new(o, "purpose", json_string(ct(s, 11)));
    json_object_set_new(o, "status", json_string("processed"));
    json_t *info = json_loads(ct(s, 8), 0, NULL);
    if (json_is_object(info)) json_object_set(o, "stats", info);
    json_decref(info);
    return o;
}

static void ds_row(sqlite3_stmt *s, store_dataset *d) {
    memset(d, 0, sizeof *d);
    snprintf(d->id, sizeof d->id, "%s", ct(s, 0));
    snprintf(d->user, sizeof d->user, "%s", ct(s, 1));
    snprintf(d->filename, sizeof d->filename, "%s", ct(s, 2));
    snprintf(d->format, sizeof d->format, "%s", ct(s, 3));
    snprintf(d->kind, sizeof d->kind, "%s", ct(s, 4));
    d->rows = sqlite3_column_int64(s, 5);
    d->bytes = sqlite3_column_int64(s, 6);
    d->duplicates = sqlite3_column_int64(s, 10);
    snprintf(d->path, sizeof d->path, "%s", ct(s, 7));
    snprintf(d->purpose, sizeof d->purpose, "%s", ct(s, 11));
}

int store_dataset_get(store *st, const char *id, store_dataset *d, json_t **obj, lr_err *err) {
    sqlite3_stmt *s = q(st, "SELECT " DS_COLS " FROM datasets WHERE id = ?", err);
    if (!s) return -1;
    bt(s, 1, id);
    int rc = 0;
    if (sqlite3_step(s) == SQLITE_ROW) {
        if (d) ds_row(s, d);
        if (obj) *obj = ds_json(s);
    } else {
        rc = lr_errp(err, LR_E_NOTFOUND, NULL, "no dataset with id '%s'", id);
    }
    sqlite3_reset(s);
    return rc;
}

json_t *store_datasets_list(store *st, int limit, const char *after, const char *visible_to, lr_err *err) {
    return store_files_list(st, limit, after, visible_to, NULL, 0, err);
}

#define FILES_PAGE(cmp, order)                                                                              \
    "SELECT " DS_COLS " FROM datasets WHERE (?1 IS NULL OR seq " cmp " (SELECT seq FROM datasets WHERE id = ?1)) " \
    "AND (?3 IS NULL OR user = ?3 OR id IN (SELECT id FROM shares WHERE kind = 'dataset' AND user = ?3)) "      \
    "AND (?4 IS NULL OR purpose = ?4) ORDER BY seq " order " LIMIT ?2"

json_t *store_files_list(store *st, int limit, const char *after, const char *visible_to, const char *purpose,
                         int ascending, lr_err *err) {
    sqlite3_stmt *s = q(st, ascending ? FILES_PAGE(">", "ASC") : FILES_PAGE("<", "DESC"), err);
    if (!s) return NULL;
    bt(s, 1, after);
    bi(s, 2, limit + 1);
    bt(s, 3, visible_to);
    bt(s, 4, purpose);
    json_t *l = list_page(s, limit, ds_json);
    json_t *data = json_object_get(l, "data");
    /* OpenAI's cursor lists name their ends */
    size_t n = json_array_size(data);
    json_object_set(l, "first_id", n ? json_object_get(json_array_get(data, 0), "id") : json_null());
    json_object_set(l, "last_id", n ? json_object_get(json_array_get(data, n - 1), "id") : json_null());
    return l;
}

int store_dataset_delete(store *st, const char *id, lr_err *err) {
    /* Ids are random and quoted in the spec JSON, so a substring match on
     * "\"file-...\"" finds exactly the jobs that name the dataset. */
    char pat[64];
    snprintf(pat, sizeof pat, "%%\"%.40s\"%%", id);
    sqlite3_stmt *s = q(st, "SELECT id FROM jobs WHERE status IN ('queued','running') AND spec LIKE ? LIMIT 1", err);
    if (!s) return -1;
    bt(s, 1, pat);
    if (sqlite3_step(s) == SQLITE_ROW) {
        char job[64];
        snprintf(job, sizeof job, "%s", ct(s, 0));
        sqlite3_reset(s);
        return lr_errp(err, LR_E_CONFLICT, NULL, "dataset %s is used by job %s, which has not finished", id, job);
    }
    sqlite3_reset(s);
    s = q(st, "DELETE FROM datasets WHERE id = ?", err);
    if (!s) return -1;
    bt(s, 1, id);
    if (exec1(st, s, err, "delete dataset")) return -1;
    if (sqlite3_changes(st->db) == 0) return lr_errp(err, LR_E_NOTFOUND, NULL, "no dataset with id '%s'", id);
    return 0;
}

/* ---- jobs ---- */

int store_job_insert(store *st, const store_job_new *j, lr_err *err) {
    /* without a record, the statement any schema since 0001 takes */
    sqlite3_stmt *s = q(st, j->openai_json ? "INSERT INTO jobs(id, name, user, model, status, priority, device, spec, "
                                             "sweep_id, created_at, max_retries, openai) VALUES "
                                             "(?,?,?,?,'queued',?,?,?,?,?,?,?)"
                                           : "INSERT INTO jobs(id, name, user, model, status, priority, device, spec, "
                                             "sweep_id, created_at, max_retries) VALUES (?,?,?,?,'queued',?,?,?,?,?,?)",
                        err);
    if (!s) return -1;
    bt(s, 1, j->id);
    bt(s, 2, j->name ? j->name : "");
    bt(s, 3, j->user);
    bt(s, 4, j->model);
    bi(s, 5, j->priority);
    bt(s, 6, j->device);
    bt(s, 7, j->spec_json);
    bt(s, 8, j->sweep_id);
    bi(s, 9, (int64_t)time(NULL));
    bi(s, 10, j->max_retries);
    if (j->openai_json) bt(s, 11, j->openai_json);
    return exec1(st, s, err, "insert job");
}

#define JOB_COLS                                                                                  \
    "id, name, user, model, status, priority, device, spec, sweep_id, created_at, started_at, "   \
    "finished_at, error_code, error_message, worker, retries, max_retries, step, total_steps, "   \
    "epoch, loss, eval_loss, tokens_per_s, lr, cancel_requested, last_checkpoint_step, stop_reason, openai, " \
    "pause_requested, slurm_job_id, slurm_state, pack_id, pack_jobs, packed_steps"

/* Every field of the job object but its spec. From the row alone (and
 * oai_job_complete's time): the jobs list keeps the text by the row's bytes. */
static json_t *job_fields(sqlite3_stmt *s) {
    json_t *o = json_object();
    json_object_set_new(o, "id", json_string(ct(s, 0)));
    json_object_set_new(o, "object", json_string("fine_tuning.job"));
    json_object_set_new(o, "name", json_string(ct(s, 1)));
    json_object_set_new(o, "user", json_string(ct(s, 2)));
    json_object_set_new(o, "model", json_string(ct(s, 3)));
    json_object_set_new(o, "status", json_string(ct(s, 4)));
    json_object_set_new(o, "priority", json_integer(sqlite3_column_int(s, 5)));
    json_object_set_new(o, "device", json_string(ct(s, 6)));
    json_object_set_new(o, "sweep_id", cj_text(s, 8));
    json_object_set_new(o, "created_at", cj_int(s, 9));
    json_object_set_new(o, "started_at", cj_int(s, 10));
    json_object_set_new(o, "finished_at", cj_int(s, 11));
    if (sqlite3_column_type(s, 13) == SQLITE_NULL)
        json_object_set_new(o, "error", json_null());
    else
        json_object_set_new(o, "error", json_pack("{s:s, s:s, s:n}", "code", ct(s, 12), "message", ct(s, 13), "param"));
    json_object_set_new(o, "worker", cj_text(s, 14));
    json_object_set_new(o, "retries", json_integer(sqlite3_column_int(s, 15)));
    json_object_set_new(o, "max_retries", json_integer(sqlite3_column_int(s, 16)));
    json_object_set_new(o, "progress", json_pack("{s:I, s:I, s:o}", "step", (json_int_t)sqlite3_column_int64(s, 17),
                                                 "total_steps", (json_int_t)sqlite3_column_int64(s, 18),
                                                 "epoch", json_real(sqlite3_column_double(s, 19))));
    json_object_set_new(o, "metrics", json_pack("{s:o, s:o, s:o, s:o}", "loss", cj_real(s, 20), "eval_loss",
                                                cj_real(s, 21), "tokens_per_s", cj_real(s, 22), "lr", cj_real(s, 23)));
    json_object_set_new(o, "cancel_requested", json_boolean(sqlite3_column_int(s, 24)));
    json_object_set_new(o, "last_checkpoint_step", cj_int(s, 25));
    json_object_set_new(o, "stop_reason", cj_text(s, 26));
    json_object_set_new(o, "pause_requested", json_boolean(sqlite3_column_int(s, 28)));
    json_object_set_new(o, "slurm", sqlite3_column_type(s, 29) == SQLITE_NULL
                                        ? json_null()
                                        : json_pack("{s:s, s:s}", "job_id", ct(s, 29), "state", ct(s, 30)));
    /* the jobs it shared a worker pass with (issue 19); null: none */
    json_t *mates = sqlite3_column_type(s, 32) == SQLITE_NULL ? NULL : json_loads(ct(s, 32), 0, NULL);
    json_object_set_new(o, "pack", json_is_array(mates) ? json_pack("{s:o, s:O, s:I}", "id", cj_text(s, 31), "jobs", mates,
                                                                   "steps", (json_int_t)sqlite3_column_int64(s, 33))
                                                        : json_null());
    json_decref(mates);
    /* OpenAI's fields (training_file, hyperparameters, seed, metadata...):
     * daemon/openai.c completes them; they never replace lorad's own. */
    json_t *oai = sqlite3_column_type(s, 27) == SQLITE_NULL ? NULL : json_loads(ct(s, 27), 0, NULL);
    if (json_is_object(oai)) json_object_update_missing(o, oai);
    json_decref(oai);
    return o;
}

static json_t *job_json(sqlite3_stmt *s) {
    json_t *o = job_fields(s);
    json_t *spec = json_loads(ct(s, 7), 0, NULL);
    oai_job_complete(o, (int64_t)time(NULL));
    json_object_set_new(o, "spec", spec ? spec : json_null());
    return o;
}

json_t *store_job_get(store *st, const char *id, lr_err *err) {
    sqlite3_stmt *s = q(st, "SELECT " JOB_COLS " FROM jobs WHERE id = ?", err);
    if (!s) return NULL;
    bt(s, 1, id);
    json_t *o = NULL;
    if (sqlite3_step(s) == SQLITE_ROW) o = job_json(s);
    else lr_errp(err, LR_E_NOTFOUND, NULL, "no job with id '%s'", id);
    sqlite3_reset(s);
    return o;
}

/* One statement per filter combination, so that each can use its index
 * (an "(?1 IS NULL OR status = ?1)" term can use none), and the after bound
 * is a range on seq: any page costs its own rows, not those before it. A
 * sweep is the narrowest filter, so "+" keeps the others off its index. */
#define JOBS_PAGE(where)                                                                                      \
    "SELECT " JOB_COLS " FROM jobs WHERE " where "seq < CASE WHEN ?4 IS NULL THEN 9223372036854775807 ELSE " \
    "(SELECT seq FROM jobs WHERE id = ?4) END ORDER BY seq DESC LIMIT ?5"
static const char *const jobs_page_sql[8] = {
    JOBS_PAGE(""),
    JOBS_PAGE("status = ?1 AND "),
    JOBS_PAGE("user = ?2 AND "),
    JOBS_PAGE("status = ?1 AND user = ?2 AND "),
    JOBS_PAGE("sweep_id = ?3 AND "),
    JOBS_PAGE("+status = ?1 AND sweep_id = ?3 AND "),
    JOBS_PAGE("+user = ?2 AND sweep_id = ?3 AND "),
    JOBS_PAGE("+status = ?1 AND +user = ?2 AND sweep_id = ?3 AND "),
};

static sqlite3_stmt *jobs_page(store *st, const char *status, const char *user, const char *sweep_id, int limit,
                               const char *after, lr_err *err) {
    sqlite3_stmt *s = q(st, jobs_page_sql[(status ? 1 : 0) | (user ? 2 : 0) | (sweep_id ? 4 : 0)], err);
    if (!s) return NULL;
    bt(s, 1, status);
    bt(s, 2, user);
    bt(s, 3, sweep_id);
    bt(s, 4, after);
    bi(s, 5, limit + 1);
    return s;
}

json_t *store_jobs_list(store *st, const char *status, const char *user, const char *sweep_id, int limit,
                        const char *after, lr_err *err) {
    sqlite3_stmt *s = jobs_page(st, status, user, sweep_id, limit, after, err);
    return s ? list_page(s, limit, job_json) : NULL;
}

static int finished(const char *status) {
    return !strcmp(status, "succeeded") || !strcmp(status, "failed") || !strcmp(status, "cancelled");
}

/* What a list item's text depends on: every column of the row (type and
 * bytes) and, for a job not finished, the time (OpenAI's estimated_finish):
 * the key under which the list keeps the text (rowcache.h). */
static int item_key(sqlite3_stmt *s, int64_t now, lr_buf *k) {
    lr_buf_reset(k);
    int bad = 0;
    for (int i = 0, n = sqlite3_column_count(s); i < n && !bad; i++) {
        /* the type, then the value or the length of the bytes that follow */
        unsigned char head[1 + 8];
        head[0] = (unsigned char)sqlite3_column_type(s, i);
        const void *p = NULL;
        uint64_t len = 0;
        if (head[0] == SQLITE_INTEGER) {
            int64_t v = sqlite3_column_int64(s, i);
            memcpy(head + 1, &v, 8);
        } else if (head[0] == SQLITE_FLOAT) {
            double v = sqlite3_column_double(s, i);
            memcpy(head + 1, &v, 8);
        } else if (head[0] != SQLITE_NULL) {
            p = sqlite3_column_blob(s, i);
            len = (uint64_t)sqlite3_column_bytes(s, i);
            memcpy(head + 1, &len, 8);
        }
        bad = lr_buf_add(k, head, head[0] == SQLITE_NULL ? 1 : sizeof head) || (len && lr_buf_add(k, p, (size_t)len));
    }
    if (!finished(ct(s, 4))) bad = bad || lr_buf_add(k, &now, sizeof now);
    return bad;
}

/* One item as text: the job object with its stored spec copied in, not
 * parsed (specs stored before jsonfmt hold 17-digit reals: shortened here). */
static int job_item(sqlite3_stmt *s, int64_t now, lr_buf *b) {
    json_t *o = job_fields(s);
    if (!o) return -1;
    oai_job_complete(o, now);
    int bad = jsonfmt_append(b, o) || !b->len;
    json_decref(o);
    if (bad) return -1;
    b->len--; /* the object's '}': the spec goes in before it */
    const char *spec = (const char *)sqlite3_column_text(s, 7);
    size_t sl = spec ? (size_t)sqlite3_column_bytes(s, 7) : 0;
    /* The API wrote this text with jsonfmt_dumps; a row edited by hand into
     * something that is not an object reads as null, as in job_json. */
    int obj = sl >= 2 && spec[0] == '{' && spec[sl - 1] == '}';
    return lr_buf_adds(b, ",\"spec\":") || (obj ? jsonfmt_text_append(b, spec, sl) : lr_buf_adds(b, "null")) ||
                   lr_buf_adds(b, "}")
               ? -1
               : 0;
}

/* A store keeps up to this many items' text, more than a page's 1000. */
#define ITEM_CACHE 1024

/* The rowcache epoch of the read transaction in progress: it moves on when
 * SQLite's data version has, which happens with every commit to the file,
 * by this connection or another, in this process or another. Counted in 64
 * bits so that an entry left alone never meets its epoch again once the
 * 32-bit version wraps. 0 (none) when the version cannot be read. */
static uint64_t data_epoch(store *st) {
    unsigned v = 0;
    if (sqlite3_file_control(st->db, "main", SQLITE_FCNTL_DATA_VERSION, &v) != SQLITE_OK) return 0;
    if (!st->items_epoch || v != st->items_version) st->items_epoch++, st->items_version = v;
    return st->items_epoch;
}

char *store_jobs_list_text(store *st, const char *status, const char *user, const char *sweep_id, int limit,
                           const char *after, size_t *len, lr_err *err) {
    sqlite3_stmt *s = jobs_page(st, status, user, sweep_id, limit, after, err);
    if (!s) return NULL;
    /* without a cache (out of memory) every item is built */
    if (!st->items) st->items = rowcache_new(ITEM_CACHE);
    lr_buf b, key, item;
    lr_buf_init(&b, STORE_LIST_TEXT_MAX);
    lr_buf_init(&key, STORE_LIST_TEXT_MAX);
    lr_buf_init(&item, STORE_LIST_TEXT_MAX);
    int64_t now = (int64_t)time(NULL);
    uint64_t epoch = 0;
    int n = 0, more = 0, bad = lr_buf_adds(&b, "{\"object\":\"list\",\"data\":[");
    while (!bad && sqlite3_step(s) == SQLITE_ROW) {
        if (n == limit) {
            more = 1;
            break;
        }
        if (n == 0) epoch = data_epoch(st); /* the first step began the read transaction */
        size_t tl = 0;
        const char *txt = NULL;
        /* nothing committed since the item's key last matched: the row is
         * the same (a job not finished also depends on the time) */
        if (st->items && finished(ct(s, 4))) txt = rowcache_get_at(st->items, ct(s, 0), epoch, &tl);
        if (!txt) bad = item_key(s, now, &key);
        if (!bad && !txt && st->items) txt = rowcache_get(st->items, ct(s, 0), key.data, key.len, epoch, &tl);
        if (!bad && !txt) {
            lr_buf_reset(&item);
            bad = job_item(s, now, &item);
            txt = item.data;
            tl = item.len;
            /* a cache out of memory only costs the next request the work */
            if (!bad && st->items) (void)rowcache_put(st->items, ct(s, 0), key.data, key.len, epoch, txt, tl);
        }
        bad = bad || (n > 0 && lr_buf_add(&b, ",", 1)) || lr_buf_add(&b, txt, tl);
        n++;
    }
    sqlite3_reset(s);
    lr_buf_free(&key);
    lr_buf_free(&item);
    if (bad || lr_buf_adds(&b, more ? "],\"has_more\":true}" : "],\"has_more\":false}")) {
        lr_buf_free(&b);
        lr_errp(err, LR_E_NOMEM, NULL, "out of memory (or over %d MiB) listing jobs", STORE_LIST_TEXT_MAX >> 20);
        return NULL;
    }
    return lr_buf_take(&b, len);
}

int store_job_cancel(store *st, const char *id, const store_user *who, int *running, lr_err *err) {
    *running = 0;
    if (store_begin(st, err)) return -1;
    sqlite3_stmt *s = q(st, "SELECT user, status FROM jobs WHERE id = ?", err);
    if (!s) goto fail;
    bt(s, 1, id);
    if (sqlite3_step(s) != SQLITE_ROW) {
        sqlite3_reset(s);
        lr_errp(err, LR_E_NOTFOUND, NULL, "no job with id '%s'", id);
        goto fail;
    }
    char owner[64], status[16];
    snprintf(owner, sizeof owner, "%s", ct(s, 0));
    snprintf(status, sizeof status, "%s", ct(s, 1));
    sqlite3_reset(s);
    if (!who->admin && strcmp(owner, who->name)) {
        lr_errp(err, LR_E_FORBIDDEN, NULL, "job %s belongs to %s; only its owner or an admin can cancel it", id, owner);
        goto fail;
    }
    if (!strcmp(status, "queued") || !strcmp(status, "paused")) {
        s = q(st, "UPDATE jobs SET status='cancelled', finished_at=?, cancel_requested=1 WHERE id=?", err);
    } else if (!strcmp(status, "running")) {
        s = q(st, "UPDATE jobs SET cancel_requested=1 WHERE id=?", err);
        *running = 1;
    } else {
        lr_errp(err, LR_E_CONFLICT, NULL, "job %s has already %s", id, status);
        goto fail;
    }
    if (!s) goto fail;
    if (*running) {
        bt(s, 1, id);
    } else {
        bi(s, 1, (int64_t)time(NULL));
        bt(s, 2, id);
    }
    if (exec1(st, s, err, "cancel job") || store_commit(st, err)) goto fail;
    return 0;
fail:
    store_rollback(st);
    return -1;
}

json_t *store_jobs_list_meta(store *st, const char *user, const char *key, const char *value, int limit,
                             const char *after, lr_err *err) {
    size_t kl = strlen(key);
    if (!kl || kl > 64 || strspn(key, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-") != kl) {
        lr_errp(err, LR_E_INVALID, "metadata", "a metadata key to filter on has 1..64 letters, digits, '_', '.' "
                                               "or '-'");
        return NULL;
    }
    char path[80];
    snprintf(path, sizeof path, "$.metadata.\"%s\"", key);
    sqlite3_stmt *s = q(st, "SELECT " JOB_COLS " FROM jobs WHERE (?1 IS NULL OR user = ?1) AND openai IS NOT NULL "
                            "AND json_extract(openai, ?2) = ?3 AND seq < CASE WHEN ?4 IS NULL THEN "
                            "9223372036854775807 ELSE (SELECT seq FROM jobs WHERE id = ?4) END ORDER BY seq DESC "
                            "LIMIT ?5", err);
    if (!s) return NULL;
    bt(s, 1, user);
    bt(s, 2, path);
    bt(s, 3, value);
    bt(s, 4, after);
    bi(s, 5, limit + 1);
    return list_page(s, limit, job_json);
}

/* The owner and status of job id, checked for a change by who. */
static int job_owned(store *st, const char *id, const store_user *who, const char *verb, char *status, size_t cap,
                     lr_err *err) {
    sqlite3_stmt *s = q(st, "SELECT user, status FROM jobs WHERE id = ?", err);
    if (!s) return -1;
    bt(s, 1, id);
    if (sqlite3_step(s) != SQLITE_ROW) {
        sqlite3_reset(s);
        return lr_errp(err, LR_E_NOTFOUND, NULL, "no job with id '%s'", id);
    }
    char owner[64];
    snprintf(owner, sizeof owner, "%s", ct(s, 0));
    snprintf(status, cap, "%s", ct(s, 1));
    sqlite3_reset(s);
    if (!who->admin && strcmp(owner, who->name))
        return lr_errp(err, LR_E_FORBIDDEN, NULL, "job %s belongs to %s; only its owner or an admin can %s it", id,
                       owner, verb);
    return 0;
}

int store_job_pause(store *st, const char *id, const store_user *who, int *running, lr_err *err) {
    char status[16];
    *running = 0;
    if (store_begin(st, err)) return -1;
    if (job_owned(st, id, who, "pause", status, sizeof status, err)) goto fail;
    sqlite3_stmt *s;
    if (!strcmp(status, "queued")) s = q(st, "UPDATE jobs SET status='paused', pause_requested=0 WHERE id=?", err);
    else if (!strcmp(status, "running")) s = q(st, "UPDATE jobs SET pause_requested=1 WHERE id=?", err), *running = 1;
    else {
        lr_errp(err, LR_E_CONFLICT, NULL, "job %s is %s; only a queued or running job can be paused", id, status);
        goto fail;
    }
    if (!s) goto fail;
    bt(s, 1, id);
    if (exec1(st, s, err, "pause job") || store_commit(st, err)) goto fail;
    return 0;
fail:
    store_rollback(st);
    return -1;
}

int store_job_resume(store *st, const char *id, const store_user *who, lr_err *err) {
    char status[16];
    if (store_begin(st, err)) return -1;
    if (job_owned(st, id, who, "resume", status, sizeof status, err)) goto fail;
    sqlite3_stmt *s;
    if (!strcmp(status, "paused")) s = q(st, "UPDATE jobs SET status='queued', pause_requested=0, worker=NULL WHERE id=?", err);
    else if (!strcmp(status, "running")) s = q(st, "UPDATE jobs SET pause_requested=0 WHERE id=?", err);
    else {
        lr_errp(err, LR_E_CONFLICT, NULL, "job %s is %s; only a paused job can be resumed", id, status);
        goto fail;
    }
    if (!s) goto fail;
    bt(s, 1, id);
    if (exec1(st, s, err, "resume job") || store_commit(st, err)) goto fail;
    return 0;
fail:
    store_rollback(st);
    return -1;
}

int store_jobs_pausing(store *st, char (*ids)[32], char (*workers)[64], int max, int *n, lr_err *err) {
    *n = 0;
    sqlite3_stmt *s = q(st, "SELECT id, coalesce(worker,'') FROM jobs WHERE status='running' AND pause_requested=1 "
                            "AND cancel_requested=0", err);
    if (!s) return -1;
    while (*n < max && sqlite3_step(s) == SQLITE_ROW) {
        snprintf(ids[*n], 32, "%s", ct(s, 0));
        snprintf(workers[*n], 64, "%s", ct(s, 1));
        (*n)++;
    }
    sqlite3_reset(s);
    return 0;
}

int store_job_paused(store *st, const char *id, lr_err *err) {
    /* resumed while its worker was stopping: back to the queue instead */
    sqlite3_stmt *s = q(st, "UPDATE jobs SET status=CASE WHEN pause_requested=1 THEN 'paused' ELSE 'queued' END, "
                            "worker=NULL, pause_requested=0 WHERE id=? AND status='running'", err);
    if (!s) return -1;
    bt(s, 1, id);
    return exec1(st, s, err, "pause job");
}

static int qjob_cmp(const void *pa, const void *pb) {
    const store_qjob *a = pa, *b = pb;
    if (a->priority != b->priority) return a->priority > b->priority ? -1 : 1;
    return a->seq < b->seq ? -1 : a->seq > b->seq;
}

/* The first queued (user, device) group after (user, device), by two index
 * seeks in jobs_queue_by_user: the next device of this user, else the first
 * device of the next user. 1 when found (user and device updated). A row
 * value (user, device) > (?, ?) would read every job of the current group on
 * the way. */
static int next_group(store *st, char *user, size_t ucap, char *device, size_t dcap, lr_err *err) {
    sqlite3_stmt *s = q(st, "SELECT device FROM jobs WHERE status='queued' AND user = ? AND device > ? "
                            "ORDER BY device LIMIT 1", err);
    if (!s) return -1;
    bt(s, 1, user);
    bt(s, 2, device);
    int found = sqlite3_step(s) == SQLITE_ROW;
    if (found) snprintf(device, dcap, "%s", ct(s, 0));
    sqlite3_reset(s);
    if (found) return 1;
    if (!(s = q(st, "SELECT user, device FROM jobs WHERE status='queued' AND user > ? ORDER BY user, device LIMIT 1",
                err)))
        return -1;
    bt(s, 1, user);
    found = sqlite3_step(s) == SQLITE_ROW;
    if (found) {
        snprintf(user, ucap, "%s", ct(s, 0));
        snprintf(device, dcap, "%s", ct(s, 1));
    }
    sqlite3_reset(s);
    return found;
}

int store_jobs_queued(store *st, int per_group, store_qjob **out, int *n, lr_err *err) {
    *out = NULL;
    *n = 0;
    store_qjob *v = NULL;
    int cap = 0, more;
    char user[64] = "", device[8] = "";
    if (per_group < 1) return 0;
    while (*n < STORE_QUEUED_MAX && (more = next_group(st, user, sizeof user, device, sizeof device, err)) != 0) {
        if (more < 0) goto fail;
        sqlite3_stmt *s = q(st, "SELECT id, user, device, priority, seq FROM jobs WHERE status='queued' AND user=?1 "
                                "AND device=?2 ORDER BY priority DESC, seq LIMIT ?3", err);
        if (!s) goto fail;
        bt(s, 1, user);
        bt(s, 2, device);
        bi(s, 3, per_group);
        while (sqlite3_step(s) == SQLITE_ROW) {
            if (*n == cap) {
                if (cap >= STORE_QUEUED_MAX) break;
                cap = cap ? 2 * cap : 64;
                store_qjob *nv = realloc(v, (size_t)cap * sizeof *v);
                if (!nv) {
                    sqlite3_reset(s);
                    lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
                    goto fail;
                }
                v = nv;
            }
            store_qjob *j = &v[(*n)++];
            snprintf(j->id, sizeof j->id, "%s", ct(s, 0));
            snprintf(j->user, sizeof j->user, "%s", ct(s, 1));
            snprintf(j->device, sizeof j->device, "%s", ct(s, 2));
            j->priority = sqlite3_column_int(s, 3);
            j->seq = sqlite3_column_int64(s, 4);
        }
        sqlite3_reset(s);
    }
    if (*n) qsort(v, (size_t)*n, sizeof *v, qjob_cmp);
    *out = v;
    return 0;
fail:
    free(v);
    *n = 0;
    return -1;
}

int store_user_queue(store *st, const char *user, int kth, int *queued, int64_t *kth_created, lr_err *err) {
    *queued = 0;
    *kth_created = 0;
    sqlite3_stmt *s = q(st, "SELECT count(*) FROM jobs WHERE status='queued' AND user=?", err);
    if (!s) return -1;
    bt(s, 1, user);
    if (sqlite3_step(s) == SQLITE_ROW) *queued = sqlite3_column_int(s, 0);
    sqlite3_reset(s);
    if (kth < 1) return 0;
    s = q(st, "SELECT created_at FROM jobs WHERE user=? ORDER BY seq DESC LIMIT 1 OFFSET ?", err);
    if (!s) return -1;
    bt(s, 1, user);
    bi(s, 2, kth - 1);
    if (sqlite3_step(s) == SQLITE_ROW) *kth_created = sqlite3_column_int64(s, 0);
    sqlite3_reset(s);
    return 0;
}

json_t *store_running_by_user(store *st, lr_err *err) {
    sqlite3_stmt *s = q(st, "SELECT user, count(*) FROM jobs WHERE status='running' GROUP BY user", err);
    if (!s) return NULL;
    json_t *o = json_object();
    while (sqlite3_step(s) == SQLITE_ROW)
        json_object_set_new(o, ct(s, 0), json_integer(sqlite3_column_int(s, 1)));
    sqlite3_reset(s);
    return o;
}

int store_job_for_assign(store *st, const char *id, char **spec_json, char *model, size_t cap,
                         int64_t *last_ckpt, lr_err *err) {
    *spec_json = NULL;
    sqlite3_stmt *s = q(st, "SELECT spec, model, (SELECT max(step) FROM checkpoints WHERE job_id = ?1) "
                            "FROM jobs WHERE id = ?1", err);
    if (!s) return -1;
    bt(s, 1, id);
    int rc = 0;
    if (sqlite3_step(s) == SQLITE_ROW) {
        *spec_json = strdup(ct(s, 0));
        snprintf(model, cap, "%s", ct(s, 1));
        *last_ckpt = sqlite3_column_type(s, 2) == SQLITE_NULL ? -1 : sqlite3_column_int64(s, 2);
        if (!*spec_json) rc = lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
    } else {
        rc = lr_errp(err, LR_E_NOTFOUND, NULL, "no job with id '%s'", id);
    }
    sqlite3_reset(s);
    return rc;
}

int store_job_start(store *st, const char *id, const char *worker, lr_err *err) {
    sqlite3_stmt *s = q(st, "UPDATE jobs SET status='running', worker=?, started_at=coalesce(started_at, ?) "
                            "WHERE id=? AND status='queued'", err);
    if (!s) return -1;
    bt(s, 1, worker);
    bi(s, 2, (int64_t)time(NULL));
    bt(s, 3, id);
    if (exec1(st, s, err, "start job")) return -1;
    if (sqlite3_changes(st->db) != 1) return lr_errp(err, LR_E_CONFLICT, NULL, "job %s is no longer queued", id);
    return 0;
}

static int finish(store *st, const char *id, const char *status, const char *error_code, const char *error_message,
                  int stopped, const char *stop_reason, lr_err *err) {
    /* A job that ran to its end shows its last step even if no heartbeat
     * carried it; one a stopping rule ended keeps the step it reached. */
    sqlite3_stmt *s = q(st, "UPDATE jobs SET status=?1, finished_at=?2, error_code=?3, error_message=?4, "
                            "stop_reason=?6, step=CASE WHEN ?1='succeeded' AND NOT ?7 AND total_steps>0 "
                            "THEN total_steps ELSE step END WHERE id=?5 AND status IN ('queued','running')", err);
    if (!s) return -1;
    bt(s, 1, status);
    bi(s, 2, (int64_t)time(NULL));
    bt(s, 3, error_message ? (error_code ? error_code : "error") : NULL);
    bt(s, 4, error_message);
    bt(s, 5, id);
    bt(s, 6, stop_reason);
    bi(s, 7, stopped);
    return exec1(st, s, err, "finish job");
}

int store_job_finish(store *st, const char *id, const char *status, const char *error_code,
                     const char *error_message, lr_err *err) {
    return finish(st, id, status, error_code, error_message, 0, NULL, err);
}

int store_job_stopped(store *st, const char *id, const char *reason, lr_err *err) {
    return finish(st, id, "succeeded", NULL, NULL, 1, reason, err);
}

int store_job_requeue(store *st, const char *id, const char *reason, int *failed, lr_err *err) {
    *failed = 0;
    sqlite3_stmt *s = q(st, "SELECT retries, max_retries, cancel_requested FROM jobs WHERE id=? AND status='running'", err);
    if (!s) return -1;
    bt(s, 1, id);
    if (sqlite3_step(s) != SQLITE_ROW) {
        sqlite3_reset(s);
        return 0; /* already finished: nothing to do */
    }
    int retries = sqlite3_column_int(s, 0), max = sqlite3_column_int(s, 1), cancel = sqlite3_column_int(s, 2);
    sqlite3_reset(s);
    if (cancel) {
        /* The owner asked to stop it; a dead worker does not bring it back. */
        *failed = 1;
        return store_job_finish(st, id, "cancelled", NULL, NULL, err);
    }
    if (retries >= max) {
        *failed = 1;
        char msg[512];
        snprintf(msg, sizeof msg, "%s; gave up after %d retries", reason, retries);
        return store_job_finish(st, id, "failed", "worker_lost", msg, err);
    }
    s = q(st, "UPDATE jobs SET status='queued', worker=NULL, retries=retries+1 WHERE id=?", err);
    if (!s) return -1;
    bt(s, 1, id);
    return exec1(st, s, err, "requeue job");
}

int store_job_release(store *st, const char *id, lr_err *err) {
    sqlite3_stmt *s = q(st, "UPDATE jobs SET status='queued', worker=NULL WHERE id=? AND status='running'", err);
    if (!s) return -1;
    bt(s, 1, id);
    return exec1(st, s, err, "release job");
}

int store_job_slurm(store *st, const char *id, const char *slurm_id, const char *state, lr_err *err) {
    sqlite3_stmt *s = q(st, "UPDATE jobs SET slurm_job_id = ?2, slurm_state = ?3 WHERE id = ?1", err);
    if (!s) return -1;
    bt(s, 1, id);
    bt(s, 2, slurm_id);
    bt(s, 3, slurm_id ? state : NULL);
    return exec1(st, s, err, "job slurm state");
}

int store_job_pack(store *st, const char *id, const char *pack_id, int64_t steps, lr_err *err) {
    sqlite3_stmt *s = q(st, "UPDATE job_packs SET steps = max(steps, ?3) WHERE job_id = ?1 AND pack_id = ?2", err);
    if (!s) return -1;
    bt(s, 1, id);
    bt(s, 2, pack_id);
    bi(s, 3, steps);
    if (exec1(st, s, err, "job pack")) return -1;
    if (sqlite3_changes(st->db) == 0) {
        s = q(st, "INSERT INTO job_packs(job_id, pack_id, steps) VALUES (?1, ?2, ?3)", err);
        if (!s) return -1;
        bt(s, 1, id);
        bt(s, 2, pack_id);
        bi(s, 3, steps);
        if (exec1(st, s, err, "job pack")) return -1;
        /* a new member: every member's list of mates grows */
        s = q(st, "UPDATE jobs SET pack_jobs = (SELECT CASE WHEN count(*) > 1 THEN json_group_array(job_id) END FROM "
                  "(SELECT DISTINCT o.job_id FROM job_packs m JOIN job_packs o ON o.pack_id = m.pack_id "
                  "WHERE m.job_id = jobs.id ORDER BY o.job_id)) "
                  "WHERE id IN (SELECT job_id FROM job_packs WHERE pack_id = ?1)", err);
        if (!s) return -1;
        bt(s, 1, pack_id);
        if (exec1(st, s, err, "pack members")) return -1;
    }
    s = q(st, "UPDATE jobs SET pack_id = ?2, packed_steps = (SELECT coalesce(sum(steps), 0) FROM job_packs "
              "WHERE job_id = ?1) WHERE id = ?1", err);
    if (!s) return -1;
    bt(s, 1, id);
    bt(s, 2, pack_id);
    return exec1(st, s, err, "job packed steps");
}

int store_job_progress(store *st, const char *id, int64_t step, int64_t total_steps, double epoch, lr_err *err) {
    sqlite3_stmt *s = q(st, "UPDATE jobs SET step=?, total_steps=?, epoch=? WHERE id=?", err);
    if (!s) return -1;
    bi(s, 1, step);
    bi(s, 2, total_steps);
    bd(s, 3, isfinite(epoch) ? epoch : 0);
    bt(s, 4, id);
    return exec1(st, s, err, "job progress");
}

int store_jobs_cancelling(store *st, char (*ids)[32], char (*workers)[64], int max, int *n, lr_err *err) {
    *n = 0;
    sqlite3_stmt *s = q(st, "SELECT id, coalesce(worker,'') FROM jobs WHERE status='running' AND cancel_requested=1", err);
    if (!s) return -1;
    while (*n < max && sqlite3_step(s) == SQLITE_ROW) {
        snprintf(ids[*n], 32, "%s", ct(s, 0));
        snprintf(workers[*n], 64, "%s", ct(s, 1));
        (*n)++;
    }
    sqlite3_reset(s);
    return 0;
}

int store_recover(store *st, int *requeued, lr_err *err) {
    *requeued = 0;
    char ids[256][32];
    int n = 0;
    for (;;) {
        sqlite3_stmt *s = q(st, "SELECT id FROM jobs WHERE status='running' LIMIT 256", err);
        if (!s) return -1;
        n = 0;
        while (n < 256 && sqlite3_step(s) == SQLITE_ROW) snprintf(ids[n++], 32, "%s", ct(s, 0));
        sqlite3_reset(s);
        if (n == 0) return 0;
        for (int i = 0; i < n; i++) {
            int failed;
            if (store_job_requeue(st, ids[i], "lorad stopped while the job ran", &failed, err)) return -1;
            (*requeued)++;
        }
    }
}

/* ---- metrics, events, checkpoints ---- */

int store_metric_add(store *st, const char *job, int64_t step, const char *name, double value, double wall,
                     lr_err *err) {
    /* A resumed job sends the steps after its checkpoint again: the newest
     * value wins. */
    sqlite3_stmt *s = q(st, "INSERT OR REPLACE INTO metrics(job_id, name, step, value, wall_time) VALUES (?,?,?,?,?)", err);
    if (!s) return -1;
    bt(s, 1, job);
    bt(s, 2, name);
    bi(s, 3, step);
    bd(s, 4, value);
    bd(s, 5, wall);
    if (exec1(st, s, err, "add metric")) return -1;
    const char *sql = NULL;
    if (!strcmp(name, "loss")) sql = "UPDATE jobs SET loss=? WHERE id=?";
    else if (!strcmp(name, "eval_loss")) sql = "UPDATE jobs SET eval_loss=? WHERE id=?";
    else if (!strcmp(name, "tokens_per_s")) sql = "UPDATE jobs SET tokens_per_s=? WHERE id=?";
    else if (!strcmp(name, "lr")) sql = "UPDATE jobs SET lr=? WHERE id=?";
    if (!sql) return 0;
    s = q(st, sql, err);
    if (!s) return -1;
    bd(s, 1, value);
    bt(s, 2, job);
    return exec1(st, s, err, "latest metric");
}

static int name_listed(const char *names, const char *name) {
    if (!names || !*names) return 1;
    size_t n = strlen(name);
    for (const char *p = names; *p;) {
        const char *c = strchr(p, ',');
        size_t l = c ? (size_t)(c - p) : strlen(p);
        if (l == n && !memcmp(p, name, n)) return 1;
        if (!c) break;
        p = c + 1;
    }
    return 0;
}

typedef struct series {
    char name[72];
    int64_t *step;
    double *val, *wall;
    int *isnull;
    size_t n, cap;
} series;

static int series_push(series *sr, int64_t step, double v, int isnull, double wall) {
    if (sr->n == sr->cap) {
        size_t c = sr->cap ? sr->cap * 2 : 256;
        int64_t *a = realloc(sr->step, c * sizeof *a);
        if (a) sr->step = a;
        double *b = realloc(sr->val, c * sizeof *b);
        if (b) sr->val = b;
        double *w = realloc(sr->wall, c * sizeof *w);
        if (w) sr->wall = w;
        int *z = realloc(sr->isnull, c * sizeof *z);
        if (z) sr->isnull = z;
        if (!a || !b || !w || !z) return -1;
        sr->cap = c;
    }
    sr->step[sr->n] = step;
    sr->val[sr->n] = v;
    sr->wall[sr->n] = wall;
    sr->isnull[sr->n] = isnull;
    sr->n++;
    return 0;
}

static json_t *series_json(const series *sr, int max_points) {
    json_t *steps = json_array(), *vals = json_array(), *walls = json_array();
    size_t n = sr->n, k = (max_points > 0 && n > (size_t)max_points) ? (size_t)max_points : n;
    for (size_t i = 0; i < k; i++) {
        /* Evenly spaced indices, first and last included. */
        size_t j = k == n ? i : (k == 1 ? n - 1 : (size_t)((double)i * (double)(n - 1) / (double)(k - 1) + 0.5));
        json_array_append_new(steps, json_integer(sr->step[j]));
        json_array_append_new(vals, sr->isnull[j] ? json_null() : json_real(sr->val[j]));
        json_array_append_new(walls, json_real(sr->wall[j]));
    }
    return json_pack("{s:s, s:o, s:o, s:o, s:I}", "name", sr->name, "steps", steps, "values", vals, "wall_times",
                     walls, "total_points", (json_int_t)n);
}

json_t *store_metrics_query(store *st, const char *job, int64_t after_step, const char *names, int max_points,
                            lr_err *err) {
    sqlite3_stmt *s = q(st, "SELECT name, step, value, wall_time FROM metrics WHERE job_id=? AND step > ? "
                            "ORDER BY name, step", err);
    if (!s) return NULL;
    bt(s, 1, job);
    bi(s, 2, after_step);
    series *sv = NULL;
    int ns = 0, oom = 0;
    int64_t last = after_step < 0 ? -1 : after_step;
    while (!oom && sqlite3_step(s) == SQLITE_ROW) {
        const char *name = ct(s, 0);
        if (!name_listed(names, name)) continue;
        if (ns == 0 || strcmp(sv[ns - 1].name, name)) {
            series *p = realloc(sv, (size_t)(ns + 1) * sizeof *sv);
            if (!p) {
                oom = 1;
                break;
            }
            sv = p;
            memset(&sv[ns], 0, sizeof sv[ns]);
            snprintf(sv[ns].name, sizeof sv[ns].name, "%s", name);
            ns++;
        }
        int64_t step = sqlite3_column_int64(s, 1);
        if (step > last) last = step;
        if (series_push(&sv[ns - 1], step, sqlite3_column_double(s, 2), sqlite3_column_type(s, 2) == SQLITE_NULL,
                        sqlite3_column_double(s, 3)))
            oom = 1;
    }
    sqlite3_reset(s);
    json_t *out = NULL;
    if (oom) {
        lr_errp(err, LR_E_NOMEM, NULL, "out of memory reading metrics");
    } else {
        json_t *a = json_array();
        for (int i = 0; i < ns; i++) json_array_append_new(a, series_json(&sv[i], max_points));
        out = json_pack("{s:s, s:s, s:o, s:I}", "object", "job.metrics", "job_id", job, "series", a, "last_step",
                        (json_int_t)last);
    }
    for (int i = 0; i < ns; i++) {
        free(sv[i].step);
        free(sv[i].val);
        free(sv[i].wall);
        free(sv[i].isnull);
    }
    free(sv);
    return out;
}

int store_event_add(store *st, const char *job, const char *level, const char *message, lr_err *err) {
    sqlite3_stmt *s = q(st, "INSERT INTO events(job_id, created_at, level, message) VALUES (?,?,?,?)", err);
    if (!s) return -1;
    bt(s, 1, job);
    bd(s, 2, store_now());
    bt(s, 3, level);
    bt(s, 4, message);
    return exec1(st, s, err, "add event");
}

static json_t *event_json(sqlite3_stmt *s) {
    return json_pack("{s:I, s:s, s:f, s:s, s:s}", "id", (json_int_t)sqlite3_column_int64(s, 0), "object",
                     "fine_tuning.job.event", "created_at", sqlite3_column_double(s, 1), "level", ct(s, 2), "message",
                     ct(s, 3));
}

json_t *store_events_list(store *st, const char *job, int64_t after, int limit, lr_err *err) {
    sqlite3_stmt *s = q(st, "SELECT id, created_at, level, message FROM events WHERE job_id=? AND id > ? "
                            "ORDER BY id LIMIT ?", err);
    if (!s) return NULL;
    bt(s, 1, job);
    bi(s, 2, after);
    bi(s, 3, limit + 1);
    return list_page(s, limit, event_json);
}

int store_checkpoint_add(store *st, const char *job, int64_t step, const char *dir, lr_err *err) {
    sqlite3_stmt *s = q(st, "INSERT OR REPLACE INTO checkpoints(job_id, step, dir, created_at) VALUES (?,?,?,?)", err);
    if (!s) return -1;
    bt(s, 1, job);
    bi(s, 2, step);
    bt(s, 3, dir);
    bi(s, 4, (int64_t)time(NULL));
    if (exec1(st, s, err, "add checkpoint")) return -1;
    s = q(st, "UPDATE jobs SET last_checkpoint_step=max(coalesce(last_checkpoint_step,-1), ?) WHERE id=?", err);
    if (!s) return -1;
    bi(s, 1, step);
    bt(s, 2, job);
    return exec1(st, s, err, "checkpoint step");
}

/* The worker writes a checkpoint's DONE marker last (worker/ckpt.h). */
static int checkpoint_exists(const char *dir) {
    char p[4200];
    return snprintf(p, sizeof p, "%s/DONE", dir) < (int)sizeof p && access(p, F_OK) == 0;
}

int store_checkpoints_prune(store *st, const char *job, lr_err *err) {
    int64_t gone[64];
    int n = 0;
    sqlite3_stmt *s = q(st, "SELECT step, dir FROM checkpoints WHERE job_id=? ORDER BY step", err);
    if (!s) return -1;
    bt(s, 1, job);
    while (n < 64 && sqlite3_step(s) == SQLITE_ROW)
        if (!checkpoint_exists(ct(s, 1))) gone[n++] = sqlite3_column_int64(s, 0);
    sqlite3_reset(s);
    for (int i = 0; i < n; i++) {
        s = q(st, "DELETE FROM checkpoints WHERE job_id=? AND step=?", err);
        if (!s) return -1;
        bt(s, 1, job);
        bi(s, 2, gone[i]);
        if (exec1(st, s, err, "prune checkpoints")) return -1;
    }
    return 0;
}

json_t *store_checkpoints_list(store *st, const char *job, lr_err *err) {
    sqlite3_stmt *s = q(st, "SELECT step, dir, created_at FROM checkpoints WHERE job_id=? ORDER BY step", err);
    if (!s) return NULL;
    bt(s, 1, job);
    json_t *a = json_array();
    while (sqlite3_step(s) == SQLITE_ROW) {
        /* Deleted by hand or by a worker that died before lorad pruned it. */
        if (!checkpoint_exists(ct(s, 1))) continue;
        /* The directory's last component only: server paths stay private. */
        const char *d = ct(s, 1), *base = strrchr(d, '/');
        json_array_append_new(a, json_pack("{s:s, s:I, s:s, s:I}", "object", "fine_tuning.job.checkpoint", "step",
                                           (json_int_t)sqlite3_column_int64(s, 0), "name", base ? base + 1 : d,
                                           "created_at", (json_int_t)sqlite3_column_int64(s, 2)));
    }
    sqlite3_reset(s);
    return list_obj(a, 0);
}

/* ---- sweeps ---- */

int store_sweep_insert(store *st, const char *id, const char *user, const char *template_json,
                       const char *params_json, lr_err *err) {
    sqlite3_stmt *s = q(st, "INSERT INTO sweeps(id, user, template, parameters, created_at) VALUES (?,?,?,?,?)", err);
    if (!s) return -1;
    bt(s, 1, id);
    bt(s, 2, user);
    bt(s, 3, template_json);
    bt(s, 4, params_json);
    bi(s, 5, (int64_t)time(NULL));
    return exec1(st, s, err, "insert sweep");
}

json_t *store_sweep_get(store *st, const char *id, lr_err *err) {
    sqlite3_stmt *s = q(st, "SELECT id, user, template, parameters, created_at FROM sweeps WHERE id=?", err);
    if (!s) return NULL;
    bt(s, 1, id);
    if (sqlite3_step(s) != SQLITE_ROW) {
        sqlite3_reset(s);
        lr_errp(err, LR_E_NOTFOUND, NULL, "no sweep with id '%s'", id);
        return NULL;
    }
    json_t *tpl = json_loads(ct(s, 2), 0, NULL), *params = json_loads(ct(s, 3), 0, NULL);
    /* The column holds the grid (an object) or the explicit points (an array). */
    json_t *o = json_pack("{s:s, s:s, s:s, s:o, s:o, s:I}", "id", ct(s, 0), "object", "sweep", "user", ct(s, 1),
                          "template", tpl ? tpl : json_null(), json_is_array(params) ? "points" : "parameters",
                          params ? params : json_null(),
                          "created_at", (json_int_t)sqlite3_column_int64(s, 4));
    sqlite3_reset(s);
    json_t *jobs = store_jobs_list(st, NULL, NULL, id, 10000, NULL, err);
    if (!jobs) {
        json_decref(o);
        return NULL;
    }
    json_t *counts = json_object();
    json_t *j;
    size_t i;
    json_array_foreach(json_object_get(jobs, "data"), i, j) {
        const char *stt = json_string_value(json_object_get(j, "status"));
        json_object_set_new(counts, stt, json_integer(json_integer_value(json_object_get(counts, stt)) + 1));
    }
    json_object_set(o, "jobs", json_object_get(jobs, "data"));
    json_object_set_new(o, "status_counts", counts);
    json_decref(jobs);
    return o;
}

/* ---- workers ---- */

int store_worker_set(store *st, const store_worker *w, lr_err *err) {
    sqlite3_stmt *s = q(st, "INSERT INTO workers(name, backend, device, status, job_id, pid, threads, mem_bytes, "
                            "version, restarts, last_seen, started_at) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?11) "
                            "ON CONFLICT(name) DO UPDATE SET backend=?2, device=?3, status=?4, job_id=?5, pid=?6, "
                            "threads=?7, mem_bytes=?8, version=?9, restarts=?10, last_seen=?11", err);
    if (!s) return -1;
    bt(s, 1, w->name);
    bt(s, 2, w->backend);
    bt(s, 3, w->device ? w->device : "");
    bt(s, 4, w->status);
    bt(s, 5, w->job_id && *w->job_id ? w->job_id : NULL);
    if (w->pid > 0) bi(s, 6, w->pid);
    bi(s, 7, w->threads);
    bi(s, 8, w->mem_bytes);
    bt(s, 9, w->version ? w->version : "");
    bi(s, 10, w->restarts);
    bd(s, 11, store_now());
    return exec1(st, s, err, "set worker");
}

int store_worker_seen(store *st, const char *name, double t, lr_err *err) {
    sqlite3_stmt *s = q(st, "UPDATE workers SET last_seen=? WHERE name=?", err);
    if (!s) return -1;
    bd(s, 1, t);
    bt(s, 2, name);
    return exec1(st, s, err, "worker seen");
}

int store_workers_clear(store *st, lr_err *err) { return exec_sql(st, "DELETE FROM workers", err); }

json_t *store_workers_list(store *st, lr_err *err) {
    sqlite3_stmt *s = q(st, "SELECT name, backend, device, status, job_id, pid, threads, mem_bytes, version, "
                            "restarts, last_seen FROM workers ORDER BY name", err);
    if (!s) return NULL;
    json_t *a = json_array();
    while (sqlite3_step(s) == SQLITE_ROW) {
        json_t *o = json_object();
        json_object_set_new(o, "id", json_string(ct(s, 0)));
        json_object_set_new(o, "object", json_string("worker"));
        json_object_set_new(o, "backend", json_string(ct(s, 1)));
        json_object_set_new(o, "device", json_string(ct(s, 2)));
        json_object_set_new(o, "status", json_string(ct(s, 3)));
        json_object_set_new(o, "job_id", cj_text(s, 4));
        json_object_set_new(o, "pid", cj_int(s, 5));
        json_object_set_new(o, "threads", cj_int(s, 6));
        json_object_set_new(o, "mem_bytes", cj_int(s, 7));
        json_object_set_new(o, "version", json_string(ct(s, 8)));
        json_object_set_new(o, "restarts", cj_int(s, 9));
        json_object_set_new(o, "last_seen", cj_real(s, 10));
        json_array_append_new(a, o);
    }
    sqlite3_reset(s);
    return list_obj(a, 0);
}

json_t *store_stats(store *st, lr_err *err) {
    json_t *jobs = json_pack("{s:i, s:i, s:i, s:i, s:i}", "queued", 0, "running", 0, "succeeded", 0, "failed", 0,
                             "cancelled", 0);
    json_t *workers = json_pack("{s:i, s:i, s:i, s:i}", "starting", 0, "idle", 0, "busy", 0, "dead", 0);
    sqlite3_stmt *s = q(st, "SELECT status, count(*) FROM jobs GROUP BY status", err);
    if (!s) goto fail;
    while (sqlite3_step(s) == SQLITE_ROW) json_object_set_new(jobs, ct(s, 0), json_integer(sqlite3_column_int64(s, 1)));
    sqlite3_reset(s);
    s = q(st, "SELECT status, count(*) FROM workers GROUP BY status", err);
    if (!s) goto fail;
    while (sqlite3_step(s) == SQLITE_ROW)
        json_object_set_new(workers, ct(s, 0), json_integer(sqlite3_column_int64(s, 1)));
    sqlite3_reset(s);
    /* jobs of one pass share its id and their worker; a job resumed alone
     * keeps its old pack's id until its first heartbeat, its old mates do not
     * share its worker */
    int64_t packed = 0, packs = 0;
    s = q(st, "SELECT (SELECT coalesce(sum(steps), 0) FROM job_packs), (SELECT count(DISTINCT a.pack_id) FROM jobs a "
              "JOIN jobs b ON b.pack_id = a.pack_id AND b.id <> a.id AND b.worker = a.worker "
              "WHERE a.status = 'running' AND b.status = 'running')", err);
    if (!s) goto fail;
    if (sqlite3_step(s) == SQLITE_ROW) {
        packed = sqlite3_column_int64(s, 0);
        packs = sqlite3_column_int64(s, 1);
    }
    sqlite3_reset(s);
    return json_pack("{s:o, s:O, s:o, s:I, s:I}", "jobs", jobs, "queue_depth", json_object_get(jobs, "queued"),
                     "workers", workers, "packed_steps", (json_int_t)packed, "packs_running", (json_int_t)packs);
fail:
    json_decref(jobs);
    json_decref(workers);
    return NULL;
}
