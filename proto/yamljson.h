/* yamljson: a YAML document (libyaml's events) as a JSON value, typed as
 * YAML 1.2's core schema types plain scalars; quoted scalars are strings.
 * Bounded for untrusted text: nesting depth, node count, no anchors or
 * aliases (a small file could expand without bound), no duplicate keys. */
#ifndef LR_YAMLJSON_H
#define LR_YAMLJSON_H

#include <jansson.h>
#include <stddef.h>
#include "common/err.h"

/* The one document of text into *out (new reference). */
int yamljson_parse(const char *text, size_t len, json_t **out, lr_err *err) LR_WARN_UNUSED;

#endif
