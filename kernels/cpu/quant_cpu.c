/* quant_cpu: tile-dequantizing products with 4-bit weights (see quant_cpu.h). */
#include "kernels/cpu/quant_cpu.h"

#include <omp.h>

#include "kernels/cpu/gemm_select.h"

size_t kq_cpu_scratch(const kq_weight *q, int nt) {
    size_t big = (size_t)(q->rows > q->cols ? q->rows : q->cols);
    return (size_t)(nt > 0 ? nt : 1) * KQ_CPU_TILE * big;
}

/* Inside an enclosing parallel region the tiles run on the calling thread. */
static int threads_for(int nt, int tiles) {
    if (omp_in_parallel()) return 1;
    return nt < tiles ? nt : tiles;
}

void kq_cpu_xwt(int nt, const kq_weight *q, const float *x, int N, float *z, int acc, float *scratch) {
    int rows = (int)q->rows, cols = (int)q->cols, tiles = (rows + KQ_CPU_TILE - 1) / KQ_CPU_TILE;
    kg_sgemm_fn sgemm = kg_current()->sgemm;
#pragma omp parallel for num_threads(threads_for(nt, tiles)) schedule(static)
    for (int t = 0; t < tiles; t++) {
        int r0 = t * KQ_CPU_TILE, nr = rows - r0 < KQ_CPU_TILE ? rows - r0 : KQ_CPU_TILE;
        float *tile = scratch + (size_t)omp_get_thread_num() * KQ_CPU_TILE * cols;
        kq_dequant_tile(q, r0, nr, 0, cols, tile);
        sgemm(0, 1, N, nr, cols, 1.0f, x, cols, tile, cols, acc ? 1.0f : 0.0f, z + r0, rows);
    }
}

void kq_cpu_gw(int nt, const kq_weight *q, const float *g, int N, float *dx, int acc, float *scratch) {
    int rows = (int)q->rows, cols = (int)q->cols, tiles = (cols + KQ_CPU_TILE - 1) / KQ_CPU_TILE;
    kg_sgemm_fn sgemm = kg_current()->sgemm;
#pragma omp parallel for num_threads(threads_for(nt, tiles)) schedule(static)
    for (int t = 0; t < tiles; t++) {
        int c0 = t * KQ_CPU_TILE, nc = cols - c0 < KQ_CPU_TILE ? cols - c0 : KQ_CPU_TILE;
        float *tile = scratch + (size_t)omp_get_thread_num() * KQ_CPU_TILE * rows;
        kq_dequant_tile(q, 0, rows, c0, nc, tile);
        sgemm(0, 0, N, nc, rows, 1.0f, g, rows, tile, nc, acc ? 1.0f : 0.0f, dx + c0, cols);
    }
}
