/* tok: the tokenizers of Hugging Face models, read from their own files.
 *
 * Two model families, both BPE: byte-level BPE (GPT-2, Llama-3, Qwen2: the
 * text is pre-tokenized by a regex, its bytes mapped to printable characters,
 * then merged) and sentencepiece-style BPE over characters with byte fallback
 * to <0xXX> pieces (Llama-2, Mistral). Sources: tokenizer.json, or the
 * vocab.json + merges.txt pair HF model folders carry (with
 * tokenizer_config.json / special_tokens_map.json for added tokens, BOS/EOS).
 * Encoding is exact against Hugging Face `encode(text, add_special_tokens=False)`.
 * A loaded tok is immutable; encode/decode may run from several threads. */
#ifndef LR_TOK_H
#define LR_TOK_H

#include <stddef.h>
#include <stdint.h>
#include "common/err.h"

typedef struct tok tok;

/* path: a tokenizer.json file, or a directory holding tokenizer.json, or
 * vocab.json + merges.txt (+ tokenizer_config.json / special_tokens_map.json
 * for added tokens, bos/eos). Files are size-limited and parsed defensively. */
int tok_load(const char *path, tok **out, lr_err *err) LR_WARN_UNUSED;

/* The same from the bytes of a tokenizer.json held in memory (fuzzing,
 * tests); no side files are read. */
int tok_load_json(const char *json, size_t len, tok **out, lr_err *err) LR_WARN_UNUSED;

void tok_free(tok *t);

/* allow_special: 1 = added/special tokens written in the text (e.g.
 * "<|im_end|>") become their ids; 0 = the text is plain text. No BOS/EOS is
 * added. Invalid UTF-8 in text is read as U+FFFD (as Python's
 * decode(errors="replace") would), never rejected. Matches Hugging Face
 * `encode(text, add_special_tokens=False)`; with allow_special 0, special
 * tokens are plain text but non-special added tokens still match (HF's
 * split_special_tokens). On success *ids is never NULL; the caller frees it. */
int tok_encode(const tok *t, const char *text, size_t len, int allow_special, int32_t **ids,
               size_t *n, lr_err *err) LR_WARN_UNUSED;

/* Ids back to text (UTF-8 bytes as the model produced them; NUL-terminated,
 * *len excludes the NUL). Special tokens are written as their text. The
 * caller frees *out. */
int tok_decode(const tok *t, const int32_t *ids, size_t n, char **out, size_t *len,
               lr_err *err) LR_WARN_UNUSED;

/* Highest id + 1, added tokens included. */
int tok_vocab_size(const tok *t);
/* The id of a piece as written in the vocabulary (e.g. "Ġthe", "▁the",
 * "<|im_end|>"); -1 when absent. */
int32_t tok_piece_id(const tok *t, const char *piece);
/* The piece of an id (NUL-terminated, owned by t); NULL when out of range. */
const char *tok_id_piece(const tok *t, int32_t id);
/* From tokenizer_config / special_tokens_map / post_processor; -1 when none. */
int32_t tok_bos_id(const tok *t);
int32_t tok_eos_id(const tok *t);
/* 1 when the model's own template prepends BOS (llama2/mistral/llama3), from
 * the post_processor or tokenizer_config's add_bos_token. */
int tok_adds_bos(const tok *t);

/* Trains a small byte-level BPE (GPT-2 pre-tokenizer regex, the 256 byte
 * tokens first) on corpus and writes a complete HF tokenizer.json at path with
 * n_merges merges (fewer when the corpus runs out of pairs) and the given
 * special tokens appended as added tokens (special: true). Deterministic.
 * Used by `lora-worker mkmodel` to make a self-contained random model folder. */
int tok_train_bytelevel(const char *corpus, size_t len, int n_merges, const char *const *specials,
                        int n_specials, const char *path, lr_err *err) LR_WARN_UNUSED;

#endif
