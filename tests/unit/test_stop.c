/* Stopping a job part way (train.h's TRAIN_CANCEL / TRAIN_SUSPEND): a
 * suspend between two micro-batches of a step checkpoints the last whole
 * step and the resumed run ends bit for bit where a straight run does (the
 * adapter and the logged losses, the log window carried in the checkpoint);
 * a cancel mid-step or during setup stops without applying anything; a
 * generation stops between tokens. And the daemon's records of it: only
 * existing checkpoints are listed, pruned rows go, heartbeats move
 * last_seen. */
#include <jansson.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/buf.h"
#include "daemon/store.h"
#include "kernels/backend.h"
#include "tests/unit/test.h"
#include "worker/commands.h"
#include "worker/generate.h"
#include "worker/model.h"
#include "worker/train.h"

typedef struct stopper {
    int calls, at, how;   /* from call `at` on, answer `how` */
    int64_t ckpt_step;    /* the last checkpoint hook's step, -1 none */
    char last_event[1024];
} stopper;

static int on_cancelled(void *ud) {
    stopper *s = ud;
    return ++s->calls >= s->at && s->at > 0 ? s->how : TRAIN_GO;
}

static void on_checkpoint(void *ud, int64_t step, const char *dir) {
    (void)dir;
    ((stopper *)ud)->ckpt_step = step;
}

static void on_event(void *ud, const char *level, const char *msg) {
    (void)level;
    snprintf(((stopper *)ud)->last_event, sizeof ((stopper *)ud)->last_event, "%s", msg);
}

typedef struct fixture {
    char model[512], data[512];
    jobspec spec;
} fixture;

/* A tiny llama, 64 distinct rows; 8 steps of 4 micro-batches, logged every
 * 3 steps, dropout on (masks from (seed, step)). */
static int fixture_init(fixture *f) {
    lr_err err = {0};
    snprintf(f->model, sizeof f->model, "%s/m", test_tmpdir());
    snprintf(f->data, sizeof f->data, "%s/d.jsonl", test_tmpdir());
    if (access(f->model, F_OK) != 0) {
        char *mk[] = {"mkmodel", "--arch", "llama", "--out", f->model, "--seed", "4", NULL};
        if (cmd_mkmodel(7, mk)) return -1;
        lr_buf b;
        lr_buf_init(&b, 1 << 20);
        for (int i = 0; i < 64; i++)
            if (lr_buf_printf(&b, "{\"prompt\":\"add %d and %d\",\"completion\":\"%d is the sum\"}\n", i, 2 * i, 3 * i))
                return -1;
        int rc = lr_write_file_atomic(f->data, b.data, b.len, &err);
        lr_buf_free(&b);
        if (rc) return -1;
    }
    const char *text = "{\"model\":\"m\",\"training_file\":\"d.jsonl\",\"hyperparameters\":{\"max_steps\":8,"
                       "\"batch_size\":2,\"grad_accum\":4,\"max_seq_len\":64,\"val_ratio\":0,\"logging_steps\":3,"
                       "\"eval_steps\":0,\"save_steps\":0,\"seed\":5},\"lora\":{\"r\":2,\"alpha\":4,\"dropout\":0.1}}";
    json_t *j = json_loads(text, 0, NULL);
    int rc = jobspec_from_json(j, &f->spec, &err);
    json_decref(j);
    if (rc) printf("    spec: %s\n", err.msg);
    return rc;
}

static int run(fixture *f, const char *run_dir, int resume, stopper *s, train_outcome *oc) {
    train_paths p = {.model_dir = f->model, .training_files = {f->data}, .run_dir = run_dir};
    train_opts o = {"cpu", 1, resume, NULL};
    train_hooks h = {.ud = s, .cancelled = on_cancelled, .checkpoint = on_checkpoint, .event = on_event};
    lr_err err = {0};
    s->ckpt_step = -1;
    int rc = train_run(&f->spec, &p, &o, &h, oc, &err);
    if (rc) printf("    train_run: %s\n", err.msg);
    return rc;
}

static char *slurp(const char *dir, const char *name, size_t *len) {
    char p[1024];
    char *text = NULL;
    lr_err err = {0};
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return lr_read_file(p, 1 << 24, &text, len, &err) ? NULL : text;
}

/* The (step, loss) rows of train_log.json: tokens_per_s is wall time. */
static json_t *losses(const char *dir) {
    size_t len;
    char *t = slurp(dir, "train_log.json", &len);
    json_t *a = t ? json_loadb(t, len, 0, NULL) : NULL, *out = json_array(), *r;
    size_t i;
    free(t);
    json_array_foreach(a, i, r) json_array_append_new(out, json_pack("[O,O]", json_object_get(r, "step"),
                                                                     json_object_get(r, "loss")));
    json_decref(a);
    return out;
}

/* Calls of cancelled(): 3 during setup, then per step one before each
 * micro-batch after the first (3) and one at its end. */
#define CALL_MID(step0, k) (3 + 4 * (step0) + (k))

TEST(suspend_mid_step_resumes_bit_for_bit) {
    fixture f;
    REQUIRE(fixture_init(&f) == 0);
    char a[600], b[600];
    snprintf(a, sizeof a, "%s/straight", test_tmpdir());
    snprintf(b, sizeof b, "%s/stopped", test_tmpdir());
    stopper s = {0};
    train_outcome oc;
    REQUIRE(run(&f, a, 0, &s, &oc) == 0 && oc == TRAIN_DONE);
    /* between micro-batches 2 and 3 of the 6th step: step 5 is the last whole one */
    stopper t = {.at = CALL_MID(5, 2), .how = TRAIN_SUSPEND};
    REQUIRE(run(&f, b, 0, &t, &oc) == 0);
    CHECK_EQ_INT(oc, TRAIN_CANCELLED);
    CHECK_EQ_INT(t.ckpt_step, 5);
    CHECK_STR(t.last_event, "stopped after step 5 with a checkpoint there, to resume from it");
    char ck[700];
    snprintf(ck, sizeof ck, "%s/checkpoints/checkpoint-5/DONE", b);
    CHECK(access(ck, F_OK) == 0);
    stopper go = {0};
    REQUIRE(run(&f, b, 1, &go, &oc) == 0 && oc == TRAIN_DONE);
    size_t la, lb;
    char *wa = slurp(a, "adapter_model.safetensors", &la), *wb = slurp(b, "adapter_model.safetensors", &lb);
    CHECK(wa && wb && la == lb && !memcmp(wa, wb, la));
    free(wa);
    free(wb);
    json_t *ea = losses(a), *eb = losses(b);
    CHECK_EQ_INT(json_array_size(ea), 3); /* steps 3, 6, 8 */
    CHECKF(json_equal(ea, eb), "the logged losses differ from the straight run's");
    json_decref(ea);
    json_decref(eb);
}

TEST(suspend_at_a_step_end_and_before_the_first_step) {
    fixture f;
    REQUIRE(fixture_init(&f) == 0);
    char d[600];
    snprintf(d, sizeof d, "%s/end", test_tmpdir());
    stopper t = {.at = CALL_MID(2, 4), .how = TRAIN_SUSPEND}; /* the check after step 3 */
    train_outcome oc;
    REQUIRE(run(&f, d, 0, &t, &oc) == 0);
    CHECK_EQ_INT(oc, TRAIN_CANCELLED);
    CHECK_EQ_INT(t.ckpt_step, 3);
    snprintf(d, sizeof d, "%s/first", test_tmpdir());
    stopper u = {.at = CALL_MID(0, 1), .how = TRAIN_SUSPEND};
    REQUIRE(run(&f, d, 0, &u, &oc) == 0);
    CHECK_EQ_INT(oc, TRAIN_CANCELLED);
    CHECK_EQ_INT(u.ckpt_step, -1); /* nothing trained: nothing to save */
    CHECK_STR(u.last_event, "stopped before the first step ended; the job starts again when resumed");
}

TEST(cancel_mid_step_and_during_setup) {
    fixture f;
    REQUIRE(fixture_init(&f) == 0);
    char d[600];
    snprintf(d, sizeof d, "%s/cancel", test_tmpdir());
    stopper t = {.at = CALL_MID(2, 1), .how = TRAIN_CANCEL};
    train_outcome oc;
    REQUIRE(run(&f, d, 0, &t, &oc) == 0);
    CHECK_EQ_INT(oc, TRAIN_CANCELLED);
    CHECK_EQ_INT(t.ckpt_step, -1);
    CHECK_STR(t.last_event, "cancelled during step 3 (not applied)");
    snprintf(d, sizeof d, "%s/setup", test_tmpdir());
    stopper u = {.at = 1, .how = TRAIN_CANCEL};
    REQUIRE(run(&f, d, 0, &u, &oc) == 0);
    CHECK_EQ_INT(oc, TRAIN_CANCELLED);
    CHECK_EQ_INT(u.calls, 1);
    CHECK_STR(u.last_event, "stopped while loading the model and data, before training");
}

TEST(generation_stops_between_tokens) {
    fixture f;
    REQUIRE(fixture_init(&f) == 0);
    lr_err err = {0};
    kb_backend *be = NULL;
    model *m = NULL;
    model_kv *kv = NULL;
    REQUIRE(kb_cpu_create(1, &be, &err) == 0 && model_load(f.model, be, &m, &err) == 0);
    REQUIRE(model_kv_new(m, 200, &kv, &err) == 0);
    int32_t prompt[4] = {5, 6, 7, 8};
    gen_opts o;
    gen_opts_init(&o);
    o.max_new_tokens = 150;
    stopper s = {.at = 3, .how = 1};
    o.cancelled = on_cancelled;
    o.cancel_ud = &s;
    gen_result g;
    REQUIRE(gen_run(kv, NULL, prompt, 4, &o, &g, &err) == 0);
    CHECK_EQ_INT(g.n, 3);
    CHECK_EQ_INT(g.stop, GEN_STOP_CANCELLED);
    CHECK_STR(gen_stop_name(g.stop), "cancelled");
    gen_result_free(&g);
    model_kv_free(kv);
    model_free(m);
    kb_destroy(be);
}

TEST(store_lists_existing_checkpoints_and_heartbeats) {
    char path[600], dir[3][700];
    snprintf(path, sizeof path, "%s/stop.db", test_tmpdir());
    store *st = NULL;
    lr_err e = {0};
    int applied;
    REQUIRE(store_open(path, &st, &e) == 0);
    REQUIRE(store_migrate(st, "migrations", &applied, &e) == 0);
    store_job_new j = {.id = "ftjob-1", .name = "", .user = "u", .model = "m", .device = "any",
                       .spec_json = "{}", .max_retries = 1};
    REQUIRE(store_job_insert(st, &j, &e) == 0);
    for (int i = 0; i < 3; i++) {
        snprintf(dir[i], sizeof dir[i], "%s/ck/checkpoint-%d", test_tmpdir(), 2 * (i + 1));
        REQUIRE(lr_mkdirs(dir[i], &e) == 0);
        REQUIRE(store_checkpoint_add(st, "ftjob-1", 2 * (i + 1), dir[i], &e) == 0);
        char done[sizeof dir + 8];
        snprintf(done, sizeof done, "%s/DONE", dir[i]);
        if (i) REQUIRE(lr_write_file_atomic(done, "", 0, &e) == 0); /* checkpoint-2 never completed */
    }
    json_t *l = store_checkpoints_list(st, "ftjob-1", &e);
    REQUIRE(l);
    json_t *d = json_object_get(l, "data");
    CHECK_EQ_INT(json_array_size(d), 2);
    CHECK_EQ_INT(json_integer_value(json_object_get(json_array_get(d, 0), "step")), 4);
    CHECK_STR(json_string_value(json_object_get(json_array_get(d, 1), "name")), "checkpoint-6");
    json_decref(l);
    char done[sizeof dir + 8];
    snprintf(done, sizeof done, "%s/DONE", dir[1]);
    REQUIRE(unlink(done) == 0); /* rotated away by the worker */
    REQUIRE(store_checkpoints_prune(st, "ftjob-1", &e) == 0);
    json_t *job = store_job_get(st, "ftjob-1", &e);
    CHECK_EQ_INT(json_integer_value(json_object_get(job, "last_checkpoint_step")), 6);
    json_decref(job);
    char *spec = NULL, model[64];
    int64_t last = 0;
    REQUIRE(store_job_for_assign(st, "ftjob-1", &spec, model, sizeof model, &last, &e) == 0);
    CHECK_EQ_INT(last, 6);
    free(spec);
    l = store_checkpoints_list(st, "ftjob-1", &e);
    CHECK_EQ_INT(json_array_size(json_object_get(l, "data")), 1);
    json_decref(l);

    store_worker w = {.name = "w0", .backend = "cpu", .device = "x", .status = "idle", .threads = 3};
    REQUIRE(store_worker_set(st, &w, &e) == 0);
    REQUIRE(store_worker_seen(st, "w0", 1e9 + 0.5, &e) == 0);
    l = store_workers_list(st, &e);
    json_t *o = json_array_get(json_object_get(l, "data"), 0);
    CHECK_NEAR(json_real_value(json_object_get(o, "last_seen")), 1e9 + 0.5, 1e-6);
    CHECK_EQ_INT(json_integer_value(json_object_get(o, "threads")), 3);
    json_decref(l);
    store_close(st);
}
