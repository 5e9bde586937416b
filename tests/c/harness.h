/* harness.h - a minimal unit-test harness for the C tests.
 *
 * Each test file defines `static void test_xxx(void)` functions and lists them in
 * ANS_TEST_MAIN({"name", test_xxx}, ...). A failed check prints the file, line, expression and the
 * library's last error, and the test binary exits non-zero. The summary line reads
 * "N passed, M failed" so CI can count results. */
#ifndef ANS_TEST_HARNESS_H
#define ANS_TEST_HARNESS_H

#include "annstream.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int ans_t_failed_checks;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n  last error: %s\n", __FILE__, __LINE__,     \
                    #cond, ans_error_last());                                                      \
            ans_t_failed_checks++;                                                                 \
        }                                                                                          \
    } while (0)

/* Expect a status code. */
#define CHECK_RC(expr, want)                                                                       \
    do {                                                                                           \
        int ans_t_rc = (expr);                                                                     \
        if (ans_t_rc != (want)) {                                                                  \
            fprintf(stderr, "%s:%d: %s returned %d, expected %d\n  last error: %s\n", __FILE__,    \
                    __LINE__, #expr, ans_t_rc, (int)(want), ans_error_last());                     \
            ans_t_failed_checks++;                                                                 \
        }                                                                                          \
    } while (0)

#define CHECK_OK(expr) CHECK_RC(expr, ANS_OK)

#define CHECK_EQ_U64(a, b)                                                                         \
    do {                                                                                           \
        uint64_t ans_t_a = (uint64_t)(a), ans_t_b = (uint64_t)(b);                                 \
        if (ans_t_a != ans_t_b) {                                                                  \
            fprintf(stderr, "%s:%d: %s == %s failed: %" PRIu64 " != %" PRIu64 "\n", __FILE__,      \
                    __LINE__, #a, #b, ans_t_a, ans_t_b);                                           \
            ans_t_failed_checks++;                                                                 \
        }                                                                                          \
    } while (0)

#define CHECK_STR_CONTAINS(hay, needle)                                                            \
    do {                                                                                           \
        const char *ans_t_h = (hay);                                                               \
        if (!ans_t_h || !strstr(ans_t_h, (needle))) {                                              \
            fprintf(stderr, "%s:%d: \"%s\" does not contain \"%s\"\n", __FILE__, __LINE__,         \
                    ans_t_h ? ans_t_h : "(null)", (needle));                                       \
            ans_t_failed_checks++;                                                                 \
        }                                                                                          \
    } while (0)

/* xorshift64: a small deterministic generator for test inputs (the state must not be 0). */
static inline uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

typedef struct ans_t_case {
    const char *name;
    void (*fn)(void);
} ans_t_case;

static inline int ans_t_run(const ans_t_case *cases, size_t n, int argc, char **argv)
{
    int passed = 0, failed = 0;
    for (size_t i = 0; i < n; i++) {
        if (argc > 1 && !strstr(cases[i].name, argv[1])) continue;
        int before = ans_t_failed_checks;
        ans_error_clear();
        cases[i].fn();
        if (ans_t_failed_checks == before) {
            passed++;
            printf("ok   %s\n", cases[i].name);
        } else {
            failed++;
            printf("FAIL %s\n", cases[i].name);
        }
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}

#define ANS_TEST_MAIN(...)                                                                         \
    int main(int argc, char **argv)                                                                \
    {                                                                                              \
        static const ans_t_case cases[] = {__VA_ARGS__};                                           \
        return ans_t_run(cases, sizeof(cases) / sizeof(cases[0]), argc, argv);                     \
    }

#endif
