/* tok: Hugging Face BPE tokenizers (tokenizers' Rust semantics, re-done in C).
 *
 * Pipeline of an encode, as HF runs it:
 *   1. invalid UTF-8 becomes U+FFFD (HF only ever sees valid str);
 *   2. added tokens with normalized=false are cut out of the raw text;
 *   3. each remaining piece is normalized, then added tokens with
 *      normalized=true are cut out of it (matched by their normalized form);
 *   4. each remaining piece is pre-tokenized (a chain of split ops);
 *   5. each pre-token is merged by BPE (a heap of candidate merges, lowest
 *      rank first, leftmost first among equal ranks: HF's Word::merge_all). */
#include "worker/tok.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <utf8proc.h>
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "common/buf.h"
#include "worker/bpe_train.h"
#include "worker/utf8.h"

#define TOK_MAX_JSON (128u << 20)     /* the largest real tokenizer.json files are ~35 MB */
#define TOK_MAX_SIDE (8u << 20)       /* tokenizer_config.json (chat templates) */
#define TOK_MAX_IDS (1 << 24)         /* vocabulary ids */
#define TOK_MAX_MERGES (1 << 24)
#define TOK_MAX_OPS 64                /* normalizer / pre-tokenizer / decoder steps */
#define TOK_MAX_ADDED 65536
#define TOK_MAX_TEXT ((size_t)1 << 30)    /* one text to encode */
#define TOK_MAX_WORK (TOK_MAX_TEXT * 4) /* its normalized / byte-mapped forms grow it */

/* ---- maps ------------------------------------------------------------ */

/* piece -> id; the pieces live in the tok's arena, the map holds ids. */
typedef struct {
    uint32_t *hash;
    int32_t *id; /* -1: empty slot */
    size_t mask, n;
} strmap;

/* (left id, right id) -> (rank, merged id) */
typedef struct {
    uint64_t *key; /* UINT64_MAX: empty */
    int32_t *rank, *out;
    size_t mask, n;
} mergemap;

/* ---- pipeline steps -------------------------------------------------- */

enum {
    /* normalizers */
    N_NFC, N_NFD, N_NFKC, N_NFKD, N_LOWER, N_PREPEND, N_REPLACE, N_STRIP,
    /* pre-tokenizers */
    P_SPLIT, P_BYTELEVEL, P_METASPACE, P_DIGITS, P_WSSPLIT,
    /* decoders */
    D_BYTELEVEL, D_REPLACE, D_BYTEFALLBACK, D_FUSE, D_STRIP, D_METASPACE,
};

enum { SB_REMOVED, SB_ISOLATED, SB_PREV, SB_NEXT, SB_CONTIG };
enum { PS_ALWAYS, PS_FIRST, PS_NEVER };

typedef struct {
    int kind;
    char *a, *b; /* pattern/prepend/replacement, content */
    size_t alen, blen;
    pcre2_code *re; /* regex patterns (N_REPLACE, P_SPLIT) */
    int behavior, invert;
    int flag;      /* add_prefix_space / individual_digits / prepend scheme / left strip */
    int flag2;     /* use_regex / metaspace split / right strip */
    int start, stop;
} tok_op;

typedef struct {
    int32_t id;
    char *content;
    size_t len;
    char *norm; /* content as the normalizer writes it (normalized tokens) */
    size_t nlen;
    int special, lstrip, rstrip, single_word, normalized;
} added_tok;

/* One trie-like table per kind of added token: candidates by first byte,
 * longest first, so the first hit at a position is the leftmost-longest. */
typedef struct {
    int32_t *order; /* indices into t->added */
    int n;
    int first[257]; /* order[first[b] .. first[b+1]) start with byte b */
} added_set;

struct tok {
    /* vocabulary: id -> piece in arena (offset, length; len -1 = hole) */
    char *arena;
    size_t arena_len, arena_cap;
    size_t *off;
    int32_t *plen;
    int32_t n_ids;
    strmap vocab;
    mergemap merges;
    int32_t unk_id;
    int byte_fallback, fuse_unk, ignore_merges;
    int32_t byte_tok[256]; /* "<0xXX>" ids for byte fallback, -1 when absent */
    char *prefix, *suffix; /* continuing_subword_prefix, end_of_word_suffix */
    size_t prefix_len, suffix_len;

    tok_op norm[TOK_MAX_OPS], pre[TOK_MAX_OPS], dec[TOK_MAX_OPS];
    int n_norm, n_pre, n_dec;
    pcre2_code *gpt2_re; /* ByteLevel's own regex */

    added_tok *added;
    int n_added;
    added_set raw_set, norm_set;

    int32_t bos, eos;
    int adds_bos;

    uint8_t bl_char[256][2]; /* GPT-2 byte -> its printable character, UTF-8 */
    uint8_t bl_len[256];
};

/* ---- small helpers --------------------------------------------------- */

static uint32_t hash_bytes(const char *s, size_t n) {
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

static const char *piece_ptr(const tok *t, int32_t id) { return t->arena + t->off[id]; }

static int32_t vocab_get(const tok *t, const char *s, size_t n) {
    if (!t->vocab.id) return -1;
    uint32_t h = hash_bytes(s, n);
    for (size_t i = h & t->vocab.mask;; i = (i + 1) & t->vocab.mask) {
        int32_t id = t->vocab.id[i];
        if (id < 0) return -1;
        if (t->vocab.hash[i] == h && (size_t)t->plen[id] == n && !memcmp(piece_ptr(t, id), s, n))
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
    const char *s = piece_ptr(t, id);
    size_t n = (size_t)t->plen[id];
    uint32_t h = hash_bytes(s, n);
    size_t i = h & t->vocab.mask;
    for (; t->vocab.id[i] >= 0; i = (i + 1) & t->vocab.mask) {
        int32_t o = t->vocab.id[i];
        if (t->vocab.hash[i] == h && (size_t)t->plen[o] == n && !memcmp(piece_ptr(t, o), s, n))
            return 0;
    }
    t->vocab.id[i] = id;
    t->vocab.hash[i] = h;
    t->vocab.n++;
    return 0;
}

static int merge_find(const mergemap *m, int32_t a, int32_t b, int32_t *rank, int32_t *out) {
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
static int set_piece(tok *t, int32_t id, const char *s, size_t n, lr_err *err) {
    if (n > INT32_MAX / 2) return lr_errf(err, "token %d is too long", (int)id);
    if (ids_reserve(t, id, err)) return -1;
    if (t->plen[id] >= 0) {
        if ((size_t)t->plen[id] == n && !memcmp(piece_ptr(t, id), s, n)) return 0;
        return lr_errf(err, "token id %d is given twice, to '%.40s' and '%.40s'", (int)id,
                       piece_ptr(t, id), s);
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
    int32_t ia = vocab_get(t, a, alen), ib = vocab_get(t, b, blen);
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
    int32_t io = vocab_get(t, m, n);
    if (io < 0) lr_errf(err, "merge %d: '%.*s' is not in the vocabulary", (int)rank, (int)n, m);
    if (m != stack) free(m);
    if (io < 0) return -1;
    merge_put(&t->merges, ia, ib, rank, io);
    return 0;
}

/* ---- regex ----------------------------------------------------------- */

static pcre2_code *re_compile(const char *pat, size_t n, int literal, lr_err *err) {
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

#define GPT2_PATTERN "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"
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
    op->re = re_compile(op->a, op->alen, v == s, err);
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
            t->gpt2_re = re_compile(GPT2_PATTERN, PCRE2_ZERO_TERMINATED, 0, err);
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
        op->re = re_compile(pat, PCRE2_ZERO_TERMINATED, 0, err);
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
    int32_t have = vocab_get(t, c, n);
    if (have >= 0) {
        id = have;
    } else if (id < t->n_ids && t->plen[id] >= 0) {
        int32_t top = t->n_ids - 1;
        while (top >= 0 && t->plen[top] < 0) top--;
        id = top + 1;
    }
    if (set_piece(t, id, c, n, err)) return lr_err_prefix(err, "added token: ");
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
        if (set_piece(t, (int32_t)id, k, strlen(k), err)) return lr_err_prefix(err, "vocabulary: ");
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
        t->byte_tok[b] = vocab_get(t, s, 6);
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
        t->unk_id = vocab_get(t, unk, strlen(unk));
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
    int32_t id = json_is_integer(id0) ? (int32_t)json_integer_value(id0) : vocab_get(t, name, strlen(name));
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

static int normalize(const tok *t, const char *s, size_t n, lr_buf *out, lr_err *err);

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
            if (normalize(t, a->content, a->len, &b, err)) {
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

static tok *tok_new(void) {
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
    return s ? vocab_get(t, s, strlen(s)) : -1;
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
    tok *t = tok_new();
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
    tok *t = tok_new();
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
    tok *t = tok_new();
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
        if (!(op->re = re_compile(QWEN2_PATTERN, PCRE2_ZERO_TERMINATED, 0, err))) goto fail;
    }
    if (!(op = next_op(t->pre, &t->n_pre, P_BYTELEVEL, err))) goto fail;
    op->flag = json_is_true(json_object_get(cfg, "add_prefix_space"));
    op->flag2 = !qwen;
    if (op->flag2 && !(t->gpt2_re = re_compile(GPT2_PATTERN, PCRE2_ZERO_TERMINATED, 0, err))) goto fail;
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

int32_t tok_piece_id(const tok *t, const char *piece) { return vocab_get(t, piece, strlen(piece)); }

const char *tok_id_piece(const tok *t, int32_t id) {
    if (id < 0 || id >= t->n_ids || t->plen[id] < 0) return NULL;
    return piece_ptr(t, id);
}

/* ---- normalization ------------------------------------------------------ */

static int replace_all(const tok_op *op, const char *s, size_t n, lr_buf *out, pcre2_match_data *md) {
    PCRE2_SIZE pos = 0;
    while (pos <= n) {
        int rc = pcre2_match(op->re, (PCRE2_SPTR)s, n, pos, PCRE2_NO_UTF_CHECK, md, NULL);
        if (rc < 0) break;
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        if (ov[1] == ov[0]) { /* an empty match replaces nothing; step one character */
            size_t step = ov[0] < n ? (size_t)utf8_len((const uint8_t *)s + ov[0], n - ov[0]) : 1;
            if (lr_buf_add(out, s + pos, ov[0] + (ov[0] < n ? step : 0) - pos)) return -1;
            pos = ov[0] + step;
            continue;
        }
        if (lr_buf_add(out, s + pos, ov[0] - pos) || lr_buf_add(out, op->b, op->blen)) return -1;
        pos = ov[1];
    }
    if (pos < n && lr_buf_add(out, s + pos, n - pos)) return -1;
    return 0;
}

static int normalize_step(const tok_op *op, const char *s, size_t n, lr_buf *out, pcre2_match_data *md) {
    switch (op->kind) {
    case N_NFC: case N_NFD: case N_NFKC: case N_NFKD: {
        if (n == 0) return 0;
        int opts = UTF8PROC_STABLE | (op->kind == N_NFC || op->kind == N_NFKC ? UTF8PROC_COMPOSE : UTF8PROC_DECOMPOSE) |
                   (op->kind == N_NFKC || op->kind == N_NFKD ? UTF8PROC_COMPAT : 0);
        utf8proc_uint8_t *r = NULL;
        utf8proc_ssize_t rn = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &r, opts);
        if (rn < 0) return -1;
        int rc = lr_buf_add(out, r, (size_t)rn);
        free(r);
        return rc;
    }
    case N_LOWER:
        for (size_t i = 0; i < n;) {
            int32_t cp;
            int l = utf8_decode((const uint8_t *)s + i, n - i, &cp);
            uint8_t enc[4];
            if (lr_buf_add(out, enc, utf8_encode(utf8proc_tolower(cp), enc))) return -1;
            i += (size_t)l;
        }
        return 0;
    case N_PREPEND:
        if (n && lr_buf_add(out, op->a, op->alen)) return -1;
        return lr_buf_add(out, s, n);
    case N_REPLACE:
        return replace_all(op, s, n, out, md);
    case N_STRIP: {
        size_t a = 0, b = n;
        if (op->flag) a = utf8_space_prefix((const uint8_t *)s, n);
        if (op->flag2 && a < b) b = a + utf8_space_suffix_start((const uint8_t *)s + a, b - a);
        return lr_buf_add(out, s + a, b - a);
    }
    }
    return -1;
}

/* Runs the normalizer chain on s into out (which it resets). */
static int normalize(const tok *t, const char *s, size_t n, lr_buf *out, lr_err *err) {
    lr_buf tmp;
    lr_buf_init(&tmp, TOK_MAX_WORK);
    lr_buf_reset(out);
    pcre2_match_data *md = pcre2_match_data_create(8, NULL);
    int rc = -1;
    if (!md || lr_buf_add(out, s, n)) goto out;
    for (int i = 0; i < t->n_norm; i++) {
        lr_buf_reset(&tmp);
        if (normalize_step(&t->norm[i], out->data ? out->data : "", out->len, &tmp, md)) goto out;
        lr_buf swap = *out;
        *out = tmp;
        tmp = swap;
    }
    rc = 0;
out:
    if (rc) lr_errp(err, LR_E_NOMEM, NULL, "normalizing text failed (out of memory or text too long)");
    pcre2_match_data_free(md);
    lr_buf_free(&tmp);
    return rc;
}


/* ---- pre-tokenization ------------------------------------------------------ */

/* A list of pieces of text, each owning its bytes in one buffer. */
typedef struct {
    lr_buf text;
    size_t *off, *len;
    uint8_t *first; /* the piece starts the whole input (Metaspace "first") */
    size_t n, cap;
} plist;

static void plist_init(plist *p) {
    memset(p, 0, sizeof *p);
    lr_buf_init(&p->text, TOK_MAX_WORK);
}

static void plist_free(plist *p) {
    lr_buf_free(&p->text);
    free(p->off);
    free(p->len);
    free(p->first);
}

static void plist_reset(plist *p) {
    lr_buf_reset(&p->text);
    p->n = 0;
}

/* Appends a piece made of up to three parts (a prefix, the text, nothing). */
static int plist_add2(plist *p, const char *a, size_t an, const char *b, size_t bn, int first) {
    if (an + bn == 0) return 0; /* HF drops empty splits */
    if (p->n == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 64;
        size_t *off = realloc(p->off, cap * sizeof *off);
        if (off) p->off = off;
        size_t *len = realloc(p->len, cap * sizeof *len);
        if (len) p->len = len;
        uint8_t *f = realloc(p->first, cap);
        if (f) p->first = f;
        if (!off || !len || !f) return -1;
        p->cap = cap;
    }
    p->off[p->n] = p->text.len;
    if (lr_buf_add(&p->text, a, an) || lr_buf_add(&p->text, b, bn)) return -1;
    p->len[p->n] = an + bn;
    p->first[p->n] = (uint8_t)(first != 0);
    p->n++;
    return 0;
}

static int plist_add(plist *p, const char *s, size_t n, int first) { return plist_add2(p, "", 0, s, n, first); }

/* Segments of one piece: matches and the gaps between them. */
typedef struct {
    size_t *a, *b;
    uint8_t *m;
    size_t n, cap;
} segs;

static int segs_add(segs *g, size_t a, size_t b, int m) {
    if (g->n == g->cap) {
        size_t cap = g->cap ? g->cap * 2 : 64;
        size_t *na = realloc(g->a, cap * sizeof *na);
        if (na) g->a = na;
        size_t *nb = realloc(g->b, cap * sizeof *nb);
        if (nb) g->b = nb;
        uint8_t *nm = realloc(g->m, cap);
        if (nm) g->m = nm;
        if (!na || !nb || !nm) return -1;
        g->cap = cap;
    }
    g->a[g->n] = a;
    g->b[g->n] = b;
    g->m[g->n] = (uint8_t)m;
    g->n++;
    return 0;
}

/* HF's Pattern::find_matches for a regex: every match, and the gaps. */
static int segs_regex(segs *g, const pcre2_code *re, const char *s, size_t n, pcre2_match_data *md) {
    g->n = 0;
    size_t prev = 0, pos = 0;
    while (pos < n) {
        int rc = pcre2_match(re, (PCRE2_SPTR)s, n, pos, PCRE2_NO_UTF_CHECK, md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) return -1;
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        if (ov[1] == ov[0]) { /* empty match: nothing to cut, step over one character */
            pos = ov[0] + (size_t)utf8_len((const uint8_t *)s + ov[0], n - ov[0]);
            continue;
        }
        if (prev < ov[0] && segs_add(g, prev, ov[0], 0)) return -1;
        if (segs_add(g, ov[0], ov[1], 1)) return -1;
        prev = pos = ov[1];
    }
    if (prev < n && segs_add(g, prev, n, 0)) return -1;
    return 0;
}

/* The same for a character predicate: each matching character alone. */
enum { CP_NUMERIC, CP_SPACE, CP_LITERAL };
static int segs_chars(segs *g, int pred, const char *lit, size_t litn, const char *s, size_t n) {
    g->n = 0;
    size_t prev = 0;
    for (size_t i = 0; i < n;) {
        int32_t cp;
        int l = utf8_decode((const uint8_t *)s + i, n - i, &cp);
        if (l < 0) l = -l;
        int hit;
        if (pred == CP_NUMERIC) {
            utf8proc_category_t c = utf8proc_category(cp);
            hit = c == UTF8PROC_CATEGORY_ND || c == UTF8PROC_CATEGORY_NL || c == UTF8PROC_CATEGORY_NO;
        } else if (pred == CP_SPACE) {
            hit = utf8_is_space(cp);
        } else {
            hit = (size_t)l == litn && !memcmp(s + i, lit, litn);
        }
        if (hit) {
            if (prev < i && segs_add(g, prev, i, 0)) return -1;
            if (segs_add(g, i, i + (size_t)l, 1)) return -1;
            prev = i + (size_t)l;
        }
        i += (size_t)l;
    }
    if (prev < n && segs_add(g, prev, n, 0)) return -1;
    return 0;
}

/* HF's SplitDelimiterBehavior over the segments (in place). */
static void segs_behave(segs *g, int behavior, int invert) {
    if (invert)
        for (size_t i = 0; i < g->n; i++) g->m[i] = !g->m[i];
    size_t k = 0;
    int prev_match = 0;
    switch (behavior) {
    case SB_ISOLATED:
        for (size_t i = 0; i < g->n; i++) g->m[i] = 0;
        return;
    case SB_REMOVED:
        for (size_t i = 0; i < g->n; i++)
            if (!g->m[i]) g->a[k] = g->a[i], g->b[k] = g->b[i], g->m[k] = 0, k++;
        break;
    case SB_PREV:
        for (size_t i = 0; i < g->n; i++) {
            if (g->m[i] && !prev_match && k > 0)
                g->b[k - 1] = g->b[i];
            else
                g->a[k] = g->a[i], g->b[k] = g->b[i], k++;
            prev_match = g->m[i];
        }
        break;
    case SB_NEXT: { /* folds from the end, then the result is reversed */
        size_t w = g->n; /* write from the back: slots [w, n) hold the result */
        for (size_t i = g->n; i-- > 0;) {
            if (g->m[i] && !prev_match && w < g->n)
                g->a[w] = g->a[i];
            else
                w--, g->a[w] = g->a[i], g->b[w] = g->b[i];
            prev_match = g->m[i];
        }
        for (size_t i = w; i < g->n; i++) g->a[k] = g->a[i], g->b[k] = g->b[i], k++;
        break;
    }
    case SB_CONTIG:
        for (size_t i = 0; i < g->n; i++) {
            if (k > 0 && g->m[i] == prev_match)
                g->b[k - 1] = g->b[i];
            else
                g->a[k] = g->a[i], g->b[k] = g->b[i], k++;
            prev_match = g->m[i];
        }
        break;
    }
    for (size_t i = 0; i < k; i++) g->m[i] = 0;
    g->n = k;
}

static int segs_emit(plist *out, const segs *g, const char *s, int first) {
    for (size_t i = 0; i < g->n; i++)
        if (plist_add(out, s + g->a[i], g->b[i] - g->a[i], first && g->a[i] == 0)) return -1;
    return 0;
}

typedef struct {
    plist a, b;
    segs g;
    lr_buf tmp, norm, bl;
    pcre2_match_data *md;
    /* BPE scratch */
    struct bsym { int32_t id, prev, next; } *sym;
    size_t sym_cap;
    struct bmerge { int32_t rank, pos, out; } *heap;
    size_t heap_n, heap_cap;
    lr_buf key;
    /* result */
    int32_t *ids;
    size_t n_ids, cap_ids;
} enc_ctx;

static int pretok_step(const tok *t, const tok_op *op, enc_ctx *c, const plist *in, plist *out) {
    for (size_t i = 0; i < in->n; i++) {
        const char *s = in->text.data + in->off[i];
        size_t n = in->len[i];
        int first = in->first[i];
        switch (op->kind) {
        case P_SPLIT:
            if (segs_regex(&c->g, op->re, s, n, c->md)) return -1;
            segs_behave(&c->g, op->behavior, op->invert);
            if (segs_emit(out, &c->g, s, first)) return -1;
            break;
        case P_DIGITS:
            if (segs_chars(&c->g, CP_NUMERIC, NULL, 0, s, n)) return -1;
            segs_behave(&c->g, op->flag ? SB_ISOLATED : SB_CONTIG, 0);
            if (segs_emit(out, &c->g, s, first)) return -1;
            break;
        case P_WSSPLIT:
            if (segs_chars(&c->g, CP_SPACE, NULL, 0, s, n)) return -1;
            segs_behave(&c->g, SB_REMOVED, 0);
            if (segs_emit(out, &c->g, s, first)) return -1;
            break;
        case P_BYTELEVEL: {
            lr_buf_reset(&c->tmp);
            if (op->flag && (n == 0 || s[0] != ' ') && lr_buf_add(&c->tmp, " ", 1)) return -1;
            if (lr_buf_add(&c->tmp, s, n)) return -1;
            const char *u = c->tmp.data;
            size_t un = c->tmp.len;
            if (op->flag2) {
                if (segs_regex(&c->g, t->gpt2_re, u, un, c->md)) return -1;
            } else {
                c->g.n = 0;
                if (un && segs_add(&c->g, 0, un, 0)) return -1;
            }
            for (size_t k = 0; k < c->g.n; k++) {
                /* the piece's bytes, each as its printable character */
                lr_buf_reset(&c->bl);
                for (size_t j = c->g.a[k]; j < c->g.b[k]; j++) {
                    uint8_t b = (uint8_t)u[j];
                    if (lr_buf_add(&c->bl, t->bl_char[b], t->bl_len[b])) return -1;
                }
                if (plist_add(out, c->bl.data, c->bl.len, first && c->g.a[k] == 0)) return -1;
            }
            break;
        }
        case P_METASPACE: {
            lr_buf_reset(&c->tmp);
            /* HF prepends unless the text, spaces already replaced, starts
             * with the replacement */
            int starts = (n > 0 && s[0] == ' ') || (n >= op->alen && !memcmp(s, op->a, op->alen));
            if (n > 0 && !starts && (op->flag == PS_ALWAYS || (op->flag == PS_FIRST && first)))
                if (lr_buf_add(&c->tmp, op->a, op->alen)) return -1;
            for (size_t j = 0; j < n; j++)
                if (s[j] == ' ' ? lr_buf_add(&c->tmp, op->a, op->alen) : lr_buf_add(&c->tmp, s + j, 1)) return -1;
            if (op->flag2) {
                if (segs_chars(&c->g, CP_LITERAL, op->a, op->alen, c->tmp.data ? c->tmp.data : "", c->tmp.len)) return -1;
                segs_behave(&c->g, SB_NEXT, 0);
            } else {
                c->g.n = 0;
                if (c->tmp.len && segs_add(&c->g, 0, c->tmp.len, 0)) return -1;
            }
            if (segs_emit(out, &c->g, c->tmp.data, first)) return -1;
            break;
        }
        default:
            return -1;
        }
    }
    return 0;
}

/* ---- BPE ------------------------------------------------------------------- */

static int ids_push(enc_ctx *c, int32_t id) {
    if (c->n_ids == c->cap_ids) {
        size_t cap = c->cap_ids ? c->cap_ids * 2 : 256;
        int32_t *v = realloc(c->ids, cap * sizeof *v);
        if (!v) return -1;
        c->ids = v;
        c->cap_ids = cap;
    }
    c->ids[c->n_ids++] = id;
    return 0;
}

static int sym_push(enc_ctx *c, size_t *n, int32_t id) {
    if (*n == c->sym_cap) {
        size_t cap = c->sym_cap ? c->sym_cap * 2 : 256;
        struct bsym *s = realloc(c->sym, cap * sizeof *s);
        if (!s) return -1;
        c->sym = s;
        c->sym_cap = cap;
    }
    c->sym[*n].id = id;
    c->sym[*n].prev = (int32_t)*n - 1;
    c->sym[*n].next = (int32_t)*n + 1;
    (*n)++;
    return 0;
}

static int heap_less(const struct bmerge *x, const struct bmerge *y) {
    return x->rank != y->rank ? x->rank < y->rank : x->pos < y->pos;
}

static int heap_push(enc_ctx *c, int32_t rank, int32_t pos, int32_t out) {
    if (c->heap_n == c->heap_cap) {
        size_t cap = c->heap_cap ? c->heap_cap * 2 : 256;
        struct bmerge *h = realloc(c->heap, cap * sizeof *h);
        if (!h) return -1;
        c->heap = h;
        c->heap_cap = cap;
    }
    size_t i = c->heap_n++;
    struct bmerge m = {rank, pos, out};
    while (i > 0 && heap_less(&m, &c->heap[(i - 1) / 2])) {
        c->heap[i] = c->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    c->heap[i] = m;
    return 0;
}

static struct bmerge heap_pop(enc_ctx *c) {
    struct bmerge top = c->heap[0], last = c->heap[--c->heap_n];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const struct bmerge *best = &last;
        if (l < c->heap_n && heap_less(&c->heap[l], best)) m = l, best = &c->heap[l];
        if (r < c->heap_n && heap_less(&c->heap[r], best)) m = r;
        if (m == i) break;
        c->heap[i] = c->heap[m];
        i = m;
    }
    if (c->heap_n) c->heap[i] = last;
    return top;
}

static int try_pair(const tok *t, enc_ctx *c, int32_t pos) {
    int32_t rank, out, nx = c->sym[pos].next;
    if (nx < 0 || !merge_find(&t->merges, c->sym[pos].id, c->sym[nx].id, &rank, &out)) return 0;
    return heap_push(c, rank, pos, out);
}

/* Looks up one character of a word, with the subword prefix/suffix. */
static int32_t char_id(const tok *t, enc_ctx *c, const char *s, size_t l, int not_first, int last) {
    if (!(not_first && t->prefix_len) && !(last && t->suffix_len)) return vocab_get(t, s, l);
    lr_buf_reset(&c->key);
    if (not_first && lr_buf_add(&c->key, t->prefix, t->prefix_len)) return -2;
    if (lr_buf_add(&c->key, s, l)) return -2;
    if (last && lr_buf_add(&c->key, t->suffix, t->suffix_len)) return -2;
    return vocab_get(t, c->key.data, c->key.len);
}

static int merge_word(const tok *t, enc_ctx *c, const char *s, size_t n) {
    if (n == 0) return 0;
    if (t->ignore_merges) {
        int32_t id = vocab_get(t, s, n);
        if (id >= 0) return ids_push(c, id);
    }
    size_t ns = 0;
    int32_t unk = -1; /* a pending unknown run (fuse_unk) */
    for (size_t i = 0; i < n;) {
        size_t l = (size_t)utf8_len((const uint8_t *)s + i, n - i);
        int32_t id = char_id(t, c, s + i, l, i > 0, i + l == n);
        if (id == -2) return -1;
        if (id >= 0) {
            if (unk >= 0 && sym_push(c, &ns, unk)) return -1;
            unk = -1;
            if (sym_push(c, &ns, id)) return -1;
        } else {
            int done = 0;
            if (t->byte_fallback) {
                size_t k = 0;
                while (k < l && t->byte_tok[(uint8_t)s[i + k]] >= 0) k++;
                if (k == l) {
                    for (k = 0; k < l; k++)
                        if (sym_push(c, &ns, t->byte_tok[(uint8_t)s[i + k]])) return -1;
                    done = 1;
                }
            }
            if (!done && t->unk_id >= 0) {
                if (unk >= 0 && !t->fuse_unk && sym_push(c, &ns, unk)) return -1;
                unk = t->unk_id;
            }
        }
        i += l;
    }
    if (unk >= 0 && sym_push(c, &ns, unk)) return -1;
    if (ns == 0) return 0;
    c->sym[ns - 1].next = -1;

    c->heap_n = 0;
    for (size_t i = 0; i + 1 < ns; i++)
        if (try_pair(t, c, (int32_t)i)) return -1;
    while (c->heap_n) {
        struct bmerge m = heap_pop(c);
        struct bsym *a = &c->sym[m.pos];
        if (a->id < 0 || a->next < 0) continue;
        struct bsym *b = &c->sym[a->next];
        int32_t rank, out;
        if (!merge_find(&t->merges, a->id, b->id, &rank, &out) || out != m.out) continue; /* stale */
        a->id = m.out;
        b->id = -1;
        a->next = b->next;
        if (a->next >= 0) c->sym[a->next].prev = m.pos;
        if (a->prev >= 0 && try_pair(t, c, a->prev)) return -1;
        if (try_pair(t, c, m.pos)) return -1;
    }
    for (int32_t i = 0; i >= 0; i = c->sym[i].next)
        if (ids_push(c, c->sym[i].id)) return -1;
    return 0;
}

/* ---- encode ------------------------------------------------------------------ */

static int word_char(const char *s, size_t i, size_t n, int before) {
    int32_t cp;
    if (before) {
        if (i == 0) return 0;
        size_t j = i - 1;
        while (j > 0 && ((uint8_t)s[j] & 0xC0) == 0x80) j--;
        utf8_decode((const uint8_t *)s + j, i - j, &cp);
    } else {
        if (i >= n) return 0;
        utf8_decode((const uint8_t *)s + i, n - i, &cp);
    }
    if (cp == '_') return 1;
    utf8proc_category_t k = utf8proc_category(cp);
    return (k >= UTF8PROC_CATEGORY_LU && k <= UTF8PROC_CATEGORY_LO) ||
           (k >= UTF8PROC_CATEGORY_ND && k <= UTF8PROC_CATEGORY_NO);
}

/* The next added token in s from pos (HF's AddedVocabulary::find_matches):
 * the leftmost-longest candidate; a candidate that is refused (special
 * tokens not allowed, single_word not met) still consumes its text. */
typedef struct {
    size_t pos, start_offset;
} added_scan;

static int added_next(const tok *t, const added_set *set, const char *s, size_t n, int allow_special,
                      added_scan *sc, size_t *ms, size_t *me, int32_t *id) {
    if (set->n == 0) return 0;
    while (sc->pos < n) {
        const added_tok *hit = NULL;
        size_t i = sc->pos;
        for (; i < n && !hit; i++) {
            uint8_t b = (uint8_t)s[i];
            for (int k = set->first[b]; k < set->first[b + 1]; k++) {
                const added_tok *a = &t->added[set->order[k]];
                const char *c = a->normalized ? a->norm : a->content;
                size_t l = a->normalized ? a->nlen : a->len;
                if (l <= n - i && !memcmp(s + i, c, l)) {
                    hit = a;
                    break;
                }
            }
        }
        if (!hit) {
            sc->pos = n;
            return 0;
        }
        size_t start = i - 1, stop = start + (hit->normalized ? hit->nlen : hit->len);
        sc->pos = stop;
        if (hit->special && !allow_special) continue;
        if (hit->single_word && (word_char(s, start, n, 1) || word_char(s, stop, n, 0))) continue;
        if (hit->lstrip) {
            size_t from = sc->start_offset;
            start = from + utf8_space_suffix_start((const uint8_t *)s + from, start - from);
        }
        if (hit->rstrip) stop += utf8_space_prefix((const uint8_t *)s + stop, n - stop);
        sc->pos = stop;
        *ms = start;
        *me = stop;
        *id = hit->id;
        return 1;
    }
    return 0;
}

static int encode_pretokens(const tok *t, enc_ctx *c, const char *s, size_t n, int first) {
    plist_reset(&c->a);
    if (plist_add(&c->a, s, n, first)) return -1;
    plist *in = &c->a, *out = &c->b;
    for (int i = 0; i < t->n_pre; i++) {
        plist_reset(out);
        if (pretok_step(t, &t->pre[i], c, in, out)) return -1;
        plist *sw = in;
        in = out;
        out = sw;
    }
    for (size_t i = 0; i < in->n; i++)
        if (merge_word(t, c, in->text.data + in->off[i], in->len[i])) return -1;
    return 0;
}

/* A piece of raw text between added tokens: normalize, cut out normalized
 * added tokens, pre-tokenize, merge. */
static int encode_text(const tok *t, enc_ctx *c, const char *s, size_t n, int first, int allow_special, lr_err *err) {
    if (n == 0) return 0;
    if (normalize(t, s, n, &c->norm, err)) return -1;
    const char *ns = c->norm.data ? c->norm.data : "";
    size_t nn = c->norm.len;
    /* normalize() reuses nothing of c->norm below, but pre-tokenizing does
     * not touch it either, so the pieces can point into it */
    added_scan sc = {0, 0};
    size_t ms, me;
    int32_t id;
    while (added_next(t, &t->norm_set, ns, nn, allow_special, &sc, &ms, &me, &id)) {
        if (ms > sc.start_offset && encode_pretokens(t, c, ns + sc.start_offset, ms - sc.start_offset,
                                                     first && sc.start_offset == 0))
            goto oom;
        if (ids_push(c, id)) goto oom;
        sc.start_offset = me;
    }
    if (nn > sc.start_offset &&
        encode_pretokens(t, c, ns + sc.start_offset, nn - sc.start_offset, first && sc.start_offset == 0))
        goto oom;
    return 0;
oom:
    return lr_errp(err, LR_E_NOMEM, NULL, "tokenizing failed: out of memory or text too long");
}

static void enc_free(enc_ctx *c) {
    plist_free(&c->a);
    plist_free(&c->b);
    free(c->g.a);
    free(c->g.b);
    free(c->g.m);
    lr_buf_free(&c->tmp);
    lr_buf_free(&c->norm);
    lr_buf_free(&c->bl);
    lr_buf_free(&c->key);
    pcre2_match_data_free(c->md);
    free(c->sym);
    free(c->heap);
    free(c->ids);
}

int tok_encode(const tok *t, const char *text, size_t len, int allow_special, int32_t **ids, size_t *n,
               lr_err *err) {
    *ids = NULL;
    *n = 0;
    if (len > TOK_MAX_TEXT) return lr_errp(err, LR_E_TOOBIG, NULL, "text too long to tokenize (%zu bytes)", len);
    size_t cn = 0;
    char *clean = utf8_sanitize(text ? text : "", text ? len : 0, &cn);
    if (!clean) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
    enc_ctx c;
    memset(&c, 0, sizeof c);
    plist_init(&c.a);
    plist_init(&c.b);
    lr_buf_init(&c.tmp, TOK_MAX_WORK);
    lr_buf_init(&c.norm, TOK_MAX_WORK);
    lr_buf_init(&c.key, TOK_MAX_TEXT);
    lr_buf_init(&c.bl, TOK_MAX_WORK);
    c.md = pcre2_match_data_create(1, NULL);
    int rc = -1;
    if (!c.md) {
        lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
        goto out;
    }
    added_scan sc = {0, 0};
    size_t ms, me;
    int32_t id;
    while (added_next(t, &t->raw_set, clean, cn, allow_special, &sc, &ms, &me, &id)) {
        if (ms > sc.start_offset &&
            encode_text(t, &c, clean + sc.start_offset, ms - sc.start_offset, sc.start_offset == 0, allow_special, err))
            goto out;
        if (ids_push(&c, id)) goto oom;
        sc.start_offset = me;
    }
    if (cn > sc.start_offset &&
        encode_text(t, &c, clean + sc.start_offset, cn - sc.start_offset, sc.start_offset == 0, allow_special, err))
        goto out;
    size_t count = c.n_ids;
    if (!c.ids && ids_push(&c, 0)) goto oom; /* never NULL on success, even for no ids */
    *ids = c.ids;
    *n = count;
    c.ids = NULL;
    rc = 0;
    goto out;
oom:
    lr_errp(err, LR_E_NOMEM, NULL, "tokenizing failed: out of memory");
out:
    enc_free(&c);
    free(clean);
    return rc;
}

/* ---- decode ------------------------------------------------------------------ */

static int bytefallback_value(const char *s, size_t n) {
    if (n != 6 || memcmp(s, "<0x", 3) || s[5] != '>') return -1;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char ch = s[i];
        int d = ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10
              : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

static int is_valid_utf8(const char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        int32_t cp;
        int l = utf8_decode((const uint8_t *)s + i, n - i, &cp);
        if (l < 0) return 0;
        i += (size_t)l;
    }
    return 1;
}

/* Applies one decoder step to the token strings of in, into out (HF's
 * Decoder::decode_chain). */
static int decode_step(const tok_op *op, const plist *in, plist *out, lr_buf *tmp, pcre2_match_data *md) {
    const char *base = in->text.data ? in->text.data : "";
    switch (op->kind) {
    case D_BYTELEVEL: {
        lr_buf_reset(tmp);
        for (size_t i = 0; i < in->n; i++) {
            const char *s = base + in->off[i];
            size_t n = in->len[i], mark = tmp->len;
            int ok = 1;
            for (size_t j = 0; j < n && ok;) {
                int32_t cp;
                int l = utf8_decode((const uint8_t *)s + j, n - j, &cp);
                int b = l > 0 ? utf8_char_byte(cp) : -1;
                if (b < 0) {
                    ok = 0;
                    break;
                }
                uint8_t byte = (uint8_t)b;
                if (lr_buf_add(tmp, &byte, 1)) return -1;
                j += (size_t)l;
            }
            if (!ok) { /* a token that is not byte characters goes as it is */
                tmp->len = mark;
                if (lr_buf_add(tmp, s, n)) return -1;
            }
        }
        size_t cn;
        char *clean = utf8_sanitize(tmp->data ? tmp->data : "", tmp->len, &cn);
        if (!clean) return -1;
        int rc = plist_add(out, clean, cn, 0);
        free(clean);
        return rc;
    }
    case D_BYTEFALLBACK: {
        lr_buf_reset(tmp);
        for (size_t i = 0; i <= in->n; i++) {
            const char *s = i < in->n ? base + in->off[i] : "";
            size_t n = i < in->n ? in->len[i] : 0;
            int v = i < in->n ? bytefallback_value(s, n) : -1;
            if (v >= 0) {
                uint8_t byte = (uint8_t)v;
                if (lr_buf_add(tmp, &byte, 1)) return -1;
                continue;
            }
            if (tmp->len) {
                if (is_valid_utf8(tmp->data, tmp->len)) {
                    if (plist_add(out, tmp->data, tmp->len, 0)) return -1;
                } else {
                    for (size_t k = 0; k < tmp->len; k++)
                        if (plist_add(out, "\xEF\xBF\xBD", 3, 0)) return -1;
                }
                lr_buf_reset(tmp);
            }
            if (i < in->n && plist_add(out, s, n, 0)) return -1;
        }
        return 0;
    }
    case D_FUSE:
        lr_buf_reset(tmp);
        for (size_t i = 0; i < in->n; i++)
            if (lr_buf_add(tmp, base + in->off[i], in->len[i])) return -1;
        return plist_add(out, tmp->data ? tmp->data : "", tmp->len, 0);
    default:
        break;
    }
    for (size_t i = 0; i < in->n; i++) {
        const char *s = base + in->off[i];
        size_t n = in->len[i];
        lr_buf_reset(tmp);
        if (op->kind == D_REPLACE) {
            if (replace_all(op, s, n, tmp, md)) return -1;
        } else if (op->kind == D_STRIP) {
            size_t a = 0, b = n;
            for (int k = 0; k < op->start && a < b && b - a >= op->alen && !memcmp(s + a, op->a, op->alen); k++)
                a += op->alen;
            for (int k = 0; k < op->stop && b > a && b - a >= op->alen && !memcmp(s + b - op->alen, op->a, op->alen); k++)
                b -= op->alen;
            if (lr_buf_add(tmp, s + a, b - a)) return -1;
        } else if (op->kind == D_METASPACE) {
            for (size_t j = 0; j < n;) {
                if (op->alen && n - j >= op->alen && !memcmp(s + j, op->a, op->alen)) {
                    if (!(i == 0 && op->flag != PS_NEVER) && lr_buf_add(tmp, " ", 1)) return -1;
                    j += op->alen;
                } else {
                    if (lr_buf_add(tmp, s + j, 1)) return -1;
                    j++;
                }
            }
        }
        /* HF keeps empty tokens here; plist drops them, which joins the same */
        if (plist_add(out, tmp->data ? tmp->data : "", tmp->len, 0)) return -1;
    }
    return 0;
}

int tok_decode(const tok *t, const int32_t *ids, size_t n, char **out, size_t *len, lr_err *err) {
    *out = NULL;
    *len = 0;
    plist a, b;
    lr_buf tmp;
    plist_init(&a);
    plist_init(&b);
    lr_buf_init(&tmp, TOK_MAX_WORK);
    pcre2_match_data *md = pcre2_match_data_create(1, NULL);
    int rc = -1;
    if (!md) goto oom;
    for (size_t i = 0; i < n; i++) {
        const char *p = tok_id_piece(t, ids[i]);
        if (!p) {
            lr_errp(err, LR_E_INVALID, NULL, "token id %d at position %zu is not in the vocabulary (size %d)",
                    (int)ids[i], i, t->n_ids);
            goto out;
        }
        if (plist_add(&a, p, (size_t)t->plen[ids[i]], 0)) goto oom;
    }
    plist *in = &a, *o = &b;
    for (int i = 0; i < t->n_dec; i++) {
        plist_reset(o);
        if (decode_step(&t->dec[i], in, o, &tmp, md)) goto oom;
        plist *sw = in;
        in = o;
        o = sw;
    }
    /* without a decoder HF joins the tokens with spaces */
    lr_buf_reset(&tmp);
    for (size_t i = 0; i < in->n; i++)
        if ((t->n_dec == 0 && i > 0 && lr_buf_add(&tmp, " ", 1)) || lr_buf_add(&tmp, in->text.data + in->off[i], in->len[i]))
            goto oom;
    if (!tmp.data && lr_buf_add(&tmp, "", 0)) goto oom;
    if (!tmp.data) {
        *out = calloc(1, 1);
        if (!*out) goto oom;
    } else {
        *out = lr_buf_take(&tmp, len);
    }
    rc = 0;
    goto out;
oom:
    lr_errp(err, LR_E_NOMEM, NULL, "decoding failed: out of memory");
out:
    pcre2_match_data_free(md);
    plist_free(&a);
    plist_free(&b);
    lr_buf_free(&tmp);
    return rc;
}

/* ---- training ------------------------------------------------------------------ */

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
            size_t i = hash_bytes(base + w->off[k], w->len[k]) & (cap - 1);
            while (slot[i] >= 0) i = (i + 1) & (cap - 1);
            slot[i] = (int32_t)k;
        }
        free(w->slot);
        w->slot = slot;
        w->mask = cap - 1;
    }
    size_t i = hash_bytes(base + off, len) & w->mask;
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
        if (json_object_setn_new(vocab, piece_ptr(v, id), (size_t)v->plen[id], json_integer(id))) goto fail;
    for (int k = 0; k < n_merges; k++) {
        json_t *pair = json_pack("[s#s#]", piece_ptr(v, merge_l[k]), (size_t)v->plen[merge_l[k]],
                                 piece_ptr(v, merge_r[k]), (size_t)v->plen[merge_r[k]]);
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
    pcre2_code *re = re_compile(GPT2_PATTERN, PCRE2_ZERO_TERMINATED, 0, err);
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
    if (segs_regex(&g, re, text, cn, md)) goto oom;
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
    if (!(v = tok_new())) goto oom;
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
            if (lr_buf_add(&pb, piece_ptr(v, merge_l[s - 256]), (size_t)v->plen[merge_l[s - 256]]) ||
                lr_buf_add(&pb, piece_ptr(v, merge_r[s - 256]), (size_t)v->plen[merge_r[s - 256]]))
                goto oom;
        }
        sym_id[s] = vocab_get(v, pb.data, pb.len);
        if (sym_id[s] < 0) {
            if (set_piece(v, next, pb.data, pb.len, err)) goto out;
            sym_id[s] = next++;
        }
    }
    int32_t n_model = next;
    for (int i = 0; i < n_specials; i++) {
        special_id[i] = vocab_get(v, specials[i], strlen(specials[i]));
        if (special_id[i] < 0) {
            if (set_piece(v, next, specials[i], strlen(specials[i]), err)) goto out;
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
