/* merge: a merged model computes what base + adapter compute (logits of
 * f32 models to 1e-4 relative, llama and GPT-2's Conv1D layout), keeps the
 * base's dtype, copies the other tensors and the tokenizer exactly, and
 * applies DoRA's magnitude rescale (checked against the formula in double
 * and against the engine's DoRA forward). */
#include <stdint.h>

#include "common/buf.h"
#include "common/rng.h"
#include "kernels/backend.h"
#include "tests/unit/test.h"
#include "formats/adapter.h"
#include "worker/commands.h"
#include "formats/merge.h"
#include "worker/model.h"
#include "formats/safetensors.h"

static int mk(const char *arch, const char *dir, const char *dtype) {
    char *argv[] = {"mkmodel", "--arch", (char *)arch, "--out", (char *)dir, "--seed", "4", "--dtype", (char *)dtype, NULL};
    return cmd_mkmodel(9, argv);
}

/* A trained-looking adapter on every linear module (B random), saved in adir. */
static int make_adapter(kb_backend *be, const char *mdir, const char *adir) {
    lr_err err = {0};
    model *m = NULL;
    if (model_load(mdir, be, &m, &err)) return printf("    %s\n", err.msg), -1;
    model_lora_cfg lc = {.r = 4, .alpha = 8, .n_targets = 1};
    snprintf(lc.targets[0], sizeof lc.targets[0], "all-linear");
    int rc = model_lora_init(m, &lc, 5, &err);
    lr_rng r;
    rng_seed(&r, 12);
    for (size_t i = 1; !rc && i < model_n_params(m); i += 2) {
        const model_param *p = model_param_at(m, i);
        float *h = malloc(p->numel * sizeof(float));
        rng_fill_uniform(&r, h, p->numel, -0.2f, 0.2f);
        rc = model_param_set(m, i, h, p->numel, &err);
        free(h);
    }
    if (!rc) rc = model_lora_save(m, adir, &err);
    if (rc) printf("    %s\n", err.msg);
    model_free(m);
    return rc;
}

static float *logits_of(kb_backend *be, const char *mdir, const char *adir, const int32_t *ids, int T, int *V) {
    lr_err err = {0};
    model *m = NULL;
    float *l = NULL;
    if (model_load(mdir, be, &m, &err) || (adir && model_lora_load(m, adir, &err))) goto done;
    *V = model_config(m)->vocab_size;
    l = malloc((size_t)T * *V * sizeof(float));
    if (model_logits(m, ids, T, l, &err)) {
        free(l);
        l = NULL;
    }
done:
    if (!l) printf("    %s\n", err.msg);
    model_free(m);
    return l;
}

static void merged_equals_adapted(const char *arch, const char *dtype, double tol) {
    char mdir[512], adir[512], odir[512];
    lr_err err = {0};
    const char *tmp = test_tmpdir();
    snprintf(mdir, sizeof mdir, "%s/%s-%s", tmp, arch, dtype);
    snprintf(adir, sizeof adir, "%s/%s-%s-adapter", tmp, arch, dtype);
    snprintf(odir, sizeof odir, "%s/%s-%s-merged", tmp, arch, dtype);
    REQUIRE(mk(arch, mdir, dtype) == 0);
    kb_backend *be = NULL;
    REQUIRE(kb_cpu_create(1, &be, &err) == 0);
    REQUIRE(make_adapter(be, mdir, adir) == 0);
    int n = 0;
    REQUIRE(merge_adapter(mdir, adir, odir, &n, &err) == 0);
    CHECK_EQ_INT(n, 2 * (strcmp(arch, "gpt2") ? 7 : 4));
    int32_t ids[12] = {3, 99, 250, 7, 41, 600, 12, 18, 300, 5, 77, 1};
    int V = 0, V2 = 0;
    float *want = logits_of(be, mdir, adir, ids, 12, &V), *got = logits_of(be, odir, NULL, ids, 12, &V2),
          *base = logits_of(be, mdir, NULL, ids, 12, &V2);
    REQUIRE(want && got && base && V == V2);
    double d = 0, s = 0, db = 0;
    for (size_t i = 0; i < (size_t)12 * V; i++) {
        d = fmax(d, fabs(want[i] - got[i]));
        db = fmax(db, fabs(want[i] - base[i]));
        s = fmax(s, fabs(want[i]));
    }
    printf("    %s %s: merged vs base+adapter max|diff| %.2e (max|logit| %.2f; the adapter moves them by %.2e)\n", arch,
           dtype, d, s, db);
    CHECKF(d <= tol * s, "merged logits differ by %g > %g", d, tol * s);
    CHECKF(db > 100 * d, "the adapter hardly changes the logits (%g)", db);

    /* dtypes kept; unadapted tensors and the tokenizer copied exactly */
    st_set *a = NULL, *b = NULL;
    REQUIRE(st_set_open_dir(mdir, &a, &err) == 0);
    REQUIRE(st_set_open_dir(odir, &b, &err) == 0);
    CHECK_EQ_INT(st_set_count(a), st_set_count(b));
    int same = 0, differ = 0;
    for (size_t i = 0; i < st_set_count(a) && i < st_set_count(b); i++) {
        const st_tensor *x = st_set_at(a, i), *y = st_set_at(b, i);
        CHECK(!strcmp(x->name, y->name) && x->dtype == y->dtype && x->nbytes == y->nbytes);
        if (!memcmp(x->data, y->data, x->nbytes)) same++;
        else differ++;
    }
    CHECK_EQ_INT(differ, n);
    CHECK(same > 0);
    st_set_close(a);
    st_set_close(b);
    char p1[600], p2[600], *t1 = NULL, *t2 = NULL;
    size_t l1 = 0, l2 = 0;
    snprintf(p1, sizeof p1, "%s/tokenizer.json", mdir);
    snprintf(p2, sizeof p2, "%s/tokenizer.json", odir);
    CHECK(lr_read_file(p1, 1 << 26, &t1, &l1, &err) == 0 && lr_read_file(p2, 1 << 26, &t2, &l2, &err) == 0 &&
          l1 == l2 && !memcmp(t1, t2, l1));
    free(t1);
    free(t2);
    free(want);
    free(got);
    free(base);
    kb_destroy(be);
}

TEST(llama_f32) { merged_equals_adapted("llama", "f32", 1e-4); }
TEST(qwen2_f32) { merged_equals_adapted("qwen2", "f32", 1e-4); }
TEST(gpt2_conv1d_f32) { merged_equals_adapted("gpt2", "f32", 1e-4); }
/* bf16 storage rounds the merged weights: a looser bound */
TEST(llama_bf16) { merged_equals_adapted("llama", "bf16", 3e-2); }

/* DoRA: W' = m / ||W + s B A||_row (W + s B A), per output feature, on a
 * llama layout and on GPT-2's transposed one. */
static void dora(const char *arch) {
    char mdir[512], adir[512], odir[512];
    lr_err err = {0};
    const char *tmp = test_tmpdir();
    snprintf(mdir, sizeof mdir, "%s/d-%s", tmp, arch);
    snprintf(adir, sizeof adir, "%s/d-%s-adapter", tmp, arch);
    snprintf(odir, sizeof odir, "%s/d-%s-merged", tmp, arch);
    REQUIRE(mk(arch, mdir, "f32") == 0);
    int gpt2 = !strcmp(arch, "gpt2");
    const char *module = gpt2 ? "mlp.c_fc" : "mlp.up_proj";
    const char *wname = gpt2 ? "transformer.h.1.mlp.c_fc.weight" : "model.layers.1.mlp.up_proj.weight";
    adapter *a = adapter_new();
    REQUIRE(a);
    a->arch = gpt2 ? ARCH_GPT2 : ARCH_LLAMA;
    a->r = 2, a->alpha = 6, a->use_dora = 1, a->fan_in_fan_out = gpt2, a->n_targets = 1;
    snprintf(a->targets[0], sizeof a->targets[0], "%s", gpt2 ? "c_fc" : "up_proj");
    st_set *s = NULL;
    REQUIRE(st_set_open_dir(mdir, &s, &err) == 0);
    int layers = 2;
    const st_tensor *W = st_set_find(s, wname);
    REQUIRE(W);
    int in = (int)(gpt2 ? W->shape[0] : W->shape[1]), out = (int)(gpt2 ? W->shape[1] : W->shape[0]);
    lr_rng r;
    rng_seed(&r, 3);
    for (int l = 0; l < layers; l++) {
        adapter_tensor *A = adapter_add(a, l, module, ADAPTER_A, 2, in, &err);
        adapter_tensor *B = adapter_add(a, l, module, ADAPTER_B, out, 2, &err);
        adapter_tensor *M = adapter_add(a, l, module, ADAPTER_MAGNITUDE, out, 1, &err);
        REQUIRE(A && B && M);
        rng_fill_uniform(&r, A->data, (size_t)2 * in, -0.5f, 0.5f);
        rng_fill_uniform(&r, B->data, (size_t)out * 2, -0.5f, 0.5f);
        rng_fill_uniform(&r, M->data, (size_t)out, 0.5f, 1.5f);
    }
    REQUIRE(adapter_save(a, adir, &err) == 0);
    REQUIRE(merge_adapter(mdir, adir, odir, NULL, &err) == 0);
    st_set *o = NULL;
    REQUIRE(st_set_open_dir(odir, &o, &err) == 0);
    const st_tensor *W2 = st_set_find(o, wname);
    REQUIRE(W2 && W2->nbytes == W->nbytes);
    const float *w = W->data, *w2 = W2->data;
    const adapter_tensor *A = adapter_find(a, 1, module, ADAPTER_A), *B = adapter_find(a, 1, module, ADAPTER_B),
                         *M = adapter_find(a, 1, module, ADAPTER_MAGNITUDE);
    double worst = 0;
    double *row = malloc((size_t)in * sizeof(double));
    for (int oo = 0; oo < out; oo++) {
        double ss = 0;
        for (int i = 0; i < in; i++) {
            double d = 0;
            for (int k = 0; k < 2; k++) d += (double)B->data[oo * 2 + k] * A->data[(size_t)k * in + i];
            row[i] = (gpt2 ? w[(size_t)i * out + oo] : w[(size_t)oo * in + i]) + 3.0 * d; /* scale 6/2 */
            ss += row[i] * row[i];
        }
        for (int i = 0; i < in; i++) {
            double want = M->data[oo] / sqrt(ss) * row[i];
            double got = gpt2 ? w2[(size_t)i * out + oo] : w2[(size_t)oo * in + i];
            worst = fmax(worst, fabs(want - got));
        }
    }
    free(row);
    CHECKF(worst < 1e-5, "DoRA merge differs from the formula by %g", worst);
    /* each row now has the magnitude's norm */
    double ss = 0;
    for (int i = 0; i < in; i++) {
        double x = gpt2 ? w2[(size_t)i * out + 0] : w2[(size_t)0 * in + i];
        ss += x * x;
    }
    CHECK_NEAR(sqrt(ss), M->data[0], 1e-5);
    /* end to end: the merged model computes what the engine's DoRA forward computes */
    kb_backend *be = NULL;
    REQUIRE(kb_cpu_create(1, &be, &err) == 0);
    int32_t ids[10] = {3, 99, 250, 7, 41, 600, 12, 18, 300, 5};
    int V = 0, V2 = 0;
    float *want = logits_of(be, mdir, adir, ids, 10, &V), *got = logits_of(be, odir, NULL, ids, 10, &V2);
    CHECK(want && got && V == V2);
    double d = 0, sc = 0;
    for (size_t i = 0; want && got && i < (size_t)10 * V; i++) {
        d = fmax(d, fabs(want[i] - got[i]));
        sc = fmax(sc, fabs(want[i]));
    }
    printf("    DoRA %s: merged vs base+adapter logits max|diff| %.2e (max|logit| %.2f)\n", arch, d, sc);
    CHECKF(d <= 1e-4 * sc, "DoRA merged logits differ by %g", d);
    free(want);
    free(got);
    kb_destroy(be);
    /* layer 0's other modules are untouched */
    const char *other = gpt2 ? "transformer.h.0.attn.c_attn.weight" : "model.layers.0.self_attn.q_proj.weight";
    CHECK(!memcmp(st_set_find(s, other)->data, st_set_find(o, other)->data, st_set_find(s, other)->nbytes));
    st_set_close(o);
    st_set_close(s);
    adapter_free(a);
}

TEST(dora_llama) { dora("llama"); }
TEST(dora_gpt2) { dora("gpt2"); }

TEST(refuses_bad_input) {
    char mdir[512], gdir[512], adir[512];
    lr_err err = {0};
    const char *tmp = test_tmpdir();
    snprintf(mdir, sizeof mdir, "%s/l", tmp);
    snprintf(gdir, sizeof gdir, "%s/g", tmp);
    snprintf(adir, sizeof adir, "%s/a", tmp);
    REQUIRE(mk("llama", mdir, "f32") == 0 && mk("gpt2", gdir, "f32") == 0);
    kb_backend *be = NULL;
    REQUIRE(kb_cpu_create(1, &be, &err) == 0);
    REQUIRE(make_adapter(be, mdir, adir) == 0);
    CHECK(merge_adapter(mdir, adir, mdir, NULL, &err) == -1); /* over the base */
    CHECK(strstr(err.msg, "must differ") != NULL);
    lr_err_clear(&err);
    char out[600];
    snprintf(out, sizeof out, "%s/x", tmp);
    CHECK(merge_adapter(gdir, adir, out, NULL, &err) == -1); /* a llama adapter on gpt2 */
    CHECK(err.msg[0] != 0);
    lr_err_clear(&err);
    CHECK(merge_adapter(mdir, "/nonexistent-adapter", out, NULL, &err) == -1);
    kb_destroy(be);
}
