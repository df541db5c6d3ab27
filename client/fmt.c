#include "client/fmt.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <utf8proc.h>

void fmt_duration(double s, char *out, size_t cap) {
    if (!isfinite(s) || s < 0 || s > 1e12) {
        snprintf(out, cap, "-");
        return;
    }
    long long t = (long long)(s + 0.5);
    if (t < 60)
        snprintf(out, cap, "%llds", t);
    else if (t < 3600)
        snprintf(out, cap, "%lldm%02llds", t / 60, t % 60);
    else if (t < 86400)
        snprintf(out, cap, "%lldh%02lldm", t / 3600, t % 3600 / 60);
    else
        snprintf(out, cap, "%lldd%02lldh", t / 86400, t % 86400 / 3600);
}

double fmt_eta(double elapsed, double done, double total) {
    if (!isfinite(elapsed) || !isfinite(done) || !isfinite(total) || done <= 0 || total <= 0 ||
        elapsed < 0)
        return -1;
    if (done >= total) return 0;
    return elapsed * (total - done) / done;
}

void fmt_num(double v, char *out, size_t cap) {
    double a = fabs(v);
    if (!isfinite(v))
        snprintf(out, cap, "-");
    else if (v == 0)
        snprintf(out, cap, "0");
    else if (a < 1e-3 || a >= 1e6)
        snprintf(out, cap, "%.1e", v);
    else if (a < 1)
        snprintf(out, cap, "%.4g", v);
    else
        snprintf(out, cap, "%.*f", a < 10 ? 3 : a < 100 ? 2 : a < 1000 ? 1 : 0, v);
}

void fmt_bytes(double n, char *out, size_t cap) {
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    if (!isfinite(n) || n < 0) {
        snprintf(out, cap, "-");
        return;
    }
    while (n >= 1024 && u < 4) {
        n /= 1024;
        u++;
    }
    if (u == 0)
        snprintf(out, cap, "%.0f B", n);
    else
        snprintf(out, cap, "%.*f %s", n < 10 ? 1 : 0, n, units[u]);
}

/* Appends s to out[*len] if it fits whole; cells never come out half-written. */
static void put(char *out, size_t cap, size_t *len, const char *s) {
    size_t l = strlen(s);
    if (*len + l + 1 > cap) return;
    memcpy(out + *len, s, l + 1);
    *len += l;
}

void fmt_bar(double frac, int width, int utf8, char *out, size_t cap) {
    static const char *const eighths[] = {"", "▏", "▎", "▍", "▌", "▋", "▊", "▉"};
    size_t len = 0;
    if (!cap) return;
    out[0] = 0;
    if (!isfinite(frac) || frac < 0) frac = 0;
    if (frac > 1) frac = 1;
    if (width < 1) return;
    if (!utf8) {
        int full = (int)(frac * width + 1e-9);
        for (int i = 0; i < width; i++) put(out, cap, &len, i < full ? "#" : "-");
        return;
    }
    int units = (int)(frac * width * 8 + 1e-9);
    int full = units / 8, part = units % 8, i = 0;
    for (; i < full; i++) put(out, cap, &len, "█");
    if (part && i < width) {
        put(out, cap, &len, eighths[part]);
        i++;
    }
    for (; i < width; i++) put(out, cap, &len, "░");
}

void fmt_sparkline(const double *v, size_t n, int width, int utf8, char *out, size_t cap) {
    static const char *const blocks[] = {"▁", "▂", "▃", "▄", "▅", "▆", "▇", "█"};
    static const char ascii[] = "_.-:=+*#";
    size_t len = 0;
    if (!cap) return;
    out[0] = 0;
    if (width < 1 || n == 0) return;
    size_t cells = n < (size_t)width ? n : (size_t)width;
    double lo = INFINITY, hi = -INFINITY;
    /* A terminal line is far narrower than 512 cells. */
    double means[512];
    if (cells > 512) cells = 512;
    for (size_t c = 0; c < cells; c++) {
        size_t a = c * n / cells, b = (c + 1) * n / cells;
        double sum = 0;
        size_t k = 0;
        for (size_t i = a; i < b; i++)
            if (isfinite(v[i])) {
                sum += v[i];
                k++;
            }
        means[c] = k ? sum / (double)k : NAN;
        if (k) {
            if (means[c] < lo) lo = means[c];
            if (means[c] > hi) hi = means[c];
        }
    }
    for (size_t c = 0; c < cells; c++) {
        if (!isfinite(means[c])) {
            put(out, cap, &len, " ");
            continue;
        }
        int lvl = hi > lo ? (int)floor((means[c] - lo) / (hi - lo) * 7 + 0.5) : 0;
        if (lvl < 0) lvl = 0;
        if (lvl > 7) lvl = 7;
        if (utf8) {
            put(out, cap, &len, blocks[lvl]);
        } else {
            char s[2] = {ascii[lvl], 0};
            put(out, cap, &len, s);
        }
    }
}

int fmt_locale_utf8(const char *lc_all, const char *lc_ctype, const char *lang) {
    const char *v = lc_all && *lc_all ? lc_all : lc_ctype && *lc_ctype ? lc_ctype : lang;
    if (!v || !*v) return 0;
    for (const char *p = v; *p; p++)
        if (!strncasecmp(p, "utf-8", 5) || !strncasecmp(p, "utf8", 4)) return 1;
    return 0;
}

/* Decodes one character at s; its byte length in *nb, its columns returned. */
static int char_cols(const char *s, int *nb) {
    utf8proc_int32_t cp;
    utf8proc_ssize_t n = utf8proc_iterate((const utf8proc_uint8_t *)s, -1, &cp);
    if (n <= 0) {
        *nb = 1;
        return 1;
    }
    *nb = (int)n;
    int w = utf8proc_charwidth(cp);
    return w < 0 ? 0 : w;
}

int fmt_width(const char *s) {
    int cols = 0, nb;
    while (*s) {
        cols += char_cols(s, &nb);
        s += nb;
    }
    return cols;
}

void fmt_truncate(const char *s, int cols, int utf8, char *out, size_t cap) {
    size_t len = 0;
    if (!cap) return;
    out[0] = 0;
    if (cols < 1) return;
    if (fmt_width(s) <= cols && strlen(s) < cap) {
        memcpy(out, s, strlen(s) + 1);
        return;
    }
    int used = 0, nb;
    while (*s) {
        int w = char_cols(s, &nb);
        if (used + w > cols - 1 || len + (size_t)nb + 4 > cap) break;
        memcpy(out + len, s, (size_t)nb);
        len += (size_t)nb;
        used += w;
        s += nb;
    }
    out[len] = 0;
    put(out, cap, &len, utf8 ? "…" : "~");
}
