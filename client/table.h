/* table: the column layout of `lora ls`, `lora sweep show`, `lora workers`...
 * Columns are as wide as their widest cell (in display columns, so UTF-8
 * names line up), separated by two spaces; numeric columns align right; a
 * column may have a maximum width past which cells are cut with an ellipsis.
 * A cell may carry an SGR colour ("32" green) used only when printing with
 * colour, applied after padding so that widths never count escape codes. */
#ifndef LR_CLIENT_TABLE_H
#define LR_CLIENT_TABLE_H

#include <stdio.h>
#include "common/err.h"

typedef struct table table;

/* A table with ncols columns named by headers (copied). NULL on OOM. */
table *table_new(int ncols, const char *const *headers);
void table_free(table *t);
/* Right-aligns a column (numbers). */
void table_align_right(table *t, int col);
/* Caps a column at cols display columns (0 = no cap). */
void table_max_width(table *t, int col, int cols);
/* Starts a new row whose cells are empty. */
int table_add_row(table *t) LR_WARN_UNUSED;
/* Sets a cell of the last row (text copied; sgr may be NULL). */
int table_set(table *t, int col, const char *text, const char *sgr) LR_WARN_UNUSED;
int table_rows(const table *t);
/* Prints the header and the rows. utf8 picks the ellipsis; color enables the
 * cells' SGR codes and a bold header. */
void table_print(const table *t, FILE *f, int utf8, int color);

#endif
