/* lora-worker merge: a base model + a PEFT adapter into one HF model folder. */
#include <stdio.h>
#include <string.h>

#include "worker/commands.h"
#include "worker/merge.h"

static void usage(FILE *f) {
    fprintf(f, "usage: lora-worker merge --model DIR --adapter DIR --out DIR\n"
               "  Writes base + adapter as a full Hugging Face model folder: model.safetensors in the base's\n"
               "  dtypes with W + scale * B A in every adapted weight (DoRA: rescaled to its magnitudes),\n"
               "  config.json and the tokenizer files copied.\n");
}

int cmd_merge(int argc, char **argv) {
    const char *model = NULL, *adapter = NULL, *out = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        const char **dst = !strcmp(a, "--model") ? &model : !strcmp(a, "--adapter") ? &adapter : !strcmp(a, "--out") ? &out : NULL;
        if (!dst || !v) {
            fprintf(stderr, "merge: bad option %s (see --help)\n", a);
            return 1;
        }
        *dst = v;
        i++;
    }
    if (!model || !adapter || !out) {
        usage(stderr);
        return 1;
    }
    lr_err err = {0};
    int n;
    if (merge_adapter(model, adapter, out, &n, &err)) {
        fprintf(stderr, "lora-worker merge: %s\n", err.msg);
        return 2;
    }
    printf("merged %d weight matrices into %s\n", n, out);
    return 0;
}
