/* decode: the KV cache (worker/model_decode.c) beyond what test_generate
 * checks: tokens appended in blocks to a filled cache give the logits of
 * one prefill; the cache is backend memory, so a backend without host
 * memory gets one; on a GPU (skipped without one) decoding follows the CPU's
 * logits, teacher-forced on the CPU's greedy tokens. */
#include <math.h>
#include <stdint.h>

#include "common/rng.h"
#include "formats/hfconfig.h"
#include "kernels/backend.h"
#include "tests/unit/test.h"
#include "worker/commands.h"
#include "worker/model.h"

static int mk(const char *arch, const char *dir, int window) {
    char *argv[] = {"mkmodel", "--arch", (char *)arch, "--out", (char *)dir, "--seed", "4", NULL};
    if (cmd_mkmodel(7, argv)) return -1;
    if (!window) return 0;
    char path[600];
    hf_config c;
    lr_err err = {0};
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (hf_config_load(path, &c, &err)) return -1;
    c.sliding_window = window;
    return hf_config_write(&c, path, &err);
}

/* The model with an adapter whose B is random, so it changes the output. */
static model *load(kb_backend *be, const char *dir) {
    lr_err err = {0};
    model *m = NULL;
    model_lora_cfg lc = {.r = 4, .alpha = 8, .n_targets = 1};
    snprintf(lc.targets[0], sizeof lc.targets[0], "all-linear");
    if (model_load(dir, be, &m, &err) || model_lora_init(m, &lc, 5, &err)) {
        printf("    %s\n", err.msg);
        model_free(m);
        return NULL;
    }
    lr_rng r;
    rng_seed(&r, 12);
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

static double max_abs(const float *x, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s = fmax(s, fabs(x[i]));
    return s;
}
static double max_diff(const float *a, const float *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s = fmax(s, fabs(a[i] - b[i]));
    return s;
}

enum { P = 11 };
static const int32_t prompt[P] = {5, 77, 301, 12, 9, 140, 33, 2, 100, 7, 64};

/* 11 tokens as blocks of 4, 5, 1 and 1 against one prefill of 11. */
static void blocks(const char *arch, int window) {
    char dir[512];
    lr_err err = {0};
    snprintf(dir, sizeof dir, "%s/blocks-%s-w%d", test_tmpdir(), arch, window);
    REQUIRE(mk(arch, dir, window) == 0);
    kb_backend *be = NULL;
    REQUIRE(kb_cpu_create(2, &be, &err) == 0);
    model *m = load(be, dir);
    REQUIRE(m);
    int V = model_config(m)->vocab_size;
    float *one = malloc((size_t)P * V * sizeof(float)), *got = malloc((size_t)P * V * sizeof(float));
    model_kv *kv = NULL;
    REQUIRE(model_kv_new(m, P, &kv, &err) == 0);
    REQUIRE(model_kv_append(kv, prompt, P, one, 1, &err) == 0);
    model_kv_reset(kv);
    const int cut[] = {0, 4, 9, 10, 11};
    for (int b = 0; b < 4; b++)
        REQUIRE(model_kv_append(kv, prompt + cut[b], cut[b + 1] - cut[b], got + (size_t)cut[b] * V, 1, &err) == 0);
    CHECK_EQ_INT(model_kv_len(kv), P);
    /* not bit for bit: the matmuls of 4, 5 and 1 rows round otherwise than those of 11 */
    double scale = max_abs(one, (size_t)P * V), d = max_diff(one, got, (size_t)P * V);
    printf("    %s window %d: blocks of 4, 5, 1, 1 vs one prefill: max|diff| %.2e of max |logit| %.2f\n", arch, window,
           d, scale);
    CHECKF(d <= 1e-5 * scale, "blocks appended to a filled cache differ from the prefill by %g", d);
    CHECK(model_kv_append(kv, prompt, 1, NULL, 0, &err) == -1); /* full */
    model_kv_free(kv);
    model_free(m);
    free(one);
    free(got);
    kb_destroy(be);
}

TEST(blocks_match_prefill_gpt2) { blocks("gpt2", 0); }
TEST(blocks_match_prefill_llama) { blocks("llama", 0); }
TEST(blocks_match_prefill_mistral_window) { blocks("mistral", 5); }

/* The cache is allocated with be->alloc and filled by ops only: a backend
 * that says its memory is not the host's gets one, and it decodes. */
TEST(cache_on_non_host_backend) {
    char dir[512];
    lr_err err = {0};
    snprintf(dir, sizeof dir, "%s/nonhost", test_tmpdir());
    REQUIRE(mk("qwen2", dir, 0) == 0);
    kb_backend *be = NULL;
    REQUIRE(kb_cpu_create(1, &be, &err) == 0);
    model *m = load(be, dir);
    REQUIRE(m);
    be->host_memory = 0;
    model_kv *kv = NULL;
    int rc = model_kv_new(m, 16, &kv, &err);
    CHECKF(rc == 0, "model_kv_new on a non-host backend: %s", err.msg);
    float *l = malloc((size_t)model_config(m)->vocab_size * sizeof(float));
    if (!rc) CHECK(model_kv_append(kv, prompt, P, l, 0, &err) == 0 && isfinite(l[0]));
    model_kv_free(kv);
    model_free(m);
    free(l);
    kb_destroy(be);
}

/* On a GPU (bf16 weights there): prefill and 8 decoding steps, fed the
 * CPU's greedy tokens, against the CPU's logits. */
TEST(cuda_decode_follows_cpu) {
    lr_err err = {0};
    kb_backend *gpu = NULL, *cpu = NULL;
    if (kb_create("cuda", 0, &gpu, &err)) SKIP("no usable GPU: %s", err.msg);
    char dir[512];
    snprintf(dir, sizeof dir, "%s/cuda", test_tmpdir());
    REQUIRE(mk("llama", dir, 6) == 0);
    REQUIRE(kb_cpu_create(2, &cpu, &err) == 0);
    model *mc = load(cpu, dir), *mg = load(gpu, dir);
    REQUIRE(mc && mg);
    int V = model_config(mc)->vocab_size, steps = 8;
    float *lc = malloc((size_t)V * sizeof(float)), *lg = malloc((size_t)V * sizeof(float));
    model_kv *kc = NULL, *kg = NULL;
    REQUIRE(model_kv_new(mc, P + steps, &kc, &err) == 0);
    REQUIRE(model_kv_new(mg, P + steps, &kg, &err) == 0);
    REQUIRE(model_kv_append(kc, prompt, P, lc, 0, &err) == 0);
    REQUIRE(model_kv_append(kg, prompt, P, lg, 0, &err) == 0);
    double worst = 0, scale = 0;
    for (int t = 0; t < steps; t++) {
        worst = fmax(worst, max_diff(lc, lg, (size_t)V));
        scale = fmax(scale, max_abs(lc, (size_t)V));
        int32_t id = 0;
        for (int i = 1; i < V; i++)
            if (lc[i] > lc[id]) id = i;
        REQUIRE(model_kv_append(kc, &id, 1, lc, 0, &err) == 0);
        REQUIRE(model_kv_append(kg, &id, 1, lg, 0, &err) == 0);
    }
    printf("    cuda vs cpu: max|diff| %.2e of max |logit| %.2f over the prefill and %d steps\n", worst, scale, steps);
    CHECKF(worst <= 3e-2 * scale, "GPU decoding differs from the CPU's by %g", worst);
    model_kv_free(kc);
    model_kv_free(kg);
    model_free(mc);
    model_free(mg);
    free(lc);
    free(lg);
    kb_destroy(cpu);
    kb_destroy(gpu);
}
