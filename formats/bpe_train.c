/* bpe_train: see bpe_train.h. Pair counts live in one hash table updated
 * incrementally: a word that contains the chosen pair has its pairs
 * subtracted, is rewritten, and has its new pairs added back.
 *
 * Also tok_train_bytelevel (declared in tok.h with the tokenizer's API):
 * a corpus pre-tokenized by GPT-2's regex, its words counted, bpe_train on
 * their bytes, and the result written as a tokenizer.json. */
#include "formats/bpe_train.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "formats/tok_impl.h"
#include "formats/utf8.h"

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

/* ---- a byte-level tokenizer from a corpus ---- */

#define TRAIN_MAX_CORPUS ((size_t)256 << 20)

/* Unique pre-tokens of the corpus in first-seen order, with their counts. */
typedef struct {
    size_t *off, *len;
    int64_t *count;
    size_t n, cap;
    int32_t *slot; /* hash table of indices, -1 empty */
    size_t mask;
} word_set;

static int word_set_add(word_set *w, const char *base, size_t off, size_t len) {
    if ((w->n + 1) * 2 > w->mask + 1 || !w->slot) {
        size_t cap = w->slot ? (w->mask + 1) * 2 : 4096;
        int32_t *slot = malloc(cap * sizeof *slot);
        if (!slot) return -1;
        for (size_t i = 0; i < cap; i++) slot[i] = -1;
        for (size_t k = 0; k < w->n; k++) {
            size_t i = tok__hash_bytes(base + w->off[k], w->len[k]) & (cap - 1);
            while (slot[i] >= 0) i = (i + 1) & (cap - 1);
            slot[i] = (int32_t)k;
        }
        free(w->slot);
        w->slot = slot;
        w->mask = cap - 1;
    }
    size_t i = tok__hash_bytes(base + off, len) & w->mask;
    for (; w->slot[i] >= 0; i = (i + 1) & w->mask) {
        int32_t k = w->slot[i];
        if (w->len[k] == len && !memcmp(base + w->off[k], base + off, len)) {
            w->count[k]++;
            return 0;
        }
    }
    if (w->n == w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 1024;
        size_t *o = realloc(w->off, cap * sizeof *o);
        if (o) w->off = o;
        size_t *l = realloc(w->len, cap * sizeof *l);
        if (l) w->len = l;
        int64_t *c = realloc(w->count, cap * sizeof *c);
        if (c) w->count = c;
        if (!o || !l || !c) return -1;
        w->cap = cap;
    }
    if (w->n >= INT32_MAX) return -1;
    w->off[w->n] = off;
    w->len[w->n] = len;
    w->count[w->n] = 1;
    w->slot[i] = (int32_t)w->n++;
    return 0;
}

static void word_set_free(word_set *w) {
    free(w->off);
    free(w->len);
    free(w->count);
    free(w->slot);
}

static json_t *bytelevel_step(void) {
    return json_pack("{s:s,s:b,s:b,s:b}", "type", "ByteLevel", "add_prefix_space", 0, "trim_offsets", 1, "use_regex", 1);
}

/* The trained tokenizer as HF writes one (json_pack's "o" takes the
 * references, on failure too). v holds the pieces: the model's are the ids
 * below n_model. */
static json_t *train_json(const tok *v, int32_t n_model, const int32_t *merge_l, const int32_t *merge_r, int n_merges,
                          const char *const *specials, int n_specials, const int32_t *special_id) {
    json_t *vocab = json_object(), *merges = json_array(), *added = json_array();
    if (!vocab || !merges || !added) goto fail;
    for (int32_t id = 0; id < n_model; id++) /* the specials are added tokens only */
        if (json_object_setn_new(vocab, tok__piece_ptr(v, id), (size_t)v->plen[id], json_integer(id))) goto fail;
    for (int k = 0; k < n_merges; k++) {
        json_t *pair = json_pack("[s#s#]", tok__piece_ptr(v, merge_l[k]), (size_t)v->plen[merge_l[k]],
                                 tok__piece_ptr(v, merge_r[k]), (size_t)v->plen[merge_r[k]]);
        if (!pair || json_array_append_new(merges, pair)) goto fail;
    }
    for (int i = 0; i < n_specials; i++) {
        json_t *a = json_pack("{s:i,s:s,s:b,s:b,s:b,s:b,s:b}", "id", (json_int_t)special_id[i], "content", specials[i],
                              "single_word", 0, "lstrip", 0, "rstrip", 0, "normalized", 0, "special", 1);
        if (!a || json_array_append_new(added, a)) goto fail;
    }
    json_t *model = json_pack("{s:s,s:n,s:n,s:n,s:n,s:b,s:b,s:b,s:o,s:o}", "type", "BPE", "dropout", "unk_token",
                              "continuing_subword_prefix", "end_of_word_suffix", "fuse_unk", 0, "byte_fallback", 0,
                              "ignore_merges", 0, "vocab", vocab, "merges", merges);
    return json_pack("{s:s,s:n,s:n,s:o,s:n,s:o,s:o,s:o,s:o}", "version", "1.0", "truncation", "padding",
                     "added_tokens", added, "normalizer", "pre_tokenizer", bytelevel_step(), "post_processor",
                     bytelevel_step(), "decoder", bytelevel_step(), "model", model);
fail:
    json_decref(vocab);
    json_decref(merges);
    json_decref(added);
    return NULL;
}

int tok_train_bytelevel(const char *corpus, size_t len, int n_merges, const char *const *specials, int n_specials,
                        const char *path, lr_err *err) {
    if (len > TRAIN_MAX_CORPUS) return lr_errp(err, LR_E_TOOBIG, NULL, "training corpus larger than 256 MB");
    if (n_merges < 0 || n_merges > 1000000) return lr_errp(err, LR_E_INVALID, NULL, "n_merges %d out of range", n_merges);
    if (n_specials < 0 || n_specials > 4096) return lr_errp(err, LR_E_INVALID, NULL, "too many special tokens");
    for (int i = 0; i < n_specials; i++)
        if (!specials[i] || !specials[i][0]) return lr_errp(err, LR_E_INVALID, NULL, "special token %d is empty", i);
    int rc = -1;
    size_t cn = 0;
    char *text = utf8_sanitize(corpus ? corpus : "", corpus ? len : 0, &cn);
    pcre2_code *re = tok__re_compile(GPT2_PATTERN, PCRE2_ZERO_TERMINATED, 0, err);
    pcre2_match_data *md = pcre2_match_data_create(1, NULL);
    word_set ws = {0};
    segs g = {0};
    bpe_word *words = NULL;
    int32_t *syms = NULL;
    bpe_pair *m = NULL;
    int nm = 0;
    tok *v = NULL;
    lr_buf pb;
    lr_buf_init(&pb, TRAIN_MAX_CORPUS);
    int32_t *sym_id = NULL, *special_id = NULL, *merge_l = NULL, *merge_r = NULL;
    json_t *root = NULL;
    char *out = NULL;
    if (!re) goto out;
    if (!text || !md) goto oom;
    if (tok__segs_regex(&g, re, text, cn, md)) goto oom;
    size_t total = 0;
    for (size_t i = 0; i < g.n; i++) {
        if (word_set_add(&ws, text, g.a[i], g.b[i] - g.a[i])) goto oom;
    }
    for (size_t i = 0; i < ws.n; i++) total += ws.len[i];
    words = calloc(ws.n ? ws.n : 1, sizeof *words);
    syms = malloc((total ? total : 1) * sizeof *syms);
    if (!words || !syms) goto oom;
    for (size_t i = 0, k = 0; i < ws.n; i++) {
        words[i].sym = syms + k;
        words[i].len = (int32_t)ws.len[i];
        words[i].count = ws.count[i];
        for (size_t j = 0; j < ws.len[i]; j++) syms[k++] = (uint8_t)text[ws.off[i] + j];
    }
    if (bpe_train(words, ws.n, 256, n_merges, &m, &nm, err)) goto out;

    /* the vocabulary: bytes first, then each merge's piece; two merges can
     * spell the same piece ("ab"+"c", "a"+"bc") and then share its id */
    if (!(v = tok__new())) goto oom;
    int32_t n_sym = 256 + nm;
    sym_id = malloc((size_t)n_sym * sizeof *sym_id);
    merge_l = malloc(((size_t)nm + 1) * sizeof *merge_l);
    merge_r = malloc(((size_t)nm + 1) * sizeof *merge_r);
    special_id = malloc((size_t)(n_specials ? n_specials : 1) * sizeof *special_id);
    if (!sym_id || !merge_l || !merge_r || !special_id || lr_buf_add(&pb, "", 0)) goto oom;
    int32_t next = 0;
    for (int32_t s = 0; s < n_sym; s++) {
        lr_buf_reset(&pb);
        if (s < 256) {
            uint8_t e[4];
            if (lr_buf_add(&pb, e, (size_t)utf8_encode(utf8_byte_char((uint8_t)s), e))) goto oom;
        } else {
            merge_l[s - 256] = sym_id[m[s - 256].left];
            merge_r[s - 256] = sym_id[m[s - 256].right];
            if (lr_buf_add(&pb, tok__piece_ptr(v, merge_l[s - 256]), (size_t)v->plen[merge_l[s - 256]]) ||
                lr_buf_add(&pb, tok__piece_ptr(v, merge_r[s - 256]), (size_t)v->plen[merge_r[s - 256]]))
                goto oom;
        }
        sym_id[s] = tok__vocab_get(v, pb.data, pb.len);
        if (sym_id[s] < 0) {
            if (tok__set_piece(v, next, pb.data, pb.len, err)) goto out;
            sym_id[s] = next++;
        }
    }
    int32_t n_model = next;
    for (int i = 0; i < n_specials; i++) {
        special_id[i] = tok__vocab_get(v, specials[i], strlen(specials[i]));
        if (special_id[i] < 0) {
            if (tok__set_piece(v, next, specials[i], strlen(specials[i]), err)) goto out;
            special_id[i] = next++;
        }
    }
    root = train_json(v, n_model, merge_l, merge_r, nm, specials, n_specials, special_id);
    if (!root) goto oom;
    out = json_dumps(root, JSON_INDENT(2));
    if (!out) goto oom;
    if (lr_write_file_atomic(path, out, strlen(out), err)) goto out;
    rc = 0;
    goto out;
oom:
    lr_errp(err, LR_E_NOMEM, NULL, "training the tokenizer: out of memory");
out:
    free(out);
    json_decref(root);
    tok_free(v);
    lr_buf_free(&pb);
    free(merge_l);
    free(merge_r);
    free(sym_id);
    free(special_id);
    free(m);
    free(syms);
    free(words);
    free(g.a);
    free(g.b);
    free(g.m);
    word_set_free(&ws);
    pcre2_match_data_free(md);
    pcre2_code_free(re);
    free(text);
    return rc;
}
