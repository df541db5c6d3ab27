/* The worker agent against a scripted daemon over a socketpair-like Unix
 * socket, with a stand-in trainer (train_run is tested elsewhere).
 *
 * The same program is the stand-in worker of the daemon integration tests:
 * run as `test_agent agent --socket PATH ...` it is an agent whose trainer
 * fakes a job (deterministic losses from the seed, checkpoints every
 * save_steps with a DONE marker, resume from the newest one, an adapter
 * file whose bytes depend only on the spec), so lorad's scheduling, restart
 * and resume logic is tested without a model. */
#include "tests/unit/test.h"

#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "common/buf.h"
#include "proto/frame.h"
#include "proto/msg.h"
#include "worker/agent.h"

static int fake_train(const jobspec *spec, const train_paths *p, const train_opts *o, const train_hooks *h,
                      train_outcome *outcome, lr_err *err) {
    int64_t total = spec->hp.max_steps > 0 ? spec->hp.max_steps : 10;
    int save = spec->hp.save_steps > 0 ? spec->hp.save_steps : 5;
    const char *ms = getenv("LR_FAKE_STEP_MS");
    long step_ms = ms ? strtol(ms, NULL, 10) : 20;
    char ck[2048];
    snprintf(ck, sizeof ck, "%s/checkpoints", p->run_dir);
    if (lr_mkdirs(ck, err)) return -1;
    int64_t start = 0;
    if (o->resume)
        for (int64_t s = total; s > 0; s--) {
            char done[2100];
            snprintf(done, sizeof done, "%s/step-%lld/DONE", ck, (long long)s);
            if (access(done, F_OK) == 0) {
                start = s;
                break;
            }
        }
    if (start) h->event(h->ud, "info", "resumed from checkpoint");
    /* A loss that depends only on (seed, step): resumed and fresh runs agree. */
    double acc = 0;
    int stopped = 0;
    for (int64_t s = 1; s <= total && !stopped; s++) {
        double loss = 3.0 / (double)s + (double)(spec->hp.seed % 7) * 0.01;
        acc += loss;
        if (s <= start) continue;
        struct timespec ts = {step_ms / 1000, (step_ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
        h->metric(h->ud, s, (double)s / (double)total, "loss", loss);
        h->metric(h->ud, s, (double)s / (double)total, "lr", spec->hp.learning_rate);
        h->progress(h->ud, s, total, (double)s / (double)total);
        if (s % save == 0 || s == total) {
            char d[2100], f[2200];
            if (h->flush) h->flush(h->ud); /* as train.c does before a checkpoint */
            snprintf(d, sizeof d, "%s/step-%lld", ck, (long long)s);
            snprintf(f, sizeof f, "%s/DONE", d);
            if (lr_mkdirs(d, err) || lr_write_file_atomic(f, "1", 1, err)) return -1;
            h->checkpoint(h->ud, s, d);
        }
        if (h->cancelled(h->ud)) {
            *outcome = TRAIN_CANCELLED;
            return 0;
        }
        /* hyperparameters.patience N stands for a stopping rule that fires at step N. */
        if (spec->hp.patience > 0 && s == spec->hp.patience) {
            char why[96];
            snprintf(why, sizeof why, "early stop at step %lld: the stand-in rule", (long long)s);
            if (h->stopped) h->stopped(h->ud, why);
            stopped = 1;
        }
    }
    char path[2100], body[256];
    int n = snprintf(body, sizeof body, "adapter seed=%llu r=%d lr=%g steps=%lld sum=%.17g\n",
                     (unsigned long long)spec->hp.seed, spec->lora.r, spec->hp.learning_rate, (long long)total, acc);
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", p->run_dir);
    if (lr_write_file_atomic(path, body, (size_t)n, err)) return -1;
    snprintf(path, sizeof path, "%s/adapter_config.json", p->run_dir);
    if (lr_write_file_atomic(path, "{\"peft_type\":\"LORA\"}\n", 21, err)) return -1;
    if (spec->hp.seed == 666) return lr_errf(err, "the stand-in trainer fails on seed 666");
    if (spec->hp.seed == 667) return lr_errp(err, LR_E_NOMEM, NULL, "the stand-in trainer runs out of memory on seed 667");
    *outcome = stopped ? TRAIN_STOPPED_EARLY : TRAIN_DONE;
    return 0;
}

/* agent.o's cmd_agent refers to train_run; until worker/train.c exists this
 * weak stand-in satisfies the link (a real train_run wins over it). */
__attribute__((weak)) int train_run(const jobspec *spec, const train_paths *p, const train_opts *o,
                                    const train_hooks *h, train_outcome *outcome, lr_err *err) {
    (void)spec, (void)p, (void)o, (void)h, (void)outcome;
    return lr_errf(err, "train_run is not linked into this test");
}

/* Agent mode for the integration tests, before the test runner's main. */
__attribute__((constructor)) static void maybe_agent(int argc, char **argv) {
    if (argc < 2 || strcmp(argv[1], "agent")) return;
    agent_opts o = {.name = "w0", .backend = "cpu", .heartbeat_s = 2, .run = fake_train};
    for (int i = 2; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--socket")) o.socket_path = argv[i + 1];
        else if (!strcmp(argv[i], "--name")) o.name = argv[i + 1];
        else if (!strcmp(argv[i], "--backend")) o.backend = argv[i + 1];
        else if (!strcmp(argv[i], "--heartbeat")) o.heartbeat_s = (int)strtol(argv[i + 1], NULL, 10);
    }
    lr_err e = {0};
    int rc = agent_run(&o, &e);
    if (rc) fprintf(stderr, "stand-in worker %s: %s\n", o.name, e.msg);
    _exit(rc ? 2 : 0);
}

/* ---- a scripted daemon ---- */

typedef struct daemon_side {
    int lfd, fd;
    frame_dec d;
    char path[256];
} daemon_side;

static int listen_at(daemon_side *ds) {
    snprintf(ds->path, sizeof ds->path, "%s/a.sock", test_tmpdir());
    unlink(ds->path);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    memcpy(sa.sun_path, ds->path, strlen(ds->path) + 1);
    ds->lfd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (bind(ds->lfd, (struct sockaddr *)&sa, sizeof sa) || listen(ds->lfd, 1)) return -1;
    frame_dec_init(&ds->d, 0);
    return 0;
}

static void ack(daemon_side *ds, int64_t seq) {
    lr_err e = {0};
    json_t *a = msg_ack(seq);
    if (frame_write_fd(ds->fd, a, &e)) printf("    ack: %s\n", e.msg);
    json_decref(a);
}

static json_t *next_of(daemon_side *ds, msg_type want, msg *m) {
    lr_err e = {0};
    for (int i = 0; i < 1000; i++) {
        json_t *j = NULL;
        if (frame_read_fd(ds->fd, &ds->d, 5000, &j, &e) != 1) return NULL;
        if (msg_parse(j, m, &e) == 0 && m->type == MSG_METRIC) ack(ds, m->metric.seq); /* as lorad does */
        if (m->type == want) return j;
        int failed = m->type == MSG_FAILED;
        if (failed) printf("    worker failed: %s\n", m->failed.error);
        json_decref(j);
        if (failed) return NULL;
    }
    return NULL;
}

static agent_opts g_opts;
static int g_rc;
static void *agent_thread(void *arg) {
    (void)arg;
    lr_err e = {0};
    g_rc = agent_run(&g_opts, &e);
    return NULL;
}

static int send_assign(daemon_side *ds, const char *id, int steps, int patience, const char *run_dir) {
    json_t *spec = json_pack("{s:s, s:s, s:{s:i, s:i, s:i}}", "model", "/m", "training_file", "/d.jsonl",
                             "hyperparameters", "max_steps", steps, "save_steps", 2, "patience", patience);
    const char *files[1] = {"/d.jsonl"};
    json_t *a = msg_assign(id, spec, "/m", files, 1, NULL, NULL, run_dir, 0);
    lr_err e = {0};
    int rc = frame_write_fd(ds->fd, a, &e);
    json_decref(a);
    json_decref(spec);
    return rc;
}

TEST(hello_assign_stream_done) {
    daemon_side ds;
    REQUIRE(listen_at(&ds) == 0);
    setenv("LR_FAKE_STEP_MS", "1", 1);
    g_opts = (agent_opts){.socket_path = ds.path, .name = "w7", .backend = "cpu", .heartbeat_s = 1, .run = fake_train};
    pthread_t t;
    pthread_create(&t, NULL, agent_thread, NULL);
    ds.fd = accept(ds.lfd, NULL, NULL);
    REQUIRE(ds.fd >= 0);
    msg m;
    json_t *j = next_of(&ds, MSG_HELLO, &m);
    REQUIRE(j);
    CHECK_STR(m.hello.worker, "w7");
    CHECK_STR(m.hello.backend, "cpu");
    json_decref(j);
    char run[512];
    snprintf(run, sizeof run, "%s/run1", test_tmpdir());
    REQUIRE(send_assign(&ds, "ftjob-1", 6, 0, run) == 0);
    int metrics = 0, ckpts = 0, done = 0;
    int64_t last_seq = -1;
    lr_err e = {0};
    while (!done) {
        json_t *f = NULL;
        if (frame_read_fd(ds.fd, &ds.d, 5000, &f, &e) != 1) break;
        REQUIRE(msg_parse(f, &m, &e) == 0);
        if (m.type == MSG_METRIC) {
            metrics++;
            CHECK(m.metric.seq > last_seq); /* sequence numbers increase */
            last_seq = m.metric.seq;
            CHECK_STR(m.job_id, "ftjob-1");
            ack(&ds, m.metric.seq);
        }
        if (m.type == MSG_CHECKPOINT) ckpts++;
        if (m.type == MSG_DONE) {
            done = 1;
            CHECK_EQ_INT(m.done.outcome, MSG_SUCCEEDED);
            CHECK(m.done.stop_reason == NULL);
        }
        json_decref(f);
    }
    CHECK(done);
    CHECK_EQ_INT(metrics, 12); /* loss + lr for 6 steps */
    CHECK_EQ_INT(ckpts, 3);
    char adapter[600];
    snprintf(adapter, sizeof adapter, "%s/adapter_model.safetensors", run);
    CHECK(access(adapter, F_OK) == 0);

    /* Cancel: the job stops within a step and reports cancelled. */
    setenv("LR_FAKE_STEP_MS", "20", 1);
    snprintf(run, sizeof run, "%s/run2", test_tmpdir());
    REQUIRE(send_assign(&ds, "ftjob-2", 1000, 0, run) == 0);
    j = next_of(&ds, MSG_METRIC, &m);
    REQUIRE(j);
    json_decref(j);
    json_t *c = msg_cancel("ftjob-2", "test");
    REQUIRE(frame_write_fd(ds.fd, c, &e) == 0);
    json_decref(c);
    j = next_of(&ds, MSG_DONE, &m);
    REQUIRE(j);
    CHECK_EQ_INT(m.done.outcome, MSG_CANCELLED);
    CHECK_STR(m.job_id, "ftjob-2");
    json_decref(j);

    /* A stopping rule: DONE says stopped_early and carries the trainer's reason. */
    setenv("LR_FAKE_STEP_MS", "1", 1);
    snprintf(run, sizeof run, "%s/run3", test_tmpdir());
    REQUIRE(send_assign(&ds, "ftjob-3", 10, 3, run) == 0);
    j = next_of(&ds, MSG_DONE, &m);
    REQUIRE(j);
    CHECK_STR(m.job_id, "ftjob-3");
    CHECK_EQ_INT(m.done.outcome, MSG_STOPPED_EARLY);
    CHECK_STR(m.done.stop_reason ? m.done.stop_reason : "(none)", "early stop at step 3: the stand-in rule");
    json_decref(j);

    /* The daemon goes away: the agent returns 0. */
    close(ds.fd);
    pthread_join(t, NULL);
    CHECK_EQ_INT(g_rc, 0);
    close(ds.lfd);
    frame_dec_free(&ds.d);
}

/* Metrics lorad has not acknowledged are resent, a checkpoint is written
 * only once the metrics before it are stored, and DONE waits for them too:
 * no resume point or outcome exists while a logged step could be lost. */
TEST(unacked_metrics_resent_and_flushed_before_checkpoint) {
    daemon_side ds;
    REQUIRE(listen_at(&ds) == 0);
    setenv("LR_FAKE_STEP_MS", "1", 1);
    g_opts = (agent_opts){.socket_path = ds.path, .name = "w2", .backend = "cpu", .heartbeat_s = 1, .run = fake_train};
    pthread_t t;
    pthread_create(&t, NULL, agent_thread, NULL);
    ds.fd = accept(ds.lfd, NULL, NULL);
    REQUIRE(ds.fd >= 0);
    msg m;
    json_t *j = next_of(&ds, MSG_HELLO, &m);
    REQUIRE(j);
    json_decref(j);
    char run[512];
    snprintf(run, sizeof run, "%s/run-ack", test_tmpdir());
    REQUIRE(send_assign(&ds, "ftjob-9", 4, 0, run) == 0);
    /* Nothing acknowledged for 3.5 s: the first four metrics (steps 1-2)
     * come again, and no checkpoint frame comes at all. */
    int seen[64] = {0}, ckpt_early = 0, frames = 0;
    int64_t max_seq = -1;
    lr_err e = {0};
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double el = (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9;
        if (el > 3.5) break;
        json_t *f = NULL;
        int r = frame_read_fd(ds.fd, &ds.d, 200, &f, &e);
        if (r < 0) break;
        if (r == 0) continue;
        REQUIRE(msg_parse(f, &m, &e) == 0);
        frames++;
        if (m.type == MSG_METRIC && m.metric.seq >= 0 && m.metric.seq < 64) {
            seen[m.metric.seq]++;
            if (m.metric.seq > max_seq) max_seq = m.metric.seq;
        }
        if (m.type == MSG_CHECKPOINT || m.type == MSG_DONE) ckpt_early = 1;
        json_decref(f);
    }
    CHECK_EQ_INT((int)max_seq, 3);   /* steps 1-2: loss, lr each; training waits at the checkpoint */
    CHECK(seen[0] >= 2 && seen[3] >= 2); /* resent */
    CHECK(!ckpt_early);
    ack(&ds, max_seq);
    j = next_of(&ds, MSG_CHECKPOINT, &m);
    REQUIRE(j);
    CHECK_EQ_INT((int)m.checkpoint.step, 2);
    json_decref(j);
    j = next_of(&ds, MSG_DONE, &m); /* next_of acknowledges as it reads */
    REQUIRE(j);
    CHECK_EQ_INT(m.done.outcome, MSG_SUCCEEDED);
    json_decref(j);
    close(ds.fd);
    pthread_join(t, NULL);
    close(ds.lfd);
    frame_dec_free(&ds.d);
}

/* FAILED says what kind of failure it was: the trainer's class, a spec the
 * worker refuses, an assignment while busy. */
TEST(failures_carry_their_class) {
    daemon_side ds;
    REQUIRE(listen_at(&ds) == 0);
    setenv("LR_FAKE_STEP_MS", "1", 1);
    g_opts = (agent_opts){.socket_path = ds.path, .name = "w3", .backend = "cpu", .heartbeat_s = 1, .run = fake_train};
    pthread_t t;
    pthread_create(&t, NULL, agent_thread, NULL);
    ds.fd = accept(ds.lfd, NULL, NULL);
    REQUIRE(ds.fd >= 0);
    msg m;
    lr_err e = {0};
    json_t *j = next_of(&ds, MSG_HELLO, &m), *f = NULL;
    REQUIRE(j);
    json_decref(j);
    char run[512];
    snprintf(run, sizeof run, "%s/run-fail", test_tmpdir());
    const char *files[1] = {"/d.jsonl"};
    json_t *spec = json_pack("{s:s, s:s, s:{s:i, s:i}}", "model", "/m", "training_file", "/d.jsonl",
                             "hyperparameters", "max_steps", 2, "seed", 667);
    json_t *a = msg_assign("ftjob-f1", spec, "/m", files, 1, NULL, NULL, run, 0);
    REQUIRE(frame_write_fd(ds.fd, a, &e) == 0);
    json_decref(a);
    int code = -1;
    for (int i = 0; i < 100 && code < 0 && frame_read_fd(ds.fd, &ds.d, 5000, &f, &e) == 1; i++) {
        REQUIRE(msg_parse(f, &m, &e) == 0);
        if (m.type == MSG_METRIC) ack(&ds, m.metric.seq);
        if (m.type == MSG_FAILED) code = m.failed.code;
        json_decref(f);
    }
    CHECK_EQ_INT(code, LR_E_NOMEM);
    /* A spec the worker cannot read: refused as invalid, before any thread. */
    json_object_set_new(json_object_get(spec, "hyperparameters"), "learning_rate", json_string("fast"));
    a = msg_assign("ftjob-f2", spec, "/m", files, 1, NULL, NULL, run, 0);
    REQUIRE(frame_write_fd(ds.fd, a, &e) == 0);
    json_decref(a);
    code = -1;
    for (int i = 0; i < 100 && code < 0 && frame_read_fd(ds.fd, &ds.d, 5000, &f, &e) == 1; i++) {
        REQUIRE(msg_parse(f, &m, &e) == 0);
        if (m.type == MSG_FAILED) {
            code = m.failed.code;
            CHECK_STR(m.job_id, "ftjob-f2");
        }
        json_decref(f);
    }
    CHECK_EQ_INT(code, LR_E_INVALID);
    /* A second assignment while a job runs: busy. */
    setenv("LR_FAKE_STEP_MS", "20", 1);
    REQUIRE(send_assign(&ds, "ftjob-f3", 1000, 0, run) == 0);
    j = next_of(&ds, MSG_METRIC, &m);
    REQUIRE(j);
    json_decref(j);
    REQUIRE(send_assign(&ds, "ftjob-f4", 10, 0, run) == 0);
    code = -1;
    for (int i = 0; i < 1000 && code < 0 && frame_read_fd(ds.fd, &ds.d, 5000, &f, &e) == 1; i++) {
        REQUIRE(msg_parse(f, &m, &e) == 0);
        if (m.type == MSG_METRIC) ack(&ds, m.metric.seq);
        if (m.type == MSG_FAILED) {
            code = m.failed.code;
            CHECK_STR(m.job_id, "ftjob-f4");
        }
        json_decref(f);
    }
    CHECK_EQ_INT(code, LR_E_BUSY);
    json_decref(spec);
    /* lorad dies in the middle of a frame: an error, not the normal end. */
    unsigned char half[6] = {0, 0, 0, 40, '{', '"'};
    CHECK(write(ds.fd, half, sizeof half) == (ssize_t)sizeof half);
    close(ds.fd);
    pthread_join(t, NULL);
    CHECK_EQ_INT(g_rc, -1);
    close(ds.lfd);
    frame_dec_free(&ds.d);
}

TEST(protocol_error_ends_agent) {
    daemon_side ds;
    REQUIRE(listen_at(&ds) == 0);
    g_opts = (agent_opts){.socket_path = ds.path, .name = "w1", .backend = "cpu", .heartbeat_s = 1, .run = fake_train};
    pthread_t t;
    pthread_create(&t, NULL, agent_thread, NULL);
    ds.fd = accept(ds.lfd, NULL, NULL);
    REQUIRE(ds.fd >= 0);
    /* An oversize length prefix. */
    unsigned char bad[4] = {0x7f, 0xff, 0xff, 0xff};
    CHECK(write(ds.fd, bad, 4) == 4);
    pthread_join(t, NULL);
    CHECK_EQ_INT(g_rc, -1);
    close(ds.fd);
    close(ds.lfd);
    frame_dec_free(&ds.d);
}
