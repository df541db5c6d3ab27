#include "proto/jsonfmt.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"

int jsonfmt_real(double d, char *buf, size_t cap) {
    /* %.17g needs 25 bytes at most; the rest is for -Wformat-truncation,
     * which cannot bound the searched precision and assumes 309 digits */
    char tmp[320];
    if (!isfinite(d)) {
        snprintf(tmp, sizeof tmp, "null");
    } else if (fabs(d) < 1e15 && d == (double)(long long)d && !(d == 0 && signbit(d))) {
        /* integral: its digits are its shortest form (what the search below finds) */
        snprintf(tmp, sizeof tmp, "%lld.0", (long long)d);
    } else {
        /* The fewest digits that read back: a binary search, since p digits
         * reading back implies p + 1 do (the p-digit decimals are among the
         * (p + 1)-digit ones, so the nearer rounding is no farther). */
        int lo = 1, hi = 17;
        while (lo < hi) {
            int mid = (lo + hi) / 2;
            snprintf(tmp, sizeof tmp, "%.*g", mid, d);
            if (strtod(tmp, NULL) == d) hi = mid;
            else lo = mid + 1;
        }
        int p = lo;
        snprintf(tmp, sizeof tmp, "%.*g", p, d);
        /* %g switches to an exponent once the exponent reaches the
         * precision: 100 at one digit is "1e+02". Keep the plain form as
         * long as %.17g would (more digits still read back the same). */
        if (strchr(tmp, 'e')) {
            char ref[40];
            snprintf(ref, sizeof ref, "%.17g", d);
            while (strchr(tmp, 'e') && !strchr(ref, 'e') && p < 17) snprintf(tmp, sizeof tmp, "%.*g", ++p, d);
        }
        if (!strpbrk(tmp, ".e")) strcat(tmp, ".0");
    }
    size_t n = strlen(tmp);
    if (n + 1 > cap) return -1;
    memcpy(buf, tmp, n + 1);
    return (int)n;
}

static int is_num_char(char c) {
    return (c >= '0' && c <= '9') || c == '+' || c == '-' || c == '.' || c == 'e' || c == 'E';
}

/* A number token at s (at most n bytes): its length, whether it is a real
 * (has a fraction or an exponent), and its significant digits. */
static size_t number_len(const char *s, size_t n, int *real, int *digits) {
    size_t k = 0;
    int lead = 1, exp = 0;
    *real = *digits = 0;
    while (k < n && is_num_char(s[k])) {
        char c = s[k++];
        if (c == 'e' || c == 'E') exp = 1;
        if (c == '.' || exp) *real = 1;
        if (exp || c < '0' || c > '9') continue;
        if (c != '0') lead = 0;
        if (!lead) (*digits)++;
    }
    return k;
}

/* Whether text has 16 or more digits in a row ('.' between them counting
 * as one row): any real jsonfmt_text rewrites does. One tight pass, so that
 * the usual text, in which there is none, is copied without parsing. */
static int has_long_digit_run(const char *text, size_t len) {
    unsigned run = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned c = (unsigned char)text[i];
        unsigned digit = c - '0' < 10;
        run = digit || c == '.' ? run + digit : 0;
        if (run > 15) return 1;
    }
    return 0;
}

int jsonfmt_text_append(lr_buf *out, const char *text, size_t len) {
    if (!has_long_digit_run(text, len)) return lr_buf_add(out, text, len);
    /* Text is copied in runs; only a real that needs rewriting ends one. */
    size_t run = 0, i = 0;
    while (i < len) {
        char c = text[i];
        if (c == '"') {
            for (i++; i < len && text[i] != '"'; i++)
                if (text[i] == '\\') i++; /* the escaped character is never a quote that ends */
            i = i < len ? i + 1 : len;
        } else if (c == '-' || (c >= '0' && c <= '9')) {
            int real, digits;
            size_t n = number_len(text + i, len - i, &real, &digits);
            /* up to 15 significant digits a decimal is already the shortest
             * that reads back (DBL_DIG): only longer ones are looked at */
            if (real && digits > 15) {
                char num[40], tok[64];
                snprintf(tok, sizeof tok, "%.*s", (int)(n < sizeof tok ? n : sizeof tok - 1), text + i);
                int m = jsonfmt_real(strtod(tok, NULL), num, sizeof num);
                if (m < 0 || lr_buf_add(out, text + run, i - run) || lr_buf_add(out, num, (size_t)m)) return -1;
                run = i + n;
            }
            i += n;
        } else {
            i++;
        }
    }
    return lr_buf_add(out, text + run, len - run);
}

char *jsonfmt_text(const char *text, size_t len, size_t *out_len) {
    lr_buf out;
    /* a real never gets longer than 17 digits make it, but a margin costs nothing */
    lr_buf_init(&out, 2 * len + 64);
    if (jsonfmt_text_append(&out, text, len)) {
        lr_buf_free(&out);
        return NULL;
    }
    return lr_buf_take(&out, out_len);
}

/* A string as jansson writes it without flags: '"', '\\' and control
 * characters escaped, the rest (valid UTF-8, as jansson holds) as is. */
static int append_string(lr_buf *b, const char *s, size_t n) {
    static const char hex[] = "0123456789ABCDEF";
    size_t run = 0;
    if (lr_buf_add(b, "\"", 1)) return -1;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') continue;
        char esc[6] = {'\\', (char)c, 0};
        size_t el = 2;
        switch (c) {
        case '\b': esc[1] = 'b'; break;
        case '\f': esc[1] = 'f'; break;
        case '\n': esc[1] = 'n'; break;
        case '\r': esc[1] = 'r'; break;
        case '\t': esc[1] = 't'; break;
        case '"':
        case '\\': break;
        default:
            memcpy(esc, "\\u00", 4);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            el = 6;
        }
        if (lr_buf_add(b, s + run, i - run) || lr_buf_add(b, esc, el)) return -1;
        run = i + 1;
    }
    return lr_buf_add(b, s + run, n - run) || lr_buf_add(b, "\"", 1) ? -1 : 0;
}

int jsonfmt_append(lr_buf *b, const json_t *v) {
    char num[40];
    int n;
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        if (lr_buf_add(b, "{", 1)) return -1;
        int first = 1;
        /* insertion order, as json_dumps without JSON_SORT_KEYS */
        for (void *it = json_object_iter((json_t *)v); it; it = json_object_iter_next((json_t *)v, it)) {
            const char *k = json_object_iter_key(it);
            if ((!first && lr_buf_add(b, ",", 1)) || append_string(b, k, json_object_iter_key_len(it)) ||
                lr_buf_add(b, ":", 1) || jsonfmt_append(b, json_object_iter_value(it)))
                return -1;
            first = 0;
        }
        return lr_buf_add(b, "}", 1);
    }
    case JSON_ARRAY:
        if (lr_buf_add(b, "[", 1)) return -1;
        for (size_t i = 0; i < json_array_size(v); i++)
            if ((i && lr_buf_add(b, ",", 1)) || jsonfmt_append(b, json_array_get(v, i))) return -1;
        return lr_buf_add(b, "]", 1);
    case JSON_STRING:
        return append_string(b, json_string_value(v), json_string_length(v));
    case JSON_INTEGER:
        n = snprintf(num, sizeof num, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return lr_buf_add(b, num, (size_t)n);
    case JSON_REAL:
        n = jsonfmt_real(json_real_value(v), num, sizeof num);
        return n < 0 ? -1 : lr_buf_add(b, num, (size_t)n);
    case JSON_TRUE:
        return lr_buf_add(b, "true", 4);
    case JSON_FALSE:
        return lr_buf_add(b, "false", 5);
    case JSON_NULL:
        return lr_buf_add(b, "null", 4);
    }
    return -1;
}

char *jsonfmt_dumps(const json_t *v, size_t flags) {
    char *text = json_dumps(v, flags & ~(size_t)JSON_REAL_PRECISION(31));
    if (!text || !strpbrk(text, ".eE")) return text; /* no real anywhere */
    char *out = jsonfmt_text(text, strlen(text), NULL);
    free(text);
    return out;
}
