/* error.h - the per-thread last-error message and status helpers (internal). */
#ifndef ANS_COMMON_ERROR_H
#define ANS_COMMON_ERROR_H

#include "annstream.h"

#include <stdarg.h>

#define ANS_ERRMSG_MAX 1024

#if defined(__GNUC__)
#define ANS_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define ANS_PRINTF(a, b)
#endif

/* Set the calling thread's last error to `code` with a printf-style message; returns `code` so that
 * callers can write `return ans_err(ANS_ECORRUPT, "...")`. */
int ans_err(int code, const char *fmt, ...) ANS_PRINTF(2, 3);
int ans_verr(int code, const char *fmt, va_list ap);

/* Prefix the current message with "<prefix>: " (used by upper layers to add file / element context).
 * Returns the current code. */
int ans_err_prefix(const char *fmt, ...) ANS_PRINTF(1, 2);

/* A saved error, for worker threads that must hand their failure to the submitting thread. */
typedef struct ans_errinfo {
    int code;
    char msg[ANS_ERRMSG_MAX];
} ans_errinfo;

/* Copy this thread's last error into `e`. */
void ans_err_save(ans_errinfo *e);
/* Publish `e` as this thread's last error; returns e->code. */
int ans_err_restore(const ans_errinfo *e);

/* Convenience: propagate a failing status. */
#define ANS_TRY(expr)                                                                              \
    do {                                                                                           \
        int ans__rc = (expr);                                                                      \
        if (ans__rc < 0) return ans__rc;                                                           \
    } while (0)

#endif
