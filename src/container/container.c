/* container.c - helpers shared by the zarr and HDF5 backends, and the dtype table. */
#include "container/container.h"

#include "common/error.h"

#include <stdlib.h>
#include <string.h>

size_t ans_dtype_size(ans_dtype dtype)
{
    switch (dtype) {
    case ANS_DTYPE_BOOL:
    case ANS_DTYPE_INT8:
    case ANS_DTYPE_UINT8: return 1;
    case ANS_DTYPE_INT16:
    case ANS_DTYPE_UINT16:
    case ANS_DTYPE_FLOAT16: return 2;
    case ANS_DTYPE_INT32:
    case ANS_DTYPE_UINT32:
    case ANS_DTYPE_FLOAT32: return 4;
    case ANS_DTYPE_INT64:
    case ANS_DTYPE_UINT64:
    case ANS_DTYPE_FLOAT64:
    case ANS_DTYPE_COMPLEX64: return 8;
    case ANS_DTYPE_COMPLEX128: return 16;
    case ANS_DTYPE_STRING:
    case ANS_DTYPE_INVALID: return 0;
    }
    return 0;
}

const char *ans_dtype_name(ans_dtype dtype)
{
    switch (dtype) {
    case ANS_DTYPE_BOOL: return "bool";
    case ANS_DTYPE_INT8: return "int8";
    case ANS_DTYPE_INT16: return "int16";
    case ANS_DTYPE_INT32: return "int32";
    case ANS_DTYPE_INT64: return "int64";
    case ANS_DTYPE_UINT8: return "uint8";
    case ANS_DTYPE_UINT16: return "uint16";
    case ANS_DTYPE_UINT32: return "uint32";
    case ANS_DTYPE_UINT64: return "uint64";
    case ANS_DTYPE_FLOAT16: return "float16";
    case ANS_DTYPE_FLOAT32: return "float32";
    case ANS_DTYPE_FLOAT64: return "float64";
    case ANS_DTYPE_COMPLEX64: return "complex64";
    case ANS_DTYPE_COMPLEX128: return "complex128";
    case ANS_DTYPE_STRING: return "str";
    case ANS_DTYPE_INVALID: break;
    }
    return "invalid";
}

int ans_array_init_shape(ans_array *a, int ndim, const uint64_t *shape, ans_dtype dtype)
{
    if (ndim < 0 || ndim > ANS_MAX_NDIM)
        return ans_err(ANS_EUNSUPPORTED, "array '%s' has %d dimensions (at most %d supported)",
                       a->path ? a->path : "", ndim, ANS_MAX_NDIM);
    a->ndim = ndim;
    a->dtype = dtype;
    a->itemsize = ans_dtype_size(dtype);
    uint64_t row = a->itemsize;
    for (int i = 0; i < ndim; i++) {
        a->shape[i] = shape[i];
        if (i > 0 && ans_mul_overflow(row, shape[i], &row))
            return ans_err(ANS_ECORRUPT, "array '%s': shape overflows 64 bits",
                           a->path ? a->path : "");
    }
    /* The whole array must be addressable too (shape[0] * row_bytes). */
    uint64_t total;
    if (ndim > 0 && ans_mul_overflow(row ? row : 1, shape[0], &total))
        return ans_err(ANS_ECORRUPT, "array '%s': shape overflows 64 bits", a->path ? a->path : "");
    a->row_bytes = row;
    return ANS_OK;
}

int ans_array_check_ranges(const ans_array *a, const ans_range *ranges, size_t nranges,
                           uint64_t *total_rows)
{
    uint64_t n0 = a->ndim > 0 ? a->shape[0] : 1;
    uint64_t total = 0;
    for (size_t i = 0; i < nranges; i++) {
        uint64_t end;
        if (ans_add_overflow(ranges[i].start, ranges[i].count, &end) || end > n0)
            return ans_err(ANS_EINVAL,
                           "%s: array '%s': rows [%llu, %llu + %llu) outside its %llu rows",
                           a->container ? a->container->path : "", a->path,
                           (unsigned long long)ranges[i].start, (unsigned long long)ranges[i].start,
                           (unsigned long long)ranges[i].count, (unsigned long long)n0);
        if (ans_add_overflow(total, ranges[i].count, &total))
            return ans_err(ANS_EINVAL, "array '%s': too many rows requested", a->path);
    }
    if (total_rows) *total_rows = total;
    return ANS_OK;
}

int ans_array_read_segs(ans_array *a, const ans_seg *segs, size_t nsegs, const ans_conv *conv,
                        size_t *bad)
{
    *bad = SIZE_MAX;
    if (a->dtype == ANS_DTYPE_STRING)
        return ans_err(ANS_EINVAL, "array '%s' holds strings", a->path);
    if (a->ops->read_segs) return a->ops->read_segs(a, segs, nsegs, conv, bad);
    return ans_array_read_segs_copy(a, segs, nsegs, conv, bad);
}

int ans_array_advise(ans_array *a, const ans_range *ranges, size_t nranges)
{
    if (!a->ops->advise || a->dtype == ANS_DTYPE_STRING) return ANS_OK;
    return a->ops->advise(a, ranges, nranges);
}

int ans_array_read_segs_copy(ans_array *a, const ans_seg *segs, size_t nsegs,
                             const ans_conv *conv, size_t *bad)
{
    *bad = SIZE_MAX;
    if (nsegs == 0) return ANS_OK;
    /* Fallback: one read of every segment into a temporary buffer, then copy out. */
    uint64_t rows = 0, bytes;
    ans_range *ranges = ans_malloc(nsegs * sizeof *ranges);
    if (!ranges) return ANS_ENOMEM;
    for (size_t i = 0; i < nsegs; i++) {
        ranges[i] = (ans_range){segs[i].start, segs[i].count};
        if (ans_add_overflow(rows, segs[i].count, &rows)) {
            free(ranges);
            return ans_err(ANS_EINVAL, "array '%s': too many rows requested", a->path);
        }
    }
    if (ans_mul_overflow(rows, a->row_bytes, &bytes) || bytes > SIZE_MAX) {
        free(ranges);
        return ans_err(ANS_ENOMEM, "array '%s': %llu rows are too many to read at once", a->path,
                       (unsigned long long)rows);
    }
    unsigned char *tmp = ans_malloc(bytes ? (size_t)bytes : 1);
    int rc = tmp ? a->ops->read(a, ranges, nsegs, tmp) : ANS_ENOMEM;
    free(ranges);
    if (rc < 0) {
        free(tmp);
        return rc;
    }
    size_t row_vals = a->itemsize ? (size_t)(a->row_bytes / a->itemsize) : 0;
    const unsigned char *src = tmp;
    for (size_t i = 0; i < nsegs; i++) {
        size_t n = (size_t)segs[i].count;
        if (conv) {
            if (*bad == SIZE_MAX && conv->fn(segs[i].dst, src, n * row_vals, conv->ctx) !=
                                        n * row_vals)
                *bad = i;
        } else if (n) {
            memcpy(segs[i].dst, src, n * (size_t)a->row_bytes);
        }
        src += n * (size_t)a->row_bytes;
    }
    free(tmp);
    return ANS_OK;
}

int ans_array_read_all(ans_array *a, void **out, size_t *nbytes)
{
    *out = NULL;
    if (a->dtype == ANS_DTYPE_STRING)
        return ans_err(ANS_EINVAL, "array '%s' holds strings", a->path);
    uint64_t rows = a->ndim > 0 ? a->shape[0] : 1;
    uint64_t total;
    if (ans_mul_overflow(rows, a->row_bytes, &total) || total > SIZE_MAX)
        return ans_err(ANS_ECORRUPT, "array '%s' is too large to read whole", a->path);
    void *buf = ans_malloc((size_t)total);
    if (!buf) return ANS_ENOMEM;
    ans_range r = {0, rows};
    int rc = rows ? a->ops->read(a, &r, 1, buf) : ANS_OK;
    if (rc < 0) {
        free(buf);
        return rc;
    }
    *out = buf;
    *nbytes = (size_t)total;
    return ANS_OK;
}
