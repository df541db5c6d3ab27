/* The job spec's parser against proto/openapi.yaml's JobSpec: the same
 * fields, the same types, every enum value accepted (and nothing else), and
 * every minimum / maximum the YAML states is where the parser's range
 * starts or ends. The fields come from what jobspec_to_json writes for each
 * method (sft, kl_sft, dpo, full_sft, eval), so a field added to one side
 * only fails here. When the spec becomes one declarative table (issue 13,
 * item 2), this test checks the table the same way. */
#include "tests/unit/test.h"

#include <math.h>

#include "common/buf.h"
#include "proto/jobspec.h"

static json_t *g_doc; /* openapi.yaml */

static const json_t *jobspec_schema(void) {
    if (!g_doc) {
        char *text = NULL;
        size_t len = 0;
        lr_err e = {0};
        if (lr_read_file("proto/openapi.yaml", 1 << 20, &text, &len, &e)) return NULL;
        int bad = jobspec_parse_text(text, len, &g_doc, &e);
        free(text);
        if (bad) return NULL;
    }
    return json_object_get(json_object_get(json_object_get(g_doc, "components"), "schemas"), "JobSpec");
}

/* The smallest valid spec of a method, with that method's own blocks. */
static json_t *base_spec(const char *method) {
    json_t *o = json_pack("{s:s, s:s, s:{s:s}}", "model", "m", "training_file", "file-000000000001", "method", "type",
                          method);
    if (!strcmp(method, "eval")) json_object_set_new(o, "eval", json_pack("{s:{}, s:{s:[s]}}", "generation", "format",
                                                                          "sections", "Summary"));
    return o;
}

/* A spec's JSON as the parser writes it back, for one method. */
static json_t *written(const char *method) {
    json_t *in = base_spec(method), *out = NULL;
    jobspec s;
    lr_err e = {0};
    if (!jobspec_from_json(in, &s, &e)) out = jobspec_to_json(&s);
    else printf("    %s: %s\n", method, e.msg);
    json_decref(in);
    return out;
}

/* Whether JSON value v has the schema's type (oneOf: any branch). */
static int type_ok(const json_t *schema, const json_t *v) {
    const json_t *one = json_object_get(schema, "oneOf");
    if (one) {
        size_t i;
        const json_t *b;
        json_array_foreach(one, i, b) if (type_ok(b, v)) return 1;
        return 0;
    }
    if (json_is_null(v)) return json_is_true(json_object_get(schema, "nullable"));
    const char *t = json_string_value(json_object_get(schema, "type"));
    if (!t) return 1;
    if (!strcmp(t, "integer")) return json_is_integer(v);
    if (!strcmp(t, "number")) return json_is_number(v);
    if (!strcmp(t, "string")) return json_is_string(v);
    if (!strcmp(t, "boolean")) return json_is_boolean(v);
    if (!strcmp(t, "object")) return json_is_object(v);
    if (!strcmp(t, "array")) return json_is_array(v);
    return 0;
}

/* Every field written (for any method) is documented with its type. */
static void check_written(const json_t *schema, const json_t *w, const char *path, json_t *seen) {
    const json_t *props = json_object_get(schema, "properties");
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)w, k, v) {
        char p[256];
        snprintf(p, sizeof p, "%s%s%s", path, *path ? "." : "", k);
        const json_t *ps = json_object_get(props, k);
        int first = !json_object_get(seen, p); /* each field is reported once, not once per method */
        json_object_set_new(seen, p, json_true());
        if (first) CHECKF(ps != NULL, "jobspec writes %s; openapi.yaml's JobSpec does not have it", p);
        if (!ps) continue;
        const char *t = json_string_value(json_object_get(ps, "type"));
        if (first)
            CHECKF(type_ok(ps, v), "%s: jobspec writes %s; openapi.yaml says %s", p,
                   json_is_null(v) ? "null" : json_is_string(v) ? "a string" : json_is_integer(v) ? "an integer"
                   : json_is_real(v) ? "a number" : json_is_boolean(v) ? "a boolean" : json_is_array(v) ? "an array"
                   : "an object", t ? t : "oneOf");
        if (json_is_object(v) && json_object_get(ps, "properties")) check_written(ps, v, p, seen);
    }
}

/* Every documented field is one the parser writes for some method. */
static void check_documented(const json_t *schema, const char *path, const json_t *seen) {
    const char *k;
    json_t *ps;
    json_object_foreach(json_object_get(schema, "properties"), k, ps) {
        char p[256];
        snprintf(p, sizeof p, "%s%s%s", path, *path ? "." : "", k);
        CHECKF(json_object_get(seen, p) != NULL, "openapi.yaml documents %s; jobspec never writes it", p);
        if (json_object_get(ps, "properties")) check_documented(ps, p, seen);
    }
}

/* Whether the parser takes value v at dotted path p of the method's base spec. */
static int accepts(const char *p, json_t *v) {
    json_t *doc = base_spec(strncmp(p, "eval.", 5) ? "sft" : "eval"), *cur = doc;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", p);
    char *save = NULL, *tok = strtok_r(buf, ".", &save);
    for (char *next; (next = strtok_r(NULL, ".", &save)); tok = next) {
        json_t *c = json_object_get(cur, tok);
        if (!c) json_object_set_new(cur, tok, c = json_object());
        cur = c;
    }
    json_object_set_new(cur, tok, v);
    jobspec s;
    lr_err e = {0};
    int ok = jobspec_from_json(doc, &s, &e) == 0;
    json_decref(doc);
    return ok;
}

/* Enums: each value accepted, another refused; bounds: the bound accepted,
 * one past it refused. */
static void check_values(const json_t *schema, const char *path, int *n_enum, int *n_bound) {
    const char *k;
    json_t *ps;
    json_object_foreach(json_object_get(schema, "properties"), k, ps) {
        char p[256];
        snprintf(p, sizeof p, "%s%s%s", path, *path ? "." : "", k);
        if (json_object_get(ps, "properties")) check_values(ps, p, n_enum, n_bound);
        const json_t *en = json_object_get(ps, "enum"), *x;
        size_t i;
        json_array_foreach(en, i, x) {
            CHECKF(accepts(p, json_deep_copy(x)), "%s: openapi.yaml's value '%s' is refused", p, json_string_value(x));
            ++*n_enum;
        }
        if (en) CHECKF(!accepts(p, json_string("no-such-value")), "%s: a value outside the enum is accepted", p);
        const char *t = json_string_value(json_object_get(ps, "type"));
        int integer = t && !strcmp(t, "integer");
        const json_t *lo = json_object_get(ps, "minimum"), *hi = json_object_get(ps, "maximum");
        const json_t *xlo = json_object_get(ps, "exclusiveMinimum");
        if (lo) {
            double b = json_number_value(lo);
            CHECKF(accepts(p, integer ? json_integer((json_int_t)b) : json_real(b)), "%s: the minimum %g is refused", p, b);
            CHECKF(!accepts(p, integer ? json_integer((json_int_t)b - 1) : json_real(nextafter(b, -INFINITY))),
                   "%s: below the minimum %g is accepted", p, b);
            ++*n_bound;
        }
        if (hi) {
            double b = json_number_value(hi);
            CHECKF(accepts(p, integer ? json_integer((json_int_t)b) : json_real(b)), "%s: the maximum %g is refused", p, b);
            CHECKF(!accepts(p, integer ? json_integer((json_int_t)b + 1) : json_real(nextafter(b, INFINITY))),
                   "%s: above the maximum %g is accepted", p, b);
            ++*n_bound;
        }
        if (xlo) {
            double b = json_number_value(xlo);
            CHECKF(!accepts(p, json_real(b)), "%s: the exclusive minimum %g is accepted", p, b);
            CHECKF(accepts(p, json_real(nextafter(b, INFINITY))), "%s: just above the exclusive minimum %g is refused", p, b);
            ++*n_bound;
        }
    }
}

TEST(fields_and_types_match_openapi) {
    const json_t *schema = jobspec_schema();
    REQUIRE(schema);
    json_t *seen = json_object();
    static const char *const methods[] = {"sft", "kl_sft", "dpo", "full_sft", "eval"};
    for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++) {
        json_t *w = written(methods[i]);
        CHECKF(w != NULL, "a minimal %s spec does not parse", methods[i]);
        if (w) check_written(schema, w, "", seen);
        json_decref(w);
    }
    check_documented(schema, "", seen);
    CHECK(json_object_size(seen) > 50);
    json_decref(seen);
}

TEST(enums_and_ranges_match_openapi) {
    const json_t *schema = jobspec_schema();
    REQUIRE(schema);
    int n_enum = 0, n_bound = 0;
    check_values(schema, "", &n_enum, &n_bound);
    printf("    %d enum values, %d bounds checked\n", n_enum, n_bound);
    CHECK(n_enum >= 20 && n_bound >= 5);
    json_decref(g_doc);
    g_doc = NULL;
}
