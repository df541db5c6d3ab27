/* The store's record of co-training (issue 19, migration 0010): which jobs
 * shared a worker pass, across the packs of a job's attempts, its packed
 * steps, and /metrics' counts (store_stats). */
#include "tests/unit/test.h"

#include "daemon/store.h"

static store *open_store(const char *name) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", test_tmpdir(), name);
    store *st = NULL;
    lr_err e = {0};
    int applied = -1;
    if (store_open(path, &st, &e) || store_migrate(st, "migrations", &applied, &e)) {
        printf("    store: %s\n", e.msg);
        store_close(st);
        return NULL;
    }
    return st;
}

static int add_running(store *st, const char *id, const char *worker) {
    store_job_new j = {.id = id, .name = id, .user = "u", .model = "m", .device = "any",
                       .spec_json = "{\"training_file\":\"file-0\"}", .max_retries = 2};
    lr_err e = {0};
    return store_job_insert(st, &j, &e) || store_job_start(st, id, worker, &e);
}

/* The job object's pack: NULL when null; else its id, mates and steps. */
static json_t *pack_of(store *st, const char *id) {
    lr_err e = {0};
    json_t *j = store_job_get(st, id, &e);
    json_t *p = json_object_get(j, "pack");
    json_t *out = json_is_object(p) ? json_incref(p) : NULL;
    json_decref(j);
    return out;
}

static int64_t stat_of(store *st, const char *key) {
    lr_err e = {0};
    json_t *s = store_stats(st, &e);
    int64_t v = json_integer_value(json_object_get(s, key));
    json_decref(s);
    return v;
}

TEST(pack_membership_steps_and_stats) {
    store *st = open_store("pack.db");
    REQUIRE(st);
    lr_err e = {0};
    REQUIRE(add_running(st, "ftjob-a", "w0") == 0 && add_running(st, "ftjob-b", "w0") == 0 &&
            add_running(st, "ftjob-c", "w1") == 0);
    /* alone: no pack until a second job shares one */
    json_t *p = pack_of(st, "ftjob-a");
    CHECK(p == NULL);
    CHECK(store_job_pack(st, "ftjob-a", "w0-1-p1", 2, &e) == 0);
    p = pack_of(st, "ftjob-a");
    CHECKF(p == NULL, "a pack of one shows as null");
    json_decref(p);
    CHECK_EQ_INT(stat_of(st, "packs_running"), 0);
    /* b joins: both list both */
    CHECK(store_job_pack(st, "ftjob-b", "w0-1-p1", 1, &e) == 0);
    CHECK(store_job_pack(st, "ftjob-a", "w0-1-p1", 5, &e) == 0);
    CHECK(store_job_pack(st, "ftjob-a", "w0-1-p1", 4, &e) == 0); /* an older heartbeat never lowers it */
    p = pack_of(st, "ftjob-a");
    REQUIRE(p);
    CHECK_STR(json_string_value(json_object_get(p, "id")), "w0-1-p1");
    CHECK_EQ_INT(json_array_size(json_object_get(p, "jobs")), 2);
    CHECK_STR(json_string_value(json_array_get(json_object_get(p, "jobs"), 0)), "ftjob-a");
    CHECK_STR(json_string_value(json_array_get(json_object_get(p, "jobs"), 1)), "ftjob-b");
    CHECK_EQ_INT(json_integer_value(json_object_get(p, "steps")), 5);
    json_decref(p);
    CHECK_EQ_INT(stat_of(st, "packs_running"), 1);
    CHECK_EQ_INT(stat_of(st, "packed_steps"), 6);
    /* a requeued a resumes in a new pack with c: its mates are b and c,
     * its steps add up over both packs; b's list gains nobody */
    int failed = 0;
    CHECK(store_job_requeue(st, "ftjob-a", "worker died", &failed, &e) == 0 && !failed);
    CHECK(store_job_start(st, "ftjob-a", "w1", &e) == 0);
    CHECK(store_job_pack(st, "ftjob-c", "w1-2-p1", 3, &e) == 0);
    CHECK(store_job_pack(st, "ftjob-a", "w1-2-p1", 3, &e) == 0);
    p = pack_of(st, "ftjob-a");
    REQUIRE(p);
    CHECK_EQ_INT(json_array_size(json_object_get(p, "jobs")), 3);
    CHECK_STR(json_string_value(json_object_get(p, "id")), "w1-2-p1");
    CHECK_EQ_INT(json_integer_value(json_object_get(p, "steps")), 8);
    json_decref(p);
    p = pack_of(st, "ftjob-b");
    CHECK(p && json_array_size(json_object_get(p, "jobs")) == 2);
    json_decref(p);
    p = pack_of(st, "ftjob-c");
    CHECK(p && json_array_size(json_object_get(p, "jobs")) == 2);
    json_decref(p);
    /* b still runs on w0 with its old pack's id, alone there now: one pack
     * (a and c on w1) runs */
    CHECK_EQ_INT(stat_of(st, "packs_running"), 1);
    CHECK_EQ_INT(stat_of(st, "packed_steps"), 12);
    /* finished jobs' passes are not running; their steps stay counted */
    CHECK(store_job_finish(st, "ftjob-a", "succeeded", NULL, NULL, &e) == 0);
    CHECK_EQ_INT(stat_of(st, "packs_running"), 0);
    CHECK_EQ_INT(stat_of(st, "packed_steps"), 12);
    /* the list shows what the object shows */
    json_t *l = store_jobs_list(st, NULL, NULL, NULL, 10, NULL, &e);
    size_t i;
    json_t *v;
    int seen = 0;
    json_array_foreach(json_object_get(l, "data"), i, v)
        if (!strcmp(json_string_value(json_object_get(v, "id")), "ftjob-a"))
            seen = json_array_size(json_object_get(json_object_get(v, "pack"), "jobs")) == 3;
    CHECK(seen);
    json_decref(l);
    store_close(st);
}
