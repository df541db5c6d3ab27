/* test.h: the unit-test harness. Each tests/unit/test_*.c is one program;
 * TEST(name) registers a case; CHECK* record failures and go on; SKIP says
 * why a case cannot run here. The program prints one line per case
 * ("ok", "FAIL", "skip: reason") and a closing "N passed, N failed, N skipped"
 * that tests/run.sh adds up. Paths: LR_FIXTURES (default ../shared/fixtures). */
#ifndef LR_TEST_H
#define LR_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void (*test_fn)(void);
void test_register(const char *name, test_fn fn);
void test_fail(const char *file, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void test_skip(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int test_skipped(void);
/* Absolute path of a fixture file under ../shared/fixtures (or $LR_FIXTURES). */
const char *test_fixture(const char *rel);
/* A fresh temporary directory for this case, removed at exit. */
const char *test_tmpdir(void);

#define TEST(name)                                                          \
    static void test_##name(void);                                          \
    __attribute__((constructor)) static void test_reg_##name(void) {        \
        test_register(#name, test_##name);                                  \
    }                                                                       \
    static void test_##name(void)

#define CHECK(cond)                                                         \
    do {                                                                    \
        if (!(cond)) test_fail(__FILE__, __LINE__, "CHECK(%s)", #cond);     \
    } while (0)
#define CHECKF(cond, ...)                                                   \
    do {                                                                    \
        if (!(cond)) test_fail(__FILE__, __LINE__, __VA_ARGS__);            \
    } while (0)
#define CHECK_EQ_INT(a, b)                                                  \
    do {                                                                    \
        long long a_ = (long long)(a), b_ = (long long)(b);                 \
        if (a_ != b_)                                                       \
            test_fail(__FILE__, __LINE__, "%s == %s: %lld != %lld", #a, #b, a_, b_); \
    } while (0)
#define CHECK_STR(a, b)                                                     \
    do {                                                                    \
        const char *a_ = (a), *b_ = (b);                                    \
        if (!a_ || !b_ || strcmp(a_, b_))                                   \
            test_fail(__FILE__, __LINE__, "%s == %s: \"%s\" != \"%s\"", #a, #b, \
                      a_ ? a_ : "(null)", b_ ? b_ : "(null)");             \
    } while (0)
#define CHECK_NEAR(a, b, tol)                                               \
    do {                                                                    \
        double a_ = (a), b_ = (b);                                          \
        if (!(fabs(a_ - b_) <= (tol)))                                      \
            test_fail(__FILE__, __LINE__, "%s ~ %s: %.9g vs %.9g (tol %g)", #a, #b, a_, b_, (double)(tol)); \
    } while (0)
/* Stop the case here (after a failed precondition). */
#define REQUIRE(cond)                                                       \
    do {                                                                    \
        if (!(cond)) {                                                      \
            test_fail(__FILE__, __LINE__, "REQUIRE(%s)", #cond);            \
            return;                                                         \
        }                                                                   \
    } while (0)
#define SKIP(...)                                                           \
    do {                                                                    \
        test_skip(__VA_ARGS__);                                             \
        return;                                                             \
    } while (0)

#endif
