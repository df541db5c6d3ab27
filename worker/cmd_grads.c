/* lora-worker grads: the loss and the LoRA gradients of one batch, for
 * checking the engine against an independent implementation.
 *
 *   lora-worker grads --model DIR --adapter ADAPTER_DIR --batch BATCH.json --out GRADS.safetensors
 *
 * BATCH.json is {"input_ids": [[...], ...], "labels": [[...], ...]}, rows of
 * equal length, labels aligned with input_ids (-100 = not scored; absent =
 * the ids themselves), shifted as HF does. Prints {"loss": mean CE over
 * the scored targets, "tokens": their count} and writes d loss / d param of
 * every LoRA tensor under the adapter's PEFT key names, f32. Dropout off. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "kernels/backend.h"
#include "kernels/elem.h"
#include "worker/commands.h"
#include "worker/model.h"
#include "worker/safetensors.h"

#define GRADS_MAX_BATCH (256u << 20)

static void usage(FILE *f) {
    fprintf(f, "usage: lora-worker grads --model DIR --adapter ADAPTER_DIR --batch BATCH.json --out GRADS.safetensors\n"
               "                         [--backend cpu] [--threads N]\n"
               "  BATCH.json: {\"input_ids\": [[...]], \"labels\": [[...]]} (-100 = ignored)\n");
}

/* Reads key (an array of equal-length int arrays) into a fresh [B*T] array. */
static int read_rows(json_t *root, const char *key, int32_t **out, int *B, int *T, lr_err *err) {
    json_t *a = json_object_get(root, key);
    *out = NULL;
    if (!json_is_array(a) || !json_array_size(a)) return lr_errp(err, LR_E_INVALID, key, "'%s' must be a non-empty array of rows", key);
    size_t nb = json_array_size(a), nt = 0;
    for (size_t b = 0; b < nb; b++) {
        json_t *row = json_array_get(a, b);
        if (!json_is_array(row) || !json_array_size(row))
            return lr_errp(err, LR_E_INVALID, key, "'%s'[%zu] must be a non-empty array of integers", key, b);
        if (b == 0) nt = json_array_size(row);
        if (json_array_size(row) != nt)
            return lr_errp(err, LR_E_INVALID, key, "'%s'[%zu] has %zu tokens, row 0 has %zu: rows must be padded to one length",
                           key, b, json_array_size(row), nt);
    }
    if (nb * nt > (1u << 24)) return lr_errp(err, LR_E_TOOBIG, key, "'%s' has too many tokens", key);
    if (*B && ((size_t)*B != nb || (size_t)*T != nt))
        return lr_errp(err, LR_E_INVALID, key, "'%s' is %zux%zu but input_ids is %dx%d", key, nb, nt, *B, *T);
    int32_t *v = malloc(nb * nt * sizeof *v);
    if (!v) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
    for (size_t b = 0; b < nb; b++)
        for (size_t t = 0; t < nt; t++) {
            json_t *x = json_array_get(json_array_get(a, b), t);
            json_int_t iv = json_is_integer(x) ? json_integer_value(x) : 0;
            if (!json_is_integer(x) || iv < INT32_MIN || iv > INT32_MAX) {
                free(v);
                return lr_errp(err, LR_E_INVALID, key, "'%s'[%zu][%zu] is not an integer", key, b, t);
            }
            v[b * nt + t] = (int32_t)iv;
        }
    *out = v, *B = (int)nb, *T = (int)nt;
    return 0;
}

static int write_grads(model *m, const char *path, lr_err *err) {
    size_t np = model_n_params(m);
    st_writer *w = st_writer_new();
    float **bufs = calloc(np ? np : 1, sizeof *bufs);
    int rc = -1;
    if (!w || !bufs) {
        lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < np; i++) {
        const model_param *p = model_param_at(m, i);
        bufs[i] = malloc(p->numel * sizeof(float));
        if (!bufs[i]) {
            lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
            goto done;
        }
        if (model_grad_get(m, i, bufs[i], p->numel, err) ||
            st_writer_add(w, p->name, ST_F32, 2, p->shape, bufs[i], err))
            goto done;
    }
    if (st_writer_meta(w, "format", "pt", err) || st_writer_write(w, path, err)) goto done;
    rc = 0;
done:
    for (size_t i = 0; bufs && i < np; i++) free(bufs[i]);
    free(bufs);
    st_writer_free(w);
    return rc;
}

int cmd_grads(int argc, char **argv) {
    const char *model_dir = NULL, *adapter_dir = NULL, *batch_path = NULL, *out_path = NULL, *backend = "cpu";
    int threads = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        if (!v) {
            fprintf(stderr, "lora-worker grads: %s needs a value\n", a);
            usage(stderr);
            return 1;
        }
        if (!strcmp(a, "--model")) model_dir = v;
        else if (!strcmp(a, "--adapter")) adapter_dir = v;
        else if (!strcmp(a, "--batch")) batch_path = v;
        else if (!strcmp(a, "--out")) out_path = v;
        else if (!strcmp(a, "--backend")) backend = v;
        else if (!strcmp(a, "--threads")) {
            char *end;
            long t = strtol(v, &end, 10);
            if (*end || t < 0 || t > 1024) {
                fprintf(stderr, "lora-worker grads: --threads must be 0..1024\n");
                return 1;
            }
            threads = (int)t;
        } else {
            fprintf(stderr, "lora-worker grads: unknown option '%s'\n", a);
            usage(stderr);
            return 1;
        }
        i++;
    }
    if (!model_dir || !adapter_dir || !batch_path || !out_path) {
        usage(stderr);
        return 1;
    }
    lr_err err = {0};
    char *text = NULL;
    size_t len;
    json_t *root = NULL;
    int32_t *ids = NULL, *labels = NULL;
    int B = 0, T = 0, rc = 2;
    kb_backend *be = NULL;
    model *m = NULL;
    if (lr_read_file(batch_path, GRADS_MAX_BATCH, &text, &len, &err)) goto fail;
    json_error_t jerr;
    root = json_loadb(text, len, 0, &jerr);
    if (!json_is_object(root)) {
        lr_errf(&err, "%s: not a JSON object (line %d: %s)", batch_path, jerr.line, jerr.text);
        goto fail;
    }
    if (read_rows(root, "input_ids", &ids, &B, &T, &err)) goto fail;
    if (json_object_get(root, "labels")) {
        if (read_rows(root, "labels", &labels, &B, &T, &err)) goto fail;
    } else {
        labels = malloc((size_t)B * T * sizeof *labels);
        if (!labels) {
            lr_errp(&err, LR_E_NOMEM, NULL, "out of memory");
            goto fail;
        }
        memcpy(labels, ids, (size_t)B * T * sizeof *labels);
    }
    int64_t scored = 0;
    for (int n = 0; n < B * T; n++) scored += n % T != T - 1 && labels[n + 1] != LR_IGNORE_INDEX;
    if (kb_create(backend, threads, &be, &err) || model_load(model_dir, be, &m, &err) ||
        model_lora_load(m, adapter_dir, &err))
        goto fail;
    double loss_sum;
    int64_t ntok;
    model_zero_grad(m);
    if (model_fwd_bwd(m, ids, labels, B, T, scored ? 1.0f / (float)scored : 0.0f, &loss_sum, &ntok, &err) ||
        write_grads(m, out_path, &err))
        goto fail;
    printf("{\"loss\": %.9g, \"tokens\": %lld}\n", ntok ? loss_sum / (double)ntok : 0.0, (long long)ntok);
    rc = 0;
fail:
    if (rc) fprintf(stderr, "lora-worker grads: %s\n", err.msg);
    model_free(m);
    kb_destroy(be);
    free(ids);
    free(labels);
    json_decref(root);
    free(text);
    return rc;
}
