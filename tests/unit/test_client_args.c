/* client/args: the option parser. */
#include "tests/unit/test.h"

#include "client/args.h"

static const arg_opt g[] = {
    {"url", 0, ARG_VALUE, "URL", "server"},
    {"json", 0, ARG_FLAG, NULL, "json"},
    {"help", 'h', ARG_FLAG, NULL, "help"},
    {NULL, 0, 0, NULL, NULL},
};
static const arg_opt cmd[] = {
    {"set", 's', ARG_LIST, "K=V", "override"},
    {"name", 0, ARG_VALUE, "N", "name"},
    {"follow", 'f', ARG_FLAG, NULL, "follow"},
    {"limit", 'n', ARG_VALUE, "N", "limit"},
    {NULL, 0, 0, NULL, NULL},
};

static args a; /* large */

TEST(forms) {
    char *argv[] = {"job.yaml", "--set", "lora.r=32", "-s", "learning_rate=1e-4", "--name=x", "--json", "-f",
                    "--url", "http://h:1", "--set=a=b", "extra"};
    lr_err err = {0};
    REQUIRE(!args_parse(&a, g, cmd, 12, argv, &err));
    CHECK_EQ_INT(a.npos, 2);
    CHECK_STR(a.pos[0], "job.yaml");
    CHECK_STR(a.pos[1], "extra");
    const char *const *l;
    CHECK_EQ_INT(args_list(&a, "set", &l), 3);
    CHECK_STR(l[0], "lora.r=32");
    CHECK_STR(l[1], "learning_rate=1e-4");
    CHECK_STR(l[2], "a=b");
    CHECK_STR(args_get(&a, "name", NULL), "x");
    CHECK_STR(args_get(&a, "url", NULL), "http://h:1");
    CHECK_EQ_INT(args_count(&a, "json"), 1);
    CHECK_EQ_INT(args_count(&a, "follow"), 1);
    CHECK_EQ_INT(args_count(&a, "help"), 0);
    CHECK_STR(args_get(&a, "limit", "dflt"), "dflt");
    CHECK_EQ_INT(args_count(&a, "nonexistent"), 0);
}

TEST(double_dash_and_dash) {
    char *argv[] = {"-", "--", "--json", "-f"};
    lr_err err = {0};
    REQUIRE(!args_parse(&a, g, cmd, 4, argv, &err));
    CHECK_EQ_INT(a.npos, 3);
    CHECK_STR(a.pos[0], "-");
    CHECK_STR(a.pos[1], "--json");
    CHECK_EQ_INT(args_count(&a, "json"), 0);
}

TEST(value_may_look_like_a_flag) {
    char *argv[] = {"--name", "-x"};
    lr_err err = {0};
    REQUIRE(!args_parse(&a, g, cmd, 2, argv, &err));
    CHECK_STR(args_get(&a, "name", NULL), "-x");
}

TEST(errors_name_the_flag) {
    lr_err err = {0};
    char *u1[] = {"--bogus"};
    CHECK(args_parse(&a, g, cmd, 1, u1, &err) == -1);
    CHECK_STR(err.msg, "unknown flag --bogus");
    char *u2[] = {"--bogus=3"};
    CHECK(args_parse(&a, g, cmd, 1, u2, &err) == -1);
    CHECK_STR(err.msg, "unknown flag --bogus");
    char *u3[] = {"-z"};
    CHECK(args_parse(&a, g, cmd, 1, u3, &err) == -1);
    CHECK_STR(err.msg, "unknown flag -z");
    char *u4[] = {"--name"};
    CHECK(args_parse(&a, g, cmd, 1, u4, &err) == -1);
    CHECK_STR(err.msg, "--name needs a value (N)");
    char *u5[] = {"--json=1"};
    CHECK(args_parse(&a, g, cmd, 1, u5, &err) == -1);
    CHECK_STR(err.msg, "--json takes no value");
    char *u6[] = {"-fs"}; /* no bundling: said plainly rather than guessed */
    CHECK(args_parse(&a, g, cmd, 1, u6, &err) == -1);
}

TEST(integers) {
    lr_err err = {0};
    long long v;
    char *ok[] = {"-n", "25"};
    REQUIRE(!args_parse(&a, g, cmd, 2, ok, &err));
    CHECK(!args_int(&a, "limit", 50, 1, 100, &v, &err));
    CHECK_EQ_INT(v, 25);
    char *none[] = {"x"};
    REQUIRE(!args_parse(&a, g, cmd, 1, none, &err));
    CHECK(!args_int(&a, "limit", 50, 1, 100, &v, &err));
    CHECK_EQ_INT(v, 50);
    char *bad[] = {"--limit", "12x"};
    REQUIRE(!args_parse(&a, g, cmd, 2, bad, &err));
    CHECK(args_int(&a, "limit", 50, 1, 100, &v, &err) == -1);
    CHECK(strstr(err.msg, "--limit must be an integer between 1 and 100") != NULL);
    char *big[] = {"--limit", "1000"};
    REQUIRE(!args_parse(&a, g, cmd, 2, big, &err));
    CHECK(args_int(&a, "limit", 50, 1, 100, &v, &err) == -1);
}

TEST(help_lines) {
    char *out = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&out, &len);
    args_print_opts(f, cmd);
    fclose(f);
    CHECK(strstr(out, "  -s, --set K=V") != NULL);
    CHECK(strstr(out, "      --name N") != NULL);
    CHECK(strstr(out, "  -f, --follow ") != NULL);
    free(out);
}
