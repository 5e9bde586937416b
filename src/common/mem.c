/* mem.c - checked allocation and the growable byte buffer. */
#include "common/mem.h"

#include "common/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

void *ans_malloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) ans_err(ANS_ENOMEM, "out of memory allocating %zu bytes", n);
    return p;
}

void *ans_malloc_large(size_t n)
{
    const size_t huge = (size_t)2 << 20;
    if (n < 2 * huge) return ans_malloc(n);
    size_t len = (n + huge - 1) & ~(huge - 1);
    void *p = NULL;
    if (len < n || posix_memalign(&p, huge, len) != 0) {
        ans_err(ANS_ENOMEM, "out of memory allocating %zu bytes", n);
        return NULL;
    }
#ifdef MADV_HUGEPAGE
    (void)madvise(p, len, MADV_HUGEPAGE); /* advisory: ignored where THP is off */
#endif
    return p;
}

void *ans_calloc(size_t count, size_t size)
{
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p) ans_err(ANS_ENOMEM, "out of memory allocating %zu x %zu bytes", count, size);
    return p;
}

void *ans_realloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q) ans_err(ANS_ENOMEM, "out of memory allocating %zu bytes", n);
    return q;
}

char *ans_strndup(const char *s, size_t n)
{
    char *p = ans_malloc(n + 1);
    if (!p) return NULL;
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *ans_strdup(const char *s)
{
    return ans_strndup(s, strlen(s));
}

char *ans_asprintf(const char *fmt, ...)
{
    va_list ap, ap2;
    va_start(ap, fmt);
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    char *p = NULL;
    if (n >= 0 && (p = ans_malloc((size_t)n + 1)) != NULL) vsnprintf(p, (size_t)n + 1, fmt, ap2);
    va_end(ap2);
    return p;
}

int ans_buf_reserve(ans_buf *b, size_t n)
{
    if (n <= b->cap) return ANS_OK;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < n) {
        if (cap > SIZE_MAX / 2) {
            cap = n;
            break;
        }
        cap *= 2;
    }
    uint8_t *p = ans_realloc(b->data, cap);
    if (!p) return ANS_ENOMEM;
    b->data = p;
    b->cap = cap;
    return ANS_OK;
}

int ans_buf_resize(ans_buf *b, size_t n)
{
    ANS_TRY(ans_buf_reserve(b, n));
    b->len = n;
    return ANS_OK;
}

int ans_buf_append(ans_buf *b, const void *p, size_t n)
{
    if (n > SIZE_MAX - b->len) return ans_err(ANS_ENOMEM, "buffer size overflow");
    ANS_TRY(ans_buf_reserve(b, b->len + n));
    if (n) memcpy(b->data + b->len, p, n);
    b->len += n;
    return ANS_OK;
}

int ans_buf_printf(ans_buf *b, const char *fmt, ...)
{
    va_list ap, ap2;
    va_start(ap, fmt);
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    int rc = ANS_OK;
    if (n < 0) {
        rc = ans_err(ANS_EGENERIC, "formatting failed");
    } else if ((rc = ans_buf_reserve(b, b->len + (size_t)n + 1)) == ANS_OK) {
        vsnprintf((char *)b->data + b->len, (size_t)n + 1, fmt, ap2);
        b->len += (size_t)n;
    }
    va_end(ap2);
    return rc;
}

void ans_buf_free(ans_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}
