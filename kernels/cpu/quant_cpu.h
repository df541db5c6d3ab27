/* quant_cpu: matrix products with a 4-bit weight (kernels/quant.h) on the
 * CPU, dequantizing one tile of the weight at a time into f32 and handing
 * it to the sgemm kernel, so that the whole weight never exists in f32.
 *
 * Tiles have a fixed size, each output element comes from one sgemm call
 * over the whole reduction dimension, and tiles are spread over the
 * threads: results do not depend on the thread count. The caller provides
 * the tile scratch (kq_cpu_scratch floats). */
#ifndef LR_QUANT_CPU_H
#define LR_QUANT_CPU_H

#include <stddef.h>
#include "kernels/quant.h"

/* Rows (forward) or columns (input gradient) of W per tile. */
#define KQ_CPU_TILE 64

/* Scratch floats the two products need with nt threads. */
size_t kq_cpu_scratch(const kq_weight *q, int nt);

/* z[N, rows] = x[N, cols] W^T, or z += that when acc. */
void kq_cpu_xwt(int nt, const kq_weight *q, const float *x, int N, float *z, int acc, float *scratch);

/* dx[N, cols] = g[N, rows] W, or dx += that when acc. */
void kq_cpu_gw(int nt, const kq_weight *q, const float *g, int N, float *dx, int acc, float *scratch);

#endif
