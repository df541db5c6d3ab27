/* proto/jobspec.c's table (jobspec_schema_json, GET /v1/jobspec) against
 * proto/openapi.yaml's JobSpec, and both against the parser.
 *
 * - table_matches_openapi walks the table: each row's property must be in
 *   openapi.yaml at its path with the same type, enum, range, length,
 *   nullable, default and description (numbers compared by value), required
 *   where the row is; and each openapi field must be a row. An edit to either
 *   side alone fails here; the message prints the property the table has as
 *   JSON, which YAML reads, ready to paste.
 * - fields_and_types_match_openapi: what jobspec_to_json writes for each
 *   method is documented with its type, and every documented field is
 *   written for some method.
 * - ranges_and_enums_are_the_parsers: each enum value accepted and another
 *   refused, each bound accepted and one step past it refused.
 * - rows_of_an_object_are_consecutive: what the parser's walk assumes.
 * - defaults_are_accepted: a spec giving every field its default parses to
 *   the spec with none given. */
#include "tests/unit/test.h"

#include <math.h>

#include "common/buf.h"
#include "proto/jobspec.h"

static json_t *g_doc; /* openapi.yaml */

static const json_t *openapi_jobspec(void) {
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

/* The property at dotted path p of object schema o, and its parent object. */
static const json_t *prop_at(const json_t *o, const char *p, const json_t **parent) {
    char buf[256];
    snprintf(buf, sizeof buf, "%s", p);
    char *save = NULL, *tok = strtok_r(buf, ".", &save);
    for (char *next; tok && (next = strtok_r(NULL, ".", &save)); tok = next)
        o = json_object_get(json_object_get(o, "properties"), tok);
    *parent = o;
    return tok ? json_object_get(json_object_get(o, "properties"), tok) : NULL;
}

/* json_equal, but 1e6 (YAML) equals 1000000.0 (the table) */
static int same(const json_t *a, const json_t *b) {
    if (json_is_number(a) && json_is_number(b)) return json_number_value(a) == json_number_value(b);
    if (json_typeof(a) != json_typeof(b)) return 0;
    if (json_is_object(a)) {
        if (json_object_size(a) != json_object_size(b)) return 0;
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)a, k, v) {
            const json_t *w = json_object_get(b, k);
            if (!w || !same(v, w)) return 0;
        }
        return 1;
    }
    if (json_is_array(a)) {
        if (json_array_size(a) != json_array_size(b)) return 0;
        for (size_t i = 0; i < json_array_size(a); i++)
            if (!same(json_array_get(a, i), json_array_get(b, i))) return 0;
        return 1;
    }
    return json_equal(a, b);
}

/* A row as its openapi property: the row less the keys only GET /v1/jobspec has. */
static json_t *as_property(const json_t *row) {
    json_t *p = json_deep_copy(row);
    static const char *const served[] = {"path", "required", "auto", "form", "method"};
    for (size_t i = 0; i < sizeof served / sizeof served[0]; i++) json_object_del(p, served[i]);
    return p;
}

static int in_array(const json_t *a, const char *s) {
    size_t i;
    const json_t *x;
    json_array_foreach(a, i, x) if (json_is_string(x) && !strcmp(json_string_value(x), s)) return 1;
    return 0;
}

/* Every leaf openapi documents is a row; every object refuses unknown keys. */
static void check_documented(const json_t *schema, const char *path, const json_t *rows, int *n_leaves) {
    CHECKF(json_is_false(json_object_get(schema, "additionalProperties")),
           "openapi.yaml: JobSpec%s%s lacks additionalProperties: false (the parser refuses unknown fields)",
           *path ? "." : "", path);
    const char *k;
    json_t *ps;
    json_object_foreach(json_object_get(schema, "properties"), k, ps) {
        char p[256];
        snprintf(p, sizeof p, "%s%s%s", path, *path ? "." : "", k);
        if (json_object_get(ps, "properties")) {
            check_documented(ps, p, rows, n_leaves);
            continue;
        }
        ++*n_leaves;
        CHECKF(json_object_get(rows, p) != NULL, "openapi.yaml documents %s; proto/jobspec.c's table has no such row", p);
    }
}

TEST(table_matches_openapi) {
    const json_t *api = openapi_jobspec();
    REQUIRE(api);
    json_t *schema = jobspec_schema_json();
    REQUIRE(schema);
    json_t *rows = json_object();
    size_t i;
    json_t *row;
    json_array_foreach(json_object_get(schema, "fields"), i, row) {
        const char *path = json_string_value(json_object_get(row, "path"));
        json_object_set(rows, path, row);
        const json_t *parent;
        const json_t *have = prop_at(api, path, &parent);
        json_t *want = as_property(row);
        if (!have || !same(want, have)) {
            char *w = json_dumps(want, JSON_COMPACT);
            CHECKF(0, "%s: proto/openapi.yaml %s; the table has %s", path, have ? "differs" : "lacks it", w);
            free(w);
        }
        const char *leaf = strrchr(path, '.') ? strrchr(path, '.') + 1 : path;
        int req = json_is_true(json_object_get(row, "required"));
        CHECKF(req == in_array(json_object_get(parent, "required"), leaf), "%s: required in %s but not in %s", path,
               req ? "the table" : "openapi.yaml", req ? "openapi.yaml" : "the table");
        json_decref(want);
    }
    int n_leaves = 0;
    check_documented(api, "", rows, &n_leaves);
    printf("    %zu rows, %d openapi fields\n", json_object_size(rows), n_leaves);
    CHECK_EQ_INT(json_object_size(rows), n_leaves);
    CHECK(n_leaves > 60);
    json_decref(rows);
    json_decref(schema);
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
        if (first) CHECKF(type_ok(ps, v), "%s: jobspec writes a value openapi.yaml's type refuses", p);
        if (json_is_object(v) && json_object_get(ps, "properties")) check_written(ps, v, p, seen);
    }
}

static void check_all_written(const json_t *schema, const char *path, const json_t *seen) {
    const char *k;
    json_t *ps;
    json_object_foreach(json_object_get(schema, "properties"), k, ps) {
        char p[256];
        snprintf(p, sizeof p, "%s%s%s", path, *path ? "." : "", k);
        CHECKF(json_object_get(seen, p) != NULL, "openapi.yaml documents %s; jobspec never writes it", p);
        if (json_object_get(ps, "properties")) check_all_written(ps, p, seen);
    }
}

TEST(fields_and_types_match_openapi) {
    const json_t *schema = openapi_jobspec();
    REQUIRE(schema);
    json_t *seen = json_object();
    static const char *const methods[] = {"sft", "kl_sft", "dpo", "full_sft", "eval"};
    for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++) {
        json_t *w = written(methods[i]);
        CHECKF(w != NULL, "a minimal %s spec does not parse", methods[i]);
        if (w) check_written(schema, w, "", seen);
        json_decref(w);
    }
    check_all_written(schema, "", seen);
    CHECK(json_object_size(seen) > 50);
    json_decref(seen);
}

/* The base spec of method with v set at dotted path p. */
static json_t *spec_with(const char *method, const char *p, json_t *v) {
    json_t *doc = base_spec(method), *cur = doc;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", p);
    char *save = NULL, *tok = strtok_r(buf, ".", &save);
    for (char *next; (next = strtok_r(NULL, ".", &save)); tok = next) {
        json_t *c = json_object_get(cur, tok);
        if (!c) json_object_set_new(cur, tok, c = json_object());
        cur = c;
    }
    json_object_set_new(cur, tok, v);
    return doc;
}

/* Whether the parser takes value v (stolen) at path p, under the row's method. */
static int accepts(const json_t *row, const char *p, json_t *v) {
    const char *m = json_string_value(json_object_get(row, "method"));
    json_t *doc = spec_with(m ? m : "sft", p, v);
    jobspec s;
    lr_err e = {0};
    int ok = jobspec_from_json(doc, &s, &e) == 0;
    json_decref(doc);
    return ok;
}

TEST(ranges_and_enums_are_the_parsers) {
    json_t *schema = jobspec_schema_json();
    REQUIRE(schema);
    int n_enum = 0, n_bound = 0;
    size_t i;
    json_t *row;
    json_array_foreach(json_object_get(schema, "fields"), i, row) {
        const char *p = json_string_value(json_object_get(row, "path"));
        /* "auto" and the custom rows: the first branch is the plain form */
        const json_t *one = json_object_get(row, "oneOf"), *ps = one ? json_array_get(one, 0) : row;
        const json_t *en = json_object_get(ps, "enum"), *x;
        size_t k;
        json_array_foreach(en, k, x) {
            CHECKF(accepts(row, p, json_deep_copy(x)), "%s: the value '%s' is refused", p, json_string_value(x));
            ++n_enum;
        }
        if (en) CHECKF(!accepts(row, p, json_string("no-such-value")), "%s: a value outside the enum is accepted", p);
        if (json_is_true(json_object_get(row, "auto")))
            CHECKF(accepts(row, p, json_string("auto")), "%s: \"auto\" is refused", p);
        const char *t = json_string_value(json_object_get(ps, "type"));
        int integer = t && !strcmp(t, "integer");
        const json_t *lo = json_object_get(ps, "minimum"), *hi = json_object_get(ps, "maximum");
        int open = json_is_true(json_object_get(ps, "exclusiveMinimum"));
        if (lo) {
            double b = json_number_value(lo);
            if (open) {
                CHECKF(!accepts(row, p, json_real(b)), "%s: the exclusive minimum %g is accepted", p, b);
                CHECKF(accepts(row, p, json_real(nextafter(b, INFINITY))), "%s: just above %g is refused", p, b);
            } else {
                CHECKF(accepts(row, p, integer ? json_integer((json_int_t)b) : json_real(b)), "%s: the minimum %g is refused",
                       p, b);
                CHECKF(!accepts(row, p, integer ? json_integer((json_int_t)b - 1) : json_real(nextafter(b, -INFINITY))),
                       "%s: below the minimum %g is accepted", p, b);
            }
            ++n_bound;
        }
        if (hi) {
            /* integers as integers: 2^63-1 does not survive a double */
            json_int_t ib = json_integer_value(hi);
            double b = json_number_value(hi);
            CHECKF(accepts(row, p, integer ? json_integer(ib) : json_real(b)), "%s: the maximum %g is refused", p, b);
            if (!integer || ib < 0x7fffffffffffffffLL)
                CHECKF(!accepts(row, p, integer ? json_integer(ib + 1) : json_real(nextafter(b, INFINITY))),
                       "%s: above the maximum %g is accepted", p, b);
            ++n_bound;
        }
    }
    printf("    %d enum values, %d bounds checked\n", n_enum, n_bound);
    CHECK(n_enum >= 25 && n_bound >= 60);
    json_decref(schema);
}

/* The objects row path p is inside ("eval", "eval.format" for
 * eval.format.regex), set to true in o. */
static void objects_of(const char *p, json_t *o) {
    for (const char *d = strchr(p, '.'); d; d = strchr(d + 1, '.')) {
        char up[256];
        snprintf(up, sizeof up, "%.*s", (int)(d - p), p);
        json_object_set_new(o, up, json_true());
    }
}

/* The parser walks an object's rows as one run: a row put away from its
 * object's others would make that object's keys unknown to the first run. */
TEST(rows_of_an_object_are_consecutive) {
    json_t *schema = jobspec_schema_json();
    REQUIRE(schema);
    json_t *closed = json_object(), *before = json_object(); /* runs ended; the previous row's objects */
    size_t i;
    json_t *row;
    json_array_foreach(json_object_get(schema, "fields"), i, row) {
        const char *p = json_string_value(json_object_get(row, "path")), *k;
        json_t *now = json_object(), *x;
        objects_of(p, now);
        json_object_foreach(now, k, x) CHECKF(!json_object_get(closed, k), "%s: a row of %s apart from its others", p, k);
        json_object_foreach(before, k, x) if (!json_object_get(now, k)) json_object_set_new(closed, k, json_true());
        json_decref(before);
        before = now;
    }
    CHECK(json_object_size(closed) >= 5);
    json_decref(before);
    json_decref(closed);
    json_decref(schema);
}

TEST(defaults_are_accepted) {
    json_t *schema = jobspec_schema_json();
    REQUIRE(schema);
    static const char *const methods[] = {"sft", "kl_sft", "dpo", "full_sft", "eval"};
    for (size_t m = 0; m < sizeof methods / sizeof methods[0]; m++) {
        json_t *full = base_spec(methods[m]);
        size_t i;
        json_t *row;
        json_array_foreach(json_object_get(schema, "fields"), i, row) {
            const char *p = json_string_value(json_object_get(row, "path")), *only;
            const json_t *d = json_object_get(row, "default");
            only = json_string_value(json_object_get(row, "method"));
            if (!d || !strcmp(p, "method.type") || (only && strcmp(only, methods[m]))) continue;
            json_t *one = spec_with(methods[m], p, json_deep_copy(d));
            jobspec s;
            lr_err e = {0};
            CHECKF(jobspec_from_json(one, &s, &e) == 0, "%s: its default is refused: %s", p, e.msg);
            json_decref(one);
            /* the same, all at once (what the base spec gives stays) */
            json_t *cur = full;
            char buf[256];
            snprintf(buf, sizeof buf, "%s", p);
            char *save = NULL, *tok = strtok_r(buf, ".", &save);
            for (char *next; (next = strtok_r(NULL, ".", &save)); tok = next) {
                json_t *c = json_object_get(cur, tok);
                if (!c) json_object_set_new(cur, tok, c = json_object());
                cur = c;
            }
            if (!json_object_get(cur, tok)) json_object_set_new(cur, tok, json_deep_copy(d));
        }
        json_t *bare = base_spec(methods[m]);
        jobspec a, b;
        lr_err e = {0};
        REQUIRE(jobspec_from_json(full, &a, &e) == 0);
        REQUIRE(jobspec_from_json(bare, &b, &e) == 0);
        json_t *ja = jobspec_to_json(&a), *jb = jobspec_to_json(&b);
        CHECKF(json_equal(ja, jb), "%s: a spec of every default differs from one of none", methods[m]);
        json_decref(ja);
        json_decref(jb);
        json_decref(full);
        json_decref(bare);
    }
    json_decref(schema);
    json_decref(g_doc);
    g_doc = NULL;
}
