/* zstd.c - one or more concatenated zstd frames (formats.md section 5).
 *
 * numcodecs may write several frames and may omit the content size, so frames are decoded one at a
 * time into the remaining capacity: the per-frame loop bounds the output by dstcap whatever the
 * headers say, and lets errors name the frame. */
#include "codec/codec.h"

#include "common/error.h"

#include <zstd.h>
#include <zstd_errors.h>

/* The size of the frame at src[pos..], or an error naming it. */
static int frame_size(const uint8_t *s, size_t srclen, size_t pos, unsigned frame, size_t *fsize)
{
    /* Only current frames and skippable frames: libzstd also decodes legacy (pre-1.0) formats,
     * whose headers it checks less strictly, and no zarr writer produces them. */
    uint32_t magic = srclen - pos >= 4 ? (uint32_t)s[pos] | (uint32_t)s[pos + 1] << 8 |
                                             (uint32_t)s[pos + 2] << 16 | (uint32_t)s[pos + 3] << 24
                                       : 0;
    if (magic != ZSTD_MAGICNUMBER &&
        (magic & ZSTD_MAGIC_SKIPPABLE_MASK) != ZSTD_MAGIC_SKIPPABLE_START)
        return ans_err(ANS_ECORRUPT, "zstd: frame %u at offset %zu: bad magic number 0x%08x", frame,
                       pos, (unsigned)magic);
    size_t n = ZSTD_findFrameCompressedSize(s + pos, srclen - pos);
    if (ZSTD_isError(n))
        return ans_err(ANS_ECORRUPT, "zstd: frame %u at offset %zu: %s", frame, pos,
                       ZSTD_getErrorName(n));
    *fsize = n;
    return ANS_OK;
}

int ans_zstd_decode(ans_codec_ctx *ctx, const void *src, size_t srclen, void *dst, size_t dstcap,
                    size_t *outlen)
{
    const uint8_t *s = src;
    uint8_t *d = dst;
    if (srclen == 0) return ans_err(ANS_ECORRUPT, "zstd: input is empty");
    ZSTD_DCtx *dctx = NULL;
    ANS_TRY(ans_codec_ctx_zstd(ctx, &dctx));

    size_t pos = 0, out = 0;
    for (unsigned frame = 0; pos < srclen; frame++) {
        size_t fsize = 0;
        ANS_TRY(frame_size(s, srclen, pos, frame, &fsize));
        /* Skippable frames report 0 and decode to nothing. */
        unsigned long long want = ZSTD_getFrameContentSize(s + pos, fsize);
        if (want == ZSTD_CONTENTSIZE_ERROR)
            return ans_err(ANS_ECORRUPT, "zstd: frame %u at offset %zu has a malformed header",
                           frame, pos);
        if (want != ZSTD_CONTENTSIZE_UNKNOWN && want > dstcap - out)
            return ans_err(ANS_ECORRUPT,
                           "zstd: frame %u declares %llu bytes but only %zu of the expected %zu "
                           "remain",
                           frame, want, dstcap - out, dstcap);
        size_t r = ZSTD_decompressDCtx(dctx, d ? d + out : NULL, dstcap - out, s + pos, fsize);
        if (ZSTD_isError(r)) {
            if (ZSTD_getErrorCode(r) == ZSTD_error_dstSize_tooSmall)
                return ans_err(ANS_ECORRUPT, "zstd: frame %u decodes past the expected %zu bytes",
                               frame, dstcap);
            if (ZSTD_getErrorCode(r) == ZSTD_error_memory_allocation)
                return ans_err(ANS_ENOMEM, "zstd: out of memory decoding frame %u", frame);
            return ans_err(ANS_ECORRUPT, "zstd: frame %u at offset %zu: %s", frame, pos,
                           ZSTD_getErrorName(r));
        }
        if (want != ZSTD_CONTENTSIZE_UNKNOWN && r != want)
            return ans_err(ANS_ECORRUPT, "zstd: frame %u declares %llu bytes but decodes to %zu",
                           frame, want, r);
        out += r;
        pos += fsize;
    }
    *outlen = out;
    return ANS_OK;
}

int ans_zstd_content_size(const void *src, size_t srclen, uint64_t *size)
{
    const uint8_t *s = src;
    if (srclen == 0) return ans_err(ANS_ECORRUPT, "zstd: input is empty");
    uint64_t total = 0;
    size_t pos = 0;
    for (unsigned frame = 0; pos < srclen; frame++) {
        size_t fsize = 0;
        ANS_TRY(frame_size(s, srclen, pos, frame, &fsize));
        unsigned long long n = ZSTD_getFrameContentSize(s + pos, fsize);
        if (n == ZSTD_CONTENTSIZE_UNKNOWN) return ANS_EUNSUPPORTED; /* documented: no message */
        if (n == ZSTD_CONTENTSIZE_ERROR)
            return ans_err(ANS_ECORRUPT, "zstd: frame %u at offset %zu has a malformed header",
                           frame, pos);
        if (ans_add_overflow(total, n, &total))
            return ans_err(ANS_ECORRUPT, "zstd: frame content sizes overflow 64 bits");
        pos += fsize;
    }
    *size = total;
    return ANS_OK;
}

size_t ans_zstd_bound(size_t srclen)
{
    size_t b = ZSTD_compressBound(srclen);
    return ZSTD_isError(b) ? 0 : b;
}

int ans_zstd_encode(const void *src, size_t srclen, void *dst, size_t dstcap, size_t *outlen,
                    int level)
{
    size_t r = ZSTD_compress(dst, dstcap, src, srclen, level);
    if (ZSTD_isError(r)) {
        ZSTD_ErrorCode e = ZSTD_getErrorCode(r);
        return ans_err(e == ZSTD_error_memory_allocation  ? ANS_ENOMEM
                       : e == ZSTD_error_dstSize_tooSmall ? ANS_EINVAL
                                                          : ANS_EGENERIC,
                       "zstd: compressing %zu bytes at level %d: %s", srclen, level,
                       ZSTD_getErrorName(r));
    }
    *outlen = r;
    return ANS_OK;
}
