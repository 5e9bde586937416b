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
 * - The library never prints and holds no global mutable state, with one documented exception: calls
 *   into libhdf5 (itself process-global) are serialised by one process-wide lock, which a
 *   pthread_atfork handler takes around fork() so that a forked child never inherits libhdf5 busy.
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
    ANS_ECANCELLED = -9,   /* the operation was cancelled */
    ANS_ETIMEDOUT = -10    /* a timed wait ended before its result was ready (not an error) */
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

/* ---------------------------------------------------------------------------------------------- */
/* Loader: shuffled mini-batches streamed from one or more stores                                 */

/*
 * A loader streams the rows of one row-aligned element (`key`, e.g. "X" or "obsm/emb") of one or
 * more stores as mini-batches. Global row g is position g in the concatenation of the stores (in
 * the order given). The order is a pure function of (seed, epoch, partition): see the sampler
 * parameters below, which follow annbatch's chunked shuffle - the rows are cut into chunks of
 * `chunk_size` consecutive rows, the chunk order is shuffled, `preload_nchunks` chunks form one
 * load that is read at once, and a load's rows are permuted and cut into batches of `batch_size`.
 * Batches are the same whatever the number of threads or the prefetch depth.
 *
 * Engine: one background thread per loader (started by the first ans_loader_next of an epoch)
 * computes the plan of each load and queues its batches. Sparse (CSR) batches are laid out from the
 * row lengths first, then every row is decoded straight into its place in its batch (chunks decoded
 * once per load, in parallel on the stores' decode pools; a blosc chunk only partly needed is
 * decoded block by block). Dense and densified batches are read into a load buffer first and then
 * gathered into each batch's own contiguous buffers (in parallel on `threads` threads).
 *
 * Memory is bounded by (prefetch + 1) loads of rows - `prefetch` loads of batches waiting in the
 * queue plus the load being decoded - plus the batches the consumer holds (returned with
 * ans_batch_release). Buffers are recycled: a released batch's buffers serve a later batch; new
 * ones are made only when every existing one is queued or held, and a buffer grows (by at least
 * half) only when a batch needs more room than it ever had. So the steady state allocates nothing
 * per batch. A consumer that holds batches without releasing them makes the loader allocate more
 * (it never waits for a release, so collecting a whole epoch cannot deadlock): memory grows with
 * the number of batches held. The per-load tables add up to 88 bytes per row of a load. Decoding also
 * uses the stores' own caches (the indptr of each sparse element, 8 bytes per row).
 *
 * Threads: one thread drives a loader (ans_loader_next, set_epoch, seek, free are not to be called
 * concurrently on one loader); ans_batch_release may be called from any thread at any time, also
 * after ans_loader_free.
 *
 * fork(): the loader's background thread does not exist in a forked child. A loader must be created
 * in the process that iterates it (e.g. lazily inside each PyTorch DataLoader worker); used in a
 * child of its creator, ans_loader_next / set_epoch / seek / push_plan return ANS_EINVAL, and
 * ans_loader_free only releases memory (batches held at the fork are not reclaimed there).
 */

typedef struct ans_loader ans_loader;
typedef struct ans_batch ans_batch;

/* mask_stop value meaning "up to the last row". */
#define ANS_LOADER_MASK_END UINT64_MAX

/**
 * Page-locking ("pinning") of batch memory, so that an accelerator can copy batches asynchronously
 * straight out of the loader's buffers (e.g. cudaHostRegister / cudaHostUnregister). With pinning
 * set, every buffer a batch hands out (values, indices, indptr, rows) is page-aligned, a whole
 * number of pages long, shares no page with any other allocation, and is pinned once when its slot
 * allocates or grows it (not per batch); it is unpinned just before it is freed or replaced.
 * - pin(user, ptr, size): returns 0 once [ptr, ptr + size) is pinned, else a nonzero code (the
 *   batch fails with ANS_ENOMEM naming the size and the code). Called from the loader's threads,
 *   possibly several at once: it must be thread-safe.
 * - unpin(user, ptr): undoes a successful pin. Called from whichever thread frees the buffer
 *   (the producer, ans_loader_free or the last ans_batch_release); never in a forked child.
 * - release(user) (may be NULL): called once when the loader's memory is gone (ans_loader_free and
 *   every batch released), after the last unpin; the loader owns `user` from a successful
 *   ans_loader_new on (on failure the caller keeps it).
 * Pinned memory is the loader's batch slots: about (prefetch + 1) loads of batches plus the batches
 * the consumer holds.
 */
typedef struct ans_host_pinning {
    int (*pin)(void *user, void *ptr, size_t size);
    void (*unpin)(void *user, void *ptr);
    void (*release)(void *user);
    void *user;
} ans_host_pinning;

typedef struct ans_loader_options {
    unsigned version;         /* ANS_LOADER_OPTIONS_VERSION */
    const char *key;          /* element to stream; "X" by default (NULL also means "X") */
    uint64_t batch_size;      /* rows per batch, >= 1; must divide chunk_size * preload_nchunks */
    uint64_t chunk_size;      /* consecutive rows per chunk, >= 1 (default 512) */
    uint64_t preload_nchunks; /* chunks per load, >= 1 (default 32) */
    int shuffle;              /* nonzero: random chunk order and random order within each load */
    int drop_last;            /* nonzero: skip the short last batch */
    int replacement;          /* nonzero: draw chunks with replacement (needs shuffle) */
    uint64_t num_samples;     /* with replacement: rows per epoch over all partitions; 0 = mask */
    uint64_t seed;
    uint64_t epoch;           /* first epoch (ans_loader_set_epoch changes it) */
    uint64_t partition;       /* this consumer (DDP rank * workers + worker), < n_partitions */
    uint64_t n_partitions;    /* >= 1; each partition gets an equal, disjoint share of an epoch */
    uint64_t mask_start;      /* only global rows [mask_start, mask_stop) are sampled */
    uint64_t mask_stop;       /* ANS_LOADER_MASK_END = all rows */
    int prefetch;             /* loads gathered ahead of the consumer, >= 1 (default 2) */
    int threads;              /* threads gathering dense or densified batches (a pool of the
                                 loader's own); 0 = share the first store's decode pool. Reads
                                 always decode on the stores' pools (ans_store_options.threads) */
    int densify;              /* nonzero: sparse rows come out as dense (rows x n_vars) arrays */
    ans_dtype out_dtype;      /* type of the values; ANS_DTYPE_INVALID keeps the stored type.
                                 Conversions (as by a C cast) from bool, integer and float32/64
                                 values to integer, float32 or float64 types */
    int return_index;         /* nonzero: batches carry their global row indices */
    int custom_plans;         /* nonzero: the load plans come from ans_loader_push_plan; the
                                 sampling options (batch_size ... mask_stop) are then ignored */
    /* version 2 */
    const ans_host_pinning *pinning; /* NULL: batch memory is not pinned; else copied (pin and
                                        unpin both set) */
} ans_loader_options;

#define ANS_LOADER_OPTIONS_VERSION 2
#define ANS_LOADER_OPTIONS_INIT                                                                    \
    {ANS_LOADER_OPTIONS_VERSION, "X", 1, 512, 32, 0, 0, 0, 0, 0, 0, 0, 1, 0, ANS_LOADER_MASK_END, \
     2, 0, 0, ANS_DTYPE_INVALID, 0, 0, NULL}

/**
 * Make a loader over `stores[0..nstores)` (`opts` may be NULL for defaults). All stores must have
 * the same n_vars and identical var names; `key` must exist in each with equal shape[1:], dtype and
 * format (dense or CSR; CSC cannot be streamed). The loader keeps its own references: the stores
 * may be freed right after this call. Options are checked before any data is read. Starts no
 * thread (the first ans_loader_next does).
 * @return ANS_OK; ANS_EINVAL for bad options or stores that do not match (naming the first
 *         differing store); ANS_ENOTFOUND when a store lacks `key`; ANS_EUNSUPPORTED for a CSC
 *         element or an impossible out_dtype conversion.
 */
ANS_EXTERN int ans_loader_new(ans_loader **out, ans_store *const *stores, size_t nstores,
                              const ans_loader_options *opts);
/** Stop and join the background thread (also mid-epoch) and free the loader. Batches not yet
 *  released stay valid; their memory is freed when they are released. NULL-tolerant. */
ANS_EXTERN void ans_loader_free(ans_loader *loader);

/** Batches of this partition per epoch (after drop_last); equal on every partition. */
ANS_EXTERN uint64_t ans_loader_n_batches(const ans_loader *loader);
/** Total rows of the stores (the length of the concatenation). */
ANS_EXTERN uint64_t ans_loader_n_obs(const ans_loader *loader);
/** The current epoch. */
ANS_EXTERN uint64_t ans_loader_epoch(const ans_loader *loader);

/**
 * Start epoch `epoch` from its first batch. Batches already queued are dropped (the held ones stay
 * valid). Blocks until the background thread has finished the read it is doing.
 * @return ANS_OK; ANS_ENOMEM; ANS_EINVAL in a forked child.
 */
ANS_EXTERN int ans_loader_set_epoch(ans_loader *loader, uint64_t epoch);

/**
 * Continue the current epoch at batch `batch` (0 <= batch <= n_batches; n_batches ends the epoch),
 * e.g. to resume from a checkpoint: the next batches are exactly those an uninterrupted epoch would
 * give from `batch` on.
 * @return ANS_OK; ANS_EINVAL when batch > n_batches or in a forked child.
 */
ANS_EXTERN int ans_loader_seek(ans_loader *loader, uint64_t batch);

/**
 * The next batch of the epoch, waiting for it if needed. `*out` is the caller's until
 * ans_batch_release. A failure of the background thread (a read error, say) is returned here, with
 * its message, after the batches that were ready before it; it is returned again on later calls
 * until ans_loader_set_epoch or ans_loader_seek.
 * @return ANS_OK; ANS_ITEROVER at the end of the epoch (again on later calls until set_epoch /
 *         seek); any read error.
 */
ANS_EXTERN int ans_loader_next(ans_loader *loader, ans_batch **out);

/**
 * ans_loader_next waiting at most `timeout_ms` milliseconds (0: do not wait; negative: no limit),
 * so that a caller can handle signals (Ctrl-C) while a slow load is read.
 * @return as ans_loader_next, or ANS_ETIMEDOUT (no message) when no batch was ready in time; call
 *         again to keep waiting.
 */
ANS_EXTERN int ans_loader_next_wait(ans_loader *loader, ans_batch **out, int timeout_ms);

/**
 * Custom-plan mode (custom_plans = 1; e.g. a sampler written in Python): queue the next load. The
 * loader reads the rows of the ranges (`n_ranges` pairs {start, count} of global rows; overlaps
 * allowed) as one load, whose rows are numbered 0.. in range order; batch i is the load rows
 * order[batch_bounds[i] .. batch_bounds[i+1]) (n_batches + 1 bounds from 0 to n_order, strictly
 * increasing; rows may repeat). Plans are executed in push order; batch indices count on across
 * plans from 0 at the start of the epoch. The arrays are copied. Safe to call from another thread
 * than the one calling ans_loader_next. Memory: each pending plan keeps its copy (16 bytes per
 * range and 8 per order entry or bound) until executed; push at most prefetch + 1 plans ahead of the
 * batches consumed. ans_loader_next blocks while no pushed batch is left and
 * ans_loader_end_plans was not called. ans_loader_seek is not available in this mode, and
 * ans_loader_n_batches is 0; ans_loader_set_epoch drops the pending plans and starts over (it must
 * not race a push_plan of another thread).
 * @return ANS_OK; ANS_EINVAL for an invalid plan (naming the entry), a loader without
 *         custom_plans, or after ans_loader_end_plans.
 */
ANS_EXTERN int ans_loader_push_plan(ans_loader *loader, const uint64_t *ranges, size_t n_ranges,
                                    const uint64_t *order, size_t n_order,
                                    const uint64_t *batch_bounds, size_t n_batches);
/** Custom-plan mode: no more plans this epoch; ans_loader_next gives ANS_ITEROVER once the pushed
 *  batches are consumed. */
ANS_EXTERN int ans_loader_end_plans(ans_loader *loader);

/** Hand a batch's buffers back for reuse; the loader never reuses them before. Any thread, any time
 *  (after ans_loader_free too). NULL-tolerant. */
ANS_EXTERN void ans_batch_release(ans_batch *batch);

/** ANS_FORMAT_CSR (sparse element, no densify) or ANS_FORMAT_DENSE. */
ANS_EXTERN ans_format ans_batch_format(const ans_batch *batch);
ANS_EXTERN uint64_t ans_batch_n_rows(const ans_batch *batch);
ANS_EXTERN int ans_batch_ndim(const ans_batch *batch);
/** Shape (ans_batch_ndim values): (n_rows, shape[1:] of the element). */
ANS_EXTERN const uint64_t *ans_batch_shape(const ans_batch *batch);
/** Type of the values (out_dtype when set). */
ANS_EXTERN ans_dtype ans_batch_dtype(const ans_batch *batch);
/** The dense array (C order) or the CSR values. Borrowed: valid until ans_batch_release. */
ANS_EXTERN void *ans_batch_data(const ans_batch *batch);
/** CSR: number of values; 0 for dense. */
ANS_EXTERN uint64_t ans_batch_nnz(const ans_batch *batch);
/** CSR: type of indices and indptr, ANS_DTYPE_INT32 when n_vars and nnz fit, else INT64;
 *  ANS_DTYPE_INVALID for dense. */
ANS_EXTERN ans_dtype ans_batch_index_dtype(const ans_batch *batch);
/** CSR: column indices (nnz) and row pointers (n_rows + 1); NULL for dense. */
ANS_EXTERN void *ans_batch_indices(const ans_batch *batch);
ANS_EXTERN void *ans_batch_indptr(const ans_batch *batch);
/** Global row index of each batch row (n_rows values) with return_index, else NULL. */
ANS_EXTERN const uint64_t *ans_batch_rows(const ans_batch *batch);
/** The epoch the batch belongs to. */
ANS_EXTERN uint64_t ans_batch_epoch(const ans_batch *batch);
/** Index of the batch in its epoch (0-based, partition-local: what ans_loader_seek takes). */
ANS_EXTERN uint64_t ans_batch_index(const ans_batch *batch);


/* ---------------------------------------------------------------------------------------------- */
/* Collections: converting AnnData stores into a pre-shuffled annbatch collection                  */

/*
 * ans_convert writes the rows of one or more AnnData stores (zarr v2/v3 or .h5ad; CSR, CSC or dense
 * X) as an annbatch "DatasetCollection" (zarr v3, attrs encoding-type "annbatch-preshuffled"):
 * datasets dataset_0 .. dataset_{N-1}, each a complete AnnData with sharded X / layers / obsm.
 *
 * Rows: the concatenation of the inputs (global row g) is permuted by a uniform random permutation
 * determined by `seed` (identity with shuffle = 0); output position p holds one input row, and
 * dataset d holds positions [d*S, (d+1)*S) for S rows per dataset (the last one may be shorter).
 * The permutation is an explicit Fisher-Yates table (8 bytes per row) while that fits in 1/16 of
 * the memory budget, else a keyed bijection evaluated on demand (src/loader/sampler.h's ans_perm).
 *
 * var: ANS_CONVERT_VAR_UNION: every input's var names in first-seen order (the first input's
 * names, then the new names of the second, ...); ANS_CONVERT_VAR_INTERSECTION: the names common to
 * all inputs, in the first input's order; ANS_CONVERT_VAR_LIST: exactly `var_names`, in that order
 * (genes an input lacks are zeros in its rows). Values of dropped genes are dropped. The output var
 * frame has the index only. A var name repeated within one input is an error.
 * X and layers ("layers/<k>") are remapped to the output var: written as CSR (indices sorted within
 * each row) unless every input stores that element dense, then dense. obsm ("obsm/<k>") is copied
 * row by row (dense in every input, same dtype and shape[1:]). Values of differing types across
 * inputs are converted to float64 (numeric columns likewise; nullable integers to int64).
 *
 * obs: the columns `obs_columns` (NULL = every column of the first input that every input has with
 * a compatible kind; others are dropped; nullable-string columns are not carried), plus the
 * categorical "src_path": the input's path as given (for a dataset of an appended collection, its
 * existing src_path value). Categorical columns: the union of the inputs' categories in first-seen
 * order, codes remapped (numeric categories become their decimal text); ordered only if the first
 * input's is. With obs = NULL a column some input lacks is dropped (also when appending an input
 * without it). obs names: the first input's names are kept as they are; a name of a later input
 * that already occurred earlier in the concatenation gets the suffix "-<input index>" (0-based,
 * so "cell7" of the third input becomes "cell7-2"). The check keeps a hash per row (up to 32
 * bytes); when that would exceed 1/8 of the memory budget, every name of inputs 1.. gets the
 * suffix instead.
 *
 * Memory (bounded, whatever the input size): pass 1 reads each input in blocks of rows and scatters
 * them (row header, obs values, remapped indices and values) into one temporary run file per output
 * dataset; pass 2 loads the runs of a dataset, in slices of output positions that fit the budget
 * (a run larger than that is split by position into smaller runs first), and writes the dataset in
 * output order. The budget covers the read blocks, the scatter buffers and the loaded slice. The
 * shard size is capped at memory / 8 (at least 1 MiB), so that the writer's shard buffers (about
 * 2 x min(shard_size, the array's size) per open array) stay within about half the budget again
 * (measured: 1.47 GiB peak at the 2 GiB default for 1M cells; 2.7 GiB with 1 GiB shards). On top
 * of it: the obs columns of the input being read (read whole: the read API has no row-range frame read)
 * and those of the dataset being written (written when the dataset is complete). Inputs are
 * opened with one decode thread each and the one being read with `threads`.
 *
 * Safety: the collection is written into a temporary sibling directory and renamed into place when
 * complete; the run files live in another temporary sibling "<output>.runs-XXXXXX" removed at the
 * end (an interrupted run leaves only directories whose names say so and no zarr.json at
 * `output`). An existing `output` is an error (ANS_EINVAL) unless `overwrite` or `append`; then the
 * new collection is written as "<output>.staged-<pid>" and replaces it only once complete (two
 * renames: the old one moves to "<output>.old-<pid>", removed afterwards). append: the datasets of the existing collection
 * at `output` are read as inputs (first, in dataset order) together with `inputs`; var follows the
 * policy (union keeps new genes); everything is reshuffled and rewritten.
 */

typedef enum ans_convert_var {
    ANS_CONVERT_VAR_UNION = 0,
    ANS_CONVERT_VAR_INTERSECTION = 1,
    ANS_CONVERT_VAR_LIST = 2
} ans_convert_var;

typedef enum ans_convert_compressor {
    ANS_CONVERT_LZ4 = 0, /* blosc lz4, clevel 3, byte shuffle (annbatch's default) */
    ANS_CONVERT_ZSTD = 1, /* zstd, default level */
    ANS_CONVERT_NONE = 2
} ans_convert_compressor;

/** Progress: `done` of `total` rows (each row counts half when scattered and half when written).
 *  Called from the thread running ans_convert; returning nonzero cancels (ANS_ECANCELLED). */
typedef int (*ans_convert_progress_fn)(void *user, uint64_t done, uint64_t total);

typedef struct ans_convert_options {
    unsigned version;             /* ANS_CONVERT_OPTIONS_VERSION */
    uint64_t seed;
    int shuffle;                  /* nonzero (default): uniform random row order */
    uint64_t dataset_size_rows;   /* rows per dataset; 0 = by dataset_size_bytes */
    uint64_t dataset_size_bytes;  /* estimated uncompressed bytes per dataset (default 20 GiB) */
    ans_convert_var var;
    const char *const *var_names; /* ANS_CONVERT_VAR_LIST: n_var_names names */
    size_t n_var_names;
    const char *const *obs_columns; /* NULL = all common columns */
    size_t n_obs_columns;
    const char *const *layers;    /* layer names (without "layers/") carried along */
    size_t n_layers;
    const char *const *obsm;      /* obsm names (without "obsm/") carried along */
    size_t n_obsm;
    uint64_t n_obs_per_chunk;     /* default 64 */
    uint64_t shard_size;          /* bytes, default 1 GiB; capped at memory / 8 */
    ans_convert_compressor compressor;
    uint64_t memory;              /* memory budget in bytes, default 2 GiB */
    int threads;                  /* decode / encode threads; 0 = number of CPUs */
    int append;
    int overwrite;
    ans_convert_progress_fn progress; /* may be NULL */
    void *progress_user;
    /* version 2: within each dataset, rows stably sorted by these obs columns (after the
     * shuffle; carried columns only; categoricals by category, missing values last) */
    const char *const *groupby;
    size_t n_groupby;
} ans_convert_options;

#define ANS_CONVERT_OPTIONS_VERSION 2
#define ANS_CONVERT_OPTIONS_INIT                                                                   \
    {ANS_CONVERT_OPTIONS_VERSION, 0, 1, 0, (uint64_t)20 << 30, ANS_CONVERT_VAR_UNION, NULL, 0,     \
     NULL, 0, NULL, 0, NULL, 0, 64, (uint64_t)1 << 30, ANS_CONVERT_LZ4, (uint64_t)2 << 30, 0, 0, 0, \
     NULL, NULL, NULL, 0}

/**
 * Convert `inputs[0..n_inputs)` into the collection `output` (see above). `opts` may be NULL.
 * @return ANS_OK; ANS_EINVAL for bad options, an existing output without overwrite/append, or
 *         inputs that cannot be combined (naming the input and element); ANS_ENOTFOUND for a
 *         missing input, element or column; ANS_ECANCELLED when the progress callback asked;
 *         read / write errors.
 */
ANS_EXTERN int ans_convert(const char *const *inputs, size_t n_inputs, const char *output,
                           const ans_convert_options *opts);

#ifdef __cplusplus
}
#endif
#endif /* ANNSTREAM_H */
