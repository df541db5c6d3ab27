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
#include "worker/adapter.h"
#include "kernels/cuda/cuda_backend.h"
#include "worker/commands.h"
#include "worker/model.h"

static double mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
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

/* Matmul weights of the model, lm_head included (tied or not). */
static double matmul_weights(const hf_config *c) {
    double C = c->hidden, qd = (double)c->n_heads * c->head_dim, kvd = (double)c->n_kv_heads * c->head_dim;
    double per_layer = C * qd + 2 * C * kvd + qd * C + (c->arch == ARCH_GPT2 ? 2 : 3) * C * c->intermediate;
    return c->n_layers * per_layer + (double)c->vocab_size * C;
}

static void usage(FILE *f) {
    fprintf(f, "usage: lora-worker bench --model DIR [--backend cpu|cuda:N] [--batch B] [--seq T] [--steps N]\n"
               "                         [--threads N] [--r R] [--kernel NAME]\n"
               "       lora-worker bench --sgemm N [--threads N] [--kernel NAME|all]\n"
               "Times LoRA training steps (all linear layers, random tokens) and prints one JSON line:\n"
               "tokens_per_s, step_s (median), gflops (flops/token = 4 x matmul weights incl. lm_head\n"
               "+ 6 x layers x heads x head_dim x (T+1)), peak_rss_mb, loss, the sgemm kernel.\n"
               "--kernel: auto (default: the engine's choice), default (OpenBLAS's own choice at load),\n"
               "an OpenBLAS core type (SkylakeX, Haswell, ...), reference; with --sgemm, all (default)\n"
               "times every kernel this CPU runs, one JSON line each.\n");
}

int cmd_bench(int argc, char **argv) {
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"backend", required_argument, 0, 'b'},
        {"batch", required_argument, 0, 'B'}, {"seq", required_argument, 0, 'T'},
        {"steps", required_argument, 0, 's'}, {"threads", required_argument, 0, 't'},
        {"r", required_argument, 0, 'r'},     {"sgemm", required_argument, 0, 'g'},
        {"kernel", required_argument, 0, 'k'}, {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    const char *dir = NULL, *backend = "cpu", *kernel = NULL;
    int B = 1, T = 256, steps = 3, threads = 0, r = 16, sgemm = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:b:B:T:s:t:r:g:k:h", opts, NULL)) != -1) {
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
        model_load(dir, be, &m, &err))
        goto done;
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
    times = calloc((size_t)steps, sizeof *times);
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
        double t = mono(), ls;
        int64_t nt_;
        model_zero_grad(m);
        if (model_fwd_bwd(m, ids, ids, B, T, 1.0f / (float)(B * (T - 1)), &ls, &nt_, &err)) goto done;
        kb_adamw hp = {1e-4f, 0.9f, 0.999f, 1e-8f, 0.0f, s + 1};
        be->adamw(be, model_params(m), model_grads(m), am, av, n, &hp);
        be->download(be, &loss, &loss, 0); /* a sync point on devices */
        loss = ls / (double)nt_;
        if (s > 0) times[s - 1] = mono() - t;
    }
    qsort(times, (size_t)steps, sizeof *times, cmp_d);
    double step_s = times[steps / 2];
    double flops_tok = 4.0 * matmul_weights(cfg) + 6.0 * cfg->n_layers * cfg->n_heads * (double)cfg->head_dim * (T + 1);
    char gpu[400] = ""; /* on a GPU: its name, peak memory and MFU (over the dense bf16 peak) */
    kb_cuda_mem mi;
    const kb_cuda_device *dv = kb_cuda_device_of(be);
    if (dv && kb_cuda_meminfo(be, &mi) == 0)
        snprintf(gpu, sizeof gpu, ", \"gpu\": \"%s\", \"gpu_peak_mb\": %.0f, \"peak_bf16_tflops\": %.1f, \"mfu\": %.4f",
                 dv->name, mi.peak_bytes / 1048576.0, dv->peak_bf16_flops / 1e12,
                 dv->peak_bf16_flops > 0 ? flops_tok * B * T / step_s / dv->peak_bf16_flops : 0.0);
    printf("{\"backend\": \"%s\", \"batch\": %d, \"seq\": %d, \"tokens_per_s\": %.1f, \"step_s\": %.4f, "
           "\"gflops\": %.2f, \"flops_per_token\": %.4g, \"peak_rss_mb\": %.0f, \"lora_params\": %zu, \"loss\": %.4f, "
           "\"kernel\": \"%s\"%s}\n",
           be->name, B, T, B * T / step_s, step_s, flops_tok * B * T / step_s / 1e9, flops_tok, peak_rss_mb(), n, loss,
           kg_current()->name, gpu);
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
