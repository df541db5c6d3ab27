/* tok_encode: text to ids and back with a loaded tokenizer (tok_impl.h):
 * normalization, pre-tokenization, BPE merging (tok.c says the pipeline's
 * order), added tokens, and decoding through the decoder chain. */
#include "formats/tok.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "common/buf.h"
#include "formats/tok_impl.h"
#include "formats/utf8.h"

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
int tok__normalize(const tok *t, const char *s, size_t n, lr_buf *out, lr_err *err) {
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
int tok__segs_regex(segs *g, const pcre2_code *re, const char *s, size_t n, pcre2_match_data *md) {
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
            if (tok__segs_regex(&c->g, op->re, s, n, c->md)) return -1;
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
                if (tok__segs_regex(&c->g, t->gpt2_re, u, un, c->md)) return -1;
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
    if (nx < 0 || !tok__merge_find(&t->merges, c->sym[pos].id, c->sym[nx].id, &rank, &out)) return 0;
    return heap_push(c, rank, pos, out);
}

/* Looks up one character of a word, with the subword prefix/suffix. */
static int32_t char_id(const tok *t, enc_ctx *c, const char *s, size_t l, int not_first, int last) {
    if (!(not_first && t->prefix_len) && !(last && t->suffix_len)) return tok__vocab_get(t, s, l);
    lr_buf_reset(&c->key);
    if (not_first && lr_buf_add(&c->key, t->prefix, t->prefix_len)) return -2;
    if (lr_buf_add(&c->key, s, l)) return -2;
    if (last && lr_buf_add(&c->key, t->suffix, t->suffix_len)) return -2;
    return tok__vocab_get(t, c->key.data, c->key.len);
}

static int merge_word(const tok *t, enc_ctx *c, const char *s, size_t n) {
    if (n == 0) return 0;
    if (t->ignore_merges) {
        int32_t id = tok__vocab_get(t, s, n);
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
        if (!tok__merge_find(&t->merges, a->id, b->id, &rank, &out) || out != m.out) continue; /* stale */
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
    if (tok__normalize(t, s, n, &c->norm, err)) return -1;
    const char *ns = c->norm.data ? c->norm.data : "";
    size_t nn = c->norm.len;
    /* tok__normalize() reuses nothing of c->norm below, but pre-tokenizing does
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
