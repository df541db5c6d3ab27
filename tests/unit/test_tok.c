/* tok: exactness against llama.cpp's tokenizer vectors (made with Hugging
 * Face encode), decode round-trips, added tokens, the slow-tokenizer file
 * pair, bad input, and the byte-level trainer. */
#include <jansson.h>
#include <stdint.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/buf.h"
#include "tests/unit/test.h"
#include "formats/tok.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0;
}

/* ---- the vector files ---------------------------------------------------- */

typedef struct {
    char *text[64];
    size_t len[64];
    int32_t *ids[64];
    size_t n_ids[64];
    int n;
} vectors;

static void vectors_free(vectors *v) {
    for (int i = 0; i < v->n; i++) {
        free(v->text[i]);
        free(v->ids[i]);
    }
}

/* .inp: texts, each followed by a line "__ggml_vocab_test__";
 * .out: one line of ids per text, each id preceded by a space. */
static int vectors_load(const char *name, vectors *v) {
    char p[256], *inp = NULL, *outp = NULL;
    size_t ni, no;
    lr_err err;
    memset(v, 0, sizeof *v);
    snprintf(p, sizeof p, "tokenizers/vectors/ggml-vocab-%s.gguf.inp", name);
    if (lr_read_file(test_fixture(p), 1 << 20, &inp, &ni, &err)) return -1;
    snprintf(p, sizeof p, "tokenizers/vectors/ggml-vocab-%s.gguf.out", name);
    if (lr_read_file(test_fixture(p), 1 << 20, &outp, &no, &err)) {
        free(inp);
        return -1;
    }
    static const char sep[] = "\n__ggml_vocab_test__\n";
    char *s = inp;
    for (char *e; (e = strstr(s, sep)) && v->n < 64; s = e + strlen(sep)) {
        v->len[v->n] = (size_t)(e - s);
        v->text[v->n] = malloc(v->len[v->n] + 1);
        memcpy(v->text[v->n], s, v->len[v->n]);
        v->text[v->n][v->len[v->n]] = 0;
        v->n++;
    }
    /* the first text has no separator before it, the empty text is "" */
    int k = 0;
    for (char *line = outp; k < v->n && line < outp + no; k++) {
        char *nl = strchr(line, '\n');
        if (!nl) nl = outp + no;
        v->ids[k] = malloc(sizeof(int32_t) * (size_t)(nl - line + 1)); /* ids are at least 2 chars apart */
        for (char *q = line; q < nl;) {
            char *end;
            long id = strtol(q, &end, 10);
            if (end == q) break;
            v->ids[k][v->n_ids[k]++] = (int32_t)id;
            q = end;
        }
        line = nl + 1;
    }
    free(inp);
    free(outp);
    return k == v->n ? 0 : -1;
}

/* Checks every vector text and its round trip; returns the number of exact
 * matches. */
static int check_vectors(const tok *t, const char *name, int roundtrip) {
    vectors v;
    if (vectors_load(name, &v)) {
        test_fail(__FILE__, __LINE__, "cannot read the %s vectors", name);
        return 0;
    }
    CHECKF(v.n >= 40, "%s: only %d texts read", name, v.n);
    int ok = 0;
    for (int i = 0; i < v.n; i++) {
        int32_t *ids;
        size_t n;
        lr_err err;
        if (tok_encode(t, v.text[i], v.len[i], 0, &ids, &n, &err)) {
            test_fail(__FILE__, __LINE__, "%s text %d: %s", name, i, err.msg);
            continue;
        }
        int same = n == v.n_ids[i] && (n == 0 || !memcmp(ids, v.ids[i], n * sizeof *ids));
        if (same) {
            ok++;
        } else {
            char got[2048] = "", want[2048] = "";
            for (size_t k = 0; k < n && strlen(got) < 2000; k++)
                snprintf(got + strlen(got), sizeof got - strlen(got), " %d", ids[k]);
            for (size_t k = 0; k < v.n_ids[i] && strlen(want) < 2000; k++)
                snprintf(want + strlen(want), sizeof want - strlen(want), " %d", v.ids[i][k]);
            test_fail(__FILE__, __LINE__, "%s text %d \"%.60s\":\n      got %s\n     want %s", name, i,
                      v.text[i], got, want);
        }
        if (roundtrip) {
            char *back;
            size_t bl;
            if (tok_decode(t, ids, n, &back, &bl, &err)) {
                test_fail(__FILE__, __LINE__, "%s text %d: decode: %s", name, i, err.msg);
            } else {
                CHECKF(bl == v.len[i] && !memcmp(back, v.text[i], bl), "%s text %d: round trip gives \"%.60s\"",
                       name, i, back);
                free(back);
            }
        }
        free(ids);
    }
    printf("    %s: %d/%d texts exact%s\n", name, ok, v.n, roundtrip ? ", all round-tripped" : "");
    CHECK_EQ_INT(ok, v.n);
    vectors_free(&v);
    return ok;
}

static tok *load_or_fail(const char *rel) {
    tok *t = NULL;
    lr_err err;
    double t0 = now_s();
    if (tok_load(test_fixture(rel), &t, &err)) {
        test_fail(__FILE__, __LINE__, "loading %s: %s", rel, err.msg);
        return NULL;
    }
    printf("    loaded %s in %.0f ms\n", rel, (now_s() - t0) * 1e3);
    return t;
}

TEST(vectors_gpt2) {
    tok *t = load_or_fail("tokenizers/gpt2/tokenizer.json");
    REQUIRE(t);
    check_vectors(t, "gpt-2", 1);
    tok_free(t);
}

TEST(vectors_llama_spm) {
    tok *t = load_or_fail("tokenizers/llama2/tokenizer.json");
    REQUIRE(t);
    check_vectors(t, "llama-spm", 1);
    tok_free(t);
}

TEST(vectors_qwen2) {
    tok *t = load_or_fail("tokenizers/qwen2");
    REQUIRE(t);
    check_vectors(t, "qwen2", 1);
    tok_free(t);
}

TEST(vectors_deepseek_r1_qwen) {
    tok *t = load_or_fail("tokenizers/qwen2");
    REQUIRE(t);
    check_vectors(t, "deepseek-r1-qwen", 1);
    tok_free(t);
}

/* ---- Llama-3: a tokenizer.json assembled from encoder.json + vocab.bpe with
 * the settings of the upstream file (see the fixtures README) ---------------- */

#define LLAMA3_PATTERN                                                                     \
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|" \
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"

static tok *load_llama3(void) {
    json_error_t je;
    json_t *vocab = json_load_file(test_fixture("tokenizers/llama3/encoder.json"), 0, &je);
    json_t *cfg = json_load_file(test_fixture("tokenizers/llama3/tokenizer_config.json"), JSON_DECODE_INT_AS_REAL, &je);
    char *bpe = NULL;
    size_t bl;
    lr_err err;
    tok *t = NULL;
    if (!vocab || !cfg || lr_read_file(test_fixture("tokenizers/llama3/vocab.bpe"), 16 << 20, &bpe, &bl, &err)) {
        test_fail(__FILE__, __LINE__, "cannot read the llama3 fixtures");
        goto out;
    }
    json_t *merges = json_array(), *added = json_array();
    for (char *line = bpe, *nl; *line; line = nl + 1) {
        nl = strchr(line, '\n');
        if (!nl) nl = line + strlen(line);
        if (nl > line) json_array_append_new(merges, json_stringn(line, (size_t)(nl - line)));
        if (!*nl) break;
    }
    const char *k;
    json_t *e;
    json_object_foreach(json_object_get(cfg, "added_tokens_decoder"), k, e) {
        json_t *a = json_deep_copy(e);
        json_object_set_new(a, "id", json_integer(atoi(k)));
        json_array_append_new(added, a);
    }
    json_t *root = json_pack(
        "{s:o,s:n,s:{s:s,s:[{s:s,s:{s:s},s:s,s:b},{s:s,s:b,s:b,s:b}]},"
        "s:{s:s,s:[{s:s,s:b,s:b,s:b},{s:s,s:[{s:{s:s,s:i}},{s:{s:s,s:i}}],s:{s:{s:s,s:[i],s:[s]}}}]},"
        "s:{s:s,s:b,s:b,s:b},"
        "s:{s:s,s:n,s:n,s:n,s:n,s:b,s:b,s:b,s:o,s:o}}",
        "added_tokens", added, "normalizer",
        "pre_tokenizer", "type", "Sequence", "pretokenizers",
            "type", "Split", "pattern", "Regex", LLAMA3_PATTERN, "behavior", "Isolated", "invert", 0,
            "type", "ByteLevel", "add_prefix_space", 0, "trim_offsets", 1, "use_regex", 0,
        "post_processor", "type", "Sequence", "processors",
            "type", "ByteLevel", "add_prefix_space", 1, "trim_offsets", 0, "use_regex", 1,
            "type", "TemplateProcessing", "single", "SpecialToken", "id", "<|begin_of_text|>", "type_id", 0,
            "Sequence", "id", "A", "type_id", 0, "special_tokens", "<|begin_of_text|>", "id", "<|begin_of_text|>",
            "ids", 128000, "tokens", "<|begin_of_text|>",
        "decoder", "type", "ByteLevel", "add_prefix_space", 1, "trim_offsets", 1, "use_regex", 1,
        "model", "type", "BPE", "dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix",
            "fuse_unk", 0, "byte_fallback", 0, "ignore_merges", 1, "vocab", json_incref(vocab), "merges", merges);
    if (!root) {
        test_fail(__FILE__, __LINE__, "json_pack failed");
        goto out;
    }
    char *js = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    double t0 = now_s();
    if (tok_load_json(js, strlen(js), &t, &err)) test_fail(__FILE__, __LINE__, "llama3: %s", err.msg);
    else printf("    assembled llama3 tokenizer.json (%zu bytes) loaded in %.0f ms\n", strlen(js), (now_s() - t0) * 1e3);
    free(js);
out:
    json_decref(vocab);
    json_decref(cfg);
    free(bpe);
    return t;
}

TEST(vectors_llama_bpe) {
    tok *t = load_llama3();
    REQUIRE(t);
    check_vectors(t, "llama-bpe", 1);
    CHECK_EQ_INT(tok_vocab_size(t), 128256);
    CHECK_EQ_INT(tok_bos_id(t), 128000);
    CHECK_EQ_INT(tok_adds_bos(t), 1);
    /* ignore_merges: a whole pre-token found in the vocabulary is one id */
    int32_t *ids;
    size_t n;
    lr_err err;
    REQUIRE(tok_encode(t, "<|eot_id|>", 10, 1, &ids, &n, &err) == 0);
    CHECK(n == 1 && ids[0] == 128009);
    free(ids);
    tok_free(t);
}

/* Other tokenizers without vectors: every vector text round-trips. */
TEST(mistral_roundtrip) {
    tok *t = load_or_fail("tokenizers/mistral/tokenizer.json");
    REQUIRE(t);
    vectors v;
    REQUIRE(vectors_load("llama-spm", &v) == 0);
    int ok = 0;
    for (int i = 0; i < v.n; i++) {
        int32_t *ids;
        size_t n, bl;
        char *back;
        lr_err err;
        REQUIRE(tok_encode(t, v.text[i], v.len[i], 0, &ids, &n, &err) == 0);
        REQUIRE(tok_decode(t, ids, n, &back, &bl, &err) == 0);
        ok += bl == v.len[i] && !memcmp(back, v.text[i], bl);
        free(back);
        free(ids);
    }
    printf("    mistral: %d/%d round trips\n", ok, v.n);
    CHECK_EQ_INT(ok, v.n);
    CHECK_EQ_INT(tok_bos_id(t), 1);
    CHECK_EQ_INT(tok_eos_id(t), 2);
    CHECK_EQ_INT(tok_adds_bos(t), 1);
    CHECK_EQ_INT(tok_vocab_size(t), 32000);
    /* here "</s>" is normalized=false: matched in the raw text */
    int32_t *ids;
    size_t n;
    lr_err err;
    REQUIRE(tok_encode(t, "Hi</s>", 6, 1, &ids, &n, &err) == 0);
    CHECK(n == 2 && ids[1] == 2);
    free(ids);
    vectors_free(&v);
    tok_free(t);
}

/* ---- added and special tokens ----------------------------------------------- */

static int encode_str(const tok *t, const char *s, int allow, int32_t **ids, size_t *n) {
    lr_err err;
    if (tok_encode(t, s, strlen(s), allow, ids, n, &err)) {
        test_fail(__FILE__, __LINE__, "encode \"%s\": %s", s, err.msg);
        return -1;
    }
    return 0;
}

static int has_id(const int32_t *ids, size_t n, int32_t id) {
    for (size_t i = 0; i < n; i++)
        if (ids[i] == id) return 1;
    return 0;
}

static void check_roundtrip(const tok *t, const int32_t *ids, size_t n, const char *want) {
    char *back;
    size_t bl;
    lr_err err;
    if (tok_decode(t, ids, n, &back, &bl, &err)) {
        test_fail(__FILE__, __LINE__, "decode: %s", err.msg);
        return;
    }
    CHECK_STR(back, want);
    CHECK_EQ_INT(bl, strlen(want));
    free(back);
}

TEST(qwen2_chatml_specials) {
    tok *t = load_or_fail("tokenizers/qwen2");
    REQUIRE(t);
    CHECK_EQ_INT(tok_vocab_size(t), 151665);
    CHECK_EQ_INT(tok_piece_id(t, "<|im_start|>"), 151644);
    CHECK_EQ_INT(tok_piece_id(t, "<|im_end|>"), 151645);
    CHECK_EQ_INT(tok_piece_id(t, "<|endoftext|>"), 151643);
    CHECK_EQ_INT(tok_piece_id(t, "no such piece"), -1);
    CHECK_EQ_INT(tok_eos_id(t), 151645);
    CHECK_EQ_INT(tok_bos_id(t), -1);
    CHECK_EQ_INT(tok_adds_bos(t), 0);
    CHECK_STR(tok_id_piece(t, 151644), "<|im_start|>");
    CHECK(tok_id_piece(t, 151665) == NULL);
    CHECK(tok_id_piece(t, -1) == NULL);

    const char *chat = "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n";
    int32_t *ids, *plain, *part;
    size_t n, np, nq;
    REQUIRE(encode_str(t, chat, 1, &ids, &n) == 0);
    /* ChatML as Qwen2's HF tokenizer gives it */
    static const int32_t want[] = {151644, 8948, 198, 2610, 525, 10950, 13, 151645, 198, 151644, 872, 198, 13048, 151645, 198};
    CHECK_EQ_INT(n, sizeof want / sizeof *want);
    CHECK(n == sizeof want / sizeof *want && !memcmp(ids, want, sizeof want));
    check_roundtrip(t, ids, n, chat);
    /* not allowed: the markers are plain text, and still round-trip */
    REQUIRE(encode_str(t, chat, 0, &plain, &np) == 0);
    CHECK(!has_id(plain, np, 151644) && !has_id(plain, np, 151645));
    CHECK(np > n);
    check_roundtrip(t, plain, np, chat);
    /* the text between markers is encoded as alone */
    REQUIRE(encode_str(t, "system\nYou are helpful.", 0, &part, &nq) == 0);
    CHECK(nq == 6 && !memcmp(part, ids + 1, nq * sizeof *part));
    free(ids);
    free(plain);
    free(part);
    tok_free(t);
}

TEST(gpt2_endoftext) {
    tok *t = load_or_fail("tokenizers/gpt2/tokenizer.json");
    REQUIRE(t);
    CHECK_EQ_INT(tok_vocab_size(t), 50257);
    CHECK_EQ_INT(tok_bos_id(t), 50256);
    CHECK_EQ_INT(tok_eos_id(t), 50256);
    CHECK_EQ_INT(tok_adds_bos(t), 0);
    int32_t *ids, *plain;
    size_t n, np;
    REQUIRE(encode_str(t, "Hello world<|endoftext|> again", 1, &ids, &n) == 0);
    static const int32_t want[] = {15496, 995, 50256, 757};
    CHECK(n == 4 && !memcmp(ids, want, sizeof want));
    check_roundtrip(t, ids, n, "Hello world<|endoftext|> again");
    REQUIRE(encode_str(t, "Hello world<|endoftext|> again", 0, &plain, &np) == 0);
    CHECK(!has_id(plain, np, 50256));
    check_roundtrip(t, plain, np, "Hello world<|endoftext|> again");
    free(ids);
    free(plain);
    tok_free(t);
}

TEST(llama2_specials_and_bos) {
    tok *t = load_or_fail("tokenizers/llama2");
    REQUIRE(t);
    CHECK_EQ_INT(tok_bos_id(t), 1);
    CHECK_EQ_INT(tok_eos_id(t), 2);
    CHECK_EQ_INT(tok_adds_bos(t), 1);
    int32_t *ids;
    size_t n;
    /* "</s>" is special and normalized=true in this file, so (as in HF) it is
     * matched in the normalized text by its normalized form "▁</s>" */
    REQUIRE(encode_str(t, "Hi </s>", 1, &ids, &n) == 0);
    CHECK(n == 2 && ids[1] == 2);
    check_roundtrip(t, ids, n, "Hi</s>");
    free(ids);
    REQUIRE(encode_str(t, "Hi </s>", 0, &ids, &n) == 0);
    CHECK(n > 2 && !has_id(ids, n, 2));
    check_roundtrip(t, ids, n, "Hi </s>");
    free(ids);
    /* byte fallback: a character outside the vocabulary becomes <0xXX> pieces */
    REQUIRE(encode_str(t, "\xF0\x9F\xA6\x99", 0, &ids, &n) == 0); /* U+1F999 */
    CHECK(n >= 4);
    check_roundtrip(t, ids, n, "\xF0\x9F\xA6\x99");
    free(ids);
    tok_free(t);
}

/* ---- the slow-tokenizer pair equals tokenizer.json -------------------------- */

TEST(gpt2_pair_equals_json) {
    const char *dir = test_tmpdir();
    char d[512], src[512], dst[600];
    snprintf(d, sizeof d, "%s/gpt2pair", dir);
    REQUIRE(mkdir(d, 0755) == 0);
    static const char *files[] = {"vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"};
    for (int i = 0; i < 4; i++) {
        snprintf(src, sizeof src, "tokenizers/gpt2/%s", files[i]);
        snprintf(dst, sizeof dst, "%s/%s", d, files[i]);
        char *abs = realpath(test_fixture(src), NULL);
        REQUIRE(abs && symlink(abs, dst) == 0);
        free(abs);
    }
    tok *a = load_or_fail("tokenizers/gpt2/tokenizer.json"), *b = NULL;
    lr_err err;
    CHECKF(tok_load(d, &b, &err) == 0, "pair: %s", err.msg);
    REQUIRE(a && b);
    CHECK_EQ_INT(tok_vocab_size(a), tok_vocab_size(b));
    CHECK_EQ_INT(tok_bos_id(b), 50256);
    CHECK_EQ_INT(tok_eos_id(b), 50256);
    vectors v;
    REQUIRE(vectors_load("gpt-2", &v) == 0);
    int same = 0;
    for (int i = 0; i < v.n; i++) {
        int32_t *x, *y;
        size_t nx, ny;
        REQUIRE(tok_encode(a, v.text[i], v.len[i], 1, &x, &nx, &err) == 0);
        REQUIRE(tok_encode(b, v.text[i], v.len[i], 1, &y, &ny, &err) == 0);
        same += nx == ny && !memcmp(x, y, nx * sizeof *x);
        free(x);
        free(y);
    }
    printf("    vocab.json+merges.txt == tokenizer.json on %d/%d texts\n", same, v.n);
    CHECK_EQ_INT(same, v.n);
    vectors_free(&v);
    tok_free(a);
    tok_free(b);
}

static int write_str(const char *path, const char *s) {
    lr_err err;
    return lr_write_file_atomic(path, s, strlen(s), &err);
}

/* ---- bad input ------------------------------------------------------------------ */

static void expect_load_error(const char *json, const char *needle) {
    tok *t = NULL;
    lr_err err;
    lr_err_clear(&err);
    int rc = tok_load_json(json, strlen(json), &t, &err);
    CHECKF(rc == -1 && t == NULL, "loading %.60s should fail", json);
    CHECKF(strstr(err.msg, needle) != NULL, "error \"%s\" lacks \"%s\"", err.msg, needle);
    tok_free(t);
}

TEST(bad_tokenizer_json) {
    char *full;
    size_t len;
    lr_err err;
    REQUIRE(lr_read_file(test_fixture("tokenizers/gpt2/tokenizer.json"), 8 << 20, &full, &len, &err) == 0);
    tok *t = NULL;
    CHECK(tok_load_json(full, len / 2, &t, &err) == -1 && !t); /* truncated */
    CHECKF(strstr(err.msg, "invalid JSON") != NULL, "%s", err.msg);
    free(full);
    expect_load_error("", "invalid JSON");
    expect_load_error("[1,2]", "top level");
    expect_load_error("{}", "model");
    expect_load_error("{\"model\":{\"type\":\"Unigram\",\"vocab\":[]}}", "unsupported tokenizer model type 'Unigram'");
    expect_load_error("{\"model\":{\"type\":\"WordPiece\",\"vocab\":{}}}", "unsupported tokenizer model type");
    expect_load_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[\"a b\"]}}", "not in the vocabulary");
    expect_load_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[\"ab\"]}}", "one space");
    expect_load_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":-3},\"merges\":[]}}", "out of range");
    expect_load_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":0},\"merges\":[]}}", "given twice");
    expect_load_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[]}}", "empty");
    expect_load_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]},"
                      "\"normalizer\":{\"type\":\"Precompiled\"}}", "unsupported normalizer type 'Precompiled'");
    expect_load_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]},"
                      "\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(\"},\"behavior\":\"Isolated\"}}",
                      "bad regex");
    expect_load_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]},\"decoder\":{\"type\":\"CTC\"}}",
                      "unsupported decoder type 'CTC'");
    expect_load_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]},\"decoder\":{\"kind\":\"CTC\"}}",
                      "decoder: missing 'type'");
    expect_load_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]},"
                      "\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":{}}}",
                      "pre_tokenizer Sequence: missing 'pretokenizers'");
    /* Sequences nested 10 deep: bounded, with a message that says so */
    char deep[1024] = "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]},\"normalizer\":";
    for (int i = 0; i < 10; i++) strcat(deep, "{\"type\":\"Sequence\",\"normalizers\":[");
    strcat(deep, "{\"type\":\"NFC\"}");
    for (int i = 0; i < 10; i++) strcat(deep, "]}");
    strcat(deep, "}");
    expect_load_error(deep, "normalizer: Sequences nested more than 8 deep");
}

TEST(bad_paths) {
    tok *t = NULL;
    lr_err err;
    CHECK(tok_load("/nonexistent/tokenizer.json", &t, &err) == -1 && !t);
    CHECKF(strstr(err.msg, "no such") != NULL, "%s", err.msg);
    CHECK_EQ_INT(err.code, LR_E_NOTFOUND);
    char d[512];
    snprintf(d, sizeof d, "%s/emptydir", test_tmpdir());
    REQUIRE(mkdir(d, 0755) == 0);
    CHECK(tok_load(d, &t, &err) == -1 && !t);
    CHECKF(strstr(err.msg, "no tokenizer.json") != NULL, "%s", err.msg);
    /* a folder whose tokenizer_config.json is broken */
    char p[600];
    snprintf(p, sizeof p, "%s/tokenizer.json", d);
    REQUIRE(write_str(p, "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]}}") == 0);
    snprintf(p, sizeof p, "%s/tokenizer_config.json", d);
    REQUIRE(write_str(p, "{\"bos_token\":") == 0);
    CHECK(tok_load(d, &t, &err) == -1 && !t);
    CHECKF(strstr(err.msg, "tokenizer_config.json") != NULL, "%s", err.msg);
    /* vocab.json + merges.txt of a slow tokenizer class the pair cannot stand for */
    snprintf(d, sizeof d, "%s/bertdir", test_tmpdir());
    REQUIRE(mkdir(d, 0755) == 0);
    snprintf(p, sizeof p, "%s/vocab.json", d);
    REQUIRE(write_str(p, "{\"a\":0}") == 0);
    snprintf(p, sizeof p, "%s/merges.txt", d);
    REQUIRE(write_str(p, "#version: 0.2\n") == 0);
    snprintf(p, sizeof p, "%s/tokenizer_config.json", d);
    REQUIRE(write_str(p, "{\"tokenizer_class\":\"BertTokenizer\"}") == 0);
    CHECK(tok_load(d, &t, &err) == -1 && !t);
    CHECKF(strstr(err.msg, "needs a tokenizer.json") != NULL, "%s", err.msg);
    /* a merges.txt line that is not two pieces */
    snprintf(p, sizeof p, "%s/tokenizer_config.json", d);
    REQUIRE(write_str(p, "{}") == 0);
    snprintf(p, sizeof p, "%s/merges.txt", d);
    REQUIRE(write_str(p, "#version: 0.2\na a a\n") == 0);
    CHECK(tok_load(d, &t, &err) == -1 && !t);
    CHECKF(strstr(err.msg, "merges.txt line 2") != NULL, "%s", err.msg);
    tok_free(t);
}

/* An added token whose id is taken by another piece moves to the next free
 * id, and one whose content is in the vocabulary keeps that id (HF). */
TEST(added_token_ids) {
    static const char js[] =
        "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"<x>\":2},\"merges\":[]},"
        "\"added_tokens\":[{\"id\":1,\"content\":\"<y>\",\"special\":true},"
        "{\"id\":7,\"content\":\"<x>\",\"special\":true}]}";
    tok *t = NULL;
    lr_err err;
    REQUIRE(tok_load_json(js, sizeof js - 1, &t, &err) == 0);
    CHECK_EQ_INT(tok_piece_id(t, "<y>"), 3);
    CHECK_EQ_INT(tok_piece_id(t, "<x>"), 2);
    CHECK_EQ_INT(tok_piece_id(t, "b"), 1);
    CHECK_EQ_INT(tok_vocab_size(t), 4);
    int32_t *ids;
    size_t n;
    REQUIRE(tok_encode(t, "a<y>b<x>", 8, 1, &ids, &n, &err) == 0);
    static const int32_t want[] = {0, 3, 1, 2};
    CHECK(n == 4 && !memcmp(ids, want, sizeof want));
    free(ids);
    tok_free(t);
}

TEST(invalid_utf8_text) {
    tok *g = load_or_fail("tokenizers/gpt2/tokenizer.json");
    tok *l = load_or_fail("tokenizers/llama2/tokenizer.json");
    REQUIRE(g && l);
    static const char bad[] = "ok \xff\xfe mid \xC3 end \xE2\x82 \xED\xA0\x80 \xF4\x90\x80\x80 \0 nul";
    const tok *ts[] = {g, l};
    for (int k = 0; k < 2; k++) {
        int32_t *ids;
        size_t n;
        lr_err err;
        REQUIRE(tok_encode(ts[k], bad, sizeof bad - 1, 1, &ids, &n, &err) == 0);
        CHECK(n > 5);
        char *back;
        size_t bl;
        REQUIRE(tok_decode(ts[k], ids, n, &back, &bl, &err) == 0);
        /* every invalid subpart became U+FFFD, the rest survives (NUL included) */
        CHECK(bl > 10 && !memcmp(back, "ok \xEF\xBF\xBD\xEF\xBF\xBD mid \xEF\xBF\xBD end", 21));
        CHECK(bl >= 5 && !memcmp(back + bl - 5, "\0 nul", 5));
        free(back);
        free(ids);
        /* an id outside the vocabulary is an error, not a crash */
        int32_t bad_ids[] = {1, 999999};
        CHECK(tok_decode(ts[k], bad_ids, 2, &back, &bl, &err) == -1);
        CHECKF(strstr(err.msg, "999999") != NULL, "%s", err.msg);
    }
    /* empty text gives no ids */
    int32_t *ids;
    size_t n;
    lr_err err;
    REQUIRE(tok_encode(l, "", 0, 1, &ids, &n, &err) == 0);
    CHECK_EQ_INT(n, 0);
    free(ids);
    tok_free(g);
    tok_free(l);
}

/* ---- training ---------------------------------------------------------------- */

static const char corpus[] =
    "The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs.\n"
    "Low-rank adapters train a small number of parameters: the rank r and alpha set the scale.\n"
    "Tokenizers split text into pieces, and the pieces into ids. Ids go back to text.\n"
    "Ünïcödé text, 日本語のテキスト, emojis 🚀🚀 and numbers 12345 67890 also appear here.\n";

TEST(train_bytelevel) {
    char p1[512], p2[512];
    snprintf(p1, sizeof p1, "%s/trained1.json", test_tmpdir());
    snprintf(p2, sizeof p2, "%s/trained2.json", test_tmpdir());
    const char *specials[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
    lr_err err;
    REQUIRE(tok_train_bytelevel(corpus, sizeof corpus - 1, 120, specials, 3, p1, &err) == 0);
    REQUIRE(tok_train_bytelevel(corpus, sizeof corpus - 1, 120, specials, 3, p2, &err) == 0);
    char *a, *b;
    size_t la, lb;
    REQUIRE(lr_read_file(p1, 1 << 24, &a, &la, &err) == 0);
    REQUIRE(lr_read_file(p2, 1 << 24, &b, &lb, &err) == 0);
    CHECK(la == lb && !memcmp(a, b, la)); /* deterministic */
    json_error_t je;
    json_t *j = json_loadb(a, la, 0, &je);
    REQUIRE(j);
    CHECK_EQ_INT(json_array_size(json_object_get(json_object_get(j, "model"), "merges")), 120);
    json_decref(j);
    free(a);
    free(b);

    tok *t = NULL;
    REQUIRE(tok_load(p1, &t, &err) == 0);
    int vs = tok_vocab_size(t);
    CHECKF(vs > 256 + 3 && vs <= 256 + 120 + 3, "vocab %d", vs);
    CHECK_EQ_INT(tok_piece_id(t, "<|im_end|>"), vs - 1);
    CHECK_EQ_INT(tok_piece_id(t, "!"), 33); /* bytes first, in byte order */
    CHECK_EQ_INT(tok_piece_id(t, "\xC4\xA0"), 32); /* 'Ġ' is the space byte */
    int32_t *ids;
    size_t n;
    REQUIRE(tok_encode(t, corpus, sizeof corpus - 1, 0, &ids, &n, &err) == 0);
    CHECKF(n < (sizeof corpus - 1) * 2 / 3, "%zu ids for %zu bytes: merges do not compress", n, sizeof corpus - 1);
    check_roundtrip(t, ids, n, corpus);
    free(ids);
    REQUIRE(encode_str(t, "<|im_start|>user\nhi<|im_end|>", 1, &ids, &n) == 0);
    CHECK(n >= 3 && ids[0] == vs - 2 && ids[n - 1] == vs - 1);
    check_roundtrip(t, ids, n, "<|im_start|>user\nhi<|im_end|>");
    free(ids);
    /* text never seen in training still round-trips through the byte tokens */
    REQUIRE(encode_str(t, "zzz Qq \xE2\x82\xAC", 0, &ids, &n) == 0);
    check_roundtrip(t, ids, n, "zzz Qq \xE2\x82\xAC");
    free(ids);
    tok_free(t);

    /* more merges than the corpus has pairs: stops early, still valid */
    REQUIRE(tok_train_bytelevel("abab", 4, 50, NULL, 0, p2, &err) == 0);
    REQUIRE(tok_load(p2, &t, &err) == 0);
    REQUIRE(encode_str(t, "abab", 0, &ids, &n) == 0);
    CHECK_EQ_INT(n, 1);
    free(ids);
    tok_free(t);
    CHECK(tok_train_bytelevel(corpus, 10, -1, NULL, 0, p2, &err) == -1);
}

/* ---- speed ---------------------------------------------------------------------- */

TEST(speed_dataset) {
    const char *path = test_fixture("datasets/ra-llm-notes/data/sft_test.jsonl");
    if (!exists(path)) SKIP("fixture %s missing", path);
    char *data;
    size_t len;
    lr_err err;
    REQUIRE(lr_read_file(path, 16 << 20, &data, &len, &err) == 0);
    tok *t = load_or_fail("tokenizers/qwen2");
    REQUIRE(t);
    double t0 = now_s();
    size_t total = 0, lines = 0;
    for (char *s = data, *nl; s < data + len; s = nl + 1) {
        nl = memchr(s, '\n', (size_t)(data + len - s));
        if (!nl) nl = data + len;
        int32_t *ids;
        size_t n;
        REQUIRE(tok_encode(t, s, (size_t)(nl - s), 0, &ids, &n, &err) == 0);
        total += n;
        lines++;
        free(ids);
    }
    double dt = now_s() - t0;
    printf("    qwen2: %zu lines, %zu bytes -> %zu tokens in %.1f ms (%.1f MB/s)\n", lines, len, total, dt * 1e3,
           len / dt / 1e6);
    CHECK(total > len / 8 && total < len / 2);
    free(data);
    tok_free(t);
}
