/* container.h - the backend-neutral view of a hierarchical array store (internal). Layer 2.
 *
 * zarr (v2, v3, sharded) and HDF5 both implement this interface; the anndata layer above sees only
 * groups with JSON-like attributes and N-D arrays it can read along axis 0. Paths are '/'-separated
 * and relative to the store root ("" is the root group, "X/data" an array). */
#ifndef ANS_CONTAINER_CONTAINER_H
#define ANS_CONTAINER_CONTAINER_H

#include "annstream.h"
#include "common/json.h"
#include "common/mem.h"
#include "common/pool.h"

#include <stddef.h>
#include <stdint.h>

#define ANS_MAX_NDIM 32

typedef struct ans_container ans_container;
typedef struct ans_array ans_array;

typedef enum ans_node_kind {
    ANS_NODE_NONE = 0, /* nothing at that path */
    ANS_NODE_GROUP = 1,
    ANS_NODE_ARRAY = 2
} ans_node_kind;

/* Rows [start, start + count) along axis 0. */
typedef struct ans_range {
    uint64_t start;
    uint64_t count;
} ans_range;

struct ans_container_ops {
    /* What is at `path`. ANS_OK with ANS_NODE_NONE when nothing is there. */
    int (*node)(ans_container *c, const char *path, ans_node_kind *kind);
    /* Attributes of the group or array at `path` as a JSON object (an empty object when it has
     * none). Borrowed: valid until the container is freed. HDF5 attributes are converted: strings to
     * strings, numeric scalars to numbers, 1-D arrays to arrays, the HDF5 bool enum to booleans. */
    int (*attrs)(ans_container *c, const char *path, const ans_json **out);
    /* Names of the children of the group at `path`, sorted. Freed with ans_kv_names_free. */
    int (*children)(ans_container *c, const char *path, char ***names, size_t *n);
    /* Open the array at `path`. ANS_ENOTFOUND when there is none. */
    int (*open_array)(ans_container *c, const char *path, ans_array **out);
    void (*free)(ans_container *c);
};

struct ans_container {
    const struct ans_container_ops *ops;
    char *path;             /* file or directory given to open, for messages */
    const char *kind_name;  /* "zarr-v2", "zarr-v3", "h5ad" */
    ans_pool *pool;         /* borrowed from the store: decode threads */
};

/* A destination for rows [start, start + count) of an array (ans_array_read_segs). */
typedef struct ans_seg {
    uint64_t start, count;
    void *dst;
} ans_seg;

/* How ans_array_read_segs turns stored values into destination values: fn converts n values from
 * src (the array's dtype) to dst (dst_size bytes each) and returns n, or the position of the first
 * value it rejects (the rest of that segment is then unspecified). */
typedef struct ans_conv {
    size_t (*fn)(void *dst, const void *src, size_t n, const void *ctx);
    const void *ctx;
    size_t dst_size;
} ans_conv;

struct ans_array_ops {
    /* Read the rows of every range, concatenated in range order, into `out` (C order, native byte
     * order, `row_bytes` bytes per row). Ranges may overlap, repeat and come in any order; each chunk
     * needed is decoded once per call, chunks in parallel on the container's pool. For a 0-d array
     * pass one range {0, 1}. Not for STRING arrays. */
    int (*read)(ans_array *a, const ans_range *ranges, size_t nranges, void *out);
    /* STRING arrays (1-D or 0-d): items [start, start + count) as UTF-8. Writes count + 1 offsets
     * (offsets[0] = data->len at entry, so several reads can append to one buffer) and appends the
     * bytes to `data`. Fixed-length UTF-32 and byte strings are converted to UTF-8. */
    int (*read_strings)(ans_array *a, uint64_t start, uint64_t count, uint64_t *offsets,
                        ans_buf *data);
    /* Add storage facts to the JSON object `obj`: "chunks", "shards" (if sharded), "codecs"
     * (array of names/configs), "stored_bytes" (bytes on disk), "nbytes" (uncompressed). */
    int (*describe)(ans_array *a, ans_json *obj);
    void (*free)(ans_array *a);
    /* Optional (NULL: ans_array_read_segs reads into a temporary buffer, then copies): rows of
     * each segment straight into its `dst`, converted by `conv` (NULL: copied as stored). Each
     * chunk needed is decoded once per call, chunks in parallel. *bad: the first segment whose
     * conversion rejected a value, or SIZE_MAX. */
    int (*read_segs)(ans_array *a, const ans_seg *segs, size_t nsegs, const ans_conv *conv,
                     size_t *bad);
    /* Optional (NULL: nothing is done): the rows of `ranges` will be read soon; start fetching
     * their stored bytes in the background (ans_kv_advise). May read metadata it needs (shard
     * indexes); never decodes. A failure is only a missed hint: callers may ignore it. */
    int (*advise)(ans_array *a, const ans_range *ranges, size_t nranges);
};

struct ans_array {
    const struct ans_array_ops *ops;
    ans_container *container; /* borrowed */
    char *path;               /* "X/data" */
    int ndim;
    uint64_t shape[ANS_MAX_NDIM];
    ans_dtype dtype;    /* STRING for string arrays */
    size_t itemsize;    /* bytes per value in memory, 0 for STRING */
    uint64_t row_bytes; /* itemsize * prod(shape[1:]) (itemsize for 0-d and 1-D) */
};

/* ops->advise when the backend has one, else ANS_OK. */
int ans_array_advise(ans_array *a, const ans_range *ranges, size_t nranges);

/* Backends (each fails with a clear message when `path` is not of its kind). */
int ans_zarr_open(ans_container **out, const char *path, ans_pool *pool);
int ans_h5_open(ans_container **out, const char *path, ans_pool *pool);
/* Heuristics used by ans_store_open to pick a backend: 1 if it looks like one, else 0. */
int ans_zarr_probe(const char *path);
int ans_h5_probe(const char *path);

static inline void ans_container_free(ans_container *c)
{
    if (c) c->ops->free(c);
}
static inline void ans_array_free(ans_array *a)
{
    if (a) a->ops->free(a);
}

/* Shared helpers (container.c). */
/* Fill the common fields of an array; computes row_bytes with overflow checks (ANS_ECORRUPT). */
int ans_array_init_shape(ans_array *a, int ndim, const uint64_t *shape, ans_dtype dtype);
/* Check that ranges lie within shape[0] (ANS_EINVAL naming the array) and return the total rows. */
int ans_array_check_ranges(const ans_array *a, const ans_range *ranges, size_t nranges,
                           uint64_t *total_rows);
/* Scatter rows of an array to per-segment destinations: ops->read_segs when the backend has it,
 * else a read into a temporary buffer and a copy. Segments may come in any order and overlap.
 * *bad as for read_segs; the call itself still returns ANS_OK when a value was rejected. */
int ans_array_read_segs(ans_array *a, const ans_seg *segs, size_t nsegs, const ans_conv *conv,
                        size_t *bad);
/* The fallback of ans_array_read_segs: ops->read into a temporary buffer, then copy. */
int ans_array_read_segs_copy(ans_array *a, const ans_seg *segs, size_t nsegs,
                             const ans_conv *conv, size_t *bad);
/* Convenience: read the whole array (allocates `*out` with ans_malloc; *nbytes set). */
int ans_array_read_all(ans_array *a, void **out, size_t *nbytes);

#endif
