#include "client/table.h"

#include <stdlib.h>
#include <string.h>

#include "client/fmt.h"

#define TABLE_MAX_COLS 32

typedef struct cell {
    char *text;
    char sgr[16];
} cell;

struct table {
    int ncols, nrows, cap_rows;
    char *headers[TABLE_MAX_COLS];
    int right[TABLE_MAX_COLS];
    int maxw[TABLE_MAX_COLS];
    cell *cells; /* nrows * ncols */
};

table *table_new(int ncols, const char *const *headers) {
    if (ncols < 1 || ncols > TABLE_MAX_COLS) return NULL;
    table *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    t->ncols = ncols;
    for (int c = 0; c < ncols; c++) {
        t->headers[c] = strdup(headers[c]);
        if (!t->headers[c]) {
            table_free(t);
            return NULL;
        }
    }
    return t;
}

void table_free(table *t) {
    if (!t) return;
    for (int c = 0; c < t->ncols; c++) free(t->headers[c]);
    for (int i = 0; i < t->nrows * t->ncols; i++) free(t->cells[i].text);
    free(t->cells);
    free(t);
}

void table_align_right(table *t, int col) {
    if (col >= 0 && col < t->ncols) t->right[col] = 1;
}

void table_max_width(table *t, int col, int cols) {
    if (col >= 0 && col < t->ncols) t->maxw[col] = cols;
}

int table_add_row(table *t) {
    if (t->nrows == t->cap_rows) {
        int cap = t->cap_rows ? t->cap_rows * 2 : 16;
        cell *c = realloc(t->cells, (size_t)cap * (size_t)t->ncols * sizeof *c);
        if (!c) return -1;
        t->cells = c;
        t->cap_rows = cap;
    }
    memset(t->cells + (size_t)t->nrows * (size_t)t->ncols, 0, (size_t)t->ncols * sizeof(cell));
    t->nrows++;
    return 0;
}

int table_set(table *t, int col, const char *text, const char *sgr) {
    if (!t->nrows || col < 0 || col >= t->ncols) return -1;
    cell *c = &t->cells[(size_t)(t->nrows - 1) * (size_t)t->ncols + (size_t)col];
    char *dup = strdup(text ? text : "");
    if (!dup) return -1;
    free(c->text);
    c->text = dup;
    snprintf(c->sgr, sizeof c->sgr, "%s", sgr ? sgr : "");
    return 0;
}

int table_rows(const table *t) { return t->nrows; }

static void print_cell(FILE *f, const char *text, int width, int right, int last, const char *sgr,
                       int color) {
    int pad = width - fmt_width(text);
    if (pad < 0) pad = 0;
    if (right) fprintf(f, "%*s", pad, "");
    if (color && sgr && *sgr)
        fprintf(f, "\x1b[%sm%s\x1b[0m", sgr, text);
    else
        fputs(text, f);
    /* no trailing blanks on the last column: piped output stays diff-clean */
    if (!right && !last) fprintf(f, "%*s", pad, "");
}

void table_print(const table *t, FILE *f, int utf8, int color) {
    int w[TABLE_MAX_COLS];
    char buf[1024];
    for (int c = 0; c < t->ncols; c++) {
        w[c] = fmt_width(t->headers[c]);
        for (int r = 0; r < t->nrows; r++) {
            const char *s = t->cells[(size_t)r * (size_t)t->ncols + (size_t)c].text;
            int cw = s ? fmt_width(s) : 0;
            if (cw > w[c]) w[c] = cw;
        }
        if (t->maxw[c] > 0 && w[c] > t->maxw[c]) w[c] = t->maxw[c];
    }
    for (int c = 0; c < t->ncols; c++) {
        if (c) fputs("  ", f);
        fmt_truncate(t->headers[c], w[c], utf8, buf, sizeof buf);
        print_cell(f, buf, w[c], t->right[c], c == t->ncols - 1, color ? "1" : NULL, color);
    }
    fputc('\n', f);
    for (int r = 0; r < t->nrows; r++) {
        for (int c = 0; c < t->ncols; c++) {
            const cell *x = &t->cells[(size_t)r * (size_t)t->ncols + (size_t)c];
            if (c) fputs("  ", f);
            fmt_truncate(x->text ? x->text : "", w[c], utf8, buf, sizeof buf);
            print_cell(f, buf, w[c], t->right[c], c == t->ncols - 1, x->sgr, color);
        }
        fputc('\n', f);
    }
}
