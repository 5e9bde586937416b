/* stream.h - copies into output buffers that are written once and read later by another thread
 * (batch slots): non-temporal stores where the CPU has them (SSE2, AVX2 or AVX-512 on x86-64, the
 * widest available), plain stores elsewhere. A batch of tens of MB does not fit in the caches
 * anyway; streaming stores skip reading each destination line before overwriting it, which makes
 * these copies about 1.5-3x faster on a cold destination. Streaming stores are weakly ordered: the
 * thread that made them must call ans_stream_fence() before it hands the buffer over (the pool does
 * so after every batch of jobs a thread runs; the loader before it queues batches). A fence per
 * call would halve their speed. Internal. */
#ifndef ANS_COMMON_STREAM_H
#define ANS_COMMON_STREAM_H

#include <stddef.h>
#include <stdint.h>

#if defined(__SSE2__)
#include <emmintrin.h>
static inline void ans_stream_fence(void)
{
    _mm_sfence();
}
#else
static inline void ans_stream_fence(void)
{
}
#endif

/* The stores the copies below use: the widest the CPU has (ans_stream_isa), chosen per call. The
 * _isa forms take a narrower one (a wider one than the CPU has means the CPU's best), for tests
 * and measurements. */
enum { ANS_ISA_PLAIN, ANS_ISA_SSE2, ANS_ISA_AVX2, ANS_ISA_AVX512 };
int ans_stream_isa(void);
void ans_stream_copy_isa(int isa, void *dst, const void *src, size_t n);
size_t ans_stream_u16_i32_isa(int isa, void *dst, const void *src, size_t n, uint64_t lim);
size_t ans_stream_i32_i32_isa(int isa, void *dst, const void *src, size_t n, uint64_t lim);

/* memcpy(dst, src, n) for non-overlapping buffers. */
void ans_stream_copy(void *dst, const void *src, size_t n);

/* n native uint16 values at src widened to int32 at dst, requiring each to be
 * < lim. Returns n, or the index of the first value >= lim (what dst then holds is unspecified). */
size_t ans_stream_u16_i32(void *dst, const void *src, size_t n, uint64_t lim);

/* n native int32 values copied, requiring 0 <= v < lim (lim <= 2^31). Returns n or the index of the
 * first value out of range (dst then unspecified). */
size_t ans_stream_i32_i32(void *dst, const void *src, size_t n, uint64_t lim);

#endif
