/* The REST layer without sockets: the route table against openapi.yaml,
 * auth, error shapes, validation that changes nothing, path traversal. */
#include "tests/unit/test.h"

#include <unistd.h>

#include "common/buf.h"
#include "daemon/api.h"
#include "daemon/sha256.h"
#include "proto/jobspec.h"

TEST(routes_match_openapi) {
    char *text = NULL;
    size_t len = 0;
    lr_err e = {0};
    REQUIRE(lr_read_file("proto/openapi.yaml", 1 << 20, &text, &len, &e) == 0);
    json_t *doc = NULL;
    REQUIRE(jobspec_parse_text(text, len, &doc, &e) == 0);
    free(text);
    json_t *paths = json_object_get(doc, "paths");
    REQUIRE(json_is_object(paths));
    static const char *const methods[] = {"get", "post", "delete", "put", "patch"};
    int spec_n = 0;
    const char *path;
    json_t *ops;
    json_object_foreach(paths, path, ops) {
        for (int m = 0; m < 5; m++) {
            if (!json_object_get(ops, methods[m])) continue;
            spec_n++;
            char up[8];
            size_t ml = strlen(methods[m]);
            for (size_t i = 0; i <= ml; i++) up[i] = (char)(methods[m][i] >= 'a' ? methods[m][i] - 32 : methods[m][i]);
            int found = 0;
            for (int r = 0; r < api_route_count(); r++)
                found |= !strcmp(api_route_method(r), up) && !strcmp(api_route_path(r), path);
            CHECKF(found, "openapi.yaml has %s %s; the server does not", up, path);
        }
    }
    for (int r = 0; r < api_route_count(); r++) {
        json_t *o = json_object_get(paths, api_route_path(r));
        char low[8];
        for (int i = 0; i < 8; i++) {
            char ch = api_route_method(r)[i];
            low[i] = (char)(ch >= 'A' && ch <= 'Z' ? ch + 32 : ch);
            if (!ch) break;
        }
        CHECKF(o && json_object_get(o, low), "the server has %s %s; openapi.yaml does not", api_route_method(r),
               api_route_path(r));
    }
    CHECK_EQ_INT(spec_n, api_route_count());
    json_decref(doc);
}

/* ---- api_handle against a real store in a temp dir ---- */

static store *g_st;
static store *get_db(void *ud, lr_err *err) {
    (void)ud, (void)err;
    return g_st;
}
static int g_wakes;
static void on_wake(void *ud) {
    (void)ud;
    g_wakes++;
}

typedef struct kv {
    const char *k, *v;
} kv;
static const char *qlookup(void *ctx, const char *key) {
    for (kv *p = ctx; p && p->k; p++)
        if (!strcmp(p->k, key)) return p->v;
    return NULL;
}

static lorad_config g_cfg;
static api *g_api;

static int setup(void) {
    if (g_api) return 0;
    config_defaults(&g_cfg);
    snprintf(g_cfg.data_dir, sizeof g_cfg.data_dir, "%s/data", test_tmpdir());
    snprintf(g_cfg.web_dir, sizeof g_cfg.web_dir, "%s/web", test_tmpdir());
    lr_err e = {0};
    char p[1200];
    if (lr_mkdirs(g_cfg.web_dir, &e) || lr_mkdirs(g_cfg.data_dir, &e)) return -1;
    snprintf(p, sizeof p, "%s/index.html", g_cfg.web_dir);
    if (lr_write_file_atomic(p, "<h1>hi</h1>", 11, &e)) return -1;
    snprintf(p, sizeof p, "%s/secret.txt", test_tmpdir());
    if (lr_write_file_atomic(p, "secret", 6, &e)) return -1;
    snprintf(p, sizeof p, "%s/lorad.db", g_cfg.data_dir);
    int applied;
    if (store_open(p, &g_st, &e) || store_migrate(g_st, "migrations", &applied, &e)) return -1;
    char h[65];
    sha256_hex("tok-alice", 9, h);
    if (store_user_add(g_st, "alice", 0, h, &e)) return -1;
    sha256_hex("tok-root", 8, h);
    if (store_user_add(g_st, "root", 1, h, &e)) return -1;
    json_t *info = json_object();
    int bad = store_model_add(g_st, "tiny", "/nonexistent", info, &e);
    json_decref(info);
    if (bad) return -1;
    store_dataset d = {.id = "file-000000000001", .user = "alice", .filename = "a.jsonl", .format = "jsonl",
                       .kind = "messages", .rows = 1, .bytes = 10, .path = "/nonexistent"};
    if (store_dataset_add(g_st, &d, NULL, &e)) return -1;
    api_env env = {.cfg = &g_cfg, .db = get_db, .wake = on_wake};
    g_api = api_new(&env);
    return g_api ? 0 : -1;
}

static json_t *call(const char *method, const char *path, const char *token, const char *body, kv *q, int *status) {
    char auth[128];
    snprintf(auth, sizeof auth, "Bearer %s", token ? token : "");
    api_req rq = {.method = method, .path = path, .query = qlookup, .qctx = q, .body = body,
                  .body_len = body ? strlen(body) : 0, .authorization = token ? auth : NULL};
    api_resp rs;
    api_handle(g_api, &rq, &rs);
    *status = rs.status;
    json_t *j = NULL;
    if (rs.body && rs.content_type && !strcmp(rs.content_type, "application/json"))
        j = json_loadb(rs.body, rs.body_len, 0, NULL);
    if (rs.fd >= 0) j = json_pack("{s:I}", "fd_size", (json_int_t)rs.fd_size);
    api_resp_free(&rs);
    return j;
}

static const char *err_param(json_t *j) {
    return json_string_value(json_object_get(json_object_get(j, "error"), "param"));
}

static const char *err_msg(json_t *j) {
    return json_string_value(json_object_get(json_object_get(j, "error"), "message"));
}

static int count_jobs(void) {
    lr_err e = {0};
    json_t *l = store_jobs_list(g_st, NULL, NULL, NULL, 1000, NULL, &e);
    int n = (int)json_array_size(json_object_get(l, "data"));
    json_decref(l);
    return n;
}

TEST(auth_required) {
    REQUIRE(setup() == 0);
    int st;
    json_t *j = call("GET", "/v1/jobs", NULL, NULL, NULL, &st);
    CHECK_EQ_INT(st, 401);
    CHECK_STR(json_string_value(json_object_get(json_object_get(j, "error"), "code")), "unauthorized");
    json_decref(j);
    j = call("GET", "/v1/jobs", "wrong", NULL, NULL, &st);
    CHECK_EQ_INT(st, 401);
    json_decref(j);
    j = call("GET", "/v1/me", "tok-alice", NULL, NULL, &st);
    CHECK_EQ_INT(st, 200);
    CHECK_STR(json_string_value(json_object_get(j, "name")), "alice");
    json_decref(j);
    j = call("GET", "/healthz", NULL, NULL, NULL, &st);
    CHECK_EQ_INT(st, 200);
    json_decref(j);
    j = call("GET", "/v1/jobspec", NULL, NULL, NULL, &st); /* the job schema is public */
    CHECK_EQ_INT(st, 200);
    json_t *schema = jobspec_schema_json();
    CHECK(j && json_equal(j, schema) && json_array_size(json_object_get(j, "fields")) > 60);
    json_decref(schema);
    json_decref(j);
}

TEST(bad_job_bodies_change_nothing) {
    REQUIRE(setup() == 0);
    struct {
        const char *body;
        int status;
        const char *param;
    } cases[] = {
        {"{\"model\":", 400, NULL},
        {"[1,2]", 400, NULL},
        {"", 400, NULL},
        {"{\"model\":\"tiny\",\"training_file\":\"file-000000000001\",\"bogus\":1}", 400, "bogus"},
        {"{\"model\":7,\"training_file\":\"file-000000000001\"}", 400, "model"},
        {"{\"model\":\"tiny\",\"training_file\":\"file-000000000001\",\"hyperparameters\":{\"learning_rate\":-1}}", 400,
         "hyperparameters.learning_rate"},
        {"{\"model\":\"nope\",\"training_file\":\"file-000000000001\"}", 400, "model"},
        {"{\"model\":\"tiny\",\"training_file\":\"file-ffffffffffff\"}", 400, "training_file"},
        {"{\"model\":\"tiny\",\"training_file\":\"file-000000000001\",\"method\":{\"type\":\"dpo\"}}", 400,
         "training_file"},
    };
    int before = count_jobs(), st;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_t *j = call("POST", "/v1/jobs", "tok-alice", cases[i].body, NULL, &st);
        CHECKF(st == cases[i].status, "case %zu: status %d", i, st);
        CHECKF(json_is_object(json_object_get(j, "error")), "case %zu: no error object", i);
        if (cases[i].param) CHECKF(err_param(j) && !strcmp(err_param(j), cases[i].param), "case %zu: param %s", i,
                                   err_param(j) ? err_param(j) : "(null)");
        json_decref(j);
    }
    CHECK_EQ_INT(count_jobs(), before);
}

TEST(create_list_cancel) {
    REQUIRE(setup() == 0);
    int st, w0 = g_wakes;
    json_t *j = call("POST", "/v1/jobs", "tok-alice",
                     "{\"model\":\"tiny\",\"training_file\":\"file-000000000001\",\"priority\":3}", NULL, &st);
    CHECK_EQ_INT(st, 200);
    CHECK(g_wakes == w0 + 1); /* the scheduler is woken, not polled */
    char id[64];
    snprintf(id, sizeof id, "%s", json_string_value(json_object_get(j, "id")));
    CHECK(!strncmp(id, "ftjob-", 6) && strlen(id) == 18);
    CHECK_STR(json_string_value(json_object_get(j, "status")), "queued");
    CHECK_EQ_INT(json_integer_value(json_object_get(json_object_get(j, "spec"), "priority")), 3);
    json_decref(j);
    kv q[] = {{"status", "queued"}, {"user", "alice"}, {"limit", "1"}, {NULL, NULL}};
    j = call("GET", "/v1/jobs", "tok-alice", NULL, q, &st);
    CHECK_EQ_INT(st, 200);
    CHECK_EQ_INT(json_array_size(json_object_get(j, "data")), 1);
    json_decref(j);
    kv bad[] = {{"limit", "0"}, {NULL, NULL}};
    j = call("GET", "/v1/jobs", "tok-alice", NULL, bad, &st);
    CHECK_EQ_INT(st, 400);
    CHECK_STR(err_param(j), "limit");
    json_decref(j);
    char path[128];
    snprintf(path, sizeof path, "/v1/jobs/%s/cancel", id);
    j = call("POST", path, "tok-root", NULL, NULL, &st);
    CHECK_EQ_INT(st, 200);
    CHECK_STR(json_string_value(json_object_get(j, "status")), "cancelled");
    json_decref(j);
    j = call("POST", path, "tok-root", NULL, NULL, &st);
    CHECK_EQ_INT(st, 409);
    json_decref(j);
    j = call("GET", "/v1/jobs/ftjob-000000000000", "tok-alice", NULL, NULL, &st);
    CHECK_EQ_INT(st, 404);
    json_decref(j);
    j = call("DELETE", "/v1/jobs", "tok-alice", NULL, NULL, &st);
    CHECK_EQ_INT(st, 405);
    json_decref(j);
    j = call("GET", "/v1/nothing", "tok-alice", NULL, NULL, &st);
    CHECK_EQ_INT(st, 404);
    json_decref(j);
}

TEST(sweep_cartesian_product) {
    REQUIRE(setup() == 0);
    int st, before = count_jobs();
    json_t *j = call("POST", "/v1/sweeps", "tok-alice",
                     "{\"template\":{\"name\":\"s\",\"model\":\"tiny\",\"training_file\":\"file-000000000001\"},"
                     "\"parameters\":{\"hyperparameters.learning_rate\":[1e-4,2e-4,3e-4],\"lora.r\":[8,16]}}",
                     NULL, &st);
    CHECK_EQ_INT(st, 200);
    CHECK_EQ_INT(json_array_size(json_object_get(j, "jobs")), 6);
    json_decref(j);
    CHECK_EQ_INT(count_jobs(), before + 6);
    /* One bad point: nothing is created. */
    j = call("POST", "/v1/sweeps", "tok-alice",
             "{\"template\":{\"model\":\"tiny\",\"training_file\":\"file-000000000001\"},"
             "\"parameters\":{\"lora.r\":[8,-1]}}", NULL, &st);
    CHECK_EQ_INT(st, 400);
    CHECK_STR(err_param(j), "template.lora.r");
    json_decref(j);
    CHECK_EQ_INT(count_jobs(), before + 6);
}

/* Explicit points beside the grid: one job per point with the point's values
 * (fields of several sections in one point), returned as points; a bad
 * point, a bad shape or both forms at once create nothing. */
TEST(sweep_explicit_points) {
    REQUIRE(setup() == 0);
    int st, before = count_jobs();
    json_t *j = call("POST", "/v1/sweeps", "tok-alice",
                     "{\"template\":{\"name\":\"p\",\"model\":\"tiny\",\"training_file\":\"file-000000000001\"},"
                     "\"points\":[{\"lora.r\":4,\"hyperparameters.learning_rate\":0.003},"
                     "{\"lora.r\":32,\"hyperparameters.learning_rate\":0.0001,\"hyperparameters.seed\":9},"
                     "{\"lora.alpha\":8}]}",
                     NULL, &st);
    CHECK_EQ_INT(st, 200);
    json_t *jobs = json_object_get(j, "jobs");
    REQUIRE(json_array_size(jobs) == 3);
    CHECK(json_is_array(json_object_get(j, "points")) && !json_object_get(j, "parameters"));
    int seen = 0;
    size_t i;
    json_t *job;
    json_array_foreach(jobs, i, job) {
        json_t *spec = json_object_get(job, "spec");
        json_int_t r = json_integer_value(json_object_get(json_object_get(spec, "lora"), "r"));
        double lr = json_number_value(json_object_get(json_object_get(spec, "hyperparameters"), "learning_rate"));
        json_int_t seed = json_integer_value(json_object_get(json_object_get(spec, "hyperparameters"), "seed"));
        double alpha = json_number_value(json_object_get(json_object_get(spec, "lora"), "alpha"));
        if (r == 4 && lr == 0.003) seen |= 1;
        if (r == 32 && lr == 0.0001 && seed == 9) seen |= 2;
        if (alpha == 8) seen |= 4;
    }
    CHECKF(seen == 7, "points found: %d", seen);
    json_decref(j);
    CHECK_EQ_INT(count_jobs(), before + 3);
    struct {
        const char *body, *param;
    } bad[] = {
        {"{\"template\":{\"model\":\"tiny\",\"training_file\":\"file-000000000001\"},"
         "\"points\":[{\"lora.r\":8},{\"lora.r\":-1}]}", "template.lora.r"},
        {"{\"template\":{\"model\":\"tiny\",\"training_file\":\"file-000000000001\"},\"points\":[]}", "points"},
        {"{\"template\":{\"model\":\"tiny\",\"training_file\":\"file-000000000001\"},\"points\":[{\"lora.r\":8},3]}",
         "points.1"},
        {"{\"template\":{\"model\":\"tiny\",\"training_file\":\"file-000000000001\"},\"points\":[{\"model.x\":8}]}",
         "points"},
        {"{\"template\":{\"model\":\"tiny\",\"training_file\":\"file-000000000001\"},\"points\":[{\"lora.r\":8}],"
         "\"parameters\":{\"lora.r\":[8]}}", "parameters"},
        {"{\"template\":{\"model\":\"tiny\",\"training_file\":\"file-000000000001\"}}", "parameters"},
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        j = call("POST", "/v1/sweeps", "tok-alice", bad[k].body, NULL, &st);
        CHECKF(st == 400, "case %zu: status %d", k, st);
        CHECKF(err_param(j) && !strcmp(err_param(j), bad[k].param), "case %zu: param %s", k,
               err_param(j) ? err_param(j) : "(null)");
        json_decref(j);
    }
    CHECK_EQ_INT(count_jobs(), before + 3);
}

TEST(artifact_and_static_traversal) {
    REQUIRE(setup() == 0);
    int st;
    json_t *j = call("POST", "/v1/jobs", "tok-alice", "{\"model\":\"tiny\",\"training_file\":\"file-000000000001\"}",
                     NULL, &st);
    REQUIRE(st == 200);
    char id[64], path[1400], dir[1300];
    snprintf(id, sizeof id, "%s", json_string_value(json_object_get(j, "id")));
    json_decref(j);
    snprintf(dir, sizeof dir, "%s/runs/%s", g_cfg.data_dir, id);
    lr_err e = {0};
    REQUIRE(lr_mkdirs(dir, &e) == 0);
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    REQUIRE(lr_write_file_atomic(path, "{}", 2, &e) == 0);
    const char *bad[] = {"..", ".hidden", "..%2f..%2florad.db", "a\\b"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(path, sizeof path, "/v1/jobs/%s/artifacts/%s", id, bad[i]);
        j = call("GET", path, "tok-alice", NULL, NULL, &st);
        CHECKF(st == 400, "%s: %d", bad[i], st);
        json_decref(j);
    }
    /* A decoded slash makes a different path: no route. */
    snprintf(path, sizeof path, "/v1/jobs/%s/artifacts/../../lorad.db", id);
    j = call("GET", path, "tok-alice", NULL, NULL, &st);
    CHECK(st == 404 || st == 400);
    json_decref(j);
    snprintf(path, sizeof path, "/v1/jobs/%s/artifacts/adapter_config.json", id);
    j = call("GET", path, "tok-alice", NULL, NULL, &st);
    CHECK_EQ_INT(st, 200);
    CHECK_EQ_INT(json_integer_value(json_object_get(j, "fd_size")), 2);
    json_decref(j);
    j = call("GET", "/", NULL, NULL, NULL, &st);
    CHECK_EQ_INT(st, 200);
    json_decref(j);
    j = call("GET", "/../secret.txt", NULL, NULL, NULL, &st);
    CHECK_EQ_INT(st, 404);
    json_decref(j);
    j = call("GET", "/..", NULL, NULL, NULL, &st);
    CHECK_EQ_INT(st, 404);
    json_decref(j);
}

TEST(dataset_upload_names_the_line) {
    REQUIRE(setup() == 0);
    int st;
    const char *good = "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"assistant\",\"content\":\"b\"}]}\n";
    char body[1024];
    snprintf(body, sizeof body, "%s%s{\"messages\": [\n", good, good);
    kv q[] = {{"filename", "x.jsonl"}, {NULL, NULL}};
    json_t *j = call("POST", "/v1/datasets", "tok-alice", body, q, &st);
    CHECK_EQ_INT(st, 400);
    const char *msg = json_string_value(json_object_get(json_object_get(j, "error"), "message"));
    CHECKF(msg && strstr(msg, "line 3"), "message: %s", msg ? msg : "(null)");
    json_decref(j);
    j = call("POST", "/v1/datasets", "tok-alice", good, q, &st);
    CHECK_EQ_INT(st, 200);
    CHECK_EQ_INT(json_integer_value(json_object_get(j, "rows")), 1);
    CHECK_STR(json_string_value(json_object_get(j, "format")), "jsonl");
    json_decref(j);
}

TEST(prometheus_metrics) {
    REQUIRE(setup() == 0);
    api_req rq = {.method = "GET", .path = "/metrics"};
    api_resp rs;
    api_handle(g_api, &rq, &rs);
    CHECK_EQ_INT(rs.status, 200);
    CHECK(rs.body && strstr(rs.body, "lorad_queue_depth "));
    CHECK(rs.body && strstr(rs.body, "lorad_http_requests_total{route=\"POST /v1/jobs\",code=\"2xx\"}"));
    CHECK(rs.body && strstr(rs.body, "lorad_http_request_duration_seconds_bucket"));
    api_resp_free(&rs);
}

/* generate and merge: every check before lora-worker runs (no runner here). */
TEST(generate_and_merge_checks) {
    REQUIRE(setup() == 0);
    int st;
    lr_err e = {0};
    char h[65];
    sha256_hex("tok-bob", 7, h);
    REQUIRE(store_user_add(g_st, "bob", 0, h, &e) == 0);
    json_t *j = call("POST", "/v1/jobs", "tok-alice",
                     "{\"name\":\"my job!\",\"model\":\"tiny\",\"training_file\":\"file-000000000001\"}", NULL, &st);
    REQUIRE(st == 200);
    char id[64], gen[128], merge[128];
    snprintf(id, sizeof id, "%s", json_string_value(json_object_get(j, "id")));
    json_decref(j);
    snprintf(gen, sizeof gen, "/v1/jobs/%s/generate", id);
    snprintf(merge, sizeof merge, "/v1/jobs/%s/merge", id);
    struct {
        const char *body, *param;
    } bad[] = {
        {"{}", "prompt"}, {"{\"prompt\":\"\"}", "prompt"}, {"{\"prompt\":\"x\",\"max_new_tokens\":0}", "max_new_tokens"},
        {"{\"prompt\":\"x\",\"max_new_tokens\":1025}", "max_new_tokens"}, {"{\"prompt\":\"x\",\"top_p\":0}", "top_p"},
        {"{\"prompt\":\"x\",\"temperature\":5.5}", "temperature"}, {"{\"prompt\":\"x\",\"stop\":[\"a\",\"\"]}", "stop[1]"},
        {"{\"prompt\":\"x\",\"stop\":\"\"}", "stop"}, {"{\"prompt\":\"x\",\"top_k\":1.5}", "top_k"},
        {"{\"prompt\":\"x\",\"nope\":1}", "nope"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        j = call("POST", gen, "tok-alice", bad[i].body, NULL, &st);
        CHECKF(st == 400 && err_param(j) && !strcmp(err_param(j), bad[i].param), "case %zu: %d %s", i, st,
               err_param(j) ? err_param(j) : "(null)");
        json_decref(j);
    }
    j = call("POST", gen, "tok-alice", "{\"prompt\":\"x\"}", NULL, &st);
    CHECK_EQ_INT(st, 409); /* queued */
    json_decref(j);
    j = call("POST", "/v1/jobs/ftjob-ffffffffffff/generate", "tok-alice", "{\"prompt\":\"x\"}", NULL, &st);
    CHECK_EQ_INT(st, 404);
    json_decref(j);
    j = call("POST", merge, "tok-bob", NULL, NULL, &st);
    CHECK_EQ_INT(st, 403);
    json_decref(j);
    j = call("POST", merge, "tok-alice", "{\"name\":\"a/b\"}", NULL, &st);
    CHECK(st == 400 && err_param(j) && !strcmp(err_param(j), "name"));
    json_decref(j);
    j = call("POST", merge, "tok-alice", NULL, NULL, &st);
    CHECK_EQ_INT(st, 409); /* queued: no adapter yet */
    json_decref(j);
    /* Finished with an adapter: what is left needs lora-worker. */
    REQUIRE(store_job_start(g_st, id, "w1", &e) == 0 && store_job_finish(g_st, id, "succeeded", NULL, NULL, &e) == 0);
    char dir[1300], path[1400];
    snprintf(dir, sizeof dir, "%s/runs/%s", g_cfg.data_dir, id);
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    REQUIRE(lr_mkdirs(dir, &e) == 0 && lr_write_file_atomic(path, "x", 1, &e) == 0);
    j = call("POST", merge, "tok-alice", "{\"name\":\"tiny\"}", NULL, &st);
    CHECK_EQ_INT(st, 409); /* a registered model's name */
    json_decref(j);
    j = call("POST", gen, "tok-alice", "{\"prompt\":\"x\"}", NULL, &st);
    CHECK_EQ_INT(st, 503);
    json_decref(j);
    j = call("POST", merge, "tok-root", NULL, NULL, &st);
    CHECK_EQ_INT(st, 503);
    json_decref(j);
}

/* A full_sft job has a model, not an adapter: generate and merge look for
 * model.safetensors and say "model"; an adapter file does not count. */
TEST(full_sft_generate_and_merge_checks) {
    REQUIRE(setup() == 0);
    int st;
    lr_err e = {0};
    json_t *j = call("POST", "/v1/jobs", "tok-alice",
                     "{\"model\":\"tiny\",\"training_file\":\"file-000000000001\",\"method\":{\"type\":\"full_sft\"}}",
                     NULL, &st);
    REQUIRE(st == 200);
    char id[64], gen[128], merge[128], dir[1300], path[1400];
    snprintf(id, sizeof id, "%s", json_string_value(json_object_get(j, "id")));
    json_decref(j);
    snprintf(gen, sizeof gen, "/v1/jobs/%s/generate", id);
    snprintf(merge, sizeof merge, "/v1/jobs/%s/merge", id);
    j = call("POST", gen, "tok-alice", "{\"prompt\":\"x\"}", NULL, &st);
    CHECK_EQ_INT(st, 409);
    CHECKF(err_msg(j) && strstr(err_msg(j), "its model can be used once"), "%s", err_msg(j) ? err_msg(j) : "");
    json_decref(j);
    REQUIRE(store_job_start(g_st, id, "w1", &e) == 0 && store_job_finish(g_st, id, "failed", "x", NULL, &e) == 0);
    snprintf(dir, sizeof dir, "%s/runs/%s", g_cfg.data_dir, id);
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    REQUIRE(lr_mkdirs(dir, &e) == 0 && lr_write_file_atomic(path, "x", 1, &e) == 0);
    j = call("POST", merge, "tok-alice", NULL, NULL, &st);
    CHECK_EQ_INT(st, 409);
    CHECKF(err_msg(j) && strstr(err_msg(j), "has no trained model: it ended before saving model.safetensors"), "%s",
           err_msg(j) ? err_msg(j) : "");
    json_decref(j);
    j = call("POST", gen, "tok-alice", "{\"prompt\":\"x\"}", NULL, &st);
    CHECK_EQ_INT(st, 409);
    json_decref(j);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    REQUIRE(lr_write_file_atomic(path, "x", 1, &e) == 0);
    j = call("POST", merge, "tok-alice", "{\"name\":\"tiny\"}", NULL, &st);
    CHECK_EQ_INT(st, 409); /* a registered model's name */
    json_decref(j);
    j = call("POST", gen, "tok-alice", "{\"prompt\":\"x\"}", NULL, &st);
    CHECK_EQ_INT(st, 503);
    json_decref(j);
    j = call("POST", merge, "tok-alice", NULL, NULL, &st);
    CHECK_EQ_INT(st, 503);
    json_decref(j);
    snprintf(path, sizeof path, "/v1/jobs/%s/artifacts/model.safetensors", id);
    j = call("GET", path, "tok-alice", NULL, NULL, &st);
    CHECK_EQ_INT(st, 200);
    CHECK_EQ_INT(json_integer_value(json_object_get(j, "fd_size")), 1);
    json_decref(j);
}

/* A worker's text naming a file under the data directory reaches users
 * relative to it, in events and in the job's error. */
TEST(messages_show_paths_relative_to_the_data_dir) {
    REQUIRE(setup() == 0);
    lr_err e = {0};
    store_job_new j = {.id = "ftjob-paths", .name = "", .user = "alice", .model = "tiny", .device = "any",
                       .spec_json = "{}", .max_retries = 1};
    REQUIRE(store_job_insert(g_st, &j, &e) == 0);
    char msg[2200];
    snprintf(msg, sizeof msg, "dataset %s/datasets/file-x.jsonl: cannot open %s/datasets/file-x.jsonl", g_cfg.data_dir,
             g_cfg.data_dir);
    REQUIRE(store_event_add(g_st, "ftjob-paths", "error", msg, &e) == 0);
    REQUIRE(store_job_finish(g_st, "ftjob-paths", "failed", "training_failed", msg, &e) == 0);
    int st;
    json_t *r = call("GET", "/v1/jobs/ftjob-paths/events", "tok-alice", NULL, NULL, &st);
    CHECK_EQ_INT(st, 200);
    json_t *ev = json_array_get(json_object_get(r, "data"), 0);
    CHECK_STR(json_string_value(json_object_get(ev, "message")),
              "dataset datasets/file-x.jsonl: cannot open datasets/file-x.jsonl");
    json_decref(r);
    r = call("GET", "/v1/jobs/ftjob-paths", "tok-alice", NULL, NULL, &st);
    CHECK_EQ_INT(st, 200);
    CHECK_STR(err_msg(r), "dataset datasets/file-x.jsonl: cannot open datasets/file-x.jsonl");
    json_decref(r);
}
