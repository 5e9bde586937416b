/* codec_zstd: ans_zstd_content_size + ans_zstd_decode on the input (one or more frames), into a
 * buffer of exactly the declared size and one byte less (must fail), or into a bounded buffer when
 * no size is declared; then an encode / decode round trip of the input. */
#include "fuzz_common.h"

#include "codec/codec.h"

#define MAX_OUT ((uint64_t)16 << 20)

static ans_codec_ctx *ctx(void)
{
    static ans_codec_ctx *c;
    if (!c) FUZZ_CHECK(ans_codec_ctx_new(&c) == ANS_OK);
    return c;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint64_t cs = 0;
    size_t outlen = 0;
    int rc = ans_zstd_content_size(data, size, &cs);
    size_t cap = rc == ANS_OK && cs <= MAX_OUT ? (size_t)cs : 65536;
    uint8_t *dst = malloc(cap ? cap : 1);
    FUZZ_CHECK(dst != NULL);
    if (ans_zstd_decode(ctx(), data, size, dst, cap, &outlen) == ANS_OK) {
        FUZZ_CHECK(outlen <= cap);
        fuzz_touch(dst, outlen);
        if (rc == ANS_OK) FUZZ_CHECK(outlen == cs);
        if (outlen > 0) FUZZ_CHECK(ans_zstd_decode(ctx(), data, size, dst, outlen - 1, &outlen) != ANS_OK);
    }
    free(dst);

    if (size > ((size_t)1 << 20)) return 0;
    size_t bound = ans_zstd_bound(size);
    uint8_t *enc = malloc(bound), *dec = malloc(size ? size : 1);
    FUZZ_CHECK(enc && dec);
    size_t elen = 0, dlen = 0;
    FUZZ_CHECK(ans_zstd_encode(data, size, enc, bound, &elen, size ? data[0] % 8 : 0) == ANS_OK);
    FUZZ_CHECK(ans_zstd_content_size(enc, elen, &cs) == ANS_OK && cs == size);
    FUZZ_CHECK(ans_zstd_decode(ctx(), enc, elen, dec, size, &dlen) == ANS_OK);
    FUZZ_CHECK(dlen == size && memcmp(dec, data, size) == 0);
    free(enc);
    free(dec);
    return 0;
}
