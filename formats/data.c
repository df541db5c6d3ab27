#include "formats/data.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/buf.h"
#include "common/rng.h"
#include "formats/utf8.h"

/* rng streams (with the job seed) for the split and the epoch orders */
#define STREAM_SPLIT 0x73706c6974ull
#define STREAM_EPOCH 0x65706f6368ull

const char *data_format_name(data_format f) {
    switch (f) {
    case DATA_FMT_MESSAGES: return "messages";
    case DATA_FMT_ALPACA: return "alpaca";
    case DATA_FMT_PROMPT_COMPLETION: return "prompt_completion";
    case DATA_FMT_INPUT_OUTPUT: return "input_output";
    case DATA_FMT_DPO: return "dpo";
    case DATA_FMT_TEXT: return "text";
    case DATA_FMT_UNKNOWN: break;
    }
    return "unknown";
}

/* ---- rows ---------------------------------------------------------------- */

/* The fields a form must have, in the order they are reported missing. */
static const char *const *required(data_format f) {
    static const char *const msg[] = {"messages", NULL}, *const alp[] = {"instruction", "output", NULL},
                             *const pc[] = {"prompt", "completion", NULL},
                             *const io[] = {"input", "output", NULL},
                             *const dpo[] = {"prompt", "chosen", "rejected", NULL}, *const txt[] = {"text", NULL},
                             *const none[] = {NULL};
    switch (f) {
    case DATA_FMT_MESSAGES: return msg;
    case DATA_FMT_ALPACA: return alp;
    case DATA_FMT_PROMPT_COMPLETION: return pc;
    case DATA_FMT_INPUT_OUTPUT: return io;
    case DATA_FMT_DPO: return dpo;
    case DATA_FMT_TEXT: return txt;
    case DATA_FMT_UNKNOWN: break;
    }
    return none;
}

static data_format classify(json_t *o) {
    if (json_object_get(o, "messages")) return DATA_FMT_MESSAGES;
    if (json_object_get(o, "chosen") || json_object_get(o, "rejected")) return DATA_FMT_DPO;
    /* OpenAI's preference form: input.messages, preferred_output, non_preferred_output */
    if (json_object_get(o, "preferred_output") || json_object_get(o, "non_preferred_output")) return DATA_FMT_DPO;
    if (json_object_get(o, "instruction")) return DATA_FMT_ALPACA;
    if (json_object_get(o, "prompt")) return DATA_FMT_PROMPT_COMPLETION;
    if (json_object_get(o, "input") && json_object_get(o, "output")) return DATA_FMT_INPUT_OUTPUT;
    if (json_object_get(o, "text")) return DATA_FMT_TEXT;
    return DATA_FMT_UNKNOWN;
}

typedef struct msgvec {
    chat_msg *m;
    int n, cap;
    uint64_t h; /* FNV-1a over every message's role, weight and text, kept or not */
} msgvec;

static uint64_t fnv(uint64_t h, const void *p, size_t n) {
    for (size_t i = 0; i < n; i++) h = (h ^ ((const unsigned char *)p)[i]) * 1099511628211ull;
    return h;
}

static int is_blank(const char *s, size_t n) {
    size_t k = utf8_space_prefix((const uint8_t *)s, n);
    return k == n;
}

/* Appends a message; the text is copied when keep, else only checked. */
static int msg_add(msgvec *v, chat_role role, const char *s, size_t n, int train, int keep,
                   char *why, size_t cap) {
    if (v->n >= DATA_MAX_MSGS) {
        snprintf(why, cap, "more than %d messages", DATA_MAX_MSGS);
        return -1;
    }
    const int64_t head[3] = {role, role == CHAT_ASSISTANT && train, (int64_t)n}; /* train means nothing elsewhere */
    v->h = fnv(fnv(v->h, head, sizeof head), s, n);
    if (!keep) {
        v->n++;
        return 0;
    }
    if (v->n == v->cap) {
        int c = v->cap ? v->cap * 2 : 4;
        chat_msg *m = realloc(v->m, (size_t)c * sizeof *m);
        if (!m) goto oom;
        v->m = m;
        v->cap = c;
    }
    char *t = malloc(n + 1);
    if (!t) goto oom;
    memcpy(t, s, n);
    t[n] = 0;
    v->m[v->n++] = (chat_msg){role, t, n, train};
    return 0;
oom:
    snprintf(why, cap, "out of memory");
    return -1;
}

static void msgvec_free(msgvec *v) {
    for (int i = 0; i < v->n && v->m; i++) free((char *)v->m[i].text);
    free(v->m);
    v->m = NULL;
    v->n = v->cap = 0;
}

/* A required string field: present, a string, and (when nonempty) not
 * blank. */
static int get_str(json_t *o, const char *key, int nonempty, const char **s, size_t *n, char *why,
                   size_t cap) {
    json_t *v = json_object_get(o, key);
    if (!v) {
        snprintf(why, cap, "missing field '%s'", key);
        return -1;
    }
    if (!json_is_string(v)) {
        snprintf(why, cap, "field '%s' is not a string", key);
        return -1;
    }
    *s = json_string_value(v);
    *n = json_string_length(v);
    if (nonempty && is_blank(*s, *n)) {
        snprintf(why, cap, "field '%s' is empty", key);
        return -1;
    }
    return 0;
}

/* A messages list; only_assistant for DPO answers. Returns the number of
 * trained assistant messages, or -1. */
static int get_messages(json_t *arr, const char *key, int only_assistant, msgvec *v, int keep,
                        char *why, size_t cap) {
    if (!json_is_array(arr)) {
        snprintf(why, cap, "field '%s' is not a list of messages", key);
        return -1;
    }
    if (!json_array_size(arr)) {
        snprintf(why, cap, "'%s' is empty", key);
        return -1;
    }
    int trained = 0;
    size_t i;
    json_t *m;
    json_array_foreach(arr, i, m) {
        int k = (int)i + 1;
        if (!json_is_object(m)) {
            snprintf(why, cap, "'%s' message %d is not an object", key, k);
            return -1;
        }
        json_t *jr = json_object_get(m, "role"), *jc = json_object_get(m, "content");
        if (!json_is_string(jr)) {
            snprintf(why, cap, "'%s' message %d has no role", key, k);
            return -1;
        }
        int role = chat_role_parse(json_string_value(jr));
        if (role < 0) {
            snprintf(why, cap, "role '%.40s' is not one of system, user, assistant (message %d)",
                     json_string_value(jr), k);
            return -1;
        }
        if (only_assistant && role != CHAT_ASSISTANT) {
            snprintf(why, cap, "'%s' message %d is %s; answers hold assistant messages only", key, k,
                     json_string_value(jr));
            return -1;
        }
        if (!json_is_string(jc)) {
            snprintf(why, cap, "'%s' message %d: content is %s, not a string", key, k,
                     jc ? "not a string" : "missing");
            return -1;
        }
        const char *s = json_string_value(jc);
        size_t n = json_string_length(jc);
        int train = role == CHAT_ASSISTANT;
        json_t *w = json_object_get(m, "weight");
        if (w) {
            if (role != CHAT_ASSISTANT || !json_is_integer(w) || json_integer_value(w) < 0 ||
                json_integer_value(w) > 1) {
                snprintf(why, cap, "'%s' message %d: weight must be 0 or 1 on an assistant message",
                         key, k);
                return -1;
            }
            train = (int)json_integer_value(w);
        }
        if (role == CHAT_ASSISTANT && is_blank(s, n)) {
            snprintf(why, cap, "empty assistant content ('%s' message %d)", key, k);
            return -1;
        }
        trained += train;
        if (msg_add(v, (chat_role)role, s, n, train, keep, why, cap)) return -1;
    }
    return trained;
}

/* DPO prompt or answer: a string or a messages list. */
static int get_turns(json_t *o, const char *key, chat_role role, msgvec *v, int keep, char *why,
                     size_t cap) {
    json_t *x = json_object_get(o, key);
    if (json_is_array(x)) {
        int tr = get_messages(x, key, role == CHAT_ASSISTANT, v, keep, why, cap);
        if (tr < 0) return -1;
        if (role == CHAT_ASSISTANT && !tr) {
            snprintf(why, cap, "'%s' has no trained assistant message", key);
            return -1;
        }
        return 0;
    }
    const char *s;
    size_t n;
    if (get_str(o, key, role == CHAT_ASSISTANT, &s, &n, why, cap)) {
        if (x && !json_is_string(x)) snprintf(why, cap, "field '%s' is neither a string nor a list of messages", key);
        return -1;
    }
    return msg_add(v, role, s, n, 1, keep, why, cap);
}

/* Checks a row against the file's form (the first row sets it) and, when
 * row is not NULL, fills it. *hash identifies what the row renders from (its
 * messages and, for DPO, where chosen and rejected begin): equal rows, equal
 * hashes. why gets the reason without the line. */
static int row_from_json(json_t *o, data_format *fmt, data_row *row, uint64_t *hash, char *why, size_t cap) {
    msgvec v = {.h = 1469598103934665603ull};
    int keep = row != NULL;
    data_format rf = classify(o);
    if (!json_is_object(o)) {
        snprintf(why, cap, "not a JSON object");
        return -1;
    }
    if (*fmt == DATA_FMT_UNKNOWN) {
        if (rf == DATA_FMT_UNKNOWN) {
            snprintf(why, cap, "no known fields: expected 'messages', 'prompt'+'completion', "
                               "'instruction'+'output', 'input'+'output', "
                               "'prompt'+'chosen'+'rejected' or 'text'");
            return -1;
        }
        *fmt = rf;
    } else if (rf != *fmt) {
        for (const char *const *k = required(*fmt); *k; k++)
            if (!json_object_get(o, *k)) {
                snprintf(why, cap, "missing field '%s'", *k);
                return -1;
            }
        snprintf(why, cap, "row is in %s form but the file is in %s form (one form per file)",
                 data_format_name(rf), data_format_name(*fmt));
        return -1;
    }
    const char *a, *b;
    size_t na, nb;
    int n_prompt = 0, n_chosen = 0;
    switch (*fmt) {
    case DATA_FMT_MESSAGES: {
        int tr = get_messages(json_object_get(o, "messages"), "messages", 0, &v, keep, why, cap);
        if (tr < 0) goto fail;
        if (!tr) {
            int any = 0;
            for (size_t i = 0; i < json_array_size(json_object_get(o, "messages")); i++) {
                json_t *r = json_object_get(json_array_get(json_object_get(o, "messages"), i), "role");
                any |= !strcmp(json_string_value(r), "assistant");
            }
            snprintf(why, cap, any ? "no assistant message with weight 1" : "'messages' has no assistant message");
            goto fail;
        }
        break;
    }
    case DATA_FMT_ALPACA: {
        if (get_str(o, "instruction", 0, &a, &na, why, cap) || get_str(o, "output", 1, &b, &nb, why, cap))
            goto fail;
        json_t *in = json_object_get(o, "input");
        if (in && !json_is_string(in) && !json_is_null(in)) {
            snprintf(why, cap, "field 'input' is not a string");
            goto fail;
        }
        if (msg_add(&v, CHAT_USER, a, na, 0, keep, why, cap)) goto fail;
        if (json_is_string(in) && json_string_length(in) &&
            msg_add(&v, CHAT_INPUT, json_string_value(in), json_string_length(in), 0, keep, why, cap))
            goto fail;
        if (msg_add(&v, CHAT_ASSISTANT, b, nb, 1, keep, why, cap)) goto fail;
        break;
    }
    case DATA_FMT_PROMPT_COMPLETION:
    case DATA_FMT_INPUT_OUTPUT: {
        int pc = *fmt == DATA_FMT_PROMPT_COMPLETION;
        if (get_str(o, pc ? "prompt" : "input", 0, &a, &na, why, cap) ||
            get_str(o, pc ? "completion" : "output", 1, &b, &nb, why, cap) ||
            msg_add(&v, CHAT_USER, a, na, 0, keep, why, cap) ||
            msg_add(&v, CHAT_ASSISTANT, b, nb, 1, keep, why, cap))
            goto fail;
        break;
    }
    case DATA_FMT_TEXT:
        if (get_str(o, "text", 1, &a, &na, why, cap) || msg_add(&v, CHAT_ASSISTANT, a, na, 1, keep, why, cap))
            goto fail;
        break;
    case DATA_FMT_DPO:
        if (json_object_get(o, "preferred_output") || json_object_get(o, "non_preferred_output")) {
            static const char *const oai[] = {"input", "preferred_output", "non_preferred_output"};
            for (int k = 0; k < 3; k++)
                if (!json_object_get(o, oai[k])) {
                    snprintf(why, cap, "missing field '%s'", oai[k]);
                    goto fail;
                }
            json_t *in = json_object_get(json_object_get(o, "input"), "messages");
            if (!in) {
                snprintf(why, cap, "field 'input' has no 'messages'");
                goto fail;
            }
            if (get_messages(in, "input.messages", 0, &v, keep, why, cap) < 0) goto fail;
            n_prompt = v.n;
            if (get_turns(o, "preferred_output", CHAT_ASSISTANT, &v, keep, why, cap)) goto fail;
            n_chosen = v.n - n_prompt;
            if (get_turns(o, "non_preferred_output", CHAT_ASSISTANT, &v, keep, why, cap)) goto fail;
            break;
        }
        for (const char *const *k = required(DATA_FMT_DPO); *k; k++)
            if (!json_object_get(o, *k)) {
                snprintf(why, cap, "missing field '%s'", *k);
                goto fail;
            }
        if (get_turns(o, "prompt", CHAT_USER, &v, keep, why, cap)) goto fail;
        n_prompt = v.n;
        if (get_turns(o, "chosen", CHAT_ASSISTANT, &v, keep, why, cap)) goto fail;
        n_chosen = v.n - n_prompt;
        if (get_turns(o, "rejected", CHAT_ASSISTANT, &v, keep, why, cap)) goto fail;
        break;
    case DATA_FMT_UNKNOWN:
        goto fail;
    }
    const int64_t split[2] = {n_prompt, n_chosen};
    *hash = fnv(v.h, split, sizeof split);
    if (row) {
        row->msgs = v.m;
        if (*fmt == DATA_FMT_DPO) {
            row->n_msgs = n_prompt;
            row->n_chosen = n_chosen;
            row->n_rejected = v.n - n_prompt - n_chosen;
        } else {
            row->n_msgs = v.n;
            row->n_chosen = row->n_rejected = 0;
        }
    }
    return 0;
fail:
    msgvec_free(&v);
    return -1;
}

static void row_free(data_row *r) {
    for (int i = 0; i < r->n_msgs + r->n_chosen + r->n_rejected; i++) free((char *)r->msgs[i].text);
    free(r->msgs);
    memset(r, 0, sizeof *r);
}

/* ---- parsing -------------------------------------------------------------- */

typedef struct parser {
    data_report *r;
    data_file *f; /* NULL: validate only */
    lr_err *err;
    /* Hashes of the valid rows so far (open addressing, 0 = empty, at most
     * half full), to count duplicates. Equal 64-bit hashes count as equal
     * rows: at DATA_MAX_ROWS a false match has odds of about 1e-7. */
    uint64_t *seen;
    size_t seen_cap, seen_n;
} parser;

static void report_error(parser *p, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void report_error(parser *p, int line, const char *fmt, ...) {
    p->r->n_invalid++;
    if (p->r->n_errors >= DATA_MAX_ERRORS) return;
    char *dst = p->r->errors[p->r->n_errors++];
    int k = snprintf(dst, sizeof p->r->errors[0], "line %d: ", line);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(dst + k, sizeof p->r->errors[0] - (size_t)k, fmt, ap);
    va_end(ap);
}

/* Counts a row in r->n_duplicates when one with its hash came before. */
static int count_duplicate(parser *p, uint64_t h) {
    if (2 * (p->seen_n + 1) > p->seen_cap) {
        size_t cap = p->seen_cap ? 2 * p->seen_cap : 1024;
        uint64_t *t = calloc(cap, sizeof *t);
        if (!t) return lr_errp(p->err, LR_E_NOMEM, NULL, "out of memory reading the dataset");
        for (size_t i = 0; i < p->seen_cap; i++) {
            if (!p->seen[i]) continue;
            size_t k = (size_t)p->seen[i] & (cap - 1);
            while (t[k]) k = (k + 1) & (cap - 1);
            t[k] = p->seen[i];
        }
        free(p->seen);
        p->seen = t;
        p->seen_cap = cap;
    }
    if (!h) h = 1; /* 0 marks an empty slot */
    size_t k = (size_t)h & (p->seen_cap - 1);
    while (p->seen[k]) {
        if (p->seen[k] == h) {
            p->r->n_duplicates++;
            return 0;
        }
        k = (k + 1) & (p->seen_cap - 1);
    }
    p->seen[k] = h;
    p->seen_n++;
    return 0;
}

/* One row as a JSON object; -1 only for a fatal (whole-file) failure. */
static int take_row(parser *p, json_t *o, int line) {
    char why[224];
    data_row row = {0};
    if (p->r->n_rows >= DATA_MAX_ROWS)
        return lr_errp(p->err, LR_E_TOOBIG, "file", "dataset has more than %d rows", DATA_MAX_ROWS);
    p->r->n_rows++;
    uint64_t h;
    if (row_from_json(o, &p->r->format, p->f ? &row : NULL, &h, why, sizeof why)) {
        report_error(p, line, "%s", why);
        return 0;
    }
    if (count_duplicate(p, h)) {
        row_free(&row);
        return -1;
    }
    if (!p->f) return 0;
    if (p->f->n_rows % 1024 == 0) {
        data_row *rows = realloc(p->f->rows, (p->f->n_rows + 1024) * sizeof *rows);
        if (!rows) {
            row_free(&row);
            return lr_errp(p->err, LR_E_NOMEM, NULL, "out of memory reading the dataset");
        }
        p->f->rows = rows;
    }
    row.line = line;
    p->f->rows[p->f->n_rows++] = row;
    return 0;
}

/* CSV --------------------------------------------------------------------- */

typedef struct csv_rec {
    lr_buf cells;             /* the unescaped cells, NUL-separated */
    size_t off[DATA_MAX_COLUMNS + 1];
    int n;                    /* cells */
    int line;                 /* where the record starts */
    int too_many, unterminated, too_long;
} csv_rec;

/* Reads one record at *pos (RFC 4180; LF or CRLF). */
static void csv_next(const char *buf, size_t len, size_t *pos, int *line, csv_rec *r) {
    size_t i = *pos;
    lr_buf_reset(&r->cells);
    r->n = 0;
    r->line = *line;
    r->too_many = r->unterminated = r->too_long = 0;
    size_t start = i;
    for (;;) {
        /* one cell */
        int quoted = i < len && buf[i] == '"';
        if (r->n < DATA_MAX_COLUMNS) r->off[r->n] = r->cells.len;
        if (quoted) {
            i++;
            for (;;) {
                if (i >= len) {
                    r->unterminated = 1;
                    break;
                }
                if (buf[i] == '"') {
                    if (i + 1 < len && buf[i + 1] == '"') i++;
                    else {
                        i++;
                        break;
                    }
                }
                if (buf[i] == '\n') (*line)++;
                if (!r->too_long && lr_buf_add(&r->cells, buf + i, 1)) r->too_long = 1;
                i++;
            }
        }
        /* unquoted part (or text after a closing quote, kept as written) */
        while (i < len && buf[i] != ',' && buf[i] != '\n') {
            if (!(buf[i] == '\r' && (i + 1 == len || buf[i + 1] == '\n')) && !r->too_long &&
                lr_buf_add(&r->cells, buf + i, 1))
                r->too_long = 1;
            i++;
        }
        if (!r->too_long && lr_buf_add(&r->cells, "", 1)) r->too_long = 1;
        if (r->n < DATA_MAX_COLUMNS) r->n++;
        else r->too_many = 1;
        if (i - start > DATA_MAX_LINE) r->too_long = 1;
        if (i < len && buf[i] == ',') {
            i++;
            continue;
        }
        break;
    }
    if (i < len) i++; /* the newline */
    (*line)++;
    *pos = i;
}

static const char *cell(const csv_rec *r, int k) { return r->cells.data + r->off[k]; }

static int csv_blank(const csv_rec *r) { return r->n == 1 && !cell(r, 0)[0]; }

/* Column mapping: the first set the header has entirely. */
static const struct {
    const char *col[3];  /* CSV names */
    const char *key[3];  /* row fields */
} csv_maps[] = {
    {{"prompt", "chosen", "rejected"}, {"prompt", "chosen", "rejected"}},
    {{"instruction", "output", "input"}, {"instruction", "output", "input"}},
    {{"instruction", "output", NULL}, {"instruction", "output", NULL}},
    {{"prompt", "completion", NULL}, {"prompt", "completion", NULL}},
    {{"question", "answer", NULL}, {"prompt", "completion", NULL}},
    {{"input", "output", NULL}, {"input", "output", NULL}},
};

/* ---- the stream: bytes in any chunking, one line (JSONL) or record (CSV)
 * at a time, so no caller ever holds a whole file ------------------------- */

#define STREAM_CHUNK ((size_t)256 << 10)

typedef enum { CS_START, CS_PLAIN, CS_QUOTED, CS_QUOTE } csv_state;

struct data_stream {
    parser p;
    data_report rep;
    lr_err ferr;            /* the fatal error, once there is one */
    int failed, done;
    int64_t max_rows;
    size_t total;           /* bytes fed */
    lr_buf head;            /* bytes before the form is known */
    int kind;               /* 0 undecided, 'j' JSONL, 'c' CSV */
    lr_buf unit;            /* the line or record being read */
    int unit_long;          /* the unit passed DATA_MAX_LINE: its bytes are dropped */
    int line;               /* JSONL: lines done; CSV: the line the next record starts on */
    /* CSV */
    csv_state cs;
    int unit_lines;         /* newlines inside an overlong record (for line numbers) */
    csv_rec rec;
    int have_header, map, ncols, idx[3];
    char (*names)[64];
};

/* The start of a file that is not text: say what it looks like. */
static const char *binary_kind(const unsigned char *b, size_t n) {
    static const struct {
        const char *magic;
        size_t len;
        const char *what;
    } magics[] = {
        {"\x1f\x8b", 2, "gzip-compressed data (.gz): upload the uncompressed JSONL or CSV"},
        {"PK\x03\x04", 4, "a zip archive: upload the JSONL or CSV file inside it"},
        {"BZh", 3, "bzip2-compressed data (.bz2): upload the uncompressed JSONL or CSV"},
        {"\xfd" "7zXZ", 5, "xz-compressed data (.xz): upload the uncompressed JSONL or CSV"},
        {"\x28\xb5\x2f\xfd", 4, "zstd-compressed data (.zst): upload the uncompressed JSONL or CSV"},
        {"PAR1", 4, "a Parquet file: export it as JSONL (e.g. pandas to_json(orient='records', lines=True))"},
        {"\x89PNG", 4, "a PNG image, not a dataset"},
        {"%PDF", 4, "a PDF document, not a dataset"},
        {"SQLite format 3", 15, "an SQLite database, not a dataset"},
    };
    for (size_t i = 0; i < sizeof magics / sizeof magics[0]; i++)
        if (n >= magics[i].len && !memcmp(b, magics[i].magic, magics[i].len)) return magics[i].what;
    if (n >= 2 && ((b[0] == 0xff && b[1] == 0xfe) || (b[0] == 0xfe && b[1] == 0xff)))
        return "UTF-16 text: save it as UTF-8";
    if (memchr(b, 0, n)) return "binary data (it has NUL bytes), not UTF-8 JSONL or CSV text";
    return NULL;
}

static void jsonl_line(data_stream *s) {
    parser *p = &s->p;
    const char *l = s->unit.data ? s->unit.data : "";
    size_t n = s->unit.len;
    s->line++;
    if (!s->unit_long && n && l[n - 1] == '\r') n--;
    if (!s->unit_long && is_blank(l, n)) return;
    if (p->r->n_rows >= DATA_MAX_ROWS) {
        s->failed = lr_errp(&s->ferr, LR_E_TOOBIG, "file", "dataset has more than %d rows", DATA_MAX_ROWS);
        return;
    }
    if (s->unit_long || n > DATA_MAX_LINE) {
        p->r->n_rows++;
        report_error(p, s->line, "longer than %zu bytes", DATA_MAX_LINE);
        return;
    }
    json_error_t je;
    json_t *o = json_loadb(l, n, JSON_REJECT_DUPLICATES, &je);
    if (!o) {
        p->r->n_rows++;
        report_error(p, s->line, "invalid JSON: %s (column %d)", je.text, je.column);
        return;
    }
    if (take_row(p, o, s->line)) s->failed = -1;
    json_decref(o);
}

static void csv_header(data_stream *s) {
    csv_rec *rec = &s->rec;
    if (rec->unterminated || rec->too_long || rec->too_many || s->unit_long) {
        s->failed = lr_errp(&s->ferr, LR_E_INVALID, "file", "line 1: the CSV header is malformed or too long");
        return;
    }
    s->ncols = rec->n;
    for (int k = 0; k < s->ncols; k++) {
        const char *c = cell(rec, k);
        size_t n = strlen(c);
        while (n && isspace((unsigned char)c[n - 1])) n--;
        while (n && isspace((unsigned char)*c)) c++, n--;
        snprintf(s->names[k], sizeof s->names[k], "%.*s", (int)n, c);
    }
    for (size_t m = 0; m < sizeof csv_maps / sizeof csv_maps[0] && s->map < 0; m++) {
        int ok = 1;
        for (int j = 0; j < 3; j++) {
            s->idx[j] = -1;
            if (!csv_maps[m].col[j]) continue;
            for (int k = 0; k < s->ncols; k++)
                if (!strcasecmp(s->names[k], csv_maps[m].col[j])) s->idx[j] = k;
            ok &= s->idx[j] >= 0;
        }
        if (ok) s->map = (int)m;
    }
    s->have_header = 1;
}

/* Rows are counted (and checked for shape) even when no mapping fits, so
 * that the report says what the file holds. */
static void csv_record(data_stream *s) {
    parser *p = &s->p;
    csv_rec *rec = &s->rec;
    int start = s->line;
    if (s->unit_long) {
        lr_buf_reset(&rec->cells);
        rec->n = 0;
        rec->line = start;
        rec->too_long = 1;
        rec->unterminated = rec->too_many = 0;
        s->line += s->unit_lines + 1;
    } else {
        size_t pos = 0;
        csv_next(s->unit.data ? s->unit.data : "", s->unit.len, &pos, &s->line, rec);
    }
    if (!s->have_header) {
        csv_header(s);
        return;
    }
    if (!s->unit_long && csv_blank(rec)) return;
    if (s->map < 0 || rec->unterminated || rec->too_long || rec->too_many || rec->n != s->ncols) {
        if (p->r->n_rows >= DATA_MAX_ROWS) {
            s->failed = lr_errp(&s->ferr, LR_E_TOOBIG, "file", "dataset has more than %d rows", DATA_MAX_ROWS);
            return;
        }
        p->r->n_rows++;
        if (rec->unterminated) report_error(p, rec->line, "unterminated quoted field");
        else if (rec->too_long) report_error(p, rec->line, "longer than %zu bytes", DATA_MAX_LINE);
        else if (rec->too_many) report_error(p, rec->line, "more than %d fields", DATA_MAX_COLUMNS);
        else if (rec->n != s->ncols) report_error(p, rec->line, "%d fields, but the header has %d", rec->n, s->ncols);
        else p->r->n_invalid++;
        return;
    }
    json_t *o = json_object();
    int bad_utf8 = 0;
    for (int j = 0; j < 3 && o; j++) {
        if (s->idx[j] < 0) continue;
        json_t *v = json_string(cell(rec, s->idx[j])); /* NULL on invalid UTF-8 */
        if (!v) bad_utf8 = 1;
        else json_object_set_new(o, csv_maps[s->map].key[j], v);
    }
    if (!o) {
        s->failed = lr_errp(&s->ferr, LR_E_NOMEM, NULL, "out of memory reading the dataset");
        return;
    }
    if (bad_utf8) {
        p->r->n_rows++;
        report_error(p, rec->line, "invalid UTF-8");
    } else if (take_row(p, o, rec->line)) {
        s->failed = -1;
    }
    json_decref(o);
}

static void unit_done(data_stream *s) {
    if (s->kind == 'j') jsonl_line(s);
    else csv_record(s);
    lr_buf_reset(&s->unit);
    s->unit_long = 0;
    s->unit_lines = 0;
    s->cs = CS_START;
}

static void unit_byte(data_stream *s, char ch) {
    if (s->unit_long) {
        if (ch == '\n') s->unit_lines++;
    } else if (lr_buf_add(&s->unit, &ch, 1)) {
        s->unit_long = 1;
        if (ch == '\n') s->unit_lines++;
    }
}

/* Splits into units: JSONL at every newline; CSV at a newline outside
 * quotes, with the same idea of quoting as csv_next (a quote opens only at
 * the start of a cell). */
static void split(data_stream *s, const char *b, size_t n) {
    for (size_t i = 0; i < n && !s->failed && !s->done; i++) {
        char ch = b[i];
        if (s->kind == 'j') {
            if (ch == '\n') unit_done(s);
            else unit_byte(s, ch);
        } else {
            switch (s->cs) {
            case CS_START: s->cs = ch == '"' ? CS_QUOTED : ch == ',' || ch == '\n' ? CS_START : CS_PLAIN; break;
            case CS_PLAIN: if (ch == ',' || ch == '\n') s->cs = CS_START; break;
            case CS_QUOTED: if (ch == '"') s->cs = CS_QUOTE; break;
            case CS_QUOTE: s->cs = ch == '"' ? CS_QUOTED : ch == ',' || ch == '\n' ? CS_START : CS_PLAIN; break;
            }
            unit_byte(s, ch);
            if (ch == '\n' && s->cs == CS_START) unit_done(s);
        }
        if (s->max_rows > 0 && s->rep.n_rows >= s->max_rows) s->done = 1;
    }
}

/* Decides the form from the first non-space byte (a BOM is dropped). */
static void decide(data_stream *s, int at_end) {
    const char *b = s->head.data ? s->head.data : "";
    size_t n = s->head.len, k = 0;
    if (n >= 3 && !memcmp(b, "\xef\xbb\xbf", 3)) b += 3, n -= 3;
    else if (!at_end && n < 3 && !memcmp(b, "\xef\xbb\xbf", n)) return;
    if (!at_end && n < 512) return; /* enough to recognise a binary file */
    const char *bin = binary_kind((const unsigned char *)b, n < 512 ? n : 512);
    if (bin) {
        s->failed = lr_errp(&s->ferr, LR_E_INVALID, "file", "the file looks like %s", bin);
        return;
    }
    while (k < n && isspace((unsigned char)b[k])) k++;
    if (k == n) {
        if (at_end) s->failed = lr_errp(&s->ferr, LR_E_INVALID, "file", "dataset is empty");
        return;
    }
    if (b[k] == '[') {
        s->failed = lr_errp(&s->ferr, LR_E_INVALID, "file", "the file is one JSON array; JSONL wants one JSON object per line");
        return;
    }
    s->kind = b[k] == '{' ? 'j' : 'c';
    s->rep.csv = s->kind == 'c';
    s->line = s->kind == 'j' ? 0 : 1; /* JSONL counts lines done; CSV the line a record starts on */
    split(s, b, n);
    lr_buf_free(&s->head);
}

int data_stream_open(data_file *f, int64_t max_rows, data_stream **out, lr_err *err) {
    data_stream *s = calloc(1, sizeof *s);
    if (s) s->names = calloc(DATA_MAX_COLUMNS, sizeof *s->names);
    if (!s || !s->names) {
        free(s);
        *out = NULL;
        return lr_errp(err, LR_E_NOMEM, NULL, "out of memory reading the dataset");
    }
    s->p = (parser){.r = &s->rep, .f = f, .err = &s->ferr};
    if (f) memset(f, 0, sizeof *f);
    s->max_rows = max_rows;
    s->map = -1;
    lr_buf_init(&s->head, DATA_MAX_LINE);
    lr_buf_init(&s->unit, DATA_MAX_LINE + 2);
    lr_buf_init(&s->rec.cells, DATA_MAX_LINE);
    *out = s;
    return 0;
}

int data_stream_feed(data_stream *s, const char *buf, size_t len, lr_err *err) {
    if (!s->failed && !s->done) {
        s->total += len;
        if (s->total > DATA_MAX_FILE)
            s->failed = lr_errp(&s->ferr, LR_E_TOOBIG, "file", "dataset is larger than %zu bytes", DATA_MAX_FILE);
        else if (s->kind) split(s, buf, len);
        else if (lr_buf_add(&s->head, buf, len))
            s->failed = lr_errp(&s->ferr, LR_E_INVALID, "file", "the file starts with over %zu bytes of blank space",
                                DATA_MAX_LINE);
        else decide(s, 0);
    }
    if (s->failed) {
        *err = s->ferr;
        return -1;
    }
    return s->done;
}

int data_stream_end(data_stream *s, data_report *r, lr_err *err) {
    if (!s->failed && !s->done && !s->kind) decide(s, 1);
    if (!s->failed && !s->done && (s->unit.len || s->unit_long)) unit_done(s);
    data_report *rep = &s->rep;
    data_file *f = s->p.f;
    if (f) {
        f->format = rep->format;
        f->csv = rep->csv;
    }
    if (!s->failed && s->kind == 'c' && s->map < 0 && s->have_header) {
        lr_buf list;
        lr_buf_init(&list, 400);
        for (int k = 0; k < s->ncols; k++)
            if (lr_buf_printf(&list, "%s%s", k ? ", " : "", s->names[k])) break;
        snprintf(rep->errors[0], sizeof rep->errors[0],
                 "line 1: the CSV header has none of the column sets prompt,completion / "
                 "question,answer / instruction,output / input,output / prompt,chosen,rejected "
                 "(found: %.80s)", list.data ? list.data : "");
        rep->n_errors = 1;
        lr_buf_free(&list);
    }
    if (r) *r = *rep;
    if (s->failed) {
        *err = s->ferr;
        return -1;
    }
    if (rep->n_invalid) {
        const char *first = rep->n_errors ? rep->errors[0] : "invalid rows";
        if (rep->n_invalid > 1)
            return lr_errp(err, LR_E_INVALID, "file", "%s (and %lld more invalid rows)", first,
                           (long long)rep->n_invalid - 1);
        return lr_errp(err, LR_E_INVALID, "file", "%s", first);
    }
    if (!rep->n_rows) return lr_errp(err, LR_E_INVALID, "file", "dataset has no rows");
    return 0;
}

void data_stream_free(data_stream *s) {
    if (!s) return;
    free(s->p.seen);
    lr_buf_free(&s->head);
    lr_buf_free(&s->unit);
    lr_buf_free(&s->rec.cells);
    free(s->names);
    free(s);
}

/* The whole of a buffer or a file through one stream. */
static int stream_buf(data_file *f, const char *buf, size_t len, data_report *r, lr_err *err) {
    data_stream *s;
    if (data_stream_open(f, 0, &s, err)) return -1;
    lr_err scratch = {0};
    int rc = data_stream_feed(s, buf, len, err) < 0 ? -1 : 0;
    if (data_stream_end(s, r, rc ? &scratch : err)) rc = -1;
    data_stream_free(s);
    return rc;
}

/* max_rows > 0: only the first rows (the rest of the file is not read). */
static int stream_path(data_file *f, const char *path, int64_t max_rows, data_report *r, lr_err *err) {
    data_stream *s = NULL;
    FILE *fp = fopen(path, "rb");
    char *chunk = malloc(STREAM_CHUNK);
    int rc = -1, fed = 0;
    lr_err scratch = {0};
    if (r) memset(r, 0, sizeof *r);
    if (!fp || !chunk) {
        if (f) memset(f, 0, sizeof *f);
        if (!fp) lr_errp(err, LR_E_IO, NULL, "cannot open %s: %s", path, strerror(errno));
        else lr_errp(err, LR_E_NOMEM, NULL, "out of memory reading the dataset");
        goto out;
    }
    if (data_stream_open(f, max_rows, &s, err)) goto out;
    size_t n;
    while (fed == 0 && (n = fread(chunk, 1, STREAM_CHUNK, fp)) > 0) fed = data_stream_feed(s, chunk, n, err);
    if (fed == 0 && ferror(fp)) fed = lr_errp(err, LR_E_IO, NULL, "reading %s: %s", path, strerror(errno));
    rc = data_stream_end(s, r, fed < 0 ? &scratch : err) || fed < 0 ? -1 : 0;
out:
    data_stream_free(s);
    free(chunk);
    if (fp) fclose(fp);
    return rc;
}

int data_validate(const char *buf, size_t len, data_report *r, lr_err *err) {
    return stream_buf(NULL, buf, len, r, err);
}

int data_validate_file(const char *path, data_report *r, lr_err *err) {
    return stream_path(NULL, path, 0, r, err);
}

int data_parse(const char *buf, size_t len, data_file *f, lr_err *err) {
    data_report r;
    if (stream_buf(f, buf, len, &r, err)) {
        data_file_free(f);
        return -1;
    }
    return 0;
}

int data_load(const char *path, data_file *f, lr_err *err) {
    data_report r;
    if (stream_path(f, path, 0, &r, err)) {
        data_file_free(f);
        lr_err_prefix(err, "dataset %s: ", path);
        return -1;
    }
    return 0;
}

int data_load_head(const char *path, int64_t n, data_file *f, lr_err *err) {
    if (stream_path(f, path, n, NULL, err)) {
        data_file_free(f);
        return -1;
    }
    return 0;
}

void data_file_free(data_file *f) {
    for (size_t i = 0; i < f->n_rows; i++) row_free(&f->rows[i]);
    free(f->rows);
    memset(f, 0, sizeof *f);
}

/* ---- building examples ----------------------------------------------------- */

typedef struct exvec {
    data_example *e;
    size_t n, cap;
} exvec;

static void example_free(data_example *e) {
    free(e->ids);
    free(e->labels);
    free(e->rej_ids);
    free(e->rej_labels);
    memset(e, 0, sizeof *e);
}

/* The position of the first trained token, -1 when none. */
static int first_target(const int32_t *labels, int n) {
    for (int i = 0; i < n; i++)
        if (labels[i] != CHAT_IGNORE) return i;
    return -1;
}

typedef struct builder {
    const chat *c;
    chat plain;     /* renders text rows: BOS?, the text, EOS */
    int has_plain;  /* plain is set up (the tokenizer has an EOS) */
    int text;       /* the file being built is in text form */
    const data_opts *o;
    data_set *ds;
    int64_t truncated_rows;
    char dropped_lines[160];
    /* For the message when rows are dropped: every rendered length (before
     * the cut) and the earliest first trained token of a dropped row. */
    int *lens;
    size_t n_lens, cap_lens;
    int dropped_first; /* -1: none dropped */
} builder;

static int len_cmp(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

/* "rendered rows are 80 to 412 tokens (median 151); the first trained token
 * of a dropped row comes at token 130 or later", over lens[from..]. */
static void len_summary(const builder *b, size_t from, char *out, size_t cap) {
    size_t n = b->n_lens - from;
    int *v = n ? malloc(n * sizeof *v) : NULL;
    out[0] = 0;
    if (!v) return;
    memcpy(v, b->lens + from, n * sizeof *v);
    qsort(v, n, sizeof *v, len_cmp);
    int k = snprintf(out, cap, "rendered rows are %d to %d tokens (median %d)", v[0], v[n - 1], v[n / 2]);
    if (b->dropped_first >= 0 && k > 0 && (size_t)k < cap)
        snprintf(out + k, cap - (size_t)k, "; the first trained token of a dropped row comes at token %d or later",
                 b->dropped_first + 1);
    free(v);
}

static void warnf(const data_opts *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void warnf(const data_opts *o, const char *fmt, ...) {
    if (!o->warn) return;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    o->warn(o->ud, msg);
}

/* Renders one sequence and cuts it to max_seq_len. Returns 1 when it keeps
 * a trained token, 0 when not, -1 on error. */
static int render_one(builder *b, const chat_msg *m, int n, int32_t **ids, int32_t **labels, int *len,
                      int *cut, lr_err *err) {
    chat_out out;
    if (b->text ? chat_render(&b->plain, m, n, NULL, 0, 0, &out, err)
                : chat_render(b->c, m, n, b->o->system_prompt, 0, 0, &out, err))
        return -1;
    *ids = out.ids;
    *labels = out.labels;
    if (b->n_lens == b->cap_lens) {
        size_t cap = b->cap_lens ? 2 * b->cap_lens : 1024;
        int *p = realloc(b->lens, cap * sizeof *p);
        if (!p) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
        b->lens = p;
        b->cap_lens = cap;
    }
    b->lens[b->n_lens++] = (int)out.n;
    size_t keep = out.n;
    if (b->o->max_seq_len > 0 && keep > (size_t)b->o->max_seq_len) {
        keep = (size_t)b->o->max_seq_len;
        *cut = 1;
    }
    *len = (int)keep;
    int first = first_target(out.labels, (int)out.n);
    if (first >= 0 && first < (int)keep) return 1;
    if (first >= 0 && (b->dropped_first < 0 || first < b->dropped_first)) b->dropped_first = first;
    return 0;
}

static int build_row(builder *b, const data_row *row, int file, const char *path, exvec *v, lr_err *err) {
    data_example e = {0};
    chat_msg *pair = NULL;
    int cut = 0, ok, rc = -1;
    e.file = file;
    e.line = row->line;
    if (b->ds->dpo) {
        int np = row->n_msgs, nc = row->n_chosen, nr = row->n_rejected;
        ok = render_one(b, row->msgs, np + nc, &e.ids, &e.labels, &e.n, &cut, err);
        if (ok > 0) {
            pair = malloc((size_t)(np + nr) * sizeof *pair);
            if (!pair) {
                lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
                goto done;
            }
            memcpy(pair, row->msgs, (size_t)np * sizeof *pair);
            memcpy(pair + np, row->msgs + np + nc, (size_t)nr * sizeof *pair);
            ok = render_one(b, pair, np + nr, &e.rej_ids, &e.rej_labels, &e.rej_n, &cut, err);
        }
    } else {
        ok = render_one(b, row->msgs, row->n_msgs, &e.ids, &e.labels, &e.n, &cut, err);
    }
    if (ok < 0) {
        lr_err_prefix(err, "dataset %s line %d: ", path, row->line);
        goto done;
    }
    b->truncated_rows += cut;
    if (!ok) {
        b->ds->n_dropped++;
        size_t used = strlen(b->dropped_lines);
        if (used + 16 < sizeof b->dropped_lines)
            snprintf(b->dropped_lines + used, sizeof b->dropped_lines - used, "%s%d", used ? ", " : "",
                     row->line);
        rc = 0;
        goto done;
    }
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 256;
        data_example *p = realloc(v->e, cap * sizeof *p);
        if (!p) {
            lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
            goto done;
        }
        v->e = p;
        v->cap = cap;
    }
    v->e[v->n++] = e;
    memset(&e, 0, sizeof e);
    rc = 0;
done:
    example_free(&e);
    free(pair);
    return rc;
}

static int build_file(builder *b, const char *path, int file, exvec *v, lr_err *err) {
    data_file f;
    int rc = -1;
    if (data_load(path, &f, err)) return -1;
    if (b->ds->dpo != (f.format == DATA_FMT_DPO)) {
        lr_errp(err, LR_E_INVALID, "method.type",
                b->ds->dpo ? "dataset %s: method dpo needs rows with prompt, chosen and rejected; "
                             "this file is in %s form"
                           : "dataset %s: rows with chosen/rejected answers (%s form) need method dpo",
                path, data_format_name(f.format));
        goto done;
    }
    b->text = f.format == DATA_FMT_TEXT;
    if (b->text && !b->has_plain) {
        lr_errp(err, LR_E_INVALID, "training_file", "dataset %s: text rows end with EOS, which this tokenizer lacks",
                path);
        goto done;
    }
    b->truncated_rows = 0;
    b->dropped_lines[0] = 0;
    int64_t dropped0 = b->ds->n_dropped;
    size_t lens0 = b->n_lens;
    for (size_t i = 0; i < f.n_rows; i++)
        if (build_row(b, &f.rows[i], file, path, v, err)) goto done;
    b->ds->n_truncated += b->truncated_rows;
    if (b->ds->n_dropped > dropped0) {
        char lens[200];
        len_summary(b, lens0, lens, sizeof lens);
        warnf(b->o, "dataset %s: %lld rows dropped: no trained token left within max_seq_len %d "
                    "(lines %s%s); %s", path, (long long)(b->ds->n_dropped - dropped0), b->o->max_seq_len,
              b->dropped_lines, b->ds->n_dropped - dropped0 > 10 ? ", ..." : "", lens);
    }
    if (b->truncated_rows)
        warnf(b->o, "dataset %s: %lld rows cut to max_seq_len %d", path,
              (long long)b->truncated_rows, b->o->max_seq_len);
    rc = 0;
done:
    data_file_free(&f);
    return rc;
}

static uint64_t ex_hash(const data_example *e) {
    uint64_t h = 1469598103934665603ull;
    const int32_t *arr[4] = {e->ids, e->labels, e->rej_ids, e->rej_labels};
    int len[4] = {e->n, e->n, e->rej_n, e->rej_n};
    for (int a = 0; a < 4; a++) {
        h = (h ^ (uint64_t)len[a]) * 1099511628211ull;
        for (int i = 0; i < len[a]; i++) h = (h ^ (uint32_t)arr[a][i]) * 1099511628211ull;
    }
    return h;
}

static int ex_equal(const data_example *a, const data_example *b) {
    return a->n == b->n && a->rej_n == b->rej_n &&
           !memcmp(a->ids, b->ids, (size_t)a->n * sizeof *a->ids) &&
           !memcmp(a->labels, b->labels, (size_t)a->n * sizeof *a->labels) &&
           (!a->rej_n || (!memcmp(a->rej_ids, b->rej_ids, (size_t)a->rej_n * sizeof *a->rej_ids) &&
                          !memcmp(a->rej_labels, b->rej_labels, (size_t)a->rej_n * sizeof *a->rej_labels)));
}

/* Drops exact duplicates from v[from..], keeping the first; 'seen' is an
 * open-addressing table of example indices shared across calls so that
 * duplicates across files go too. */
typedef struct dedupe {
    int64_t *slot; /* index + 1; 0 empty */
    size_t cap;
} dedupe;

static int dedupe_run(dedupe *d, exvec *v, size_t from, int64_t *dropped, lr_err *err) {
    if (d->cap < 2 * v->n + 16) {
        size_t cap = 64;
        while (cap < 4 * v->n + 16) cap *= 2;
        int64_t *s = calloc(cap, sizeof *s);
        if (!s) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
        free(d->slot);
        d->slot = s;
        d->cap = cap;
        for (size_t i = 0; i < from; i++) {
            size_t h = (size_t)ex_hash(&v->e[i]) & (cap - 1);
            while (s[h]) h = (h + 1) & (cap - 1);
            s[h] = (int64_t)i + 1;
        }
    }
    size_t w = from;
    for (size_t i = from; i < v->n; i++) {
        size_t h = (size_t)ex_hash(&v->e[i]) & (d->cap - 1);
        int dup = 0;
        while (d->slot[h]) {
            if (ex_equal(&v->e[d->slot[h] - 1], &v->e[i])) {
                dup = 1;
                break;
            }
            h = (h + 1) & (d->cap - 1);
        }
        if (dup) {
            example_free(&v->e[i]);
            (*dropped)++;
            continue;
        }
        v->e[w] = v->e[i];
        d->slot[h] = (int64_t)w + 1;
        w++;
    }
    v->n = w;
    return 0;
}

static size_t val_count(size_t n, double ratio) {
    if (ratio <= 0 || n < 2) return 0;
    double k = ceil((double)n * ratio - 1e-9);
    if (k < 1) k = 1;
    if (k > (double)(n - 1)) k = (double)(n - 1);
    return (size_t)k;
}

int data_build(const chat *c, const data_opts *o, data_set *ds, lr_err *err) {
    exvec tr = {0}, va = {0};
    dedupe d = {0};
    int *perm = NULL;
    char *is_val = NULL;
    builder b = {.c = c, .o = o, .ds = ds, .dropped_first = -1};
    int rc = -1;
    lr_err perr = {0};
    b.has_plain = chat_init(&b.plain, c->t, TPL_PLAIN, NULL, &perr) == 0;
    memset(ds, 0, sizeof *ds);
    ds->dpo = o->dpo;
    ds->pad_id = tok_eos_id(c->t) >= 0 ? tok_eos_id(c->t) : 0;
    if (o->n_files < 1 || o->n_files > JOBSPEC_MAX_FILES) {
        lr_errp(err, LR_E_INVALID, "training_file", "between 1 and %d training files are needed",
                JOBSPEC_MAX_FILES);
        goto done;
    }
    ds->n_files = o->n_files;
    for (int f = 0; f < o->n_files; f++) {
        size_t from = tr.n;
        double w = o->weights ? o->weights[f] : 1.0;
        if (!(w >= 0) || w > 1000) {
            lr_errp(err, LR_E_INVALID, "training_file", "training file %d: weight %g is not in [0, 1000]", f + 1, w);
            goto done;
        }
        ds->weight[f] = w;
        if (build_file(&b, o->files[f], f, &tr, err)) goto done;
        if (dedupe_run(&d, &tr, from, &ds->n_duplicates, err)) goto done;
        /* the split, per file, so that each file is represented */
        size_t n = tr.n - from, nv = o->validation_file ? 0 : val_count(n, o->val_ratio);
        if (nv) {
            lr_rng r;
            rng_stream(&r, o->seed, STREAM_SPLIT + (uint64_t)f);
            free(perm);
            free(is_val);
            perm = malloc(n * sizeof *perm);
            is_val = calloc(n, 1);
            if (!perm || !is_val) {
                lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
                goto done;
            }
            for (size_t i = 0; i < n; i++) perm[i] = (int)i;
            rng_shuffle_int(&r, perm, n);
            for (size_t i = 0; i < nv; i++) is_val[perm[i]] = 1;
            if (!va.e || va.cap < va.n + nv) {
                data_example *p = realloc(va.e, (va.n + nv) * sizeof *p);
                if (!p) {
                    lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
                    goto done;
                }
                va.e = p;
                va.cap = va.n + nv;
            }
            size_t w2 = from;
            for (size_t i = 0; i < n; i++) {
                if (is_val[i]) va.e[va.n++] = tr.e[from + i];
                else tr.e[w2++] = tr.e[from + i];
            }
            tr.n = w2;
            /* the table holds positions that just moved */
            free(d.slot);
            d.slot = NULL;
            d.cap = 0;
        }
        ds->file_end[f] = tr.n;
    }
    if (o->validation_file) {
        dedupe dv = {0};
        int r1 = build_file(&b, o->validation_file, -1, &va, err);
        int r2 = r1 ? -1 : dedupe_run(&dv, &va, 0, &ds->n_duplicates, err);
        free(dv.slot);
        if (r2) goto done;
    }
    if (ds->n_duplicates) warnf(o, "%lld exact duplicate rows dropped", (long long)ds->n_duplicates);
    if (!tr.n) {
        char lens[200] = "";
        if (ds->n_dropped) len_summary(&b, 0, lens, sizeof lens);
        lr_errp(err, LR_E_INVALID, "training_file", "no training rows left (%lld dropped for max_seq_len %d, "
                "%lld duplicates, %zu for validation)%s%s", (long long)ds->n_dropped, o->max_seq_len,
                (long long)ds->n_duplicates, va.n, lens[0] ? ": " : "", lens);
        goto done;
    }
    ds->train = tr.e;
    ds->n_train = tr.n;
    ds->val = va.e;
    ds->n_val = va.n;
    tr.e = va.e = NULL;
    tr.n = va.n = 0;
    rc = 0;
done:
    for (size_t i = 0; i < tr.n; i++) example_free(&tr.e[i]);
    for (size_t i = 0; i < va.n; i++) example_free(&va.e[i]);
    free(tr.e);
    free(va.e);
    free(d.slot);
    free(perm);
    free(is_val);
    free(b.lens);
    return rc;
}

void data_set_free(data_set *ds) {
    for (size_t i = 0; i < ds->n_train; i++) example_free(&ds->train[i]);
    for (size_t i = 0; i < ds->n_val; i++) example_free(&ds->val[i]);
    free(ds->train);
    free(ds->val);
    memset(ds, 0, sizeof *ds);
}

/* ---- loading batches --------------------------------------------------------- */

int data_loader_init(data_loader *L, const data_set *ds, data_split split, int batch_size,
                     int packing, int max_seq_len, uint64_t seed, lr_err *err) {
    memset(L, 0, sizeof *L);
    if (batch_size < 1) return lr_errp(err, LR_E_INVALID, "hyperparameters.batch_size", "batch_size must be at least 1");
    if (packing && ds->dpo)
        return lr_errp(err, LR_E_INVALID, "hyperparameters.packing", "packing is not supported with method dpo");
    if (packing && max_seq_len < 1)
        return lr_errp(err, LR_E_INVALID, "hyperparameters.max_seq_len", "packing needs max_seq_len");
    L->ds = ds;
    L->split = split;
    L->batch_size = batch_size;
    L->packing = packing;
    L->max_seq_len = max_seq_len;
    L->seed = seed;
    L->order_epoch = -1;
    return 0;
}

void data_loader_free(data_loader *L) {
    free(L->order);
    L->order = NULL;
}

data_pos data_tell(const data_loader *L) { return L->pos; }

void data_seek(data_loader *L, data_pos pos) { L->pos = pos; }

/* The order of epoch e (see the mixing rule in data.h). */
static int make_order(data_loader *L, int64_t epoch, lr_err *err) {
    const data_set *ds = L->ds;
    if (L->order_epoch == epoch && L->order) return 0;
    size_t total = 0;
    if (L->split == DATA_VAL) total = ds->n_val;
    else
        for (int f = 0; f < ds->n_files; f++) {
            size_t n = ds->file_end[f] - (f ? ds->file_end[f - 1] : 0);
            total += n * (size_t)ceil(ds->weight[f]);
        }
    int64_t *o = malloc((total ? total : 1) * sizeof *o);
    if (!o) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory");
    size_t k = 0;
    if (L->split == DATA_VAL) {
        for (size_t i = 0; i < ds->n_val; i++) o[k++] = (int64_t)i;
    } else {
        lr_rng r;
        rng_stream(&r, L->seed, STREAM_EPOCH + (uint64_t)epoch);
        for (int f = 0; f < ds->n_files; f++) {
            size_t a = f ? ds->file_end[f - 1] : 0, n = ds->file_end[f] - a;
            double w = ds->weight[f], whole = floor(w);
            for (double rep = 0; rep < whole; rep++)
                for (size_t i = 0; i < n; i++) o[k++] = (int64_t)(a + i);
            size_t m = (size_t)llround((w - whole) * (double)n);
            /* m distinct rows: a partial Fisher-Yates over the file's rows,
             * done in the tail of o that is free */
            int64_t *pool = o + k;
            for (size_t i = 0; i < n && m; i++) pool[i] = (int64_t)(a + i);
            for (size_t i = 0; i < m; i++) {
                size_t j = i + (size_t)rng_below(&r, n - i);
                int64_t t = pool[i];
                pool[i] = pool[j];
                pool[j] = t;
            }
            k += m;
        }
        for (size_t i = k; i > 1; i--) {
            size_t j = (size_t)rng_below(&r, i);
            int64_t t = o[i - 1];
            o[i - 1] = o[j];
            o[j] = t;
        }
    }
    free(L->order);
    L->order = o;
    L->n_order = (int64_t)k;
    L->order_epoch = epoch;
    return 0;
}

static const data_example *ex_at(const data_loader *L, int64_t i) {
    const data_set *ds = L->ds;
    return L->split == DATA_VAL ? &ds->val[L->order[i]] : &ds->train[L->order[i]];
}

/* How many examples from index i go into one micro-batch. */
static int64_t batch_span(const data_loader *L, int64_t i) {
    if (!L->packing) {
        int64_t left = L->n_order - i;
        return left < L->batch_size ? left : L->batch_size;
    }
    int64_t j = i;
    for (int row = 0; row < L->batch_size && j < L->n_order; row++) {
        int used = 0;
        while (j < L->n_order && used + ex_at(L, j)->n <= L->max_seq_len) used += ex_at(L, j++)->n;
        if (!used) j++; /* longer than a row (no max_seq_len cut): alone, cut */
    }
    return j - i;
}

int64_t data_epoch_batches(data_loader *L, int64_t epoch) {
    lr_err e;
    if (make_order(L, epoch, &e)) return -1;
    int64_t nb = 0;
    for (int64_t i = 0; i < L->n_order; i += batch_span(L, i)) nb++;
    return nb;
}

static int batch_reserve(data_batch *b, int rows, int T, int32_t pad, lr_err *err) {
    size_t need = (size_t)rows * (size_t)T;
    if (need > b->cap || !b->ids) {
        int32_t *ids = realloc(b->ids, (need ? need : 1) * sizeof *ids);
        if (ids) b->ids = ids;
        int32_t *lab = realloc(b->labels, (need ? need : 1) * sizeof *lab);
        if (lab) b->labels = lab;
        if (!ids || !lab) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory for a batch");
        b->cap = need;
    }
    int *lens = realloc(b->lens, (size_t)(rows ? rows : 1) * sizeof *lens);
    if (!lens) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory for a batch");
    b->lens = lens;
    b->rows = rows;
    b->T = T;
    for (size_t i = 0; i < need; i++) {
        b->ids[i] = pad;
        b->labels[i] = CHAT_IGNORE;
    }
    for (int r = 0; r < rows; r++) b->lens[r] = 0;
    b->n_tokens = b->n_targets = 0;
    return 0;
}

/* Appends n tokens to row r of b at its current length. */
static void put_row(data_batch *b, int r, const int32_t *ids, const int32_t *labels, int n) {
    int32_t *di = b->ids + (size_t)r * (size_t)b->T + b->lens[r];
    int32_t *dl = b->labels + (size_t)r * (size_t)b->T + b->lens[r];
    memcpy(di, ids, (size_t)n * sizeof *di);
    memcpy(dl, labels, (size_t)n * sizeof *dl);
    b->lens[r] += n;
    b->n_tokens += n;
    for (int i = 0; i < n; i++) b->n_targets += labels[i] != CHAT_IGNORE;
}

int data_next(data_loader *L, data_batch *b, lr_err *err) {
    const data_set *ds = L->ds;
    if (make_order(L, L->pos.epoch, err)) return -1;
    int64_t i = L->pos.index;
    if (i >= L->n_order) {
        L->pos.epoch++;
        L->pos.index = 0;
        return 0;
    }
    int64_t span = batch_span(L, i);
    if (!L->packing) {
        int nex = (int)span, T = 1;
        for (int k = 0; k < nex; k++) {
            const data_example *e = ex_at(L, i + k);
            if (e->n > T) T = e->n;
            if (ds->dpo && e->rej_n > T) T = e->rej_n;
        }
        if (batch_reserve(b, ds->dpo ? 2 * nex : nex, T, ds->pad_id, err)) return -1;
        for (int k = 0; k < nex; k++) {
            const data_example *e = ex_at(L, i + k);
            put_row(b, k, e->ids, e->labels, e->n);
            if (ds->dpo) put_row(b, nex + k, e->rej_ids, e->rej_labels, e->rej_n);
        }
    } else {
        int T = L->max_seq_len, rows = 0;
        if (batch_reserve(b, L->batch_size, T, ds->pad_id, err)) return -1;
        for (int64_t j = i; j < i + span; rows++) {
            while (j < i + span && b->lens[rows] + ex_at(L, j)->n <= T) {
                const data_example *e = ex_at(L, j++);
                put_row(b, rows, e->ids, e->labels, e->n);
            }
            if (!b->lens[rows]) {
                const data_example *e = ex_at(L, j++);
                put_row(b, rows, e->ids, e->labels, T);
            }
        }
        b->rows = rows;
    }
    b->n_examples = (int)span;
    L->pos.index = i + span;
    return 1;
}

void data_batch_free(data_batch *b) {
    free(b->ids);
    free(b->labels);
    free(b->lens);
    memset(b, 0, sizeof *b);
}
