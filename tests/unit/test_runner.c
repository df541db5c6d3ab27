/* runner against a fake lora-worker, a shell script. Its generation side
 * speaks `lora-worker serve`'s protocol (worker/cmd_serve.c: a hello, then
 * per request line optional {"id","delta"} lines and one final object or an
 * error object); what it answers is the mode written to <script>.mode,
 * read per request, so one server can change behaviour between requests.
 * Each server it starts appends its pid to <script>.pids; its stderr goes
 * to <script>.log. Checked: results parsed (a NUL survives) and the
 * request's fields, servers kept and reused, streamed pieces, the typed
 * error passed on (class from the object, never from words), a server that
 * dies restarted, the deadline (server killed, a fresh one next), the
 * line cap, the cap on generations at once, runner_stop, no child left
 * unreaped, and merges (one-shot `lora-worker merge`) that register a model
 * or clean up; a full_sft run's folder as the tuned side and registered as
 * a copy. */
#include "tests/unit/test.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/buf.h"
#include "daemon/runner.h"
#include "daemon/store.h"

/* field reads a value with sed, enough for the flat request lines runner.c
 * writes (no nested objects; paths without quotes or commas). */
static const char FAKE[] =
    "#!/bin/sh\n"
    "say() { printf '%s\\n' \"$1\"; }\n"
    "field() { printf '%s\\n' \"$rq\" | sed -n \"s/.*\\\"$1\\\":\\\"\\{0,1\\}\\([^\\\",}]*\\).*/\\1/p\"; }\n"
    "cmd=$1; shift\n"
    "if [ \"$cmd\" = serve ]; then\n"
    "  exec 2>>\"$0.log\"\n"
    "  echo $$ >>\"$0.pids\"\n"
    "  say '{\"serve\":{\"backend\":\"cpu\",\"max_bytes\":1}}'\n"
    "  seen=\n"
    "  while IFS= read -r rq; do\n"
    "    id=$(field id); model=$(field model); adapter=$(field adapter)\n"
    "    case \" $seen \" in\n"
    "    *\" $model:$adapter \"*) loaded=0;;\n"
    "    *) loaded=1; seen=\"$seen $model:$adapter\";;\n"
    "    esac\n"
    "    h=\"{\\\"id\\\":$id\"\n"
    "    fin=\",\\\"stop\\\":\\\"length\\\",\\\"prompt_tokens\\\":3,\\\"loaded\\\":$loaded}\"\n"
    "    err=\"$h,\\\"error\\\":{\\\"code\\\"\"\n"
    "    mode=$(cat \"$0.mode\")\n"
    "    case $mode in\n"
    "    ok|once) [ -n \"$adapter\" ] && t=tuned || t=base\n"
    "      case $rq in *'\"stream\":true'*)\n"
    "        say \"$h,\\\"delta\\\":\\\"${t%??}\\\"}\"\n"
    "        say '{\"id\":0,\"delta\":\"not this one\"}'\n"
    "        say \"$h,\\\"delta\\\":\\\"${t#\"${t%??}\"}\\\\u0000!\\\"}\";;\n"
    "      esac\n"
    "      say \"$h,\\\"text\\\":\\\"$t\\\\u0000!\\\",\\\"tokens\\\":2$fin\"\n"
    "      [ $mode = once ] && exit 0;;\n"
    "    echo) say \"$h,\\\"text\\\":\\\"$(printf '%s' \"$rq\" | sed 's/[\\\\\"]/\\\\&/g')\\\"$fin\";;\n"
    "    slow) exec sleep 30;;\n"
    "    flood) exec tr '\\0' x </dev/zero;;\n"
    "    chatter) exec yes \"$h,\\\"delta\\\":\\\"x\\\"}\";;\n"
    "    long) say \"$err:\\\"invalid\\\",\\\"param\\\":\\\"prompt\\\",\\\"message\\\":\\\"prompt: the\\\n"
    " prompt has 99 tokens; the model takes at most 10\\\"}}\";;\n"
    "    badmodel) say \"$err:\\\"invalid\\\",\\\"param\\\":\\\"model\\\",\\\"message\\\":\\\"config.json:\\\n"
    " no such architecture\\\"}}\";;\n"
    "    oom) say \"$err:\\\"out_of_memory\\\",\\\"param\\\":null,\\\"message\\\":\\\"out of memory\\\"}}\";;\n"
    "    words) say \"$h,\\\"error\\\":\\\"prompt: the prompt has 99 tokens; the model takes at\\\n"
    " most 10\\\"}\";;\n"
    "    boom) echo 'serve: model: no such file' >&2; exit 3;;\n"
    "    esac\n"
    "  done\n"
    "  exit 0\n"
    "fi\n"
    "out=; model=\n"
    "while [ $# -gt 0 ]; do\n"
    "  case $1 in --out) out=$2;; --model) model=$2;; esac; shift\n"
    "done\n"
    "case $(cat \"$0.mode\") in\n"
    "merge) mkdir -p \"$out\" && cp \"$model\"/* \"$out\"/;;\n"
    "mergefail) mkdir -p \"$out\" && echo partial >\"$out\"/x &&\n"
    "  echo 'lora-worker merge: adapter: ...' >&2 && m='adapter: no adapter_config.json' &&\n"
    "  c='\"not_found\",\"param\":null' && say \"{\\\"error\\\":{\\\"code\\\":$c,\\\"message\\\":\\\"$m\\\"}}\"\n"
    "  exit 2;;\n"
    "esac\n";

static char g_bin[1024], g_data[1024], g_db[1100];

static void fake_mode(const char *mode) {
    char p[1100];
    lr_err e = {0};
    snprintf(p, sizeof p, "%s.mode", g_bin);
    if (lr_write_file_atomic(p, mode, strlen(mode), &e)) test_fail(__FILE__, __LINE__, "%s", e.msg);
}

static runner *make_runner(int max_gen, int timeout_s) {
    lr_err e = {0};
    /* as lorad does: a server that died is an EPIPE on write, not a signal */
    signal(SIGPIPE, SIG_IGN);
    snprintf(g_bin, sizeof g_bin, "%s/fake-worker", test_tmpdir());
    snprintf(g_data, sizeof g_data, "%s/data", test_tmpdir());
    snprintf(g_db, sizeof g_db, "%s/lorad.db", g_data);
    if (lr_write_file_atomic(g_bin, FAKE, sizeof FAKE - 1, &e) || chmod(g_bin, 0755) || lr_mkdirs(g_data, &e))
        return NULL;
    fake_mode("ok");
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

/* The pid of the last server the fake started; 0 when none. */
static pid_t last_server(void) {
    char p[1100], *s = NULL;
    size_t n = 0;
    lr_err e = {0};
    snprintf(p, sizeof p, "%s.pids", g_bin);
    if (lr_read_file(p, 1 << 16, &s, &n, &e)) return 0;
    while (n && s[n - 1] == '\n') n--;
    const char *at = s;
    for (size_t i = 0; i < n; i++)
        if (s[i] == '\n') at = s + i + 1;
    pid_t pid = (pid_t)strtol(at, NULL, 10);
    free(s);
    return pid;
}

/* Killed and reaped: a zombie would still take kill(pid, 0). */
static int gone(pid_t pid) { return pid > 0 && kill(pid, 0) < 0 && errno == ESRCH; }

static runner_gen_stats stats(runner *r) {
    runner_gen_stats st;
    runner_stats(r, &st);
    return st;
}

static const char *side_text(const json_t *o, const char *side) {
    return json_string_value(json_object_get(json_object_get(o, side), "text"));
}

TEST(generate_base_and_tuned) {
    runner *r = make_runner(2, 10);
    REQUIRE(r);
    json_t *o = NULL;
    lr_err e = {0};
    REQUIRE(runner_generate(r, &GEN, &o, &e) == 0);
    json_t *b = json_object_get(o, "base"), *t = json_object_get(o, "tuned");
    CHECK_EQ_INT(json_string_length(json_object_get(b, "text")), 6); /* "base\0!": a NUL survives */
    CHECK(!memcmp(json_string_value(json_object_get(b, "text")), "base\0!", 6));
    CHECK_EQ_INT(json_string_length(json_object_get(t, "text")), 7);
    CHECK(!memcmp(json_string_value(json_object_get(t, "text")), "tuned\0!", 7));
    CHECK_EQ_INT(json_integer_value(json_object_get(b, "tokens")), 2);
    CHECK_STR(json_string_value(json_object_get(t, "stop")), "length");
    CHECK_EQ_INT(json_integer_value(json_object_get(o, "prompt_tokens")), 3);
    CHECK(json_real_value(json_object_get(o, "seconds")) >= 0);
    json_decref(o);
    /* One server answered both sides and is kept: the second generation
     * starts nothing and loads nothing. */
    CHECK_EQ_INT(stats(r).server_starts, 1);
    CHECK_EQ_INT(stats(r).model_loads, 2);
    pid_t pid = last_server();
    CHECK(pid > 0 && !gone(pid));
    REQUIRE(runner_generate(r, &GEN, &o, &e) == 0);
    CHECK_STR(side_text(o, "tuned"), "tuned");
    json_decref(o);
    CHECK_EQ_INT(stats(r).server_starts, 1);
    CHECK_EQ_INT(stats(r).model_loads, 2);
    CHECK_EQ_INT(stats(r).running, 0);
    runner_free(r);
    CHECK(gone(pid));
    CHECK(no_children());
}

/* The request line carries the generation's options; the tuned side adds
 * the adapter. */
TEST(requests_carry_the_options) {
    runner *r = make_runner(2, 10);
    REQUIRE(r);
    fake_mode("echo");
    json_t *o = NULL;
    lr_err e = {0};
    REQUIRE(runner_generate(r, &GEN, &o, &e) == 0);
    json_t *b = json_loads(side_text(o, "base"), 0, NULL), *t = json_loads(side_text(o, "tuned"), 0, NULL);
    REQUIRE(json_is_object(b) && json_is_object(t));
    CHECK_STR(json_string_value(json_object_get(b, "model")), "/m");
    CHECK(!json_object_get(b, "adapter"));
    CHECK_STR(json_string_value(json_object_get(t, "model")), "/m");
    CHECK_STR(json_string_value(json_object_get(t, "adapter")), "/a");
    CHECK_STR(json_string_value(json_object_get(b, "prompt")), "hi");
    CHECK_STR(json_string_value(json_object_get(b, "system")), "be brief");
    CHECK_STR(json_string_value(json_object_get(b, "template")), "auto");
    CHECK_EQ_INT(json_integer_value(json_object_get(b, "max_new_tokens")), 8);
    CHECK_STR(json_string_value(json_array_get(json_object_get(t, "stop"), 0)), "--json");
    CHECK_EQ_INT(json_array_size(json_object_get(t, "stop")), 1);
    CHECK(json_is_false(json_object_get(b, "stream")));
    CHECK(json_integer_value(json_object_get(t, "id")) > json_integer_value(json_object_get(b, "id")));
    json_decref(b);
    json_decref(t);
    json_decref(o);
    runner_free(r);
    CHECK(no_children());
}

TEST(generate_failures_carry_the_workers_words) {
    runner *r = make_runner(2, 10);
    REQUIRE(r);
    json_t *o = NULL;
    lr_err e = {0};
    fake_mode("long");
    CHECK(runner_generate(r, &GEN, &o, &e) == -1 && !o);
    CHECK_EQ_INT(e.code, LR_E_INVALID);
    CHECKF(strstr(e.msg, "the model takes at most 10"), "%s", e.msg);
    /* A server that dies on a request is restarted and asked once more;
     * the second dies too. */
    lr_err_clear(&e);
    fake_mode("boom");
    unsigned long long n0 = stats(r).server_starts;
    CHECK(runner_generate(r, &GEN, &o, &e) == -1);
    CHECK_EQ_INT(e.code, LR_E_INTERNAL);
    CHECK_STR(e.msg, "generation with the base model: the generation server exited with status 3");
    CHECK_EQ_INT(stats(r).server_starts, n0 + 1);
    CHECK(gone(last_server()));
    /* One line without end: the line cap stops the server long before the
     * deadline; the next request gets a fresh one. */
    lr_err_clear(&e);
    fake_mode("flood");
    double t0 = now_s();
    CHECK(runner_generate(r, &GEN, &o, &e) == -1);
    CHECK_EQ_INT(e.code, LR_E_INTERNAL);
    CHECKF(strstr(e.msg, "wrote a line over 1048576 bytes"), "%s", e.msg);
    CHECKF(now_s() - t0 < 5, "took %.2f s", now_s() - t0);
    CHECK(gone(last_server()));
    fake_mode("ok");
    n0 = stats(r).server_starts;
    REQUIRE(runner_generate(r, &GEN, &o, &e) == 0);
    CHECK_STR(side_text(o, "base"), "base");
    json_decref(o);
    CHECK_EQ_INT(stats(r).server_starts, n0 + 1);
    runner_free(r);
    CHECK(no_children());
}

/* The class of a failed generation comes from the server's error object,
 * never from its words: the prompt refused is the request's fault (400); a
 * model refused, the server's (500); out of memory stays so; an error that
 * is no object is unclassified. None of them ends the server. */
TEST(generate_failures_are_classified_by_the_error_object) {
    runner *r = make_runner(2, 10);
    REQUIRE(r);
    json_t *o = NULL;
    lr_err e = {0};
    fake_mode("long");
    CHECK(runner_generate(r, &GEN, &o, &e) == -1);
    CHECK_EQ_INT(e.code, LR_E_INVALID);
    CHECK_STR(e.param, "prompt");
    CHECK_STR(e.msg, "generation with the base model: prompt: the prompt has 99 tokens; the model takes at most 10");
    lr_err_clear(&e);
    fake_mode("badmodel");
    CHECK(runner_generate(r, &GEN, &o, &e) == -1);
    CHECK_EQ_INT(e.code, LR_E_INTERNAL);
    CHECK(!e.param[0]);
    CHECK_STR(e.msg, "generation with the base model: config.json: no such architecture");
    lr_err_clear(&e);
    fake_mode("oom");
    CHECK(runner_generate(r, &GEN, &o, &e) == -1);
    CHECK_EQ_INT(e.code, LR_E_NOMEM);
    lr_err_clear(&e);
    fake_mode("words");
    CHECK(runner_generate(r, &GEN, &o, &e) == -1);
    CHECK_EQ_INT(e.code, LR_E_INTERNAL);
    CHECK(!e.param[0]);
    CHECKF(strstr(e.msg, "the generation server's answer has no result"), "%s", e.msg);
    CHECK_EQ_INT(stats(r).server_starts, 1);
    runner_free(r);
    CHECK(no_children());
}

TEST(generate_with_a_tuned_model_folder) {
    runner *r = make_runner(2, 10);
    REQUIRE(r);
    fake_mode("echo");
    runner_gen g = GEN;
    g.adapter_dir = NULL;
    g.tuned_model_dir = "/run";
    json_t *o = NULL;
    lr_err e = {0};
    REQUIRE(runner_generate(r, &g, &o, &e) == 0);
    json_t *b = json_loads(side_text(o, "base"), 0, NULL), *t = json_loads(side_text(o, "tuned"), 0, NULL);
    CHECK_STR(json_string_value(json_object_get(b, "model")), "/m");
    CHECK_STR(json_string_value(json_object_get(t, "model")), "/run");
    CHECK(json_is_object(t) && !json_object_get(t, "adapter"));
    json_decref(b);
    json_decref(t);
    json_decref(o);
    fake_mode("boom");
    CHECK(runner_generate(r, &g, &o, &e) == -1);
    runner_free(r);
    CHECK(no_children());
}

/* A server that exited between requests (here after each answer) is
 * started again and the request sent to the new one. */
TEST(a_server_gone_between_requests_is_restarted) {
    runner *r = make_runner(1, 10);
    REQUIRE(r);
    fake_mode("once");
    json_t *o = NULL;
    lr_err e = {0};
    REQUIRE(runner_generate(r, &GEN, &o, &e) == 0);
    CHECK_STR(side_text(o, "base"), "base");
    CHECK_STR(side_text(o, "tuned"), "tuned");
    json_decref(o);
    CHECK_EQ_INT(stats(r).server_starts, 2);
    runner_free(r);
    CHECK(no_children());
}

/* Past the deadline the server is killed, whether silent or chattering
 * (endless delta lines); the next request starts a fresh one. */
TEST(generate_deadline_kills_the_server) {
    runner *r = make_runner(2, 1);
    REQUIRE(r);
    const char *modes[] = {"slow", "chatter"};
    json_t *o = NULL;
    lr_err e = {0};
    for (int i = 0; i < 2; i++) {
        fake_mode(modes[i]);
        double t0 = now_s();
        CHECK(runner_generate(r, &GEN, &o, &e) == -1);
        double dt = now_s() - t0;
        CHECK_EQ_INT(e.code, LR_E_TIMEOUT);
        CHECKF(strstr(e.msg, "time limit of 1 s"), "%s", e.msg);
        CHECKF(dt >= 0.9 && dt < 3, "%s: returned after %.2f s", modes[i], dt);
        CHECKF(gone(last_server()), "%s: the server is still there", modes[i]);
        lr_err_clear(&e);
    }
    fake_mode("ok");
    REQUIRE(runner_generate(r, &GEN, &o, &e) == 0);
    CHECK_STR(side_text(o, "tuned"), "tuned");
    json_decref(o);
    CHECK_EQ_INT(stats(r).server_starts, 3);
    runner_free(r);
    CHECK(no_children());
}

typedef struct slow_call {
    runner *r;
    int rc;
    lr_err err;
    double secs;
} slow_call;

static void *slow_generate(void *p) {
    slow_call *s = p;
    json_t *o = NULL;
    double t0 = now_s();
    s->rc = runner_generate(s->r, &GEN, &o, &s->err);
    s->secs = now_s() - t0;
    json_decref(o);
    return NULL;
}

TEST(generations_at_once_are_capped_and_stop_ends_them) {
    runner *r = make_runner(1, 60);
    REQUIRE(r);
    fake_mode("slow");
    slow_call s = {.r = r};
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, slow_generate, &s) == 0);
    usleep(300000);
    json_t *o = NULL;
    lr_err e = {0};
    CHECK(runner_generate(r, &GEN, &o, &e) == -1);
    CHECK_EQ_INT(e.code, LR_E_BUSY);
    CHECK_EQ_INT(stats(r).running, 1);
    runner_stop(r);
    pthread_join(th, NULL);
    CHECK(s.rc == -1 && s.secs < 2);
    CHECKF(strstr(s.err.msg, "shutting down"), "%s", s.err.msg);
    CHECK(no_children()); /* the one server was killed and reaped */
    lr_err_clear(&e);
    CHECK(runner_generate(r, &GEN, &o, &e) == -1 && e.code == LR_E_BUSY); /* stopped: no new ones */
    runner_free(r);
}

/* Streamed pieces (a line for another request skipped) add up to the final
 * text; a stream left unread is read to its end, so the same server
 * answers the next request right. */
TEST(stream_pieces_add_up_to_the_text) {
    runner *r = make_runner(1, 10);
    REQUIRE(r);
    runner_stream *st = NULL;
    lr_err e = {0};
    REQUIRE(runner_stream_start(r, &GEN, 1, &st, &e) == 0);
    char got[64];
    size_t len = 0;
    int pieces = 0, rc;
    const char *d;
    size_t n;
    json_t *res = NULL;
    while (!(rc = runner_stream_next(st, &d, &n, &res, &e)) && len + n <= sizeof got) {
        memcpy(got + len, d, n);
        len += n;
        pieces++;
    }
    CHECK_EQ_INT(rc, 1);
    CHECK_EQ_INT(pieces, 2);
    CHECK(len == 7 && !memcmp(got, "tuned\0!", 7));
    json_t *text = json_object_get(res, "text");
    CHECK(json_string_length(text) == len && !memcmp(json_string_value(text), got, len));
    CHECK(json_is_true(json_object_get(res, "model_loaded")));
    json_decref(res);
    runner_stream_free(st);
    REQUIRE(runner_stream_start(r, &GEN, 0, &st, &e) == 0);
    runner_stream_free(st);
    CHECK_EQ_INT(stats(r).running, 0);
    json_t *o = NULL;
    REQUIRE(runner_generate_one(r, &GEN, 1, &o, &e) == 0);
    CHECK_EQ_INT(json_string_length(json_object_get(o, "text")), 7);
    CHECK(json_is_false(json_object_get(o, "model_loaded"))); /* the server kept it */
    json_decref(o);
    CHECK_EQ_INT(stats(r).server_starts, 1);
    runner_free(r);
    CHECK(no_children());
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
    fake_mode("merge");
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
    fake_mode("mergefail");
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
    fake_mode("none"); /* no lora-worker runs */
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
