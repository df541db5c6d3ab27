#include "formats/data.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/buf.h"
#include "formats/utf8.h"

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
