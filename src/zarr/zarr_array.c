/* zarr_array.c - the zarr ans_array: parallel range reads, strings, describe, shard index cache.
 *
 * A read call turns its ranges (along axis 0) into copy pieces {unit row, rows in unit, output row},
 * groups them by unit row, and makes one job per needed unit (unit row x unit column for arrays
 * chunked along other axes too): each unit is fetched and decoded once per call however many ranges
 * need it. For sharded arrays the shard indexes needed are first taken from the array's cache or
 * fetched (one ranged read per shard, in parallel), then the units of a shard whose bytes are
 * adjacent are coalesced into one ranged read ("runs"). Runs execute on the container's pool, each
 * slot with its own workspace. A unit whose rows are all wanted, spanning whole rows, is decoded
 * straight into the output; missing chunks, shards and inner chunks are written as fill. */
#include "zarr/zarr.h"

#include "common/error.h"
#include "common/stream.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RUN_MAX_BYTES ((uint64_t)32 << 20) /* largest coalesced shard read */

struct ans_zidx {
    uint64_t id;     /* linear shard index */
    uint64_t total;  /* shard size in bytes */
    ans_buf buf;     /* 2 n native uint64: (offset, nbytes) per inner chunk */
    int refs;        /* holders (the cache counts as one); under za->mu */
    uint64_t stamp;  /* last use, for eviction */
};

static const uint64_t *idx_ent(const ans_zidx *e)
{
    return (const uint64_t *)(const void *)e->buf.data;
}

static void idx_free(ans_zidx *e)
{
    if (!e) return;
    ans_buf_free(&e->buf);
    free(e);
}

static const char *za_store(const ans_zarray *za)
{
    return za->base.container->path;
}

/* ---- shard index cache ------------------------------------------------------------------------ */

static void cache_drop_locked(ans_zarray *za, int i)
{
    ans_zidx *e = za->cache[i];
    za->cache_bytes -= e->buf.cap;
    za->cache[i] = za->cache[--za->ncache];
    if (--e->refs == 0) idx_free(e);
}

/* Look up shard `id`; a hit gains a reference. */
static ans_zidx *cache_get_locked(ans_zarray *za, uint64_t id)
{
    for (int i = 0; i < za->ncache; i++)
        if (za->cache[i]->id == id) {
            za->cache[i]->refs++;
            za->cache[i]->stamp = ++za->tick;
            return za->cache[i];
        }
    return NULL;
}

/* Insert a freshly read index (refs = 1, the caller's). If another thread inserted the same shard
 * meanwhile, `e` is freed and the cached one returned (with a reference for the caller). */
static ans_zidx *cache_put_locked(ans_zarray *za, ans_zidx *e)
{
    ans_zidx *old = cache_get_locked(za, e->id);
    if (old) {
        idx_free(e);
        return old;
    }
    while (za->ncache > 0 &&
           (za->ncache == ANS_ZIDX_CACHE_N || za->cache_bytes + e->buf.cap > ANS_ZIDX_CACHE_BYTES)) {
        int lru = 0;
        for (int i = 1; i < za->ncache; i++)
            if (za->cache[i]->stamp < za->cache[lru]->stamp) lru = i;
        cache_drop_locked(za, lru);
    }
    if (e->buf.cap <= ANS_ZIDX_CACHE_BYTES) {
        e->refs++;
        e->stamp = ++za->tick;
        za->cache[za->ncache++] = e;
        za->cache_bytes += e->buf.cap;
    }
    return e;
}

static void idx_release(ans_zarray *za, ans_zidx *e)
{
    if (!e) return;
    pthread_mutex_lock(&za->mu);
    int last = --e->refs == 0;
    pthread_mutex_unlock(&za->mu);
    if (last) idx_free(e);
}

/* ---- blosc head cache -------------------------------------------------------------------------
 *
 * A shuffled loader reads most inner chunks in part, and a blosc frame's blocks can be read apart
 * once its head (header and block-start table) is known. Heads are kept per unit row in a
 * direct-mapped table, valid while the shard index still gives the unit the same (offset, size).
 * Like the shard indexes, they assume that a shard is not rewritten in place while it is open. */

struct ans_zhead {
    uint64_t key;    /* unit row + 1; 0: empty */
    uint64_t off, nb; /* the unit's bytes in its shard when the head was read */
    uint32_t len;
    uint8_t b[ANS_ZHEAD_MAX];
};

/* Copy unit row u0's head into out (ANS_ZHEAD_MAX bytes) when it is cached for the unit at
 * (off, nb); returns its length, 0 when not. */
static size_t head_get(ans_zarray *za, uint64_t u0, uint64_t off, uint64_t nb, uint8_t *out)
{
    size_t n = 0;
    pthread_mutex_lock(&za->mu);
    if (za->heads) {
        const struct ans_zhead *h = &za->heads[u0 % za->nheads];
        if (h->key == u0 + 1 && h->off == off && h->nb == nb) {
            n = h->len;
            memcpy(out, h->b, n);
        }
    }
    pthread_mutex_unlock(&za->mu);
    return n;
}

/* Keep the head of unit row u0, whose stored bytes (all of its head at least) are src[0, len). */
static void head_put(ans_zarray *za, uint64_t u0, uint64_t off, uint64_t nb, const uint8_t *src,
                     size_t len)
{
    if (!za->nheads) return;
    pthread_mutex_lock(&za->mu);
    const struct ans_zhead *cur = za->heads ? &za->heads[u0 % za->nheads] : NULL;
    int have = cur && cur->key == u0 + 1 && cur->off == off && cur->nb == nb;
    pthread_mutex_unlock(&za->mu);
    size_t hl;
    if (have || ans_zchain_head_len(za->uchain, src, len, &hl) != ANS_OK || hl > ANS_ZHEAD_MAX)
        return;
    pthread_mutex_lock(&za->mu);
    if (!za->heads) {
        /* calloc'd pages only count once written: the memory grows with the units read */
        za->heads = ans_calloc(za->nheads, sizeof *za->heads);
        if (!za->heads) za->nheads = 0; /* no cache: units are read whole */
    }
    if (za->heads) {
        struct ans_zhead *h = &za->heads[u0 % za->nheads];
        h->key = u0 + 1;
        h->off = off;
        h->nb = nb;
        h->len = (uint32_t)hl;
        memcpy(h->b, src, hl);
    }
    pthread_mutex_unlock(&za->mu);
}

/* Shard grid coordinates of linear shard id. */
static void shard_coords(const ans_zarray *za, uint64_t id, uint64_t *sc)
{
    for (int d = za->nd - 1; d >= 0; d--) {
        uint64_t g = za->shp[d] / za->chunk[d] + (za->shp[d] % za->chunk[d] != 0);
        if (g == 0) g = 1;
        sc[d] = id % g;
        id /= g;
    }
}

/* Read and validate the index of shard `id`: *out = NULL when the shard does not exist. */
static int idx_fetch(ans_zarray *za, uint64_t id, ans_zidx **out)
{
    *out = NULL;
    const ans_zshard *sh = za->shard;
    uint64_t sc[ANS_MAX_NDIM];
    char key[ANS_ZKEY_MAX];
    shard_coords(za, id, sc);
    ANS_TRY(ans_zkey(za, sc, key, sizeof key));
    ans_zidx *e = ans_calloc(1, sizeof *e);
    if (!e) return ANS_ENOMEM;
    e->id = id;
    e->refs = 1;
    int rc = ans_kv_get_part(ans_zstore_kv(za->zs), key, !sh->index_at_start, sh->index_bytes,
                             &e->buf, &e->total);
    if (rc == ANS_ENOTFOUND) {
        idx_free(e);
        return ANS_OK;
    }
    if (rc == ANS_OK)
        rc = ans_zshard_parse_index(sh, e->buf.data, e->total, (uint64_t *)(void *)e->buf.data);
    if (rc < 0) {
        idx_free(e);
        return ans_err_prefix("%s: %s: shard '%s'", za_store(za), za->base.path, key + strlen(za->prefix));
    }
    *out = e;
    return ANS_OK;
}

/* Get shard `id`'s index (cached or fetched); *out NULL if the shard is missing. */
static int idx_get(ans_zarray *za, uint64_t id, ans_zidx **out)
{
    pthread_mutex_lock(&za->mu);
    *out = cache_get_locked(za, id);
    pthread_mutex_unlock(&za->mu);
    if (*out) return ANS_OK;
    ans_zidx *e;
    ANS_TRY(idx_fetch(za, id, &e));
    if (!e) return ANS_OK;
    pthread_mutex_lock(&za->mu);
    *out = cache_put_locked(za, e);
    pthread_mutex_unlock(&za->mu);
    return ANS_OK;
}

/* ---- fill and copy helpers -------------------------------------------------------------------- */

static void fill_elems(const ans_zarray *za, uint8_t *dst, uint64_t n)
{
    size_t es = za->elsize;
    uint64_t bytes = n * es;
    if (!bytes) return;
    if (za->fill_zero) {
        memset(dst, 0, (size_t)bytes);
        return;
    }
    memcpy(dst, za->fill, es);
    uint64_t done = es;
    while (done < bytes) {
        uint64_t k = done < bytes - done ? done : bytes - done;
        memcpy(dst + done, dst, (size_t)k);
        done += k;
    }
}

/* Geometry of copying a unit's intersection with whole output rows (N-D general case). */
typedef struct zblock {
    int nd;
    uint64_t ext[ANS_MAX_NDIM];     /* extent along each axis >= 1 within the array */
    uint64_t sstride[ANS_MAX_NDIM]; /* unit strides (elements) */
    uint64_t dstride[ANS_MAX_NDIM]; /* output row strides (elements) */
    uint64_t dorigin;               /* element offset of the unit's origin within an output row */
    int kdim;                       /* loops over axes 1..kdim-1; contiguous run from axis kdim */
    uint64_t run;                   /* elements per contiguous run */
    uint64_t unit_row;              /* elements per unit row */
} zblock;

static void block_init(const ans_zarray *za, const uint64_t *coord, zblock *b)
{
    int nd = za->nd;
    b->nd = nd;
    uint64_t s = 1, t = 1;
    for (int d = nd - 1; d >= 1; d--) {
        b->sstride[d] = s;
        b->dstride[d] = t;
        s *= za->unit[d];
        t *= za->shp[d];
    }
    b->unit_row = s;
    b->dorigin = 0;
    for (int d = 1; d < nd; d++) {
        uint64_t o = coord[d] * za->unit[d];
        uint64_t left = za->shp[d] - o;
        b->ext[d] = left < za->unit[d] ? left : za->unit[d];
        b->dorigin += o * b->dstride[d];
    }
    /* Trailing axes covered whole by both unit and output make one run with the first that isn't. */
    int k = nd - 1;
    uint64_t run = 1;
    while (k >= 1) {
        run *= b->ext[k];
        if (!(b->ext[k] == za->unit[k] && za->unit[k] == za->shp[k])) break;
        k--;
    }
    if (k < 1) k = 1;
    b->kdim = k;
    b->run = run;
}

/* Copy (src != NULL) or fill rows [r0, r0 + n) of a unit to output rows starting at dst_row. */
static void block_copy(const ans_zarray *za, const zblock *b, const uint8_t *src, uint64_t r0,
                       uint64_t n, uint8_t *out, uint64_t dst_row)
{
    size_t es = za->elsize;
    uint64_t row_elems = za->base.row_bytes / (es ? es : 1);
    for (uint64_t r = 0; r < n; r++) {
        const uint8_t *srow = src ? src + (r0 + r) * b->unit_row * es : NULL;
        uint8_t *drow = out + ((dst_row + r) * row_elems + b->dorigin) * es;
        uint64_t idx[ANS_MAX_NDIM] = {0};
        for (;;) {
            uint64_t so = 0, dof = 0;
            for (int d = 1; d < b->kdim; d++) {
                so += idx[d] * b->sstride[d];
                dof += idx[d] * b->dstride[d];
            }
            if (srow) memcpy(drow + dof * es, srow + so * es, (size_t)(b->run * es));
            else fill_elems(za, drow + dof * es, b->run);
            int d = b->kdim - 1;
            for (; d >= 1; d--) {
                if (++idx[d] < b->ext[d]) break;
                idx[d] = 0;
            }
            if (d < 1) break;
        }
    }
}

/* ---- the read call ---------------------------------------------------------------------------- */

typedef struct zpiece {
    uint64_t u0;  /* unit row */
    uint64_t r0;  /* first row within the unit */
    uint64_t n;   /* rows */
    uint64_t dst; /* first output row (za_read; block_copy) */
    uint8_t *dptr; /* where its first row goes (whole-row units) */
    size_t seg;    /* the segment it belongs to (read_segs) */
} zpiece;

typedef struct zurow {
    uint64_t u0;
    size_t p0, p1; /* pieces [p0, p1) */
} zurow;

typedef struct zjob {
    size_t urow;    /* index into urows */
    uint64_t col;   /* unit column (linear over axes >= 1) */
    uint64_t off;   /* sharded: byte range in the shard */
    uint64_t nb;
    size_t shard;   /* sharded: index into the call's shard table */
    uint64_t inner; /* sharded: inner chunk index in the shard */
    int missing;
} zjob;

typedef struct zrun {
    size_t j0, n; /* order[j0 .. j0 + n) */
} zrun;

typedef struct zread {
    ans_zarray *za;
    uint8_t *out;
    const ans_conv *conv; /* read_segs: NULL copies */
    pthread_mutex_t *bad_mu;
    size_t bad; /* first segment with a rejected value */
    int fullrows; /* units span whole output rows (1-D, or unit == shape along axes >= 1) */
    const zpiece *pieces;
    const zurow *urows;
    zjob *jobs;
    const size_t *order;
    const zrun *runs;
    uint64_t *shard_ids;
    ans_zidx **shards;
    size_t nshards;
    ans_zws **ws;
    int nws;
    int advise; /* only tell the store which bytes will be read (ans_kv_advise) */
    int trim;   /* read units in part where their cached blosc heads allow (see head_get) */
} zread;

static int rd_ws(zread *rd, int slot, ans_zws **out)
{
    if (slot < 0 || slot >= rd->nws) return ans_err(ANS_EGENERIC, "internal: bad pool slot %d", slot);
    if (!rd->ws[slot]) ANS_TRY(ans_zstore_ws_take(rd->za->zs, &rd->ws[slot]));
    *out = rd->ws[slot];
    return ANS_OK;
}

static void unit_coords(const ans_zarray *za, uint64_t u0, uint64_t col, uint64_t *c)
{
    c[0] = u0;
    for (int d = za->nd - 1; d >= 1; d--) {
        c[d] = col % za->ugrid[d];
        col /= za->ugrid[d];
    }
}

/* Name of a unit for messages: "c/3" or "c/0 (inner chunk 5)". */
static void unit_name(const ans_zarray *za, const uint64_t *c, char *buf, size_t cap)
{
    uint64_t sc[ANS_MAX_NDIM];
    char key[ANS_ZKEY_MAX];
    for (int d = 0; d < za->nd; d++) sc[d] = za->shard ? c[d] / za->shard->cps[d] : c[d];
    if (ans_zkey(za, sc, key, sizeof key) < 0) {
        snprintf(buf, cap, "?");
        return;
    }
    const char *k = key + strlen(za->prefix);
    if (!za->shard) {
        snprintf(buf, cap, "%s", k);
        return;
    }
    uint64_t lin = 0;
    for (int d = 0; d < za->nd; d++) lin = lin * za->shard->cps[d] + c[d] % za->shard->cps[d];
    snprintf(buf, cap, "%s' inner chunk '%llu", k, (unsigned long long)lin);
}

static int unit_error(const ans_zarray *za, const uint64_t *c)
{
    char name[ANS_ZKEY_MAX + 64];
    unit_name(za, c, name, sizeof name);
    return ans_err_prefix("%s: %s: chunk '%s'", za_store(za), za->base.path, name);
}

static const uint8_t k_empty[1] = {0}; /* the bytes of a stored unit of 0 bytes */

/* Unit bytes [*lo, *hi) that the pieces of a job need (units spanning whole rows). */
static void job_need(const zread *rd, const zjob *job, uint64_t *lo, uint64_t *hi)
{
    const zurow *ur = &rd->urows[job->urow];
    uint64_t r0 = UINT64_MAX, r1 = 0;
    for (size_t p = ur->p0; p < ur->p1; p++) {
        const zpiece *pc = &rd->pieces[p];
        if (pc->r0 < r0) r0 = pc->r0;
        if (pc->r0 + pc->n > r1) r1 = pc->r0 + pc->n;
    }
    *lo = r0 * rd->za->base.row_bytes;
    *hi = r1 * rd->za->base.row_bytes;
}

static void rd_mark_bad(zread *rd, size_t seg)
{
    pthread_mutex_lock(rd->bad_mu);
    if (seg < rd->bad) rd->bad = seg;
    pthread_mutex_unlock(rd->bad_mu);
}

/* Where ans_zchain_scatter delivers a unit's decoded rows: piece k of the unit's pieces. */
typedef struct zsink {
    zread *rd;
    const zpiece *pieces;
    size_t elsize;
} zsink;

static int sink_piece(void *ctx, size_t k, size_t at, const uint8_t *bytes, size_t len)
{
    zsink *sk = ctx;
    const zpiece *pc = &sk->pieces[k];
    const ans_conv *conv = sk->rd->conv;
    if (!conv) {
        ans_stream_copy(pc->dptr + at, bytes, len);
        return ANS_OK;
    }
    size_t nv = len / sk->elsize;
    if (conv->fn(pc->dptr + at / sk->elsize * conv->dst_size, bytes, nv, conv->ctx) != nv)
        rd_mark_bad(sk->rd, pc->seg);
    return ANS_OK;
}

/* Decode a unit of whole rows straight into its pieces, each block once and unshuffled in cached
 * 32 KiB pieces (ans_zchain_scatter), instead of into ws->chunk and copying from there.
 * ANS_EUNSUPPORTED when its codecs do not allow it. */
static int scatter_unit(zread *rd, ans_zws *ws, const zurow *ur, const uint8_t *src, size_t len,
                        uint64_t w0, uint64_t w1)
{
    ans_zarray *za = rd->za;
    uint64_t rb = za->base.row_bytes;
    size_t np = ur->p1 - ur->p0;
    if (!ans_zchain_can_scatter(za->uchain) || za->unit[0] * rb > SIZE_MAX ||
        np > SIZE_MAX / sizeof(ans_bseg))
        return ANS_EUNSUPPORTED;
    ANS_TRY(ans_buf_reserve(&ws->segs, np * sizeof(ans_bseg)));
    ans_bseg *segs = (ans_bseg *)(void *)ws->segs.data;
    for (size_t k = 0; k < np; k++) {
        const zpiece *pc = &rd->pieces[ur->p0 + k];
        segs[k].off = (size_t)(pc->r0 * rb);
        segs[k].len = (size_t)(pc->n * rb);
    }
    zsink sk = {rd, &rd->pieces[ur->p0], za->elsize};
    return ans_zchain_scatter(za->uchain, ws, src, len, w0, w1, segs, np, za->elsize, sink_piece,
                              &sk);
}

/* Decode one unit (src NULL: missing -> fill) and scatter it to its pieces. Of its len stored
 * bytes, only the head and [w0, w1) were read when that is not [0, len) (see run_trim). */
static int rd_unit(zread *rd, ans_zws *ws, const zjob *job, const uint8_t *src, size_t len,
                   uint64_t w0, uint64_t w1)
{
    ans_zarray *za = rd->za;
    const zurow *ur = &rd->urows[job->urow];
    uint64_t c[ANS_MAX_NDIM];
    unit_coords(za, ur->u0, job->col, c);
    uint64_t rb = za->base.row_bytes;
    if (rd->fullrows) {
        uint64_t row_elems = rb / za->elsize;
        const ans_conv *conv = rd->conv;
        if (!src && !conv) {
            for (size_t p = ur->p0; p < ur->p1; p++)
                fill_elems(za, rd->pieces[p].dptr, rd->pieces[p].n * row_elems);
            return ANS_OK;
        }
        if (src) {
            int rc = scatter_unit(rd, ws, ur, src, len, w0, w1);
            if (rc == ANS_OK) return ANS_OK;
            if (rc != ANS_EUNSUPPORTED) return unit_error(za, c);
        }
        size_t direct = SIZE_MAX;
        int part = w0 > 0 || w1 < len; /* then some pieces need only part of the unit */
        for (size_t p = ur->p0; p < ur->p1 && !conv && !part; p++)
            if (rd->pieces[p].r0 == 0 && rd->pieces[p].n == za->unit[0]) {
                direct = p;
                break;
            }
        const uint8_t *res;
        uint64_t lo = 0; /* unit byte at res */
        if (!src) { /* missing unit, converted: the fill values, converted like stored ones */
            ANS_TRY(ans_buf_reserve(&ws->chunk, (size_t)(za->unit[0] * rb)));
            fill_elems(za, ws->chunk.data, za->unit[0] * row_elems);
            res = ws->chunk.data;
        } else if (direct != SIZE_MAX) {
            uint8_t *dst = rd->pieces[direct].dptr;
            if (ans_zchain_decode(za->uchain, ws, src, len, dst, &res) < 0)
                return unit_error(za, c);
        } else {
            /* No piece takes the whole unit: decode only the part the pieces need (blosc
             * decodes just the blocks holding it). */
            uint64_t hi;
            job_need(rd, job, &lo, &hi);
            if (ans_zchain_decode_range_in(za->uchain, ws, src, len, lo, hi, w0, w1, &res) < 0)
                return unit_error(za, c);
        }
        for (size_t p = ur->p0; p < ur->p1; p++) {
            const zpiece *pc = &rd->pieces[p];
            if (p == direct) continue;
            const uint8_t *from = res + (pc->r0 * rb - lo);
            if (!conv) {
                ans_stream_copy(pc->dptr, from, (size_t)(pc->n * rb));
                continue;
            }
            size_t nv = (size_t)(pc->n * row_elems);
            if (conv->fn(pc->dptr, from, nv, conv->ctx) != nv) rd_mark_bad(rd, pc->seg);
        }
        return ANS_OK;
    }
    zblock b;
    block_init(za, c, &b);
    const uint8_t *res = NULL;
    if (src && ans_zchain_decode(za->uchain, ws, src, len, NULL, &res) < 0)
        return unit_error(za, c);
    for (size_t p = ur->p0; p < ur->p1; p++) {
        const zpiece *pc = &rd->pieces[p];
        block_copy(za, &b, res, pc->r0, pc->n, rd->out, pc->dst);
    }
    return ANS_OK;
}

/* How a sharded run is read: from byte c0 of its first unit (whose head, hlen bytes, comes from
 * the cache then) to byte c1 of its last; [0, first unit's size) to [0, last unit's size) reads it
 * whole. Only the first and the last unit can be cut: the ones between are read anyway. */
typedef struct ztrim {
    uint64_t c0, c1;
    size_t hlen;
    uint8_t head[ANS_ZHEAD_MAX];
} ztrim;

static void run_trim(const zread *rd, const zrun *run, ztrim *t)
{
    ans_zarray *za = rd->za;
    const zjob *first = &rd->jobs[rd->order[run->j0]];
    const zjob *last = &rd->jobs[rd->order[run->j0 + run->n - 1]];
    t->c0 = 0;
    t->c1 = last->nb;
    t->hlen = 0;
    if (!rd->trim || first->missing) return;
    uint64_t lo, hi, a, e;
    size_t hl = head_get(za, rd->urows[first->urow].u0, first->off, first->nb, t->head);
    if (hl) {
        job_need(rd, first, &lo, &hi);
        if (ans_zchain_span(za->uchain, t->head, hl, (size_t)first->nb, lo, hi, &a, &e) ==
            ANS_OK) {
            t->c0 = a;
            t->hlen = hl;
            if (run->n == 1) t->c1 = e;
        }
    }
    if (run->n > 1) {
        uint8_t head[ANS_ZHEAD_MAX];
        hl = head_get(za, rd->urows[last->urow].u0, last->off, last->nb, head);
        if (hl) {
            job_need(rd, last, &lo, &hi);
            if (ans_zchain_span(za->uchain, head, hl, (size_t)last->nb, lo, hi, &a, &e) == ANS_OK)
                t->c1 = e;
        }
    }
}

static int rd_run(void *ctx, size_t i, int slot)
{
    zread *rd = ctx;
    ans_zarray *za = rd->za;
    const zrun *run = &rd->runs[i];
    ans_zws *ws = NULL;
    ANS_TRY(rd_ws(rd, slot, &ws));
    const zjob *first = &rd->jobs[rd->order[run->j0]];
    if (za->shard) {
        if (first->missing) return rd_unit(rd, ws, first, NULL, 0, 0, 0);
        const zjob *last = &rd->jobs[rd->order[run->j0 + run->n - 1]];
        uint64_t span = last->off + last->nb - first->off;
        if (span > SIZE_MAX) return ans_err(ANS_ENOMEM, "shard read too large");
        ANS_TRY(ans_buf_resize(&ws->raw, (size_t)span));
        ztrim t;
        run_trim(rd, run, &t);
        uint64_t rs = t.c0, re = last->off - first->off + t.c1; /* bytes read, from first->off */
        uint64_t sc[ANS_MAX_NDIM];
        char key[ANS_ZKEY_MAX];
        shard_coords(za, rd->shard_ids[first->shard], sc);
        ANS_TRY(ans_zkey(za, sc, key, sizeof key));
        int rc = ans_kv_get_range(ans_zstore_kv(za->zs), key, first->off + rs, re - rs,
                                  ws->raw.data ? ws->raw.data + rs : NULL);
        if (rc < 0) {
            if (rc == ANS_ENOTFOUND) rc = ans_err(ANS_ECORRUPT, "shard vanished while reading");
            return ans_err_prefix("%s: %s: shard '%s'", za_store(za), za->base.path,
                                  key + strlen(za->prefix));
        }
        if (t.hlen) memcpy(ws->raw.data, t.head, t.hlen); /* c0 >= hlen: after the head */
        for (size_t k = 0; k < run->n; k++) {
            const zjob *job = &rd->jobs[rd->order[run->j0 + k]];
            /* never NULL for a stored unit (NULL means missing), even when it is 0 bytes */
            const uint8_t *at = ws->raw.data ? ws->raw.data + (job->off - first->off) : k_empty;
            uint64_t w0 = k == 0 ? t.c0 : 0, w1 = k == run->n - 1 ? t.c1 : job->nb;
            ANS_TRY(rd_unit(rd, ws, job, at, (size_t)job->nb, w0, w1));
            if (rd->trim && w0 == 0 && w1 == job->nb) /* read whole: keep its head */
                head_put(za, rd->urows[job->urow].u0, job->off, job->nb, at, (size_t)job->nb);
        }
        return ANS_OK;
    }
    uint64_t c[ANS_MAX_NDIM];
    char key[ANS_ZKEY_MAX];
    unit_coords(za, rd->urows[first->urow].u0, first->col, c);
    ANS_TRY(ans_zkey(za, c, key, sizeof key));
    int rc = ans_kv_get(ans_zstore_kv(za->zs), key, &ws->raw, 0);
    if (rc == ANS_ENOTFOUND) return rd_unit(rd, ws, first, NULL, 0, 0, 0);
    if (rc < 0) return ans_err_prefix("%s: %s: chunk '%s'", za_store(za), za->base.path,
                                      key + strlen(za->prefix));
    /* an empty chunk file is present, not missing: never pass NULL for it (a fresh workspace's
     * buffer is NULL) */
    size_t len = ws->raw.len;
    return rd_unit(rd, ws, first, ws->raw.data ? ws->raw.data : k_empty, len, 0, len);
}

static int rd_fetch_shard(void *ctx, size_t i, int slot)
{
    zread *rd = ctx;
    (void)slot;
    if (rd->shards[i]) return ANS_OK; /* cached */
    return idx_fetch(rd->za, rd->shard_ids[i], &rd->shards[i]);
}

static int run_pool(ans_zarray *za, size_t n, ans_job_fn fn, void *ctx)
{
    ans_pool *pool = ans_zstore_pool(za->zs);
    if (pool && n > 1) return ans_pool_for(pool, n, fn, ctx);
    for (size_t i = 0; i < n; i++) ANS_TRY(fn(ctx, i, 0));
    return ANS_OK;
}

static int cmp_piece(const void *a, const void *b)
{
    const zpiece *x = a, *y = b;
    return x->u0 < y->u0 ? -1 : x->u0 > y->u0 ? 1 : (x->dst > y->dst) - (x->dst < y->dst);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

typedef struct zsortkey {
    size_t shard;
    uint64_t off;
    size_t job;
} zsortkey;

static int cmp_sortkey(const void *a, const void *b)
{
    const zsortkey *x = a, *y = b;
    if (x->shard != y->shard) return x->shard < y->shard ? -1 : 1;
    if (x->off != y->off) return x->off < y->off ? -1 : 1;
    return (x->job > y->job) - (x->job < y->job);
}

/* Shard table of the call: ids of the shards the jobs touch, their indexes, each job's byte range. */
static int rd_shards(zread *rd, size_t njobs)
{
    ans_zarray *za = rd->za;
    const ans_zshard *sh = za->shard;
    uint64_t sgrid[ANS_MAX_NDIM];
    for (int d = 0; d < za->nd; d++) {
        sgrid[d] = za->shp[d] / za->chunk[d] + (za->shp[d] % za->chunk[d] != 0);
        if (!sgrid[d]) sgrid[d] = 1;
    }
    uint64_t *ids = ans_malloc(njobs * sizeof *ids);
    if (!ids) return ANS_ENOMEM;
    uint64_t prev = UINT64_MAX;
    size_t nid = 0;
    for (size_t j = 0; j < njobs; j++) {
        uint64_t c[ANS_MAX_NDIM];
        unit_coords(za, rd->urows[rd->jobs[j].urow].u0, rd->jobs[j].col, c);
        uint64_t id = 0, inner = 0;
        for (int d = 0; d < za->nd; d++) {
            id = id * sgrid[d] + c[d] / sh->cps[d];
            inner = inner * sh->cps[d] + c[d] % sh->cps[d];
        }
        rd->jobs[j].inner = inner;
        rd->jobs[j].off = id; /* temporarily: the shard id */
        if (id != prev) ids[nid++] = prev = id;
    }
    qsort(ids, nid, sizeof *ids, cmp_u64);
    size_t u = 0;
    for (size_t k = 0; k < nid; k++)
        if (u == 0 || ids[u - 1] != ids[k]) ids[u++] = ids[k];
    rd->shard_ids = ids;
    rd->nshards = u;
    rd->shards = ans_calloc(u, sizeof *rd->shards);
    if (!rd->shards) return ANS_ENOMEM;
    for (size_t j = 0; j < njobs; j++) {
        uint64_t id = rd->jobs[j].off;
        size_t lo = 0, hi = u;
        while (lo < hi) {
            size_t mid = lo + (hi - lo) / 2;
            if (ids[mid] < id) lo = mid + 1;
            else hi = mid;
        }
        rd->jobs[j].shard = lo;
    }
    /* Cached indexes first, then fetch the others in parallel. */
    size_t nmiss = 0;
    pthread_mutex_lock(&za->mu);
    for (size_t k = 0; k < u; k++)
        if (!(rd->shards[k] = cache_get_locked(za, ids[k]))) nmiss++;
    pthread_mutex_unlock(&za->mu);
    if (nmiss) {
        unsigned char *fresh = ans_calloc(u, 1);
        if (!fresh) return ANS_ENOMEM;
        for (size_t k = 0; k < u; k++) fresh[k] = rd->shards[k] == NULL;
        int rc = run_pool(za, u, rd_fetch_shard, rd);
        pthread_mutex_lock(&za->mu);
        for (size_t k = 0; k < u; k++)
            if (fresh[k] && rd->shards[k]) rd->shards[k] = cache_put_locked(za, rd->shards[k]);
        pthread_mutex_unlock(&za->mu);
        free(fresh);
        ANS_TRY(rc);
    }
    for (size_t j = 0; j < njobs; j++) {
        zjob *job = &rd->jobs[j];
        const ans_zidx *e = rd->shards[job->shard];
        if (!e) {
            job->missing = 1;
            continue;
        }
        const uint64_t *ent = idx_ent(e);
        job->off = ent[2 * job->inner];
        job->nb = ent[2 * job->inner + 1];
        job->missing = job->off == UINT64_MAX && job->nb == UINT64_MAX;
    }
    return ANS_OK;
}

static int za_run(zread *rdp, zpiece *pieces, size_t np, int sorted);

/* Split rows [start, start + count) into pieces, one per unit row they touch; the first row goes
 * to output row dst_row (za_read) and address dptr, the next ones dsize bytes apart. */
static void split_pieces(uint64_t U0, uint64_t start, uint64_t count, size_t seg, uint64_t dst_row,
                         uint8_t *dptr, size_t dsize, zpiece *pieces, size_t *np, int *sorted)
{
    uint64_t e = start + count;
    for (uint64_t r = start; r < e;) {
        uint64_t u0 = r / U0, ue = (u0 + 1) * U0;
        uint64_t stop = ue < e ? ue : e;
        zpiece *p = &pieces[(*np)++];
        p->u0 = u0;
        p->r0 = r - u0 * U0;
        p->n = stop - r;
        p->dst = dst_row + (r - start);
        p->dptr = dptr + (r - start) * dsize;
        p->seg = seg;
        if (*np > 1 && pieces[*np - 2].u0 > u0) *sorted = 0;
        r = stop;
    }
}

/* Advise mode of za_run: hand each run's byte range (sharded) or chunk file to ans_kv_advise. */
static void rd_advise(const zread *rd, size_t nruns)
{
    ans_zarray *za = rd->za;
    ans_kv *kv = ans_zstore_kv(za->zs);
    for (size_t i = 0; i < nruns; i++) {
        const zrun *run = &rd->runs[i];
        const zjob *first = &rd->jobs[rd->order[run->j0]];
        if (first->missing) continue;
        uint64_t c[ANS_MAX_NDIM];
        char key[ANS_ZKEY_MAX];
        if (za->shard) {
            const zjob *last = &rd->jobs[rd->order[run->j0 + run->n - 1]];
            ztrim t;
            run_trim(rd, run, &t);
            shard_coords(za, rd->shard_ids[first->shard], c);
            if (ans_zkey(za, c, key, sizeof key) == ANS_OK)
                ans_kv_advise(kv, key, first->off + t.c0, last->off + t.c1 - first->off - t.c0);
        } else {
            unit_coords(za, rd->urows[first->urow].u0, first->col, c);
            if (ans_zkey(za, c, key, sizeof key) == ANS_OK) ans_kv_advise(kv, key, 0, 0);
        }
    }
}

static int za_read_or_advise(ans_array *a, const ans_range *ranges, size_t nranges, void *out,
                             int advise);

static int za_read(ans_array *a, const ans_range *ranges, size_t nranges, void *out)
{
    return za_read_or_advise(a, ranges, nranges, out, 0);
}

static int za_advise(ans_array *a, const ans_range *ranges, size_t nranges)
{
    return za_read_or_advise(a, ranges, nranges, NULL, 1);
}

/* za_read, or (advise) only the ans_kv_advise calls for the bytes it would read. */
static int za_read_or_advise(ans_array *a, const ans_range *ranges, size_t nranges, void *out,
                             int advise)
{
    ans_zarray *za = (ans_zarray *)a;
    if (a->dtype == ANS_DTYPE_STRING)
        return ans_err(ANS_EINVAL, "%s: array '%s' holds strings: use read_strings", za_store(za),
                       a->path);
    uint64_t total;
    ANS_TRY(ans_array_check_ranges(a, ranges, nranges, &total));
    if (total == 0 || a->row_bytes == 0) return ANS_OK;
    for (int d = 1; d < za->nd; d++)
        if (za->shp[d] == 0) return ANS_OK;

    const uint64_t U0 = za->unit[0];
    zread rd;
    memset(&rd, 0, sizeof rd);
    rd.za = za;
    rd.out = out;
    rd.advise = advise;
    rd.fullrows = 1;
    for (int d = 1; d < za->nd; d++)
        if (za->unit[d] != za->shp[d]) rd.fullrows = 0;
    zpiece *pieces = NULL;
    int rc;

    /* Pieces. */
    size_t npieces = 0;
    for (size_t i = 0; i < nranges; i++) {
        if (!ranges[i].count) continue;
        uint64_t first = ranges[i].start / U0, last = (ranges[i].start + ranges[i].count - 1) / U0;
        uint64_t k = last - first + 1;
        if (k > SIZE_MAX / sizeof(zpiece) - npieces) return ans_err(ANS_ENOMEM, "too many pieces");
        npieces += (size_t)k;
    }
    pieces = ans_malloc(npieces * sizeof *pieces);
    if (!pieces) return ANS_ENOMEM;
    size_t np = 0;
    uint64_t dst = 0;
    int sorted = 1;
    for (size_t i = 0; i < nranges; i++) {
        split_pieces(U0, ranges[i].start, ranges[i].count, i, dst,
                     (uint8_t *)out + dst * a->row_bytes, (size_t)a->row_bytes, pieces, &np,
                     &sorted);
        dst += ranges[i].count;
    }
    rc = za_run(&rd, pieces, np, sorted);
    free(pieces);
    return rc;
}

/* Execute the pieces of a read (sorted by unit row unless !sorted): group them by unit, find the
 * units (shard indexes first), decode each unit once, on the pool. */
static int za_run(zread *rdp, zpiece *pieces, size_t np, int sorted)
{
    zread rd = *rdp;
    ans_zarray *za = rd.za;
    ans_array *a = &za->base;
    zurow *urows = NULL;
    size_t *order = NULL;
    zrun *runs = NULL;
    int rc = ANS_OK;
    pthread_mutex_t bad_mu = PTHREAD_MUTEX_INITIALIZER;
    rd.bad_mu = &bad_mu;
    rd.bad = SIZE_MAX;
    if (!sorted) qsort(pieces, np, sizeof *pieces, cmp_piece);

    /* Unit rows. */
    size_t nurows = 0;
    for (size_t p = 0; p < np; p++)
        if (p == 0 || pieces[p].u0 != pieces[p - 1].u0) nurows++;
    urows = ans_malloc(nurows * sizeof *urows);
    if (!urows) {
        rc = ANS_ENOMEM;
        goto done;
    }
    nurows = 0;
    for (size_t p = 0; p < np; p++) {
        if (p == 0 || pieces[p].u0 != pieces[p - 1].u0) {
            urows[nurows].u0 = pieces[p].u0;
            urows[nurows].p0 = p;
            nurows++;
        }
        urows[nurows - 1].p1 = p + 1;
    }

    /* Jobs: unit rows x unit columns. */
    uint64_t ncols = 1;
    for (int d = 1; d < za->nd; d++) ncols *= za->ugrid[d]; /* <= product of shape: no overflow */
    uint64_t njobs64;
    if (ans_mul_overflow(nurows, ncols, &njobs64) || njobs64 > SIZE_MAX / sizeof(zjob)) {
        rc = ans_err(ANS_ENOMEM, "%s: %s: too many chunks in one read", za_store(za), a->path);
        goto done;
    }
    size_t njobs = (size_t)njobs64;
    rd.jobs = ans_calloc(njobs, sizeof *rd.jobs);
    order = ans_malloc(njobs * sizeof *order);
    runs = ans_malloc(njobs * sizeof *runs);
    if (!rd.jobs || !order || !runs) {
        rc = ANS_ENOMEM;
        goto done;
    }
    for (size_t j = 0; j < njobs; j++) {
        rd.jobs[j].urow = j / (size_t)ncols;
        rd.jobs[j].col = j % ncols;
    }
    rd.pieces = pieces;
    rd.urows = urows;
    ans_pool *pool = ans_zstore_pool(za->zs);
    rd.nws = pool ? ans_pool_size(pool) : 1;
    rd.ws = ans_calloc((size_t)rd.nws, sizeof *rd.ws);
    if (!rd.ws) {
        rc = ANS_ENOMEM;
        goto done;
    }

    size_t nruns = 0;
    if (za->shard) {
        if ((rc = rd_shards(&rd, njobs)) < 0) goto done;
        /* Order: missing jobs alone, present ones by (shard, offset), adjacent ones coalesced. */
        zsortkey *keys = ans_malloc(njobs * sizeof *keys);
        if (!keys) {
            rc = ANS_ENOMEM;
            goto done;
        }
        for (size_t j = 0; j < njobs; j++) {
            keys[j].shard = rd.jobs[j].missing ? SIZE_MAX : rd.jobs[j].shard;
            keys[j].off = rd.jobs[j].missing ? 0 : rd.jobs[j].off;
            keys[j].job = j;
        }
        qsort(keys, njobs, sizeof *keys, cmp_sortkey);
        size_t npresent = 0;
        for (size_t j = 0; j < njobs; j++) {
            order[j] = keys[j].job;
            if (!rd.jobs[keys[j].job].missing) npresent++;
        }
        free(keys);
        size_t per_run = npresent / ((size_t)rd.nws * 4);
        if (per_run < 1) per_run = 1;
        for (size_t j = 0; j < njobs; j++) {
            const zjob *job = &rd.jobs[order[j]];
            if (nruns > 0 && !job->missing) {
                zrun *r = &runs[nruns - 1];
                const zjob *f = &rd.jobs[order[r->j0]];
                const zjob *l = &rd.jobs[order[r->j0 + r->n - 1]];
                if (!f->missing && l->shard == job->shard && l->off + l->nb == job->off &&
                    job->off + job->nb - f->off <= RUN_MAX_BYTES && r->n < per_run) {
                    r->n++;
                    continue;
                }
            }
            runs[nruns].j0 = j;
            runs[nruns].n = 1;
            nruns++;
        }
    } else {
        for (size_t j = 0; j < njobs; j++) {
            order[j] = j;
            runs[j].j0 = j;
            runs[j].n = 1;
        }
        nruns = njobs;
    }
    rd.order = order;
    rd.runs = runs;
    rd.trim = za->shard && rd.fullrows && za->nheads > 0;
    if (rd.advise)
        rd_advise(&rd, nruns);
    else
        rc = run_pool(za, nruns, rd_run, &rd);

done:
    if (rd.ws) {
        for (int s = 0; s < rd.nws; s++)
            if (rd.ws[s]) ans_zstore_ws_give(za->zs, rd.ws[s]);
        free(rd.ws);
    }
    if (rd.shards) {
        for (size_t k = 0; k < rd.nshards; k++) idx_release(za, rd.shards[k]);
        free(rd.shards);
    }
    free(rd.shard_ids);
    free(rd.jobs);
    free(order);
    free(runs);
    free(urows);
    rdp->bad = rd.bad;
    return rc;
}

static int za_read_segs(ans_array *a, const ans_seg *segs, size_t nsegs, const ans_conv *conv,
                        size_t *bad)
{
    ans_zarray *za = (ans_zarray *)a;
    *bad = SIZE_MAX;
    for (int d = 1; d < za->nd; d++)
        if (za->unit[d] != za->shp[d] || za->shp[d] == 0) {
            /* Units that split rows: the generic path (read, then copy). */
            return ans_array_read_segs_copy(a, segs, nsegs, conv, bad);
        }
    const uint64_t U0 = za->unit[0];
    size_t npieces = 0;
    uint64_t lim = za->shp[0];
    for (size_t i = 0; i < nsegs; i++) {
        uint64_t end;
        if (ans_add_overflow(segs[i].start, segs[i].count, &end) || end > lim)
            return ans_err(ANS_EINVAL, "%s: array '%s': rows [%llu, %llu + %llu) outside its %llu rows",
                           za_store(za), a->path, (unsigned long long)segs[i].start,
                           (unsigned long long)segs[i].start, (unsigned long long)segs[i].count,
                           (unsigned long long)lim);
        if (!segs[i].count) continue;
        uint64_t k = (end - 1) / U0 - segs[i].start / U0 + 1;
        if (k > SIZE_MAX / sizeof(zpiece) - npieces) return ans_err(ANS_ENOMEM, "too many pieces");
        npieces += (size_t)k;
    }
    if (npieces == 0 || a->row_bytes == 0) return ANS_OK;
    size_t dsize = conv ? conv->dst_size * (size_t)(a->row_bytes / za->elsize) : (size_t)a->row_bytes;
    zpiece *pieces = ans_malloc(npieces * sizeof *pieces);
    if (!pieces) return ANS_ENOMEM;
    size_t np = 0;
    int sorted = 1;
    for (size_t i = 0; i < nsegs; i++)
        split_pieces(U0, segs[i].start, segs[i].count, i, 0, segs[i].dst, dsize, pieces, &np,
                     &sorted);
    zread rd;
    memset(&rd, 0, sizeof rd);
    rd.za = za;
    rd.fullrows = 1;
    rd.conv = conv;
    int rc = za_run(&rd, pieces, np, sorted);
    free(pieces);
    if (rc == ANS_OK) *bad = rd.bad;
    return rc;
}

/* ---- strings ---------------------------------------------------------------------------------- */

static uint32_t rd32le(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static int utf8_valid(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t k;
        uint32_t cp;
        if ((c & 0xE0) == 0xC0) k = 1, cp = c & 0x1F;
        else if ((c & 0xF0) == 0xE0) k = 2, cp = c & 0x0F;
        else if ((c & 0xF8) == 0xF0) k = 3, cp = c & 0x07;
        else return 0;
        if (n - i <= k) return 0;
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (s[i + j] & 0x3F);
        }
        if ((k == 1 && cp < 0x80) || (k == 2 && cp < 0x800) || (k == 3 && cp < 0x10000) ||
            cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += k + 1;
    }
    return 1;
}

static size_t utf8_put(uint8_t *p, uint32_t cp)
{
    if (cp < 0x80) {
        p[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        p[0] = (uint8_t)(0xC0 | (cp >> 6));
        p[1] = (uint8_t)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        p[0] = (uint8_t)(0xE0 | (cp >> 12));
        p[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        p[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    p[0] = (uint8_t)(0xF0 | (cp >> 18));
    p[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
    p[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
    p[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}

/* Append fixed-width item `it` (elsize bytes, already native order) as UTF-8. */
static int append_fixed(const ans_zarray *za, const uint8_t *it, ans_buf *data)
{
    size_t es = za->elsize;
    if (za->str == ANS_ZSTR_UTF32) {
        size_t n = es / 4;
        while (n) {
            uint32_t cp;
            memcpy(&cp, it + 4 * (n - 1), 4);
            if (cp) break;
            n--;
        }
        ANS_TRY(ans_buf_reserve(data, data->len + n * 4));
        for (size_t i = 0; i < n; i++) {
            uint32_t cp;
            memcpy(&cp, it + 4 * i, 4);
            if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
                return ans_err(ANS_ECORRUPT, "invalid UTF-32 code point 0x%x", cp);
            data->len += utf8_put(data->data + data->len, cp);
        }
        return ANS_OK;
    }
    size_t n = es;
    while (n && it[n - 1] == 0) n--;
    if (utf8_valid(it, n)) return ans_buf_append(data, it, n);
    /* Not UTF-8: read the bytes as Latin-1. */
    ANS_TRY(ans_buf_reserve(data, data->len + 2 * n));
    for (size_t i = 0; i < n; i++) data->len += utf8_put(data->data + data->len, it[i]);
    return ANS_OK;
}

/* Encoded bytes of the unit at unit row u0 of a 1-D array: *src NULL when it is missing. */
static int fetch_unit_1d(ans_zarray *za, ans_zws *ws, uint64_t u0, const uint8_t **src,
                         size_t *len)
{
    *src = NULL;
    *len = 0;
    char key[ANS_ZKEY_MAX];
    ans_kv *kv = ans_zstore_kv(za->zs);
    if (!za->shard) {
        uint64_t c[1] = {u0};
        ANS_TRY(ans_zkey(za, c, key, sizeof key));
        int rc = ans_kv_get(kv, key, &ws->raw, 0);
        if (rc == ANS_ENOTFOUND) return ANS_OK;
        if (rc < 0) return rc;
        *src = ws->raw.data;
        *len = ws->raw.len;
        return ANS_OK;
    }
    uint64_t id = u0 / za->shard->cps[0], inner = u0 % za->shard->cps[0];
    ans_zidx *e;
    ANS_TRY(idx_get(za, id, &e));
    if (!e) return ANS_OK;
    uint64_t off = idx_ent(e)[2 * inner], nb = idx_ent(e)[2 * inner + 1];
    idx_release(za, e);
    if (off == UINT64_MAX && nb == UINT64_MAX) return ANS_OK;
    uint64_t sc[1] = {id};
    ANS_TRY(ans_zkey(za, sc, key, sizeof key));
    if (nb > SIZE_MAX) return ans_err(ANS_ENOMEM, "inner chunk too large");
    ANS_TRY(ans_buf_resize(&ws->raw, (size_t)nb));
    int rc = ans_kv_get_range(kv, key, off, nb, ws->raw.data);
    if (rc == ANS_ENOTFOUND) rc = ans_err(ANS_ECORRUPT, "shard vanished while reading");
    if (rc < 0) return rc;
    *src = ws->raw.data;
    *len = (size_t)nb;
    return ANS_OK;
}

/* Append items [r0, r0 + n) of a vlen-utf8 unit of `nitems` items. */
static int vlen_slice(const uint8_t *p, size_t len, uint64_t nitems, uint64_t r0, uint64_t n,
                      uint64_t *offsets, ans_buf *data)
{
    if (len < 4 || rd32le(p) != nitems)
        return ans_err(ANS_ECORRUPT, "vlen-utf8: header does not announce %llu items",
                       (unsigned long long)nitems);
    size_t pos = 4;
    for (uint64_t i = 0; i < r0 + n; i++) {
        if (len - pos < 4)
            return ans_err(ANS_ECORRUPT, "vlen-utf8: truncated at item %llu", (unsigned long long)i);
        uint32_t k = rd32le(p + pos);
        pos += 4;
        if (len - pos < k)
            return ans_err(ANS_ECORRUPT, "vlen-utf8: item %llu claims %u bytes, %zu remain",
                           (unsigned long long)i, k, len - pos);
        if (i >= r0) {
            ANS_TRY(ans_buf_append(data, p + pos, k));
            offsets[i - r0 + 1] = data->len;
        }
        pos += k;
    }
    return ANS_OK;
}

static int za_read_strings(ans_array *a, uint64_t start, uint64_t count, uint64_t *offsets,
                           ans_buf *data)
{
    ans_zarray *za = (ans_zarray *)a;
    offsets[0] = data->len;
    if (a->dtype != ANS_DTYPE_STRING)
        return ans_err(ANS_EINVAL, "%s: array '%s' does not hold strings", za_store(za), a->path);
    uint64_t end;
    if (ans_add_overflow(start, count, &end) || end > za->shp[0])
        return ans_err(ANS_EINVAL, "%s: array '%s': items [%llu, %llu) outside its %llu items",
                       za_store(za), a->path, (unsigned long long)start,
                       (unsigned long long)(start + count), (unsigned long long)za->shp[0]);
    if (!count) return ANS_OK;
    ans_zws *ws = NULL;
    ANS_TRY(ans_zstore_ws_take(za->zs, &ws));
    const uint64_t U0 = za->unit[0];
    int rc = ANS_OK;
    for (uint64_t r = start; r < end && rc == ANS_OK;) {
        uint64_t u0 = r / U0, ue = (u0 + 1) * U0, stop = ue < end ? ue : end;
        uint64_t r0 = r - u0 * U0, n = stop - r;
        uint64_t *offs = offsets + (r - start);
        const uint8_t *src;
        size_t len;
        rc = fetch_unit_1d(za, ws, u0, &src, &len);
        if (rc == ANS_OK && !src) {
            for (uint64_t k = 0; k < n && rc == ANS_OK; k++) {
                rc = ans_buf_append(data, za->fill_str, za->fill_str_len);
                offs[k + 1] = data->len;
            }
        } else if (rc == ANS_OK && za->str == ANS_ZSTR_VLEN) {
            const uint8_t *p;
            size_t plen;
            rc = ans_zchain_decode_bytes(za->uchain, ws, src, len, &p, &plen);
            if (rc == ANS_OK) rc = vlen_slice(p, plen, za->uchain->nelems, r0, n, offs, data);
        } else if (rc == ANS_OK) {
            const uint8_t *res;
            rc = ans_zchain_decode(za->uchain, ws, src, len, NULL, &res);
            for (uint64_t k = 0; k < n && rc == ANS_OK; k++) {
                rc = append_fixed(za, res + (r0 + k) * za->elsize, data);
                offs[k + 1] = data->len;
            }
        }
        if (rc < 0) {
            uint64_t c[1] = {u0};
            unit_error(za, c);
        }
        r = stop;
    }
    ans_zstore_ws_give(za->zs, ws);
    return rc;
}

/* ---- describe and lifetime -------------------------------------------------------------------- */

static ans_json *shape_json(const uint64_t *v, int nd)
{
    ans_json *arr = ans_json_new_array();
    if (!arr) return NULL;
    for (int d = 0; d < nd; d++)
        if (ans_json_push(arr, ans_json_new_uint(v[d])) < 0) {
            ans_json_free(arr);
            return NULL;
        }
    return arr;
}

/* ans_json_set, treating a NULL value (a failed builder) as ANS_ENOMEM. */
static int set_member(ans_json *obj, const char *key, ans_json *val)
{
    if (!val) return ans_err(ANS_ENOMEM, "out of memory describing an array");
    return ans_json_set(obj, key, val);
}

static int za_describe(ans_array *a, ans_json *obj)
{
    ans_zarray *za = (ans_zarray *)a;
    int nd = a->ndim;
    if (za->shard) {
        ANS_TRY(set_member(obj, "shards", shape_json(za->chunk, nd)));
        ANS_TRY(set_member(obj, "chunks", shape_json(za->unit, nd)));
    } else {
        ANS_TRY(set_member(obj, "chunks", shape_json(za->chunk, nd)));
    }
    ANS_TRY(set_member(obj, "codecs", ans_json_clone(za->codecs_json)));
    /* Bytes on disk: everything under the array's directory but its metadata files. */
    uint64_t bytes = 0, files = 0;
    ans_kv *kv = ans_zstore_kv(za->zs);
    int rc = ans_kv_du(kv, a->path, &bytes, &files);
    if (rc < 0 && rc != ANS_ENOTFOUND) return rc;
    static const char *const meta[] = {".zarray", ".zattrs", "zarr.json"};
    for (size_t i = 0; i < sizeof meta / sizeof meta[0]; i++) {
        char key[ANS_ZKEY_MAX];
        uint64_t sz;
        snprintf(key, sizeof key, "%s%s", za->prefix, meta[i]);
        if (ans_kv_size(kv, key, &sz) == ANS_OK && sz <= bytes) bytes -= sz;
    }
    ANS_TRY(set_member(obj, "stored_bytes", ans_json_new_uint(bytes)));
    if (za->str == ANS_ZSTR_VLEN) {
        ANS_TRY(set_member(obj, "nbytes", ans_json_new_null()));
    } else {
        uint64_t n = za->elsize;
        int over = 0;
        for (int d = 0; d < nd; d++) over |= ans_mul_overflow(n, za->shp[d], &n);
        ANS_TRY(set_member(obj, "nbytes", over ? ans_json_new_null() : ans_json_new_uint(n)));
    }
    ANS_TRY(set_member(obj, "zarr_format", ans_json_new_int(za->zarr_format)));
    ANS_TRY(set_member(obj, "stored_dtype", ans_json_new_str(za->dtype_name)));
    return ANS_OK;
}

static void za_free(ans_array *a)
{
    ans_zarray *za = (ans_zarray *)a;
    if (!za) return;
    for (int i = 0; i < za->ncache; i++)
        if (--za->cache[i]->refs == 0) idx_free(za->cache[i]);
    pthread_mutex_destroy(&za->mu);
    free(za->heads);
    ans_json_free(za->codecs_json);
    free(za->shard);
    free(za->fill_str);
    free(za->dtype_name);
    free(za->prefix);
    free(za->base.path);
    ans_zstore *zs = za->zs;
    free(za);
    if (zs) ans_zstore_unref(zs);
}

static const struct ans_array_ops zarr_array_ops = {
    za_read,
    za_read_strings,
    za_describe,
    za_free,
    za_read_segs,
    za_advise,
};

int ans_zarray_open(ans_zstore *zs, const char *path, const ans_json *meta, ans_array **out)
{
    *out = NULL;
    ans_zarray *za = ans_calloc(1, sizeof *za);
    if (!za) return ANS_ENOMEM;
    if (pthread_mutex_init(&za->mu, NULL) != 0) {
        free(za);
        return ans_err(ANS_EGENERIC, "pthread_mutex_init failed");
    }
    za->base.ops = &zarr_array_ops;
    za->base.container = (ans_container *)zs;
    ans_zstore_ref(zs);
    za->zs = zs;
    za->base.path = ans_strdup(path);
    za->prefix = *path ? ans_asprintf("%s/", path) : ans_strdup("");
    if (!za->base.path || !za->prefix) {
        za_free(&za->base);
        return ANS_ENOMEM;
    }
    char where[ANS_ZKEY_MAX + 256];
    snprintf(where, sizeof where, "%s: %s", ans_zstore_path(zs), *path ? path : "/");
    int fmt = ans_json_get(meta, "zarr_format") && ans_json_get(meta, "node_type") ? 3 : 2;
    int64_t zf;
    if (ans_json_get_i64(ans_json_get(meta, "zarr_format"), &zf) == 0) fmt = (int)zf;
    int rc = ans_zmeta_parse_array(za, meta, fmt, where);
    if (rc < 0) {
        za_free(&za->base);
        return rc;
    }
    if (za->shard) { /* the head cache: one slot per unit row, up to ANS_ZHEAD_SLOTS */
        int fullrows = 1;
        for (int d = 1; d < za->nd; d++)
            if (za->unit[d] != za->shp[d]) fullrows = 0;
        za->nheads = fullrows ? (za->ugrid[0] < ANS_ZHEAD_SLOTS ? (size_t)za->ugrid[0]
                                                                : ANS_ZHEAD_SLOTS)
                              : 0;
    }
    *out = &za->base;
    return ANS_OK;
}
