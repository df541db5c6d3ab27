/* fmt_check: model output (arbitrary bytes, invalid UTF-8 included) under
 * section, bullet, final-section and regex rules. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "worker/fmtcheck.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static fmt_checker *c[2];
    if (!c[0]) {
        jobspec_format f;
        lr_err err = {0};
        memset(&f, 0, sizeof f);
        const char *names[] = {"Summary", "Key Points", "Limitation", "Follow-up Question"};
        for (int i = 0; i < 4; i++) {
            snprintf(f.sections[i].name, sizeof f.sections[i].name, "%s", names[i]);
            f.sections[i].bullets = i == 1 ? 3 : -1;
        }
        snprintf(f.sections[3].ends_with, sizeof f.sections[3].ends_with, "?");
        f.n_sections = 4;
        f.nothing_after = 1;
        if (fmt_new(&f, &c[0], &err)) return 0;
        f.in_order = 1, f.exact_headers = 1;
        snprintf(f.regex, sizeof f.regex, "(?s)\\ASummary:.*(?:- .+\\n){3}");
        if (fmt_new(&f, &c[1], &err)) return 0;
    }
    char why[160];
    for (int i = 0; i < 2; i++) (void)fmt_check(c[i], (const char *)data, size, why, sizeof why);
    return 0;
}
