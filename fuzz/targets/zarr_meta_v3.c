/* zarr_meta_v3: zarr.json array documents (see zarr_meta.h). */
#include "zarr_meta.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return meta_one_input(data, size, 1);
}
