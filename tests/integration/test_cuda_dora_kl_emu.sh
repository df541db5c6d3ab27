#!/usr/bin/env bash
# The CUDA kernels of DoRA (row norms, output, d magnitude) and of the KL
# LM heads (per-row ce with its argmax hit; ce, kl and gradient) without a GPU: the files the CUDA
# backend includes (kernels/cuda/dora.cuh, lmhead.cuh and the block
# reductions of reduce.cuh) are compiled as host C++ with one thread per CUDA
# thread (std::barrier stands in for __syncthreads and the warp shuffles,
# static for __shared__) and compared with float64 references written from
# the definitions. It
# checks the kernels' indexing, reductions, masking and aliasing, not the
# GPU's arithmetic or the cuBLAS calls around them (test_cuda does that on a
# GPU). Needs g++ with C++20.
set -uo pipefail
cd "$(dirname "$0")/../.."
if ! command -v g++ >/dev/null; then echo "skip dora_kl_emu: no g++"; echo "0 passed, 0 failed, 1 skipped"; exit 0; fi
dir=$(mktemp -d /tmp/dora_kl_emu.XXXXXX)
trap 'rm -rf "$dir"' EXIT
cat >"$dir/emu.cpp" <<'CPP'
// Host emulation: one std::thread per CUDA thread, std::barrier for
// __syncthreads and for each warp's shuffles; blocks run one after another,
// so a function-static variable is the block's shared memory.
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>
#include "kernels/elem.h"
struct dim3 {
    unsigned x, y, z;
    dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
static thread_local dim3 threadIdx, blockIdx;
static dim3 blockDim, gridDim;
static std::barrier<> *bar;
static std::vector<std::barrier<> *> wbar;
static union { double d; float f; } wslot[32][32];
#define __global__
#define __device__
#define __forceinline__
#define __shared__ static
static inline void __syncthreads() { bar->arrive_and_wait(); }
template <typename T> static inline T slot_get(int w, int l);
template <> inline float slot_get<float>(int w, int l) { return wslot[w][l].f; }
template <> inline double slot_get<double>(int w, int l) { return wslot[w][l].d; }
static inline void slot_put(int w, int l, float v) { wslot[w][l].f = v; }
static inline void slot_put(int w, int l, double v) { wslot[w][l].d = v; }
template <typename T> static inline T __shfl_xor_sync(unsigned, T v, int o) {
    int w = threadIdx.x >> 5, l = threadIdx.x & 31;
    wbar[w]->arrive_and_wait();
    slot_put(w, l, v);
    wbar[w]->arrive_and_wait();
    return slot_get<T>(w, l ^ o);
}
template <typename T> static inline float ldw(const T *p, size_t i) { return (float)p[i]; }
template <typename T> static inline T stw(float v) { return (T)v; }
using std::min;
extern "C" {
#include "kernels/cuda/plan.h"
}
#include "kernels/cuda/reduce.cuh"
#include "kernels/cuda/dora.cuh"
#include "kernels/cuda/lmhead.cuh"

template <typename F> static void launch(dim3 g, int threads, F f) {
    gridDim = g;
    blockDim = dim3((unsigned)threads);
    for (unsigned by = 0; by < g.y; by++)
        for (unsigned bx = 0; bx < g.x; bx++) {
            std::barrier<> b(threads);
            bar = &b;
            std::vector<std::barrier<> *> ws;
            for (int w = 0; w < threads / 32; w++) ws.push_back(new std::barrier<>(32));
            wbar = ws;
            std::vector<std::thread> ts;
            for (int t = 0; t < threads; t++)
                ts.emplace_back([&, t, bx, by] {
                    threadIdx = dim3((unsigned)t);
                    blockIdx = dim3(bx, by);
                    f();
                });
            for (auto &t : ts) t.join();
            for (auto *w : ws) delete w;
        }
}

static unsigned long long rs = 88172645463325252ull;
static float frand() { /* [-1, 1) */
    rs ^= rs << 13, rs ^= rs >> 7, rs ^= rs << 17;
    return (float)((rs >> 40) * (1.0 / 8388608.0) - 1.0);
}
static std::vector<float> rnd(size_t n, float s) {
    std::vector<float> v(n);
    for (auto &x : v) x = frand() * s;
    return v;
}
static int pass = 0, fail = 0;
static void report(bool ok, const char *what, double e1, double e2 = -1) {
    (ok ? pass : fail)++;
    if (e2 >= 0) printf("%s %s: %.2e %.2e\n", ok ? "ok  " : "FAIL", what, e1, e2);
    else printf("%s %s: %.2e\n", ok ? "ok  " : "FAIL", what, e1);
}

/* wnorm of out rows in two blocks of B A rows (j0 = 0 and j0 = split), both layouts */
static void norm_case(int in, int out, int split, int w_in_out) {
    float scale = 1.7f;
    auto W = rnd((size_t)in * out, 0.3f), BA = rnd((size_t)out * in, 0.2f);
    std::vector<float> wn(out, -1.0f);
    for (int j0 : {0, split}) {
        int m = j0 ? out - split : split;
        launch(dim3(m), 256, [&] { dora_norm_k<float>(wn.data(), W.data(), BA.data() + (size_t)j0 * in, j0, in, out, w_in_out, scale); });
    }
    double e = 0;
    for (int j = 0; j < out; j++) {
        double ss = 0;
        for (int i = 0; i < in; i++) {
            double v = (double)(w_in_out ? W[(size_t)i * out + j] : W[(size_t)j * in + i]) + (double)scale * BA[(size_t)j * in + i];
            ss += v * v;
        }
        e = std::max(e, fabs(wn[j] - sqrt(ss)) / sqrt(ss));
    }
    char what[96];
    snprintf(what, sizeof what, "dora_norm_in%d_out%d_in_out%d (rel)", in, out, w_in_out);
    report(e < 1e-6, what, e);
}

/* the DoRA output: one 64-thread block striding over every element */
static void out_case(int N, int out, int drop, int bias) {
    size_t n = (size_t)N * out;
    auto y = rnd(n, 1), zb = rnd(n, 1), u = rnd(n, 1), mag = rnd(out, 1), wn = rnd(out, 1), b = rnd(out, 1);
    for (int j = 0; j < out; j++) mag[j] += 2.0f, wn[j] += 2.5f;
    auto y0 = y;
    launch(dim3(1), 64, [&] { dora_out_k<float>(y.data(), drop ? zb.data() : nullptr, u.data(), mag.data(), wn.data(), bias ? b.data() : nullptr, out, n); });
    double e = 0, m = 0;
    for (size_t i = 0; i < n; i++) {
        int j = (int)(i % out);
        double s = (double)mag[j] / wn[j], bj = bias ? b[j] : 0.0;
        double ref = drop ? y0[i] + (s - 1) * zb[i] + s * u[i] + bj : s * ((double)y0[i] + u[i]) + bj;
        e = std::max(e, fabs(y[i] - ref));
        m = std::max(m, fabs(ref));
    }
    char what[96];
    snprintf(what, sizeof what, "dora_out_N%d_out%d_drop%d_bias%d (rel)", N, out, drop, bias);
    report(e / m < 1e-6, what, e / m);
}

/* d magnitude over several row partials and column blocks; G becomes s dy */
static void dmag_case(int N, int out) {
    size_t n = (size_t)N * out;
    auto G = rnd(n, 1), dy = rnd(n, 1), mag = rnd(out, 1), wn = rnd(out, 1), dmag = rnd(out, 1);
    for (int j = 0; j < out; j++) mag[j] += 2.0f, wn[j] += 2.5f;
    auto G0 = G, dmag0 = dmag;
    int parts = (N + CUPLAN_DORA_ROWS - 1) / CUPLAN_DORA_ROWS, cols = (out + 127) / 128;
    std::vector<double> part((size_t)parts * out, NAN);
    launch(dim3(cols, parts), 128, [&] { dora_dmag_part_k(part.data(), G.data(), dy.data(), mag.data(), wn.data(), N, out); });
    launch(dim3(cols), 128, [&] { dora_dmag_k(dmag.data(), part.data(), wn.data(), parts, out); });
    double e = 0, m = 0;
    long bad = 0;
    for (int j = 0; j < out; j++) {
        double acc = 0;
        float s = mag[j] / wn[j];
        for (int r = 0; r < N; r++) {
            size_t i = (size_t)r * out + j;
            acc += (double)dy[i] * G0[i];
            bad += G[i] != s * dy[i];
        }
        double ref = dmag0[j] + acc / wn[j];
        e = std::max(e, fabs(dmag[j] - ref));
        m = std::max(m, fabs(ref));
    }
    char what[96];
    snprintf(what, sizeof what, "dora_dmag_N%d_out%d (rel, G != s dy)", N, out);
    report(e / m < 1e-6 && !bad, what, e / m, (double)bad);
}

/* ce, kl and the gradient of m rows; G separate or over the logits */
static void kl_case(int m, int V, int in_place) {
    float tau = 1.5f, coef = 0.8f, w = 0.25f;
    double itau = 1.0 / tau, kc = coef * itau;
    auto l = rnd((size_t)m * V, 4), q = rnd((size_t)m * V, 4);
    for (size_t i = 0; i < l.size(); i++) q[i] = 0.6f * q[i] + l[i];
    auto l0 = l;
    std::vector<int32_t> tg(m);
    for (int i = 0; i < m; i++) tg[i] = i == 0 ? 0 : i == 1 ? V - 1 : (int)((i * 7919u) % (unsigned)V);
    for (int i = 2; i < m; i++) { /* the rest: the target the argmax */
        const float *lr = l.data() + (size_t)i * V;
        tg[i] = (int)(std::max_element(lr, lr + V) - lr);
    }
    std::vector<double> ce(m), kl(m);
    std::vector<int32_t> hit(m, -1);
    std::vector<float> Gs((size_t)m * V);
    float *G = in_place ? l.data() : Gs.data();
    launch(dim3(m), 1024, [&] { ce_kl_rows_k<float>(ce.data(), kl.data(), hit.data(), G, l.data(), q.data(), tg.data(), V, itau, kc, w); });
    double ece = 0, ekl = 0, eg = 0, mg = 0;
    int bad_hits = 0;
    for (int i = 0; i < m; i++) {
        const float *lr = l0.data() + (size_t)i * V, *qr = q.data() + (size_t)i * V;
        double s1 = 0, st = 0, sq = 0;
        for (int j = 0; j < V; j++) s1 += exp((double)lr[j]), st += exp(lr[j] * itau), sq += exp(qr[j] * itau);
        double rce = log(s1) - lr[tg[i]], rkl = 0;
        for (int j = 0; j < V; j++) {
            double lq = qr[j] * itau - log(sq), lp = lr[j] * itau - log(st);
            rkl += exp(lq) * (lq - lp);
            double g = w * (exp(lr[j]) / s1 - (j == tg[i]) + kc * (exp(lp) - exp(lq)));
            eg = std::max(eg, fabs(G[(size_t)i * V + j] - g));
            mg = std::max(mg, fabs(g));
        }
        ece = std::max(ece, fabs(ce[i] - rce) / rce);
        ekl = std::max(ekl, fabs(kl[i] - rkl) / rkl);
        bad_hits += hit[i] != (int)(std::max_element(lr, lr + V) - lr == tg[i]);
    }
    char what[96];
    snprintf(what, sizeof what, "ce_kl_rows_m%d_V%d%s (ce, kl rel)", m, V, in_place ? "_in_place" : "");
    report(ece < 1e-12 && ekl < 1e-9, what, ece, ekl);
    snprintf(what, sizeof what, "ce_kl_hits_m%d_V%d%s (rows wrong)", m, V, in_place ? "_in_place" : "");
    report(!bad_hits, what, (double)bad_hits);
    snprintf(what, sizeof what, "ce_kl_grad_m%d_V%d%s (rel)", m, V, in_place ? "_in_place" : "");
    report(eg / mg < 1e-6, what, eg / mg);
}

/* ce_rows_k's argmax hits: the first of equal maxima (torch.argmax), over
 * thread strides and warps; rows: the target the unique max, a later
 * copy of the max, the first of two equal maxima, the second of them, all
 * logits equal (target 0, then target 5), a target below the max; G over the
 * logits must not disturb the count */
static void hit_case(int V, int in_place) {
    const int m = 7;
    auto l = rnd((size_t)m * V, 1);
    std::vector<int32_t> tg(m), rows(m), hit(m, -1);
    int a = V / 3, b = V - 2; /* in different threads' strides and warps */
    auto row = [&](int i) { return l.data() + (size_t)i * V; };
    row(0)[a] = 5, tg[0] = a;
    row(1)[a] = 5, row(1)[b] = 5, tg[1] = b;
    row(2)[a] = 5, row(2)[b] = 5, tg[2] = a;
    row(3)[0] = 5, row(3)[b] = 5, tg[3] = b;
    for (int j = 0; j < V; j++) row(4)[j] = row(5)[j] = 0.5f;
    tg[4] = 0, tg[5] = 5;
    row(6)[b] = 5, tg[6] = a;
    for (int i = 0; i < m; i++) rows[i] = i;
    int want[m] = {1, 0, 1, 0, 1, 0, 0};
    std::vector<double> loss(m);
    std::vector<float> Gs((size_t)m * V);
    float *G = in_place ? l.data() : Gs.data();
    launch(dim3(m), 1024, [&] { ce_rows_k<float>(loss.data(), hit.data(), nullptr, G, l.data(), tg.data(), rows.data(), nullptr, V, 1.0f); });
    int bad = 0;
    for (int i = 0; i < m; i++) bad += hit[i] != want[i];
    char what[96];
    snprintf(what, sizeof what, "ce_rows_hits_V%d%s (rows wrong)", V, in_place ? "_in_place" : "");
    report(!bad, what, (double)bad);
}

int main() {
    hit_case(2500, 0);
    hit_case(700, 1); /* V below the block size; G over the logits */
    norm_case(300, 37, 20, 0);
    norm_case(300, 37, 20, 1);
    norm_case(40, 5, 2, 1); /* fewer columns than threads */
    out_case(5, 37, 0, 0);
    out_case(5, 37, 1, 1);
    out_case(3, 130, 1, 0);
    dmag_case(300, 200); /* 3 row partials, 2 column blocks */
    dmag_case(7, 5);
    kl_case(3, 2500, 0);
    kl_case(4, 3000, 0); /* two rows whose target is the argmax */
    kl_case(2, 700, 1); /* V below the block size; the gradient over the logits */
    printf("%d passed, %d failed, 0 skipped\n", pass, fail);
    return fail != 0;
}
CPP
if ! g++ -std=c++20 -O1 -pthread -Wall -Wno-unused-function -I. "$dir/emu.cpp" -o "$dir/emu" 2>"$dir/cc.log"; then
    cat "$dir/cc.log"
    echo "FAIL dora_kl_emu: the kernels do not compile as host C++"; echo "0 passed, 1 failed, 0 skipped"; exit 1
fi
"$dir/emu"
