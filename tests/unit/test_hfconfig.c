#include "tests/unit/test.h"

#include "common/buf.h"
#include "formats/hfconfig.h"

static int parse(const char *json, hf_config *c, lr_err *err) { return hf_config_parse(json, strlen(json), c, err); }

TEST(llama3_real_config) {
    hf_config c;
    lr_err err = {0};
    REQUIRE(hf_config_load(test_fixture("configs/llama3.config.json"), &c, &err) == 0);
    CHECK_EQ_INT(c.arch, ARCH_LLAMA);
    CHECK_STR(c.arch_name, "LlamaForCausalLM");
    CHECK_STR(c.model_type, "llama");
    CHECK_EQ_INT(c.vocab_size, 128256);
    CHECK_EQ_INT(c.hidden, 3072);
    CHECK_EQ_INT(c.n_layers, 28);
    CHECK_EQ_INT(c.n_heads, 24);
    CHECK_EQ_INT(c.n_kv_heads, 8);
    CHECK_EQ_INT(c.head_dim, 128);
    CHECK_EQ_INT(c.intermediate, 8192);
    CHECK_EQ_INT(c.max_pos, 131072);
    CHECK_NEAR(c.norm_eps, 1e-5, 1e-12);
    CHECK_NEAR(c.rope_theta, 500000, 0);
    CHECK_NEAR(c.rope_factor, 32, 0);
    CHECK_NEAR(c.rope_low_freq_factor, 1, 0);
    CHECK_NEAR(c.rope_high_freq_factor, 4, 0);
    CHECK_EQ_INT(c.rope_orig_max_pos, 8192);
    CHECK_EQ_INT(c.tie_embeddings, 1);
    CHECK_EQ_INT(c.attn_bias, 0);
    CHECK_EQ_INT(c.o_bias, 0);
    CHECK_EQ_INT(c.mlp_bias, 0);
    CHECK_EQ_INT(c.bos_id, 128000);
    CHECK_EQ_INT(c.eos_id, 128001);
    CHECK_EQ_INT(c.n_eos, 3);
    CHECK_EQ_INT(c.eos_ids[2], 128009);
    CHECK_STR(c.torch_dtype, "bfloat16");
    CHECK_STR(c.hidden_act, "silu");
}

TEST(qwen25_real_config) {
    hf_config c;
    lr_err err = {0};
    REQUIRE(hf_config_load(test_fixture("configs/qwen2.5-7b-instruct.config.json"), &c, &err) == 0);
    CHECK_EQ_INT(c.arch, ARCH_QWEN2);
    CHECK_EQ_INT(c.vocab_size, 152064);
    CHECK_EQ_INT(c.hidden, 3584);
    CHECK_EQ_INT(c.n_heads, 28);
    CHECK_EQ_INT(c.n_kv_heads, 4);
    CHECK_EQ_INT(c.head_dim, 128);
    CHECK_EQ_INT(c.intermediate, 18944);
    CHECK_NEAR(c.norm_eps, 1e-6, 1e-13);
    CHECK_NEAR(c.rope_theta, 1e6, 0);
    CHECK_EQ_INT(c.tie_embeddings, 0);
    CHECK_EQ_INT(c.attn_bias, 1); /* q/k/v */
    CHECK_EQ_INT(c.o_bias, 0);
    CHECK_EQ_INT(c.mlp_bias, 0);
    CHECK_EQ_INT(c.sliding_window, 0); /* use_sliding_window false */
    CHECK_EQ_INT(c.eos_id, 151645);
    CHECK_NEAR(c.rope_factor, 0, 0);
}

TEST(gpt2_real_config) {
    hf_config c;
    lr_err err = {0};
    REQUIRE(hf_config_load(test_fixture("models/tiny-gpt2-hf/config.json"), &c, &err) == 0);
    CHECK_EQ_INT(c.arch, ARCH_GPT2);
    CHECK_EQ_INT(c.hidden, 2);
    CHECK_EQ_INT(c.n_layers, 1);
    CHECK_EQ_INT(c.n_heads, 1);
    CHECK_EQ_INT(c.n_kv_heads, 1);
    CHECK_EQ_INT(c.head_dim, 2);
    CHECK_EQ_INT(c.intermediate, 8); /* n_inner null: 4 * n_embd */
    CHECK_EQ_INT(c.max_pos, 1024);
    CHECK_EQ_INT(c.vocab_size, 50257);
    CHECK_NEAR(c.norm_eps, 1e-5, 1e-12);
    CHECK_EQ_INT(c.tie_embeddings, 1);
    CHECK_EQ_INT(c.attn_bias && c.o_bias && c.mlp_bias, 1);
    CHECK_STR(c.hidden_act, "gelu_new");
    CHECK_STR(c.torch_dtype, "float32");
    CHECK_EQ_INT(c.eos_id, 50256);
}

TEST(defaults_per_model_type) {
    hf_config c;
    lr_err err = {0};
    REQUIRE(parse("{\"model_type\":\"gpt2\"}", &c, &err) == 0);
    CHECK_EQ_INT(c.hidden, 768);
    CHECK_EQ_INT(c.intermediate, 3072);
    CHECK_EQ_INT(c.n_layers, 12);
    CHECK_EQ_INT(c.vocab_size, 50257);
    CHECK_EQ_INT(c.tie_embeddings, 1);
    CHECK_STR(c.hidden_act, "gelu_new");
    CHECK_STR(c.arch_name, "GPT2LMHeadModel");
    REQUIRE(parse("{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":64,\"num_attention_heads\":4}", &c, &err) == 0);
    CHECK_EQ_INT(c.tie_embeddings, 0);
    CHECK_NEAR(c.rope_theta, 10000, 0);
    CHECK_EQ_INT(c.attn_bias, 0);
    CHECK_EQ_INT(c.n_kv_heads, 4);
    CHECK_EQ_INT(c.head_dim, 16);
    CHECK_EQ_INT(c.intermediate, 11008);
    CHECK_EQ_INT(c.max_pos, 2048);
    CHECK_NEAR(c.norm_eps, 1e-6, 1e-13);
    CHECK_EQ_INT(c.bos_id, 1);
    CHECK_EQ_INT(c.eos_id, 2);
    CHECK_STR(c.model_type, "llama");
    REQUIRE(parse("{\"architectures\":[\"MistralForCausalLM\"],\"sliding_window\":null}", &c, &err) == 0);
    CHECK_EQ_INT(c.sliding_window, 0);
    CHECK_EQ_INT(c.n_kv_heads, 8);
    CHECK_EQ_INT(c.intermediate, 14336);
    CHECK_EQ_INT(c.max_pos, 131072);
    REQUIRE(parse("{\"architectures\":[\"MistralForCausalLM\"]}", &c, &err) == 0);
    CHECK_EQ_INT(c.sliding_window, 4096);
    REQUIRE(parse("{\"architectures\":[\"Qwen2ForCausalLM\"]}", &c, &err) == 0);
    CHECK_EQ_INT(c.attn_bias, 1);
    CHECK_EQ_INT(c.o_bias, 0);
    CHECK_EQ_INT(c.vocab_size, 151936);
    CHECK_EQ_INT(c.bos_id, -1);
    REQUIRE(parse("{\"architectures\":[\"LlamaForCausalLM\"],\"attention_bias\":true,\"mlp_bias\":true,"
                  "\"num_key_value_heads\":null,\"head_dim\":null}", &c, &err) == 0);
    CHECK_EQ_INT(c.attn_bias && c.o_bias && c.mlp_bias, 1);
    CHECK_EQ_INT(c.n_kv_heads, 32);
    /* GPT-2's attribute_map aliases and an explicit n_inner */
    REQUIRE(parse("{\"model_type\":\"gpt2\",\"hidden_size\":64,\"num_attention_heads\":4,\"num_hidden_layers\":2,"
                  "\"n_inner\":100,\"tie_word_embeddings\":false,\"dtype\":\"bfloat16\"}", &c, &err) == 0);
    CHECK_EQ_INT(c.hidden, 64);
    CHECK_EQ_INT(c.head_dim, 16);
    CHECK_EQ_INT(c.n_layers, 2);
    CHECK_EQ_INT(c.intermediate, 100);
    CHECK_EQ_INT(c.tie_embeddings, 0);
    CHECK_STR(c.torch_dtype, "bfloat16");
}

TEST(errors_name_the_key) {
    static const struct {
        const char *json, *msg, *param;
    } cases[] = {
        {"{\"architectures\":[\"FalconForCausalLM\"]}",
         "config.json: architecture 'FalconForCausalLM' is not supported (supported: LlamaForCausalLM, "
         "MistralForCausalLM, Qwen2ForCausalLM, GPT2LMHeadModel)", "architectures"},
        {"{\"model_type\":\"llama\",\"num_attention_heads\":0}",
         "config.json: num_attention_heads must be a positive integer", "num_attention_heads"},
        {"{\"model_type\":\"llama\",\"num_attention_heads\":\"32\"}",
         "config.json: num_attention_heads must be a positive integer", NULL},
        {"{\"model_type\":\"llama\",\"hidden_size\":4.5}", "config.json: hidden_size must be a positive integer", NULL},
        {"{\"model_type\":\"llama\",\"num_key_value_heads\":5}", "must be a multiple of num_key_value_heads", NULL},
        {"{\"model_type\":\"llama\",\"hidden_size\":100,\"num_attention_heads\":3}",
         "hidden_size (100) must be a multiple of num_attention_heads (3)", NULL},
        {"{\"model_type\":\"llama\",\"rms_norm_eps\":0}", "config.json: rms_norm_eps must be a positive number",
         "rms_norm_eps"},
        {"{\"model_type\":\"llama\",\"rope_theta\":\"x\"}", "rope_theta must be a positive number", NULL},
        {"{\"model_type\":\"llama\",\"tie_word_embeddings\":1}", "tie_word_embeddings must be true or false", NULL},
        {"{\"model_type\":\"llama\",\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":4}}",
         "rope_scaling type 'yarn' is not supported", NULL},
        {"{\"model_type\":\"llama\",\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8}}",
         "rope_scaling.low_freq_factor is required", NULL},
        {"{\"model_type\":\"llama\",\"rope_scaling\":{\"type\":\"llama3\",\"factor\":8,\"low_freq_factor\":1,"
         "\"high_freq_factor\":4}}", "original_max_position_embeddings is required", NULL},
        {"{\"model_type\":\"llama\",\"hidden_act\":\"tanh\"}", "activation 'tanh' is not supported", NULL},
        {"{\"model_type\":\"gpt2\",\"scale_attn_by_inverse_layer_idx\":true}",
         "scale_attn_by_inverse_layer_idx true is not supported", NULL},
        {"{\"model_type\":\"gpt2\",\"n_embd\":10,\"n_head\":3}", "n_embd (10) must be a multiple of n_head (3)", NULL},
        {"{\"architectures\":[\"LlamaForCausalLM\"],\"model_type\":\"qwen2\"}", "does not match", "model_type"},
        {"{\"model_type\":\"falcon\"}", "model_type 'falcon' is not supported", NULL},
        {"{\"hidden_size\":8}", "neither architectures nor model_type", NULL},
        {"{\"architectures\":\"LlamaForCausalLM\"}", "architectures must be a list", NULL},
        {"{\"model_type\":\"llama\",\"eos_token_id\":[1,\"x\"]}", "eos_token_id must be", NULL},
        {"{\"model_type\":\"llama\",\"torch_dtype\":\"int8\"}", "torch_dtype 'int8' is not supported", NULL},
        {"{\"model_type\":\"llama\",\"vocab_size\":-5}", "vocab_size must be a positive integer", NULL},
        {"{\"model_type\":\"llama\",\"hidden_size\":1073741824}", "implausibly large", NULL},
        {"[1]", "not a JSON object", NULL},
        {"{\"model_type\":\"llama\",", "config.json: line 1", NULL},
        {"{\"model_type\":\"llama\",\"model_type\":\"llama\"}", "duplicate", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        hf_config c;
        lr_err err = {0};
        int rc = parse(cases[i].json, &c, &err);
        CHECKF(rc == -1 && strstr(err.msg, cases[i].msg), "case %zu: rc %d msg '%s'", i, rc, err.msg);
        if (cases[i].param) CHECK_STR(err.param, cases[i].param);
    }
}

static void roundtrip(const hf_config *in) {
    char path[512];
    lr_err err = {0};
    snprintf(path, sizeof path, "%s/config.json", test_tmpdir());
    REQUIRE(hf_config_write(in, path, &err) == 0);
    hf_config out;
    REQUIRE(hf_config_load(path, &out, &err) == 0);
    CHECK(!memcmp(in, &out, sizeof out)); /* both zero-filled from defaults */
    CHECK_EQ_INT(out.arch, in->arch);
    CHECK_EQ_INT(out.hidden, in->hidden);
    CHECK_EQ_INT(out.intermediate, in->intermediate);
    CHECK_EQ_INT(out.tie_embeddings, in->tie_embeddings);
    CHECK_NEAR(out.norm_eps, in->norm_eps, 0);
    CHECK_NEAR(out.rope_theta, in->rope_theta, 0);
}

TEST(write_then_load) {
    lr_err err = {0};
    hf_config c;
    for (int a = 0; a < 4; a++) {
        hf_config_defaults((hf_arch)a, &c);
        snprintf(c.torch_dtype, sizeof c.torch_dtype, "bfloat16");
        roundtrip(&c);
    }
    REQUIRE(hf_config_load(test_fixture("configs/llama3.config.json"), &c, &err) == 0);
    roundtrip(&c);
    REQUIRE(hf_config_load(test_fixture("configs/qwen2.5-7b-instruct.config.json"), &c, &err) == 0);
    roundtrip(&c);
    REQUIRE(hf_config_load(test_fixture("models/tiny-gpt2-hf/config.json"), &c, &err) == 0);
    roundtrip(&c);
    /* the text is what transformers writes: sorted keys, 2-space indent, Python floats */
    char path[512], *text;
    size_t len;
    snprintf(path, sizeof path, "%s/config.json", test_tmpdir());
    hf_config_defaults(ARCH_QWEN2, &c);
    c.rope_theta = 1e6f;
    REQUIRE(hf_config_write(&c, path, &err) == 0);
    REQUIRE(lr_read_file(path, 1 << 20, &text, &len, &err) == 0);
    CHECK(strstr(text, "{\n  \"architectures\": [\n    \"Qwen2ForCausalLM\"\n  ],\n  \"attention_dropout\": 0.0,\n"));
    CHECK(strstr(text, "\"rms_norm_eps\": 1e-6,\n")); /* jansson drops the exponent's 0; same value */
    CHECK(strstr(text, "\"rope_theta\": 1000000.0,\n"));
    CHECK(strstr(text, "\"initializer_range\": 0.02,\n"));
    CHECK(strstr(text, "\"use_sliding_window\": false,\n"));
    CHECK(strstr(text, "\"bos_token_id\": null,\n"));
    CHECK(!strstr(text, "head_dim")); /* Qwen2Config has none when it is hidden/heads */
    CHECK(len > 2 && text[len - 1] == '\n' && text[len - 2] == '}');
    free(text);
    /* invalid configs are not written */
    c.n_kv_heads = 5;
    CHECK(hf_config_write(&c, path, &err) == -1);
    hf_config_defaults(ARCH_QWEN2, &c);
    c.o_bias = 1;
    CHECK(hf_config_write(&c, path, &err) == -1);
}
