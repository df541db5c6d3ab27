/* lorad.yaml's packing keys (issue 19): packing auto|off [auto] and
 * pack_max_jobs 1..CONFIG_MAX_PACK [4], from the file and as flags; what
 * they refuse names the key. */
#include "tests/unit/test.h"

#include <stdio.h>

#include "daemon/config.h"

TEST(defaults_and_flags) {
    static lorad_config c;
    config_defaults(&c);
    CHECK_STR(c.packing, "auto");
    CHECK_EQ_INT(c.pack_max_jobs, 4);
    lr_err e = {0};
    CHECK(config_set(&c, "packing", "off", &e) == 0);
    CHECK(config_set(&c, "pack-max-jobs", "16", &e) == 0);
    CHECK_STR(c.packing, "off");
    CHECK_EQ_INT(c.pack_max_jobs, 16);
}

TEST(file_keys) {
    static lorad_config c;
    config_defaults(&c);
    char path[512];
    snprintf(path, sizeof path, "%s/lorad.yaml", test_tmpdir());
    FILE *f = fopen(path, "w");
    REQUIRE(f);
    fputs("packing: off\npack_max_jobs: 2\n", f);
    fclose(f);
    lr_err e = {0};
    CHECKF(config_load_file(&c, path, &e) == 0, "%s", e.msg);
    CHECK_STR(c.packing, "off");
    CHECK_EQ_INT(c.pack_max_jobs, 2);
}

TEST(refusals_name_the_key) {
    static lorad_config c;
    lr_err e = {0};
    config_defaults(&c);
    CHECK(config_set(&c, "pack_max_jobs", "0", &e) == -1);
    config_defaults(&c);
    lr_err e2 = {0};
    CHECK(config_set(&c, "pack_max_jobs", "17", &e2) == -1);
    config_defaults(&c);
    lr_err e3 = {0};
    REQUIRE(config_set(&c, "packing", "on", &e3) == 0); /* a string; config_finish checks it */
    CHECK(config_finish(&c, &e3) == -1);
    CHECK_STR(e3.param, "packing");
    CHECK(strstr(e3.msg, "auto or off") != NULL);
}
