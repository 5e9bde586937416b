/* store_zarr: a whole zarr store (v2 or v3, consolidated or not, sharded or not) written from the
 * input into a private temporary directory, then opened and read through the public API:
 * describe, every row-aligned element (dense, CSR, CSC), obs / var / raw/var frames.
 *
 * Input: a small archive of files (fuzz_common.h: "%%NAME\n" + bytes per file); the seeds are
 * real stores written by anndata / zarr-python (fuzz/make_corpus.py). Covers the container (node
 * discovery, consolidated metadata, listing), AnnData encodings and attributes, sparse validation,
 * frames (categoricals, nullable columns, strings) and every codec on real chunks. */
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/s.zarr", fuzz_tmp_dir());
    fuzz_rm_rf(dir);
    FUZZ_CHECK(mkdir(dir, 0700) == 0);
    if (fuzz_unpack_archive(data, size, dir) > 0) fuzz_exercise_store(dir);
    fuzz_rm_rf(dir);
    return 0;
}
