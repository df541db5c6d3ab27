/* tok: Hugging Face BPE tokenizers (tokenizers' Rust semantics, re-done in C).
 *
 * The module is three files around tok_impl.h: this one loads a tokenizer
 * (tokenizer.json, or vocab.json + merges.txt with their side files) into
 * struct tok; tok_encode.c runs the pipeline below and decodes; bpe_train.c
 * trains a byte-level BPE (tok_train_bytelevel).
 * Why this file is long: tokenizer.json's models, normalizers,
 * pre-tokenizers, decoders, post-processors and added tokens are all parsed
 * here into struct tok: one parser for one file format.
 *
 * Pipeline of an encode, as HF runs it:
 *   1. invalid UTF-8 becomes U+FFFD (HF only ever sees valid str);
 *   2. added tokens with normalized=false are cut out of the raw text;
 *   3. each remaining piece is normalized, then added tokens with
 *      normalized=true are cut out of it (matched by their normalized form);
 *   4. each remaining piece is pre-tokenized (a chain of split ops);
 *   5. each pre-token is merged by BPE (a heap of candidate merges, lowest
 *      rank first, leftmost first among equal ranks: HF's Word::merge_all). */
#include "formats/tok.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <utf8proc.h>

#include "common/buf.h"
#include "formats/tok_impl.h"
#include "formats/utf8.h"

/* ---- small helpers --------------------------------------------------- */

uint32_t tok__hash_bytes(const char *s, size_t n) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 16777619u;
    return h;
}

static uint64_t mix64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

int32_t tok__vocab_get(const tok *t, const char *s, size_t n) {
    if (!t->vocab.id) return -1;
    uint32_t h = tok__hash_bytes(s, n);
    for (size_t i = h & t->vocab.mask;; i = (i + 1) & t->vocab.mask) {
        int32_t id = t->vocab.id[i];
        if (id < 0) return -1;
        if (t->vocab.hash[i] == h && (size_t)t->plen[id] == n && !memcmp(tok__piece_ptr(t, id), s, n))
            return id;
    }
}

static int strmap_grow(tok *t) {
    strmap *m = &t->vocab;
    size_t cap = m->id ? (m->mask + 1) * 2 : 1024;
    uint32_t *hash = malloc(cap * sizeof *hash);
    int32_t *id = malloc(cap * sizeof *id);
    if (!hash || !id) {
        free(hash);
        free(id);
        return -1;
    }
    for (size_t i = 0; i < cap; i++) id[i] = -1;
    if (m->id) {
        for (size_t j = 0; j <= m->mask; j++) {
            if (m->id[j] < 0) continue;
            size_t i = m->hash[j] & (cap - 1);
            while (id[i] >= 0) i = (i + 1) & (cap - 1);
            id[i] = m->id[j];
            hash[i] = m->hash[j];
        }
    }
    free(m->hash);
    free(m->id);
    m->hash = hash;
    m->id = id;
    m->mask = cap - 1;
    return 0;
}

/* Maps the piece of id to id unless the piece is already mapped (the first
 * id given a piece keeps it, as HF's vocab map does for the model vocab). */
static int vocab_index(tok *t, int32_t id) {
    if (!t->vocab.id || (t->vocab.n + 1) * 2 > t->vocab.mask + 1)
        if (strmap_grow(t)) return -1;
    const char *s = tok__piece_ptr(t, id);
    size_t n = (size_t)t->plen[id];
    uint32_t h = tok__hash_bytes(s, n);
    size_t i = h & t->vocab.mask;
    for (; t->vocab.id[i] >= 0; i = (i + 1) & t->vocab.mask) {
        int32_t o = t->vocab.id[i];
        if (t->vocab.hash[i] == h && (size_t)t->plen[o] == n && !memcmp(tok__piece_ptr(t, o), s, n))
            return 0;
    }
    t->vocab.id[i] = id;
    t->vocab.hash[i] = h;
    t->vocab.n++;
    return 0;
}

int tok__merge_find(const mergemap *m, int32_t a, int32_t b, int32_t *rank, int32_t *out) {
    if (!m->key) return 0;
    uint64_t k = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    for (size_t i = mix64(k) & m->mask;; i = (i + 1) & m->mask) {
        if (m->key[i] == UINT64_MAX) return 0;
        if (m->key[i] == k) {
            *rank = m->rank[i];
            *out = m->out[i];
            return 1;
        }
    }
}

static int merge_init(mergemap *m, size_t n) {
    size_t cap = 1024;
    while (cap < n * 2) cap *= 2;
    m->key = malloc(cap * sizeof *m->key);
    m->rank = malloc(cap * sizeof *m->rank);
    m->out = malloc(cap * sizeof *m->out);
    if (!m->key || !m->rank || !m->out) return -1;
    for (size_t i = 0; i < cap; i++) m->key[i] = UINT64_MAX;
    m->mask = cap - 1;
    return 0;
}

/* A pair merged twice keeps its first (lowest) rank, as HF's map does when
 * the later duplicate is ignored by the merge loop anyway. */
static void merge_put(mergemap *m, int32_t a, int32_t b, int32_t rank, int32_t out) {
    uint64_t k = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t i = mix64(k) & m->mask;
    for (; m->key[i] != UINT64_MAX; i = (i + 1) & m->mask)
        if (m->key[i] == k) return;
    m->key[i] = k;
    m->rank[i] = rank;
    m->out[i] = out;
    m->n++;
}

static char *dupn(const char *s, size_t n) {
    char *p = malloc(n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = 0;
    }
    return p;
}

/* ---- vocabulary building ---------------------------------------------- */

static int ids_reserve(tok *t, int32_t id, lr_err *err) {
    if (id < 0 || id >= TOK_MAX_IDS) return lr_errf(err, "token id %d is out of range", (int)id);
    if (id < t->n_ids) return 0;
    int32_t n = t->n_ids ? t->n_ids : 1024;
    while (n <= id) n *= 2;
    size_t *off = realloc(t->off, (size_t)n * sizeof *off);
    if (off) t->off = off;
    int32_t *plen = realloc(t->plen, (size_t)n * sizeof *plen);
    if (plen) t->plen = plen;
    if (!off || !plen) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory loading the vocabulary");
    for (int32_t i = t->n_ids; i < n; i++) t->plen[i] = -1;
    t->n_ids = n;
    return 0;
}

/* Sets the piece of id. Giving one id two different pieces is an error. */
int tok__set_piece(tok *t, int32_t id, const char *s, size_t n, lr_err *err) {
    if (n > INT32_MAX / 2) return lr_errf(err, "token %d is too long", (int)id);
    if (ids_reserve(t, id, err)) return -1;
    if (t->plen[id] >= 0) {
        if ((size_t)t->plen[id] == n && !memcmp(tok__piece_ptr(t, id), s, n)) return 0;
        return lr_errf(err, "token id %d is given twice, to '%.40s' and '%.40s'", (int)id,
                       tok__piece_ptr(t, id), s);
    }
    if (t->arena_len + n + 1 > t->arena_cap) {
        size_t cap = t->arena_cap ? t->arena_cap : 1 << 16;
        while (cap < t->arena_len + n + 1) cap *= 2;
        char *a = realloc(t->arena, cap);
        if (!a) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory loading the vocabulary");
        t->arena = a;
        t->arena_cap = cap;
    }
    memcpy(t->arena + t->arena_len, s, n);
    t->arena[t->arena_len + n] = 0;
    t->off[id] = t->arena_len;
    t->plen[id] = (int32_t)n;
    t->arena_len += n + 1;
    if (vocab_index(t, id)) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory loading the vocabulary");
    return 0;
}

/* The real extent of the ids: highest set id + 1. */
static void ids_trim(tok *t) {
    while (t->n_ids > 0 && t->plen[t->n_ids - 1] < 0) t->n_ids--;
}

static int add_merge(tok *t, const char *a, size_t alen, const char *b, size_t blen, int32_t rank,
                     lr_err *err) {
    int32_t ia = tok__vocab_get(t, a, alen), ib = tok__vocab_get(t, b, blen);
    if (ia < 0 || ib < 0)
        return lr_errf(err, "merge %d: '%.*s' is not in the vocabulary", (int)rank,
                       (int)(ia < 0 ? alen : blen), ia < 0 ? a : b);
    char stack[256];
    /* With a continuing_subword_prefix the right part carries it and the
     * merged piece drops it (HF: "a" + "##b" -> "ab"). */
    size_t skip = 0;
    if (t->prefix_len && blen >= t->prefix_len && !memcmp(b, t->prefix, t->prefix_len)) skip = t->prefix_len;
    size_t n = alen + blen - skip;
    char *m = n <= sizeof stack ? stack : malloc(n);
    if (!m) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory loading merges");
    memcpy(m, a, alen);
    memcpy(m + alen, b + skip, blen - skip);
    int32_t io = tok__vocab_get(t, m, n);
    if (io < 0) lr_errf(err, "merge %d: '%.*s' is not in the vocabulary", (int)rank, (int)n, m);
    if (m != stack) free(m);
    if (io < 0) return -1;
    merge_put(&t->merges, ia, ib, rank, io);
    return 0;
}

/* ---- regex ----------------------------------------------------------- */

pcre2_code *tok__re_compile(const char *pat, size_t n, int literal, lr_err *err) {
    int ec;
    PCRE2_SIZE eo;
    uint32_t opts = literal ? PCRE2_LITERAL | PCRE2_UTF : PCRE2_UTF | PCRE2_UCP;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, n, opts, &ec, &eo, NULL);
    if (!re) {
        char msg[160];
        pcre2_get_error_message(ec, (PCRE2_UCHAR *)msg, sizeof msg);
        lr_errf(err, "bad regex '%.80s' at offset %zu: %s", pat, (size_t)eo, msg);
        return NULL;
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* an interpreter fallback is fine */
    return re;
}

#define QWEN2_PATTERN                                                                      \
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|" \
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"

/* ---- JSON config parsing ---------------------------------------------- */

static const char *jstr(json_t *o, const char *k) {
    json_t *v = json_object_get(o, k);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

static int jbool(json_t *o, const char *k, int dflt) {
    json_t *v = json_object_get(o, k);
    return json_is_boolean(v) ? json_is_true(v) : dflt;
}

/* HF's pattern object: {"String": "x"} or {"Regex": "x"}. */
static int parse_pattern(tok_op *op, json_t *p, const char *what, lr_err *err) {
    json_t *s = json_object_get(p, "String"), *r = json_object_get(p, "Regex");
    json_t *v = json_is_string(s) ? s : r;
    if (!json_is_string(v)) return lr_errf(err, "%s: pattern must be {\"String\"} or {\"Regex\"}", what);
    op->alen = json_string_length(v);
    op->a = dupn(json_string_value(v), op->alen);
    if (!op->a) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
    if (op->alen == 0) return lr_errf(err, "%s: empty pattern", what);
    op->re = tok__re_compile(op->a, op->alen, v == s, err);
    return op->re ? 0 : lr_err_prefix(err, "%s: ", what);
}

static int op_str(tok_op *op, json_t *o, const char *k, int which, const char *what, lr_err *err) {
    json_t *v = json_object_get(o, k);
    if (!json_is_string(v)) return lr_errf(err, "%s: missing string '%s'", what, k);
    size_t n = json_string_length(v);
    char *s = dupn(json_string_value(v), n);
    if (!s) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
    if (which) {
        op->b = s;
        op->blen = n;
    } else {
        op->a = s;
        op->alen = n;
    }
    return 0;
}

static tok_op *next_op(tok_op *ops, int *n, int kind, lr_err *err) {
    if (*n >= TOK_MAX_OPS) {
        lr_errf(err, "too many normalizer/pre-tokenizer/decoder steps (limit %d)", TOK_MAX_OPS);
        return NULL;
    }
    tok_op *op = &ops[(*n)++];
    memset(op, 0, sizeof *op);
    op->kind = kind;
    return op;
}

/* The components of tokenizer.json (normalizer, pre_tokenizer, decoder)
 * nest through "Sequence"s; a file is untrusted, so nesting is bounded. */
#define TOK_MAX_NESTING 8
typedef int (*component_parser)(tok *t, json_t *j, int depth, lr_err *err);

static int component_type(json_t *j, int depth, const char *what, const char **type, lr_err *err) {
    if (depth > TOK_MAX_NESTING) return lr_errf(err, "%s: Sequences nested more than %d deep", what, TOK_MAX_NESTING);
    *type = jstr(j, "type");
    return *type ? 0 : lr_errf(err, "%s: missing 'type'", what);
}

/* A Sequence: each member of its array `key` through fn. */
static int parse_sequence(tok *t, json_t *j, int depth, const char *what, const char *key, component_parser fn,
                          lr_err *err) {
    json_t *a = json_object_get(j, key), *e;
    size_t i;
    if (!json_is_array(a)) return lr_errf(err, "%s Sequence: missing '%s'", what, key);
    json_array_foreach(a, i, e) if (fn(t, e, depth + 1, err)) return -1;
    return 0;
}

static int parse_normalizer(tok *t, json_t *j, int depth, lr_err *err) {
    const char *type;
    if (!j || json_is_null(j)) return 0;
    if (component_type(j, depth, "normalizer", &type, err)) return -1;
    if (!strcmp(type, "Sequence")) return parse_sequence(t, j, depth, "normalizer", "normalizers", parse_normalizer, err);
    static const struct { const char *name; int kind; } simple[] = {
        {"NFC", N_NFC}, {"NFD", N_NFD}, {"NFKC", N_NFKC}, {"NFKD", N_NFKD}, {"Lowercase", N_LOWER},
    };
    for (size_t i = 0; i < sizeof simple / sizeof *simple; i++)
        if (!strcmp(type, simple[i].name)) return next_op(t->norm, &t->n_norm, simple[i].kind, err) ? 0 : -1;
    tok_op *op;
    if (!strcmp(type, "Prepend")) {
        if (!(op = next_op(t->norm, &t->n_norm, N_PREPEND, err))) return -1;
        return op_str(op, j, "prepend", 0, "normalizer Prepend", err);
    }
    if (!strcmp(type, "Replace")) {
        if (!(op = next_op(t->norm, &t->n_norm, N_REPLACE, err))) return -1;
        if (parse_pattern(op, json_object_get(j, "pattern"), "normalizer Replace", err)) return -1;
        return op_str(op, j, "content", 1, "normalizer Replace", err);
    }
    if (!strcmp(type, "Strip")) {
        if (!(op = next_op(t->norm, &t->n_norm, N_STRIP, err))) return -1;
        op->flag = jbool(j, "strip_left", 1);
        op->flag2 = jbool(j, "strip_right", 1);
        return 0;
    }
    return lr_errf(err, "unsupported normalizer type '%.60s'", type);
}

static int parse_behavior(const char *s) {
    static const char *names[] = {"Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous"};
    for (int i = 0; i < 5; i++)
        if (s && !strcmp(s, names[i])) return i;
    return -1;
}

static int parse_pretok(tok *t, json_t *j, int depth, lr_err *err) {
    const char *type;
    tok_op *op;
    if (!j || json_is_null(j)) return 0;
    if (component_type(j, depth, "pre_tokenizer", &type, err)) return -1;
    if (!strcmp(type, "Sequence")) return parse_sequence(t, j, depth, "pre_tokenizer", "pretokenizers", parse_pretok, err);
    if (!strcmp(type, "Split")) {
        if (!(op = next_op(t->pre, &t->n_pre, P_SPLIT, err))) return -1;
        if (parse_pattern(op, json_object_get(j, "pattern"), "pre_tokenizer Split", err)) return -1;
        op->behavior = parse_behavior(jstr(j, "behavior"));
        if (op->behavior < 0) return lr_errf(err, "pre_tokenizer Split: unknown 'behavior'");
        op->invert = jbool(j, "invert", 0);
        return 0;
    }
    if (!strcmp(type, "ByteLevel")) {
        if (!(op = next_op(t->pre, &t->n_pre, P_BYTELEVEL, err))) return -1;
        op->flag = jbool(j, "add_prefix_space", 1);
        op->flag2 = jbool(j, "use_regex", 1);
        if (op->flag2 && !t->gpt2_re) {
            t->gpt2_re = tok__re_compile(GPT2_PATTERN, PCRE2_ZERO_TERMINATED, 0, err);
            if (!t->gpt2_re) return -1;
        }
        return 0;
    }
    if (!strcmp(type, "Metaspace")) {
        if (!(op = next_op(t->pre, &t->n_pre, P_METASPACE, err))) return -1;
        if (op_str(op, j, "replacement", 0, "pre_tokenizer Metaspace", err)) return -1;
        const char *ps = jstr(j, "prepend_scheme");
        op->flag = !ps ? (jbool(j, "add_prefix_space", 1) ? PS_ALWAYS : PS_NEVER)
                 : !strcmp(ps, "always") ? PS_ALWAYS : !strcmp(ps, "first") ? PS_FIRST : PS_NEVER;
        op->flag2 = jbool(j, "split", 1);
        return 0;
    }
    if (!strcmp(type, "Digits")) {
        if (!(op = next_op(t->pre, &t->n_pre, P_DIGITS, err))) return -1;
        op->flag = jbool(j, "individual_digits", 0);
        return 0;
    }
    if (!strcmp(type, "WhitespaceSplit")) return next_op(t->pre, &t->n_pre, P_WSSPLIT, err) ? 0 : -1;
    if (!strcmp(type, "Whitespace") || !strcmp(type, "Punctuation")) {
        /* both are regex splits in HF; Whitespace keeps the matches */
        int ws = !strcmp(type, "Whitespace");
        if (!(op = next_op(t->pre, &t->n_pre, P_SPLIT, err))) return -1;
        const char *pat = ws ? "\\w+|[^\\w\\s]+" : "[\\p{P}\\x21-\\x2f\\x3a-\\x40\\x5b-\\x60\\x7b-\\x7e]";
        op->re = tok__re_compile(pat, PCRE2_ZERO_TERMINATED, 0, err);
        if (!op->re) return -1;
        op->behavior = ws ? SB_REMOVED : parse_behavior(jstr(j, "behavior"));
        if (op->behavior < 0) op->behavior = SB_ISOLATED;
        op->invert = ws;
        return 0;
    }
    return lr_errf(err, "unsupported pre_tokenizer type '%.60s'", type);
}

static int parse_decoder(tok *t, json_t *j, int depth, lr_err *err) {
    const char *type;
    tok_op *op;
    if (!j || json_is_null(j)) return 0;
    if (component_type(j, depth, "decoder", &type, err)) return -1;
    if (!strcmp(type, "Sequence")) return parse_sequence(t, j, depth, "decoder", "decoders", parse_decoder, err);
    if (!strcmp(type, "ByteLevel")) return next_op(t->dec, &t->n_dec, D_BYTELEVEL, err) ? 0 : -1;
    if (!strcmp(type, "ByteFallback")) return next_op(t->dec, &t->n_dec, D_BYTEFALLBACK, err) ? 0 : -1;
    if (!strcmp(type, "Fuse")) return next_op(t->dec, &t->n_dec, D_FUSE, err) ? 0 : -1;
    if (!strcmp(type, "Replace")) {
        if (!(op = next_op(t->dec, &t->n_dec, D_REPLACE, err))) return -1;
        if (parse_pattern(op, json_object_get(j, "pattern"), "decoder Replace", err)) return -1;
        return op_str(op, j, "content", 1, "decoder Replace", err);
    }
    if (!strcmp(type, "Strip")) {
        if (!(op = next_op(t->dec, &t->n_dec, D_STRIP, err))) return -1;
        if (op_str(op, j, "content", 0, "decoder Strip", err)) return -1;
        json_t *s = json_object_get(j, "start"), *e = json_object_get(j, "stop");
        op->start = json_is_integer(s) ? (int)json_integer_value(s) : 0;
        op->stop = json_is_integer(e) ? (int)json_integer_value(e) : 0;
        if (op->start < 0 || op->stop < 0) return lr_errf(err, "decoder Strip: negative start/stop");
        return 0;
    }
    if (!strcmp(type, "Metaspace")) {
        if (!(op = next_op(t->dec, &t->n_dec, D_METASPACE, err))) return -1;
        if (op_str(op, j, "replacement", 0, "decoder Metaspace", err)) return -1;
        const char *ps = jstr(j, "prepend_scheme");
        op->flag = !ps ? (jbool(j, "add_prefix_space", 1) ? PS_ALWAYS : PS_NEVER)
                 : !strcmp(ps, "always") ? PS_ALWAYS : !strcmp(ps, "first") ? PS_FIRST : PS_NEVER;
        return 0;
    }
    return lr_errf(err, "unsupported decoder type '%.60s'", type);
}

/* Added tokens: tokenizer.json's "added_tokens" array or
 * tokenizer_config.json's "added_tokens_decoder" object (id -> token). */
static int add_added(tok *t, int32_t id, json_t *o, int dflt_special, lr_err *err) {
    const char *c = jstr(o, "content");
    if (!c) return lr_errf(err, "added token %d: missing 'content'", (int)id);
    size_t n = json_string_length(json_object_get(o, "content"));
    if (n == 0) return lr_errf(err, "added token %d: empty 'content'", (int)id);
    if (t->n_added >= TOK_MAX_ADDED) return lr_errf(err, "too many added tokens (limit %d)", TOK_MAX_ADDED);
    for (int i = 0; i < t->n_added; i++)
        if (t->added[i].len == n && !memcmp(t->added[i].content, c, n)) return 0; /* listed twice */
    /* HF's AddedVocabulary: a content already in the vocabulary keeps its id;
     * an id taken by another piece gives way to the next free id */
    int32_t have = tok__vocab_get(t, c, n);
    if (have >= 0) {
        id = have;
    } else if (id < t->n_ids && t->plen[id] >= 0) {
        int32_t top = t->n_ids - 1;
        while (top >= 0 && t->plen[top] < 0) top--;
        id = top + 1;
    }
    if (tok__set_piece(t, id, c, n, err)) return lr_err_prefix(err, "added token: ");
    if (t->n_added % 64 == 0) {
        added_tok *a = realloc(t->added, (size_t)(t->n_added + 64) * sizeof *a);
        if (!a) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
        t->added = a;
    }
    added_tok *a = &t->added[t->n_added];
    memset(a, 0, sizeof *a);
    a->id = id;
    a->len = n;
    if (!(a->content = dupn(c, n))) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
    t->n_added++;
    a->special = jbool(o, "special", dflt_special);
    a->lstrip = jbool(o, "lstrip", 0);
    a->rstrip = jbool(o, "rstrip", 0);
    a->single_word = jbool(o, "single_word", 0);
    a->normalized = jbool(o, "normalized", !a->special);
    return 0;
}

static int parse_added_array(tok *t, json_t *arr, lr_err *err) {
    size_t i;
    json_t *e;
    if (!arr || json_is_null(arr)) return 0;
    if (!json_is_array(arr)) return lr_errf(err, "'added_tokens' must be an array");
    json_array_foreach(arr, i, e) {
        json_t *id = json_object_get(e, "id");
        if (!json_is_integer(id)) return lr_errf(err, "added token %zu: missing 'id'", i);
        json_int_t v = json_integer_value(id);
        if (v < 0 || v >= TOK_MAX_IDS) return lr_errf(err, "added token %zu: id out of range", i);
        if (add_added(t, (int32_t)v, e, 0, err)) return -1;
    }
    return 0;
}

static int parse_vocab_object(tok *t, json_t *v, lr_err *err) {
    const char *k;
    json_t *e;
    if (!json_is_object(v)) return lr_errf(err, "vocabulary must be a JSON object of piece: id");
    if (json_object_size(v) > TOK_MAX_IDS) return lr_errf(err, "vocabulary too large");
    /* Reserving up front keeps the arena and id arrays from regrowing. */
    json_object_foreach(v, k, e) {
        if (!json_is_integer(e)) return lr_errf(err, "vocabulary: id of '%.40s' is not an integer", k);
        json_int_t id = json_integer_value(e);
        if (id < 0 || id >= TOK_MAX_IDS) return lr_errf(err, "vocabulary: id of '%.40s' out of range", k);
        if (tok__set_piece(t, (int32_t)id, k, strlen(k), err)) return lr_err_prefix(err, "vocabulary: ");
    }
    return 0;
}

/* One merge from "a b" (split at the one space) or ["a", "b"]. */
static int parse_merge(tok *t, json_t *e, int32_t rank, lr_err *err) {
    if (json_is_string(e)) {
        const char *s = json_string_value(e);
        size_t n = json_string_length(e);
        const char *sp = memchr(s, ' ', n);
        if (!sp || sp == s || sp == s + n - 1 || memchr(sp + 1, ' ', n - (size_t)(sp - s) - 1))
            return lr_errf(err, "merge %d: '%.60s' is not two pieces separated by one space", (int)rank, s);
        return add_merge(t, s, (size_t)(sp - s), sp + 1, n - (size_t)(sp - s) - 1, rank, err);
    }
    if (json_is_array(e) && json_array_size(e) == 2 && json_is_string(json_array_get(e, 0)) &&
        json_is_string(json_array_get(e, 1))) {
        json_t *a = json_array_get(e, 0), *b = json_array_get(e, 1);
        return add_merge(t, json_string_value(a), json_string_length(a), json_string_value(b),
                         json_string_length(b), rank, err);
    }
    return lr_errf(err, "merge %d: must be \"a b\" or [\"a\", \"b\"]", (int)rank);
}

static int opt_string(json_t *m, const char *k, char **out, size_t *len, lr_err *err) {
    json_t *v = json_object_get(m, k);
    if (!json_is_string(v) || json_string_length(v) == 0) return 0;
    *len = json_string_length(v);
    if (!(*out = dupn(json_string_value(v), *len))) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
    return 0;
}

static void find_byte_tokens(tok *t) {
    for (int b = 0; b < 256; b++) {
        char s[8];
        snprintf(s, sizeof s, "<0x%02X>", b);
        t->byte_tok[b] = tok__vocab_get(t, s, 6);
    }
}

static int parse_model(tok *t, json_t *m, lr_err *err) {
    if (!json_is_object(m)) return lr_errf(err, "missing 'model'");
    const char *type = jstr(m, "type");
    json_t *merges = json_object_get(m, "merges");
    if (type ? strcmp(type, "BPE") != 0 : !merges)
        return lr_errf(err, "unsupported tokenizer model type '%.40s' (only BPE is supported)",
                       type ? type : "(none)");
    if (!json_is_array(merges)) return lr_errf(err, "model: 'merges' must be an array");
    if (json_array_size(merges) > TOK_MAX_MERGES) return lr_errf(err, "model: too many merges");
    json_t *dropout = json_object_get(m, "dropout");
    if (json_is_number(dropout) && json_number_value(dropout) > 0) /* random merges: not reproducible */
        return lr_errf(err, "model: BPE dropout is not supported");
    t->byte_fallback = jbool(m, "byte_fallback", 0);
    t->fuse_unk = jbool(m, "fuse_unk", 0);
    t->ignore_merges = jbool(m, "ignore_merges", 0);
    if (opt_string(m, "continuing_subword_prefix", &t->prefix, &t->prefix_len, err) ||
        opt_string(m, "end_of_word_suffix", &t->suffix, &t->suffix_len, err))
        return -1;
    if (parse_vocab_object(t, json_object_get(m, "vocab"), err)) return -1;
    if (merge_init(&t->merges, json_array_size(merges)))
        return lr_errp(err, LR_E_NOMEM, NULL, "out of memory loading merges");
    size_t i;
    json_t *e;
    json_array_foreach(merges, i, e) if (parse_merge(t, e, (int32_t)i, err)) return -1;
    const char *unk = jstr(m, "unk_token");
    t->unk_id = -1;
    if (unk) {
        t->unk_id = tok__vocab_get(t, unk, strlen(unk));
        if (t->unk_id < 0) return lr_errf(err, "model: unk_token '%.40s' is not in the vocabulary", unk);
    }
    return 0;
}

/* The first SpecialToken of a TemplateProcessing "single" template, before
 * the sequence, is a BOS that the model's encode adds. */
static void parse_post(tok *t, json_t *pp, int depth, int32_t *bos) {
    const char *type = jstr(pp, "type");
    if (!type || depth > TOK_MAX_NESTING) return;
    if (!strcmp(type, "Sequence")) {
        size_t i;
        json_t *e;
        json_array_foreach(json_object_get(pp, "processors"), i, e) parse_post(t, e, depth + 1, bos);
        return;
    }
    if (strcmp(type, "TemplateProcessing")) return;
    json_t *single = json_object_get(pp, "single");
    json_t *first = json_array_get(single, 0);
    json_t *sp = json_object_get(first, "SpecialToken");
    const char *name = jstr(sp, "id");
    if (!name) return;
    json_t *ids = json_object_get(json_object_get(json_object_get(pp, "special_tokens"), name), "ids");
    json_t *id0 = json_array_get(ids, 0);
    int32_t id = json_is_integer(id0) ? (int32_t)json_integer_value(id0) : tok__vocab_get(t, name, strlen(name));
    if (id >= 0) {
        *bos = id;
        t->adds_bos = 1;
    }
}

/* ---- added-token tables ---------------------------------------------- */

static int cmp_added(const void *a, const void *b, void *ctx) {
    const tok *t = ctx;
    const added_tok *x = &t->added[*(const int32_t *)a], *y = &t->added[*(const int32_t *)b];
    const char *xs = x->normalized ? x->norm : x->content, *ys = y->normalized ? y->norm : y->content;
    size_t xl = x->normalized ? x->nlen : x->len, yl = y->normalized ? y->nlen : y->len;
    if ((uint8_t)xs[0] != (uint8_t)ys[0]) return (uint8_t)xs[0] - (uint8_t)ys[0];
    if (xl != yl) return xl > yl ? -1 : 1;
    return memcmp(xs, ys, xl);
}


static int build_set(tok *t, added_set *set, int normalized, lr_err *err) {
    set->order = malloc((size_t)(t->n_added ? t->n_added : 1) * sizeof *set->order);
    if (!set->order) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
    set->n = 0;
    for (int i = 0; i < t->n_added; i++) {
        added_tok *a = &t->added[i];
        if (a->normalized != normalized) continue;
        if (normalized) {
            lr_buf b;
            lr_buf_init(&b, TOK_MAX_TEXT);
            if (tok__normalize(t, a->content, a->len, &b, err)) {
                lr_buf_free(&b);
                return -1;
            }
            if (b.len == 0) { /* normalizes to nothing: can never match */
                lr_buf_free(&b);
                continue;
            }
            a->norm = lr_buf_take(&b, &a->nlen);
        }
        set->order[set->n++] = i;
    }
    qsort_r(set->order, (size_t)set->n, sizeof *set->order, cmp_added, t);
    int k = 0;
    for (int b = 0; b <= 256; b++) {
        while (k < set->n) {
            const added_tok *a = &t->added[set->order[k]];
            if ((uint8_t)(normalized ? a->norm : a->content)[0] >= b) break;
            k++;
        }
        set->first[b] = k;
    }
    return 0;
}

/* ---- loading ----------------------------------------------------------- */

tok *tok__new(void) {
    tok *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    t->unk_id = t->bos = t->eos = -1;
    t->adds_bos = -1;
    return t;
}

static void ops_free(tok_op *ops, int n) {
    for (int i = 0; i < n; i++) {
        free(ops[i].a);
        free(ops[i].b);
        pcre2_code_free(ops[i].re);
    }
}

void tok_free(tok *t) {
    if (!t) return;
    free(t->arena);
    free(t->off);
    free(t->plen);
    free(t->vocab.hash);
    free(t->vocab.id);
    free(t->merges.key);
    free(t->merges.rank);
    free(t->merges.out);
    free(t->prefix);
    free(t->suffix);
    ops_free(t->norm, t->n_norm);
    ops_free(t->pre, t->n_pre);
    ops_free(t->dec, t->n_dec);
    pcre2_code_free(t->gpt2_re);
    for (int i = 0; i < t->n_added; i++) {
        free(t->added[i].content);
        free(t->added[i].norm);
    }
    free(t->added);
    free(t->raw_set.order);
    free(t->norm_set.order);
    free(t);
}

/* bos_token / eos_token in tokenizer_config.json or special_tokens_map.json:
 * a string or an {"content": ...} object. */
static int32_t config_token(const tok *t, json_t *cfg, const char *key) {
    json_t *v = json_object_get(cfg, key);
    const char *s = json_is_string(v) ? json_string_value(v) : jstr(v, "content");
    return s ? tok__vocab_get(t, s, strlen(s)) : -1;
}

static json_t *load_json_file(const char *path, size_t max, int must, size_t flags, lr_err *err) {
    char *data = NULL;
    size_t len = 0;
    lr_err e2;
    if (lr_read_file(path, max, &data, &len, &e2)) {
        struct stat st;
        if (!must && stat(path, &st) != 0) return json_null(); /* absent: fine */
        lr_errf(err, "%s", e2.msg);
        return NULL;
    }
    json_error_t je;
    json_t *j = json_loadb(data, len, flags, &je);
    free(data);
    if (!j) lr_errp(err, LR_E_INVALID, NULL, "%s: invalid JSON at line %d: %s", path, je.line, je.text);
    return j;
}

/* Side files carry huge integers (model_max_length 1e30) and nothing read
 * from them is an integer. */
#define SIDE_FLAGS JSON_DECODE_INT_AS_REAL

/* The side files of a model folder: BOS/EOS and add_bos_token. Absent
 * files are fine; unreadable or malformed ones are errors. */
static int load_side(tok *t, const char *dir, int32_t post_bos, lr_err *err) {
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    json_t *cfg = load_json_file(path, TOK_MAX_SIDE, 0, SIDE_FLAGS, err);
    if (!cfg) return -1;
    snprintf(path, sizeof path, "%s/special_tokens_map.json", dir);
    json_t *map = load_json_file(path, TOK_MAX_SIDE, 0, SIDE_FLAGS, err);
    if (!map) {
        json_decref(cfg);
        return -1;
    }
    int32_t bos = config_token(t, cfg, "bos_token"), eos = config_token(t, cfg, "eos_token");
    if (bos < 0) bos = config_token(t, map, "bos_token");
    if (eos < 0) eos = config_token(t, map, "eos_token");
    if (bos < 0) bos = post_bos;
    t->bos = bos;
    t->eos = eos;
    json_t *ab = json_object_get(cfg, "add_bos_token");
    if (json_is_boolean(ab)) t->adds_bos = json_is_true(ab);
    json_decref(map);
    json_decref(cfg);
    return 0;
}

/* Without side files the usual names of special added tokens stand in for
 * BOS/EOS (never plain vocabulary pieces: Qwen2's vocabulary has "<s>"). */
static int32_t special_named(const tok *t, const char *const *names, size_t n) {
    for (size_t k = 0; k < n; k++)
        for (int i = 0; i < t->n_added; i++)
            if (t->added[i].special && !strcmp(t->added[i].content, names[k])) return t->added[i].id;
    return -1;
}

static void guess_specials(tok *t) {
    static const char *bos[] = {"<s>", "<|begin_of_text|>", "<bos>"};
    static const char *eos[] = {"</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>"};
    if (t->bos < 0) t->bos = special_named(t, bos, sizeof bos / sizeof *bos);
    if (t->eos < 0) t->eos = special_named(t, eos, sizeof eos / sizeof *eos);
}

static int finish(tok *t, lr_err *err) {
    for (int b = 0; b < 256; b++) {
        uint8_t e[4];
        t->bl_len[b] = (uint8_t)utf8_encode(utf8_byte_char((uint8_t)b), e);
        memcpy(t->bl_char[b], e, 2);
    }
    ids_trim(t);
    if (t->n_ids == 0) return lr_errf(err, "the vocabulary is empty");
    find_byte_tokens(t);
    if (build_set(t, &t->raw_set, 0, err) || build_set(t, &t->norm_set, 1, err)) return -1;
    if (t->adds_bos < 0) t->adds_bos = 0;
    guess_specials(t);
    return 0;
}

static int load_json_root(tok *t, json_t *root, int32_t *post_bos, lr_err *err) {
    if (!json_is_object(root)) return lr_errf(err, "tokenizer.json: the top level must be an object");
    if (parse_model(t, json_object_get(root, "model"), err)) return -1;
    if (parse_added_array(t, json_object_get(root, "added_tokens"), err)) return -1;
    if (parse_normalizer(t, json_object_get(root, "normalizer"), 0, err)) return -1;
    if (parse_pretok(t, json_object_get(root, "pre_tokenizer"), 0, err)) return -1;
    if (parse_decoder(t, json_object_get(root, "decoder"), 0, err)) return -1;
    json_t *pp = json_object_get(root, "post_processor");
    if (json_is_object(pp)) parse_post(t, pp, 0, post_bos);
    return 0;
}

int tok_load_json(const char *json, size_t len, tok **out, lr_err *err) {
    *out = NULL;
    if (len > TOK_MAX_JSON) return lr_errp(err, LR_E_TOOBIG, NULL, "tokenizer.json is larger than %u MB", TOK_MAX_JSON >> 20);
    json_error_t je;
    json_t *root = json_loadb(json, len, 0, &je);
    if (!root) return lr_errp(err, LR_E_INVALID, NULL, "tokenizer.json: invalid JSON at line %d: %s", je.line, je.text);
    tok *t = tok__new();
    if (!t) {
        json_decref(root);
        return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
    }
    int32_t post_bos = -1;
    if (load_json_root(t, root, &post_bos, err)) goto fail;
    t->bos = post_bos;
    if (finish(t, err)) goto fail;
    json_decref(root);
    *out = t;
    return 0;
fail:
    json_decref(root);
    tok_free(t);
    return -1;
}

static int is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static int is_file(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

static int load_tokenizer_json(const char *file, const char *dir, tok **out, lr_err *err) {
    json_t *root = load_json_file(file, TOK_MAX_JSON, 1, 0, err);
    if (!root) return -1;
    tok *t = tok__new();
    if (!t) {
        json_decref(root);
        return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
    }
    int32_t post_bos = -1;
    if (load_json_root(t, root, &post_bos, err)) {
        lr_err_prefix(err, "%s: ", file);
        goto fail;
    }
    if (load_side(t, dir, post_bos, err)) goto fail;
    if (finish(t, err)) goto fail;
    json_decref(root);
    *out = t;
    return 0;
fail:
    json_decref(root);
    tok_free(t);
    return -1;
}

/* merges.txt: an optional "#version" line, then "a b" per line. */
static int load_merges_txt(tok *t, const char *path, lr_err *err) {
    char *data = NULL;
    size_t len = 0;
    if (lr_read_file(path, TOK_MAX_JSON, &data, &len, err)) return -1;
    size_t lines = 1;
    for (size_t i = 0; i < len; i++) lines += data[i] == '\n';
    int rc = -1;
    if (lines > TOK_MAX_MERGES) {
        lr_errf(err, "%s: too many merges", path);
        goto out;
    }
    if (merge_init(&t->merges, lines)) {
        lr_errp(err, LR_E_NOMEM, NULL, "out of memory loading merges");
        goto out;
    }
    int32_t rank = 0;
    size_t lineno = 0;
    for (char *p = data, *end = data + len; p < end;) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        char *e = nl ? nl : end;
        lineno++;
        size_t n = (size_t)(e - p);
        if (n && p[n - 1] == '\r') n--;
        if (n && !(lineno == 1 && n >= 8 && !memcmp(p, "#version", 8))) {
            char *sp = memchr(p, ' ', n);
            if (!sp || sp == p || sp == p + n - 1 || memchr(sp + 1, ' ', n - (size_t)(sp - p) - 1)) {
                lr_errf(err, "%s line %zu: not two pieces separated by one space", path, lineno);
                goto out;
            }
            if (add_merge(t, p, (size_t)(sp - p), sp + 1, n - (size_t)(sp - p) - 1, rank, err)) {
                lr_err_prefix(err, "%s line %zu: ", path, lineno);
                goto out;
            }
            rank++;
        }
        p = e + 1;
    }
    rc = 0;
out:
    free(data);
    return rc;
}

/* The slow-tokenizer pair of GPT-2-like models. tokenizer_class picks the
 * pre-tokenization the slow tokenizer hard-codes: GPT-2's regex, or
 * Qwen2's NFC + its regex. */
static int load_pair(const char *dir, tok **out, lr_err *err) {
    char path[4096];
    json_t *vocab = NULL, *cfg = NULL;
    tok *t = tok__new();
    if (!t) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
    snprintf(path, sizeof path, "%s/vocab.json", dir);
    if (!(vocab = load_json_file(path, TOK_MAX_JSON, 1, 0, err))) goto fail;
    if (parse_vocab_object(t, vocab, err)) {
        lr_err_prefix(err, "%s: ", path);
        goto fail;
    }
    json_decref(vocab);
    vocab = NULL;
    snprintf(path, sizeof path, "%s/merges.txt", dir);
    if (load_merges_txt(t, path, err)) goto fail;
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    if (!(cfg = load_json_file(path, TOK_MAX_SIDE, 0, SIDE_FLAGS, err))) goto fail;

    const char *cls = jstr(cfg, "tokenizer_class");
    int qwen = cls && !strncmp(cls, "Qwen2Tokenizer", 14);
    if (cls && !qwen && strncmp(cls, "GPT2Tokenizer", 13) && strncmp(cls, "CodeGenTokenizer", 16)) {
        lr_errf(err, "%s: tokenizer_class '%.40s' needs a tokenizer.json (vocab.json + merges.txt "
                "are understood for GPT2Tokenizer and Qwen2Tokenizer)", dir, cls);
        goto fail;
    }
    tok_op *op;
    if (qwen && !next_op(t->norm, &t->n_norm, N_NFC, err)) goto fail;
    if (qwen) {
        if (!(op = next_op(t->pre, &t->n_pre, P_SPLIT, err))) goto fail;
        op->behavior = SB_ISOLATED;
        if (!(op->re = tok__re_compile(QWEN2_PATTERN, PCRE2_ZERO_TERMINATED, 0, err))) goto fail;
    }
    if (!(op = next_op(t->pre, &t->n_pre, P_BYTELEVEL, err))) goto fail;
    op->flag = json_is_true(json_object_get(cfg, "add_prefix_space"));
    op->flag2 = !qwen;
    if (op->flag2 && !(t->gpt2_re = tok__re_compile(GPT2_PATTERN, PCRE2_ZERO_TERMINATED, 0, err))) goto fail;
    if (!next_op(t->dec, &t->n_dec, D_BYTELEVEL, err)) goto fail;

    /* added_tokens_decoder: {"151643": {...}, ...}; the slow tokenizer's
     * added tokens are all matched in the raw text. */
    json_t *atd = json_object_get(cfg, "added_tokens_decoder");
    const char *k;
    json_t *e;
    json_object_foreach(atd, k, e) {
        char *endp;
        errno = 0;
        long id = strtol(k, &endp, 10);
        if (*endp || errno || id < 0 || id >= TOK_MAX_IDS) {
            lr_errf(err, "tokenizer_config.json: added_tokens_decoder key '%.20s' is not an id", k);
            goto fail;
        }
        if (add_added(t, (int32_t)id, e, 1, err)) goto fail;
        if (!qwen) t->added[t->n_added - 1].normalized = 0;
    }
    for (int i = 0; i < t->n_added; i++)
        if (qwen) t->added[i].normalized = 0;
    if (load_side(t, dir, -1, err)) goto fail; /* after the added tokens: BOS/EOS are among them */
    if (finish(t, err)) goto fail;
    json_decref(cfg);
    *out = t;
    return 0;
fail:
    json_decref(vocab);
    json_decref(cfg);
    tok_free(t);
    return -1;
}

int tok_load(const char *path, tok **out, lr_err *err) {
    *out = NULL;
    char buf[4096];
    if (!path || strlen(path) > 3000) return lr_errp(err, LR_E_INVALID, NULL, "tokenizer path is empty or too long");
    if (is_dir(path)) {
        snprintf(buf, sizeof buf, "%s/tokenizer.json", path);
        if (is_file(buf)) return load_tokenizer_json(buf, path, out, err);
        char m[4096];
        snprintf(buf, sizeof buf, "%s/vocab.json", path);
        snprintf(m, sizeof m, "%s/merges.txt", path);
        if (is_file(buf) && is_file(m)) return load_pair(path, out, err);
        return lr_errp(err, LR_E_NOTFOUND, NULL, "%s: no tokenizer.json, nor vocab.json + merges.txt", path);
    }
    if (!is_file(path)) return lr_errp(err, LR_E_NOTFOUND, NULL, "%s: no such tokenizer file or folder", path);
    snprintf(buf, sizeof buf, "%s", path);
    char *slash = strrchr(buf, '/');
    if (slash)
        *slash = 0;
    else
        snprintf(buf, sizeof buf, ".");
    return load_tokenizer_json(path, buf, out, err);
}

/* ---- accessors --------------------------------------------------------- */

int tok_vocab_size(const tok *t) { return t->n_ids; }
int32_t tok_bos_id(const tok *t) { return t->bos; }
int32_t tok_eos_id(const tok *t) { return t->eos; }
int tok_adds_bos(const tok *t) { return t->adds_bos; }

int32_t tok_piece_id(const tok *t, const char *piece) { return tok__vocab_get(t, piece, strlen(piece)); }

const char *tok_id_piece(const tok *t, int32_t id) {
    if (id < 0 || id >= t->n_ids || t->plen[id] < 0) return NULL;
    return tok__piece_ptr(t, id);
}
