/* zarr_meta_v2: .zarray documents (see zarr_meta.h). */
#include "zarr_meta.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return meta_one_input(data, size, 0);
}
