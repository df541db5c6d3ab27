#include <sys/stat.h>
#include <unistd.h>

#include "common/buf.h"
#include "tests/unit/test.h"
#include "worker/ckpt.h"

static int write_stub_adapter(void *ud, const char *dir, lr_err *err) {
    char p[4200];
    if (lr_pathf(p, sizeof p, "%s/adapter_config.json", dir)) return lr_errf(err, "path");
    return lr_write_file_atomic(p, ud, strlen(ud), err);
}

static int fail_adapter(void *ud, const char *dir, lr_err *err) {
    (void)ud;
    (void)dir;
    return lr_errf(err, "disk full");
}

TEST(save_load_rotate) {
    char run[512];
    snprintf(run, sizeof run, "%s/run1", test_tmpdir());
    float m[5] = {1, 2, 3, 4, 5}, v[5] = {5, 4, 3, 2, 1};
    lr_err e = {0};
    for (int step = 10; step <= 40; step += 10) {
        ckpt_tensor ex[2] = {{"m", m, 5}, {"v", v, 5}};
        json_t *st = json_pack("{s:i}", "step", step);
        char dir[4200];
        m[0] = (float)step;
        CHECK(ckpt_save(run, step, write_stub_adapter, "{}", ex, 2, st, 2, dir, sizeof dir, &e) == 0);
        json_decref(st);
        CHECK(strstr(dir, "checkpoint-") != NULL);
    }
    int64_t steps[8];
    int n = ckpt_list(run, steps, 8, &e);
    CHECK_EQ_INT(n, 2); /* save_total_limit 2 keeps the newest two */
    CHECK_EQ_INT(steps[0], 30);
    CHECK_EQ_INT(steps[1], 40);
    char dir[4200];
    int64_t step = 0;
    REQUIRE(ckpt_latest(run, dir, sizeof dir, &step, &e) == 1);
    CHECK_EQ_INT(step, 40);
    float m2[5] = {0}, v2[5] = {0};
    ckpt_tensor ex[2] = {{"m", m2, 5}, {"v", v2, 5}};
    json_t *st = NULL;
    REQUIRE(ckpt_load(dir, ex, 2, &st, &e) == 0);
    CHECK_EQ_INT(json_integer_value(json_object_get(st, "step")), 40);
    CHECK(m2[0] == 40.0f && m2[4] == 5.0f && v2[0] == 5.0f);
    json_decref(st);
    /* a tensor of the wrong size is an error, not a silent partial load */
    float small[3];
    ckpt_tensor bad[1] = {{"m", small, 3}};
    CHECK(ckpt_load(dir, bad, 1, &st, &e) == -1);
    CHECK(strstr(e.msg, "wrong size") != NULL);
}

TEST(incomplete_checkpoints_are_ignored) {
    char run[512], p[1024];
    snprintf(run, sizeof run, "%s/run2", test_tmpdir());
    lr_err e = {0};
    /* a checkpoint dir without DONE (a crash mid-write) and a stale temporary */
    snprintf(p, sizeof p, "%s/checkpoints/checkpoint-50", run);
    REQUIRE(lr_mkdirs(p, &e) == 0);
    snprintf(p, sizeof p, "%s/checkpoints/checkpoint-60.tmp", run);
    REQUIRE(lr_mkdirs(p, &e) == 0);
    char dir[4200];
    int64_t step;
    CHECK_EQ_INT(ckpt_latest(run, dir, sizeof dir, &step, &e), 0);
    float m[1] = {0};
    ckpt_tensor ex[1] = {{"m", m, 1}};
    json_t *st = json_object();
    CHECK(ckpt_save(run, 20, write_stub_adapter, "{}", ex, 1, st, 0, NULL, 0, &e) == 0);
    CHECK_EQ_INT(ckpt_latest(run, dir, sizeof dir, &step, &e), 1);
    CHECK_EQ_INT(step, 20);
    snprintf(p, sizeof p, "%s/checkpoints/checkpoint-60.tmp", run);
    CHECK(access(p, F_OK) != 0); /* stale temporaries are cleaned */
    /* a failing write leaves no checkpoint behind and says why */
    CHECK(ckpt_save(run, 30, fail_adapter, NULL, ex, 1, st, 0, NULL, 0, &e) == -1);
    CHECK(strstr(e.msg, "disk full") != NULL && strstr(e.msg, "step 30") != NULL);
    CHECK_EQ_INT(ckpt_latest(run, dir, sizeof dir, &step, &e), 1);
    CHECK_EQ_INT(step, 20);
    json_decref(st);
}
