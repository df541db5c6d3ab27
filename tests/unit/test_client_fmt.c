/* client/fmt: durations, numbers, bars, sparklines, widths. */
#include "tests/unit/test.h"

#include "client/fmt.h"

TEST(duration_units) {
    char b[32];
    fmt_duration(0, b, sizeof b);
    CHECK_STR(b, "0s");
    fmt_duration(45.4, b, sizeof b);
    CHECK_STR(b, "45s");
    fmt_duration(192, b, sizeof b);
    CHECK_STR(b, "3m12s");
    fmt_duration(2 * 3600 + 5 * 60 + 20, b, sizeof b);
    CHECK_STR(b, "2h05m");
    fmt_duration(3 * 86400 + 4 * 3600 + 59, b, sizeof b);
    CHECK_STR(b, "3d04h");
    fmt_duration(-1, b, sizeof b);
    CHECK_STR(b, "-");
    fmt_duration(NAN, b, sizeof b);
    CHECK_STR(b, "-");
    fmt_duration(59.6, b, sizeof b); /* rounds to a minute, not "60s" */
    CHECK_STR(b, "1m00s");
}

TEST(eta_from_rate) {
    CHECK_NEAR(fmt_eta(100, 25, 100), 300, 1e-9);
    CHECK_NEAR(fmt_eta(10, 100, 100), 0, 1e-9);
    CHECK_EQ_INT(fmt_eta(10, 0, 100), -1);
    CHECK_EQ_INT(fmt_eta(10, 5, 0), -1);
    CHECK_EQ_INT(fmt_eta(NAN, 5, 10), -1);
}

TEST(numbers) {
    char b[32];
    fmt_num(1.23456, b, sizeof b);
    CHECK_STR(b, "1.235");
    fmt_num(12.3456, b, sizeof b);
    CHECK_STR(b, "12.35");
    fmt_num(0.012345, b, sizeof b);
    CHECK_STR(b, "0.01235");
    fmt_num(2e-4, b, sizeof b);
    CHECK_STR(b, "2.0e-04");
    fmt_num(0, b, sizeof b);
    CHECK_STR(b, "0");
    fmt_num(NAN, b, sizeof b);
    CHECK_STR(b, "-");
    fmt_num(INFINITY, b, sizeof b);
    CHECK_STR(b, "-");
}

TEST(bytes) {
    char b[32];
    fmt_bytes(512, b, sizeof b);
    CHECK_STR(b, "512 B");
    fmt_bytes(1536, b, sizeof b);
    CHECK_STR(b, "1.5 KiB");
    fmt_bytes(12.5 * 1024 * 1024, b, sizeof b);
    CHECK_STR(b, "12 MiB");
    fmt_bytes(3.0 * 1024 * 1024 * 1024, b, sizeof b);
    CHECK_STR(b, "3.0 GiB");
}

TEST(bar_ascii) {
    char b[64];
    fmt_bar(0.5, 10, 0, b, sizeof b);
    CHECK_STR(b, "#####-----");
    fmt_bar(0, 4, 0, b, sizeof b);
    CHECK_STR(b, "----");
    fmt_bar(1.7, 4, 0, b, sizeof b); /* clamped */
    CHECK_STR(b, "####");
    fmt_bar(NAN, 3, 0, b, sizeof b);
    CHECK_STR(b, "---");
}

TEST(bar_utf8_eighths) {
    char b[128];
    fmt_bar(0.5, 4, 1, b, sizeof b);
    CHECK_STR(b, "██░░");
    fmt_bar(0.3125, 4, 1, b, sizeof b); /* 1.25 cells: one full, a quarter */
    CHECK_STR(b, "█▎░░");
    fmt_bar(1, 3, 1, b, sizeof b);
    CHECK_STR(b, "███");
    CHECK_EQ_INT(fmt_width(b), 3);
    fmt_bar(0.5, 10, 1, b, 8); /* tiny buffer: whole cells only, terminated */
    CHECK_EQ_INT(strlen(b), 6);
}

TEST(sparkline_levels) {
    char b[128];
    double v[] = {8, 7, 6, 5, 4, 3, 2, 1};
    fmt_sparkline(v, 8, 20, 1, b, sizeof b);
    CHECK_STR(b, "█▇▆▅▄▃▂▁");
    fmt_sparkline(v, 8, 20, 0, b, sizeof b);
    CHECK_STR(b, "#*+=:-._");
    double flat[] = {2, 2, 2};
    fmt_sparkline(flat, 3, 20, 1, b, sizeof b);
    CHECK_STR(b, "▁▁▁");
    double gap[] = {1, NAN, 3};
    fmt_sparkline(gap, 3, 20, 0, b, sizeof b);
    CHECK_STR(b, "_ #");
    fmt_sparkline(v, 0, 20, 1, b, sizeof b);
    CHECK_STR(b, "");
}

TEST(sparkline_downsamples) {
    double v[1000];
    char b[256];
    for (int i = 0; i < 1000; i++) v[i] = 1000 - i;
    fmt_sparkline(v, 1000, 10, 1, b, sizeof b);
    CHECK_EQ_INT(fmt_width(b), 10);
    CHECK(!strncmp(b, "█", strlen("█")));
    CHECK(!strcmp(b + strlen(b) - strlen("▁"), "▁"));
}

TEST(locale) {
    CHECK(fmt_locale_utf8(NULL, NULL, "en_US.UTF-8"));
    CHECK(fmt_locale_utf8(NULL, NULL, "C.utf8"));
    CHECK(!fmt_locale_utf8(NULL, NULL, "C"));
    CHECK(!fmt_locale_utf8(NULL, NULL, NULL));
    CHECK(!fmt_locale_utf8("C", NULL, "en_US.UTF-8")); /* LC_ALL wins */
    CHECK(fmt_locale_utf8("", "de_DE.UTF-8", "C"));
}

TEST(width_and_truncate) {
    char b[64];
    CHECK_EQ_INT(fmt_width("abc"), 3);
    CHECK_EQ_INT(fmt_width("é–×"), 3);
    CHECK_EQ_INT(fmt_width("日本"), 4);
    fmt_truncate("hello world", 8, 1, b, sizeof b);
    CHECK_STR(b, "hello w…");
    fmt_truncate("hello world", 8, 0, b, sizeof b);
    CHECK_STR(b, "hello w~");
    fmt_truncate("short", 8, 1, b, sizeof b);
    CHECK_STR(b, "short");
    fmt_truncate("ééééé", 3, 1, b, sizeof b); /* never half a character */
    CHECK_STR(b, "éé…");
    fmt_truncate("日本語", 4, 0, b, sizeof b);
    CHECK_STR(b, "日~");
}
