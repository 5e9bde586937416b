/* zarr.h - internals of the zarr backend (v2, v3, sharding_indexed). Layer 2.
 *
 * Files:
 *   zarr_meta.c       .zarray / zarr.json -> ans_zarray fields: dtype, shape, chunk grid, chunk key
 *                     encoding, fill value (v2 typestrs both byte orders, v3 data types).
 *   zarr_codecs.c     codec lists (v2 compressor + filters, v3 codecs) -> ans_zchain, a flat decode
 *                     pipeline; running it on one chunk; shard index parsing; workspaces.
 *   zarr_array.c      the ans_array implementation: parallel range reads, strings, describe, the
 *                     per-array shard index cache.
 *   zarr_container.c  ans_zarr_open / probe and the ans_container ops (nodes, attrs, children),
 *                     consolidated metadata, the workspace free-list.
 *
 * The model. Every array is read in "units": plain chunks, or the inner chunks of a sharded array.
 * A unit is decoded by an ans_zchain: bytes->bytes stages undone in reverse (crc32c, blosc, zstd,
 * zlib, gzip, lz4), then the array->bytes stage (bytes: byte swap in place; vlen-utf8), then an
 * optional transpose (v3 transpose, v2 order "F") into C order. A sharded array has an outer chain
 * whose array->bytes stage is sharding_indexed (ans_zshard) with its own inner chain.
 *
 * Threading. The container's node table and workspace free-list and each array's shard index cache
 * are guarded by their own mutex (lock order: never two at once). Workspaces (ans_zws: a codec
 * context and scratch buffers) are taken per pool slot for one read call and handed back after, so
 * steady-state reads do not allocate per chunk. */
#ifndef ANS_ZARR_ZARR_H
#define ANS_ZARR_ZARR_H

#include "codec/codec.h"
#include "common/json.h"
#include "common/mem.h"
#include "container/container.h"
#include "storage/store.h"

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#define ANS_ZBB_MAX 8        /* bytes->bytes stages in one chain */
#define ANS_ZKEY_MAX 1024    /* longest store key built for a chunk */
#define ANS_ZIDX_CACHE_N 64  /* shard indexes kept per array ... */
#define ANS_ZIDX_CACHE_BYTES ((uint64_t)128 << 20) /* ... and their total size */
/* Heads of blosc units (header and block-start table) kept per sharded array, for reading units in
 * part: slots (one per inner chunk, at most this many) and the largest head kept (16 block starts). */
#define ANS_ZHEAD_SLOTS 32768
#define ANS_ZHEAD_MAX 80

/* ---- codec chains (zarr_codecs.c) ---------------------------------------------------------------- */

typedef enum ans_zbb_kind {
    ANS_ZBB_BLOSC = 1,
    ANS_ZBB_ZSTD,
    ANS_ZBB_ZLIB,
    ANS_ZBB_GZIP,
    ANS_ZBB_LZ4,
    ANS_ZBB_CRC32C
} ans_zbb_kind;

typedef struct ans_zbb {
    ans_zbb_kind kind;
    int crc_at_start; /* crc32c: numcodecs `location: "start"` (checksum before the data) */
} ans_zbb;

typedef enum ans_zab_kind {
    ANS_ZAB_BYTES = 1, /* fixed-size elements (numbers, bool, fixed strings) */
    ANS_ZAB_VLEN_UTF8, /* vlen-utf8: u32 count, then u32 length + bytes per item */
    ANS_ZAB_SHARDING   /* sharding_indexed (outer chain of a sharded array only) */
} ans_zab_kind;

/* How strings are stored (ANS_ZSTR_NONE for numeric arrays). */
typedef enum ans_zstr_kind {
    ANS_ZSTR_NONE = 0,
    ANS_ZSTR_VLEN,  /* |O + vlen-utf8, v3 "string" */
    ANS_ZSTR_UTF32, /* <U n / >U n, v3 fixed_length_utf32: n code points of 4 bytes */
    ANS_ZSTR_BYTES  /* |S n, v3 null_terminated_bytes */
} ans_zstr_kind;

/* One decode pipeline for units of a fixed shape. */
typedef struct ans_zchain {
    int nd;                        /* rank of the unit (>= 1: 0-d arrays use shape [1]) */
    uint64_t shape[ANS_MAX_NDIM];  /* unit shape */
    uint64_t nelems;               /* elements per unit */
    size_t elsize;                 /* bytes per decoded element (0 for vlen) */
    uint64_t nbytes;               /* exact decoded size of a unit (nelems * elsize) */
    int transpose;                 /* stored in the order of `perm` (not the identity) */
    int perm[ANS_MAX_NDIM];        /* stored axis i is unit axis perm[i] */
    ans_zab_kind ab;
    size_t swap;                   /* byte-swap unit after decoding: 0 (none), 2, 4 or 8 */
    int nbb;
    ans_zbb bb[ANS_ZBB_MAX];       /* bytes->bytes stages in ENCODE order */
} ans_zchain;

/* sharding_indexed: the outer unit (shard) is split into inner units. */
typedef struct ans_zshard {
    int nd;
    uint64_t cps[ANS_MAX_NDIM]; /* inner chunks per shard along each axis */
    uint64_t n;                 /* inner chunks per shard (product of cps) */
    uint64_t index_bytes;       /* 16 n (+ 4 with crc32c) */
    int index_at_start;
    int index_crc;
    int index_big;              /* index stored big-endian */
    ans_zchain inner;
} ans_zshard;

/* Per-thread scratch for decoding: a codec context and buffers that only grow. */
typedef struct ans_zws {
    struct ans_zws *next;
    ans_codec_ctx *cctx;
    ans_buf raw;     /* encoded bytes fetched from the store */
    ans_buf tmp[2];  /* intermediate stages */
    ans_buf chunk;   /* decoded unit in C order (when not decoding straight into the output) */
    ans_buf offs;    /* strings: item offsets of one unit */
    ans_buf strs;    /* strings: item bytes of one unit */
    ans_buf segs;    /* the parts of one unit a read scatters (ans_bseg) */
} ans_zws;

int ans_zws_new(ans_zws **out);
void ans_zws_free(ans_zws *ws);

/* Facts about the array a chain is parsed for. */
typedef struct ans_zchain_ctx {
    const char *where;   /* "<store>: <array path>" for messages */
    int nd;
    const uint64_t *shape; /* the chain's unit shape (chunk or shard shape) */
    size_t elsize;       /* decoded element size (0 for vlen strings) */
    size_t swap_unit;    /* 2/4/8 for multi-byte numbers (complex: the component size), else 0 */
    ans_zstr_kind str;
} ans_zchain_ctx;

/* v3 `codecs` list -> chain; a sharding_indexed array->bytes codec allocates *shard (caller frees).
 * ANS_EUNSUPPORTED names the codec for anything this reader cannot decode. */
int ans_zchain_parse_v3(ans_zchain *ch, ans_zshard **shard, const ans_json *codecs,
                        const ans_zchain_ctx *cx);
/* v2 compressor (object or null) + filters (list or null) + order + byte order -> chain. */
int ans_zchain_parse_v2(ans_zchain *ch, const ans_json *compressor, const ans_json *filters,
                        int order_f, int big_endian, const ans_zchain_ctx *cx);

/* Decode one fixed-size unit (ab == BYTES) from `src` into C order. `dst` (ch->nbytes bytes) is the
 * destination, or NULL to decode into ws->chunk (grown only after the encoded data proved it holds
 * that much). *result points at the decoded unit. Sizes are checked exactly: ANS_ECORRUPT. */
int ans_zchain_decode(const ans_zchain *ch, ans_zws *ws, const uint8_t *src, size_t len,
                      uint8_t *dst, const uint8_t **result);
/* Bytes [lo, hi) of a decoded unit; *result points at byte lo (in ws, valid until its next use).
 * A unit whose only stage is blosc (no transpose or byte swap) decodes just the blocks holding
 * them; any other unit is decoded whole. */
int ans_zchain_decode_range(const ans_zchain *ch, ans_zws *ws, const uint8_t *src, size_t len,
                            uint64_t lo, uint64_t hi, const uint8_t **result);
/* Reading a unit in part. A unit whose only stage is blosc (no transpose or byte swap) and whose
 * frame's blocks can be read apart has a head (header and block-start table) of *hlen bytes
 * (ans_zchain_head_len; else ANS_EUNSUPPORTED without a message). From that head alone,
 * ans_zchain_span gives the stored bytes [*c0, *c1) that decoding bytes [lo, hi) needs besides it
 * (ANS_EUNSUPPORTED without a message when all of them are needed), and
 * ans_zchain_decode_range_in decodes [lo, hi) from a buffer of the unit's len bytes in which only
 * the head and [w0, w1) hold the unit's bytes. */
int ans_zchain_head_len(const ans_zchain *ch, const uint8_t *src, size_t len, size_t *hlen);
int ans_zchain_span(const ans_zchain *ch, const uint8_t *head, size_t hlen, size_t len,
                    uint64_t lo, uint64_t hi, uint64_t *c0, uint64_t *c1);
int ans_zchain_decode_range_in(const ans_zchain *ch, ans_zws *ws, const uint8_t *src, size_t len,
                               uint64_t lo, uint64_t hi, uint64_t w0, uint64_t w1,
                               const uint8_t **result);
/* Hand the segments of a unit (its decoded bytes [off, off + len)) to `put` as
 * ans_blosc_scatter does, when the unit's only stage is blosc (no transpose or byte swap); only its
 * head and [w0, w1) need hold its bytes. ANS_EUNSUPPORTED without a message when the unit cannot be
 * decoded so: decode it with ans_zchain_decode_range_in instead. */
int ans_zchain_can_scatter(const ans_zchain *ch); /* 0: ans_zchain_scatter always refuses */
int ans_zchain_scatter(const ans_zchain *ch, ans_zws *ws, const uint8_t *src, size_t len,
                       uint64_t w0, uint64_t w1, const ans_bseg *segs, size_t nsegs, size_t elsize,
                       ans_bsink put, void *ctx);
/* Undo the bytes->bytes stages only (for vlen units): *out / *outlen point into ws buffers or src. */
int ans_zchain_decode_bytes(const ans_zchain *ch, ans_zws *ws, const uint8_t *src, size_t len,
                            const uint8_t **out, size_t *outlen);

/* Parse and validate a shard index read from the store (`raw`, sh->index_bytes long) of a shard
 * `total` bytes long into 2 n native uint64 (offset, nbytes) pairs in `ent` (may alias raw).
 * CRC-32C verified; every entry is (MAX, MAX) or lies within the shard. ANS_ECORRUPT otherwise. */
int ans_zshard_parse_index(const ans_zshard *sh, const uint8_t *raw, uint64_t total,
                           uint64_t *ent);

/* ---- arrays (zarr_meta.c, zarr_array.c) ------------------------------------------------------- */

typedef struct ans_zstore ans_zstore;
typedef struct ans_zidx ans_zidx;

typedef struct ans_zarray {
    ans_array base;
    ans_zstore *zs;
    char *prefix;                  /* key prefix: "X/data/" ("" for an array at the root) */
    int zarr_format;               /* 2 or 3 */
    int nd;                        /* max(ndim, 1) */
    uint64_t shp[ANS_MAX_NDIM];    /* shape (0-d: {1}) */
    uint64_t chunk[ANS_MAX_NDIM];  /* chunk-grid shape: the chunk, or the shard when sharded */
    uint64_t unit[ANS_MAX_NDIM];   /* decode unit: the chunk, or the inner chunk when sharded */
    uint64_t ugrid[ANS_MAX_NDIM];  /* units along each axis: ceil(shp / unit) */
    /* chunk keys */
    int key_default; /* v3 "default" encoding ("c" prefix) */
    char sep;        /* '.' or '/' */
    /* element */
    ans_zstr_kind str;
    size_t elsize;             /* decoded element size: itemsize, or fixed string bytes */
    uint8_t fill[16];          /* one element of fill value, native order (numbers, bool) */
    int fill_zero;             /* fill is all zero bytes */
    char *fill_str;            /* strings: fill as UTF-8 */
    size_t fill_str_len;
    /* codecs */
    ans_zchain chain;          /* the chunk chain (outer chain when sharded) */
    ans_zshard *shard;         /* NULL unless sharded */
    const ans_zchain *uchain;  /* chain of one unit: &chain or &shard->inner */
    ans_json *codecs_json;     /* for describe: v3 codecs, v2 [filters..., compressor] */
    char *dtype_name;          /* on-disk type as written ("<f4", "float32", ...) */
    /* shard index cache */
    pthread_mutex_t mu;
    ans_zidx *cache[ANS_ZIDX_CACHE_N];
    int ncache;
    uint64_t cache_bytes;
    uint64_t tick;
    /* blosc head cache (under mu): nheads slots, allocated on first use; 0 slots: none */
    struct ans_zhead *heads;
    size_t nheads;
} ans_zarray;

/* Fill the metadata fields of `za` (its base.path and zs must be set) from .zarray / zarr.json. */
int ans_zmeta_parse_array(ans_zarray *za, const ans_json *meta, int zarr_format, const char *where);
/* Parse a fill value for `dtype` (v2 or v3 conventions) into one native-order element. */
int ans_zmeta_parse_fill(const ans_json *v, ans_dtype dtype, uint8_t out[16], const char *where);
/* numpy typestr ("<i4", "|b1", ">f8", "<U12", "|S5", "|O") -> dtype, string kind, element size, byte
 * order. */
int ans_zmeta_parse_typestr(const char *s, ans_dtype *dtype, ans_zstr_kind *str, size_t *elsize,
                            int *big_endian, const char *where);
/* Key of the outer chunk at grid coordinates `coord` (za->nd values), with the array prefix. */
int ans_zkey(const ans_zarray *za, const uint64_t *coord, char *buf, size_t cap);

/* Open the array at `path` whose metadata is `meta` (borrowed, must outlive nothing: copied). */
int ans_zarray_open(ans_zstore *zs, const char *path, const ans_json *meta, ans_array **out);

/* ---- the container (zarr_container.c) ---------------------------------------------------------- */

/* Store of the container and its root for messages. */
ans_kv *ans_zstore_kv(ans_zstore *zs);
const char *ans_zstore_path(const ans_zstore *zs);
ans_pool *ans_zstore_pool(const ans_zstore *zs);
/* Workspace free-list: take one (creating it if the list is empty) / hand it back. */
int ans_zstore_ws_take(ans_zstore *zs, ans_zws **out);
void ans_zstore_ws_give(ans_zstore *zs, ans_zws *ws);
/* Arrays hold a reference on their container so that it outlives them. */
void ans_zstore_ref(ans_zstore *zs);
void ans_zstore_unref(ans_zstore *zs);

#endif
