/* Fuzz target: a job spec as YAML or JSON text, then its validation, and a
 * --set assignment built from the same bytes. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto/jobspec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    lr_err err = {0};
    json_t *doc = NULL;
    if (jobspec_parse_text((const char *)data, size, &doc, &err) == 0) {
        jobspec s;
        if (jobspec_from_json(doc, &s, &err) == 0) {
            json_t *back = jobspec_to_json(&s);
            jobspec t;
            if (jobspec_from_json(back, &t, &err) != 0) abort(); /* what we write we must read */
            json_decref(back);
        }
        char *set = strndup((const char *)data, size > 200 ? 200 : size);
        if (set && json_is_object(doc) && jobspec_set(doc, set, &err) == 0) {
            jobspec u;
            (void)jobspec_from_json(doc, &u, &err);
        }
        free(set);
        json_decref(doc);
    }
    return 0;
}
