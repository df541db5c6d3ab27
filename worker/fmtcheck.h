/* fmtcheck: does a model's output follow a required text format?
 *
 * The rules are the job spec's eval.format (proto/jobspec.h), so the schema
 * and the checker cannot drift:
 *  - sections: headers that must each appear at the start of some line
 *    (leading spaces/tabs allowed) followed by ':'; by default the name is
 *    matched case-insensitively with optional spaces before the colon
 *    ("key points :"), with exact_headers only as written ("Key Points:").
 *    A section's text runs from its first header to the next header line
 *    of any listed section, or to the end.
 *  - in_order: the sections' first headers appear in the listed order.
 *  - bullets (per section, >= 0): exactly that many bullet lines in the
 *    section's text; a bullet line is optional spaces/tabs, '-' or '*',
 *    at least one space or tab, then a non-space character.
 *  - ends_with (per section): the section's text, trailing whitespace
 *    removed, ends with it (e.g. "?" for a question).
 *  - nothing_after: the final listed section is the last thing in the
 *    output and its text is a single line.
 *  - regex: a PCRE2 pattern (UTF) that must match somewhere in the output
 *    (use \A, \z and inline flags such as (?s) to anchor); matching is
 *    bounded so that a pattern cannot run away on long outputs.
 * The ra-llm-notes template rules (4 headers, exactly 3 bullets in Key
 * Points, order not checked) are sections Summary, Key Points (bullets 3),
 * Limitation, Follow-up Question with in_order false. One difference from
 * that project's checker: it searches "Key Points:" anywhere (not only at a
 * line start) for the bullet count; here a section always starts at a
 * header line. */
#ifndef LR_FMTCHECK_H
#define LR_FMTCHECK_H

#include <stddef.h>
#include "common/err.h"
#include "proto/jobspec.h"

typedef struct fmt_checker fmt_checker;

/* Whether the rules check anything (sections or a regex). */
int fmt_has_rules(const jobspec_format *f);
/* Compiles the rules (the regex); err names eval.format.regex on a bad pattern. */
int fmt_new(const jobspec_format *f, fmt_checker **out, lr_err *err) LR_WARN_UNUSED;
void fmt_free(fmt_checker *c);
/* 1 when text passes; 0 with a short reason in why ("'Key Points' has 4
 * bullets, expected 3"). Pure: no state changes, safe from several threads. */
int fmt_check(const fmt_checker *c, const char *text, size_t len, char *why, size_t cap);

#endif
