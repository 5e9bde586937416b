/* adw.h - AnnData element writers on top of the zarr v3 writer (internal). Layer 3 (writer side).
 *
 * Writes elements the way anndata 0.12 writes them to zarr v3 (ad.settings.zarr_write_format = 3)
 * and annbatch's write_sharded lays them out:
 * - every element carries encoding-type / encoding-version attributes (csr_matrix also `shape`,
 *   dataframe `_index` and `column-order`, categorical `ordered`); the arrays inside a csr_matrix
 *   group carry none; the arrays inside categorical / nullable groups carry "array" 0.2.0;
 * - row-aligned matrices are sharded along axis 0 by annbatch's rules (write_sharded, annbatch
 * 0.3): dense (any ndim): chunk = min(n_obs_per_chunk, n_obs) rows; shard = shard_size /
 * (uncompressed bytes per row) rows, clamped to n_obs, rounded down to a multiple of the chunk, at
 * least one chunk. CSR: avg = nnz / n_obs; chunk = max(1, int(n_obs_per_chunk * avg)) values (<=
 * nnz); shard = int(rows_per_shard * avg) values (<= nnz, rounded down to the chunk, >= one chunk)
 * with rows_per_shard from the bytes of data + indices + indptr per row; data, indices and indptr
 *   share that chunk and shard shape (as in annbatch's output);
 * - CSR indices use the smallest unsigned type that holds n_vars (anndata's
 *   write_csr_csc_indices_with_min_possible_dtype: uint8 when n_vars <= 255, uint16 <= 65535,
 *   uint32, uint64); indptr is int64 (annbatch keeps the source's type);
 * - data frame columns and string arrays are plain (unsharded) chunks of frame_chunk values
 *   compressed with frame_codec (anndata 0.12: one chunk, zstd level 0).
 *
 * Streaming: dense arrays (ans_adw_dense_begin -> ans_zwa_append) and CSR matrices
 * (ans_adw_csr_begin / _append / _close) take their rows in pieces; memory stays at one shard per
 * array whatever the element's size. The other writers take whole columns.
 *
 * Element paths are zarr node paths ("X", "obs", "dataset_3/obsm/emb"). Errors name the output
 * root and the element. */
#ifndef ANS_WRITER_ADW_H
#define ANS_WRITER_ADW_H

#include "writer/zarrw.h"

typedef struct ans_adw_opts {
    uint64_t n_obs_per_chunk; /* rows per inner chunk of row-aligned matrices (annbatch: 64) */
    uint64_t shard_size;      /* target shard size in bytes (annbatch: "1GB" = 1 GiB) */
    uint64_t frame_chunk;     /* values per chunk of data frame columns and string arrays */
    ans_zw_codec codec;       /* row-aligned matrices (annbatch: blosc lz4 clevel 3 shuffle) */
    ans_zw_codec frame_codec; /* data frame columns (anndata's default: zstd level 0) */
} ans_adw_opts;

#define ANS_ADW_OPTS_INIT                                                                          \
    {64, (uint64_t)1 << 30, (uint64_t)1 << 20, ANS_ZW_CODEC_DEFAULT, {ANS_ZW_COMP_ZSTD, NULL, 0, 0}}

/* The group `prefix` ("" = the root) as an AnnData (encoding anndata 0.1.0) with the dict groups
 * layers, obsm, obsp, varm, varp and uns (anndata writes them even when empty). X, obs and var are
 * written by the caller with the element writers below. */
int ans_adw_anndata(ans_zw *w, const char *prefix);
/* The root of an annbatch collection: attrs encoding-type "annbatch-preshuffled", encoding-version
 * "0.1.0". Its datasets are AnnData groups "dataset_<i>" (ans_adw_anndata(w, "dataset_0"), ...). */
int ans_adw_collection(ans_zw *w);
/* A dict group (encoding dict 0.1.0). */
int ans_adw_dict(ans_zw *w, const char *path);

/* ---- dense arrays (encoding array 0.2.0) --------------------------------------------------------
 */

/* A sharded dense array of `dtype` and `shape` (ndim >= 1, shape[0] rows; the plan needs the row
 * count up front, as annbatch's does); append rows with
 * ans_zwa_append and finish with ans_zwa_close (which checks that shape[0] rows came). */
int ans_adw_dense_begin(ans_zw *w, const char *path, ans_dtype dtype, int ndim,
                        const uint64_t *shape, const ans_adw_opts *opts, ans_zwa **out);
/* The same for a whole array in memory (C order). */
int ans_adw_dense(ans_zw *w, const char *path, ans_dtype dtype, int ndim, const uint64_t *shape,
                  const void *data, const ans_adw_opts *opts);

/* ---- CSR matrices (encoding csr_matrix 0.1.0)
 * ---------------------------------------------------- */

typedef struct ans_adw_csr ans_adw_csr;

/* Start an n_rows x n_cols CSR matrix holding exactly `nnz` values of `dtype` (numeric or bool).
 * nnz fixes the chunking (n_obs_per_chunk * nnz / n_rows values per inner chunk). */
int ans_adw_csr_begin(ans_zw *w, const char *path, uint64_t n_rows, uint64_t n_cols, uint64_t nnz,
                      ans_dtype dtype, const ans_adw_opts *opts, ans_adw_csr **out);
/* Append `nrows` rows: their row pointers indptr[0..nrows] (int64, any base: row r holds
 * data[indptr[r] - indptr[0] .. indptr[r + 1] - indptr[0])), column indices `indices` of
 * `index_dtype` (any integer type; each in [0, n_cols)) and values `data`. */
int ans_adw_csr_append(ans_adw_csr *c, uint64_t nrows, const int64_t *indptr, const void *indices,
                       ans_dtype index_dtype, const void *data);
/* The type the column indices are stored as (the smallest unsigned type that holds n_cols - 1):
 * indices appended in this type are checked and copied without a conversion. */
ans_dtype ans_adw_csr_index_dtype(const ans_adw_csr *c);
/* ans_adw_csr_append for indices already in ans_adw_csr_index_dtype(c) that the caller has checked
 * to be < n_cols (the converter's decoder does): they are not scanned again. */
int ans_adw_csr_append_checked(ans_adw_csr *c, uint64_t nrows, const int64_t *indptr,
                               const void *indices, const void *data);
/* Check that n_rows rows and nnz values came, write the arrays' metadata and free `c` (always). */
int ans_adw_csr_close(ans_adw_csr *c);
/* Free without finishing (NULL-tolerant). */
void ans_adw_csr_abort(ans_adw_csr *c);
/* A whole CSR matrix: indptr has n_rows + 1 values starting at 0. */
int ans_adw_csr_write(ans_zw *w, const char *path, uint64_t n_rows, uint64_t n_cols,
                      const int64_t *indptr, const void *indices, ans_dtype index_dtype,
                      const void *data, ans_dtype dtype, const ans_adw_opts *opts);

/* ---- data frames (encoding dataframe 0.2.0)
 * ------------------------------------------------------ */

/* The group of a data frame whose index is the element `index_name` (NULL = "_index") and whose
 * columns, in order, are `columns[0..ncolumns)`. Write the index (ans_adw_strings) and each column
 * as `<path>/<name>` with the writers below. */
int ans_adw_frame(ans_zw *w, const char *path, const char *index_name, const char *const *columns,
                  size_t ncolumns);
/* A string-array (0.2.0): item i is data[offsets[i] .. offsets[i + 1]). */
int ans_adw_strings(ans_zw *w, const char *path, uint64_t n, const uint64_t *offsets,
                    const char *data, const ans_adw_opts *opts);
/* A 1-D numeric or bool column (encoding array 0.2.0). */
int ans_adw_column(ans_zw *w, const char *path, ans_dtype dtype, uint64_t n, const void *values,
                   const ans_adw_opts *opts);
/* Streaming columns: a 1-D array of n values of `dtype` (STRING: a string-array 0.2.0, filled with
 * ans_zwa_append_strings; else an array 0.2.0 filled with ans_zwa_append), finished with
 * ans_zwa_close (which checks that n values came). */
int ans_adw_column_begin(ans_zw *w, const char *path, ans_dtype dtype, uint64_t n,
                         const ans_adw_opts *opts, ans_zwa **out);
/* The codes type pandas (and so anndata) uses for n categories. */
ans_dtype ans_adw_codes_dtype(uint64_t n_categories);
/* A categorical whose codes are streamed: writes the group and its categories, and returns the
 * codes array (ans_adw_codes_dtype(n_categories), n values, each -1 or < n_categories - the
 * caller's to check) to fill with ans_zwa_append and finish with ans_zwa_close. */
int ans_adw_categorical_begin(ans_zw *w, const char *path, uint64_t n, uint64_t n_categories,
                              const uint64_t *cat_offsets, const char *cat_data, int ordered,
                              const ans_adw_opts *opts, ans_zwa **codes);
/* A categorical (0.2.0) with string categories: codes (signed integers of `codes_dtype`, -1 =
 * missing, else < n_categories) are stored as pandas does: int8 below 127 categories, then int16,
 * int32, int64. */
int ans_adw_categorical(ans_zw *w, const char *path, uint64_t n, const void *codes,
                        ans_dtype codes_dtype, uint64_t n_categories, const uint64_t *cat_offsets,
                        const char *cat_data, int ordered, const ans_adw_opts *opts);
/* nullable-integer (values of an integer type) or nullable-boolean (bool values) 0.1.0, chosen by
 * `dtype`; mask[i] != 0 marks a missing value (its value is written as given). */
int ans_adw_nullable(ans_zw *w, const char *path, ans_dtype dtype, uint64_t n, const void *values,
                     const uint8_t *mask, const ans_adw_opts *opts);

#endif
