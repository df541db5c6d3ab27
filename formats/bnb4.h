/* bnb4: the tensors in which transformers saves a bitsandbytes 4-bit weight
 * (Linear4bit / Params4bit with QuantState.as_dict(packed=True)):
 *   NAME                                  U8 [ceil(n/2), 1] packed codes
 *   NAME.absmax                           F32 [blocks], or U8 with double quantization
 *   NAME.quant_map                        F32 [16] the code book
 *   NAME.nested_absmax, .nested_quant_map F32 [ceil(blocks/256)], F32 [256] (double quantization)
 *   NAME.quant_state.bitsandbytes__nf4    U8: JSON {quant_type, blocksize, dtype, shape [out, in],
 *                                         nested_blocksize, nested_dtype, nested_offset}
 * (GPT-2's Conv1D weights as [out, in], transposed, as transformers
 * quantizes them). model.c loads them as they are; merge.c dequantizes them. */
#ifndef LR_BNB4_H
#define LR_BNB4_H

#include <stdint.h>
#include "common/err.h"
#include "kernels/quant.h"
#include "formats/safetensors.h"

/* Looks for the 4-bit form of weight name. *found = 0 when s stores it
 * otherwise; else q describes it with its arrays pointing into s (host
 * memory, where f32 arrays need not be 4-byte aligned: copy them, with
 * memcpy, before reading them as floats) and codes is the codes tensor. want_out, want_in > 0 are checked
 * against the stored shape; 0 takes the stored one. Its blocksize must be
 * 64 (256 for the scales). */
int bnb4_find(const st_set *s, const char *name, int64_t want_out, int64_t want_in, kq_weight *q,
              const st_tensor **codes, int *found, lr_err *err) LR_WARN_UNUSED;

/* 1 when name is one of the tensors that come with a 4-bit weight besides
 * its codes (".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map",
 * ".quant_state.bitsandbytes__*"). */
int bnb4_is_side_tensor(const char *name);

/* The dtype named by a quant_state or torch_dtype string ("bfloat16",
 * "float16", "float32"); F32 for anything else. */
st_dtype bnb4_dtype(const char *name);

#endif
