/* error.c - per-thread last error (libgit2 style). Each thread owns one message buffer; nothing is
 * shared between threads, so no locking is needed. */
#include "common/error.h"

#include <stdio.h>
#include <string.h>

typedef struct ans_tls_error {
    int code;
    char msg[ANS_ERRMSG_MAX];
} ans_tls_error;

static _Thread_local ans_tls_error tls_err;

int ans_verr(int code, const char *fmt, va_list ap)
{
#if defined(__clang__)
#pragma clang diagnostic push
#pragma clang diagnostic ignored "-Wformat-nonliteral"
#endif
    tls_err.code = code;
    vsnprintf(tls_err.msg, sizeof tls_err.msg, fmt, ap);
#if defined(__clang__)
#pragma clang diagnostic pop
#endif
    return code;
}

int ans_err(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    ans_verr(code, fmt, ap);
    va_end(ap);
    return code;
}

int ans_err_prefix(const char *fmt, ...)
{
    char prefix[ANS_ERRMSG_MAX];
    char old[ANS_ERRMSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, tls_err.msg, sizeof old);
    /* Prefix, then as much of the old message as fits (truncation is intended). */
    size_t n = strlen(prefix);
    if (n > sizeof tls_err.msg - 3) n = sizeof tls_err.msg - 3;
    memcpy(tls_err.msg, prefix, n);
    memcpy(tls_err.msg + n, ": ", 2);
    size_t room = sizeof tls_err.msg - n - 3;
    size_t m = strnlen(old, room);
    memcpy(tls_err.msg + n + 2, old, m);
    tls_err.msg[n + 2 + m] = '\0';
    if (tls_err.code == ANS_OK) tls_err.code = ANS_EGENERIC;
    return tls_err.code;
}

void ans_err_save(ans_errinfo *e)
{
    e->code = tls_err.code;
    memcpy(e->msg, tls_err.msg, sizeof e->msg);
}

int ans_err_restore(const ans_errinfo *e)
{
    tls_err.code = e->code;
    memcpy(tls_err.msg, e->msg, sizeof tls_err.msg);
    tls_err.msg[sizeof tls_err.msg - 1] = '\0';
    return e->code;
}

const char *ans_error_last(void)
{
    return tls_err.msg;
}

int ans_error_last_code(void)
{
    return tls_err.code;
}

void ans_error_clear(void)
{
    tls_err.code = ANS_OK;
    tls_err.msg[0] = '\0';
}
