/* prompts: the rows of a dataset file as generation prompts, each with the
 * reference answer when the row carries one (for `lora-worker generate
 * --prompts` and evaluation jobs).
 *
 * JSONL, one row per line (blank lines skipped), each one of:
 *   "text"                                   a user message
 *   {"messages":[...]}                       a final assistant message is the
 *                                            reference, the rest the prompt
 *   {"prompt": str|messages, "completion"?}  ("chosen" also counts as the
 *                                            reference: DPO rows)
 *   {"instruction", "input"?, "output"?}     Alpaca
 *   {"input", "output"?} / {"question", "answer"?}
 * with an optional "id" (string or number). Unlike training data, the
 * answer may be missing. A .csv file is read as a training dataset
 * (worker/data.h: every row has its answer). */
#ifndef LR_PROMPTS_H
#define LR_PROMPTS_H

#include <stddef.h>
#include "common/err.h"
#include "formats/chat.h"

#define PROMPTS_MAX_ROWS 1000000

typedef struct prompt_row {
    int line;
    char id[64];             /* the row's id, or "line N" */
    const chat_msg *msgs;    /* the conversation before the answer */
    int n_msgs;
    const char *reference;   /* NULL when the row has no answer */
    size_t ref_len;
} prompt_row;

typedef struct prompt_set {
    prompt_row *rows;
    size_t n;
    void *impl; /* what the texts point into */
} prompt_set;

int prompts_load(const char *path, prompt_set *ps, lr_err *err) LR_WARN_UNUSED;
/* The same from a JSONL buffer (tests). */
int prompts_parse(const char *buf, size_t len, prompt_set *ps, lr_err *err) LR_WARN_UNUSED;
void prompts_free(prompt_set *ps);

#endif
