/* client/table: column layout. */
#include "tests/unit/test.h"

#include <stdio.h>

#include "client/table.h"

static char *render(table *t, int utf8, int color) {
    char *out = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&out, &len);
    table_print(t, f, utf8, color);
    fclose(f);
    return out;
}

TEST(layout_and_alignment) {
    static const char *const hd[] = {"ID", "NAME", "LOSS"};
    table *t = table_new(3, hd);
    REQUIRE(t);
    table_align_right(t, 2);
    CHECK(!table_add_row(t) && !table_set(t, 0, "ftjob-1", NULL) && !table_set(t, 1, "a", NULL) &&
          !table_set(t, 2, "1.234", NULL));
    CHECK(!table_add_row(t) && !table_set(t, 0, "j2", NULL) && !table_set(t, 1, "longer name", NULL) &&
          !table_set(t, 2, "12.5", NULL));
    CHECK_EQ_INT(table_rows(t), 2);
    char *s = render(t, 1, 0);
    CHECK_STR(s, "ID       NAME          LOSS\n"
                 "ftjob-1  a            1.234\n"
                 "j2       longer name   12.5\n");
    free(s);
    table_free(t);
}

TEST(utf8_widths_line_up) {
    static const char *const hd[] = {"NAME", "X"};
    table *t = table_new(2, hd);
    REQUIRE(t);
    CHECK(!table_add_row(t) && !table_set(t, 0, "café", NULL) && !table_set(t, 1, "1", NULL));
    CHECK(!table_add_row(t) && !table_set(t, 0, "日本", NULL) && !table_set(t, 1, "2", NULL));
    char *s = render(t, 1, 0);
    CHECK_STR(s, "NAME  X\ncafé  1\n日本  2\n");
    free(s);
    table_free(t);
}

TEST(max_width_cuts) {
    static const char *const hd[] = {"NAME", "N"};
    table *t = table_new(2, hd);
    REQUIRE(t);
    table_max_width(t, 0, 6);
    CHECK(!table_add_row(t) && !table_set(t, 0, "a-very-long-name", NULL) && !table_set(t, 1, "1", NULL));
    char *s = render(t, 0, 0);
    CHECK_STR(s, "NAME    N\na-ver~  1\n");
    free(s);
    table_free(t);
}

TEST(color_does_not_change_widths) {
    static const char *const hd[] = {"STATUS", "N"};
    table *t = table_new(2, hd);
    REQUIRE(t);
    CHECK(!table_add_row(t) && !table_set(t, 0, "failed", "31") && !table_set(t, 1, "1", NULL));
    CHECK(!table_add_row(t) && !table_set(t, 0, "ok", NULL) && !table_set(t, 1, "2", NULL));
    char *s = render(t, 1, 1);
    CHECK_STR(s, "\x1b[1mSTATUS\x1b[0m  \x1b[1mN\x1b[0m\n\x1b[31mfailed\x1b[0m  1\nok      2\n");
    free(s);
    s = render(t, 1, 0);
    CHECK_STR(s, "STATUS  N\nfailed  1\nok      2\n");
    free(s);
    table_free(t);
}

TEST(errors) {
    static const char *const hd[] = {"A"};
    CHECK(table_new(0, hd) == NULL);
    table *t = table_new(1, hd);
    REQUIRE(t);
    CHECK(table_set(t, 0, "x", NULL) != 0); /* no row yet */
    CHECK(!table_add_row(t));
    CHECK(table_set(t, 1, "x", NULL) != 0);
    for (int i = 0; i < 100; i++) CHECK(!table_add_row(t)); /* grows */
    CHECK_EQ_INT(table_rows(t), 101);
    table_free(t);
}
