#!/usr/bin/env bash
# The CUDA attention kernels (forward, dK/dV, dQ) without a GPU: their source,
# cut from kernels/cuda/backend_cuda.cu, is compiled as host C++ with one
# thread per CUDA thread (std::barrier stands in for __syncthreads and the
# warp shuffles) and compared with a float64 causal GQA attention, forward
# and backward, with and without a sliding window. It checks the kernels' tiling, masking and indexing, not the
# GPU's arithmetic (test_cuda does that on a GPU). Needs g++ with C++20.
set -uo pipefail
cd "$(dirname "$0")/../.."
if ! command -v g++ >/dev/null; then echo "skip attn_emu: no g++"; echo "0 passed, 0 failed, 1 skipped"; exit 0; fi
dir=$(mktemp -d /tmp/attn_emu.XXXXXX)
trap 'rm -rf "$dir"' EXIT
# the kernels: from the tile-size macro to the dispatch macro
awk '/^#define AR CUPLAN_ATT_ROWS/{f=1} /^#define ATT_DISPATCH/{f=0} f' kernels/cuda/backend_cuda.cu |
    sed 's/extern __shared__ float sm\[\];/float *sm = g_sm;/' >"$dir/kernels.inc"
cat >"$dir/emu.cpp" <<'CPP'
// Host emulation of the attention kernels: one std::thread per CUDA thread,
// std::barrier for __syncthreads and for warp shuffles.
#include <barrier>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>
#include <algorithm>
#define CUPLAN_ATT_ROWS 32
#define CUPLAN_ATT_WARPS 4
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
using std::min;
using std::max;
#include KERNELS
template <typename F> static void launch(dim3 g, int threads, size_t smem, F f) {
    std::vector<float> s(smem / 4 + 1);
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
static int run(int B, int T, int Hq, int Hkv, int D, int window) {
    int W = window > 0 && window < T ? window : T; /* as cu_attn_fwd/bwd pass it */
    int ld = (Hq + 2 * Hkv) * D, ldo = Hq * D, N = B * T, G = Hq / Hkv;
    std::vector<float> qkv((size_t)N * ld), dout((size_t)N * ldo), out((size_t)N * ldo), lse((size_t)B * Hq * T), d((size_t)N * ld, 0.f), di((size_t)B*Hq*T);
    for (auto &x : qkv) x = frand() * 1.5f;
    for (auto &x : dout) x = frand();
    float *q = qkv.data(), *k = q + Hq * D, *v = k + Hkv * D;
    float scale = 1.0f / sqrtf((float)D);
    int dc = D <= 64 ? 2 : D <= 128 ? 4 : 8, R = 32, qt = (T + 31) / 32;
    size_t sf = (R * D * 2 + R * (D + 1)) * 4, skv = (R * D * 2 + R * (D + 1) * 2 + 2 * R) * 4, sq = (R * D * 2 + R * (D + 1) * 2) * 4;
    auto F = [&](auto kern) { launch({(unsigned)qt, (unsigned)(B * Hq), 1}, 128, sf, [&] { kern(out.data(), lse.data(), q, k, v, ld, ld, T, Hq, Hkv, D, W, scale); }); };
    if (dc == 2) F(attn_fwd_k<2>); else if (dc == 4) F(attn_fwd_k<4>); else F(attn_fwd_k<8>);
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
    // backward kernels
    for (int b = 0; b < B; b++) for (int h = 0; h < Hq; h++) for (int t = 0; t < T; t++) {
        double s = 0; for (int e = 0; e < D; e++) s += dout[(size_t)(b*T+t)*ldo+h*D+e]*out[(size_t)(b*T+t)*ldo+h*D+e];
        di[(size_t)(b*Hq+h)*T+t] = (float)s; }
    float *dq = d.data(), *dk = dq + Hq * D, *dv = dk + Hkv * D;
    auto KV = [&](auto kern) { launch({(unsigned)qt, (unsigned)(B * Hkv), 1}, 128, skv, [&] { kern(dk, dv, dout.data(), lse.data(), di.data(), q, k, v, ld, ld, T, Hq, Hkv, D, W, scale); }); };
    auto DQ = [&](auto kern) { launch({(unsigned)qt, (unsigned)(B * Hq), 1}, 128, sq, [&] { kern(dq, dout.data(), lse.data(), di.data(), q, k, v, ld, ld, T, Hq, Hkv, D, W, scale); }); };
    if (dc == 2) { KV(attn_dkv_k<2>); DQ(attn_dq_k<2>); } else if (dc == 4) { KV(attn_dkv_k<4>); DQ(attn_dq_k<4>); } else { KV(attn_dkv_k<8>); DQ(attn_dq_k<8>); }
    for (size_t i = 0; i < d.size(); i++) { ed = std::max(ed, fabs(rd[i]-d[i])); md = std::max(md, fabs(rd[i])); }
    int ok = eo/mo < 1e-5 && el < 1e-5 && ed/md < 1e-5;
    int finite = 1;
    for (float x : out) finite &= std::isfinite(x);
    for (float x : lse) finite &= std::isfinite(x);
    for (float x : d) finite &= std::isfinite(x);
    ok &= finite;
    printf("%s attn_B%d_T%d_Hq%d_Hkv%d_D%d_W%d: out rel %.2e  lse abs %.2e  grads rel %.2e%s\n", ok ? "ok  " : "FAIL", B, T, Hq, Hkv, D, window, eo/mo, el, ed/md, finite ? "" : "  (non-finite values)");
    return ok;
}
int main() {
    // {B, T, Hq, Hkv, D, window}; window 0: plain causal. Windowed: 1 (the
    // diagonal only), 5 (rows of the third query tile see no key of their
    // first key tile: the -inf running max), 32 and 40 (crossing tile
    // edges, early key tiles skipped), 100 > T.
    const int cases[][6] = {{1, 70, 4, 2, 64, 0}, {1, 33, 2, 1, 80, 0}, {1, 5, 2, 1, 16, 0}, {1, 40, 1, 1, 128, 0},
                            {1, 33, 2, 1, 160, 0}, {1, 70, 4, 2, 64, 1}, {1, 100, 2, 1, 64, 5},
                            {1, 70, 4, 2, 64, 32}, {1, 97, 2, 1, 80, 40}, {1, 40, 1, 1, 128, 100}};
    int pass = 0, n = sizeof cases / sizeof cases[0];
    for (int i = 0; i < n; i++) pass += run(cases[i][0], cases[i][1], cases[i][2], cases[i][3], cases[i][4], cases[i][5]);
    printf("%d passed, %d failed, 0 skipped\n", pass, n - pass);
    return pass != n;
}
CPP
if ! g++ -std=c++20 -O1 -pthread -w -DKERNELS="\"$dir/kernels.inc\"" "$dir/emu.cpp" -o "$dir/emu"; then
    echo "FAIL attn_emu: the kernels do not compile as host C++"; echo "0 passed, 1 failed, 0 skipped"; exit 1
fi
"$dir/emu"
