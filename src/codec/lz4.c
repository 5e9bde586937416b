/* lz4.c - numcodecs LZ4: a u32le uncompressed length, then one raw LZ4 block (not an LZ4 frame). */
#include "codec/codec.h"

#include "common/error.h"

#include <lz4.h>

int ans_lz4_nbytes(const void *src, size_t srclen, size_t *nbytes)
{
    const uint8_t *s = src;
    if (srclen < 4)
        return ans_err(ANS_ECORRUPT, "lz4: input is %zu bytes, shorter than the 4-byte length",
                       srclen);
    *nbytes = (size_t)s[0] | (size_t)s[1] << 8 | (size_t)s[2] << 16 | (size_t)s[3] << 24;
    return ANS_OK;
}

int ans_lz4_decode(const void *src, size_t srclen, void *dst, size_t dstcap, size_t *outlen)
{
    size_t n = 0;
    ANS_TRY(ans_lz4_nbytes(src, srclen, &n));
    if (n > dstcap)
        return ans_err(ANS_ECORRUPT, "lz4: header claims %zu bytes, more than the %zu expected", n,
                       dstcap);
    /* LZ4 blocks count in int; numcodecs cannot write larger ones either. */
    if (n > LZ4_MAX_INPUT_SIZE || srclen - 4 > INT32_MAX)
        return ans_err(ANS_ECORRUPT,
                       "lz4: block of %zu bytes (%zu compressed) is over the LZ4 limit", n,
                       srclen - 4);
    int r = LZ4_decompress_safe((const char *)src + 4, dst, (int)(srclen - 4), (int)n);
    if (r < 0)
        return ans_err(ANS_ECORRUPT, "lz4: malformed block (%zu compressed bytes for %zu)",
                       srclen - 4, n);
    if ((size_t)r != n)
        return ans_err(ANS_ECORRUPT, "lz4: block decodes to %d bytes but the header says %zu", r,
                       n);
    *outlen = n;
    return ANS_OK;
}
