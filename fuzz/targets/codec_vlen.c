/* codec_vlen: ans_vlen_utf8_decode on the input (u32le count, then u32le length + bytes per item),
 * asked for the count the header claims (when small) and for one item more (must fail).
 * Oracle: offsets start at the buffer's length at entry, never decrease, end at its new length;
 * on failure the buffer's length is unchanged. */
#include "fuzz_common.h"

#include "codec/codec.h"

static void one(const uint8_t *data, size_t size, uint64_t n, const char *prefix)
{
    uint64_t *offs = malloc((size_t)(n + 1) * sizeof *offs);
    FUZZ_CHECK(offs != NULL);
    ans_buf b = {0};
    size_t pre = strlen(prefix);
    FUZZ_CHECK(ans_buf_append(&b, prefix, pre) == ANS_OK);
    if (ans_vlen_utf8_decode(data, size, n, offs, &b) == ANS_OK) {
        FUZZ_CHECK(offs[0] == 0);
        for (uint64_t i = 0; i < n; i++) FUZZ_CHECK(offs[i] <= offs[i + 1]);
        FUZZ_CHECK(pre + offs[n] == b.len);
        FUZZ_CHECK(b.len - pre <= size);
        fuzz_touch(b.data, b.len);
    } else {
        FUZZ_CHECK(b.len == pre);
    }
    ans_buf_free(&b);
    free(offs);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint64_t n = size >= 4 ? fuzz_u32le(data) : 0;
    if (n > ((uint64_t)1 << 16)) n = size % 17;
    one(data, size, n, "");
    one(data, size, n + 1, "xy");
    if (n > 0) one(data, size, n - 1, "");
    return 0;
}
