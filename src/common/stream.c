/* stream.c - non-temporal copies into batch buffers (see stream.h). */
#include "common/stream.h"

#include <string.h>

#if defined(__SSE2__)
#define ANS_HAVE_STREAM 1
#else
#define ANS_HAVE_STREAM 0
#endif

/* Index of the first value of src[0..n) outside [0, lim), or n. */
static size_t first_bad_u16(const unsigned char *src, size_t n, uint64_t lim)
{
    for (size_t i = 0; i < n; i++) {
        uint16_t v;
        memcpy(&v, src + 2 * i, 2);
        if (v >= lim) return i;
    }
    return n;
}

static size_t first_bad_i32(const unsigned char *src, size_t n, uint64_t lim)
{
    for (size_t i = 0; i < n; i++) {
        int32_t v;
        memcpy(&v, src + 4 * i, 4);
        if (v < 0 || (uint64_t)v >= lim) return i;
    }
    return n;
}

void ans_stream_copy(void *dst, const void *src, size_t n)
{
#if ANS_HAVE_STREAM
    unsigned char *d = dst;
    const unsigned char *s = src;
    size_t head = (size_t)(-(uintptr_t)d & 15);
    if (n < 256 || head > n) {
        memcpy(d, s, n);
        return;
    }
    memcpy(d, s, head);
    d += head, s += head, n -= head;
    for (; n >= 64; n -= 64, d += 64, s += 64) {
        __m128i a = _mm_loadu_si128((const __m128i *)(const void *)s);
        __m128i b = _mm_loadu_si128((const __m128i *)(const void *)(s + 16));
        __m128i c = _mm_loadu_si128((const __m128i *)(const void *)(s + 32));
        __m128i e = _mm_loadu_si128((const __m128i *)(const void *)(s + 48));
        _mm_stream_si128((__m128i *)(void *)d, a);
        _mm_stream_si128((__m128i *)(void *)(d + 16), b);
        _mm_stream_si128((__m128i *)(void *)(d + 32), c);
        _mm_stream_si128((__m128i *)(void *)(d + 48), e);
    }
    memcpy(d, s, n);
#else
    memcpy(dst, src, n);
#endif
}

size_t ans_stream_u16_i32(void *dst, const void *src, size_t n, uint64_t lim)
{
    unsigned char *d = dst;
    const unsigned char *s = src;
    size_t i = 0;
    if (n && lim == 0) return 0;
#if ANS_HAVE_STREAM
    if (n >= 64) {
        for (; i < n && ((uintptr_t)(d + 4 * i) & 15); i++) {
            uint16_t v;
            memcpy(&v, s + 2 * i, 2);
            if (v >= lim) return i;
            int32_t o = v;
            memcpy(d + 4 * i, &o, 4);
        }
        /* v > lim - 1 <=> the saturating difference v - (lim - 1) is not zero */
        const __m128i top = _mm_set1_epi16((short)(uint16_t)(lim > 65536 ? 65535 : lim - 1));
        const __m128i zero = _mm_setzero_si128();
        __m128i over = zero;
        size_t i0 = i;
        for (; i + 8 <= n; i += 8) {
            __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(s + 2 * i));
            over = _mm_or_si128(over, _mm_subs_epu16(v, top));
            _mm_stream_si128((__m128i *)(void *)(d + 4 * i), _mm_unpacklo_epi16(v, zero));
            _mm_stream_si128((__m128i *)(void *)(d + 4 * i + 16), _mm_unpackhi_epi16(v, zero));
        }
        if (_mm_movemask_epi8(_mm_cmpeq_epi8(over, zero)) != 0xFFFF)
            return i0 + first_bad_u16(s + 2 * i0, i - i0, lim);
    }
#endif
    for (; i < n; i++) {
        uint16_t v;
        memcpy(&v, s + 2 * i, 2);
        if (v >= lim) return i;
        int32_t o = v;
        memcpy(d + 4 * i, &o, 4);
    }
    return n;
}

size_t ans_stream_i32_i32(void *dst, const void *src, size_t n, uint64_t lim)
{
    unsigned char *d = dst;
    const unsigned char *s = src;
    size_t i = 0;
#if ANS_HAVE_STREAM
    if (n >= 64 && lim >= 1 && lim <= ((uint64_t)1 << 31)) {
        for (; i < n && ((uintptr_t)(d + 4 * i) & 15); i++) {
            int32_t v;
            memcpy(&v, s + 4 * i, 4);
            if (v < 0 || (uint64_t)v >= lim) return i;
            memcpy(d + 4 * i, &v, 4);
        }
        const __m128i top = _mm_set1_epi32((int)(lim - 1));
        const __m128i zero = _mm_setzero_si128();
        __m128i bad = zero;
        size_t i0 = i;
        for (; i + 4 <= n; i += 4) {
            __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(s + 4 * i));
            bad = _mm_or_si128(bad, _mm_or_si128(_mm_cmplt_epi32(v, zero), _mm_cmpgt_epi32(v, top)));
            _mm_stream_si128((__m128i *)(void *)(d + 4 * i), v);
        }
        if (_mm_movemask_epi8(bad) != 0) return i0 + first_bad_i32(s + 4 * i0, i - i0, lim);
    }
#endif
    for (; i < n; i++) {
        int32_t v;
        memcpy(&v, s + 4 * i, 4);
        if (v < 0 || (uint64_t)v >= lim) return i;
        memcpy(d + 4 * i, &v, 4);
    }
    return n;
}
