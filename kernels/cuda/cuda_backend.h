/* cuda_backend: the kb_backend ops on an NVIDIA GPU (CUDA kernels + cuBLAS),
 * and the device queries lora-worker needs (probe, HELLO, bench).
 *
 * Storage: activations, gradients, LoRA parameters and optimizer state are
 * f32; frozen weights are be->weight_dtype (bf16 by default; f16 for f16
 * models; f32 for exact comparisons). Matmuls against frozen weights round
 * the f32 activation operand to the weight dtype and accumulate in f32
 * (cuBLAS, tensor cores); with f32 weights they are plain f32 sgemm (no
 * TF32). Every op's per-element arithmetic is kernels/elem.h.
 *
 * The ops read be->weight_dtype at each call, so a caller may set it (to
 * KB_F32, KB_BF16 or KB_F16) after creating the backend and before
 * uploading any weight, e.g. KB_F16 for a model stored in f16.
 *
 * Out of memory: alloc() returns NULL and be->check() then reports the
 * numbers ("out of GPU memory: needed 2.00 GiB, 1.31 GiB free of 79.1 GiB on
 * NVIDIA H100 80GB HBM3"); the kernels' own scratch failing mid-step is
 * recorded the same way and makes the remaining ops of the step no-ops.
 * Nothing aborts the process.
 *
 * In a build without CUDA (no nvcc), these functions exist and say so. */
#ifndef LR_CUDA_BACKEND_H
#define LR_CUDA_BACKEND_H

#include <stddef.h>
#include "common/err.h"
#include "kernels/backend.h"

typedef struct kb_cuda_device {
    int index;
    char name[256];
    int cc_major, cc_minor;   /* compute capability */
    int sm_count;
    int clock_khz;            /* peak SM clock */
    size_t total_bytes, free_bytes;
    double peak_bf16_flops;   /* dense bf16 tensor-core peak, FLOP/s (plan.h) */
    int usable;               /* compute capability >= 8.0 (what this build targets) */
} kb_cuda_device;

/* Fills up to max devices and returns how many there are (>= 1), or -1
 * with err saying why there is none: "no CUDA device found
 * (cudaGetDeviceCount: ...)" or "this lora-worker was built without CUDA". */
int kb_cuda_devices(kb_cuda_device *out, int max, lr_err *err) LR_WARN_UNUSED;

/* A backend on device index `device` with frozen weights stored as wdt. */
int kb_cuda_create(int device, kb_dtype wdt, kb_backend **out, lr_err *err) LR_WARN_UNUSED;

/* "cuda" (device 0) or "cuda:N", bf16 weights; what kb_create calls. */
int kb_cuda_create_named(const char *name, kb_backend **out, lr_err *err) LR_WARN_UNUSED;

/* Memory of a CUDA backend's device: the backend's current and peak use
 * (its allocations and scratch, bytes) and the device's free and total.
 * Returns -1 when be is not a CUDA backend. */
typedef struct kb_cuda_mem {
    size_t used_bytes, peak_bytes, free_bytes, total_bytes;
} kb_cuda_mem;
int kb_cuda_meminfo(kb_backend *be, kb_cuda_mem *out);

/* The device a CUDA backend runs on (NULL for other backends). */
const kb_cuda_device *kb_cuda_device_of(kb_backend *be);

/* Waits for every queued op; returns be->check(). For timing. */
int kb_cuda_sync(kb_backend *be, lr_err *err) LR_WARN_UNUSED;

#endif
