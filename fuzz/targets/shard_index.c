/* shard_index: ans_zshard_parse_index (sharding_indexed index: n (offset, nbytes) pairs, optional
 * CRC-32C, little or big endian).
 * Input: byte 0 flags (bit 0: crc32c, bit 1: big endian, bit 2: parse in place), byte 1: number
 * of inner chunks - 1, bytes 2..9: the shard's total size (u64le), then the index bytes (padded
 * with zeros / cut to the index size, into a buffer of exactly that size).
 * Oracle: on success every entry is (MAX, MAX) or lies within the shard. */
#include "fuzz_common.h"

#include "codec/codec.h"
#include "zarr/zarr.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 10) return 0;
    ans_zshard sh;
    memset(&sh, 0, sizeof sh);
    sh.nd = 1;
    sh.n = (uint64_t)data[1] + 1;
    sh.cps[0] = sh.n;
    sh.index_crc = data[0] & 1;
    sh.index_big = (data[0] >> 1) & 1;
    sh.index_bytes = 16 * sh.n + (sh.index_crc ? 4 : 0);
    int in_place = (data[0] >> 2) & 1;
    uint64_t total = fuzz_u64le(data + 2);
    const uint8_t *idx = data + 10;
    size_t n = size - 10;
    size_t ib = (size_t)sh.index_bytes;
    uint8_t *raw = calloc(1, ib);
    FUZZ_CHECK(raw != NULL);
    memcpy(raw, idx, n < ib ? n : ib);
    /* A seed that is a whole index without a valid checksum gets one half of the time, so the
     * entry checks are reached without the fuzzer having to forge CRCs. */
    if (sh.index_crc && (data[0] & 8)) {
        uint32_t c = ans_crc32c(0, raw, (size_t)(16 * sh.n));
        raw[16 * sh.n] = (uint8_t)c;
        raw[16 * sh.n + 1] = (uint8_t)(c >> 8);
        raw[16 * sh.n + 2] = (uint8_t)(c >> 16);
        raw[16 * sh.n + 3] = (uint8_t)(c >> 24);
    }
    uint64_t *ent = in_place ? (uint64_t *)(void *)raw : malloc((size_t)(16 * sh.n));
    FUZZ_CHECK(ent != NULL);
    /* in place needs 8-byte alignment: calloc gives it */
    if (ans_zshard_parse_index(&sh, raw, total, ent) == ANS_OK) {
        for (uint64_t i = 0; i < sh.n; i++) {
            uint64_t off = ent[2 * i], nb = ent[2 * i + 1];
            if (off == UINT64_MAX && nb == UINT64_MAX) continue;
            FUZZ_CHECK(off <= total && nb <= total - off);
        }
    } else {
        FUZZ_CHECK(ans_error_last()[0] != 0);
    }
    if (!in_place) free(ent);
    free(raw);
    return 0;
}
