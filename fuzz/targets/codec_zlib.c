/* codec_zlib: ans_zlib_decode on the input as a zlib stream and as gzip members, into bounded
 * buffers; a successful decode must succeed again identically (the context is reused) and fail
 * with one byte less room. */
#include "fuzz_common.h"

#include "codec/codec.h"

#define CAP ((size_t)1 << 20)

static ans_codec_ctx *ctx(void)
{
    static ans_codec_ctx *c;
    if (!c) FUZZ_CHECK(ans_codec_ctx_new(&c) == ANS_OK);
    return c;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* allocated once (exactly CAP bytes, so ASan still sees writes past CAP) */
    static uint8_t *dst, *dst2;
    if (!dst) {
        dst = malloc(CAP);
        dst2 = malloc(CAP);
        FUZZ_CHECK(dst && dst2);
    }
    for (int gzip = 0; gzip <= 1; gzip++) {
        size_t n = 0, n2 = 0;
        if (ans_zlib_decode(ctx(), data, size, dst, CAP, &n, gzip) != ANS_OK) continue;
        FUZZ_CHECK(n <= CAP);
        FUZZ_CHECK(ans_zlib_decode(ctx(), data, size, dst2, n, &n2, gzip) == ANS_OK);
        FUZZ_CHECK(n2 == n && memcmp(dst, dst2, n) == 0);
        if (n > 0) FUZZ_CHECK(ans_zlib_decode(ctx(), data, size, dst2, n - 1, &n2, gzip) != ANS_OK);
    }
    return 0;
}
