#include "formats/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/buf.h"

#define ST_MAX_INDEX (64u << 20) /* model.safetensors.index.json */

/* name, element size, and rank in the reference implementation's Dtype
 * enum (its writer orders tensors by that rank, descending). */
static const struct {
    const char *name;
    size_t size;
    int rank;
} DT[] = {
    [ST_F32] = {"F32", 4, 11},     [ST_F16] = {"F16", 2, 7},       [ST_BF16] = {"BF16", 2, 8},
    [ST_F64] = {"F64", 8, 12},     [ST_I32] = {"I32", 4, 9},       [ST_I64] = {"I64", 8, 13},
    [ST_I8] = {"I8", 1, 2},        [ST_U8] = {"U8", 1, 1},         [ST_BOOL] = {"BOOL", 1, 0},
    [ST_I16] = {"I16", 2, 5},      [ST_U16] = {"U16", 2, 6},       [ST_U32] = {"U32", 4, 10},
    [ST_U64] = {"U64", 8, 14},     [ST_F8_E4M3] = {"F8_E4M3", 1, 4}, [ST_F8_E5M2] = {"F8_E5M2", 1, 3},
};
#define N_DT ((int)(sizeof DT / sizeof DT[0]))

size_t st_dtype_size(st_dtype dt) { return (int)dt >= 0 && (int)dt < N_DT ? DT[dt].size : 0; }

const char *st_dtype_name(st_dtype dt) { return (int)dt >= 0 && (int)dt < N_DT ? DT[dt].name : "?"; }

int st_dtype_parse(const char *name, st_dtype *out) {
    for (int i = 0; i < N_DT; i++)
        if (!strcmp(DT[i].name, name)) {
            *out = (st_dtype)i;
            return 0;
        }
    return -1;
}

int64_t st_numel(const st_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

/* ---- numeric conversions ---- */

static uint32_t f2u(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float u2f(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

float st_bf16_to_f32(uint16_t h) { return u2f((uint32_t)h << 16); }

uint16_t st_f32_to_bf16(float f) {
    uint32_t u = f2u(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

float st_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    if (exp == 0x1f) return u2f(sign | 0x7f800000u | (man << 13));
    if (exp) return u2f(sign | ((exp + 112) << 23) | (man << 13));
    /* subnormal: man * 2^-24, exact in f32 */
    float v = (float)man * 0x1.0p-24f;
    return sign ? -v : v;
}

uint16_t st_f32_to_f16(float f) {
    uint32_t u = f2u(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return sign | 0x7e00 | (uint16_t)((a >> 13) & 0x3ff); /* NaN stays NaN */
    if (a >= 0x477ff000u) return sign | 0x7c00; /* rounds to >= 65520: infinity */
    if (a < 0x38800000u) {
        /* below the smallest normal (2^-14): round a * 2^24 to an integer */
        float v = u2f(a) * 0x1.0p24f;
        /* nearbyint-free round-half-even: f32 adding 2^23 rounds to an integer */
        float r = (v + 0x1.0p23f) - 0x1.0p23f;
        return sign | (uint16_t)r;
    }
    uint32_t e = (a >> 23) - 112, m = a & 0x7fffffu;
    uint32_t h = (e << 10) | (m >> 13);
    uint32_t rest = m & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1))) h++; /* carries into the exponent correctly */
    return sign | (uint16_t)h;
}

static float f8e4m3_to_f32(uint8_t b) {
    int sign = b & 0x80, exp = (b >> 3) & 0xf, man = b & 7;
    float v;
    if (exp == 0xf && man == 7) return u2f(0x7fc00000u); /* the only NaN of e4m3fn */
    if (exp == 0) v = (float)man * 0x1.0p-9f;
    else v = u2f((uint32_t)(exp + 120) << 23 | (uint32_t)man << 20);
    return sign ? -v : v;
}

static float f8e5m2_to_f32(uint8_t b) { return st_f16_to_f32((uint16_t)(b << 8)); }

int st_to_f32(const st_tensor *t, float *dst, size_t n, lr_err *err) {
    if ((int64_t)n != st_numel(t))
        return lr_errf(err, "tensor '%s': asked for %zu values, it has %lld", t->name, n,
                       (long long)st_numel(t));
    const unsigned char *p = t->data;
    switch (t->dtype) {
    case ST_F32:
        if (n) memcpy(dst, p, n * 4);
        return 0;
    case ST_F16:
    case ST_BF16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            dst[i] = t->dtype == ST_F16 ? st_f16_to_f32(h) : st_bf16_to_f32(h);
        }
        return 0;
    case ST_F64:
        for (size_t i = 0; i < n; i++) {
            double d;
            memcpy(&d, p + 8 * i, 8);
            dst[i] = (float)d;
        }
        return 0;
    case ST_F8_E4M3:
        for (size_t i = 0; i < n; i++) dst[i] = f8e4m3_to_f32(p[i]);
        return 0;
    case ST_F8_E5M2:
        for (size_t i = 0; i < n; i++) dst[i] = f8e5m2_to_f32(p[i]);
        return 0;
    default:
        return lr_errf(err, "tensor '%s': dtype %s is not a floating-point type", t->name,
                       st_dtype_name(t->dtype));
    }
}

/* ---- reading ---- */

typedef struct st_meta {
    char *key, *value;
} st_meta;

struct st_file {
    void *map;        /* NULL for st_open_mem */
    size_t map_len;
    st_tensor *t;     /* sorted by name */
    size_t n;
    st_meta *meta;
    size_t n_meta;
};

static void file_free(st_file *f) {
    if (!f) return;
    for (size_t i = 0; i < f->n; i++) free(f->t[i].name);
    for (size_t i = 0; i < f->n_meta; i++) {
        free(f->meta[i].key);
        free(f->meta[i].value);
    }
    free(f->t);
    free(f->meta);
    if (f->map) munmap(f->map, f->map_len);
    free(f);
}

void st_close(st_file *f) { file_free(f); }

static int cmp_name(const void *a, const void *b) {
    return strcmp(((const st_tensor *)a)->name, ((const st_tensor *)b)->name);
}

/* Sorts tensor pointers by data position; the payload pointer order is the
 * file order because all point into one image. */
static int cmp_pos(const void *a, const void *b) {
    const st_tensor *x = *(const st_tensor *const *)a, *y = *(const st_tensor *const *)b;
    const char *px = x->data, *py = y->data;
    if (px != py) return px < py ? -1 : 1;
    return x->nbytes < y->nbytes ? -1 : x->nbytes > y->nbytes;
}

static uint64_t rd_le64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

static int parse_meta(st_file *f, json_t *m, const char *name, lr_err *err) {
    if (!json_is_object(m)) return lr_errf(err, "%s: __metadata__ must be an object of strings", name);
    f->meta = calloc(json_object_size(m) ? json_object_size(m) : 1, sizeof *f->meta);
    if (!f->meta) return lr_errp(err, LR_E_NOMEM, NULL, "%s: out of memory", name);
    const char *k;
    json_t *v;
    json_object_foreach(m, k, v) {
        if (!json_is_string(v))
            return lr_errf(err, "%s: __metadata__ value of '%s' must be a string", name, k);
        st_meta *e = &f->meta[f->n_meta];
        e->key = strdup(k);
        e->value = strdup(json_string_value(v));
        f->n_meta++; /* counted before the check so that file_free frees both */
        if (!e->key || !e->value) return lr_errp(err, LR_E_NOMEM, NULL, "%s: out of memory", name);
    }
    return 0;
}

/* Validates one tensor entry of the header and fills t (name excluded). */
static int parse_entry(st_tensor *t, const char *key, json_t *v, const unsigned char *data,
                       uint64_t data_len, const char *name, lr_err *err) {
    if (!json_is_object(v)) return lr_errf(err, "%s: tensor '%s': entry must be an object", name, key);
    json_t *jd = json_object_get(v, "dtype"), *js = json_object_get(v, "shape"),
           *jo = json_object_get(v, "data_offsets");
    if (!json_is_string(jd)) return lr_errf(err, "%s: tensor '%s': missing string 'dtype'", name, key);
    if (st_dtype_parse(json_string_value(jd), &t->dtype))
        return lr_errf(err, "%s: tensor '%s': unknown dtype '%.32s'", name, key, json_string_value(jd));
    if (!json_is_array(js)) return lr_errf(err, "%s: tensor '%s': missing array 'shape'", name, key);
    if (json_array_size(js) > ST_MAX_DIMS)
        return lr_errf(err, "%s: tensor '%s': %zu dimensions (at most %d)", name, key,
                       json_array_size(js), ST_MAX_DIMS);
    t->ndim = (int)json_array_size(js);
    uint64_t numel = 1;
    int overflow = 0;
    for (int i = 0; i < t->ndim; i++) {
        json_t *d = json_array_get(js, (size_t)i);
        if (!json_is_integer(d) || json_integer_value(d) < 0)
            return lr_errf(err, "%s: tensor '%s': shape entries must be non-negative integers", name, key);
        t->shape[i] = json_integer_value(d);
        if (__builtin_mul_overflow(numel, (uint64_t)t->shape[i], &numel)) overflow = 1;
    }
    uint64_t nbytes;
    if (overflow || __builtin_mul_overflow(numel, (uint64_t)DT[t->dtype].size, &nbytes))
        return lr_errf(err, "%s: tensor '%s': shape is too large", name, key);
    if (!json_is_array(jo) || json_array_size(jo) != 2 || !json_is_integer(json_array_get(jo, 0)) ||
        !json_is_integer(json_array_get(jo, 1)))
        return lr_errf(err, "%s: tensor '%s': 'data_offsets' must be [begin, end]", name, key);
    json_int_t b = json_integer_value(json_array_get(jo, 0)), e = json_integer_value(json_array_get(jo, 1));
    if (b < 0 || e < b || (uint64_t)e > data_len)
        return lr_errf(err, "%s: tensor '%s': data_offsets [%lld, %lld] outside the %llu data bytes", name,
                       key, (long long)b, (long long)e, (unsigned long long)data_len);
    if ((uint64_t)(e - b) != nbytes)
        return lr_errf(err, "%s: tensor '%s': %lld bytes for a %s tensor of %llu elements (needs %llu)", name,
                       key, (long long)(e - b), DT[t->dtype].name, (unsigned long long)numel,
                       (unsigned long long)nbytes);
    t->data = data + b;
    t->nbytes = (size_t)nbytes;
    return 0;
}

static int parse_image(st_file *f, const unsigned char *p, size_t len, const char *name, lr_err *err) {
    json_t *root = NULL;
    const st_tensor **pos = NULL;
    if (len < 8) return lr_errf(err, "%s: %zu bytes is too short for a safetensors file", name, len);
    uint64_t hlen = rd_le64(p);
    if (hlen > ST_MAX_HEADER)
        return lr_errp(err, LR_E_TOOBIG, NULL, "%s: header of %llu bytes is over the %u-byte limit", name,
                       (unsigned long long)hlen, ST_MAX_HEADER);
    if (hlen > len - 8)
        return lr_errf(err, "%s: header of %llu bytes runs past the end of the %zu-byte file (truncated?)",
                       name, (unsigned long long)hlen, len);
    if (hlen < 2 || p[8] != '{') return lr_errf(err, "%s: header is not a JSON object", name);
    json_error_t je;
    root = json_loadb((const char *)p + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &je);
    if (!root) return lr_errf(err, "%s: header JSON: %s (at byte %d)", name, je.text, je.position);
    if (!json_is_object(root)) {
        lr_errf(err, "%s: header is not a JSON object", name);
        goto fail;
    }
    const unsigned char *data = p + 8 + hlen;
    uint64_t data_len = len - 8 - hlen;
    size_t cap = json_object_size(root);
    f->t = calloc(cap ? cap : 1, sizeof *f->t);
    pos = calloc(cap ? cap : 1, sizeof *pos);
    if (!f->t || !pos) {
        lr_errp(err, LR_E_NOMEM, NULL, "%s: out of memory", name);
        goto fail;
    }
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        if (!strcmp(key, "__metadata__")) {
            if (parse_meta(f, v, name, err)) goto fail;
            continue;
        }
        st_tensor *t = &f->t[f->n];
        if (parse_entry(t, key, v, data, data_len, name, err)) goto fail;
        if (!(t->name = strdup(key))) {
            lr_errp(err, LR_E_NOMEM, NULL, "%s: out of memory", name);
            goto fail;
        }
        pos[f->n] = t;
        f->n++;
    }
    /* The tensors must tile the data area: sorted by position, each begins
     * where the previous ended and the last ends at the end of the file. */
    qsort(pos, f->n, sizeof *pos, cmp_pos);
    const unsigned char *at = data;
    for (size_t i = 0; i < f->n; i++) {
        if ((const unsigned char *)pos[i]->data != at) {
            lr_errf(err, "%s: tensor '%s' %s the previous tensor's data (offset %lld, expected %lld)", name,
                    pos[i]->name, (const unsigned char *)pos[i]->data < at ? "overlaps" : "leaves a gap after",
                    (long long)((const unsigned char *)pos[i]->data - data), (long long)(at - data));
            goto fail;
        }
        at += pos[i]->nbytes;
    }
    if ((uint64_t)(at - data) != data_len) {
        lr_errf(err, "%s: %llu bytes after the last tensor (the data area is %llu bytes, tensors cover %llu)",
                name, (unsigned long long)(data_len - (uint64_t)(at - data)), (unsigned long long)data_len,
                (unsigned long long)(at - data));
        goto fail;
    }
    qsort(f->t, f->n, sizeof *f->t, cmp_name);
    free(pos);
    json_decref(root);
    return 0;
fail:
    free(pos);
    json_decref(root);
    return -1;
}

int st_open_mem(const void *data, size_t len, const char *name, st_file **out, lr_err *err) {
    *out = NULL;
    st_file *f = calloc(1, sizeof *f);
    if (!f) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
    if (parse_image(f, data, len, name ? name : "safetensors", err)) {
        file_free(f);
        return -1;
    }
    *out = f;
    return 0;
}

int st_open(const char *path, st_file **out, lr_err *err) {
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return lr_errp(err, errno == ENOENT ? LR_E_NOTFOUND : LR_E_IO, NULL, "%s: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) || !S_ISREG(sb.st_mode)) {
        close(fd);
        return lr_errp(err, LR_E_IO, NULL, "%s: not a regular file", path);
    }
    size_t len = (size_t)sb.st_size;
    st_file *f = calloc(1, sizeof *f);
    if (!f) {
        close(fd);
        return lr_errp(err, LR_E_NOMEM, NULL, "%s: out of memory", path);
    }
    if (len) {
        void *m = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            close(fd);
            free(f);
            return lr_errp(err, LR_E_IO, NULL, "%s: mmap: %s", path, strerror(errno));
        }
        f->map = m;
        f->map_len = len;
    }
    close(fd);
    if (parse_image(f, f->map, len, path, err)) {
        file_free(f);
        return -1;
    }
    *out = f;
    return 0;
}

size_t st_count(const st_file *f) { return f->n; }

const st_tensor *st_at(const st_file *f, size_t i) { return i < f->n ? &f->t[i] : NULL; }

const st_tensor *st_find(const st_file *f, const char *name) {
    st_tensor key = {.name = (char *)name};
    return bsearch(&key, f->t, f->n, sizeof *f->t, cmp_name);
}

const char *st_metadata(const st_file *f, const char *key) {
    for (size_t i = 0; i < f->n_meta; i++)
        if (!strcmp(f->meta[i].key, key)) return f->meta[i].value;
    return NULL;
}

/* ---- sets of shards ---- */

struct st_set {
    st_file **files;
    char **file_names;
    size_t n_files;
    const st_tensor **all; /* sorted by name */
    size_t n;
};

void st_set_release(const st_set *s, const st_tensor *t) {
    long pg = sysconf(_SC_PAGESIZE);
    for (size_t i = 0; i < s->n_files; i++) {
        const st_file *f = s->files[i];
        const char *b = f->map, *d = t->data;
        if (!b || d < b || d + t->nbytes > b + f->map_len || pg <= 0) continue;
        uintptr_t lo = ((uintptr_t)d + (uintptr_t)pg - 1) & ~((uintptr_t)pg - 1);
        uintptr_t hi = ((uintptr_t)d + t->nbytes) & ~((uintptr_t)pg - 1);
        if (hi > lo) madvise((void *)lo, hi - lo, MADV_DONTNEED);
        return;
    }
}


void st_set_close(st_set *s) {
    if (!s) return;
    for (size_t i = 0; i < s->n_files; i++) {
        st_close(s->files[i]);
        free(s->file_names[i]);
    }
    free(s->files);
    free(s->file_names);
    free(s->all);
    free(s);
}

static int cmp_tptr(const void *a, const void *b) {
    return strcmp((*(const st_tensor *const *)a)->name, (*(const st_tensor *const *)b)->name);
}

/* Shard names come from an untrusted index: plain file names only. */
static int shard_name_ok(const char *s) {
    size_t n = strlen(s);
    return n > 12 && n < 256 && s[0] != '.' && !strchr(s, '/') && !strcmp(s + n - 12, ".safetensors");
}

static int set_add_file(st_set *s, const char *dir, const char *fname, size_t *idx, lr_err *err) {
    for (size_t i = 0; i < s->n_files; i++)
        if (!strcmp(s->file_names[i], fname)) {
            *idx = i;
            return 0;
        }
    char path[4096];
    if (snprintf(path, sizeof path, "%s/%s", dir, fname) >= (int)sizeof path)
        return lr_errf(err, "%s: path too long", dir);
    st_file **nf = realloc(s->files, (s->n_files + 1) * sizeof *nf);
    if (nf) s->files = nf;
    char **nn = realloc(s->file_names, (s->n_files + 1) * sizeof *nn);
    if (nn) s->file_names = nn;
    if (!nf || !nn) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
    st_file *f;
    if (st_open(path, &f, err)) return -1;
    if (!(s->file_names[s->n_files] = strdup(fname))) {
        st_close(f);
        return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
    }
    s->files[s->n_files] = f;
    *idx = s->n_files++;
    return 0;
}

static int set_open_index(st_set *s, const char *dir, const char *ipath, lr_err *err) {
    char *text = NULL;
    size_t len;
    json_t *root = NULL;
    if (lr_read_file(ipath, ST_MAX_INDEX, &text, &len, err)) return -1;
    json_error_t je;
    root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    free(text);
    if (!root) return lr_errf(err, "%s: line %d: %s", ipath, je.line, je.text);
    json_t *wm = json_object_get(root, "weight_map");
    if (!json_is_object(wm)) {
        lr_errf(err, "%s: missing object 'weight_map'", ipath);
        goto fail;
    }
    const char *key;
    json_t *v;
    json_object_foreach(wm, key, v) {
        size_t idx;
        if (!json_is_string(v) || !shard_name_ok(json_string_value(v))) {
            lr_errf(err, "%s: weight_map['%s'] must name a .safetensors file in the same directory", ipath, key);
            goto fail;
        }
        if (set_add_file(s, dir, json_string_value(v), &idx, err)) goto fail;
        if (!st_find(s->files[idx], key)) {
            lr_errf(err, "%s: weight_map says '%s' is in %s, which has no such tensor", ipath, key,
                    json_string_value(v));
            goto fail;
        }
    }
    if (!s->n_files) {
        lr_errf(err, "%s: weight_map is empty", ipath);
        goto fail;
    }
    json_decref(root);
    return 0;
fail:
    json_decref(root);
    return -1;
}

int st_set_open_dir(const char *dir, st_set **out, lr_err *err) {
    *out = NULL;
    char path[4096];
    st_set *s = calloc(1, sizeof *s);
    if (!s) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
    if (snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir) >= (int)sizeof path) {
        lr_errf(err, "%s: path too long", dir);
        goto fail;
    }
    if (access(path, F_OK) == 0) {
        if (set_open_index(s, dir, path, err)) goto fail;
    } else {
        size_t idx;
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        if (access(path, F_OK) != 0) {
            snprintf(path, sizeof path, "%s/pytorch_model.bin", dir);
            lr_errp(err, LR_E_NOTFOUND, NULL, "%s: no model.safetensors or model.safetensors.index.json%s", dir,
                    access(path, F_OK) == 0 ? " (pytorch_model.bin is not supported: convert it to safetensors)" : "");
            goto fail;
        }
        if (set_add_file(s, dir, "model.safetensors", &idx, err)) goto fail;
    }
    size_t total = 0;
    for (size_t i = 0; i < s->n_files; i++) total += st_count(s->files[i]);
    s->all = calloc(total ? total : 1, sizeof *s->all);
    if (!s->all) {
        lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
        goto fail;
    }
    for (size_t i = 0; i < s->n_files; i++)
        for (size_t j = 0; j < st_count(s->files[i]); j++) s->all[s->n++] = st_at(s->files[i], j);
    qsort(s->all, s->n, sizeof *s->all, cmp_tptr);
    for (size_t i = 1; i < s->n; i++)
        if (!strcmp(s->all[i]->name, s->all[i - 1]->name)) {
            lr_errf(err, "%s: tensor '%s' is in two shards", dir, s->all[i]->name);
            goto fail;
        }
    *out = s;
    return 0;
fail:
    st_set_close(s);
    return -1;
}

const st_tensor *st_set_find(const st_set *s, const char *name) {
    st_tensor key = {.name = (char *)name};
    const st_tensor *kp = &key;
    const st_tensor **r = bsearch(&kp, s->all, s->n, sizeof *s->all, cmp_tptr);
    return r ? *r : NULL;
}

size_t st_set_count(const st_set *s) { return s->n; }

const st_tensor *st_set_at(const st_set *s, size_t i) { return i < s->n ? s->all[i] : NULL; }

/* ---- writing ---- */

struct st_writer {
    st_tensor *t;
    size_t n, cap;
    st_meta *meta;
    size_t n_meta;
};

st_writer *st_writer_new(void) { return calloc(1, sizeof(st_writer)); }

void st_writer_free(st_writer *w) {
    if (!w) return;
    for (size_t i = 0; i < w->n; i++) free(w->t[i].name);
    for (size_t i = 0; i < w->n_meta; i++) {
        free(w->meta[i].key);
        free(w->meta[i].value);
    }
    free(w->t);
    free(w->meta);
    free(w);
}

int st_writer_add(st_writer *w, const char *name, st_dtype dt, int ndim, const int64_t *shape,
                  const void *data, lr_err *err) {
    if ((int)dt < 0 || (int)dt >= N_DT) return lr_errf(err, "tensor '%s': bad dtype", name);
    if (!name[0] || !strcmp(name, "__metadata__")) return lr_errf(err, "bad tensor name '%s'", name);
    if (ndim < 0 || ndim > ST_MAX_DIMS) return lr_errf(err, "tensor '%s': %d dimensions", name, ndim);
    uint64_t nbytes = DT[dt].size;
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 0 || __builtin_mul_overflow(nbytes, (uint64_t)shape[i], &nbytes) || nbytes > SIZE_MAX / 2)
            return lr_errf(err, "tensor '%s': bad or too large shape", name);
    if (w->n == w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 64;
        st_tensor *nt = realloc(w->t, cap * sizeof *nt);
        if (!nt) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
        w->t = nt;
        w->cap = cap;
    }
    st_tensor *t = &w->t[w->n];
    memset(t, 0, sizeof *t);
    if (!(t->name = strdup(name))) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
    t->dtype = dt;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
    t->data = data;
    t->nbytes = (size_t)nbytes;
    w->n++;
    return 0;
}

int st_writer_meta(st_writer *w, const char *key, const char *value, lr_err *err) {
    for (size_t i = 0; i < w->n_meta; i++)
        if (!strcmp(w->meta[i].key, key)) {
            char *v = strdup(value);
            if (!v) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
            free(w->meta[i].value);
            w->meta[i].value = v;
            return 0;
        }
    st_meta *nm = realloc(w->meta, (w->n_meta + 1) * sizeof *nm);
    if (!nm) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
    w->meta = nm;
    char *k = strdup(key), *v = strdup(value);
    if (!k || !v) {
        free(k);
        free(v);
        return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
    }
    w->meta[w->n_meta].key = k;
    w->meta[w->n_meta].value = v;
    w->n_meta++;
    return 0;
}

static int cmp_write_order(const void *a, const void *b) {
    const st_tensor *x = a, *y = b;
    if (DT[x->dtype].rank != DT[y->dtype].rank) return DT[y->dtype].rank - DT[x->dtype].rank;
    return strcmp(x->name, y->name);
}

static int cmp_meta(const void *a, const void *b) {
    return strcmp(((const st_meta *)a)->key, ((const st_meta *)b)->key);
}

/* JSON string as serde_json writes it: only '"', '\\' and control
 * characters escaped. */
static int json_str(lr_buf *b, const char *s) {
    static const char hex[] = "0123456789abcdef";
    if (lr_buf_add(b, "\"", 1)) return -1;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char e[7];
        const char *out = e;
        size_t n = 2;
        e[0] = '\\';
        switch (*p) {
        case '"': e[1] = '"'; break;
        case '\\': e[1] = '\\'; break;
        case '\b': e[1] = 'b'; break;
        case '\f': e[1] = 'f'; break;
        case '\n': e[1] = 'n'; break;
        case '\r': e[1] = 'r'; break;
        case '\t': e[1] = 't'; break;
        default:
            if (*p < 0x20) {
                memcpy(e + 1, "u00", 3);
                e[4] = hex[*p >> 4];
                e[5] = hex[*p & 15];
                n = 6;
            } else {
                out = (const char *)p;
                n = 1;
            }
        }
        if (lr_buf_add(b, out, n)) return -1;
    }
    return lr_buf_add(b, "\"", 1);
}

/* Sorts w into file order and renders the padded header (with its 8-byte
 * length prefix) into hdr. */
static int build_header(st_writer *w, lr_buf *hdr, lr_err *err) {
    if (w->n) { /* qsort's base may not be NULL, even for 0 elements */
        qsort(w->t, w->n, sizeof *w->t, cmp_name);
        for (size_t i = 1; i < w->n; i++)
            if (!strcmp(w->t[i].name, w->t[i - 1].name)) return lr_errf(err, "tensor '%s' added twice", w->t[i].name);
        qsort(w->t, w->n, sizeof *w->t, cmp_write_order);
    }
    if (w->n_meta) qsort(w->meta, w->n_meta, sizeof *w->meta, cmp_meta);
    int bad = lr_buf_add(hdr, "\0\0\0\0\0\0\0\0{", 9);
    if (w->n_meta) {
        bad |= lr_buf_adds(hdr, "\"__metadata__\":{");
        for (size_t i = 0; i < w->n_meta; i++) {
            if (i) bad |= lr_buf_add(hdr, ",", 1);
            bad |= json_str(hdr, w->meta[i].key) || lr_buf_add(hdr, ":", 1) || json_str(hdr, w->meta[i].value);
        }
        bad |= lr_buf_add(hdr, "}", 1);
    }
    uint64_t off = 0;
    for (size_t i = 0; i < w->n; i++) {
        const st_tensor *t = &w->t[i];
        if (i || w->n_meta) bad |= lr_buf_add(hdr, ",", 1);
        bad |= json_str(hdr, t->name);
        bad |= lr_buf_printf(hdr, ":{\"dtype\":\"%s\",\"shape\":[", DT[t->dtype].name);
        for (int d = 0; d < t->ndim; d++) bad |= lr_buf_printf(hdr, "%s%lld", d ? "," : "", (long long)t->shape[d]);
        bad |= lr_buf_printf(hdr, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off,
                             (unsigned long long)(off + t->nbytes));
        off += t->nbytes;
    }
    bad |= lr_buf_add(hdr, "}", 1);
    while (!bad && (hdr->len - 8) % 8) bad |= lr_buf_add(hdr, " ", 1);
    if (bad) return lr_errp(err, LR_E_TOOBIG, NULL, "safetensors header over %u bytes", ST_MAX_HEADER);
    uint64_t n = hdr->len - 8;
    for (int i = 0; i < 8; i++) hdr->data[i] = (char)(n >> (8 * i));
    return 0;
}

struct st_stream {
    st_writer *w;
    int fd;
    char path[4096], tmp[4200];
    size_t cur;      /* tensor being written */
    size_t cur_done; /* its bytes written so far */
};

static int write_all(int fd, const void *p, size_t n) {
    const char *c = p;
    while (n) {
        ssize_t k = write(fd, c, n > (1u << 30) ? (1u << 30) : n);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return -1;
        c += k;
        n -= (size_t)k;
    }
    return 0;
}

void st_stream_abort(st_stream *s) {
    if (!s) return;
    if (s->fd >= 0) close(s->fd);
    unlink(s->tmp);
    free(s);
}

/* Skips finished (and empty) tensors. */
static void stream_advance(st_stream *s) {
    while (s->cur < s->w->n && s->cur_done == s->w->t[s->cur].nbytes) {
        s->cur++;
        s->cur_done = 0;
    }
}

int st_stream_begin(st_writer *w, const char *path, st_stream **out, lr_err *err) {
    *out = NULL;
    lr_buf hdr;
    lr_buf_init(&hdr, (size_t)ST_MAX_HEADER + 8);
    st_stream *s = calloc(1, sizeof *s);
    if (!s) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
    s->fd = -1;
    s->w = w;
    if (snprintf(s->path, sizeof s->path, "%s", path) >= (int)sizeof s->path) {
        free(s);
        return lr_errf(err, "%s: path too long", path);
    }
    snprintf(s->tmp, sizeof s->tmp, "%s.tmp.%d", path, (int)getpid());
    if (build_header(w, &hdr, err)) goto fail;
    s->fd = open(s->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (s->fd < 0) {
        lr_errp(err, LR_E_IO, NULL, "%s: %s", s->tmp, strerror(errno));
        goto fail;
    }
    if (write_all(s->fd, hdr.data, hdr.len)) {
        lr_errp(err, LR_E_IO, NULL, "%s: write failed: %s", path, strerror(errno));
        goto fail;
    }
    lr_buf_free(&hdr);
    stream_advance(s);
    *out = s;
    return 0;
fail:
    lr_buf_free(&hdr);
    st_stream_abort(s);
    return -1;
}

const st_tensor *st_stream_next(const st_stream *s) { return s->cur < s->w->n ? &s->w->t[s->cur] : NULL; }

int st_stream_put(st_stream *s, const void *data, size_t nbytes, lr_err *err) {
    size_t left = 0;
    for (size_t i = s->cur; i < s->w->n; i++) left += s->w->t[i].nbytes;
    left -= s->cur_done;
    if (nbytes > left)
        return lr_errf(err, "%s: %zu bytes put, only %zu remain to be written", s->path, nbytes, left);
    if (write_all(s->fd, data, nbytes))
        return lr_errp(err, LR_E_IO, NULL, "%s: write failed: %s", s->path, strerror(errno));
    while (nbytes) {
        size_t take = s->w->t[s->cur].nbytes - s->cur_done;
        if (take > nbytes) take = nbytes;
        s->cur_done += take;
        nbytes -= take;
        stream_advance(s);
    }
    return 0;
}

int st_stream_finish(st_stream *s, lr_err *err) {
    if (s->cur < s->w->n) {
        lr_errf(err, "%s: tensor '%s' and the ones after it were not written", s->path, s->w->t[s->cur].name);
        goto fail;
    }
    if (fsync(s->fd)) {
        lr_errp(err, LR_E_IO, NULL, "%s: fsync: %s", s->path, strerror(errno));
        goto fail;
    }
    int rc = close(s->fd);
    s->fd = -1;
    if (rc || rename(s->tmp, s->path)) {
        lr_errp(err, LR_E_IO, NULL, "%s: %s", s->path, strerror(errno));
        goto fail;
    }
    free(s);
    return 0;
fail:
    st_stream_abort(s);
    return -1;
}

int st_writer_write(st_writer *w, const char *path, lr_err *err) {
    for (size_t i = 0; i < w->n; i++)
        if (!w->t[i].data && w->t[i].nbytes)
            return lr_errf(err, "%s: tensor '%s' has no data (declared for streaming?)", path, w->t[i].name);
    st_stream *s;
    if (st_stream_begin(w, path, &s, err)) return -1;
    for (const st_tensor *t; (t = st_stream_next(s));)
        if (st_stream_put(s, t->data, t->nbytes, err)) {
            st_stream_abort(s);
            return -1;
        }
    return st_stream_finish(s, err);
}
