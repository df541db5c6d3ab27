/* Fuzz target: adapter_config.json text (PEFT's LoraConfig). */
#include <stdint.h>
#include <stdlib.h>

#include "formats/adapter.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    lr_err err = {0};
    adapter *a = adapter_new();
    if (!a) return 0;
    if (adapter_config_parse((const char *)data, size, a, &err) == 0) {
        if (a->r < 1 || !(a->alpha > 0) || a->n_targets > ADAPTER_MAX_TARGETS) abort();
        (void)adapter_targets_module(a, ARCH_LLAMA, 0, "self_attn.q_proj");
        (void)adapter_scale(a);
    }
    adapter_free(a);
    return 0;
}
