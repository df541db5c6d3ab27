/* test_quant: kernels/quant.c against tests/reference/bnb_quant.py, a
 * PyTorch restatement of bitsandbytes' 4-bit blockwise algorithm. The
 * reference writes test vectors (random weights, zero blocks, values on
 * every code book midpoint and one ulp either side, a shorter odd last
 * block, more than 256 blocks for the double quantization); for each, NF4
 * and FP4, with and without double quantization, the packed codes, the
 * scales and every dequantized value must be bit-identical. Cases that need
 * no Python check the properties the algorithm guarantees, the CPU
 * backend's linear ops on a 4-bit weight, the CUDA dequant kernel (on a
 * GPU), and the lora.quantize / quantization_config settings. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kernels/backend.h"
#include "kernels/quant.h"
#include "proto/jobspec.h"
#include "tests/unit/test.h"
#include "formats/hfconfig.h"
#include "formats/safetensors.h"
#ifdef LR_HAVE_CUDA
#include <cuda_runtime.h>

#include "kernels/cuda/quant_cuda.h"
#endif

#define REF_SCRIPT "tests/reference/bnb_quant.py"

static st_file *vectors;
static int vectors_tried;

/* The reference's vectors, written once per run; NULL (with the reason in
 * why) when Python, torch or the script are missing. */
static st_file *get_vectors(char *why, size_t len) {
    if (vectors_tried) {
        snprintf(why, len, "the reference vectors could not be written (see the first skip)");
        return vectors;
    }
    vectors_tried = 1;
    if (access("/usr/bin/python3", X_OK) || access(REF_SCRIPT, R_OK)) {
        snprintf(why, len, "needs /usr/bin/python3 and %s (run from the repository root)", REF_SCRIPT);
        return NULL;
    }
    char path[4096], cmd[8192];
    snprintf(path, sizeof path, "%s/vectors.safetensors", test_tmpdir());
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s vectors '%s' 2>&1", REF_SCRIPT, path);
    if (system(cmd) != 0) {
        snprintf(why, len, "%s failed (is torch installed for /usr/bin/python3?)", REF_SCRIPT);
        return NULL;
    }
    lr_err err = {0};
    if (st_open(path, &vectors, &err)) {
        snprintf(why, len, "cannot read the vectors: %s", err.msg);
        return NULL;
    }
    return vectors;
}

static const st_tensor *need(st_file *f, const char *name) {
    const st_tensor *t = st_find(f, name);
    if (!t) test_fail(__FILE__, __LINE__, "vector '%s' missing", name);
    return t;
}

static const char *const CASES[] = {"normal", "zeros", "tail_odd", "nested", "ties_nf4", "ties_fp4"};

/* One case: quantize, compare bytes and bits, dequantize, compare bits. */
static void check_case(st_file *f, const char *name, kq_type type, int dq) {
    char key[128], pre[96];
    snprintf(key, sizeof key, "%s.w", name);
    const st_tensor *tw = need(f, key);
    if (!tw) return;
    size_t n = (size_t)st_numel(tw), nb = kq_nblocks(n), nn = kq_nested_nblocks(n);
    float *w = malloc(n * sizeof *w), *absmax = malloc(nb * sizeof *absmax), *nabs = malloc(nn * sizeof *nabs);
    float *deq = malloc(n * sizeof *deq);
    uint8_t *codes = malloc(kq_code_bytes(n)), *qabs = malloc(nb);
    float offset = 0;
    REQUIRE(w && absmax && nabs && deq && codes && qabs);
    memcpy(w, tw->data, n * sizeof *w);
    kq_quantize(type, w, n, codes, absmax, dq ? qabs : NULL, nabs, &offset, 3);
    snprintf(pre, sizeof pre, "%s.%s%s.", name, kq_type_name(type), dq ? ".dq" : "");
#define REF(suffix) (snprintf(key, sizeof key, "%s%s", pre, suffix), need(f, key))
    const st_tensor *t;
    if ((t = REF("codes"))) {
        CHECKF(t->nbytes == kq_code_bytes(n), "%scodes: %zu bytes, expected %zu", pre, t->nbytes, kq_code_bytes(n));
        size_t bad = 0, first = 0;
        for (size_t i = 0; i < t->nbytes && i < kq_code_bytes(n); i++)
            if (codes[i] != ((const uint8_t *)t->data)[i] && !bad++) first = i;
        CHECKF(!bad, "%scodes: %zu of %zu bytes differ, first at %zu (0x%02x vs 0x%02x)", pre, bad, t->nbytes, first,
               codes[first], ((const uint8_t *)t->data)[first]);
    }
    kq_weight q = {.type = type, .rows = 1, .cols = (int64_t)n, .codes = codes};
    kq_book(type, q.book);
    memcpy(q.nbook, kq_dynamic_map(), sizeof q.nbook);
    if (!dq) {
        if ((t = REF("absmax")))
            CHECKF(t->nbytes == nb * 4 && !memcmp(t->data, absmax, nb * 4), "%sabsmax differs", pre);
        q.absmax = absmax;
    } else {
        if ((t = REF("qabsmax"))) CHECKF(t->nbytes == nb && !memcmp(t->data, qabs, nb), "%sqabsmax differs", pre);
        if ((t = REF("nested_absmax")))
            CHECKF(t->nbytes == nn * 4 && !memcmp(t->data, nabs, nn * 4), "%snested_absmax differs", pre);
        if ((t = REF("offset"))) CHECKF(!memcmp(t->data, &offset, 4), "%soffset differs", pre);
        q.qabsmax = qabs, q.nabsmax = nabs, q.offset = offset;
    }
    kq_dequant_range(&q, 0, n, deq);
    if ((t = REF("deq"))) {
        size_t bad = 0, first = 0;
        const float *r = t->data;
        for (size_t i = 0; i < n && t->nbytes == n * 4; i++)
            if (memcmp(&r[i], &deq[i], 4) && !bad++) first = i;
        CHECKF(t->nbytes == n * 4 && !bad, "%sdequantized: %zu of %zu values differ, first [%zu] %.9g vs %.9g", pre,
               bad, n, first, deq[first], r[first]);
    }
#undef REF
    free(w), free(absmax), free(nabs), free(deq), free(codes), free(qabs);
}

TEST(matches_reference_nf4_fp4_double_quant) {
    char why[640];
    st_file *f = get_vectors(why, sizeof why);
    if (!f) SKIP("%s", why);
    for (size_t c = 0; c < sizeof CASES / sizeof *CASES; c++)
        for (int type = KQ_NF4; type <= KQ_FP4; type++)
            for (int dq = 0; dq < 2; dq++) check_case(f, CASES[c], (kq_type)type, dq);
}

TEST(code_books_match_reference) {
    char why[640];
    st_file *f = get_vectors(why, sizeof why);
    if (!f) SKIP("%s", why);
    float book[16];
    const st_tensor *t;
    kq_book(KQ_NF4, book);
    if ((t = need(f, "book.nf4"))) CHECK(t->nbytes == sizeof book && !memcmp(t->data, book, sizeof book));
    kq_book(KQ_FP4, book);
    if ((t = need(f, "book.fp4"))) CHECK(t->nbytes == sizeof book && !memcmp(t->data, book, sizeof book));
    if ((t = need(f, "dynamic_map"))) CHECK(t->nbytes == 256 * 4 && !memcmp(t->data, kq_dynamic_map(), 256 * 4));
}

/* Without Python: ties go to the lower code, zero blocks give +0.0, the
 * nibble order, and a tile equals the same elements of the full range. */
TEST(properties) {
    float w[130], book[16];
    kq_book(KQ_NF4, book);
    memset(w, 0, sizeof w);
    w[0] = 1.0f;                                /* block 0: absmax 1, scale exact */
    w[1] = (book[7] + book[8]) / 2.0f;         /* exactly the midpoint of 0 and 0.0796 */
    w[2] = book[15];
    w[3] = -1.0f;
    /* block 1 (64..127) all zero; block 2 a short tail of 2 */
    w[128] = -3.0f, w[129] = 1.5f;
    uint8_t codes[65];
    float absmax[3];
    kq_quantize(KQ_NF4, w, 130, codes, absmax, NULL, NULL, NULL, 1);
    CHECK_EQ_INT(codes[0], 0xF7);                 /* 1.0 -> 15 high nibble, tie -> 7 (0.0) low */
    CHECK_EQ_INT(codes[1], 0xF0);                 /* 1.0, -1.0 */
    CHECK_EQ_INT(codes[32], 0x77);                /* zero block: the code of 0.0 */
    CHECK(absmax[1] == 0.0f && absmax[2] == 3.0f);
    kq_weight q = {.type = KQ_NF4, .rows = 10, .cols = 13, .codes = codes, .absmax = absmax};
    memcpy(q.book, book, sizeof book);
    float all[130], tile[4 * 5];
    kq_dequant_range(&q, 0, 130, all);
    CHECK(all[1] == 0.0f && !signbit(all[1]) && all[64] == 0.0f && !signbit(all[64]));
    CHECK(all[128] == -3.0f && all[129] == book[12] * 3.0f);
    kq_dequant_tile(&q, 4, 4, 7, 5, tile);
    int same = 1;
    for (int r = 0; r < 4; r++)
        for (int c = 0; c < 5; c++) same &= !memcmp(&tile[r * 5 + c], &all[(4 + r) * 13 + 7 + c], 4);
    CHECK(same);
    kq_type t;
    CHECK(kq_type_parse("nf4", &t) == 0 && t == KQ_NF4);
    CHECK(kq_type_parse("fp4", &t) == 0 && t == KQ_FP4);
    CHECK(kq_type_parse("none", &t) == 0 && t == KQ_NONE);
    CHECK(kq_type_parse("int4", &t) == -1);
    /* codes + f32 scales: 0.5 + 4/64 bytes per weight = 0.140625 of f32 */
    CHECK(kq_bytes(64 * 1024, 0) * 1000 <= 141 * 4 * 64 * 1024);
}

/* The CPU backend's linear ops on a 4-bit weight (tiles dequantized on the
 * fly) against the same ops on its dequantized f32 copy: forward, input
 * gradient, LoRA gradients and DoRA's norm agree to f32 rounding (1e-5
 * relative), and the 4-bit results are bit for bit the same with 1 or 3
 * threads. Rows of 72 make blocks straddle rows; 100 outputs leave short
 * tiles. */
static double rel_err(const float *a, const float *b, size_t n) {
    double md = 0, mr = 0;
    for (size_t i = 0; i < n; i++) {
        md = fmax(md, fabs((double)a[i] - b[i]));
        mr = fmax(mr, fabs((double)b[i]));
    }
    return md / (mr > 0 ? mr : 1);
}

TEST(cpu_linear_on_4bit_weight) {
    enum { IN = 72, OUT = 100, N = 9, R = 4 };
    static float w[IN * OUT], wd[IN * OUT], absmax[(IN * OUT + 63) / 64], nabs[1], x[N * IN], dy[N * OUT];
    static float A[R * IN], B[OUT * R], mag[OUT];
    static uint8_t codes[IN * OUT / 2], qabs[(IN * OUT + 63) / 64];
    uint64_t st = 7;
    for (size_t i = 0; i < IN * OUT; i++) w[i] = (float)((lr_mix64(st++) >> 40) * (1.0 / 8388608.0) - 1.0) * 0.2f;
    for (size_t i = 0; i < N * IN; i++) x[i] = (float)((lr_mix64(st++) >> 40) * (1.0 / 8388608.0) - 1.0);
    for (size_t i = 0; i < N * OUT; i++) dy[i] = (float)((lr_mix64(st++) >> 40) * (1.0 / 8388608.0) - 1.0);
    for (size_t i = 0; i < R * IN; i++) A[i] = (float)((lr_mix64(st++) >> 40) * (1.0 / 8388608.0) - 1.0) * 0.1f;
    for (size_t i = 0; i < OUT * R; i++) B[i] = (float)((lr_mix64(st++) >> 40) * (1.0 / 8388608.0) - 1.0) * 0.1f;
    for (size_t i = 0; i < OUT; i++) mag[i] = 1.0f + 0.01f * (float)i;
    float offset;
    kq_quantize(KQ_NF4, w, IN * OUT, codes, absmax, qabs, nabs, &offset, 2);
    kq_weight q = {.type = KQ_NF4, .rows = OUT, .cols = IN, .codes = codes, .qabsmax = qabs, .nabsmax = nabs,
                   .offset = offset};
    kq_book(KQ_NF4, q.book);
    memcpy(q.nbook, kq_dynamic_map(), sizeof q.nbook);
    kq_dequant_range(&q, 0, IN * OUT, wd);
    float y[3][N * OUT], dx[3][N * IN], dA[3][R * IN], dB[3][OUT * R], wn[3][OUT], xa[N * R];
    for (int run = 0; run < 3; run++) { /* 0: f32 copy, 1: 4-bit 1 thread, 2: 4-bit 3 threads */
        kb_backend *be;
        lr_err err = {0};
        REQUIRE(kb_cpu_create(run == 2 ? 3 : 1, &be, &err) == 0);
        CHECK(be->quant4);
        kb_lora lo = {.A = A, .B = B, .dA = dA[run], .dB = dB[run], .r = R, .scale = 2.0f};
        kb_linear L = {.W = run ? NULL : wd, .in = IN, .out = OUT, .lora = &lo, .qW = run ? &q : NULL};
        memset(dA[run], 0, sizeof dA[run]), memset(dB[run], 0, sizeof dB[run]);
        be->linear_fwd(be, &L, y[run], xa, x, N);
        be->linear_bwd(be, &L, dx[run], 0, dy, x, xa, N);
        lo.mag = mag;
        be->dora_norm(be, &L, wn[run]);
        kb_destroy(be);
    }
    CHECKF(rel_err(y[1], y[0], N * OUT) < 1e-5, "forward rel err %g", rel_err(y[1], y[0], N * OUT));
    CHECKF(rel_err(dx[1], dx[0], N * IN) < 1e-5, "dx rel err %g", rel_err(dx[1], dx[0], N * IN));
    CHECKF(rel_err(dA[1], dA[0], R * IN) < 1e-5, "dA rel err %g", rel_err(dA[1], dA[0], R * IN));
    CHECKF(rel_err(dB[1], dB[0], OUT * R) < 1e-5, "dB rel err %g", rel_err(dB[1], dB[0], OUT * R));
    CHECKF(rel_err(wn[1], wn[0], OUT) < 1e-6, "DoRA norm rel err %g", rel_err(wn[1], wn[0], OUT));
    CHECK(!memcmp(y[1], y[2], sizeof y[1]) && !memcmp(dx[1], dx[2], sizeof dx[1]) &&
          !memcmp(dA[1], dA[2], sizeof dA[1]) && !memcmp(wn[1], wn[2], sizeof wn[1]));
    /* and the quantization is visible: the 4-bit output is not the original weight's */
    kb_backend *be;
    lr_err err = {0};
    REQUIRE(kb_cpu_create(1, &be, &err) == 0);
    float yo[N * OUT];
    kb_linear Lo = {.W = w, .in = IN, .out = OUT};
    be->linear_fwd(be, &Lo, yo, NULL, x, N);
    kb_destroy(be);
    float yb[N * OUT];
    REQUIRE(kb_cpu_create(1, &be, &err) == 0);
    kb_linear Lq = {.in = IN, .out = OUT, .qW = &q};
    be->linear_fwd(be, &Lq, yb, NULL, x, N);
    kb_destroy(be);
    CHECK(rel_err(yb, yo, N * OUT) > 1e-3);
}

/* The CUDA dequant kernel (quant.h's per-element code on the device): a
 * tile of rows of a double-quantized NF4 weight, in f32 bit for bit the
 * CPU's values, in bf16 those rounded to nearest even. */
TEST(cuda_dequant_matches_cpu) {
#ifndef LR_HAVE_CUDA
    SKIP("built without CUDA (nvcc not found at build time)");
#else
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) SKIP("no CUDA device");
    enum { IN = 200, OUT = 150, R0 = 37, NR = 90 };
    static float w[IN * OUT], cpu[NR * IN], gf[NR * IN], absmax[(IN * OUT + 63) / 64], nabs[2];
    static uint8_t codes[IN * OUT / 2], qabs[(IN * OUT + 63) / 64];
    static uint16_t gb[NR * IN];
    uint64_t st = 11;
    for (size_t i = 0; i < IN * OUT; i++) w[i] = (float)((lr_mix64(st++) >> 40) * (1.0 / 8388608.0) - 1.0);
    float offset;
    kq_quantize(KQ_NF4, w, IN * OUT, codes, absmax, qabs, nabs, &offset, 1);
    kq_weight q = {.type = KQ_NF4, .rows = OUT, .cols = IN, .codes = codes, .qabsmax = qabs, .nabsmax = nabs,
                   .offset = offset};
    kq_book(KQ_NF4, q.book);
    memcpy(q.nbook, kq_dynamic_map(), sizeof q.nbook);
    kq_dequant_tile(&q, R0, NR, 0, IN, cpu);
    void *dc = NULL, *dq = NULL, *dn = NULL, *out = NULL;
    REQUIRE(cudaMalloc(&dc, sizeof codes) == cudaSuccess && cudaMalloc(&dq, sizeof qabs) == cudaSuccess &&
            cudaMalloc(&dn, sizeof nabs) == cudaSuccess && cudaMalloc(&out, sizeof gf) == cudaSuccess);
    cudaMemcpy(dc, codes, sizeof codes, cudaMemcpyHostToDevice);
    cudaMemcpy(dq, qabs, sizeof qabs, cudaMemcpyHostToDevice);
    cudaMemcpy(dn, nabs, sizeof nabs, cudaMemcpyHostToDevice);
    kq_weight g = q;
    g.codes = dc, g.qabsmax = dq, g.nabsmax = dn;
    lr_err err = {0};
    CHECK(kq_cuda_dequant(&g, R0, NR, out, 0, NULL, &err) == 0);
    CHECK(cudaMemcpy(gf, out, sizeof gf, cudaMemcpyDeviceToHost) == cudaSuccess);
    CHECK(kq_cuda_dequant(&g, R0, NR, out, 1, NULL, &err) == 0);
    CHECK(cudaMemcpy(gb, out, sizeof gb, cudaMemcpyDeviceToHost) == cudaSuccess);
    size_t bad32 = 0, bad16 = 0;
    for (size_t i = 0; i < NR * IN; i++) {
        bad32 += memcmp(&gf[i], &cpu[i], 4) != 0;
        bad16 += gb[i] != st_f32_to_bf16(cpu[i]);
    }
    CHECKF(!bad32 && !bad16, "%zu f32 and %zu bf16 values differ from the CPU's", bad32, bad16);
    cudaFree(dc), cudaFree(dq), cudaFree(dn), cudaFree(out);
#endif
}

/* The job spec's lora.quantize / lora.double_quant: parsed into kq_type's
 * values, kept by a JSON round trip, refused where they mean nothing. */
static int spec_parse(const char *text, jobspec *s, lr_err *err) {
    json_t *j = NULL;
    if (jobspec_parse_text(text, strlen(text), &j, err)) return -1;
    int rc = jobspec_from_json(j, s, err);
    json_decref(j);
    return rc;
}

TEST(jobspec_quantize) {
    jobspec s, t;
    lr_err e = {0};
    REQUIRE(spec_parse("model: m\ntraining_file: f\n", &s, &e) == 0);
    CHECK_EQ_INT(s.lora.quantize, KQ_NONE);
    CHECK_EQ_INT(s.lora.double_quant, 0);
    REQUIRE(spec_parse("model: m\ntraining_file: f\nlora: {quantize: nf4, double_quant: true}\n", &s, &e) == 0);
    CHECK_EQ_INT(s.lora.quantize, KQ_NF4);
    CHECK_EQ_INT(s.lora.double_quant, 1);
    json_t *j = jobspec_to_json(&s);
    CHECK_STR(json_string_value(json_object_get(json_object_get(j, "lora"), "quantize")), "nf4");
    CHECK(jobspec_from_json(j, &t, &e) == 0 && t.lora.quantize == KQ_NF4 && t.lora.double_quant == 1);
    json_decref(j);
    REQUIRE(spec_parse("model: m\ntraining_file: f\nlora: {quantize: fp4}\n", &s, &e) == 0);
    CHECK_EQ_INT(s.lora.quantize, KQ_FP4);
    CHECK(spec_parse("model: m\ntraining_file: f\nlora: {quantize: int4}\n", &s, &e) != 0);
    CHECK_STR(e.param, "lora.quantize");
    CHECK(spec_parse("model: m\ntraining_file: f\nlora: {double_quant: true}\n", &s, &e) != 0);
    CHECK_STR(e.param, "lora.double_quant");
    CHECK(spec_parse("model: m\ntraining_file: f\nmethod: {type: full_sft}\nlora: {quantize: nf4}\n", &s, &e) != 0);
    CHECK_STR(e.param, "lora.quantize");
    CHECK(spec_parse("model: m\ntraining_file: f\ndevice: cuda\nlora: {quantize: nf4}\n", &s, &e) == 0);
    CHECK(s.device == DEV_CUDA && s.lora.quantize == KQ_NF4);
    CHECK(spec_parse("model: m\ntraining_file: f\ndevice: cpu\nlora: {quantize: nf4}\n", &s, &e) == 0);
}

/* config.json's quantization_config: bitsandbytes 4-bit is read (type,
 * double quantization), anything else is refused naming the key. */
TEST(hfconfig_quantization_config) {
    static const char *const base =
        "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"vocab_size\": 64, "
        "\"hidden_size\": 32, \"num_hidden_layers\": 1, \"num_attention_heads\": 4, \"intermediate_size\": 64%s}";
    char json[1024];
    hf_config c;
    lr_err e = {0};
    snprintf(json, sizeof json, base, "");
    REQUIRE(hf_config_parse(json, strlen(json), &c, &e) == 0);
    CHECK_STR(c.quant_type, "");
    snprintf(json, sizeof json, base,
             ", \"quantization_config\": {\"quant_method\": \"bitsandbytes\", \"load_in_4bit\": true, "
             "\"bnb_4bit_quant_type\": \"nf4\", \"bnb_4bit_use_double_quant\": true}");
    REQUIRE(hf_config_parse(json, strlen(json), &c, &e) == 0);
    CHECK_STR(c.quant_type, "nf4");
    CHECK_EQ_INT(c.quant_double, 1);
    snprintf(json, sizeof json, base,
             ", \"quantization_config\": {\"quant_method\": \"bitsandbytes\", \"load_in_8bit\": true}");
    CHECK(hf_config_parse(json, strlen(json), &c, &e) != 0 && strstr(e.msg, "4-bit only"));
    snprintf(json, sizeof json, base, ", \"quantization_config\": {\"quant_method\": \"gptq\", \"bits\": 4}");
    CHECK(hf_config_parse(json, strlen(json), &c, &e) != 0 && !strcmp(e.param, "quantization_config"));
}

__attribute__((destructor)) static void close_vectors(void) { st_close(vectors); }
