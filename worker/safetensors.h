/* safetensors: read (mmap) and write the safetensors format.
 *
 * Untrusted input: the header length, JSON header, dtypes, shapes and offsets
 * are all checked against the file size before any tensor is touched, and a
 * truncated or overlapping file is a clear error, never a crash. */
#ifndef LR_SAFETENSORS_H
#define LR_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>
#include "common/err.h"

#define ST_MAX_HEADER (100u << 20) /* the format's own limit is 100 MB */
#define ST_MAX_DIMS 8

typedef enum { ST_F32, ST_F16, ST_BF16, ST_F64, ST_I32, ST_I64, ST_I8, ST_U8, ST_BOOL } st_dtype;

typedef struct st_tensor {
    char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const void *data; /* points into the mapping */
    size_t nbytes;
} st_tensor;

typedef struct st_file st_file; /* one mmap-ed file */

int st_open(const char *path, st_file **out, lr_err *err) LR_WARN_UNUSED;
void st_close(st_file *f);
size_t st_count(const st_file *f);
const st_tensor *st_at(const st_file *f, size_t i);
const st_tensor *st_find(const st_file *f, const char *name); /* NULL if absent */
/* The __metadata__ value for key, or NULL. */
const char *st_metadata(const st_file *f, const char *key);
size_t st_dtype_size(st_dtype dt);
const char *st_dtype_name(st_dtype dt);
int64_t st_numel(const st_tensor *t);

/* Copies a tensor of any float dtype into f32 (n = numel). */
int st_to_f32(const st_tensor *t, float *dst, size_t n, lr_err *err) LR_WARN_UNUSED;

/* A model's weights: one file or the shards named by model.safetensors.index.json. */
typedef struct st_set st_set;
int st_set_open_dir(const char *dir, st_set **out, lr_err *err) LR_WARN_UNUSED;
void st_set_close(st_set *s);
const st_tensor *st_set_find(const st_set *s, const char *name);

/* Writer: collects tensors (copying nothing until write), then writes the
 * file atomically with keys sorted, as PEFT and transformers do. */
typedef struct st_writer st_writer;
st_writer *st_writer_new(void);
void st_writer_free(st_writer *w);
int st_writer_add(st_writer *w, const char *name, st_dtype dt, int ndim, const int64_t *shape,
                  const void *data, lr_err *err) LR_WARN_UNUSED; /* data must live until write */
int st_writer_meta(st_writer *w, const char *key, const char *value, lr_err *err) LR_WARN_UNUSED;
int st_writer_write(st_writer *w, const char *path, lr_err *err) LR_WARN_UNUSED;

/* bf16/f16 <-> f32 conversions (round to nearest even). */
float st_bf16_to_f32(uint16_t h);
uint16_t st_f32_to_bf16(float f);
float st_f16_to_f32(uint16_t h);
uint16_t st_f32_to_f16(float f);

#endif
