/* The harness's runner, linked into every unit-test program. */
#include "tests/unit/test.h"

#include <stdarg.h>
#include <unistd.h>

#define TEST_MAX 512

static struct {
    const char *name;
    test_fn fn;
} tests[TEST_MAX];
static int ntests;
static int cur_failed, cur_skipped;
static char skip_reason[512];
static char tmpdir[256];

void test_register(const char *name, test_fn fn) {
    if (ntests < TEST_MAX) {
        tests[ntests].name = name;
        tests[ntests].fn = fn;
        ntests++;
    }
}

void test_fail(const char *file, int line, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (cur_failed < 20) printf("    %s:%d: %s\n", file, line, msg);
    cur_failed++;
}

void test_skip(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(skip_reason, sizeof skip_reason, fmt, ap);
    va_end(ap);
    cur_skipped = 1;
}

int test_skipped(void) { return cur_skipped; }

const char *test_fixture(const char *rel) {
    static char path[8][1024];
    static int slot;
    const char *root = getenv("LR_FIXTURES");
    if (!root) root = "../shared/fixtures";
    char *p = path[slot++ % 8];
    snprintf(p, 1024, "%s/%s", root, rel);
    return p;
}

const char *test_tmpdir(void) {
    if (!tmpdir[0]) {
        snprintf(tmpdir, sizeof tmpdir, "/tmp/lrtest.XXXXXX");
        if (!mkdtemp(tmpdir)) {
            perror("mkdtemp");
            exit(2);
        }
    }
    return tmpdir;
}

static void cleanup_tmpdir(void) {
    if (tmpdir[0] && !getenv("LR_KEEP_TMP")) {
        char cmd[512];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
        if (system(cmd)) fprintf(stderr, "could not remove %s\n", tmpdir);
    }
}

int main(int argc, char **argv) {
    int passed = 0, failed = 0, skipped = 0;
    const char *only = argc > 1 ? argv[1] : NULL;
    atexit(cleanup_tmpdir);
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 0; i < ntests; i++) {
        if (only && !strstr(tests[i].name, only)) continue;
        cur_failed = cur_skipped = 0;
        skip_reason[0] = 0;
        tests[i].fn();
        if (cur_failed) {
            printf("FAIL %s\n", tests[i].name);
            failed++;
        } else if (cur_skipped) {
            printf("skip %s: %s\n", tests[i].name, skip_reason);
            skipped++;
        } else {
            printf("ok   %s\n", tests[i].name);
            passed++;
        }
    }
    printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
    return failed ? 1 : 0;
}
