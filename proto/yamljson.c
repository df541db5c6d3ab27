/* yamljson: YAML text into a JSON document, for job specs and --set values. */
#include "proto/yamljson.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#define YAML_MAX_DEPTH 32
#define YAML_MAX_NODES 100000

typedef struct {
    yaml_parser_t p;
    int nodes;
    lr_err *err;
} yctx;

static int y_next(yctx *y, yaml_event_t *ev) {
    if (!yaml_parser_parse(&y->p, ev))
        return lr_errp(y->err, LR_E_INVALID, "", "YAML line %zu: %s", y->p.problem_mark.line + 1,
                       y->p.problem ? y->p.problem : "syntax error");
    if (++y->nodes > YAML_MAX_NODES) {
        yaml_event_delete(ev);
        return lr_errp(y->err, LR_E_TOOBIG, "", "YAML document has too many nodes");
    }
    return 0;
}

/* A plain scalar is typed as YAML 1.2's core schema does; quoted ones are strings. */
static json_t *y_scalar(const yaml_event_t *ev) {
    const char *s = (const char *)ev->data.scalar.value;
    size_t n = ev->data.scalar.length;
    if (ev->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) return json_stringn(s, n);
    if (n == 0 || !strcmp(s, "~") || !strcmp(s, "null") || !strcmp(s, "Null") || !strcmp(s, "NULL"))
        return json_null();
    if (!strcmp(s, "true") || !strcmp(s, "True") || !strcmp(s, "TRUE")) return json_true();
    if (!strcmp(s, "false") || !strcmp(s, "False") || !strcmp(s, "FALSE")) return json_false();
    char *end;
    const char *q = s + (s[0] == '+' || s[0] == '-');
    if (isdigit((unsigned char)q[0]) || (q[0] == '.' && isdigit((unsigned char)q[1]))) {
        long long i = strtoll(s, &end, 10);
        if (*end == 0 && end != s) return json_integer(i);
        double d = strtod(s, &end);
        if (*end == 0 && end != s && isfinite(d)) return json_real(d);
    }
    return json_stringn(s, n);
}

static int y_node(yctx *y, yaml_event_t *ev, int depth, json_t **out);

static int y_collection(yctx *y, int is_map, int depth, json_t **out) {
    json_t *c = is_map ? json_object() : json_array();
    for (;;) {
        yaml_event_t ev;
        if (y_next(y, &ev)) goto fail;
        if (ev.type == (is_map ? YAML_MAPPING_END_EVENT : YAML_SEQUENCE_END_EVENT)) {
            yaml_event_delete(&ev);
            break;
        }
        if (is_map) {
            if (ev.type != YAML_SCALAR_EVENT) {
                yaml_event_delete(&ev);
                lr_errp(y->err, LR_E_INVALID, "", "YAML line %zu: mapping keys must be plain strings",
                        y->p.mark.line + 1);
                goto fail;
            }
            char key[256];
            snprintf(key, sizeof key, "%.*s", (int)ev.data.scalar.length, (const char *)ev.data.scalar.value);
            size_t line = ev.start_mark.line + 1;
            yaml_event_delete(&ev);
            if (json_object_get(c, key)) {
                lr_errp(y->err, LR_E_INVALID, key, "YAML line %zu: duplicate key '%s'", line, key);
                goto fail;
            }
            yaml_event_t vev;
            json_t *v;
            if (y_next(y, &vev)) goto fail;
            if (y_node(y, &vev, depth + 1, &v)) goto fail;
            json_object_set_new(c, key, v);
        } else {
            json_t *v;
            if (y_node(y, &ev, depth + 1, &v)) goto fail;
            json_array_append_new(c, v);
        }
    }
    *out = c;
    return 0;
fail:
    json_decref(c);
    return -1;
}

/* Consumes ev (deletes it) and builds the node it starts. */
static int y_node(yctx *y, yaml_event_t *ev, int depth, json_t **out) {
    int rc = -1;
    if (depth > YAML_MAX_DEPTH) {
        lr_errp(y->err, LR_E_INVALID, "", "YAML nesting is deeper than %d", YAML_MAX_DEPTH);
    } else if (ev->type == YAML_ALIAS_EVENT ||
               (ev->type == YAML_SCALAR_EVENT && ev->data.scalar.anchor) ||
               (ev->type == YAML_MAPPING_START_EVENT && ev->data.mapping_start.anchor) ||
               (ev->type == YAML_SEQUENCE_START_EVENT && ev->data.sequence_start.anchor)) {
        /* Anchors make a small file expand without bound; a job spec needs none. */
        lr_errp(y->err, LR_E_INVALID, "", "YAML line %zu: anchors and aliases are not supported in job specs",
                ev->start_mark.line + 1);
    } else if (ev->type == YAML_SCALAR_EVENT) {
        *out = y_scalar(ev);
        rc = *out ? 0 : lr_errp(y->err, LR_E_INVALID, "", "YAML line %zu: invalid UTF-8", ev->start_mark.line + 1);
    } else if (ev->type == YAML_MAPPING_START_EVENT) {
        rc = y_collection(y, 1, depth, out);
    } else if (ev->type == YAML_SEQUENCE_START_EVENT) {
        rc = y_collection(y, 0, depth, out);
    } else {
        lr_errp(y->err, LR_E_INVALID, "", "YAML line %zu: unexpected content", ev->start_mark.line + 1);
    }
    yaml_event_delete(ev);
    return rc;
}

int yamljson_parse(const char *text, size_t len, json_t **out, lr_err *err) {
    yctx y = {.err = err};
    json_t *doc = NULL;
    if (!yaml_parser_initialize(&y.p)) return lr_errp(err, LR_E_NOMEM, "", "out of memory");
    yaml_parser_set_input_string(&y.p, (const unsigned char *)text, len);
    yaml_event_t ev;
    int rc = -1;
    /* stream start, document start, root node, document end, stream end */
    if (y_next(&y, &ev)) goto done;
    yaml_event_delete(&ev);
    if (y_next(&y, &ev)) goto done;
    if (ev.type == YAML_STREAM_END_EVENT) {
        yaml_event_delete(&ev);
        lr_errp(err, LR_E_INVALID, "", "the job spec is empty");
        goto done;
    }
    yaml_event_delete(&ev);
    if (y_next(&y, &ev)) goto done;
    if (y_node(&y, &ev, 0, &doc)) goto done;
    if (y_next(&y, &ev)) goto done;
    yaml_event_delete(&ev);
    if (y_next(&y, &ev)) goto done;
    if (ev.type != YAML_STREAM_END_EVENT) {
        yaml_event_delete(&ev);
        lr_errp(err, LR_E_INVALID, "", "the job spec must be one YAML document");
        goto done;
    }
    yaml_event_delete(&ev);
    *out = doc;
    doc = NULL;
    rc = 0;
done:
    json_decref(doc);
    yaml_parser_delete(&y.p);
    return rc;
}
