/* generate: KV-cached decoding against full recomputation on tiny random
 * models (mkmodel) with a random non-zero LoRA adapter, also with a sliding
 * window shorter than prompt + output; the sampling rules;
 * stop tokens and stop strings. Agreement of the logits with PyTorch is
 * tests/reference/test_generate.py. */
#include <stdint.h>

#include "common/rng.h"
#include "kernels/backend.h"
#include "tests/unit/test.h"
#include "formats/chat.h"
#include "worker/commands.h"
#include "worker/generate.h"
#include "formats/hfconfig.h"
#include "worker/model.h"
#include "formats/tok.h"

static int mk(const char *arch, const char *dir) {
    char *argv[] = {"mkmodel", "--arch", (char *)arch, "--out", (char *)dir, "--seed", "3", "--layers", "2", NULL};
    return cmd_mkmodel(9, argv);
}

/* Loads the model in dir with a LoRA adapter whose B is random (so the
 * adapter changes the output). */
static model *load_with_lora(kb_backend *be, const char *dir, int dora) {
    lr_err err = {0};
    model *m = NULL;
    if (model_load(dir, be, &m, &err)) {
        printf("    %s\n", err.msg);
        return NULL;
    }
    model_lora_cfg lc = {.r = 4, .alpha = 8, .n_targets = 1, .use_dora = dora};
    snprintf(lc.targets[0], sizeof lc.targets[0], "all-linear");
    if (model_lora_init(m, &lc, 5, &err)) {
        printf("    %s\n", err.msg);
        model_free(m);
        return NULL;
    }
    lr_rng r;
    rng_seed(&r, 11);
    for (size_t i = 0; i < model_n_params(m); i++) {
        const model_param *p = model_param_at(m, i);
        if (!strstr(p->name, "lora_B")) continue;
        float *h = malloc(p->numel * sizeof(float));
        rng_fill_uniform(&r, h, p->numel, -0.3f, 0.3f);
        if (model_param_set(m, i, h, p->numel, &err)) printf("    %s\n", err.msg);
        free(h);
    }
    return m;
}

static int32_t argmax(const float *v, int n) {
    int32_t b = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[b]) b = i;
    return b;
}

/* Sets the sliding window of the model in dir (Qwen2: on layers from
 * max_window_layers on). */
static int set_window(const char *dir, int window, int max_window_layers) {
    char path[600];
    hf_config c;
    lr_err err = {0};
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (hf_config_load(path, &c, &err)) return -1;
    c.sliding_window = window;
    c.max_window_layers = max_window_layers;
    return hf_config_write(&c, path, &err);
}

/* Greedy decoding: KV cache vs. the full forward over the growing sequence
 * at every step; also the logits of the prefill (all rows) and of each
 * step. window > 0: with that sliding window, shorter than the prompt. */
static void kv_vs_full_w(const char *arch, int dora, int window, int max_window_layers) {
    char dir[512];
    lr_err err = {0};
    snprintf(dir, sizeof dir, "%s/%s%s-w%d", test_tmpdir(), arch, dora ? "-dora" : "", window);
    REQUIRE(mk(arch, dir) == 0);
    if (window) REQUIRE(set_window(dir, window, max_window_layers) == 0);
    kb_backend *be = NULL;
    REQUIRE(kb_cpu_create(1, &be, &err) == 0);
    model *m = load_with_lora(be, dir, dora);
    REQUIRE(m);
    int V = model_config(m)->vocab_size, P = 9, NEW = 24;
    int32_t seq[64] = {5, 77, 301, 12, 9, 640, 33, 2, 100};
    float *full = malloc((size_t)64 * V * sizeof(float)), *kvl = malloc((size_t)64 * V * sizeof(float));
    model_kv *kv = NULL;
    REQUIRE(model_kv_new(m, P + NEW, &kv, &err) == 0);

    /* the prefill's logits, every row */
    REQUIRE(model_logits(m, seq, P, full, &err) == 0);
    REQUIRE(model_kv_append(kv, seq, P, kvl, 1, &err) == 0);
    double worst = 0, scale = 0;
    for (size_t i = 0; i < (size_t)P * V; i++) {
        worst = fmax(worst, fabs(full[i] - kvl[i]));
        scale = fmax(scale, fabs(full[i]));
    }
    CHECKF(worst <= 1e-5 * scale, "prefill logits differ by %g (max |logit| %g)", worst, scale);

    /* greedy by full recomputation */
    int32_t ref[64];
    memcpy(ref, seq, sizeof seq);
    double step_worst = 0;
    for (int t = P; t < P + NEW; t++) {
        REQUIRE(model_logits(m, ref, t, full, &err) == 0);
        ref[t] = argmax(full + (size_t)(t - 1) * V, V);
    }
    /* greedy with the cache, step by step, comparing each step's logits */
    model_kv_reset(kv);
    REQUIRE(model_kv_append(kv, seq, P, kvl, 0, &err) == 0);
    int same = 1;
    for (int t = P; t < P + NEW; t++) {
        int32_t id = argmax(kvl, V);
        same &= id == ref[t];
        REQUIRE(model_logits(m, ref, t, full, &err) == 0);
        for (int i = 0; i < V; i++) step_worst = fmax(step_worst, fabs(full[(size_t)(t - 1) * V + i] - kvl[i]));
        if (t + 1 < P + NEW) REQUIRE(model_kv_append(kv, &ref[t], 1, kvl, 0, &err) == 0);
    }
    CHECKF(same, "KV-cached greedy tokens differ from full recomputation");
    CHECKF(step_worst <= 1e-4, "decode-step logits differ by %g", step_worst);

    /* gen_run greedy gives the same tokens */
    gen_opts o;
    gen_opts_init(&o);
    o.max_new_tokens = NEW;
    gen_result g;
    REQUIRE(gen_run(kv, NULL, seq, P, &o, &g, &err) == 0);
    CHECK_EQ_INT(g.n, NEW);
    CHECK_EQ_INT(g.stop, GEN_STOP_LENGTH);
    CHECK(g.n == NEW && !memcmp(g.ids, ref + P, (size_t)NEW * sizeof(int32_t)));
    gen_result_free(&g);

    /* without the adapter: the base model's greedy path, different logits */
    CHECK(model_lora_enable(m, 0) > 0);
    REQUIRE(model_logits(m, seq, P, full, &err) == 0);
    model_kv *kv2 = NULL;
    REQUIRE(model_kv_new(m, P + 1, &kv2, &err) == 0);
    REQUIRE(model_kv_append(kv2, seq, P, kvl, 0, &err) == 0);
    double d_base = 0;
    for (int i = 0; i < V; i++) d_base = fmax(d_base, fabs(full[(size_t)(P - 1) * V + i] - kvl[i]));
    CHECKF(d_base <= 1e-5 * scale, "base prefill logits differ by %g", d_base);
    model_lora_enable(m, 1);
    REQUIRE(model_logits(m, seq, P, kvl, &err) == 0);
    double d_ad = 0;
    for (int i = 0; i < V; i++) d_ad = fmax(d_ad, fabs(full[(size_t)(P - 1) * V + i] - kvl[(size_t)(P - 1) * V + i]));
    CHECKF(d_ad > 1e-3, "the adapter does not change the logits (%g)", d_ad);
    printf("    %s%s: prefill max|diff| %.2e, decode max|diff| %.2e, %d greedy tokens equal\n", arch, dora ? " (DoRA)" : "", worst, step_worst,
           NEW);
    if (window) { /* the window matters: the same model without it gives other logits */
        int T = P + NEW - 1;
        float *wl = malloc((size_t)T * V * sizeof(float));
        model *m2 = NULL;
        REQUIRE(model_logits(m, ref, T, wl, &err) == 0);
        REQUIRE(set_window(dir, 0, 0) == 0);
        REQUIRE((m2 = load_with_lora(be, dir, dora)) != NULL);
        REQUIRE(model_logits(m2, ref, T, full, &err) == 0);
        double d_first = 0, d_last = 0;
        for (int i = 0; i < V; i++) {
            d_first = fmax(d_first, fabs(full[(size_t)(window - 1) * V + i] - wl[(size_t)(window - 1) * V + i]));
            d_last = fmax(d_last, fabs(full[(size_t)(T - 1) * V + i] - wl[(size_t)(T - 1) * V + i]));
        }
        CHECKF(d_first <= 1e-5 * scale, "row %d is inside the window, yet differs by %g", window - 1, d_first);
        CHECKF(d_last > 1e-3, "the window %d does not change the logits (%g)", window, d_last);
        printf("    window %d: positions < window unchanged (%.1e), last position changed by %.2e\n", window,
               d_first, d_last);
        model_free(m2);
        free(wl);
    }

    /* the cache is bounded */
    model_kv_reset(kv2);
    CHECK(model_kv_append(kv2, seq, P + 1, NULL, 0, &err) == 0);
    CHECK(model_kv_append(kv2, seq, 1, NULL, 0, &err) == -1);
    model_kv_free(kv2);
    model_kv_free(kv);
    model_free(m);
    free(full);
    free(kvl);
    kb_destroy(be);
}

static void kv_vs_full(const char *arch, int dora) { kv_vs_full_w(arch, dora, 0, 0); }

TEST(kv_equals_full_llama) { kv_vs_full("llama", 0); }
TEST(kv_equals_full_qwen2) { kv_vs_full("qwen2", 0); }
TEST(kv_equals_full_gpt2) { kv_vs_full("gpt2", 0); }
TEST(kv_equals_full_llama_dora) { kv_vs_full("llama", 1); }
TEST(kv_equals_full_gpt2_dora) { kv_vs_full("gpt2", 1); }
/* prompt 9 + 24 new tokens through a window of 5 */
TEST(kv_equals_full_mistral_window) { kv_vs_full_w("mistral", 0, 5, 0); }
TEST(kv_equals_full_mistral_window_dora) { kv_vs_full_w("mistral", 1, 7, 0); }
/* Qwen2: the window on layer 1 only (max_window_layers 1) */
TEST(kv_equals_full_qwen2_window_layer1) { kv_vs_full_w("qwen2", 0, 4, 1); }

TEST(pick_rules) {
    gen_opts o;
    gen_opts_init(&o);
    lr_rng r;
    rng_seed(&r, 1);
    float l[5] = {1.0f, 3.0f, 2.0f, 3.0f, -1.0f};
    float c[5];
    memcpy(c, l, sizeof l);
    CHECK_EQ_INT(gen_pick(c, 5, &o, &r), 1); /* greedy: the first maximum */
    o.temperature = 1.0f;
    o.top_k = 1; /* keeps both tokens tied at the top */
    int seen[5] = {0};
    for (int i = 0; i < 400; i++) {
        memcpy(c, l, sizeof l);
        seen[gen_pick(c, 5, &o, &r)]++;
    }
    CHECK(seen[1] > 150 && seen[3] > 150 && seen[0] + seen[2] + seen[4] == 0);
    /* top_p: probabilities .09 .67 .24 -> 0.6 keeps the top token only,
     * 0.8 the top two */
    float l2[3] = {0.0f, 2.0f, 1.0f};
    o.top_k = 0;
    o.top_p = 0.6f;
    memset(seen, 0, sizeof seen);
    for (int i = 0; i < 200; i++) {
        memcpy(c, l2, sizeof l2);
        seen[gen_pick(c, 3, &o, &r)]++;
    }
    CHECK_EQ_INT(seen[1], 200);
    o.top_p = 0.8f;
    memset(seen, 0, sizeof seen);
    for (int i = 0; i < 2000; i++) {
        memcpy(c, l2, sizeof l2);
        seen[gen_pick(c, 3, &o, &r)]++;
    }
    CHECK_EQ_INT(seen[0], 0);
    /* renormalised over the two kept: .67/.91 = 0.731 */
    CHECK_NEAR(seen[1] / 2000.0, 0.7311, 0.04);
    /* plain sampling follows the softmax (temperature 2: logits halved) */
    o.top_p = 1.0f;
    o.temperature = 2.0f;
    memset(seen, 0, sizeof seen);
    for (int i = 0; i < 4000; i++) {
        memcpy(c, l2, sizeof l2);
        seen[gen_pick(c, 3, &o, &r)]++;
    }
    double z = 1 + exp(1.0) + exp(0.5);
    CHECK_NEAR(seen[1] / 4000.0, exp(1.0) / z, 0.03);
    CHECK_NEAR(seen[0] / 4000.0, 1 / z, 0.03);
}

TEST(opts_checked) {
    gen_opts o;
    lr_err err = {0};
    gen_opts_init(&o);
    CHECK(gen_opts_check(&o, &err) == 0);
    o.top_p = 0;
    CHECK(gen_opts_check(&o, &err) == -1);
    CHECK_STR(err.param, "top_p");
    gen_opts_init(&o);
    o.max_new_tokens = 0;
    CHECK(gen_opts_check(&o, &err) == -1);
    gen_opts_init(&o);
    o.temperature = -1;
    CHECK(gen_opts_check(&o, &err) == -1);
    gen_opts_init(&o);
    CHECK(gen_add_stop(&o, "", &err) == -1);
    for (int i = 0; i < GEN_MAX_STOP; i++) CHECK(gen_add_stop(&o, "x", &err) == 0);
    CHECK(gen_add_stop(&o, "y", &err) == -1);
}

/* Sampling with a seed is reproducible; stop tokens end the output (not
 * included); stop strings cut the text. */
TEST(stops_and_seeds) {
    char dir[512];
    lr_err err = {0};
    snprintf(dir, sizeof dir, "%s/m", test_tmpdir());
    REQUIRE(mk("qwen2", dir) == 0);
    kb_backend *be = NULL;
    REQUIRE(kb_cpu_create(1, &be, &err) == 0);
    model *m = NULL;
    tok *t = NULL;
    REQUIRE(model_load(dir, be, &m, &err) == 0);
    REQUIRE(tok_load(dir, &t, &err) == 0);
    int32_t *ids = NULL;
    size_t n;
    REQUIRE(tok_encode(t, "The model reads the text", 24, 0, &ids, &n, &err) == 0);
    model_kv *kv = NULL;
    REQUIRE(model_kv_new(m, 64, &kv, &err) == 0);
    gen_opts o;
    gen_opts_init(&o);
    o.max_new_tokens = 30;
    o.temperature = 1.0f;
    o.top_p = 0.95f;
    o.seed = 9;
    gen_result a, b, c;
    REQUIRE(gen_run(kv, t, ids, (int)n, &o, &a, &err) == 0);
    REQUIRE(gen_run(kv, t, ids, (int)n, &o, &b, &err) == 0);
    CHECK(a.n == b.n && !memcmp(a.ids, b.ids, (size_t)a.n * sizeof(int32_t)));
    CHECK(a.text && b.text && !strcmp(a.text, b.text));
    o.seed = 10;
    REQUIRE(gen_run(kv, t, ids, (int)n, &o, &c, &err) == 0);
    CHECK(c.n != a.n || memcmp(a.ids, c.ids, (size_t)a.n * sizeof(int32_t)));
    gen_result_free(&c);
    /* the 5th sampled token as a stop token: 4 tokens come out */
    REQUIRE(a.n >= 6);
    o.seed = 9;
    int32_t fifth = a.ids[4];
    int first = 0;
    while (first < 4 && a.ids[first] != fifth) first++;
    o.stop_ids[o.n_stop_ids++] = fifth;
    REQUIRE(gen_run(kv, t, ids, (int)n, &o, &c, &err) == 0);
    CHECK_EQ_INT(c.stop, GEN_STOP_TOKEN);
    CHECK_EQ_INT(c.n, first);
    gen_result_free(&c);
    o.n_stop_ids = 0;
    /* a stop string taken from the text: the text ends right before it */
    REQUIRE(a.len > 6);
    char stop[4];
    memcpy(stop, a.text + a.len - 3, 3);
    stop[3] = 0;
    REQUIRE(gen_add_stop(&o, stop, &err) == 0);
    REQUIRE(gen_run(kv, t, ids, (int)n, &o, &c, &err) == 0);
    CHECK_EQ_INT(c.stop, GEN_STOP_STRING);
    const char *first_at = strstr(a.text, stop);
    CHECK(first_at && c.len == (size_t)(first_at - a.text) && !strncmp(c.text, a.text, c.len));
    gen_result_free(&c);
    gen_result_free(&a);
    gen_result_free(&b);
    free(ids);
    model_kv_free(kv);
    model_free(m);
    tok_free(t);
    kb_destroy(be);
}
