/* h5: an .h5ad file (the input, written to a private temporary file), opened and read through the
 * public API: describe, every row-aligned element, the frames.
 *
 * libhdf5 itself parses the file; it is not built with sanitizers here, so this target mostly finds
 * misuse of what libhdf5 returns (types, sizes, attribute conversion to JSON, string handling) in
 * src/hdf5/h5_container.c. Crashes inside libhdf5 on hostile files are libhdf5's (and are reported
 * as such). Seeds: small real .h5ad files written by anndata / h5py (fuzz/make_corpus.py). */
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/f.h5ad", fuzz_tmp_dir());
    FUZZ_CHECK(fuzz_write_file(path, data, size) == 0);
    fuzz_exercise_store(path);
    unlink(path);
    return 0;
}
