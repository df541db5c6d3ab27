/* Fuzz target: a dataset upload (JSONL or CSV) through data_validate, and
 * the same bytes through data_parse, which must agree with it. */
#include <stdint.h>
#include <stdlib.h>

#include "formats/data.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    lr_err err = {0};
    data_report r;
    int rc = data_validate((const char *)data, size, &r, &err);
    if (r.n_errors > DATA_MAX_ERRORS || r.n_invalid > r.n_rows || (rc == 0 && r.n_invalid)) abort();
    data_file f;
    int rp = data_parse((const char *)data, size, &f, &err);
    if (rp != rc || (rp == 0 && (int64_t)f.n_rows != r.n_rows)) abort(); /* one parser, two callers */
    for (size_t i = 0; rp == 0 && i < f.n_rows; i++)
        if (f.rows[i].n_msgs + f.rows[i].n_chosen + f.rows[i].n_rejected < 1) abort();
    if (rp == 0) data_file_free(&f);
    return 0;
}
