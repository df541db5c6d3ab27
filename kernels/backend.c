/* backend: choosing a backend by name. */
#include "kernels/backend.h"
#include "kernels/cuda/cuda_backend.h"

#include <stdlib.h>
#include <string.h>

int kb_create(const char *name, int threads, kb_backend **out, lr_err *err) {
    *out = NULL;
    if (!name || !strcmp(name, "cpu")) return kb_cpu_create(threads, out, err);
    if (!strncmp(name, "cuda", 4)) return kb_cuda_create_named(name, out, err);
    return lr_errp(err, LR_E_INVALID, "backend", "unknown backend '%s' (expected cpu or cuda:N)", name);
}

void kb_destroy(kb_backend *be) {
    if (be) be->destroy(be);
}
