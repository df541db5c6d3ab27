/* lora-worker merge: a base model + a PEFT adapter into one HF model folder. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/msg.h"
#include "worker/commands.h"
#include "formats/merge.h"

static void usage(FILE *f) {
    fprintf(f, "usage: lora-worker merge --model DIR --adapter DIR --out DIR [--json]\n"
               "  Writes base + adapter as a full Hugging Face model folder: model.safetensors in the base's\n"
               "  dtypes with W + scale * B A in every adapted weight (DoRA: rescaled to its magnitudes),\n"
               "  config.json and the tokenizer files copied. --json prints {\"merged\": N, \"out\": DIR}, or on a\n"
               "  failure {\"error\": {code, param, message}}.\n");
}

int cmd_merge(int argc, char **argv) {
    const char *model = NULL, *adapter = NULL, *out = NULL;
    int as_json = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--json")) {
            as_json = 1;
            continue;
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
    int rc = merge_adapter(model, adapter, out, &n, &err) ? 2 : 0;
    if (rc) fprintf(stderr, "lora-worker merge: %s\n", err.msg);
    if (!as_json) {
        if (!rc) printf("merged %d weight matrices into %s\n", n, out);
        return rc;
    }
    json_t *o = rc ? msg_child_error(&err) : json_pack("{s:i, s:s}", "merged", n, "out", out);
    char *line = o ? json_dumps(o, JSON_COMPACT) : NULL;
    if (line) printf("%s\n", line);
    free(line);
    json_decref(o);
    return rc;
}
