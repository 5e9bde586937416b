/* zlib.c - zlib (RFC 1950) and gzip (RFC 1952) streams through the context's inflate state. */
#include "codec/codec.h"

#include "common/error.h"

#include <limits.h>
#include <zlib.h>

/* zlib counts in uInt; larger buffers are fed in pieces. */
static uInt clamp_uint(size_t n)
{
    return n > UINT_MAX ? UINT_MAX : (uInt)n;
}

int ans_zlib_decode(ans_codec_ctx *ctx, const void *src, size_t srclen, void *dst, size_t dstcap,
                    size_t *outlen, int gzip)
{
    const char *name = gzip ? "gzip" : "zlib";
    const uint8_t *s = src;
    uint8_t *d = dst;
    if (srclen == 0) return ans_err(ANS_ECORRUPT, "%s: input is empty", name);
    z_stream *zs = NULL;
    ANS_TRY(ans_codec_ctx_inflate(ctx, gzip ? 15 + 16 : 15, &zs));

    /* inflate refuses a NULL next_out even with no room: give it a byte it will never write. */
    uint8_t no_room;
    if (!d) dstcap = 0;
    size_t in = 0, out = 0;
    unsigned member = 0;
    for (;;) {
        uInt ain = clamp_uint(srclen - in), aout = clamp_uint(dstcap - out);
        zs->next_in = (Bytef *)(s + in);
        zs->avail_in = ain;
        zs->next_out = d ? d + out : &no_room;
        zs->avail_out = aout;
        int rc = inflate(zs, Z_NO_FLUSH);
        in += ain - zs->avail_in;
        out += aout - zs->avail_out;

        if (rc == Z_OK) continue; /* progress was made */
        if (rc == Z_STREAM_END) {
            if (!gzip) {
                if (in != srclen)
                    return ans_err(ANS_ECORRUPT,
                                   "zlib: %zu bytes of trailing data after the stream",
                                   srclen - in);
                break;
            }
            /* Another member may follow, possibly after NUL padding (Python's gzip skips it). */
            while (in < srclen && s[in] == 0)
                in++;
            if (in == srclen) break;
            member++;
            if (inflateReset(zs) != Z_OK) return ans_err(ANS_EGENERIC, "gzip: inflateReset failed");
            continue;
        }
        /* Z_BUF_ERROR: no progress possible, so either side ran out. */
        if (rc == Z_BUF_ERROR && in == srclen)
            return ans_err(ANS_ECORRUPT, "%s: stream is truncated (member %u, %zu bytes decoded)",
                           name, member, out);
        if (rc == Z_BUF_ERROR)
            return ans_err(ANS_ECORRUPT, "%s: data decodes past the expected %zu bytes", name,
                           dstcap);
        if (rc == Z_MEM_ERROR) return ans_err(ANS_ENOMEM, "%s: out of memory", name);
        if (rc == Z_STREAM_ERROR) return ans_err(ANS_EGENERIC, "%s: inflate state error", name);
        if (rc == Z_NEED_DICT)
            return ans_err(ANS_ECORRUPT, "%s: stream needs a preset dictionary", name);
        return ans_err(ANS_ECORRUPT, "%s: %s (member %u, input offset %zu)", name,
                       zs->msg ? zs->msg : "invalid data", member, in);
    }
    *outlen = out;
    return ANS_OK;
}
