/* fmt: the pure text pieces of the lora CLI's output: durations and ETAs,
 * numbers, byte sizes, progress bars, loss sparklines, display widths.
 * Nothing here does I/O, so every piece is unit-tested without a server.
 * Functions writing into (out, cap) always NUL-terminate and truncate. */
#ifndef LR_CLIENT_FMT_H
#define LR_CLIENT_FMT_H

#include <stddef.h>

/* "45s", "3m12s", "2h05m", "3d04h"; "-" when negative or not finite. */
void fmt_duration(double seconds, char *out, size_t cap);

/* Seconds left when `done` of `total` units took `elapsed` seconds, at the
 * same rate; -1 when it cannot be known (nothing done yet, no total). */
double fmt_eta(double elapsed, double done, double total);

/* A loss or rate for a table cell: 4 significant digits ("1.234", "0.0123",
 * "2.0e-04" for small values), "-" when not finite. */
void fmt_num(double v, char *out, size_t cap);

/* "512 B", "1.5 KiB", "12.3 MiB", "1.2 GiB". */
void fmt_bytes(double n, char *out, size_t cap);

/* A progress bar `width` cells wide for frac in [0,1] (clamped). UTF-8: full
 * blocks, one eighth-block for the fractional cell, light shade for the rest;
 * ASCII: '#' then '-'. */
void fmt_bar(double frac, int width, int utf8, char *out, size_t cap);

/* A sparkline of at most `width` cells: when n > width the series is averaged
 * into width buckets. Levels ▁▂▃▄▅▆▇█ (UTF-8) or "_.-:=+*#" (ASCII), scaled
 * between the min and max of the finite values; non-finite values are
 * blanks; a flat series is the lowest level. */
void fmt_sparkline(const double *v, size_t n, int width, int utf8, char *out, size_t cap);

/* Whether the locale is UTF-8, from the three variables in the order the C
 * library consults them (the first non-empty one decides). Any may be NULL. */
int fmt_locale_utf8(const char *lc_all, const char *lc_ctype, const char *lang);

/* Terminal columns taken by UTF-8 text (wide characters count 2; invalid
 * bytes count 1 each). */
int fmt_width(const char *s);

/* Copies s into out cut to at most `cols` display columns; when cut, the last
 * column is an ellipsis ("…" in UTF-8, "~" in ASCII). Never splits a
 * multi-byte character. */
void fmt_truncate(const char *s, int cols, int utf8, char *out, size_t cap);

#endif
