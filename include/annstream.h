/*
 * annstream.h - the public C interface of annstream.
 *
 * annstream reads AnnData stores (zarr v2, zarr v3 with or without sharding, and .h5ad) out of core.
 * This header is the whole public contract: the CLI and the Python extension use nothing else.
 *
 * Conventions
 * - Every public name starts with `ans_` (functions, types) or `ANS_` (macros, constants).
 * - Functions that can fail return an `int` status: ANS_OK (0) on success, a negative ANS_E* code on
 *   failure. The message of the last failure on the calling thread is `ans_error_last()`. It names the
 *   file, the element and the reason, and it is never NULL.
 * - Objects are opaque handles. What comes back through an `**out` parameter belongs to the caller and
 *   is released with the matching `_free` (every `_free` accepts NULL). Pointers returned directly by
 *   accessors are borrowed: they live as long as the object they came from.
 * - Thread safety: a store may be used by several threads at once for reads (`ans_element_read_*`,
 *   `ans_store_read_frame`); an element handle likewise. Freeing an object while another thread uses it
 *   is a caller error.
 * - The library never prints and holds no global mutable state, with one documented exception: when the
 *   linked libhdf5 is not built thread-safe, calls into it are serialised by one process-wide lock.
 */
#ifndef ANNSTREAM_H
#define ANNSTREAM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define ANS_EXTERN __declspec(dllexport)
#elif defined(__GNUC__)
#define ANS_EXTERN __attribute__((visibility("default")))
#else
#define ANS_EXTERN
#endif

#define ANS_VERSION_MAJOR 0
#define ANS_VERSION_MINOR 1
#define ANS_VERSION_PATCH 0
#define ANS_VERSION_STRING "0.1.0"

/* ---------------------------------------------------------------------------------------------- */
/* Status codes and errors                                                                         */

typedef enum ans_status {
    ANS_OK = 0,
    ANS_EGENERIC = -1,     /* any other failure */
    ANS_ENOTFOUND = -2,    /* a file, key, element or column does not exist */
    ANS_ECORRUPT = -3,     /* the data is malformed, truncated or inconsistent */
    ANS_EUNSUPPORTED = -4, /* valid data this version cannot read (codec, dtype, encoding) */
    ANS_EINVAL = -5,       /* a bad argument from the caller */
    ANS_ENOMEM = -6,       /* out of memory */
    ANS_EIO = -7,          /* the operating system refused a read or write */
    ANS_ITEROVER = -8,     /* end of iteration (not an error) */
    ANS_ECANCELLED = -9    /* the operation was cancelled */
} ans_status;

/** Message of the last failure on this thread; "" if none. Never NULL. Valid until the next call into
 *  the library on this thread. */
ANS_EXTERN const char *ans_error_last(void);
/** Status code of the last failure on this thread (ANS_OK if none). */
ANS_EXTERN int ans_error_last_code(void);
/** Forget the last failure on this thread. */
ANS_EXTERN void ans_error_clear(void);

/** Version string of the linked library, e.g. "0.1.0". */
ANS_EXTERN const char *ans_version(void);

/* ---------------------------------------------------------------------------------------------- */
/* Data types                                                                                      */

typedef enum ans_dtype {
    ANS_DTYPE_INVALID = 0,
    ANS_DTYPE_BOOL,
    ANS_DTYPE_INT8,
    ANS_DTYPE_INT16,
    ANS_DTYPE_INT32,
    ANS_DTYPE_INT64,
    ANS_DTYPE_UINT8,
    ANS_DTYPE_UINT16,
    ANS_DTYPE_UINT32,
    ANS_DTYPE_UINT64,
    ANS_DTYPE_FLOAT16,
    ANS_DTYPE_FLOAT32,
    ANS_DTYPE_FLOAT64,
    ANS_DTYPE_COMPLEX64,
    ANS_DTYPE_COMPLEX128,
    ANS_DTYPE_STRING /* UTF-8 strings: offsets + bytes, see ans_column */
} ans_dtype;

/** Size in bytes of one value in memory (native byte order); 0 for STRING and INVALID. */
ANS_EXTERN size_t ans_dtype_size(ans_dtype dtype);
/** numpy name of the type ("float32", "bool", "str", ...). Never NULL. */
ANS_EXTERN const char *ans_dtype_name(ans_dtype dtype);

/* ---------------------------------------------------------------------------------------------- */
/* Stores                                                                                          */

typedef struct ans_store ans_store;
typedef struct ans_element ans_element;
typedef struct ans_rows ans_rows;
typedef struct ans_frame ans_frame;

typedef struct ans_store_options {
    unsigned version; /* ANS_STORE_OPTIONS_VERSION */
    int threads;      /* decoding threads owned by the store; 0 = number of CPUs, 1 = no extra thread */
} ans_store_options;

#define ANS_STORE_OPTIONS_VERSION 1
#define ANS_STORE_OPTIONS_INIT {ANS_STORE_OPTIONS_VERSION, 0}

/**
 * Open the AnnData store at `path`: a zarr v2 or v3 directory, or an .h5ad (HDF5) file.
 * `opts` may be NULL for defaults.
 * @return ANS_OK; ANS_ENOTFOUND if the path does not exist; ANS_ECORRUPT / ANS_EUNSUPPORTED if it is
 *         not a readable AnnData store.
 */
ANS_EXTERN int ans_store_open(ans_store **out, const char *path, const ans_store_options *opts);
/** Close a store. Elements, rows and frames obtained from it stay valid until freed themselves. */
ANS_EXTERN void ans_store_free(ans_store *store);

/** The path given to ans_store_open. */
ANS_EXTERN const char *ans_store_path(const ans_store *store);
/** "zarr-v2", "zarr-v3" or "h5ad". */
ANS_EXTERN const char *ans_store_container(const ans_store *store);
ANS_EXTERN uint64_t ans_store_n_obs(const ans_store *store);
ANS_EXTERN uint64_t ans_store_n_vars(const ans_store *store);
/** Number of decoding threads of the store (including the calling thread). */
ANS_EXTERN int ans_store_threads(const ans_store *store);

/** Row-aligned elements, as paths: "X", "layers/<k>", "obsm/<k>", "raw/X". */
ANS_EXTERN size_t ans_store_n_keys(const ans_store *store);
ANS_EXTERN const char *ans_store_key(const ans_store *store, size_t i);

/**
 * Open the row-aligned element `key` (one of ans_store_keys).
 * @return ANS_OK; ANS_ENOTFOUND for an unknown key.
 */
ANS_EXTERN int ans_store_element(ans_element **out, ans_store *store, const char *key);
ANS_EXTERN void ans_element_free(ans_element *element);

/**
 * Describe the store: its elements, encodings, arrays, chunking, sharding, codecs and sizes.
 * `json` != 0 gives a JSON document, else readable text. `*out` is freed with ans_free.
 */
ANS_EXTERN int ans_store_describe(ans_store *store, int json, char **out);
/** Free memory returned by the library as a plain pointer (ans_store_describe). */
ANS_EXTERN void ans_free(void *ptr);

/* ---------------------------------------------------------------------------------------------- */
/* Elements and row reads                                                                          */

typedef enum ans_format {
    ANS_FORMAT_DENSE = 1,
    ANS_FORMAT_CSR = 2,
    ANS_FORMAT_CSC = 3
} ans_format;

ANS_EXTERN const char *ans_element_key(const ans_element *element);
/** Storage format on disk. */
ANS_EXTERN ans_format ans_element_format(const ans_element *element);
ANS_EXTERN int ans_element_ndim(const ans_element *element);
/** Shape (ans_element_ndim values); axis 0 is obs. */
ANS_EXTERN const uint64_t *ans_element_shape(const ans_element *element);
/** Type of the values. */
ANS_EXTERN ans_dtype ans_element_dtype(const ans_element *element);

/**
 * Read rows `rows[0..nrows)` (each in [0, n_obs), any order, repeats allowed) of the element.
 * Sparse elements (CSR or CSC on disk) give CSR rows, dense ones a C-ordered array of shape
 * (nrows, shape[1:]). The GIL-free, thread-pooled read path: safe to call from several threads.
 */
ANS_EXTERN int ans_element_read_rows(ans_element *element, const int64_t *rows, size_t nrows,
                                     ans_rows **out);
/** Read the contiguous rows [start, stop). */
ANS_EXTERN int ans_element_read_range(ans_element *element, uint64_t start, uint64_t stop,
                                      ans_rows **out);

/** Rows read from an element. Buffers are owned by the ans_rows and freed with it. */
ANS_EXTERN void ans_rows_free(ans_rows *rows);
/** ANS_FORMAT_DENSE or ANS_FORMAT_CSR. */
ANS_EXTERN ans_format ans_rows_format(const ans_rows *rows);
ANS_EXTERN int ans_rows_ndim(const ans_rows *rows);
ANS_EXTERN const uint64_t *ans_rows_shape(const ans_rows *rows);
ANS_EXTERN ans_dtype ans_rows_dtype(const ans_rows *rows);
/** Values: the dense array, or the CSR data (nnz values). */
ANS_EXTERN void *ans_rows_data(const ans_rows *rows);
/** CSR only: number of stored values. */
ANS_EXTERN uint64_t ans_rows_nnz(const ans_rows *rows);
/** CSR only: type of indices and indptr, ANS_DTYPE_INT32 or ANS_DTYPE_INT64 (int32 when both the
 *  number of columns and nnz fit). */
ANS_EXTERN ans_dtype ans_rows_index_dtype(const ans_rows *rows);
ANS_EXTERN void *ans_rows_indices(const ans_rows *rows);
ANS_EXTERN void *ans_rows_indptr(const ans_rows *rows);

/* ---------------------------------------------------------------------------------------------- */
/* Data frames (obs, var)                                                                          */

typedef enum ans_column_kind {
    ANS_COLUMN_NUMERIC = 1,         /* numbers or bools: values */
    ANS_COLUMN_STRING = 2,          /* UTF-8 strings: str_offsets, str_data */
    ANS_COLUMN_CATEGORICAL = 3,     /* codes in values (signed ints, -1 = missing), categories */
    ANS_COLUMN_NULLABLE_INT = 4,    /* values + mask */
    ANS_COLUMN_NULLABLE_BOOL = 5,   /* values + mask */
    ANS_COLUMN_NULLABLE_STRING = 6  /* strings + mask, na_value */
} ans_column_kind;

/** A borrowed view of one column of a frame; valid while the frame lives. */
typedef struct ans_column {
    const char *name;
    ans_column_kind kind;
    ans_dtype dtype;            /* type of `values` (codes for categoricals), STRING for strings */
    uint64_t length;
    const void *values;         /* NULL for strings */
    const uint64_t *str_offsets; /* strings: length + 1 offsets into str_data */
    const char *str_data;
    const uint8_t *mask;        /* nullable kinds: 1 = missing; else NULL */
    const char *na_value;       /* nullable strings: "NA" or "NaN"; else NULL */
    /* categoricals */
    int ordered;
    ans_dtype cat_dtype;        /* STRING or a numeric type */
    uint64_t n_categories;
    const void *cat_values;
    const uint64_t *cat_offsets;
    const char *cat_data;
} ans_column;

/**
 * Read a data frame: `which` is "obs", "var" or "raw/var". `columns` (may be NULL: all, in
 * column-order) names `ncolumns` columns to read.
 * @return ANS_ENOTFOUND naming the first missing column.
 */
ANS_EXTERN int ans_store_read_frame(ans_store *store, const char *which, const char *const *columns,
                                    size_t ncolumns, ans_frame **out);
ANS_EXTERN void ans_frame_free(ans_frame *frame);
ANS_EXTERN uint64_t ans_frame_n_rows(const ans_frame *frame);
ANS_EXTERN size_t ans_frame_n_columns(const ans_frame *frame);
/** Column i (0 <= i < n_columns). */
ANS_EXTERN int ans_frame_column(const ans_frame *frame, size_t i, ans_column *out);
/** The index (row names); its name is the index name ("_index" when anndata stored none). */
ANS_EXTERN int ans_frame_index(const ans_frame *frame, ans_column *out);

#ifdef __cplusplus
}
#endif
#endif /* ANNSTREAM_H */
