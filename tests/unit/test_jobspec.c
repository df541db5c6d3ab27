#include "proto/jobspec.h"
#include "tests/unit/test.h"

static int parse(const char *text, jobspec *s, lr_err *err) {
    json_t *j = NULL;
    if (jobspec_parse_text(text, strlen(text), &j, err)) return -1;
    int rc = jobspec_from_json(j, s, err);
    json_decref(j);
    return rc;
}

TEST(yaml_full_spec) {
    const char *y =
        "name: notes-r16\n"
        "model: qwen2.5-0.5b-instruct\n"
        "training_file: file-8f3a\n"
        "method: {type: sft}\n"
        "hyperparameters:\n"
        "  n_epochs: 3\n  batch_size: 4\n  grad_accum: 8\n  learning_rate: 2.0e-4\n"
        "  lr_scheduler: linear\n  warmup_ratio: 0.1\n  max_seq_len: 256\n  seed: 7\n"
        "lora: {r: 8, alpha: 16, dropout: 0.0, targets: [q_proj, v_proj], use_rslora: true}\n"
        "chat_template: chatml\n"
        "device: cpu\n"
        "priority: 5\n";
    jobspec s;
    lr_err e = {0};
    REQUIRE(parse(y, &s, &e) == 0);
    CHECK_STR(s.name, "notes-r16");
    CHECK_STR(s.training_files[0].name, "file-8f3a");
    CHECK_EQ_INT(s.n_training_files, 1);
    CHECK_EQ_INT(s.hp.grad_accum, 8);
    CHECK_NEAR(s.hp.learning_rate, 2e-4, 1e-12);
    CHECK_EQ_INT(s.hp.lr_scheduler, SCHED_LINEAR);
    CHECK_EQ_INT(s.hp.seed, 7);
    CHECK_EQ_INT(s.lora.r, 8);
    CHECK_EQ_INT(s.lora.n_targets, 2);
    CHECK_STR(s.lora.targets[1], "v_proj");
    CHECK_EQ_INT(s.lora.use_rslora, 1);
    CHECK_EQ_INT(s.chat_template, TPL_CHATML);
    CHECK_EQ_INT(s.device, DEV_CPU);
    CHECK_EQ_INT(s.priority, 5);
}

TEST(defaults_and_roundtrip) {
    jobspec s, t;
    lr_err e = {0};
    REQUIRE(parse("{\"model\":\"m\",\"training_file\":\"f\"}", &s, &e) == 0);
    CHECK_EQ_INT(s.hp.n_epochs, 3);
    CHECK_EQ_INT(s.lora.r, 16);
    CHECK_STR(s.lora.target_set, "attn_mlp");
    json_t *j = jobspec_to_json(&s);
    REQUIRE(jobspec_from_json(j, &t, &e) == 0);
    json_t *j2 = jobspec_to_json(&t);
    CHECK(json_equal(j, j2));
    json_decref(j);
    json_decref(j2);
}

TEST(errors_name_the_field) {
    static const struct {
        const char *text, *param, *needle;
    } cases[] = {
        {"{\"model\":\"m\"}", "training_file", "required"},
        {"{\"model\":\"m\",\"training_file\":\"f\",\"bogus\":1}", "bogus", "unknown field"},
        {"{\"model\":\"m\",\"training_file\":\"f\",\"hyperparameters\":{\"learning_rate\":-1}}",
         "hyperparameters.learning_rate", "must be"},
        {"{\"model\":\"m\",\"training_file\":\"f\",\"hyperparameters\":{\"batch_size\":\"4\"}}",
         "hyperparameters.batch_size", "integer"},
        {"{\"model\":\"m\",\"training_file\":\"f\",\"hyperparameters\":{\"lr\":1}}", "hyperparameters.lr",
         "unknown field"},
        {"{\"model\":\"m\",\"training_file\":\"f\",\"lora\":{\"r\":0}}", "lora.r", "between"},
        {"{\"model\":\"m\",\"training_file\":\"f\",\"lora\":{\"targets\":[\"qkv\"]}}", "lora.targets[0]",
         "not a module"},
        {"{\"model\":\"m\",\"training_file\":\"f\",\"method\":{\"type\":\"sft\",\"beta\":0.1}}", "method.beta",
         "dpo only"},
        {"{\"model\":\"m\",\"training_file\":\"f\",\"device\":\"tpu\"}", "device", "not one of"},
        {"{\"model\":\"m\",\"training_file\":[]}", "training_file", "list"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        jobspec s;
        lr_err e = {0};
        CHECKF(parse(cases[i].text, &s, &e) == -1, "case %zu accepted", i);
        CHECKF(!strcmp(e.param, cases[i].param), "case %zu: param '%s', want '%s'", i, e.param, cases[i].param);
        CHECKF(strstr(e.msg, cases[i].needle) != NULL, "case %zu: message '%s' lacks '%s'", i, e.msg,
               cases[i].needle);
        CHECK_EQ_INT(e.code, LR_E_INVALID);
    }
}

TEST(bad_text) {
    json_t *j = NULL;
    lr_err e = {0};
    CHECK(jobspec_parse_text("{\"a\":", 5, &j, &e) == -1);
    CHECK(strstr(e.msg, "invalid JSON") != NULL);
    const char *bomb = "a: &x [1,2]\nb: [*x, *x]\n";
    CHECK(jobspec_parse_text(bomb, strlen(bomb), &j, &e) == -1);
    CHECK(strstr(e.msg, "anchors") != NULL);
    const char *dup = "a: 1\na: 2\n";
    CHECK(jobspec_parse_text(dup, strlen(dup), &j, &e) == -1);
    CHECK(strstr(e.msg, "duplicate") != NULL);
    CHECK(jobspec_parse_text("", 0, &j, &e) == -1);
    char deep[200];
    memset(deep, '[', sizeof deep - 1);
    deep[sizeof deep - 1] = 0;
    CHECK(jobspec_parse_text(deep, strlen(deep), &j, &e) == -1);
}

TEST(set_overrides) {
    json_t *j = NULL;
    lr_err e = {0};
    const char *y = "model: m\ntraining_file: f\nlora: {r: 8}\n";
    REQUIRE(jobspec_parse_text(y, strlen(y), &j, &e) == 0);
    CHECK(jobspec_set(j, "lora.r=32", &e) == 0);
    CHECK(jobspec_set(j, "learning_rate=1e-4", &e) == 0);
    CHECK(jobspec_set(j, "lora.targets=[q_proj, v_proj]", &e) == 0);
    CHECK(jobspec_set(j, "name=my run", &e) == 0);
    CHECK(jobspec_set(j, "nokey", &e) == -1);
    jobspec s;
    REQUIRE(jobspec_from_json(j, &s, &e) == 0);
    CHECK_EQ_INT(s.lora.r, 32);
    CHECK_NEAR(s.hp.learning_rate, 1e-4, 1e-15);
    CHECK_EQ_INT(s.lora.n_targets, 2);
    CHECK_STR(s.name, "my run");
    json_decref(j);
}
