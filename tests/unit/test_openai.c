/* daemon/openai: OpenAI's create body into lorad's spec ("auto" resolved),
 * model names, events, the streamed answer; worker/data: OpenAI's
 * preference rows. */
#include <string.h>

#include "daemon/openai.h"
#include "tests/unit/test.h"
#include "formats/data.h"

static json_t *prepare(const char *body, const oai_create_ctx *x, json_t **meta, lr_err *e) {
    json_t *o = json_loads(body, 0, NULL);
    if (!o) return NULL;
    if (oai_create_prepare(o, x, meta, e)) {
        json_decref(o);
        return NULL;
    }
    return o;
}

TEST(create_resolves_auto_and_takes_openai_fields) {
    oai_create_ctx x = {.train_rows = 240, .model_params = 5e8, .openai_route = 1, .random_seed = 12345};
    json_t *meta = NULL;
    lr_err e = {0};
    json_t *o = prepare("{\"model\":\"m\",\"training_file\":\"file-1\",\"suffix\":\"notes\",\"metadata\":{\"a\":\"b\"},"
                        "\"integrations\":[{\"type\":\"wandb\"}],\"method\":{\"type\":\"supervised\",\"supervised\":"
                        "{\"hyperparameters\":{\"n_epochs\":\"auto\",\"learning_rate_multiplier\":2}}}}",
                        &x, &meta, &e);
    REQUIRE(o && meta);
    json_t *hp = json_object_get(o, "hyperparameters");
    CHECK_EQ_INT(json_integer_value(json_object_get(hp, "n_epochs")), 5); /* ceil(1000/240) */
    CHECK_EQ_INT(json_integer_value(json_object_get(hp, "batch_size")), 4); /* 240/32 = 7.5 -> 4 */
    CHECK_NEAR(json_number_value(json_object_get(hp, "learning_rate")), 4e-4, 1e-12);
    CHECK_EQ_INT(json_integer_value(json_object_get(hp, "seed")), 12345);
    CHECK_STR(json_string_value(json_object_get(json_object_get(o, "method"), "type")), "sft");
    CHECK(!json_object_get(json_object_get(o, "method"), "supervised"));
    CHECK_STR(json_string_value(json_object_get(json_object_get(o, "lora"), "targets")), "all-linear");
    CHECK(!json_object_get(o, "suffix") && !json_object_get(o, "metadata") && !json_object_get(o, "integrations"));
    CHECK_STR(json_string_value(json_object_get(meta, "suffix")), "notes");
    CHECK_STR(json_string_value(json_object_get(json_object_get(meta, "metadata"), "a")), "b");
    json_decref(o);
    json_decref(meta);

    /* lorad's route: only what says "auto" is resolved; its own fields pass */
    x.openai_route = 0;
    o = prepare("{\"model\":\"m\",\"training_file\":\"f\",\"hyperparameters\":{\"batch_size\":\"auto\",\"max_steps\":5}}",
                &x, &meta, &e);
    REQUIRE(o);
    hp = json_object_get(o, "hyperparameters");
    CHECK(!json_object_get(hp, "batch_size") && !json_object_get(hp, "seed") && !json_object_get(hp, "learning_rate"));
    CHECK_EQ_INT(json_integer_value(json_object_get(hp, "max_steps")), 5);
    CHECK(!json_object_get(o, "lora"));
    json_decref(o);
    json_decref(meta);
}

TEST(create_refuses_with_the_field) {
    oai_create_ctx x = {.openai_route = 1};
    json_t *meta = NULL;
    static const struct {
        const char *body, *param;
    } bad[] = {
        {"{\"method\":{\"type\":\"reinforcement\"}}", "method.type"},
        {"{\"suffix\":\"a:b\"}", "suffix"},
        {"{\"method\":\"dpo\"}", "method"},
        {"{\"method\":{\"type\":\"supervised\",\"supervised\":1}}", "method.supervised"},
        {"{\"method\":{\"type\":\"dpo\",\"dpo\":{\"hyperparameters\":[]}}}", "method.dpo.hyperparameters"},
        {"{\"seed\":-1}", "seed"},
        {"{\"hyperparameters\":{\"n_epochs\":0}}", "hyperparameters.n_epochs"},
        {"{\"method\":{\"type\":\"dpo\",\"dpo\":{\"hyperparameters\":{\"beta\":\"x\"}}}}", "method.dpo.hyperparameters.beta"},
        {"{\"metadata\":{\"1\":\"a\",\"2\":\"a\",\"3\":\"a\",\"4\":\"a\",\"5\":\"a\",\"6\":\"a\",\"7\":\"a\",\"8\":\"a\","
         "\"9\":\"a\",\"10\":\"a\",\"11\":\"a\",\"12\":\"a\",\"13\":\"a\",\"14\":\"a\",\"15\":\"a\",\"16\":\"a\",\"17\":\"a\"}}",
         "metadata"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        lr_err e = {0};
        json_t *o = prepare(bad[i].body, &x, &meta, &e);
        CHECKF(!o && !meta && !strcmp(e.param, bad[i].param), "%s: param '%s' (%s)", bad[i].body, e.param, e.msg);
        json_decref(o);
    }
}

TEST(job_record_and_state_fields) {
    jobspec s;
    jobspec_init(&s);
    snprintf(s.model, sizeof s.model, "tiny");
    s.n_training_files = 1;
    snprintf(s.training_files[0].name, sizeof s.training_files[0].name, "file-1");
    s.method.type = METHOD_DPO;
    s.hp.learning_rate = 6e-4;
    json_t *meta = json_pack("{s:s, s:f}", "suffix", "x", "base_learning_rate", 2e-4);
    json_t *rec = oai_job_record(&s, meta, "ftjob-abc", "alice");
    REQUIRE(rec);
    CHECK_STR(json_string_value(json_object_get(rec, "fine_tuned_model")), "ft:tiny:alice:x:ftjob-abc");
    CHECK_NEAR(json_number_value(json_object_get(json_object_get(rec, "hyperparameters"), "learning_rate_multiplier")),
               3.0, 1e-9);
    json_t *m = json_object_get(rec, "method");
    CHECK_STR(json_string_value(json_object_get(m, "type")), "dpo");
    CHECK(json_is_number(json_object_get(json_object_get(json_object_get(m, "dpo"), "hyperparameters"), "beta")));
    CHECK(json_is_null(json_object_get(rec, "validation_file")));
    /* the name shows once the job has succeeded; an ETA while it runs */
    json_t *state = json_pack("{s:s, s:I, s:{s:i, s:i}}", "status", "running", "started_at", (json_int_t)1000,
                              "progress", "step", 10, "total_steps", 30);
    json_object_update(rec, state);
    json_decref(state);
    oai_job_complete(rec, 1100);
    CHECK(json_is_null(json_object_get(rec, "fine_tuned_model")));
    CHECK_EQ_INT(json_integer_value(json_object_get(rec, "estimated_finish")), 1300);
    json_decref(rec);
    json_decref(meta);
}

/* validating_files: running with no plan from the worker yet (not an eval
 * job, which has none); running with one, queued and the rest unchanged. */
TEST(validating_files_until_the_worker_reports_its_plan) {
    static const struct {
        const char *status, *method;
        int total;
        const char *want;
    } cases[] = {
        {"running", "sft", 0, "validating_files"}, {"running", "dpo", 0, "validating_files"},
        {"running", "sft", 12, "running"},         {"running", "eval", 0, "running"},
        {"queued", "sft", 0, "queued"},            {"failed", "sft", 0, "failed"},
        {"paused", "sft", 0, "paused"},            {"succeeded", "sft", 12, "succeeded"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_t *job = json_pack("{s:s, s:{s:{s:s}}, s:{s:i, s:i}}", "status", cases[i].status, "spec", "method",
                                "type", cases[i].method, "progress", "step", 0, "total_steps", cases[i].total);
        oai_job_status(job);
        CHECKF(!strcmp(json_string_value(json_object_get(job, "status")), cases[i].want), "%s %s total %d: %s",
               cases[i].status, cases[i].method, cases[i].total, json_string_value(json_object_get(job, "status")));
        json_decref(job);
    }
}

TEST(model_names) {
    char id[64];
    int64_t step;
    CHECK(oai_parse_model("ft:tiny:alice:notes:ftjob-abc", id, sizeof id, &step) == 1);
    CHECK_STR(id, "ftjob-abc");
    CHECK_EQ_INT(step, -1);
    CHECK(oai_parse_model("ft:tiny:alice::ftjob-abc:ckpt-step-40", id, sizeof id, &step) == 1);
    CHECK_STR(id, "ftjob-abc");
    CHECK_EQ_INT(step, 40);
    CHECK(oai_parse_model("tiny", id, sizeof id, &step) == 0);
    CHECK(oai_parse_model("ft:tiny:alice:x:ckpt-step-4", id, sizeof id, &step) == 0);
    CHECK(oai_parse_model("ft:tiny:alice:x:ftjob-a:ckpt-step-", id, sizeof id, &step) == 0);
}

TEST(events_and_errors) {
    json_t *ev = json_pack("{s:I, s:s, s:f, s:s, s:s}", "id", (json_int_t)17, "object", "fine_tuning.job.event",
                           "created_at", 1700000000.75, "level", "warning", "message", "m");
    json_t *o = oai_event(ev);
    CHECK_STR(json_string_value(json_object_get(o, "id")), "ftevent-17");
    CHECK_STR(json_string_value(json_object_get(o, "level")), "warn");
    CHECK(json_is_integer(json_object_get(o, "created_at")));
    CHECK_STR(json_string_value(json_object_get(o, "type")), "message");
    json_decref(o);
    json_decref(ev);
    json_t *vals = json_pack("{s:f}", "train_loss", 1.5);
    o = oai_metrics_event(20, 100, 1700000001.0, vals);
    CHECK_STR(json_string_value(json_object_get(o, "type")), "metrics");
    CHECK_EQ_INT(json_integer_value(json_object_get(json_object_get(o, "data"), "total_steps")), 100);
    json_decref(o);
    json_decref(vals);
    CHECK_STR(oai_error_type(429), "rate_limit_error");
    CHECK_STR(oai_error_type(401), "authentication_error");
    CHECK_STR(oai_error_type(400), "invalid_request_error");
}

/* The chunks of a streamed answer add up to the answer, cut only between
 * UTF-8 characters, then the finish reason, usage and [DONE]. */
TEST(streamed_answer) {
    json_t *gen = json_pack("{s:s, s:i, s:s, s:i}", "text", "Answer: caf\xc3\xa9 au lait \xe2\x82\xac", "tokens", 9,
                            "stop", "length", "prompt_tokens", 5);
    size_t len = 0;
    char *sse = oai_sse(1, "chatcmpl-1", "m", 1, gen, 1, 4, &len);
    REQUIRE(sse);
    CHECK_EQ_INT((long long)len, (long long)strlen(sse));
    CHECK(len > 14 && !strcmp(sse + len - 14, "data: [DONE]\n\n"));
    char text[128] = "", *p = sse;
    int finish = 0, usage = 0, chunks = 0;
    while ((p = strstr(p, "data: {"))) {
        char *end = strstr(p, "\n\n");
        REQUIRE(end);
        json_t *c = json_loadb(p + 6, (size_t)(end - p - 6), 0, NULL);
        REQUIRE(c);
        chunks++;
        json_t *ch = json_array_get(json_object_get(c, "choices"), 0);
        const char *piece = json_string_value(json_object_get(json_object_get(ch, "delta"), "content"));
        if (piece) strncat(text, piece, sizeof text - strlen(text) - 1);
        const char *fr = json_string_value(json_object_get(ch, "finish_reason"));
        finish += fr && !strcmp(fr, "length");
        usage += json_integer_value(json_object_get(json_object_get(c, "usage"), "total_tokens")) == 14;
        json_decref(c);
        p = end;
    }
    CHECK_STR(text, "Answer: caf\xc3\xa9 au lait \xe2\x82\xac");
    CHECK(chunks >= 6 && finish == 1 && usage == 1);
    free(sse);
    json_t *one = oai_completion(0, "cmpl-1", "m", 1, gen);
    CHECK_STR(json_string_value(json_object_get(one, "object")), "text_completion");
    CHECK_STR(json_string_value(json_object_get(json_array_get(json_object_get(one, "choices"), 0), "finish_reason")),
              "length");
    json_decref(one);
    json_decref(gen);
}

/* OpenAI's preference rows are DPO rows: prompt, chosen, rejected. */
TEST(openai_preference_rows) {
    const char *rows =
        "{\"input\":{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"tools\":[]},"
        "\"preferred_output\":[{\"role\":\"assistant\",\"content\":\"Hello!\"}],"
        "\"non_preferred_output\":[{\"role\":\"assistant\",\"content\":\"go away\"}]}\n"
        "{\"prompt\":\"q\",\"chosen\":\"a\",\"rejected\":\"b\"}\n";
    data_file f;
    lr_err e = {0};
    memset(&f, 0, sizeof f);
    REQUIRE(data_parse(rows, strlen(rows), &f, &e) == 0);
    CHECK_EQ_INT((long long)f.n_rows, 2);
    CHECK_EQ_INT(f.rows[0].n_msgs, 1);
    CHECK_EQ_INT(f.rows[0].n_chosen, 1);
    CHECK_EQ_INT(f.rows[0].n_rejected, 1);
    CHECK(f.rows[0].msgs[1].len == 6 && !memcmp(f.rows[0].msgs[1].text, "Hello!", 6));
    data_file_free(&f);
    const char *bad = "{\"input\":{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]},"
                      "\"preferred_output\":[{\"role\":\"user\",\"content\":\"x\"}],"
                      "\"non_preferred_output\":[{\"role\":\"assistant\",\"content\":\"y\"}]}\n";
    memset(&f, 0, sizeof f);
    CHECK(data_parse(bad, strlen(bad), &f, &e) != 0);
    CHECKF(strstr(e.msg, "preferred_output"), "%s", e.msg);
    data_file_free(&f);
}
