/* lora-worker probe: what this lora-worker can train on.
 *
 *   lora-worker probe [--json]
 *
 * First the CPU: its vector features and the sgemm kernel the CPU backend
 * runs (chosen and self-tested by kernels/cpu/gemm_select), with how it was
 * chosen, and whether frozen weights can run in bf16 (compute_dtype auto
 * picks it for 16-bit models where the AVX512_BF16 kernel passed its
 * self-test, kernels/cpu/gemm_bf16). Then one line per CUDA device (name, compute capability, memory,
 * bf16 peak); no usable device is an answer, not an error: "no usable GPU:
 * <why>" and exit 0, so scripts and the daemon can ask before choosing
 * --backend. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/gemm_bf16.h"
#include "kernels/cpu/gemm_select.h"
#include "kernels/cuda/cuda_backend.h"
#include "worker/commands.h"

#define PROBE_MAX 64

static void usage(FILE *f) {
    fprintf(f, "usage: lora-worker probe [--json]\n"
               "  Shows the CPU's sgemm kernel and lists the CUDA devices this lora-worker can use\n"
               "  (--backend cuda:N).\n");
}

/* The vector features that decide the kernel, space-separated. */
static void cpu_features(char *out, size_t cap) {
    kg_cpu c;
    kg_cpu_features(&c);
    const struct {
        const char *name;
        int on;
    } f[] = {{"avx", c.avx},           {"fma", c.fma},         {"avx2", c.avx2},
             {"avx512f", c.avx512f},   {"avx512bw", c.avx512bw}, {"avx512dq", c.avx512dq},
             {"avx512vl", c.avx512vl}, {"avx512_bf16", c.avx512_bf16}, {"amx_bf16", c.amx_bf16}};
    size_t n = 0;
    out[0] = 0;
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
        if (f[i].on && n < cap) n += (size_t)snprintf(out + n, cap - n, "%s%s", n ? " " : "", f[i].name);
}

static json_t *cpu_json(const kg_kernel *k, const char *features, const kbf_kernel *bf, const char *bf_why) {
    json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:b}", "features", features, "sgemm_kernel", k->name, "isa", k->isa,
                          "how", k->how, "fallback", k->fallback);
    json_object_set_new(o, "bf16_kernel", bf ? json_string(bf->name) : json_null());
    if (!bf) json_object_set_new(o, "bf16_reason", json_string(bf_why));
    return o;
}

static json_t *device_json(const kb_cuda_device *d) {
    char b[24], cc[24];
    snprintf(b, sizeof b, "cuda:%d", d->index);
    snprintf(cc, sizeof cc, "%d.%d", d->cc_major, d->cc_minor);
    return json_pack("{s:s, s:s, s:s, s:i, s:I, s:I, s:f, s:b}", "backend", b, "name", d->name,
                     "compute_capability", cc, "sm_count", d->sm_count, "memory_total", (json_int_t)d->total_bytes,
                     "memory_free", (json_int_t)d->free_bytes, "peak_bf16_tflops", d->peak_bf16_flops / 1e12,
                     "usable", d->usable);
}

int cmd_probe(int argc, char **argv) {
    int as_json = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json")) {
            as_json = 1;
        } else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "lora-worker probe: unknown option '%s'\n", argv[i]);
            usage(stderr);
            return 1;
        }
    }
    const kg_kernel *k = kg_current();
    lr_err bf_why = {0};
    const kbf_kernel *bf = kbf_current(&bf_why);
    char feat[160];
    cpu_features(feat, sizeof feat);
    kb_cuda_device devs[PROBE_MAX];
    lr_err err = {0};
    int n = kb_cuda_devices(devs, PROBE_MAX, &err), shown = n < PROBE_MAX ? n : PROBE_MAX, usable = 0;
    char why[600];
    why[0] = 0;
    if (n < 0) snprintf(why, sizeof why, "%s", err.msg);
    for (int i = 0; i < shown; i++) usable += devs[i].usable;
    if (n > 0 && !usable)
        snprintf(why, sizeof why, "%d CUDA device%s, none with compute capability 8.x or 9.x (this build's sm_80, sm_90)",
                 n, n == 1 ? "" : "s");
    if (as_json) {
        json_t *arr = json_array(), *root = json_object();
        for (int i = 0; i < shown; i++) json_array_append_new(arr, device_json(&devs[i]));
        json_object_set_new(root, "cpu", cpu_json(k, feat, bf, bf_why.msg));
        json_object_set_new(root, "devices", arr);
        json_object_set_new(root, "usable", json_integer(usable));
        if (why[0]) json_object_set_new(root, "reason", json_string(why));
        char *s = json_dumps(root, JSON_INDENT(2));
        if (s) printf("%s\n", s);
        free(s);
        json_decref(root);
        return 0;
    }
    printf("cpu  %s  sgemm %s (%s)%s\n     %s\n", feat[0] ? feat : "no AVX", k->name, k->isa,
           k->fallback ? "  (a fallback)" : "", k->how);
    if (bf)
        printf("     bf16 %s: frozen linears of 16-bit models (compute_dtype auto or bf16)\n", bf->name);
    else
        printf("     bf16 no: %s\n", bf_why.msg);
    const double G = 1024.0 * 1024.0 * 1024.0;
    for (int i = 0; i < shown; i++) {
        const kb_cuda_device *d = &devs[i];
        printf("cuda:%d  %s  compute %d.%d  %d SMs  %.1f GiB (%.1f GiB free)  bf16 peak %.0f TFLOP/s%s\n", d->index,
               d->name, d->cc_major, d->cc_minor, d->sm_count, d->total_bytes / G, d->free_bytes / G,
               d->peak_bf16_flops / 1e12, d->usable ? "" : "  (not usable by this build)");
    }
    if (!usable) printf("no usable GPU: %s\n", why);
    return 0;
}
