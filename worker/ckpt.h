/* ckpt: crash-safe checkpoints of a training run.
 *
 * A checkpoint is run_dir/checkpoints/checkpoint-<step>/ holding the adapter
 * (PEFT files, so any checkpoint is also a usable adapter), optimizer.safetensors
 * (the AdamW moments and any other f32 state, by name) and state.json (step,
 * data position, anything else the trainer needs to continue bit-exactly).
 * It is written under a temporary name and counts only once its DONE marker
 * exists and it has been renamed into place (llm.c's rule), so a run killed
 * mid-write resumes from the previous one. */
#ifndef LR_CKPT_H
#define LR_CKPT_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include "common/err.h"

typedef struct ckpt_tensor {
    const char *name;
    float *data;   /* save: read from; load: filled in place */
    size_t n;
} ckpt_tensor;

/* Writes checkpoint-<step> and then keeps only the newest `keep` complete
 * checkpoints (keep 0: all). On success *dir_out (if not NULL) gets its path. */
typedef int (*ckpt_write_fn)(void *ud, const char *dir, lr_err *err);
/* write_adapter writes the PEFT adapter files into the directory it is given. */
int ckpt_save(const char *run_dir, int64_t step, ckpt_write_fn write_adapter, void *ud, const ckpt_tensor *extra,
              int n_extra, const json_t *state, int keep, char *dir_out, size_t dir_cap, lr_err *err) LR_WARN_UNUSED;

/* Finds the newest complete checkpoint: returns 1 and fills dir/step, 0
 * when there is none, -1 on error. */
int ckpt_latest(const char *run_dir, char *dir, size_t cap, int64_t *step, lr_err *err) LR_WARN_UNUSED;

/* Reads a checkpoint's extra tensors (each must exist with exactly n
 * elements) and state.json (caller decrefs); its adapter files are in dir. */
int ckpt_load(const char *dir, ckpt_tensor *extra, int n_extra, json_t **state, lr_err *err) LR_WARN_UNUSED;

/* Lists complete checkpoints oldest first: steps[] (at most cap); returns the count or -1. */
int ckpt_list(const char *run_dir, int64_t *steps, int cap, lr_err *err) LR_WARN_UNUSED;

#endif
