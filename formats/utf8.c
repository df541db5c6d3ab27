/* utf8: see utf8.h. Decoding follows Unicode Table 3-7 (well-formed byte
 * sequences) so that the invalid subparts match from_utf8_lossy. */
#include "formats/utf8.h"

#include <stdlib.h>
#include <string.h>

int utf8_decode(const uint8_t *s, size_t n, int32_t *cp) {
    uint8_t b0 = s[0];
    if (b0 < 0x80) {
        *cp = b0;
        return 1;
    }
    int need;
    uint8_t lo = 0x80, hi = 0xBF; /* range of the second byte */
    int32_t c;
    if (b0 >= 0xC2 && b0 <= 0xDF) need = 1, c = b0 & 0x1F;
    else if (b0 == 0xE0) need = 2, c = b0 & 0x0F, lo = 0xA0;
    else if (b0 == 0xED) need = 2, c = b0 & 0x0F, hi = 0x9F;
    else if (b0 >= 0xE1 && b0 <= 0xEF) need = 2, c = b0 & 0x0F;
    else if (b0 == 0xF0) need = 3, c = b0 & 0x07, lo = 0x90;
    else if (b0 == 0xF4) need = 3, c = b0 & 0x07, hi = 0x8F;
    else if (b0 >= 0xF1 && b0 <= 0xF3) need = 3, c = b0 & 0x07;
    else {
        *cp = 0xFFFD;
        return -1;
    }
    for (int i = 1; i <= need; i++) {
        uint8_t l = i == 1 ? lo : 0x80, h = i == 1 ? hi : 0xBF;
        if ((size_t)i >= n || s[i] < l || s[i] > h) {
            *cp = 0xFFFD;
            return -i;
        }
        c = (c << 6) | (s[i] & 0x3F);
    }
    *cp = c;
    return need + 1;
}

int utf8_encode(int32_t cp, uint8_t out[4]) {
    if (cp < 0 || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) cp = 0xFFFD;
    if (cp < 0x80) {
        out[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (uint8_t)(0xC0 | (cp >> 6));
        out[1] = (uint8_t)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (uint8_t)(0xE0 | (cp >> 12));
        out[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (uint8_t)(0xF0 | (cp >> 18));
    out[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}

int utf8_len(const uint8_t *s, size_t n) {
    int32_t cp;
    int l = utf8_decode(s, n, &cp);
    return l < 0 ? -l : l;
}

char *utf8_sanitize(const char *s, size_t n, size_t *out_len) {
    /* each invalid byte becomes at most 3 bytes */
    if (n > ((size_t)-1) / 3 - 1) return NULL;
    char *o = malloc(n * 3 + 1);
    if (!o) return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        int32_t cp;
        int l = utf8_decode((const uint8_t *)s + i, n - i, &cp);
        if (l > 0) {
            memcpy(o + k, s + i, (size_t)l);
            k += (size_t)l;
            i += (size_t)l;
        } else {
            memcpy(o + k, "\xEF\xBF\xBD", 3);
            k += 3;
            i += (size_t)-l;
        }
    }
    o[k] = 0;
    *out_len = k;
    return o;
}

int utf8_is_space(int32_t c) {
    return (c >= 9 && c <= 13) || c == 32 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

size_t utf8_space_prefix(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        int32_t cp;
        int l = utf8_decode(s + i, n - i, &cp);
        if (l < 0 || !utf8_is_space(cp)) break;
        i += (size_t)l;
    }
    return i;
}

size_t utf8_space_suffix_start(const uint8_t *s, size_t n) {
    size_t end = 0; /* end of the last non-space character */
    for (size_t i = 0; i < n;) {
        int32_t cp;
        int l = utf8_decode(s + i, n - i, &cp);
        i += (size_t)(l < 0 ? -l : l);
        if (l < 0 || !utf8_is_space(cp)) end = i;
    }
    return end;
}

/* bytes_to_unicode(): printable Latin-1 bytes stand for themselves, the
 * other 68 bytes take U+0100.. in byte order. */
static int printable(int b) { return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF); }

int32_t utf8_byte_char(uint8_t b) {
    if (printable(b)) return b;
    int k = 0;
    for (int i = 0; i < b; i++) k += !printable(i);
    return 256 + k;
}

int utf8_char_byte(int32_t cp) {
    if (cp < 0 || cp >= 256 + 68) return -1;
    if (cp < 256) return printable(cp) ? cp : -1;
    int k = cp - 256;
    for (int b = 0; b < 256; b++)
        if (!printable(b) && k-- == 0) return b;
    return -1;
}
