/* quant: blockwise 4-bit quantization as bitsandbytes (see quant.h). */
#include "kernels/quant.h"

#include <math.h>
#include <string.h>

/* get_4bit_type("nf4"): create_normal_map(offset=0.9677083), as bitsandbytes
 * hardcodes it. */
static const float NF4[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f,
};
/* get_4bit_type("fp4") before its division by the absolute maximum (12):
 * sign bit, 2 exponent bits, 1 mantissa bit, in bit-pattern order. */
static const float FP4_RAW[16] = {0.0f, 0.0625f, 8.0f, 12.0f, 4.0f, 6.0f, 2.0f, 3.0f,
                                  -0.0f, -0.0625f, -8.0f, -12.0f, -4.0f, -6.0f, -2.0f, -3.0f};

/* create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8), sorted:
 * the f32 values bitsandbytes builds (tests/reference/bnb_quant.py recomputes
 * them with bitsandbytes' code and tests/unit/test_quant.c compares). */
static const float DYN[256] = {
    -0x1.fc6666p-1f, -0x1.f53332p-1f, -0x1.eep-1f, -0x1.e6ccccp-1f,
    -0x1.df9998p-1f, -0x1.d86666p-1f, -0x1.d13334p-1f, -0x1.cap-1f,
    -0x1.c2ccccp-1f, -0x1.bb9998p-1f, -0x1.b46666p-1f, -0x1.ad3332p-1f,
    -0x1.a6p-1f, -0x1.9eccccp-1f, -0x1.979998p-1f, -0x1.906666p-1f,
    -0x1.893334p-1f, -0x1.82p-1f, -0x1.7acccep-1f, -0x1.73999ap-1f,
    -0x1.6c6668p-1f, -0x1.653334p-1f, -0x1.5ep-1f, -0x1.56cccep-1f,
    -0x1.4f999ap-1f, -0x1.486666p-1f, -0x1.413334p-1f, -0x1.3ap-1f,
    -0x1.32ccccp-1f, -0x1.2b999ap-1f, -0x1.246668p-1f, -0x1.1d3334p-1f,
    -0x1.16p-1f, -0x1.0eccccp-1f, -0x1.07999ap-1f, -0x1.006666p-1f,
    -0x1.f26668p-2f, -0x1.e4p-2f, -0x1.d59998p-2f, -0x1.c73334p-2f,
    -0x1.b8ccccp-2f, -0x1.aa6664p-2f, -0x1.9cp-2f, -0x1.8d9998p-2f,
    -0x1.7f3334p-2f, -0x1.70ccccp-2f, -0x1.626664p-2f, -0x1.54p-2f,
    -0x1.459998p-2f, -0x1.373334p-2f, -0x1.28ccccp-2f, -0x1.1a6668p-2f,
    -0x1.0cp-2f, -0x1.fb3334p-3f, -0x1.de6668p-3f, -0x1.c1999ap-3f,
    -0x1.a4ccccp-3f, -0x1.88p-3f, -0x1.6b3332p-3f, -0x1.4e6666p-3f,
    -0x1.31999ap-3f, -0x1.14ccccp-3f, -0x1.fp-4f, -0x1.b66668p-4f,
    -0x1.93d70ap-4f, -0x1.8851eap-4f, -0x1.7ccccep-4f, -0x1.7147aep-4f,
    -0x1.65c29p-4f, -0x1.5a3d7p-4f, -0x1.4eb85p-4f, -0x1.433334p-4f,
    -0x1.37ae14p-4f, -0x1.2c28f6p-4f, -0x1.20a3d6p-4f, -0x1.151ebap-4f,
    -0x1.09999ap-4f, -0x1.fc28f4p-5f, -0x1.e51ebap-5f, -0x1.ce147ap-5f,
    -0x1.b70a3ep-5f, -0x1.ap-5f, -0x1.88f5c2p-5f, -0x1.71eb86p-5f,
    -0x1.5ae146p-5f, -0x1.43d70ap-5f, -0x1.2ccccep-5f, -0x1.15c28ep-5f,
    -0x1.fd70a4p-6f, -0x1.cf5c26p-6f, -0x1.a147aep-6f, -0x1.733334p-6f,
    -0x1.451eb8p-6f, -0x1.170a3ep-6f, -0x1.d1eb86p-7f, -0x1.75c29p-7f,
    -0x1.3e76c8p-7f, -0x1.2c083p-7f, -0x1.19999ap-7f, -0x1.072b02p-7f,
    -0x1.e978d4p-8f, -0x1.c49ba6p-8f, -0x1.9fbe76p-8f, -0x1.7ae148p-8f,
    -0x1.56041ap-8f, -0x1.3126e8p-8f, -0x1.0c49bap-8f, -0x1.ced914p-9f,
    -0x1.851eb8p-9f, -0x1.3b645ap-9f, -0x1.e353f8p-10f, -0x1.4fdf3ap-10f,
    -0x1.eecbfep-11f, -0x1.b3d07cp-11f, -0x1.78d5p-11f, -0x1.3dd982p-11f,
    -0x1.02de02p-11f, -0x1.8fc506p-12f, -0x1.19ce0ap-12f, -0x1.47ae16p-13f,
    -0x1.743e96p-14f, -0x1.15df66p-14f, -0x1.6f0068p-15f, -0x1.64840cp-16f,
    -0x1.040bfep-17f, -0x1.b43528p-19f, -0x1.27476ep-21f, 0.0f,
    0x1.27476ep-21f, 0x1.b43528p-19f, 0x1.040bfep-17f, 0x1.64840cp-16f,
    0x1.6f0068p-15f, 0x1.15df66p-14f, 0x1.743e96p-14f, 0x1.47ae16p-13f,
    0x1.19ce0ap-12f, 0x1.8fc506p-12f, 0x1.02de02p-11f, 0x1.3dd982p-11f,
    0x1.78d5p-11f, 0x1.b3d07cp-11f, 0x1.eecbfep-11f, 0x1.4fdf3ap-10f,
    0x1.e353f8p-10f, 0x1.3b645ap-9f, 0x1.851eb8p-9f, 0x1.ced914p-9f,
    0x1.0c49bap-8f, 0x1.3126e8p-8f, 0x1.56041ap-8f, 0x1.7ae148p-8f,
    0x1.9fbe76p-8f, 0x1.c49ba6p-8f, 0x1.e978d4p-8f, 0x1.072b02p-7f,
    0x1.19999ap-7f, 0x1.2c083p-7f, 0x1.3e76c8p-7f, 0x1.75c29p-7f,
    0x1.d1eb86p-7f, 0x1.170a3ep-6f, 0x1.451eb8p-6f, 0x1.733334p-6f,
    0x1.a147aep-6f, 0x1.cf5c26p-6f, 0x1.fd70a4p-6f, 0x1.15c28ep-5f,
    0x1.2ccccep-5f, 0x1.43d70ap-5f, 0x1.5ae146p-5f, 0x1.71eb86p-5f,
    0x1.88f5c2p-5f, 0x1.ap-5f, 0x1.b70a3ep-5f, 0x1.ce147ap-5f,
    0x1.e51ebap-5f, 0x1.fc28f4p-5f, 0x1.09999ap-4f, 0x1.151ebap-4f,
    0x1.20a3d6p-4f, 0x1.2c28f6p-4f, 0x1.37ae14p-4f, 0x1.433334p-4f,
    0x1.4eb85p-4f, 0x1.5a3d7p-4f, 0x1.65c29p-4f, 0x1.7147aep-4f,
    0x1.7ccccep-4f, 0x1.8851eap-4f, 0x1.93d70ap-4f, 0x1.b66668p-4f,
    0x1.fp-4f, 0x1.14ccccp-3f, 0x1.31999ap-3f, 0x1.4e6666p-3f,
    0x1.6b3332p-3f, 0x1.88p-3f, 0x1.a4ccccp-3f, 0x1.c1999ap-3f,
    0x1.de6668p-3f, 0x1.fb3334p-3f, 0x1.0cp-2f, 0x1.1a6668p-2f,
    0x1.28ccccp-2f, 0x1.373334p-2f, 0x1.459998p-2f, 0x1.54p-2f,
    0x1.626664p-2f, 0x1.70ccccp-2f, 0x1.7f3334p-2f, 0x1.8d9998p-2f,
    0x1.9cp-2f, 0x1.aa6664p-2f, 0x1.b8ccccp-2f, 0x1.c73334p-2f,
    0x1.d59998p-2f, 0x1.e4p-2f, 0x1.f26668p-2f, 0x1.006666p-1f,
    0x1.07999ap-1f, 0x1.0eccccp-1f, 0x1.16p-1f, 0x1.1d3334p-1f,
    0x1.246668p-1f, 0x1.2b999ap-1f, 0x1.32ccccp-1f, 0x1.3ap-1f,
    0x1.413334p-1f, 0x1.486666p-1f, 0x1.4f999ap-1f, 0x1.56cccep-1f,
    0x1.5ep-1f, 0x1.653334p-1f, 0x1.6c6668p-1f, 0x1.73999ap-1f,
    0x1.7acccep-1f, 0x1.82p-1f, 0x1.893334p-1f, 0x1.906666p-1f,
    0x1.979998p-1f, 0x1.9eccccp-1f, 0x1.a6p-1f, 0x1.ad3332p-1f,
    0x1.b46666p-1f, 0x1.bb9998p-1f, 0x1.c2ccccp-1f, 0x1.cap-1f,
    0x1.d13334p-1f, 0x1.d86666p-1f, 0x1.df9998p-1f, 0x1.e6ccccp-1f,
    0x1.eep-1f, 0x1.f53332p-1f, 0x1.fc6666p-1f, 0x1p+0f,
};

void kq_book(kq_type type, float book[16]) {
    if (type == KQ_FP4) {
        for (int i = 0; i < 16; i++) book[i] = FP4_RAW[i] / 12.0f;
    } else {
        memcpy(book, NF4, sizeof NF4);
    }
}

const float *kq_dynamic_map(void) { return DYN; }

int kq_type_parse(const char *name, kq_type *out) {
    if (!name || !strcmp(name, "none")) *out = KQ_NONE;
    else if (!strcmp(name, "nf4")) *out = KQ_NF4;
    else if (!strcmp(name, "fp4")) *out = KQ_FP4;
    else return -1;
    return 0;
}

const char *kq_type_name(kq_type t) { return t == KQ_NF4 ? "nf4" : t == KQ_FP4 ? "fp4" : "none"; }

/* A code book's midpoints in sorted order and, for a book that is not
 * sorted (FP4), the code of each sorted position (a stable argsort). */
typedef struct kq_bounds {
    float mid[255];
    uint8_t order[256];
    int n; /* midpoints */
} kq_bounds;

static void bounds_of(const float *book, int len, kq_bounds *b) {
    int idx[256];
    for (int i = 0; i < len; i++) idx[i] = i;
    for (int i = 1; i < len; i++) { /* insertion sort: stable */
        int k = idx[i], j = i - 1;
        while (j >= 0 && book[idx[j]] > book[k]) {
            idx[j + 1] = idx[j];
            j--;
        }
        idx[j + 1] = k;
    }
    for (int i = 0; i < len; i++) b->order[i] = (uint8_t)idx[i];
    for (int i = 0; i + 1 < len; i++) b->mid[i] = (book[idx[i]] + book[idx[i + 1]]) / 2.0f;
    b->n = len - 1;
}

/* One block of len values of src into codes (cb bits each: 4 packed, or 8):
 * returns the block's stored absmax. A full block scales by the reciprocal,
 * a last shorter one divides by the clamped absmax and stores it clamped
 * (bitsandbytes' default backend does exactly this). */
static float quant_block(const float *src, size_t len, int full, const kq_bounds *b, uint8_t *q) {
    float am = 0.0f;
    for (size_t i = 0; i < len; i++) {
        float a = fabsf(src[i]);
        am = a > am ? a : am;
    }
    float amc = am > 1e-38f ? am : 1e-38f, inv = 1.0f / amc;
    for (size_t i = 0; i < len; i++) {
        float s;
        if (full) {
            s = kq_scaled(src[i], inv);
        } else {
            s = src[i] / amc;
            s = s < -1.0f ? -1.0f : s > 1.0f ? 1.0f : s;
        }
        q[i] = b->order[kq_bucket(b->mid, b->n, s)];
    }
    return full ? am : amc;
}

void kq_quantize(kq_type type, const float *w, size_t n, uint8_t *codes, float *absmax, uint8_t *qabsmax,
                 float *nabsmax, float *offset, int threads) {
    float book[16];
    kq_bounds b4;
    kq_book(type, book);
    bounds_of(book, 16, &b4);
    size_t nb = kq_nblocks(n);
    long long nbl = (long long)nb;
#pragma omp parallel for num_threads(threads > 0 ? threads : 1) schedule(static)
    for (long long bi = 0; bi < nbl; bi++) {
        size_t s = (size_t)bi * KQ_BLOCK, len = n - s < KQ_BLOCK ? n - s : KQ_BLOCK;
        uint8_t q[KQ_BLOCK];
        absmax[bi] = quant_block(w + s, len, len == KQ_BLOCK, &b4, q);
        /* KQ_BLOCK is even, so a block's codes fill whole bytes; an odd
         * total pads with the code of 0.0 */
        if (len % 2) q[len] = b4.order[kq_bucket(b4.mid, b4.n, 0.0f)];
        for (size_t i = 0; i < (len + 1) / 2; i++) codes[s / 2 + i] = (uint8_t)(q[2 * i] << 4 | q[2 * i + 1]);
    }
    if (!qabsmax) return;
    double sum = 0;
    for (size_t i = 0; i < nb; i++) sum += absmax[i];
    float off = (float)(sum / (double)nb);
    *offset = off;
    for (size_t i = 0; i < nb; i++) absmax[i] -= off;
    kq_bounds b8;
    bounds_of(DYN, 256, &b8);
    size_t nn = kq_nested_nblocks(n);
    for (size_t bi = 0; bi < nn; bi++) {
        size_t s = bi * KQ_NESTED_BLOCK, len = nb - s < KQ_NESTED_BLOCK ? nb - s : KQ_NESTED_BLOCK;
        nabsmax[bi] = quant_block(absmax + s, len, len == KQ_NESTED_BLOCK, &b8, qabsmax + s);
    }
}

void kq_dequant_range(const kq_weight *q, size_t i0, size_t len, float *dst) {
    size_t i = i0, end = i0 + len;
    while (i < end) {
        size_t blk = i / KQ_BLOCK, be = (blk + 1) * KQ_BLOCK < end ? (blk + 1) * KQ_BLOCK : end;
        float sc = kq_scale_at(q, blk);
        for (; i < be; i++) *dst++ = kq_dequant_elem(q, i, sc);
    }
}

void kq_dequant_tile(const kq_weight *q, int64_t r0, int64_t nr, int64_t c0, int64_t nc, float *dst) {
    for (int64_t r = 0; r < nr; r++)
        kq_dequant_range(q, (size_t)((r0 + r) * q->cols + c0), (size_t)nc, dst + (size_t)(r * nc));
}
