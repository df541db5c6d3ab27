/* test_cuda: the CUDA backend.
 *
 * Without a GPU (and in a build without CUDA) this checks everything that
 * does not need one: the host-side planning of kernels/cuda/plan.c (launch
 * geometry, scratch layouts, chunking, dtype conversion, peaks, FLOP and
 * memory estimates, device names) and that asking for a GPU that is not
 * there is a clear error. The per-element arithmetic of the kernels is
 * kernels/elem.h, covered by the CPU backend's tests and test_elem; the
 * custom kernels' indexing and reductions are run on the host by
 * tests/integration/test_cuda_*_emu.sh.
 *
 * With a GPU, every op forward and backward is compared with the CPU
 * backend on random inputs (f32 weights: 1e-5 relative to the largest
 * value, attention 1e-4; bf16/f16 weights: 2e-2 (bf16) / 4e-3 (f16) where
 * the activation is rounded to 16 bits for the tensor cores, 1e-6 where it
 * is not; DoRA norms 1e-6 and LoRA gradients 1e-5 on every dtype, the KL
 * head's kl 5e-3 bf16 / 1e-3 f16; attention with 16-bit weights runs the
 * tensor-core kernels, 1e-2 on bf16-exact inputs; a linear layer on a
 * 4-bit base with LoRA or DoRA, on the same codes as the CPU: 1e-5 with f32
 * weights, 2e-2 with 16-bit ones, whose tiles are bf16), then
 * whole models: the loss and LoRA gradients of one batch for each
 * architecture (loss 1e-5 / grads 1e-4 with f32 weights; loss 1e-3 /
 * grads 5e-2 with bf16 weights, and with an f16 model, which the backend
 * must then store in f16) and 50 AdamW steps whose loss curve must
 * track the CPU run's (1e-3 f32, 2e-2 bf16 per step). Each such case
 * prints "skip: no CUDA device (...)" where there is no GPU.
 * Why this file is long: one test per CUDA op against the CPU backend and
 * the whole-model cases share the device and data helpers at its top. */
#include <float.h>
#include <stdint.h>

#include "kernels/backend.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/plan.h"
#include "kernels/elem.h"
#include "kernels/quant.h"
#include "tests/unit/test.h"
#include "worker/commands.h"
#include "worker/model.h"
#include "formats/safetensors.h"

/* ---- helpers ---- */

static uint64_t rng_state = 42;
static float frand(void) { /* uniform [-1, 1) */
    uint64_t z = lr_mix64(rng_state++);
    return (float)((z >> 40) * (1.0 / 8388608.0) - 1.0);
}
static float *rnd(size_t n, float scale) {
    float *v = malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) v[i] = frand() * scale;
    return v;
}
/* max |a - b| / max |b|: error relative to the tensor's scale */
static double relerr(const float *a, const float *b, size_t n) {
    double e = 0, m = 1e-30;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= e)) e = d; /* NaN propagates */
        if (fabs(b[i]) > m) m = fabs(b[i]);
    }
    return e / m;
}

static char gpu_why[600];
/* The GPU backend, or NULL with gpu_why set. */
static kb_backend *gpu(kb_dtype wdt) {
    kb_backend *be = NULL;
    lr_err err = {0};
    if (kb_cuda_create(0, wdt, &be, &err)) {
        /* "no CUDA device found (cudaGetDeviceCount: ...)" -> "cudaGetDeviceCount: ..." */
        const char *m = strncmp(err.msg, "no CUDA device found (", 22) ? err.msg : err.msg + 22;
        snprintf(gpu_why, sizeof gpu_why, "%.*s", (int)strlen(m) - (m != err.msg), m);
        return NULL;
    }
    return be;
}
#define NEED_GPU(var, wdt)                                                     \
    kb_backend *var = gpu(wdt);                                                \
    if (!var) SKIP("no CUDA device (%s)", gpu_why)

static kb_backend *cpu(void) {
    kb_backend *be = NULL;
    lr_err err = {0};
    if (kb_cpu_create(2, &be, &err)) return NULL;
    return be;
}

/* Device copy of n floats (or n weights of the backend's dtype, rounded
 * from f32; round writes the rounded values back so the CPU sees them). */
static void *put(kb_backend *be, const float *h, size_t n) {
    void *d = be->alloc(be, n * sizeof(float));
    be->upload(be, d, h, n * sizeof(float));
    return d;
}
static void *put_w(kb_backend *be, float *h, size_t n) {
    size_t es = cuplan_dtype_size(be->weight_dtype);
    void *tmp = malloc(n * es), *d = be->alloc(be, n * es);
    cuplan_convert(be->weight_dtype, tmp, h, n);
    for (size_t i = 0; i < n; i++) /* the CPU reference uses the rounded values */
        if (be->weight_dtype == KB_BF16) h[i] = cuplan_bf16_to_f32(((uint16_t *)tmp)[i]);
        else if (be->weight_dtype == KB_F16) h[i] = cuplan_f16_to_f32(((uint16_t *)tmp)[i]);
    be->upload(be, d, tmp, n * es);
    free(tmp);
    return d;
}
static float *get(kb_backend *be, const void *d, size_t n) {
    float *h = malloc(n * sizeof(float));
    be->download(be, h, d, n * sizeof(float));
    return h;
}
static void check_ok(kb_backend *be) {
    lr_err err = {0};
    if (be->check && be->check(be, &err)) test_fail(__FILE__, __LINE__, "backend failure: %s", err.msg);
}
#define CHECK_REL(a, b, n, tol)                                                                   \
    do {                                                                                          \
        double e_ = relerr(a, b, n);                                                              \
        if (!(e_ <= (tol))) test_fail(__FILE__, __LINE__, "%s vs %s: rel err %.3g > %g", #a, #b, e_, (double)(tol)); \
    } while (0)

/* ---- planning (no GPU needed) ---- */

TEST(plan_grid) {
    CHECK_EQ_INT(cuplan_grid(0, 256, 132), 1);
    CHECK_EQ_INT(cuplan_grid(1000, 256, 132), 4);
    CHECK_EQ_INT(cuplan_grid((size_t)1 << 30, 256, 132), 132 * 16);
    CHECK_EQ_INT(cuplan_grid(5000, 256, 0), 16);
}

TEST(plan_attention) {
    cuplan_attn a;
    lr_err err = {0};
    REQUIRE(cuplan_attention(2, 77, 4, 2, 64, 227 << 10, &a, &err) == 0);
    CHECK_EQ_INT(a.dc, 2);
    CHECK_EQ_INT(a.q_tiles, 3);
    CHECK_EQ_INT(a.ws_bytes, 2 * 4 * 77 * 4);
    REQUIRE(cuplan_attention(1, 2048, 32, 8, 128, 227 << 10, &a, &err) == 0);
    CHECK_EQ_INT(a.dc, 4);
    CHECK_EQ_INT(a.q_tiles, 64);
    CHECK_EQ_INT(a.smem_fwd, (32 * 128 * 2 + 32 * 129) * 4);
    CHECK_EQ_INT(a.smem_dkv, (32 * 128 * 2 + 32 * 129 * 2 + 64) * 4);
    CHECK_EQ_INT(a.smem_dq, (32 * 128 * 2 + 32 * 129 * 2) * 4);
    /* every lane column d = lane + 32 c must be covered: 32 * dc >= D */
    for (int D = 1; D <= CUPLAN_ATT_MAX_D; D++) {
        REQUIRE(cuplan_attention(1, 8, 2, 1, D, 227 << 10, &a, &err) == 0);
        CHECK(32 * a.dc >= D);
    }
    REQUIRE(cuplan_attention(1, 8, 2, 1, 80, 227 << 10, &a, &err) == 0);
    CHECK_EQ_INT(a.dc, 4);
    CHECK(cuplan_attention(1, 8, 2, 1, 257, 227 << 10, &a, &err) == -1);
    CHECK(strstr(err.msg, "head dim 257") != NULL);
    CHECK(cuplan_attention(1, 8, 3, 2, 64, 227 << 10, &a, &err) == -1);
    /* a GPU with 48 KiB per block cannot run D = 128 */
    CHECK(cuplan_attention(1, 8, 2, 1, 128, 48 << 10, &a, &err) == -1);
    CHECK(strstr(err.msg, "shared memory") != NULL);
}

/* A fragment load: lane 4g + t reads the 32-bit word at row g (of 8), word
 * t (of 4) of a tile with row stride ld bf16. */
static int conflict_free(int ld) {
    int used[32] = {0};
    for (int g = 0; g < 8; g++)
        for (int t = 0; t < 4; t++)
            if (used[(g * ld / 2 + t) % 32]++) return 0;
    return 1;
}

TEST(plan_attention_tc) {
    cuplan_attn_tc a;
    CHECK(cuplan_attention_tc(77, 64, 227 << 10, &a));
    CHECK_EQ_INT(a.kd, 4);
    CHECK_EQ_INT(a.tiles, 2);
    CHECK(cuplan_attention_tc(2048, 128, 227 << 10, &a));
    CHECK_EQ_INT(a.kd, 8);
    CHECK_EQ_INT(a.tiles, 32);
    CHECK_EQ_INT(a.smem_fwd, (2 * 64 * 136 + 128 * 72) * 2);
    CHECK_EQ_INT(a.smem_dq, (4 * 64 * 136 + 128 * 72) * 2);
    CHECK_EQ_INT(a.smem_dkv, (2 * 64 * 136 + 2 * 32 * 136 + 2 * 128 * 40) * 2 + 2 * 32 * 4);
    /* the f32 kernels take what mma cannot: D not a multiple of 16, D > 128,
     * a GPU without the shared memory */
    CHECK(!cuplan_attention_tc(8, 72, 227 << 10, &a));
    CHECK(!cuplan_attention_tc(8, 160, 227 << 10, &a));
    CHECK(!cuplan_attention_tc(8, 8, 227 << 10, &a));
    CHECK(!cuplan_attention_tc(8, 128, 48 << 10, &a));
    CHECK(cuplan_attention_tc(8, 32, 48 << 10, &a));
    /* the padding keeps every fragment load on 32 distinct banks, and the
     * kernels' 32-bit shared accesses aligned (even strides) */
    for (int D = 16; D <= CUPLAN_TC_MAX_D; D += 16) {
        REQUIRE(cuplan_attention_tc(100, D, 227 << 10, &a));
        CHECK(16 * a.kd >= D);
        CHECKF(conflict_free(D + CUPLAN_TC_PAD), "rows of D = %d", D);
        CHECK((D + CUPLAN_TC_PAD) % 2 == 0);
    }
    CHECK(conflict_free(CUPLAN_TC_ROWS + CUPLAN_TC_PAD));
    CHECK(conflict_free(CUPLAN_TC_DKV_Q + CUPLAN_TC_PAD));
    CHECK(!conflict_free(128)); /* unpadded: the check can fail */
}

static int disjoint(const size_t *off, const size_t *len, int n, size_t total) {
    for (int i = 0; i < n; i++) {
        if (off[i] == SIZE_MAX) continue;
        if (off[i] % CUPLAN_ALIGN || off[i] + len[i] > total) return 0;
        for (int j = 0; j < n; j++)
            if (j != i && off[j] != SIZE_MAX && off[i] < off[j] + len[j] && off[j] < off[i] + len[i]) return 0;
    }
    return 1;
}

TEST(plan_linear_layout) {
    cuplan_linear l;
    int N = 1000, in = 896, out = 4864, r = 16;
    cuplan_linear_layout(KB_BF16, N, in, out, r, 1, 0, 0, &l);
    CHECK_EQ_INT(l.x_lowp, 0);
    CHECK(l.drop != SIZE_MAX && l.dh == SIZE_MAX);
    CHECK(l.dz == SIZE_MAX && l.zb == SIZE_MAX && l.part == SIZE_MAX);
    size_t off[] = {l.x_lowp, l.drop}, len[] = {(size_t)N * in * 2, (size_t)N * in * 4};
    CHECK(disjoint(off, len, 2, l.total));
    cuplan_linear_layout(KB_BF16, N, in, out, r, 1, 0, 1, &l);
    size_t off2[] = {l.x_lowp, l.drop, l.dh}, len2[] = {(size_t)N * out * 2, (size_t)N * in * 4, (size_t)N * r * 4};
    CHECK(disjoint(off2, len2, 3, l.total));
    cuplan_linear_layout(KB_F32, N, in, out, 0, 0, 0, 1, &l);
    CHECK(l.x_lowp == SIZE_MAX && l.drop == SIZE_MAX && l.dh == SIZE_MAX);
    CHECK_EQ_INT(l.total, 0);
    /* DoRA forward with dropout: LoRA term and dropped base term, [N, out] f32 each */
    cuplan_linear_layout(KB_F16, N, in, out, r, 1, 1, 0, &l);
    size_t off3[] = {l.x_lowp, l.drop, l.dz, l.zb};
    size_t len3[] = {(size_t)N * in * 2, (size_t)N * in * 4, (size_t)N * out * 4, (size_t)N * out * 4};
    CHECK(l.part == SIZE_MAX && l.dh == SIZE_MAX);
    CHECK(disjoint(off3, len3, 4, l.total));
    /* DoRA backward: the 16-bit operand also holds drop(x) [N, in], in > out here */
    cuplan_linear_layout(KB_BF16, N, out, in, r, 0, 1, 1, &l);
    size_t np = (N + CUPLAN_DORA_ROWS - 1) / CUPLAN_DORA_ROWS;
    size_t off4[] = {l.x_lowp, l.dh, l.dz, l.part};
    size_t len4[] = {(size_t)N * out * 2, (size_t)N * r * 4, (size_t)N * in * 4, np * in * 8};
    CHECK(l.drop == SIZE_MAX && l.zb == SIZE_MAX);
    CHECK(disjoint(off4, len4, 4, l.total));
    /* DoRA needs a LoRA path: r = 0 carves nothing for it */
    cuplan_linear_layout(KB_F32, N, in, out, 0, 0, 1, 1, &l);
    CHECK(l.dz == SIZE_MAX && l.part == SIZE_MAX && l.total == 0);
}

TEST(plan_dora_rows) {
    /* 64 MiB of f32 B A rows */
    CHECK_EQ_INT(cuplan_dora_rows(896, 4864, CUPLAN_DORA_BUDGET), 4864);
    CHECK_EQ_INT(cuplan_dora_rows(14336, 4096, CUPLAN_DORA_BUDGET), 1170);
    CHECK_EQ_INT(cuplan_dora_rows(8192, 2100, CUPLAN_DORA_BUDGET), 2048);
    CHECK_EQ_INT(cuplan_dora_rows(1 << 30, 10, CUPLAN_DORA_BUDGET), 1); /* at least one row */
}

TEST(plan_ce_layout) {
    cuplan_ce c;
    int V = 151936, C = 896;
    cuplan_ce_layout(KB_BF16, 8192, C, V, 0, CUPLAN_CE_BUDGET, 0, &c);
    CHECK(c.klv == SIZE_MAX && c.xr == SIZE_MAX && c.ref == SIZE_MAX);
    /* 512 MiB / (V * (4 + 2)) = 588 rows, down to a multiple of 16 */
    CHECK_EQ_INT(c.chunk, 576);
    CHECK((size_t)c.chunk * V * 6 <= CUPLAN_CE_BUDGET);
    size_t off[] = {c.rows, c.tgt, c.loss, c.hit, c.xc, c.logits, c.dlg, c.dxc};
    size_t len[] = {8192 * 4, 8192 * 4, 8192 * 8, 8192 * 4, (size_t)c.chunk * C * 2, (size_t)c.chunk * V * 4,
                    (size_t)c.chunk * V * 2, (size_t)c.chunk * C * 4};
    CHECK(disjoint(off, len, 8, c.total));
    cuplan_ce_layout(KB_F32, 5, C, V, 0, CUPLAN_CE_BUDGET, 0, &c);
    CHECK_EQ_INT(c.chunk, 5);
    CHECK(c.dlg == SIZE_MAX);
    cuplan_ce_layout(KB_BF16, 100, C, V, 20, CUPLAN_CE_BUDGET, 0, &c);
    CHECK_EQ_INT(c.chunk, 20);
    cuplan_ce_layout(KB_BF16, 100, C, V, 7, CUPLAN_CE_BUDGET, 0, &c); /* as the CPU backend: at least 16 */
    CHECK_EQ_INT(c.chunk, 16);
    cuplan_ce_layout(KB_BF16, 100, C, V, 0, 1000, 0, &c); /* tiny budget: at least 16 rows */
    CHECK_EQ_INT(c.chunk, 16);
    /* with KL: two f32 logits blocks per row: 512 MiB / (V * (4 + 4 + 2)) = 353 rows -> 352 */
    cuplan_ce_layout(KB_BF16, 8192, C, V, 0, CUPLAN_CE_BUDGET, 1, &c);
    CHECK_EQ_INT(c.chunk, 352);
    size_t koff[] = {c.rows, c.tgt, c.loss, c.hit, c.xc, c.logits, c.dlg, c.dxc, c.klv, c.xr, c.ref};
    size_t klen[] = {8192 * 4, 8192 * 4, 8192 * 8, 8192 * 4, (size_t)c.chunk * C * 2, (size_t)c.chunk * V * 4,
                     (size_t)c.chunk * V * 2, (size_t)c.chunk * C * 4, 8192 * 8, (size_t)c.chunk * C * 2,
                     (size_t)c.chunk * V * 4};
    CHECK(disjoint(koff, klen, 11, c.total));
    cuplan_ce_layout(KB_F32, 40, C, V, 16, CUPLAN_CE_BUDGET, 1, &c);
    CHECK(c.chunk == 16 && c.dlg == SIZE_MAX && c.ref != SIZE_MAX);
}

TEST(plan_bf16_f16_conversion) {
    /* every 16-bit pattern that is not NaN survives a round trip */
    int bad_b = 0, bad_h = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float fb = cuplan_bf16_to_f32((uint16_t)h), fh = cuplan_f16_to_f32((uint16_t)h);
        if (!isnan(fb) && cuplan_f32_to_bf16(fb) != h) bad_b++;
        if (!isnan(fh) && cuplan_f32_to_f16(fh) != h) bad_h++;
        if (isnan(fb) && !isnan(cuplan_bf16_to_f32(cuplan_f32_to_bf16(fb)))) bad_b++;
        if (isnan(fh) && !isnan(cuplan_f16_to_f32(cuplan_f32_to_f16(fh)))) bad_h++;
    }
    CHECK_EQ_INT(bad_b, 0);
    CHECK_EQ_INT(bad_h, 0);
    /* round to nearest, ties to even */
    CHECK(cuplan_bf16_to_f32(cuplan_f32_to_bf16(1.0f + 0x1p-8f)) == 1.0f);
    CHECK(cuplan_bf16_to_f32(cuplan_f32_to_bf16(1.0f + 3 * 0x1p-8f)) == 1.0f + 0x1p-6f);
    CHECK(cuplan_f16_to_f32(cuplan_f32_to_f16(2049.0f)) == 2048.0f);
    CHECK(cuplan_f16_to_f32(cuplan_f32_to_f16(2051.0f)) == 2052.0f);
    CHECK(cuplan_f16_to_f32(cuplan_f32_to_f16(65519.0f)) == 65504.0f);
    CHECK(isinf(cuplan_f16_to_f32(cuplan_f32_to_f16(65520.0f))));
    CHECK(cuplan_f16_to_f32(cuplan_f32_to_f16(0x1p-25f)) == 0.0f);          /* tie to even (0) */
    CHECK(cuplan_f16_to_f32(cuplan_f32_to_f16(3 * 0x1p-26f)) == 0x1p-24f);  /* above the tie */
    CHECK(cuplan_f16_to_f32(cuplan_f32_to_f16(-3 * 0x1p-25f)) == -2 * 0x1p-24f); /* 1.5 ulp: tie to even 2 */
    CHECK(cuplan_f16_to_f32(cuplan_f32_to_f16(0x1.ffcp-15f)) == 0x1p-14f);  /* rounds into the normals */
    /* bf16 agrees with the safetensors module's conversion on random values */
    int diff = 0;
    for (int i = 0; i < 200000; i++) {
        uint32_t u = (uint32_t)lr_mix64((uint64_t)i * 7919u);
        float f;
        memcpy(&f, &u, 4);
        if (isnan(f)) continue;
        diff += cuplan_f32_to_bf16(f) != st_f32_to_bf16(f);
    }
    CHECK_EQ_INT(diff, 0);
}

TEST(plan_peak_flops) {
    CHECK_NEAR(cuplan_peak_bf16("NVIDIA H100 80GB HBM3", 9, 0, 132, 1980000), 989.4e12, 1e9);
    CHECK_NEAR(cuplan_peak_bf16("NVIDIA H100 PCIe", 9, 0, 114, 1755000), 756e12, 1e9);
    CHECK_NEAR(cuplan_peak_bf16("NVIDIA H200", 9, 0, 132, 1980000), 989.4e12, 1e9);
    CHECK_NEAR(cuplan_peak_bf16("NVIDIA A100-SXM4-80GB", 8, 0, 108, 1410000), 312e12, 1e9);
    CHECK_NEAR(cuplan_peak_bf16("NVIDIA A10", 8, 6, 72, 1695000), 125e12, 1e9);
    CHECK_NEAR(cuplan_peak_bf16("NVIDIA L40S", 8, 9, 142, 2520000), 362e12, 1e9);
    CHECK_NEAR(cuplan_peak_bf16("NVIDIA L4", 8, 9, 58, 2040000), 121e12, 1e9);
    /* unknown names: SMs x clock x the generation's rate (A100: 108 x 1.41 GHz x 2048) */
    CHECK_NEAR(cuplan_peak_bf16("Some sm80 part", 8, 0, 108, 1410000), 311.9e12, 0.2e12);
    CHECK_NEAR(cuplan_peak_bf16(NULL, 9, 0, 132, 1830000), 989.4e12, 1e12);
    CHECK(cuplan_peak_bf16("Tesla T4", 7, 5, 40, 1590000) == 0.0);
}

static const cuplan_shape QWEN05 = {24, 896, 4864, 14, 2, 64, 151936, 1, 1};
static const cuplan_shape LLAMA8 = {32, 4096, 14336, 32, 8, 128, 128256, 1, 0};

TEST(plan_flops) {
    CHECK_NEAR(cuplan_matmul_params(&QWEN05), 493961216.0, 0.5);
    CHECK_NEAR(cuplan_matmul_params(&LLAMA8), 7504658432.0, 0.5);
    CHECK_NEAR(cuplan_flops_per_token(&QWEN05, 1024), 4 * 493961216.0 + 6.0 * 24 * 14 * 64 * 1025, 1);
    CHECK_NEAR(cuplan_flops_per_token(&LLAMA8, 2048), 4 * 7504658432.0 + 6.0 * 32 * 32 * 128 * 2049, 1);
    CHECK(strstr(CUPLAN_FLOPS_FORMULA, "4*P") != NULL);
}

TEST(plan_memory) {
    cuplan_mem a, b;
    cuplan_train_memory(&LLAMA8, KB_BF16, 0, 0, 1, 2048, 16, 0, &a);
    cuplan_train_memory(&LLAMA8, KB_BF16, 0, 0, 1, 2048, 16, 1, &b);
    /* Llama-3-8B: 8.03e9 parameters in bf16 */
    CHECK_NEAR(a.weights / 1e9, 16.06, 0.1);
    CHECK(b.activations < a.activations / 4);
    CHECK(b.total < a.total && a.total > a.weights);
    /* the bench shapes fit an 80 GB H100 */
    CHECK(b.total < 80e9);
    cuplan_train_memory(&QWEN05, KB_BF16, 0, 0, 8, 1024, 16, 1, &b);
    CHECK(b.total < 80e9 && b.total > b.weights);
}

/* A 4-bit tile: as many rows as fit the budget, in multiples of 64 past 64. */
TEST(plan_q4_rows) {
    CHECK_EQ_INT(cuplan_q4_rows(14336, 4096, 2, CUPLAN_Q4_BUDGET), 4096); /* Llama-3-8B gate_proj: 32 MiB of bf16 */
    CHECK_EQ_INT(cuplan_q4_rows(4096, 14336, 2, CUPLAN_Q4_BUDGET), 1152); /* down_proj: 1170 fit */
    CHECK_EQ_INT(cuplan_q4_rows(100, 10, 4, (size_t)1 << 20), 100);
    CHECK_EQ_INT(cuplan_q4_rows(1000, 1000, 4, 40 * 1000 * 4), 40);
    CHECK_EQ_INT(cuplan_q4_rows(5, 1 << 30, 4, (size_t)1 << 20), 1);
    /* a linear op's scratch gains the tile after the regions it had */
    cuplan_linear l;
    int N = 1000, in = 4096, out = 14336, r = 16;
    cuplan_linear_layout(KB_BF16, N, in, out, r, 1, 1, 1, &l);
    CHECK(l.qtile == SIZE_MAX && l.qrows == 0);
    size_t before = l.total;
    cuplan_linear_q4(KB_BF16, in, out, &l);
    CHECK_EQ_INT(l.qrows, 4096);
    CHECK(l.qtile >= before && l.qtile % CUPLAN_ALIGN == 0 && l.total == l.qtile + (size_t)4096 * in * 2);
    size_t np = (N + CUPLAN_DORA_ROWS - 1) / CUPLAN_DORA_ROWS;
    size_t off[] = {l.x_lowp, l.drop, l.dh, l.dz, l.part, l.qtile};
    size_t len[] = {(size_t)N * out * 2, (size_t)N * in * 4, (size_t)N * r * 4, (size_t)N * out * 4, np * out * 8,
                    (size_t)4096 * in * 2};
    CHECK(disjoint(off, len, 6, l.total));
    cuplan_linear_layout(KB_F32, N, 70, 200, 0, 0, 0, 0, &l);
    cuplan_linear_q4(KB_F32, 70, 200, &l);
    CHECK(l.qtile == 0 && l.qrows == 200 && l.total == (size_t)200 * 70 * 4);
}

/* 4-bit linear weights: half a byte per weight plus an f32 scale per 64
 * (double quantization: a byte per 64 plus an f32 per 256 blocks), counted
 * per matrix; everything else stays in the weight dtype. */
TEST(plan_memory_4bit) {
    cuplan_mem bf, nf, dq;
    cuplan_train_memory(&LLAMA8, KB_BF16, 0, 0, 1, 2048, 16, 1, &bf);
    cuplan_train_memory(&LLAMA8, KB_BF16, KQ_NF4, 0, 1, 2048, 16, 1, &nf);
    cuplan_train_memory(&LLAMA8, KB_BF16, KQ_NF4, 1, 1, 2048, 16, 1, &dq);
    /* per layer: q, o 4096x4096, k, v 1024x4096, gate, up, down 14336x4096;
     * outside them in bf16: 2 norms per layer, final norm, embedding, LM head */
    double lin = 32 * 218103808.0, rest = (32 * 2 * 4096.0 + 2 * 128256.0 * 4096 + 4096) * 2;
    CHECK_NEAR(nf.weights, lin * (0.5 + 4.0 / 64) + rest, 0.5);
    /* nested: 1024 (q, o), 256 (k, v), 3584 (MLP) blocks of 256 scales */
    CHECK_NEAR(dq.weights, lin * (0.5 + 1.0 / 64) + 32 * 4.0 * (2 * 1024 + 2 * 256 + 3 * 3584) + rest, 0.5);
    CHECK_NEAR(bf.weights - rest, lin * 2, 0.5);
    CHECK(nf.weights < bf.weights * 0.4 && dq.weights < nf.weights);
    /* the dequantized tile (32 MiB of bf16) joins the working set */
    CHECK_NEAR(nf.working - bf.working, 4096.0 * 4096 * 2, 0.5);
    CHECK_NEAR(nf.total - bf.total, (nf.weights - bf.weights) + (nf.working - bf.working), 1.0);
    /* blocks do not span matrices: a 10x10 q has 2 blocks, a 30x10 gate 5
     * (1300 weights flat would be 21 blocks, 734 bytes instead of 742) */
    const cuplan_shape tiny = {1, 10, 30, 1, 1, 10, 7, 1, 1};
    cuplan_train_memory(&tiny, KB_F32, KQ_NF4, 0, 1, 8, 2, 0, &nf);
    cuplan_train_memory(&tiny, KB_F32, KQ_FP4, 1, 1, 8, 2, 0, &dq);
    double rest32 = (2 * 10 + 7 * 10 + 10) * 4.0;
    CHECK_NEAR(nf.weights - rest32, 4 * (50 + 2 * 4) + 3 * (150 + 5 * 4), 0.1);
    CHECK_NEAR(dq.weights - rest32, 4 * (50 + 2 + 4) + 3 * (150 + 5 + 4), 0.1);
}

TEST(plan_oom_message) {
    char m[300];
    cuplan_oom_message(m, sizeof m, "the LM head logits", (size_t)2 << 30, (size_t)3 << 29, (size_t)80 << 30,
                       "NVIDIA H100 80GB HBM3");
    CHECK_STR(m, "out of GPU memory for the LM head logits: needed 2.00 GiB, 1.50 GiB free of 80.0 GiB on "
                 "NVIDIA H100 80GB HBM3");
}

TEST(plan_parse_device) {
    int d = -1;
    lr_err err = {0};
    CHECK(cuplan_parse_device("cuda", &d, &err) == 0 && d == 0);
    CHECK(cuplan_parse_device("cuda:3", &d, &err) == 0 && d == 3);
    const char *bad[] = {"cuda:", "cuda:x", "cuda:-1", "cudax", "cuda:1x", "cuda:99999", "cpu"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        CHECKF(cuplan_parse_device(bad[i], &d, &err) == -1, "'%s' accepted", bad[i]);
        CHECK_STR(err.param, "backend");
    }
}

/* No GPU (or no CUDA in this build): a clear error, never a crash. */
TEST(create_reports_missing_gpu) {
    kb_backend *be = NULL;
    lr_err err = {0};
    int rc = kb_create("cuda:0", 0, &be, &err);
    if (rc == 0) {
        CHECK(be != NULL && kb_cuda_device_of(be) != NULL && kb_cuda_device_of(be)->name[0]);
        kb_destroy(be);
    } else {
        CHECK(be == NULL);
        CHECKF(strstr(err.msg, "no CUDA device found (cudaGetDeviceCount: ") || strstr(err.msg, "built without CUDA") ||
                   strstr(err.msg, "compute capability"),
               "unclear message: %s", err.msg);
    }
    CHECK(kb_create("cuda:zero", 0, &be, &err) == -1);
    CHECK(strstr(err.msg, "cuda:N") != NULL);
    kb_cuda_device devs[8];
    int n = kb_cuda_devices(devs, 8, &err);
    CHECK(n == -1 ? rc == -1 : n >= 1);
    kb_cuda_mem mi;
    CHECK(kb_cuda_meminfo(NULL, &mi) == -1);
}

/* ---- ops against the CPU backend (GPU needed) ---- */

TEST(op_embedding) {
    NEED_GPU(g, KB_BF16);
    kb_backend *c = cpu();
    int N = 37, T = 13, C = 96, V = 50;
    int32_t ids[37];
    for (int i = 0; i < N; i++) ids[i] = (int)(lr_mix64((uint64_t)i) % V);
    float *wte = rnd((size_t)V * C, 1), *wpe = rnd((size_t)T * C, 1), *dout = rnd((size_t)N * C, 1);
    void *gwte = put_w(g, wte, (size_t)V * C), *gwpe = put_w(g, wpe, (size_t)T * C);
    int32_t *gids = g->alloc(g, sizeof ids);
    g->upload(g, gids, ids, sizeof ids);
    float *gout = g->alloc(g, (size_t)N * C * 4), *out = calloc((size_t)N * C, 4);
    g->embed_fwd(g, gout, gids, gwte, gwpe, N, T, C);
    c->embed_fwd(c, out, ids, wte, wpe, N, T, C);
    float *h = get(g, gout, (size_t)N * C);
    CHECK_REL(h, out, (size_t)N * C, 1e-6);
    float *gd = put(g, dout, (size_t)N * C), *gdw = g->alloc(g, (size_t)V * C * 4), *gdp = g->alloc(g, (size_t)T * C * 4);
    float *dw = calloc((size_t)V * C, 4), *dp = calloc((size_t)T * C, 4);
    g->embed_bwd(g, gdw, gdp, gd, gids, N, T, C);
    c->embed_bwd(c, dw, dp, dout, ids, N, T, C);
    float *h1 = get(g, gdw, (size_t)V * C), *h2 = get(g, gdp, (size_t)T * C);
    CHECK_REL(h1, dw, (size_t)V * C, 0); /* same order of additions: identical */
    CHECK_REL(h2, dp, (size_t)T * C, 0);
    check_ok(g);
    free(wte), free(wpe), free(dout), free(out), free(h), free(dw), free(dp), free(h1), free(h2);
    kb_destroy(g), kb_destroy(c);
}

static void norm_case(kb_dtype wdt, int layer) {
    kb_backend *g = gpu(wdt), *c = cpu();
    int N = 45, C = 200;
    float *x = rnd((size_t)N * C, 2), *w = rnd(C, 1), *b = rnd(C, 1), *dy = rnd((size_t)N * C, 1);
    float *dx0 = rnd((size_t)N * C, 1);
    void *gw = put_w(g, w, C), *gb = put_w(g, b, C);
    float *gx = put(g, x, (size_t)N * C), *gdy = put(g, dy, (size_t)N * C), *gdx = put(g, dx0, (size_t)N * C);
    float *go = g->alloc(g, (size_t)N * C * 4), *gm = g->alloc(g, N * 4), *gr = g->alloc(g, N * 4);
    float *gdw = g->alloc(g, C * 4), *gdb = g->alloc(g, C * 4);
    float *o = calloc((size_t)N * C, 4), *m = calloc(N, 4), *r = calloc(N, 4), *dw = calloc(C, 4), *db = calloc(C, 4);
    if (layer) {
        g->layernorm_fwd(g, go, gm, gr, gx, gw, gb, N, C, 1e-5f);
        c->layernorm_fwd(c, o, m, r, x, w, b, N, C, 1e-5f);
        g->layernorm_bwd(g, gdx, gdw, gdb, gdy, gx, gw, gm, gr, N, C);
        c->layernorm_bwd(c, dx0, dw, db, dy, x, w, m, r, N, C);
    } else {
        g->rmsnorm_fwd(g, go, gr, gx, gw, N, C, 1e-6f);
        c->rmsnorm_fwd(c, o, r, x, w, N, C, 1e-6f);
        g->rmsnorm_bwd(g, gdx, gdw, gdy, gx, gw, gr, N, C);
        c->rmsnorm_bwd(c, dx0, dw, dy, x, w, r, N, C);
    }
    float *ho = get(g, go, (size_t)N * C), *hr = get(g, gr, N), *hdx = get(g, gdx, (size_t)N * C), *hdw = get(g, gdw, C);
    float *hdb = get(g, gdb, C);
    CHECK_REL(ho, o, (size_t)N * C, 1e-5);
    CHECK_REL(hr, r, N, 1e-5);
    CHECK_REL(hdx, dx0, (size_t)N * C, 1e-5);
    CHECK_REL(hdw, dw, C, 1e-5);
    if (layer) CHECK_REL(hdb, db, C, 1e-5);
    check_ok(g);
    free(x), free(w), free(b), free(dy), free(dx0), free(o), free(m), free(r), free(dw), free(db);
    free(ho), free(hr), free(hdx), free(hdw), free(hdb);
    kb_destroy(g), kb_destroy(c);
}
TEST(op_rmsnorm) {
    NEED_GPU(g, KB_F32);
    kb_destroy(g);
    norm_case(KB_F32, 0);
    norm_case(KB_BF16, 0);
}
TEST(op_layernorm) {
    NEED_GPU(g, KB_F32);
    kb_destroy(g);
    norm_case(KB_F32, 1);
    norm_case(KB_F16, 1);
}

TEST(op_rope) {
    NEED_GPU(g, KB_F32);
    kb_backend *c = cpu();
    int B = 2, T = 19, H = 3, D = 64, ld = H * D + 40, N = B * T;
    float *x = rnd((size_t)N * ld, 1), *cs = malloc((size_t)T * D / 2 * 4), *sn = malloc((size_t)T * D / 2 * 4);
    for (int t = 0; t < T; t++)
        for (int i = 0; i < D / 2; i++) {
            float f = t * lr_rope_inv_freq(i, D, 10000.0f, 0, 0, 0, 0);
            cs[t * D / 2 + i] = cosf(f);
            sn[t * D / 2 + i] = sinf(f);
        }
    float *gx = put(g, x, (size_t)N * ld), *gc = put(g, cs, (size_t)T * D / 2), *gs = put(g, sn, (size_t)T * D / 2);
    g->rope_fwd(g, gx, ld, gc, gs, N, T, H, D);
    c->rope_fwd(c, x, ld, cs, sn, N, T, H, D);
    float *h = get(g, gx, (size_t)N * ld);
    CHECK_REL(h, x, (size_t)N * ld, 1e-6);
    g->rope_bwd(g, gx, ld, gc, gs, N, T, H, D);
    c->rope_bwd(c, x, ld, cs, sn, N, T, H, D);
    free(h);
    h = get(g, gx, (size_t)N * ld);
    CHECK_REL(h, x, (size_t)N * ld, 1e-6);
    check_ok(g);
    free(x), free(cs), free(sn), free(h);
    kb_destroy(g), kb_destroy(c);
}

/* Rounds to bf16 in place. */
static void round_bf16(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint16_t h;
        cuplan_convert(KB_BF16, &h, &x[i], 1);
        x[i] = cuplan_bf16_to_f32(h);
    }
}

/* q, k, v inside one fused qkv buffer (strides as the model lays them out).
 * With 16-bit weights the tensor-core kernels run: their inputs are made
 * bf16-exact here, so the tolerance covers only their own rounding of P and
 * dS to bf16 (host emulation: ~1.5e-3). */
static void attn_case_dt(kb_dtype wdt, int B, int T, int Hq, int Hkv, int D, int W) {
    kb_backend *g = gpu(wdt), *c = cpu();
    int N = B * T, ld = (Hq + 2 * Hkv) * D, ldo = Hq * D;
    size_t nq = (size_t)N * ld, no = (size_t)N * ldo;
    float *qkv = rnd(nq, 1.5f), *dout = rnd(no, 1);
    double tol = wdt == KB_F32 ? 1e-4 : 1e-2;
    if (wdt != KB_F32) {
        round_bf16(qkv, nq);
        round_bf16(dout, no);
    }
    float *q = qkv, *k = qkv + Hq * D, *v = k + Hkv * D;
    float *out = calloc(no, 4), *lse = calloc((size_t)B * Hq * T, 4), *dqkv = calloc(nq, 4);
    float *gqkv = put(g, qkv, nq), *gdout = put(g, dout, no), *gout = g->alloc(g, no * 4);
    float *glse = g->alloc(g, (size_t)B * Hq * T * 4), *gd = g->alloc(g, nq * 4);
    float *gq = gqkv, *gk = gqkv + Hq * D, *gv = gk + Hkv * D;
    c->attn_fwd(c, out, lse, q, k, v, ld, ld, B, T, Hq, Hkv, D, W);
    g->attn_fwd(g, gout, glse, gq, gk, gv, ld, ld, B, T, Hq, Hkv, D, W);
    float *ho = get(g, gout, no), *hl = get(g, glse, (size_t)B * Hq * T);
    CHECKF(relerr(ho, out, no) <= tol, "attn out (dtype %d) B%d T%d Hq%d Hkv%d D%d W%d: %.3g", wdt, B, T, Hq, Hkv,
           D, W, relerr(ho, out, no));
    CHECK_REL(hl, lse, (size_t)B * Hq * T, 1e-5);
    c->attn_bwd(c, dqkv, dqkv + Hq * D, dqkv + (Hq + Hkv) * D, dout, out, lse, q, k, v, ld, ld, B, T, Hq, Hkv, D, W);
    g->attn_bwd(g, gd, gd + Hq * D, gd + (Hq + Hkv) * D, gdout, gout, glse, gq, gk, gv, ld, ld, B, T, Hq, Hkv, D, W);
    float *hd = get(g, gd, nq);
    CHECKF(relerr(hd, dqkv, nq) <= tol, "attn grads (dtype %d) B%d T%d Hq%d Hkv%d D%d W%d: %.3g", wdt, B, T, Hq,
           Hkv, D, W, relerr(hd, dqkv, nq));
    if (wdt != KB_F32)
        printf("    attn tensor cores B%d T%d Hq%d Hkv%d D%d W%d: out %.2e, grads %.2e\n", B, T, Hq, Hkv, D, W,
               relerr(ho, out, no), relerr(hd, dqkv, nq));
    check_ok(g);
    free(qkv), free(dout), free(out), free(lse), free(dqkv), free(ho), free(hl), free(hd);
    kb_destroy(g), kb_destroy(c);
}
static void attn_case_w(int B, int T, int Hq, int Hkv, int D, int W) { attn_case_dt(KB_F32, B, T, Hq, Hkv, D, W); }
static void attn_case(int B, int T, int Hq, int Hkv, int D) { attn_case_w(B, T, Hq, Hkv, D, 0); }
TEST(op_attention) {
    NEED_GPU(g, KB_F32);
    kb_destroy(g);
    attn_case(2, 77, 4, 2, 64);   /* GQA, T not a multiple of the 32-row tile */
    attn_case(1, 64, 2, 2, 128);  /* MHA, D = 128 */
    attn_case(1, 33, 4, 1, 80);   /* D not a multiple of 32 */
    attn_case(1, 5, 2, 1, 16);    /* shorter than a tile */
    attn_case(1, 300, 8, 2, 64);  /* several tiles, G = 4 */
}
/* Sliding windows against the CPU backend (itself checked against a naive
 * reference in test_kernels). */
TEST(op_attention_window) {
    NEED_GPU(g, KB_F32);
    kb_destroy(g);
    attn_case_w(2, 77, 4, 2, 64, 1);    /* only the diagonal */
    attn_case_w(1, 300, 8, 2, 64, 3);   /* tiles whose rows see no key of the first key tile */
    attn_case_w(1, 300, 2, 1, 128, 40); /* window crosses tile edges; early key tiles skipped */
    attn_case_w(1, 33, 4, 1, 80, 32);   /* window = tile */
    attn_case_w(1, 70, 2, 1, 16, 100);  /* window > T: causal */
}

/* The tensor-core kernels (16-bit weights), same shapes and windows; D =
 * 80 and 160 cover both the tensor-core and the f32 fallback (D > 128). */
TEST(op_attention_tc) {
    NEED_GPU(g, KB_BF16);
    kb_destroy(g);
    attn_case_dt(KB_BF16, 2, 77, 4, 2, 64, 0);
    attn_case_dt(KB_BF16, 1, 300, 8, 2, 128, 0);
    attn_case_dt(KB_BF16, 1, 33, 4, 1, 80, 0);
    attn_case_dt(KB_BF16, 1, 5, 2, 1, 16, 0);
    attn_case_dt(KB_BF16, 1, 70, 2, 1, 160, 0);
    attn_case_dt(KB_F16, 1, 200, 4, 1, 64, 0);
    attn_case_dt(KB_BF16, 2, 77, 4, 2, 64, 1);
    attn_case_dt(KB_BF16, 1, 300, 8, 2, 64, 3);
    attn_case_dt(KB_BF16, 1, 300, 2, 1, 128, 70);
    attn_case_dt(KB_BF16, 1, 1100, 4, 1, 128, 0); /* 18 tiles */
}

TEST(op_elementwise) {
    NEED_GPU(g, KB_F32);
    kb_backend *c = cpu();
    size_t n = 100003;
    float *a = rnd(n, 4), *b = rnd(n, 4), *d = rnd(n, 1);
    float *ga = put(g, a, n), *gb = put(g, b, n), *gd = put(g, d, n), *g1 = g->alloc(g, n * 4), *g2 = g->alloc(g, n * 4);
    float *o1 = calloc(n, 4), *o2 = calloc(n, 4), *h;
    g->swiglu_fwd(g, g1, ga, gb, n);
    c->swiglu_fwd(c, o1, a, b, n);
    CHECK_REL((h = get(g, g1, n)), o1, n, 1e-6);
    free(h);
    g->swiglu_bwd(g, g1, g2, gd, ga, gb, n);
    c->swiglu_bwd(c, o1, o2, d, a, b, n);
    CHECK_REL((h = get(g, g1, n)), o1, n, 1e-6);
    free(h);
    CHECK_REL((h = get(g, g2, n)), o2, n, 1e-6);
    free(h);
    for (int exact = 0; exact < 2; exact++) {
        g->gelu_fwd(g, g1, ga, n, exact);
        c->gelu_fwd(c, o1, a, n, exact);
        CHECK_REL((h = get(g, g1, n)), o1, n, 1e-6);
        free(h);
        g->gelu_bwd(g, g1, gd, ga, n, exact);
        c->gelu_bwd(c, o1, d, a, n, exact);
        CHECK_REL((h = get(g, g1, n)), o1, n, 1e-6);
        free(h);
    }
    g->add(g, ga, gb, n);
    c->add(c, a, b, n);
    g->scale(g, ga, 0.37f, n);
    c->scale(c, a, 0.37f, n);
    CHECK_REL((h = get(g, ga, n)), a, n, 1e-7);
    free(h);
    CHECK_NEAR(g->sumsq(g, ga, n) / c->sumsq(c, a, n), 1.0, 1e-12);
    /* AdamW, step 3, on moments that are not zero */
    float *m = rnd(n, 0.1f), *v = rnd(n, 0.1f);
    for (size_t i = 0; i < n; i++) v[i] = fabsf(v[i]);
    float *gm = put(g, m, n), *gv = put(g, v, n);
    kb_adamw hp = {2e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, 3};
    g->adamw(g, ga, gd, gm, gv, n, &hp);
    c->adamw(c, a, d, m, v, n, &hp);
    CHECK_REL((h = get(g, ga, n)), a, n, 1e-6);
    free(h);
    CHECK_REL((h = get(g, gv, n)), v, n, 1e-6);
    free(h);
    check_ok(g);
    free(a), free(b), free(d), free(o1), free(o2), free(m), free(v);
    kb_destroy(g), kb_destroy(c);
}

/* A linear layer with bias and LoRA (dropout on), forward and backward. */
static void linear_case(kb_dtype wdt, int w_in_out, double tol) {
    kb_backend *g = gpu(wdt), *c = cpu();
    int N = 70, in = 96, out = 160, r = 8;
    float *W = rnd((size_t)in * out, 0.1f), *b = rnd(out, 0.1f), *x = rnd((size_t)N * in, 1), *dy = rnd((size_t)N * out, 1);
    float *A = rnd((size_t)r * in, 0.1f), *Bm = rnd((size_t)out * r, 0.1f), *dx = rnd((size_t)N * in, 1);
    float *dA = calloc((size_t)r * in, 4), *dB = calloc((size_t)out * r, 4), *y = calloc((size_t)N * out, 4);
    float *xa = calloc((size_t)N * r, 4);
    void *gW = put_w(g, W, (size_t)in * out), *gb = put_w(g, b, out);
    kb_lora lc = {.A = A, .B = Bm, .dA = dA, .dB = dB, .r = r, .scale = 2.0f, .dropout = 0.1f, .seed = 1234};
    kb_lora lg = {.A = put(g, A, (size_t)r * in), .B = put(g, Bm, (size_t)out * r),
                  .dA = g->alloc(g, (size_t)r * in * 4), .dB = g->alloc(g, (size_t)out * r * 4), .r = r,
                  .scale = 2.0f, .dropout = 0.1f, .seed = 1234};
    kb_linear Lc = {W, b, in, out, w_in_out, &lc, NULL, NULL, NULL, NULL}, Lg = {gW, gb, in, out, w_in_out, &lg, NULL, NULL, NULL, NULL};
    float *gx = put(g, x, (size_t)N * in), *gy = g->alloc(g, (size_t)N * out * 4), *gxa = g->alloc(g, (size_t)N * r * 4);
    float *gdy = put(g, dy, (size_t)N * out), *gdx = put(g, dx, (size_t)N * in);
    c->linear_fwd(c, &Lc, y, xa, x, N);
    g->linear_fwd(g, &Lg, gy, gxa, gx, N);
    float *h = get(g, gy, (size_t)N * out);
    CHECKF(relerr(h, y, (size_t)N * out) <= tol, "linear y (dtype %d, in_out %d): %.3g", wdt, w_in_out,
           relerr(h, y, (size_t)N * out));
    free(h);
    c->linear_bwd(c, &Lc, dx, 1, dy, x, xa, N);
    g->linear_bwd(g, &Lg, gdx, 1, gdy, gx, gxa, N);
    h = get(g, gdx, (size_t)N * in);
    CHECKF(relerr(h, dx, (size_t)N * in) <= tol, "linear dx (dtype %d): %.3g", wdt, relerr(h, dx, (size_t)N * in));
    free(h);
    h = get(g, lg.dA, (size_t)r * in);
    CHECK_REL(h, dA, (size_t)r * in, 1e-5); /* LoRA gradients are f32 on both */
    free(h);
    h = get(g, lg.dB, (size_t)out * r);
    CHECK_REL(h, dB, (size_t)out * r, wdt == KB_F32 ? 1e-5 : tol);
    free(h);
    check_ok(g);
    free(W), free(b), free(x), free(dy), free(A), free(Bm), free(dx), free(dA), free(dB), free(y), free(xa);
    kb_destroy(g), kb_destroy(c);
}
TEST(op_linear_lora) {
    NEED_GPU(g, KB_F32);
    kb_destroy(g);
    linear_case(KB_F32, 0, 1e-5);
    linear_case(KB_F32, 1, 1e-5);
    linear_case(KB_BF16, 0, 2e-2);
    linear_case(KB_F16, 1, 4e-3);
}

/* The co-training ops (lora_fwd / lora_bwd: the plain LoRA path alone, on
 * rows of its own) against the CPU's, y and dx accumulated onto non-zero
 * values, dx NULL too; and the contract that linear_fwd / linear_bwd are
 * the base linear then these ops, bit for bit, on the GPU itself. */
static void lora_op_case(kb_dtype wdt, int w_in_out, float dropout) {
    kb_backend *g = gpu(wdt), *c = cpu();
    int N = 90, in = 96, out = 160, r = 8;
    size_t nx = (size_t)N * in, ny = (size_t)N * out, na = (size_t)r * in, nb = (size_t)out * r;
    float *W = rnd((size_t)in * out, 0.1f), *b = rnd(out, 0.1f), *x = rnd(nx, 1), *dy = rnd(ny, 1);
    float *y = rnd(ny, 1), *dx = rnd(nx, 1), *A = rnd(na, 0.1f), *Bm = rnd(nb, 0.1f), *dA = rnd(na, 0.1f);
    float *dB = rnd(nb, 0.1f), *xa = calloc((size_t)N * r, 4), *h;
    kb_lora lc = {.A = A, .B = Bm, .dA = dA, .dB = dB, .r = r, .scale = 2.0f, .dropout = dropout, .seed = 77};
    kb_lora lg = {.A = put(g, A, na), .B = put(g, Bm, nb), .dA = put(g, dA, na), .dB = put(g, dB, nb), .r = r,
                  .scale = 2.0f, .dropout = dropout, .seed = 77};
    /* the ops read no base weight */
    kb_linear Lc = {NULL, NULL, in, out, w_in_out, &lc, NULL, NULL, NULL, NULL}, Lg = Lc;
    Lg.lora = &lg;
    float *gx = put(g, x, nx), *gy = put(g, y, ny), *gdy = put(g, dy, ny), *gdx = put(g, dx, nx);
    float *gxa = g->alloc(g, (size_t)N * r * 4);
    c->lora_fwd(c, &Lc, y, xa, x, N);
    g->lora_fwd(g, &Lg, gy, gxa, gx, N);
    CHECK_REL((h = get(g, gy, ny)), y, ny, 1e-5);
    free(h);
    CHECK_REL((h = get(g, gxa, (size_t)N * r)), xa, (size_t)N * r, 1e-5);
    free(h);
    c->lora_bwd(c, &Lc, dx, dy, x, xa, N);
    g->lora_bwd(g, &Lg, gdx, gdy, gx, gxa, N);
    c->lora_bwd(c, &Lc, NULL, dy, x, xa, N); /* gradients only: dA, dB accumulate twice */
    g->lora_bwd(g, &Lg, NULL, gdy, gx, gxa, N);
    CHECK_REL((h = get(g, gdx, nx)), dx, nx, 1e-5);
    free(h);
    CHECK_REL((h = get(g, lg.dA, na)), dA, na, 1e-5);
    free(h);
    CHECK_REL((h = get(g, lg.dB, nb)), dB, nb, 1e-5);
    free(h);
    check_ok(g);

    /* linear (bias, frozen W of the backend's dtype) = base + lora op, on the GPU */
    void *gW = put_w(g, W, (size_t)in * out), *gb = put_w(g, b, out);
    kb_linear Lw = {gW, gb, in, out, w_in_out, &lg, NULL, NULL, NULL, NULL}, Lbase = Lw;
    Lbase.lora = NULL;
    float *gy2 = g->alloc(g, ny * 4), *gxa2 = g->alloc(g, (size_t)N * r * 4), *gdx2 = put(g, dx, nx);
    g->upload(g, gdx, dx, nx * 4);
    g->linear_fwd(g, &Lw, gy, gxa, gx, N);
    g->linear_fwd(g, &Lbase, gy2, NULL, gx, N);
    g->lora_fwd(g, &Lw, gy2, gxa2, gx, N);
    float *h2;
    h = get(g, gy, ny), h2 = get(g, gy2, ny);
    CHECKF(!memcmp(h, h2, ny * 4), "linear_fwd != base + lora_fwd (dtype %d, dropout %g)", wdt, dropout);
    free(h), free(h2);
    g->linear_bwd(g, &Lw, gdx, 1, gdy, gx, gxa, N);
    g->linear_bwd(g, &Lbase, gdx2, 1, gdy, gx, NULL, N);
    g->lora_bwd(g, &Lw, gdx2, gdy, gx, gxa2, N);
    h = get(g, gdx, nx), h2 = get(g, gdx2, nx);
    CHECKF(!memcmp(h, h2, nx * 4), "linear_bwd != base + lora_bwd (dtype %d, dropout %g)", wdt, dropout);
    free(h), free(h2);
    check_ok(g);
    free(W), free(b), free(x), free(dy), free(y), free(dx), free(A), free(Bm), free(dA), free(dB), free(xa);
    kb_destroy(g), kb_destroy(c);
}
TEST(op_lora_path_for_co_training) {
    NEED_GPU(g, KB_F32);
    CHECK(g->lora_fwd && g->lora_bwd);
    kb_destroy(g);
    lora_op_case(KB_F32, 0, 0.0f);
    lora_op_case(KB_F32, 1, 0.1f);
    lora_op_case(KB_BF16, 0, 0.1f); /* the LoRA path is f32 whatever the weights' dtype */
    lora_op_case(KB_F16, 1, 0.0f);
}

static void ce_case(kb_dtype wdt, int chunk, double tol) {
    kb_backend *g = gpu(wdt), *c = cpu();
    int N = 61, C = 64, V = 1000;
    float *W = rnd((size_t)V * C, 0.5f), *x = rnd((size_t)N * C, 1), *ts = rnd(N, 1);
    int32_t tg[61];
    for (int i = 0; i < N; i++) tg[i] = i % 5 == 2 ? LR_IGNORE_INDEX : (int)(lr_mix64((uint64_t)i + 99) % V);
    for (int i = 0; i < N; i += 3) { /* a third of the targets the argmax, for the accuracy count */
        double best = -1e30;
        for (int v = 0; v < V && tg[i] != LR_IGNORE_INDEX; v++) {
            double l = 0;
            for (int k = 0; k < C; k++) l += (double)x[(size_t)i * C + k] * W[(size_t)v * C + k];
            if (l > best) best = l, tg[i] = v;
        }
    }
    void *gW = put_w(g, W, (size_t)V * C);
    float *gx = put(g, x, (size_t)N * C), *gts = put(g, ts, N), *gdx = g->alloc(g, (size_t)N * C * 4);
    float *gtl = g->alloc(g, N * 4), *dx = calloc((size_t)N * C, 4), *tl = calloc(N, 4);
    int32_t *gtg = g->alloc(g, sizeof tg);
    g->upload(g, gtg, tg, sizeof tg);
    int64_t nc = 0, ng = 0, hc = -1, hg = -2;
    double lc = c->lmhead_ce(c, &nc, &hc, tl, dx, NULL, x, W, tg, ts, N, C, V, 0.25f, chunk);
    double lg = g->lmhead_ce(g, &ng, &hg, gtl, gdx, NULL, gx, gW, gtg, gts, N, C, V, 0.25f, chunk);
    CHECK_EQ_INT(ng, nc);
    /* bf16 weights may flip a near tie against the CPU's f32 */
    CHECKF(hc >= 8 && llabs(hg - hc) <= (wdt == KB_F32 ? 0 : 2), "correct rows %lld vs the CPU's %lld (dtype %d)",
           (long long)hg, (long long)hc, wdt);
    CHECKF(fabs(lg - lc) <= (wdt == KB_F32 ? 1e-5 : 1e-3) * fabs(lc), "loss %.9g vs %.9g (dtype %d)", lg, lc, wdt);
    float *h = get(g, gdx, (size_t)N * C);
    CHECKF(relerr(h, dx, (size_t)N * C) <= tol, "ce dx (dtype %d): %.3g", wdt, relerr(h, dx, (size_t)N * C));
    free(h);
    h = get(g, gtl, N);
    CHECK_REL(h, tl, N, wdt == KB_F32 ? 1e-5 : 1e-2);
    free(h);
    /* loss only */
    lg = g->lmhead_ce(g, &ng, NULL, NULL, NULL, NULL, gx, gW, gtg, NULL, N, C, V, 1.0f, 0);
    CHECKF(fabs(lg - lc) <= (wdt == KB_F32 ? 1e-5 : 1e-3) * fabs(lc), "loss-only %.9g vs %.9g", lg, lc);
    check_ok(g);
    free(W), free(x), free(ts), free(dx), free(tl);
    kb_destroy(g), kb_destroy(c);
}
TEST(op_lmhead_ce) {
    NEED_GPU(g, KB_F32);
    kb_destroy(g);
    ce_case(KB_F32, 0, 1e-5);
    ce_case(KB_F32, 16, 1e-5); /* several chunks */
    ce_case(KB_BF16, 20, 2e-2);
}

/* A DoRA layer (kb_lora.mag): dora_norm, then forward and backward, with
 * the magnitude away from the norm (s != 1) and every gradient accumulated
 * onto non-zero values. N > CUPLAN_DORA_ROWS, out > 128: several partial
 * sums of d magnitude in both directions. */
static void dora_case(kb_dtype wdt, int w_in_out, int bias, float dropout, double tol) {
    kb_backend *g = gpu(wdt), *c = cpu();
    int N = 200, in = 96, out = 160, r = 8;
    size_t nw = (size_t)in * out, nx = (size_t)N * in, ny = (size_t)N * out;
    float *W = rnd(nw, 0.1f), *b = rnd(out, 0.1f), *x = rnd(nx, 1), *dy = rnd(ny, 1), *dx = rnd(nx, 1);
    float *A = rnd((size_t)r * in, 0.1f), *Bm = rnd((size_t)out * r, 0.1f), *dA = rnd((size_t)r * in, 0.1f);
    float *dB = rnd((size_t)out * r, 0.1f), *dmag = rnd(out, 0.1f), *wn = calloc(out, 4), *mag = calloc(out, 4);
    float *y = calloc(ny, 4), *xa = calloc((size_t)N * r, 4), *h;
    void *gW = put_w(g, W, nw), *gb = bias ? put_w(g, b, out) : NULL;
    kb_lora lc = {.A = A, .B = Bm, .dA = dA, .dB = dB, .r = r, .scale = 2.0f, .dropout = dropout, .seed = 99,
                  .mag = mag, .dmag = dmag, .wnorm = wn};
    kb_linear Lc = {W, bias ? b : NULL, in, out, w_in_out, &lc, NULL, NULL, NULL, NULL};
    kb_lora lg = {.A = put(g, A, (size_t)r * in), .B = put(g, Bm, (size_t)out * r), .dA = put(g, dA, (size_t)r * in),
                  .dB = put(g, dB, (size_t)out * r), .r = r, .scale = 2.0f, .dropout = dropout, .seed = 99,
                  .dmag = put(g, dmag, out)};
    float *gwn = g->alloc(g, (size_t)out * 4);
    lg.wnorm = gwn;
    kb_linear Lg = {gW, gb, in, out, w_in_out, &lg, NULL, NULL, NULL, NULL};
    /* the norms depend on W (rounded alike on both sides), A and B only: f32 on both */
    c->dora_norm(c, &Lc, wn);
    g->dora_norm(g, &Lg, gwn);
    CHECK_REL((h = get(g, gwn, out)), wn, out, 1e-6);
    free(h);
    for (int j = 0; j < out; j++) mag[j] = wn[j] * (1.0f + 0.3f * frand());
    lg.mag = put(g, mag, out);
    float *gx = put(g, x, nx), *gy = g->alloc(g, ny * 4), *gxa = g->alloc(g, (size_t)N * r * 4);
    float *gdy = put(g, dy, ny), *gdx = put(g, dx, nx);
    c->linear_fwd(c, &Lc, y, xa, x, N);
    g->linear_fwd(g, &Lg, gy, gxa, gx, N);
    h = get(g, gy, ny);
    CHECKF(relerr(h, y, ny) <= tol, "dora y (dtype %d, in_out %d, bias %d, dropout %g): %.3g", wdt, w_in_out, bias,
           dropout, relerr(h, y, ny));
    free(h);
    c->linear_bwd(c, &Lc, dx, 1, dy, x, xa, N);
    g->linear_bwd(g, &Lg, gdx, 1, gdy, gx, gxa, N);
    h = get(g, gdx, nx);
    CHECKF(relerr(h, dx, nx) <= tol, "dora dx (dtype %d, in_out %d, bias %d, dropout %g): %.3g", wdt, w_in_out, bias,
           dropout, relerr(h, dx, nx));
    free(h);
    /* the LoRA path sees s dy, f32 on both; d magnitude goes through drop(x) W^T */
    CHECK_REL((h = get(g, lg.dA, (size_t)r * in)), dA, (size_t)r * in, 1e-5);
    free(h);
    CHECK_REL((h = get(g, lg.dB, (size_t)out * r)), dB, (size_t)out * r, 1e-5);
    free(h);
    h = get(g, lg.dmag, out);
    CHECKF(relerr(h, dmag, out) <= tol, "dora dmag (dtype %d): %.3g", wdt, relerr(h, dmag, out));
    free(h);
    check_ok(g);
    free(W), free(b), free(x), free(dy), free(dx), free(A), free(Bm), free(dA), free(dB), free(dmag), free(wn);
    free(mag), free(y), free(xa);
    kb_destroy(g), kb_destroy(c);
}
TEST(op_linear_dora) {
    NEED_GPU(g, KB_F32);
    kb_destroy(g);
    dora_case(KB_F32, 0, 0, 0.0f, 1e-5);
    dora_case(KB_F32, 1, 1, 0.0f, 1e-5);  /* Conv1D layout, bias */
    dora_case(KB_F32, 0, 1, 0.1f, 1e-5);  /* dropout: the dropped and undropped base terms */
    dora_case(KB_F32, 1, 0, 0.2f, 1e-5);
    dora_case(KB_BF16, 0, 1, 0.1f, 2e-2);
    dora_case(KB_BF16, 1, 0, 0.0f, 2e-2);
    dora_case(KB_F16, 1, 1, 0.1f, 4e-3);
    dora_case(KB_F16, 0, 0, 0.0f, 4e-3);
}

/* A 4-bit weight of W [out, in] for the CPU (host arrays, *h) and the GPU
 * (the same bytes uploaded, *d); free(h->codes), free(h->absmax or
 * h->qabsmax's block) afterwards. */
static void q4_weights(kb_backend *g, const float *W, int out, int in, kq_type t, int dq, kq_weight *h, kq_weight *d) {
    size_t n = (size_t)out * in, nb = kq_nblocks(n), nn = kq_nested_nblocks(n);
    uint8_t *codes = malloc(kq_code_bytes(n)), *qabs = dq ? malloc(nb) : NULL;
    float *absmax = malloc(nb * sizeof(float)), *nabs = malloc(nn * sizeof(float));
    memset(h, 0, sizeof *h);
    h->type = t, h->rows = out, h->cols = in;
    kq_book(t, h->book);
    memcpy(h->nbook, kq_dynamic_map(), sizeof h->nbook);
    kq_quantize(t, W, n, codes, absmax, qabs, nabs, &h->offset, 2);
    h->codes = codes;
    h->absmax = dq ? NULL : absmax;
    h->qabsmax = qabs;
    h->nabsmax = dq ? nabs : NULL;
    *d = *h;
    d->codes = g->alloc(g, kq_code_bytes(n));
    g->upload(g, (void *)d->codes, codes, kq_code_bytes(n));
    if (dq) {
        d->qabsmax = g->alloc(g, nb);
        g->upload(g, (void *)d->qabsmax, qabs, nb);
        d->nabsmax = put(g, nabs, nn);
        free(absmax);
    } else {
        d->absmax = put(g, absmax, nb);
        free(nabs);
    }
}

/* A linear layer on a 4-bit base (QLoRA) with LoRA or DoRA, forward,
 * backward and DoRA's norm, against the CPU backend on the same codes: the
 * GPU dequantizes tiles (bf16 with 16-bit weights, f32 with f32 ones) into
 * its GEMM, the CPU into its sgemm. out x in past CUPLAN_Q4_BUDGET (big)
 * takes two tiles, and DoRA's norm three blocks. */
static void q4_case(kb_dtype wdt, kq_type t, int dq, int dora, float dropout, int big, double tol) {
    kb_backend *g = gpu(wdt), *c = cpu();
    int N = big ? 16 : 70, in = big ? 4096 : 96, out = big ? 4200 : 200, r = 8;
    size_t nw = (size_t)in * out, nx = (size_t)N * in, ny = (size_t)N * out;
    if (big) REQUIRE(cuplan_q4_rows(out, in, 2, CUPLAN_Q4_BUDGET) < out);
    float *W = rnd(nw, 0.1f), *b = rnd(out, 0.1f), *x = rnd(nx, 1), *dy = rnd(ny, 1), *dx = rnd(nx, 1);
    float *A = rnd((size_t)r * in, 0.1f), *Bm = rnd((size_t)out * r, 0.1f), *dA = rnd((size_t)r * in, 0.1f);
    float *dB = rnd((size_t)out * r, 0.1f), *dmag = rnd(out, 0.1f), *wn = calloc(out, 4), *mag = calloc(out, 4);
    float *y = calloc(ny, 4), *xa = calloc((size_t)N * r, 4), *h;
    kq_weight qc, qg;
    q4_weights(g, W, out, in, t, dq, &qc, &qg);
    void *gb = put_w(g, b, out);
    kb_lora lc = {.A = A, .B = Bm, .dA = dA, .dB = dB, .r = r, .scale = 2.0f, .dropout = dropout, .seed = 7};
    kb_lora lg = {.A = put(g, A, (size_t)r * in), .B = put(g, Bm, (size_t)out * r), .dA = put(g, dA, (size_t)r * in),
                  .dB = put(g, dB, (size_t)out * r), .r = r, .scale = 2.0f, .dropout = dropout, .seed = 7};
    kb_linear Lc = {NULL, b, in, out, 0, &lc, NULL, NULL, &qc, NULL}, Lg = {NULL, gb, in, out, 0, &lg, NULL, NULL, &qg, NULL};
    if (dora) {
        float *gwn = g->alloc(g, (size_t)out * 4);
        lc.wnorm = wn, lc.dmag = dmag, lg.wnorm = gwn, lg.dmag = put(g, dmag, out);
        c->dora_norm(c, &Lc, wn);
        g->dora_norm(g, &Lg, gwn);
        /* f32 dequantized rows on both sides */
        CHECK_REL((h = get(g, gwn, out)), wn, out, 1e-6);
        free(h);
        for (int j = 0; j < out; j++) mag[j] = wn[j] * (1.0f + 0.3f * frand());
        lc.mag = mag, lg.mag = put(g, mag, out);
    }
    float *gx = put(g, x, nx), *gy = g->alloc(g, ny * 4), *gxa = g->alloc(g, (size_t)N * r * 4);
    float *gdy = put(g, dy, ny), *gdx = put(g, dx, nx);
    c->linear_fwd(c, &Lc, y, xa, x, N);
    g->linear_fwd(g, &Lg, gy, gxa, gx, N);
    h = get(g, gy, ny);
    CHECKF(relerr(h, y, ny) <= tol, "4-bit y (dtype %d, type %d, dq %d, dora %d, dropout %g): %.3g", wdt, t, dq, dora,
           dropout, relerr(h, y, ny));
    free(h);
    c->linear_bwd(c, &Lc, dx, 1, dy, x, xa, N);
    g->linear_bwd(g, &Lg, gdx, 1, gdy, gx, gxa, N);
    h = get(g, gdx, nx);
    CHECKF(relerr(h, dx, nx) <= tol, "4-bit dx (dtype %d, type %d, dq %d, dora %d, dropout %g): %.3g", wdt, t, dq,
           dora, dropout, relerr(h, dx, nx));
    free(h);
    CHECK_REL((h = get(g, lg.dA, (size_t)r * in)), dA, (size_t)r * in, dora || wdt == KB_F32 ? 1e-5 : tol);
    free(h);
    CHECK_REL((h = get(g, lg.dB, (size_t)out * r)), dB, (size_t)out * r, dora || wdt == KB_F32 ? 1e-5 : tol);
    free(h);
    if (dora) {
        h = get(g, lg.dmag, out);
        CHECKF(relerr(h, dmag, out) <= tol, "4-bit dmag (dtype %d): %.3g", wdt, relerr(h, dmag, out));
        free(h);
    }
    check_ok(g);
    free((void *)qc.codes), free((void *)qc.absmax), free((void *)qc.qabsmax), free((void *)qc.nabsmax);
    free(W), free(b), free(x), free(dy), free(dx), free(A), free(Bm), free(dA), free(dB), free(dmag), free(wn);
    free(mag), free(y), free(xa);
    kb_destroy(g), kb_destroy(c);
}
TEST(op_linear_q4) {
    NEED_GPU(g, KB_F32);
    kb_destroy(g);
    q4_case(KB_F32, KQ_NF4, 0, 0, 0.0f, 0, 1e-5);
    q4_case(KB_F32, KQ_NF4, 1, 0, 0.1f, 0, 1e-5);
    q4_case(KB_F32, KQ_FP4, 0, 1, 0.1f, 0, 1e-5);
    q4_case(KB_F32, KQ_NF4, 1, 1, 0.0f, 1, 1e-5);
    q4_case(KB_BF16, KQ_NF4, 0, 0, 0.1f, 0, 2e-2);
    q4_case(KB_BF16, KQ_NF4, 1, 1, 0.0f, 0, 2e-2);
    q4_case(KB_BF16, KQ_NF4, 0, 1, 0.1f, 1, 2e-2);
    q4_case(KB_F16, KQ_FP4, 1, 0, 0.0f, 0, 2e-2); /* f16 model: bf16 tiles */
}

/* dora_norm of a layer whose B A does not fit one CUPLAN_DORA_BUDGET block
 * (2100 rows of 8192: two blocks), both layouts. */
TEST(op_dora_norm_blocks) {
    NEED_GPU(g, KB_BF16);
    kb_backend *c = cpu();
    int in = 8192, out = 2100, r = 4;
    REQUIRE(cuplan_dora_rows(in, out, CUPLAN_DORA_BUDGET) < out);
    float *W = rnd((size_t)in * out, 0.05f), *A = rnd((size_t)r * in, 0.05f), *Bm = rnd((size_t)out * r, 0.5f);
    float *wn = calloc(out, 4), *h;
    void *gW = put_w(g, W, (size_t)in * out);
    kb_lora lc = {.A = A, .B = Bm, .r = r, .scale = 0.5f};
    kb_lora lg = {.A = put(g, A, (size_t)r * in), .B = put(g, Bm, (size_t)out * r), .r = r, .scale = 0.5f};
    float *gwn = g->alloc(g, (size_t)out * 4);
    for (int w_in_out = 0; w_in_out < 2; w_in_out++) {
        kb_linear Lc = {W, NULL, in, out, w_in_out, &lc, NULL, NULL, NULL, NULL}, Lg = {gW, NULL, in, out, w_in_out, &lg, NULL, NULL, NULL, NULL};
        c->dora_norm(c, &Lc, wn);
        g->dora_norm(g, &Lg, gwn);
        CHECK_REL((h = get(g, gwn, out)), wn, out, 1e-6);
        free(h);
    }
    check_ok(g);
    free(W), free(A), free(Bm), free(wn);
    kb_destroy(g), kb_destroy(c);
}

/* lmhead_ce_kl against the CPU backend; x_ref near x, as a tuned model
 * stays near its reference. */
static void kl_case(kb_dtype wdt, int chunk, double tol, double kl_tol) {
    kb_backend *g = gpu(wdt), *c = cpu();
    int N = 61, C = 64, V = 1000;
    float *W = rnd((size_t)V * C, 0.5f), *x = rnd((size_t)N * C, 1), *xr = rnd((size_t)N * C, 0.3f);
    for (int i = 0; i < N * C; i++) xr[i] += x[i];
    int32_t tg[61];
    for (int i = 0; i < N; i++) tg[i] = i % 5 == 2 ? LR_IGNORE_INDEX : (int)(lr_mix64((uint64_t)i + 7) % V);
    for (int i = 0; i < N; i += 3) { /* a third of the targets the argmax, for the accuracy count */
        double best = -1e30;
        for (int v = 0; v < V && tg[i] != LR_IGNORE_INDEX; v++) {
            double l = 0;
            for (int k = 0; k < C; k++) l += (double)x[(size_t)i * C + k] * W[(size_t)v * C + k];
            if (l > best) best = l, tg[i] = v;
        }
    }
    void *gW = put_w(g, W, (size_t)V * C);
    float *gx = put(g, x, (size_t)N * C), *gxr = put(g, xr, (size_t)N * C), *gdx = g->alloc(g, (size_t)N * C * 4);
    float *dx = calloc((size_t)N * C, 4), *h;
    int32_t *gtg = g->alloc(g, sizeof tg);
    g->upload(g, gtg, tg, sizeof tg);
    int64_t nc = 0, ng = 0, hc = -1, hg = -2;
    double cc, kc, cg, kg;
    c->lmhead_ce_kl(c, &cc, &kc, &nc, &hc, dx, x, xr, W, tg, N, C, V, 1.5f, 0.8f, 0.25f, chunk);
    g->lmhead_ce_kl(g, &cg, &kg, &ng, &hg, gdx, gx, gxr, gW, gtg, N, C, V, 1.5f, 0.8f, 0.25f, chunk);
    CHECK_EQ_INT(ng, nc);
    CHECKF(hc >= 8 && llabs(hg - hc) <= (wdt == KB_F32 ? 0 : 2), "correct rows %lld vs the CPU's %lld (dtype %d)",
           (long long)hg, (long long)hc, wdt);
    CHECK(kc > 0);
    double ce_tol = wdt == KB_F32 ? 1e-5 : 1e-3;
    CHECKF(fabs(cg - cc) <= ce_tol * cc, "ce %.9g vs %.9g (dtype %d)", cg, cc, wdt);
    CHECKF(fabs(kg - kc) <= kl_tol * kc, "kl %.9g vs %.9g (dtype %d)", kg, kc, wdt);
    h = get(g, gdx, (size_t)N * C);
    CHECKF(relerr(h, dx, (size_t)N * C) <= tol, "ce+kl dx (dtype %d): %.3g", wdt, relerr(h, dx, (size_t)N * C));
    for (int k = 0; k < C; k++) CHECK(h[2 * C + k] == 0.0f); /* an ignored row */
    free(h);
    /* loss only, default chunking */
    g->lmhead_ce_kl(g, &cg, &kg, &ng, NULL, NULL, gx, gxr, gW, gtg, N, C, V, 1.5f, 0.8f, 1.0f, 0);
    CHECKF(fabs(cg - cc) <= ce_tol * cc && fabs(kg - kc) <= kl_tol * kc, "loss-only ce %.9g kl %.9g", cg, kg);
    /* no valid row: zeros, dx cleared */
    for (int i = 0; i < N; i++) tg[i] = LR_IGNORE_INDEX;
    g->upload(g, gtg, tg, sizeof tg);
    g->lmhead_ce_kl(g, &cg, &kg, &ng, &hg, gdx, gx, gxr, gW, gtg, N, C, V, 1.5f, 0.8f, 0.25f, chunk);
    CHECK(ng == 0 && cg == 0.0 && kg == 0.0 && hg == 0);
    h = get(g, gdx, (size_t)N * C);
    double mx = 0;
    for (int i = 0; i < N * C; i++) mx = fabs(h[i]) > mx ? fabs(h[i]) : mx;
    CHECK(mx == 0.0);
    free(h);
    check_ok(g);
    free(W), free(x), free(xr), free(dx);
    kb_destroy(g), kb_destroy(c);
}
TEST(op_lmhead_ce_kl) {
    NEED_GPU(g, KB_F32);
    kb_destroy(g);
    kl_case(KB_F32, 0, 1e-5, 1e-5);
    kl_case(KB_F32, 16, 1e-5, 1e-5); /* several chunks */
    kl_case(KB_BF16, 20, 2e-2, 5e-3);
    kl_case(KB_F16, 0, 4e-3, 1e-3);
}

/* Out of memory is an answer with numbers, and the backend goes on. */
TEST(op_out_of_memory) {
    NEED_GPU(g, KB_BF16);
    lr_err err = {0};
    void *p = g->alloc(g, (size_t)1 << 50);
    CHECK(p == NULL);
    CHECK(g->check(g, &err) == -1);
    CHECK(strstr(err.msg, "out of GPU memory") && strstr(err.msg, "needed 1048576.00 GiB"));
    CHECK_EQ_INT(err.code, LR_E_NOMEM);
    CHECK(g->check(g, &err) == 0);
    p = g->alloc(g, 1 << 20);
    CHECK(p != NULL);
    g->free(g, p);
    kb_cuda_mem mi;
    CHECK(kb_cuda_meminfo(g, &mi) == 0 && mi.total_bytes > 0 && mi.peak_bytes >= (1u << 20));
    kb_destroy(g);
}

/* ---- whole models (GPU needed) ---- */

static int mkmodel(const char *dir, const char *arch, const char *dtype) {
    char *argv[] = {"mkmodel", "--arch", (char *)arch, "--out", (char *)dir, "--preset", "tiny", "--dtype",
                    (char *)dtype, "--seed", "7", NULL};
    return cmd_mkmodel(11, argv);
}

typedef struct run {
    double loss[50];
    float *grads;
    size_t numel;
} run;

/* Loads dir on be, attaches r=8 adapters on all linear layers with B
 * randomised (so every gradient is non-zero), and either takes the
 * gradients of one batch (steps = 0) or trains steps AdamW steps. */
static int model_run(kb_backend *be, const char *dir, int steps, run *out, lr_err *err) {
    model *m = NULL;
    int B = 2, T = 24, rc = -1;
    memset(out, 0, sizeof *out);
    if (model_load(dir, be, &m, err)) return -1;
    model_lora_cfg lc = {.r = 8, .alpha = 16, .n_targets = 1};
    snprintf(lc.targets[0], sizeof lc.targets[0], "all-linear");
    if (model_lora_init(m, &lc, 11, err)) goto done;
    for (size_t i = 0; i < model_n_params(m); i++) {
        const model_param *p = model_param_at(m, i);
        if (!strstr(p->name, "lora_B")) continue;
        rng_state = 1000 + i;
        float *v = rnd(p->numel, 0.05f);
        int e = model_param_set(m, i, v, p->numel, err);
        free(v);
        if (e) goto done;
    }
    int V = model_config(m)->vocab_size;
    int32_t ids[48], labels[48];
    size_t n = model_numel(m);
    kb_backend *b = be; /* short name for the ops below */
    float *mom = b->alloc(b, n * 4), *vel = b->alloc(b, n * 4);
    for (int s = 0; s < (steps ? steps : 1); s++) {
        for (int i = 0; i < B * T; i++) {
            ids[i] = (int)(lr_mix64((uint64_t)(s % 4) * 1000 + i) % V);
            labels[i] = i % 7 == 0 ? -100 : ids[i];
        }
        double ls;
        int64_t nt;
        model_zero_grad(m);
        if (model_fwd_bwd(m, ids, labels, B, T, 1.0f, &ls, &nt, err)) goto done_free;
        out->loss[s] = ls / (double)nt;
        if (!steps) break;
        kb_adamw hp = {1e-2f, 0.9f, 0.999f, 1e-8f, 0.0f, s + 1};
        b->scale(b, model_grads(m), 1.0f / (float)nt, n);
        b->adamw(b, model_params(m), model_grads(m), mom, vel, n, &hp);
    }
    if (b->check && b->check(b, err)) goto done_free;
    out->numel = n;
    out->grads = malloc(n * 4);
    b->download(b, out->grads, model_grads(m), n * 4);
    rc = 0;
done_free:
    b->free(b, mom);
    b->free(b, vel);
done:
    model_free(m);
    return rc;
}

/* mdt: the model's storage dtype (mkmodel --dtype); wdt: the GPU
 * backend's (an f16 model on a bf16 backend must switch it to f16). */
static void grads_case(const char *arch, const char *mdt, kb_dtype wdt, double loss_tol, double grad_tol) {
    const char *dir = test_tmpdir();
    char path[600];
    snprintf(path, sizeof path, "%s/%s-%s-%d", dir, arch, mdt, (int)wdt);
    REQUIRE(mkmodel(path, arch, mdt) == 0);
    kb_backend *c = cpu(), *g = gpu(wdt);
    lr_err err = {0};
    run rc, rg;
    REQUIRE(model_run(c, path, 0, &rc, &err) == 0);
    int ok = model_run(g, path, 0, &rg, &err) == 0;
    CHECKF(ok, "%s on the GPU: %s", arch, err.msg);
    if (ok) {
        double e = fabs(rg.loss[0] - rc.loss[0]) / rc.loss[0], ge = relerr(rg.grads, rc.grads, rc.numel);
        static const char *names[] = {"f32", "bf16", "f16"};
        printf("    %s %s model, %s on the GPU: loss %.7f vs %.7f (rel %.2g), LoRA grads rel %.2g\n", arch, mdt,
               names[g->weight_dtype], rg.loss[0], rc.loss[0], e, ge);
        if (!strcmp(mdt, "f16")) CHECK_EQ_INT(g->weight_dtype, KB_F16);
        CHECKF(e <= loss_tol, "%s loss rel err %.3g > %g", arch, e, loss_tol);
        CHECKF(ge <= grad_tol, "%s LoRA grads rel err %.3g > %g", arch, ge, grad_tol);
    }
    free(rc.grads), free(rg.grads);
    kb_destroy(c), kb_destroy(g);
}

#define GRADS_TEST(arch)                                                       \
    TEST(grads_##arch) {                                                       \
        NEED_GPU(g, KB_F32);                                                   \
        kb_destroy(g);                                                         \
        grads_case(#arch, "f32", KB_F32, 1e-5, 1e-4);                          \
        grads_case(#arch, "bf16", KB_BF16, 1e-3, 5e-2);                        \
        grads_case(#arch, "f16", KB_BF16, 1e-3, 5e-2);                         \
    }
GRADS_TEST(llama)
GRADS_TEST(mistral)
GRADS_TEST(qwen2)
GRADS_TEST(gpt2)

TEST(train_50_steps_tracks_cpu) {
    NEED_GPU(g0, KB_F32);
    kb_destroy(g0);
    const char *dir = test_tmpdir();
    char path[600];
    snprintf(path, sizeof path, "%s/train-llama", dir);
    REQUIRE(mkmodel(path, "llama", "bf16") == 0);
    for (int k = 0; k < 2; k++) {
        kb_dtype wdt = k ? KB_BF16 : KB_F32;
        double tol = k ? 2e-2 : 1e-3;
        kb_backend *c = cpu(), *g = gpu(wdt);
        lr_err err = {0};
        run rc, rg;
        REQUIRE(model_run(c, path, 50, &rc, &err) == 0);
        int ok = model_run(g, path, 50, &rg, &err) == 0;
        CHECKF(ok, "GPU run: %s", err.msg);
        double worst = 0;
        for (int s = 0; ok && s < 50; s++) {
            double e = fabs(rg.loss[s] - rc.loss[s]) / rc.loss[s];
            if (e > worst) worst = e;
        }
        if (ok) {
            printf("    %s: loss %.4f -> %.4f (cpu %.4f -> %.4f), worst step rel diff %.2g\n", k ? "bf16" : "f32",
                   rg.loss[0], rg.loss[49], rc.loss[0], rc.loss[49], worst);
            CHECKF(worst <= tol, "loss curves differ by %.3g > %g", worst, tol);
            CHECK(rc.loss[49] < rc.loss[0] * 0.9); /* it learns */
        }
        free(rc.grads), free(rg.grads);
        kb_destroy(c), kb_destroy(g);
    }
}

/* ---- co-training on the GPU ---- */

/* Attaches an r-rank adapter (dropout on, B random so that every gradient
 * is non-zero) and moves it into a new slot *s. */
static int pack_adapter(model *m, int r, uint64_t seed, model_slot **s, lr_err *err) {
    model_lora_cfg lc = {.r = r, .alpha = 16, .dropout = 0.1f, .n_targets = 1};
    snprintf(lc.targets[0], sizeof lc.targets[0], "all-linear");
    if (model_lora_init(m, &lc, seed, err)) return -1;
    for (size_t i = 0; i < model_n_params(m); i++) {
        const model_param *p = model_param_at(m, i);
        if (!strstr(p->name, "lora_B")) continue;
        rng_state = seed * 100 + i;
        float *v = rnd(p->numel, 0.05f);
        int e = model_param_set(m, i, v, p->numel, err);
        free(v);
        if (e) return -1;
    }
    if (model_slot_new(m, s, err)) return -1;
    model_slot_swap(m, *s); /* the model keeps no adapter */
    return 0;
}

/* A host copy of the slot's gradients, *n floats. */
static float *slot_grads(kb_backend *be, model *m, model_slot *s, size_t *n) {
    model_slot_swap(m, s);
    *n = model_numel(m);
    float *h = get(be, model_grads(m), *n);
    model_slot_swap(m, s);
    return h;
}
static void slot_zero(model *m, model_slot *s) {
    model_slot_swap(m, s);
    model_zero_grad(m);
    model_slot_swap(m, s);
}

/* Two adapters (r 4 and 8, different sequence lengths) in slots of one
 * llama model on the GPU: their packed pass (model_fwd_bwd_pack) against
 * each alone (model_fwd_bwd with it swapped in), same dropout streams.
 * Loss sums 1e-6, gradients 1e-5, not bit for bit: cuBLAS may block a
 * GEMM differently for the packed pass's row count. */
TEST(pack_equals_alone_on_the_gpu) {
    NEED_GPU(g, KB_F32);
    const char *dir = test_tmpdir();
    char path[600];
    snprintf(path, sizeof path, "%s/pack-llama", dir);
    REQUIRE(mkmodel(path, "llama", "f32") == 0);
    lr_err err = {0};
    model *m = NULL;
    model_slot *s[2] = {NULL, NULL};
    int Bs[2] = {2, 1}, Ts[2] = {24, 40}, V = 0;
    int32_t ids[2][48], labels[2][48];
    double alone[2];
    float *ga[2] = {NULL, NULL};
    size_t n[2];
    int ok = model_load(path, g, &m, &err) == 0 && pack_adapter(m, 4, 3, &s[0], &err) == 0 &&
             pack_adapter(m, 8, 5, &s[1], &err) == 0;
    CHECKF(ok, "setting up the pack: %s", err.msg);
    if (ok) V = model_config(m)->vocab_size;
    for (int k = 0; ok && k < 2; k++) {
        for (int i = 0; i < Bs[k] * Ts[k]; i++) {
            ids[k][i] = (int)(lr_mix64((uint64_t)k * 1000 + i) % V);
            labels[k][i] = i % 5 == 0 ? -100 : ids[k][i];
        }
        int64_t nt;
        slot_zero(m, s[k]);
        model_slot_set_train(s[k], 1, 100 + k);
        model_slot_swap(m, s[k]);
        ok = model_fwd_bwd(m, ids[k], labels[k], Bs[k], Ts[k], 1.0f, &alone[k], &nt, &err) == 0;
        model_slot_swap(m, s[k]);
        CHECKF(ok, "adapter %d alone: %s", k, err.msg);
        if (ok) ga[k] = slot_grads(g, m, s[k], &n[k]);
    }
    model_pack_mb mb[2];
    for (int k = 0; ok && k < 2; k++) {
        slot_zero(m, s[k]);
        model_slot_set_train(s[k], 1, 100 + k); /* the same dropout masks as alone */
        mb[k] = (model_pack_mb){.slot = s[k], .ids = ids[k], .labels = labels[k], .B = Bs[k], .T = Ts[k],
                                .grad_scale = 1.0f};
    }
    if (ok) {
        ok = model_fwd_bwd_pack(m, mb, 2, &err) == 0;
        CHECKF(ok, "packed pass on the GPU: %s", err.msg);
    }
    for (int k = 0; ok && k < 2; k++) {
        size_t np;
        float *gp = slot_grads(g, m, s[k], &np);
        double le = fabs(mb[k].loss_sum - alone[k]) / fabs(alone[k]), ge = relerr(gp, ga[k], np);
        printf("    adapter %d: loss sum %.7f packed, %.7f alone (rel %.2g); LoRA grads rel %.2g\n", k,
               mb[k].loss_sum, alone[k], le, ge);
        CHECK_EQ_INT((int)np, (int)n[k]);
        CHECKF(le <= 1e-6, "adapter %d: packed loss rel err %.3g", k, le);
        CHECKF(ge <= 1e-5, "adapter %d: packed grads rel err %.3g", k, ge);
        free(gp);
    }
    for (int k = 0; k < 2; k++) {
        free(ga[k]);
        if (s[k]) model_slot_free(m, s[k]);
    }
    model_free(m);
    kb_destroy(g);
}
