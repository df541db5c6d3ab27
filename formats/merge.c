/* merge: W' = W + scale * B A (DoRA: row-rescaled), streamed to one file.
 * A base saved 4-bit by transformers (bitsandbytes, worker/bnb4.h) is
 * written dequantized, in its torch_dtype, without quantization_config: the
 * merged model is a plain one. */
#include "formats/merge.h"

#include <cblas.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/buf.h"
#include "formats/adapter.h"
#include "formats/bnb4.h"
#include "formats/hfconfig.h"
#include "formats/safetensors.h"

#define MERGE_MAX_SIDE_FILE ((size_t)256 << 20)

/* The files of a model folder that describe it besides the weights. */
static const char *const SIDE_FILES[] = {"config.json",       "generation_config.json", "tokenizer.json",
                                         "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                                         "merges.txt",        "tokenizer.model",        "added_tokens.json",
                                         "chat_template.jinja", "chat_template.json"};

typedef struct mod {
    const st_tensor *w;  /* the base weight */
    const adapter_tensor *A, *B, *M;
} mod;

/* The base weight t as f32 in its HF layout (GPT-2's Conv1D [in, out]):
 * converted, or dequantized from 4 bits (q != NULL, stored [out, in]). */
static int base_f32(const st_tensor *t, const kq_weight *q, int gpt2, float *W, lr_err *err) {
    if (!q) return st_to_f32(t, W, (size_t)st_numel(t), err);
    size_t n = (size_t)q->rows * (size_t)q->cols, ns = q->absmax ? kq_nblocks(n) : kq_nested_nblocks(n);
    /* the file's f32 scales need not be 4-byte aligned: dequantize from an aligned copy */
    kq_weight a = *q;
    float *sc = malloc(ns * sizeof *sc), *row = gpt2 ? malloc((size_t)q->cols * sizeof *row) : NULL;
    if (!sc || (gpt2 && !row)) {
        free(sc), free(row);
        return lr_errp(err, LR_E_NOMEM, NULL, "out of memory dequantizing %s", t->name);
    }
    memcpy(sc, q->absmax ? q->absmax : q->nabsmax, ns * sizeof *sc);
    if (q->absmax) a.absmax = sc;
    else a.nabsmax = sc;
    if (!gpt2) kq_dequant_range(&a, 0, n, W);
    for (int64_t o = 0; gpt2 && o < q->rows; o++) {
        kq_dequant_range(&a, (size_t)(o * q->cols), (size_t)q->cols, row);
        for (int64_t i = 0; i < q->cols; i++) W[(size_t)(i * q->rows + o)] = row[i];
    }
    free(sc), free(row);
    return 0;
}

/* Base weight of one adapted module; GPT2Model checkpoints lack "transformer.". */
static const st_tensor *base_weight(const st_set *s, const adapter_tensor *A, int gpt2, char *name, size_t cap) {
    if (gpt2) {
        snprintf(name, cap, "transformer.h.%d.%s.weight", A->layer, A->module);
        const st_tensor *t = st_set_find(s, name);
        return t ? t : st_set_find(s, name + 12);
    }
    snprintf(name, cap, "model.layers.%d.%s.weight", A->layer, A->module);
    return st_set_find(s, name);
}

/* W (f32, as stored) += scale * delta, then the DoRA rescale. */
static void merge_one(float *W, const mod *md, float scale, int gpt2) {
    int r = md->A->rows, in = md->A->cols, out = md->B->rows;
    if (gpt2) /* W [in, out] += scale * A^T B^T */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasTrans, in, out, r, scale, md->A->data, in, md->B->data, r, 1.0f,
                    W, out);
    else /* W [out, in] += scale * B A */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, out, in, r, scale, md->B->data, r, md->A->data, in,
                    1.0f, W, in);
    if (!md->M) return;
    for (int o = 0; o < out; o++) { /* output feature o: a row, or a column of Conv1D's layout */
        double ss = 0;
        for (int i = 0; i < in; i++) {
            double x = gpt2 ? W[(size_t)i * out + o] : W[(size_t)o * in + i];
            ss += x * x;
        }
        float f = (float)(md->M->data[o] / sqrt(ss));
        for (int i = 0; i < in; i++) {
            if (gpt2) W[(size_t)i * out + o] *= f;
            else W[(size_t)o * in + i] *= f;
        }
    }
}

/* One output tensor ot from base tensor t (4-bit when q): to f32, merged
 * when md, to ot's dtype, written. */
static int put_merged(st_stream *ss, const st_tensor *ot, const st_tensor *t, const kq_weight *q, const mod *md,
                      float scale, int gpt2, lr_err *err) {
    size_t n = (size_t)st_numel(ot);
    float *W = malloc(n * sizeof(float));
    int rc = -1;
    if (!W) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory merging %s", t->name);
    if (base_f32(t, q, gpt2, W, err)) goto done;
    if (md) merge_one(W, md, scale, gpt2);
    t = ot;
    if (t->dtype == ST_F32) {
        rc = st_stream_put(ss, W, n * sizeof(float), err);
    } else { /* in place: element i goes to bytes 2i..2i+1 */
        uint16_t *h = (uint16_t *)W;
        for (size_t i = 0; i < n; i++) h[i] = t->dtype == ST_BF16 ? st_f32_to_bf16(W[i]) : st_f32_to_f16(W[i]);
        rc = st_stream_put(ss, h, n * sizeof(uint16_t), err);
    }
done:
    free(W);
    return rc;
}

int merge_copy_side_files(const char *from, const char *to, lr_err *err) {
    char src[PATH_MAX], dst[PATH_MAX];
    for (size_t i = 0; i < sizeof SIDE_FILES / sizeof SIDE_FILES[0]; i++) {
        if (lr_pathf(src, sizeof src, "%s/%s", from, SIDE_FILES[i]) ||
            lr_pathf(dst, sizeof dst, "%s/%s", to, SIDE_FILES[i]))
            return lr_errf(err, "path too long in %s", to);
        if (access(src, F_OK)) continue;
        char *buf = NULL;
        size_t len;
        int rc = lr_read_file(src, MERGE_MAX_SIDE_FILE, &buf, &len, err) || lr_write_file_atomic(dst, buf, len, err);
        free(buf);
        if (rc) return -1;
    }
    return 0;
}

/* config.json of a merge from a 4-bit base: without quantization_config. */
static int drop_quant_config(const char *out_dir, lr_err *err) {
    char path[PATH_MAX];
    if (lr_pathf(path, sizeof path, "%s/config.json", out_dir)) return lr_errf(err, "path too long in %s", out_dir);
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    if (!root) return lr_errf(err, "%s: line %d: %s", path, je.line, je.text);
    json_object_del(root, "quantization_config");
    char *text = json_dumps(root, JSON_INDENT(2) | JSON_SORT_KEYS);
    json_decref(root);
    if (!text) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
    size_t len = strlen(text);
    text[len] = '\n'; /* json_dumps's terminator becomes the final newline */
    int rc = lr_write_file_atomic(path, text, len + 1, err);
    free(text);
    return rc;
}

/* The 4-bit form of base tensor t, if it has one (*q filled, returns 1). */
static int quantized(const st_set *s, const st_tensor *t, kq_weight *q, lr_err *err) {
    const st_tensor *codes;
    int found;
    if (bnb4_find(s, t->name, 0, 0, q, &codes, &found, err)) return -1;
    return found;
}

static int same_dir(const char *a, const char *b) {
    char ra[PATH_MAX], rb[PATH_MAX];
    return realpath(a, ra) && realpath(b, rb) && !strcmp(ra, rb);
}

int merge_adapter(const char *model_dir, const char *adapter_dir, const char *out_dir, int *n_merged, lr_err *err) {
    char path[PATH_MAX], name[256];
    hf_config c;
    adapter *a = NULL;
    st_set *s = NULL;
    st_writer *w = NULL;
    st_stream *ss = NULL;
    mod *mods = NULL;
    int nm = 0, rc = -1;
    if (n_merged) *n_merged = 0;
    if (same_dir(model_dir, out_dir) || same_dir(adapter_dir, out_dir))
        return lr_errp(err, LR_E_INVALID, "out", "the output folder must differ from the model and adapter folders");
    if (lr_pathf(path, sizeof path, "%s/config.json", model_dir) || hf_config_load(path, &c, err)) goto fail;
    if (adapter_load(adapter_dir, &a, err)) {
        lr_err_prefix(err, "adapter %s: ", adapter_dir);
        goto fail;
    }
    if (adapter_check_model(a, &c, err)) {
        lr_err_prefix(err, "adapter %s: ", adapter_dir);
        goto fail;
    }
    if (st_set_open_dir(model_dir, &s, err)) goto fail;
    int gpt2 = c.arch == ARCH_GPT2;
    mods = calloc((size_t)a->n_tensors + 1, sizeof *mods);
    if (!mods) {
        lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
        goto fail;
    }
    for (int i = 0; i < a->n_tensors; i++) {
        const adapter_tensor *A = &a->t[i];
        if (A->kind != ADAPTER_A) continue;
        mod *md = &mods[nm];
        md->A = A;
        md->B = adapter_find(a, A->layer, A->module, ADAPTER_B);
        md->M = a->use_dora ? adapter_find(a, A->layer, A->module, ADAPTER_MAGNITUDE) : NULL;
        md->w = base_weight(s, A, gpt2, name, sizeof name);
        if (!md->B) {
            lr_errf(err, "adapter %s: layer %d %s has lora_A but no lora_B", adapter_dir, A->layer, A->module);
            goto fail;
        }
        if (!md->w) {
            lr_errf(err, "model %s has no weight %s for the adapter's layer %d %s", model_dir, name, A->layer, A->module);
            goto fail;
        }
        int in = A->cols, out = md->B->rows;
        const st_tensor *t = md->w;
        kq_weight q;
        int qz = quantized(s, t, &q, err);
        if (qz < 0) goto fail;
        if (qz && (q.rows != out || q.cols != in)) {
            lr_errf(err, "model weight %s is 4-bit [%lld, %lld], not [%d, %d] as the adapter's layer %d %s needs",
                    t->name, (long long)q.rows, (long long)q.cols, out, in, A->layer, A->module);
            goto fail;
        }
        if (!qz && (t->ndim != 2 || t->shape[0] != (gpt2 ? in : out) || t->shape[1] != (gpt2 ? out : in))) {
            lr_errf(err, "model weight %s is not [%d, %d] as the adapter's layer %d %s needs", t->name, gpt2 ? in : out,
                    gpt2 ? out : in, A->layer, A->module);
            goto fail;
        }
        if (!qz && t->dtype != ST_F32 && t->dtype != ST_BF16 && t->dtype != ST_F16) {
            lr_errf(err, "model weight %s has dtype %s (expected F32, F16 or BF16)", t->name, st_dtype_name(t->dtype));
            goto fail;
        }
        nm++;
    }
    if (!nm) {
        lr_errf(err, "adapter %s has no LoRA weights", adapter_dir);
        goto fail;
    }
    if (lr_mkdirs(out_dir, err)) goto fail;
    w = st_writer_new();
    if (!w) {
        lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
        goto fail;
    }
    st_dtype cdt = bnb4_dtype(c.torch_dtype);
    for (size_t i = 0; i < st_set_count(s); i++) {
        const st_tensor *t = st_set_at(s, i);
        kq_weight q = {0};
        int qz = bnb4_is_side_tensor(t->name) ? 2 : quantized(s, t, &q, err);
        if (qz < 0) goto fail;
        if (qz == 2) continue;
        int64_t shape[2] = {gpt2 ? q.cols : q.rows, gpt2 ? q.rows : q.cols};
        if (qz ? st_writer_add(w, t->name, cdt, 2, shape, NULL, err)
               : st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, NULL, err))
            goto fail;
    }
    if (st_writer_meta(w, "format", "pt", err) || lr_pathf(path, sizeof path, "%s/model.safetensors", out_dir) ||
        st_stream_begin(w, path, &ss, err))
        goto fail;
    float scale = adapter_scale(a);
    for (const st_tensor *t; (t = st_stream_next(ss));) {
        const mod *md = NULL;
        for (int k = 0; k < nm && !md; k++)
            if (!strcmp(mods[k].w->name, t->name)) md = &mods[k];
        const st_tensor *src = st_set_find(s, t->name);
        kq_weight q;
        int qz = quantized(s, src, &q, err);
        if (qz < 0) goto fail_stream;
        if (md || qz) {
            if (put_merged(ss, t, src, qz ? &q : NULL, md, scale, gpt2, err)) goto fail_stream;
        } else {
            if (st_stream_put(ss, src->data, src->nbytes, err)) goto fail_stream;
        }
    }
    rc = st_stream_finish(ss, err);
    ss = NULL;
    if (rc) goto fail;
    rc = merge_copy_side_files(model_dir, out_dir, err) || (c.quant_type[0] && drop_quant_config(out_dir, err));
    if (!rc && n_merged) *n_merged = nm;
    goto done;
fail_stream:
    st_stream_abort(ss);
fail:
    rc = -1;
done:
    if (rc) lr_err_prefix(err, "merge: ");
    free(mods);
    st_writer_free(w);
    st_set_close(s);
    adapter_free(a);
    return rc;
}
