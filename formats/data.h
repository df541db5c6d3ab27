/* data: training datasets: the rows of an uploaded file (lorad and the worker).
 *
 * Files (UTF-8, one form per file):
 *  - JSONL, one object per line (blank lines skipped), in one of the forms
 *      {"messages":[{"role":"system|user|assistant","content":"..."}...]}
 *          every assistant turn is trained; an assistant message may carry
 *          OpenAI's "weight": 0 to leave it untrained
 *      {"instruction","input"?,"output"}        Alpaca
 *      {"prompt","completion"}                  prompt + completion
 *      {"input","output"}                       the same as prompt/completion
 *      {"prompt","chosen","rejected"}           DPO; each a string or a
 *                                               messages list
 *      {"text"}                                 plain text for (continued)
 *                                               pre-training: BOS when the
 *                                               tokenizer adds one, the text,
 *                                               EOS, every token trained and
 *                                               no chat template
 *    Other fields (id, source, ...) are ignored.
 *  - CSV (RFC 4180: quoted fields may hold commas, "" and newlines) with a
 *    header row whose names are matched trimmed and case-insensitively:
 *    prompt,chosen,rejected / instruction,output(,input) / prompt,completion /
 *    question,answer / input,output. A record's line is the line it starts on
 *    (the header is line 1).
 *
 * Building examples from these rows and batching them is the worker's
 * (worker/batch.h); lorad parses and validates rows only.
 */
#ifndef LR_DATA_H
#define LR_DATA_H

#include <stddef.h>
#include <stdint.h>
#include "common/err.h"
#include "formats/chat.h"

#define DATA_MAX_FILE ((size_t)512 << 20) /* bytes in one dataset file */
#define DATA_MAX_LINE ((size_t)8 << 20)   /* bytes in one JSONL line or CSV record */
#define DATA_MAX_ROWS 2000000             /* rows in one file */
#define DATA_MAX_MSGS 4096                /* messages in one row */
#define DATA_MAX_COLUMNS 256              /* CSV columns */
#define DATA_MAX_ERRORS 20                /* row errors kept in a report */

typedef enum {
    DATA_FMT_UNKNOWN,
    DATA_FMT_MESSAGES,
    DATA_FMT_ALPACA,
    DATA_FMT_PROMPT_COMPLETION,
    DATA_FMT_INPUT_OUTPUT,
    DATA_FMT_DPO,
    DATA_FMT_TEXT,
} data_format;

typedef struct data_report {
    data_format format;  /* of the rows (the first valid row decides) */
    int csv;             /* 1: CSV, 0: JSONL */
    int64_t n_rows;      /* data rows read, valid or not (blank lines not counted) */
    int64_t n_invalid;   /* rows with an error */
    int64_t n_duplicates; /* valid rows equal to an earlier one (same form, roles, texts and
                           * weights): a job trains on the first only */
    int n_errors;        /* errors kept below, the first DATA_MAX_ERRORS */
    char errors[DATA_MAX_ERRORS][256]; /* "line 17: missing field 'messages'" */
} data_report;

/* "messages", "alpaca", "prompt_completion", "input_output", "dpo", "unknown" */
const char *data_format_name(data_format f);

/* Checks a dataset without a tokenizer (what the daemon runs on upload).
 * Fills r in every case; returns 0 when the file holds at least one row and
 * every row is valid, else -1 with err naming the first problem and how many
 * rows have one. */
int data_validate(const char *buf, size_t len, data_report *r, lr_err *err) LR_WARN_UNUSED;
int data_validate_file(const char *path, data_report *r, lr_err *err) LR_WARN_UNUSED;

/* The same checks over bytes that arrive in pieces of any size (an upload
 * as it comes in), holding one line or CSV record at a time. A file that is
 * not text (gzip, zip, UTF-16, NUL bytes, ...) is refused from its first
 * bytes with what it looks like. f NULL: validate only; else rows are parsed
 * into f. max_rows > 0: stop after that many rows (feed returns 1; the rest
 * need not be fed). feed returns -1 on a whole-file failure (too big, out of
 * memory, not text), with err; end then gives data_validate's result and
 * fills r (may be NULL). */
struct data_file;
typedef struct data_stream data_stream;
int data_stream_open(struct data_file *f, int64_t max_rows, data_stream **out, lr_err *err) LR_WARN_UNUSED;
int data_stream_feed(data_stream *s, const char *buf, size_t len, lr_err *err);
int data_stream_end(data_stream *s, data_report *r, lr_err *err);
void data_stream_free(data_stream *s);

/* One parsed row. SFT: msgs[0..n_msgs) is the conversation. DPO:
 * msgs[0..n_msgs) is the prompt, then n_chosen and n_rejected answer
 * messages follow in the same array. */
typedef struct data_row {
    int line;
    int n_msgs, n_chosen, n_rejected;
    chat_msg *msgs; /* texts owned by the row */
} data_row;

typedef struct data_file {
    data_format format;
    int csv;
    data_row *rows;
    size_t n_rows;
} data_file;

/* Parses every row; strict: any invalid row makes it fail (err names the
 * first such line). */
int data_parse(const char *buf, size_t len, data_file *f, lr_err *err) LR_WARN_UNUSED;
int data_load(const char *path, data_file *f, lr_err *err) LR_WARN_UNUSED;
/* The first n rows of a file (reads only as far as they go). */
int data_load_head(const char *path, int64_t n, data_file *f, lr_err *err) LR_WARN_UNUSED;
void data_file_free(data_file *f);

#endif
