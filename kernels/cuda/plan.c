/* plan: host-side decisions of the CUDA backend (see plan.h). */
#include "kernels/cuda/plan.h"

#include "kernels/quant.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

unsigned cuplan_grid(size_t n, int threads, int sm_count) {
    size_t need = (n + (size_t)threads - 1) / (size_t)threads;
    size_t cap = (size_t)(sm_count > 0 ? sm_count : 1) * 16;
    if (need > cap) need = cap;
    return need ? (unsigned)need : 1u;
}

int cuplan_attention(int B, int T, int Hq, int Hkv, int D, size_t smem_optin, cuplan_attn *out, lr_err *err) {
    memset(out, 0, sizeof *out);
    if (D < 1 || D > CUPLAN_ATT_MAX_D)
        return lr_errf(err, "attention: head dim %d is not supported by the CUDA backend (1..%d)", D,
                       CUPLAN_ATT_MAX_D);
    if (B < 1 || T < 1 || Hq < 1 || Hkv < 1 || Hq % Hkv)
        return lr_errf(err, "attention: bad shape B=%d T=%d Hq=%d Hkv=%d", B, T, Hq, Hkv);
    out->dc = D <= 64 ? 2 : D <= 128 ? 4 : 8;
    out->q_tiles = (unsigned)((T + CUPLAN_ATT_ROWS - 1) / CUPLAN_ATT_ROWS);
    size_t R = CUPLAN_ATT_ROWS, f = sizeof(float);
    out->smem_fwd = (R * D * 2 + R * (D + 1)) * f;
    out->smem_dkv = (R * D * 2 + R * (D + 1) * 2 + 2 * R) * f;
    out->smem_dq = (R * D * 2 + R * (D + 1) * 2) * f;
    out->ws_bytes = (size_t)B * Hq * T * f;
    size_t worst = out->smem_dkv;
    if (worst > smem_optin)
        return lr_errf(err, "attention: head dim %d needs %zu KiB of shared memory per block, this GPU allows %zu KiB",
                       D, worst >> 10, smem_optin >> 10);
    return 0;
}

int cuplan_attention_tc(int T, int D, size_t smem_optin, cuplan_attn_tc *out) {
    memset(out, 0, sizeof *out);
    if (T < 1 || D < 16 || D > CUPLAN_TC_MAX_D || D % 16) return 0;
    size_t R = CUPLAN_TC_ROWS, Q = CUPLAN_TC_DKV_Q, LD = (size_t)D + CUPLAN_TC_PAD, h = 2; /* bf16 */
    out->kd = D <= 64 ? 4 : 8;
    out->tiles = (unsigned)((T + CUPLAN_TC_ROWS - 1) / CUPLAN_TC_ROWS);
    /* forward: Q, K rows and V transposed; dQ: Q, dO, K, V rows and K
     * transposed; dK/dV: K, V rows, Q, dO rows and both transposed, lse and di */
    out->smem_fwd = (2 * R * LD + (size_t)D * (R + CUPLAN_TC_PAD)) * h;
    out->smem_dq = (4 * R * LD + (size_t)D * (R + CUPLAN_TC_PAD)) * h;
    out->smem_dkv = (2 * R * LD + 2 * Q * LD + 2 * (size_t)D * (Q + CUPLAN_TC_PAD)) * h + 2 * Q * sizeof(float);
    return out->smem_dq <= smem_optin && out->smem_dkv <= smem_optin;
}

static size_t carve(size_t *off, size_t bytes) {
    size_t at = (*off + CUPLAN_ALIGN - 1) / CUPLAN_ALIGN * CUPLAN_ALIGN;
    *off = at + bytes;
    return at;
}

size_t cuplan_dtype_size(kb_dtype dt) { return dt == KB_F32 ? 4 : 2; }

void cuplan_linear_layout(kb_dtype wdt, int N, int in, int out, int r, int dropout, int dora, int backward,
                          cuplan_linear *o) {
    size_t off = 0, n = (size_t)N;
    o->x_lowp = o->drop = o->dh = o->dz = o->zb = o->part = o->qtile = SIZE_MAX;
    o->qrows = 0;
    dora = dora && r > 0;
    int lw = backward ? (dora && in > out ? in : out) : in;
    if (wdt != KB_F32) o->x_lowp = carve(&off, n * (size_t)lw * cuplan_dtype_size(wdt));
    if (r > 0 && dropout) o->drop = carve(&off, n * (size_t)in * sizeof(float));
    if (r > 0 && backward) o->dh = carve(&off, n * (size_t)r * sizeof(float));
    if (dora) o->dz = carve(&off, n * (size_t)out * sizeof(float));
    if (dora && dropout && !backward) o->zb = carve(&off, n * (size_t)out * sizeof(float));
    if (dora && backward)
        o->part = carve(&off, (n + CUPLAN_DORA_ROWS - 1) / CUPLAN_DORA_ROWS * (size_t)out * sizeof(double));
    o->total = off;
}

void cuplan_linear_q4(kb_dtype tdt, int in, int out, cuplan_linear *o) {
    size_t off = o->total, es = cuplan_dtype_size(tdt);
    o->qrows = cuplan_q4_rows(out, in, es, CUPLAN_Q4_BUDGET);
    o->qtile = carve(&off, (size_t)o->qrows * (size_t)in * es);
    o->total = off;
}

int cuplan_dora_rows(int in, int out, size_t budget) {
    size_t rows = budget / ((size_t)(in > 0 ? in : 1) * sizeof(float));
    if (rows > (size_t)out) rows = (size_t)out;
    return rows ? (int)rows : 1;
}

void cuplan_ce_layout(kb_dtype wdt, int n_valid, int C, int V, int chunk_rows, size_t budget, int kl, cuplan_ce *o) {
    size_t es = cuplan_dtype_size(wdt);
    size_t per_row = (size_t)V * (sizeof(float) * (kl ? 2 : 1) + (wdt != KB_F32 ? es : 0));
    long long cr = chunk_rows > 0 ? chunk_rows : (long long)(budget / per_row);
    if (chunk_rows <= 0 && cr > 16) cr -= cr % 16; /* tensor-core friendly */
    if (cr < 16) cr = 16;
    if (cr > n_valid) cr = n_valid;
    if (cr < 1) cr = 1;
    o->chunk = (int)cr;
    size_t off = 0, nv = (size_t)(n_valid > 0 ? n_valid : 1), m = (size_t)cr;
    o->rows = carve(&off, nv * sizeof(int32_t));
    o->tgt = carve(&off, nv * sizeof(int32_t));
    o->loss = carve(&off, nv * sizeof(double));
    o->hit = carve(&off, nv * sizeof(int32_t));
    o->xc = carve(&off, m * (size_t)C * es);
    o->logits = carve(&off, m * (size_t)V * sizeof(float));
    o->dlg = wdt != KB_F32 ? carve(&off, m * (size_t)V * es) : SIZE_MAX;
    o->dxc = carve(&off, m * (size_t)C * sizeof(float));
    o->klv = o->xr = o->ref = SIZE_MAX;
    if (kl) {
        o->klv = carve(&off, nv * sizeof(double));
        o->xr = carve(&off, m * (size_t)C * es);
        o->ref = carve(&off, m * (size_t)V * sizeof(float));
    }
    o->total = off;
}

/* ---- conversions ---- */

static uint32_t bits_of(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
static float float_of(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t cuplan_f32_to_bf16(float f) {
    uint32_t u = bits_of(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float cuplan_bf16_to_f32(uint16_t h) { return float_of((uint32_t)h << 16); }

uint16_t cuplan_f32_to_f16(float f) {
    uint32_t u = bits_of(f);
    uint32_t sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* rounds to >= 65520: inf */
    if (a < 0x38800000u) {                                   /* below 2^-14: subnormal or zero */
        if (a < 0x33000000u) return (uint16_t)sign;          /* below half the smallest subnormal */
        uint32_t mant = (a & 0x7fffffu) | 0x800000u;
        int shift = 126 - (int)(a >> 23); /* to units of 2^-24: 14..24 */
        uint32_t q = mant >> shift, rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1u))) q++;
        return (uint16_t)(sign | q);
    }
    uint32_t q = ((a >> 13) - (112u << 10));
    uint32_t rem = a & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (q & 1u))) q++;
    return (uint16_t)(sign | q);
}

float cuplan_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0) {
        float v = ldexpf((float)m, -24);
        return sign ? -v : v;
    }
    if (e == 31) return float_of(sign | 0x7f800000u | (m << 13));
    return float_of(sign | ((e + 112u) << 23) | (m << 13));
}

void cuplan_convert(kb_dtype dt, void *dst, const float *src, size_t n) {
    if (dt == KB_F32) {
        if (n) memcpy(dst, src, n * sizeof(float));
        return;
    }
    uint16_t *d = dst;
    for (size_t i = 0; i < n; i++) d[i] = dt == KB_BF16 ? cuplan_f32_to_bf16(src[i]) : cuplan_f32_to_f16(src[i]);
}

/* ---- device peaks ---- */

/* Datasheet dense bf16 (f32 accumulate) tensor TFLOP/s. Order matters: a
 * name is matched by its first entry that it contains. */
static const struct {
    const char *key;
    double tflops;
} peaks[] = {
    {"H100 PCIe", 756.0}, {"H100 NVL", 835.0}, {"GH200", 989.4}, {"H200", 989.4}, {"H100", 989.4},
    {"H800", 989.4},      {"H20", 148.0},      {"B200", 2250.0}, {"A100", 312.0}, {"A800", 312.0},
    {"A10G", 70.0},       {"A10", 125.0},      {"L40S", 362.0},  {"L40", 181.0},  {"L4", 121.0},
    {"RTX A6000", 154.8}, {"RTX 6000 Ada", 364.2}, {"RTX 4090", 165.2}, {"RTX 3090", 71.0},
};

double cuplan_peak_bf16(const char *name, int cc_major, int cc_minor, int sm_count, int clock_khz) {
    for (size_t i = 0; name && i < sizeof peaks / sizeof peaks[0]; i++)
        if (strstr(name, peaks[i].key)) return peaks[i].tflops * 1e12;
    /* dense bf16 FLOPs per SM per clock of each tensor-core generation */
    double per_clk = 0;
    if (cc_major == 8 && cc_minor == 0) per_clk = 2048;
    else if (cc_major == 8) per_clk = 1024;
    else if (cc_major == 9) per_clk = 4096;
    else if (cc_major == 10) per_clk = 8192;
    return per_clk * (double)sm_count * (double)clock_khz * 1e3;
}

/* ---- FLOPs and memory ---- */

static double layer_matmul_params(const cuplan_shape *s) {
    double C = s->C, q = (double)s->Hq * s->D, kv = (double)s->Hkv * s->D;
    return C * q + 2 * C * kv + q * C + (s->gated ? 3.0 : 2.0) * C * s->I;
}

double cuplan_matmul_params(const cuplan_shape *s) {
    return s->layers * layer_matmul_params(s) + (double)s->V * s->C;
}

double cuplan_flops_per_token(const cuplan_shape *s, int T) {
    return 4.0 * cuplan_matmul_params(s) + 6.0 * s->layers * (double)s->Hq * s->D * (T + 1.0);
}

int cuplan_q4_rows(int rows, int cols, size_t elem, size_t budget) {
    size_t fit = budget / ((size_t)(cols > 0 ? cols : 1) * (elem ? elem : 1));
    if (fit > 64) fit -= fit % 64;
    if (fit > (size_t)rows) fit = (size_t)rows;
    return fit ? (int)fit : 1;
}

/* Bytes of one layer's linear weights held 4-bit: each matrix has its own
 * blocks (a last short one included), so each is counted apart. */
static double layer_q4_bytes(const cuplan_shape *s, int double_quant) {
    size_t C = (size_t)s->C, q = (size_t)s->Hq * s->D, kv = (size_t)s->Hkv * s->D, I = (size_t)s->I;
    return (double)(2 * kq_bytes(C * q, double_quant) + 2 * kq_bytes(C * kv, double_quant) +
                    (s->gated ? 3 : 2) * kq_bytes(C * I, double_quant));
}

void cuplan_train_memory(const cuplan_shape *s, kb_dtype wdt, int quant, int double_quant, int B, int T, int r,
                         int checkpointing, cuplan_mem *o) {
    double es = (double)cuplan_dtype_size(wdt), N = (double)B * T, C = s->C, I = s->I;
    double q = (double)s->Hq * s->D, kv = (double)s->Hkv * s->D;
    double emb = (double)s->V * C * (s->tied ? 1 : 2);
    double linears = s->layers * (quant != KQ_NONE ? layer_q4_bytes(s, double_quant) : layer_matmul_params(s) * es);
    o->weights = linears + (s->layers * 2 * C + emb + C) * es;
    /* rank-r adapters on q, k, v, o and the MLP matrices: p, grad, m, v in f32 */
    double lora_per_layer = r * ((C + q) * 2 + (C + kv) * 2 + (C + I) * (s->gated ? 3 : 2));
    o->lora = s->layers * lora_per_layer * 16.0;
    /* f32 values saved per token by one layer for its backward: the input,
     * two norm outputs and rstd, q k v, attention output and lse, the
     * residual, the MLP's inputs and hidden, LoRA's xa (7 r) */
    double per_tok_layer = 4 * C + 2 + (q + 2 * kv) + q + s->Hq + (s->gated ? 3 : 2) * I + 7.0 * r;
    double layer_act = N * per_tok_layer * 4.0;
    o->activations = checkpointing ? s->layers * N * C * 4.0 + layer_act : s->layers * layer_act;
    /* the backward of one layer (gradients of its activations, twice the
     * forward set), plus bf16 operand copies, LM-head chunk, residual grads */
    double big = I > C ? I : C;
    double ce = (double)CUPLAN_CE_BUDGET + N * C * 4.0 * 2;
    o->working = 2 * layer_act + N * big * 2 * 2 + ce + N * C * 4.0 * 2;
    if (quant != KQ_NONE) { /* the dequantized tile of the widest matrix (bf16, f32 with f32 weights) */
        size_t te = wdt == KB_F32 ? 4 : 2;
        int wide = s->I > s->C ? s->I : s->C, rows = cuplan_q4_rows(wide, s->C, te, CUPLAN_Q4_BUDGET);
        o->working += (double)rows * s->C * (double)te;
    }
    o->total = o->weights + o->lora + o->activations + o->working;
}

void cuplan_oom_message(char *buf, size_t n, const char *what, size_t needed, size_t free_b, size_t total_b,
                        const char *device) {
    const double G = 1024.0 * 1024.0 * 1024.0;
    snprintf(buf, n, "out of GPU memory for %s: needed %.2f GiB, %.2f GiB free of %.1f GiB on %s", what,
             needed / G, free_b / G, total_b / G, device && *device ? device : "the GPU");
}

int cuplan_parse_device(const char *name, int *device, lr_err *err) {
    *device = 0;
    if (!name || strncmp(name, "cuda", 4))
        return lr_errp(err, LR_E_INVALID, "backend", "backend '%s' is not a CUDA device name (cuda:N)",
                       name ? name : "(null)");
    const char *p = name + 4;
    if (!*p) return 0;
    if (*p != ':' || p[1] < '0' || p[1] > '9')
        return lr_errp(err, LR_E_INVALID, "backend", "backend '%s': expected cuda or cuda:N (N = 0, 1, ...)", name);
    char *end;
    errno = 0;
    long v = strtol(p + 1, &end, 10);
    if (*end || errno || v < 0 || v > 1023)
        return lr_errp(err, LR_E_INVALID, "backend", "backend '%s': expected cuda or cuda:N (N = 0, 1, ...)", name);
    *device = (int)v;
    return 0;
}
