#include "proto/pack.h"

#include <stdio.h>
#include <string.h>

/* The rules one job must meet to pack at all. */
static int pack_alone_ok(const jobspec *s, lr_err *why) {
    const char *n = s->name[0] ? s->name : "a job";
    if (!s->resources.co_train) {
        lr_errp(why, LR_E_CONFLICT, "resources.co_train", "%s has resources.co_train false", n);
        return 0;
    }
    if (s->method.type != METHOD_SFT) {
        lr_errp(why, LR_E_CONFLICT, "method.type", "%s is %s; only sft jobs share a pass", n,
                jobspec_method_name(s->method.type));
        return 0;
    }
    if (s->lora.use_dora) {
        lr_errp(why, LR_E_CONFLICT, "lora.use_dora", "%s uses DoRA, which scales the base weight per adapter", n);
        return 0;
    }
    if (s->resources.devices != 1) {
        lr_errp(why, LR_E_CONFLICT, "resources.devices", "%s trains on %d devices; a pack runs on one", n,
                s->resources.devices);
        return 0;
    }
    return 1;
}

int pack_compatible(const jobspec *a, const jobspec *b, lr_err *why) {
    if (!pack_alone_ok(a, why) || !pack_alone_ok(b, why)) return 0;
    if (strcmp(a->model, b->model)) {
        lr_errp(why, LR_E_CONFLICT, "model", "different base models (%.200s, %.200s)", a->model, b->model);
        return 0;
    }
    if (a->lora.quantize != b->lora.quantize || a->lora.double_quant != b->lora.double_quant) {
        lr_errp(why, LR_E_CONFLICT, "lora.quantize", "the base is quantized differently (lora.quantize, double_quant)");
        return 0;
    }
    if (a->compute_dtype != b->compute_dtype) {
        lr_errp(why, LR_E_CONFLICT, "compute_dtype", "different compute_dtype (%s, %s)",
                jobspec_compute_dtype_name(a->compute_dtype), jobspec_compute_dtype_name(b->compute_dtype));
        return 0;
    }
    if (a->device != b->device) {
        lr_errp(why, LR_E_CONFLICT, "device", "different devices (%s, %s)", jobspec_device_name(a->device),
                jobspec_device_name(b->device));
        return 0;
    }
    return 1;
}

int pack_key(const jobspec *s, char *buf, size_t cap) {
    if (cap) buf[0] = 0;
    if (!pack_alone_ok(s, NULL)) return 0;
    /* the model name last: it is the only part that holds free text */
    int n = snprintf(buf, cap, "%d.%d.%d.%d:%s", s->lora.quantize, s->lora.double_quant, (int)s->compute_dtype,
                     (int)s->device, s->model);
    if (n < 0 || (size_t)n >= cap) {
        if (cap) buf[0] = 0;
        return 0;
    }
    return 1;
}
