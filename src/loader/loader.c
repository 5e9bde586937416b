/* loader.c - the loader engine: a producer thread reading loads and gathering batches into
 * recycled buffers (see loader.h for the design, annstream.h for the contract). */
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE /* pthread_setname_np */
#endif

#include "loader/loader.h"

#include "anndata/anndata.h"
#include "common/error.h"
#include "common/mem.h"
#include "common/pool.h"
#include "common/stream.h"
#include "loader/sampler.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define BUF_ALIGN 64
#define LARGE_BUF ((size_t)4 << 20) /* from here on ans_malloc_large */
#define MAX_PREFETCH 1024
#define STOPPED 1 /* internal: the producer was asked to stop */

/* ---- value conversion ----------------------------------------------------------------------- */

int ans_loader_cast_from_ok(ans_dtype dt)
{
    return dt == ANS_DTYPE_BOOL || (dt >= ANS_DTYPE_INT8 && dt <= ANS_DTYPE_UINT64) ||
           dt == ANS_DTYPE_FLOAT32 || dt == ANS_DTYPE_FLOAT64;
}

int ans_loader_cast_to_ok(ans_dtype dt)
{
    return (dt >= ANS_DTYPE_INT8 && dt <= ANS_DTYPE_UINT64) || dt == ANS_DTYPE_FLOAT32 ||
           dt == ANS_DTYPE_FLOAT64;
}

#define CAST_LOOP(S, D)                                                                            \
    do {                                                                                           \
        const S *s_ = src;                                                                         \
        D *d_ = dst;                                                                               \
        if (!idx)                                                                                  \
            for (size_t i_ = 0; i_ < n; i_++) d_[i_] = (D)s_[i_];                                  \
        else if (idx_wide)                                                                         \
            for (size_t i_ = 0; i_ < n; i_++) d_[((const int64_t *)idx)[i_]] = (D)s_[i_];          \
        else                                                                                       \
            for (size_t i_ = 0; i_ < n; i_++) d_[((const int32_t *)idx)[i_]] = (D)s_[i_];          \
    } while (0)

#define CAST_FROM(D)                                                                               \
    switch (st) {                                                                                  \
    case ANS_DTYPE_BOOL:                                                                           \
    case ANS_DTYPE_UINT8: CAST_LOOP(uint8_t, D); return 0;                                         \
    case ANS_DTYPE_INT8: CAST_LOOP(int8_t, D); return 0;                                           \
    case ANS_DTYPE_INT16: CAST_LOOP(int16_t, D); return 0;                                         \
    case ANS_DTYPE_INT32: CAST_LOOP(int32_t, D); return 0;                                         \
    case ANS_DTYPE_INT64: CAST_LOOP(int64_t, D); return 0;                                         \
    case ANS_DTYPE_UINT16: CAST_LOOP(uint16_t, D); return 0;                                       \
    case ANS_DTYPE_UINT32: CAST_LOOP(uint32_t, D); return 0;                                       \
    case ANS_DTYPE_UINT64: CAST_LOOP(uint64_t, D); return 0;                                       \
    case ANS_DTYPE_FLOAT32: CAST_LOOP(float, D); return 0;                                         \
    case ANS_DTYPE_FLOAT64: CAST_LOOP(double, D); return 0;                                        \
    default: return -1;                                                                            \
    }

/* Same type: move the bytes of each value. */
static int copy_same(void *dst, const void *src, size_t size, const void *idx, int idx_wide,
                     size_t n)
{
    if (!idx) {
        if (n) memcpy(dst, src, n * size);
        return 0;
    }
    unsigned char *d = dst;
    const unsigned char *s = src;
    for (size_t i = 0; i < n; i++) {
        uint64_t j = idx_wide ? (uint64_t)((const int64_t *)idx)[i]
                              : (uint64_t)((const int32_t *)idx)[i];
        switch (size) {
        case 1: d[j] = s[i]; break;
        case 2: memcpy(d + j * 2, s + i * 2, 2); break;
        case 4: memcpy(d + j * 4, s + i * 4, 4); break;
        case 8: memcpy(d + j * 8, s + i * 8, 8); break;
        default: memcpy(d + j * size, s + i * size, size); break;
        }
    }
    return 0;
}

int ans_loader_cast(void *dst, ans_dtype dt, const void *src, ans_dtype st, const void *idx,
                    int idx_wide, size_t n)
{
    if (dt == st) return copy_same(dst, src, ans_dtype_size(st), idx, idx_wide, n);
    switch (dt) {
    case ANS_DTYPE_INT8: CAST_FROM(int8_t)
    case ANS_DTYPE_INT16: CAST_FROM(int16_t)
    case ANS_DTYPE_INT32: CAST_FROM(int32_t)
    case ANS_DTYPE_INT64: CAST_FROM(int64_t)
    case ANS_DTYPE_UINT8: CAST_FROM(uint8_t)
    case ANS_DTYPE_UINT16: CAST_FROM(uint16_t)
    case ANS_DTYPE_UINT32: CAST_FROM(uint32_t)
    case ANS_DTYPE_UINT64: CAST_FROM(uint64_t)
    case ANS_DTYPE_FLOAT32: CAST_FROM(float)
    case ANS_DTYPE_FLOAT64: CAST_FROM(double)
    default: return -1;
    }
}

#undef CAST_LOOP
#undef CAST_FROM

/* ---- grow-only aligned buffers -------------------------------------------------------------- */

typedef struct lbuf {
    void *p;
    size_t cap;
    int pinned; /* p was pinned through the loader's ans_host_pinning */
} lbuf;

/* Memory for a buffer of capacity `cap` that must now hold n bytes: 1.5x growth (or exactly n
 * when that cannot be had), `align`-aligned, and a whole number of `align`s long when `whole`.
 * *got = its size; NULL when out of memory. */
static void *grow_alloc(size_t cap, size_t n, size_t align, int whole, size_t *got)
{
    size_t want = cap + cap / 2;
    if (want < n) want = n;
    for (int attempt = 0; attempt < 2; attempt++, want = n) {
        if (want < align) want = align;
        if (whole) {
            if (want > SIZE_MAX - (align - 1)) return NULL;
            want = (want + align - 1) & ~(align - 1);
        }
        /* Batch-sized buffers on 2 MiB-aligned transparent huge pages: the scattered row copies
         * into them miss the TLB far less (measured: 4-8% more rows/s warm). */
        void *p = want >= LARGE_BUF ? ans_malloc_large(want) : NULL;
        if (p || posix_memalign(&p, align, want) == 0) {
            *got = want;
            return p;
        }
    }
    return NULL;
}

/* Capacity >= n bytes; contents are NOT kept. */
static int lbuf_reserve(lbuf *b, size_t n)
{
    if (n <= b->cap && b->p) return ANS_OK;
    size_t got;
    void *p = grow_alloc(b->cap, n, BUF_ALIGN, 0, &got);
    if (!p) return ans_err(ANS_ENOMEM, "loader: cannot allocate %zu bytes", n);
    free(b->p);
    b->p = p;
    b->cap = got;
    return ANS_OK;
}

static void lbuf_free(lbuf *b)
{
    free(b->p);
    b->p = NULL;
    b->cap = 0;
}

/* n * size bytes, failing on overflow. */
static int lbuf_reserve_n(lbuf *b, uint64_t n, uint64_t size)
{
    uint64_t bytes;
    if (ans_mul_overflow(n, size, &bytes) || bytes > SIZE_MAX)
        return ans_err(ANS_ENOMEM, "loader: a buffer of %llu x %llu bytes is too large",
                       (unsigned long long)n, (unsigned long long)size);
    return lbuf_reserve(b, (size_t)bytes);
}

/* ---- objects -------------------------------------------------------------------------------- */

enum { SLOT_FREE = 0, SLOT_FILLING, SLOT_QUEUED, SLOT_HELD };

struct ans_batch {
    ans_loader *owner;
    ans_batch *next;     /* free list or ready queue */
    ans_batch *all_next; /* every slot of the loader */
    int state;
    lbuf data, indices, indptr, rows;
    ans_format format;
    int ndim;
    uint64_t shape[ANS_MAX_NDIM];
    ans_dtype dtype, index_dtype;
    uint64_t nnz;
    uint64_t epoch, index;
    int has_rows;
};

/* A pushed plan (custom-plan mode), recycled through a free list. */
typedef struct plan_node {
    ans_load_plan plan;
    struct plan_node *next;
} plan_node;

/* A piece of a plan range inside one store. */
typedef struct piece {
    size_t store;
    uint64_t local;    /* first local row */
    uint64_t count;
    uint64_t load_pos; /* position of its first row in the load */
    uint64_t global;   /* its first global row */
    uint64_t buf_row;  /* row of the load buffer holding its first row */
} piece;

struct ans_loader {
    /* ---- fixed after ans_loader_new ---- */
    pid_t pid;
    size_t nstores;
    ans_element **els;
    uint64_t *offsets; /* nstores + 1 cumulative row counts */
    ans_format format; /* of the element: DENSE or CSR */
    int ndim;
    uint64_t shape[ANS_MAX_NDIM]; /* shape[0] = total rows */
    ans_dtype in_dtype, out_dtype;
    size_t in_size, out_size;
    uint64_t row_vals;  /* values per row: prod(shape[1:]) */
    ans_dtype load_idx; /* index type of the load buffer: INT32 when n_vars fits */
    int densify, return_index;
    int custom;         /* plans come from ans_loader_push_plan */
    int direct;         /* CSR batches: rows decoded straight into the batch slots */
    uint64_t prefetch;
    uint64_t ahead_cap; /* prefetch * batches per load (sampler mode) */
    ans_pool *own_pool; /* threads > 0 */
    ans_ad_core *core;  /* keeps the first store's pool alive when threads == 0 */
    ans_pool *pool;     /* gathering pool: own_pool or core->pool */
    ans_sampler_params params;
    ans_host_pinning pin; /* pin.pin == NULL: batch memory is not pinned */
    size_t page;          /* with pinning: the page size */

    /* ---- changed only while the producer is joined ---- */
    ans_sampler *sampler;
    uint64_t start_batch;

    /* ---- the producer's own ---- */
    ans_load_plan plan;        /* sampler mode: the plan of the current load */
    ans_load_plan hplan;       /* sampler mode: the next load's plan, for the read-ahead hint */
    const ans_load_plan *cur;  /* the plan being executed (&plan or a pushed one) */
    lbuf pieces, sranges, scratch, pos2row, pos2glob, group;
    lbuf ldata, lidx, lptr;
    lbuf lens, ddst, idst, segs, sbase, dups; /* direct mode */
    lbuf hpieces, hranges, hscratch;          /* read-ahead hints */
    uint64_t *hstore_n, *hstore_pos;          /* read-ahead hints (nstores each) */
    size_t ndups;
    uint64_t *store_n;   /* ranges per store (nstores) */
    uint64_t *store_pos; /* fill cursor per store (nstores) */
    ans_ad_read_size *store_sz; /* sizes of each store's part of the load (nstores) */

    /* ---- shared, under mu ---- */
    pthread_mutex_t mu;
    pthread_cond_t cv_ready, cv_space;
    pthread_t thread;
    int thread_started;
    int stop, done, failed;
    ans_errinfo err;
    ans_batch *ready_head, *ready_tail;
    uint64_t ahead; /* queued + being gathered */
    ans_batch *free_list;
    ans_batch *all;
    /* custom-plan mode */
    plan_node *plans_head, *plans_tail, *plans_free;
    uint64_t pushed_batches; /* batches of the plans pushed since the epoch started */
    uint64_t pushed_loads;
    int plans_ended;
    size_t held;
    int freed;
    int sync_init;
};

/* ---- slots ---------------------------------------------------------------------------------- */

/* Free a slot buffer, unpinning it first (not in a forked child: the pinning belongs to the
 * parent). */
static void slot_buf_free(const ans_loader *l, lbuf *b)
{
    if (b->pinned && getpid() == l->pid) l->pin.unpin(l->pin.user, b->p);
    b->pinned = 0;
    lbuf_free(b);
}

/* A batch slot buffer of capacity >= n bytes (contents NOT kept). With pinning: page-aligned,
 * whole pages, pinned once here; the old buffer is unpinned and freed only once the new one is
 * pinned. Called from the gathering threads: pin must be thread-safe (annstream.h). */
static int slot_reserve(const ans_loader *l, lbuf *b, size_t n)
{
    if (!l->pin.pin) return lbuf_reserve(b, n);
    if (n <= b->cap && b->p) return ANS_OK;
    size_t want;
    void *p = grow_alloc(b->cap, n, l->page, 1, &want);
    if (!p) return ans_err(ANS_ENOMEM, "loader: cannot allocate %zu bytes", n);
    int code = l->pin.pin(l->pin.user, p, want);
    if (code != 0) {
        free(p);
        return ans_err(ANS_ENOMEM, "loader: pinning %zu bytes of batch memory failed (the pin "
                                   "callback returned %d)",
                       want, code);
    }
    slot_buf_free(l, b);
    b->p = p;
    b->cap = want;
    b->pinned = 1;
    return ANS_OK;
}

static int slot_reserve_n(const ans_loader *l, lbuf *b, uint64_t n, uint64_t size)
{
    uint64_t bytes;
    if (ans_mul_overflow(n, size, &bytes) || bytes > SIZE_MAX)
        return ans_err(ANS_ENOMEM, "loader: a buffer of %llu x %llu bytes is too large",
                       (unsigned long long)n, (unsigned long long)size);
    return slot_reserve(l, b, (size_t)bytes);
}

static void slot_free(const ans_loader *l, ans_batch *b)
{
    slot_buf_free(l, &b->data);
    slot_buf_free(l, &b->indices);
    slot_buf_free(l, &b->indptr);
    slot_buf_free(l, &b->rows);
    free(b);
}

/* Under mu. */
static ans_batch *slot_take(ans_loader *l)
{
    ans_batch *b = l->free_list;
    if (b) {
        l->free_list = b->next;
    } else {
        b = calloc(1, sizeof *b);
        if (!b) return NULL;
        b->owner = l;
        b->all_next = l->all;
        l->all = b;
    }
    b->next = NULL;
    b->state = SLOT_FILLING;
    return b;
}

/* Under mu. */
static void slot_put(ans_loader *l, ans_batch *b)
{
    b->state = SLOT_FREE;
    b->next = l->free_list;
    l->free_list = b;
}

/* Free what is left once the loader is freed and no batch is held. In a forked child the mutex
 * and condition variables may be in any state: they are left alone. */
static void loader_destroy(ans_loader *l)
{
    ans_batch *b = l->all;
    while (b) {
        ans_batch *nx = b->all_next;
        slot_free(l, b);
        b = nx;
    }
    if (l->pin.release) l->pin.release(l->pin.user);
    if (l->sync_init && getpid() == l->pid) {
        pthread_cond_destroy(&l->cv_ready);
        pthread_cond_destroy(&l->cv_space);
        pthread_mutex_destroy(&l->mu);
    }
    free(l);
}

/* ---- gathering ------------------------------------------------------------------------------ */

typedef struct gather_ctx {
    ans_loader *l;
    ans_batch **slots;
    size_t first; /* batch index in the load of slots[0] */
} gather_ctx;

/* Size a CSR batch slot for n rows and nnz values (int32 or int64 indices and indptr). */
static int reserve_csr(const ans_loader *l, ans_batch *b, uint64_t n, uint64_t nnz, int wide)
{
    size_t isz = wide ? 8 : 4;
    ANS_TRY(slot_reserve_n(l, &b->data, nnz ? nnz : 1, l->out_size));
    ANS_TRY(slot_reserve_n(l, &b->indices, nnz ? nnz : 1, isz));
    ANS_TRY(slot_reserve_n(l, &b->indptr, n + 1, isz));
    b->format = ANS_FORMAT_CSR;
    b->nnz = nnz;
    b->index_dtype = wide ? ANS_DTYPE_INT64 : ANS_DTYPE_INT32;
    return ANS_OK;
}

/* The fields every batch j of the current plan gets (n rows, `order` its load positions): epoch,
 * index, shape, dtype and, with return_index, the global row of each of its rows. */
static int batch_head(const ans_loader *l, ans_batch *b, size_t j, uint64_t n,
                      const uint64_t *order)
{
    b->epoch = l->params.epoch;
    b->index = l->cur->first_batch + j;
    b->ndim = l->ndim;
    b->shape[0] = n;
    for (int d = 1; d < l->ndim; d++) b->shape[d] = l->shape[d];
    b->dtype = l->out_dtype;
    b->has_rows = l->return_index;
    if (l->return_index) {
        ANS_TRY(slot_reserve_n(l, &b->rows, n ? n : 1, 8));
        const uint64_t *p2g = l->pos2glob.p;
        uint64_t *rows = b->rows.p;
        for (uint64_t q = 0; q < n; q++) rows[q] = p2g[order[q]];
    }
    return ANS_OK;
}

static int gather_fn(void *ctx, size_t i, int slot)
{
    (void)slot;
    gather_ctx *g = ctx;
    ans_loader *l = g->l;
    const ans_load_plan *plan = l->cur;
    ans_batch *b = g->slots[i];
    size_t j = g->first + i;
    uint64_t lo = plan->batch_bounds[j], hi = plan->batch_bounds[j + 1];
    uint64_t n = hi - lo;
    const uint64_t *order = plan->order + lo;
    const uint64_t *p2r = l->pos2row.p;
    const unsigned char *ldata = l->ldata.p;

    ANS_TRY(batch_head(l, b, j, n, order));
    b->nnz = 0;
    b->index_dtype = ANS_DTYPE_INVALID;

    if (l->format == ANS_FORMAT_DENSE) {
        b->format = ANS_FORMAT_DENSE;
        uint64_t in_row = l->row_vals * l->in_size, out_row = l->row_vals * l->out_size, bytes;
        if (ans_mul_overflow(n, out_row, &bytes))
            return ans_err(ANS_ENOMEM, "loader: batch too large");
        ANS_TRY(slot_reserve_n(l, &b->data, bytes ? bytes : 1, 1));
        unsigned char *dst = b->data.p;
        for (uint64_t q = 0; q < n; q++)
            ans_loader_cast(dst + q * out_row, l->out_dtype, ldata + p2r[order[q]] * in_row,
                            l->in_dtype, NULL, 0, (size_t)l->row_vals);
        return ANS_OK;
    }

    const uint64_t *lptr = l->lptr.p;
    const unsigned char *lidx = l->lidx.p;
    int lwide = l->load_idx == ANS_DTYPE_INT64;
    size_t lsz = lwide ? 8 : 4;
    uint64_t n_vars = l->shape[1];

    if (l->densify) {
        b->format = ANS_FORMAT_DENSE;
        uint64_t out_row = n_vars * l->out_size, bytes;
        if (ans_mul_overflow(n, out_row, &bytes))
            return ans_err(ANS_ENOMEM, "loader: batch too large");
        ANS_TRY(slot_reserve_n(l, &b->data, bytes ? bytes : 1, 1));
        unsigned char *dst = b->data.p;
        if (bytes) memset(dst, 0, (size_t)bytes);
        for (uint64_t q = 0; q < n; q++) {
            uint64_t r = p2r[order[q]], a = lptr[r], e = lptr[r + 1];
            ans_loader_cast(dst + q * out_row, l->out_dtype, ldata + a * l->in_size, l->in_dtype,
                            lidx + a * lsz, lwide, (size_t)(e - a));
        }
        return ANS_OK;
    }

    uint64_t nnz = 0;
    for (uint64_t q = 0; q < n; q++) {
        uint64_t r = p2r[order[q]];
        nnz += lptr[r + 1] - lptr[r];
    }
    int wide = lwide || nnz > INT32_MAX;
    size_t isz = wide ? 8 : 4;
    ANS_TRY(reserve_csr(l, b, n, nnz, wide));
    unsigned char *dd = b->data.p, *di = b->indices.p;
    uint64_t cum = 0;
    if (wide)
        ((int64_t *)b->indptr.p)[0] = 0;
    else
        ((int32_t *)b->indptr.p)[0] = 0;
    for (uint64_t q = 0; q < n; q++) {
        uint64_t r = p2r[order[q]], a = lptr[r], c = lptr[r + 1] - a;
        ans_loader_cast(dd + cum * l->out_size, l->out_dtype, ldata + a * l->in_size,
                        l->in_dtype, NULL, 0, (size_t)c);
        if (wide == lwide) {
            memcpy(di + cum * isz, lidx + a * lsz, (size_t)c * isz);
        } else { /* int32 in the load, int64 in the batch */
            const int32_t *s = (const int32_t *)(const void *)(lidx + a * lsz);
            int64_t *d = (int64_t *)(void *)(di + cum * isz);
            for (uint64_t t = 0; t < c; t++) d[t] = s[t];
        }
        cum += c;
        if (wide)
            ((int64_t *)b->indptr.p)[q + 1] = (int64_t)cum;
        else
            ((int32_t *)b->indptr.p)[q + 1] = (int32_t)cum;
    }
    return ANS_OK;
}

/* ---- the producer --------------------------------------------------------------------------- */

static size_t store_of(const ans_loader *l, uint64_t g)
{
    size_t a = 0, b = l->nstores; /* offsets[a] <= g < offsets[b] */
    while (b - a > 1) {
        size_t m = a + (b - a) / 2;
        if (l->offsets[m] <= g)
            a = m;
        else
            b = m;
    }
    return a;
}

/* Step 2 of loader.h: split `plan`'s ranges at store boundaries into pieces (plan order) and
 * group them by store into sranges (store after store, plan order within a store); store_n[s]
 * counts store s's ranges; first_range (nstores) is left past each store's last range. */
static int split_plan(const ans_loader *l, const ans_load_plan *plan, lbuf *pieces, lbuf *sranges,
                      uint64_t *store_n, uint64_t *first_range, size_t *np_out)
{
    size_t np = 0;
    for (size_t i = 0; i < plan->n_ranges; i++) {
        uint64_t g = plan->ranges[i].start, c = plan->ranges[i].count;
        while (c > 0) {
            size_t s = store_of(l, g);
            uint64_t take = l->offsets[s + 1] - g;
            if (take > c) take = c;
            np++;
            g += take;
            c -= take;
        }
    }
    ANS_TRY(lbuf_reserve_n(pieces, np ? np : 1, sizeof(piece)));
    ANS_TRY(lbuf_reserve_n(sranges, np ? np : 1, sizeof(ans_range)));
    piece *pc = pieces->p;
    ans_range *sr = sranges->p;
    memset(store_n, 0, l->nstores * sizeof *store_n);
    np = 0;
    uint64_t pos = 0;
    for (size_t i = 0; i < plan->n_ranges; i++) {
        uint64_t g = plan->ranges[i].start, c = plan->ranges[i].count;
        while (c > 0) {
            size_t s = store_of(l, g);
            uint64_t take = l->offsets[s + 1] - g;
            if (take > c) take = c;
            pc[np++] = (piece){s, g - l->offsets[s], take, pos, g, 0};
            store_n[s]++;
            pos += take;
            g += take;
            c -= take;
        }
    }
    /* group by store: store s's ranges at sranges[first_range[s]...] (range index) */
    uint64_t acc = 0;
    for (size_t s = 0; s < l->nstores; s++) {
        first_range[s] = acc;
        acc += store_n[s];
    }
    for (size_t i = 0; i < np; i++) sr[first_range[pc[i].store]++] = (ans_range){pc[i].local,
                                                                                 pc[i].count};
    *np_out = np;
    return ANS_OK;
}

/* split_plan of the current plan into the producer's buffers. */
static int plan_pieces(ans_loader *l, size_t *np_out)
{
    ANS_TRY(split_plan(l, l->cur, &l->pieces, &l->sranges, l->store_n, l->store_pos, np_out));
    return lbuf_reserve_n(&l->scratch, *np_out ? *np_out : 1, sizeof(ans_range));
}

/* Read-ahead hint: tell each store which bytes load k will need, so that their reads are queued
 * while the loads before it decode (cold page cache: all of a load's reads in flight at once
 * instead of one per thread). Only a hint: any failure is dropped, and the reads themselves
 * report real errors. */
static void advise_load(ans_loader *l, uint64_t k)
{
    if (k >= ans_sampler_n_loads(l->sampler)) return;
    ans_errinfo saved;
    ans_err_save(&saved);
    size_t np;
    if (ans_sampler_plan(l->sampler, k, &l->hplan) == ANS_OK &&
        split_plan(l, &l->hplan, &l->hpieces, &l->hranges, l->hstore_n, l->hstore_pos, &np) ==
            ANS_OK &&
        lbuf_reserve_n(&l->hscratch, np ? np : 1, sizeof(ans_range)) == ANS_OK) {
        const ans_range *sr = l->hranges.p;
        uint64_t r0 = 0;
        for (size_t s = 0; s < l->nstores; s++) {
            if (l->hstore_n[s] == 0) continue;
            (void)ans_ad_element_advise_rows(l->els[s], sr + r0, (size_t)l->hstore_n[s],
                                             l->hscratch.p);
            r0 += l->hstore_n[s];
        }
    }
    ans_err_restore(&saved);
}

/* Where each load position lives: pos2row (the row in the store-after-store order, from
 * cursor[s], the first row of store s, which is advanced) and, with return_index, pos2glob. */
static void map_positions(ans_loader *l, size_t np, uint64_t *cursor)
{
    const piece *pc = l->pieces.p;
    uint64_t *p2r = l->pos2row.p, *p2g = l->return_index ? l->pos2glob.p : NULL;
    for (size_t i = 0; i < np; i++) {
        uint64_t br = cursor[pc[i].store];
        cursor[pc[i].store] += pc[i].count;
        for (uint64_t q = 0; q < pc[i].count; q++) {
            p2r[pc[i].load_pos + q] = br + q;
            if (p2g) p2g[pc[i].load_pos + q] = pc[i].global + q;
        }
    }
}

/* Read the rows of the current plan into the load buffer (steps 2 and 3 of loader.h). */
static int read_load(ans_loader *l)
{
    const ans_load_plan *plan = l->cur;
    size_t np;
    ANS_TRY(plan_pieces(l, &np));
    ans_range *sr = l->sranges.p;
    /* sizes, and each store's segment of the load buffer */
    int lwide = l->load_idx == ANS_DTYPE_INT64;
    size_t lsz = lwide ? 8 : 4;
    uint64_t rows = 0, nnz = 0, data_bytes = 0, idx_need = 0;
    uint64_t rng0 = 0;
    for (size_t s = 0; s < l->nstores; s++) {
        if (l->store_n[s] == 0) continue;
        ans_ad_read_size *sz = &l->store_sz[s];
        ANS_TRY(ans_ad_element_size_ranges(l->els[s], sr + rng0, (size_t)l->store_n[s],
                                           l->load_idx, sz));
        rng0 += l->store_n[s];
        uint64_t end = nnz * lsz + sz->indices_bytes;
        if (end > idx_need) idx_need = end;
        rows += sz->rows;
        nnz += sz->nnz;
        data_bytes += sz->data_bytes;
    }
    if (rows != plan->n_rows)
        return ans_err(ANS_EGENERIC, "loader: load %llu has %llu rows, its plan %llu",
                       (unsigned long long)plan->load, (unsigned long long)rows,
                       (unsigned long long)plan->n_rows);
    ANS_TRY(lbuf_reserve_n(&l->ldata, data_bytes ? data_bytes : 1, 1));
    if (l->format == ANS_FORMAT_CSR) {
        ANS_TRY(lbuf_reserve_n(&l->lidx, idx_need ? idx_need : 1, 1));
        ANS_TRY(lbuf_reserve_n(&l->lptr, rows + 1, 8));
    }
    ANS_TRY(lbuf_reserve_n(&l->pos2row, rows ? rows : 1, 8));
    if (l->return_index) ANS_TRY(lbuf_reserve_n(&l->pos2glob, rows ? rows : 1, 8));

    /* one read per store */
    unsigned char *ldata = l->ldata.p;
    uint64_t *row_start = l->store_pos; /* reuse: first buffer row of each store */
    uint64_t row_acc = 0, nnz_acc = 0, byte_acc = 0;
    rng0 = 0;
    for (size_t s = 0; s < l->nstores; s++) {
        row_start[s] = row_acc;
        if (l->store_n[s] == 0) continue;
        size_t nr = (size_t)l->store_n[s];
        const ans_ad_read_size *sz = &l->store_sz[s];
        ANS_TRY(ans_ad_element_read_ranges_into(
            l->els[s], sr + rng0, nr, l->load_idx, nnz_acc, ldata + byte_acc,
            l->format == ANS_FORMAT_CSR ? (unsigned char *)l->lidx.p + nnz_acc * lsz : NULL,
            l->format == ANS_FORMAT_CSR ? (uint64_t *)l->lptr.p + row_acc : NULL, l->scratch.p));
        rng0 += nr;
        row_acc += sz->rows;
        nnz_acc += sz->nnz;
        byte_acc += sz->data_bytes;
    }
    map_positions(l, np, row_start);
    return ANS_OK;
}

/* Take up to n slots for batches about to be filled (mu held); they count as ahead. Returns how
 * many were had (fewer only when memory ran out). */
static size_t take_slots(ans_loader *l, ans_batch **slots, size_t n)
{
    size_t got = 0;
    while (got < n && (slots[got] = slot_take(l)) != NULL) got++;
    l->ahead += got;
    return got;
}

/* Hand over a group of n slots the producer filled (got of them taken): queued in batch order,
 * or - after an error (rc < 0) or a stop - returned to the free list. ANS_OK, STOPPED or rc. */
static int publish_slots(ans_loader *l, ans_batch **slots, size_t got, size_t n, int rc)
{
    ans_stream_fence(); /* the slots were filled with streaming stores */
    pthread_mutex_lock(&l->mu);
    if (rc < 0 || l->stop) {
        for (size_t q = 0; q < got; q++) slot_put(l, slots[q]);
        l->ahead -= got;
        pthread_cond_broadcast(&l->cv_space);
        pthread_mutex_unlock(&l->mu);
        return rc < 0 ? rc : STOPPED;
    }
    for (size_t q = 0; q < n; q++) {
        slots[q]->state = SLOT_QUEUED;
        if (l->ready_tail)
            l->ready_tail->next = slots[q];
        else
            l->ready_head = slots[q];
        l->ready_tail = slots[q];
    }
    pthread_cond_broadcast(&l->cv_ready);
    pthread_mutex_unlock(&l->mu);
    return ANS_OK;
}

static size_t cast_conv_fn(void *dst, const void *src, size_t n, const void *ctx)
{
    const ans_loader *l = ctx;
    return ans_loader_cast(dst, l->out_dtype, src, l->in_dtype, NULL, 0, n) == 0 ? n : 0;
}

/* A second destination of a load row (custom plans may emit a row more than once). */
typedef struct dup_row {
    uint64_t row;
    void *data, *indices;
} dup_row;

/* Lay out batch b (batch j of the plan) for its rows and point each of its rows' destinations into
 * it (step 3 of the direct mode in loader.h). */
static int layout_batch(ans_loader *l, ans_batch *b, size_t j, int wide)
{
    const ans_load_plan *plan = l->cur;
    uint64_t lo = plan->batch_bounds[j], hi = plan->batch_bounds[j + 1], n = hi - lo;
    const uint64_t *order = plan->order + lo;
    const uint64_t *p2r = l->pos2row.p, *lens = l->lens.p;
    void **ddst = l->ddst.p, **idst = l->idst.p;
    ANS_TRY(batch_head(l, b, j, n, order)); /* CSR: ndim 2 */
    uint64_t nnz = 0;
    for (uint64_t q = 0; q < n; q++) nnz += lens[p2r[order[q]]];
    size_t isz = wide ? 8 : 4;
    ANS_TRY(reserve_csr(l, b, n, nnz, wide));
    unsigned char *dd = b->data.p, *di = b->indices.p;
    uint64_t cum = 0;
    for (uint64_t q = 0; q < n; q++) {
        uint64_t r = p2r[order[q]];
        if (wide)
            ((int64_t *)b->indptr.p)[q] = (int64_t)cum;
        else
            ((int32_t *)b->indptr.p)[q] = (int32_t)cum;
        if (ddst[r]) { /* a row the plan emits twice: copied once decoded */
            ANS_TRY(lbuf_reserve_n(&l->dups, l->ndups + 1, sizeof(dup_row)));
            ((dup_row *)l->dups.p)[l->ndups++] = (dup_row){r, dd + cum * l->out_size,
                                                           di + cum * isz};
        } else {
            ddst[r] = dd + cum * l->out_size;
            idst[r] = di + cum * isz;
        }
        cum += lens[r];
    }
    if (wide)
        ((int64_t *)b->indptr.p)[n] = (int64_t)cum;
    else
        ((int32_t *)b->indptr.p)[n] = (int32_t)cum;
    return ANS_OK;
}

/* Direct mode (CSR batches, not densified): take the slots of every batch of the load from `skip`
 * on, lay them out from the row lengths, then decode every row straight into its batch slot. */
static int produce_direct(ans_loader *l, uint64_t skip)
{
    const ans_load_plan *plan = l->cur;
    size_t np;
    ANS_TRY(plan_pieces(l, &np));
    const ans_range *sr = l->sranges.p;
    uint64_t rows = plan->n_rows;
    ANS_TRY(lbuf_reserve_n(&l->lens, rows ? rows : 1, 8));
    ANS_TRY(lbuf_reserve_n(&l->pos2row, rows ? rows : 1, 8));
    ANS_TRY(lbuf_reserve_n(&l->ddst, rows ? rows : 1, sizeof(void *)));
    ANS_TRY(lbuf_reserve_n(&l->idst, rows ? rows : 1, sizeof(void *)));
    ANS_TRY(lbuf_reserve_n(&l->segs, rows ? 2 * rows : 1, sizeof(ans_seg)));
    ANS_TRY(lbuf_reserve_n(&l->sbase, l->nstores + 1, 8));
    if (l->return_index) ANS_TRY(lbuf_reserve_n(&l->pos2glob, rows ? rows : 1, 8));
    uint64_t *lens = l->lens.p, *base = l->sbase.p;
    /* row lengths, store after store (the order of sranges) */
    uint64_t acc = 0, rng0 = 0;
    for (size_t s = 0; s < l->nstores; s++) {
        base[s] = acc;
        if (l->store_n[s] == 0) continue;
        ANS_TRY(ans_ad_element_row_lengths(l->els[s], sr + rng0, (size_t)l->store_n[s],
                                           lens + acc));
        for (uint64_t i = 0; i < l->store_n[s]; i++) acc += sr[rng0 + i].count;
        rng0 += l->store_n[s];
    }
    base[l->nstores] = acc;
    if (acc != rows)
        return ans_err(ANS_EGENERIC, "loader: load %llu has %llu rows, its plan %llu",
                       (unsigned long long)plan->load, (unsigned long long)acc,
                       (unsigned long long)rows);
    /* where each load position lives in that order */
    uint64_t *cursor = l->store_pos;
    for (size_t s = 0; s < l->nstores; s++) cursor[s] = base[s];
    map_positions(l, np, cursor);
    uint64_t *p2r = l->pos2row.p;

    /* the slots: all of the load's remaining batches at once */
    size_t nb = plan->n_batches;
    if (skip >= nb) return ANS_OK;
    size_t need = nb - (size_t)skip;
    uint64_t cap = l->custom ? (l->prefetch + 1) * nb : l->ahead_cap;
    ANS_TRY(lbuf_reserve_n(&l->group, need, sizeof(ans_batch *)));
    ans_batch **slots = l->group.p;
    pthread_mutex_lock(&l->mu);
    while (!l->stop && l->ahead > 0 && l->ahead + need > cap)
        pthread_cond_wait(&l->cv_space, &l->mu);
    if (l->stop) {
        pthread_mutex_unlock(&l->mu);
        return STOPPED;
    }
    size_t got = take_slots(l, slots, need);
    pthread_mutex_unlock(&l->mu);

    int rc = got < need ? ans_err(ANS_ENOMEM, "loader: cannot allocate a batch") : ANS_OK;
    if (rc == ANS_OK) {
        /* rows of skipped batches keep a NULL destination: they are not decoded */
        memset(l->ddst.p, 0, (size_t)rows * sizeof(void *));
        l->ndups = 0;
        /* int64 indices for the whole load when n_vars or a batch's nnz needs them */
        int wide = l->load_idx == ANS_DTYPE_INT64;
        for (size_t j = (size_t)skip; j < nb && !wide; j++) {
            uint64_t nnz = 0;
            for (uint64_t q = plan->batch_bounds[j]; q < plan->batch_bounds[j + 1]; q++)
                nnz += lens[p2r[plan->order[q]]];
            if (nnz > INT32_MAX) wide = 1;
        }
        for (size_t j = (size_t)skip; j < nb && rc == ANS_OK; j++)
            rc = layout_batch(l, slots[j - (size_t)skip], j, wide);
        ans_conv conv = {cast_conv_fn, l, l->out_size};
        const ans_conv *cv = l->out_dtype == l->in_dtype ? NULL : &conv;
        rng0 = 0;
        for (size_t s = 0; s < l->nstores && rc == ANS_OK; s++) {
            if (l->store_n[s] == 0) continue;
            rc = ans_ad_element_scatter_csr(l->els[s], sr + rng0, (size_t)l->store_n[s],
                                            (void *const *)l->ddst.p + base[s],
                                            (void *const *)l->idst.p + base[s], cv,
                                            wide ? ANS_DTYPE_INT64 : ANS_DTYPE_INT32, l->segs.p);
            rng0 += l->store_n[s];
        }
        const dup_row *dup = l->dups.p;
        size_t isz = wide ? 8 : 4;
        for (size_t k = 0; k < l->ndups && rc == ANS_OK; k++) {
            const void **dsrc = (const void **)l->ddst.p, **isrc = (const void **)l->idst.p;
            size_t c = (size_t)lens[dup[k].row];
            if (c == 0) continue;
            memcpy(dup[k].data, dsrc[dup[k].row], c * l->out_size);
            memcpy(dup[k].indices, isrc[dup[k].row], c * isz);
        }
    }
    return publish_slots(l, slots, got, need, rc);
}

/* Execute l->cur from its batch `skip` on. ANS_OK, STOPPED or an error. */
static int produce_plan(ans_loader *l, uint64_t skip)
{
    if (l->direct) return produce_direct(l, skip);
    ANS_TRY(read_load(l));
    size_t nb = l->cur->n_batches;
    uint64_t cap = l->custom ? l->prefetch * (nb ? nb : 1) : l->ahead_cap;
    ANS_TRY(lbuf_reserve_n(&l->group, nb ? nb : 1, sizeof(ans_batch *)));
    ans_batch **slots = l->group.p;
    size_t i = (size_t)skip;
    while (i < nb) {
        pthread_mutex_lock(&l->mu);
        while (!l->stop && l->ahead >= cap) pthread_cond_wait(&l->cv_space, &l->mu);
        if (l->stop) {
            pthread_mutex_unlock(&l->mu);
            return STOPPED;
        }
        uint64_t room = cap - l->ahead;
        size_t g = nb - i < room ? nb - i : (size_t)room;
        size_t got = take_slots(l, slots, g);
        pthread_mutex_unlock(&l->mu);
        int rc = got < g ? ans_err(ANS_ENOMEM, "loader: cannot allocate a batch") : ANS_OK;
        if (rc == ANS_OK) {
            gather_ctx ctx = {l, slots, i};
            rc = ans_pool_for(l->pool, g, gather_fn, &ctx);
        }
        rc = publish_slots(l, slots, got, g, rc);
        if (rc != ANS_OK) return rc; /* an error, or STOPPED */
        i += g;
    }
    return ANS_OK;
}

static int produce_load(ans_loader *l, uint64_t k, uint64_t skip, int first)
{
    if (first) advise_load(l, k);
    advise_load(l, k + 1);
    ANS_TRY(ans_sampler_plan(l->sampler, k, &l->plan));
    l->cur = &l->plan;
    return produce_plan(l, skip);
}

/* Custom-plan mode: execute pushed plans until the end is marked or a stop. */
static int produce_pushed(ans_loader *l)
{
    for (;;) {
        pthread_mutex_lock(&l->mu);
        while (!l->stop && !l->plans_head && !l->plans_ended)
            pthread_cond_wait(&l->cv_space, &l->mu);
        plan_node *nd = l->stop ? NULL : l->plans_head;
        if (nd) {
            l->plans_head = nd->next;
            if (!l->plans_head) l->plans_tail = NULL;
        }
        pthread_mutex_unlock(&l->mu);
        if (!nd) return l->stop ? STOPPED : ANS_OK;
        l->cur = &nd->plan;
        int rc = produce_plan(l, 0);
        pthread_mutex_lock(&l->mu);
        nd->next = l->plans_free;
        l->plans_free = nd;
        pthread_mutex_unlock(&l->mu);
        if (rc != ANS_OK) return rc;
    }
}

static void *producer_main(void *arg)
{
    ans_loader *l = arg;
#if defined(__GLIBC__)
    pthread_setname_np(pthread_self(), "annstream-load");
#endif
    int rc = ANS_OK;
    uint64_t load = 0, skip = 0;
    if (l->custom) {
        rc = produce_pushed(l);
    } else if (l->start_batch < ans_sampler_n_batches(l->sampler)) {
        rc = ans_sampler_locate_batch(l->sampler, l->start_batch, &load, &skip);
        uint64_t n_loads = ans_sampler_n_loads(l->sampler);
        for (int first = 1; rc == ANS_OK && load < n_loads; load++, skip = 0, first = 0)
            rc = produce_load(l, load, skip, first);
    }
    pthread_mutex_lock(&l->mu);
    if (rc < 0 && !l->stop) {
        ans_err_save(&l->err);
        l->failed = 1;
    } else {
        l->done = 1;
    }
    pthread_cond_broadcast(&l->cv_ready);
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

/* Stop and join the producer; drop queued batches. Called by the consumer thread only. */
static void stop_producer(ans_loader *l)
{
    pthread_mutex_lock(&l->mu);
    l->stop = 1;
    pthread_cond_broadcast(&l->cv_space);
    pthread_cond_broadcast(&l->cv_ready);
    pthread_mutex_unlock(&l->mu);
    if (l->thread_started) pthread_join(l->thread, NULL);
    pthread_mutex_lock(&l->mu);
    l->thread_started = 0;
    l->stop = 0;
    l->done = 0;
    l->failed = 0;
    while (l->ready_head) {
        ans_batch *b = l->ready_head;
        l->ready_head = b->next;
        slot_put(l, b);
        l->ahead--;
    }
    l->ready_tail = NULL;
    pthread_mutex_unlock(&l->mu);
}

static int check_process(const ans_loader *l, const char *fn)
{
    if (getpid() != l->pid)
        return ans_err(ANS_EINVAL,
                       "%s: the loader was created in process %ld and cannot be used in its forked "
                       "child %ld; create the loader in the process that iterates it",
                       fn, (long)l->pid, (long)getpid());
    return ANS_OK;
}

/* ---- creation ------------------------------------------------------------------------------- */

static int column_equal(const ans_column *a, const ans_column *b, uint64_t *where)
{
    *where = 0;
    if (a->kind != b->kind || a->dtype != b->dtype || a->length != b->length) return 0;
    uint64_t n = a->length;
    if (a->str_offsets && b->str_offsets) {
        for (uint64_t i = 0; i < n; i++) {
            uint64_t la = a->str_offsets[i + 1] - a->str_offsets[i];
            uint64_t lb = b->str_offsets[i + 1] - b->str_offsets[i];
            if (la != lb || memcmp(a->str_data + a->str_offsets[i],
                                   b->str_data + b->str_offsets[i], (size_t)la) != 0) {
                *where = i;
                return 0;
            }
        }
        return 1;
    }
    if (a->values && b->values) {
        size_t sz = ans_dtype_size(a->dtype);
        for (uint64_t i = 0; i < n; i++)
            if (memcmp((const char *)a->values + i * sz, (const char *)b->values + i * sz, sz)) {
                *where = i;
                return 0;
            }
    }
    return 1;
}

static int check_var_names(ans_store *const *stores, size_t nstores)
{
    static const char *const no_columns[1] = {""};
    ans_frame *f0 = NULL, *fi = NULL;
    ans_column c0, ci;
    int rc = ans_store_read_frame(stores[0], "var", no_columns, 0, &f0);
    if (rc == ANS_OK) rc = ans_frame_index(f0, &c0);
    for (size_t i = 1; rc == ANS_OK && i < nstores; i++) {
        rc = ans_store_read_frame(stores[i], "var", no_columns, 0, &fi);
        if (rc == ANS_OK) rc = ans_frame_index(fi, &ci);
        uint64_t where;
        if (rc == ANS_OK && !column_equal(&c0, &ci, &where))
            rc = ans_err(ANS_EINVAL,
                         "loader: store %zu (%s): its var names differ from those of store 0 "
                         "(%s), first at position %llu; all stores need identical var names",
                         i, ans_store_path(stores[i]), ans_store_path(stores[0]),
                         (unsigned long long)where);
        ans_frame_free(fi);
        fi = NULL;
    }
    ans_frame_free(f0);
    return rc;
}

static int check_options(const ans_loader_options *o)
{
    if (o->version != ANS_LOADER_OPTIONS_VERSION)
        return ans_err(ANS_EINVAL, "loader: options version %u, expected %u or 1", o->version,
                       ANS_LOADER_OPTIONS_VERSION);
    if (o->pinning && (!o->pinning->pin || !o->pinning->unpin))
        return ans_err(ANS_EINVAL, "loader: pinning needs both pin and unpin");
    if (o->prefetch < 1 || o->prefetch > MAX_PREFETCH)
        return ans_err(ANS_EINVAL, "loader: prefetch %d is outside [1, %d]", o->prefetch,
                       MAX_PREFETCH);
    if (o->threads < 0 || o->threads > 4096)
        return ans_err(ANS_EINVAL, "loader: threads %d is outside [0, 4096]", o->threads);
    if (o->out_dtype != ANS_DTYPE_INVALID && !ans_loader_cast_to_ok(o->out_dtype))
        return ans_err(ANS_EINVAL, "loader: out_dtype %s is not supported (integers, float32, "
                                   "float64)",
                       ans_dtype_name(o->out_dtype));
    if (o->key && !*o->key) return ans_err(ANS_EINVAL, "loader: key is empty");

    return ANS_OK;
}

int ans_loader_new(ans_loader **out, ans_store *const *stores, size_t nstores,
                   const ans_loader_options *opts)
{
    if (!out) return ans_err(ANS_EINVAL, "ans_loader_new: out is NULL");
    *out = NULL;
    if (!stores || nstores == 0) return ans_err(ANS_EINVAL, "ans_loader_new: no stores");
    for (size_t i = 0; i < nstores; i++)
        if (!stores[i]) return ans_err(ANS_EINVAL, "ans_loader_new: store %zu is NULL", i);
    ans_loader_options defaults = ANS_LOADER_OPTIONS_INIT;
    if (opts && opts->version == 1) {
        /* version 1 ends before `pinning`: copy what it has, the rest keeps its default */
        memcpy(&defaults, opts, offsetof(ans_loader_options, pinning));
        defaults.version = ANS_LOADER_OPTIONS_VERSION;
        opts = NULL;
    }
    const ans_loader_options *o = opts ? opts : &defaults;
    ANS_TRY(check_options(o));
    const char *key = o->key ? o->key : "X";

    /* n_vars and the sampler: metadata only, no I/O */
    uint64_t n_obs = 0, n_vars = ans_store_n_vars(stores[0]);
    for (size_t i = 0; i < nstores; i++) {
        if (ans_store_n_vars(stores[i]) != n_vars)
            return ans_err(ANS_EINVAL,
                           "loader: store %zu (%s) has %llu vars but store 0 (%s) has %llu; all "
                           "stores need identical var names",
                           i, ans_store_path(stores[i]),
                           (unsigned long long)ans_store_n_vars(stores[i]),
                           ans_store_path(stores[0]), (unsigned long long)n_vars);
        if (ans_add_overflow(n_obs, ans_store_n_obs(stores[i]), &n_obs))
            return ans_err(ANS_EINVAL, "loader: too many rows");
    }
    ans_sampler_params sp = ANS_SAMPLER_PARAMS_INIT;
    ans_sampler_params custom_sp = ANS_SAMPLER_PARAMS_INIT; /* a placeholder sampler */
    custom_sp.n_rows = n_obs;
    custom_sp.chunk_size = custom_sp.preload_nchunks = custom_sp.batch_size = 1;
    custom_sp.epoch = o->epoch;
    sp.n_rows = n_obs;
    sp.mask_start = o->mask_start;
    sp.mask_stop = o->mask_stop;
    sp.chunk_size = o->chunk_size;
    sp.preload_nchunks = o->preload_nchunks;
    sp.batch_size = o->batch_size;
    sp.shuffle = o->shuffle;
    sp.drop_last = o->drop_last;
    sp.replacement = o->replacement;
    sp.num_samples = o->num_samples;
    sp.seed = o->seed;
    sp.epoch = o->epoch;
    sp.partition = o->partition;
    sp.n_partitions = o->n_partitions;
    ans_sampler *sampler = NULL;
    int rc = ans_sampler_new(&sampler, o->custom_plans ? &custom_sp : &sp);
    if (rc < 0) return ans_err_prefix("loader");

    ans_loader *l = calloc(1, sizeof *l);
    if (!l) {
        ans_sampler_free(sampler);
        return ans_err(ANS_ENOMEM, "loader: out of memory");
    }
    l->pid = getpid();
    l->sampler = sampler;
    l->params = *ans_sampler_get_params(sampler);
    l->nstores = nstores;
    l->densify = o->densify != 0;
    l->return_index = o->return_index != 0;
    l->custom = o->custom_plans != 0;
    l->prefetch = (uint64_t)o->prefetch;
    if (pthread_mutex_init(&l->mu, NULL) != 0) {
        free(l);
        ans_sampler_free(sampler);
        return ans_err(ANS_EGENERIC, "loader: cannot create a mutex");
    }
    if (pthread_cond_init(&l->cv_ready, NULL) != 0) {
        pthread_mutex_destroy(&l->mu);
        free(l);
        ans_sampler_free(sampler);
        return ans_err(ANS_EGENERIC, "loader: cannot create a condition variable");
    }
    if (pthread_cond_init(&l->cv_space, NULL) != 0) {
        pthread_cond_destroy(&l->cv_ready);
        pthread_mutex_destroy(&l->mu);
        free(l);
        ans_sampler_free(sampler);
        return ans_err(ANS_EGENERIC, "loader: cannot create a condition variable");
    }
    l->sync_init = 1;
    /* From here on ans_loader_free cleans up. */
    l->els = calloc(nstores, sizeof *l->els);
    l->offsets = calloc(nstores + 1, sizeof *l->offsets);
    l->store_n = calloc(nstores, sizeof *l->store_n);
    l->store_pos = calloc(nstores, sizeof *l->store_pos);
    l->store_sz = calloc(nstores, sizeof *l->store_sz);
    l->hstore_n = calloc(nstores, sizeof *l->hstore_n);
    l->hstore_pos = calloc(nstores, sizeof *l->hstore_pos);
    if (!l->els || !l->offsets || !l->store_n || !l->store_pos || !l->store_sz || !l->hstore_n ||
        !l->hstore_pos) {
        rc = ans_err(ANS_ENOMEM, "loader: out of memory");
        goto fail;
    }
    uint64_t bpl = ans_sampler_batches_per_load(sampler);
    l->ahead_cap = (uint64_t)o->prefetch * (bpl ? bpl : 1);

    /* elements */
    for (size_t i = 0; i < nstores; i++) {
        l->offsets[i + 1] = l->offsets[i] + ans_store_n_obs(stores[i]);
        rc = ans_store_element(&l->els[i], stores[i], key);
        if (rc < 0) goto fail;
        ans_element *e = l->els[i];
        if (ans_element_format(e) == ANS_FORMAT_CSC) {
            rc = ans_err(ANS_EUNSUPPORTED,
                         "loader: store %zu (%s): '%s' is a CSC matrix, which cannot be streamed "
                         "by rows; store it as CSR",
                         i, ans_store_path(stores[i]), key);
            goto fail;
        }
        if (i == 0) continue;
        ans_element *e0 = l->els[0];
        const uint64_t *s0 = ans_element_shape(e0), *si = ans_element_shape(e);
        int same = ans_element_ndim(e) == ans_element_ndim(e0) &&
                   ans_element_dtype(e) == ans_element_dtype(e0) &&
                   ans_element_format(e) == ans_element_format(e0);
        for (int d = 1; same && d < ans_element_ndim(e0); d++) same = s0[d] == si[d];
        if (!same) {
            rc = ans_err(ANS_EINVAL,
                         "loader: store %zu (%s): '%s' differs from store 0 (%s) in shape[1:], "
                         "dtype or format (%s %s vs %s %s)",
                         i, ans_store_path(stores[i]), key, ans_store_path(stores[0]),
                         ans_dtype_name(ans_element_dtype(e)),
                         ans_element_format(e) == ANS_FORMAT_CSR ? "csr" : "dense",
                         ans_dtype_name(ans_element_dtype(e0)),
                         ans_element_format(e0) == ANS_FORMAT_CSR ? "csr" : "dense");
            goto fail;
        }
    }
    ans_element *e0 = l->els[0];
    l->format = ans_element_format(e0);
    l->ndim = ans_element_ndim(e0);
    memcpy(l->shape, ans_element_shape(e0), (size_t)l->ndim * sizeof l->shape[0]);
    l->shape[0] = n_obs;
    l->in_dtype = ans_element_dtype(e0);
    l->in_size = ans_dtype_size(l->in_dtype);
    l->row_vals = 1;
    for (int d = 1; d < l->ndim; d++) l->row_vals *= l->shape[d]; /* fits: the array exists */
    if (l->format != ANS_FORMAT_CSR) l->densify = 0;
    l->out_dtype = o->out_dtype == ANS_DTYPE_INVALID ? l->in_dtype : o->out_dtype;
    l->out_size = ans_dtype_size(l->out_dtype);
    if (l->out_dtype != l->in_dtype && !ans_loader_cast_from_ok(l->in_dtype)) {
        rc = ans_err(ANS_EUNSUPPORTED, "loader: cannot convert '%s' values of type %s to %s", key,
                     ans_dtype_name(l->in_dtype), ans_dtype_name(l->out_dtype));
        goto fail;
    }
    if (l->format == ANS_FORMAT_CSR) {
        l->load_idx = l->shape[1] <= (uint64_t)INT32_MAX ? ANS_DTYPE_INT32 : ANS_DTYPE_INT64;
        /* No load buffer in direct mode: one more load of batch slots in its place. */
        l->direct = !l->densify;
        if (l->direct) l->ahead_cap += l->ahead_cap / (uint64_t)o->prefetch;
        if (l->densify) {
            l->ndim = 2;
        }
    }
    if ((rc = check_var_names(stores, nstores)) < 0) goto fail;

    /* gathering pool */
    if (o->threads > 0) {
        if ((rc = ans_pool_new(&l->own_pool, o->threads)) < 0) goto fail;
        l->pool = l->own_pool;
    } else {
        l->core = ans_ad_core_ref(stores[0]->core);
        l->pool = l->core->pool;
    }
    if (o->pinning) {
        /* set last: a failed ans_loader_new must not call release (the caller keeps `user`) */
        long page = sysconf(_SC_PAGESIZE);
        l->page = page > 0 && (page & (page - 1)) == 0 ? (size_t)page : 4096;
        l->pin = *o->pinning;
    }
    *out = l;
    return ANS_OK;
fail:
    ans_loader_free(l);
    return rc;
}

void ans_loader_free(ans_loader *l)
{
    if (!l) return;
    int same_process = getpid() == l->pid;
    if (same_process) stop_producer(l);
    for (size_t i = 0; l->els && i < l->nstores; i++) ans_element_free(l->els[i]);
    free(l->els);
    free(l->offsets);
    free(l->store_n);
    free(l->store_pos);
    free(l->store_sz);
    free(l->hstore_n);
    free(l->hstore_pos);
    ans_sampler_free(l->sampler);
    ans_load_plan_free(&l->plan);
    ans_load_plan_free(&l->hplan);
    plan_node *lists[2] = {l->plans_head, l->plans_free};
    for (int i = 0; i < 2; i++)
        while (lists[i]) {
            plan_node *nx = lists[i]->next;
            ans_load_plan_free(&lists[i]->plan);
            free(lists[i]);
            lists[i] = nx;
        }
    l->plans_head = l->plans_tail = l->plans_free = NULL;
    lbuf_free(&l->pieces);
    lbuf_free(&l->sranges);
    lbuf_free(&l->scratch);
    lbuf_free(&l->pos2row);
    lbuf_free(&l->pos2glob);
    lbuf_free(&l->group);
    lbuf_free(&l->ldata);
    lbuf_free(&l->lidx);
    lbuf_free(&l->lptr);
    lbuf_free(&l->lens);
    lbuf_free(&l->ddst);
    lbuf_free(&l->idst);
    lbuf_free(&l->segs);
    lbuf_free(&l->sbase);
    lbuf_free(&l->dups);
    lbuf_free(&l->hpieces);
    lbuf_free(&l->hranges);
    lbuf_free(&l->hscratch);
    ans_pool_free(l->own_pool);
    if (l->core) ans_ad_core_unref(l->core);
    if (!same_process) {
        /* A forked child: no producer thread, and the mutex may have been copied locked. The
         * memory of batches held at the fork is not reclaimed. */
        if (l->held == 0) loader_destroy(l);
        return;
    }
    pthread_mutex_lock(&l->mu);
    l->freed = 1;
    int last = l->held == 0;
    pthread_mutex_unlock(&l->mu);
    if (last) loader_destroy(l);
}

size_t ans_loader_n_slots(ans_loader *l)
{
    pthread_mutex_lock(&l->mu);
    size_t n = 0;
    for (const ans_batch *b = l->all; b; b = b->all_next) n++;
    pthread_mutex_unlock(&l->mu);
    return n;
}

/* ---- iteration ------------------------------------------------------------------------------ */

uint64_t ans_loader_n_batches(const ans_loader *l)
{
    return l->custom ? 0 : ans_sampler_n_batches(l->sampler);
}

uint64_t ans_loader_n_obs(const ans_loader *l)
{
    return l->shape[0];
}

uint64_t ans_loader_epoch(const ans_loader *l)
{
    return l->params.epoch;
}

int ans_loader_set_epoch(ans_loader *l, uint64_t epoch)
{
    if (!l) return ans_err(ANS_EINVAL, "ans_loader_set_epoch: loader is NULL");
    ANS_TRY(check_process(l, "ans_loader_set_epoch"));
    stop_producer(l);
    ans_sampler_params p = l->params;
    p.epoch = epoch;
    ans_sampler *s = NULL;
    ANS_TRY(ans_sampler_new(&s, &p));
    ans_sampler_free(l->sampler);
    l->sampler = s;
    l->params = *ans_sampler_get_params(s);
    l->start_batch = 0;
    if (l->custom) { /* pending plans belong to the old epoch */
        pthread_mutex_lock(&l->mu);
        while (l->plans_head) {
            plan_node *nd = l->plans_head;
            l->plans_head = nd->next;
            nd->next = l->plans_free;
            l->plans_free = nd;
        }
        l->plans_tail = NULL;
        l->pushed_batches = l->pushed_loads = 0;
        l->plans_ended = 0;
        pthread_mutex_unlock(&l->mu);
    }
    return ANS_OK;
}

int ans_loader_push_plan(ans_loader *l, const uint64_t *ranges, size_t n_ranges,
                         const uint64_t *order, size_t n_order, const uint64_t *batch_bounds,
                         size_t n_batches)
{
    if (!l) return ans_err(ANS_EINVAL, "ans_loader_push_plan: loader is NULL");
    if (!l->custom)
        return ans_err(ANS_EINVAL, "ans_loader_push_plan: the loader was not made with "
                                   "custom_plans");
    if (getpid() != l->pid) return check_process(l, "ans_loader_push_plan");
    if (n_batches == 0)
        return ans_err(ANS_EINVAL, "ans_loader_push_plan: a plan needs at least one batch");
    if (!ranges || !order || !batch_bounds)
        return ans_err(ANS_EINVAL, "ans_loader_push_plan: NULL array");
    pthread_mutex_lock(&l->mu);
    int ended = l->plans_ended;
    plan_node *nd = ended ? NULL : l->plans_free;
    if (nd) l->plans_free = nd->next;
    pthread_mutex_unlock(&l->mu);
    if (ended)
        return ans_err(ANS_EINVAL, "ans_loader_push_plan: the epoch's plans were ended; call "
                                   "ans_loader_set_epoch first");
    if (!nd && !(nd = calloc(1, sizeof *nd)))
        return ans_err(ANS_ENOMEM, "ans_loader_push_plan: out of memory");
    /* copy, then validate the copy */
    uint64_t rows = 0;
    int rc = ans_load_plan_reserve(&nd->plan, n_ranges, n_order, n_batches);
    if (rc == ANS_OK) {
        for (size_t i = 0; i < n_ranges; i++) {
            nd->plan.ranges[i] = (ans_row_range){ranges[2 * i], ranges[2 * i + 1]};
            if (ans_add_overflow(rows, ranges[2 * i + 1], &rows)) rows = UINT64_MAX;
        }
        nd->plan.n_ranges = n_ranges;
        nd->plan.n_rows = rows;
        if (n_order) memcpy(nd->plan.order, order, n_order * sizeof *order);
        nd->plan.n_order = n_order;
        memcpy(nd->plan.batch_bounds, batch_bounds, (n_batches + 1) * sizeof *batch_bounds);
        nd->plan.n_batches = n_batches;
        rc = ans_load_plan_validate(&nd->plan, l->shape[0]);
        if (rc < 0) ans_err_prefix("ans_loader_push_plan");
    }
    pthread_mutex_lock(&l->mu);
    if (rc == ANS_OK && l->plans_ended) /* ended by another thread meanwhile */
        rc = ans_err(ANS_EINVAL, "ans_loader_push_plan: the epoch's plans were ended; call "
                                 "ans_loader_set_epoch first");
    if (rc < 0) {
        nd->next = l->plans_free;
        l->plans_free = nd;
    } else {
        nd->plan.load = l->pushed_loads++;
        nd->plan.first_batch = l->pushed_batches;
        l->pushed_batches += n_batches;
        nd->next = NULL;
        if (l->plans_tail)
            l->plans_tail->next = nd;
        else
            l->plans_head = nd;
        l->plans_tail = nd;
        pthread_cond_broadcast(&l->cv_space);
    }
    pthread_mutex_unlock(&l->mu);
    return rc;
}

int ans_loader_end_plans(ans_loader *l)
{
    if (!l) return ans_err(ANS_EINVAL, "ans_loader_end_plans: loader is NULL");
    if (!l->custom)
        return ans_err(ANS_EINVAL, "ans_loader_end_plans: the loader was not made with "
                                   "custom_plans");
    pthread_mutex_lock(&l->mu);
    l->plans_ended = 1;
    pthread_cond_broadcast(&l->cv_space);
    pthread_mutex_unlock(&l->mu);
    return ANS_OK;
}

int ans_loader_seek(ans_loader *l, uint64_t batch)
{
    if (!l) return ans_err(ANS_EINVAL, "ans_loader_seek: loader is NULL");
    ANS_TRY(check_process(l, "ans_loader_seek"));
    if (l->custom)
        return ans_err(ANS_EINVAL, "ans_loader_seek: not available with custom plans (push the "
                                   "remaining plans instead)");
    uint64_t n = ans_sampler_n_batches(l->sampler);
    if (batch > n)
        return ans_err(ANS_EINVAL, "ans_loader_seek: batch %llu is beyond the %llu of an epoch",
                       (unsigned long long)batch, (unsigned long long)n);
    stop_producer(l);
    l->start_batch = batch;
    return ANS_OK;
}

int ans_loader_next(ans_loader *l, ans_batch **out)
{
    return ans_loader_next_wait(l, out, -1);
}

int ans_loader_next_wait(ans_loader *l, ans_batch **out, int timeout_ms)
{
    if (!out) return ans_err(ANS_EINVAL, "ans_loader_next: out is NULL");
    *out = NULL;
    if (!l) return ans_err(ANS_EINVAL, "ans_loader_next: loader is NULL");
    ANS_TRY(check_process(l, "ans_loader_next"));
    pthread_mutex_lock(&l->mu);
    if (!l->thread_started && !l->done && !l->failed) {
        /* The producer blocks all signals so that asynchronous ones reach the application's
         * threads (Python's KeyboardInterrupt). */
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        int e = pthread_create(&l->thread, NULL, producer_main, l);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (e != 0) {
            pthread_mutex_unlock(&l->mu);
            return ans_err(ANS_EGENERIC, "loader: cannot start the producer thread (%s)",
                           strerror(e));
        }
        l->thread_started = 1;
    }
    if (timeout_ms < 0) {
        while (!l->ready_head && !l->done && !l->failed) pthread_cond_wait(&l->cv_ready, &l->mu);
    } else {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += timeout_ms / 1000;
        until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        while (!l->ready_head && !l->done && !l->failed)
            if (pthread_cond_timedwait(&l->cv_ready, &l->mu, &until) == ETIMEDOUT) break;
        if (!l->ready_head && !l->done && !l->failed) {
            pthread_mutex_unlock(&l->mu);
            return ANS_ETIMEDOUT;
        }
    }
    ans_batch *b = l->ready_head;
    if (b) {
        l->ready_head = b->next;
        if (!l->ready_head) l->ready_tail = NULL;
        b->next = NULL;
        b->state = SLOT_HELD;
        l->ahead--;
        l->held++;
        pthread_cond_signal(&l->cv_space);
        pthread_mutex_unlock(&l->mu);
        *out = b;
        return ANS_OK;
    }
    if (l->failed) {
        ans_errinfo copy = l->err;
        pthread_mutex_unlock(&l->mu);
        return ans_err_restore(&copy);
    }
    pthread_mutex_unlock(&l->mu);
    return ANS_ITEROVER;
}

void ans_batch_release(ans_batch *b)
{
    if (!b) return;
    ans_loader *l = b->owner;
    pthread_mutex_lock(&l->mu);
    if (b->state != SLOT_HELD) { /* a double release: ignore rather than corrupt the lists */
        pthread_mutex_unlock(&l->mu);
        return;
    }
    slot_put(l, b);
    l->held--;
    int last = l->freed && l->held == 0;
    pthread_mutex_unlock(&l->mu);
    if (last) loader_destroy(l);
}

/* ---- batch accessors ------------------------------------------------------------------------ */

ans_format ans_batch_format(const ans_batch *b)
{
    return b->format;
}

uint64_t ans_batch_n_rows(const ans_batch *b)
{
    return b->shape[0];
}

int ans_batch_ndim(const ans_batch *b)
{
    return b->ndim;
}

const uint64_t *ans_batch_shape(const ans_batch *b)
{
    return b->shape;
}

ans_dtype ans_batch_dtype(const ans_batch *b)
{
    return b->dtype;
}

void *ans_batch_data(const ans_batch *b)
{
    return b->data.p;
}

uint64_t ans_batch_nnz(const ans_batch *b)
{
    return b->format == ANS_FORMAT_CSR ? b->nnz : 0;
}

ans_dtype ans_batch_index_dtype(const ans_batch *b)
{
    return b->format == ANS_FORMAT_CSR ? b->index_dtype : ANS_DTYPE_INVALID;
}

void *ans_batch_indices(const ans_batch *b)
{
    return b->format == ANS_FORMAT_CSR ? b->indices.p : NULL;
}

void *ans_batch_indptr(const ans_batch *b)
{
    return b->format == ANS_FORMAT_CSR ? b->indptr.p : NULL;
}

const uint64_t *ans_batch_rows(const ans_batch *b)
{
    return b->has_rows ? b->rows.p : NULL;
}

uint64_t ans_batch_epoch(const ans_batch *b)
{
    return b->epoch;
}

uint64_t ans_batch_index(const ans_batch *b)
{
    return b->index;
}
