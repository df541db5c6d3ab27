/* evaljob: SQuAD F1 on the official script's normalisation; the prompt sets
 * it reads (every JSONL form, a real held-out file, CSV); and a whole eval
 * job on a tiny model: metrics through the hooks, eval_results.jsonl and
 * eval_summary.json, the tuned pass equal to the base pass for an adapter
 * whose B is zero (KL 0). */
#include <jansson.h>
#include <unistd.h>

#include "common/buf.h"
#include "kernels/backend.h"
#include "tests/unit/test.h"
#include "worker/commands.h"
#include "worker/evaljob.h"
#include "worker/job.h"
#include "worker/model.h"
#include "worker/prompts.h"

#define F1(a, b) evaljob_f1(a, strlen(a), b, strlen(b))

TEST(squad_f1) {
    CHECK_NEAR(F1("The Denver Broncos!", "denver broncos"), 1.0, 1e-12); /* case, punctuation, articles */
    CHECK_NEAR(F1("a cat sat", "the cat sat on a mat"), 2 * 1.0 * 0.5 / 1.5, 1e-12); /* p 2/2, r 2/4 */
    CHECK_NEAR(F1("cat cat dog", "cat dog dog"), 2.0 / 3.0, 1e-12);                 /* multiset overlap 2 */
    CHECK_NEAR(F1("", ""), 1.0, 0);
    CHECK_NEAR(F1("the", ""), 1.0, 0); /* both empty after normalising */
    CHECK_NEAR(F1("x", ""), 0.0, 0);
    CHECK_NEAR(F1("Überblick – Modell", "überblick modell"), 2.0 / 3.0 * 1.0 / (2.0 / 3.0 + 1.0) * 2.0, 1e-12);
    CHECK_NEAR(F1("apples", "oranges"), 0.0, 0);
}

TEST(prompt_forms) {
    const char *t = "\"just text\"\n"
                    "\n"
                    "{\"id\": 7, \"messages\": [{\"role\":\"system\",\"content\":\"s\"},{\"role\":\"user\",\"content\":\"u\"},"
                    "{\"role\":\"assistant\",\"content\":\"ans\"}]}\n"
                    "{\"prompt\": \"p\", \"chosen\": \"c\", \"rejected\": \"r\"}\n"
                    "{\"instruction\": \"i\", \"input\": \"ctx\"}\n"
                    "{\"question\": \"q\", \"answer\": \"a\"}\n"
                    "{\"input\": \"in\"}\n";
    prompt_set ps;
    lr_err err = {0};
    REQUIRE(prompts_parse(t, strlen(t), &ps, &err) == 0);
    REQUIRE(ps.n == 6);
    CHECK_STR(ps.rows[0].id, "line 1");
    CHECK(ps.rows[0].n_msgs == 1 && ps.rows[0].reference == NULL);
    CHECK_STR(ps.rows[1].id, "7");
    CHECK_EQ_INT(ps.rows[1].line, 3);
    CHECK(ps.rows[1].n_msgs == 2 && ps.rows[1].msgs[0].role == CHAT_SYSTEM);
    CHECK(ps.rows[1].reference && !strncmp(ps.rows[1].reference, "ans", 3));
    CHECK(ps.rows[2].reference && !strncmp(ps.rows[2].reference, "c", 1));
    CHECK(ps.rows[3].n_msgs == 2 && ps.rows[3].msgs[1].role == CHAT_INPUT && !ps.rows[3].reference);
    CHECK(ps.rows[4].reference && !strncmp(ps.rows[4].reference, "a", 1));
    CHECK(ps.rows[5].n_msgs == 1 && !ps.rows[5].reference);
    prompts_free(&ps);
    const char *bad[] = {"{\"output\": \"x\"}\n", "{\"input\": 3}\n", "{\"messages\": [{\"role\":\"assistant\",\"content\":\"a\"}]}\n",
                         "{nope\n", "\n\n"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        lr_err_clear(&err);
        CHECKF(prompts_parse(bad[i], strlen(bad[i]), &ps, &err) == -1, "case %zu accepted", i);
        CHECK(err.msg[0] != 0);
    }
}

TEST(prompts_real_heldout_file) {
    prompt_set ps;
    lr_err err = {0};
    const char *path = test_fixture("datasets/ra-llm-notes/data/sft_val.jsonl");
    if (access(path, R_OK)) SKIP("fixture datasets/ra-llm-notes missing");
    REQUIRE(prompts_load(path, &ps, &err) == 0);
    CHECK_EQ_INT(ps.n, 75);
    int refs = 0;
    for (size_t i = 0; i < ps.n; i++) refs += ps.rows[i].reference != NULL && ps.rows[i].n_msgs == 1;
    CHECK_EQ_INT(refs, 75);
    prompts_free(&ps);
    REQUIRE(prompts_load(test_fixture("datasets/ra-llm-notes/data/test_prompts.jsonl"), &ps, &err) == 0);
    CHECK_EQ_INT(ps.n, 11);
    CHECK(ps.rows[10].reference == NULL);
    prompts_free(&ps);
}

TEST(prompts_csv) {
    char path[600];
    lr_err err = {0};
    snprintf(path, sizeof path, "%s/q.csv", test_tmpdir());
    const char *csv = "question,answer\n\"What, exactly?\",It is\nWhy,Because\n";
    REQUIRE(lr_write_file_atomic(path, csv, strlen(csv), &err) == 0);
    prompt_set ps;
    REQUIRE(prompts_load(path, &ps, &err) == 0);
    REQUIRE(ps.n == 2);
    CHECK(ps.rows[0].n_msgs == 1 && !strncmp(ps.rows[0].msgs[0].text, "What, exactly?", 14));
    CHECK(ps.rows[1].reference && !strncmp(ps.rows[1].reference, "Because", 7));
    prompts_free(&ps);
}

typedef struct seen {
    char names[16][32];
    double values[16];
    int n, events;
} seen;

static void on_metric(void *ud, int64_t step, double epoch, const char *name, double v) {
    seen *s = ud;
    (void)step, (void)epoch;
    if (s->n < 16) snprintf(s->names[s->n], sizeof s->names[0], "%s", name), s->values[s->n++] = v;
}
static void on_event(void *ud, const char *level, const char *msg) {
    (void)level, (void)msg;
    ((seen *)ud)->events++;
}
static double metric_of(const seen *s, const char *name) {
    for (int i = 0; i < s->n; i++)
        if (!strcmp(s->names[i], name)) return s->values[i];
    return NAN;
}

/* An adapter with B = 0 (fresh init) changes nothing: tuned == base, KL 0. */
TEST(eval_job_zero_adapter) {
    const char *tmp = test_tmpdir();
    char mdir[512], adir[512], data[512], rdir[512], path[600];
    lr_err err = {0};
    snprintf(mdir, sizeof mdir, "%s/m", tmp);
    snprintf(adir, sizeof adir, "%s/a", tmp);
    snprintf(data, sizeof data, "%s/d.jsonl", tmp);
    snprintf(rdir, sizeof rdir, "%s/run", tmp);
    char *mk[] = {"mkmodel", "--arch", "llama", "--out", mdir, "--seed", "2", NULL};
    REQUIRE(cmd_mkmodel(7, mk) == 0);
    kb_backend *be = NULL;
    model *m = NULL;
    REQUIRE(kb_cpu_create(1, &be, &err) == 0 && model_load(mdir, be, &m, &err) == 0);
    model_lora_cfg lc = {.r = 2, .alpha = 4, .n_targets = 1};
    snprintf(lc.targets[0], sizeof lc.targets[0], "q_proj");
    REQUIRE(model_lora_init(m, &lc, 1, &err) == 0 && model_lora_save(m, adir, &err) == 0);
    model_free(m);
    kb_destroy(be);
    const char *rows = "{\"input\":\"Explain dropout.\",\"output\":\"Summary:\\nDropout.\"}\n"
                       "{\"input\":\"Explain warmup.\",\"output\":\"Summary:\\nWarmup.\"}\n"
                       "{\"input\":\"Explain pruning.\"}\n";
    REQUIRE(lr_write_file_atomic(data, rows, strlen(rows), &err) == 0);

    const char *spec_text = "{\"model\":\"m\",\"training_file\":\"d.jsonl\",\"method\":{\"type\":\"eval\",\"adapter\":\"a\"},"
                            "\"eval\":{\"generation\":{\"max_new_tokens\":12},\"format\":{\"sections\":[\"Summary\"]}}}";
    json_t *j = json_loads(spec_text, 0, NULL);
    jobspec spec;
    REQUIRE(jobspec_from_json(j, &spec, &err) == 0);
    json_decref(j);
    train_paths paths = {.model_dir = mdir, .training_files = {data}, .reference_adapter_dir = adir, .run_dir = rdir};
    train_opts opts = {"cpu", 1, 0, NULL};
    seen s = {0};
    train_hooks hooks = {.ud = &s, .metric = on_metric, .event = on_event};
    train_outcome oc;
    int rc = job_run(&spec, &paths, &opts, &hooks, &oc, &err);
    if (rc) printf("    %s\n", err.msg);
    REQUIRE(rc == 0);
    CHECK_EQ_INT(oc, TRAIN_DONE);
    CHECK(!isnan(metric_of(&s, "compliance_base")) && !isnan(metric_of(&s, "compliance_tuned")));
    CHECK_NEAR(metric_of(&s, "compliance_base"), metric_of(&s, "compliance_tuned"), 0);
    CHECK_NEAR(metric_of(&s, "f1_base"), metric_of(&s, "f1_tuned"), 0);
    CHECK_NEAR(metric_of(&s, "kl"), 0.0, 1e-9);
    CHECK(s.events > 0);

    char *text = NULL;
    size_t len;
    snprintf(path, sizeof path, "%s/eval_summary.json", rdir);
    REQUIRE(lr_read_file(path, 1 << 20, &text, &len, &err) == 0);
    json_t *sum = json_loads(text, 0, NULL);
    free(text);
    REQUIRE(sum);
    CHECK_EQ_INT(json_integer_value(json_object_get(sum, "rows")), 3);
    CHECK_EQ_INT(json_integer_value(json_object_get(sum, "rows_with_reference")), 2);
    CHECK(json_is_object(json_object_get(sum, "settings")));
    json_decref(sum);
    snprintf(path, sizeof path, "%s/eval_results.jsonl", rdir);
    REQUIRE(lr_read_file(path, 1 << 20, &text, &len, &err) == 0);
    int lines = 0, same = 0;
    for (char *p = text, *nl; (nl = strchr(p, '\n')); p = nl + 1) {
        json_t *o = json_loadb(p, (size_t)(nl - p), 0, NULL);
        lines++;
        const char *b = json_string_value(json_object_get(json_object_get(o, "base"), "output"));
        const char *t = json_string_value(json_object_get(json_object_get(o, "tuned"), "output"));
        same += b && t && !strcmp(b, t);
        if (lines == 3) CHECK(json_is_null(json_object_get(o, "reference")));
        json_decref(o);
    }
    free(text);
    CHECK_EQ_INT(lines, 3);
    CHECK_EQ_INT(same, 3);

    /* an unresolved adapter is an error naming the field */
    paths.reference_adapter_dir = NULL;
    CHECK(job_run(&spec, &paths, &opts, &hooks, &oc, &err) == -1);
    CHECK_STR(err.param, "method.adapter");
    /* the trainer is about training: an eval job given to it is refused */
    paths.reference_adapter_dir = adir;
    CHECK(train_run(&spec, &paths, &opts, &hooks, &oc, &err) == -1);
    CHECK_STR(err.param, "method.type");
}
