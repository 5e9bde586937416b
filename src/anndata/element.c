/* element.c - row-aligned elements (dense arrays, CSR and CSC matrices) and row reads.
 *
 * Read paths
 * - Dense: the requested rows are merged into runs of consecutive rows, one ans_range per run, and
 *   read with ONE array read straight into the output.
 * - CSR: indptr is cached (uint64, 8 bytes per row), loaded in blocks as reads reach them and
 *   validated block by block (see "the cached indptr": memory follows the rows read, not the rows
 *   the metadata claims). Each requested row maps to the value range [indptr[r], indptr[r+1]);
 *   ranges that touch are merged (consecutive rows, or rows separated by empty ones). ONE read for
 *   data (directly into the output) and ONE for indices. Indices are read into the output buffer
 *   itself, at its tail when the stored type is narrower than the output type, and converted in
 *   place front to back (never overwriting an unread value), checking 0 <= index < n_cols on the
 *   way.
 * - CSC: the output is CSR. The column pointer (n_cols + 1) is cached like indptr. The stored
 *   entries are scanned in blocks of about CSC_BLOCK_BYTES (indices + data): a counting pass sizes
 *   every output row, then a fill pass re-reads the blocks and scatters each entry whose row is
 *   selected to every position that row occupies in the request. Columns come out increasing. The
 *   selection is looked up through a sorted (row, position) table, behind a bitmap over the span
 *   of the requested rows when that span is small. Scratch: the block buffers, the bitmap, 32
 *   bytes per requested row.
 *
 * Every ans_rows is ONE allocation: the header followed by its 64-byte aligned buffers (for reads
 * with many ranges the range list rides along, 16 bytes per range). */
#include "anndata/anndata.h"
#include "common/stream.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define ANS_ROWS_ALIGN 64
#define CSC_BLOCK_BYTES ((uint64_t)64 << 20)

/* The indptr cache: up to 2^PTR_SINGLE_SHIFT values in one block (loaded whole on first use, 8 MiB
 * at most); beyond, blocks of 2^16 .. 2^23 values (512 KiB .. 64 MiB), the smallest that keeps the
 * block table within 2^20 entries (8 MiB, untouched pages but those used); 2^43 rows or more are
 * refused. */
#define PTR_SINGLE_SHIFT 20
#define PTR_MIN_SHIFT 16
#define PTR_MAX_SHIFT 23
#define PTR_BLOCKS_SHIFT 20
#define PTR_MAX_VALUES ((uint64_t)1 << (PTR_MAX_SHIFT + PTR_BLOCKS_SHIFT))

typedef struct ptr_arena {
    struct ptr_arena *next;
    uint64_t pad; /* keeps the values 16-byte aligned */
} ptr_arena;

static int ptr_setup(struct ans_element *e);
static void ptr_free(struct ans_element *e);

struct ans_element {
    ans_ad_core *core;
    char *key;
    ans_format format;
    int ndim;
    uint64_t shape[ANS_MAX_NDIM];
    ans_dtype dtype;
    size_t itemsize;
    ans_array *dense;                   /* DENSE */
    ans_array *data, *indices, *indptr; /* CSR / CSC */
    uint64_t nnz;
    uint64_t n_major; /* rows (CSR) or columns (CSC): indptr has n_major + 1 entries */
    uint64_t n_minor; /* the other axis: bound of the stored indices */
    pthread_mutex_t mu;
    int mu_init;
    /* The cached indptr (n_major + 1 values), loaded lazily in blocks of 2^ptr_shift values; see
     * "the cached indptr" below. */
    atomic_int ptr_ready;              /* the table exists, the first and last blocks are loaded */
    unsigned ptr_shift;                /* log2 of the values per block */
    uint64_t ptr_n;                    /* values: n_major + 1 */
    size_t ptr_nblocks;                /* at most PTR_MAX_BLOCKS */
    _Atomic(uint64_t *) *ptr_blocks;   /* block i holds values [i << ptr_shift, ...) */
    struct ptr_arena *ptr_arenas;      /* the allocations the blocks live in */
};

struct ans_rows {
    ans_format format;
    int ndim;
    uint64_t shape[ANS_MAX_NDIM];
    ans_dtype dtype;
    ans_dtype index_dtype;
    uint64_t nnz;
    void *data;
    void *indices;
    void *indptr;
};

static int is_int_dtype(ans_dtype dt)
{
    return dt >= ANS_DTYPE_INT8 && dt <= ANS_DTYPE_UINT64;
}

/* ---- integer conversion --------------------------------------------------------------------- */

/* Convert n integers of type `st` at `src` into `ot` (INT32, INT64 or UINT64) at `dst`, requiring
 * 0 <= value < lim (lim must not exceed the range of `ot`). Values are loaded before the store and
 * processed front to back, so an in-place conversion is safe when dst <= src and
 * src - dst >= n * (size(ot) - size(st)) for widening, src == dst otherwise. Returns n, or the
 * index of the first value out of range. */
/* In blocks: the block's minimum and maximum in the stored type (vectorizes), then its
 * conversion. The check reads every source value before anything of the block is written, so
 * in-place conversions (conv_offset) stay correct. */
#define CONV_BLOCK 1024
#define CONV_LOOP(S, O, NEG)                                                                       \
    for (size_t b_ = 0; b_ < n; b_ += CONV_BLOCK) {                                                \
        size_t e_ = n - b_ < CONV_BLOCK ? n : b_ + CONV_BLOCK;                                     \
        S mn_, mx_;                                                                                \
        memcpy(&mn_, s8 + b_ * sizeof(S), sizeof(S));                                              \
        mx_ = mn_;                                                                                 \
        for (size_t i_ = b_; i_ < e_; i_++) {                                                      \
            S v_;                                                                                  \
            memcpy(&v_, s8 + i_ * sizeof(S), sizeof(S));                                           \
            mn_ = v_ < mn_ ? v_ : mn_;                                                             \
            mx_ = v_ > mx_ ? v_ : mx_;                                                             \
        }                                                                                          \
        if (NEG(mn_) | ((uint64_t)mx_ >= lim))                                                     \
            for (size_t i_ = b_; i_ < e_; i_++) {                                                  \
                S v_;                                                                              \
                memcpy(&v_, s8 + i_ * sizeof(S), sizeof(S));                                       \
                if (NEG(v_) | ((uint64_t)v_ >= lim)) return i_;                                    \
            }                                                                                      \
        for (size_t i_ = b_; i_ < e_; i_++) {                                                      \
            S v_;                                                                                  \
            memcpy(&v_, s8 + i_ * sizeof(S), sizeof(S));                                           \
            O o_ = (O)v_;                                                                          \
            memcpy(d8 + i_ * sizeof(O), &o_, sizeof(O));                                           \
        }                                                                                          \
    }                                                                                              \
    return n;
#define CONV_NEG(x) ((x) < 0)
#define CONV_NONNEG(x) 0
#define CONV_S(S, O) CONV_LOOP(S, O, CONV_NEG)
#define CONV_U(S, O) CONV_LOOP(S, O, CONV_NONNEG)
#define CONV_TO(O)                                                                                 \
    switch (st) {                                                                                  \
    case ANS_DTYPE_INT8: CONV_S(int8_t, O)                                                         \
    case ANS_DTYPE_INT16: CONV_S(int16_t, O)                                                       \
    case ANS_DTYPE_INT32: CONV_S(int32_t, O)                                                       \
    case ANS_DTYPE_INT64: CONV_S(int64_t, O)                                                       \
    case ANS_DTYPE_UINT8: CONV_U(uint8_t, O)                                                       \
    case ANS_DTYPE_UINT16: CONV_U(uint16_t, O)                                                     \
    case ANS_DTYPE_UINT32: CONV_U(uint32_t, O)                                                     \
    case ANS_DTYPE_UINT64: CONV_U(uint64_t, O)                                                     \
    default: return 0;                                                                             \
    }

static size_t conv_ints(const void *src, ans_dtype st, void *dst, ans_dtype ot, size_t n,
                        uint64_t lim)
{
    const unsigned char *s8 = src;
    unsigned char *d8 = dst;
    switch (ot) {
    case ANS_DTYPE_INT32: CONV_TO(int32_t)
    case ANS_DTYPE_INT64: CONV_TO(int64_t)
    case ANS_DTYPE_UINT64: CONV_TO(uint64_t)
    default: return 0;
    }
}

#undef CONV_BLOCK
#undef CONV_LOOP
#undef CONV_NEG
#undef CONV_NONNEG
#undef CONV_S
#undef CONV_U
#undef CONV_TO

/* Where to read n stored values of size `ss` inside a buffer that will hold n values of size `os`
 * after an in-place conversion. */
static inline size_t conv_offset(size_t n, size_t ss, size_t os)
{
    return ss < os ? n * (os - ss) : 0;
}

/* ---- opening -------------------------------------------------------------------------------- */

static int open_part(ans_element *e, const char *name, ans_array **out)
{
    ans_container *c = e->core->c;
    char *p = ans_ad_join(e->key, name);
    if (!p) return ANS_ENOMEM;
    ans_node_kind kind;
    int rc = c->ops->node(c, p, &kind);
    if (rc == ANS_OK && kind != ANS_NODE_ARRAY)
        rc = ans_ad_err(e->core, ANS_ECORRUPT, e->key, "sparse matrix has no '%s' array", name);
    if (rc == ANS_OK) rc = c->ops->open_array(c, p, out);
    free(p);
    if (rc == ANS_OK && (*out)->ndim != 1)
        rc = ans_ad_err(e->core, ANS_ECORRUPT, e->key, "'%s' has %d dimensions, expected 1", name,
                        (*out)->ndim);
    return rc;
}

static int open_dense(ans_element *e)
{
    ans_container *c = e->core->c;
    ANS_TRY(c->ops->open_array(c, e->key, &e->dense));
    ans_array *a = e->dense;
    if (a->dtype == ANS_DTYPE_STRING)
        return ans_ad_err(e->core, ANS_EUNSUPPORTED, e->key,
                          "holds strings; only numeric and bool arrays can be read by rows");
    if (ans_dtype_size(a->dtype) == 0)
        return ans_ad_err(e->core, ANS_EUNSUPPORTED, e->key, "unsupported dtype");
    if (a->ndim < 1)
        return ans_ad_err(e->core, ANS_ECORRUPT, e->key, "a 0-d array is not row-aligned");
    e->format = ANS_FORMAT_DENSE;
    e->ndim = a->ndim;
    memcpy(e->shape, a->shape, (size_t)a->ndim * sizeof e->shape[0]);
    e->dtype = a->dtype;
    e->itemsize = a->itemsize;
    return ANS_OK;
}

static int open_sparse(ans_element *e, const ans_ad_node *node)
{
    ans_ad_core *core = e->core;
    const char *what = node->enc == ANS_ENC_CSR ? "csr_matrix" : "csc_matrix";
    const char *shape_attr = node->legacy ? "h5sparse_shape" : "shape";
    uint64_t shape[2];
    if (ans_ad_json_u64s(ans_json_get(node->attrs, shape_attr), shape, 2) != 0)
        return ans_ad_err(core, ANS_ECORRUPT, e->key,
                          "%s without a valid '%s' attribute (two non-negative integers)", what,
                          shape_attr);
    if (shape[0] > (uint64_t)INT64_MAX || shape[1] > (uint64_t)INT64_MAX)
        return ans_ad_err(core, ANS_ECORRUPT, e->key, "shape too large");
    ANS_TRY(open_part(e, "data", &e->data));
    ANS_TRY(open_part(e, "indices", &e->indices));
    ANS_TRY(open_part(e, "indptr", &e->indptr));
    if (ans_dtype_size(e->data->dtype) == 0)
        return ans_ad_err(core, ANS_EUNSUPPORTED, e->key, "'data' has unsupported dtype %s",
                          ans_dtype_name(e->data->dtype));
    if (!is_int_dtype(e->indices->dtype))
        return ans_ad_err(core, ANS_ECORRUPT, e->key, "'indices' has dtype %s, expected integers",
                          ans_dtype_name(e->indices->dtype));
    if (!is_int_dtype(e->indptr->dtype))
        return ans_ad_err(core, ANS_ECORRUPT, e->key, "'indptr' has dtype %s, expected integers",
                          ans_dtype_name(e->indptr->dtype));
    e->nnz = e->data->shape[0];
    if (e->indices->shape[0] != e->nnz)
        return ans_ad_err(core, ANS_ECORRUPT, e->key,
                          "'data' has %llu values but 'indices' has %llu",
                          (unsigned long long)e->nnz, (unsigned long long)e->indices->shape[0]);
    e->format = node->enc == ANS_ENC_CSR ? ANS_FORMAT_CSR : ANS_FORMAT_CSC;
    e->n_major = e->format == ANS_FORMAT_CSR ? shape[0] : shape[1];
    e->n_minor = e->format == ANS_FORMAT_CSR ? shape[1] : shape[0];
    if (e->n_major >= PTR_MAX_VALUES)
        return ans_ad_err(core, ANS_EUNSUPPORTED, e->key,
                          "%s of shape (%llu, %llu): 2^%d %s or more are not supported", what,
                          (unsigned long long)shape[0], (unsigned long long)shape[1],
                          PTR_MAX_SHIFT + PTR_BLOCKS_SHIFT,
                          e->format == ANS_FORMAT_CSR ? "rows" : "columns");
    ANS_TRY(ptr_setup(e));
    if (e->indptr->shape[0] != e->n_major + 1)
        return ans_ad_err(core, ANS_ECORRUPT, e->key,
                          "'indptr' has %llu values, expected %llu for shape (%llu, %llu)",
                          (unsigned long long)e->indptr->shape[0],
                          (unsigned long long)e->n_major + 1, (unsigned long long)shape[0],
                          (unsigned long long)shape[1]);
    e->ndim = 2;
    e->shape[0] = shape[0];
    e->shape[1] = shape[1];
    e->dtype = e->data->dtype;
    e->itemsize = e->data->itemsize;
    return ANS_OK;
}

int ans_ad_element_open(ans_element **out, ans_ad_core *core, const char *key, uint64_t n_rows,
                        uint64_t n_cols)
{
    *out = NULL;
    ans_ad_node node;
    ANS_TRY(ans_ad_inspect(core, key, &node));
    if (node.kind == ANS_NODE_NONE) return ans_ad_err(core, ANS_ENOTFOUND, key, "not found");
    if (node.enc == ANS_ENC_UNKNOWN) return ans_ad_enc_unknown(core, key, &node);
    if (!ans_ad_enc_is_matrix(node.enc))
        return ans_ad_err(core, ANS_EUNSUPPORTED, key,
                          "encoding '%s' is not a row-aligned array or sparse matrix",
                          node.etype ? node.etype : "(none)");
    ans_element *e = ans_calloc(1, sizeof *e);
    if (!e) return ANS_ENOMEM;
    e->core = ans_ad_core_ref(core);
    atomic_init(&e->ptr_ready, 0);
    int rc = ANS_OK;
    if (!(e->key = ans_strdup(key))) {
        rc = ANS_ENOMEM;
        goto done;
    }
    if (pthread_mutex_init(&e->mu, NULL) != 0) {
        rc = ans_err(ANS_EGENERIC, "%s: element '%s': cannot create a mutex", core->path, key);
        goto done;
    }
    e->mu_init = 1;
    rc = node.enc == ANS_ENC_ARRAY ? open_dense(e) : open_sparse(e, &node);
    if (rc < 0) goto done;
    if (n_rows != UINT64_MAX && e->shape[0] != n_rows) {
        rc = ans_ad_err(core, ANS_ECORRUPT, key,
                        "has %llu rows but the obs index has %llu entries",
                        (unsigned long long)e->shape[0], (unsigned long long)n_rows);
        goto done;
    }
    if (n_cols != UINT64_MAX) {
        if (e->ndim < 2)
            rc = ans_ad_err(core, ANS_ECORRUPT, key, "is 1-D, expected %llu columns",
                            (unsigned long long)n_cols);
        else if (e->shape[1] != n_cols)
            rc = ans_ad_err(core, ANS_ECORRUPT, key,
                            "has %llu columns but the var index has %llu entries",
                            (unsigned long long)e->shape[1], (unsigned long long)n_cols);
    }
done:
    if (rc < 0) {
        ans_element_free(e);
        return rc;
    }
    *out = e;
    return ANS_OK;
}

void ans_element_free(ans_element *e)
{
    if (!e) return;
    ans_array_free(e->dense);
    ans_array_free(e->data);
    ans_array_free(e->indices);
    ans_array_free(e->indptr);
    ptr_free(e);
    if (e->mu_init) pthread_mutex_destroy(&e->mu);
    free(e->key);
    ans_ad_core_unref(e->core);
    free(e);
}

const char *ans_element_key(const ans_element *e)
{
    return e->key;
}

ans_format ans_element_format(const ans_element *e)
{
    return e->format;
}

int ans_element_ndim(const ans_element *e)
{
    return e->ndim;
}

const uint64_t *ans_element_shape(const ans_element *e)
{
    return e->shape;
}

ans_dtype ans_element_dtype(const ans_element *e)
{
    return e->dtype;
}

/* ---- the cached indptr ---------------------------------------------------------------------- */

/* indptr is read lazily, a block of values at a time, so memory grows with the rows actually read,
 * never with the row count the metadata claims (a store can claim 10^11 rows and hold none).
 * Every block is validated when it is loaded: values in [0, nnz], non-decreasing, 0 first (block
 * 0), nnz last (last block), and no decrease across its boundary with a neighbour loaded before
 * it. The first use loads the first and last blocks (so a shape claiming more rows than are stored
 * fails at once). A read loads the blocks of every value it uses, and for a run of consecutive
 * rows every block in between: the values one read uses are therefore non-decreasing and inside
 * [0, nnz], whatever the blocks never loaded hold. Blocks stay until the element is freed. */

/* Geometry: called by open_sparse once n_major is known (the table is at most 8 MiB). */
static int ptr_setup(ans_element *e)
{
    uint64_t n = e->n_major + 1; /* <= PTR_MAX_VALUES */
    unsigned shift = PTR_SINGLE_SHIFT;
    if (n > ((uint64_t)1 << PTR_SINGLE_SHIFT)) {
        shift = PTR_MIN_SHIFT;
        while (((n - 1) >> shift) + 1 > ((uint64_t)1 << PTR_BLOCKS_SHIFT)) shift++;
    }
    e->ptr_n = n;
    e->ptr_shift = shift;
    e->ptr_nblocks = (size_t)(((n - 1) >> shift) + 1);
    /* all-zero bytes are null pointers here: calloc leaves the pages untouched */
    e->ptr_blocks = ans_calloc(e->ptr_nblocks, sizeof *e->ptr_blocks);
    if (!e->ptr_blocks) return ANS_ENOMEM;
    return ANS_OK;
}

static void ptr_free(ans_element *e)
{
    ptr_arena *a = e->ptr_arenas;
    while (a) {
        ptr_arena *next = a->next;
        free(a);
        a = next;
    }
    free(e->ptr_blocks);
}

/* Value i; its block must be loaded (ptr_need_* returned ANS_OK for it on this thread). */
static inline uint64_t ptr_at(const ans_element *e, uint64_t i)
{
    const uint64_t *b =
        atomic_load_explicit(&e->ptr_blocks[i >> e->ptr_shift], memory_order_relaxed);
    return b[i & (((uint64_t)1 << e->ptr_shift) - 1)];
}

static inline int ptr_loaded(const ans_element *e, uint64_t i)
{
    return atomic_load_explicit(&e->ptr_blocks[i >> e->ptr_shift], memory_order_acquire) != NULL;
}

static inline uint64_t ptr_block_len(const ans_element *e, size_t b)
{
    uint64_t start = (uint64_t)b << e->ptr_shift, end = start + ((uint64_t)1 << e->ptr_shift);
    return (end < e->ptr_n ? end : e->ptr_n) - start;
}

/* Loads blocks ids[0..k) (ascending, none loaded yet) with one read into one new arena; installs
 * them only if all are valid. Called with e->mu held. */
static int ptr_load_locked(ans_element *e, const size_t *ids, size_t k)
{
    ans_ad_core *core = e->core;
    uint64_t total = 0;
    size_t nr = 0;
    for (size_t i = 0; i < k; i++) {
        total += ptr_block_len(e, ids[i]); /* <= ptr_n <= 2^43 */
        if (i == 0 || ids[i] != ids[i - 1] + 1) nr++;
    }
    if (total > (SIZE_MAX - sizeof(ptr_arena)) / 8)
        return ans_ad_err(core, ANS_ENOMEM, e->key, "'indptr' too large");
    ans_range *ranges = ans_malloc(nr * sizeof *ranges);
    ptr_arena *ar = ans_malloc(sizeof(ptr_arena) + (size_t)total * 8);
    if (!ranges || !ar) {
        free(ranges);
        free(ar);
        return ANS_ENOMEM;
    }
    uint64_t *vals = (uint64_t *)(void *)(ar + 1);
    size_t r = 0;
    for (size_t i = 0; i < k; i++) {
        uint64_t len = ptr_block_len(e, ids[i]);
        if (i > 0 && ids[i] == ids[i - 1] + 1)
            ranges[r - 1].count += len;
        else
            ranges[r++] = (ans_range){(uint64_t)ids[i] << e->ptr_shift, len};
    }
    size_t ss = e->indptr->itemsize;
    unsigned char *src = (unsigned char *)vals + conv_offset((size_t)total, ss, 8);
    int rc = e->indptr->ops->read(e->indptr, ranges, nr, src);
    if (rc == ANS_OK) {
        uint64_t lim = e->nnz < UINT64_MAX ? e->nnz + 1 : UINT64_MAX;
        size_t bad = conv_ints(src, e->indptr->dtype, vals, ANS_DTYPE_UINT64, (size_t)total, lim);
        if (bad != total) {
            uint64_t pos = 0, off = bad;
            for (size_t i = 0; i < nr; i++) {
                if (off < ranges[i].count) {
                    pos = ranges[i].start + off;
                    break;
                }
                off -= ranges[i].count;
            }
            rc = ans_ad_err(core, ANS_ECORRUPT, e->key,
                            "'indptr'[%llu] is negative or beyond the %llu stored values",
                            (unsigned long long)pos, (unsigned long long)e->nnz);
        }
    }
    const uint64_t *v = vals;
    for (size_t i = 0; i < k && rc == ANS_OK; i++) {
        size_t b = ids[i];
        uint64_t len = ptr_block_len(e, b), base = (uint64_t)b << e->ptr_shift;
        if (b == 0 && v[0] != 0) {
            rc = ans_ad_err(core, ANS_ECORRUPT, e->key, "'indptr'[0] is %llu, not 0",
                            (unsigned long long)v[0]);
            break;
        }
        /* the previous block's last value: from this read, or loaded before */
        const uint64_t *prev = NULL;
        if (i > 0 && ids[i - 1] == b - 1)
            prev = v - 1;
        else if (b > 0) {
            const uint64_t *pb = atomic_load_explicit(&e->ptr_blocks[b - 1], memory_order_relaxed);
            if (pb) prev = pb + ptr_block_len(e, b - 1) - 1;
        }
        if (prev && *prev > v[0]) {
            rc = ans_ad_err(core, ANS_ECORRUPT, e->key, "'indptr' decreases at position %llu",
                            (unsigned long long)base);
            break;
        }
        for (uint64_t j = 1; j < len; j++)
            if (v[j] < v[j - 1]) {
                rc = ans_ad_err(core, ANS_ECORRUPT, e->key,
                                "'indptr' decreases at position %llu",
                                (unsigned long long)(base + j));
                break;
            }
        if (rc < 0) break;
        if (b + 1 < e->ptr_nblocks && !(i + 1 < k && ids[i + 1] == b + 1)) {
            const uint64_t *nb = atomic_load_explicit(&e->ptr_blocks[b + 1], memory_order_relaxed);
            if (nb && v[len - 1] > nb[0]) {
                rc = ans_ad_err(core, ANS_ECORRUPT, e->key, "'indptr' decreases at position %llu",
                                (unsigned long long)(base + len));
                break;
            }
        }
        if (b + 1 == e->ptr_nblocks && v[len - 1] != e->nnz) {
            rc = ans_ad_err(core, ANS_ECORRUPT, e->key,
                            "'indptr' ends at %llu but 'data' and 'indices' hold %llu values",
                            (unsigned long long)v[len - 1], (unsigned long long)e->nnz);
            break;
        }
        v += len;
    }
    free(ranges);
    if (rc < 0) {
        free(ar);
        return rc;
    }
    v = vals;
    for (size_t i = 0; i < k; i++) {
        atomic_store_explicit(&e->ptr_blocks[ids[i]], (uint64_t *)v, memory_order_release);
        v += ptr_block_len(e, ids[i]);
    }
    ar->next = e->ptr_arenas;
    e->ptr_arenas = ar;
    return ANS_OK;
}

/* The missing blocks among those set in `want` (word by word: most words are empty). */
static size_t ptr_missing(const ans_element *e, const uint64_t *want, size_t *ids)
{
    size_t k = 0, nw = (e->ptr_nblocks + 63) / 64;
    for (size_t w = 0; w < nw; w++)
        for (uint64_t bits = want[w]; bits; bits &= bits - 1) {
            size_t b = w * 64 + (size_t)__builtin_ctzll(bits);
            if (!atomic_load_explicit(&e->ptr_blocks[b], memory_order_relaxed)) {
                if (ids) ids[k] = b;
                k++;
            }
        }
    return k;
}

/* Loads the blocks whose bits are set in `want` (ptr_nblocks bits). The first use loads the first
 * and last blocks on their own before anything else (a shape claiming more rows than are stored
 * fails there, having allocated two blocks), unless every block is wanted (then one read, one
 * contiguous arena). */
static int ptr_load(ans_element *e, uint64_t *want)
{
    size_t nb = e->ptr_nblocks;
    int rc = ANS_OK;
    pthread_mutex_lock(&e->mu);
    int first = !atomic_load_explicit(&e->ptr_ready, memory_order_relaxed);
    if (first) {
        want[0] |= 1;
        want[(nb - 1) >> 6] |= (uint64_t)1 << ((nb - 1) & 63);
        size_t ends[2] = {0, nb - 1}, k = 0;
        for (size_t i = 0; i < (nb > 1 ? 2u : 1u); i++)
            if (!atomic_load_explicit(&e->ptr_blocks[ends[i]], memory_order_relaxed))
                ends[k++] = ends[i];
        if (k > 0 && ptr_missing(e, want, NULL) < nb) rc = ptr_load_locked(e, ends, k);
    }
    size_t k = rc == ANS_OK ? ptr_missing(e, want, NULL) : 0;
    size_t *ids = k ? ans_malloc(k * sizeof *ids) : NULL;
    if (k && !ids) rc = ANS_ENOMEM;
    if (rc == ANS_OK && k) {
        ptr_missing(e, want, ids);
        rc = ptr_load_locked(e, ids, k);
    }
    free(ids);
    if (rc == ANS_OK && first) atomic_store_explicit(&e->ptr_ready, 1, memory_order_release);
    pthread_mutex_unlock(&e->mu);
    return rc;
}

static inline void want_span(const ans_element *e, uint64_t *want, uint64_t lo, uint64_t hi)
{
    for (uint64_t b = lo >> e->ptr_shift; b <= hi >> e->ptr_shift; b++)
        want[b >> 6] |= (uint64_t)1 << (b & 63);
}

/* The values rows of a request use: r and r + 1 of each row (rows != NULL), or every value of
 * [start, start + n]. Rows must be in range. */
static int ptr_need_rows(ans_element *e, const int64_t *rows, uint64_t start, size_t n)
{
    int ready = atomic_load_explicit(&e->ptr_ready, memory_order_acquire);
    if (ready) { /* fast path: everything loaded already */
        size_t i = 0;
        if (rows) {
            while (i < n && ptr_loaded(e, (uint64_t)rows[i]) &&
                   ptr_loaded(e, (uint64_t)rows[i] + 1))
                i++;
        } else {
            uint64_t b = start >> e->ptr_shift, last = (start + n) >> e->ptr_shift;
            while (b <= last && ptr_loaded(e, b << e->ptr_shift)) b++;
            i = b > last ? n : 0;
        }
        if (i == n) return ANS_OK;
    }
    uint64_t *want = ans_calloc((e->ptr_nblocks + 63) / 64, sizeof *want);
    if (!want) return ANS_ENOMEM;
    if (rows) {
        for (size_t i = 0; i < n; i++) want_span(e, want, (uint64_t)rows[i], (uint64_t)rows[i] + 1);
    } else {
        want_span(e, want, start, start + n);
    }
    int rc = ptr_load(e, want);
    free(want);
    return rc;
}

/* The values of each range [start, start + count] (rows of the loader's reads). */
static int ptr_need_ranges(ans_element *e, const ans_range *ranges, size_t n)
{
    if (atomic_load_explicit(&e->ptr_ready, memory_order_acquire)) {
        size_t i = 0;
        for (; i < n; i++) {
            uint64_t b = ranges[i].start >> e->ptr_shift;
            uint64_t last = (ranges[i].start + ranges[i].count) >> e->ptr_shift;
            while (b <= last && ptr_loaded(e, b << e->ptr_shift)) b++;
            if (b <= last) break;
        }
        if (i == n) return ANS_OK;
    }
    uint64_t *want = ans_calloc((e->ptr_nblocks + 63) / 64, sizeof *want);
    if (!want) return ANS_ENOMEM;
    for (size_t i = 0; i < n; i++)
        want_span(e, want, ranges[i].start, ranges[i].start + ranges[i].count);
    int rc = ptr_load(e, want);
    free(want);
    return rc;
}

/* The block holding value i (walks that move one value at a time). */
static inline int ptr_need_value(ans_element *e, uint64_t i)
{
    if (ptr_loaded(e, i) && atomic_load_explicit(&e->ptr_ready, memory_order_acquire))
        return ANS_OK;
    return ptr_need_rows(e, NULL, i, 0);
}

/* ---- results -------------------------------------------------------------------------------- */

/* One allocation: the header, then `nbuf` buffers of sizes[i] bytes, each 64-byte aligned. */
static int rows_alloc(const ans_element *e, ans_rows **out, const uint64_t *sizes, void **bufs,
                      size_t nbuf)
{
    uint64_t total = sizeof(ans_rows) + (uint64_t)ANS_ROWS_ALIGN * nbuf;
    for (size_t i = 0; i < nbuf; i++)
        if (ans_add_overflow(total, sizes[i], &total)) total = UINT64_MAX;
    if (total > SIZE_MAX || total == UINT64_MAX)
        return ans_ad_err(e->core, ANS_ENOMEM, e->key, "the result (%llu bytes) is too large",
                          (unsigned long long)total);
    unsigned char *base = ans_malloc_large((size_t)total);
    if (!base) return ANS_ENOMEM;
    memset(base, 0, sizeof(ans_rows));
    uintptr_t p = (uintptr_t)(base + sizeof(ans_rows));
    for (size_t i = 0; i < nbuf; i++) {
        p = (p + ANS_ROWS_ALIGN - 1) & ~(uintptr_t)(ANS_ROWS_ALIGN - 1);
        bufs[i] = (void *)p;
        p += (uintptr_t)sizes[i];
    }
    *out = (ans_rows *)(void *)base;
    return ANS_OK;
}

void ans_rows_free(ans_rows *rows)
{
    free(rows);
}

ans_format ans_rows_format(const ans_rows *r)
{
    return r->format;
}

int ans_rows_ndim(const ans_rows *r)
{
    return r->ndim;
}

const uint64_t *ans_rows_shape(const ans_rows *r)
{
    return r->shape;
}

ans_dtype ans_rows_dtype(const ans_rows *r)
{
    return r->dtype;
}

void *ans_rows_data(const ans_rows *r)
{
    return r->data;
}

uint64_t ans_rows_nnz(const ans_rows *r)
{
    return r->format == ANS_FORMAT_CSR ? r->nnz : 0;
}

ans_dtype ans_rows_index_dtype(const ans_rows *r)
{
    return r->format == ANS_FORMAT_CSR ? r->index_dtype : ANS_DTYPE_INVALID;
}

void *ans_rows_indices(const ans_rows *r)
{
    return r->format == ANS_FORMAT_CSR ? r->indices : NULL;
}

void *ans_rows_indptr(const ans_rows *r)
{
    return r->format == ANS_FORMAT_CSR ? r->indptr : NULL;
}

/* ---- reads ---------------------------------------------------------------------------------- */

/* A request is either an explicit row list (rows != NULL) or the range [start, start + n). */
#define ROW_AT(rows, start, i) ((rows) ? (uint64_t)(rows)[i] : (start) + (uint64_t)(i))

static inline void put_index(void *buf, int wide, size_t i, uint64_t v)
{
    if (wide)
        ((int64_t *)buf)[i] = (int64_t)v;
    else
        ((int32_t *)buf)[i] = (int32_t)v;
}

static inline uint64_t get_index(const void *buf, int wide, size_t i)
{
    return wide ? (uint64_t)((const int64_t *)buf)[i] : (uint64_t)((const int32_t *)buf)[i];
}

/* The output row holding value `pos` (indptr has n + 1 non-decreasing entries). */
static size_t row_of_value(const void *indptr, int wide, size_t n, uint64_t pos)
{
    size_t a = 0, b = n;
    while (a < b) {
        size_t m = a + (b - a) / 2;
        if (get_index(indptr, wide, m + 1) <= pos)
            a = m + 1;
        else
            b = m;
    }
    return a;
}

static int check_sizes(const ans_element *e, uint64_t a, uint64_t b, uint64_t *out)
{
    if (ans_mul_overflow(a, b, out) || *out > SIZE_MAX)
        return ans_ad_err(e->core, ANS_ENOMEM, e->key, "the result is too large");
    return ANS_OK;
}

static int read_dense(ans_element *e, const int64_t *rows, uint64_t start, size_t n,
                      ans_rows **out)
{
    ans_array *a = e->dense;
    size_t nr = 0;
    uint64_t prev = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t r = ROW_AT(rows, start, i);
        if (i == 0 || r != prev + 1) nr++;
        prev = r;
    }
    uint64_t sizes[2];
    ANS_TRY(check_sizes(e, n, a->row_bytes, &sizes[0]));
    ANS_TRY(check_sizes(e, nr, sizeof(ans_range), &sizes[1]));
    void *bufs[2] = {0};
    ans_rows *res = NULL;
    ANS_TRY(rows_alloc(e, &res, sizes, bufs, 2));
    ans_range *ranges = bufs[1];
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t r = ROW_AT(rows, start, i);
        if (k > 0 && r == ranges[k - 1].start + ranges[k - 1].count)
            ranges[k - 1].count++;
        else
            ranges[k++] = (ans_range){r, 1};
    }
    int rc = ANS_OK;
    if (sizes[0] > 0 && k > 0) rc = a->ops->read(a, ranges, k, bufs[0]);
    if (rc < 0) {
        free(res);
        return rc;
    }
    res->format = ANS_FORMAT_DENSE;
    res->ndim = e->ndim;
    res->shape[0] = n;
    for (int d = 1; d < e->ndim; d++) res->shape[d] = e->shape[d];
    res->dtype = e->dtype;
    res->index_dtype = ANS_DTYPE_INVALID;
    res->data = bufs[0];
    *out = res;
    return ANS_OK;
}

typedef struct csr_job {
    ans_element *e;
    const ans_range *ranges;
    size_t nranges;
    void *data;
    unsigned char *idx; /* room for nnz values of max(stored, output) index size */
    size_t nnz;
    int wide;
    size_t bad; /* first index out of range, or (size_t)-1 */
} csr_job;

/* Job 0 reads the values, job 1 the indices (then converts and checks them). */
static int csr_job_fn(void *ctx, size_t i, int slot)
{
    (void)slot;
    csr_job *j = ctx;
    ans_element *e = j->e;
    if (i == 0) return e->data->ops->read(e->data, j->ranges, j->nranges, j->data);
    size_t isz = j->wide ? 8 : 4;
    unsigned char *src = j->idx + conv_offset(j->nnz, e->indices->itemsize, isz);
    ANS_TRY(e->indices->ops->read(e->indices, j->ranges, j->nranges, src));
    ans_dtype ot = j->wide ? ANS_DTYPE_INT64 : ANS_DTYPE_INT32;
    size_t bad = conv_ints(src, e->indices->dtype, j->idx, ot, j->nnz, e->n_minor);
    if (bad != j->nnz) j->bad = bad;
    return ANS_OK;
}

static int read_csr(ans_element *e, const int64_t *rows, uint64_t start, size_t n,
                    ans_rows **out)
{
    ANS_TRY(ptr_need_rows(e, rows, start, n));

    /* Pass 1: output size and the number of (merged) value ranges. */
    uint64_t nnz = 0, last_end = UINT64_MAX;
    size_t nr = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t r = ROW_AT(rows, start, i);
        uint64_t a = ptr_at(e, r), b = ptr_at(e, r + 1);
        if (b == a) continue;
        if (a != last_end) nr++;
        last_end = b;
        if (ans_add_overflow(nnz, b - a, &nnz))
            return ans_ad_err(e->core, ANS_EINVAL, e->key, "too many values requested");
    }
    int wide = !(e->n_minor <= INT32_MAX && nnz <= INT32_MAX);
    size_t isz = wide ? 8 : 4;
    size_t ss = e->indices->itemsize;
    uint64_t sizes[4];
    ANS_TRY(check_sizes(e, (uint64_t)n + 1, isz, &sizes[0]));
    ANS_TRY(check_sizes(e, nnz, e->itemsize, &sizes[1]));
    ANS_TRY(check_sizes(e, nnz, ss > isz ? ss : isz, &sizes[2]));
    ANS_TRY(check_sizes(e, nr, sizeof(ans_range), &sizes[3]));
    void *bufs[4] = {0};
    ans_rows *res = NULL;
    ANS_TRY(rows_alloc(e, &res, sizes, bufs, 4));
    void *indptr = bufs[0];
    unsigned char *idx = bufs[2];
    ans_range *ranges = bufs[3];

    /* Pass 2: output indptr and the ranges. */
    size_t k = 0;
    uint64_t cum = 0;
    last_end = UINT64_MAX;
    put_index(indptr, wide, 0, 0);
    for (size_t i = 0; i < n; i++) {
        uint64_t r = ROW_AT(rows, start, i);
        uint64_t a = ptr_at(e, r), b = ptr_at(e, r + 1);
        cum += b - a;
        put_index(indptr, wide, i + 1, cum);
        if (b == a) continue;
        if (a == last_end)
            ranges[k - 1].count += b - a;
        else
            ranges[k++] = (ans_range){a, b - a};
        last_end = b;
    }

    int rc = ANS_OK;
    if (nnz > 0) {
        /* data and indices as two jobs, so that their chunks decode side by side. */
        csr_job job = {e, ranges, k, bufs[1], idx, (size_t)nnz, wide, (size_t)-1};
        rc = ans_pool_for(e->core->pool, 2, csr_job_fn, &job);
        if (rc == ANS_OK && job.bad != (size_t)-1) {
            size_t i = row_of_value(indptr, wide, n, job.bad);
            rc = ans_ad_err(e->core, ANS_ECORRUPT, e->key,
                            "row %llu has a column index outside [0, %llu)",
                            (unsigned long long)ROW_AT(rows, start, i),
                            (unsigned long long)e->n_minor);
        }
    }
    if (rc < 0) {
        free(res);
        return rc;
    }
    res->format = ANS_FORMAT_CSR;
    res->ndim = 2;
    res->shape[0] = n;
    res->shape[1] = e->shape[1];
    res->dtype = e->dtype;
    res->index_dtype = wide ? ANS_DTYPE_INT64 : ANS_DTYPE_INT32;
    res->nnz = nnz;
    res->data = bufs[1];
    res->indices = idx;
    res->indptr = indptr;
    *out = res;
    return ANS_OK;
}

/* ---- CSC -> CSR ----------------------------------------------------------------------------- */

typedef struct row_pos {
    uint64_t row;
    uint64_t pos;
} row_pos;

static int cmp_row_pos(const void *pa, const void *pb)
{
    const row_pos *a = pa, *b = pb;
    if (a->row != b->row) return a->row < b->row ? -1 : 1;
    return a->pos < b->pos ? -1 : (a->pos > b->pos);
}

/* The selection: row r -> positions in the request. */
typedef struct csc_sel {
    const int64_t *rows; /* NULL: the range [start, start + n) */
    uint64_t start;
    size_t n;
    uint64_t lo, hi;  /* explicit rows: the smallest and largest */
    uint64_t *bitmap; /* bits lo..hi, for explicit rows when that span is not much more than n */
    row_pos *pairs;   /* n pairs sorted by (row, pos) */
} csc_sel;

/* Positions of row r: pairs[*lo, *hi), or for a range one position. Returns 0 when not selected. */
static inline int sel_find(const csc_sel *s, uint64_t r, size_t *lo, size_t *hi)
{
    if (!s->rows) {
        if (r < s->start || r - s->start >= s->n) return 0;
        *lo = (size_t)(r - s->start);
        *hi = *lo + 1;
        return 1;
    }
    if (r < s->lo || r > s->hi) return 0;
    if (s->bitmap && !(s->bitmap[(r - s->lo) >> 6] >> ((r - s->lo) & 63) & 1)) return 0;
    size_t a = 0, b = s->n;
    while (a < b) {
        size_t m = a + (b - a) / 2;
        if (s->pairs[m].row < r)
            a = m + 1;
        else
            b = m;
    }
    size_t e = a;
    while (e < s->n && s->pairs[e].row == r) e++;
    *lo = a;
    *hi = e;
    return 1;
}

static inline uint64_t sel_pos(const csc_sel *s, size_t j)
{
    return s->rows ? s->pairs[j].pos : (uint64_t)j;
}

static inline void copy_item(unsigned char *dst, const unsigned char *src, size_t size)
{
    switch (size) {
    case 1: *dst = *src; break;
    case 2: memcpy(dst, src, 2); break;
    case 4: memcpy(dst, src, 4); break;
    case 8: memcpy(dst, src, 8); break;
    default: memcpy(dst, src, size); break;
    }
}

static int read_csc(ans_element *e, const int64_t *rows, uint64_t start, size_t n,
                    ans_rows **out)
{
    ans_ad_core *core = e->core;
    ANS_TRY(ptr_need_rows(e, NULL, 0, 0)); /* validates the first and last column pointers */
    uint64_t n_obs = e->shape[0];
    size_t item = e->itemsize, ss = e->indices->itemsize;
    uint64_t total_nnz = e->nnz;

    int rc = ANS_OK;
    csc_sel sel = {rows, start, n, 0, 0, NULL, NULL};
    uint64_t *cursor = NULL; /* counts, then the next free slot of each output row */
    unsigned char *iblock = NULL, *dblock = NULL;
    ans_rows *res = NULL;

    if (rows && n > 0) {
        sel.lo = UINT64_MAX;
        for (size_t i = 0; i < n; i++) {
            uint64_t r = (uint64_t)rows[i];
            if (r < sel.lo) sel.lo = r;
            if (r > sel.hi) sel.hi = r;
        }
        /* The bitmap spans only the requested rows' range, and only when it costs no more than
         * the pairs (16 bytes per row) plus 512 KiB: never sized from n_obs alone. */
        uint64_t words = (sel.hi - sel.lo) / 64 + 1;
        if (words <= (uint64_t)n * 2 + 65536 &&
            !(sel.bitmap = ans_calloc((size_t)words, sizeof(uint64_t)))) {
            rc = ANS_ENOMEM;
            goto done;
        }
        if (!(sel.pairs = ans_malloc(n * sizeof(row_pos)))) {
            rc = ANS_ENOMEM;
            goto done;
        }
        for (size_t i = 0; i < n; i++) {
            uint64_t r = (uint64_t)rows[i];
            if (sel.bitmap) sel.bitmap[(r - sel.lo) >> 6] |= (uint64_t)1 << ((r - sel.lo) & 63);
            sel.pairs[i] = (row_pos){r, i};
        }
        qsort(sel.pairs, n, sizeof(row_pos), cmp_row_pos);
    }
    if (!(cursor = ans_calloc(n + 1, sizeof(uint64_t)))) {
        rc = ANS_ENOMEM;
        goto done;
    }

    uint64_t block = CSC_BLOCK_BYTES / (8 + item);
    if (block > total_nnz) block = total_nnz;
    if (block == 0) block = 1;
    if (!(iblock = ans_malloc((size_t)block * 8)) ||
        !(dblock = ans_malloc((size_t)block * item))) {
        rc = ANS_ENOMEM;
        goto done;
    }

    /* Counting pass. */
    if (n > 0) {
        for (uint64_t k0 = 0; k0 < total_nnz; k0 += block) {
            size_t cnt = (size_t)(total_nnz - k0 < block ? total_nnz - k0 : block);
            ans_range r = {k0, cnt};
            unsigned char *src = iblock + conv_offset(cnt, ss, 8);
            if ((rc = e->indices->ops->read(e->indices, &r, 1, src)) < 0) goto done;
            size_t bad = conv_ints(src, e->indices->dtype, iblock, ANS_DTYPE_UINT64, cnt, n_obs);
            if (bad != cnt) {
                rc = ans_ad_err(core, ANS_ECORRUPT, e->key,
                                "row index at position %llu is outside [0, %llu)",
                                (unsigned long long)(k0 + bad), (unsigned long long)n_obs);
                goto done;
            }
            const uint64_t *ix = (const uint64_t *)(void *)iblock;
            for (size_t j = 0; j < cnt; j++) {
                size_t lo, hi;
                if (!sel_find(&sel, ix[j], &lo, &hi)) continue;
                for (size_t q = lo; q < hi; q++) cursor[sel_pos(&sel, q)]++;
            }
        }
    }
    uint64_t nnz = 0;
    for (size_t i = 0; i < n; i++)
        if (ans_add_overflow(nnz, cursor[i], &nnz)) {
            rc = ans_ad_err(core, ANS_EINVAL, e->key, "too many values requested");
            goto done;
        }

    int wide = !(e->shape[1] <= INT32_MAX && nnz <= INT32_MAX);
    size_t isz = wide ? 8 : 4;
    uint64_t sizes[3];
    void *bufs[3] = {0};
    if ((rc = check_sizes(e, (uint64_t)n + 1, isz, &sizes[0])) < 0 ||
        (rc = check_sizes(e, nnz, item, &sizes[1])) < 0 ||
        (rc = check_sizes(e, nnz, isz, &sizes[2])) < 0 ||
        (rc = rows_alloc(e, &res, sizes, bufs, 3)) < 0)
        goto done;
    void *indptr = bufs[0];
    unsigned char *odata = bufs[1];
    unsigned char *oidx = bufs[2];
    uint64_t cum = 0;
    put_index(indptr, wide, 0, 0);
    for (size_t i = 0; i < n; i++) {
        uint64_t c = cursor[i];
        cursor[i] = cum;
        cum += c;
        put_index(indptr, wide, i + 1, cum);
    }
    cursor[n] = cum;

    /* Fill pass: re-read the blocks; an entry of column c lands at the cursor of each position. */
    if (nnz > 0) {
        uint64_t c = 0;
        for (uint64_t k0 = 0; k0 < total_nnz; k0 += block) {
            size_t cnt = (size_t)(total_nnz - k0 < block ? total_nnz - k0 : block);
            ans_range r = {k0, cnt};
            unsigned char *src = iblock + conv_offset(cnt, ss, 8);
            if ((rc = e->indices->ops->read(e->indices, &r, 1, src)) < 0) goto done;
            if ((rc = e->data->ops->read(e->data, &r, 1, dblock)) < 0) goto done;
            size_t bad = conv_ints(src, e->indices->dtype, iblock, ANS_DTYPE_UINT64, cnt, n_obs);
            if (bad != cnt) {
                rc = ans_ad_err(core, ANS_ECORRUPT, e->key,
                                "row index at position %llu is outside [0, %llu)",
                                (unsigned long long)(k0 + bad), (unsigned long long)n_obs);
                goto done;
            }
            const uint64_t *ix = (const uint64_t *)(void *)iblock;
            for (size_t j = 0; j < cnt; j++) {
                uint64_t k = k0 + j;
                /* ends: indptr[n_cols] == nnz > k; column pointers load as the walk reaches them */
                for (;;) {
                    if ((rc = ptr_need_value(e, c + 1)) < 0) goto done;
                    if (ptr_at(e, c + 1) > k) break;
                    c++;
                }
                size_t lo, hi;
                if (!sel_find(&sel, ix[j], &lo, &hi)) continue;
                for (size_t q = lo; q < hi; q++) {
                    uint64_t p = sel_pos(&sel, q);
                    uint64_t slot = cursor[p];
                    if (slot >= get_index(indptr, wide, (size_t)p + 1)) {
                        rc = ans_ad_err(core, ANS_ECORRUPT, e->key,
                                        "the stored data changed while it was read");
                        goto done;
                    }
                    cursor[p] = slot + 1;
                    put_index(oidx, wide, (size_t)slot, c);
                    copy_item(odata + (size_t)slot * item, dblock + j * item, item);
                }
            }
        }
    }
    for (size_t i = 0; i < n; i++)
        if (cursor[i] != get_index(indptr, wide, i + 1)) {
            rc = ans_ad_err(core, ANS_ECORRUPT, e->key,
                            "the stored data changed while it was read");
            goto done;
        }
    res->format = ANS_FORMAT_CSR;
    res->ndim = 2;
    res->shape[0] = n;
    res->shape[1] = e->shape[1];
    res->dtype = e->dtype;
    res->index_dtype = wide ? ANS_DTYPE_INT64 : ANS_DTYPE_INT32;
    res->nnz = nnz;
    res->data = odata;
    res->indices = oidx;
    res->indptr = indptr;

done:
    free(sel.bitmap);
    free(sel.pairs);
    free(cursor);
    free(iblock);
    free(dblock);
    if (rc < 0) {
        free(res);
        return rc;
    }
    *out = res;
    return ANS_OK;
}

/* ---- public read entry points --------------------------------------------------------------- */

static int read_any(ans_element *e, const int64_t *rows, uint64_t start, size_t n, ans_rows **out)
{
    switch (e->format) {
    case ANS_FORMAT_DENSE: return read_dense(e, rows, start, n, out);
    case ANS_FORMAT_CSR: return read_csr(e, rows, start, n, out);
    case ANS_FORMAT_CSC: return read_csc(e, rows, start, n, out);
    }
    return ans_ad_err(e->core, ANS_EGENERIC, e->key, "unknown format");
}

int ans_element_read_rows(ans_element *e, const int64_t *rows, size_t nrows, ans_rows **out)
{
    if (!out) return ans_err(ANS_EINVAL, "ans_element_read_rows: out is NULL");
    *out = NULL;
    if (!e) return ans_err(ANS_EINVAL, "ans_element_read_rows: element is NULL");
    if (nrows > 0 && !rows) return ans_ad_err(e->core, ANS_EINVAL, e->key, "rows is NULL");
    uint64_t n_obs = e->shape[0];
    for (size_t i = 0; i < nrows; i++)
        if (rows[i] < 0 || (uint64_t)rows[i] >= n_obs)
            return ans_ad_err(e->core, ANS_EINVAL, e->key,
                              "row %lld (position %zu) is outside [0, %llu)", (long long)rows[i],
                              i, (unsigned long long)n_obs);
    return read_any(e, rows, 0, nrows, out);
}

int ans_element_read_range(ans_element *e, uint64_t start, uint64_t stop, ans_rows **out)
{
    if (!out) return ans_err(ANS_EINVAL, "ans_element_read_range: out is NULL");
    *out = NULL;
    if (!e) return ans_err(ANS_EINVAL, "ans_element_read_range: element is NULL");
    if (start > stop || stop > e->shape[0])
        return ans_ad_err(e->core, ANS_EINVAL, e->key, "rows [%llu, %llu) are outside [0, %llu)",
                          (unsigned long long)start, (unsigned long long)stop,
                          (unsigned long long)e->shape[0]);
    if (stop - start > SIZE_MAX)
        return ans_ad_err(e->core, ANS_EINVAL, e->key, "too many rows requested");
    return read_any(e, NULL, start, (size_t)(stop - start), out);
}

/* ---- reads into caller buffers (the loader) ------------------------------------------------- */

static int ranges_in_bounds(ans_element *e, const ans_range *ranges, size_t n, uint64_t *rows)
{
    uint64_t total = 0, lim = e->shape[0];
    for (size_t i = 0; i < n; i++) {
        if (ranges[i].start > lim || ranges[i].count > lim - ranges[i].start)
            return ans_ad_err(e->core, ANS_EINVAL, e->key,
                              "rows [%llu, %llu + %llu) are outside [0, %llu)",
                              (unsigned long long)ranges[i].start,
                              (unsigned long long)ranges[i].start,
                              (unsigned long long)ranges[i].count, (unsigned long long)lim);
        if (ans_add_overflow(total, ranges[i].count, &total))
            return ans_ad_err(e->core, ANS_EINVAL, e->key, "too many rows requested");
    }
    *rows = total;
    return ANS_OK;
}

int ans_ad_element_size_ranges(ans_element *e, const ans_range *ranges, size_t n,
                               ans_dtype index_dtype, ans_ad_read_size *out)
{
    memset(out, 0, sizeof *out);
    if (e->format == ANS_FORMAT_CSC)
        return ans_ad_err(e->core, ANS_EUNSUPPORTED, e->key,
                          "a CSC matrix cannot be streamed by rows; store it as CSR");
    uint64_t rows = 0, bytes = 0;
    ANS_TRY(ranges_in_bounds(e, ranges, n, &rows));
    out->rows = rows;
    if (e->format == ANS_FORMAT_DENSE) {
        ANS_TRY(check_sizes(e, rows, e->dense->row_bytes, &bytes));
        out->data_bytes = (size_t)bytes;
        return ANS_OK;
    }
    ANS_TRY(ptr_need_ranges(e, ranges, n));
    uint64_t nnz = 0;
    for (size_t i = 0; i < n; i++)
        if (ans_add_overflow(nnz,
                             ptr_at(e, ranges[i].start + ranges[i].count) -
                                 ptr_at(e, ranges[i].start),
                             &nnz))
            return ans_ad_err(e->core, ANS_EINVAL, e->key, "too many values requested");
    out->nnz = nnz;
    ANS_TRY(check_sizes(e, nnz, e->itemsize, &bytes));
    out->data_bytes = (size_t)bytes;
    size_t isz = index_dtype == ANS_DTYPE_INT64 ? 8 : 4, ss = e->indices->itemsize;
    ANS_TRY(check_sizes(e, nnz, ss > isz ? ss : isz, &bytes));
    out->indices_bytes = (size_t)bytes;
    return ANS_OK;
}

int ans_ad_element_read_ranges_into(ans_element *e, const ans_range *ranges, size_t n,
                                    ans_dtype index_dtype, uint64_t indptr_base, void *data,
                                    void *indices, uint64_t *indptr, ans_range *scratch)
{
    uint64_t rows = 0;
    if (e->format == ANS_FORMAT_CSC)
        return ans_ad_err(e->core, ANS_EUNSUPPORTED, e->key,
                          "a CSC matrix cannot be streamed by rows; store it as CSR");
    ANS_TRY(ranges_in_bounds(e, ranges, n, &rows));
    if (e->format == ANS_FORMAT_DENSE) {
        if (rows == 0 || e->dense->row_bytes == 0) return ANS_OK;
        return e->dense->ops->read(e->dense, ranges, n, data);
    }
    ANS_TRY(ptr_need_ranges(e, ranges, n));
    /* indptr, and the value ranges (merged when they touch). */
    uint64_t cum = indptr_base, last_end = UINT64_MAX;
    size_t k = 0, out_row = 0;
    indptr[0] = cum;
    for (size_t i = 0; i < n; i++) {
        uint64_t r0 = ranges[i].start, cnt = ranges[i].count;
        for (uint64_t q = 0; q < cnt; q++) {
            cum += ptr_at(e, r0 + q + 1) - ptr_at(e, r0 + q);
            indptr[++out_row] = cum;
        }
        uint64_t a = ptr_at(e, r0), b = ptr_at(e, r0 + cnt);
        if (b == a) continue;
        if (a == last_end)
            scratch[k - 1].count += b - a;
        else
            scratch[k++] = (ans_range){a, b - a};
        last_end = b;
    }
    uint64_t nnz = cum - indptr_base;
    if (nnz == 0) return ANS_OK;
    int wide = index_dtype == ANS_DTYPE_INT64;
    if (!wide && e->n_minor > (uint64_t)INT32_MAX + 1)
        return ans_ad_err(e->core, ANS_EINVAL, e->key, "int32 indices cannot hold %llu columns",
                          (unsigned long long)e->n_minor);
    csr_job job = {e, scratch, k, data, indices, (size_t)nnz, wide, (size_t)-1};
    ANS_TRY(ans_pool_for(e->core->pool, 2, csr_job_fn, &job));
    if (job.bad != (size_t)-1) {
        /* the row holding value job.bad */
        size_t a = 0, b = (size_t)rows;
        while (a < b) {
            size_t m = a + (b - a) / 2;
            if (indptr[m + 1] - indptr_base <= job.bad)
                a = m + 1;
            else
                b = m;
        }
        return ans_ad_err(e->core, ANS_ECORRUPT, e->key,
                          "a column index outside [0, %llu) in the %zu-th requested row",
                          (unsigned long long)e->n_minor, a);
    }
    return ANS_OK;
}

/* ---- scattering rows to their destinations (the loader) ------------------------------------- */

int ans_ad_element_row_lengths(ans_element *e, const ans_range *ranges, size_t n, uint64_t *lens)
{
    uint64_t rows = 0;
    if (e->format != ANS_FORMAT_CSR)
        return ans_ad_err(e->core, ANS_EUNSUPPORTED, e->key, "row lengths need a CSR matrix");
    ANS_TRY(ranges_in_bounds(e, ranges, n, &rows));
    ANS_TRY(ptr_need_ranges(e, ranges, n));
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        for (uint64_t q = 0; q < ranges[i].count; q++, k++) {
            uint64_t r = ranges[i].start + q;
            lens[k] = ptr_at(e, r + 1) - ptr_at(e, r);
        }
    return ANS_OK;
}

int ans_ad_element_advise_rows(ans_element *e, const ans_range *ranges, size_t n,
                               ans_range *scratch)
{
    uint64_t rows = 0;
    ANS_TRY(ranges_in_bounds(e, ranges, n, &rows));
    if (rows == 0) return ANS_OK;
    if (e->format == ANS_FORMAT_DENSE) return ans_array_advise(e->dense, ranges, n);
    if (e->format != ANS_FORMAT_CSR) return ANS_OK;
    ANS_TRY(ptr_need_ranges(e, ranges, n));
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t a = ptr_at(e, ranges[i].start), b = ptr_at(e, ranges[i].start + ranges[i].count);
        if (b > a) scratch[m++] = (ans_range){a, b - a};
    }
    if (m == 0) return ANS_OK;
    ANS_TRY(ans_array_advise(e->data, scratch, m));
    return ans_array_advise(e->indices, scratch, m);
}

typedef struct idx_conv_ctx {
    ans_dtype st, ot;
    uint64_t lim;
} idx_conv_ctx;

/* Indices into batch slots: the common cases with streaming stores (common/stream.h). */
static size_t idx_conv_fn(void *dst, const void *src, size_t n, const void *ctx)
{
    const idx_conv_ctx *c = ctx;
    if (c->ot == ANS_DTYPE_INT32 && c->st == ANS_DTYPE_UINT16)
        return ans_stream_u16_i32(dst, src, n, c->lim);
    if (c->ot == ANS_DTYPE_INT32 && c->st == ANS_DTYPE_INT32)
        return ans_stream_i32_i32(dst, src, n, c->lim);
    return conv_ints(src, c->st, dst, c->ot, n, c->lim);
}

typedef struct scatter_job {
    ans_element *e;
    const ans_seg *dsegs, *isegs;
    size_t nsegs;
    const ans_conv *dconv, *iconv;
    size_t dbad, ibad;
} scatter_job;

static int scatter_job_fn(void *ctx, size_t i, int slot)
{
    (void)slot;
    scatter_job *j = ctx;
    if (i == 0) return ans_array_read_segs(j->e->data, j->dsegs, j->nsegs, j->dconv, &j->dbad);
    return ans_array_read_segs(j->e->indices, j->isegs, j->nsegs, j->iconv, &j->ibad);
}

int ans_ad_element_scatter_csr(ans_element *e, const ans_range *ranges, size_t n,
                               void *const *data_dst, void *const *idx_dst,
                               const ans_conv *data_conv, ans_dtype index_dtype, ans_seg *scratch)
{
    uint64_t rows = 0;
    if (e->format != ANS_FORMAT_CSR)
        return ans_ad_err(e->core, ANS_EUNSUPPORTED, e->key,
                          "only a CSR matrix can be scattered by rows");
    ANS_TRY(ranges_in_bounds(e, ranges, n, &rows));
    int wide = index_dtype == ANS_DTYPE_INT64;
    if (!wide && e->n_minor > (uint64_t)INT32_MAX + 1)
        return ans_ad_err(e->core, ANS_EINVAL, e->key, "int32 indices cannot hold %llu columns",
                          (unsigned long long)e->n_minor);
    ANS_TRY(ptr_need_ranges(e, ranges, n));
    ans_seg *dsegs = scratch, *isegs = scratch + rows;
    size_t ns = 0, k = 0;
    for (size_t i = 0; i < n; i++)
        for (uint64_t q = 0; q < ranges[i].count; q++, k++) {
            uint64_t r = ranges[i].start + q, a = ptr_at(e, r), c = ptr_at(e, r + 1) - a;
            if (!data_dst[k] || c == 0) continue;
            dsegs[ns] = (ans_seg){a, c, data_dst[k]};
            isegs[ns] = (ans_seg){a, c, idx_dst[k]};
            ns++;
        }
    if (ns == 0) return ANS_OK;
    idx_conv_ctx ic = {e->indices->dtype, wide ? ANS_DTYPE_INT64 : ANS_DTYPE_INT32, e->n_minor};
    ans_conv iconv = {idx_conv_fn, &ic, wide ? 8 : 4};
    scatter_job job = {e, dsegs, isegs, ns, data_conv, &iconv, SIZE_MAX, SIZE_MAX};
    ANS_TRY(ans_pool_for(e->core->pool, 2, scatter_job_fn, &job));
    if (job.dbad != SIZE_MAX)
        return ans_ad_err(e->core, ANS_ECORRUPT, e->key,
                          "a value cannot be converted to the requested dtype");
    if (job.ibad != SIZE_MAX) {
        /* the requested row whose indices start at that segment's destination */
        void *at = isegs[job.ibad].dst;
        size_t row = 0;
        while (row < (size_t)rows && !(data_dst[row] && idx_dst[row] == at)) row++;
        return ans_ad_err(e->core, ANS_ECORRUPT, e->key,
                          "a column index outside [0, %llu) in the %zu-th requested row",
                          (unsigned long long)e->n_minor, row);
    }
    return ANS_OK;
}
