/* safetensors: read (mmap) and write the safetensors format.
 *
 * Untrusted input: the header length, JSON header, dtypes, shapes and offsets
 * are all checked against the file size before any tensor is touched, and a
 * truncated or overlapping file is a clear error, never a crash. The checks
 * are those of the reference (Rust) implementation: the header is at most
 * ST_MAX_HEADER bytes of JSON, each tensor's byte length equals
 * numel * dtype size (overflow-checked), and the tensors tile the data area
 * exactly (no gap, no overlap, nothing after the last one).
 *
 * Tensors are listed sorted by name (st_at). Their data pointers point into
 * the mapping and are naturally aligned for files written by HF or by this
 * writer (8-byte padded header, larger dtypes first); st_to_f32 copies
 * through memcpy and so accepts any alignment. */
#ifndef LR_SAFETENSORS_H
#define LR_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>
#include "common/err.h"

#define ST_MAX_HEADER (100u << 20) /* the format's own limit is 100 MB */
#define ST_MAX_DIMS 8

typedef enum {
    ST_F32, ST_F16, ST_BF16, ST_F64, ST_I32, ST_I64, ST_I8, ST_U8, ST_BOOL,
    ST_I16, ST_U16, ST_U32, ST_U64, ST_F8_E4M3, ST_F8_E5M2,
} st_dtype;

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
/* Parses a safetensors image already in memory (not copied: data must outlive
 * the st_file). name is used in error messages. */
int st_open_mem(const void *data, size_t len, const char *name, st_file **out,
                lr_err *err) LR_WARN_UNUSED;
void st_close(st_file *f);
size_t st_count(const st_file *f);
const st_tensor *st_at(const st_file *f, size_t i);
const st_tensor *st_find(const st_file *f, const char *name); /* NULL if absent */
/* The __metadata__ value for key, or NULL. */
const char *st_metadata(const st_file *f, const char *key);
size_t st_dtype_size(st_dtype dt);
const char *st_dtype_name(st_dtype dt); /* "F32", "BF16", ... */
/* Parses a dtype name as written in headers; -1 if unknown. */
int st_dtype_parse(const char *name, st_dtype *out);
int64_t st_numel(const st_tensor *t);

/* Copies a tensor of any float dtype (F32, F16, BF16, F64, F8_*) into f32;
 * n must equal numel. Integer tensors are an error. */
int st_to_f32(const st_tensor *t, float *dst, size_t n, lr_err *err) LR_WARN_UNUSED;

/* A model's weights: one file or the shards named by model.safetensors.index.json. */
typedef struct st_set st_set;
int st_set_open_dir(const char *dir, st_set **out, lr_err *err) LR_WARN_UNUSED;
void st_set_close(st_set *s);
const st_tensor *st_set_find(const st_set *s, const char *name);
/* Gives back the memory of t's pages (the whole pages inside it) once its
 * data have been copied out, so that loading a model does not keep the
 * file's pages resident next to their converted copy; reading t again reads
 * the file again. Nothing for a set that is not mmap-ed. */
void st_set_release(const st_set *s, const st_tensor *t);
/* All tensors of the set sorted by name (shards merged; a name in two shards
 * is an error at open). */
size_t st_set_count(const st_set *s);
const st_tensor *st_set_at(const st_set *s, size_t i);

/* Writer: collects tensors (copying nothing until write), then writes the
 * file atomically (temporary file, fsync, rename) in the byte layout of the
 * reference implementation: "__metadata__" first, then the tensors ordered by
 * dtype size (largest first, for alignment) and name, header padded with
 * spaces to a multiple of 8. Files of one dtype thus have sorted keys, as
 * PEFT and transformers write them. */
typedef struct st_writer st_writer;
st_writer *st_writer_new(void);
void st_writer_free(st_writer *w);
int st_writer_add(st_writer *w, const char *name, st_dtype dt, int ndim, const int64_t *shape,
                  const void *data, lr_err *err) LR_WARN_UNUSED; /* data must live until write */
int st_writer_meta(st_writer *w, const char *key, const char *value, lr_err *err) LR_WARN_UNUSED;
int st_writer_write(st_writer *w, const char *path, lr_err *err) LR_WARN_UNUSED;

/* Streaming writer for files larger than memory: declare every tensor with
 * st_writer_add (data may be NULL), then st_stream_begin writes the header
 * and the caller appends each tensor's bytes in file order (st_stream_next
 * names the tensor expected), in as many st_stream_put calls as it likes.
 * st_stream_finish checks that every byte came, fsyncs and renames into
 * place; st_stream_abort (or a failed put/finish) removes the temporary.
 * The st_writer must outlive the stream. */
typedef struct st_stream st_stream;
int st_stream_begin(st_writer *w, const char *path, st_stream **out, lr_err *err) LR_WARN_UNUSED;
/* The tensor whose bytes come next, or NULL when all are written. */
const st_tensor *st_stream_next(const st_stream *s);
int st_stream_put(st_stream *s, const void *data, size_t nbytes, lr_err *err) LR_WARN_UNUSED;
int st_stream_finish(st_stream *s, lr_err *err) LR_WARN_UNUSED; /* frees s */
void st_stream_abort(st_stream *s);                              /* frees s */

/* bf16/f16 <-> f32 conversions (round to nearest even). */
float st_bf16_to_f32(uint16_t h);
uint16_t st_f32_to_bf16(float f);
float st_f16_to_f32(uint16_t h);
uint16_t st_f32_to_f16(float f);

#endif
