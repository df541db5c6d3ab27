/* What a new user met in the first hour (issue 12, items 12 and 16-19):
 * reals printed in their shortest round-trip form, a dataset's kind whole,
 * duplicates reported at upload, the rendered lengths when max_seq_len
 * leaves nothing to train, a job no worker can run refused or explained,
 * and adapter_config.json naming its base model. */
#include "tests/unit/test.h"

#include <dirent.h>
#include <jansson.h>
#include <sqlite3.h>
#include <stdint.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/rng.h"
#include "daemon/api.h"
#include "daemon/sched.h"
#include "daemon/sha256.h"
#include "kernels/backend.h"
#include "proto/jobspec.h"
#include "proto/jsonfmt.h"
#include "worker/commands.h"
#include "formats/data.h"
#include "worker/batch.h"
#include "worker/model.h"
#include "formats/tok.h"

/* ---- item 16: shortest round-trip reals ---- */

static const char *fmt(double d) {
    static char b[64];
    if (jsonfmt_real(d, b, sizeof b) < 0) return "(too long)";
    return b;
}

TEST(real_shortest_forms) {
    CHECK_STR(fmt(0.003), "0.003");
    CHECK_STR(fmt(3e-3), "0.003");
    CHECK_STR(fmt(1e-5), "1e-05");
    CHECK_STR(fmt(3.0), "3.0");
    CHECK_STR(fmt(100.0), "100.0");
    CHECK_STR(fmt(-2.5), "-2.5");
    CHECK_STR(fmt(0.1 + 0.2), "0.30000000000000004");
    CHECK_STR(fmt(1e300), "1e+300");
    CHECK_STR(fmt(0.9), "0.9");
    CHECK_STR(fmt(NAN), "null");
    CHECK_STR(fmt(INFINITY), "null");
    /* a float32 loss widened to double needs its digits, and keeps them */
    double loss = (double)5.4401236f;
    CHECK(strtod(fmt(loss), NULL) == loss);
    char tiny[4];
    CHECK(jsonfmt_real(0.30000000000000004, tiny, sizeof tiny) == -1);
}

/* Every form reads back exactly, and is the fewest-digit %g form (or, where
 * that one has an exponent %.17g has not, no longer than %.17g). */
TEST(real_round_trip_random) {
    lr_rng r;
    rng_seed(&r, 7);
    int bad = 0, longer = 0;
    for (int i = 0; i < 20000; i++) {
        uint64_t bits = rng_u64(&r);
        double d;
        memcpy(&d, &bits, sizeof d);
        if (!isfinite(d)) continue;
        if (i % 2) d = (double)(float)(rng_uniform(&r) * 10); /* values like losses */
        const char *s = fmt(d);
        if (strtod(s, NULL) != d) bad++;
        char best[64], ref[64];
        for (int p = 1; p <= 17; p++) {
            snprintf(best, sizeof best, "%.*g", p, d);
            if (strtod(best, NULL) == d) break;
        }
        if (!strpbrk(best, ".e")) strcat(best, ".0");
        snprintf(ref, sizeof ref, "%.17g", d);
        if (strchr(best, 'e') && !strchr(ref, 'e')) longer += strlen(s) > strlen(ref) + 2;
        else longer += strcmp(s, best) != 0;
    }
    CHECK_EQ_INT(bad, 0);
    CHECK_EQ_INT(longer, 0);
}

TEST(dumps_rewrites_reals_only) {
    json_t *o = json_pack("{s:f, s:s, s:I, s:[f, f], s:{s:f}}", "lr", 0.003, "text", "0.0030000000000000001 \"x\\\" 1.5",
                          "n", (json_int_t)12345678901234, "a", 1e-5, 2.0, "in", "beta", 0.1);
    REQUIRE(o);
    char *s = jsonfmt_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
    REQUIRE(s);
    CHECK_STR(s, "{\"a\":[1e-05,2.0],\"in\":{\"beta\":0.1},\"lr\":0.003,\"n\":12345678901234,"
                 "\"text\":\"0.0030000000000000001 \\\"x\\\\\\\" 1.5\"}");
    json_t *back = json_loads(s, 0, NULL);
    CHECK(back && json_equal(back, o));
    json_decref(back);
    free(s);
    s = jsonfmt_dumps(o, JSON_INDENT(2) | JSON_REAL_PRECISION(3));
    CHECK(s && strstr(s, "\"lr\": 0.003") && strstr(s, "0.0030000000000000001 "));
    free(s);
    json_decref(o);
}

TEST(text_rewrites_long_reals_only) {
    const char *old = "{\"learning_rate\":0.0030000000000000001,\"name\":\"0.10000000000000001 \\\" 2.5\","
                      "\"r\":16,\"x\":1.5,\"e\":1.0000000000000001e-05,\"neg\":-0.29999999999999999,\"l\":[0.1,2.0]}";
    size_t n = 0;
    char *t = jsonfmt_text(old, strlen(old), &n);
    CHECK_STR(t, "{\"learning_rate\":0.003,\"name\":\"0.10000000000000001 \\\" 2.5\",\"r\":16,\"x\":1.5,"
                 "\"e\":1e-05,\"neg\":-0.3,\"l\":[0.1,2.0]}");
    CHECK_EQ_INT(n, t ? strlen(t) : 0);
    free(t);
    t = jsonfmt_text("", 0, &n);
    CHECK(t && n == 0 && !*t);
    free(t);
}

TEST(jobspec_text_shortest) {
    json_t *j = json_loads("{\"model\":\"m\",\"training_file\":\"f\",\"hyperparameters\":{\"learning_rate\":0.003,"
                           "\"warmup_ratio\":0.1},\"lora\":{\"dropout\":0.05}}", 0, NULL);
    jobspec s;
    lr_err e = {0};
    REQUIRE(j && jobspec_from_json(j, &s, &e) == 0);
    json_t *o = jobspec_to_json(&s);
    char *txt = jsonfmt_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
    CHECKF(txt && strstr(txt, "\"learning_rate\":0.003,"), "%s", txt ? txt : "(null)");
    CHECKF(txt && strstr(txt, "\"warmup_ratio\":0.1,"), "%s", txt ? txt : "(null)");
    CHECKF(txt && strstr(txt, "\"dropout\":0.05,"), "%s", txt ? txt : "(null)");
    CHECK(txt && !strstr(txt, "0000000"));
    free(txt);
    json_decref(o);
    json_decref(j);
}

/* ---- the API against a real store in a temp dir ---- */

static store *g_st;
static store *get_db(void *ud, lr_err *err) {
    (void)ud, (void)err;
    return g_st;
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
    lr_err e = {0};
    snprintf(g_cfg.data_dir, sizeof g_cfg.data_dir, "%s/data", test_tmpdir());
    snprintf(g_cfg.web_dir, sizeof g_cfg.web_dir, "%s/web", test_tmpdir());
    if (config_set_workers(&g_cfg, "cpu", &e) || lr_mkdirs(g_cfg.data_dir, &e) || lr_mkdirs(g_cfg.web_dir, &e))
        return -1;
    char p[1200], h[65];
    snprintf(p, sizeof p, "%s/lorad.db", g_cfg.data_dir);
    int applied;
    if (store_open(p, &g_st, &e) || store_migrate(g_st, "migrations", &applied, &e)) return -1;
    sha256_hex("tok-alice", 9, h);
    if (store_user_add(g_st, "alice", 0, h, &e)) return -1;
    json_t *info = json_object();
    int bad = store_model_add(g_st, "tiny", "/nonexistent", info, &e);
    json_decref(info);
    if (bad) return -1;
    store_dataset d = {.id = "file-000000000001", .user = "alice", .filename = "a.jsonl", .format = "jsonl",
                       .kind = "messages", .rows = 1, .bytes = 10, .path = "/nonexistent"};
    if (store_dataset_add(g_st, &d, NULL, &e)) return -1;
    api_env env = {.cfg = &g_cfg, .db = get_db};
    g_api = api_new(&env);
    return g_api ? 0 : -1;
}

/* The response body as text (to see how numbers are written) and parsed. */
static json_t *call(const char *method, const char *path, const char *body, kv *q, int *status, char **text) {
    api_req rq = {.method = method, .path = path, .query = qlookup, .qctx = q, .body = body,
                  .body_len = body ? strlen(body) : 0, .authorization = "Bearer tok-alice"};
    api_resp rs;
    api_handle(g_api, &rq, &rs);
    *status = rs.status;
    json_t *j = rs.body ? json_loadb(rs.body, rs.body_len, 0, NULL) : NULL;
    if (text) *text = rs.body ? strndup(rs.body, rs.body_len) : NULL;
    api_resp_free(&rs);
    return j;
}

static const char *err_param(json_t *j) {
    return json_string_value(json_object_get(json_object_get(j, "error"), "param"));
}

TEST(api_prints_job_reals_shortest) {
    REQUIRE(setup() == 0);
    int st;
    char *text = NULL;
    json_t *j = call("POST", "/v1/jobs",
                     "{\"model\":\"tiny\",\"training_file\":\"file-000000000001\","
                     "\"hyperparameters\":{\"learning_rate\":0.003,\"weight_decay\":0.1}}",
                     NULL, &st, &text);
    CHECK_EQ_INT(st, 200);
    CHECKF(text && strstr(text, "\"learning_rate\":0.003,") && strstr(text, "\"weight_decay\":0.1"), "%s",
           text ? text : "(null)");
    free(text);
    json_decref(j);
    kv q[] = {{"limit", "5"}, {NULL, NULL}};
    j = call("GET", "/v1/jobs", NULL, q, &st, &text);
    CHECK_EQ_INT(st, 200);
    CHECKF(text && strstr(text, "\"learning_rate\":0.003,") && !strstr(text, "0.0030000"), "%s",
           text ? text : "(null)");
    free(text);
    json_decref(j);
    /* a spec stored by an older lorad, with jansson's 17 digits, is listed short too */
    lr_err e = {0};
    store_job_new old = {.id = "ftjob-0000000000aa", .name = "old", .user = "alice", .model = "tiny", .device = "any",
                         .spec_json = "{\"hyperparameters\":{\"learning_rate\":0.00020000000000000001},\"model\":\"tiny\"}"};
    REQUIRE(store_job_insert(g_st, &old, &e) == 0);
    j = call("GET", "/v1/jobs", NULL, q, &st, &text);
    CHECKF(text && strstr(text, "\"learning_rate\":0.0002}") && !strstr(text, "0.00020000"), "%s", text ? text : "(null)");
    free(text);
    json_decref(j);
}

/* ---- item 12: the kind is whole ---- */

TEST(dataset_kind_prompt_completion_whole) {
    REQUIRE(setup() == 0);
    int st;
    kv q[] = {{"filename", "pc.jsonl"}, {NULL, NULL}};
    json_t *j = call("POST", "/v1/datasets", "{\"prompt\":\"a\",\"completion\":\"b\"}\n", q, &st, NULL);
    CHECK_EQ_INT(st, 200);
    CHECK_STR(json_string_value(json_object_get(j, "kind")), "prompt_completion");
    char path[128];
    snprintf(path, sizeof path, "/v1/datasets/%s", json_string_value(json_object_get(j, "id")));
    json_decref(j);
    j = call("GET", path, NULL, NULL, &st, NULL);
    CHECK_STR(json_string_value(json_object_get(j, "kind")), "prompt_completion");
    json_decref(j);
    store_dataset d;
    lr_err e = {0};
    REQUIRE(store_dataset_get(g_st, path + strlen("/v1/datasets/"), &d, NULL, &e) == 0);
    CHECK_STR(d.kind, "prompt_completion");
    /* the longest name of every form fits */
    for (int f = DATA_FMT_UNKNOWN; f <= DATA_FMT_TEXT; f++)
        CHECKF(strlen(data_format_name((data_format)f)) < sizeof d.kind, "%s", data_format_name((data_format)f));
}

/* ---- item 17: duplicates said at upload ---- */

TEST(upload_reports_duplicates) {
    REQUIRE(setup() == 0);
    int st;
    kv q[] = {{"filename", "d.jsonl"}, {NULL, NULL}};
    const char *rows = "{\"prompt\":\"a\",\"completion\":\"b\"}\n"
                       "{\"prompt\":\"a\",\"completion\":\"c\"}\n"
                       "{\"prompt\": \"a\", \"completion\": \"b\", \"id\": 7}\n" /* same row, other spacing and fields */
                       "{\"prompt\":\"a\",\"completion\":\"b\"}\n"
                       "{\"prompt\":\"ab\",\"completion\":\"\"}\n";
    json_t *j = call("POST", "/v1/datasets", rows, q, &st, NULL);
    CHECK_EQ_INT(st, 400); /* an empty completion is invalid: no duplicate count on a refused file */
    json_decref(j);
    rows = "{\"prompt\":\"a\",\"completion\":\"b\"}\n"
           "{\"prompt\":\"a\",\"completion\":\"c\"}\n"
           "{\"prompt\": \"a\", \"completion\": \"b\", \"id\": 7}\n"
           "{\"prompt\":\"a\",\"completion\":\"b\"}\n"
           "{\"prompt\":\"ab\",\"completion\":\"x\"}\n";
    j = call("POST", "/v1/datasets", rows, q, &st, NULL);
    CHECK_EQ_INT(st, 200);
    CHECK_EQ_INT(json_integer_value(json_object_get(j, "duplicates")), 2);
    const char *w = json_string_value(json_object_get(j, "warning"));
    CHECKF(w && strstr(w, "2 of 5 rows repeat"), "%s", w ? w : "(null)");
    char path[128];
    snprintf(path, sizeof path, "/v1/datasets/%s", json_string_value(json_object_get(j, "id")));
    json_decref(j);
    j = call("GET", path, NULL, NULL, &st, NULL);
    CHECK_EQ_INT(json_integer_value(json_object_get(j, "duplicates")), 2);
    json_decref(j);
    j = call("POST", "/v1/datasets", "{\"text\":\"one\"}\n{\"text\":\"two\"}\n", q, &st, NULL);
    CHECK_EQ_INT(st, 200);
    CHECK_EQ_INT(json_integer_value(json_object_get(j, "duplicates")), 0);
    CHECK(json_object_get(j, "warning") == NULL);
    json_decref(j);
}

TEST(validate_counts_duplicates_any_form) {
    data_report r;
    lr_err e = {0};
    const char *csv = "question,answer\nq1,a1\nq2,a2\nq1,a1\n\"q1\",\"a1\"\n";
    REQUIRE(data_validate(csv, strlen(csv), &r, &e) == 0);
    CHECK_EQ_INT(r.n_rows, 4);
    CHECK_EQ_INT(r.n_duplicates, 2);
    /* a different weight is a different row; a different role too */
    const char *msgs =
        "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"},{\"role\":\"assistant\",\"content\":\"yo\"}]}\n"
        "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"},{\"role\":\"assistant\",\"content\":\"yo\"}]}\n"
        "{\"messages\":[{\"role\":\"system\",\"content\":\"hi\"},{\"role\":\"assistant\",\"content\":\"yo\"}]}\n";
    REQUIRE(data_validate(msgs, strlen(msgs), &r, &e) == 0);
    CHECK_EQ_INT(r.n_duplicates, 1);
    /* DPO: a prompt string and the same prompt as a message render alike;
     * chosen and rejected swapped is another pair */
    const char *dpo = "{\"prompt\":\"p\",\"chosen\":\"x\",\"rejected\":\"y\"}\n"
                      "{\"prompt\":[{\"role\":\"user\",\"content\":\"p\"}],\"chosen\":\"x\",\"rejected\":\"y\"}\n"
                      "{\"prompt\":\"p\",\"chosen\":\"y\",\"rejected\":\"x\"}\n";
    REQUIRE(data_validate(dpo, strlen(dpo), &r, &e) == 0);
    CHECK_EQ_INT(r.n_duplicates, 1);
}

/* ---- item 17: the rendered lengths when max_seq_len leaves nothing ---- */

TEST(no_rows_left_says_rendered_lengths) {
    tok *t = NULL;
    lr_err e = {0};
    if (tok_load(test_fixture("tokenizers/gpt2"), &t, &e)) {
        test_skip("no gpt2 tokenizer fixture: %s", e.msg);
        return;
    }
    chat c;
    REQUIRE(chat_init(&c, t, TPL_PLAIN, NULL, &e) == 0);
    char path[600];
    snprintf(path, sizeof path, "%s/long.jsonl", test_tmpdir());
    const char *rows = "{\"prompt\":\"one two three four five six seven eight nine ten\",\"completion\":\"yes\"}\n"
                       "{\"prompt\":\"one two three four five six seven eight nine ten eleven twelve\",\"completion\":\"no\"}\n"
                       "{\"prompt\":\"one two three four five six seven eight\",\"completion\":\"maybe so\"}\n";
    REQUIRE(lr_write_file_atomic(path, rows, strlen(rows), &e) == 0);
    const char *files[] = {path};
    data_opts o = {.files = files, .n_files = 1, .seed = 1, .max_seq_len = 4};
    data_set ds;
    CHECK(data_build(&c, &o, &ds, &e) == -1);
    CHECKF(strstr(e.msg, "max_seq_len 4") && strstr(e.msg, "rendered rows are ") && strstr(e.msg, "tokens (median ") &&
               strstr(e.msg, "first trained token of a dropped row comes at token"),
           "%s", e.msg);
    int lo = 0, hi = 0, med = 0, first = 0;
    const char *p = strstr(e.msg, "rendered rows are ");
    REQUIRE(p);
    CHECK(sscanf(p, "rendered rows are %d to %d tokens (median %d)", &lo, &hi, &med) == 3);
    CHECK(lo > 4 && lo <= med && med <= hi && hi < 40);
    p = strstr(e.msg, "comes at token ");
    REQUIRE(p);
    CHECK(sscanf(p, "comes at token %d", &first) == 1 && first > 4 && first <= lo);
    tok_free(t);
}

/* ---- item 18: a job no worker can run ---- */

TEST(wait_reason_cases) {
    char b[300];
    CHECK_EQ_INT(sched_wait_reason("cuda", NULL, 0, b, sizeof b), 2);
    CHECK(strstr(b, "no worker") && strstr(b, "no workers"));
    sched_wstate cpu[] = {{"cpu", "idle"}};
    CHECK_EQ_INT(sched_wait_reason("cuda", cpu, 1, b, sizeof b), 2);
    CHECKF(strstr(b, "device cuda") && strstr(b, "its workers: cpu"), "%s", b);
    CHECK_EQ_INT(sched_wait_reason("cpu", cpu, 1, b, sizeof b), 0);
    CHECK_EQ_INT(sched_wait_reason("any", cpu, 1, b, sizeof b), 0);
    sched_wstate mixed[] = {{"cpu", "idle"}, {"cuda:0", "dead"}, {"cuda:1", "dead"}};
    CHECK_EQ_INT(sched_wait_reason("cuda", mixed, 3, b, sizeof b), 2);
    CHECKF(strstr(b, "dead: cuda:0, cuda:1"), "%s", b);
    mixed[1].status = "busy";
    CHECK_EQ_INT(sched_wait_reason("cuda", mixed, 3, b, sizeof b), 1);
    CHECKF(strstr(b, "1 of 2 busy"), "%s", b);
    mixed[1].status = mixed[2].status = "starting";
    CHECK_EQ_INT(sched_wait_reason("cuda", mixed, 3, b, sizeof b), 1);
    CHECKF(strstr(b, "to start"), "%s", b);
}

TEST(cuda_job_refused_or_explained) {
    REQUIRE(setup() == 0);
    int st;
    json_t *j = call("POST", "/v1/jobs", "{\"model\":\"tiny\",\"training_file\":\"file-000000000001\",\"device\":\"cuda\"}",
                     NULL, &st, NULL);
    CHECK_EQ_INT(st, 400);
    CHECK_STR(err_param(j), "device");
    const char *m = json_string_value(json_object_get(json_object_get(j, "error"), "message"));
    CHECKF(m && strstr(m, "device cuda") && strstr(m, "cpu"), "%s", m ? m : "(null)");
    json_decref(j);
    j = call("POST", "/v1/sweeps", "{\"template\":{\"model\":\"tiny\",\"training_file\":\"file-000000000001\","
                                   "\"device\":\"cuda\"},\"parameters\":{\"lora.r\":[4,8]}}", NULL, &st, NULL);
    CHECK_EQ_INT(st, 400);
    CHECK_STR(err_param(j), "template.device");
    json_decref(j);

    /* the cpu worker is dead: the job is taken, with the reason in a field and an event */
    lr_err e = {0};
    store_worker w = {.name = "w0", .backend = "cpu", .device = "cpu", .status = "dead", .version = "t"};
    REQUIRE(store_worker_set(g_st, &w, &e) == 0);
    j = call("POST", "/v1/jobs", "{\"model\":\"tiny\",\"training_file\":\"file-000000000001\",\"device\":\"cpu\"}", NULL,
             &st, NULL);
    CHECK_EQ_INT(st, 200);
    const char *why = json_string_value(json_object_get(j, "waiting_reason"));
    CHECKF(why && strstr(why, "dead: cpu"), "%s", why ? why : "(null)");
    char path[128];
    snprintf(path, sizeof path, "/v1/jobs/%s", json_string_value(json_object_get(j, "id")));
    json_decref(j);
    char evp[160];
    snprintf(evp, sizeof evp, "%s/events", path);
    j = call("GET", evp, NULL, NULL, &st, NULL);
    int said = 0;
    size_t i;
    json_t *ev;
    json_array_foreach(json_object_get(j, "data"), i, ev) {
        const char *msg = json_string_value(json_object_get(ev, "message"));
        said |= msg && strstr(msg, "dead: cpu") != NULL;
    }
    CHECK(said);
    json_decref(j);
    /* once the worker is idle, the field is null */
    w.status = "idle";
    REQUIRE(store_worker_set(g_st, &w, &e) == 0);
    j = call("GET", path, NULL, NULL, &st, NULL);
    CHECK_EQ_INT(st, 200);
    CHECK(json_is_null(json_object_get(j, "waiting_reason")));
    json_decref(j);
}

/* ---- item 19: adapter_config.json names its base ---- */

static char *read_base(const char *adir) {
    char p[700];
    snprintf(p, sizeof p, "%s/adapter_config.json", adir);
    json_t *j = json_load_file(p, 0, NULL);
    const char *s = json_string_value(json_object_get(j, "base_model_name_or_path"));
    char *r = s ? strdup(s) : NULL;
    json_decref(j);
    return r;
}

static int save_adapter(const char *mdir, const char *adir) {
    kb_backend *be = NULL;
    model *m = NULL;
    lr_err err = {0};
    model_lora_cfg lc = {.r = 2, .alpha = 4, .dropout = 0.05f, .n_targets = 1};
    snprintf(lc.targets[0], sizeof lc.targets[0], "q_proj");
    int rc = kb_cpu_create(1, &be, &err) || model_load(mdir, be, &m, &err) || model_lora_init(m, &lc, 1, &err) ||
             model_lora_save(m, adir, &err);
    if (rc) test_fail(__FILE__, __LINE__, "%s", err.msg);
    if (m) model_free(m);
    if (be) kb_destroy(be);
    return rc ? -1 : 0;
}

TEST(adapter_config_names_base_model) {
    char mdir[512], adir[600], p[700];
    snprintf(mdir, sizeof mdir, "%s/base", test_tmpdir());
    char *mk[] = {"mkmodel", "--arch", "llama", "--out", mdir, "--seed", "2", NULL};
    REQUIRE(cmd_mkmodel(7, mk) == 0);
    snprintf(adir, sizeof adir, "%s/a1", test_tmpdir());
    REQUIRE(save_adapter(mdir, adir) == 0);
    char *abs = realpath(mdir, NULL), *base = read_base(adir);
    CHECKF(base && abs && !strcmp(base, abs), "base_model_name_or_path %s, model at %s", base ? base : "null",
           abs ? abs : "?");
    free(base);
    free(abs);
    snprintf(p, sizeof p, "%s/adapter_config.json", adir);
    char *text = NULL;
    lr_err e = {0};
    REQUIRE(lr_read_file(p, 1 << 20, &text, NULL, &e) == 0);
    CHECKF(strstr(text, "\"lora_dropout\": 0.05,"), "%s", text); /* the float as written, not 0.0500000007 */
    free(text);
    /* the Hugging Face name when config.json says where it came from */
    snprintf(p, sizeof p, "%s/config.json", mdir);
    json_t *cfg = json_load_file(p, 0, NULL);
    REQUIRE(cfg);
    json_object_set_new(cfg, "_name_or_path", json_string("Qwen/Qwen2.5-0.5B-Instruct"));
    REQUIRE(json_dump_file(cfg, p, JSON_INDENT(2)) == 0);
    json_decref(cfg);
    snprintf(adir, sizeof adir, "%s/a2", test_tmpdir());
    REQUIRE(save_adapter(mdir, adir) == 0);
    base = read_base(adir);
    CHECK_STR(base, "Qwen/Qwen2.5-0.5B-Instruct");
    free(base);
}

/* ---- item 17: preview with a chosen chat template ---- */

static int seg_has(json_t *preview, const char *needle) {
    size_t i, k;
    json_t *row, *seg;
    json_array_foreach(json_object_get(preview, "rows"), i, row) json_array_foreach(json_object_get(row, "segments"), k, seg) {
        const char *t = json_string_value(json_object_get(seg, "text"));
        if (t && strstr(t, needle)) return 1;
    }
    return 0;
}

TEST(preview_with_chat_template) {
    REQUIRE(setup() == 0);
    char mdir[512];
    snprintf(mdir, sizeof mdir, "%s/pm", test_tmpdir());
    char *mk[] = {"mkmodel", "--arch", "llama", "--out", mdir, "--seed", "3", NULL};
    REQUIRE(cmd_mkmodel(7, mk) == 0);
    lr_err e = {0};
    json_t *info = json_object();
    REQUIRE(store_model_add(g_st, "pm", mdir, info, &e) == 0);
    json_decref(info);
    int st;
    kv uq[] = {{"filename", "p.jsonl"}, {NULL, NULL}};
    json_t *j = call("POST", "/v1/datasets", "{\"prompt\":\"say hi\",\"completion\":\"hi\"}\n", uq, &st, NULL);
    REQUIRE(st == 200);
    char path[160];
    snprintf(path, sizeof path, "/v1/datasets/%s/preview", json_string_value(json_object_get(j, "id")));
    json_decref(j);

    kv alp[] = {{"model", "pm"}, {"chat_template", "alpaca"}, {NULL, NULL}};
    j = call("GET", path, NULL, alp, &st, NULL);
    CHECK_EQ_INT(st, 200);
    CHECK_STR(json_string_value(json_object_get(j, "chat_template")), "alpaca");
    CHECK(seg_has(j, "### Instruction"));
    json_decref(j);
    kv plain[] = {{"model", "pm"}, {"chat_template", "plain"}, {NULL, NULL}};
    j = call("GET", path, NULL, plain, &st, NULL);
    CHECK_EQ_INT(st, 200);
    CHECK_STR(json_string_value(json_object_get(j, "chat_template")), "plain");
    CHECK(!seg_has(j, "### Instruction") && seg_has(j, "say hi"));
    json_decref(j);
    kv autoq[] = {{"model", "pm"}, {NULL, NULL}};
    j = call("GET", path, NULL, autoq, &st, NULL);
    CHECK_EQ_INT(st, 200);
    const char *resolved = json_string_value(json_object_get(j, "chat_template"));
    CHECKF(resolved && strcmp(resolved, "auto"), "auto resolves to a template: %s", resolved ? resolved : "(null)");
    json_decref(j);

    kv bad[] = {{"model", "pm"}, {"chat_template", "vicuna"}, {NULL, NULL}};
    j = call("GET", path, NULL, bad, &st, NULL);
    CHECK_EQ_INT(st, 400);
    CHECK_STR(err_param(j), "chat_template");
    json_decref(j);
    kv nomodel[] = {{"chat_template", "alpaca"}, {NULL, NULL}};
    j = call("GET", path, NULL, nomodel, &st, NULL);
    CHECK_EQ_INT(st, 400);
    CHECK_STR(err_param(j), "chat_template");
    json_decref(j);
}

/* ---- item 12: a database from before the fix is repaired ---- */

TEST(migration_repairs_cut_kind) {
    char old[600], db[600];
    lr_err e = {0};
    snprintf(old, sizeof old, "%s/old-migrations", test_tmpdir());
    snprintf(db, sizeof db, "%s/old.db", test_tmpdir());
    REQUIRE(lr_mkdirs(old, &e) == 0);
    /* the schema as it was: every migration before 0005 */
    DIR *d = opendir("migrations");
    REQUIRE(d);
    struct dirent *de;
    while ((de = readdir(d))) {
        if (strlen(de->d_name) < 5 || strncmp(de->d_name, "0005", 4) >= 0 || !strstr(de->d_name, ".sql")) continue;
        char src[600], dst[1200], *text = NULL;
        size_t n = 0;
        snprintf(src, sizeof src, "migrations/%s", de->d_name);
        snprintf(dst, sizeof dst, "%s/%s", old, de->d_name);
        REQUIRE(lr_read_file(src, 1 << 20, &text, &n, &e) == 0);
        REQUIRE(lr_write_file_atomic(dst, text, n, &e) == 0);
        free(text);
    }
    closedir(d);
    store *st = NULL;
    int applied = 0;
    REQUIRE(store_open(db, &st, &e) == 0 && store_migrate(st, old, &applied, &e) == 0);
    store_close(st);
    sqlite3 *raw = NULL;
    REQUIRE(sqlite3_open(db, &raw) == SQLITE_OK);
    CHECK(sqlite3_exec(raw, "INSERT INTO datasets(id, user, filename, format, kind, rows, bytes, path, created_at) "
                            "VALUES ('file-0000000000cc', 'a', 'pc.jsonl', 'jsonl', 'prompt_completi', 3, 9, '/x', 1)",
                       NULL, NULL, NULL) == SQLITE_OK);
    sqlite3_close(raw);
    REQUIRE(store_open(db, &st, &e) == 0);
    CHECKF(store_migrate(st, "migrations", &applied, &e) == 0, "%s", e.msg);
    store_dataset ds;
    json_t *o = NULL;
    REQUIRE(store_dataset_get(st, "file-0000000000cc", &ds, &o, &e) == 0);
    CHECK_STR(ds.kind, "prompt_completion");
    CHECK_STR(json_string_value(json_object_get(o, "kind")), "prompt_completion");
    CHECK_EQ_INT(json_integer_value(json_object_get(o, "duplicates")), 0);
    json_decref(o);
    store_close(st);
}
