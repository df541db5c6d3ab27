/* model: whole-model properties on tiny random models written here
 * (numerical agreement with PyTorch is tests/reference/test_grads.py):
 * determinism, gradient accumulation over micro-batches equal to one
 * batch, eval loss equal to the training loss, reproducible dropout,
 * LoRA init, the PEFT save/load round trip, and DoRA / KL / DPO identities. */
#include <stdint.h>

#include "common/buf.h"
#include "common/rng.h"
#include "kernels/backend.h"
#include "tests/unit/test.h"
#include "formats/hfconfig.h"
#include "worker/model.h"
#include "formats/safetensors.h"

#define MAXT 64

typedef struct wlist {
    char names[MAXT][96];
    int64_t shapes[MAXT][2];
    int nd[MAXT];
    float *data[MAXT];
    int n;
} wlist;

static void add(wlist *w, lr_rng *r, const char *name, int64_t d0, int64_t d1, float base, float s) {
    int i = w->n++;
    snprintf(w->names[i], sizeof w->names[i], "%s", name);
    w->shapes[i][0] = d0, w->shapes[i][1] = d1, w->nd[i] = d1 ? 2 : 1;
    size_t n = (size_t)d0 * (d1 ? d1 : 1);
    w->data[i] = malloc(n * sizeof(float));
    rng_fill_uniform(r, w->data[i], n, base - s, base + s);
}

/* A tiny random model of arch in dir. */
static int make_model(const char *dir, hf_arch arch, hf_config *c) {
    lr_err err;
    hf_config_defaults(arch, c);
    c->vocab_size = 61, c->hidden = 32, c->n_layers = 2, c->n_heads = 4, c->head_dim = 8, c->intermediate = 48;
    c->n_kv_heads = arch == ARCH_GPT2 ? 4 : 2, c->max_pos = 64, c->sliding_window = 0;
    c->tie_embeddings = arch != ARCH_LLAMA;
    if (lr_mkdirs(dir, &err)) return -1;
    char path[600];
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (hf_config_write(c, path, &err)) {
        printf("    %s\n", err.msg);
        return -1;
    }
    wlist w = {0};
    lr_rng r;
    rng_seed(&r, 77);
    int C = c->hidden, V = c->vocab_size, I = c->intermediate, KV = c->n_kv_heads * c->head_dim;
    char nm[96];
    if (arch == ARCH_GPT2) {
        add(&w, &r, "wte.weight", V, C, 0, 0.5f); /* GPT2Model keys: no "transformer." */
        add(&w, &r, "wpe.weight", c->max_pos, C, 0, 0.2f);
        add(&w, &r, "ln_f.weight", C, 0, 1, 0.1f);
        add(&w, &r, "ln_f.bias", C, 0, 0, 0.1f);
        for (int l = 0; l < c->n_layers; l++) {
            const char *mods[] = {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"};
            int ins[] = {C, C, C, I}, outs[] = {3 * C, C, I, C};
            for (int k = 0; k < 4; k++) {
                snprintf(nm, sizeof nm, "h.%d.%s.weight", l, mods[k]);
                add(&w, &r, nm, ins[k], outs[k], 0, 0.3f);
                snprintf(nm, sizeof nm, "h.%d.%s.bias", l, mods[k]);
                add(&w, &r, nm, outs[k], 0, 0, 0.1f);
            }
            for (int k = 1; k <= 2; k++) {
                snprintf(nm, sizeof nm, "h.%d.ln_%d.weight", l, k);
                add(&w, &r, nm, C, 0, 1, 0.1f);
                snprintf(nm, sizeof nm, "h.%d.ln_%d.bias", l, k);
                add(&w, &r, nm, C, 0, 0, 0.1f);
            }
        }
    } else {
        add(&w, &r, "model.embed_tokens.weight", V, C, 0, 0.5f);
        add(&w, &r, "model.norm.weight", C, 0, 1, 0.1f);
        if (!c->tie_embeddings) add(&w, &r, "lm_head.weight", V, C, 0, 0.5f);
        for (int l = 0; l < c->n_layers; l++) {
            const char *mods[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                  "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};
            int ins[] = {C, C, C, C, C, C, I}, outs[] = {C, KV, KV, C, I, I, C};
            for (int k = 0; k < 7; k++) {
                snprintf(nm, sizeof nm, "model.layers.%d.%s.weight", l, mods[k]);
                add(&w, &r, nm, outs[k], ins[k], 0, 0.3f);
                if (arch == ARCH_QWEN2 && k < 3) {
                    snprintf(nm, sizeof nm, "model.layers.%d.%s.bias", l, mods[k]);
                    add(&w, &r, nm, outs[k], 0, 0, 0.1f);
                }
            }
            snprintf(nm, sizeof nm, "model.layers.%d.input_layernorm.weight", l);
            add(&w, &r, nm, C, 0, 1, 0.1f);
            snprintf(nm, sizeof nm, "model.layers.%d.post_attention_layernorm.weight", l);
            add(&w, &r, nm, C, 0, 1, 0.1f);
        }
    }
    st_writer *sw = st_writer_new();
    int rc = 0;
    for (int i = 0; i < w.n && !rc; i++) rc = st_writer_add(sw, w.names[i], ST_F32, w.nd[i], w.shapes[i], w.data[i], &err);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (!rc) rc = st_writer_meta(sw, "format", "pt", &err);
    if (!rc) rc = st_writer_write(sw, path, &err);
    if (rc) printf("    %s\n", err.msg);
    st_writer_free(sw);
    for (int i = 0; i < w.n; i++) free(w.data[i]);
    return rc;
}

static kb_backend *backend(void) {
    static kb_backend *be;
    lr_err err;
    if (!be && kb_cpu_create(2, &be, &err)) return NULL;
    return be;
}

/* A model of arch with LoRA on every module and B randomised (PEFT's B = 0
 * would leave A without gradient). */
static model *tiny(hf_arch arch, const char *sub, float dropout) {
    char dir[512];
    hf_config c;
    lr_err err;
    snprintf(dir, sizeof dir, "%s/%s", test_tmpdir(), sub);
    if (make_model(dir, arch, &c)) return NULL;
    model *m;
    if (model_load(dir, backend(), &m, &err)) {
        printf("    %s\n", err.msg);
        return NULL;
    }
    model_lora_cfg lc = {.r = 4, .alpha = 8, .dropout = dropout, .n_targets = 1};
    snprintf(lc.targets[0], sizeof lc.targets[0], "all-linear");
    if (model_lora_init(m, &lc, 5, &err)) {
        printf("    %s\n", err.msg);
        model_free(m);
        return NULL;
    }
    lr_rng r;
    rng_seed(&r, 9);
    for (size_t i = 1; i < model_n_params(m); i += 2) {
        const model_param *p = model_param_at(m, i);
        float *h = malloc(p->numel * sizeof(float));
        rng_fill_uniform(&r, h, p->numel, -0.2f, 0.2f);
        if (model_param_set(m, i, h, p->numel, &err)) printf("    %s\n", err.msg);
        free(h);
    }
    return m;
}

enum { B = 3, T = 11 };

static void batch(int32_t *ids, int32_t *labels) {
    for (int n = 0; n < B * T; n++) {
        ids[n] = (n * 17 + 3) % 61;
        labels[n] = n % T < 3 ? -100 : ids[n];
    }
}

static float *grads(model *m) {
    float *g = malloc(model_numel(m) * sizeof(float));
    memcpy(g, model_grads(m), model_numel(m) * sizeof(float)); /* CPU backend: host memory */
    return g;
}

static void props(hf_arch arch, const char *sub) {
    model *m = tiny(arch, sub, 0.0f);
    REQUIRE(m);
    lr_err err;
    int32_t ids[B * T], labels[B * T];
    batch(ids, labels);
    double l1, l2, le;
    int64_t n1, n2, ne;
    model_zero_grad(m);
    REQUIRE(!model_fwd_bwd(m, ids, labels, B, T, 1.0f / 24, &l1, &n1, &err));
    CHECK_EQ_INT(n1, B * (T - 3));
    float *g1 = grads(m);
    double gn = 0;
    for (size_t i = 0; i < model_numel(m); i++) gn += (double)g1[i] * g1[i];
    CHECK(gn > 0);
    /* the same step again: bitwise the same */
    model_zero_grad(m);
    REQUIRE(!model_fwd_bwd(m, ids, labels, B, T, 1.0f / 24, &l2, &n2, &err));
    float *g2 = grads(m);
    CHECK(l1 == l2);
    CHECK(!memcmp(g1, g2, model_numel(m) * sizeof(float)));
    /* eval loss equals the training loss */
    REQUIRE(!model_loss(m, ids, labels, B, T, &le, &ne, &err));
    CHECK(le == l1 && ne == n1);
    /* accumulating rows one by one (T smaller first: a new shape) equals the batch */
    model_zero_grad(m);
    double acc = 0;
    for (int b = 0; b < B; b++) {
        double lb;
        int64_t nb;
        REQUIRE(!model_fwd_bwd(m, ids + b * T, labels + b * T, 1, T, 1.0f / 24, &lb, &nb, &err));
        acc += lb;
    }
    float *g3 = grads(m);
    double md = 0, mx = 0;
    for (size_t i = 0; i < model_numel(m); i++) {
        md = fmax(md, fabs(g3[i] - g1[i]));
        mx = fmax(mx, fabs(g1[i]));
    }
    printf("    loss %.6f, accumulation vs batch: max|diff|/max|g| %.1e\n", l1 / n1, md / mx);
    CHECK(md / mx < 1e-5);
    CHECK_NEAR(acc, l1, 1e-5 * l1);
    /* save and load back: same parameters, same loss */
    char dir[512];
    snprintf(dir, sizeof dir, "%s/%s-adapter", test_tmpdir(), sub);
    REQUIRE(!model_lora_save(m, dir, &err));
    char mdir[512];
    snprintf(mdir, sizeof mdir, "%s/%s", test_tmpdir(), sub);
    model *m2;
    REQUIRE(!model_load(mdir, backend(), &m2, &err));
    if (model_lora_load(m2, dir, &err)) printf("    %s\n", err.msg);
    CHECK_EQ_INT(model_numel(m2), model_numel(m));
    CHECK_EQ_INT(model_n_params(m2), model_n_params(m));
    if (model_numel(m2) == model_numel(m)) {
        CHECK(!memcmp(model_params(m2), model_params(m), model_numel(m) * sizeof(float)));
        REQUIRE(!model_loss(m2, ids, labels, B, T, &le, &ne, &err));
        CHECK(le == l1);
    }
    model_free(m2);
    free(g1), free(g2), free(g3);
    model_free(m);
}

TEST(llama_properties) { props(ARCH_LLAMA, "llama"); }
TEST(qwen2_properties) { props(ARCH_QWEN2, "qwen2"); }
TEST(gpt2_properties) { props(ARCH_GPT2, "gpt2"); }

TEST(lora_init_like_peft) {
    model *m = tiny(ARCH_LLAMA, "init", 0.0f);
    REQUIRE(m);
    lr_err err;
    model_lora_cfg lc = {.r = 8, .alpha = 16, .n_targets = 2};
    snprintf(lc.targets[0], sizeof lc.targets[0], "q_proj");
    snprintf(lc.targets[1], sizeof lc.targets[1], "down_proj");
    REQUIRE(!model_lora_init(m, &lc, 3, &err));
    CHECK_EQ_INT(model_n_params(m), 2 * 2 * 2);
    CHECK_STR(model_param_at(m, 0)->name, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");
    CHECK_STR(model_param_at(m, 3)->name, "base_model.model.model.layers.0.mlp.down_proj.lora_B.weight");
    const model_param *a = model_param_at(m, 2); /* down_proj A: [8, 48], bound 1/sqrt(48) */
    CHECK_EQ_INT(a->shape[0], 8);
    CHECK_EQ_INT(a->shape[1], 48);
    const float *p = model_params(m) + a->offset;
    float mx = 0;
    for (size_t i = 0; i < a->numel; i++) mx = fmaxf(mx, fabsf(p[i]));
    CHECK(mx <= 1.0f / sqrtf(48.0f) && mx > 0.8f / sqrtf(48.0f));
    const model_param *b = model_param_at(m, 3);
    for (size_t i = 0; i < b->numel; i++) CHECK(model_params(m)[b->offset + i] == 0.0f);
    /* no module selected is an error naming the field */
    snprintf(lc.targets[0], sizeof lc.targets[0], "c_attn");
    lc.n_targets = 1;
    CHECK(model_lora_init(m, &lc, 3, &err) == -1);
    CHECK_STR(err.param, "lora.targets");
    model_free(m);
}

/* DoRA and the references, by identities: a fresh DoRA adapter (B = 0,
 * magnitude = ||W||) is the base model exactly, so against the base model
 * its KL is 0 and its DPO rewards are 0 (loss log 2); a saved and reloaded
 * DoRA adapter keeps A, B and magnitudes, and used as the reference of a
 * policy equal to it gives rewards 0 again. */
static void dora_identities(hf_arch arch, const char *sub) {
    model *m = tiny(arch, sub, 0.0f);
    REQUIRE(m);
    lr_err err;
    model_lora_cfg lc = {.r = 4, .alpha = 8, .n_targets = 1, .use_dora = 1};
    snprintf(lc.targets[0], sizeof lc.targets[0], "all-linear");
    REQUIRE(!model_lora_init(m, &lc, 5, &err));
    int nmod = arch == ARCH_GPT2 ? 4 * 2 : 7 * 2;
    CHECK_EQ_INT(model_n_params(m), 3 * nmod);
    const model_param *mp = model_param_at(m, 2);
    CHECK(strstr(mp->name, ".lora_magnitude_vector") && mp->ndim == 1 && mp->shape[1] == 1);
    const float *mag = model_params(m) + mp->offset;
    for (size_t i = 0; i < mp->numel; i++) CHECK(mag[i] > 0.0f);
    int32_t ids[B * T], labels[B * T];
    batch(ids, labels);
    double ce, kl, base;
    int64_t n, n2;
    REQUIRE(!model_loss(m, ids, labels, B, T, &ce, &n, &err));
    model_lora_enable(m, 0);
    REQUIRE(!model_loss(m, ids, labels, B, T, &base, &n2, &err));
    model_lora_enable(m, 1);
    CHECK_NEAR(ce, base, 1e-6 * base);
    model_zero_grad(m);
    REQUIRE(!model_fwd_bwd_kl(m, ids, labels, B, T, 0.5f, 2.0f, 1.0f, &ce, &kl, &n, &err));
    CHECK_NEAR(ce, base, 1e-6 * base);
    CHECK(fabs(kl) < 1e-6 * n);
    /* a pair batch: rows 0,1 chosen, 2,3 rejected (B = 4 rows) */
    model_dpo_out o;
    REQUIRE(!model_dpo(m, ids, labels, B / 2, T, 0.1f, MODEL_REF_BASE, 1, 0.5f, &o, &err));
    CHECK_EQ_INT(o.pairs, B / 2);
    CHECK(fabs(o.chosen_reward_sum) < 1e-6 && fabs(o.rejected_reward_sum) < 1e-6);
    CHECK_NEAR(o.loss_sum / o.pairs, log(2.0), 1e-6);
    CHECK(model_dpo(m, ids, labels, B / 2, T, 0.1f, MODEL_REF_ADAPTER, 0, 0, &o, &err) == -1); /* none loaded */
    /* perturb, save, reload as both policy and reference */
    float *p = model_params(m);
    for (size_t i = 0; i < model_numel(m); i++) p[i] += 0.01f * (float)((i * 7919) % 13) - 0.06f;
    char dir[600];
    snprintf(dir, sizeof dir, "%s/%s-adapter", test_tmpdir(), sub);
    REQUIRE(!model_lora_save(m, dir, &err));
    float *before = malloc(model_numel(m) * sizeof(float));
    memcpy(before, p, model_numel(m) * sizeof(float));
    double l0, l1;
    REQUIRE(!model_loss(m, ids, labels, B, T, &l0, &n, &err));
    REQUIRE(!model_lora_load(m, dir, &err));
    CHECK(model_lora(m)->use_dora);
    CHECK(!memcmp(before, model_params(m), model_numel(m) * sizeof(float)));
    REQUIRE(!model_loss(m, ids, labels, B, T, &l1, &n, &err));
    CHECK(l0 == l1);
    REQUIRE(!model_ref_load(m, dir, &err));
    REQUIRE(!model_dpo(m, ids, labels, B / 2, T, 0.1f, MODEL_REF_ADAPTER, 0, 0, &o, &err));
    CHECK(o.chosen_reward_sum == 0.0 && o.rejected_reward_sum == 0.0);
    REQUIRE(!model_dpo(m, ids, labels, B / 2, T, 0.1f, MODEL_REF_BASE, 0, 0, &o, &err));
    CHECK(o.chosen_reward_sum != 0.0);
    free(before);
    model_free(m);
}

TEST(dora_llama_identities) { dora_identities(ARCH_LLAMA, "dora-llama"); }
TEST(dora_gpt2_identities) { dora_identities(ARCH_GPT2, "dora-gpt2"); }

TEST(dropout_reproducible) {
    model *m = tiny(ARCH_LLAMA, "drop", 0.2f);
    REQUIRE(m);
    lr_err err;
    int32_t ids[B * T], labels[B * T];
    batch(ids, labels);
    double l0, l1, l2;
    int64_t n;
    REQUIRE(!model_loss(m, ids, labels, B, T, &l0, &n, &err));
    model_set_train(m, 1, 42);
    model_zero_grad(m);
    REQUIRE(!model_fwd_bwd(m, ids, labels, B, T, 1.0f, &l1, &n, &err));
    float *g1 = grads(m);
    model_set_train(m, 1, 42);
    model_zero_grad(m);
    REQUIRE(!model_fwd_bwd(m, ids, labels, B, T, 1.0f, &l2, &n, &err));
    float *g2 = grads(m);
    CHECK(l1 == l2 && l1 != l0);
    CHECK(!memcmp(g1, g2, model_numel(m) * sizeof(float)));
    /* the next micro-batch draws new masks */
    REQUIRE(!model_fwd_bwd(m, ids, labels, B, T, 1.0f, &l2, &n, &err));
    CHECK(l2 != l1);
    free(g1), free(g2);
    model_free(m);
}

TEST(bad_input_is_an_error) {
    model *m = tiny(ARCH_GPT2, "bad", 0.0f);
    REQUIRE(m);
    lr_err err;
    int32_t ids[B * T], labels[B * T];
    batch(ids, labels);
    double l;
    int64_t n;
    ids[4] = 61;
    CHECK(model_loss(m, ids, labels, B, T, &l, &n, &err) == -1);
    CHECK_STR(err.param, "input_ids");
    ids[4] = 0;
    labels[5] = -7;
    CHECK(model_loss(m, ids, labels, B, T, &l, &n, &err) == -1);
    CHECK_STR(err.param, "labels");
    int32_t big[65] = {0};
    CHECK(model_loss(m, big, big, 1, 65, &l, &n, &err) == -1); /* beyond gpt2's 64 positions */
    model_free(m);
}

/* Activation checkpointing recomputes each layer's activations from its
 * input in the backward: the same ops on the same values, so the loss and
 * every gradient (LoRA with dropout, and full fine-tuning) are bit for bit
 * those of the stored-activation run. */
static void recompute_same(hf_arch arch, const char *sub, int full) {
    model *m = tiny(arch, sub, full ? 0.0f : 0.1f);
    REQUIRE(m);
    lr_err err;
    if (full) REQUIRE(!model_full_init(m, &err));
    int32_t ids[B * T], labels[B * T];
    batch(ids, labels);
    double l[2];
    int64_t n[2];
    float *g[2];
    for (int k = 0; k < 2; k++) {
        model_set_recompute(m, k);
        model_set_train(m, 1, 77); /* the same dropout masks both times */
        model_zero_grad(m);
        REQUIRE(!model_fwd_bwd(m, ids, labels, B, T, 1.0f / 24, &l[k], &n[k], &err));
        g[k] = grads(m);
    }
    CHECK(l[0] == l[1]);
    CHECK_EQ_INT(n[0], n[1]);
    CHECK(!memcmp(g[0], g[1], model_numel(m) * sizeof(float)));
    double s = 0;
    for (size_t i = 0; i < model_numel(m); i++) s += fabs(g[0][i]);
    CHECK(s > 0); /* the comparison compared something */
    free(g[0]);
    free(g[1]);
    model_free(m);
}

TEST(recompute_llama_lora) { recompute_same(ARCH_LLAMA, "rc-llama", 0); }
TEST(recompute_gpt2_lora) { recompute_same(ARCH_GPT2, "rc-gpt2", 0); }
TEST(recompute_qwen2_full) { recompute_same(ARCH_QWEN2, "rc-qwen2", 1); }

/* The GPU's storage dtype: f16 only for a model stored in f16; an f32
 * backend (the exact comparisons) is never changed. */
TEST(weight_dtype_follows_the_model) {
    hf_config c;
    lr_err err = {0};
    REQUIRE(hf_config_load(test_fixture("configs/llama3.config.json"), &c, &err) == 0);
    CHECK_STR(c.torch_dtype, "bfloat16");
    CHECK_EQ_INT(model_weight_dtype(&c, KB_BF16), KB_BF16);
    snprintf(c.torch_dtype, sizeof c.torch_dtype, "float16");
    CHECK_EQ_INT(model_weight_dtype(&c, KB_BF16), KB_F16);
    CHECK_EQ_INT(model_weight_dtype(&c, KB_F32), KB_F32);
    REQUIRE(hf_config_load(test_fixture("models/tiny-gpt2-hf/config.json"), &c, &err) == 0);
    CHECK_EQ_INT(model_weight_dtype(&c, KB_BF16), KB_BF16);
    c.torch_dtype[0] = 0;
    CHECK_EQ_INT(model_weight_dtype(&c, KB_BF16), KB_BF16);
}
