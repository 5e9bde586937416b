/* mem.h - allocation helpers and a growable byte buffer (internal). */
#ifndef ANS_COMMON_MEM_H
#define ANS_COMMON_MEM_H

#include <stddef.h>
#include <stdint.h>

/* malloc/calloc/realloc that set ANS_ENOMEM with a message on failure (return NULL). */
void *ans_malloc(size_t n);
void *ans_calloc(size_t count, size_t size);
void *ans_realloc(void *p, size_t n);
char *ans_strdup(const char *s);
/* Like ans_malloc, for large output buffers that are written once in full (row reads): from 4 MiB
 * on, the block is 2 MiB-aligned and advised for transparent huge pages, so that filling it costs a
 * few hundred page faults instead of one per 4 KiB (40% of a large read's time otherwise). Freed
 * with free(). */
void *ans_malloc_large(size_t n);
char *ans_strndup(const char *s, size_t n);
/* printf into a new string (NULL + ANS_ENOMEM on failure). */
char *ans_asprintf(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2)))
#endif
    ;

/* Overflow-checked arithmetic: return 0 on success, -1 on overflow. */
static inline int ans_mul_overflow(uint64_t a, uint64_t b, uint64_t *out)
{
    return __builtin_mul_overflow(a, b, out) ? -1 : 0;
}
static inline int ans_add_overflow(uint64_t a, uint64_t b, uint64_t *out)
{
    return __builtin_add_overflow(a, b, out) ? -1 : 0;
}

/* A growable byte buffer. Zero-initialise (`ans_buf b = {0};`) before use; buffers are meant to be
 * kept and reused: ans_buf_reserve only reallocates when the capacity is too small. */
typedef struct ans_buf {
    uint8_t *data;
    size_t len;
    size_t cap;
} ans_buf;

/* Ensure capacity >= n (keeps contents). ANS_OK or ANS_ENOMEM. */
int ans_buf_reserve(ans_buf *b, size_t n);
/* Set len = n, growing capacity if needed (contents beyond the old len are undefined). */
int ans_buf_resize(ans_buf *b, size_t n);
int ans_buf_append(ans_buf *b, const void *p, size_t n);
int ans_buf_printf(ans_buf *b, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
void ans_buf_free(ans_buf *b);

#endif
