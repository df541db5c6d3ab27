/* merge: a base model and a PEFT adapter into one Hugging Face model folder.
 *
 * Every adapted weight becomes W' = W + scale * B A (scale = alpha / r, or
 * alpha / sqrt(r) with rslora), computed in f32 and stored back in that
 * tensor's dtype; GPT-2's Conv1D weights are stored [in, out], so there
 * the transpose of B A is added. With DoRA (use_dora and magnitude
 * vectors) each output row is then scaled to its magnitude, as PEFT's
 * merge does: W' = m / ||W + scale B A||_row * (W + scale B A). Biases and
 * every other tensor are copied byte for byte.
 *
 * The folder gets model.safetensors (one file, even from a sharded base;
 * written as a stream, one tensor in memory at a time), config.json and the
 * tokenizer and generation files of the base, copied. It loads in
 * transformers as a plain model and in lorad as a base model. */
#ifndef LR_MERGE_H
#define LR_MERGE_H

#include "common/err.h"

/* Writes the merged model into out_dir (created; must not be the model or
 * the adapter folder). *n_merged (may be NULL) receives how many weight
 * matrices changed. */
int merge_adapter(const char *model_dir, const char *adapter_dir, const char *out_dir, int *n_merged,
                  lr_err *err) LR_WARN_UNUSED;

/* Copies config.json and the tokenizer and generation files of a model
 * folder (those present) into another. */
int merge_copy_side_files(const char *from, const char *to, lr_err *err) LR_WARN_UNUSED;

#endif
