/* ctx.c - the per-thread codec context (reusable zstd and inflate states) and ans_byteswap.
 *
 * Both states are created on first use: a worker that only ever sees blosc chunks never pays for a
 * zstd DCtx or a 32 KiB inflate window. */
#include "codec/codec.h"

#include "common/error.h"

#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>

struct ans_codec_ctx {
    ZSTD_DCtx *zstd;
    z_stream zs;
    int zs_ready; /* inflateInit2 succeeded on zs */
};

int ans_codec_ctx_new(ans_codec_ctx **out)
{
    *out = ans_calloc(1, sizeof **out);
    return *out ? ANS_OK : ANS_ENOMEM;
}

void ans_codec_ctx_free(ans_codec_ctx *ctx)
{
    if (!ctx) return;
    ZSTD_freeDCtx(ctx->zstd);
    if (ctx->zs_ready) inflateEnd(&ctx->zs);
    free(ctx);
}

int ans_codec_ctx_zstd(ans_codec_ctx *ctx, ZSTD_DCtx **out)
{
    if (!ctx->zstd && !(ctx->zstd = ZSTD_createDCtx()))
        return ans_err(ANS_ENOMEM, "zstd: out of memory creating a decompression context");
    *out = ctx->zstd;
    return ANS_OK;
}

int ans_codec_ctx_inflate(ans_codec_ctx *ctx, int window_bits, z_stream **out)
{
    z_stream *zs = &ctx->zs;
    if (!ctx->zs_ready) {
        memset(zs, 0, sizeof *zs);
        int rc = inflateInit2(zs, window_bits);
        if (rc != Z_OK)
            return ans_err(rc == Z_MEM_ERROR ? ANS_ENOMEM : ANS_EGENERIC,
                           "zlib: inflateInit2 failed (%d)", rc);
        ctx->zs_ready = 1;
    } else if (inflateReset2(zs, window_bits) != Z_OK) {
        return ans_err(ANS_EGENERIC, "zlib: inflateReset2 failed");
    }
    *out = zs;
    return ANS_OK;
}

/* memcpy in and out keeps this alignment-agnostic; compilers turn the loops into vector
 * shuffles. */
void ans_byteswap(void *data, size_t n, size_t size)
{
    uint8_t *p = data;
    switch (size) {
    case 0:
    case 1:
        return;
    case 2:
        for (size_t i = 0; i < n; i++, p += 2) {
            uint16_t v;
            memcpy(&v, p, 2);
            v = __builtin_bswap16(v);
            memcpy(p, &v, 2);
        }
        return;
    case 4:
        for (size_t i = 0; i < n; i++, p += 4) {
            uint32_t v;
            memcpy(&v, p, 4);
            v = __builtin_bswap32(v);
            memcpy(p, &v, 4);
        }
        return;
    case 8:
        for (size_t i = 0; i < n; i++, p += 8) {
            uint64_t v;
            memcpy(&v, p, 8);
            v = __builtin_bswap64(v);
            memcpy(p, &v, 8);
        }
        return;
    default:
        for (size_t i = 0; i < n; i++, p += size)
            for (size_t a = 0, b = size - 1; a < b; a++, b--) {
                uint8_t t = p[a];
                p[a] = p[b];
                p[b] = t;
            }
        return;
    }
}
