#include "tests/unit/test.h"

#include "common/buf.h"
#include "formats/adapter.h"
#include "formats/safetensors.h"

static char *slurp(const char *path, size_t *len) {
    char *p = NULL;
    lr_err err = {0};
    if (lr_read_file(path, 64u << 20, &p, len, &err)) return NULL;
    return p;
}

static int same_file(const char *a, const char *b) {
    size_t la, lb;
    char *x = slurp(a, &la), *y = slurp(b, &lb);
    int same = x && y && la == lb && !memcmp(x, y, la);
    free(x);
    free(y);
    return same;
}

static void qwen05b(hf_config *c) {
    hf_config_defaults(ARCH_QWEN2, c);
    c->hidden = 896, c->n_layers = 24, c->n_heads = 14, c->n_kv_heads = 2, c->head_dim = 64;
    c->intermediate = 4864, c->vocab_size = 151936;
}

TEST(qwen_fixture) {
    adapter *a;
    lr_err err = {0};
    REQUIRE(adapter_load(test_fixture("adapters/qwen2.5-0.5b-instruct-lora-qv"), &a, &err) == 0);
    CHECK_EQ_INT(a->arch, ARCH_LLAMA);
    CHECK_EQ_INT(a->r, 8);
    CHECK_NEAR(a->alpha, 16, 0);
    CHECK_NEAR(a->dropout, 0.05, 1e-7);
    CHECK_NEAR(adapter_scale(a), 2, 0);
    CHECK_EQ_INT(a->fan_in_fan_out, 0);
    CHECK_EQ_INT(a->use_dora, 0);
    CHECK_STR(a->base_model, "Qwen/Qwen2.5-0.5B-Instruct");
    CHECK_EQ_INT(a->n_targets, 2);
    CHECK_EQ_INT(a->n_tensors, 96);
    const adapter_tensor *A = adapter_find(a, 0, "self_attn.q_proj", ADAPTER_A);
    const adapter_tensor *B = adapter_find(a, 23, "self_attn.v_proj", ADAPTER_B);
    REQUIRE(A && B);
    CHECK_EQ_INT(A->rows, 8);
    CHECK_EQ_INT(A->cols, 896);
    CHECK_EQ_INT(B->rows, 128); /* 2 KV heads x 64 */
    CHECK_EQ_INT(B->cols, 8);
    CHECK_STR(A->key, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");
    CHECK(adapter_find(a, 0, "self_attn.k_proj", ADAPTER_A) == NULL);
    /* in layer order, not the file's string order (layers.10 < layers.2) */
    CHECK_EQ_INT(a->t[4].layer, 1);
    /* values are the file's */
    st_file *f;
    REQUIRE(st_open(test_fixture("adapters/qwen2.5-0.5b-instruct-lora-qv/adapter_model.safetensors"), &f, &err) == 0);
    const st_tensor *t = st_find(f, B->key);
    REQUIRE(t);
    CHECK(!memcmp(t->data, B->data, t->nbytes));
    float bmax = 0;
    for (int i = 0; i < B->rows * B->cols; i++) bmax = fmaxf(bmax, fabsf(B->data[i]));
    CHECK(bmax > 0); /* trained: B is not zero */
    st_close(f);
    hf_config c;
    qwen05b(&c);
    CHECK(adapter_check_model(a, &c, &err) == 0);
    c.n_kv_heads = 7;
    CHECK(adapter_check_model(a, &c, &err) == -1 && strstr(err.msg, "v_proj"));
    qwen05b(&c);
    c.n_layers = 12;
    CHECK(adapter_check_model(a, &c, &err) == -1 && strstr(err.msg, "layer"));
    hf_config g;
    hf_config_defaults(ARCH_GPT2, &g);
    CHECK(adapter_check_model(a, &g, &err) == -1);
    CHECK(adapter_targets_module(a, ARCH_QWEN2, 3, "self_attn.q_proj"));
    CHECK(!adapter_targets_module(a, ARCH_QWEN2, 3, "self_attn.k_proj"));
    adapter_free(a);
}

/* GPT-2's Conv1D layers keep [in, out] weights, yet PEFT stores their LoRA
 * matrices as A [r, in] and B [out, r] like Linear layers (fan_in_fan_out
 * only transposes the merged delta). */
TEST(gpt2_fixture) {
    adapter *a;
    lr_err err = {0};
    REQUIRE(adapter_load(test_fixture("adapters/gpt2-lora-causal-lm"), &a, &err) == 0);
    CHECK_EQ_INT(a->arch, ARCH_GPT2);
    CHECK_EQ_INT(a->fan_in_fan_out, 1);
    CHECK_EQ_INT(a->n_tensors, 72);
    CHECK_NEAR(adapter_scale(a), 4, 0);
    const adapter_tensor *A = adapter_find(a, 5, "attn.c_attn", ADAPTER_A);
    const adapter_tensor *B = adapter_find(a, 5, "attn.c_attn", ADAPTER_B);
    REQUIRE(A && B);
    CHECK(A->rows == 8 && A->cols == 768);
    CHECK(B->rows == 2304 && B->cols == 8);
    const adapter_tensor *M = adapter_find(a, 11, "mlp.c_proj", ADAPTER_A);
    REQUIRE(M);
    CHECK(M->rows == 8 && M->cols == 3072);
    CHECK(adapter_find(a, 0, "attn.c_proj", ADAPTER_B) != NULL);
    CHECK(adapter_find(a, 0, "mlp.c_fc", ADAPTER_A) == NULL);
    /* "c_proj" selects both attn.c_proj and mlp.c_proj, as in PEFT */
    CHECK(adapter_targets_module(a, ARCH_GPT2, 0, "attn.c_proj"));
    CHECK(adapter_targets_module(a, ARCH_GPT2, 0, "mlp.c_proj"));
    CHECK(adapter_targets_module(a, ARCH_GPT2, 0, "attn.c_attn"));
    CHECK(!adapter_targets_module(a, ARCH_GPT2, 0, "mlp.c_fc"));
    hf_config g;
    hf_config_defaults(ARCH_GPT2, &g);
    CHECK(adapter_check_model(a, &g, &err) == 0);
    adapter_free(a);
}

TEST(seq_cls_fixture_rejected) {
    adapter *a = NULL;
    lr_err err = {0};
    CHECK(adapter_load(test_fixture("adapters/gpt2-lora-seq-cls"), &a, &err) == -1);
    CHECK(a == NULL);
    CHECKF(strstr(err.msg, "task_type SEQ_CLS is not supported") != NULL, "%s", err.msg);
    CHECK_STR(err.param, "task_type");
}

/* Loading and saving a PEFT adapter gives PEFT's bytes back: the
 * safetensors file exactly, and the config when it has PEFT 0.9's fields. */
TEST(roundtrip_is_byte_identical) {
    const char *dirs[] = {"adapters/qwen2.5-0.5b-instruct-lora-qv", "adapters/gpt2-lora-causal-lm"};
    for (int i = 0; i < 2; i++) {
        adapter *a, *b;
        lr_err err = {0};
        char out[512], p1[600], p2[1200];
        snprintf(out, sizeof out, "%s/rt%d", test_tmpdir(), i);
        REQUIRE(adapter_load(test_fixture(dirs[i]), &a, &err) == 0);
        REQUIRE(adapter_save(a, out, &err) == 0);
        snprintf(p1, sizeof p1, "%s/adapter_model.safetensors", out);
        snprintf(p2, sizeof p2, "%s/adapter_model.safetensors", test_fixture(dirs[i]));
        CHECKF(same_file(p1, p2), "%s: safetensors differ", dirs[i]);
        if (i == 0) {
            snprintf(p1, sizeof p1, "%s/adapter_config.json", out);
            snprintf(p2, sizeof p2, "%s/adapter_config.json", test_fixture(dirs[i]));
            CHECKF(same_file(p1, p2), "%s: config differs", dirs[i]);
        }
        REQUIRE(adapter_load(out, &b, &err) == 0);
        REQUIRE(a->n_tensors == b->n_tensors);
        for (int k = 0; k < a->n_tensors; k++) {
            CHECK_STR(a->t[k].key, b->t[k].key);
            CHECK(a->t[k].rows == b->t[k].rows && a->t[k].cols == b->t[k].cols);
            CHECK(!memcmp(a->t[k].data, b->t[k].data, sizeof(float) * (size_t)a->t[k].rows * (size_t)a->t[k].cols));
        }
        CHECK_EQ_INT(a->fan_in_fan_out, b->fan_in_fan_out);
        CHECK_NEAR(a->alpha, b->alpha, 0);
        adapter_free(a);
        adapter_free(b);
    }
}

TEST(new_dora_adapter_has_peft_fields_and_keys) {
    lr_err err = {0};
    adapter *a = adapter_new();
    REQUIRE(a);
    a->arch = ARCH_GPT2;
    a->r = 4;
    a->alpha = 12.5f;
    a->dropout = 0.1f;
    a->use_dora = 1;
    a->use_rslora = 1;
    a->fan_in_fan_out = 1;
    snprintf(a->base_model, sizeof a->base_model, "gpt2");
    snprintf(a->targets[0], sizeof a->targets[0], "c_proj");
    snprintf(a->targets[1], sizeof a->targets[1], "c_attn");
    a->n_targets = 2;
    for (int l = 0; l < 2; l++) {
        adapter_tensor *A = adapter_add(a, l, "attn.c_attn", ADAPTER_A, 4, 16, &err);
        adapter_tensor *B = adapter_add(a, l, "attn.c_attn", ADAPTER_B, 48, 4, &err);
        adapter_tensor *M = adapter_add(a, l, "attn.c_attn", ADAPTER_MAGNITUDE, 48, 1, &err);
        REQUIRE(A && B && M);
        for (int i = 0; i < 64; i++) A->data[i] = (float)i / 64;
        for (int i = 0; i < 48; i++) M->data[i] = 1 + (float)i;
    }
    CHECK(adapter_add(a, 0, "attn.c_attn", ADAPTER_A, 4, 16, &err) == NULL && strstr(err.msg, "twice"));
    CHECK(adapter_add(a, 0, "self_attn.q_proj", ADAPTER_A, 4, 16, &err) == NULL);
    CHECK_NEAR(adapter_scale(a), 6.25, 1e-6);
    char out[512], path[600];
    snprintf(out, sizeof out, "%s/dora", test_tmpdir());
    REQUIRE(adapter_save(a, out, &err) == 0);
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", out);
    st_file *f;
    REQUIRE(st_open(path, &f, &err) == 0);
    CHECK_STR(st_metadata(f, "format"), "pt");
    const st_tensor *m = st_find(f, "base_model.model.transformer.h.1.attn.c_attn.lora_magnitude_vector");
    REQUIRE(m);
    CHECK(m->ndim == 1 && m->shape[0] == 48 && m->dtype == ST_F32);
    CHECK(st_find(f, "base_model.model.transformer.h.0.attn.c_attn.lora_A.weight") != NULL);
    CHECK_EQ_INT(st_count(f), 6);
    st_close(f);
    snprintf(path, sizeof path, "%s/adapter_config.json", out);
    char *text;
    size_t len;
    REQUIRE(lr_read_file(path, 1 << 20, &text, &len, &err) == 0);
    static const char *const want[] = {
        "\"alpha_pattern\": {}", "\"auto_mapping\": null", "\"base_model_name_or_path\": \"gpt2\"",
        "\"bias\": \"none\"", "\"fan_in_fan_out\": true", "\"inference_mode\": true", "\"init_lora_weights\": true",
        "\"layers_pattern\": null", "\"layers_to_transform\": null", "\"loftq_config\": {}", "\"lora_alpha\": 12.5",
        "\"lora_dropout\": 0.1", "\"megatron_config\": null", "\"megatron_core\": \"megatron.core\"",
        "\"modules_to_save\": null", "\"peft_type\": \"LORA\"", "\"r\": 4", "\"rank_pattern\": {}",
        "\"revision\": null", "\"target_modules\": [\n    \"c_attn\",\n    \"c_proj\"\n  ]",
        "\"task_type\": \"CAUSAL_LM\"", "\"use_dora\": true", "\"use_rslora\": true"};
    for (size_t i = 0; i < sizeof want / sizeof *want; i++) CHECKF(strstr(text, want[i]), "missing %s", want[i]);
    CHECK(text[len - 1] == '}'); /* PEFT writes no newline at the end */
    free(text);
    adapter *b;
    REQUIRE(adapter_load(out, &b, &err) == 0);
    CHECK_EQ_INT(b->use_dora, 1);
    const adapter_tensor *M = adapter_find(b, 1, "attn.c_attn", ADAPTER_MAGNITUDE);
    REQUIRE(M);
    CHECK(M->rows == 48 && M->cols == 1 && M->data[47] == 48);
    hf_config g;
    hf_config_defaults(ARCH_GPT2, &g);
    g.hidden = 16, g.n_heads = 2, g.head_dim = 8, g.intermediate = 64;
    CHECK(adapter_check_model(b, &g, &err) == 0);
    adapter_free(b);
    adapter_free(a);
}

static int parse(const char *json, lr_err *err) {
    adapter *a = adapter_new();
    int rc = adapter_config_parse(json, strlen(json), a, err);
    adapter_free(a);
    return rc;
}

TEST(config_errors) {
    static const struct {
        const char *json, *msg;
    } cases[] = {
        {"{\"r\":8,\"target_modules\":[\"q_proj\"],\"modules_to_save\":[\"score\"]}", "modules_to_save [\"score\"] is not supported"},
        {"{\"r\":8,\"target_modules\":[\"q_proj\"],\"task_type\":\"TOKEN_CLS\"}", "task_type TOKEN_CLS"},
        {"{\"r\":8,\"target_modules\":[\"q_proj\"],\"peft_type\":\"IA3\"}", "peft_type must be \"LORA\""},
        {"{\"r\":8,\"target_modules\":[\"q_proj\"],\"bias\":\"all\"}", "bias must be \"none\""},
        {"{\"r\":8,\"target_modules\":[\"q_proj\"],\"rank_pattern\":{\"q_proj\":4}}", "rank_pattern is not supported"},
        {"{\"r\":8,\"target_modules\":[\"q_proj\"],\"layers_to_transform\":[0,1]}", "layers_to_transform [0,1] is not supported"},
        {"{\"r\":0,\"target_modules\":[\"q_proj\"]}", "r must be a positive integer"},
        {"{\"r\":8.5,\"target_modules\":[\"q_proj\"]}", "r must be a positive integer"},
        {"{\"r\":8,\"target_modules\":[\"q_proj\"],\"lora_alpha\":-1}", "lora_alpha must be a positive number"},
        {"{\"r\":8,\"target_modules\":[\"q_proj\"],\"lora_dropout\":1}", "lora_dropout must be a number in [0, 1)"},
        {"{\"r\":8,\"target_modules\":[\"q_proj\"],\"use_dora\":\"yes\"}", "use_dora must be true or false"},
        {"{\"r\":8}", "target_modules is required"},
        {"{\"r\":8,\"target_modules\":[]}", "target_modules must be a list"},
        {"{\"r\":8,\"target_modules\":[1]}", "target_modules entries"},
        {"{\"r\":8,\"target_modules\":[\"q_proj\"],\"lora_bias\":true}", "lora_bias true"},
        {"[]", "not a JSON object"},
        {"{\"r\":8,", "adapter_config.json: line 1"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        lr_err err = {0};
        int rc = parse(cases[i].json, &err);
        CHECKF(rc == -1 && strstr(err.msg, cases[i].msg), "case %zu: rc %d '%s'", i, rc, err.msg);
    }
    lr_err err = {0};
    CHECK(parse("{\"r\":8,\"target_modules\":\"q_proj|v_proj\",\"task_type\":null,\"modules_to_save\":null}", &err) == 0);
}

TEST(target_matching) {
    adapter *a = adapter_new();
    REQUIRE(a);
    snprintf(a->target_regex, sizeof a->target_regex, ".*\\.(q_proj|v_proj)");
    CHECK(adapter_targets_module(a, ARCH_LLAMA, 0, "self_attn.q_proj"));
    CHECK(adapter_targets_module(a, ARCH_MISTRAL, 31, "self_attn.v_proj"));
    CHECK(!adapter_targets_module(a, ARCH_LLAMA, 0, "self_attn.o_proj"));
    snprintf(a->target_regex, sizeof a->target_regex, "q_proj"); /* a string must match the whole name */
    CHECK(!adapter_targets_module(a, ARCH_LLAMA, 0, "self_attn.q_proj"));
    snprintf(a->target_regex, sizeof a->target_regex, "all-linear");
    CHECK(adapter_targets_module(a, ARCH_QWEN2, 2, "mlp.down_proj"));
    CHECK(adapter_targets_module(a, ARCH_GPT2, 2, "mlp.c_fc"));
    CHECK(!adapter_targets_module(a, ARCH_GPT2, 2, "self_attn.q_proj"));
    a->target_regex[0] = 0;
    snprintf(a->targets[0], sizeof a->targets[0], "self_attn.o_proj");
    a->n_targets = 1;
    CHECK(adapter_targets_module(a, ARCH_LLAMA, 1, "self_attn.o_proj"));
    CHECK(!adapter_targets_module(a, ARCH_LLAMA, 1, "self_attn.q_proj"));
    snprintf(a->targets[0], sizeof a->targets[0], "proj"); /* a suffix only at a dot */
    CHECK(!adapter_targets_module(a, ARCH_LLAMA, 1, "self_attn.q_proj"));
    adapter_free(a);
    char buf[128];
    CHECK_STR(adapter_module_key(ARCH_QWEN2, 7, "mlp.up_proj", buf, sizeof buf),
              "base_model.model.model.layers.7.mlp.up_proj");
    CHECK_STR(adapter_module_key(ARCH_GPT2, 0, "attn.c_attn", buf, sizeof buf),
              "base_model.model.transformer.h.0.attn.c_attn");
    CHECK(adapter_module_key(ARCH_GPT2, 0, "attn.c_attn", buf, 10) == NULL);
    int n, in, out;
    CHECK(adapter_layer_modules(ARCH_MISTRAL, &n) && n == 7);
    hf_config c;
    qwen05b(&c);
    CHECK(adapter_module_dims(&c, "self_attn.k_proj", &in, &out) == 0 && in == 896 && out == 128);
    CHECK(adapter_module_dims(&c, "mlp.down_proj", &in, &out) == 0 && in == 4864 && out == 896);
    CHECK(adapter_module_dims(&c, "attn.c_attn", &in, &out) == -1);
}

static void write_adapter(const char *dir, const char *const *keys, const int64_t (*shapes)[2], int n) {
    lr_err err = {0};
    static float zeros[8 * 64];
    char path[600];
    if (lr_mkdirs(dir, &err)) return;
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    const char *cfg = "{\"r\":8,\"lora_alpha\":16,\"target_modules\":[\"q_proj\"],\"task_type\":\"CAUSAL_LM\"}";
    if (lr_write_file_atomic(path, cfg, strlen(cfg), &err)) return;
    st_writer *w = st_writer_new();
    for (int i = 0; i < n; i++)
        if (st_writer_add(w, keys[i], ST_F32, shapes[i][1] ? 2 : 1, shapes[i], zeros, &err)) return;
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    if (st_writer_write(w, path, &err)) fprintf(stderr, "%s\n", err.msg);
    st_writer_free(w);
}

TEST(bad_tensors_rejected) {
    char dir[512];
    adapter *a;
    lr_err err = {0};
    snprintf(dir, sizeof dir, "%s/bad", test_tmpdir());
    const char *k1[] = {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"};
    const int64_t s1[][2] = {{8, 64}};
    write_adapter(dir, k1, s1, 1);
    CHECK(adapter_load(dir, &a, &err) == -1 && strstr(err.msg, "no lora_B"));
    const char *k2[] = {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
                        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"};
    const int64_t s2[][2] = {{4, 64}, {64, 4}};
    write_adapter(dir, k2, s2, 2);
    CHECK(adapter_load(dir, &a, &err) == -1 && strstr(err.msg, "r is 8"));
    const char *k3[] = {"base_model.model.lm_head.weight"};
    const int64_t s3[][2] = {{8, 8}};
    write_adapter(dir, k3, s3, 1);
    CHECK(adapter_load(dir, &a, &err) == -1 && strstr(err.msg, "not a LoRA matrix"));
    const char *k4[] = {"base_model.model.model.layers.01.self_attn.q_proj.lora_A.weight"};
    write_adapter(dir, k4, s1, 1);
    CHECK(adapter_load(dir, &a, &err) == -1 && strstr(err.msg, "not a LoRA matrix"));
    const char *k5[] = {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
                        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight",
                        "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"};
    const int64_t s5[][2] = {{8, 64}, {64, 8}, {64, 0}};
    write_adapter(dir, k5, s5, 3);
    CHECK(adapter_load(dir, &a, &err) == -1 && strstr(err.msg, "use_dora is false"));
    write_adapter(dir, k5, s5, 2);
    REQUIRE(adapter_load(dir, &a, &err) == 0);
    adapter_free(a);
    CHECK(adapter_load("/nonexistent", &a, &err) == -1);
}
