/* anndata.h - the AnnData element model on top of a container (internal). Layer 3.
 *
 * Objects
 * - ans_ad_core: what a store and every element opened from it share: the container, the decode
 *   pool and the path. It is reference counted so that elements outlive ans_store_free (annstream.h
 *   promises that); the last reference closes the container and then the pool.
 * - ans_store (store.c): the core plus what open discovered: n_obs, n_vars, the row-aligned keys.
 * - ans_element (element.c): a dense array or a CSR / CSC group, with its arrays opened. For sparse
 *   elements the whole indptr is read on first use, widened to uint64 and cached (8 bytes per row
 *   for CSR, per column for CSC); the cache is filled under a mutex, so concurrent reads are safe.
 * - ans_rows (element.c): one allocation per read holding the header and every output buffer, each
 *   64-byte aligned.
 * - ans_frame (frame.c): columns of a dataframe, each owning its buffers.
 *
 * Encodings are recognised by the exact (encoding-type, encoding-version) pair; anything else is
 * ANS_ENC_UNKNOWN and only an error where it must be read.
 *
 * Errors raised here read "<store path>: element '<element path>': <reason>" (ans_ad_err). Errors
 * from the container already name the file and the array and are passed on unchanged. */
#ifndef ANS_ANNDATA_ANNDATA_H
#define ANS_ANNDATA_ANNDATA_H

#include "annstream.h"
#include "common/error.h"
#include "common/json.h"
#include "common/mem.h"
#include "common/pool.h"
#include "container/container.h"

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* ---- shared core ---------------------------------------------------------------------------- */

typedef struct ans_ad_core {
    atomic_int refs;
    ans_container *c;
    ans_pool *pool;
    char *path; /* as given to ans_store_open */
} ans_ad_core;

ans_ad_core *ans_ad_core_ref(ans_ad_core *core);
void ans_ad_core_unref(ans_ad_core *core);

/* Set the thread's error to "<store>: element '<elem>': <fmt...>" and return `code`. */
int ans_ad_err(const ans_ad_core *core, int code, const char *elem, const char *fmt, ...)
    ANS_PRINTF(4, 5);

/* ---- encodings ------------------------------------------------------------------------------ */

typedef enum ans_enc {
    ANS_ENC_NONE = 0,       /* nothing at the path */
    ANS_ENC_UNKNOWN,        /* an encoding we do not read (message via ans_ad_enc_unknown) */
    ANS_ENC_ANNDATA,
    ANS_ENC_RAW,
    ANS_ENC_DICT,           /* also a group without any encoding attributes */
    ANS_ENC_ARRAY,          /* also an array without encoding attributes (check its dtype) */
    ANS_ENC_CSR,
    ANS_ENC_CSC,
    ANS_ENC_DATAFRAME,      /* 0.2.0 */
    ANS_ENC_DATAFRAME_010,  /* legacy 0.1.0: categoricals via a "categories" attribute */
    ANS_ENC_CATEGORICAL,
    ANS_ENC_STRING_ARRAY,
    ANS_ENC_NULLABLE_INT,
    ANS_ENC_NULLABLE_BOOL,
    ANS_ENC_NULLABLE_STRING,
    ANS_ENC_NUMERIC_SCALAR,
    ANS_ENC_STRING_SCALAR,
    ANS_ENC_NULL
} ans_enc;

typedef struct ans_ad_node {
    ans_node_kind kind;     /* ANS_NODE_NONE when nothing is there */
    const ans_json *attrs;  /* borrowed from the container; NULL when kind is NONE */
    ans_enc enc;
    const char *etype;      /* encoding-type as stored, or NULL when absent */
    const char *eversion;   /* encoding-version as stored, or NULL */
    int legacy;             /* no encoding attributes: kind inferred (h5sparse_*, _index, dtype) */
} ans_ad_node;

/* Look at the node at `path` and classify it. ANS_OK with kind NONE when nothing is there. */
int ans_ad_inspect(ans_ad_core *core, const char *path, ans_ad_node *out);
/* The "unknown encoding 'x' (version y)" error for `path`. */
int ans_ad_enc_unknown(const ans_ad_core *core, const char *path, const ans_ad_node *node);
/* True for encodings that are row-aligned matrices (array, csr, csc). */
int ans_ad_enc_is_matrix(ans_enc enc);
/* "a/b" joined into a new string (NULL + ANS_ENOMEM on failure); `a` may be "". */
char *ans_ad_join(const char *a, const char *b);

/* Read a JSON integer list attribute of length n (e.g. shape) into out; -1 if it is not one. */
int ans_ad_json_u64s(const ans_json *v, uint64_t *out, size_t n);

/* ---- store ---------------------------------------------------------------------------------- */

struct ans_store {
    ans_ad_core *core;
    int threads;
    uint64_t n_obs;
    uint64_t n_vars;
    int has_raw;
    uint64_t raw_n_vars; /* raw/var index length; UINT64_MAX when unknown (no raw/var) */
    char **keys;
    size_t n_keys;
};

/* Length of the index of the dataframe group at `path` (e.g. "obs"). ANS_ENOTFOUND (no message)
 * when there is nothing at `path`. */
int ans_ad_frame_length(ans_ad_core *core, const char *path, uint64_t *n);

/* ---- elements ------------------------------------------------------------------------------- */

/* Open the row-aligned element at `key` (arrays opened, metadata checked; indptr not read yet).
 * Unless UINT64_MAX, `n_rows` must equal shape[0] and `n_cols` shape[1] (ANS_ECORRUPT). */
int ans_ad_element_open(ans_element **out, ans_ad_core *core, const char *key, uint64_t n_rows,
                        uint64_t n_cols);

/* ---- reads into caller buffers (the loader) ------------------------------------------------- */

/* What ans_ad_element_read_ranges_into needs for `ranges` (rows along axis 0, each within shape[0];
 * any order, overlaps allowed): the output sizes in bytes. */
typedef struct ans_ad_read_size {
    uint64_t rows;        /* sum of the range counts */
    uint64_t nnz;         /* CSR: values in those rows; 0 for dense */
    size_t data_bytes;    /* dense: rows * row bytes; CSR: nnz * itemsize */
    size_t indices_bytes; /* CSR: nnz * max(stored index size, output index size); 0 for dense */
} ans_ad_read_size;

/* Size a read of `ranges` whose CSR indices come out as `index_dtype` (INT32 or INT64; ignored for
 * dense). Uses the cached indptr (reads it on first use). CSC elements: ANS_EUNSUPPORTED.
 * @return ANS_OK; ANS_EINVAL for a range outside the element; ANS_ENOMEM when a size overflows. */
int ans_ad_element_size_ranges(ans_element *e, const ans_range *ranges, size_t n,
                               ans_dtype index_dtype, ans_ad_read_size *out);

/* Read the rows of `ranges`, concatenated in range order, into caller buffers sized by
 * ans_ad_element_size_ranges (nothing is allocated):
 * - dense: `data` receives rows * row bytes (C order, native byte order); other buffers unused.
 * - CSR: `data` receives nnz values, `indices` nnz column indices of `index_dtype` (the buffer must
 *   hold indices_bytes: narrow stored types are read into its tail and widened in place), `indptr`
 *   rows + 1 values, indptr[0] = indptr_base, each next one adding that row's value count.
 *   `scratch` must hold n ranges. Column indices are checked against n_vars (ANS_ECORRUPT).
 * Data and indices decode side by side on the store's pool. Safe to call from several threads on
 * one element with distinct buffers. */
int ans_ad_element_read_ranges_into(ans_element *e, const ans_range *ranges, size_t n,
                                    ans_dtype index_dtype, uint64_t indptr_base, void *data,
                                    void *indices, uint64_t *indptr, ans_range *scratch);

/* Stored values per row of `ranges`' rows (CSR), in range order, into lens (one per row). */
int ans_ad_element_row_lengths(ans_element *e, const ans_range *ranges, size_t n, uint64_t *lens);

/* The rows of `ranges` (dense or CSR) will be read soon: let the storage start fetching their
 * stored bytes (ans_array_advise; reads the indptr blocks it needs, decodes nothing). `scratch`
 * holds n ranges. A failure only means a missed hint. */
int ans_ad_element_advise_rows(ans_element *e, const ans_range *ranges, size_t n,
                               ans_range *scratch);

/* Scatter the rows of `ranges` (CSR, rows in range order numbered k = 0, 1, ...): row k's values
 * go to data_dst[k] (converted by data_conv, or copied when NULL) and its column indices to
 * idx_dst[k] as `index_dtype` (INT32 or INT64), each checked against n_vars (ANS_ECORRUPT naming
 * the row). A NULL data_dst[k] skips row k. `scratch` holds 2 * rows segments. Nothing else is
 * allocated per row; values and indices decode side by side on the store's pool, each chunk once.
 * Safe to call from several threads on one element with distinct destinations. */
int ans_ad_element_scatter_csr(ans_element *e, const ans_range *ranges, size_t n,
                               void *const *data_dst, void *const *idx_dst,
                               const ans_conv *data_conv, ans_dtype index_dtype, ans_seg *scratch);

#endif
