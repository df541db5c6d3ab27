/* jsonfmt: JSON text with real numbers in their shortest round-trip form.
 *
 * jansson prints a real with 17 significant digits ("%.17g"), so the
 * learning rate a user sent as 0.003 comes back as 0.0030000000000000001.
 * Here each real gets the fewest digits that strtod reads back as the same
 * double (0.003, 5.4401235580444336 when a float32 loss needs all 17), so
 * nothing is lost and nothing is invented. Programs print JSON through
 * jsonfmt_dumps instead of json_dumps. */
#ifndef LR_JSONFMT_H
#define LR_JSONFMT_H

#include <jansson.h>
#include <stddef.h>
#include "common/buf.h"

/* The shortest form of d that reads back as d, always with a '.' or an
 * exponent (as jansson writes reals, so a reader still sees a real): "0.003",
 * "1e-05", "3.0", "100.0". NaN and infinities are not JSON: "null". Returns
 * the length, or -1 when cap is too small (32 is always enough). */
int jsonfmt_real(double d, char *buf, size_t cap);

/* JSON text (len bytes) with every real of more than 15 significant
 * digits rewritten by jsonfmt_real (shorter ones already are the shortest);
 * strings are left alone. The caller frees the result (NUL-terminated,
 * *out_len its length when out_len is not NULL); NULL when out of memory. */
char *jsonfmt_text(const char *text, size_t len, size_t *out_len);
/* jsonfmt_text appending to out (no copy of its own): text without a real
 * to rewrite is copied as one run. -1 when out's cap or memory runs out
 * (out then holds part of it). */
int jsonfmt_text_append(lr_buf *out, const char *text, size_t len) LR_WARN_UNUSED;

/* json_dumps(v, flags) with every real rewritten by jsonfmt_real
 * (JSON_REAL_PRECISION in flags is ignored). The caller frees the text;
 * NULL on failure, as json_dumps. */
char *jsonfmt_dumps(const json_t *v, size_t flags);
/* Appends v to b as jsonfmt_dumps(v, JSON_COMPACT) writes it, without a
 * text of its own to allocate and scan again (the jobs list's items). Byte
 * for byte the same but for reals whose %.17g has few digits and an
 * exponent (1e22): jsonfmt_real's "1e+22" here, jansson's "1e22" there.
 * -1 when b's cap or memory runs out (b then holds part of it). */
int jsonfmt_append(lr_buf *b, const json_t *v) LR_WARN_UNUSED;

#endif
