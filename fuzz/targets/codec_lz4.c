/* codec_lz4: ans_lz4_nbytes + ans_lz4_decode (numcodecs LZ4: u32le size + one raw block) into a
 * buffer of exactly the declared size, and one byte less (must fail). */
#include "fuzz_common.h"

#include "codec/codec.h"

#define MAX_OUT ((size_t)16 << 20)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t nb = 0, outlen = 0;
    size_t cap = ans_lz4_nbytes(data, size, &nb) == ANS_OK && nb <= MAX_OUT ? nb : 4096;
    uint8_t *dst = malloc(cap ? cap : 1);
    FUZZ_CHECK(dst != NULL);
    if (ans_lz4_decode(data, size, dst, cap, &outlen) == ANS_OK) {
        FUZZ_CHECK(outlen <= cap);
        fuzz_touch(dst, outlen);
        if (outlen > 0) FUZZ_CHECK(ans_lz4_decode(data, size, dst, outlen - 1, &outlen) != ANS_OK);
    }
    free(dst);
    return 0;
}
