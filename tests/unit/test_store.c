/* The SQLite store: migrations, users and tokens, job life cycle, paging,
 * cancel rules, requeue with retries, metrics downsampling, two connections
 * writing at once (WAL). */
#include "tests/unit/test.h"

#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/buf.h"
#include "daemon/sha256.h"
#include "daemon/store.h"

static store *open_store(const char *name) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", test_tmpdir(), name);
    store *st = NULL;
    lr_err e = {0};
    if (store_open(path, &st, &e)) {
        printf("    open: %s\n", e.msg);
        return NULL;
    }
    int applied = -1;
    if (store_migrate(st, "migrations", &applied, &e)) {
        printf("    migrate: %s\n", e.msg);
        store_close(st);
        return NULL;
    }
    return st;
}

static int add_job(store *st, const char *id, const char *user, int prio) {
    store_job_new j = {.id = id, .name = id, .user = user, .model = "m", .device = "any",
                       .spec_json = "{\"training_file\":\"file-0\"}", .priority = prio, .max_retries = 2};
    lr_err e = {0};
    return store_job_insert(st, &j, &e);
}

TEST(sha256_vectors) {
    char h[65];
    sha256_hex("", 0, h);
    CHECK_STR(h, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    sha256_hex("abc", 3, h);
    CHECK_STR(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    const char *m = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    sha256_hex(m, strlen(m), h);
    CHECK_STR(h, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    char *a = malloc(1000000);
    memset(a, 'a', 1000000);
    sha256_hex(a, 1000000, h);
    CHECK_STR(h, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    free(a);
}

TEST(migrations_applied_once) {
    store *st = open_store("mig.db");
    REQUIRE(st);
    lr_err e = {0};
    int applied = -1;
    CHECK(store_migrate(st, "migrations", &applied, &e) == 0);
    CHECK_EQ_INT(applied, 0);
    CHECK(store_migrate(st, "/nonexistent", &applied, &e) == -1);
    store_close(st);
}

/* A database made by the first schema alone takes the later migrations with
 * its rows intact: what an upgraded lorad finds on disk. */
TEST(later_migrations_upgrade_a_0001_database) {
    char dir[512], path[600];
    snprintf(dir, sizeof dir, "%s/mig0001", test_tmpdir());
    snprintf(path, sizeof path, "%s/0001_init.sql", dir);
    lr_err e = {0};
    char *sql = NULL;
    size_t n = 0;
    REQUIRE(lr_mkdirs(dir, &e) == 0);
    REQUIRE(lr_read_file("migrations/0001_init.sql", 1 << 20, &sql, &n, &e) == 0);
    REQUIRE(lr_write_file_atomic(path, sql, n, &e) == 0);
    free(sql);
    snprintf(path, sizeof path, "%s/old.db", test_tmpdir());
    store *st = NULL;
    REQUIRE(store_open(path, &st, &e) == 0);
    int applied = -1;
    REQUIRE(store_migrate(st, dir, &applied, &e) == 0);
    CHECK_EQ_INT(applied, 1);
    REQUIRE(add_job(st, "ftjob-old", "alice", 0) == 0);
    CHECKF(store_migrate(st, "migrations", &applied, &e) == 0, "%s", e.msg);
    CHECK(applied >= 1);
    json_t *j = store_job_get(st, "ftjob-old", &e);
    REQUIRE(j);
    CHECK_STR(json_string_value(json_object_get(j, "status")), "queued");
    CHECK(json_is_null(json_object_get(j, "stop_reason")));
    json_decref(j);
    CHECK(store_migrate(st, "migrations", &applied, &e) == 0);
    CHECK_EQ_INT(applied, 0);
    store_close(st);
}

/* A job a stopping rule ended: succeeded, the reason kept, and the step it
 * reached (not total_steps, which a job run to its end shows). */
TEST(stopped_job_keeps_reason_and_step) {
    store *st = open_store("stop.db");
    REQUIRE(st);
    lr_err e = {0};
    REQUIRE(add_job(st, "ftjob-s", "alice", 0) == 0);
    REQUIRE(add_job(st, "ftjob-f", "alice", 0) == 0);
    for (int i = 0; i < 2; i++) {
        const char *id = i ? "ftjob-f" : "ftjob-s";
        REQUIRE(store_job_start(st, id, "w0", &e) == 0);
        REQUIRE(store_job_progress(st, id, 12, 100, 0.5, &e) == 0);
    }
    const char *why = "early stop at step 12: train loss did not improve by 0.01 for 3 evaluations (best 2.0000)";
    REQUIRE(store_job_stopped(st, "ftjob-s", why, &e) == 0);
    REQUIRE(store_job_finish(st, "ftjob-f", "succeeded", NULL, NULL, &e) == 0);
    json_t *j = store_job_get(st, "ftjob-s", &e);
    REQUIRE(j);
    CHECK_STR(json_string_value(json_object_get(j, "status")), "succeeded");
    CHECK_STR(json_string_value(json_object_get(j, "stop_reason")), why);
    CHECK_EQ_INT(json_integer_value(json_object_get(json_object_get(j, "progress"), "step")), 12);
    json_decref(j);
    j = store_job_get(st, "ftjob-f", &e);
    REQUIRE(j);
    CHECK(json_is_null(json_object_get(j, "stop_reason")));
    CHECK_EQ_INT(json_integer_value(json_object_get(json_object_get(j, "progress"), "step")), 100);
    json_decref(j);
    /* Finished is final: a late second DONE changes nothing. */
    REQUIRE(store_job_stopped(st, "ftjob-f", "late", &e) == 0);
    j = store_job_get(st, "ftjob-f", &e);
    CHECK(j && json_is_null(json_object_get(j, "stop_reason")));
    json_decref(j);
    store_close(st);
}

TEST(users_and_tokens) {
    store *st = open_store("users.db");
    REQUIRE(st);
    lr_err e = {0};
    char h1[65], h2[65];
    sha256_hex("tok-a", 5, h1);
    sha256_hex("tok-b", 5, h2);
    CHECK(store_user_add(st, "alice", 0, h1, &e) == 0);
    CHECK(store_user_add(st, "root", 1, h2, &e) == 0);
    CHECK(store_user_add(st, "alice", 0, h2, &e) == -1);
    CHECK_EQ_INT(e.code, LR_E_CONFLICT);
    store_user u;
    CHECK(store_user_auth(st, h1, &u, &e) == 0);
    CHECK_STR(u.name, "alice");
    CHECK_EQ_INT(u.admin, 0);
    CHECK(store_user_auth(st, h2, &u, &e) == 0);
    CHECK_STR(u.name, "root");
    CHECK_EQ_INT(u.admin, 1);
    char bad[65];
    sha256_hex("nope", 4, bad);
    CHECK(store_user_auth(st, bad, &u, &e) == -1);
    CHECK_EQ_INT(e.code, LR_E_NOTFOUND);
    store_close(st);
}

TEST(job_list_paging_and_filters) {
    store *st = open_store("jobs.db");
    REQUIRE(st);
    lr_err e = {0};
    char id[32];
    for (int i = 0; i < 25; i++) {
        snprintf(id, sizeof id, "ftjob-%012d", i);
        REQUIRE(add_job(st, id, i % 2 ? "bob" : "alice", 0) == 0);
    }
    json_t *l = store_jobs_list(st, NULL, NULL, NULL, 10, NULL, &e);
    REQUIRE(l);
    CHECK_EQ_INT(json_array_size(json_object_get(l, "data")), 10);
    CHECK(json_is_true(json_object_get(l, "has_more")));
    const char *first = json_string_value(json_object_get(json_array_get(json_object_get(l, "data"), 0), "id"));
    CHECK_STR(first, "ftjob-000000000024"); /* newest first */
    const char *last = json_string_value(json_object_get(json_array_get(json_object_get(l, "data"), 9), "id"));
    json_t *l2 = store_jobs_list(st, NULL, NULL, NULL, 10, last, &e);
    CHECK_STR(json_string_value(json_object_get(json_array_get(json_object_get(l2, "data"), 0), "id")),
              "ftjob-000000000014");
    json_decref(l2);
    json_decref(l);
    l = store_jobs_list(st, "queued", "bob", NULL, 100, NULL, &e);
    CHECK_EQ_INT(json_array_size(json_object_get(l, "data")), 12);
    CHECK(json_is_false(json_object_get(l, "has_more")));
    json_decref(l);
    l = store_jobs_list(st, "running", NULL, NULL, 100, NULL, &e);
    CHECK_EQ_INT(json_array_size(json_object_get(l, "data")), 0);
    json_decref(l);
    json_t *j = store_job_get(st, "ftjob-000000000003", &e);
    REQUIRE(j);
    CHECK_STR(json_string_value(json_object_get(j, "object")), "fine_tuning.job");
    CHECK_STR(json_string_value(json_object_get(j, "user")), "bob");
    CHECK(json_is_object(json_object_get(j, "spec")));
    CHECK(json_is_null(json_object_get(j, "error")));
    json_decref(j);
    CHECK(store_job_get(st, "ftjob-nope", &e) == NULL);
    CHECK_EQ_INT(e.code, LR_E_NOTFOUND);
    store_close(st);
}

/* The serialized page (GET /v1/jobs) says what store_jobs_list says, for
 * every filter combination and page, with the spec copied in unparsed. */
TEST(job_list_text_matches_objects) {
    store *st = open_store("jobtext.db");
    REQUIRE(st);
    lr_err e = {0};
    char id[32];
    for (int i = 0; i < 40; i++) {
        snprintf(id, sizeof id, "ftjob-%012d", i);
        store_job_new j = {.id = id, .name = id, .user = i % 3 ? "bob" : "alice", .model = "m", .device = "any",
                           .spec_json = "{\"lora\":{\"r\":8},\"training_file\":\"file-0\"}",
                           .sweep_id = i % 4 ? NULL : "sweep-1", .max_retries = 1};
        REQUIRE(store_job_insert(st, &j, &e) == 0);
        if (i % 5 == 0) REQUIRE(store_job_start(st, id, "w0", &e) == 0);
    }
    /* A long error takes the object past the fast path's buffer. */
    char msg[6000];
    memset(msg, 'x', sizeof msg - 1);
    msg[sizeof msg - 1] = 0;
    REQUIRE(store_job_finish(st, "ftjob-000000000001", "failed", "training_failed", msg, &e) == 0);
    const char *status[] = {NULL, "running", "queued"}, *user[] = {NULL, "alice"}, *sweep[] = {NULL, "sweep-1"};
    for (int a = 0; a < 3; a++)
        for (int b = 0; b < 2; b++)
            for (int c = 0; c < 2; c++) {
                /* Page through with after; pages of 3 and the objects must agree. */
                char after[32] = "";
                int seen = 0, pages = 0;
                for (;;) {
                    const char *af = after[0] ? after : NULL;
                    size_t len = 0;
                    char *txt = store_jobs_list_text(st, status[a], user[b], sweep[c], 3, af, &len, &e);
                    json_t *obj = store_jobs_list(st, status[a], user[b], sweep[c], 3, af, &e);
                    REQUIRE(txt && obj);
                    CHECK_EQ_INT((long long)len, (long long)strlen(txt));
                    json_t *parsed = json_loads(txt, 0, NULL);
                    CHECKF(parsed && json_equal(parsed, obj), "status %s user %s sweep %s after %s: %.200s", status[a],
                           user[b], sweep[c], af, txt);
                    json_t *d = json_object_get(obj, "data");
                    seen += (int)json_array_size(d);
                    pages++;
                    int more = json_is_true(json_object_get(obj, "has_more"));
                    if (json_array_size(d))
                        snprintf(after, sizeof after, "%s",
                                 json_string_value(json_object_get(json_array_get(d, json_array_size(d) - 1), "id")));
                    json_decref(parsed);
                    json_decref(obj);
                    free(txt);
                    if (!more || pages > 20) break;
                }
                json_t *all = store_jobs_list(st, status[a], user[b], sweep[c], 1000, NULL, &e);
                CHECK_EQ_INT(seen, (long long)json_array_size(json_object_get(all, "data")));
                json_decref(all);
            }
    /* An unknown after: an empty page, as before. */
    size_t len;
    char *txt = store_jobs_list_text(st, NULL, NULL, NULL, 10, "ftjob-nope", &len, &e);
    CHECK_STR(txt, "{\"object\":\"list\",\"data\":[],\"has_more\":false}");
    free(txt);
    store_close(st);
}

TEST(cancel_rules) {
    store *st = open_store("cancel.db");
    REQUIRE(st);
    lr_err e = {0};
    REQUIRE(add_job(st, "ftjob-a", "alice", 0) == 0);
    REQUIRE(add_job(st, "ftjob-b", "alice", 0) == 0);
    store_user bob = {"bob", 0}, alice = {"alice", 0}, root = {"root", 1};
    int running = -1;
    CHECK(store_job_cancel(st, "ftjob-a", &bob, &running, &e) == -1);
    CHECK_EQ_INT(e.code, LR_E_FORBIDDEN);
    CHECK(store_job_cancel(st, "ftjob-a", &alice, &running, &e) == 0);
    CHECK_EQ_INT(running, 0);
    CHECK(store_job_cancel(st, "ftjob-a", &alice, &running, &e) == -1);
    CHECK_EQ_INT(e.code, LR_E_CONFLICT);
    REQUIRE(store_job_start(st, "ftjob-b", "w0", &e) == 0);
    CHECK(store_job_cancel(st, "ftjob-b", &root, &running, &e) == 0);
    CHECK_EQ_INT(running, 1);
    char ids[4][32], ws[4][64];
    int n = 0;
    CHECK(store_jobs_cancelling(st, ids, ws, 4, &n, &e) == 0);
    CHECK_EQ_INT(n, 1);
    CHECK_STR(ids[0], "ftjob-b");
    CHECK_STR(ws[0], "w0");
    CHECK(store_job_cancel(st, "ftjob-x", &root, &running, &e) == -1);
    CHECK_EQ_INT(e.code, LR_E_NOTFOUND);
    store_close(st);
}

TEST(queue_order_and_requeue) {
    store *st = open_store("queue.db");
    REQUIRE(st);
    lr_err e = {0};
    REQUIRE(add_job(st, "ftjob-1", "a", 0) == 0);
    REQUIRE(add_job(st, "ftjob-2", "a", 5) == 0);
    REQUIRE(add_job(st, "ftjob-3", "b", 5) == 0);
    store_qjob *q = NULL;
    int n;
    REQUIRE(store_jobs_queued(st, 8, &q, &n, &e) == 0);
    CHECK_EQ_INT(n, 3);
    if (n == 3) {
        CHECK_STR(q[0].id, "ftjob-2");
        CHECK_STR(q[1].id, "ftjob-3");
        CHECK_STR(q[2].id, "ftjob-1");
    }
    free(q);
    REQUIRE(store_job_start(st, "ftjob-2", "w0", &e) == 0);
    CHECK(store_job_start(st, "ftjob-2", "w1", &e) == -1); /* no double assignment */
    json_t *r = store_running_by_user(st, &e);
    CHECK_EQ_INT(json_integer_value(json_object_get(r, "a")), 1);
    json_decref(r);
    int failed;
    /* max_retries = 2: two requeues, then failed with the reason. */
    for (int i = 0; i < 2; i++) {
        CHECK(store_job_requeue(st, "ftjob-2", "worker w0 died", &failed, &e) == 0);
        CHECK_EQ_INT(failed, 0);
        REQUIRE(store_job_start(st, "ftjob-2", "w0", &e) == 0);
    }
    CHECK(store_job_requeue(st, "ftjob-2", "worker w0 died", &failed, &e) == 0);
    CHECK_EQ_INT(failed, 1);
    json_t *j = store_job_get(st, "ftjob-2", &e);
    CHECK_STR(json_string_value(json_object_get(j, "status")), "failed");
    const char *msg = json_string_value(json_object_get(json_object_get(j, "error"), "message"));
    CHECK(msg && strstr(msg, "worker w0 died"));
    json_decref(j);
    /* Recovery after a daemon restart. */
    REQUIRE(store_job_start(st, "ftjob-3", "w1", &e) == 0);
    int rq = 0;
    CHECK(store_recover(st, &rq, &e) == 0);
    CHECK_EQ_INT(rq, 1);
    j = store_job_get(st, "ftjob-3", &e);
    CHECK_STR(json_string_value(json_object_get(j, "status")), "queued");
    CHECK_EQ_INT(json_integer_value(json_object_get(j, "retries")), 1);
    json_decref(j);
    store_close(st);
}

TEST(metrics_downsampling) {
    store *st = open_store("metrics.db");
    REQUIRE(st);
    lr_err e = {0};
    REQUIRE(add_job(st, "ftjob-m", "a", 0) == 0);
    REQUIRE(store_begin(st, &e) == 0);
    for (int s = 1; s <= 1000; s++) {
        REQUIRE(store_metric_add(st, "ftjob-m", s, "loss", 10.0 / s, 1000.0 + s, &e) == 0);
        if (s % 100 == 0) REQUIRE(store_metric_add(st, "ftjob-m", s, "eval_loss", 5.0 / s, 1000.0 + s, &e) == 0);
    }
    REQUIRE(store_commit(st, &e) == 0);
    /* Re-sent after a resume: replaces, does not duplicate. */
    REQUIRE(store_metric_add(st, "ftjob-m", 1000, "loss", 0.5, 2000, &e) == 0);
    json_t *m = store_metrics_query(st, "ftjob-m", 0, "loss", 11, &e);
    REQUIRE(m);
    json_t *series = json_object_get(m, "series");
    CHECK_EQ_INT(json_array_size(series), 1);
    json_t *loss = json_array_get(series, 0);
    json_t *steps = json_object_get(loss, "steps");
    CHECK_EQ_INT(json_array_size(steps), 11);
    CHECK_EQ_INT(json_integer_value(json_array_get(steps, 0)), 1);
    CHECK_EQ_INT(json_integer_value(json_array_get(steps, 10)), 1000);
    CHECK_EQ_INT(json_integer_value(json_array_get(steps, 5)), 501);
    CHECK_NEAR(json_real_value(json_array_get(json_object_get(loss, "values"), 10)), 0.5, 1e-12);
    CHECK_EQ_INT(json_integer_value(json_object_get(loss, "total_points")), 1000);
    CHECK_EQ_INT(json_integer_value(json_object_get(m, "last_step")), 1000);
    json_decref(m);
    m = store_metrics_query(st, "ftjob-m", 900, NULL, 0, &e);
    series = json_object_get(m, "series");
    CHECK_EQ_INT(json_array_size(series), 2);
    CHECK_EQ_INT(json_array_size(json_object_get(json_array_get(series, 0), "steps")), 1);   /* eval_loss 1000 */
    CHECK_EQ_INT(json_array_size(json_object_get(json_array_get(series, 1), "steps")), 100); /* loss 901..1000 */
    json_decref(m);
    json_t *j = store_job_get(st, "ftjob-m", &e);
    CHECK_NEAR(json_real_value(json_object_get(json_object_get(j, "metrics"), "loss")), 0.5, 1e-12);
    json_decref(j);
    store_close(st);
}

TEST(datasets_and_delete_conflict) {
    store *st = open_store("ds.db");
    REQUIRE(st);
    lr_err e = {0};
    store_dataset d = {.id = "file-abc", .user = "a", .filename = "x.jsonl", .format = "jsonl", .kind = "chat",
                       .rows = 3, .bytes = 100, .path = "/tmp/x"};
    REQUIRE(store_dataset_add(st, &d, NULL, &e) == 0);
    store_job_new j = {.id = "ftjob-d", .user = "a", .model = "m", .device = "any",
                       .spec_json = "{\"training_file\":\"file-abc\"}", .max_retries = 1};
    REQUIRE(store_job_insert(st, &j, &e) == 0);
    CHECK(store_dataset_delete(st, "file-abc", &e) == -1);
    CHECK_EQ_INT(e.code, LR_E_CONFLICT);
    REQUIRE(store_job_finish(st, "ftjob-d", "succeeded", NULL, NULL, &e) == 0);
    CHECK(store_dataset_delete(st, "file-abc", &e) == 0);
    CHECK(store_dataset_delete(st, "file-abc", &e) == -1);
    CHECK_EQ_INT(e.code, LR_E_NOTFOUND);
    store_close(st);
}

static void *writer(void *arg) {
    store *st = arg;
    lr_err e = {0};
    for (int i = 0; i < 200; i++)
        if (store_event_add(st, "ftjob-w", "info", "x", &e)) return (void *)1;
    return NULL;
}

TEST(two_connections_write_concurrently) {
    store *a = open_store("wal.db"), *b = open_store("wal.db");
    REQUIRE(a && b);
    pthread_t t1, t2;
    pthread_create(&t1, NULL, writer, a);
    pthread_create(&t2, NULL, writer, b);
    void *r1, *r2;
    pthread_join(t1, &r1);
    pthread_join(t2, &r2);
    CHECK(r1 == NULL && r2 == NULL);
    lr_err e = {0};
    json_t *l = store_events_list(a, "ftjob-w", 0, 1000, &e);
    CHECK_EQ_INT(json_array_size(json_object_get(l, "data")), 400);
    json_decref(l);
    store_close(a);
    store_close(b);
}

/* 600 of bob's jobs, then alice's: the scheduler's view holds each user's
 * best few, so alice's job is in it however deep bob's queue is. */
TEST(queue_view_per_user_at_depth) {
    store *st = open_store("deep.db");
    REQUIRE(st);
    lr_err e = {0};
    REQUIRE(store_begin(st, &e) == 0);
    for (int i = 0; i < 600; i++) {
        char id[32];
        snprintf(id, sizeof id, "ftjob-b%d", i);
        REQUIRE(add_job(st, id, "bob", i == 599 ? 3 : 0) == 0);
    }
    REQUIRE(store_commit(st, &e) == 0);
    REQUIRE(add_job(st, "ftjob-a", "alice", 0) == 0);
    store_qjob *q = NULL;
    int n = 0;
    REQUIRE(store_jobs_queued(st, 2, &q, &n, &e) == 0);
    CHECK_EQ_INT(n, 3);
    if (n == 3) {
        CHECK_STR(q[0].id, "ftjob-b599"); /* bob's best: priority 3, then his oldest */
        CHECK_STR(q[1].id, "ftjob-b0");
        CHECK_STR(q[2].id, "ftjob-a");
    }
    free(q);
    int queued = 0;
    int64_t t = -1;
    CHECK(store_user_queue(st, "bob", 600, &queued, &t, &e) == 0);
    CHECK_EQ_INT(queued, 600);
    CHECK(t > 0); /* bob's 600th most recent job exists */
    CHECK(store_user_queue(st, "alice", 2, &queued, &t, &e) == 0);
    CHECK_EQ_INT(queued, 1);
    CHECK_EQ_INT(t, 0); /* alice has one job, no second */
    store_close(st);
}

/* `lorad backup` while another connection writes, then `lorad restore` into
 * a fresh directory: the copy has every row, and paths under the old data
 * directory now point under the new one. */
TEST(backup_and_restore) {
    char old[600], fresh[600], bak[600], dbp[700];
    snprintf(old, sizeof old, "%s/old", test_tmpdir());
    snprintf(fresh, sizeof fresh, "%s/fresh", test_tmpdir());
    snprintf(bak, sizeof bak, "%s/lorad.backup", test_tmpdir());
    lr_err e = {0};
    REQUIRE(lr_mkdirs(old, &e) == 0);
    REQUIRE(lr_mkdirs(fresh, &e) == 0);
    snprintf(dbp, sizeof dbp, "%s/lorad.db", old);
    store *st = NULL, *w = NULL;
    REQUIRE(store_open(dbp, &st, &e) == 0);
    REQUIRE(store_migrate(st, "migrations", NULL, &e) == 0);
    REQUIRE(store_open(dbp, &w, &e) == 0);
    store_dataset d = {.id = "file-abc", .user = "a", .filename = "x.jsonl", .format = "jsonl", .kind = "chat",
                       .rows = 1, .bytes = 2};
    snprintf(d.path, sizeof d.path, "%s/datasets/file-abc.jsonl", old);
    REQUIRE(store_dataset_add(st, &d, NULL, &e) == 0);
    REQUIRE(add_job(st, "ftjob-1", "a", 0) == 0);
    /* The writer holds an open transaction during the backup: WAL lets the
     * backup read the last committed state without waiting. */
    REQUIRE(store_begin(w, &e) == 0);
    REQUIRE(add_job(w, "ftjob-uncommitted", "a", 0) == 0);
    CHECK(store_backup(st, bak, old, &e) == 0);
    REQUIRE(store_commit(w, &e) == 0);
    store_close(w);
    store_close(st);
    CHECK(store_restore(bak, fresh, &e) == 0);
    CHECK(store_restore(bak, fresh, &e) == -1); /* never over an existing database */
    CHECK_EQ_INT(e.code, LR_E_CONFLICT);
    snprintf(dbp, sizeof dbp, "%s/lorad.db", fresh);
    REQUIRE(store_open(dbp, &st, &e) == 0);
    store_dataset r;
    CHECK(store_dataset_get(st, "file-abc", &r, NULL, &e) == 0);
    char want[800];
    snprintf(want, sizeof want, "%s/datasets/file-abc.jsonl", fresh);
    CHECK_STR(r.path, want);
    json_t *j = store_job_get(st, "ftjob-1", &e);
    CHECK(j != NULL);
    json_decref(j);
    j = store_job_get(st, "ftjob-uncommitted", &e);
    CHECK(j == NULL); /* the snapshot is of committed state */
    json_decref(j);
    store_close(st);
    char junk[700];
    snprintf(junk, sizeof junk, "%s/notabackup", test_tmpdir());
    REQUIRE(lr_write_file_atomic(junk, "hello", 5, &e) == 0);
    snprintf(fresh, sizeof fresh, "%s/fresh2", test_tmpdir());
    REQUIRE(lr_mkdirs(fresh, &e) == 0);
    CHECK(store_restore(junk, fresh, &e) == -1);
    snprintf(dbp, sizeof dbp, "%s/lorad.db", fresh);
    CHECK(access(dbp, F_OK) != 0); /* a failed restore leaves no database behind */
}

/* A merge's model belongs to the user its merge recorded; an operator's
 * registration has no owner; shares need an existing object and user. */
TEST(model_owner_and_shares) {
    store *st = open_store("owners.db");
    REQUIRE(st);
    lr_err e = {0};
    json_t *info = json_object();
    char owner[64], dir[256];
    REQUIRE(store_user_add(st, "bob", 0, "ab", &e) == 0);
    REQUIRE(store_model_merge_begin(st, "m1", "alice", "ftjob-1", &e) == 0);
    REQUIRE(store_model_add(st, "m1", "/x/m1", info, &e) == 0);
    CHECK(store_model_owner(st, "m1", owner, sizeof owner, &e) == 0);
    CHECK_STR(owner, "alice");
    REQUIRE(store_model_add(st, "base", "/x/base", info, &e) == 0);
    CHECK(store_model_owner(st, "base", owner, sizeof owner, &e) == 0);
    CHECK_STR(owner, "");
    /* A merge that registered before its owner was recorded still gets it. */
    REQUIRE(store_model_add(st, "quick", "/x/quick", info, &e) == 0);
    REQUIRE(store_model_merge_begin(st, "quick", "carol", "ftjob-3", &e) == 0);
    CHECK(store_model_owner(st, "quick", owner, sizeof owner, &e) == 0);
    CHECK_STR(owner, "carol");
    REQUIRE(store_model_add(st, "quick", "/x/quick", info, &e) == 0); /* no record left behind */
    CHECK(store_model_owner(st, "quick", owner, sizeof owner, &e) == 0);
    CHECK_STR(owner, "");
    json_t *l = store_models_list(st, "bob", &e);
    CHECK_EQ_INT(json_array_size(json_object_get(l, "data")), 2); /* base and quick, not alice's m1 */
    json_decref(l);
    CHECK(store_share(st, "model", "m1", "bob", 1, &e) == 0);
    CHECK(store_shared(st, "model", "m1", "bob"));
    l = store_models_list(st, "bob", &e);
    CHECK_EQ_INT(json_array_size(json_object_get(l, "data")), 3);
    json_decref(l);
    CHECK(store_share(st, "model", "nope", "bob", 1, &e) == -1);
    CHECK_EQ_INT(e.code, LR_E_NOTFOUND);
    CHECK(store_share(st, "model", "m1", "carol", 1, &e) == -1);
    CHECK(store_share(st, "sweep", "m1", "bob", 1, &e) == -1);
    CHECK_EQ_INT(e.code, LR_E_INVALID);
    store_job_new j = {.id = "ftjob-2", .name = "", .user = "bob", .model = "m1", .device = "any",
                       .spec_json = "{}", .max_retries = 1};
    REQUIRE(store_job_insert(st, &j, &e) == 0);
    CHECK(store_model_delete(st, "m1", dir, sizeof dir, &e) == -1); /* a queued job uses it */
    CHECK_EQ_INT(e.code, LR_E_CONFLICT);
    REQUIRE(store_job_finish(st, "ftjob-2", "cancelled", NULL, NULL, &e) == 0);
    CHECK(store_model_delete(st, "m1", dir, sizeof dir, &e) == 0);
    CHECK_STR(dir, "/x/m1");
    CHECK(!store_shared(st, "model", "m1", "bob")); /* its shares went with it */
    CHECK(store_model_owner(st, "m1", owner, sizeof owner, &e) == -1);
    json_decref(info);
    store_close(st);
}
