/* fmtcheck: section/bullet/regex rules over generated text. */
#include "worker/fmtcheck.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

/* Bounds on one regex match (a user's pattern on a model's output). */
#define FMT_MATCH_LIMIT 1000000u
#define FMT_DEPTH_LIMIT 10000u

struct fmt_checker {
    jobspec_format f;
    pcre2_code *re;
    pcre2_match_context *mctx;
};

int fmt_has_rules(const jobspec_format *f) { return f->n_sections > 0 || f->regex[0]; }

int fmt_new(const jobspec_format *f, fmt_checker **out, lr_err *err) {
    fmt_checker *c = calloc(1, sizeof *c);
    *out = NULL;
    if (!c) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
    c->f = *f;
    if (f->regex[0]) {
        int ec;
        PCRE2_SIZE off;
        c->re = pcre2_compile((PCRE2_SPTR)f->regex, PCRE2_ZERO_TERMINATED, PCRE2_UTF, &ec, &off, NULL);
        c->mctx = pcre2_match_context_create(NULL);
        if (!c->re || !c->mctx) {
            PCRE2_UCHAR msg[160] = "out of memory";
            if (!c->re) pcre2_get_error_message(ec, msg, sizeof msg);
            fmt_free(c);
            return lr_errp(err, LR_E_INVALID, "eval.format.regex", "eval.format.regex: %s at offset %zu", (char *)msg,
                           (size_t)off);
        }
        pcre2_set_match_limit(c->mctx, FMT_MATCH_LIMIT);
        pcre2_set_depth_limit(c->mctx, FMT_DEPTH_LIMIT);
    }
    *out = c;
    return 0;
}

void fmt_free(fmt_checker *c) {
    if (!c) return;
    pcre2_code_free(c->re);
    pcre2_match_context_free(c->mctx);
    free(c);
}

static int hspace(char ch) { return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\v' || ch == '\f'; }
static int space(char ch) { return hspace(ch) || ch == '\n'; }

/* If the line starting at p (up to end) is a header of name, returns the
 * offset just after its ':' from p, else -1. */
static long header_at(const char *p, const char *end, const char *name, int exact) {
    const char *q = p;
    while (q < end && hspace(*q)) q++;
    size_t n = strlen(name);
    if ((size_t)(end - q) < n || (exact ? strncmp(q, name, n) : strncasecmp(q, name, n))) return -1;
    q += n;
    if (!exact)
        while (q < end && (*q == ' ' || *q == '\t')) q++;
    return q < end && *q == ':' ? q + 1 - p : -1;
}

typedef struct hdr {
    long line;  /* offset of the header's line */
    long body;  /* offset after the ':' */
} hdr;

/* Finds every section's first header, and the start of the first header
 * line of any section after each (the end of its text). */
static void find_headers(const jobspec_format *f, const char *t, size_t len, hdr *first, long *end) {
    for (int i = 0; i < f->n_sections; i++) first[i].line = first[i].body = -1, end[i] = (long)len;
    for (size_t p = 0; p < len;) {
        const char *nl = memchr(t + p, '\n', len - p);
        size_t e = nl ? (size_t)(nl - t) : len;
        for (int i = 0; i < f->n_sections; i++) {
            long h = header_at(t + p, t + e, f->sections[i].name, f->exact_headers);
            if (h < 0) continue;
            for (int k = 0; k < f->n_sections; k++) /* a header ends every earlier section still open */
                if (first[k].line >= 0 && first[k].line < (long)p && end[k] == (long)len) end[k] = (long)p;
            if (first[i].line < 0) first[i].line = (long)p, first[i].body = (long)p + h;
            break;
        }
        p = e + 1;
    }
}

static int count_bullets(const char *t, long a, long b) {
    int n = 0;
    for (long p = a; p < b;) {
        const char *nl = memchr(t + p, '\n', (size_t)(b - p));
        long e = nl ? nl - t : b, q = p;
        while (q < e && hspace(t[q])) q++;
        if (q < e && (t[q] == '-' || t[q] == '*') && q + 1 < e && (t[q + 1] == ' ' || t[q + 1] == '\t')) {
            q += 2;
            while (q < e && hspace(t[q])) q++;
            n += q < e;
        }
        p = e + 1;
    }
    return n;
}

int fmt_check(const fmt_checker *c, const char *text, size_t len, char *why, size_t cap) {
    const jobspec_format *f = &c->f;
    hdr first[JOBSPEC_MAX_SECTIONS];
    long end[JOBSPEC_MAX_SECTIONS];
    find_headers(f, text, len, first, end);
    for (int i = 0; i < f->n_sections; i++)
        if (first[i].line < 0) return snprintf(why, cap, "missing section '%s'", f->sections[i].name), 0;
    for (int i = 1; f->in_order && i < f->n_sections; i++)
        if (first[i].line < first[i - 1].line)
            return snprintf(why, cap, "section '%s' comes before '%s'", f->sections[i].name, f->sections[i - 1].name), 0;
    for (int i = 0; i < f->n_sections; i++) {
        const jobspec_section *s = &f->sections[i];
        long a = first[i].body, b = end[i];
        if (s->bullets >= 0) {
            int n = count_bullets(text, a, b);
            if (n != s->bullets)
                return snprintf(why, cap, "'%s' has %d bullet%s, expected %d", s->name, n, n == 1 ? "" : "s", s->bullets),
                       0;
        }
        if (s->ends_with[0]) {
            long e = b;
            size_t k = strlen(s->ends_with);
            while (e > a && space(text[e - 1])) e--;
            if (e - a < (long)k || memcmp(text + e - k, s->ends_with, k))
                return snprintf(why, cap, "'%s' does not end with '%s'", s->name, s->ends_with), 0;
        }
    }
    if (f->nothing_after && f->n_sections) {
        int last = f->n_sections - 1;
        long a = first[last].body, b = end[last];
        if (b < (long)len)
            return snprintf(why, cap, "another section follows the final section '%s'", f->sections[last].name), 0;
        while (a < b && space(text[a])) a++;
        while (b > a && space(text[b - 1])) b--;
        if (a == b) return snprintf(why, cap, "the final section '%s' is empty", f->sections[last].name), 0;
        if (memchr(text + a, '\n', (size_t)(b - a)))
            return snprintf(why, cap, "text after the first line of the final section '%s'", f->sections[last].name), 0;
    }
    if (c->re) {
        pcre2_match_data *md = pcre2_match_data_create_from_pattern(c->re, NULL);
        int rc = md ? pcre2_match(c->re, (PCRE2_SPTR)text, len, 0, 0, md, c->mctx) : PCRE2_ERROR_NOMEMORY;
        pcre2_match_data_free(md);
        if (rc == PCRE2_ERROR_NOMATCH) return snprintf(why, cap, "does not match the regex"), 0;
        if (rc < 0) {
            PCRE2_UCHAR msg[120];
            pcre2_get_error_message(rc, msg, sizeof msg);
            return snprintf(why, cap, "regex not decided: %s", (char *)msg), 0;
        }
    }
    if (cap) why[0] = 0;
    return 1;
}
