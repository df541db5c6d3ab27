/* nocuda: cuda_backend.h in a build without nvcc, where each entry point
 * says plainly that this binary has no CUDA backend (backend_cuda.cu
 * defines them when LR_HAVE_CUDA is set). */
#include "kernels/cuda/cuda_backend.h"

#ifndef LR_HAVE_CUDA
#include <string.h>

#include "kernels/cuda/plan.h"

#define NO_CUDA "this lora-worker was built without CUDA (nvcc was not found at build time); use --backend cpu"

int kb_cuda_devices(kb_cuda_device *out, int max, lr_err *err) {
    (void)out;
    (void)max;
    return lr_errp(err, LR_E_NOTFOUND, "backend", NO_CUDA);
}

int kb_cuda_create(int device, kb_dtype wdt, kb_backend **out, lr_err *err) {
    (void)wdt;
    *out = NULL;
    return lr_errp(err, LR_E_INVALID, "backend", "cuda:%d: " NO_CUDA, device);
}

int kb_cuda_create_named(const char *name, kb_backend **out, lr_err *err) {
    int dev;
    *out = NULL;
    if (cuplan_parse_device(name, &dev, err)) return -1;
    return kb_cuda_create(dev, KB_BF16, out, err);
}

int kb_cuda_meminfo(kb_backend *be, kb_cuda_mem *out) {
    (void)be;
    memset(out, 0, sizeof *out);
    return -1;
}

const kb_cuda_device *kb_cuda_device_of(kb_backend *be) {
    (void)be;
    return NULL;
}

int kb_cuda_sync(kb_backend *be, lr_err *err) {
    (void)be;
    (void)err;
    return 0;
}
#endif
