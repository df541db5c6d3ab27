#include "tests/unit/test.h"

#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/buf.h"
#include "formats/safetensors.h"

static char *slurp(const char *path, size_t *len) {
    char *p = NULL;
    lr_err err = {0};
    if (lr_read_file(path, 64u << 20, &p, len, &err)) return NULL;
    return p;
}

static int file_exists(const char *p) { return access(p, F_OK) == 0; }

/* A safetensors image from a header string and n data bytes (all 0x11). */
static char *image(const char *hdr, size_t ndata, size_t *len) {
    size_t h = strlen(hdr);
    *len = 8 + h + ndata;
    char *b = malloc(*len);
    for (int i = 0; i < 8; i++) b[i] = (char)((uint64_t)h >> (8 * i));
    memcpy(b + 8, hdr, h);
    memset(b + 8 + h, 0x11, ndata);
    return b;
}

static int open_hdr(const char *hdr, size_t ndata, lr_err *err) {
    size_t len;
    char *b = image(hdr, ndata, &len);
    st_file *f = NULL;
    int rc = st_open_mem(b, len, "t", &f, err);
    st_close(f);
    free(b);
    return rc;
}

TEST(fixture_files) {
    static const struct {
        const char *file;
        st_dtype dt;
        int ndim;
        int64_t shape[4];
        double first, last;
    } cases[] = {
        {"safetensors/tensor-1d-int32.safetensors", ST_I32, 1, {3}, 1, 3},
        {"safetensors/tensor-2d-float64.safetensors", ST_F64, 2, {2, 3}, 1, 26},
        {"safetensors/tensor-3d-float32.safetensors", ST_F32, 3, {2, 2, 3}, 22, 3},
        {"safetensors/tensor-4d-float32.safetensors", ST_F32, 4, {2, 3, 1, 3}, 11, 19},
    };
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        lr_err err = {0};
        st_file *f;
        int rc = st_open(test_fixture(cases[c].file), &f, &err);
        CHECKF(rc == 0, "%s: %s", cases[c].file, err.msg);
        if (rc) continue;
        CHECK_EQ_INT(st_count(f), 1);
        const st_tensor *t = st_find(f, "embedding");
        REQUIRE(t && t == st_at(f, 0));
        CHECK_EQ_INT(t->dtype, cases[c].dt);
        CHECK_EQ_INT(t->ndim, cases[c].ndim);
        for (int d = 0; d < t->ndim; d++) CHECK_EQ_INT(t->shape[d], cases[c].shape[d]);
        size_t n = (size_t)st_numel(t);
        if (t->dtype == ST_I32) {
            int32_t v[3];
            memcpy(v, t->data, sizeof v);
            CHECK_EQ_INT(v[0], 1);
            CHECK_EQ_INT(v[2], 3);
            float x[3];
            CHECK(st_to_f32(t, x, 3, &err) == -1); /* integers are not floats */
        } else {
            float *x = malloc(n * sizeof *x);
            CHECK(st_to_f32(t, x, n, &err) == 0);
            CHECK_NEAR(x[0], cases[c].first, 0);
            CHECK_NEAR(x[n - 1], cases[c].last, 0);
            CHECK(st_to_f32(t, x, n - 1, &err) == -1);
            free(x);
        }
        CHECK(st_find(f, "nope") == NULL);
        CHECK(st_metadata(f, "format") == NULL);
        st_close(f);
    }
}

TEST(hf_model_folder) {
    lr_err err = {0};
    st_set *s;
    REQUIRE(st_set_open_dir(test_fixture("models/tiny-gpt2-hf"), &s, &err) == 0);
    CHECK_EQ_INT(st_set_count(s), 16);
    const st_tensor *wte = st_set_find(s, "transformer.wte.weight");
    REQUIRE(wte);
    CHECK_EQ_INT(wte->shape[0], 50257);
    CHECK_EQ_INT(wte->shape[1], 2);
    CHECK(st_set_find(s, "lm_head.weight") == NULL); /* tied */
    const st_tensor *w = st_set_find(s, "transformer.h.0.attn.c_attn.weight");
    REQUIRE(w);
    CHECK_EQ_INT(w->shape[0], 2); /* Conv1D: [in, out] */
    CHECK_EQ_INT(w->shape[1], 6);
    float v[12];
    REQUIRE(st_to_f32(w, v, 12, &err) == 0);
    CHECK_NEAR(v[0], -0.05586402863264084, 1e-9);
    CHECK_NEAR(v[11], 8.497906674165279e-05, 1e-12);
    for (size_t i = 1; i < st_set_count(s); i++)
        CHECK(strcmp(st_set_at(s, i - 1)->name, st_set_at(s, i)->name) < 0);
    st_set_close(s);
    st_file *f;
    REQUIRE(st_open(test_fixture("models/tiny-gpt2-hf/model.safetensors"), &f, &err) == 0);
    CHECK_STR(st_metadata(f, "format"), "pt");
    st_close(f);
}

/* Re-writing every tensor of a file written by HF (torch / PEFT) with the
 * same metadata must give the same bytes: header order, spacing, padding. */
TEST(writer_reproduces_hf_files) {
    const char *files[] = {"models/tiny-gpt2-hf/model.safetensors",
                           "adapters/gpt2-lora-causal-lm/adapter_model.safetensors",
                           "adapters/qwen2.5-0.5b-instruct-lora-qv/adapter_model.safetensors",
                           "safetensors/tensor-2d-float64.safetensors",
                           "safetensors/tensor-1d-int32.safetensors"};
    char out[512];
    snprintf(out, sizeof out, "%s/rewrite.safetensors", test_tmpdir());
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        lr_err err = {0};
        st_file *f;
        REQUIRE(st_open(test_fixture(files[i]), &f, &err) == 0);
        st_writer *w = st_writer_new();
        for (size_t k = 0; k < st_count(f); k++) {
            const st_tensor *t = st_at(f, k);
            CHECK(st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data, &err) == 0);
        }
        if (st_metadata(f, "format")) CHECK(st_writer_meta(w, "format", st_metadata(f, "format"), &err) == 0);
        CHECKF(st_writer_write(w, out, &err) == 0, "%s", err.msg);
        st_writer_free(w);
        st_close(f);
        size_t la, lb;
        char *a = slurp(test_fixture(files[i]), &la), *b = slurp(out, &lb);
        REQUIRE(a && b);
        CHECKF(la == lb && !memcmp(a, b, la), "%s: rewrite differs (%zu vs %zu bytes)", files[i], la, lb);
        free(a);
        free(b);
    }
}

TEST(writer_roundtrip_dtypes) {
    lr_err err = {0};
    char out[512];
    snprintf(out, sizeof out, "%s/rt.safetensors", test_tmpdir());
    float f32[6] = {1, -2, 3.5f, 1e-8f, 65504, -0.0f};
    uint16_t bf[6], h[6];
    for (int i = 0; i < 6; i++) bf[i] = st_f32_to_bf16(f32[i]), h[i] = st_f32_to_f16(f32[i]);
    int64_t i64[2] = {-1, 1ll << 40};
    uint8_t boolv[3] = {1, 0, 1};
    int64_t s23[2] = {2, 3}, s2[1] = {2}, s3[1] = {3}, s0[2] = {0, 4};
    st_writer *w = st_writer_new();
    CHECK(st_writer_add(w, "b.f32", ST_F32, 2, s23, f32, &err) == 0);
    CHECK(st_writer_add(w, "a.bf16", ST_BF16, 2, s23, bf, &err) == 0);
    CHECK(st_writer_add(w, "c.f16", ST_F16, 2, s23, h, &err) == 0);
    CHECK(st_writer_add(w, "z.i64", ST_I64, 1, s2, i64, &err) == 0);
    CHECK(st_writer_add(w, "mask", ST_BOOL, 1, s3, boolv, &err) == 0);
    CHECK(st_writer_add(w, "empty", ST_F32, 2, s0, NULL, &err) == 0);
    CHECK(st_writer_add(w, "scalar", ST_F32, 0, NULL, f32, &err) == 0);
    CHECK(st_writer_add(w, "__metadata__", ST_F32, 0, NULL, f32, &err) == -1);
    CHECK(st_writer_meta(w, "format", "pt", &err) == 0);
    CHECK(st_writer_meta(w, "note", "quote\" back\\ nl\n tab\t \x01 é", &err) == 0);
    REQUIRE(st_writer_write(w, out, &err) == 0);
    st_writer_free(w);

    size_t len;
    char *raw = slurp(out, &len);
    REQUIRE(raw);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = hl << 8 | (unsigned char)raw[i];
    CHECK_EQ_INT(hl % 8, 0);
    const char *want = "{\"__metadata__\":{\"format\":\"pt\",\"note\":\"quote\\\" back\\\\ nl\\n tab\\t \\u0001 é\"},"
                       "\"z.i64\":{\"dtype\":\"I64\",\"shape\":[2],\"data_offsets\":[0,16]},\"b.f32\"";
    CHECKF(!strncmp(raw + 8, want, strlen(want)), "header: %.200s", raw + 8);
    free(raw);

    st_file *f;
    REQUIRE(st_open(out, &f, &err) == 0);
    CHECK_EQ_INT(st_count(f), 7);
    CHECK_STR(st_metadata(f, "note"), "quote\" back\\ nl\n tab\t \x01 é");
    const st_tensor *t = st_find(f, "a.bf16");
    REQUIRE(t);
    float back[6];
    REQUIRE(st_to_f32(t, back, 6, &err) == 0);
    CHECK_NEAR(back[2], 3.5, 0);
    CHECK_NEAR(back[4], 65536, 0); /* bf16 has 8 bits of mantissa */
    t = st_find(f, "c.f16");
    REQUIRE(t && st_to_f32(t, back, 6, &err) == 0);
    CHECK_NEAR(back[4], 65504, 0);
    CHECK_NEAR(back[3], 0, 1e-7); /* 1e-8 underflows to 0 in f16 */
    t = st_find(f, "b.f32");
    REQUIRE(t);
    CHECK(!memcmp(t->data, f32, sizeof f32));
    CHECK(((uintptr_t)t->data) % 4 == 0);
    t = st_find(f, "z.i64");
    CHECK(t && !memcmp(t->data, i64, 16) && ((uintptr_t)t->data) % 8 == 0);
    t = st_find(f, "empty");
    CHECK(t && t->nbytes == 0 && st_numel(t) == 0);
    t = st_find(f, "scalar");
    CHECK(t && t->ndim == 0 && st_numel(t) == 1 && t->nbytes == 4);
    st_close(f);

    w = st_writer_new();
    CHECK(st_writer_add(w, "x", ST_F32, 1, s2, f32, &err) == 0);
    CHECK(st_writer_add(w, "x", ST_F16, 1, s2, h, &err) == 0);
    CHECK(st_writer_write(w, out, &err) == -1);
    CHECK(strstr(err.msg, "twice") != NULL);
    st_writer_free(w);
}

TEST(conversions) {
    CHECK_NEAR(st_bf16_to_f32(0x3f80), 1.0, 0);
    CHECK_NEAR(st_bf16_to_f32(0xc040), -3.0, 0);
    CHECK_EQ_INT(st_f32_to_bf16(1.0f), 0x3f80);
    /* round to nearest even: 1 + 2^-8 is halfway between bf16 1 and 1+2^-7 */
    CHECK_EQ_INT(st_f32_to_bf16(1.0f + 0x1.0p-8f), 0x3f80);
    CHECK_EQ_INT(st_f32_to_bf16(1.0f + 0x1.0p-8f + 0x1.0p-20f), 0x3f81);
    CHECK_EQ_INT(st_f32_to_bf16(1.0f + 3 * 0x1.0p-8f), 0x3f82);
    CHECK(isnan(st_bf16_to_f32(st_f32_to_bf16(NAN))));
    CHECK_EQ_INT(st_f32_to_f16(1.0f), 0x3c00);
    CHECK_EQ_INT(st_f32_to_f16(65504.0f), 0x7bff);
    CHECK_EQ_INT(st_f32_to_f16(65520.0f), 0x7c00);
    CHECK_EQ_INT(st_f32_to_f16(-2.0f), 0xc000);
    CHECK_EQ_INT(st_f32_to_f16(0x1.0p-24f), 0x0001);
    CHECK_EQ_INT(st_f32_to_f16(0x1.0p-25f), 0x0000);            /* tie to even (0) */
    CHECK_EQ_INT(st_f32_to_f16(0x1.8p-24f), 0x0002);            /* tie to even (2) */
    CHECK_EQ_INT(st_f32_to_f16(1.0f + 0x1.0p-11f), 0x3c00);     /* tie to even */
    CHECK_EQ_INT(st_f32_to_f16(1.0f + 0x1.8p-10f), 0x3c02);
    CHECK(isnan(st_f16_to_f32(st_f32_to_f16(NAN))));
    /* every f16 survives f16 -> f32 -> f16 */
    int bad = 0;
    for (uint32_t x = 0; x < 65536; x++) {
        float f = st_f16_to_f32((uint16_t)x);
        if (isnan(f)) continue;
        if (st_f32_to_f16(f) != x) bad++;
    }
    CHECK_EQ_INT(bad, 0);
    bad = 0;
    for (uint32_t x = 0; x < 65536; x++) {
        float f = st_bf16_to_f32((uint16_t)x);
        if (!isnan(f) && st_f32_to_bf16(f) != x) bad++;
    }
    CHECK_EQ_INT(bad, 0);
}

TEST(f8_to_f32) {
    uint8_t e4[4] = {0x38, 0xb8, 0x7e, 0x01}, e5[3] = {0x3c, 0x7b, 0xbc};
    st_tensor t = {.name = "e4", .dtype = ST_F8_E4M3, .ndim = 1, .shape = {4}, .data = e4, .nbytes = 4};
    float v[4];
    lr_err err = {0};
    REQUIRE(st_to_f32(&t, v, 4, &err) == 0);
    CHECK_NEAR(v[0], 1.0, 0);
    CHECK_NEAR(v[1], -1.0, 0);
    CHECK_NEAR(v[2], 448.0, 0);
    CHECK_NEAR(v[3], 0x1.0p-9, 0);
    st_tensor u = {.name = "e5", .dtype = ST_F8_E5M2, .ndim = 1, .shape = {3}, .data = e5, .nbytes = 3};
    REQUIRE(st_to_f32(&u, v, 3, &err) == 0);
    CHECK_NEAR(v[0], 1.0, 0);
    CHECK_NEAR(v[1], 57344.0, 0);
    CHECK_NEAR(v[2], -1.0, 0);
}

TEST(bad_headers_are_errors) {
    static const struct {
        const char *hdr;
        size_t ndata;
        const char *msg;
    } cases[] = {
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, NULL},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 12, "after the last tensor"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4, "outside"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, "needs 12"},
        {"{\"a\":{\"dtype\":\"F33\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "unknown dtype"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8, "non-negative"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2.0],\"data_offsets\":[0,8]}}", 8, "non-negative"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8, "outside"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", 8, "[begin, end]"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8, "[begin, end]"},
        {"{\"a\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "dtype"},
        {"{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", 8, "shape"},
        {"{\"a\":[1]}", 8, "object"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],\"data_offsets\":[0,8]}}", 8,
         "too large"},
        {"{\"a\":{\"dtype\":\"F64\",\"shape\":[2305843009213693952],\"data_offsets\":[0,8]}}", 8, "too large"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,2],\"data_offsets\":[0,8]}}", 8, "dimensions"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, "overlaps"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}", 12, "gap"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
         "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, "duplicate"},
        {"{\"__metadata__\":{\"format\":1}}", 0, "must be a string"},
        {"{\"__metadata__\":[]}", 0, "__metadata__"},
        {"[1,2]", 0, "not a JSON object"},
        {"{\"a\":", 0, "header JSON"},
        {"  {}", 0, "not a JSON object"},
        {"{} x", 0, "header JSON"},
        {"{}", 0, NULL},
        {"{\"__metadata__\":{\"k\":\"v\"}}      ", 0, NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        lr_err err = {0};
        int rc = open_hdr(cases[i].hdr, cases[i].ndata, &err);
        if (!cases[i].msg) {
            CHECKF(rc == 0, "case %zu: %s", i, err.msg);
        } else {
            CHECKF(rc == -1 && strstr(err.msg, cases[i].msg), "case %zu: rc %d, message '%s' lacks '%s'", i, rc,
                   err.msg, cases[i].msg);
        }
    }
    /* header length past the file, over the limit, file shorter than 8 */
    lr_err err = {0};
    st_file *f = NULL;
    unsigned char b[16] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    CHECK(st_open_mem(b, 16, "t", &f, &err) == -1 && strstr(err.msg, "limit"));
    unsigned char c[16] = {100, 0, 0, 0, 0, 0, 0, 0, '{', '}'};
    CHECK(st_open_mem(c, 16, "t", &f, &err) == -1 && strstr(err.msg, "truncated"));
    CHECK(st_open_mem(c, 7, "t", &f, &err) == -1 && strstr(err.msg, "too short"));
    CHECK(st_open_mem(c, 0, "t", &f, &err) == -1);
    CHECK(f == NULL);
    CHECK(st_open("/nonexistent/x.safetensors", &f, &err) == -1 && err.code == LR_E_NOTFOUND);
}

/* Every prefix of a real file and every single-byte corruption of its
 * header is either rejected or parsed consistently; never a crash (ASan). */
TEST(truncated_and_corrupt_files) {
    size_t len;
    char *full = slurp(test_fixture("safetensors/tensor-4d-float32.safetensors"), &len);
    REQUIRE(full);
    int ok = 0;
    for (size_t n = 0; n < len; n++) {
        char *cut = malloc(n ? n : 1); /* exact size so ASan sees over-reads */
        memcpy(cut, full, n);
        lr_err err = {0};
        st_file *f = NULL;
        if (st_open_mem(cut, n, "cut", &f, &err) == 0) ok++;
        else CHECK(err.msg[0] != 0);
        st_close(f);
        free(cut);
    }
    CHECK_EQ_INT(ok, 0);
    char path[512];
    snprintf(path, sizeof path, "%s/trunc.safetensors", test_tmpdir());
    lr_err err = {0};
    REQUIRE(lr_write_file_atomic(path, full, len - 1, &err) == 0);
    st_file *f = NULL;
    CHECK(st_open(path, &f, &err) == -1 && strstr(err.msg, "trunc.safetensors"));
    for (size_t i = 0; i < 80; i++)
        for (int bit = 0; bit < 8; bit++) {
            char *m = malloc(len);
            memcpy(m, full, len);
            m[i] ^= (char)(1 << bit);
            if (st_open_mem(m, len, "flip", &f, &err) == 0) {
                for (size_t k = 0; k < st_count(f); k++) {
                    const st_tensor *t = st_at(f, k);
                    CHECK((const char *)t->data >= m && (const char *)t->data + t->nbytes <= m + len);
                }
                st_close(f);
            }
            free(m);
        }
    free(full);
}

static int write_shard(const char *dir, const char *file, const char *const *names, int n, float base) {
    char path[1100];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    static float vals[8][4];
    int64_t shape[1] = {4};
    lr_err err = {0};
    st_writer *w = st_writer_new();
    for (int i = 0; i < n; i++) {
        for (int k = 0; k < 4; k++) vals[i][k] = base + (float)(i * 4 + k);
        if (st_writer_add(w, names[i], ST_F32, 1, shape, vals[i], &err)) return -1;
    }
    int rc = st_writer_write(w, path, &err);
    st_writer_free(w);
    return rc;
}

static int write_text(const char *dir, const char *file, const char *text) {
    char path[1100];
    lr_err err = {0};
    snprintf(path, sizeof path, "%s/%s", dir, file);
    return lr_write_file_atomic(path, text, strlen(text), &err);
}

TEST(sharded_sets) {
    char dir[512];
    lr_err err = {0};
    snprintf(dir, sizeof dir, "%s/sharded", test_tmpdir());
    REQUIRE(lr_mkdirs(dir, &err) == 0);
    const char *s1[] = {"model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight"};
    const char *s2[] = {"model.norm.weight", "lm_head.weight", "model.layers.1.mlp.up_proj.weight"};
    REQUIRE(write_shard(dir, "model-00001-of-00002.safetensors", s1, 2, 0) == 0);
    REQUIRE(write_shard(dir, "model-00002-of-00002.safetensors", s2, 3, 100) == 0);
    const char *index = "{\"metadata\":{\"total_size\":80},\"weight_map\":{"
                        "\"model.embed_tokens.weight\":\"model-00001-of-00002.safetensors\","
                        "\"model.layers.0.mlp.up_proj.weight\":\"model-00001-of-00002.safetensors\","
                        "\"model.norm.weight\":\"model-00002-of-00002.safetensors\","
                        "\"lm_head.weight\":\"model-00002-of-00002.safetensors\","
                        "\"model.layers.1.mlp.up_proj.weight\":\"model-00002-of-00002.safetensors\"}}";
    REQUIRE(write_text(dir, "model.safetensors.index.json", index) == 0);
    st_set *s;
    REQUIRE(st_set_open_dir(dir, &s, &err) == 0);
    CHECK_EQ_INT(st_set_count(s), 5);
    const st_tensor *t = st_set_find(s, "lm_head.weight");
    REQUIRE(t);
    float v[4];
    REQUIRE(st_to_f32(t, v, 4, &err) == 0);
    CHECK_NEAR(v[0], 104, 0);
    CHECK_STR(st_set_at(s, 0)->name, "lm_head.weight");
    st_set_close(s);

    /* the index names a tensor its shard lacks */
    REQUIRE(write_text(dir, "model.safetensors.index.json",
                       "{\"weight_map\":{\"model.norm.weight\":\"model-00001-of-00002.safetensors\"}}") == 0);
    CHECK(st_set_open_dir(dir, &s, &err) == -1 && strstr(err.msg, "no such tensor"));
    /* shard names may not leave the directory */
    REQUIRE(write_text(dir, "model.safetensors.index.json",
                       "{\"weight_map\":{\"a\":\"../x.safetensors\"}}") == 0);
    CHECK(st_set_open_dir(dir, &s, &err) == -1 && strstr(err.msg, "same directory"));
    REQUIRE(write_text(dir, "model.safetensors.index.json", "{\"weight_map\":{}}") == 0);
    CHECK(st_set_open_dir(dir, &s, &err) == -1 && strstr(err.msg, "empty"));
    REQUIRE(write_text(dir, "model.safetensors.index.json", "{\"weight_map\":[]}") == 0);
    CHECK(st_set_open_dir(dir, &s, &err) == -1 && strstr(err.msg, "weight_map"));
    /* a tensor in two shards */
    REQUIRE(write_shard(dir, "model-00002-of-00002.safetensors", s1, 1, 0) == 0);
    REQUIRE(write_text(dir, "model.safetensors.index.json", index) == 0);
    CHECK(st_set_open_dir(dir, &s, &err) == -1);
    CHECK(st_set_open_dir(test_tmpdir(), &s, &err) == -1 && err.code == LR_E_NOTFOUND);
}

TEST(stream_writer) {
    char path[512];
    lr_err err = {0};
    snprintf(path, sizeof path, "%s/stream.safetensors", test_tmpdir());
    st_writer *w = st_writer_new();
    int64_t big[2] = {100, 37}, small[1] = {3};
    CHECK(st_writer_add(w, "w.big", ST_BF16, 2, big, NULL, &err) == 0);
    CHECK(st_writer_add(w, "a.small", ST_F32, 1, small, NULL, &err) == 0);
    CHECK(st_writer_write(w, path, &err) == -1); /* no data to write */
    st_stream *s;
    REQUIRE(st_stream_begin(w, path, &s, &err) == 0);
    REQUIRE(st_stream_next(s));
    CHECK_STR(st_stream_next(s)->name, "a.small"); /* F32 before BF16 */
    float sm[3] = {1, 2, 3};
    CHECK(st_stream_put(s, sm, sizeof sm, &err) == 0);
    CHECK_STR(st_stream_next(s)->name, "w.big");
    uint16_t chunk[370];
    for (int c = 0; c < 10; c++) {
        for (int i = 0; i < 370; i++) chunk[i] = st_f32_to_bf16((float)(c * 370 + i));
        CHECK(st_stream_put(s, chunk, sizeof chunk, &err) == 0);
    }
    CHECK(st_stream_next(s) == NULL);
    CHECK(st_stream_put(s, chunk, 2, &err) == -1);
    REQUIRE(st_stream_finish(s, &err) == 0);
    st_file *f;
    REQUIRE(st_open(path, &f, &err) == 0);
    const st_tensor *t = st_find(f, "w.big");
    REQUIRE(t);
    float *v = malloc(3700 * sizeof *v);
    REQUIRE(st_to_f32(t, v, 3700, &err) == 0);
    CHECK_NEAR(v[3699], 3699, 8); /* bf16 rounding */
    CHECK_NEAR(v[100], 100, 0);
    free(v);
    st_close(f);

    /* unfinished: an error, and neither the file nor the temporary remain */
    char p2[512];
    snprintf(p2, sizeof p2, "%s/partial.safetensors", test_tmpdir());
    REQUIRE(st_stream_begin(w, p2, &s, &err) == 0);
    CHECK(st_stream_put(s, sm, sizeof sm, &err) == 0);
    CHECK(st_stream_finish(s, &err) == -1 && strstr(err.msg, "w.big"));
    CHECK(!file_exists(p2));
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", p2, (int)getpid());
    CHECK(!file_exists(tmp));
    st_writer_free(w);
}

TEST(dtype_names) {
    st_dtype d;
    CHECK(st_dtype_parse("BF16", &d) == 0 && d == ST_BF16);
    CHECK(st_dtype_parse("F8_E4M3", &d) == 0 && d == ST_F8_E4M3);
    CHECK(st_dtype_parse("bf16", &d) == -1);
    CHECK_STR(st_dtype_name(ST_U64), "U64");
    CHECK_EQ_INT(st_dtype_size(ST_F64), 8);
    CHECK_EQ_INT(st_dtype_size(ST_BOOL), 1);
}
