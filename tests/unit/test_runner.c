/* runner against a fake lora-worker (a shell script whose behaviour the
 * FAKE_MODE variable picks): results parsed, the worker's message passed on,
 * deadline, output cap, the cap on generations at once, runner_stop, no
 * child left unreaped, and merges that register a model or clean up; a
 * full_sft run's folder as the tuned side and registered as a copy. */
#include "tests/unit/test.h"

#include <errno.h>
#include <pthread.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/buf.h"
#include "daemon/runner.h"
#include "daemon/store.h"

static const char FAKE[] =
    "#!/bin/sh\n"
    "cmd=$1; shift\n"
    "tuned=0; out=; model=\n"
    "while [ $# -gt 0 ]; do case $1 in --adapter) tuned=1;; --out) out=$2;; --model) model=$2;; esac; shift; done\n"
    "case $FAKE_MODE in\n"
    "ok) [ $tuned = 1 ] && t=tuned || t=base\n"
    "    echo '{\"id\":\"prompt\",\"prompt_tokens\":3,\"ids\":[5,6],\"stop\":\"length\",\"text\":\"'$t'\\u0000!\"}';;\n"
    "which) echo '{\"id\":\"prompt\",\"prompt_tokens\":1,\"ids\":[],\"stop\":\"length\",\"text\":\"'$model:$tuned'\"}';;\n"
    "slow) exec sleep 30;;\n"
    "flood) exec yes;;\n"
    "long) echo 'loading...' >&2; echo 'lora-worker generate: prompt: the prompt has 99 tokens' >&2; "
    "echo '{\"error\":{\"code\":\"invalid\",\"param\":\"prompt\",\"message\":\"prompt: the prompt has 99 tokens; "
    "the model takes at most 10\"}}'; exit 2;;\n"
    "badmodel) echo '{\"error\":{\"code\":\"invalid\",\"param\":\"model\",\"message\":\"config.json: no such "
    "architecture\"}}'; exit 2;;\n"
    "oom) echo '{\"error\":{\"code\":\"out_of_memory\",\"param\":null,\"message\":\"out of memory\"}}'; exit 2;;\n"
    "words) echo 'generate: prompt: the prompt has 99 tokens; the model takes at most 10' >&2; exit 2;;\n"
    "boom) echo 'generate: model: no such file' >&2; exit 3;;\n"
    "merge) mkdir -p \"$out\" && cp \"$model\"/* \"$out\"/;;\n"
    "mergefail) mkdir -p \"$out\" && echo partial >\"$out\"/x && echo 'lora-worker merge: adapter: ...' >&2 && "
    "echo '{\"error\":{\"code\":\"not_found\",\"param\":null,\"message\":\"adapter: no adapter_config.json\"}}'; "
    "exit 2;;\n"
    "esac\n";

static char g_bin[1024], g_data[1024], g_db[1100];

static runner *make_runner(int max_gen, int timeout_s) {
    lr_err e = {0};
    snprintf(g_bin, sizeof g_bin, "%s/fake-worker", test_tmpdir());
    snprintf(g_data, sizeof g_data, "%s/data", test_tmpdir());
    snprintf(g_db, sizeof g_db, "%s/lorad.db", g_data);
    if (lr_write_file_atomic(g_bin, FAKE, sizeof FAKE - 1, &e) || chmod(g_bin, 0755) || lr_mkdirs(g_data, &e))
        return NULL;
    runner_config c = {.worker_bin = g_bin, .data_dir = g_data, .db_path = g_db, .max_generations = max_gen,
                       .gen_timeout_s = timeout_s, .gen_threads = 1};
    runner *r = NULL;
    return runner_new(&c, &r, &e) ? NULL : r;
}

static const runner_gen GEN = {.model_dir = "/m", .adapter_dir = "/a", .chat_template = "auto", .prompt = "hi",
                               .system = "be brief", .max_new_tokens = 8, .temperature = 0, .top_p = 1,
                               .stop = {"--json"}, .n_stop = 1};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Every child was reaped: none left, zombie or running. */
static int no_children(void) { return waitpid(-1, NULL, WNOHANG) < 0 && errno == ECHILD; }

TEST(generate_base_and_tuned) {
    runner *r = make_runner(2, 10);
    REQUIRE(r);
    setenv("FAKE_MODE", "ok", 1);
    json_t *o = NULL;
    lr_err e = {0};
    REQUIRE(runner_generate(r, &GEN, &o, &e) == 0);
    json_t *b = json_object_get(o, "base"), *t = json_object_get(o, "tuned");
    CHECK_EQ_INT(json_string_length(json_object_get(b, "text")), 6); /* "base\0!": a NUL survives */
    CHECK(!memcmp(json_string_value(json_object_get(t, "text")), "tuned", 5));
    CHECK_EQ_INT(json_integer_value(json_object_get(b, "tokens")), 2);
    CHECK_STR(json_string_value(json_object_get(t, "stop")), "length");
    CHECK_EQ_INT(json_integer_value(json_object_get(o, "prompt_tokens")), 3);
    CHECK(json_real_value(json_object_get(o, "seconds")) >= 0);
    json_decref(o);
    CHECK(no_children());
    runner_free(r);
}

TEST(generate_failures_carry_the_workers_words) {
    runner *r = make_runner(2, 10);
    REQUIRE(r);
    json_t *o = NULL;
    lr_err e = {0};
    setenv("FAKE_MODE", "long", 1);
    CHECK(runner_generate(r, &GEN, &o, &e) == -1 && !o);
    CHECK_EQ_INT(e.code, LR_E_INVALID);
    CHECKF(strstr(e.msg, "the model takes at most 10") && !strstr(e.msg, "loading"), "%s", e.msg);
    lr_err_clear(&e);
    setenv("FAKE_MODE", "boom", 1);
    CHECK(runner_generate(r, &GEN, &o, &e) == -1);
    CHECK(e.code != LR_E_INVALID && strstr(e.msg, "base model: generate: model: no such file"));
    lr_err_clear(&e);
    setenv("FAKE_MODE", "flood", 1);
    CHECK(runner_generate(r, &GEN, &o, &e) == -1);
    CHECKF(strstr(e.msg, "printed more than"), "%s", e.msg);
    CHECK(no_children());
    runner_free(r);
}

/* The class of a failed generation comes from the child's error object,
 * never from its words: the prompt refused is the request's fault (400); a
 * model refused, the server's (500); out of memory stays so; the same words
 * without an object are unclassified. */
TEST(generate_failures_are_classified_by_the_error_object) {
    runner *r = make_runner(2, 10);
    REQUIRE(r);
    json_t *o = NULL;
    lr_err e = {0};
    setenv("FAKE_MODE", "long", 1);
    CHECK(runner_generate(r, &GEN, &o, &e) == -1);
    CHECK_EQ_INT(e.code, LR_E_INVALID);
    CHECK_STR(e.param, "prompt");
    CHECK_STR(e.msg, "generation with the base model: prompt: the prompt has 99 tokens; the model takes at most 10");
    lr_err_clear(&e);
    setenv("FAKE_MODE", "badmodel", 1);
    CHECK(runner_generate(r, &GEN, &o, &e) == -1);
    CHECK_EQ_INT(e.code, LR_E_INTERNAL);
    CHECK(!e.param[0]);
    CHECKF(strstr(e.msg, "config.json: no such architecture"), "%s", e.msg);
    lr_err_clear(&e);
    setenv("FAKE_MODE", "oom", 1);
    CHECK(runner_generate(r, &GEN, &o, &e) == -1);
    CHECK_EQ_INT(e.code, LR_E_NOMEM);
    lr_err_clear(&e);
    setenv("FAKE_MODE", "words", 1);
    CHECK(runner_generate(r, &GEN, &o, &e) == -1);
    CHECK_EQ_INT(e.code, LR_E_INTERNAL);
    CHECKF(strstr(e.msg, "the model takes at most 10"), "%s", e.msg);
    CHECK(no_children());
    runner_free(r);
}

TEST(generate_with_a_tuned_model_folder) {
    runner *r = make_runner(2, 10);
    REQUIRE(r);
    setenv("FAKE_MODE", "which", 1);
    runner_gen g = GEN;
    g.adapter_dir = NULL;
    g.tuned_model_dir = "/run";
    json_t *o = NULL;
    lr_err e = {0};
    REQUIRE(runner_generate(r, &g, &o, &e) == 0);
    CHECK_STR(json_string_value(json_object_get(json_object_get(o, "base"), "text")), "/m:0");
    CHECK_STR(json_string_value(json_object_get(json_object_get(o, "tuned"), "text")), "/run:0"); /* no --adapter */
    json_decref(o);
    setenv("FAKE_MODE", "boom", 1);
    CHECK(runner_generate(r, &g, &o, &e) == -1);
    CHECK(no_children());
    runner_free(r);
}

TEST(generate_deadline_kills_the_child) {
    runner *r = make_runner(2, 1);
    REQUIRE(r);
    setenv("FAKE_MODE", "slow", 1);
    json_t *o = NULL;
    lr_err e = {0};
    double t0 = now_s();
    CHECK(runner_generate(r, &GEN, &o, &e) == -1);
    double dt = now_s() - t0;
    CHECK_EQ_INT(e.code, LR_E_TIMEOUT);
    CHECKF(dt >= 0.9 && dt < 3, "returned after %.2f s", dt);
    CHECK(no_children());
    runner_free(r);
}

typedef struct slow_call {
    runner *r;
    int rc, code;
    double secs;
} slow_call;

static void *slow_generate(void *p) {
    slow_call *s = p;
    json_t *o = NULL;
    lr_err e = {0};
    double t0 = now_s();
    s->rc = runner_generate(s->r, &GEN, &o, &e);
    s->code = e.code;
    s->secs = now_s() - t0;
    json_decref(o);
    return NULL;
}

TEST(generations_at_once_are_capped_and_stop_ends_them) {
    runner *r = make_runner(1, 60);
    REQUIRE(r);
    setenv("FAKE_MODE", "slow", 1);
    slow_call s = {.r = r};
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, slow_generate, &s) == 0);
    usleep(300000);
    json_t *o = NULL;
    lr_err e = {0};
    CHECK(runner_generate(r, &GEN, &o, &e) == -1);
    CHECK_EQ_INT(e.code, LR_E_BUSY);
    runner_stop(r);
    pthread_join(th, NULL);
    CHECK(s.rc == -1 && s.secs < 2);
    CHECK(no_children());
    lr_err_clear(&e);
    CHECK(runner_generate(r, &GEN, &o, &e) == -1 && e.code == LR_E_BUSY); /* stopped: no new ones */
    runner_free(r);
}

static store *open_store(void) {
    store *st = NULL;
    lr_err e = {0};
    int applied;
    if (store_open(g_db, &st, &e) || store_migrate(st, "migrations", &applied, &e)) {
        store_close(st);
        return NULL;
    }
    store_job_new j = {.id = "ftjob-000000000001", .name = "j", .user = "alice", .model = "m", .device = "any",
                       .spec_json = "{}", .max_retries = 1};
    json_t *had = store_job_get(st, j.id, &e); /* an earlier test's */
    lr_err_clear(&e);
    if (!had && store_job_insert(st, &j, &e)) {
        store_close(st);
        return NULL;
    }
    json_decref(had);
    return st;
}

static int has_event(store *st, const char *prefix) {
    lr_err e = {0};
    json_t *l = store_events_list(st, "ftjob-000000000001", 0, 100, &e), *ev;
    size_t i;
    int found = 0;
    json_array_foreach(json_object_get(l, "data"), i, ev)
        found |= !strncmp(json_string_value(json_object_get(ev, "message")), prefix, strlen(prefix));
    json_decref(l);
    return found;
}

TEST(merge_registers_the_model_or_cleans_up) {
    const char *model = test_fixture("models/tiny-gpt2-hf");
    char cfg[1200];
    snprintf(cfg, sizeof cfg, "%s/config.json", model);
    if (access(cfg, R_OK)) SKIP("fixture models/tiny-gpt2-hf is missing");
    runner *r = make_runner(2, 10);
    REQUIRE(r);
    store *st = open_store();
    REQUIRE(st);
    lr_err e = {0};
    setenv("FAKE_MODE", "merge", 1);
    runner_merge m = {.job_id = "ftjob-000000000001", .model_dir = model, .adapter_dir = "/a", .name = "merged-1"};
    REQUIRE(runner_merge_start(r, &m, &e) == 0);
    m.name = "../x";
    CHECK(runner_merge_start(r, &m, &e) == -1 && e.code == LR_E_INVALID);
    runner_wait(r);
    char dir[1200];
    CHECK(store_model_dir(st, "merged-1", dir, sizeof dir, &e) == 0);
    CHECKF(strstr(dir, "/models/merged-1"), "%s", dir);
    CHECK(has_event(st, "merging the adapter into a new model merged-1"));
    CHECK(has_event(st, "merged into model merged-1 ("));
    m.name = "merged-1";
    lr_err_clear(&e);
    CHECK(runner_merge_start(r, &m, &e) == -1 && e.code == LR_E_CONFLICT); /* the folder exists */
    setenv("FAKE_MODE", "mergefail", 1);
    m.name = "merged-2";
    REQUIRE(runner_merge_start(r, &m, &e) == 0);
    runner_wait(r);
    CHECK(store_model_dir(st, "merged-2", dir, sizeof dir, &e) == -1);
    CHECK(has_event(st, "merge into model merged-2 failed: lora-worker merge: adapter: no adapter_config.json"));
    struct stat sb;
    snprintf(dir, sizeof dir, "%s/models/.merging-merged-2", g_data);
    CHECK(stat(dir, &sb) != 0);
    snprintf(dir, sizeof dir, "%s/models/merged-2", g_data);
    CHECK(stat(dir, &sb) != 0);
    CHECK(no_children());
    runner_free(r);
    store_close(st);
}

static int same_file(const char *a, const char *b) {
    char *x = NULL, *y = NULL;
    size_t nx = 0, ny = 0;
    lr_err e = {0};
    int same = !lr_read_file(a, 1 << 26, &x, &nx, &e) && !lr_read_file(b, 1 << 26, &y, &ny, &e) && nx == ny &&
               !memcmp(x, y, nx);
    free(x);
    free(y);
    return same;
}

static const char *const RUN_FILES[] = {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json",
                                        "vocab.json", "merges.txt"};
#define N_RUN_FILES (sizeof RUN_FILES / sizeof RUN_FILES[0])

/* A full_sft run directory: the model's files plus a log, as a run leaves. */
static int make_run(const char *model, const char *run) {
    char p[1300], q[1300];
    lr_err e = {0};
    if (lr_mkdirs(run, &e)) return -1;
    for (size_t i = 0; i < N_RUN_FILES; i++) {
        char *buf = NULL;
        size_t len = 0;
        snprintf(p, sizeof p, "%s/%s", model, RUN_FILES[i]);
        snprintf(q, sizeof q, "%s/%s", run, RUN_FILES[i]);
        int bad = lr_read_file(p, 1 << 26, &buf, &len, &e) || lr_write_file_atomic(q, buf, len, &e);
        free(buf);
        if (bad) return -1;
    }
    snprintf(q, sizeof q, "%s/train_log.csv", run);
    return lr_write_file_atomic(q, "step\n", 5, &e);
}

/* Registers run as model name; whether it is registered with the run's model
 * files, byte for byte, and nothing else. */
static int registers_copy(runner *r, store *st, const char *run, const char *name) {
    char p[1300], q[1300], dir[1200];
    lr_err e = {0};
    runner_merge m = {.job_id = "ftjob-000000000001", .tuned_model_dir = run, .name = name};
    if (runner_merge_start(r, &m, &e)) return 0;
    runner_wait(r);
    int ok = store_model_dir(st, name, dir, sizeof dir, &e) == 0;
    for (size_t i = 0; ok && i < N_RUN_FILES; i++) {
        snprintf(p, sizeof p, "%s/%s", run, RUN_FILES[i]);
        snprintf(q, sizeof q, "%s/models/%s/%s", g_data, name, RUN_FILES[i]);
        ok = same_file(p, q);
    }
    snprintf(q, sizeof q, "%s/models/%s/train_log.csv", g_data, name);
    return ok && access(q, F_OK) != 0; /* the run's logs stay behind */
}

/* A full_sft run directory is registered as a copy of its model files (no
 * child), also from another filesystem (/dev/shm: no in-kernel copy across
 * filesystems, so read and write); one without weights fails and leaves
 * nothing. */
TEST(full_sft_model_is_copied_and_registered) {
    const char *model = test_fixture("models/tiny-gpt2-hf");
    char p[1300], dir[1200], run[1100];
    snprintf(p, sizeof p, "%s/config.json", model);
    if (access(p, R_OK)) SKIP("fixture models/tiny-gpt2-hf is missing");
    runner *r = make_runner(2, 10);
    REQUIRE(r);
    store *st = open_store();
    REQUIRE(st);
    lr_err e = {0};
    snprintf(run, sizeof run, "%s/run-full", test_tmpdir());
    REQUIRE(make_run(model, run) == 0);
    unsetenv("FAKE_MODE"); /* no lora-worker runs */
    CHECK(registers_copy(r, st, run, "full-1"));
    CHECK(has_event(st, "registering the full_sft model as a new model full-1"));
    CHECK(has_event(st, "registered the full_sft model as full-1 ("));
    char shm[] = "/dev/shm/lrtest-run.XXXXXX";
    if (mkdtemp(shm)) {
        snprintf(p, sizeof p, "%s/run", shm);
        CHECK(make_run(model, p) == 0 && registers_copy(r, st, p, "full-shm"));
        for (size_t i = 0; i < N_RUN_FILES; i++) {
            snprintf(p, sizeof p, "%s/run/%s", shm, RUN_FILES[i]);
            unlink(p);
        }
        snprintf(p, sizeof p, "%s/run/train_log.csv", shm);
        unlink(p);
        snprintf(p, sizeof p, "%s/run", shm);
        rmdir(p);
        rmdir(shm);
    }
    /* No weights: an error event, no model, no folder. */
    snprintf(p, sizeof p, "%s/model.safetensors", run);
    REQUIRE(unlink(p) == 0);
    runner_merge m = {.job_id = "ftjob-000000000001", .tuned_model_dir = run, .name = "full-2"};
    REQUIRE(runner_merge_start(r, &m, &e) == 0);
    runner_wait(r);
    CHECK(store_model_dir(st, "full-2", dir, sizeof dir, &e) == -1);
    CHECK(has_event(st, "registering the full_sft model as full-2 failed: "));
    struct stat sb;
    snprintf(dir, sizeof dir, "%s/models/.merging-full-2", g_data);
    CHECK(stat(dir, &sb) != 0);
    snprintf(dir, sizeof dir, "%s/models/full-2", g_data);
    CHECK(stat(dir, &sb) != 0);
    CHECK(no_children());
    runner_free(r);
    store_close(st);
}
