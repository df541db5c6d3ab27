/* batch: from a dataset's rows to padded micro-batches (the worker only;
 * the rows themselves are formats/data.h, which lorad shares).
 *
 * Building (data_build): each row rendered by the chat template (formats/chat.h)
 * to ids + labels; cut to max_seq_len keeping the start (rows left with no
 * trained token are dropped and counted in a warning); exact duplicates
 * (same ids and labels) dropped, the first kept; validation rows either from
 * an explicit file or split off each training file: ceil(n * val_ratio) rows
 * (at least 1, at most n-1; none when n < 2) chosen by the seed.
 *
 * Mixing several training files: an epoch holds each file's rows weight
 * times over. Weight 2 = every row twice; 0.5 = a random half of the rows,
 * a different half each epoch (sampled without replacement within the
 * epoch); 1.5 = every row once plus a random half again. The whole epoch is
 * then shuffled. All randomness comes from (seed, epoch), so epoch e's order
 * is the same on every run and resuming needs only the position.
 *
 * Batching: micro-batches of B examples, right-padded to the longest row in
 * the batch (pad id: the tokenizer's EOS, else 0; labels -100 on padding).
 * With packing, examples are laid end to end in rows of exactly max_seq_len
 * tokens (an example never split; a row is closed when the next one does not
 * fit, and its tail padded). As in TRL's packing=True, attention is NOT
 * masked between examples of a row and positions run on through the row:
 * each example sees the ones before it; its first token is untrained, so no
 * loss crosses the boundary. DPO batches hold B pairs as 2B rows: the B
 * chosen rows, then the B rejected rows (TRL's concatenated batch); labels
 * cover the answer only; DPO does not pack. */
#ifndef LR_BATCH_H
#define LR_BATCH_H

#include <stddef.h>
#include <stdint.h>
#include "common/err.h"
#include "formats/chat.h"
#include "formats/data.h"
#include "proto/jobspec.h"

/* A rendered row: ids/labels (DPO: the chosen answer), and for DPO the
 * rejected one. file is the index of its training file (-1: validation
 * file); line its line there. */
typedef struct data_example {
    int32_t *ids, *labels;
    int n;
    int32_t *rej_ids, *rej_labels;
    int rej_n;
    int file, line;
} data_example;

typedef struct data_opts {
    const char *const *files;    /* training files */
    const double *weights;       /* one per file; NULL = all 1 */
    int n_files;
    const char *validation_file; /* NULL: split off by val_ratio */
    double val_ratio;
    uint64_t seed;
    int max_seq_len;
    int dpo;                     /* method dpo: rows must be DPO rows */
    const char *system_prompt;   /* NULL/"": none */
    /* Warnings for the job log (dropped, truncated, duplicate rows). */
    void (*warn)(void *ud, const char *msg);
    void *ud;
} data_opts;

typedef struct data_set {
    int dpo;
    int32_t pad_id;
    data_example *train;          /* grouped by file: file f is [file_end[f-1], file_end[f]) */
    size_t n_train;
    data_example *val;
    size_t n_val;
    int n_files;
    size_t file_end[JOBSPEC_MAX_FILES];
    double weight[JOBSPEC_MAX_FILES];
    int64_t n_truncated, n_dropped, n_duplicates;
} data_set;

int data_build(const chat *c, const data_opts *o, data_set *ds, lr_err *err) LR_WARN_UNUSED;
void data_set_free(data_set *ds);

/* Where an epoch stands: the next example is order[index] of epoch's
 * order. Saved in checkpoints; data_seek resumes there exactly. */
typedef struct data_pos {
    int64_t epoch;
    int64_t index;
} data_pos;

typedef enum { DATA_TRAIN, DATA_VAL } data_split;

typedef struct data_loader {
    const data_set *ds;
    data_split split;
    int batch_size, packing, max_seq_len;
    uint64_t seed;
    data_pos pos;
    int64_t *order;      /* the current epoch's example order */
    int64_t n_order, order_epoch;
} data_loader;

typedef struct data_batch {
    int rows, T;         /* rows x T tokens (DPO: 2 * pairs rows) */
    int32_t *ids;        /* rows*T, row-major */
    int32_t *labels;     /* rows*T, -100 where untrained or padding */
    int *lens;           /* real tokens per row */
    int n_examples;      /* examples (DPO: pairs) in the batch */
    int64_t n_tokens, n_targets; /* real tokens, trained labels */
    size_t cap;
} data_batch;

/* Train: shuffled, weighted order per epoch from seed. Val: file order,
 * weights ignored, the same every epoch. packing needs SFT. */
int data_loader_init(data_loader *L, const data_set *ds, data_split split, int batch_size,
                     int packing, int max_seq_len, uint64_t seed, lr_err *err) LR_WARN_UNUSED;
void data_loader_free(data_loader *L);
/* Fills b with the next micro-batch: returns 1, or 0 at the end of the epoch
 * (no batch; the position moves to the start of the next epoch), -1 on
 * error. The last batch of an epoch may hold fewer examples. */
int data_next(data_loader *L, data_batch *b, lr_err *err) LR_WARN_UNUSED;
/* Micro-batches that epoch will produce (with packing it depends on the
 * order). -1 on error. */
int64_t data_epoch_batches(data_loader *L, int64_t epoch);
data_pos data_tell(const data_loader *L);
void data_seek(data_loader *L, data_pos pos);
void data_batch_free(data_batch *b);

#endif
