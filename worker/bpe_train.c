/* bpe_train: see bpe_train.h. Pair counts live in one hash table updated
 * incrementally: a word that contains the chosen pair has its pairs
 * subtracted, is rewritten, and has its new pairs added back. */
#include "worker/bpe_train.h"

#include <stdlib.h>
#include <string.h>

#define EMPTY UINT64_MAX

typedef struct {
    uint64_t *key;
    int64_t *count;
    size_t mask, used;
} pair_table;

static uint64_t mix(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 31;
    return x;
}

static int table_init(pair_table *t, size_t cap) {
    t->key = malloc(cap * sizeof *t->key);
    t->count = calloc(cap, sizeof *t->count);
    if (!t->key || !t->count) return -1;
    for (size_t i = 0; i < cap; i++) t->key[i] = EMPTY;
    t->mask = cap - 1;
    t->used = 0;
    return 0;
}

static int table_add(pair_table *t, uint64_t k, int64_t d) {
    if ((t->used + 1) * 2 > t->mask + 1) {
        pair_table n;
        if (table_init(&n, (t->mask + 1) * 2)) {
            free(n.key);
            free(n.count);
            return -1;
        }
        for (size_t i = 0; i <= t->mask; i++) {
            if (t->key[i] == EMPTY) continue;
            size_t j = mix(t->key[i]) & n.mask;
            while (n.key[j] != EMPTY) j = (j + 1) & n.mask;
            n.key[j] = t->key[i];
            n.count[j] = t->count[i];
            n.used++;
        }
        free(t->key);
        free(t->count);
        *t = n;
    }
    size_t i = mix(k) & t->mask;
    while (t->key[i] != EMPTY && t->key[i] != k) i = (i + 1) & t->mask;
    if (t->key[i] == EMPTY) {
        t->key[i] = k;
        t->used++;
    }
    t->count[i] += d;
    return 0;
}

static uint64_t pair_key(int32_t a, int32_t b) { return ((uint64_t)(uint32_t)a << 32) | (uint32_t)b; }

static int word_pairs(pair_table *t, const bpe_word *w, int64_t sign) {
    for (int32_t i = 0; i + 1 < w->len; i++)
        if (table_add(t, pair_key(w->sym[i], w->sym[i + 1]), sign * w->count)) return -1;
    return 0;
}

int bpe_train(bpe_word *words, size_t n_words, int32_t n_base, int n_merges, bpe_pair **merges, int *n_out,
              lr_err *err) {
    *merges = NULL;
    *n_out = 0;
    if (n_merges < 0 || n_base < 1 || n_merges > INT32_MAX - n_base)
        return lr_errp(err, LR_E_INVALID, NULL, "bpe_train: bad merge count %d", n_merges);
    pair_table t = {0};
    bpe_pair *out = malloc(((size_t)n_merges + 1) * sizeof *out);
    if (!out || table_init(&t, 1024)) goto oom;
    for (size_t w = 0; w < n_words; w++)
        if (word_pairs(&t, &words[w], 1)) goto oom;
    int k = 0;
    for (; k < n_merges; k++) {
        uint64_t best = EMPTY;
        int64_t best_n = 0;
        for (size_t i = 0; i <= t.mask; i++) {
            if (t.key[i] == EMPTY || t.count[i] <= 0) continue;
            if (t.count[i] > best_n || (t.count[i] == best_n && t.key[i] < best)) {
                best = t.key[i];
                best_n = t.count[i];
            }
        }
        if (best == EMPTY) break;
        int32_t a = (int32_t)(best >> 32), b = (int32_t)(uint32_t)best, sym = n_base + k;
        out[k].left = a;
        out[k].right = b;
        for (size_t w = 0; w < n_words; w++) {
            bpe_word *wd = &words[w];
            int32_t i = 0;
            while (i + 1 < wd->len && !(wd->sym[i] == a && wd->sym[i + 1] == b)) i++;
            if (i + 1 >= wd->len) continue;
            if (word_pairs(&t, wd, -1)) goto oom;
            int32_t o = 0;
            for (i = 0; i < wd->len; i++) {
                if (i + 1 < wd->len && wd->sym[i] == a && wd->sym[i + 1] == b) {
                    wd->sym[o++] = sym;
                    i++;
                } else {
                    wd->sym[o++] = wd->sym[i];
                }
            }
            wd->len = o;
            if (word_pairs(&t, wd, 1)) goto oom;
        }
    }
    free(t.key);
    free(t.count);
    *merges = out;
    *n_out = k;
    return 0;
oom:
    free(t.key);
    free(t.count);
    free(out);
    return lr_errp(err, LR_E_NOMEM, NULL, "bpe_train: out of memory");
}
