/* stream.c - non-temporal copies into batch buffers (see stream.h).
 *
 * Each copy comes in up to four builds: plain C, SSE2 (16-byte streaming stores, every x86-64),
 * AVX2 (32-byte) and AVX-512 (64-byte: one store per cache line). The widest the CPU has is chosen
 * per call (__builtin_cpu_supports reads a table libgcc / compiler-rt fill once at start-up), so
 * one binary runs everywhere. On an Intel Xeon VM the loader ran 18-21% faster at chunk_size 256
 * with AVX-512 streaming stores than with SSE2 ones (BENCHMARKS.md): a store that fills a whole
 * line leaves the write-combining buffer at once. */
#include "common/stream.h"

#include <string.h>

#if defined(__SSE2__)
#define ANS_HAVE_STREAM 1
#else
#define ANS_HAVE_STREAM 0
#endif
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define ANS_HAVE_WIDE 1
#include <immintrin.h>
#define TARGET_AVX2 __attribute__((target("avx2")))
#define TARGET_AVX512 __attribute__((target("avx512f,avx512bw")))
#else
#define ANS_HAVE_WIDE 0
#endif

int ans_stream_isa(void)
{
#if ANS_HAVE_WIDE
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw"))
        return ANS_ISA_AVX512;
    if (__builtin_cpu_supports("avx2")) return ANS_ISA_AVX2;
#endif
    return ANS_HAVE_STREAM ? ANS_ISA_SSE2 : ANS_ISA_PLAIN;
}

/* The instruction set a call asked for, or the best this CPU has if that is less. */
static int usable(int isa)
{
    int best = ans_stream_isa();
    return isa < best ? isa : best;
}

/* Values [i, n) of src widened into dst one by one; the index of the first >= lim, or n. */
static size_t u16_i32_scalar(unsigned char *d, const unsigned char *s, size_t i, size_t n,
                             uint64_t lim)
{
    for (; i < n; i++) {
        uint16_t v;
        memcpy(&v, s + 2 * i, 2);
        if (v >= lim) return i;
        int32_t o = v;
        memcpy(d + 4 * i, &o, 4);
    }
    return n;
}

/* Values [i, n) of src copied one by one; the index of the first outside [0, lim), or n. */
static size_t i32_i32_scalar(unsigned char *d, const unsigned char *s, size_t i, size_t n,
                             uint64_t lim)
{
    for (; i < n; i++) {
        int32_t v;
        memcpy(&v, s + 4 * i, 4);
        if (v < 0 || (uint64_t)v >= lim) return i;
        memcpy(d + 4 * i, &v, 4);
    }
    return n;
}

/* The first index from which dst + size * i is `align`-byte aligned (at most n). */
static size_t aligned_from(const unsigned char *d, size_t size, size_t align, size_t n)
{
    size_t i = 0;
    while (i < n && ((uintptr_t)(d + size * i) & (align - 1)))
        i++;
    return i;
}

/* ---- copies ---------------------------------------------------------------------------------- */

#if ANS_HAVE_STREAM
static void copy_sse2(unsigned char *d, const unsigned char *s, size_t n)
{
    size_t head = (size_t)(-(uintptr_t)d & 15);
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
}
#endif

#if ANS_HAVE_WIDE
TARGET_AVX2 static void copy_avx2(unsigned char *d, const unsigned char *s, size_t n)
{
    size_t head = (size_t)(-(uintptr_t)d & 31);
    memcpy(d, s, head);
    d += head, s += head, n -= head;
    for (; n >= 128; n -= 128, d += 128, s += 128) {
        __m256i a = _mm256_loadu_si256((const __m256i *)(const void *)s);
        __m256i b = _mm256_loadu_si256((const __m256i *)(const void *)(s + 32));
        __m256i c = _mm256_loadu_si256((const __m256i *)(const void *)(s + 64));
        __m256i e = _mm256_loadu_si256((const __m256i *)(const void *)(s + 96));
        _mm256_stream_si256((__m256i *)(void *)d, a);
        _mm256_stream_si256((__m256i *)(void *)(d + 32), b);
        _mm256_stream_si256((__m256i *)(void *)(d + 64), c);
        _mm256_stream_si256((__m256i *)(void *)(d + 96), e);
    }
    memcpy(d, s, n);
}

TARGET_AVX512 static void copy_avx512(unsigned char *d, const unsigned char *s, size_t n)
{
    size_t head = (size_t)(-(uintptr_t)d & 63);
    memcpy(d, s, head);
    d += head, s += head, n -= head;
    for (; n >= 128; n -= 128, d += 128, s += 128) {
        __m512i a = _mm512_loadu_si512((const void *)s);
        __m512i b = _mm512_loadu_si512((const void *)(s + 64));
        _mm512_stream_si512((void *)d, a);
        _mm512_stream_si512((void *)(d + 64), b);
    }
    memcpy(d, s, n);
}
#endif

void ans_stream_copy_isa(int isa, void *dst, const void *src, size_t n)
{
    if (n < 256) { /* a line or two: the partial lines at both ends would dominate */
        memcpy(dst, src, n);
        return;
    }
    switch (usable(isa)) {
#if ANS_HAVE_WIDE
    case ANS_ISA_AVX512:
        copy_avx512(dst, src, n);
        return;
    case ANS_ISA_AVX2:
        copy_avx2(dst, src, n);
        return;
#endif
#if ANS_HAVE_STREAM
    case ANS_ISA_SSE2:
        copy_sse2(dst, src, n);
        return;
#endif
    default:
        memcpy(dst, src, n);
    }
}

void ans_stream_copy(void *dst, const void *src, size_t n)
{
    ans_stream_copy_isa(ANS_ISA_AVX512, dst, src, n);
}

/* ---- uint16 -> int32 ------------------------------------------------------------------------- */
/* Each vector body ORs the saturating differences v - (lim - 1) together: not zero <=> some
 * v > lim - 1. Then the scalar loop finds the first such value from where the body started. */

#if ANS_HAVE_STREAM
static size_t u16_i32_sse2(unsigned char *d, const unsigned char *s, size_t n, uint64_t lim)
{
    size_t i = aligned_from(d, 4, 16, n);
    size_t h = u16_i32_scalar(d, s, 0, i, lim);
    if (h != i) return h;
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
        return u16_i32_scalar(d, s, i0, i, lim);
    return u16_i32_scalar(d, s, i, n, lim);
}
#endif

#if ANS_HAVE_WIDE
TARGET_AVX2 static size_t u16_i32_avx2(unsigned char *d, const unsigned char *s, size_t n,
                                       uint64_t lim)
{
    size_t i = aligned_from(d, 4, 32, n);
    size_t h = u16_i32_scalar(d, s, 0, i, lim);
    if (h != i) return h;
    const __m256i top = _mm256_set1_epi16((short)(uint16_t)(lim > 65536 ? 65535 : lim - 1));
    __m256i over = _mm256_setzero_si256();
    size_t i0 = i;
    for (; i + 16 <= n; i += 16) {
        __m256i v = _mm256_loadu_si256((const __m256i *)(const void *)(s + 2 * i));
        over = _mm256_or_si256(over, _mm256_subs_epu16(v, top));
        _mm256_stream_si256((__m256i *)(void *)(d + 4 * i),
                            _mm256_cvtepu16_epi32(_mm256_castsi256_si128(v)));
        _mm256_stream_si256((__m256i *)(void *)(d + 4 * i + 32),
                            _mm256_cvtepu16_epi32(_mm256_extracti128_si256(v, 1)));
    }
    if (!_mm256_testz_si256(over, over)) return u16_i32_scalar(d, s, i0, i, lim);
    return u16_i32_scalar(d, s, i, n, lim);
}

TARGET_AVX512 static size_t u16_i32_avx512(unsigned char *d, const unsigned char *s, size_t n,
                                           uint64_t lim)
{
    size_t i = aligned_from(d, 4, 64, n);
    size_t h = u16_i32_scalar(d, s, 0, i, lim);
    if (h != i) return h;
    const __m512i top = _mm512_set1_epi16((short)(uint16_t)(lim > 65536 ? 65535 : lim - 1));
    __m512i over = _mm512_setzero_si512();
    size_t i0 = i;
    for (; i + 32 <= n; i += 32) {
        __m512i v = _mm512_loadu_si512((const void *)(s + 2 * i));
        over = _mm512_or_si512(over, _mm512_subs_epu16(v, top));
        _mm512_stream_si512((void *)(d + 4 * i), _mm512_cvtepu16_epi32(_mm512_castsi512_si256(v)));
        _mm512_stream_si512((void *)(d + 4 * i + 64),
                            _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(v, 1)));
    }
    if (_mm512_test_epi64_mask(over, over)) return u16_i32_scalar(d, s, i0, i, lim);
    return u16_i32_scalar(d, s, i, n, lim);
}
#endif

size_t ans_stream_u16_i32_isa(int isa, void *dst, const void *src, size_t n, uint64_t lim)
{
    unsigned char *d = dst;
    const unsigned char *s = src;
    if (n && lim == 0) return 0;
    if (n >= 64) switch (usable(isa)) {
#if ANS_HAVE_WIDE
        case ANS_ISA_AVX512:
            return u16_i32_avx512(d, s, n, lim);
        case ANS_ISA_AVX2:
            return u16_i32_avx2(d, s, n, lim);
#endif
#if ANS_HAVE_STREAM
        case ANS_ISA_SSE2:
            return u16_i32_sse2(d, s, n, lim);
#endif
        default:
            break;
        }
    return u16_i32_scalar(d, s, 0, n, lim);
}

size_t ans_stream_u16_i32(void *dst, const void *src, size_t n, uint64_t lim)
{
    return ans_stream_u16_i32_isa(ANS_ISA_AVX512, dst, src, n, lim);
}

/* ---- int32 -> int32, range-checked ----------------------------------------------------------- */

#if ANS_HAVE_STREAM
static size_t i32_i32_sse2(unsigned char *d, const unsigned char *s, size_t n, uint64_t lim)
{
    size_t i = aligned_from(d, 4, 16, n);
    size_t h = i32_i32_scalar(d, s, 0, i, lim);
    if (h != i) return h;
    const __m128i top = _mm_set1_epi32((int)(lim - 1));
    const __m128i zero = _mm_setzero_si128();
    __m128i bad = zero;
    size_t i0 = i;
    for (; i + 4 <= n; i += 4) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(s + 4 * i));
        bad = _mm_or_si128(bad, _mm_or_si128(_mm_cmplt_epi32(v, zero), _mm_cmpgt_epi32(v, top)));
        _mm_stream_si128((__m128i *)(void *)(d + 4 * i), v);
    }
    if (_mm_movemask_epi8(bad) != 0) return i32_i32_scalar(d, s, i0, i, lim);
    return i32_i32_scalar(d, s, i, n, lim);
}
#endif

#if ANS_HAVE_WIDE
TARGET_AVX2 static size_t i32_i32_avx2(unsigned char *d, const unsigned char *s, size_t n,
                                       uint64_t lim)
{
    size_t i = aligned_from(d, 4, 32, n);
    size_t h = i32_i32_scalar(d, s, 0, i, lim);
    if (h != i) return h;
    const __m256i top = _mm256_set1_epi32((int)(lim - 1));
    const __m256i zero = _mm256_setzero_si256();
    __m256i bad = zero;
    size_t i0 = i;
    for (; i + 8 <= n; i += 8) {
        __m256i v = _mm256_loadu_si256((const __m256i *)(const void *)(s + 4 * i));
        bad = _mm256_or_si256(
            bad, _mm256_or_si256(_mm256_cmpgt_epi32(zero, v), _mm256_cmpgt_epi32(v, top)));
        _mm256_stream_si256((__m256i *)(void *)(d + 4 * i), v);
    }
    if (!_mm256_testz_si256(bad, bad)) return i32_i32_scalar(d, s, i0, i, lim);
    return i32_i32_scalar(d, s, i, n, lim);
}

TARGET_AVX512 static size_t i32_i32_avx512(unsigned char *d, const unsigned char *s, size_t n,
                                           uint64_t lim)
{
    size_t i = aligned_from(d, 4, 64, n);
    size_t h = i32_i32_scalar(d, s, 0, i, lim);
    if (h != i) return h;
    /* as unsigned, a negative value is >= 2^31 >= lim */
    const __m512i limv = _mm512_set1_epi32((int)(uint32_t)lim);
    __mmask16 bad = 0;
    size_t i0 = i;
    for (; i + 16 <= n; i += 16) {
        __m512i v = _mm512_loadu_si512((const void *)(s + 4 * i));
        bad |= _mm512_cmpge_epu32_mask(v, limv);
        _mm512_stream_si512((void *)(d + 4 * i), v);
    }
    if (bad) return i32_i32_scalar(d, s, i0, i, lim);
    return i32_i32_scalar(d, s, i, n, lim);
}
#endif

size_t ans_stream_i32_i32_isa(int isa, void *dst, const void *src, size_t n, uint64_t lim)
{
    unsigned char *d = dst;
    const unsigned char *s = src;
    if (n >= 64 && lim >= 1 && lim <= ((uint64_t)1 << 31)) switch (usable(isa)) {
#if ANS_HAVE_WIDE
        case ANS_ISA_AVX512:
            return i32_i32_avx512(d, s, n, lim);
        case ANS_ISA_AVX2:
            return i32_i32_avx2(d, s, n, lim);
#endif
#if ANS_HAVE_STREAM
        case ANS_ISA_SSE2:
            return i32_i32_sse2(d, s, n, lim);
#endif
        default:
            break;
        }
    return i32_i32_scalar(d, s, 0, n, lim);
}

size_t ans_stream_i32_i32(void *dst, const void *src, size_t n, uint64_t lim)
{
    return ans_stream_i32_i32_isa(ANS_ISA_AVX512, dst, src, n, lim);
}
