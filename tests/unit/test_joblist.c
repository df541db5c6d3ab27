/* GET /v1/jobs's fast path (issue 14, item 5): jsonfmt_append writes what
 * jsonfmt_dumps writes, byte for byte; jsonfmt_text_append's whole-copy
 * path; the row cache (hits, misses on any changed byte, bounded); the
 * store's list text after rows change (never stale, equal to a cold
 * store's); token lookups by hash. */
#include "tests/unit/test.h"

#include <sqlite3.h>
#include <stdint.h>

#include "common/buf.h"
#include "daemon/rowcache.h"
#include "daemon/sha256.h"
#include "daemon/store.h"
#include "proto/jsonfmt.h"

static char *appended(const json_t *v) {
    lr_buf b;
    lr_buf_init(&b, 1 << 20);
    if (jsonfmt_append(&b, v)) {
        lr_buf_free(&b);
        return NULL;
    }
    return lr_buf_take(&b, NULL);
}

static void same_as_dumps(const json_t *v) {
    char *a = appended(v), *d = jsonfmt_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    CHECKF(a && d && !strcmp(a, d), "append %s\n    dumps  %s", a ? a : "(null)", d ? d : "(null)");
    free(a);
    free(d);
}

TEST(append_matches_dumps) {
    const char *texts[] = {
        "{}", "[]", "\"\"", "null", "true", "false", "0", "-1", "9223372036854775807", "-9223372036854775808",
        "{\"a\":{\"b\":[1,2.5,[],{}],\"c\":null},\"d\":\"x\"}",
        "[0.0,-0.0,1.0,-3.0,100.0,1e15,1e16,123456789012345.0,1e-05,0.003,0.1,5.4401235580444336,1e300,"
        "2.2250738585072014e-308,4.9406564584124654e-324,0.30000000000000004,-1.5,65536.0,1.5e-7]",
        "{\"esc\":\"q\\\" b\\\\ s/ \\b\\f\\n\\r\\t \\u0001\\u001f \\u007f\",\"utf8\":\"\\u00e9\\u4e2d\\ud83d\\ude00\"}",
        "{\"z\":1,\"a\":2,\"m\":{\"y\":[true,false,null]}}",
    };
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        json_t *v = json_loads(texts[i], JSON_DECODE_ANY, NULL);
        CHECKF(v != NULL, "parse %s", texts[i]);
        if (v) same_as_dumps(v);
        json_decref(v);
    }
    /* keys in insertion order, an embedded NUL in a key, a long string */
    json_t *o = json_object();
    json_object_set_new(o, "zeta", json_integer(1));
    json_object_set_new(o, "alpha", json_real(0.1 + 0.2));
    json_object_setn_new(o, "n\0ul", 4, json_string("v"));
    char big[3000];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = 0;
    big[100] = '\n';
    json_object_set_new(o, "big", json_string(big));
    same_as_dumps(o);
    json_decref(o);
    /* The one difference: a real whose 17 digits are few (exact powers of
     * ten past 1e16) keeps jansson's exponent in jsonfmt_dumps ("1e22") and
     * gets jsonfmt_real's here ("1e+22"): the same number. */
    json_t *r = json_real(1e22);
    char *a = appended(r);
    CHECK_STR(a, "1e+22");
    json_t *back = a ? json_loads(a, JSON_DECODE_ANY, NULL) : NULL;
    CHECK(back && json_equal(back, r));
    json_decref(back);
    json_decref(r);
    free(a);
}

/* The shortest-digits search of jsonfmt before its fast paths, for integral
 * values (which it now prints at once) and for random ones. */
static void reference_real(double d, char *out, size_t cap) {
    char tmp[40], ref[40];
    int p = 1;
    for (; p < 17; p++) {
        snprintf(tmp, sizeof tmp, "%.*g", p, d);
        if (strtod(tmp, NULL) == d) break;
    }
    snprintf(tmp, sizeof tmp, "%.*g", p, d);
    snprintf(ref, sizeof ref, "%.17g", d);
    while (strchr(tmp, 'e') && !strchr(ref, 'e') && p < 17) snprintf(tmp, sizeof tmp, "%.*g", ++p, d);
    if (!strpbrk(tmp, ".e")) strcat(tmp, ".0");
    snprintf(out, cap, "%s", tmp);
}

TEST(real_fast_paths_match_search) {
    double v[] = {0.0, -0.0, 1.0, -1.0, 7.0, 10.0, 100.0, 1000000.0, 123456789.0, 999999999999999.0,
                  1e15, -1e15, 1e16, 4503599627370496.0, 9007199254740993.0, 1e20, -42.0, 3e14};
    char a[40], r[40];
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        CHECK(jsonfmt_real(v[i], a, sizeof a) > 0);
        reference_real(v[i], r, sizeof r);
        CHECKF(!strcmp(a, r), "%.17g: %s, the search says %s", v[i], a, r);
    }
    uint64_t x = 88172645463325252ull;
    int bad = 0;
    for (int i = 0; i < 20000; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        double d;
        if (i % 3 == 0) {
            memcpy(&d, &x, sizeof d);
            if (!isfinite(d)) continue;
        } else if (i % 3 == 1) {
            d = (double)(float)((double)(x >> 11) / 9007199254740992.0 * 10); /* losses */
        } else {
            d = (double)(int64_t)(x >> 20) * (i % 2 ? 1 : -1); /* integral, some past 1e15 */
        }
        jsonfmt_real(d, a, sizeof a);
        reference_real(d, r, sizeof r);
        bad += strcmp(a, r) != 0;
    }
    CHECK_EQ_INT(bad, 0);
}

TEST(text_append_copies_or_rewrites) {
    lr_buf b;
    lr_buf_init(&b, 4096);
    /* 16 digits in a row inside a string: scanned, and left alone */
    const char *t1 = "{\"s\":\"1234567890123456.5\",\"x\":0.5}";
    CHECK(jsonfmt_text_append(&b, t1, strlen(t1)) == 0);
    CHECK_STR(b.data, t1);
    lr_buf_reset(&b);
    /* 16 significant digits split by the point: rewritten */
    const char *t2 = "[1234567.123456789,1,\"a\"]";
    CHECK(jsonfmt_text_append(&b, t2, strlen(t2)) == 0);
    CHECK_STR(b.data, "[1234567.123456789,1,\"a\"]"); /* already the shortest */
    lr_buf_reset(&b);
    const char *t3 = "{\"lr\":0.00020000000000000001,\"n\":[0.10000000000000001]}";
    CHECK(jsonfmt_text_append(&b, t3, strlen(t3)) == 0);
    CHECK_STR(b.data, "{\"lr\":0.0002,\"n\":[0.1]}");
    /* appended after what is there */
    CHECK(jsonfmt_text_append(&b, "[1]", 3) == 0);
    CHECK_STR(b.data, "{\"lr\":0.0002,\"n\":[0.1]}[1]");
    lr_buf_free(&b);
    /* a cap too small fails */
    lr_buf_init(&b, 8);
    CHECK(jsonfmt_text_append(&b, t1, strlen(t1)) == -1);
    lr_buf_free(&b);
}

TEST(rowcache_hits_misses_bound) {
    rowcache *c = rowcache_new(4);
    REQUIRE(c);
    size_t n = 0;
    CHECK(rowcache_get(c, "a", "k1", 2, 0, &n) == NULL);
    CHECK(rowcache_put(c, "a", "k1", 2, 0, "text-a", 6) == 0);
    const char *t = rowcache_get(c, "a", "k1", 2, 0, &n);
    CHECK(t && n == 6 && !strcmp(t, "text-a"));
    /* any other key (a changed row), even one byte or a prefix, misses */
    CHECK(rowcache_get(c, "a", "k2", 2, 0, &n) == NULL);
    CHECK(rowcache_get(c, "a", "k", 1, 0, &n) == NULL);
    CHECK(rowcache_get(c, "b", "k1", 2, 0, &n) == NULL);
    /* a new key for the same id replaces the entry */
    CHECK(rowcache_put(c, "a", "k2", 2, 0, "text-a2", 7) == 0);
    CHECK_EQ_INT(rowcache_count(c), 1);
    CHECK(rowcache_get(c, "a", "k1", 2, 0, &n) == NULL);
    t = rowcache_get(c, "a", "k2", 2, 0, &n);
    CHECK(t && n == 7 && !strcmp(t, "text-a2"));
    /* never more than max entries: a full cache starts over */
    char id[16];
    for (int i = 0; i < 10; i++) {
        snprintf(id, sizeof id, "id%d", i);
        CHECK(rowcache_put(c, id, "k", 1, 0, id, strlen(id)) == 0);
        CHECK(rowcache_count(c) <= 4);
        t = rowcache_get(c, id, "k", 1, 0, &n);
        CHECK(t && !strcmp(t, id));
    }
    rowcache_free(c);
}

TEST(rowcache_epochs) {
    rowcache *c = rowcache_new(4);
    REQUIRE(c);
    size_t n = 0;
    CHECK(rowcache_put(c, "a", "k1", 2, 7, "text-a", 6) == 0);
    const char *t = rowcache_get_at(c, "a", 7, &n);
    CHECK(t && n == 6 && !strcmp(t, "text-a"));
    /* another epoch, epoch 0, another id: the key must be checked */
    CHECK(rowcache_get_at(c, "a", 8, &n) == NULL);
    CHECK(rowcache_get_at(c, "b", 7, &n) == NULL);
    CHECK(rowcache_put(c, "z", "k", 1, 0, "text-z", 6) == 0);
    CHECK(rowcache_get_at(c, "z", 0, &n) == NULL);
    /* a key that matches moves the entry to that epoch */
    CHECK(rowcache_get(c, "a", "k1", 2, 8, &n) != NULL);
    CHECK(rowcache_get_at(c, "a", 8, &n) != NULL);
    CHECK(rowcache_get_at(c, "a", 7, &n) == NULL);
    /* one that does not leaves it where it was */
    CHECK(rowcache_get(c, "a", "k2", 2, 9, &n) == NULL);
    CHECK(rowcache_get_at(c, "a", 9, &n) == NULL);
    CHECK(rowcache_get_at(c, "a", 8, &n) != NULL);
    rowcache_free(c);
}

static store *open_store(const char *name) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", test_tmpdir(), name);
    store *st = NULL;
    lr_err e = {0};
    int applied = 0;
    if (store_open(path, &st, &e) || store_migrate(st, "migrations", &applied, &e)) {
        printf("    store: %s\n", e.msg);
        store_close(st);
        return NULL;
    }
    return st;
}

/* The page as text must say what the objects say, and what a store that
 * has never listed (so has nothing kept) says. */
static void page_ok(store *warm, store *cold, const char *status, int limit, const char *what) {
    lr_err e = {0};
    size_t l1 = 0, l2 = 0;
    char *t1 = store_jobs_list_text(warm, status, NULL, NULL, limit, NULL, &l1, &e);
    char *t2 = store_jobs_list_text(warm, status, NULL, NULL, limit, NULL, &l2, &e);
    json_t *obj = store_jobs_list(warm, status, NULL, NULL, limit, NULL, &e);
    CHECKF(t1 && t2 && l1 == l2 && !strcmp(t1, t2), "%s: a second listing differs", what);
    json_t *parsed = t1 ? json_loads(t1, 0, NULL) : NULL;
    CHECKF(parsed && obj && json_equal(parsed, obj), "%s: text and objects differ: %.300s", what, t1 ? t1 : "");
    if (cold) {
        size_t l3 = 0;
        char *t3 = store_jobs_list_text(cold, status, NULL, NULL, limit, NULL, &l3, &e);
        CHECKF(t1 && t3 && !strcmp(t1, t3), "%s: a store without kept items says otherwise", what);
        free(t3);
    }
    json_decref(parsed);
    json_decref(obj);
    free(t1);
    free(t2);
}

static void close_fresh(store **st, const char *name) {
    store_close(*st);
    *st = open_store(name);
}

TEST(list_text_follows_row_changes) {
    store *st = open_store("list.db");
    REQUIRE(st);
    lr_err e = {0};
    char id[32];
    for (int i = 0; i < 30; i++) {
        snprintf(id, sizeof id, "ftjob-%012d", i);
        store_job_new j = {.id = id, .name = id, .user = i % 2 ? "bob" : "alice", .model = "m", .device = "any",
                           .spec_json = i % 3 ? "{\"lora\":{\"r\":8},\"lr\":0.00020000000000000001}" : "{not json",
                           .max_retries = 1};
        REQUIRE(store_job_insert(st, &j, &e) == 0);
    }
    store *cold = open_store("list.db");
    REQUIRE(cold);
    page_ok(st, cold, NULL, 50, "queued");
    close_fresh(&cold, "list.db");
    /* every kind of change a row goes through shows on the next page */
    REQUIRE(store_job_start(st, "ftjob-000000000029", "w0", &e) == 0);
    page_ok(st, cold, NULL, 50, "started");
    close_fresh(&cold, "list.db");
    REQUIRE(store_job_progress(st, "ftjob-000000000029", 5, 10, 0.25, &e) == 0);
    page_ok(st, cold, NULL, 50, "progress");
    close_fresh(&cold, "list.db");
    REQUIRE(store_job_finish(st, "ftjob-000000000029", "failed", "training_failed", "bad \"row\"\n", &e) == 0);
    REQUIRE(store_job_finish(st, "ftjob-000000000028", "succeeded", NULL, NULL, &e) == 0);
    page_ok(st, cold, NULL, 50, "finished");
    close_fresh(&cold, "list.db");
    page_ok(st, cold, "succeeded", 10, "by status");
    json_t *j = store_job_get(st, "ftjob-000000000029", &e);
    CHECK(j && !strcmp(json_string_value(json_object_get(json_object_get(j, "error"), "message")), "bad \"row\"\n"));
    json_decref(j);
    /* a row changed behind the store's back (another connection) */
    store *other = open_store("list.db");
    REQUIRE(other);
    REQUIRE(store_job_progress(other, "ftjob-000000000027", 1, 2, 0.5, &e) == 0);
    store_close(other);
    page_ok(st, NULL, NULL, 50, "changed by another connection");
    size_t len = 0;
    char *txt = store_jobs_list_text(st, NULL, NULL, NULL, 3, NULL, &len, &e);
    CHECK(txt && strstr(txt, "\"id\":\"ftjob-000000000027\"") && strstr(txt, "\"step\":1,"));
    free(txt);
    store_close(cold);
    store_close(st);
}

/* A finished job's item is handed out without its key while nothing was
 * committed: a commit by the same connection, another one, or another
 * program (sqlite3 on the file) must each show on the next page. */
TEST(finished_rows_follow_every_commit) {
    store *st = open_store("done.db");
    REQUIRE(st);
    lr_err e = {0};
    char id[32];
    for (int i = 0; i < 5; i++) {
        snprintf(id, sizeof id, "ftjob-%012d", i);
        store_job_new j = {.id = id, .name = id, .user = "alice", .model = "m", .device = "any",
                           .spec_json = "{\"lora\":{\"r\":8}}", .max_retries = 1};
        REQUIRE(store_job_insert(st, &j, &e) == 0);
        REQUIRE(store_job_start(st, id, "w0", &e) == 0);
        REQUIRE(store_job_finish(st, id, "succeeded", NULL, NULL, &e) == 0);
    }
    page_ok(st, NULL, NULL, 50, "finished, twice");
    /* this connection: two jobs that shared a pass name it on their rows */
    REQUIRE(store_job_pack(st, "ftjob-000000000003", "pack-1", 17, &e) == 0);
    REQUIRE(store_job_pack(st, "ftjob-000000000004", "pack-1", 17, &e) == 0);
    page_ok(st, NULL, NULL, 50, "after this connection's write");
    size_t len = 0;
    char *txt = store_jobs_list_text(st, NULL, NULL, NULL, 50, NULL, &len, &e);
    CHECK(txt && strstr(txt, "pack-1"));
    free(txt);
    /* another program */
    char path[512];
    snprintf(path, sizeof path, "%s/done.db", test_tmpdir());
    sqlite3 *db = NULL;
    REQUIRE(sqlite3_open(path, &db) == SQLITE_OK);
    CHECK(sqlite3_exec(db, "UPDATE jobs SET name = 'renamed-elsewhere' WHERE id = 'ftjob-000000000001'", NULL, NULL,
                       NULL) == SQLITE_OK);
    sqlite3_close(db);
    txt = store_jobs_list_text(st, NULL, NULL, NULL, 50, NULL, &len, &e);
    CHECK(txt && strstr(txt, "renamed-elsewhere"));
    free(txt);
    page_ok(st, NULL, NULL, 50, "after another program's write");
    /* another connection of this program, then nothing: the same text */
    store *other = open_store("done.db");
    REQUIRE(other);
    REQUIRE(store_job_pack(other, "ftjob-000000000002", "pack-2", 5, &e) == 0);
    REQUIRE(store_job_pack(other, "ftjob-000000000000", "pack-2", 5, &e) == 0);
    store_close(other);
    txt = store_jobs_list_text(st, NULL, NULL, NULL, 50, NULL, &len, &e);
    CHECK(txt && strstr(txt, "pack-2"));
    free(txt);
    page_ok(st, NULL, NULL, 50, "after another connection's write");
    store_close(st);
}

TEST(auth_by_hash) {
    store *st = open_store("auth.db");
    REQUIRE(st);
    lr_err e = {0};
    char name[16], token[32], hash[65];
    for (int i = 0; i < 50; i++) {
        snprintf(name, sizeof name, "u%d", i);
        snprintf(token, sizeof token, "lr_token_%d", i);
        sha256_hex(token, strlen(token), hash);
        REQUIRE(store_user_add(st, name, i == 7, hash, &e) == 0);
    }
    sha256_hex("lr_token_7", 10, hash);
    store_user u = {"", -1};
    CHECK(store_user_auth(st, hash, &u, &e) == 0);
    CHECK_STR(u.name, "u7");
    CHECK_EQ_INT(u.admin, 1);
    sha256_hex("lr_token_42", 11, hash);
    CHECK(store_user_auth(st, hash, &u, &e) == 0);
    CHECK_STR(u.name, "u42");
    CHECK_EQ_INT(u.admin, 0);
    sha256_hex("lr_token_50", 11, hash);
    CHECK(store_user_auth(st, hash, &u, &e) == -1);
    CHECK_EQ_INT(e.code, LR_E_NOTFOUND);
    /* a prefix of a real hash, or one in upper case, is not that hash */
    sha256_hex("lr_token_7", 10, hash);
    hash[63] = 0;
    CHECK(store_user_auth(st, hash, &u, &e) == -1);
    CHECK_EQ_INT(e.code, LR_E_NOTFOUND);
    sha256_hex("lr_token_7", 10, hash);
    for (char *p = hash; *p; p++)
        if (*p >= 'a' && *p <= 'f') *p = (char)(*p - 'a' + 'A');
    CHECK(store_user_auth(st, hash, &u, &e) == -1);
    /* worker tokens: their own table, a user's token is not one */
    sha256_hex("lw_w1", 5, hash);
    REQUIRE(store_worker_token_add(st, "w1", hash, &e) == 0);
    char wname[64] = "";
    CHECK(store_worker_token_auth(st, hash, wname, &e) == 0);
    CHECK_STR(wname, "w1");
    sha256_hex("lr_token_7", 10, hash);
    CHECK(store_worker_token_auth(st, hash, wname, &e) == -1);
    CHECK_EQ_INT(e.code, LR_E_NOTFOUND);
    CHECK(store_worker_token_auth(st, "short", wname, &e) == -1);
    store_close(st);
}
