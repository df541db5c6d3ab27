/* quant_cuda: 4-bit weights (kernels/quant.h) dequantized on an NVIDIA GPU,
 * one tile of rows at a time, into bf16 (the operand of the tensor-core
 * GemmEx with f32 accumulation) or f32. The per-element arithmetic is
 * quant.h's LR_HD functions, which the CPU path and tests/unit/test_quant.c
 * run too: the f32 values are bit for bit the CPU's, the bf16 ones those
 * rounded to nearest even.
 *
 * Built only with nvcc (LR_HAVE_CUDA). The CUDA backend's linear ops and
 * DoRA norm call it on each tile of a 4-bit weight (backend_cuda.cu). */
#ifndef LR_QUANT_CUDA_H
#define LR_QUANT_CUDA_H

#include <stdint.h>
#include "common/err.h"
#include "kernels/quant.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Rows [r0, r0 + nr) of q (its arrays in device memory) into dst [nr,
 * q->cols] (device memory), bf16 when bf16 else f32, queued on stream (a
 * cudaStream_t; NULL: the default stream). */
int kq_cuda_dequant(const kq_weight *q, int64_t r0, int64_t nr, void *dst, int bf16, void *stream,
                    lr_err *err) LR_WARN_UNUSED;

#ifdef __cplusplus
}
#endif

#endif
