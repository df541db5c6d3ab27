#!/usr/bin/env bash
# The CUDA attention kernels (forward, dK/dV, dQ; the f32 ones and the
# tensor-core ones) without a GPU: kernels/cuda/attention.cuh, the file the
# CUDA backend includes, is compiled as host C++ with one thread per
# CUDA thread (std::barrier stands in for __syncthreads, the warp shuffles and
# the warp-wide mma.sync, whose fragment layout is emulated as the PTX ISA
# documents it) and compared with a float64 causal GQA attention, forward and
# backward, with and without a sliding window. The tensor-core cases feed
# bf16-exact inputs, so what differs from float64 is the kernels' own rounding
# of P and dS to bf16. Launch geometry and shared-memory sizes come from
# plan.c, and the emulation runs under AddressSanitizer, so a tile outgrowing
# its planned shared memory fails. It checks tiling, masking, indexing and
# fragment layouts, not the GPU's arithmetic (test_cuda does that on a GPU).
# Needs g++ with C++20.
set -uo pipefail
cd "$(dirname "$0")/../.."
if ! command -v g++ >/dev/null; then echo "skip attn_emu: no g++"; echo "0 passed, 0 failed, 1 skipped"; exit 0; fi
dir=$(mktemp -d /tmp/attn_emu.XXXXXX)
trap 'rm -rf "$dir"' EXIT
cat >"$dir/emu.cpp" <<'CPP'
// Host emulation of the attention kernels: one std::thread per CUDA thread,
// std::barrier for __syncthreads and for the warp-wide operations.
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>
#include <algorithm>
extern "C" {
#include "kernels/cuda/plan.h"
}
struct dim3 { unsigned x, y, z; };
static thread_local dim3 threadIdx, blockIdx;
static dim3 blockDim, gridDim;
static std::barrier<> *bar;
static std::barrier<> *wbar[4];
static float wslot[4][32];
#define __global__
#define __device__
#define __forceinline__
#define __launch_bounds__(x)
static float *g_sm;
static inline void __syncthreads() { bar->arrive_and_wait(); }
static inline float __shfl_sync(unsigned, float v, int j) {
    int w = threadIdx.x >> 5, l = threadIdx.x & 31;
    wbar[w]->arrive_and_wait(); wslot[w][l] = v; wbar[w]->arrive_and_wait();
    float r = wslot[w][j]; return r;
}
static inline float __shfl_xor_sync(unsigned m, float v, int o) { return __shfl_sync(m, v, (threadIdx.x & 31) ^ o); }
static inline float warp_sum(float v) { for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(~0u, v, o); return v; }
static inline float warp_max(float v) { for (int o = 16; o; o >>= 1) v = fmaxf(v, __shfl_xor_sync(~0u, v, o)); return v; }
// bf16: round to nearest even, as __float2bfloat16_rn (inputs here are finite)
static inline uint16_t tc_bf16(float x) { uint32_t u; memcpy(&u, &x, 4); u += 0x7fffu + ((u >> 16) & 1u); return (uint16_t)(u >> 16); }
static inline float bf16f(uint16_t h) { uint32_t u = (uint32_t)h << 16; float x; memcpy(&x, &u, 4); return x; }
static inline uint32_t ld32(const uint16_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
// mma.sync.m16n8k16.row.col.f32.bf16.bf16.f32, warp-wide: every lane posts
// its fragments, then computes its own four outputs from everybody's, with
// the PTX ISA's element-to-lane mapping (see tc_mma in kernels/cuda/mma.cuh).
static uint32_t wa[4][32][4], wb[4][32][2];
static float a_elem(int w, int row, int k) {
    int lane = 4 * (row & 7) + ((k & 7) >> 1), reg = (row >> 3) + 2 * (k >> 3);
    return bf16f((uint16_t)(wa[w][lane][reg] >> (16 * (k & 1))));
}
static float b_elem(int w, int k, int n) {
    int lane = 4 * n + ((k & 7) >> 1), reg = k >> 3;
    return bf16f((uint16_t)(wb[w][lane][reg] >> (16 * (k & 1))));
}
static void tc_mma(float *d, const uint32_t *a, uint32_t b0, uint32_t b1) {
    int w = threadIdx.x >> 5, l = threadIdx.x & 31, g = l >> 2, t = l & 3;
    wbar[w]->arrive_and_wait();
    memcpy(wa[w][l], a, sizeof wa[w][l]); wb[w][l][0] = b0; wb[w][l][1] = b1;
    wbar[w]->arrive_and_wait();
    for (int i = 0; i < 4; i++) {
        int row = g + 8 * (i >> 1), col = 2 * t + (i & 1);
        float acc = d[i];
        for (int k = 0; k < 16; k++) acc += a_elem(w, row, k) * b_elem(w, k, col);
        d[i] = acc;
    }
}
using std::min;
using std::max;
// a block's dynamic shared memory is the launch's buffer
#define CU_DYN_SMEM(T, name) T *name = (T *)g_sm
#include "kernels/cuda/attention.cuh"
template <typename F> static void launch(dim3 g, int threads, size_t smem, F f) {
    std::vector<float> s((smem + 3) / 4);
    g_sm = s.data();
    gridDim = g; blockDim = {(unsigned)threads, 1, 1};
    for (unsigned by = 0; by < g.y; by++)
        for (unsigned bx = 0; bx < g.x; bx++) {
            std::barrier<> b(threads); bar = &b;
            std::barrier<> w0(32), w1(32), w2(32), w3(32); wbar[0] = &w0; wbar[1] = &w1; wbar[2] = &w2; wbar[3] = &w3;
            std::vector<std::thread> ts;
            for (int t = 0; t < threads; t++) ts.emplace_back([&, t, bx, by] { threadIdx = {(unsigned)t, 0, 0}; blockIdx = {bx, by, 0}; f(); });
            for (auto &t : ts) t.join();
        }
}
static float frand() { return (float)rand() / RAND_MAX * 2 - 1; }
// tc: the tensor-core kernels (bf16-exact inputs, looser tolerance for the
// kernels' bf16 P and dS); else the f32 ones.
static int run(int B, int T, int Hq, int Hkv, int D, int window, int tc) {
    int W = window > 0 && window < T ? window : T; /* as cu_attn_fwd/bwd pass it */
    int ld = (Hq + 2 * Hkv) * D, ldo = Hq * D, N = B * T, G = Hq / Hkv;
    std::vector<float> qkv((size_t)N * ld), dout((size_t)N * ldo), out((size_t)N * ldo), lse((size_t)B * Hq * T), d((size_t)N * ld, 0.f), di((size_t)B*Hq*T);
    for (auto &x : qkv) x = frand() * 1.5f;
    for (auto &x : dout) x = frand();
    if (tc) {
        for (auto &x : qkv) x = bf16f(tc_bf16(x));
        for (auto &x : dout) x = bf16f(tc_bf16(x));
    }
    float *q = qkv.data(), *k = q + Hq * D, *v = k + Hkv * D;
    float scale = 1.0f / sqrtf((float)D);
    cuplan_attn pl;
    cuplan_attn_tc tp;
    lr_err err;
    if (cuplan_attention(B, T, Hq, Hkv, D, 227 << 10, &pl, &err)) { printf("FAIL plan: %s\n", err.msg); return 0; }
    if (tc && !cuplan_attention_tc(T, D, 227 << 10, &tp)) { printf("FAIL tc plan refuses D=%d\n", D); return 0; }
    float *dq = d.data(), *dk = dq + Hq * D, *dv = dk + Hkv * D;
    auto FWD = [&](auto kern, unsigned tiles, int threads, size_t smem) {
        launch({tiles, (unsigned)(B * Hq), 1}, threads, smem, [&] { kern(out.data(), lse.data(), q, k, v, ld, ld, T, Hq, Hkv, D, W, scale); }); };
    auto KV = [&](auto kern, unsigned tiles, int threads, size_t smem) {
        launch({tiles, (unsigned)(B * Hkv), 1}, threads, smem, [&] { kern(dk, dv, dout.data(), lse.data(), di.data(), q, k, v, ld, ld, T, Hq, Hkv, D, W, scale); }); };
    auto DQ = [&](auto kern, unsigned tiles, int threads, size_t smem) {
        launch({tiles, (unsigned)(B * Hq), 1}, threads, smem, [&] { kern(dq, dout.data(), lse.data(), di.data(), q, k, v, ld, ld, T, Hq, Hkv, D, W, scale); }); };
    if (tc) {
        if (tp.kd == 4) FWD(tc_fwd_k<4>, tp.tiles, 128, tp.smem_fwd); else FWD(tc_fwd_k<8>, tp.tiles, 128, tp.smem_fwd);
    } else {
        int th = CUPLAN_ATT_WARPS * 32;
        if (pl.dc == 2) FWD(attn_fwd_k<2>, pl.q_tiles, th, pl.smem_fwd);
        else if (pl.dc == 4) FWD(attn_fwd_k<4>, pl.q_tiles, th, pl.smem_fwd);
        else FWD(attn_fwd_k<8>, pl.q_tiles, th, pl.smem_fwd);
    }
    // reference forward/backward in double
    double eo = 0, el = 0, mo = 0, ed = 0, md = 0;
    std::vector<double> rd((size_t)N * ld, 0.0);
    for (int b = 0; b < B; b++) for (int h = 0; h < Hq; h++) {
        int kh = h / G;
        for (int i = 0; i < T; i++) {
            const float *qi = q + (size_t)(b * T + i) * ld + h * D;
            std::vector<double> s(i + 1), p(i + 1);
            double mx = -1e300;
            int j0 = window > 0 ? std::max(0, i - window + 1) : 0; // keys j0..i
            for (int j = j0; j <= i; j++) { double a = 0; const float *kj = k + (size_t)(b*T+j)*ld + kh*D; for (int e = 0; e < D; e++) a += (double)qi[e]*kj[e]; s[j] = a*scale; mx = std::max(mx, s[j]); }
            double sum = 0; for (int j = j0; j <= i; j++) sum += exp(s[j]-mx);
            double L = mx + log(sum);
            el = std::max(el, fabs(L - lse[(size_t)(b*Hq+h)*T+i]));
            for (int j = j0; j <= i; j++) p[j] = exp(s[j]-L);
            std::vector<double> o(D, 0.0);
            for (int j = j0; j <= i; j++) { const float *vj = v + (size_t)(b*T+j)*ld + kh*D; for (int e = 0; e < D; e++) o[e] += p[j]*vj[e]; }
            const float *go = out.data() + (size_t)(b*T+i)*ldo + h*D, *dy = dout.data() + (size_t)(b*T+i)*ldo + h*D;
            double Di = 0;
            for (int e = 0; e < D; e++) { eo = std::max(eo, fabs(o[e]-go[e])); mo = std::max(mo, fabs(o[e])); Di += dy[e]*o[e]; }
            for (int j = j0; j <= i; j++) {
                const float *vj = v + (size_t)(b*T+j)*ld + kh*D, *kj = k + (size_t)(b*T+j)*ld + kh*D;
                double dp = 0; for (int e = 0; e < D; e++) dp += (double)dy[e]*vj[e];
                double ds = p[j]*(dp - Di);
                for (int e = 0; e < D; e++) {
                    rd[(size_t)(b*T+i)*ld + h*D + e] += scale*ds*kj[e];
                    rd[(size_t)(b*T+j)*ld + Hq*D + kh*D + e] += scale*ds*qi[e];
                    rd[(size_t)(b*T+j)*ld + (Hq+Hkv)*D + kh*D + e] += p[j]*dy[e];
                }
            }
        }
    }
    // backward kernels; di as attn_di_k computes it
    for (int b = 0; b < B; b++) for (int h = 0; h < Hq; h++) for (int t = 0; t < T; t++) {
        double s = 0; for (int e = 0; e < D; e++) s += dout[(size_t)(b*T+t)*ldo+h*D+e]*out[(size_t)(b*T+t)*ldo+h*D+e];
        di[(size_t)(b*Hq+h)*T+t] = (float)s; }
    if (tc) {
        if (tp.kd == 4) { KV(tc_dkv_k<4>, tp.tiles, 128, tp.smem_dkv); DQ(tc_dq_k<4>, tp.tiles, 128, tp.smem_dq); }
        else { KV(tc_dkv_k<8>, tp.tiles, 128, tp.smem_dkv); DQ(tc_dq_k<8>, tp.tiles, 128, tp.smem_dq); }
    } else {
        int th = CUPLAN_ATT_WARPS * 32;
        if (pl.dc == 2) { KV(attn_dkv_k<2>, pl.q_tiles, th, pl.smem_dkv); DQ(attn_dq_k<2>, pl.q_tiles, th, pl.smem_dq); }
        else if (pl.dc == 4) { KV(attn_dkv_k<4>, pl.q_tiles, th, pl.smem_dkv); DQ(attn_dq_k<4>, pl.q_tiles, th, pl.smem_dq); }
        else { KV(attn_dkv_k<8>, pl.q_tiles, th, pl.smem_dkv); DQ(attn_dq_k<8>, pl.q_tiles, th, pl.smem_dq); }
    }
    for (size_t i = 0; i < d.size(); i++) { ed = std::max(ed, fabs(rd[i]-d[i])); md = std::max(md, fabs(rd[i])); }
    double tol = tc ? 1e-2 : 1e-5, ltol = tc ? 1e-4 : 1e-5;
    int ok = eo/mo < tol && el < ltol && ed/md < tol;
    int finite = 1;
    for (float x : out) finite &= std::isfinite(x);
    for (float x : lse) finite &= std::isfinite(x);
    for (float x : d) finite &= std::isfinite(x);
    ok &= finite;
    printf("%s attn%s_B%d_T%d_Hq%d_Hkv%d_D%d_W%d: out rel %.2e  lse abs %.2e  grads rel %.2e%s\n", ok ? "ok  " : "FAIL", tc ? "_tc" : "", B, T, Hq, Hkv, D, window, eo/mo, el, ed/md, finite ? "" : "  (non-finite values)");
    return ok;
}
int main() {
    // {B, T, Hq, Hkv, D, window, tensor cores}; window 0: plain causal.
    // Windowed: 1 (the diagonal only), 5 (rows of the third query tile see
    // no key of their first key tile: the -inf running max), 32, 40 and 70
    // (crossing tile edges, early key tiles skipped), 100 > T.
    const int cases[][7] = {{1, 70, 4, 2, 64, 0, 0}, {1, 33, 2, 1, 80, 0, 0}, {1, 5, 2, 1, 16, 0, 0}, {1, 40, 1, 1, 128, 0, 0},
                            {1, 33, 2, 1, 160, 0, 0}, {1, 70, 4, 2, 64, 1, 0}, {1, 100, 2, 1, 64, 5, 0},
                            {1, 70, 4, 2, 64, 32, 0}, {1, 97, 2, 1, 80, 40, 0}, {1, 40, 1, 1, 128, 100, 0},
                            // tensor cores: T across 64-row tiles and not a multiple, GQA,
                            // D = 16 .. 128 (both register sizes), windows
                            {2, 150, 4, 2, 64, 0, 1}, {1, 70, 2, 1, 128, 0, 1}, {1, 33, 2, 1, 80, 0, 1},
                            {1, 5, 2, 1, 16, 0, 1}, {1, 97, 3, 1, 48, 0, 1}, {1, 150, 2, 1, 64, 1, 1},
                            {1, 200, 2, 1, 64, 5, 1}, {1, 150, 4, 2, 96, 70, 1}, {1, 40, 1, 1, 128, 100, 1}};
    int pass = 0, n = sizeof cases / sizeof cases[0];
    for (int i = 0; i < n; i++) pass += run(cases[i][0], cases[i][1], cases[i][2], cases[i][3], cases[i][4], cases[i][5], cases[i][6]);
    printf("%d passed, %d failed, 0 skipped\n", pass, n - pass);
    return pass != n;
}
CPP
if ! gcc -std=gnu11 -O1 -I. -c kernels/cuda/plan.c -o "$dir/plan.o" || ! gcc -std=gnu11 -O1 -I. -c common/err.c -o "$dir/err.o" ||
   ! g++ -std=c++20 -O1 -pthread -w -fsanitize=address -I. "$dir/emu.cpp" "$dir/plan.o" "$dir/err.o" -o "$dir/emu"; then
    echo "FAIL attn_emu: the kernels do not compile as host C++"; echo "0 passed, 1 failed, 0 skipped"; exit 1
fi
"$dir/emu"
