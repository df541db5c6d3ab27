/* bnb4: bitsandbytes 4-bit weights in a safetensors checkpoint (see bnb4.h). */
#include "formats/bnb4.h"

#include <jansson.h>
#include <stdio.h>
#include <string.h>

static const char *const SIDE[] = {".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map"};

int bnb4_is_side_tensor(const char *name) {
    size_t n = strlen(name);
    if (strstr(name, ".quant_state.bitsandbytes__")) return 1;
    for (size_t i = 0; i < sizeof SIDE / sizeof *SIDE; i++) {
        size_t k = strlen(SIDE[i]);
        if (n > k && !strcmp(name + n - k, SIDE[i])) return 1;
    }
    return 0;
}

st_dtype bnb4_dtype(const char *name) {
    if (name && !strcmp(name, "bfloat16")) return ST_BF16;
    if (name && !strcmp(name, "float16")) return ST_F16;
    return ST_F32;
}

static const st_tensor *side(const st_set *s, const char *name, const char *suffix) {
    char key[512];
    if ((size_t)snprintf(key, sizeof key, "%s%s", name, suffix) >= sizeof key) return NULL;
    return st_set_find(s, key);
}

static int json_int(json_t *o, const char *k, int64_t *v) {
    json_t *x = json_object_get(o, k);
    if (!json_is_integer(x)) return -1;
    *v = json_integer_value(x);
    return 0;
}

int bnb4_find(const st_set *s, const char *name, int64_t want_out, int64_t want_in, kq_weight *q,
              const st_tensor **codes, int *found, lr_err *err) {
    const st_tensor *qs = NULL;
    *found = 0;
    for (int t = KQ_NF4; t <= KQ_FP4 && !qs; t++) {
        char suffix[64];
        snprintf(suffix, sizeof suffix, ".quant_state.bitsandbytes__%s", kq_type_name((kq_type)t));
        qs = side(s, name, suffix);
    }
    if (!qs) return 0;
    memset(q, 0, sizeof *q);
    json_error_t je;
    json_t *st = qs->dtype == ST_U8 ? json_loadb(qs->data, qs->nbytes, 0, &je) : NULL;
    json_t *sh = st ? json_object_get(st, "shape") : NULL, *qt = st ? json_object_get(st, "quant_type") : NULL;
    int64_t bs = 0, nbs = 0, out = 0, in = 0;
    int rc = -1;
    if (!json_is_object(st) || !json_is_string(qt) || json_int(st, "blocksize", &bs) || !json_is_array(sh) ||
        json_array_size(sh) != 2 || !json_is_integer(json_array_get(sh, 0)) || !json_is_integer(json_array_get(sh, 1))) {
        lr_errf(err, "model weights: '%s' is not a bitsandbytes quant_state (quant_type, blocksize, shape)", qs->name);
        goto done;
    }
    out = json_integer_value(json_array_get(sh, 0)), in = json_integer_value(json_array_get(sh, 1));
    if (kq_type_parse(json_string_value(qt), &q->type) || q->type == KQ_NONE || bs != KQ_BLOCK || out <= 0 || in <= 0 ||
        (want_out && out != want_out) || (want_in && in != want_in) || out > INT32_MAX || in > INT32_MAX) {
        lr_errf(err, "model weights: '%s': %s, blocksize %lld, shape [%lld, %lld]; lorad loads nf4/fp4 in blocks of %d%s",
                qs->name, json_string_value(qt), (long long)bs, (long long)out, (long long)in, KQ_BLOCK,
                want_out ? " of the model's shape" : "");
        goto done;
    }
    json_t *off = json_object_get(st, "nested_offset");
    int nested = off != NULL;
    if (nested && (!json_is_number(off) || json_int(st, "nested_blocksize", &nbs) || nbs != KQ_NESTED_BLOCK)) {
        lr_errf(err, "model weights: '%s': double quantization needs nested_offset and nested_blocksize %d", qs->name,
                KQ_NESTED_BLOCK);
        goto done;
    }
    size_t n = (size_t)out * (size_t)in, nb = kq_nblocks(n), nn = kq_nested_nblocks(n);
    const st_tensor *c = st_set_find(s, name), *am = side(s, name, ".absmax"), *map = side(s, name, ".quant_map");
    const st_tensor *nam = nested ? side(s, name, ".nested_absmax") : NULL;
    const st_tensor *nmap = nested ? side(s, name, ".nested_quant_map") : NULL;
    if (!c || c->dtype != ST_U8 || (size_t)st_numel(c) != kq_code_bytes(n) || !am || (size_t)st_numel(am) != nb ||
        (nested ? am->dtype != ST_U8 : am->dtype != ST_F32) || !map || st_numel(map) != 16 ||
        (nested && (!nam || nam->dtype != ST_F32 || (size_t)st_numel(nam) != nn || !nmap || st_numel(nmap) != 256))) {
        lr_errf(err, "model weights: the 4-bit tensors of '%s' are missing or of the wrong size (expected U8 codes [%zu], "
                     "absmax [%zu] %s, quant_map [16]%s)",
                name, kq_code_bytes(n), nb, nested ? "U8" : "F32", nested ? ", nested_absmax, nested_quant_map" : "");
        goto done;
    }
    if (st_to_f32(map, q->book, 16, err) || (nested && st_to_f32(nmap, q->nbook, 256, err))) goto done;
    q->rows = out, q->cols = in;
    q->codes = c->data;
    if (nested) {
        q->offset = (float)json_number_value(off);
        q->qabsmax = am->data;
        q->nabsmax = nam->data;
    } else {
        q->absmax = am->data;
    }
    *codes = c;
    *found = 1;
    rc = 0;
done:
    json_decref(st);
    return rc;
}
