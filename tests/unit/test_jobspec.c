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

TEST(eval_block) {
    const char *y =
        "model: m\ntraining_file: heldout.jsonl\n"
        "method: {type: eval, adapter: runs/notes}\n"
        "eval:\n"
        "  max_rows: 20\n"
        "  generation: {max_new_tokens: 400, temperature: 0.1, top_p: 0.9, top_k: 50, seed: 3, stop: [\"\\n\\n\\n\"]}\n"
        "  format:\n"
        "    sections: [Summary, {name: Key Points, bullets: 3}, Limitation, {name: Follow-up Question, ends_with: \"?\"}]\n"
        "    in_order: false\n"
        "    nothing_after: true\n"
        "    regex: '(?s)\\ASummary:'\n";
    jobspec s, t;
    lr_err e = {0};
    REQUIRE(parse(y, &s, &e) == 0);
    CHECK_EQ_INT(s.method.type, METHOD_EVAL);
    CHECK_STR(s.method.adapter, "runs/notes");
    CHECK_EQ_INT(s.eval.max_rows, 20);
    CHECK_EQ_INT(s.eval.generation.max_new_tokens, 400);
    CHECK_NEAR(s.eval.generation.temperature, 0.1, 1e-12);
    CHECK_NEAR(s.eval.generation.top_p, 0.9, 1e-12);
    CHECK_EQ_INT(s.eval.generation.top_k, 50);
    CHECK_EQ_INT(s.eval.generation.seed, 3);
    CHECK_EQ_INT(s.eval.generation.n_stop, 1);
    CHECK_STR(s.eval.generation.stop[0], "\n\n\n");
    CHECK_EQ_INT(s.eval.format.n_sections, 4);
    CHECK_STR(s.eval.format.sections[1].name, "Key Points");
    CHECK_EQ_INT(s.eval.format.sections[0].bullets, -1);
    CHECK_EQ_INT(s.eval.format.sections[1].bullets, 3);
    CHECK_STR(s.eval.format.sections[3].ends_with, "?");
    CHECK_EQ_INT(s.eval.format.in_order, 0);
    CHECK_EQ_INT(s.eval.format.nothing_after, 1);
    CHECK_STR(s.eval.format.regex, "(?s)\\ASummary:");
    /* written back whole, it reads the same */
    json_t *j = jobspec_to_json(&s);
    REQUIRE(jobspec_from_json(j, &t, &e) == 0);
    json_t *j2 = jobspec_to_json(&t);
    CHECK(json_equal(j, j2));
    CHECK(json_is_object(json_object_get(j, "eval")));
    json_decref(j);
    json_decref(j2);
    /* defaults of an eval job; other methods write no eval block */
    REQUIRE(parse("{\"model\":\"m\",\"training_file\":\"f\",\"method\":\"eval\"}", &s, &e) == 0);
    CHECK_EQ_INT(s.eval.generation.max_new_tokens, 256);
    CHECK_NEAR(s.eval.generation.top_p, 1.0, 0);
    CHECK_EQ_INT(s.eval.format.in_order, 1);
    CHECK_STR(s.method.adapter, "");
    REQUIRE(parse("{\"model\":\"m\",\"training_file\":\"f\"}", &s, &e) == 0);
    j = jobspec_to_json(&s);
    CHECK(json_object_get(j, "eval") == NULL);
    json_decref(j);
}

TEST(eval_errors_name_the_field) {
    static const struct {
        const char *text, *param, *needle;
    } cases[] = {
        {"{\"model\":\"m\",\"training_file\":\"f\",\"eval\":{}}", "eval", "method eval only"},
        {"{\"model\":\"m\",\"training_file\":\"f\",\"method\":{\"type\":\"sft\",\"adapter\":\"x\"}}", "method.adapter",
         "eval only"},
        {"{\"model\":\"m\",\"training_file\":\"f\",\"method\":\"eval\",\"eval\":{\"bogus\":1}}", "eval.bogus",
         "unknown field"},
        {"{\"model\":\"m\",\"training_file\":\"f\",\"method\":\"eval\",\"eval\":{\"generation\":{\"top_p\":0}}}",
         "eval.generation.top_p", "must be"},
        {"{\"model\":\"m\",\"training_file\":\"f\",\"method\":\"eval\",\"eval\":{\"generation\":{\"max_new_tokens\":0}}}",
         "eval.generation.max_new_tokens", "between"},
        {"{\"model\":\"m\",\"training_file\":\"f\",\"method\":\"eval\",\"eval\":{\"generation\":{\"stop\":[\"a\",\"\"]}}}",
         "eval.generation.stop[1]", "empty"},
        {"{\"model\":\"m\",\"training_file\":\"f\",\"method\":\"eval\",\"eval\":{\"format\":{\"sections\":[\"A\",{\"name\":\"B\",\"bullets\":-1}]}}}",
         "eval.format.sections[1].bullets", "between"},
        {"{\"model\":\"m\",\"training_file\":\"f\",\"method\":\"eval\",\"eval\":{\"format\":{\"sections\":[\"A\",{\"bullets\":1}]}}}",
         "eval.format.sections[1].name", "required"},
        {"{\"model\":\"m\",\"training_file\":\"f\",\"method\":\"eval\",\"eval\":{\"format\":{\"sections\":[\"A:\"]}}}",
         "eval.format.sections[0]", "without ':'"},
        {"{\"model\":\"m\",\"training_file\":\"f\",\"method\":\"eval\",\"eval\":{\"format\":{\"sections\":[\"A\",\"a\"]}}}",
         "eval.format.sections[1]", "twice"},
        {"{\"model\":\"m\",\"training_file\":\"f\",\"method\":\"eval\",\"eval\":{\"format\":{\"regex\":\"(x\"}}}",
         "eval.format.regex", "offset"},
        {"{\"model\":\"m\",\"training_file\":\"f\",\"method\":\"eval\",\"eval\":{\"format\":{\"nothing_after\":true}}}",
         "eval.format.nothing_after", "needs sections"},
        {"{\"model\":\"m\",\"training_file\":\"f\",\"method\":\"eval\",\"eval\":{\"format\":{\"order\":true}}}",
         "eval.format.order", "unknown field"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        jobspec s;
        lr_err e = {0};
        CHECKF(parse(cases[i].text, &s, &e) == -1, "case %zu accepted", i);
        CHECKF(!strcmp(e.param, cases[i].param), "case %zu: param '%s', want '%s'", i, e.param, cases[i].param);
        CHECKF(strstr(e.msg, cases[i].needle) != NULL, "case %zu: message '%s' lacks '%s'", i, e.msg,
               cases[i].needle);
    }
}

TEST(resources_devices) {
    jobspec s;
    lr_err e = {0};
    REQUIRE(parse("{\"model\":\"m\",\"training_file\":\"f\"}", &s, &e) == 0);
    CHECK_EQ_INT(s.resources.devices, 1);
    REQUIRE(parse("{\"model\":\"m\",\"training_file\":\"f\",\"resources\":{\"devices\":4}}", &s, &e) == 0);
    CHECK_EQ_INT(s.resources.devices, 4);
    json_t *o = jobspec_to_json(&s);
    CHECK_EQ_INT(json_integer_value(json_object_get(json_object_get(o, "resources"), "devices")), 4);
    json_decref(o);
    static const struct {
        const char *text, *param, *needle;
    } cases[] = {
        {"{\"model\":\"m\",\"training_file\":\"f\",\"resources\":{\"devices\":0}}", "resources.devices", "between"},
        {"{\"model\":\"m\",\"training_file\":\"f\",\"resources\":{\"devices\":65}}", "resources.devices", "between"},
        {"{\"model\":\"m\",\"training_file\":\"f\",\"resources\":{\"gpus\":2}}", "resources.gpus", "unknown field"},
        {"{\"model\":\"m\",\"training_file\":\"f\",\"resources\":2}", "resources", "object"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        lr_err e2 = {0};
        CHECKF(parse(cases[i].text, &s, &e2) == -1, "case %zu accepted", i);
        CHECKF(!strcmp(e2.param, cases[i].param), "case %zu: param '%s', want '%s'", i, e2.param, cases[i].param);
        CHECKF(strstr(e2.msg, cases[i].needle) != NULL, "case %zu: message '%s' lacks '%s'", i, e2.msg,
               cases[i].needle);
    }
}
