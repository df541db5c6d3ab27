/* lora-worker bench: the engine's own throughput, for `make bench` and
 * `make bench-gpu`. One LoRA training step = zero grads, forward+backward
 * of one micro-batch, AdamW; reported as tokens/s and achieved GFLOP/s, with
 * the FLOP count the benchmarks state:
 *   flops/token = 4 * (matmul weights, lm_head included)      forward + input-gradient backward
 *               + 6 * layers * n_heads * head_dim * (T + 1)   causal attention, fwd + bwd (2x fwd)
 * `--sgemm N` instead times sgemm on N x N matrices (the roofline) with each
 * kernel the engine can use on this CPU (kernels/cpu/gemm_select), or the
 * one --kernel names; the model step runs on --kernel too (default: the
 * automatic choice, as in training). */
#include <cblas.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "common/rng.h"
#include "kernels/backend.h"
#include "kernels/cpu/gemm_select.h"
#include "formats/adapter.h"
#include "kernels/cuda/cuda_backend.h"
#include "worker/commands.h"
#include "worker/model.h"

static double mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* CPU seconds of all the process's threads: on a shared machine a step's
 * CPU time moves less with the load than its wall time (with
 * OMP_WAIT_POLICY=passive, so that waiting threads do not spin). */
static double cpu_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double peak_rss_mb(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss / 1024.0;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* One JSON line per kernel: the library's own threading (OpenBLAS's
 * threads over the whole matrix), so each kernel shows its best. */
static int bench_sgemm(int n, int threads, int reps, const char *kernel) {
    float *a = malloc((size_t)n * n * sizeof *a), *b = malloc((size_t)n * n * sizeof *b),
          *c = malloc((size_t)n * n * sizeof *c);
    const char *names[16];
    int nk = 1, rc = 2;
    char auto_name[64];
    lr_err err = {0};
    if (!a || !b || !c) {
        fprintf(stderr, "lora-worker bench: out of memory\n");
        goto done;
    }
    lr_rng r;
    rng_seed(&r, 1);
    rng_fill_uniform(&r, a, (size_t)n * n, -1, 1);
    rng_fill_uniform(&r, b, (size_t)n * n, -1, 1);
    snprintf(auto_name, sizeof auto_name, "%s", kg_current()->name);
    if (!strcmp(kernel, "all"))
        nk = kg_list(names, 16);
    else
        names[0] = kernel;
    openblas_set_num_threads(threads > 0 ? threads : 2);
    for (int k = 0; k < nk; k++) {
        if (kg_use(names[k], &err)) {
            fprintf(stderr, "lora-worker bench: kernel %s: %s\n", names[k], err.msg);
            goto done;
        }
        const kg_kernel *kn = kg_current();
        double best = 1e30;
        for (int i = 0; i < reps + 1; i++) {
            double t = mono();
            kn->sgemm(0, 1, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
            t = mono() - t;
            if (i > 0 && t < best) best = t;
        }
        printf("{\"sgemm_n\": %d, \"kernel\": \"%s\", \"isa\": \"%s\", \"requested\": \"%s\", \"auto\": %s, "
               "\"gflops\": %.2f, \"seconds\": %.4f}\n",
               n, kn->name, kn->isa, names[k], strcmp(kn->name, auto_name) ? "false" : "true",
               2.0 * n * n * (double)n / best / 1e9, best);
    }
    rc = 0;
done:
    free(a);
    free(b);
    free(c);
    return rc;
}

/* ---- --profile: wall time and FLOP rate per backend op ----
 * Each op of the backend's table is wrapped by one that times it; CPU ops
 * finish before they return, so the times are the ops' own. Linear layers
 * are kept apart by shape, so a slow projection shows. */

#define PROF_ROWS 64
typedef struct prof_row {
    char name[48];
    double s, flops;
    long calls;
} prof_row;
static prof_row prof[PROF_ROWS];
static int prof_n;
static kb_backend prof_inner; /* the wrapped backend's own table */

static void prof_add(const char *name, double t0, double flops) {
    double dt = mono() - t0;
    int i = 0;
    while (i < prof_n && strcmp(prof[i].name, name)) i++;
    if (i == prof_n) {
        if (prof_n == PROF_ROWS) i = PROF_ROWS - 1; /* more shapes than rows: the last row pools them */
        else snprintf(prof[prof_n++].name, sizeof prof[0].name, "%s", name);
    }
    prof[i].s += dt;
    prof[i].flops += flops;
    prof[i].calls++;
}

#define PROF(name, flops, call)                                                                                      \
    do {                                                                                                             \
        double t0_ = mono();                                                                                         \
        call;                                                                                                        \
        prof_add(name, t0_, flops);                                                                                  \
    } while (0)

static void p_embed_fwd(kb_backend *be, float *out, const int32_t *ids, const void *wte, const void *wpe, int N, int T,
                        int C) {
    PROF("embed", 0, prof_inner.embed_fwd(be, out, ids, wte, wpe, N, T, C));
}
static void p_embed_bwd(kb_backend *be, float *dwte, float *dwpe, const float *dout, const int32_t *ids, int N, int T,
                        int C) {
    PROF("embed", 0, prof_inner.embed_bwd(be, dwte, dwpe, dout, ids, N, T, C));
}
static void p_rmsnorm_fwd(kb_backend *be, float *out, float *rstd, const float *x, const void *w, int N, int C,
                          float eps) {
    PROF("norm fwd", 0, prof_inner.rmsnorm_fwd(be, out, rstd, x, w, N, C, eps));
}
static void p_rmsnorm_bwd(kb_backend *be, float *dx, float *dw, const float *dout, const float *x, const void *w,
                          const float *rstd, int N, int C) {
    PROF("norm bwd", 0, prof_inner.rmsnorm_bwd(be, dx, dw, dout, x, w, rstd, N, C));
}
static void p_layernorm_fwd(kb_backend *be, float *out, float *mean, float *rstd, const float *x, const void *w,
                            const void *b, int N, int C, float eps) {
    PROF("norm fwd", 0, prof_inner.layernorm_fwd(be, out, mean, rstd, x, w, b, N, C, eps));
}
static void p_layernorm_bwd(kb_backend *be, float *dx, float *dw, float *db, const float *dout, const float *x,
                            const void *w, const float *mean, const float *rstd, int N, int C) {
    PROF("norm bwd", 0, prof_inner.layernorm_bwd(be, dx, dw, db, dout, x, w, mean, rstd, N, C));
}
static void p_rope_fwd(kb_backend *be, float *x, int ld, const float *cs, const float *sn, int N, int T, int H, int D) {
    PROF("rope", 0, prof_inner.rope_fwd(be, x, ld, cs, sn, N, T, H, D));
}
static void p_rope_bwd(kb_backend *be, float *x, int ld, const float *cs, const float *sn, int N, int T, int H, int D) {
    PROF("rope", 0, prof_inner.rope_bwd(be, x, ld, cs, sn, N, T, H, D));
}
/* Useful attention FLOPs: QK^T and PV over the causal half, 2x that backward. */
static double attn_flops(int B, int T, int Hq, int D) { return 2.0 * B * Hq * (double)T * (T + 1) * D; }
static void p_attn_fwd(kb_backend *be, float *out, float *lse, const float *q, const float *k, const float *v, int ldq,
                       int ldkv, int B, int T, int Hq, int Hkv, int D, int window) {
    PROF("attention fwd", attn_flops(B, T, Hq, D),
         prof_inner.attn_fwd(be, out, lse, q, k, v, ldq, ldkv, B, T, Hq, Hkv, D, window));
}
static void p_attn_bwd(kb_backend *be, float *dq, float *dk, float *dv, const float *dout, const float *out,
                       const float *lse, const float *q, const float *k, const float *v, int ldq, int ldkv, int B, int T,
                       int Hq, int Hkv, int D, int window) {
    PROF("attention bwd", 2 * attn_flops(B, T, Hq, D),
         prof_inner.attn_bwd(be, dq, dk, dv, dout, out, lse, q, k, v, ldq, ldkv, B, T, Hq, Hkv, D, window));
}
static void p_swiglu_fwd(kb_backend *be, float *h, const float *g, const float *u, size_t n) {
    PROF("activation fwd", 0, prof_inner.swiglu_fwd(be, h, g, u, n));
}
static void p_swiglu_bwd(kb_backend *be, float *dg, float *du, const float *dh, const float *g, const float *u,
                         size_t n) {
    PROF("activation bwd", 0, prof_inner.swiglu_bwd(be, dg, du, dh, g, u, n));
}
static void p_gelu_fwd(kb_backend *be, float *y, const float *x, size_t n, int exact) {
    PROF("activation fwd", 0, prof_inner.gelu_fwd(be, y, x, n, exact));
}
static void p_gelu_bwd(kb_backend *be, float *dx, const float *dy, const float *x, size_t n, int exact) {
    PROF("activation bwd", 0, prof_inner.gelu_bwd(be, dx, dy, x, n, exact));
}
static void p_add(kb_backend *be, float *y, const float *x, size_t n) { PROF("residual add", 0, prof_inner.add(be, y, x, n)); }
static void p_linear_fwd(kb_backend *be, const kb_linear *L, float *y, float *xa, const float *x, int N) {
    char name[48];
    snprintf(name, sizeof name, "linear fwd %dx%d", L->in, L->out);
    double f = 2.0 * N * L->in * L->out + (L->lora ? 2.0 * N * L->lora->r * (L->in + L->out) : 0);
    PROF(name, f, prof_inner.linear_fwd(be, L, y, xa, x, N));
}
static void p_linear_bwd(kb_backend *be, const kb_linear *L, float *dx, int dx_acc, const float *dy, const float *x,
                         const float *xa, int N) {
    char name[48];
    snprintf(name, sizeof name, "linear bwd %dx%d", L->in, L->out);
    double io = (double)L->in * L->out, f = (dx ? 2.0 * N * io : 0) + (L->dW ? 2.0 * N * io : 0);
    if (L->lora) f += 2.0 * N * L->lora->r * (2.0 * L->out + L->in + (dx ? L->in : 0));
    PROF(name, f, prof_inner.linear_bwd(be, L, dx, dx_acc, dy, x, xa, N));
}
static double p_lmhead_ce(kb_backend *be, int64_t *n_valid, int64_t *n_correct, float *tok_loss, float *dx, float *dW,
                          const float *x, const void *W, const int32_t *targets, const float *tok_scale, int N, int C,
                          int V, float grad_scale, int chunk_rows) {
    double r, f = 2.0 * N * C * (double)V * (1 + (dx != NULL) + (dW != NULL));
    PROF("lm head + loss", f,
         r = prof_inner.lmhead_ce(be, n_valid, n_correct, tok_loss, dx, dW, x, W, targets, tok_scale, N, C, V,
                                  grad_scale, chunk_rows));
    return r;
}
static void p_adamw(kb_backend *be, float *p, const float *g, float *m, float *v, size_t n, const kb_adamw *hp) {
    PROF("adamw", 0, prof_inner.adamw(be, p, g, m, v, n, hp));
}
static void p_zero(kb_backend *be, void *p, size_t bytes) { PROF("zero", 0, prof_inner.zero(be, p, bytes)); }

static void prof_wrap(kb_backend *be) {
    prof_inner = *be;
    be->embed_fwd = p_embed_fwd;
    be->embed_bwd = p_embed_bwd;
    be->rmsnorm_fwd = p_rmsnorm_fwd;
    be->rmsnorm_bwd = p_rmsnorm_bwd;
    be->layernorm_fwd = p_layernorm_fwd;
    be->layernorm_bwd = p_layernorm_bwd;
    be->rope_fwd = p_rope_fwd;
    be->rope_bwd = p_rope_bwd;
    be->attn_fwd = p_attn_fwd;
    be->attn_bwd = p_attn_bwd;
    be->swiglu_fwd = p_swiglu_fwd;
    be->swiglu_bwd = p_swiglu_bwd;
    be->gelu_fwd = p_gelu_fwd;
    be->gelu_bwd = p_gelu_bwd;
    be->add = p_add;
    be->linear_fwd = p_linear_fwd;
    be->linear_bwd = p_linear_bwd;
    be->lmhead_ce = p_lmhead_ce;
    be->adamw = p_adamw;
    be->zero = p_zero;
}

static int cmp_prof(const void *a, const void *b) {
    double x = ((const prof_row *)a)->s, y = ((const prof_row *)b)->s;
    return (x < y) - (x > y);
}

/* The table, slowest first, over `steps` timed steps of `total` seconds. */
static void prof_print(int steps, double total) {
    double ops = 0;
    for (int i = 0; i < prof_n; i++) ops += prof[i].s;
    qsort(prof, (size_t)prof_n, sizeof prof[0], cmp_prof);
    printf("%-26s %8s %10s %7s %9s\n", "op (per step)", "calls", "ms", "share", "GFLOP/s");
    for (int i = 0; i < prof_n; i++) {
        printf("%-26s %8.0f %10.1f %6.1f%%", prof[i].name, (double)prof[i].calls / steps, 1e3 * prof[i].s / steps,
               100 * prof[i].s / total);
        if (prof[i].flops > 0) printf(" %9.1f", prof[i].flops / prof[i].s / 1e9);
        printf("\n");
    }
    printf("%-26s %8s %10.1f %6.1f%%\n", "outside the ops", "", 1e3 * (total - ops) / steps, 100 * (total - ops) / total);
}

/* Matmul weights of the model, lm_head included (tied or not). */
static double matmul_weights(const hf_config *c) {
    double C = c->hidden, qd = (double)c->n_heads * c->head_dim, kvd = (double)c->n_kv_heads * c->head_dim;
    double per_layer = C * qd + 2 * C * kvd + qd * C + (c->arch == ARCH_GPT2 ? 2 : 3) * C * c->intermediate;
    return c->n_layers * per_layer + (double)c->vocab_size * C;
}

static void usage(FILE *f) {
    fprintf(f, "usage: lora-worker bench --model DIR [--backend cpu|cuda:N] [--batch B] [--seq T] [--steps N]\n"
               "                         [--threads N] [--r R] [--kernel NAME] [--profile] [--quantize nf4|fp4]\n"
               "       lora-worker bench --sgemm N [--threads N] [--kernel NAME|all]\n"
               "Times LoRA training steps (all linear layers, random tokens) and prints one JSON line:\n"
               "tokens_per_s, step_s (median), gflops (flops/token = 4 x matmul weights incl. lm_head\n"
               "+ 6 x layers x heads x head_dim x (T+1)), peak_rss_mb, loss, the sgemm kernel;\n"
               "step_s_best (the fastest step: on a shared machine the least disturbed) and step_cpu_s\n"
               "(median CPU seconds of all threads; with OMP_WAIT_POLICY=passive, the work itself).\n"
               "--kernel: auto (default: the engine's choice), default (OpenBLAS's own choice at load),\n"
               "an OpenBLAS core type (SkylakeX, Haswell, ...), reference; with --sgemm, all (default)\n"
               "times every kernel this CPU runs, one JSON line each.\n"
               "--profile (CPU): after the JSON line, the time of each op per step (linear layers by\n"
               "in x out shape), its share of the step and its GFLOP/s.\n"
               "--quantize: a 4-bit base (QLoRA, model_load_quant); adds quant_mb (codes + scales of the\n"
               "linear weights) and quant_f32_mb (the same weights in f32).\n"
               "--compute-dtype f32|bf16|auto: the frozen linears' matmuls as the job spec's compute_dtype\n"
               "(default f32; bf16: weights packed in bf16 on the AVX512_BF16 kernel); the JSON says\n"
               "\"compute_dtype\" as resolved.\n");
}

int cmd_bench(int argc, char **argv) {
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"backend", required_argument, 0, 'b'},
        {"batch", required_argument, 0, 'B'}, {"seq", required_argument, 0, 'T'},
        {"steps", required_argument, 0, 's'}, {"threads", required_argument, 0, 't'},
        {"r", required_argument, 0, 'r'},     {"sgemm", required_argument, 0, 'g'},
        {"kernel", required_argument, 0, 'k'}, {"profile", no_argument, 0, 'p'},
        {"help", no_argument, 0, 'h'},        {"quantize", required_argument, 0, 'q'},
        {"compute-dtype", required_argument, 0, 'c'}, {0, 0, 0, 0}};
    const char *dir = NULL, *backend = "cpu", *kernel = NULL;
    int B = 1, T = 256, steps = 3, threads = 0, r = 16, sgemm = 0, profile = 0, c;
    optind = 1;
    model_quant mq = {KQ_NONE, 0, MODEL_MM_F32};
    while ((c = getopt_long(argc, argv, "m:b:B:T:s:t:r:g:k:phq:c:", opts, NULL)) != -1) {
        switch (c) {
        case 'm': dir = optarg; break;
        case 'b': backend = optarg; break;
        case 'B': B = atoi(optarg); break;
        case 'T': T = atoi(optarg); break;
        case 's': steps = atoi(optarg); break;
        case 't': threads = atoi(optarg); break;
        case 'r': r = atoi(optarg); break;
        case 'g': sgemm = atoi(optarg); break;
        case 'k': kernel = optarg; break;
        case 'p': profile = 1; break;
        case 'q':
            if (kq_type_parse(optarg, &mq.type)) {
                fprintf(stderr, "lora-worker bench: --quantize must be nf4, fp4 or none\n");
                return 1;
            }
            break;
        case 'c':
            if (!strcmp(optarg, "f32") || !strcmp(optarg, "bf16") || !strcmp(optarg, "auto")) {
                mq.matmul = optarg[0] == 'f' ? MODEL_MM_F32 : optarg[0] == 'b' ? MODEL_MM_BF16 : MODEL_MM_AUTO;
                break;
            }
            fprintf(stderr, "lora-worker bench: --compute-dtype must be f32, bf16 or auto\n");
            return 1;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 1;
        }
    }
    if (sgemm > 0) return bench_sgemm(sgemm, threads, 5, kernel ? kernel : "all");
    if (!dir || B < 1 || T < 2 || steps < 1 || steps > 1000 || r < 1) {
        usage(stderr);
        return 1;
    }
    lr_err err = {0};
    kb_backend *be = NULL;
    model *m = NULL;
    int32_t *ids = NULL;
    float *am = NULL, *av = NULL;
    double *times = NULL;
    int rc = 2;
    if (kb_create(backend, threads, &be, &err) || (kernel && kg_use(kernel, &err)) ||
        model_load_quant(dir, be, &mq, &m, &err))
        goto done;
    if (profile && !be->host_memory) {
        lr_errf(&err, "--profile times the CPU backend's ops; %s runs them asynchronously", be->name);
        goto done;
    }
    if (profile) prof_wrap(be);
    const hf_config *cfg = model_config(m);
    model_lora_cfg lc = {.r = r, .alpha = 2.0f * r, .dropout = 0.0f};
    int nt;
    const char *const *mods = adapter_layer_modules(cfg->arch, &nt); /* every linear layer */
    for (int i = 0; i < nt && i < MODEL_MAX_TARGETS; i++)
        snprintf(lc.targets[lc.n_targets++], sizeof lc.targets[0], "%s", mods[i]);
    if (model_lora_init(m, &lc, 1, &err) || model_reserve(m, B, T, &err)) goto done;
    size_t n = model_numel(m);
    am = be->alloc(be, n * sizeof(float));
    av = be->alloc(be, n * sizeof(float));
    ids = malloc((size_t)B * T * sizeof *ids);
    times = calloc(2 * (size_t)steps, sizeof *times); /* wall, then CPU seconds */
    if (!am || !av || !ids || !times) {
        lr_errp(&err, LR_E_NOMEM, NULL, "out of memory");
        goto done;
    }
    lr_rng rng;
    rng_seed(&rng, 7);
    for (int i = 0; i < B * T; i++) ids[i] = (int32_t)rng_below(&rng, (uint64_t)cfg->vocab_size);
    model_set_train(m, 1, 1);
    double loss = 0;
    for (int s = 0; s <= steps; s++) { /* step 0 warms up */
        double t = mono(), c0 = cpu_s(), ls;
        int64_t nt_;
        model_zero_grad(m);
        if (model_fwd_bwd(m, ids, ids, B, T, 1.0f / (float)(B * (T - 1)), &ls, &nt_, &err)) goto done;
        kb_adamw hp = {1e-4f, 0.9f, 0.999f, 1e-8f, 0.0f, s + 1};
        be->adamw(be, model_params(m), model_grads(m), am, av, n, &hp);
        be->download(be, &loss, &loss, 0); /* a sync point on devices */
        loss = ls / (double)nt_;
        if (s > 0) times[s - 1] = mono() - t, times[steps + s - 1] = cpu_s() - c0;
        if (s == 0) { /* the warm-up step is not profiled */
            memset(prof, 0, sizeof prof);
            prof_n = 0;
        }
    }
    qsort(times, (size_t)steps, sizeof *times, cmp_d);
    qsort(times + steps, (size_t)steps, sizeof *times, cmp_d);
    double step_s = times[steps / 2], best_s = times[0], cpu_step_s = times[steps + steps / 2];
    double flops_tok = 4.0 * matmul_weights(cfg) + 6.0 * cfg->n_layers * cfg->n_heads * (double)cfg->head_dim * (T + 1);
    char gpu[400] = ""; /* on a GPU: its name, peak memory and MFU (over the dense bf16 peak) */
    kb_cuda_mem mi;
    const kb_cuda_device *dv = kb_cuda_device_of(be);
    if (dv && kb_cuda_meminfo(be, &mi) == 0)
        snprintf(gpu, sizeof gpu, ", \"gpu\": \"%s\", \"gpu_peak_mb\": %.0f, \"peak_bf16_tflops\": %.1f, \"mfu\": %.4f",
                 dv->name, mi.peak_bytes / 1048576.0, dv->peak_bf16_flops / 1e12,
                 dv->peak_bf16_flops > 0 ? flops_tok * B * T / step_s / dv->peak_bf16_flops : 0.0);
    char quant[160] = "";
    size_t qb, qf;
    kq_type qt = model_quant_info(m, NULL, &qb, &qf);
    if (qt != KQ_NONE)
        snprintf(quant, sizeof quant, ", \"quant\": \"%s\", \"quant_mb\": %.1f, \"quant_f32_mb\": %.1f", kq_type_name(qt),
                 qb / 1048576.0, qf / 1048576.0);
    printf("{\"backend\": \"%s\", \"batch\": %d, \"seq\": %d, \"tokens_per_s\": %.1f, \"step_s\": %.4f, "
           "\"step_s_best\": %.4f, \"step_cpu_s\": %.4f, \"gflops\": %.2f, \"flops_per_token\": %.4g, "
           "\"peak_rss_mb\": %.0f, \"lora_params\": %zu, \"loss\": %.4f, \"kernel\": \"%s\", "
           "\"compute_dtype\": \"%s\"%s%s}\n",
           be->name, B, T, B * T / step_s, step_s, best_s, cpu_step_s, flops_tok * B * T / step_s / 1e9, flops_tok,
           peak_rss_mb(), n, loss, be->host_memory ? kg_current()->name : "cuBLAS",
           model_bf16(m) || be->weight_dtype == KB_BF16 ? "bf16" : be->weight_dtype == KB_F16 ? "f16" : "f32", gpu,
           quant);
    if (profile) {
        double total = 0;
        for (int s = 0; s < steps; s++) total += times[s];
        prof_print(steps, total);
    }
    rc = 0;
done:
    if (rc) fprintf(stderr, "lora-worker bench: %s\n", err.msg);
    free(times);
    free(ids);
    if (be) {
        if (am) be->free(be, am);
        if (av) be->free(be, av);
    }
    model_free(m);
    if (be) kb_destroy(be);
    return rc;
}
