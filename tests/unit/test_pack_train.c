/* Co-training (worker/pack.h, issue 19): jobs that share a base model in
 * one pass compute exactly what they compute alone. Three jobs with
 * different ranks, learning rates, datasets, sequence lengths, grad_accum
 * and step counts, one cancelled halfway, log the same losses and end with
 * the same adapter bytes packed as alone; a packed run stopped after a
 * checkpoint (as a kill leaves it) resumes packed or alone to the straight
 * run's adapter; a job that joins a running pack at a step boundary ends
 * as it does alone. Tiny llama and gpt2 models from mkmodel. */
#include <jansson.h>
#include <stdlib.h>
#include <unistd.h>

#include "common/buf.h"
#include "formats/adapter.h"
#include "formats/hfconfig.h"
#include "kernels/cpu/gemm_select.h"
#include "tests/unit/test.h"
#include "worker/commands.h"
#include "worker/pack.h"
#include "worker/train.h"

#define MAXJ 3
#define MAXLOG 64

/* One job: its spec, paths and what its hooks saw. */
typedef struct job {
    jobspec spec;
    char data[512], run[512];
    train_paths paths;
    train_hooks hooks;
    int calls, stop_at, how; /* cancelled(): from call stop_at on, answer how */
    double loss[MAXLOG], eval[MAXLOG];
    int nloss, neval;
    int ended, failed, expect_fail;
    train_outcome outcome;
} job;

static void on_metric(void *ud, int64_t step, double epoch, const char *name, double v) {
    job *j = ud;
    (void)step, (void)epoch;
    if (!strcmp(name, "loss") && j->nloss < MAXLOG) j->loss[j->nloss++] = v;
    if (!strcmp(name, "eval_loss") && j->neval < MAXLOG) j->eval[j->neval++] = v;
}

static int on_cancelled(void *ud) {
    job *j = ud;
    return ++j->calls >= j->stop_at && j->stop_at > 0 ? j->how : TRAIN_GO;
}

static void on_ended(void *tag, int failed, train_outcome oc, const lr_err *err) {
    job *j = tag;
    if (failed && !j->ended && !j->expect_fail) printf("    job failed: %s\n", err ? err->msg : "?");
    j->ended = 1, j->failed = failed, j->outcome = oc;
}

static int make_model(const char *arch, char *dir, size_t cap) {
    snprintf(dir, cap, "%s/%s", test_tmpdir(), arch);
    if (access(dir, F_OK) == 0) return 0;
    char *mk[] = {"mkmodel", "--arch", (char *)arch, "--out", dir, "--seed", "7", NULL};
    return cmd_mkmodel(7, mk) ? -1 : 0;
}

/* Dataset `which`: rows of its own wording and length. */
static int make_data(int which, char *path, size_t cap) {
    snprintf(path, cap, "%s/d%d.jsonl", test_tmpdir(), which);
    if (access(path, F_OK) == 0) return 0;
    lr_buf b;
    lr_buf_init(&b, 1 << 20);
    lr_err err = {0};
    int rc = 0;
    for (int i = 0; i < 40 && !rc; i++) {
        if (which == 0) rc = lr_buf_printf(&b, "{\"prompt\":\"add %d and %d\",\"completion\":\"%d\"}\n", i, i + 1, 2 * i + 1);
        else if (which == 1)
            rc = lr_buf_printf(&b, "{\"prompt\":\"say the word number %d twice, slowly\",\"completion\":\"%d %d, and %d %d\"}\n", i, i, i, i, i);
        else rc = lr_buf_printf(&b, "{\"text\":\"row %d of the third set: %d squared is %d\"}\n", i, i, i * i);
    }
    if (!rc) rc = lr_write_file_atomic(path, b.data, b.len, &err);
    lr_buf_free(&b);
    return rc ? -1 : 0;
}

/* job i of a case: r, lr, data, steps, accum and seq len differ by i */
static int job_init(job *j, const char *model, int which, const char *extra, const char *run) {
    memset(j, 0, sizeof *j);
    static const char *const hp[] = {
        "\"max_steps\":7,\"batch_size\":2,\"grad_accum\":2,\"max_seq_len\":32,\"learning_rate\":0.002,\"seed\":3",
        "\"max_steps\":5,\"batch_size\":1,\"grad_accum\":3,\"max_seq_len\":48,\"learning_rate\":0.0005,\"seed\":4",
        "\"max_steps\":9,\"batch_size\":3,\"grad_accum\":1,\"max_seq_len\":24,\"learning_rate\":0.001,\"seed\":5"};
    static const char *const lora[] = {"\"r\":2,\"alpha\":4,\"dropout\":0.1", "\"r\":4,\"alpha\":8,\"dropout\":0",
                                       "\"r\":8,\"alpha\":8,\"dropout\":0.05,\"targets\":[\"q_proj\",\"o_proj\"]"};
    if (make_data(which, j->data, sizeof j->data)) return -1;
    char text[2048];
    snprintf(text, sizeof text,
             "{\"model\":\"m\",\"training_file\":\"d.jsonl\",\"hyperparameters\":{%s,\"val_ratio\":0.1,"
             "\"logging_steps\":1,\"eval_steps\":3,\"save_steps\":2%s},\"lora\":{%s}}",
             hp[which], extra, lora[which]);
    json_t *doc = json_loads(text, 0, NULL);
    lr_err err = {0};
    int rc = jobspec_from_json(doc, &j->spec, &err);
    json_decref(doc);
    if (rc) {
        printf("    spec: %s\n", err.msg);
        return -1;
    }
    snprintf(j->run, sizeof j->run, "%s", run);
    j->paths = (train_paths){.model_dir = model, .training_files = {j->data}, .run_dir = j->run};
    j->hooks = (train_hooks){.ud = j, .metric = on_metric, .cancelled = on_cancelled};
    return 0;
}

static int run_alone(job *j, int resume) {
    train_opts o = {"cpu", 1, resume, NULL};
    lr_err err = {0};
    int rc = train_run(&j->spec, &j->paths, &o, &j->hooks, &j->outcome, &err);
    if (rc) printf("    train_run: %s\n", err.msg);
    j->ended = 1;
    return rc;
}

/* Runs jobs js[0..n) in one pack; job i joins before pack step join[i]
 * (0: at the start). With kill_after > 0 the pack is dropped after that
 * many steps, as a killed worker leaves its run directories. */
static int run_packed(job **js, int n, const int *join, int resume, int kill_after) {
    train_opts o = {"cpu", 1, 0, NULL};
    lr_err err = {0};
    pack *p;
    if (pack_new(&o, MAXJ, &p, &err)) {
        printf("    pack_new: %s\n", err.msg);
        return -1;
    }
    int rc = 0, added = 0;
    for (int step = 0; !rc; step++) {
        for (int i = 0; i < n; i++)
            if ((join ? join[i] : 0) == step && pack_add(p, &js[i]->spec, &js[i]->paths, &js[i]->hooks, resume, on_ended, js[i], &err)) {
                printf("    pack_add: %s\n", err.msg);
                rc = -1;
            }
        for (int i = 0; i < n; i++) added += (join ? join[i] : 0) == step;
        if (rc || (pack_jobs(p) == 0 && added == n)) break;
        if (kill_after > 0 && step == kill_after) break;
        if (pack_step(p, &err)) {
            printf("    pack_step: %s\n", err.msg);
            rc = -1;
        }
    }
    if (kill_after > 0) {
        /* what kill -9 leaves is the run directories: pack_free's ending of
         * the jobs must not matter, so mark them ended before */
        for (int i = 0; i < n; i++) js[i]->ended = 1;
    }
    pack_free(p);
    return rc;
}

static char *slurp(const char *path, size_t *len) {
    char *t = NULL;
    lr_err err = {0};
    return lr_read_file(path, 1 << 26, &t, len, &err) ? NULL : t;
}

/* Bit for bit needs a GEMM that computes a row the same whatever rows
 * surround it: the reference kernel does; OpenBLAS's Haswell sgemm does
 * not (a row's sums change in the last bits with the row count), so with
 * it the packed results match to float rounding (the 1e-6 below). */
static int use_kernel(const char *name) {
    lr_err err = {0};
    if (kg_use(name, &err)) printf("    kg_use(%s): %s\n", name, err.msg);
    return err.msg[0] ? -1 : 0;
}

#define REL 1e-6

static double rel(double a, double b) { return fabs(a - b) / (fabs(a) > 1e-30 ? fabs(a) : 1e-30); }

/* The largest relative difference of two adapters' tensors (each
 * tensor's ||a - b|| / ||a||); 1 when they cannot be compared. */
static double adapter_diff(const char *da, const char *db) {
    adapter *a = NULL, *b = NULL;
    lr_err err = {0};
    double worst = 1;
    if (adapter_load(da, &a, &err) || adapter_load(db, &b, &err) || a->n_tensors != b->n_tensors) {
        printf("    adapters %s, %s: %s\n", da, db, err.msg[0] ? err.msg : "different tensors");
        goto done;
    }
    worst = 0;
    for (int i = 0; i < a->n_tensors; i++) {
        const adapter_tensor *x = &a->t[i], *y = &b->t[i];
        if (strcmp(x->key, y->key) || x->rows != y->rows || x->cols != y->cols) {
            worst = 1;
            break;
        }
        double dd = 0, aa = 0;
        for (size_t k = 0; k < (size_t)x->rows * x->cols; k++) {
            double d = (double)x->data[k] - y->data[k];
            dd += d * d;
            aa += (double)x->data[k] * x->data[k];
        }
        double r = aa > 0 ? sqrt(dd / aa) : sqrt(dd);
        worst = r > worst ? r : worst;
    }
done:
    adapter_free(a);
    adapter_free(b);
    return worst;
}

/* 1 when the two files have the same bytes. */
static int same_file(const char *a, const char *b) {
    size_t la = 0, lb = 0;
    char *x = slurp(a, &la), *y = slurp(b, &lb);
    int same = x && y && la == lb && !memcmp(x, y, la);
    if (!x || !y) printf("    missing: %s\n", x ? b : a);
    free(x);
    free(y);
    return same;
}

/* exact: the same bytes; otherwise within REL. *worst gets the largest
 * relative difference seen. */
static int same_adapter(const char *run_a, const char *run_b, const char *sub, int exact, double *worst) {
    char a[1200], b[1200];
    snprintf(a, sizeof a, "%s/%s", run_a, sub);
    snprintf(b, sizeof b, "%s/%s", run_b, sub);
    double d = adapter_diff(a, b);
    if (worst && d > *worst) *worst = d;
    if (!exact) return d <= REL;
    snprintf(a, sizeof a, "%s/%sadapter_model.safetensors", run_a, sub);
    snprintf(b, sizeof b, "%s/%sadapter_model.safetensors", run_b, sub);
    return same_file(a, b);
}

static int same_losses(const job *a, const job *b, int exact, double *worst) {
    if (a->nloss != b->nloss || a->neval != b->neval) {
        printf("    %d/%d losses vs %d/%d\n", a->nloss, a->neval, b->nloss, b->neval);
        return 0;
    }
    int ok = 1;
    for (int i = 0; i < a->nloss + a->neval; i++) {
        double x = i < a->nloss ? a->loss[i] : a->eval[i - a->nloss];
        double y = i < a->nloss ? b->loss[i] : b->eval[i - a->nloss];
        double d = rel(x, y);
        if (worst && d > *worst) *worst = d;
        if (exact ? x != y : d > REL) {
            printf("    loss %d: %.17g vs %.17g\n", i, x, y);
            ok = 0;
        }
    }
    return ok;
}

static void dir_of(char *out, size_t cap, const char *what, int i) {
    snprintf(out, cap, "%s/%s%d", test_tmpdir(), what, i);
}

/* Calls of cancelled() before step s's end (setup 3, then per step one
 * between micro-batches and one at its end): halfway through job 1 (5
 * steps of 3 micro-batches), between micro-batches 1 and 2 of step 3. */
#define CANCEL_AT (3 + 3 * 2 + 2)

/* The acceptance test: 3 jobs, one cancelled halfway, packed vs alone.
 * exact: compare bytes (with a row-invariant GEMM); else within REL. */
static void three_jobs(const char *tag, int exact) {
    char model[512], run[600], what[64];
    REQUIRE(make_model("llama", model, sizeof model) == 0);
    job alone[MAXJ], packed[MAXJ];
    job *pj[MAXJ];
    for (int i = 0; i < MAXJ; i++) {
        snprintf(what, sizeof what, "%s-alone", tag);
        dir_of(run, sizeof run, what, i);
        REQUIRE(job_init(&alone[i], model, i, "", run) == 0);
        snprintf(what, sizeof what, "%s-packed", tag);
        dir_of(run, sizeof run, what, i);
        REQUIRE(job_init(&packed[i], model, i, "", run) == 0);
        pj[i] = &packed[i];
    }
    alone[1].stop_at = packed[1].stop_at = CANCEL_AT;
    alone[1].how = packed[1].how = TRAIN_CANCEL;
    for (int i = 0; i < MAXJ; i++) REQUIRE(run_alone(&alone[i], 0) == 0);
    REQUIRE(run_packed(pj, MAXJ, NULL, 0, 0) == 0);
    double wl = 0, wa = 0;
    for (int i = 0; i < MAXJ; i++) {
        CHECK(packed[i].ended && !packed[i].failed);
        CHECK_EQ_INT(packed[i].outcome, alone[i].outcome);
        CHECKF(same_losses(&alone[i], &packed[i], exact, &wl), "job %d: packed losses differ from alone", i);
    }
    CHECK_EQ_INT(alone[1].outcome, TRAIN_CANCELLED);
    CHECK_EQ_INT(alone[0].nloss, 7);
    CHECK_EQ_INT(alone[2].nloss, 9);
    CHECK_EQ_INT(alone[1].nloss, 2); /* steps 1 and 2; step 3 was abandoned */
    CHECKF(same_adapter(alone[0].run, packed[0].run, "", exact, &wa), "job 0: adapters differ");
    CHECKF(same_adapter(alone[2].run, packed[2].run, "", exact, &wa), "job 2: adapters differ");
    /* the cancelled job has no final adapter; its checkpoint at step 2 */
    CHECKF(same_adapter(alone[1].run, packed[1].run, "checkpoints/checkpoint-2/", exact, &wa),
           "job 1: checkpoints differ");
    printf("    %s: largest relative difference packed vs alone: losses %.3g, adapters %.3g%s\n", kg_current()->name,
           wl, wa, wl == 0 && wa == 0 ? " (bit for bit)" : "");
}

TEST(packed_equals_alone_bit_for_bit_on_a_row_invariant_gemm) {
    REQUIRE(use_kernel("reference") == 0);
    three_jobs("ref", 1);
    REQUIRE(use_kernel("auto") == 0);
}

TEST(packed_equals_alone_to_1e6_on_the_default_gemm) {
    REQUIRE(use_kernel("auto") == 0);
    three_jobs("auto", 0);
}

TEST(packed_run_killed_resumes_packed_or_alone) {
    char model[512], run[600];
    REQUIRE(use_kernel("reference") == 0);
    REQUIRE(make_model("llama", model, sizeof model) == 0);
    job ref[2], kill[2], again[2];
    job *pk[2] = {&kill[0], &kill[1]}, *pa[2] = {&again[0], &again[1]};
    for (int i = 0; i < 2; i++) {
        dir_of(run, sizeof run, "ref", i);
        REQUIRE(job_init(&ref[i], model, i == 0 ? 0 : 2, "", run) == 0);
        REQUIRE(run_alone(&ref[i], 0) == 0);
        dir_of(run, sizeof run, "kill", i);
        REQUIRE(job_init(&kill[i], model, i == 0 ? 0 : 2, "", run) == 0);
    }
    /* 5 pack steps: both have checkpoints at steps 2 and 4 */
    REQUIRE(run_packed(pk, 2, NULL, 0, 5) == 0);
    /* copies of the run directories: resumed packed, and each alone */
    char cmd[4000];
    for (int i = 0; i < 2; i++) {
        snprintf(cmd, sizeof cmd, "cp -r %s %s.alone", kill[i].run, kill[i].run);
        REQUIRE(system(cmd) == 0);
    }
    for (int i = 0; i < 2; i++) REQUIRE(job_init(&again[i], model, i == 0 ? 0 : 2, "", kill[i].run) == 0);
    REQUIRE(run_packed(pa, 2, NULL, 1, 0) == 0);
    for (int i = 0; i < 2; i++) {
        CHECK(again[i].ended && !again[i].failed && again[i].outcome == TRAIN_DONE);
        CHECKF(same_adapter(ref[i].run, again[i].run, "", 1, NULL), "job %d resumed packed: adapter differs", i);
        job solo;
        snprintf(run, sizeof run, "%s.alone", kill[i].run);
        REQUIRE(job_init(&solo, model, i == 0 ? 0 : 2, "", run) == 0);
        REQUIRE(run_alone(&solo, 1) == 0);
        CHECKF(same_adapter(ref[i].run, solo.run, "", 1, NULL), "job %d resumed alone: adapter differs", i);
    }
    REQUIRE(use_kernel("auto") == 0);
}

TEST(job_joins_a_running_pack_at_a_step_boundary) {
    char model[512], run[600];
    REQUIRE(use_kernel("reference") == 0);
    REQUIRE(make_model("gpt2", model, sizeof model) == 0);
    job alone[2], packed[2];
    job *pj[2] = {&packed[0], &packed[1]};
    for (int i = 0; i < 2; i++) {
        dir_of(run, sizeof run, "jalone", i);
        REQUIRE(job_init(&alone[i], model, i, "", run) == 0);
        REQUIRE(run_alone(&alone[i], 0) == 0);
        dir_of(run, sizeof run, "jpacked", i);
        REQUIRE(job_init(&packed[i], model, i, "", run) == 0);
    }
    int join[2] = {0, 3}; /* job 1 joins after the pack's third step */
    REQUIRE(run_packed(pj, 2, join, 0, 0) == 0);
    for (int i = 0; i < 2; i++) {
        CHECK(packed[i].ended && !packed[i].failed && packed[i].outcome == TRAIN_DONE);
        CHECKF(same_losses(&alone[i], &packed[i], 1, NULL), "job %d: packed losses differ from alone", i);
        CHECKF(same_adapter(alone[i].run, packed[i].run, "", 1, NULL), "job %d: adapters differ", i);
    }
    REQUIRE(use_kernel("auto") == 0);
}

TEST(pack_refuses_what_cannot_share_a_pass) {
    char model[512], run[600];
    REQUIRE(make_model("llama", model, sizeof model) == 0);
    job a, b;
    dir_of(run, sizeof run, "refuse", 0);
    REQUIRE(job_init(&a, model, 0, "", run) == 0);
    REQUIRE(job_init(&b, model, 1, "", run) == 0);
    b.spec.lora.use_dora = 1;
    train_opts o = {"cpu", 1, 0, NULL};
    lr_err err = {0};
    pack *p;
    REQUIRE(pack_new(&o, 1, &p, &err) == 0);
    CHECK(pack_add(p, &b.spec, &b.paths, &b.hooks, 0, on_ended, &b, &err) == -1 && !b.ended);
    CHECK(pack_add(p, &a.spec, &a.paths, &a.hooks, 0, on_ended, &a, &err) == 0 && !a.ended);
    CHECK(pack_add(p, &a.spec, &a.paths, &a.hooks, 0, on_ended, &a, &err) == -1 && err.code == LR_E_BUSY);
    a.expect_fail = 1; /* closing the pack ends it */
    pack_free(p);
    CHECK(a.ended && a.failed);
    /* both backends have the co-training ops; an unknown name is refused by name */
    CHECK(pack_supported("cpu", NULL) == 0 && pack_supported("cuda:0", NULL) == 0);
    CHECK(pack_supported("tpu", &err) == -1 && strstr(err.msg, "tpu"));
}

TEST(pack_job_bytes_counts_a_jobs_adapter_and_activations) {
    hf_config c = {0};
    c.hidden = 768, c.intermediate = 3072, c.n_layers = 12, c.n_heads = c.n_kv_heads = 12, c.head_dim = 64;
    jobspec s;
    memset(&s, 0, sizeof s);
    s.lora.r = 8, s.hp.batch_size = 1, s.hp.max_seq_len = 128;
    int64_t b = pack_job_bytes(&s, &c);
    /* gpt2-124m, r 8 everywhere: 4 x 12 x 8 x 18432 floats of LoRA (28 MiB) + 128 rows of activations */
    CHECK(b > (int64_t)28 << 20 && b < (int64_t)200 << 20);
    s.hp.batch_size = 4;
    CHECK(pack_job_bytes(&s, &c) > b);
    s.hp.batch_size = 1, s.lora.r = 16;
    CHECK(pack_job_bytes(&s, &c) > b);
}
