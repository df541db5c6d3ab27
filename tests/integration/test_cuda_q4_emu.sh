#!/usr/bin/env bash
# The CUDA backend's linear ops on a 4-bit weight (QLoRA) without a GPU: the
# tile loops of kernels/cuda/q4gemm.cuh, which backend_cuda.cu drives with
# kq_cuda_dequant and cuBLAS, are compiled as host C++ with host stand-ins
# (quant.h's CPU dequant into f32 or bf16 tiles; a row-major GEMM with the
# wrapper's arguments) and compared with x W^T and g W computed in double
# from the dequantized weight: tile offsets, leading dimensions, the byte
# offset into a 16-bit operand and beta on the first tile only. Weights
# whose rows do not start on a 64-element block, tiles of 1 row, a short
# last tile and a single tile. Needs g++ and the repo's C compiler.
set -uo pipefail
cd "$(dirname "$0")/../.."
if ! command -v g++ >/dev/null; then echo "skip q4_emu: no g++"; echo "0 passed, 0 failed, 1 skipped"; exit 0; fi
dir=$(mktemp -d /tmp/q4_emu.XXXXXX)
trap 'rm -rf "$dir"' EXIT
cat >"$dir/emu.cpp" <<'CPP'
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>
#include "kernels/quant.h"
#include "kernels/cuda/q4gemm.cuh"

static uint64_t rs = 0x9e3779b97f4a7c15ull;
static float frand() { /* uniform [-1, 1) */
    rs ^= rs << 13, rs ^= rs >> 7, rs ^= rs << 17;
    return (float)((rs >> 40) * (1.0 / 8388608.0) - 1.0);
}
static std::vector<float> rnd(size_t n, float s) {
    std::vector<float> v(n);
    for (auto &x : v) x = frand() * s;
    return v;
}
/* bf16 round to nearest even (finite values), and back */
static uint16_t to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
static float of_bf16(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static float ld(const void *p, size_t i, int bf16) {
    return bf16 ? of_bf16(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

static int pass = 0, fail = 0, calls = 0;
static void report(bool ok, const char *what, double e) {
    (ok ? pass : fail)++;
    printf("%s %s: %.2e\n", ok ? "ok  " : "FAIL", what, e);
}

/* One case: W [out, in] quantized, N rows, tiles of qrows, operand bf16 or f32. */
static void tile_case(int N, int in, int out, int qrows, int bf16, int dq, float beta) {
    size_t n = (size_t)out * in, nb = kq_nblocks(n);
    std::vector<float> W = rnd(n, 0.1f), absmax(nb), nabs(kq_nested_nblocks(n) + 1);
    std::vector<uint8_t> codes(kq_code_bytes(n)), qabs(nb);
    kq_weight q;
    memset(&q, 0, sizeof q);
    q.type = KQ_NF4, q.rows = out, q.cols = in;
    kq_book(KQ_NF4, q.book);
    memcpy(q.nbook, kq_dynamic_map(), sizeof q.nbook);
    kq_quantize(KQ_NF4, W.data(), n, codes.data(), absmax.data(), dq ? qabs.data() : NULL, nabs.data(), &q.offset, 1);
    q.codes = codes.data();
    q.absmax = dq ? NULL : absmax.data();
    q.qabsmax = dq ? qabs.data() : NULL;
    q.nabsmax = dq ? nabs.data() : NULL;
    std::vector<float> Wd(n);
    kq_dequant_range(&q, 0, n, Wd.data());
    size_t es = bf16 ? 2 : 4;
    /* operands as the backend rounds them: x, g and the tiles in the operand dtype */
    auto x = rnd((size_t)N * in, 1), g = rnd((size_t)N * out, 1);
    auto z0 = rnd((size_t)N * out, 1), d0 = rnd((size_t)N * in, 1);
    std::vector<uint8_t> xop((size_t)N * in * es), gop((size_t)N * out * es), tile((size_t)qrows * in * es);
    for (size_t i = 0; i < x.size(); i++)
        if (bf16) ((uint16_t *)xop.data())[i] = to_bf16(x[i]); else ((float *)xop.data())[i] = x[i];
    for (size_t i = 0; i < g.size(); i++)
        if (bf16) ((uint16_t *)gop.data())[i] = to_bf16(g[i]); else ((float *)gop.data())[i] = g[i];
    auto dequant = [&](int r0, int nr, void *t) {
        std::vector<float> f((size_t)nr * in);
        kq_dequant_tile(&q, r0, nr, 0, in, f.data());
        for (size_t i = 0; i < f.size(); i++)
            if (bf16) ((uint16_t *)t)[i] = to_bf16(f[i]); else ((float *)t)[i] = f[i];
        return 0;
    };
    /* the backend's gemm: row-major C[M,N] = alpha op(A) op(B) + beta C, f32 accumulation */
    auto gemm = [&](int ta, int tb, int M, int Nn, int K, float alpha, const void *A, int lda, const void *B, int ldb,
                    float bt, float *C, int ldc) {
        calls++;
        for (int i = 0; i < M; i++)
            for (int j = 0; j < Nn; j++) {
                double s = 0;
                for (int k = 0; k < K; k++)
                    s += (double)ld(A, ta ? (size_t)k * lda + i : (size_t)i * lda + k, bf16) *
                         ld(B, tb ? (size_t)j * ldb + k : (size_t)k * ldb + j, bf16);
                C[(size_t)i * ldc + j] = (float)(alpha * s + bt * C[(size_t)i * ldc + j]);
            }
    };
    auto rw = [&](size_t i) { return bf16 ? of_bf16(to_bf16(Wd[i])) : Wd[i]; };
    auto rv = [&](const std::vector<float> &v, size_t i) { return bf16 ? of_bf16(to_bf16(v[i])) : v[i]; };
    /* forward */
    std::vector<float> z = z0;
    calls = 0;
    q4_xwt(dequant, gemm, N, in, out, qrows, xop.data(), tile.data(), beta, z.data());
    double e = 0, m = 1e-30;
    for (int i = 0; i < N; i++)
        for (int j = 0; j < out; j++) {
            double s = 0;
            for (int k = 0; k < in; k++) s += (double)rv(x, (size_t)i * in + k) * rw((size_t)j * in + k);
            double want = s + beta * z0[(size_t)i * out + j];
            e = std::fmax(e, std::fabs(z[(size_t)i * out + j] - want));
            m = std::fmax(m, std::fabs(want));
        }
    int tiles = (out + qrows - 1) / qrows;
    char what[128];
    snprintf(what, sizeof what, "xwt N%d in%d out%d rows%d %s%s beta%g (%d tiles)", N, in, out, qrows,
             bf16 ? "bf16" : "f32", dq ? " dq" : "", beta, tiles);
    report(e / m < 1e-6 && calls == tiles, what, e / m);
    /* input gradient */
    std::vector<float> dx = d0;
    calls = 0;
    q4_gw(dequant, gemm, N, in, out, qrows, gop.data(), es, tile.data(), beta, dx.data());
    e = 0, m = 1e-30;
    for (int i = 0; i < N; i++)
        for (int k = 0; k < in; k++) {
            double s = 0;
            for (int j = 0; j < out; j++) s += (double)rv(g, (size_t)i * out + j) * rw((size_t)j * in + k);
            double want = s + beta * d0[(size_t)i * in + k];
            e = std::fmax(e, std::fabs(dx[(size_t)i * in + k] - want));
            m = std::fmax(m, std::fabs(want));
        }
    snprintf(what, sizeof what, "gw  N%d in%d out%d rows%d %s%s beta%g (%d tiles)", N, in, out, qrows,
             bf16 ? "bf16" : "f32", dq ? " dq" : "", beta, tiles);
    report(e / m < 1e-6 && calls == tiles, what, e / m);
}

int main() {
    tile_case(5, 70, 200, 64, 0, 0, 0.0f);  /* 64, 64, 64, 8; rows off the 64-element blocks */
    tile_case(5, 70, 200, 64, 1, 1, 1.0f);  /* bf16 operands: byte offsets of 2 */
    tile_case(3, 96, 130, 1, 1, 0, 1.0f);   /* a tile per row */
    tile_case(4, 33, 50, 50, 0, 1, 1.0f);   /* one tile */
    tile_case(7, 128, 300, 128, 1, 0, 0.0f);
    printf("%d passed, %d failed, 0 skipped\n", pass, fail);
    return fail != 0;
}
CPP
cc -std=c11 -O1 -fopenmp -I. -c kernels/quant.c -o "$dir/quant.o" 2>"$dir/cc.log" &&
    g++ -std=c++17 -O1 -fopenmp -Wall -Wextra -Wno-unused-function -I. "$dir/emu.cpp" "$dir/quant.o" \
        -o "$dir/emu" 2>>"$dir/cc.log"
if [ $? -ne 0 ]; then
    cat "$dir/cc.log"
    echo "FAIL q4_emu: the tile loops do not compile as host C++"; echo "0 passed, 1 failed, 0 skipped"; exit 1
fi
"$dir/emu"
