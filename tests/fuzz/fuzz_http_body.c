/* The body of POST /v1/jobs as lorad reads it (JSON, duplicates rejected)
 * through the job schema. Invariants: no crash; a body that validates
 * writes back (jobspec_to_json) to a document that validates again and
 * writes back identically, so what lorad stores is what it would accept. */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto/jobspec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    json_t *o = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, NULL);
    if (!o) return 0;
    static jobspec s1, s2;
    lr_err e = {0};
    if (json_is_object(o) && jobspec_from_json(o, &s1, &e) == 0) {
        json_t *w1 = jobspec_to_json(&s1);
        if (jobspec_from_json(w1, &s2, &e)) abort();
        json_t *w2 = jobspec_to_json(&s2);
        char *a = json_dumps(w1, JSON_SORT_KEYS | JSON_COMPACT), *b = json_dumps(w2, JSON_SORT_KEYS | JSON_COMPACT);
        if (!a || !b || strcmp(a, b)) abort();
        free(a);
        free(b);
        json_decref(w1);
        json_decref(w2);
    }
    json_decref(o);
    return 0;
}
