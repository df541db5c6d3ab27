/* upload: a dataset upload as its bytes arrive.
 *
 * The body (multipart/form-data with a part named "file", or the raw file)
 * is written to a temporary file under the data directory's tmp/ and
 * validated row by row on the way (worker/data.h's stream), so lorad never
 * holds an upload in memory: each upload costs one line or CSV record and a
 * 256 KiB write buffer at most. Once the body has ended the caller either
 * takes the file (upload_take: renames it into place) or frees the upload,
 * which removes it. */
#ifndef LR_UPLOAD_H
#define LR_UPLOAD_H

#include <stdint.h>
#include "common/err.h"
#include "formats/data.h"

typedef struct upload upload;

/* tmp_dir: where the temporary file goes (same filesystem as the datasets);
 * content_type may be NULL; filename: the name to keep when the body is raw
 * (multipart uses the part's filename). */
int upload_open(const char *tmp_dir, const char *content_type, const char *filename, upload **out,
                lr_err *err) LR_WARN_UNUSED;
/* Never fails the request by itself: a problem is recorded and the rest of
 * the body is discarded, so the client gets the answer after sending. */
void upload_feed(upload *u, const char *data, size_t len);
/* The body has ended: 0 and the report when the dataset is valid; -1 with
 * err (and the report, for per-row errors) otherwise. */
int upload_end(upload *u, data_report *r, lr_err *err) LR_WARN_UNUSED;
uint64_t upload_bytes(const upload *u);
const char *upload_filename(const upload *u);
/* The multipart part named "purpose" (at most 31 bytes), "" when absent. */
const char *upload_purpose(const upload *u);
/* Moves the finished file to path (fsync'd, atomic). */
int upload_take(upload *u, const char *path, lr_err *err) LR_WARN_UNUSED;
void upload_free(upload *u);

/* Removes temporary files that a crash left in tmp_dir. */
void upload_sweep(const char *tmp_dir);

#endif
