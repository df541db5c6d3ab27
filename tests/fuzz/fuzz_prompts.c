/* prompts_parse: prompt rows (JSONL in every accepted form) from arbitrary bytes. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "worker/prompts.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    prompt_set ps;
    lr_err err = {0};
    if (prompts_parse((const char *)data, size, &ps, &err) == 0) {
        size_t sum = 0;
        for (size_t i = 0; i < ps.n; i++) {
            for (int k = 0; k < ps.rows[i].n_msgs; k++) sum += ps.rows[i].msgs[k].len + (size_t)ps.rows[i].msgs[k].role;
            if (ps.rows[i].reference) sum += ps.rows[i].ref_len + (unsigned char)ps.rows[i].reference[0];
            sum += strlen(ps.rows[i].id);
        }
        (void)sum;
        prompts_free(&ps);
    }
    return 0;
}
