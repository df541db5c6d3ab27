#include "proto/jsonfmt.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"

int jsonfmt_real(double d, char *buf, size_t cap) {
    char tmp[40];
    if (!isfinite(d)) {
        snprintf(tmp, sizeof tmp, "null");
    } else {
        int p = 1;
        for (; p < 17; p++) {
            snprintf(tmp, sizeof tmp, "%.*g", p, d);
            if (strtod(tmp, NULL) == d) break;
        }
        snprintf(tmp, sizeof tmp, "%.*g", p, d);
        /* %g switches to an exponent once the exponent reaches the
         * precision: 100 at one digit is "1e+02". Keep the plain form as
         * long as %.17g would (more digits still read back the same). */
        char ref[40];
        snprintf(ref, sizeof ref, "%.17g", d);
        while (strchr(tmp, 'e') && !strchr(ref, 'e') && p < 17) snprintf(tmp, sizeof tmp, "%.*g", ++p, d);
        if (!strpbrk(tmp, ".e")) strcat(tmp, ".0");
    }
    size_t n = strlen(tmp);
    if (n + 1 > cap) return -1;
    memcpy(buf, tmp, n + 1);
    return (int)n;
}

/* A number token at s (at most n bytes): its length, whether it is a real
 * (has a fraction or an exponent), and its significant digits. */
static size_t number_len(const char *s, size_t n, int *real, int *digits) {
    size_t k = 0;
    int lead = 1, exp = 0;
    *real = *digits = 0;
    while (k < n && strchr("0123456789+-.eE", s[k]) && s[k]) {
        char c = s[k++];
        if (c == 'e' || c == 'E') exp = 1;
        if (c == '.' || exp) *real = 1;
        if (exp || c < '0' || c > '9') continue;
        if (c != '0') lead = 0;
        if (!lead) (*digits)++;
    }
    return k;
}

char *jsonfmt_text(const char *text, size_t len, size_t *out_len) {
    lr_buf out;
    /* a real never gets longer than 17 digits make it, but a margin costs nothing */
    lr_buf_init(&out, 2 * len + 64);
    int bad = 0, in_str = 0;
    for (size_t i = 0; i < len && !bad;) {
        char c = text[i];
        if (in_str) {
            size_t k = i;
            while (k < len && text[k] != '"' && text[k] != '\\') k++;
            if (k < len && text[k] == '\\') k += 2; /* the escaped character is never a quote that ends */
            else if (k < len) {
                k++;
                in_str = 0;
            }
            if (k > len) k = len;
            bad = lr_buf_add(&out, text + i, k - i);
            i = k;
        } else if (c == '"') {
            in_str = 1;
            bad = lr_buf_add(&out, "\"", 1);
            i++;
        } else if (c == '-' || (c >= '0' && c <= '9')) {
            int real, digits;
            size_t n = number_len(text + i, len - i, &real, &digits);
            /* up to 15 significant digits a decimal is already the shortest
             * that reads back (DBL_DIG): only longer ones are looked at */
            if (real && digits > 15) {
                char num[40], tok[64];
                snprintf(tok, sizeof tok, "%.*s", (int)(n < sizeof tok ? n : sizeof tok - 1), text + i);
                int m = jsonfmt_real(strtod(tok, NULL), num, sizeof num);
                bad = m < 0 || lr_buf_add(&out, num, (size_t)m);
            } else {
                bad = lr_buf_add(&out, text + i, n);
            }
            i += n;
        } else {
            bad = lr_buf_add(&out, &text[i], 1);
            i++;
        }
    }
    if (bad) {
        lr_buf_free(&out);
        return NULL;
    }
    return lr_buf_take(&out, out_len);
}

char *jsonfmt_dumps(const json_t *v, size_t flags) {
    char *text = json_dumps(v, flags & ~(size_t)JSON_REAL_PRECISION(31));
    if (!text || !strpbrk(text, ".eE")) return text; /* no real anywhere */
    char *out = jsonfmt_text(text, strlen(text), NULL);
    free(text);
    return out;
}
