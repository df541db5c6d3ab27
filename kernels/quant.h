/* quant: bitsandbytes' 4-bit blockwise quantization (QLoRA's NF4, and FP4)
 * of frozen base weights, with optional double quantization of the scales.
 *
 * The algorithm is that of bitsandbytes' reference PyTorch backend
 * (bitsandbytes/backends/default/ops.py, quantize_4bit / dequantize_4bit,
 * quantize_blockwise; functional.py, quantize_4bit with
 * compress_statistics), step for step in f32, so that codes, scales and
 * dequantized values are bit-identical to it (tests/reference/bnb_quant.py
 * restates it and tests/unit/test_quant.c compares):
 *  - the weight, flattened row-major as [out, in], is cut into blocks of 64;
 *    absmax = max |w| of the block; s = clamp(w * (1 / max(absmax, 1e-38)),
 *    -1, 1) (a last, shorter block: absmax clamped to 1e-38 and stored so,
 *    s = clamp(w / absmax, -1, 1));
 *  - the code is the index of the first midpoint of the sorted code book
 *    that is >= s (torch.bucketize: an exact tie goes to the lower value);
 *    FP4's book is not sorted, so the index in sorted order maps back
 *    through the stable argsort (an exact 0 is code 0, +0.0);
 *  - two codes per byte, the first element in the high nibble;
 *  - dequantized w = book[code] * absmax, one f32 product;
 *  - double quantization: offset = mean(absmax), the absmax - offset values
 *    quantized blockwise in blocks of 256 to 8 bits with the signed dynamic
 *    map (create_dynamic_map()), the same way (their own absmax per block,
 *    bucketize on the map's midpoints); a scale is then
 *    (dyn[q] * nested_absmax[i / 256]) + offset, two f32 roundings.
 *    The one step not copied bit for bit is the mean: torch's f32 reduction
 *    order is its own, here it is summed in double and rounded once (a
 *    checkpoint's stored nested_offset is used as is).
 *
 * Per-element functions are __host__ __device__ (LR_HD, as in elem.h), so
 * that the CUDA dequant kernel (kernels/cuda/quant_cuda.cu) and the CPU
 * tiles compute the same values. */
#ifndef LR_QUANT_H
#define LR_QUANT_H

#include <stddef.h>
#include <stdint.h>
#include "common/err.h"
#include "kernels/elem.h"

#define KQ_BLOCK 64          /* bitsandbytes' default blocksize for 4-bit weights */
#define KQ_NESTED_BLOCK 256  /* blocksize of the double quantization of absmax */

typedef enum { KQ_NONE = 0, KQ_NF4 = 1, KQ_FP4 = 2 } kq_type;

/* A 4-bit weight W [rows, cols] (a linear layer's [out, in]; GPT-2's
 * Conv1D weights are transposed before quantizing, as transformers does).
 * The arrays are backend memory; the code books are copied in (from the
 * built-in tables or from a checkpoint's quant_map / nested_quant_map). */
typedef struct kq_weight {
    kq_type type;
    int64_t rows, cols;
    const uint8_t *codes;   /* [(rows * cols + 1) / 2], two per byte, high nibble first */
    const float *absmax;    /* [nblocks], or NULL with double quantization */
    const uint8_t *qabsmax; /* [nblocks] 8-bit scales (double quantization) */
    const float *nabsmax;   /* [ceil(nblocks / 256)] */
    float offset;           /* mean of the scales (double quantization) */
    float book[16];         /* the 4-bit code book (NF4 or FP4 values in [-1, 1]) */
    float nbook[256];       /* the 8-bit dynamic map of the scales */
} kq_weight;

/* Sizes of the arrays of an n-element weight. */
static inline size_t kq_code_bytes(size_t n) { return (n + 1) / 2; }
static inline size_t kq_nblocks(size_t n) { return (n + KQ_BLOCK - 1) / KQ_BLOCK; }
static inline size_t kq_nested_nblocks(size_t n) { return (kq_nblocks(n) + KQ_NESTED_BLOCK - 1) / KQ_NESTED_BLOCK; }
/* Bytes the weight takes: codes + f32 scales, or codes + 8-bit scales +
 * f32 nested scales with double quantization. */
static inline size_t kq_bytes(size_t n, int nested) {
    return kq_code_bytes(n) + (nested ? kq_nblocks(n) + 4 * kq_nested_nblocks(n) : 4 * kq_nblocks(n));
}

/* f32 product and sum without contraction into an FMA (nvcc contracts by
 * default; bitsandbytes rounds each step). */
LR_HD static inline float kq_mul(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fmul_rn(a, b);
#else
    return a * b;
#endif
}
LR_HD static inline float kq_add(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fadd_rn(a, b);
#else
    return a + b;
#endif
}

/* The code of element i from the packed bytes. */
LR_HD static inline int kq_code_at(const uint8_t *codes, size_t i) {
    uint8_t b = codes[i >> 1];
    return (i & 1) ? (b & 0x0F) : (b >> 4);
}

/* The scale of block b (of KQ_BLOCK elements). */
LR_HD static inline float kq_scale_at(const kq_weight *q, size_t b) {
    if (q->absmax) return q->absmax[b];
    return kq_add(kq_mul(q->nbook[q->qabsmax[b]], q->nabsmax[b / KQ_NESTED_BLOCK]), q->offset);
}

/* Dequantized element i given its block's scale. */
LR_HD static inline float kq_dequant_elem(const kq_weight *q, size_t i, float scale) {
    return kq_mul(q->book[kq_code_at(q->codes, i)], scale);
}

/* torch.bucketize(x, bounds) (right = False): the first i with
 * bounds[i] >= x, n if none; bounds sorted ascending, n >= 1. Branch-free
 * halving (the answer stays in [lo, lo + len]): a data-dependent branch
 * per step mispredicts half the time. */
LR_HD static inline int kq_bucket(const float *bounds, int n, float x) {
    int lo = 0, len = n;
    while (len > 1) {
        int half = len / 2;
        lo += bounds[lo + half - 1] < x ? half : 0;
        len -= half;
    }
    return lo + (bounds[lo] < x);
}

/* The scaled value of one element of a full block: clamp(x * inv, -1, 1)
 * with inv = 1 / max(absmax, 1e-38). */
LR_HD static inline float kq_scaled(float x, float inv) {
    float s = kq_mul(x, inv);
    return s < -1.0f ? -1.0f : s > 1.0f ? 1.0f : s;
}

/* ---- host API (kernels/quant.c) ---- */

#ifdef __cplusplus
extern "C" {
#endif

/* The built-in code books: bitsandbytes' get_4bit_type(type) (NF4, or FP4
 * normalised by 12) and create_dynamic_map() (signed, 8 bits). */
void kq_book(kq_type type, float book[16]);
const float *kq_dynamic_map(void);

/* "nf4", "fp4", "none" (and NULL) <-> kq_type; parse returns -1 on other names. */
int kq_type_parse(const char *name, kq_type *out);
const char *kq_type_name(kq_type t);

/* Quantizes w [n] (f32) blockwise: codes [kq_code_bytes(n)], and either
 * absmax [kq_nblocks(n)] (qabsmax == NULL) or, with double quantization,
 * qabsmax [kq_nblocks(n)], nabsmax [kq_nested_nblocks(n)] and *offset.
 * absmax is also the f32 scratch of the double quantization, so it must be
 * given in both cases. Runs over threads OpenMP threads (the result does
 * not depend on their number). */
void kq_quantize(kq_type type, const float *w, size_t n, uint8_t *codes, float *absmax, uint8_t *qabsmax,
                 float *nabsmax, float *offset, int threads);

/* Dequantizes elements [i0, i0 + len) of q (flat row-major index) into dst
 * (host memory). */
void kq_dequant_range(const kq_weight *q, size_t i0, size_t len, float *dst);

/* Dequantizes the column slice [c0, c0 + nc) of rows [r0, r0 + nr) into
 * dst [nr, nc] (host memory). */
void kq_dequant_tile(const kq_weight *q, int64_t r0, int64_t nr, int64_t c0, int64_t nc, float *dst);

#ifdef __cplusplus
}
#endif

#endif
