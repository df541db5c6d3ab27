/* corpus: a few KB of plain English embedded in the binary, on which
 * `lora-worker mkmodel` trains the byte-level BPE of a self-contained random
 * model (so that tests and demos need no downloaded tokenizer). */
#ifndef LR_CORPUS_H
#define LR_CORPUS_H

#include <stddef.h>

/* The text (NUL-terminated) and its length in bytes. */
const char *corpus_text(size_t *len);

#endif
