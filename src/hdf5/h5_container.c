/* h5_container.c - the HDF5 (.h5ad) backend of the container interface, through libhdf5 >= 1.10.
 *
 * Design
 * - One read-only H5Fopen per container, one H5Dopen per ans_array, kept for the array's life.
 * - Types: libhdf5 converts to the native memory type (H5T_NATIVE_*), so big-endian data arrives in
 *   native order; the h5py bool enum {FALSE=0, TRUE=1} reads as bool (normalised to 0/1), h5py's
 *   complex compound {r, i} as complex64/128, IEEE half as float16, other enums as their base
 *   integer; strings (vlen or fixed, ASCII or UTF-8) through read_strings.
 * - Filters: a filter libhdf5 cannot decode is refused when the array is opened, by name and id.
 * - Two read paths for numeric arrays.
 *   (1) Direct chunk reads (chunked datasets whose filters are only deflate and shuffle and whose
 *       values are plain integers, IEEE floats, complex pairs of those or enums; almost everything
 *       anndata and h5py write). libhdf5 decodes under its global lock, so H5Dread is serial across
 *       the whole process; here it only locates and reads each raw chunk (short), and inflate,
 *       unshuffle, byte swap and the copy into the caller's buffer run outside it, one job per
 *       chunk on the container's pool. Decoded chunks stay in a per-array LRU cache (64 MiB, or 4
 *       chunks when larger) so successive small reads in one chunk do not decode it again.
 *   (2) H5Dread for everything else (contiguous and compact layouts, other filters, odd types),
 *       with the chunk cache of chunked datasets sized like (1). Ranges are sorted and merged, and
 *       each merged run is one H5Dread straight into the caller's buffer when the ranges came
 *       sorted and disjoint, else into scratch copied out in range order.
 *   Measured with libhdf5 1.10.8 on 2 cores, 10,000 scattered rows (gzip): a 1-D float32 dataset
 *   (20M values, 100-value ranges), and a 200000 x 100 float32 with (256, 100) or h5py's default
 *   (3125, 4) chunks. One OR-combined hyperslab selection and one H5Dread: 1.3-1.5 s; one H5Dread
 *   per merged run: 0.27-0.38 s (so (2) reads per run); direct path: 0.24-0.26 s on one thread,
 *   0.12-0.17 s on two (inflate bound, so it scales with the pool). 20,000 one-row calls on the
 *   (3125, 4)-chunked array: H5Dread 0.27 s, direct 0.09 s. Reading a dataset of 20,000 tiny
 *   chunks whole: H5Dread 0.11 s, direct 0.03 s.
 * - Threads. A build of libhdf5 without thread-safety must not be entered by two threads at once,
 *   and a fork() while a thread is inside a thread-safe build leaves the child's copy of its lock
 *   held. So every call into libhdf5 happens under h5_global_lock below, the single piece of
 *   process-wide mutable state in annstream (documented in annstream.h), and a pthread_atfork
 *   handler takes that lock around fork(). Decoding chunks happens outside the lock.
 * - Errors. HDF5's automatic error printing is switched off around each of our entries (saved and
 *   restored per thread, so an application's own handler survives), and the innermost entry of the
 *   HDF5 error stack becomes part of our message, which also names the file and the object.
 * - Attributes are converted to JSON once per object and cached in the container (mutex-protected
 *   hash table keyed by the normalised path); the JSON returned is borrowed until the container is
 *   freed.
 * - Hostile files: the signature is checked without libhdf5; datasets with external raw storage or
 *   virtual layout are refused (they would read other files); contiguous datasets whose storage
 *   extends beyond the end of the file are refused at open, and chunks claiming more stored bytes
 *   than their data could need are refused when read (ANS_ECORRUPT). Known limit: libhdf5 1.10.8
 *   itself is not memory-safe on corrupted metadata (random byte flips in an anndata file crashed
 *   inside libhdf5, mostly H5HG_read, the global heap behind vlen strings, in about a third of 150
 *   trials; none in this file), so untrusted .h5ad files need a newer libhdf5 or a sandbox.
 * - Shapes: an H5S_NULL dataspace (anndata's "null" encoding) is shown as shape [0]; a scalar
 *   dataspace as ndim 0.
 */
#include "container/container.h"

#include "codec/codec.h"
#include "common/error.h"
#include "common/json.h"
#include "common/mem.h"
#include "common/pool.h"

#include <hdf5.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- libhdf5 API versions -------------------------------------------------------------------- */

#if H5_VERSION_GE(1, 12, 0)
typedef H5O_info2_t h5_oinfo_t;
typedef H5L_info2_t h5_linfo_t;
#define H5_OINFO_BY_NAME(loc, name, info)                                                          \
    H5Oget_info_by_name3((loc), (name), (info), H5O_INFO_BASIC, H5P_DEFAULT)
#define H5_LITERATE(grp, idx, cb, data)                                                            \
    H5Literate2((grp), H5_INDEX_NAME, H5_ITER_INC, (idx), (cb), (data))
#define H5_RECLAIM(type, space, buf) H5Treclaim((type), (space), H5P_DEFAULT, (buf))
#elif H5_VERSION_GE(1, 10, 3)
typedef H5O_info_t h5_oinfo_t;
typedef H5L_info_t h5_linfo_t;
#define H5_OINFO_BY_NAME(loc, name, info)                                                          \
    H5Oget_info_by_name2((loc), (name), (info), H5O_INFO_BASIC, H5P_DEFAULT)
#define H5_LITERATE(grp, idx, cb, data)                                                            \
    H5Literate((grp), H5_INDEX_NAME, H5_ITER_INC, (idx), (cb), (data))
#define H5_RECLAIM(type, space, buf) H5Dvlen_reclaim((type), (space), H5P_DEFAULT, (buf))
#else
typedef H5O_info_t h5_oinfo_t;
typedef H5L_info_t h5_linfo_t;
#define H5_OINFO_BY_NAME(loc, name, info) H5Oget_info_by_name((loc), (name), (info), H5P_DEFAULT)
#define H5_LITERATE(grp, idx, cb, data)                                                            \
    H5Literate((grp), H5_INDEX_NAME, H5_ITER_INC, (idx), (cb), (data))
#define H5_RECLAIM(type, space, buf) H5Dvlen_reclaim((type), (space), H5P_DEFAULT, (buf))
#endif

/* Chunk cache per dataset (libhdf5's or ours): this many bytes, or 4 chunks when chunks are larger,
 * at most H5_CACHE_MAX_BYTES. */
#define H5_CACHE_MIN_BYTES ((size_t)64 << 20)
#define H5_CACHE_MAX_BYTES ((size_t)1 << 30)
/* Direct chunk reads: at most this many filters, chunks of at most this many decoded bytes. */
#define H5_DIRECT_MAX_FILTERS 8
#define H5_DIRECT_MAX_CHUNK ((uint64_t)256 << 20)
/* At most this many decoded chunks cached per array (bounds the table for tiny chunks). */
#define H5_DIRECT_MAX_ENTRIES 16384
/* Items per H5Dread when reading strings (bounds the temporary pointer / fixed-size buffers). */
#define H5_STRING_BATCH 16384

/* ---- the one global: a lock for libhdf5 builds that are not thread-safe ---------------------- */

/* The single process-wide mutable object of annstream (see annstream.h, "Conventions"). It guards
 * libhdf5 itself, which is process-global: every call into it is made while holding this lock,
 * and fork() takes it first (h5_atfork_register). */
static pthread_mutex_t h5_global_lock = PTHREAD_MUTEX_INITIALIZER;

typedef struct h5_guard {
    int locked;
    H5E_auto2_t func;
    void *data;
} h5_guard;

/* Enter libhdf5: take the global lock if needed and silence the automatic error printing of this
 * thread's default error stack (restored by h5_leave). */
static void h5_enter(int serialize, h5_guard *g)
{
    g->locked = 0;
    if (serialize) {
        pthread_mutex_lock(&h5_global_lock);
        g->locked = 1;
    }
    g->func = NULL;
    g->data = NULL;
    if (H5Eget_auto2(H5E_DEFAULT, &g->func, &g->data) < 0) {
        g->func = NULL;
        g->data = NULL;
    }
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
}

/* Leave libhdf5. Read the error stack (h5_fail) before: this call clears it. */
static void h5_leave(h5_guard *g)
{
    H5Eset_auto2(H5E_DEFAULT, g->func, g->data);
    if (g->locked) pthread_mutex_unlock(&h5_global_lock);
}

/* fork() while another thread is inside libhdf5 would leave the child a copy of libhdf5's own
 * lock (thread-safe builds) in its locked state, and the child's first HDF5 call would hang (a
 * DataLoader forking while the parent reads an .h5ad). So every call goes through h5_global_lock,
 * and fork() takes that lock first (pthread_atfork): the child starts with libhdf5 idle. This
 * costs no concurrency: libhdf5 serialises each call internally anyway. */
static pthread_once_t h5_atfork_once = PTHREAD_ONCE_INIT;
static void h5_prefork(void) { pthread_mutex_lock(&h5_global_lock); }
static void h5_postfork(void) { pthread_mutex_unlock(&h5_global_lock); }
static void h5_atfork_register(void) { pthread_atfork(h5_prefork, h5_postfork, h5_postfork); }

/* 1: libhdf5 calls are serialised by h5_global_lock (always, see above). */
static int h5_library_serialize(void)
{
    pthread_once(&h5_atfork_once, h5_atfork_register);
    return 1;
}

/* ---- errors ---------------------------------------------------------------------------------- */

typedef struct h5_errinfo {
    int found;
    hid_t maj, min;
    char desc[384];
} h5_errinfo;

static herr_t h5_walk_cb(unsigned n, const H5E_error2_t *e, void *data)
{
    h5_errinfo *info = data;
    if (n == 0 && e) {
        info->found = 1;
        info->maj = e->maj_num;
        info->min = e->min_num;
        snprintf(info->desc, sizeof info->desc, "%s", e->desc ? e->desc : "");
    }
    return 0;
}

/* Our code for an HDF5 failure: `dflt` unless the innermost error says memory, operating-system
 * I/O or a file lock. */
static int h5_code(int dflt, hid_t maj, hid_t min)
{
    if (maj == H5E_RESOURCE && min == H5E_NOSPACE) return ANS_ENOMEM;
    if (maj == H5E_IO && (min == H5E_READERROR || min == H5E_SEEKERROR)) return ANS_EIO;
    if (min == H5E_CANTLOCKFILE) return ANS_EIO; /* e.g. a writer holds the file */
    return dflt;
}

/* Record a failed libhdf5 call: "<file>: '<object>': <what>: <HDF5 innermost description>
 * (<HDF5 minor message>)". Call before h5_leave. `obj` may be NULL for file-level failures. */
static int h5_fail(int code, const char *file, const char *obj, const char *fmt, ...)
    ANS_PRINTF(4, 5);
static int h5_fail(int code, const char *file, const char *obj, const char *fmt, ...)
{
    char what[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    h5_errinfo info;
    memset(&info, 0, sizeof info);
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, h5_walk_cb, &info);
    char detail[sizeof info.desc + 200] = "";
    if (info.found) {
        char minor[160] = "";
        if (H5Eget_msg(info.min, NULL, minor, sizeof minor) < 0) minor[0] = '\0';
        code = h5_code(code, info.maj, info.min);
        if (minor[0])
            snprintf(detail, sizeof detail, ": %s (%s)", info.desc, minor);
        else
            snprintf(detail, sizeof detail, ": %s", info.desc);
    }
    /* Empty this thread's error stack now: a pool worker may make no further HDF5 call to clear
     * it, and entries left on a thread's stack keep libhdf5 from closing at exit ("HDF5: infinite
     * loop closing library"). */
    H5Eclear2(H5E_DEFAULT);
    if (obj) return ans_err(code, "%s: '%s': %s%s", file, obj, what, detail);
    return ans_err(code, "%s: %s%s", file, what, detail);
}

/* ---- types ----------------------------------------------------------------------------------- */

typedef struct h5_container {
    ans_container base;
    hid_t file;
    int serialize;      /* calls go through h5_global_lock */
    uint64_t file_size; /* bytes on disk at open */
    /* Attribute cache: open addressing, keys are normalised absolute names ("/X/data"). */
    pthread_mutex_t cache_lock;
    char **cache_keys;
    ans_json **cache_vals;
    size_t cache_cap, cache_n;
} h5_container;

typedef enum h5_kind {
    H5K_NUMBER = 0, /* read through H5Dread into the native memory type */
    H5K_BOOL,       /* the bool enum: raw bytes, normalised to 0/1 */
    H5K_ENUM,       /* another enum: raw base-type bytes, swapped when not native */
    H5K_VSTRING,    /* variable-length string */
    H5K_FSTRING     /* fixed-length string */
} h5_kind;

/* Decoded chunks of one array (direct path): a fixed table of at most `cap` entries, each one
 * chunk of chunk_bytes, found through a chained hash and kept in least-recently-used order; entries
 * being copied from are pinned and never evicted. */
typedef struct h5_centry {
    uint64_t key; /* linear chunk index */
    uint8_t *data;
    int pins;
    int32_t next;         /* hash chain, -1 = end */
    int32_t newer, older; /* LRU list, -1 = end */
} h5_centry;

typedef struct h5_cache {
    pthread_mutex_t mu;
    h5_centry *e; /* allocated on first use */
    size_t n, cap;
    int32_t *buckets;
    size_t nbuckets;        /* power of two */
    int32_t newest, oldest; /* LRU ends, -1 when empty */
} h5_cache;

typedef struct h5_array {
    ans_array base;
    char *file; /* file name, for messages */
    int serialize;
    hid_t dset;
    hid_t mtype; /* memory type for H5Dread */
    h5_kind kind;
    int swap;         /* H5K_ENUM: byte-swap after reading */
    H5T_cset_t cset;  /* strings */
    H5T_str_t strpad; /* fixed strings */
    size_t fsize;     /* fixed strings: bytes per item; else file type size */
    int null_space;   /* H5S_NULL dataspace, shown as shape [0] */
    H5D_layout_t layout;
    hsize_t chunk[ANS_MAX_NDIM];
    ans_json *codecs;   /* filter names, built at open */
    uint64_t row_elems; /* values per row */
    /* Direct chunk path (see "Direct chunk reads"). */
    int direct;
    int nfilters;
    H5Z_filter_t filters[H5_DIRECT_MAX_FILTERS];
    unsigned shuffle_size[H5_DIRECT_MAX_FILTERS];
    size_t unit;                 /* byte-swap unit after decoding, 0 = none */
    uint64_t chunk_bytes;        /* decoded chunk size */
    uint64_t grid[ANS_MAX_NDIM]; /* chunks along each dimension */
    uint64_t file_size;
    uint8_t fill[16]; /* the fill value, one value in memory layout */
    ans_pool *pool;   /* borrowed from the container */
    h5_cache cache;
    int cache_lock_ready;
} h5_array;

/* ---- paths ----------------------------------------------------------------------------------- */

/* The absolute HDF5 name of a container path: "/" + components, repeated and trailing '/' removed.
 * NULL on ENOMEM. */
static char *h5_name(const char *path)
{
    size_t len = strlen(path);
    char *out = ans_malloc(len + 2);
    if (!out) return NULL;
    size_t o = 0;
    out[o++] = '/';
    for (size_t i = 0; i < len; i++) {
        if (path[i] == '/' && out[o - 1] == '/') continue;
        out[o++] = path[i];
    }
    if (o > 1 && out[o - 1] == '/') o--;
    out[o] = '\0';
    return out;
}

/* How messages show an absolute name: container-relative ("X/data"), "/" for the root. */
static const char *h5_disp(const char *name)
{
    return name[0] == '/' && name[1] ? name + 1 : name;
}

/* For a name whose lookup failed: 1 when a link along it is missing, dangling or passes through a
 * non-group (so "nothing there"), 0 when everything resolves (the failure is something else), < 0
 * when libhdf5 fails (error stack set). */
static int h5_path_missing(hid_t file, const char *name)
{
    char *buf = ans_strdup(name);
    if (!buf) return ANS_ENOMEM;
    size_t len = strlen(buf);
    int rc = 0;
    for (size_t i = 1; i <= len && rc == 0; i++) {
        if (i < len && buf[i] != '/') continue;
        char save = buf[i];
        buf[i] = '\0';
        htri_t ex = H5Lexists(file, buf, H5P_DEFAULT);
        if (ex < 0) {
            rc = -1;
        } else if (ex == 0) {
            rc = 1;
        } else {
            h5_oinfo_t info;
            if (H5_OINFO_BY_NAME(file, buf, &info) < 0)
                rc = 1; /* dangling soft or external link */
            else if (i < len && info.type != H5O_TYPE_GROUP)
                rc = 1;
        }
        buf[i] = save;
    }
    free(buf);
    return rc;
}

/* ---- strings --------------------------------------------------------------------------------- */

/* Length of the valid UTF-8 prefix... 1 when s[0..n) is valid UTF-8, else 0. */
static int h5_utf8_valid(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t k;
        uint32_t cp;
        if (c >= 0xC2 && c <= 0xDF) {
            k = 1;
            cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            k = 2;
            cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            k = 3;
            cp = c & 0x07;
        } else {
            return 0;
        }
        if (n - i <= k) return 0;
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (s[i + j] & 0x3F);
        }
        if ((k == 2 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
            (k == 3 && (cp < 0x10000 || cp > 0x10FFFF)))
            return 0;
        i += k + 1;
    }
    return 1;
}

/* Append text as UTF-8: valid UTF-8 as is, anything else read as Latin-1 (bytes from non-h5py
 * writers tagged ASCII). */
static int h5_append_text(ans_buf *data, const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    if (h5_utf8_valid(u, n)) return ans_buf_append(data, s, n);
    if (n > (SIZE_MAX - data->len) / 2) return ans_err(ANS_ENOMEM, "string too large");
    ANS_TRY(ans_buf_reserve(data, data->len + 2 * n));
    uint8_t *o = data->data + data->len;
    for (size_t i = 0; i < n; i++) {
        if (u[i] < 0x80) {
            *o++ = u[i];
        } else {
            *o++ = (uint8_t)(0xC0 | (u[i] >> 6));
            *o++ = (uint8_t)(0x80 | (u[i] & 0x3F));
        }
    }
    data->len = (size_t)(o - data->data);
    return ANS_OK;
}

/* Length of a fixed-size string item after removing its padding. */
static size_t h5_fixed_len(const char *s, size_t size, H5T_str_t pad)
{
    if (pad == H5T_STR_SPACEPAD) {
        size_t n = size;
        while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\0'))
            n--;
        return n;
    }
    const char *z = memchr(s, '\0', size);
    return z ? (size_t)(z - s) : size;
}

/* ---- type classification --------------------------------------------------------------------- */

static const char *h5_class_name(H5T_class_t cls)
{
    switch (cls) {
    case H5T_INTEGER:
        return "integer";
    case H5T_FLOAT:
        return "float";
    case H5T_TIME:
        return "time";
    case H5T_STRING:
        return "string";
    case H5T_BITFIELD:
        return "bitfield";
    case H5T_OPAQUE:
        return "opaque";
    case H5T_COMPOUND:
        return "compound";
    case H5T_REFERENCE:
        return "reference";
    case H5T_ENUM:
        return "enum";
    case H5T_VLEN:
        return "variable-length sequence";
    case H5T_ARRAY:
        return "array";
    default:
        return "unknown";
    }
}

static int h5_native_little(void)
{
    const uint16_t one = 1;
    return *(const uint8_t *)&one == 1;
}

static int h5_ascii_ieq(const char *a, const char *b)
{
    for (; *a && *b; a++, b++) {
        char x = *a, y = *b;
        if (x >= 'A' && x <= 'Z') x = (char)(x - 'A' + 'a');
        if (y >= 'A' && y <= 'Z') y = (char)(y - 'A' + 'a');
        if (x != y) return 0;
    }
    return *a == *b;
}

/* 1 when `t` is the bool enum h5py and anndata write: two members FALSE = 0, TRUE = 1 over a 1-byte
 * integer (names compared case-insensitively). 0 otherwise, < 0 on failure. */
static int h5_is_bool_enum(hid_t t)
{
    if (H5Tget_class(t) != H5T_ENUM || H5Tget_size(t) != 1) return 0;
    int n = H5Tget_nmembers(t);
    if (n != 2) return n < 0 ? -1 : 0;
    int seen_false = 0, seen_true = 0;
    for (unsigned i = 0; i < 2; i++) {
        int8_t v = -1;
        if (H5Tget_member_value(t, i, &v) < 0) return -1;
        char *name = H5Tget_member_name(t, i);
        if (!name) return -1;
        if (v == 0 && h5_ascii_ieq(name, "false")) seen_false = 1;
        if (v == 1 && h5_ascii_ieq(name, "true")) seen_true = 1;
        H5free_memory(name);
    }
    return seen_false && seen_true;
}

static ans_dtype h5_int_dtype(size_t size, int is_signed)
{
    switch (size) {
    case 1:
        return is_signed ? ANS_DTYPE_INT8 : ANS_DTYPE_UINT8;
    case 2:
        return is_signed ? ANS_DTYPE_INT16 : ANS_DTYPE_UINT16;
    case 4:
        return is_signed ? ANS_DTYPE_INT32 : ANS_DTYPE_UINT32;
    case 8:
        return is_signed ? ANS_DTYPE_INT64 : ANS_DTYPE_UINT64;
    default:
        return ANS_DTYPE_INVALID;
    }
}

static hid_t h5_native_int(ans_dtype d)
{
    switch (d) {
    case ANS_DTYPE_INT8:
        return H5T_NATIVE_INT8;
    case ANS_DTYPE_INT16:
        return H5T_NATIVE_INT16;
    case ANS_DTYPE_INT32:
        return H5T_NATIVE_INT32;
    case ANS_DTYPE_INT64:
        return H5T_NATIVE_INT64;
    case ANS_DTYPE_UINT8:
        return H5T_NATIVE_UINT8;
    case ANS_DTYPE_UINT16:
        return H5T_NATIVE_UINT16;
    case ANS_DTYPE_UINT32:
        return H5T_NATIVE_UINT32;
    case ANS_DTYPE_UINT64:
        return H5T_NATIVE_UINT64;
    default:
        return H5I_INVALID_HID;
    }
}

/* 1 when `t` is an IEEE binary16 layout. */
static int h5_is_half(hid_t t)
{
    size_t spos, epos, esize, mpos, msize;
    if (H5Tget_size(t) != 2) return 0;
    if (H5Tget_fields(t, &spos, &epos, &esize, &mpos, &msize) < 0) return 0;
    return spos == 15 && epos == 10 && esize == 5 && mpos == 0 && msize == 10 &&
           H5Tget_ebias(t) == 15;
}

/* The two members of a complex compound ({r, i} of equal floats, the real part first): sets *fsize
 * (4 or 8) and returns 1; 0 when `t` is some other compound. */
static int h5_is_complex(hid_t t, size_t *fsize)
{
    if (H5Tget_class(t) != H5T_COMPOUND || H5Tget_nmembers(t) != 2) return 0;
    size_t sz[2] = {0, 0};
    for (unsigned i = 0; i < 2; i++) {
        if (H5Tget_member_class(t, i) != H5T_FLOAT) return 0;
        hid_t m = H5Tget_member_type(t, i);
        if (m < 0) return 0;
        sz[i] = H5Tget_size(m);
        H5Tclose(m);
    }
    if (sz[0] != sz[1] || (sz[0] != 4 && sz[0] != 8)) return 0;
    if (H5Tget_member_offset(t, 0) != 0 || H5Tget_member_offset(t, 1) != sz[0]) return 0;
    if (H5Tget_size(t) != 2 * sz[0]) return 0;
    *fsize = sz[0];
    return 1;
}

/* A memory compound matching the complex file type `t` member names, with members of `native`. */
static hid_t h5_complex_mtype(hid_t t, hid_t native, size_t fsize)
{
    hid_t m = H5Tcreate(H5T_COMPOUND, 2 * fsize);
    if (m < 0) return m;
    for (unsigned i = 0; i < 2; i++) {
        char *name = H5Tget_member_name(t, i);
        herr_t rc = name ? H5Tinsert(m, name, i * fsize, native) : -1;
        if (name) H5free_memory(name);
        if (rc < 0) {
            H5Tclose(m);
            return H5I_INVALID_HID;
        }
    }
    return m;
}

/* ---- attributes -> JSON ---------------------------------------------------------------------- */

typedef struct h5_attr_ctx {
    h5_container *c;
    const char *name; /* object name */
    ans_json *obj;
    int rc;
} h5_attr_ctx;

/* Read raw integer bytes of `size` (1, 2, 4, 8) in the given order. */
static ans_json *h5_raw_int_json(const uint8_t *p, size_t size, int is_signed, int big)
{
    uint64_t u = 0;
    for (size_t i = 0; i < size; i++) {
        size_t k = big ? i : size - 1 - i;
        u = (u << 8) | p[k];
    }
    if (is_signed && size < 8 && (u >> (size * 8 - 1)) & 1) u |= ~(uint64_t)0 << (size * 8);
    if (is_signed) return ans_json_new_int((int64_t)u);
    return u > (uint64_t)INT64_MAX ? ans_json_new_uint(u) : ans_json_new_int((int64_t)u);
}

/* Nest the flat values vals[0..n) into arrays following dims[0..rank). Takes the values. */
static ans_json *h5_nest(ans_json **vals, const hsize_t *dims, int rank, size_t *pos)
{
    ans_json *arr = ans_json_new_array();
    if (!arr) return NULL;
    for (hsize_t i = 0; i < dims[0]; i++) {
        ans_json *item;
        if (rank == 1) {
            item = vals[*pos];
            vals[*pos] = NULL;
            (*pos)++;
        } else {
            item = h5_nest(vals, dims + 1, rank - 1, pos);
        }
        if (!item || ans_json_push(arr, item) < 0) {
            ans_json_free(arr);
            return NULL;
        }
    }
    return arr;
}

/* Convert one attribute. Types with no JSON meaning (references, opaque, other compounds...) become
 * null rather than failing the whole object. */
static int h5_attr_value(h5_attr_ctx *ctx, hid_t attr, const char *aname, ans_json **out)
{
    const char *file = ctx->c->base.path;
    *out = NULL;
    int rc = ANS_OK;
    hid_t space = H5I_INVALID_HID, ftype = H5I_INVALID_HID, mtype = H5I_INVALID_HID;
    ans_json **vals = NULL;
    void *buf = NULL;
    size_t n = 0;
    hsize_t dims[H5S_MAX_RANK];
    int rank = 0;

    space = H5Aget_space(attr);
    ftype = H5Aget_type(attr);
    if (space < 0 || ftype < 0) {
        rc = h5_fail(ANS_ECORRUPT, file, ctx->name, "reading attribute '%s'", aname);
        goto done;
    }
    H5S_class_t scls = H5Sget_simple_extent_type(space);
    if (scls == H5S_NULL) {
        *out = ans_json_new_null();
        rc = *out ? ANS_OK : ANS_ENOMEM;
        goto done;
    }
    rank = H5Sget_simple_extent_ndims(space);
    hssize_t np = H5Sget_simple_extent_npoints(space);
    if (rank < 0 || rank > H5S_MAX_RANK || np < 0 ||
        H5Sget_simple_extent_dims(space, dims, NULL) < 0) {
        rc = h5_fail(ANS_ECORRUPT, file, ctx->name, "reading the shape of attribute '%s'", aname);
        goto done;
    }
    /* An attribute is stored whole in the file: a bigger claim is corruption, not a size to
     * allocate. */
    uint64_t claim;
    if (ans_mul_overflow((uint64_t)np, H5Tget_size(ftype) ? H5Tget_size(ftype) : 1, &claim) ||
        claim > ctx->c->file_size) {
        rc = ans_err(ANS_ECORRUPT, "%s: '%s': attribute '%s' claims more bytes than the file holds",
                     file, ctx->name, aname);
        goto done;
    }
    n = (size_t)np;
    vals = ans_calloc(n ? n : 1, sizeof *vals);
    if (!vals) {
        rc = ANS_ENOMEM;
        goto done;
    }
    H5T_class_t cls = H5Tget_class(ftype);
    size_t tsize = H5Tget_size(ftype);
    herr_t rd = 0;
    if (cls == H5T_STRING) {
        htri_t vl = H5Tis_variable_str(ftype);
        H5T_cset_t cset = H5Tget_cset(ftype);
        mtype = H5Tcopy(H5T_C_S1);
        if (vl > 0) {
            if (mtype >= 0) H5Tset_size(mtype, H5T_VARIABLE);
            if (mtype >= 0) H5Tset_cset(mtype, cset);
            char **p = ans_calloc(n ? n : 1, sizeof *p);
            if (!p) {
                rc = ANS_ENOMEM;
                goto done;
            }
            rd = n ? H5Aread(attr, mtype, p) : 0;
            if (rd >= 0) {
                ans_buf tmp = {0};
                for (size_t i = 0; i < n && rc == ANS_OK; i++) {
                    tmp.len = 0;
                    const char *s = p[i] ? p[i] : "";
                    rc = h5_append_text(&tmp, s, strlen(s));
                    if (rc == ANS_OK) {
                        vals[i] = ans_json_new_strn(tmp.len ? (const char *)tmp.data : "", tmp.len);
                        if (!vals[i]) rc = ANS_ENOMEM;
                    }
                }
                ans_buf_free(&tmp);
                if (n) H5_RECLAIM(mtype, space, p);
            }
            free(p);
        } else {
            H5T_str_t pad = H5Tget_strpad(ftype);
            if (mtype >= 0) H5Tset_size(mtype, tsize);
            if (mtype >= 0) H5Tset_cset(mtype, cset);
            if (mtype >= 0) H5Tset_strpad(mtype, pad);
            uint64_t total;
            if (ans_mul_overflow(n, tsize, &total) || total > SIZE_MAX) {
                rc = ans_err(ANS_ECORRUPT, "%s: '%s': attribute '%s' is too large", file, ctx->name,
                             aname);
                goto done;
            }
            buf = ans_malloc(total ? (size_t)total : 1);
            if (!buf) {
                rc = ANS_ENOMEM;
                goto done;
            }
            rd = n ? H5Aread(attr, mtype, buf) : 0;
            if (rd >= 0) {
                ans_buf tmp = {0};
                for (size_t i = 0; i < n && rc == ANS_OK; i++) {
                    const char *s = (const char *)buf + i * tsize;
                    tmp.len = 0;
                    rc = h5_append_text(&tmp, s, h5_fixed_len(s, tsize, pad));
                    if (rc == ANS_OK) {
                        vals[i] = ans_json_new_strn(tmp.len ? (const char *)tmp.data : "", tmp.len);
                        if (!vals[i]) rc = ANS_ENOMEM;
                    }
                }
                ans_buf_free(&tmp);
            }
        }
    } else if (cls == H5T_INTEGER || cls == H5T_FLOAT) {
        int is_int = cls == H5T_INTEGER;
        int is_signed = is_int && H5Tget_sign(ftype) != H5T_SGN_NONE;
        hid_t mem = !is_int ? H5T_NATIVE_DOUBLE : is_signed ? H5T_NATIVE_INT64 : H5T_NATIVE_UINT64;
        buf = ans_malloc((n ? n : 1) * 8);
        if (!buf) {
            rc = ANS_ENOMEM;
            goto done;
        }
        rd = n ? H5Aread(attr, mem, buf) : 0;
        for (size_t i = 0; rd >= 0 && i < n; i++) {
            if (!is_int)
                vals[i] = ans_json_new_double(((double *)buf)[i]);
            else if (is_signed)
                vals[i] = ans_json_new_int(((int64_t *)buf)[i]);
            else if (((uint64_t *)buf)[i] > (uint64_t)INT64_MAX)
                vals[i] = ans_json_new_uint(((uint64_t *)buf)[i]);
            else
                vals[i] = ans_json_new_int((int64_t)((uint64_t *)buf)[i]);
            if (!vals[i]) rc = ANS_ENOMEM;
        }
    } else if (cls == H5T_ENUM) {
        int isbool = h5_is_bool_enum(ftype);
        hid_t super = H5Tget_super(ftype);
        int is_signed = super >= 0 && H5Tget_sign(super) != H5T_SGN_NONE;
        int big = super >= 0 && H5Tget_order(super) == H5T_ORDER_BE;
        if (super >= 0) H5Tclose(super);
        mtype = H5Tcopy(ftype);
        buf = ans_malloc((n ? n : 1) * (tsize ? tsize : 1));
        if (!buf) {
            rc = ANS_ENOMEM;
            goto done;
        }
        rd = n ? H5Aread(attr, mtype, buf) : 0;
        for (size_t i = 0; rd >= 0 && i < n; i++) {
            const uint8_t *p = (const uint8_t *)buf + i * tsize;
            if (isbool > 0)
                vals[i] = ans_json_new_bool(p[0] != 0);
            else if (tsize == 1 || tsize == 2 || tsize == 4 || tsize == 8)
                vals[i] = h5_raw_int_json(p, tsize, is_signed, big);
            else
                vals[i] = ans_json_new_null();
            if (!vals[i]) rc = ANS_ENOMEM;
        }
    } else if (cls == H5T_COMPOUND && h5_is_complex(ftype, &(size_t){0})) {
        mtype = h5_complex_mtype(ftype, H5T_NATIVE_DOUBLE, 8);
        buf = ans_malloc((n ? n : 1) * 16);
        if (!buf) {
            rc = ANS_ENOMEM;
            goto done;
        }
        rd = n ? (mtype < 0 ? -1 : H5Aread(attr, mtype, buf)) : 0;
        for (size_t i = 0; rd >= 0 && i < n && rc == ANS_OK; i++) {
            ans_json *pair = ans_json_new_array();
            if (!pair || ans_json_push(pair, ans_json_new_double(((double *)buf)[2 * i])) < 0 ||
                ans_json_push(pair, ans_json_new_double(((double *)buf)[2 * i + 1])) < 0) {
                ans_json_free(pair);
                rc = ANS_ENOMEM;
            } else {
                vals[i] = pair;
            }
        }
    } else {
        /* references (pre-0.7 anndata categories), opaque, bitfield, other compounds: no JSON. */
        for (size_t i = 0; i < n; i++) {
            vals[i] = ans_json_new_null();
            if (!vals[i]) rc = ANS_ENOMEM;
        }
    }
    if (rd < 0) {
        rc = h5_fail(ANS_ECORRUPT, file, ctx->name, "reading attribute '%s'", aname);
        goto done;
    }
    if (rc < 0) goto done;
    if (rank == 0) {
        *out = vals[0];
        vals[0] = NULL;
    } else {
        size_t pos = 0;
        *out = h5_nest(vals, dims, rank, &pos);
        if (!*out) rc = ANS_ENOMEM;
    }
done:
    if (vals) {
        for (size_t i = 0; i < n; i++)
            ans_json_free(vals[i]);
        free(vals);
    }
    free(buf);
    if (mtype >= 0) H5Tclose(mtype);
    if (ftype >= 0) H5Tclose(ftype);
    if (space >= 0) H5Sclose(space);
    if (rc == ANS_ENOMEM && ans_error_last_code() != ANS_ENOMEM)
        ans_err(ANS_ENOMEM, "%s: '%s': out of memory reading attribute '%s'", file, ctx->name,
                aname);
    return rc;
}

static herr_t h5_attr_cb(hid_t loc, const char *aname, const H5A_info_t *ainfo, void *data)
{
    (void)ainfo;
    h5_attr_ctx *ctx = data;
    hid_t attr = H5Aopen(loc, aname, H5P_DEFAULT);
    if (attr < 0) {
        ctx->rc =
            h5_fail(ANS_ECORRUPT, ctx->c->base.path, ctx->name, "opening attribute '%s'", aname);
        return -1;
    }
    ans_json *val = NULL;
    int rc = h5_attr_value(ctx, attr, aname, &val);
    H5Aclose(attr);
    if (rc == ANS_OK && ans_json_set(ctx->obj, aname, val) < 0) rc = ANS_ENOMEM;
    if (rc < 0) {
        ctx->rc = rc;
        return -1;
    }
    return 0;
}

/* Build the attribute object of `name` (absolute). ANS_ENOTFOUND when no object is there. */
static int h5_attrs_build(h5_container *c, const char *name, ans_json **out)
{
    *out = NULL;
    h5_guard g;
    h5_enter(c->serialize, &g);
    int rc = ANS_OK;
    ans_json *obj = NULL;
    hid_t oid = H5Oopen(c->file, name, H5P_DEFAULT);
    if (oid < 0) {
        int m = h5_path_missing(c->file, name);
        if (m > 0)
            rc = ans_err(ANS_ENOTFOUND, "%s: no group or array '%s'", c->base.path, h5_disp(name));
        else if (m < 0)
            rc = m == ANS_ENOMEM
                     ? m
                     : h5_fail(ANS_ECORRUPT, c->base.path, h5_disp(name), "looking up the object");
        else
            rc = ans_err(ANS_ECORRUPT, "%s: '%s': cannot open the object", c->base.path,
                         h5_disp(name));
        goto done;
    }
    obj = ans_json_new_object();
    if (!obj) {
        rc = ANS_ENOMEM;
        goto done;
    }
    h5_attr_ctx ctx = {c, h5_disp(name), obj, ANS_OK};
    hsize_t idx = 0;
    herr_t it = H5Aiterate2(oid, H5_INDEX_NAME, H5_ITER_INC, &idx, h5_attr_cb, &ctx);
    if (ctx.rc < 0)
        rc = ctx.rc;
    else if (it < 0)
        rc = h5_fail(ANS_ECORRUPT, c->base.path, h5_disp(name), "listing attributes");
done:
    if (oid >= 0) H5Oclose(oid);
    h5_leave(&g);
    if (rc < 0) {
        ans_json_free(obj);
        return rc;
    }
    *out = obj;
    return ANS_OK;
}

/* ---- the attribute cache --------------------------------------------------------------------- */

static uint64_t h5_hash(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 1099511628211ULL;
    return h;
}

/* Slot of `key` in the table keys[0..cap) (cap a power of two, never full), or the empty slot
 * where it would go. */
static size_t h5_cache_slot(char *const *keys, size_t cap, const char *key)
{
    size_t mask = cap - 1;
    size_t i = (size_t)h5_hash(key) & mask;
    while (keys[i] && strcmp(keys[i], key) != 0)
        i = (i + 1) & mask;
    return i;
}

/* Insert (cache_lock held); takes `key` and `val` (freed on failure). */
static int h5_cache_insert(h5_container *c, char *key, ans_json *val)
{
    if (2 * (c->cache_n + 1) > c->cache_cap) {
        size_t ncap = c->cache_cap ? 2 * c->cache_cap : 64;
        char **nk = ans_calloc(ncap, sizeof *nk);
        ans_json **nv = ans_calloc(ncap, sizeof *nv);
        if (!nk || !nv) {
            free(nk);
            free(nv);
            free(key);
            ans_json_free(val);
            return ANS_ENOMEM;
        }
        for (size_t i = 0; i < c->cache_cap; i++) {
            if (!c->cache_keys[i]) continue;
            size_t s = h5_cache_slot(nk, ncap, c->cache_keys[i]);
            nk[s] = c->cache_keys[i];
            nv[s] = c->cache_vals[i];
        }
        free(c->cache_keys);
        free(c->cache_vals);
        c->cache_keys = nk;
        c->cache_vals = nv;
        c->cache_cap = ncap;
    }
    size_t s = h5_cache_slot(c->cache_keys, c->cache_cap, key);
    c->cache_keys[s] = key;
    c->cache_vals[s] = val;
    c->cache_n++;
    return ANS_OK;
}

/* ---- container ops --------------------------------------------------------------------------- */

static int h5_node(ans_container *base, const char *path, ans_node_kind *kind)
{
    h5_container *c = (h5_container *)base;
    *kind = ANS_NODE_NONE;
    char *name = h5_name(path);
    if (!name) return ANS_ENOMEM;
    if (strcmp(name, "/") == 0) {
        free(name);
        *kind = ANS_NODE_GROUP;
        return ANS_OK;
    }
    h5_guard g;
    h5_enter(c->serialize, &g);
    int rc = ANS_OK;
    h5_oinfo_t info;
    if (H5_OINFO_BY_NAME(c->file, name, &info) >= 0) {
        if (info.type == H5O_TYPE_GROUP)
            *kind = ANS_NODE_GROUP;
        else if (info.type == H5O_TYPE_DATASET)
            *kind = ANS_NODE_ARRAY;
    } else {
        int m = h5_path_missing(c->file, name);
        if (m < 0)
            rc = m == ANS_ENOMEM
                     ? m
                     : h5_fail(ANS_ECORRUPT, base->path, h5_disp(name), "looking up the object");
        else if (m == 0 && H5_OINFO_BY_NAME(c->file, name, &info) < 0)
            rc = h5_fail(ANS_ECORRUPT, base->path, h5_disp(name), "reading the object header");
    }
    h5_leave(&g);
    free(name);
    return rc;
}

static int h5_attrs(ans_container *base, const char *path, const ans_json **out)
{
    h5_container *c = (h5_container *)base;
    *out = NULL;
    char *name = h5_name(path);
    if (!name) return ANS_ENOMEM;
    pthread_mutex_lock(&c->cache_lock);
    if (c->cache_cap) {
        size_t s = h5_cache_slot(c->cache_keys, c->cache_cap, name);
        if (c->cache_keys[s]) {
            *out = c->cache_vals[s];
            pthread_mutex_unlock(&c->cache_lock);
            free(name);
            return ANS_OK;
        }
    }
    pthread_mutex_unlock(&c->cache_lock);

    /* Build outside the cache lock (it may take the HDF5 lock); a racing thread may build the same
     * object: the first one stored wins. */
    ans_json *obj = NULL;
    int rc = h5_attrs_build(c, name, &obj);
    if (rc < 0) {
        free(name);
        return rc;
    }
    pthread_mutex_lock(&c->cache_lock);
    size_t s = c->cache_cap ? h5_cache_slot(c->cache_keys, c->cache_cap, name) : 0;
    if (c->cache_cap && c->cache_keys[s]) {
        *out = c->cache_vals[s];
        ans_json_free(obj);
        free(name);
    } else {
        rc = h5_cache_insert(c, name, obj);
        if (rc == ANS_OK) *out = obj;
    }
    pthread_mutex_unlock(&c->cache_lock);
    return rc;
}

typedef struct h5_names {
    char **v;
    size_t n, cap;
    int rc;
} h5_names;

static herr_t h5_link_cb(hid_t g, const char *lname, const h5_linfo_t *info, void *data)
{
    (void)g;
    (void)info;
    h5_names *nm = data;
    if (nm->n == nm->cap) {
        size_t ncap = nm->cap ? 2 * nm->cap : 16;
        char **nv = ans_realloc(nm->v, ncap * sizeof *nv);
        if (!nv) {
            nm->rc = ANS_ENOMEM;
            return -1;
        }
        nm->v = nv;
        nm->cap = ncap;
    }
    nm->v[nm->n] = ans_strdup(lname);
    if (!nm->v[nm->n]) {
        nm->rc = ANS_ENOMEM;
        return -1;
    }
    nm->n++;
    return 0;
}

static int h5_cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int h5_children(ans_container *base, const char *path, char ***names, size_t *n)
{
    h5_container *c = (h5_container *)base;
    *names = NULL;
    *n = 0;
    char *name = h5_name(path);
    if (!name) return ANS_ENOMEM;
    h5_names nm = {NULL, 0, 0, ANS_OK};
    int rc = ANS_OK;
    h5_guard g;
    h5_enter(c->serialize, &g);
    hid_t grp = H5I_INVALID_HID;
    h5_oinfo_t info;
    if (H5_OINFO_BY_NAME(c->file, name, &info) < 0) {
        int m = h5_path_missing(c->file, name);
        if (m > 0)
            rc = ans_err(ANS_ENOTFOUND, "%s: no group '%s'", base->path, h5_disp(name));
        else
            rc = m == ANS_ENOMEM
                     ? m
                     : h5_fail(ANS_ECORRUPT, base->path, h5_disp(name), "looking up the group");
        goto done;
    }
    if (info.type != H5O_TYPE_GROUP) {
        rc = ans_err(ANS_ENOTFOUND, "%s: '%s' is not a group", base->path, h5_disp(name));
        goto done;
    }
    grp = H5Gopen2(c->file, name, H5P_DEFAULT);
    if (grp < 0) {
        rc = h5_fail(ANS_ECORRUPT, base->path, h5_disp(name), "opening the group");
        goto done;
    }
    hsize_t idx = 0;
    herr_t it = H5_LITERATE(grp, &idx, h5_link_cb, &nm);
    if (nm.rc < 0)
        rc = nm.rc;
    else if (it < 0)
        rc = h5_fail(ANS_ECORRUPT, base->path, h5_disp(name), "listing the group");
done:
    if (grp >= 0) H5Gclose(grp);
    h5_leave(&g);
    free(name);
    if (rc < 0) {
        for (size_t i = 0; i < nm.n; i++)
            free(nm.v[i]);
        free(nm.v);
        return rc;
    }
    if (nm.n > 1) qsort(nm.v, nm.n, sizeof *nm.v, h5_cmp_str);
    if (!nm.v) {
        nm.v = ans_malloc(sizeof *nm.v);
        if (!nm.v) return ANS_ENOMEM;
    }
    *names = nm.v;
    *n = nm.n;
    return ANS_OK;
}

static void h5_container_free(ans_container *base)
{
    h5_container *c = (h5_container *)base;
    if (!c) return;
    if (c->file >= 0) {
        h5_guard g;
        h5_enter(c->serialize, &g);
        H5Fclose(c->file);
        h5_leave(&g);
    }
    for (size_t i = 0; i < c->cache_cap; i++) {
        free(c->cache_keys[i]);
        ans_json_free(c->cache_vals[i]);
    }
    free(c->cache_keys);
    free(c->cache_vals);
    pthread_mutex_destroy(&c->cache_lock);
    free(c->base.path);
    free(c);
}

/* ---- arrays ---------------------------------------------------------------------------------- */

static const char *h5_filter_known_name(H5Z_filter_t id)
{
    switch (id) {
    case H5Z_FILTER_DEFLATE:
        return "gzip";
    case H5Z_FILTER_SHUFFLE:
        return "shuffle";
    case H5Z_FILTER_FLETCHER32:
        return "fletcher32";
    case H5Z_FILTER_SZIP:
        return "szip";
    case H5Z_FILTER_NBIT:
        return "nbit";
    case H5Z_FILTER_SCALEOFFSET:
        return "scaleoffset";
    case 307:
        return "bzip2";
    case 32000:
        return "lzf";
    case 32001:
        return "blosc";
    case 32004:
        return "lz4";
    case 32008:
        return "bitshuffle";
    case 32015:
        return "zstd";
    case 32026:
        return "blosc2";
    default:
        return NULL;
    }
}

/* Check the filter pipeline (every filter must be available for decoding) and describe it. */
static int h5_filters(h5_array *a, hid_t dcpl)
{
    a->codecs = ans_json_new_array();
    if (!a->codecs) return ANS_ENOMEM;
    int nf = H5Pget_nfilters(dcpl);
    if (nf < 0) return h5_fail(ANS_ECORRUPT, a->file, a->base.path, "reading the filter pipeline");
    for (int i = 0; i < nf; i++) {
        unsigned flags = 0, cd[16] = {0}, config = 0;
        size_t ncd = sizeof cd / sizeof cd[0];
        char fname[128] = "";
        H5Z_filter_t id =
            H5Pget_filter2(dcpl, (unsigned)i, &flags, &ncd, cd, sizeof fname, fname, &config);
        if (id < 0) return h5_fail(ANS_ECORRUPT, a->file, a->base.path, "reading filter %d", i);
        const char *known = h5_filter_known_name(id);
        const char *label = known ? known : fname[0] ? fname : "unknown";
        htri_t avail = H5Zfilter_avail(id);
        unsigned info = 0;
        if (avail > 0 && H5Zget_filter_info(id, &info) < 0) info = 0;
        if (avail <= 0 || !(info & H5Z_FILTER_CONFIG_DECODE_ENABLED))
            return ans_err(ANS_EUNSUPPORTED, "%s: '%s': unsupported HDF5 filter '%s' (id %d)",
                           a->file, a->base.path, label, (int)id);
        ans_json *item;
        if (id == H5Z_FILTER_DEFLATE && ncd >= 1) {
            char tmp[32];
            snprintf(tmp, sizeof tmp, "gzip(%u)", cd[0]);
            item = ans_json_new_str(tmp);
        } else {
            item = ans_json_new_str(label);
        }
        if (!item || ans_json_push(a->codecs, item) < 0) return ANS_ENOMEM;
    }
    return ANS_OK;
}

static uint64_t h5_next_prime(uint64_t n)
{
    if (n <= 2) return 2;
    if (!(n & 1)) n++;
    for (;; n += 2) {
        int prime = 1;
        for (uint64_t d = 3; d * d <= n; d += 2) {
            if (n % d == 0) {
                prime = 0;
                break;
            }
        }
        if (prime) return n;
    }
}

/* A dataset access property list with a chunk cache sized for `a` (chunked layout). */
static hid_t h5_dapl_for(const h5_array *a, size_t tsize)
{
    uint64_t chunk_bytes = tsize ? tsize : 1, nchunks = 1;
    for (int i = 0; i < a->base.ndim; i++) {
        uint64_t ch = a->chunk[i] ? a->chunk[i] : 1;
        if (ans_mul_overflow(chunk_bytes, ch, &chunk_bytes)) chunk_bytes = UINT64_MAX;
        uint64_t per = a->base.shape[i] / ch + (a->base.shape[i] % ch != 0);
        if (ans_mul_overflow(nchunks, per ? per : 1, &nchunks)) nchunks = UINT64_MAX;
    }
    uint64_t nbytes = H5_CACHE_MIN_BYTES;
    if (chunk_bytes <= H5_CACHE_MAX_BYTES / 4 && 4 * chunk_bytes > nbytes) nbytes = 4 * chunk_bytes;
    if (chunk_bytes > H5_CACHE_MAX_BYTES / 4) nbytes = H5_CACHE_MAX_BYTES;
    uint64_t fit = nbytes / chunk_bytes;
    if (fit < 1) fit = 1;
    /* One hash slot holds one chunk: ~10 slots per chunk that fits (or per chunk of the dataset
     * when it has fewer), within [11, 65521] so small columns stay small. */
    uint64_t want = (nchunks < fit ? nchunks : fit);
    want = want > 6552 ? 65521 : want * 10;
    if (want < 11) want = 11;
    uint64_t slots = h5_next_prime(want);
    hid_t dapl = H5Pcreate(H5P_DATASET_ACCESS);
    if (dapl < 0) return dapl;
    if (H5Pset_chunk_cache(dapl, (size_t)slots, (size_t)nbytes, 0.75) < 0) {
        H5Pclose(dapl);
        return H5I_INVALID_HID;
    }
    return dapl;
}

/* Classify the file type of dataset `a`: dtype, kind and memory type. */
static int h5_array_type(h5_array *a, hid_t ftype, ans_dtype *dtype)
{
    H5T_class_t cls = H5Tget_class(ftype);
    size_t size = H5Tget_size(ftype);
    const char *path = a->base.path;
    a->fsize = size;
    switch (cls) {
    case H5T_INTEGER: {
        ans_dtype d = h5_int_dtype(size, H5Tget_sign(ftype) != H5T_SGN_NONE);
        if (d == ANS_DTYPE_INVALID) break;
        *dtype = d;
        a->mtype = H5Tcopy(h5_native_int(d));
        break;
    }
    case H5T_FLOAT:
        if (size == 4) {
            *dtype = ANS_DTYPE_FLOAT32;
            a->mtype = H5Tcopy(H5T_NATIVE_FLOAT);
        } else if (size == 8) {
            *dtype = ANS_DTYPE_FLOAT64;
            a->mtype = H5Tcopy(H5T_NATIVE_DOUBLE);
        } else if (h5_is_half(ftype)) {
            *dtype = ANS_DTYPE_FLOAT16;
            a->mtype = H5Tcopy(ftype);
            if (a->mtype >= 0 &&
                H5Tset_order(a->mtype, h5_native_little() ? H5T_ORDER_LE : H5T_ORDER_BE) < 0) {
                H5Tclose(a->mtype);
                a->mtype = H5I_INVALID_HID;
            }
        }
        break;
    case H5T_ENUM: {
        int b = h5_is_bool_enum(ftype);
        if (b < 0) return h5_fail(ANS_ECORRUPT, a->file, path, "reading the enum type");
        if (b) {
            *dtype = ANS_DTYPE_BOOL;
            a->kind = H5K_BOOL;
            a->mtype = H5Tcopy(ftype);
            break;
        }
        hid_t super = H5Tget_super(ftype);
        if (super < 0) return h5_fail(ANS_ECORRUPT, a->file, path, "reading the enum type");
        ans_dtype d = h5_int_dtype(H5Tget_size(super), H5Tget_sign(super) != H5T_SGN_NONE);
        int big = H5Tget_order(super) == H5T_ORDER_BE;
        H5Tclose(super);
        if (d == ANS_DTYPE_INVALID) break;
        *dtype = d;
        a->kind = H5K_ENUM;
        a->swap = size > 1 && big == h5_native_little();
        a->mtype = H5Tcopy(ftype);
        break;
    }
    case H5T_COMPOUND: {
        size_t fs = 0;
        if (!h5_is_complex(ftype, &fs)) break;
        *dtype = fs == 4 ? ANS_DTYPE_COMPLEX64 : ANS_DTYPE_COMPLEX128;
        a->mtype = h5_complex_mtype(ftype, fs == 4 ? H5T_NATIVE_FLOAT : H5T_NATIVE_DOUBLE, fs);
        break;
    }
    case H5T_STRING: {
        htri_t vl = H5Tis_variable_str(ftype);
        if (vl < 0) return h5_fail(ANS_ECORRUPT, a->file, path, "reading the string type");
        *dtype = ANS_DTYPE_STRING;
        a->cset = H5Tget_cset(ftype);
        a->mtype = H5Tcopy(H5T_C_S1);
        if (vl) {
            a->kind = H5K_VSTRING;
            if (a->mtype >= 0 &&
                (H5Tset_size(a->mtype, H5T_VARIABLE) < 0 || H5Tset_cset(a->mtype, a->cset) < 0)) {
                H5Tclose(a->mtype);
                a->mtype = H5I_INVALID_HID;
            }
        } else {
            a->kind = H5K_FSTRING;
            a->strpad = H5Tget_strpad(ftype);
            if (size == 0)
                return ans_err(ANS_ECORRUPT, "%s: '%s': zero-size string type", a->file, path);
            if (a->mtype >= 0 &&
                (H5Tset_size(a->mtype, size) < 0 || H5Tset_cset(a->mtype, a->cset) < 0 ||
                 H5Tset_strpad(a->mtype, a->strpad) < 0)) {
                H5Tclose(a->mtype);
                a->mtype = H5I_INVALID_HID;
            }
        }
        break;
    }
    default:
        break;
    }
    if (*dtype == ANS_DTYPE_INVALID) {
        if (cls == H5T_FLOAT)
            return ans_err(ANS_EUNSUPPORTED, "%s: '%s': unsupported HDF5 float type of %zu bytes",
                           a->file, path, size);
        return ans_err(ANS_EUNSUPPORTED, "%s: '%s': unsupported HDF5 %s type of %zu bytes", a->file,
                       path, h5_class_name(cls), size);
    }
    if (a->mtype < 0) return h5_fail(ANS_EGENERIC, a->file, path, "building the memory type");
    return ANS_OK;
}

/* ---- direct chunk reads ---------------------------------------------------------------------- */

/* libhdf5 decodes chunks under its global lock, so H5Dread is serial across the whole process. For
 * chunked datasets whose filters are only deflate and shuffle and whose values are plain integers,
 * IEEE floats, complex pairs of those, or enums, reads bypass it: libhdf5 only looks up and reads
 * the raw chunk (H5Dget_chunk_storage_size, H5Dread_chunk: microseconds), and the inflate,
 * unshuffle, byte swap and copy run outside the lock, one job per chunk on the container's pool.
 * Decoded chunks are kept in a per-array LRU cache with the budget libhdf5's chunk cache would
 * have, so that successive reads in one chunk do not decode it again. */

/* ANS_H5_NO_DIRECT (a build flag for measurements) keeps every read on H5Dread. */
#if H5_VERSION_GE(1, 10, 5) && !defined(ANS_H5_NO_DIRECT)
#define H5_HAVE_DIRECT 1
#else
#define H5_HAVE_DIRECT 0
#endif

/* Byte-swap unit that turns the file representation of `t` into the native one, for types whose
 * bytes are otherwise the memory representation: 0 no swap, > 0 the unit; -1 when not such a type.
 */
static int h5_plain_unit(hid_t t)
{
    H5T_class_t cls = H5Tget_class(t);
    size_t size = H5Tget_size(t);
    int little = h5_native_little();
    if (cls == H5T_INTEGER) {
        if (size != 1 && size != 2 && size != 4 && size != 8) return -1;
        if (H5Tget_precision(t) != 8 * size || H5Tget_offset(t) != 0) return -1;
        H5T_order_t o = H5Tget_order(t);
        if (size == 1) return 0;
        if (o != H5T_ORDER_LE && o != H5T_ORDER_BE) return -1;
        return (o == H5T_ORDER_LE) == little ? 0 : (int)size;
    }
    if (cls == H5T_FLOAT) {
        int be;
        if (H5Tequal(t, H5T_IEEE_F32LE) > 0 || H5Tequal(t, H5T_IEEE_F64LE) > 0)
            be = 0;
        else if (H5Tequal(t, H5T_IEEE_F32BE) > 0 || H5Tequal(t, H5T_IEEE_F64BE) > 0)
            be = 1;
        else if (h5_is_half(t) && H5Tget_precision(t) == 16 && H5Tget_offset(t) == 0 &&
                 H5Tget_norm(t) == H5T_NORM_IMPLIED &&
                 (H5Tget_order(t) == H5T_ORDER_LE || H5Tget_order(t) == H5T_ORDER_BE))
            be = H5Tget_order(t) == H5T_ORDER_BE;
        else
            return -1;
        return be == !little ? 0 : (int)size;
    }
    return -1;
}

/* Decide whether `a` can use direct chunk reads (inside libhdf5; failures just say no). */
static void h5_direct_setup(h5_array *a, hid_t ftype, hid_t dcpl)
{
    a->direct = 0;
    if (!H5_HAVE_DIRECT || a->layout != H5D_CHUNKED || a->base.ndim < 1 || a->null_space) return;
    /* Value layout. */
    int unit;
    if (a->kind == H5K_BOOL || a->kind == H5K_ENUM) {
        unit = 0; /* raw bytes, exactly what H5Dread gives for the copied enum type */
    } else if (a->kind == H5K_NUMBER &&
               (a->base.dtype == ANS_DTYPE_COMPLEX64 || a->base.dtype == ANS_DTYPE_COMPLEX128)) {
        hid_t m0 = H5Tget_member_type(ftype, 0), m1 = H5Tget_member_type(ftype, 1);
        int u0 = m0 >= 0 ? h5_plain_unit(m0) : -1, u1 = m1 >= 0 ? h5_plain_unit(m1) : -1;
        if (m0 >= 0) H5Tclose(m0);
        if (m1 >= 0) H5Tclose(m1);
        if (u0 < 0 || u0 != u1) return;
        unit = u0;
    } else if (a->kind == H5K_NUMBER) {
        unit = h5_plain_unit(ftype);
        if (unit < 0) return;
    } else {
        return; /* strings */
    }
    if (H5Tget_size(ftype) != a->base.itemsize) return;
    /* Filters: deflate and shuffle only; edge chunks filtered like the others. */
    unsigned opts = 0;
    if (H5Pget_chunk_opts(dcpl, &opts) < 0 || (opts & H5D_CHUNK_DONT_FILTER_PARTIAL_CHUNKS)) return;
    int nf = H5Pget_nfilters(dcpl);
    /* Unfiltered chunks need no decoding, so H5Dread loses nothing there; and for them libhdf5
     * 1.10 answers H5Dget_chunk_storage_size from the layout while H5Dread_chunk copies the size in
     * the chunk index, which a damaged file can make larger (a heap overflow found by fuzzing). */
    if (nf <= 0 || nf > H5_DIRECT_MAX_FILTERS) return;
    for (int i = 0; i < nf; i++) {
        unsigned flags = 0, cd[8] = {0}, config = 0;
        size_t ncd = 8;
        H5Z_filter_t id = H5Pget_filter2(dcpl, (unsigned)i, &flags, &ncd, cd, 0, NULL, &config);
        if (id != H5Z_FILTER_DEFLATE && id != H5Z_FILTER_SHUFFLE) return;
        a->filters[i] = id;
        a->shuffle_size[i] = id == H5Z_FILTER_SHUFFLE ? (ncd >= 1 ? cd[0] : 0) : 0;
        if (id == H5Z_FILTER_SHUFFLE && a->shuffle_size[i] == 0) return;
    }
    /* Sizes. */
    uint64_t cb = a->base.itemsize, total = 1;
    for (int i = 0; i < a->base.ndim; i++) {
        if (a->chunk[i] == 0 || ans_mul_overflow(cb, a->chunk[i], &cb)) return;
        uint64_t g = a->base.shape[i] / a->chunk[i] + (a->base.shape[i] % a->chunk[i] != 0);
        a->grid[i] = g;
        if (ans_mul_overflow(total, g ? g : 1, &total)) return;
    }
    if (cb > H5_DIRECT_MAX_CHUNK || total > INT32_MAX) return;
    /* Fill value of unwritten chunks, in the memory type (zero when undefined). */
    memset(a->fill, 0, sizeof a->fill);
    H5D_fill_value_t fv = H5D_FILL_VALUE_UNDEFINED;
    if (H5Pfill_value_defined(dcpl, &fv) >= 0 && fv != H5D_FILL_VALUE_UNDEFINED &&
        a->base.itemsize <= sizeof a->fill) {
        if (H5Pget_fill_value(dcpl, a->mtype, a->fill) < 0) memset(a->fill, 0, sizeof a->fill);
    }
    a->nfilters = nf;
    a->unit = (size_t)unit;
    a->chunk_bytes = cb;
    /* Cache budget as for libhdf5's chunk cache: 64 MiB or 4 chunks, at most all chunks. */
    uint64_t budget = H5_CACHE_MIN_BYTES;
    if (cb <= H5_CACHE_MAX_BYTES / 4 && 4 * cb > budget) budget = 4 * cb;
    uint64_t cap = budget / cb;
    if (cap > total) cap = total;
    if (cap > H5_DIRECT_MAX_ENTRIES) cap = H5_DIRECT_MAX_ENTRIES;
    a->cache.cap = (size_t)(cap ? cap : 1);
    a->direct = 1;
}

static size_t h5_cache_bucket(const h5_cache *k, uint64_t key)
{
    uint64_t h = key * 0x9E3779B97F4A7C15ULL;
    return (size_t)(h >> 20) & (k->nbuckets - 1);
}

/* Entry index of `key` or -1 (mu held). */
static int32_t h5_cache_find(const h5_cache *k, uint64_t key)
{
    if (!k->e) return -1;
    int32_t i = k->buckets[h5_cache_bucket(k, key)];
    while (i >= 0 && k->e[i].key != key)
        i = k->e[i].next;
    return i;
}

/* Allocate the table on first use (mu held). */
static int h5_cache_ready(h5_cache *k)
{
    if (k->e) return ANS_OK;
    size_t nb = 1;
    while (nb < 2 * k->cap)
        nb *= 2;
    k->e = ans_calloc(k->cap, sizeof *k->e);
    k->buckets = ans_malloc(nb * sizeof *k->buckets);
    if (!k->e || !k->buckets) {
        free(k->e);
        free(k->buckets);
        k->e = NULL;
        k->buckets = NULL;
        return ANS_ENOMEM;
    }
    for (size_t i = 0; i < nb; i++)
        k->buckets[i] = -1;
    k->nbuckets = nb;
    k->newest = k->oldest = -1;
    return ANS_OK;
}

static void h5_cache_unhash(h5_cache *k, int32_t i)
{
    int32_t *p = &k->buckets[h5_cache_bucket(k, k->e[i].key)];
    while (*p != i)
        p = &k->e[*p].next;
    *p = k->e[i].next;
}

static void h5_lru_remove(h5_cache *k, int32_t i)
{
    h5_centry *e = &k->e[i];
    if (e->newer >= 0)
        k->e[e->newer].older = e->older;
    else
        k->newest = e->older;
    if (e->older >= 0)
        k->e[e->older].newer = e->newer;
    else
        k->oldest = e->newer;
    e->newer = e->older = -1;
}

static void h5_lru_push(h5_cache *k, int32_t i)
{
    k->e[i].newer = -1;
    k->e[i].older = k->newest;
    if (k->newest >= 0) k->e[k->newest].newer = i;
    k->newest = i;
    if (k->oldest < 0) k->oldest = i;
}

/* Mark entry i as just used (mu held). */
static void h5_cache_touch(h5_cache *k, int32_t i)
{
    if (k->newest == i) return;
    h5_lru_remove(k, i);
    h5_lru_push(k, i);
}

/* Keep `data` as the chunk `key` (mu held): 1 if taken, 0 if not (the caller frees it). */
static int h5_cache_put(h5_cache *k, uint64_t key, uint8_t *data)
{
    if (h5_cache_ready(k) < 0 || h5_cache_find(k, key) >= 0) return 0;
    int32_t i;
    if (k->n < k->cap) {
        i = (int32_t)k->n++;
    } else {
        /* The oldest entry not being copied from (pinned ones are few: one per running job). */
        i = k->oldest;
        while (i >= 0 && k->e[i].pins > 0)
            i = k->e[i].newer;
        if (i < 0) return 0;
        h5_cache_unhash(k, i);
        h5_lru_remove(k, i);
        free(k->e[i].data);
    }
    size_t b = h5_cache_bucket(k, key);
    k->e[i] = (h5_centry){key, data, 0, k->buckets[b], -1, -1};
    k->buckets[b] = i;
    h5_lru_push(k, i);
    return 1;
}

static void h5_cache_free(h5_cache *k)
{
    for (size_t i = 0; i < k->n; i++)
        free(k->e[i].data);
    free(k->e);
    free(k->buckets);
}

/* HDF5's shuffle filter, undone: byte j of element i sits at j * nelem + i; bytes past the last
 * whole element are stored as they are. */
static void h5_unshuffle(const uint8_t *src, uint8_t *dst, size_t n, size_t size)
{
    size_t ne = n / size;
    if (size <= 1 || ne <= 1) {
        memcpy(dst, src, n);
        return;
    }
    for (size_t j = 0; j < size; j++) {
        const uint8_t *s = src + j * ne;
        uint8_t *d = dst + j;
        for (size_t i = 0; i < ne; i++, d += size)
            *d = s[i];
    }
    memcpy(dst + ne * size, src + ne * size, n - ne * size);
}

static void h5_swap_units(uint8_t *p, size_t n, size_t unit)
{
    for (size_t i = 0; i + unit <= n; i += unit) {
        for (size_t j = 0; j < unit / 2; j++) {
            uint8_t t = p[i + j];
            p[i + j] = p[i + unit - 1 - j];
            p[i + unit - 1 - j] = t;
        }
    }
}

/* Decode the chunk whose first element is at `off` into a new chunk_bytes buffer. */
static int h5_decode_chunk(h5_array *a, const hsize_t *off, ans_codec_ctx **ctx, uint8_t **out)
{
    *out = NULL;
    size_t cb = (size_t)a->chunk_bytes;
    unsigned mask = 0;
    haddr_t addr = HADDR_UNDEF;
    hsize_t stored = 0;
    int rc = ANS_OK;
    uint8_t *cur = NULL;
    h5_guard g;
    h5_enter(a->serialize, &g);
    /* H5Dget_chunk_storage_size is a fast index lookup but fails for a chunk never written;
     * H5Dget_chunk_info_by_coord tells that case apart but walks the whole index in 1.10, so it
     * is only asked after a failure. */
    if (H5Dget_chunk_storage_size(a->dset, off, &stored) < 0 || stored == 0) {
        stored = 0;
        if (H5Dget_chunk_info_by_coord(a->dset, off, &mask, &addr, &stored) < 0)
            rc = h5_fail(ANS_ECORRUPT, a->file, a->base.path, "locating the chunk at row %llu",
                         (unsigned long long)off[0]);
        else if (addr != HADDR_UNDEF && stored > 0)
            rc = ans_err(ANS_ECORRUPT, "%s: '%s': the chunk at row %llu cannot be located", a->file,
                         a->base.path, (unsigned long long)off[0]);
        stored = 0;
    }
    if (rc == ANS_OK && stored > 0) {
        /* A stored chunk is never much larger than its data (deflate adds < 0.1%). */
        if (stored > a->file_size || stored > a->chunk_bytes + a->chunk_bytes / 64 + 4096) {
            rc = ans_err(ANS_ECORRUPT,
                         "%s: '%s': the chunk at row %llu claims %llu stored bytes for %llu bytes "
                         "of data (corrupt)",
                         a->file, a->base.path, (unsigned long long)off[0],
                         (unsigned long long)stored, (unsigned long long)a->chunk_bytes);
        } else if (!(cur = ans_malloc((size_t)stored))) {
            rc = ANS_ENOMEM;
        } else {
            uint32_t mask2 = 0;
            if (H5Dread_chunk(a->dset, H5P_DEFAULT, off, &mask2, cur) < 0)
                rc = h5_fail(ANS_ECORRUPT, a->file, a->base.path, "reading the chunk at row %llu",
                             (unsigned long long)off[0]);
            mask = mask2;
        }
    }
    h5_leave(&g);
    if (rc < 0) {
        free(cur);
        return rc;
    }
    if (!cur) {
        /* Never written: the fill value. */
        uint8_t *f = ans_malloc(cb ? cb : 1);
        if (!f) return ANS_ENOMEM;
        size_t is = a->base.itemsize;
        for (size_t i = 0; i + is <= cb; i += is)
            memcpy(f + i, a->fill, is);
        *out = f;
        return ANS_OK;
    }
    size_t len = (size_t)stored;
    for (int i = a->nfilters - 1; i >= 0 && rc == ANS_OK; i--) {
        if (mask & (1u << i)) continue; /* skipped when the chunk was written */
        uint8_t *next = ans_malloc(cb ? cb : 1);
        if (!next) {
            rc = ANS_ENOMEM;
            break;
        }
        if (a->filters[i] == H5Z_FILTER_DEFLATE) {
            size_t got = 0;
            if (!*ctx) rc = ans_codec_ctx_new(ctx);
            if (rc == ANS_OK) rc = ans_zlib_decode(*ctx, cur, len, next, cb, &got, 0);
            if (rc < 0)
                ans_err_prefix("%s: '%s': chunk at row %llu", a->file, a->base.path,
                               (unsigned long long)off[0]);
            len = got;
        } else {
            if (len > cb) {
                rc = ans_err(ANS_ECORRUPT, "%s: '%s': chunk at row %llu: %zu bytes, expected %zu",
                             a->file, a->base.path, (unsigned long long)off[0], len, cb);
            } else {
                h5_unshuffle(cur, next, len, a->shuffle_size[i]);
            }
        }
        free(cur);
        cur = next;
    }
    if (rc == ANS_OK && len != cb)
        rc = ans_err(ANS_ECORRUPT, "%s: '%s': chunk at row %llu decodes to %zu bytes, expected %zu",
                     a->file, a->base.path, (unsigned long long)off[0], len, cb);
    if (rc < 0) {
        free(cur);
        return rc;
    }
    if (a->unit > 1) h5_swap_units(cur, cb, a->unit);
    *out = cur;
    return ANS_OK;
}

/* Rows [first, last) of the decoded chunk at element offsets `off`, to `dst` (the output row of
 * `first`): the part of each row that lies in this chunk. */
static void h5_copy_rows(const h5_array *a, const uint8_t *chunk, const hsize_t *off,
                         uint64_t first, uint64_t last, uint8_t *dst)
{
    int nd = a->base.ndim;
    size_t is = a->base.itemsize;
    uint64_t nrows = last - first;
    if (nd == 1) {
        memcpy(dst, chunk + (first - off[0]) * is, (size_t)(nrows * is));
        return;
    }
    uint64_t cstr[ANS_MAX_NDIM], ostr[ANS_MAX_NDIM], ext[ANS_MAX_NDIM];
    cstr[nd - 1] = is;
    ostr[nd - 1] = is;
    for (int k = nd - 2; k >= 0; k--) {
        cstr[k] = cstr[k + 1] * a->chunk[k + 1];
        ostr[k] = ostr[k + 1] * a->base.shape[k + 1];
    }
    int full = 1;
    uint64_t dbase = 0;
    for (int k = 1; k < nd; k++) {
        ext[k] = a->chunk[k];
        if (off[k] + ext[k] > a->base.shape[k]) ext[k] = a->base.shape[k] - off[k];
        if (off[k] != 0 || a->chunk[k] != a->base.shape[k]) full = 0;
        dbase += off[k] * ostr[k];
    }
    const uint8_t *src = chunk + (first - off[0]) * cstr[0];
    if (full) {
        memcpy(dst, src, (size_t)(nrows * cstr[0]));
        return;
    }
    size_t run = (size_t)(ext[nd - 1] * is);
    uint64_t idx[ANS_MAX_NDIM];
    for (uint64_t r = 0; r < nrows; r++) {
        const uint8_t *s = src + r * cstr[0];
        uint8_t *d = dst + r * ostr[0] + dbase;
        if (nd == 2) {
            memcpy(d, s, run);
            continue;
        }
        /* Odometer over dimensions 1 .. nd-2. */
        for (int k = 1; k < nd - 1; k++)
            idx[k] = 0;
        for (;;) {
            uint64_t so = 0, dof = 0;
            for (int k = 1; k < nd - 1; k++) {
                so += idx[k] * cstr[k];
                dof += idx[k] * ostr[k];
            }
            memcpy(d + dof, s + so, run);
            int k = nd - 2;
            while (k >= 1 && ++idx[k] == ext[k])
                idx[k--] = 0;
            if (k < 1) break;
        }
    }
}

/* A piece: rows [first, last) of one range, all inside the chunk row `crow` (axis 0); they land
 * at output row `out_row`. */
typedef struct h5_piece {
    uint64_t crow, first, last, out_row;
} h5_piece;

typedef struct h5_plan {
    h5_array *a;
    uint8_t *out;
    const h5_piece *pieces;
    const size_t *group; /* group g: pieces [group[g], group[g + 1]), one chunk row */
    uint64_t inner;      /* chunks per chunk row */
    ans_codec_ctx **ctx; /* one per pool slot */
} h5_plan;

static int h5_chunk_job(void *arg, size_t j, int slot)
{
    h5_plan *p = arg;
    h5_array *a = p->a;
    int nd = a->base.ndim;
    size_t gi = (size_t)(j / p->inner);
    uint64_t q = j % p->inner;
    const h5_piece *pc = p->pieces + p->group[gi];
    size_t npc = p->group[gi + 1] - p->group[gi];
    /* Chunk coordinates: axis 0 from the group, the others from q (row-major). */
    hsize_t off[ANS_MAX_NDIM];
    uint64_t key = 0;
    off[0] = pc[0].crow * a->chunk[0];
    for (int k = nd - 1; k >= 1; k--) {
        off[k] = (q % a->grid[k]) * a->chunk[k];
        q /= a->grid[k];
    }
    for (int k = 0; k < nd; k++)
        key = key * a->grid[k] + off[k] / a->chunk[k];

    h5_cache *k = &a->cache;
    uint8_t *data = NULL, *own = NULL;
    pthread_mutex_lock(&k->mu);
    int32_t hit = h5_cache_find(k, key);
    if (hit >= 0) {
        k->e[hit].pins++;
        h5_cache_touch(k, hit);
        data = k->e[hit].data;
    }
    pthread_mutex_unlock(&k->mu);
    if (!data) {
        ANS_TRY(h5_decode_chunk(a, off, &p->ctx[slot], &own));
        data = own;
    }
    for (size_t i = 0; i < npc; i++)
        h5_copy_rows(a, data, off, pc[i].first, pc[i].last,
                     p->out + pc[i].out_row * a->base.row_bytes);
    pthread_mutex_lock(&k->mu);
    if (hit >= 0)
        k->e[hit].pins--;
    else if (h5_cache_put(k, key, own))
        own = NULL;
    pthread_mutex_unlock(&k->mu);
    free(own);
    return ANS_OK;
}

static int h5_cmp_piece(const void *x, const void *y)
{
    const h5_piece *a = x, *b = y;
    if (a->crow != b->crow) return a->crow < b->crow ? -1 : 1;
    return a->out_row < b->out_row ? -1 : a->out_row > b->out_row;
}

/* Read the ranges (checked, total rows > 0) through the direct path. */
static int h5_read_direct(h5_array *a, const ans_range *ranges, size_t nranges, uint8_t *out)
{
    uint64_t c0 = a->chunk[0];
    size_t np = 0;
    for (size_t i = 0; i < nranges; i++) {
        if (!ranges[i].count) continue;
        uint64_t span = (ranges[i].start + ranges[i].count - 1) / c0 - ranges[i].start / c0 + 1;
        if (span > SIZE_MAX - np) return ans_err(ANS_ENOMEM, "too many row ranges");
        np += (size_t)span;
    }
    if (np > SIZE_MAX / sizeof(h5_piece)) return ans_err(ANS_ENOMEM, "too many row ranges");
    h5_piece *pieces = ans_malloc(np * sizeof *pieces);
    if (!pieces) return ANS_ENOMEM;
    size_t n = 0;
    uint64_t orow = 0;
    int sorted = 1;
    for (size_t i = 0; i < nranges; i++) {
        uint64_t s = ranges[i].start, e = s + ranges[i].count;
        for (uint64_t r = s; r < e;) {
            uint64_t crow = r / c0, stop = (crow + 1) * c0;
            if (stop > e) stop = e;
            if (n && crow < pieces[n - 1].crow) sorted = 0;
            pieces[n++] = (h5_piece){crow, r, stop, orow + (r - s)};
            r = stop;
        }
        orow += ranges[i].count;
    }
    if (!sorted) qsort(pieces, n, sizeof *pieces, h5_cmp_piece);
    size_t ng = 0;
    for (size_t i = 0; i < n; i++)
        if (i == 0 || pieces[i].crow != pieces[i - 1].crow) ng++;
    size_t *group = ans_malloc((ng + 1) * sizeof *group);
    uint64_t inner = 1;
    for (int k = 1; k < a->base.ndim; k++)
        inner *= a->grid[k]; /* < 2^31 (checked at open) */
    int slots = ans_pool_size(a->pool);
    ans_codec_ctx **ctx = ans_calloc((size_t)slots, sizeof *ctx);
    int rc = ANS_OK;
    if (!group || !ctx) {
        rc = ANS_ENOMEM;
        goto done;
    }
    ng = 0;
    for (size_t i = 0; i < n; i++)
        if (i == 0 || pieces[i].crow != pieces[i - 1].crow) group[ng++] = i;
    group[ng] = n;
    if (ng > SIZE_MAX / inner) {
        rc = ans_err(ANS_ENOMEM, "too many chunks");
        goto done;
    }
    pthread_mutex_lock(&a->cache.mu);
    rc = h5_cache_ready(&a->cache);
    pthread_mutex_unlock(&a->cache.mu);
    if (rc < 0) goto done;
    h5_plan plan = {a, out, pieces, group, inner, ctx};
    size_t njobs = ng * (size_t)inner;
    if (a->pool && slots > 1 && njobs > 1) {
        rc = ans_pool_for(a->pool, njobs, h5_chunk_job, &plan);
    } else {
        for (size_t j = 0; j < njobs && rc == ANS_OK; j++)
            rc = h5_chunk_job(&plan, j, 0);
    }
done:
    if (ctx)
        for (int i = 0; i < slots; i++)
            ans_codec_ctx_free(ctx[i]);
    free(ctx);
    free(group);
    free(pieces);
    return rc;
}

static const struct ans_array_ops h5_array_ops;

/* Everything of open_array that runs inside libhdf5. */
static int h5_array_setup(h5_container *c, h5_array *a, const char *name)
{
    int rc = ANS_OK;
    hid_t space = H5I_INVALID_HID, ftype = H5I_INVALID_HID, dcpl = H5I_INVALID_HID;
    hid_t dapl = H5I_INVALID_HID;
    h5_oinfo_t info;
    if (H5_OINFO_BY_NAME(c->file, name, &info) < 0) {
        int m = h5_path_missing(c->file, name);
        if (m > 0) return ans_err(ANS_ENOTFOUND, "%s: no array '%s'", c->base.path, h5_disp(name));
        if (m == ANS_ENOMEM) return m;
        return h5_fail(ANS_ECORRUPT, c->base.path, h5_disp(name), "looking up the array");
    }
    if (info.type != H5O_TYPE_DATASET)
        return ans_err(ANS_ENOTFOUND, "%s: '%s' is a %s, not an array", c->base.path, h5_disp(name),
                       info.type == H5O_TYPE_GROUP ? "group" : "named datatype");
    a->dset = H5Dopen2(c->file, name, H5P_DEFAULT);
    if (a->dset < 0)
        return h5_fail(ANS_ECORRUPT, c->base.path, h5_disp(name), "opening the dataset");

    space = H5Dget_space(a->dset);
    ftype = H5Dget_type(a->dset);
    dcpl = H5Dget_create_plist(a->dset);
    if (space < 0 || ftype < 0 || dcpl < 0) {
        rc = h5_fail(ANS_ECORRUPT, c->base.path, h5_disp(name), "reading the dataset header");
        goto done;
    }
    /* Shape. */
    int ndim = 0;
    hsize_t dims[H5S_MAX_RANK];
    uint64_t shape[ANS_MAX_NDIM];
    H5S_class_t scls = H5Sget_simple_extent_type(space);
    if (scls == H5S_NULL) {
        a->null_space = 1;
        ndim = 1;
        shape[0] = 0;
    } else if (scls == H5S_SCALAR) {
        ndim = 0;
    } else if (scls == H5S_SIMPLE) {
        ndim = H5Sget_simple_extent_ndims(space);
        if (ndim < 0 || H5Sget_simple_extent_dims(space, dims, NULL) < 0) {
            rc = h5_fail(ANS_ECORRUPT, c->base.path, h5_disp(name), "reading the dataspace");
            goto done;
        }
        if (ndim > ANS_MAX_NDIM) {
            rc = ans_err(ANS_EUNSUPPORTED, "%s: '%s' has %d dimensions (at most %d supported)",
                         c->base.path, h5_disp(name), ndim, ANS_MAX_NDIM);
            goto done;
        }
        for (int i = 0; i < ndim; i++)
            shape[i] = dims[i];
    } else {
        rc = h5_fail(ANS_ECORRUPT, c->base.path, h5_disp(name), "reading the dataspace");
        goto done;
    }
    /* Type. */
    ans_dtype dtype = ANS_DTYPE_INVALID;
    rc = h5_array_type(a, ftype, &dtype);
    if (rc < 0) goto done;
    rc = ans_array_init_shape(&a->base, ndim, shape, dtype);
    if (rc < 0) goto done;
    a->row_elems = 1;
    for (int i = 1; i < ndim; i++) {
        if (ans_mul_overflow(a->row_elems, shape[i], &a->row_elems)) {
            rc = ans_err(ANS_ECORRUPT, "%s: '%s': shape overflows 64 bits", c->base.path,
                         h5_disp(name));
            goto done;
        }
    }

    /* Layout and filters. */
    a->layout = H5Pget_layout(dcpl);
    if (a->layout == H5D_LAYOUT_ERROR) {
        rc = h5_fail(ANS_ECORRUPT, c->base.path, h5_disp(name), "reading the storage layout");
        goto done;
    }
    if (a->layout == H5D_VIRTUAL) {
        rc = ans_err(ANS_EUNSUPPORTED, "%s: '%s': virtual datasets are not supported", c->base.path,
                     h5_disp(name));
        goto done;
    }
    int next = H5Pget_external_count(dcpl);
    if (next != 0) {
        rc = next < 0
                 ? h5_fail(ANS_ECORRUPT, c->base.path, h5_disp(name), "reading the storage layout")
                 : ans_err(ANS_EUNSUPPORTED,
                           "%s: '%s': datasets stored in external files are not supported",
                           c->base.path, h5_disp(name));
        goto done;
    }
    if (a->layout == H5D_CHUNKED && ndim > 0) {
        if (H5Pget_chunk(dcpl, ndim, a->chunk) != ndim) {
            rc = h5_fail(ANS_ECORRUPT, c->base.path, h5_disp(name), "reading the chunk shape");
            goto done;
        }
    }
    rc = h5_filters(a, dcpl);
    if (rc < 0) goto done;
    a->file_size = c->file_size;
    h5_direct_setup(a, ftype, dcpl);

    /* Contiguous storage must lie inside the file. */
    if (a->layout == H5D_CONTIGUOUS && !a->null_space) {
        haddr_t off = H5Dget_offset(a->dset);
        hsize_t stored = H5Dget_storage_size(a->dset);
        hssize_t np = H5Sget_simple_extent_npoints(space);
        uint64_t need = 0;
        if (np < 0 || ans_mul_overflow((uint64_t)np, a->fsize, &need)) need = UINT64_MAX;
        if (off != HADDR_UNDEF) {
            uint64_t end;
            if (stored < need || ans_add_overflow(off, need, &end) || end > c->file_size) {
                rc = ans_err(ANS_ECORRUPT,
                             "%s: '%s': the dataset claims %llu bytes at offset %llu but the file "
                             "holds %llu bytes (truncated or corrupt)",
                             c->base.path, h5_disp(name), (unsigned long long)need,
                             (unsigned long long)off, (unsigned long long)c->file_size);
                goto done;
            }
        }
    }

    /* Reopen chunked datasets read through H5Dread with a chunk cache sized for them. */
    if (a->layout == H5D_CHUNKED && ndim > 0 && !a->direct) {
        dapl = h5_dapl_for(a, H5Tget_size(ftype));
        if (dapl < 0) {
            rc = h5_fail(ANS_EGENERIC, c->base.path, h5_disp(name), "setting up the chunk cache");
            goto done;
        }
        /* Close first: a second open of a dataset that is still open shares its chunk cache and
         * ignores the new access properties. */
        H5Dclose(a->dset);
        a->dset = H5Dopen2(c->file, name, dapl);
        if (a->dset < 0) {
            rc = h5_fail(ANS_ECORRUPT, c->base.path, h5_disp(name), "opening the dataset");
            goto done;
        }
    }
done:
    if (dapl >= 0) H5Pclose(dapl);
    if (dcpl >= 0) H5Pclose(dcpl);
    if (ftype >= 0) H5Tclose(ftype);
    if (space >= 0) H5Sclose(space);
    return rc;
}

static void h5_array_free(ans_array *base)
{
    h5_array *a = (h5_array *)base;
    if (!a) return;
    if (a->dset >= 0 || a->mtype >= 0) {
        h5_guard g;
        h5_enter(a->serialize, &g);
        if (a->mtype >= 0) H5Tclose(a->mtype);
        if (a->dset >= 0) H5Dclose(a->dset);
        h5_leave(&g);
    }
    h5_cache_free(&a->cache);
    if (a->cache_lock_ready) pthread_mutex_destroy(&a->cache.mu);
    ans_json_free(a->codecs);
    free(a->file);
    free(a->base.path);
    free(a);
}

static int h5_open_array(ans_container *base, const char *path, ans_array **out)
{
    h5_container *c = (h5_container *)base;
    *out = NULL;
    h5_array *a = ans_calloc(1, sizeof *a);
    if (!a) return ANS_ENOMEM;
    a->base.ops = &h5_array_ops;
    a->base.container = base;
    a->dset = H5I_INVALID_HID;
    a->mtype = H5I_INVALID_HID;
    a->serialize = c->serialize;
    a->pool = base->pool;
    if (pthread_mutex_init(&a->cache.mu, NULL) != 0) {
        free(a);
        return ans_err(ANS_EGENERIC, "%s: cannot create a mutex", base->path);
    }
    a->cache_lock_ready = 1;
    a->file = ans_strdup(base->path);
    char *name = h5_name(path);
    /* The array's path as the container names it: without the leading '/'. */
    a->base.path = name ? ans_strdup(name[1] ? name + 1 : "") : NULL;
    if (!a->file || !name || !a->base.path) {
        free(name);
        h5_array_free(&a->base);
        return ANS_ENOMEM;
    }
    h5_guard g;
    h5_enter(c->serialize, &g);
    int rc = h5_array_setup(c, a, name);
    h5_leave(&g);
    free(name);
    if (rc < 0) {
        h5_array_free(&a->base);
        return rc;
    }
    *out = &a->base;
    return ANS_OK;
}

/* ---- array reads ----------------------------------------------------------------------------- */

static int h5_cmp_range(const void *x, const void *y)
{
    const ans_range *a = x, *b = y;
    if (a->start != b->start) return a->start < b->start ? -1 : 1;
    return 0;
}

/* Post-process values read raw (bool normalisation, enum byte order). */
static void h5_fixup(const h5_array *a, void *buf, uint64_t nvals)
{
    if (a->kind == H5K_BOOL) {
        uint8_t *p = buf;
        for (uint64_t i = 0; i < nvals; i++)
            p[i] = p[i] != 0;
    } else if (a->kind == H5K_ENUM && a->swap) {
        uint8_t *p = buf;
        size_t s = a->base.itemsize;
        for (uint64_t i = 0; i < nvals; i++, p += s) {
            for (size_t j = 0; j < s / 2; j++) {
                uint8_t t = p[j];
                p[j] = p[s - 1 - j];
                p[s - 1 - j] = t;
            }
        }
    }
}

/* Select rows [start, start + count) of the file space (all of the other dimensions). */
static herr_t h5_select_rows(const h5_array *a, hid_t fspace, H5S_seloper_t op, uint64_t start,
                             uint64_t count)
{
    hsize_t off[ANS_MAX_NDIM] = {0}, cnt[ANS_MAX_NDIM];
    off[0] = start;
    cnt[0] = count;
    for (int i = 1; i < a->base.ndim; i++)
        cnt[i] = a->base.shape[i];
    return H5Sselect_hyperslab(fspace, op, off, NULL, cnt, NULL);
}

/* Read the sorted, disjoint runs into `buf` (rows of the runs back to back). Inside libhdf5. */
static int h5_read_runs(h5_array *a, const ans_range *runs, size_t nruns, uint8_t *buf)
{
    int rc = ANS_OK;
    hid_t fspace = H5I_INVALID_HID, mspace = H5I_INVALID_HID;
    hsize_t dims[ANS_MAX_NDIM];
    for (int i = 0; i < a->base.ndim; i++)
        dims[i] = a->base.shape[i];
    fspace = H5Screate_simple(a->base.ndim, dims, NULL);
    hsize_t one = 1;
    mspace = H5Screate_simple(1, &one, NULL);
    if (fspace < 0 || mspace < 0) {
        rc = h5_fail(ANS_EGENERIC, a->file, a->base.path, "creating dataspaces");
        goto done;
    }
#if defined(ANS_H5_COMBINED_SELECTION)
    /* Alternative kept for measurements: one OR-combined selection, one H5Dread. */
    {
        uint64_t total = 0;
        for (size_t i = 0; i < nruns; i++) {
            if (h5_select_rows(a, fspace, i ? H5S_SELECT_OR : H5S_SELECT_SET, runs[i].start,
                               runs[i].count) < 0) {
                rc = h5_fail(ANS_EGENERIC, a->file, a->base.path, "selecting rows");
                goto done;
            }
            total += runs[i].count;
        }
        hsize_t n = (hsize_t)(total * a->row_elems);
        if (H5Sset_extent_simple(mspace, 1, &n, NULL) < 0 ||
            H5Dread(a->dset, a->mtype, mspace, fspace, H5P_DEFAULT, buf) < 0) {
            rc = h5_fail(ANS_ECORRUPT, a->file, a->base.path, "reading %zu row ranges", nruns);
            goto done;
        }
    }
#else
    for (size_t i = 0; i < nruns; i++) {
        hsize_t n = (hsize_t)(runs[i].count * a->row_elems);
        if (h5_select_rows(a, fspace, H5S_SELECT_SET, runs[i].start, runs[i].count) < 0 ||
            H5Sset_extent_simple(mspace, 1, &n, NULL) < 0) {
            rc = h5_fail(ANS_EGENERIC, a->file, a->base.path, "selecting rows");
            goto done;
        }
        if (H5Dread(a->dset, a->mtype, mspace, fspace, H5P_DEFAULT, buf) < 0) {
            rc = h5_fail(ANS_ECORRUPT, a->file, a->base.path, "reading rows [%llu, %llu)",
                         (unsigned long long)runs[i].start,
                         (unsigned long long)(runs[i].start + runs[i].count));
            goto done;
        }
        buf += runs[i].count * a->base.row_bytes;
    }
#endif
done:
    if (mspace >= 0) H5Sclose(mspace);
    if (fspace >= 0) H5Sclose(fspace);
    return rc;
}

static int h5_read(ans_array *base, const ans_range *ranges, size_t nranges, void *out)
{
    h5_array *a = (h5_array *)base;
    if (a->base.dtype == ANS_DTYPE_STRING)
        return ans_err(ANS_EINVAL, "%s: '%s' holds strings (use read_strings)", a->file,
                       a->base.path);
    uint64_t total = 0;
    ANS_TRY(ans_array_check_ranges(base, ranges, nranges, &total));
    if (total == 0 || a->base.row_bytes == 0) return ANS_OK;
    int rc = ANS_OK;
    uint8_t *dst = out;

    if (a->base.ndim == 0) {
        /* One value; every range is {0, 1}. */
        h5_guard g;
        h5_enter(a->serialize, &g);
        if (H5Dread(a->dset, a->mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, dst) < 0)
            rc = h5_fail(ANS_ECORRUPT, a->file, a->base.path, "reading the scalar");
        h5_leave(&g);
        if (rc < 0) return rc;
        h5_fixup(a, dst, 1);
        for (uint64_t i = 1; i < total; i++)
            memcpy(dst + i * a->base.row_bytes, dst, a->base.row_bytes);
        return ANS_OK;
    }

    if (a->direct) {
        rc = h5_read_direct(a, ranges, nranges, dst);
        if (rc == ANS_OK) h5_fixup(a, dst, total * a->row_elems);
        return rc;
    }

    /* Merge: sorted runs with overlaps and neighbours joined. When the ranges come sorted and
     * disjoint, the runs' rows are exactly the output and are read in place. */
    int in_place = 1;
    for (size_t i = 1; i < nranges && in_place; i++)
        if (ranges[i].start < ranges[i - 1].start + ranges[i - 1].count) in_place = 0;
    ans_range *runs = ans_malloc((nranges ? nranges : 1) * sizeof *runs);
    if (!runs) return ANS_ENOMEM;
    size_t nruns = 0;
    for (size_t i = 0; i < nranges; i++)
        if (ranges[i].count) runs[nruns++] = ranges[i];
    if (!in_place) qsort(runs, nruns, sizeof *runs, h5_cmp_range);
    size_t m = 0;
    uint64_t union_rows = 0;
    for (size_t i = 0; i < nruns; i++) {
        if (m && runs[i].start <= runs[m - 1].start + runs[m - 1].count) {
            uint64_t end = runs[i].start + runs[i].count;
            if (end > runs[m - 1].start + runs[m - 1].count)
                runs[m - 1].count = end - runs[m - 1].start;
        } else {
            runs[m++] = runs[i];
        }
    }
    nruns = m;
    for (size_t i = 0; i < nruns; i++)
        union_rows += runs[i].count;

    uint8_t *scratch = NULL;
    if (!in_place) {
        scratch = ans_malloc((size_t)(union_rows * a->base.row_bytes));
        if (!scratch) {
            free(runs);
            return ANS_ENOMEM;
        }
    }
    h5_guard g;
    h5_enter(a->serialize, &g);
    rc = h5_read_runs(a, runs, nruns, in_place ? dst : scratch);
    h5_leave(&g);
    if (rc == ANS_OK && !in_place) {
        /* Copy each range out of the run holding it (binary search on the run starts). */
        uint64_t *run_off = ans_malloc(nruns * sizeof *run_off);
        if (!run_off) {
            rc = ANS_ENOMEM;
        } else {
            uint64_t acc = 0;
            for (size_t i = 0; i < nruns; i++) {
                run_off[i] = acc;
                acc += runs[i].count;
            }
            uint8_t *o = dst;
            for (size_t i = 0; i < nranges; i++) {
                if (!ranges[i].count) continue;
                size_t lo = 0, hi = nruns;
                while (hi - lo > 1) {
                    size_t mid = lo + (hi - lo) / 2;
                    if (runs[mid].start <= ranges[i].start)
                        lo = mid;
                    else
                        hi = mid;
                }
                uint64_t row = run_off[lo] + (ranges[i].start - runs[lo].start);
                size_t nb = (size_t)(ranges[i].count * a->base.row_bytes);
                memcpy(o, scratch + row * a->base.row_bytes, nb);
                o += nb;
            }
            free(run_off);
        }
    }
    free(scratch);
    free(runs);
    if (rc == ANS_OK) h5_fixup(a, dst, total * a->row_elems);
    return rc;
}

/* Read items [start, start + n) of a string array into `data` (inside libhdf5). */
static int h5_read_string_batch(h5_array *a, hid_t fspace, hid_t mspace, uint64_t start, uint64_t n,
                                void *tmp, uint64_t *offsets, ans_buf *data)
{
    if (a->base.ndim == 1) {
        hsize_t off = start, cnt = n;
        if (H5Sselect_hyperslab(fspace, H5S_SELECT_SET, &off, NULL, &cnt, NULL) < 0 ||
            H5Sset_extent_simple(mspace, 1, &cnt, NULL) < 0)
            return h5_fail(ANS_EGENERIC, a->file, a->base.path, "selecting items");
    }
    if (H5Dread(a->dset, a->mtype, mspace, fspace, H5P_DEFAULT, tmp) < 0)
        return h5_fail(ANS_ECORRUPT, a->file, a->base.path, "reading strings [%llu, %llu)",
                       (unsigned long long)start, (unsigned long long)(start + n));
    int rc = ANS_OK;
    for (uint64_t i = 0; i < n && rc == ANS_OK; i++) {
        if (a->kind == H5K_VSTRING) {
            const char *s = ((char **)tmp)[i];
            rc = h5_append_text(data, s ? s : "", s ? strlen(s) : 0);
        } else {
            const char *s = (const char *)tmp + i * a->fsize;
            rc = h5_append_text(data, s, h5_fixed_len(s, a->fsize, a->strpad));
        }
        offsets[i + 1] = data->len;
    }
    if (a->kind == H5K_VSTRING) H5_RECLAIM(a->mtype, mspace, tmp);
    return rc;
}

static int h5_read_strings(ans_array *base, uint64_t start, uint64_t count, uint64_t *offsets,
                           ans_buf *data)
{
    h5_array *a = (h5_array *)base;
    if (a->base.dtype != ANS_DTYPE_STRING)
        return ans_err(ANS_EINVAL, "%s: '%s' does not hold strings", a->file, a->base.path);
    if (a->base.ndim > 1)
        return ans_err(ANS_EUNSUPPORTED, "%s: '%s': string arrays of %d dimensions", a->file,
                       a->base.path, a->base.ndim);
    ans_range r = {start, count};
    ANS_TRY(ans_array_check_ranges(base, &r, 1, NULL));
    offsets[0] = data->len;
    if (count == 0) return ANS_OK;
    uint64_t batch = count < H5_STRING_BATCH ? count : H5_STRING_BATCH;
    size_t item = a->kind == H5K_VSTRING ? sizeof(char *) : a->fsize;
    void *tmp = ans_calloc((size_t)batch, item);
    if (!tmp) return ANS_ENOMEM;
    int rc = ANS_OK;
    h5_guard g;
    h5_enter(a->serialize, &g);
    hid_t fspace = H5I_INVALID_HID, mspace = H5I_INVALID_HID;
    if (a->base.ndim == 0) {
        fspace = H5Screate(H5S_SCALAR);
        mspace = H5Screate(H5S_SCALAR);
    } else {
        hsize_t dim = a->base.shape[0], one = 1;
        fspace = H5Screate_simple(1, &dim, NULL);
        mspace = H5Screate_simple(1, &one, NULL);
    }
    if (fspace < 0 || mspace < 0)
        rc = h5_fail(ANS_EGENERIC, a->file, a->base.path, "creating dataspaces");
    for (uint64_t done = 0; rc == ANS_OK && done < count; done += batch) {
        uint64_t n = count - done < batch ? count - done : batch;
        rc = h5_read_string_batch(a, fspace, mspace, start + done, n, tmp, offsets + done, data);
    }
    if (mspace >= 0) H5Sclose(mspace);
    if (fspace >= 0) H5Sclose(fspace);
    h5_leave(&g);
    free(tmp);
    return rc;
}

/* Set obj[key] = val, where val NULL means the builder ran out of memory. */
static int h5_set(ans_json *obj, const char *key, ans_json *val)
{
    if (!val) return ans_err(ANS_ENOMEM, "out of memory describing an HDF5 array");
    return ans_json_set(obj, key, val);
}

static int h5_describe(ans_array *base, ans_json *obj)
{
    h5_array *a = (h5_array *)base;
    h5_guard g;
    h5_enter(a->serialize, &g);
    hsize_t stored = H5Dget_storage_size(a->dset);
    h5_leave(&g);

    ans_json *chunks = NULL;
    if (a->layout == H5D_CHUNKED && a->base.ndim > 0) {
        chunks = ans_json_new_array();
        for (int i = 0; chunks && i < a->base.ndim; i++) {
            ans_json *v = ans_json_new_uint(a->chunk[i]);
            if (!v || ans_json_push(chunks, v) < 0) {
                ans_json_free(chunks);
                chunks = NULL;
            }
        }
    } else {
        chunks = ans_json_new_null();
    }
    ANS_TRY(h5_set(obj, "chunks", chunks));
    ANS_TRY(h5_set(obj, "codecs", ans_json_clone(a->codecs)));
    ANS_TRY(h5_set(obj, "stored_bytes", ans_json_new_uint(stored)));
    ans_json *nbytes;
    if (a->kind == H5K_VSTRING) {
        nbytes = ans_json_new_null();
    } else {
        /* Values times their size in memory (fixed strings: bytes per item in the file). */
        uint64_t n = 1, nb;
        for (int i = 0; i < a->base.ndim; i++)
            n *= a->base.shape[i];
        uint64_t per = a->kind == H5K_FSTRING ? a->fsize : a->base.itemsize;
        if (ans_mul_overflow(n, per, &nb)) nb = UINT64_MAX;
        nbytes = ans_json_new_uint(nb);
    }
    ANS_TRY(h5_set(obj, "nbytes", nbytes));
    const char *layout = a->layout == H5D_CHUNKED   ? "chunked"
                         : a->layout == H5D_COMPACT ? "compact"
                                                    : "contiguous";
    return h5_set(obj, "layout", ans_json_new_str(layout));
}

static const struct ans_array_ops h5_array_ops = {
    h5_read,
    h5_read_strings,
    h5_describe,
    h5_array_free,
    NULL, /* read_segs: the generic read-then-copy path */
    NULL, /* advise: libhdf5 does its own I/O */
};

static const struct ans_container_ops h5_container_ops = {
    h5_node, h5_attrs, h5_children, h5_open_array, h5_container_free,
};

/* ---- open and probe -------------------------------------------------------------------------- */

static const unsigned char h5_signature[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};

/* Offset of the HDF5 signature (0, 512, 1024, 2048, ...) in the open file, or -1. */
static long long h5_find_signature(int fd, uint64_t size)
{
    for (uint64_t off = 0; off + 8 <= size; off = off ? off * 2 : 512) {
        unsigned char buf[8];
        ssize_t got = pread(fd, buf, 8, (off_t)off);
        if (got != 8) return -1;
        if (memcmp(buf, h5_signature, 8) == 0) return (long long)off;
    }
    return -1;
}

int ans_h5_probe(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    struct stat st;
    int ok = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) &&
             h5_find_signature(fd, (uint64_t)st.st_size) >= 0;
    close(fd);
    return ok;
}

int ans_h5_open(ans_container **out, const char *path, ans_pool *pool)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        char msg[128];
        if (strerror_r(e, msg, sizeof msg) != 0) snprintf(msg, sizeof msg, "errno %d", e);
        if (e == ENOENT || e == ENOTDIR) return ans_err(ANS_ENOTFOUND, "%s: no such file", path);
        return ans_err(ANS_EIO, "%s: cannot open: %s", path, msg);
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return ans_err(ANS_ECORRUPT, "%s: not an HDF5 file (not a regular file)", path);
    }
    long long sig = h5_find_signature(fd, (uint64_t)st.st_size);
    close(fd);
    if (sig < 0) return ans_err(ANS_ECORRUPT, "%s: not an HDF5 file (no HDF5 signature)", path);

    h5_container *c = ans_calloc(1, sizeof *c);
    if (!c) return ANS_ENOMEM;
    c->base.ops = &h5_container_ops;
    c->base.kind_name = "h5ad";
    c->base.pool = pool;
    c->file = H5I_INVALID_HID;
    c->file_size = (uint64_t)st.st_size;
    if (pthread_mutex_init(&c->cache_lock, NULL) != 0) {
        free(c);
        return ans_err(ANS_EGENERIC, "%s: cannot create a mutex", path);
    }
    c->base.path = ans_strdup(path);
    if (!c->base.path) {
        h5_container_free(&c->base);
        return ANS_ENOMEM;
    }
    c->serialize = h5_library_serialize();

    int rc = ANS_OK;
    h5_guard g;
    h5_enter(c->serialize, &g);
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (fapl < 0) {
        rc = h5_fail(ANS_EGENERIC, path, NULL, "creating a file access property list");
    } else {
#if H5_VERSION_GE(1, 10, 7)
        /* Take the shared read lock where the file system supports locks; go on where it does
         * not (network file systems). */
        H5Pset_file_locking(fapl, 1, 1);
#endif
        c->file = H5Fopen(path, H5F_ACC_RDONLY, fapl);
        if (c->file < 0) rc = h5_fail(ANS_ECORRUPT, path, NULL, "cannot open as HDF5");
        H5Pclose(fapl);
    }
    h5_leave(&g);
    if (rc < 0) {
        h5_container_free(&c->base);
        return rc;
    }
    *out = &c->base;
    return ANS_OK;
}
