/* tok_impl: the tokenizer module's insides, shared by its three files and
 * by nothing else: tok.c (loading tokenizer.json / vocab.json + merges.txt
 * into this struct), tok_encode.c (normalize, pre-tokenize, BPE, encode,
 * decode) and bpe_train.c (tok_train_bytelevel, which builds a tokenizer
 * with the same vocabulary and regex helpers). The API is worker/tok.h. */
#ifndef LR_TOK_IMPL_H
#define LR_TOK_IMPL_H

#include <stddef.h>
#include <stdint.h>
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "common/buf.h"
#include "common/err.h"
#include "formats/tok.h"

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

/* GPT-2's pre-tokenizer regex (ByteLevel with use_regex). */
#define GPT2_PATTERN "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"

/* Segments of one piece: matches and the gaps between them. */
typedef struct {
    size_t *a, *b;
    uint8_t *m;
    size_t n, cap;
} segs;

/* ---- tok.c ---- */

/* An empty tokenizer (NULL when out of memory); tok_free frees it. */
tok *tok__new(void);
/* FNV-1a of n bytes: the vocabulary's hash. */
uint32_t tok__hash_bytes(const char *s, size_t n);
/* The piece of a valid id (not NUL-terminated: t->plen[id] bytes). */
static inline const char *tok__piece_ptr(const tok *t, int32_t id) { return t->arena + t->off[id]; }
/* The id of piece s[0..n), -1 when it is not in the vocabulary. */
int32_t tok__vocab_get(const tok *t, const char *s, size_t n);
/* Sets the piece of id (growing the tables); a piece already present under
 * another id is an error. */
int tok__set_piece(tok *t, int32_t id, const char *s, size_t n, lr_err *err) LR_WARN_UNUSED;
/* 1 and the merge's rank and result when (a, b) merges, else 0. */
int tok__merge_find(const mergemap *m, int32_t a, int32_t b, int32_t *rank, int32_t *out);
/* A UTF-8 regex (Unicode classes; JIT when available), or the pattern as a
 * literal string; NULL with err on a bad pattern. */
pcre2_code *tok__re_compile(const char *pat, size_t n, int literal, lr_err *err);

/* ---- tok_encode.c ---- */

/* Runs the normalizer chain on s into out (which it resets). */
int tok__normalize(const tok *t, const char *s, size_t n, lr_buf *out, lr_err *err) LR_WARN_UNUSED;
/* HF's Pattern::find_matches for a regex: every match of re in s and the
 * gaps between them, into g (g->m: 1 for a match). -1 when out of memory. */
int tok__segs_regex(segs *g, const pcre2_code *re, const char *s, size_t n, pcre2_match_data *md);

#endif
