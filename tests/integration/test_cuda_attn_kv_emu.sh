#!/usr/bin/env bash
# The CUDA decoding attention (attn_kv_k, kernels/cuda/attention.cuh, the
# kernel behind the CUDA backend's attn_kv_fwd) without a GPU, against the
# CPU backend's attn_kv_fwd: the .cuh is compiled as host C++ with one thread
# per CUDA thread (std::barrier for __syncthreads and the warp shuffles, as
# test_cuda_attn_emu.sh does) and linked with the CPU backend of
# $LR_BUILD/liblorad.a. Cases: single decoding steps at tile edges, blocks of rows
# appended to a cache (one and two query tiles), GQA, sliding windows, head
# dims of all three register sizes, and GPT-2's fused q|k|v cache rows. A
# prefill (p0 = 0) must also equal attn_fwd_k, the training kernel, bit for
# bit (they share one body). Launch geometry and shared memory come from
# plan.c, under AddressSanitizer. Needs g++ with C++20 and OpenBLAS.
set -uo pipefail
cd "$(dirname "$0")/../.."
if ! command -v g++ >/dev/null; then echo "skip attn_kv_emu: no g++"; echo "0 passed, 0 failed, 1 skipped"; exit 0; fi
dir=$(mktemp -d /tmp/attn_kv_emu.XXXXXX)
trap 'rm -rf "$dir"' EXIT
cat >"$dir/emu.cpp" <<'CPP'
// One std::thread per CUDA thread; blocks run one after another.
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>
extern "C" {
#include "kernels/backend.h"
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
    return wslot[w][j];
}
static inline float __shfl_xor_sync(unsigned m, float v, int o) { return __shfl_sync(m, v, (threadIdx.x & 31) ^ o); }
static inline float warp_sum(float v) { for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(~0u, v, o); return v; }
static inline float warp_max(float v) { for (int o = 16; o; o >>= 1) v = fmaxf(v, __shfl_xor_sync(~0u, v, o)); return v; }
// the tensor-core kernels in the same file are compiled, never run here
static inline uint16_t tc_bf16(float x) { uint32_t u; memcpy(&u, &x, 4); return (uint16_t)(u >> 16); }
static inline uint32_t ld32(const uint16_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static void tc_mma(float *, const uint32_t *, uint32_t, uint32_t) { abort(); }
using std::min;
using std::max;
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
static kb_backend *cpu;
static int pass, fail;

// n rows at positions p0.. of a sequence of p0 + n positions; fused: one
// array of [q|k|v] rows (Hkv = Hq, GPT-2's cache), else q [n, Hq*D] and a
// cache of k, v [T, Hkv*D].
static void run(int p0, int n, int Hq, int Hkv, int D, int window, int fused) {
    int T = p0 + n, W = window > 0 && window < T ? window : T; /* as cu_attn_kv_fwd passes it */
    int Qd = Hq * D, KVd = Hkv * D, ldq = fused ? 3 * Qd : Qd, ldkv = fused ? 3 * Qd : KVd;
    std::vector<float> buf((size_t)T * (Qd + 2 * KVd)), out((size_t)n * Qd, NAN), ref((size_t)n * Qd);
    for (auto &x : buf) x = frand() * 1.5f;
    float *q, *kc, *vc;
    if (fused) kc = buf.data() + Qd, vc = buf.data() + 2 * Qd, q = buf.data() + (size_t)p0 * ldq;
    else kc = buf.data() + (size_t)T * Qd, vc = kc + (size_t)T * KVd, q = buf.data() + (size_t)p0 * Qd;
    cuplan_attn pl;
    lr_err err;
    if (cuplan_attention(1, n, Hq, Hkv, D, 227 << 10, &pl, &err)) { printf("FAIL plan: %s\n", err.msg); fail++; return; }
    float scale = 1.0f / sqrtf((float)D);
    auto KV = [&](auto kern) {
        launch({pl.q_tiles, (unsigned)Hq, 1}, CUPLAN_ATT_WARPS * 32, pl.smem_fwd,
               [&] { kern(out.data(), q, kc, vc, ldq, ldkv, p0, n, Hq, Hkv, D, W, scale); }); };
    if (pl.dc == 2) KV(attn_kv_k<2>); else if (pl.dc == 4) KV(attn_kv_k<4>); else KV(attn_kv_k<8>);
    cpu->attn_kv_fwd(cpu, ref.data(), q, ldq, kc, vc, ldkv, p0, n, Hq, Hkv, D, window);
    double e = 0, mx = 0;
    int finite = 1;
    for (size_t i = 0; i < out.size(); i++) {
        finite &= std::isfinite(out[i]);
        e = std::max(e, fabs((double)out[i] - ref[i]));
        mx = std::max(mx, fabs((double)ref[i]));
    }
    int ok = finite && e <= 1e-5 * mx;
    const char *same = "";
    if (p0 == 0) { /* the prefill is the training kernel's result */
        std::vector<float> o2((size_t)n * Qd), lse((size_t)Hq * n);
        auto FWD = [&](auto kern) {
            launch({pl.q_tiles, (unsigned)Hq, 1}, CUPLAN_ATT_WARPS * 32, pl.smem_fwd,
                   [&] { kern(o2.data(), lse.data(), q, kc, vc, ldq, ldkv, n, Hq, Hkv, D, W, scale); }); };
        if (pl.dc == 2) FWD(attn_fwd_k<2>); else if (pl.dc == 4) FWD(attn_fwd_k<4>); else FWD(attn_fwd_k<8>);
        int eq = !memcmp(o2.data(), out.data(), out.size() * sizeof(float));
        ok &= eq;
        same = eq ? ", = attn_fwd_k" : ", differs from attn_fwd_k";
    }
    printf("%s attn_kv_p%d_n%d_Hq%d_Hkv%d_D%d_W%d%s: vs CPU attn_kv_fwd max|diff| %.2e (max |out| %.2f)%s%s\n",
           ok ? "ok  " : "FAIL", p0, n, Hq, Hkv, D, window, fused ? "_fused" : "", e, mx, same, finite ? "" : " (non-finite)");
    ok ? pass++ : fail++;
}
int main() {
    lr_err err;
    if (kb_cpu_create(1, &cpu, &err)) { printf("FAIL cpu backend: %s\n", err.msg); return 1; }
    // {p0, n, Hq, Hkv, D, window, fused}: decoding steps before, at and past
    // the 32-key tile edges; blocks of 5 and of 40 rows (two query tiles) on
    // a filled cache; prefills; windows of 1, 5 (whole key tiles skipped),
    // 32 and wider than the sequence; D 16..160 (all three register sizes).
    const int cases[][7] = {{1, 1, 4, 2, 16, 0, 0},  {31, 1, 4, 2, 64, 0, 0},  {32, 1, 4, 2, 64, 0, 0},
                            {69, 1, 2, 1, 80, 0, 0}, {37, 5, 4, 2, 64, 0, 0},  {10, 40, 2, 1, 64, 0, 0},
                            {0, 33, 4, 2, 64, 0, 0}, {0, 70, 2, 1, 128, 9, 0}, {69, 1, 4, 2, 64, 1, 0},
                            {90, 1, 2, 1, 64, 5, 0}, {50, 7, 2, 1, 32, 32, 0}, {40, 1, 2, 1, 160, 100, 0},
                            {45, 1, 4, 4, 16, 0, 1}, {20, 6, 4, 4, 16, 6, 1},  {0, 12, 4, 4, 16, 0, 1}};
    for (const auto &c : cases) run(c[0], c[1], c[2], c[3], c[4], c[5], c[6]);
    cpu->destroy(cpu); /* not kb_destroy: backend.c would pull in a CUDA build's backend_cuda.o, whose copy of these kernels clashes with the host one */
    printf("%d passed, %d failed, 0 skipped\n", pass, fail);
    return fail != 0;
}
CPP
lib=${LR_BUILD:-build}/liblorad.a
if [ ! -f "$lib" ]; then echo "skip attn_kv_emu: $lib (the CPU backend) is not built"; echo "0 passed, 0 failed, 1 skipped"; exit 0; fi
if ! g++ -std=c++20 -O1 -pthread -fopenmp -w -fsanitize=address -I. "$dir/emu.cpp" "$lib" -lopenblas -lm -ldl \
       -o "$dir/emu" 2>"$dir/cc.log"; then
    tail -20 "$dir/cc.log"; echo "FAIL attn_kv_emu: the kernels do not build as host C++"; echo "0 passed, 1 failed, 0 skipped"; exit 1
fi
"$dir/emu"
