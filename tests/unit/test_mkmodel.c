#include "tests/unit/test.h"

#include "common/buf.h"
#include "common/rng.h"
#include "worker/commands.h"
#include "formats/hfconfig.h"
#include "formats/safetensors.h"
#include "formats/tok.h"

static int mk(const char *arch, const char *dir, const char *extra1, const char *extra2) {
    char *argv[16];
    int n = 0;
    argv[n++] = "mkmodel";
    argv[n++] = "--arch";
    argv[n++] = (char *)arch;
    argv[n++] = "--out";
    argv[n++] = (char *)dir;
    argv[n++] = "--seed";
    argv[n++] = "7";
    if (extra1) argv[n++] = (char *)extra1;
    if (extra2) argv[n++] = (char *)extra2;
    argv[n] = NULL;
    return cmd_mkmodel(n, argv);
}

static int mk_args(char **argv) {
    int n = 0;
    while (argv[n]) n++;
    return cmd_mkmodel(n, argv);
}

/* Checks name and shape, and returns the tensor. */
static const st_tensor *expect(const st_set *s, const char *name, int64_t d0, int64_t d1) {
    const st_tensor *t = st_set_find(s, name);
    CHECKF(t != NULL, "missing %s", name);
    if (!t) return NULL;
    CHECKF(t->ndim == (d1 ? 2 : 1) && t->shape[0] == d0 && (!d1 || t->shape[1] == d1),
           "%s: shape [%lld, %lld], want [%lld, %lld]", name, (long long)t->shape[0],
           (long long)(t->ndim > 1 ? t->shape[1] : 0), (long long)d0, (long long)d1);
    return t;
}

static void stats(const st_tensor *t, double *mean, double *sd) {
    size_t n = (size_t)st_numel(t);
    float *v = malloc(n * sizeof *v);
    lr_err err = {0};
    *mean = *sd = NAN;
    if (st_to_f32(t, v, n, &err) == 0) {
        double s = 0, s2 = 0;
        for (size_t i = 0; i < n; i++) s += v[i], s2 += (double)v[i] * v[i];
        *mean = s / (double)n;
        *sd = sqrt(s2 / (double)n - *mean * *mean);
    }
    free(v);
}

static void check_llama_family(const char *arch, hf_arch want, int qkv_bias, int tied) {
    char dir[512];
    lr_err err = {0};
    snprintf(dir, sizeof dir, "%s/%s", test_tmpdir(), arch);
    REQUIRE(mk(arch, dir, NULL, NULL) == 0);
    hf_config c;
    char path[600];
    snprintf(path, sizeof path, "%s/config.json", dir);
    REQUIRE(hf_config_load(path, &c, &err) == 0);
    CHECK_EQ_INT(c.arch, want);
    CHECK(c.hidden == 64 && c.n_layers == 2 && c.n_heads == 4 && c.n_kv_heads == 2 && c.head_dim == 16);
    CHECK_EQ_INT(c.intermediate, 128);
    CHECK_EQ_INT(c.max_pos, 512);
    CHECK_EQ_INT(c.vocab_size % 64, 0);
    CHECK_EQ_INT(c.tie_embeddings, tied);
    tok *t;
    REQUIRE(tok_load(dir, &t, &err) == 0);
    CHECK(c.vocab_size >= tok_vocab_size(t) && c.vocab_size - tok_vocab_size(t) < 64);
    CHECK_EQ_INT(c.eos_id, tok_piece_id(t, "<|im_end|>"));
    CHECK_EQ_INT(tok_eos_id(t), c.eos_id); /* tokenizer_config.json agrees with config.json */
    tok_free(t);
    st_set *s;
    REQUIRE(st_set_open_dir(dir, &s, &err) == 0);
    int64_t V = c.vocab_size;
    size_t want_n = 1 + 1 + (size_t)c.n_layers * (2 + 4 + 3 + (qkv_bias ? 3 : 0)) + (tied ? 0 : 1);
    CHECK_EQ_INT(st_set_count(s), want_n);
    expect(s, "model.embed_tokens.weight", V, 64);
    expect(s, "model.norm.weight", 64, 0);
    for (int l = 0; l < 2; l++) {
        char n[128];
#define E(d0, d1, ...) (snprintf(n, sizeof n, __VA_ARGS__), expect(s, n, d0, d1))
        E(64, 0, "model.layers.%d.input_layernorm.weight", l);
        E(64, 0, "model.layers.%d.post_attention_layernorm.weight", l);
        E(64, 64, "model.layers.%d.self_attn.q_proj.weight", l);
        E(32, 64, "model.layers.%d.self_attn.k_proj.weight", l);
        E(32, 64, "model.layers.%d.self_attn.v_proj.weight", l);
        E(64, 64, "model.layers.%d.self_attn.o_proj.weight", l);
        E(128, 64, "model.layers.%d.mlp.gate_proj.weight", l);
        E(128, 64, "model.layers.%d.mlp.up_proj.weight", l);
        E(64, 128, "model.layers.%d.mlp.down_proj.weight", l);
        if (qkv_bias) {
            E(64, 0, "model.layers.%d.self_attn.q_proj.bias", l);
            E(32, 0, "model.layers.%d.self_attn.k_proj.bias", l);
            E(32, 0, "model.layers.%d.self_attn.v_proj.bias", l);
        }
        snprintf(n, sizeof n, "model.layers.%d.self_attn.o_proj.bias", l);
        CHECK(st_set_find(s, n) == NULL);
#undef E
    }
    CHECK((st_set_find(s, "lm_head.weight") != NULL) == !tied);
    double m, sd;
    stats(st_set_find(s, "model.embed_tokens.weight"), &m, &sd);
    CHECK_NEAR(m, 0, 0.002);
    CHECK_NEAR(sd, 0.02, 0.001);
    stats(st_set_find(s, "model.norm.weight"), &m, &sd);
    CHECK(m == 1 && sd == 0);
    if (qkv_bias) {
        stats(st_set_find(s, "model.layers.1.self_attn.k_proj.bias"), &m, &sd);
        CHECK(m == 0 && sd == 0);
    }
    st_set_close(s);
    char *text;
    size_t len;
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    REQUIRE(lr_read_file(path, 1 << 20, &text, &len, &err) == 0);
    CHECK(strstr(text, "\"chat_template\": \"{% for message in messages %}{{'<|im_start|>'"));
    CHECK(strstr(text, "\"eos_token\": \"<|im_end|>\""));
    free(text);
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    REQUIRE(lr_read_file(path, 1 << 20, &text, &len, &err) == 0);
    CHECK(strstr(text, "\"eos_token_id\": "));
    free(text);
}

TEST(tiny_llama) { check_llama_family("llama", ARCH_LLAMA, 0, 0); }
TEST(tiny_mistral) { check_llama_family("mistral", ARCH_MISTRAL, 0, 0); }
TEST(tiny_qwen2) { check_llama_family("qwen2", ARCH_QWEN2, 1, 1); }

/* f16: the dtype of many published checkpoints (a GPU keeps it in f16) */
TEST(tiny_llama_f16) {
    char dir[512], path[600];
    lr_err err = {0};
    snprintf(dir, sizeof dir, "%s/llama-f16", test_tmpdir());
    REQUIRE(mk("llama", dir, "--dtype", "f16") == 0);
    hf_config c;
    snprintf(path, sizeof path, "%s/config.json", dir);
    REQUIRE(hf_config_load(path, &c, &err) == 0);
    CHECK_STR(c.torch_dtype, "float16");
    st_set *s;
    REQUIRE(st_set_open_dir(dir, &s, &err) == 0);
    const st_tensor *q = st_set_find(s, "model.layers.0.self_attn.q_proj.weight");
    CHECK(q && q->dtype == ST_F16);
    double m, sd;
    stats(q, &m, &sd);
    CHECK_NEAR(sd, 0.02, 0.002);
    st_set_close(s);
}

TEST(tiny_gpt2) {
    char dir[512], path[600];
    lr_err err = {0};
    snprintf(dir, sizeof dir, "%s/gpt2", test_tmpdir());
    REQUIRE(mk("gpt2", dir, "--dtype", "bf16") == 0);
    hf_config c;
    snprintf(path, sizeof path, "%s/config.json", dir);
    REQUIRE(hf_config_load(path, &c, &err) == 0);
    CHECK_EQ_INT(c.arch, ARCH_GPT2);
    CHECK(c.hidden == 64 && c.n_heads == 4 && c.n_kv_heads == 4 && c.intermediate == 256 && c.tie_embeddings);
    CHECK_STR(c.torch_dtype, "bfloat16");
    st_set *s;
    REQUIRE(st_set_open_dir(dir, &s, &err) == 0);
    CHECK_EQ_INT(st_set_count(s), 2 + 2 * 12 + 2);
    const st_tensor *wte = expect(s, "transformer.wte.weight", c.vocab_size, 64);
    CHECK(wte && wte->dtype == ST_BF16);
    expect(s, "transformer.wpe.weight", 512, 64);
    expect(s, "transformer.h.1.attn.c_attn.weight", 64, 192); /* Conv1D [in, out] */
    expect(s, "transformer.h.1.attn.c_attn.bias", 192, 0);
    expect(s, "transformer.h.1.attn.c_proj.weight", 64, 64);
    expect(s, "transformer.h.0.mlp.c_fc.weight", 64, 256);
    expect(s, "transformer.h.0.mlp.c_fc.bias", 256, 0);
    expect(s, "transformer.h.0.mlp.c_proj.weight", 256, 64);
    expect(s, "transformer.h.0.ln_1.bias", 64, 0);
    expect(s, "transformer.h.0.ln_2.weight", 64, 0);
    expect(s, "transformer.ln_f.weight", 64, 0);
    CHECK(st_set_find(s, "lm_head.weight") == NULL);
    double m, sd;
    stats(st_set_find(s, "transformer.h.0.mlp.c_proj.weight"), &m, &sd);
    CHECK_NEAR(sd, 0.01, 0.001); /* 0.02 / sqrt(2 * 2 layers) */
    stats(st_set_find(s, "transformer.h.0.ln_1.weight"), &m, &sd);
    CHECK(m == 1);
    st_set_close(s);
    tok *t;
    REQUIRE(tok_load(dir, &t, &err) == 0);
    CHECK_EQ_INT(c.eos_id, tok_piece_id(t, "<|endoftext|>"));
    tok_free(t);
}

TEST(deterministic_by_seed) {
    char a[512], b[512], d[512], pa[600], pb[600], pd[600];
    snprintf(a, sizeof a, "%s/seedA", test_tmpdir());
    snprintf(b, sizeof b, "%s/seedB", test_tmpdir());
    snprintf(d, sizeof d, "%s/seedD", test_tmpdir());
    REQUIRE(mk("llama", a, NULL, NULL) == 0);
    REQUIRE(mk("llama", b, NULL, NULL) == 0);
    REQUIRE(mk("llama", d, "--layers", "1") == 0);
    snprintf(pa, sizeof pa, "%s/model.safetensors", a);
    snprintf(pb, sizeof pb, "%s/model.safetensors", b);
    snprintf(pd, sizeof pd, "%s/model.safetensors", d);
    char *x, *y;
    size_t lx, ly;
    lr_err err = {0};
    REQUIRE(lr_read_file(pa, 1 << 26, &x, &lx, &err) == 0);
    REQUIRE(lr_read_file(pb, 1 << 26, &y, &ly, &err) == 0);
    CHECK(lx == ly && !memcmp(x, y, lx));
    free(y);
    free(x);
    /* each tensor has its own stream: a shared tensor is the same in a model of another depth */
    st_file *fa, *fd;
    REQUIRE(st_open(pa, &fa, &err) == 0 && st_open(pd, &fd, &err) == 0);
    const st_tensor *ta = st_find(fa, "model.layers.0.mlp.up_proj.weight"), *td = st_find(fd, "model.layers.0.mlp.up_proj.weight");
    CHECK(ta && td && ta->nbytes == td->nbytes && !memcmp(ta->data, td->data, ta->nbytes));
    CHECK(st_find(fd, "model.layers.1.mlp.up_proj.weight") == NULL);
    st_close(fa);
    st_close(fd);
}

TEST(real_shapes_with_overrides) {
    char dir[512], path[600];
    lr_err err = {0};
    snprintf(dir, sizeof dir, "%s/q05", test_tmpdir());
    char *argv[] = {"mkmodel", "--arch", "qwen2", "--preset", "qwen2.5-0.5b", "--layers", "1", "--vocab", "1024",
                    "--out", dir, NULL};
    REQUIRE(mk_args(argv) == 0);
    hf_config c;
    snprintf(path, sizeof path, "%s/config.json", dir);
    REQUIRE(hf_config_load(path, &c, &err) == 0);
    CHECK(c.hidden == 896 && c.n_heads == 14 && c.n_kv_heads == 2 && c.head_dim == 64 && c.intermediate == 4864);
    CHECK_NEAR(c.rope_theta, 1e6, 0);
    CHECK_NEAR(c.norm_eps, 1e-6, 1e-13);
    CHECK(c.tie_embeddings && c.vocab_size == 1024 && c.n_layers == 1);
    st_set *s;
    REQUIRE(st_set_open_dir(dir, &s, &err) == 0);
    expect(s, "model.layers.0.self_attn.k_proj.weight", 128, 896);
    expect(s, "model.layers.0.mlp.down_proj.weight", 896, 4864);
    st_set_close(s);
    /* llama-3-8b's config without its 16 GB of weights: one layer, small vocab, narrow */
    snprintf(dir, sizeof dir, "%s/l8", test_tmpdir());
    char *argv2[] = {"mkmodel", "--arch", "llama", "--preset", "llama-3-8b", "--layers", "1", "--vocab", "768",
                     "--hidden", "256", "--intermediate", "64", "--dtype", "bf16", "--out", dir, NULL};
    REQUIRE(mk_args(argv2) == 0);
    snprintf(path, sizeof path, "%s/config.json", dir);
    REQUIRE(hf_config_load(path, &c, &err) == 0);
    CHECK(c.n_heads == 32 && c.n_kv_heads == 8 && c.head_dim == 8 && !c.tie_embeddings);
    CHECK_NEAR(c.rope_theta, 500000, 0);
}

TEST(bad_combinations_rejected) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s/bad", test_tmpdir());
    char *a1[] = {"mkmodel", "--arch", "gpt2", "--preset", "qwen2.5-0.5b", "--out", dir, NULL};
    CHECK_EQ_INT(mk_args(a1), 2); /* GQA in a GPT-2 layout */
    char *a2[] = {"mkmodel", "--arch", "falcon", "--out", dir, NULL};
    CHECK_EQ_INT(mk_args(a2), 2);
    char *a3[] = {"mkmodel", "--arch", "llama", "--preset", "huge", "--out", dir, NULL};
    CHECK_EQ_INT(mk_args(a3), 2);
    char *a4[] = {"mkmodel", "--arch", "llama", "--dtype", "f64", "--out", dir, NULL};
    CHECK_EQ_INT(mk_args(a4), 2);
    char *a5[] = {"mkmodel", "--arch", "llama", "--vocab", "100", "--out", dir, NULL};
    CHECK_EQ_INT(mk_args(a5), 2); /* smaller than the tokenizer */
    char *a6[] = {"mkmodel", "--arch", "llama", NULL};
    CHECK_EQ_INT(mk_args(a6), 1);
    char *a7[] = {"mkmodel", "--arch", "llama", "--layers", "x", "--out", dir, NULL};
    CHECK_EQ_INT(mk_args(a7), 1);
    char *a8[] = {"mkmodel", "--arch", "llama", "--hidden", "66", "--out", dir, NULL};
    CHECK_EQ_INT(mk_args(a8), 2);
}

TEST(copies_a_real_tokenizer) {
    char dir[512];
    lr_err err = {0};
    snprintf(dir, sizeof dir, "%s/withtok", test_tmpdir());
    char *argv[] = {"mkmodel", "--arch", "gpt2", "--preset", "tiny", "--vocab", "50304", "--layers", "1",
                    "--tokenizer", (char *)test_fixture("tokenizers/gpt2"), "--out", dir, NULL};
    REQUIRE(mk_args(argv) == 0);
    tok *t;
    REQUIRE(tok_load(dir, &t, &err) == 0);
    CHECK_EQ_INT(tok_vocab_size(t), 50257);
    tok_free(t);
    hf_config c;
    char path[600];
    snprintf(path, sizeof path, "%s/config.json", dir);
    REQUIRE(hf_config_load(path, &c, &err) == 0);
    CHECK_EQ_INT(c.eos_id, 50256);
    char *argv2[] = {"mkmodel", "--arch", "gpt2", "--tokenizer", (char *)test_fixture("tokenizers/gpt2"), "--out", dir, NULL};
    CHECK_EQ_INT(mk_args(argv2), 0); /* tiny's vocab follows the tokenizer: 50304 */
    REQUIRE(hf_config_load(path, &c, &err) == 0);
    CHECK_EQ_INT(c.vocab_size, 50304);
}

TEST(rng_reference_values) {
    /* splitmix64 from 0 and xoshiro256** from {1,2,3,4}: the published sequences */
    uint64_t x = 0;
    CHECK(lr_splitmix64(&x) == 0xe220a8397b1dcdafull);
    lr_rng r = {.s = {1, 2, 3, 4}};
    CHECK(rng_u64(&r) == 11520);
    CHECK(rng_u64(&r) == 0);
    CHECK(rng_u64(&r) == 1509978240);
    CHECK(rng_u64(&r) == 1215971899390074240ull);
    rng_seed(&r, 42);
    double s = 0, s2 = 0, u = 0;
    int below[10] = {0};
    for (int i = 0; i < 200000; i++) {
        double z = rng_normal(&r);
        s += z, s2 += z * z;
        double v = rng_uniform(&r);
        CHECK(v >= 0 && v < 1);
        u += v;
        below[rng_below(&r, 10)]++;
    }
    CHECK_NEAR(s / 200000, 0, 0.01);
    CHECK_NEAR(s2 / 200000, 1, 0.01);
    CHECK_NEAR(u / 200000, 0.5, 0.005);
    for (int k = 0; k < 10; k++) CHECK_NEAR(below[k], 20000, 600);
    lr_rng a, b;
    rng_stream(&a, 1, 0);
    rng_stream(&b, 1, 1);
    CHECK(rng_u64(&a) != rng_u64(&b));
    a = b;
    rng_jump(&b);
    CHECK(rng_u64(&a) != rng_u64(&b));
    int p[50];
    for (int i = 0; i < 50; i++) p[i] = i;
    rng_shuffle_int(&a, p, 50);
    int sum = 0, moved = 0;
    for (int i = 0; i < 50; i++) sum += p[i], moved += p[i] != i;
    CHECK_EQ_INT(sum, 1225);
    CHECK(moved > 30);
}
