/* bpe_train: learns BPE merges from words given as symbol sequences (the
 * counting core of tok_train_bytelevel, independent of any text format).
 * Symbols 0..n_base-1 are the base alphabet; merge k creates symbol
 * n_base + k. Each step merges the most frequent adjacent pair, ties going
 * to the smallest (left, right) pair, so the result is deterministic. */
#ifndef LR_BPE_TRAIN_H
#define LR_BPE_TRAIN_H

#include <stddef.h>
#include <stdint.h>
#include "common/err.h"

typedef struct {
    int32_t left, right;
} bpe_pair;

typedef struct {
    int32_t *sym;   /* the word's symbols; rewritten in place as merges apply */
    int32_t len;
    int64_t count;  /* how often the word occurs */
} bpe_word;

/* Learns up to n_merges merges (fewer when no pair occurs any more) into
 * *merges (caller frees), their number into *n_out. */
int bpe_train(bpe_word *words, size_t n_words, int32_t n_base, int n_merges, bpe_pair **merges, int *n_out,
              lr_err *err) LR_WARN_UNUSED;

#endif
