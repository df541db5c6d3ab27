/* client/cfg: config file and precedence. */
#include "tests/unit/test.h"

#include <sys/stat.h>

#include "client/cfg.h"

TEST(path_rules) {
    char p[256];
    lr_err err = {0};
    CHECK(!cfg_path("/x/c", "/xdg", "/home/u", p, sizeof p, &err));
    CHECK_STR(p, "/x/c");
    CHECK(!cfg_path(NULL, "/xdg", "/home/u", p, sizeof p, &err));
    CHECK_STR(p, "/xdg/lora/config");
    CHECK(!cfg_path("", "", "/home/u", p, sizeof p, &err));
    CHECK_STR(p, "/home/u/.config/lora/config");
    CHECK(cfg_path(NULL, NULL, NULL, p, sizeof p, &err) == -1);
}

TEST(save_load_roundtrip_private) {
    char path[512];
    lr_err err = {0};
    snprintf(path, sizeof path, "%s/sub/dir/config", test_tmpdir());
    cfg c = {0}, back = {0};
    snprintf(c.url, sizeof c.url, "http://127.0.0.1:9999");
    snprintf(c.token, sizeof c.token, "tok-secret");
    REQUIRE(!cfg_save(path, &c, &err));
    struct stat st;
    REQUIRE(!stat(path, &st));
    CHECK_EQ_INT(st.st_mode & 0777, 0600);
    REQUIRE(!cfg_load(path, &back, &err));
    CHECK_STR(back.url, c.url);
    CHECK_STR(back.token, c.token);
    cfg none = {0};
    snprintf(path, sizeof path, "%s/missing", test_tmpdir());
    CHECK(!cfg_load(path, &none, &err)); /* a missing file is fine */
    CHECK_STR(none.url, "");
}

TEST(load_syntax) {
    char path[512];
    lr_err err = {0};
    snprintf(path, sizeof path, "%s/c1", test_tmpdir());
    FILE *f = fopen(path, "w");
    REQUIRE(f);
    fprintf(f, "# comment\n\n  url =  http://h:1/  \nfuture = x\ntoken=abc\n");
    fclose(f);
    cfg c = {0};
    REQUIRE(!cfg_load(path, &c, &err));
    CHECK_STR(c.url, "http://h:1/");
    CHECK_STR(c.token, "abc");
    f = fopen(path, "w");
    REQUIRE(f);
    fprintf(f, "url http://x\n");
    fclose(f);
    CHECK(cfg_load(path, &c, &err) == -1);
    CHECK(strstr(err.msg, "line 1: expected 'key = value'") != NULL);
}

TEST(precedence) {
    cfg file = {0}, out;
    snprintf(file.url, sizeof file.url, "http://file:1");
    snprintf(file.token, sizeof file.token, "ftok");
    cfg_resolve(&out, "http://flag:1/", "fl", "http://env:1", "et", &file, "/p");
    CHECK_STR(out.url, "http://flag:1");
    CHECK_STR(out.token, "fl");
    CHECK_STR(out.url_from, "--url");
    cfg_resolve(&out, NULL, NULL, "http://env:1", "et", &file, "/p");
    CHECK_STR(out.url, "http://env:1");
    CHECK_STR(out.token, "et");
    cfg_resolve(&out, NULL, "", "", NULL, &file, "/p");
    CHECK_STR(out.url, "http://file:1");
    CHECK_STR(out.token, "ftok");
    CHECK_STR(out.url_from, "/p");
    cfg_resolve(&out, NULL, NULL, NULL, NULL, NULL, NULL);
    CHECK_STR(out.url, CFG_DEFAULT_URL);
    CHECK_STR(out.token, "");
    cfg_resolve(&out, "127.0.0.1:8080", NULL, NULL, NULL, NULL, NULL); /* scheme added */
    CHECK_STR(out.url, "http://127.0.0.1:8080");
}
