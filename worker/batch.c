#include "worker/batch.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/rng.h"

/* rng streams (with the job seed) for the split and the epoch orders */
#define STREAM_SPLIT 0x73706c6974ull
#define STREAM_EPOCH 0x65706f6368ull

/* ---- building examples ----------------------------------------------------- */

typedef struct exvec {
    data_example *e;
    size_t n, cap;
} exvec;

static void example_free(data_example *e) {
    free(e->ids);
    free(e->labels);
    free(e->rej_ids);
    free(e->rej_labels);
    memset(e, 0, sizeof *e);
}

/* The position of the first trained token, -1 when none. */
static int first_target(const int32_t *labels, int n) {
    for (int i = 0; i < n; i++)
        if (labels[i] != CHAT_IGNORE) return i;
    return -1;
}

typedef struct builder {
    const chat *c;
    chat plain;     /* renders text rows: BOS?, the text, EOS */
    int has_plain;  /* plain is set up (the tokenizer has an EOS) */
    int text;       /* the file being built is in text form */
    const data_opts *o;
    data_set *ds;
    int64_t truncated_rows;
    char dropped_lines[160];
    /* For the message when rows are dropped: every rendered length (before
     * the cut) and the earliest first trained token of a dropped row. */
    int *lens;
    size_t n_lens, cap_lens;
    int dropped_first; /* -1: none dropped */
} builder;

static int len_cmp(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

/* "rendered rows are 80 to 412 tokens (median 151); the first trained token
 * of a dropped row comes at token 130 or later", over lens[from..]. */
static void len_summary(const builder *b, size_t from, char *out, size_t cap) {
    size_t n = b->n_lens - from;
    int *v = n ? malloc(n * sizeof *v) : NULL;
    out[0] = 0;
    if (!v) return;
    memcpy(v, b->lens + from, n * sizeof *v);
    qsort(v, n, sizeof *v, len_cmp);
    int k = snprintf(out, cap, "rendered rows are %d to %d tokens (median %d)", v[0], v[n - 1], v[n / 2]);
    if (b->dropped_first >= 0 && k > 0 && (size_t)k < cap)
        snprintf(out + k, cap - (size_t)k, "; the first trained token of a dropped row comes at token %d or later",
                 b->dropped_first + 1);
    free(v);
}

static void warnf(const data_opts *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void warnf(const data_opts *o, const char *fmt, ...) {
    if (!o->warn) return;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    o->warn(o->ud, msg);
}

/* Renders one sequence and cuts it to max_seq_len. Returns 1 when it keeps
 * a trained token, 0 when not, -1 on error. */
static int render_one(builder *b, const chat_msg *m, int n, int32_t **ids, int32_t **labels, int *len,
                      int *cut, lr_err *err) {
    chat_out out;
    if (b->text ? chat_render(&b->plain, m, n, NULL, 0, 0, &out, err)
                : chat_render(b->c, m, n, b->o->system_prompt, 0, 0, &out, err))
        return -1;
    *ids = out.ids;
    *labels = out.labels;
    if (b->n_lens == b->cap_lens) {
        size_t cap = b->cap_lens ? 2 * b->cap_lens : 1024;
        int *p = realloc(b->lens, cap * sizeof *p);
        if (!p) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
        b->lens = p;
        b->cap_lens = cap;
    }
    b->lens[b->n_lens++] = (int)out.n;
    size_t keep = out.n;
    if (b->o->max_seq_len > 0 && keep > (size_t)b->o->max_seq_len) {
        keep = (size_t)b->o->max_seq_len;
        *cut = 1;
    }
    *len = (int)keep;
    int first = first_target(out.labels, (int)out.n);
    if (first >= 0 && first < (int)keep) return 1;
    if (first >= 0 && (b->dropped_first < 0 || first < b->dropped_first)) b->dropped_first = first;
    return 0;
}

static int build_row(builder *b, const data_row *row, int file, const char *path, exvec *v, lr_err *err) {
    data_example e = {0};
    chat_msg *pair = NULL;
    int cut = 0, ok, rc = -1;
    e.file = file;
    e.line = row->line;
    if (b->ds->dpo) {
        int np = row->n_msgs, nc = row->n_chosen, nr = row->n_rejected;
        ok = render_one(b, row->msgs, np + nc, &e.ids, &e.labels, &e.n, &cut, err);
        if (ok > 0) {
            pair = malloc((size_t)(np + nr) * sizeof *pair);
            if (!pair) {
                lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
                goto done;
            }
            memcpy(pair, row->msgs, (size_t)np * sizeof *pair);
            memcpy(pair + np, row->msgs + np + nc, (size_t)nr * sizeof *pair);
            ok = render_one(b, pair, np + nr, &e.rej_ids, &e.rej_labels, &e.rej_n, &cut, err);
        }
    } else {
        ok = render_one(b, row->msgs, row->n_msgs, &e.ids, &e.labels, &e.n, &cut, err);
    }
    if (ok < 0) {
        lr_err_prefix(err, "dataset %s line %d: ", path, row->line);
        goto done;
    }
    b->truncated_rows += cut;
    if (!ok) {
        b->ds->n_dropped++;
        size_t used = strlen(b->dropped_lines);
        if (used + 16 < sizeof b->dropped_lines)
            snprintf(b->dropped_lines + used, sizeof b->dropped_lines - used, "%s%d", used ? ", " : "",
                     row->line);
        rc = 0;
        goto done;
    }
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 256;
        data_example *p = realloc(v->e, cap * sizeof *p);
        if (!p) {
            lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
            goto done;
        }
        v->e = p;
        v->cap = cap;
    }
    v->e[v->n++] = e;
    memset(&e, 0, sizeof e);
    rc = 0;
done:
    example_free(&e);
    free(pair);
    return rc;
}

static int build_file(builder *b, const char *path, int file, exvec *v, lr_err *err) {
    data_file f;
    int rc = -1;
    if (data_load(path, &f, err)) return -1;
    if (b->ds->dpo != (f.format == DATA_FMT_DPO)) {
        lr_errp(err, LR_E_INVALID, "method.type",
                b->ds->dpo ? "dataset %s: method dpo needs rows with prompt, chosen and rejected; "
                             "this file is in %s form"
                           : "dataset %s: rows with chosen/rejected answers (%s form) need method dpo",
                path, data_format_name(f.format));
        goto done;
    }
    b->text = f.format == DATA_FMT_TEXT;
    if (b->text && !b->has_plain) {
        lr_errp(err, LR_E_INVALID, "training_file", "dataset %s: text rows end with EOS, which this tokenizer lacks",
                path);
        goto done;
    }
    b->truncated_rows = 0;
    b->dropped_lines[0] = 0;
    int64_t dropped0 = b->ds->n_dropped;
    size_t lens0 = b->n_lens;
    for (size_t i = 0; i < f.n_rows; i++)
        if (build_row(b, &f.rows[i], file, path, v, err)) goto done;
    b->ds->n_truncated += b->truncated_rows;
    if (b->ds->n_dropped > dropped0) {
        char lens[200];
        len_summary(b, lens0, lens, sizeof lens);
        warnf(b->o, "dataset %s: %lld rows dropped: no trained token left within max_seq_len %d "
                    "(lines %s%s); %s", path, (long long)(b->ds->n_dropped - dropped0), b->o->max_seq_len,
              b->dropped_lines, b->ds->n_dropped - dropped0 > 10 ? ", ..." : "", lens);
    }
    if (b->truncated_rows)
        warnf(b->o, "dataset %s: %lld rows cut to max_seq_len %d", path,
              (long long)b->truncated_rows, b->o->max_seq_len);
    rc = 0;
done:
    data_file_free(&f);
    return rc;
}

static uint64_t ex_hash(const data_example *e) {
    uint64_t h = 1469598103934665603ull;
    const int32_t *arr[4] = {e->ids, e->labels, e->rej_ids, e->rej_labels};
    int len[4] = {e->n, e->n, e->rej_n, e->rej_n};
    for (int a = 0; a < 4; a++) {
        h = (h ^ (uint64_t)len[a]) * 1099511628211ull;
        for (int i = 0; i < len[a]; i++) h = (h ^ (uint32_t)arr[a][i]) * 1099511628211ull;
    }
    return h;
}

static int ex_equal(const data_example *a, const data_example *b) {
    return a->n == b->n && a->rej_n == b->rej_n &&
           !memcmp(a->ids, b->ids, (size_t)a->n * sizeof *a->ids) &&
           !memcmp(a->labels, b->labels, (size_t)a->n * sizeof *a->labels) &&
           (!a->rej_n || (!memcmp(a->rej_ids, b->rej_ids, (size_t)a->rej_n * sizeof *a->rej_ids) &&
                          !memcmp(a->rej_labels, b->rej_labels, (size_t)a->rej_n * sizeof *a->rej_labels)));
}

/* Drops exact duplicates from v[from..], keeping the first; 'seen' is an
 * open-addressing table of example indices shared across calls so that
 * duplicates across files go too. */
typedef struct dedupe {
    int64_t *slot; /* index + 1; 0 empty */
    size_t cap;
} dedupe;

static int dedupe_run(dedupe *d, exvec *v, size_t from, int64_t *dropped, lr_err *err) {
    if (d->cap < 2 * v->n + 16) {
        size_t cap = 64;
        while (cap < 4 * v->n + 16) cap *= 2;
        int64_t *s = calloc(cap, sizeof *s);
        if (!s) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
        free(d->slot);
        d->slot = s;
        d->cap = cap;
        for (size_t i = 0; i < from; i++) {
            size_t h = (size_t)ex_hash(&v->e[i]) & (cap - 1);
            while (s[h]) h = (h + 1) & (cap - 1);
            s[h] = (int64_t)i + 1;
        }
    }
    size_t w = from;
    for (size_t i = from; i < v->n; i++) {
        size_t h = (size_t)ex_hash(&v->e[i]) & (d->cap - 1);
        int dup = 0;
        while (d->slot[h]) {
            if (ex_equal(&v->e[d->slot[h] - 1], &v->e[i])) {
                dup = 1;
                break;
            }
            h = (h + 1) & (d->cap - 1);
        }
        if (dup) {
            example_free(&v->e[i]);
            (*dropped)++;
            continue;
        }
        v->e[w] = v->e[i];
        d->slot[h] = (int64_t)w + 1;
        w++;
    }
    v->n = w;
    return 0;
}

static size_t val_count(size_t n, double ratio) {
    if (ratio <= 0 || n < 2) return 0;
    double k = ceil((double)n * ratio - 1e-9);
    if (k < 1) k = 1;
    if (k > (double)(n - 1)) k = (double)(n - 1);
    return (size_t)k;
}

int data_build(const chat *c, const data_opts *o, data_set *ds, lr_err *err) {
    exvec tr = {0}, va = {0};
    dedupe d = {0};
    int *perm = NULL;
    char *is_val = NULL;
    builder b = {.c = c, .o = o, .ds = ds, .dropped_first = -1};
    int rc = -1;
    lr_err perr = {0};
    b.has_plain = chat_init(&b.plain, c->t, TPL_PLAIN, NULL, &perr) == 0;
    memset(ds, 0, sizeof *ds);
    ds->dpo = o->dpo;
    ds->pad_id = tok_eos_id(c->t) >= 0 ? tok_eos_id(c->t) : 0;
    if (o->n_files < 1 || o->n_files > JOBSPEC_MAX_FILES) {
        lr_errp(err, LR_E_INVALID, "training_file", "between 1 and %d training files are needed",
                JOBSPEC_MAX_FILES);
        goto done;
    }
    ds->n_files = o->n_files;
    for (int f = 0; f < o->n_files; f++) {
        size_t from = tr.n;
        double w = o->weights ? o->weights[f] : 1.0;
        if (!(w >= 0) || w > 1000) {
            lr_errp(err, LR_E_INVALID, "training_file", "training file %d: weight %g is not in [0, 1000]", f + 1, w);
            goto done;
        }
        ds->weight[f] = w;
        if (build_file(&b, o->files[f], f, &tr, err)) goto done;
        if (dedupe_run(&d, &tr, from, &ds->n_duplicates, err)) goto done;
        /* the split, per file, so that each file is represented */
        size_t n = tr.n - from, nv = o->validation_file ? 0 : val_count(n, o->val_ratio);
        if (nv) {
            lr_rng r;
            rng_stream(&r, o->seed, STREAM_SPLIT + (uint64_t)f);
            free(perm);
            free(is_val);
            perm = malloc(n * sizeof *perm);
            is_val = calloc(n, 1);
            if (!perm || !is_val) {
                lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
                goto done;
            }
            for (size_t i = 0; i < n; i++) perm[i] = (int)i;
            rng_shuffle_int(&r, perm, n);
            for (size_t i = 0; i < nv; i++) is_val[perm[i]] = 1;
            if (!va.e || va.cap < va.n + nv) {
                data_example *p = realloc(va.e, (va.n + nv) * sizeof *p);
                if (!p) {
                    lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
                    goto done;
                }
                va.e = p;
                va.cap = va.n + nv;
            }
            size_t w2 = from;
            for (size_t i = 0; i < n; i++) {
                if (is_val[i]) va.e[va.n++] = tr.e[from + i];
                else tr.e[w2++] = tr.e[from + i];
            }
            tr.n = w2;
            /* the table holds positions that just moved */
            free(d.slot);
            d.slot = NULL;
            d.cap = 0;
        }
        ds->file_end[f] = tr.n;
    }
    if (o->validation_file) {
        dedupe dv = {0};
        int r1 = build_file(&b, o->validation_file, -1, &va, err);
        int r2 = r1 ? -1 : dedupe_run(&dv, &va, 0, &ds->n_duplicates, err);
        free(dv.slot);
        if (r2) goto done;
    }
    if (ds->n_duplicates) warnf(o, "%lld exact duplicate rows dropped", (long long)ds->n_duplicates);
    if (!tr.n) {
        char lens[200] = "";
        if (ds->n_dropped) len_summary(&b, 0, lens, sizeof lens);
        lr_errp(err, LR_E_INVALID, "training_file", "no training rows left (%lld dropped for max_seq_len %d, "
                "%lld duplicates, %zu for validation)%s%s", (long long)ds->n_dropped, o->max_seq_len,
                (long long)ds->n_duplicates, va.n, lens[0] ? ": " : "", lens);
        goto done;
    }
    ds->train = tr.e;
    ds->n_train = tr.n;
    ds->val = va.e;
    ds->n_val = va.n;
    tr.e = va.e = NULL;
    tr.n = va.n = 0;
    rc = 0;
done:
    for (size_t i = 0; i < tr.n; i++) example_free(&tr.e[i]);
    for (size_t i = 0; i < va.n; i++) example_free(&va.e[i]);
    free(tr.e);
    free(va.e);
    free(d.slot);
    free(perm);
    free(is_val);
    free(b.lens);
    return rc;
}

void data_set_free(data_set *ds) {
    for (size_t i = 0; i < ds->n_train; i++) example_free(&ds->train[i]);
    for (size_t i = 0; i < ds->n_val; i++) example_free(&ds->val[i]);
    free(ds->train);
    free(ds->val);
    memset(ds, 0, sizeof *ds);
}

/* ---- loading batches --------------------------------------------------------- */

int data_loader_init(data_loader *L, const data_set *ds, data_split split, int batch_size,
                     int packing, int max_seq_len, uint64_t seed, lr_err *err) {
    memset(L, 0, sizeof *L);
    if (batch_size < 1) return lr_errp(err, LR_E_INVALID, "hyperparameters.batch_size", "batch_size must be at least 1");
    if (packing && ds->dpo)
        return lr_errp(err, LR_E_INVALID, "hyperparameters.packing", "packing is not supported with method dpo");
    if (packing && max_seq_len < 1)
        return lr_errp(err, LR_E_INVALID, "hyperparameters.max_seq_len", "packing needs max_seq_len");
    L->ds = ds;
    L->split = split;
    L->batch_size = batch_size;
    L->packing = packing;
    L->max_seq_len = max_seq_len;
    L->seed = seed;
    L->order_epoch = -1;
    return 0;
}

void data_loader_free(data_loader *L) {
    free(L->order);
    L->order = NULL;
}

data_pos data_tell(const data_loader *L) { return L->pos; }

void data_seek(data_loader *L, data_pos pos) { L->pos = pos; }

/* The order of epoch e (see the mixing rule in data.h). */
static int make_order(data_loader *L, int64_t epoch, lr_err *err) {
    const data_set *ds = L->ds;
    if (L->order_epoch == epoch && L->order) return 0;
    size_t total = 0;
    if (L->split == DATA_VAL) total = ds->n_val;
    else
        for (int f = 0; f < ds->n_files; f++) {
            size_t n = ds->file_end[f] - (f ? ds->file_end[f - 1] : 0);
            total += n * (size_t)ceil(ds->weight[f]);
        }
    int64_t *o = malloc((total ? total : 1) * sizeof *o);
    if (!o) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
    size_t k = 0;
    if (L->split == DATA_VAL) {
        for (size_t i = 0; i < ds->n_val; i++) o[k++] = (int64_t)i;
    } else {
        lr_rng r;
        rng_stream(&r, L->seed, STREAM_EPOCH + (uint64_t)epoch);
        for (int f = 0; f < ds->n_files; f++) {
            size_t a = f ? ds->file_end[f - 1] : 0, n = ds->file_end[f] - a;
            double w = ds->weight[f], whole = floor(w);
            for (double rep = 0; rep < whole; rep++)
                for (size_t i = 0; i < n; i++) o[k++] = (int64_t)(a + i);
            size_t m = (size_t)llround((w - whole) * (double)n);
            /* m distinct rows: a partial Fisher-Yates over the file's rows,
             * done in the tail of o that is free */
            int64_t *pool = o + k;
            for (size_t i = 0; i < n && m; i++) pool[i] = (int64_t)(a + i);
            for (size_t i = 0; i < m; i++) {
                size_t j = i + (size_t)rng_below(&r, n - i);
                int64_t t = pool[i];
                pool[i] = pool[j];
                pool[j] = t;
            }
            k += m;
        }
        for (size_t i = k; i > 1; i--) {
            size_t j = (size_t)rng_below(&r, i);
            int64_t t = o[i - 1];
            o[i - 1] = o[j];
            o[j] = t;
        }
    }
    free(L->order);
    L->order = o;
    L->n_order = (int64_t)k;
    L->order_epoch = epoch;
    return 0;
}

static const data_example *ex_at(const data_loader *L, int64_t i) {
    const data_set *ds = L->ds;
    return L->split == DATA_VAL ? &ds->val[L->order[i]] : &ds->train[L->order[i]];
}

/* How many examples from index i go into one micro-batch. */
static int64_t batch_span(const data_loader *L, int64_t i) {
    if (!L->packing) {
        int64_t left = L->n_order - i;
        return left < L->batch_size ? left : L->batch_size;
    }
    int64_t j = i;
    for (int row = 0; row < L->batch_size && j < L->n_order; row++) {
        int used = 0;
        while (j < L->n_order && used + ex_at(L, j)->n <= L->max_seq_len) used += ex_at(L, j++)->n;
        if (!used) j++; /* longer than a row (no max_seq_len cut): alone, cut */
    }
    return j - i;
}

int64_t data_epoch_batches(data_loader *L, int64_t epoch) {
    lr_err e;
    if (make_order(L, epoch, &e)) return -1;
    int64_t nb = 0;
    for (int64_t i = 0; i < L->n_order; i += batch_span(L, i)) nb++;
    return nb;
}

static int batch_reserve(data_batch *b, int rows, int T, int32_t pad, lr_err *err) {
    size_t need = (size_t)rows * (size_t)T;
    if (need > b->cap || !b->ids) {
        int32_t *ids = realloc(b->ids, (need ? need : 1) * sizeof *ids);
        if (ids) b->ids = ids;
        int32_t *lab = realloc(b->labels, (need ? need : 1) * sizeof *lab);
        if (lab) b->labels = lab;
        if (!ids || !lab) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory for a batch");
        b->cap = need;
    }
    int *lens = realloc(b->lens, (size_t)(rows ? rows : 1) * sizeof *lens);
    if (!lens) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory for a batch");
    b->lens = lens;
    b->rows = rows;
    b->T = T;
    for (size_t i = 0; i < need; i++) {
        b->ids[i] = pad;
        b->labels[i] = CHAT_IGNORE;
    }
    for (int r = 0; r < rows; r++) b->lens[r] = 0;
    b->n_tokens = b->n_targets = 0;
    return 0;
}

/* Appends n tokens to row r of b at its current length. */
static void put_row(data_batch *b, int r, const int32_t *ids, const int32_t *labels, int n) {
    int32_t *di = b->ids + (size_t)r * (size_t)b->T + b->lens[r];
    int32_t *dl = b->labels + (size_t)r * (size_t)b->T + b->lens[r];
    memcpy(di, ids, (size_t)n * sizeof *di);
    memcpy(dl, labels, (size_t)n * sizeof *dl);
    b->lens[r] += n;
    b->n_tokens += n;
    for (int i = 0; i < n; i++) b->n_targets += labels[i] != CHAT_IGNORE;
}

int data_next(data_loader *L, data_batch *b, lr_err *err) {
    const data_set *ds = L->ds;
    if (make_order(L, L->pos.epoch, err)) return -1;
    int64_t i = L->pos.index;
    if (i >= L->n_order) {
        L->pos.epoch++;
        L->pos.index = 0;
        return 0;
    }
    int64_t span = batch_span(L, i);
    if (!L->packing) {
        int nex = (int)span, T = 1;
        for (int k = 0; k < nex; k++) {
            const data_example *e = ex_at(L, i + k);
            if (e->n > T) T = e->n;
            if (ds->dpo && e->rej_n > T) T = e->rej_n;
        }
        if (batch_reserve(b, ds->dpo ? 2 * nex : nex, T, ds->pad_id, err)) return -1;
        for (int k = 0; k < nex; k++) {
            const data_example *e = ex_at(L, i + k);
            put_row(b, k, e->ids, e->labels, e->n);
            if (ds->dpo) put_row(b, nex + k, e->rej_ids, e->rej_labels, e->rej_n);
        }
    } else {
        int T = L->max_seq_len, rows = 0;
        if (batch_reserve(b, L->batch_size, T, ds->pad_id, err)) return -1;
        for (int64_t j = i; j < i + span; rows++) {
            while (j < i + span && b->lens[rows] + ex_at(L, j)->n <= T) {
                const data_example *e = ex_at(L, j++);
                put_row(b, rows, e->ids, e->labels, e->n);
            }
            if (!b->lens[rows]) {
                const data_example *e = ex_at(L, j++);
                put_row(b, rows, e->ids, e->labels, T);
            }
        }
        b->rows = rows;
    }
    b->n_examples = (int)span;
    L->pos.index = i + span;
    return 1;
}

void data_batch_free(data_batch *b) {
    free(b->ids);
    free(b->labels);
    free(b->lens);
    memset(b, 0, sizeof *b);
}
