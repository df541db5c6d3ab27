/* lora-worker grads: the loss and the LoRA gradients of one batch, for
 * checking the engine against an independent implementation.
 *
 *   lora-worker grads --model DIR --adapter ADAPTER_DIR --batch BATCH.json --out GRADS.safetensors
 *                     [--method sft|kl_sft|dpo] [--kl-lambda L] [--kl-tau T] [--beta B]
 *                     [--reference-adapter DIR] [--quantize nf4|fp4 [--double-quant]]
 *   lora-worker grads --model DIR --full --batch BATCH.json --out GRADS.safetensors
 *
 * BATCH.json is {"input_ids": [[...], ...], "labels": [[...], ...]}, rows of
 * equal length, labels aligned with input_ids (-100 = not scored; absent =
 * the ids themselves), shifted as HF does. Writes d loss / d param of every
 * trainable tensor (LoRA A, B and DoRA magnitudes) under the adapter's PEFT
 * key names, f32, and prints one JSON line with "loss" and "tokens" (the
 * scored targets):
 *  - sft: loss = mean CE over the scored targets, also "accuracy" (the
 *    share of them that are their logits' argmax);
 *  - kl_sft: loss = mean CE + lambda tau^2 mean KL(base || adapted) over the
 *    scored targets (model_fwd_bwd_kl), also "ce" and "kl" (the means) and
 *    "accuracy" as sft's;
 *  - dpo: rows [0, B/2) are the chosen, [B/2, B) the rejected answers;
 *    loss = mean over pairs of the sigmoid DPO loss against the base model
 *    or --reference-adapter, also "rewards/accuracy", "rewards/margin",
 *    "rewards/chosen", "rewards/rejected" (means over pairs).
 * With --full (full fine-tuning, sft only) the trainable tensors are every
 * base weight, written under the model checkpoint's own names.
 * --quantize runs on a 4-bit base (QLoRA: model_load_quant), quantized at
 * load; a checkpoint saved 4-bit loads 4-bit without it.
 * Dropout off. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "kernels/backend.h"
#include "kernels/elem.h"
#include "worker/commands.h"
#include "worker/model.h"
#include "formats/safetensors.h"

#define GRADS_MAX_BATCH (256u << 20)

static void usage(FILE *f) {
    fprintf(f, "usage: lora-worker grads --model DIR (--adapter ADAPTER_DIR | --full) --batch BATCH.json --out GRADS.safetensors\n"
               "                         [--backend cpu] [--threads N] [--method sft|kl_sft|dpo]\n"
               "                         [--kl-lambda L] [--kl-tau T] [--beta B] [--reference-adapter DIR]\n"
               "                         [--quantize nf4|fp4 [--double-quant]]\n"
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
            st_writer_add(w, p->name, ST_F32, p->ndim, p->shape, bufs[i], err))
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
    const char *method = "sft", *ref_dir = NULL;
    double kl_lambda = 0.1, kl_tau = 1.0, beta = 0.1;
    int threads = 0, full = 0;
    model_quant mq = {KQ_NONE, 0, MODEL_MM_F32};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--full")) {
            full = 1;
            continue;
        }
        if (!strcmp(a, "--double-quant")) {
            mq.double_quant = 1;
            continue;
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
        else if (!strcmp(a, "--method")) method = v;
        else if (!strcmp(a, "--reference-adapter")) ref_dir = v;
        else if (!strcmp(a, "--quantize")) {
            if (kq_type_parse(v, &mq.type)) {
                fprintf(stderr, "lora-worker grads: --quantize must be nf4, fp4 or none\n");
                return 1;
            }
        }
        else if (!strcmp(a, "--kl-lambda") || !strcmp(a, "--kl-tau") || !strcmp(a, "--beta")) {
            char *end;
            double x = strtod(v, &end);
            if (*end || !(x >= 0 && x <= 1e4)) {
                fprintf(stderr, "lora-worker grads: %s must be a number in [0, 1e4]\n", a);
                return 1;
            }
            *(!strcmp(a, "--kl-lambda") ? &kl_lambda : !strcmp(a, "--kl-tau") ? &kl_tau : &beta) = x;
        } else if (!strcmp(a, "--threads")) {
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
    if (!model_dir || !adapter_dir == !full || !batch_path || !out_path) {
        usage(stderr);
        return 1;
    }
    int kind = !strcmp(method, "sft") ? 0 : !strcmp(method, "kl_sft") ? 1 : !strcmp(method, "dpo") ? 2 : -1;
    if (kind < 0) {
        fprintf(stderr, "lora-worker grads: --method must be sft, kl_sft or dpo\n");
        return 1;
    }
    if (full && kind != 0) {
        fprintf(stderr, "lora-worker grads: --full applies to --method sft\n");
        return 1;
    }
    if (ref_dir && kind != 2) {
        fprintf(stderr, "lora-worker grads: --reference-adapter applies to --method dpo\n");
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
    if (kind == 2 && B % 2) {
        lr_errf(&err, "%s: --method dpo needs an even number of rows (chosen rows, then rejected rows)", batch_path);
        goto fail;
    }
    if (kb_create(backend, threads, &be, &err) || model_load_quant(model_dir, be, &mq, &m, &err) ||
        (full ? model_full_init(m, &err) : model_lora_load(m, adapter_dir, &err)) || (ref_dir && model_ref_load(m, ref_dir, &err)))
        goto fail;
    double loss_sum, ce, kl;
    int64_t ntok;
    float gs = scored ? 1.0f / (float)scored : 0.0f;
    model_zero_grad(m);
    if (kind == 0) {
        if (model_fwd_bwd(m, ids, labels, B, T, gs, &loss_sum, &ntok, &err)) goto fail;
        printf("{\"loss\": %.9g, \"tokens\": %lld, \"accuracy\": %.9g}\n", ntok ? loss_sum / (double)ntok : 0.0,
               (long long)ntok, ntok ? (double)model_last_correct(m) / (double)ntok : 0.0);
    } else if (kind == 1) {
        if (model_fwd_bwd_kl(m, ids, labels, B, T, (float)kl_lambda, (float)kl_tau, gs, &ce, &kl, &ntok, &err))
            goto fail;
        double n = ntok ? (double)ntok : 1.0;
        printf("{\"loss\": %.9g, \"ce\": %.9g, \"kl\": %.9g, \"tokens\": %lld, \"accuracy\": %.9g}\n",
               (ce + kl_lambda * kl_tau * kl_tau * kl) / n, ce / n, kl / n, (long long)ntok,
               (double)model_last_correct(m) / n);
    } else {
        model_dpo_out o;
        int P = B / 2;
        if (model_dpo(m, ids, labels, P, T, (float)beta, ref_dir ? MODEL_REF_ADAPTER : MODEL_REF_BASE, 1,
                      1.0f / (float)P, &o, &err))
            goto fail;
        printf("{\"loss\": %.9g, \"tokens\": %lld, \"rewards/accuracy\": %.9g, \"rewards/margin\": %.9g, "
               "\"rewards/chosen\": %.9g, \"rewards/rejected\": %.9g}\n",
               o.loss_sum / P, (long long)o.n_tokens, o.accurate / P, (o.chosen_reward_sum - o.rejected_reward_sum) / P,
               o.chosen_reward_sum / P, o.rejected_reward_sum / P);
    }
    if (write_grads(m, out_path, &err)) goto fail;
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
