/* fuzz_common.h - helpers shared by the fuzz targets (fuzz/targets/NAME.c).
 *
 * Every target defines LLVMFuzzerTestOneInput. It is linked either with libFuzzer
 * (fuzz/run.sh: clang -fsanitize=fuzzer,address,undefined) or with fuzz/replay.c, a plain main()
 * that feeds it every file of the directories it is given (the meson option `fuzz`, run by
 * tools/test.sh and tools/sanitize.sh over fuzz/corpus and fuzz/regressions).
 *
 * Rules for targets: deterministic, no output, no global state that changes between inputs (apart
 * from caches that are set up once), never abort on a clean ANS_E* failure. FUZZ_CHECK aborts on a
 * broken invariant (an oracle), which libFuzzer reports like a crash. */
#ifndef ANS_FUZZ_COMMON_H
#define ANS_FUZZ_COMMON_H

#include "annstream.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_CHECK(cond)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: fuzz invariant failed: %s\n", __FILE__, __LINE__, #cond);     \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* Read every byte of a buffer so that ASan sees a buffer shorter than claimed. */
static inline void fuzz_touch(const void *p, size_t n)
{
    const volatile unsigned char *b = (const volatile unsigned char *)p;
    unsigned char acc = 0;
    for (size_t i = 0; i < n; i++) acc ^= b[i];
    (void)acc;
}

static inline uint32_t fuzz_u32le(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t fuzz_u64le(const uint8_t *p)
{
    return (uint64_t)fuzz_u32le(p) | (uint64_t)fuzz_u32le(p + 4) << 32;
}

/* ---- temporary files ------------------------------------------------------------------------ */

static char fuzz_tmp_root[512];

static inline int fuzz_rm_rf(const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0) return errno == ENOENT ? 0 : -1;
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(path);
        if (!d) return -1;
        struct dirent *de;
        char sub[4096];
        while ((de = readdir(d))) {
            if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
            if ((size_t)snprintf(sub, sizeof sub, "%s/%s", path, de->d_name) >= sizeof sub) continue;
            fuzz_rm_rf(sub);
        }
        closedir(d);
        return rmdir(path);
    }
    return unlink(path);
}

static inline void fuzz_tmp_cleanup(void)
{
    if (fuzz_tmp_root[0]) fuzz_rm_rf(fuzz_tmp_root);
}

/* A private directory for this process (on /dev/shm when available), removed at exit. */
static inline const char *fuzz_tmp_dir(void)
{
    if (fuzz_tmp_root[0]) return fuzz_tmp_root;
    const char *base = getenv("ANS_FUZZ_TMPDIR");
    struct stat st;
    if (!base) base = stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode) && access("/dev/shm", W_OK) == 0
                          ? "/dev/shm"
                          : (getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    snprintf(fuzz_tmp_root, sizeof fuzz_tmp_root, "%s/annstream-fuzz-XXXXXX", base);
    if (!mkdtemp(fuzz_tmp_root)) {
        perror("mkdtemp");
        abort();
    }
    atexit(fuzz_tmp_cleanup);
    return fuzz_tmp_root;
}

static inline int fuzz_write_file(const char *path, const void *data, size_t n)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) return -1;
    const uint8_t *p = (const uint8_t *)data;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w <= 0) {
            close(fd);
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return close(fd);
}

/* mkdir -p of the parent directories of `path` (which lies under an existing directory). */
static inline int fuzz_mkdirs_for(const char *path, size_t root_len)
{
    char buf[4096];
    size_t n = strlen(path);
    if (n >= sizeof buf) return -1;
    memcpy(buf, path, n + 1);
    for (size_t i = root_len + 1; i < n; i++) {
        if (buf[i] != '/') continue;
        buf[i] = 0;
        if (mkdir(buf, 0700) != 0 && errno != EEXIST) return -1;
        buf[i] = '/';
    }
    return 0;
}

/* ---- a small archive of files ------------------------------------------------------------------
 *
 * Format (text friendly, so that libFuzzer's mutations keep most of the structure): a sequence of
 * records, each "%%NAME\n" followed by the file's bytes up to the next "\n%%" or the end of the
 * input. NAME is a relative '/'-separated path of [A-Za-z0-9._-] components ("." and ".." are
 * refused); bad names, empty names and bytes before the first record are skipped. At most
 * FUZZ_ARCHIVE_MAX_FILES files. fuzz/make_corpus.py writes seeds in this format. */
#define FUZZ_ARCHIVE_MAX_FILES 256

static inline int fuzz_name_ok(const uint8_t *s, size_t n)
{
    if (n == 0 || n > 200 || s[0] == '/' || s[n - 1] == '/') return 0;
    size_t comp = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i == n || s[i] == '/') {
            size_t len = i - comp;
            if (len == 0) return 0;
            if (len == 1 && s[comp] == '.') return 0;
            if (len == 2 && s[comp] == '.' && s[comp + 1] == '.') return 0;
            comp = i + 1;
            continue;
        }
        uint8_t c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

static inline const uint8_t *fuzz_memmem(const uint8_t *h, size_t hn, const char *needle, size_t nn)
{
    if (hn < nn) return NULL;
    for (size_t i = 0; i + nn <= hn; i++)
        if (h[i] == (uint8_t)needle[0] && !memcmp(h + i, needle, nn)) return h + i;
    return NULL;
}

/* Unpack the archive into the directory `dir` (which must exist and be empty). Returns the number
 * of files written. A later record with the same name replaces the earlier one; a record whose
 * name is taken by a directory (or whose parent is a file) is skipped. */
static inline int fuzz_unpack_archive(const uint8_t *data, size_t size, const char *dir)
{
    const uint8_t *p = data, *end = data + size;
    int nfiles = 0;
    size_t dlen = strlen(dir);
    if (size < 2 || memcmp(p, "%%", 2) != 0) {
        const uint8_t *q = fuzz_memmem(p, size, "\n%%", 3);
        if (!q) return 0;
        p = q + 1;
    }
    while (p < end && nfiles < FUZZ_ARCHIVE_MAX_FILES) {
        /* p points at "%%" */
        const uint8_t *name = p + 2;
        const uint8_t *nl = memchr(name, '\n', (size_t)(end - name));
        if (!nl) break;
        const uint8_t *body = nl + 1;
        const uint8_t *next = fuzz_memmem(body, (size_t)(end - body), "\n%%", 3);
        const uint8_t *body_end = next ? next : end;
        size_t nlen = (size_t)(nl - name);
        if (fuzz_name_ok(name, nlen)) {
            char path[4096];
            if (dlen + 1 + nlen < sizeof path) {
                memcpy(path, dir, dlen);
                path[dlen] = '/';
                memcpy(path + dlen + 1, name, nlen);
                path[dlen + 1 + nlen] = 0;
                if (fuzz_mkdirs_for(path, dlen) == 0 &&
                    fuzz_write_file(path, body, (size_t)(body_end - body)) == 0)
                    nfiles++;
            }
        }
        if (!next) break;
        p = next + 1;
    }
    return nfiles;
}

/* ---- reading a whole store through the public API --------------------------------------------- */

/* Stores whose metadata claims more rows or columns than this are opened and described but not
 * read: reading them only measures how fast fill values can be written. */
#define FUZZ_MAX_AXIS ((uint64_t)1 << 16)
/* Largest output of one row read attempted. */
#define FUZZ_MAX_READ_BYTES ((uint64_t)16 << 20)

static inline void fuzz_check_rows(const ans_rows *r, uint64_t nrows, const ans_element *e)
{
    FUZZ_CHECK(ans_rows_ndim(r) == ans_element_ndim(e));
    FUZZ_CHECK(ans_rows_shape(r)[0] == nrows);
    ans_dtype dt = ans_rows_dtype(r);
    size_t isz = ans_dtype_size(dt);
    if (ans_rows_format(r) == ANS_FORMAT_DENSE) {
        uint64_t n = isz;
        for (int d = 0; d < ans_rows_ndim(r); d++) n *= ans_rows_shape(r)[d];
        fuzz_touch(ans_rows_data(r), (size_t)n);
        return;
    }
    FUZZ_CHECK(ans_rows_format(r) == ANS_FORMAT_CSR);
    uint64_t nnz = ans_rows_nnz(r);
    uint64_t ncols = ans_element_shape(e)[1];
    fuzz_touch(ans_rows_data(r), (size_t)(nnz * isz));
    int wide = ans_rows_index_dtype(r) == ANS_DTYPE_INT64;
    FUZZ_CHECK(wide || ans_rows_index_dtype(r) == ANS_DTYPE_INT32);
    const void *ip = ans_rows_indptr(r), *ix = ans_rows_indices(r);
    uint64_t prev = 0;
    for (uint64_t i = 0; i <= nrows; i++) {
        uint64_t v = wide ? (uint64_t)((const int64_t *)ip)[i] : (uint64_t)(uint32_t)((const int32_t *)ip)[i];
        if (i == 0) FUZZ_CHECK(v == 0);
        FUZZ_CHECK(v >= prev);
        prev = v;
    }
    FUZZ_CHECK(prev == nnz);
    for (uint64_t k = 0; k < nnz; k++) {
        int64_t c = wide ? ((const int64_t *)ix)[k] : ((const int32_t *)ix)[k];
        FUZZ_CHECK(c >= 0 && (uint64_t)c < ncols);
    }
}

static inline void fuzz_read_element(ans_store *s, const char *key)
{
    ans_element *e = NULL;
    if (ans_store_element(&e, s, key) != ANS_OK) return;
    int nd = ans_element_ndim(e);
    const uint64_t *shape = ans_element_shape(e);
    FUZZ_CHECK(nd >= 1);
    (void)ans_element_key(e);
    uint64_t n = shape[0];
    uint64_t row = ans_dtype_size(ans_element_dtype(e));
    int too_big = 0;
    for (int d = 1; d < nd; d++) {
        if (shape[d] > FUZZ_MAX_AXIS || (row && shape[d] > FUZZ_MAX_READ_BYTES / row)) too_big = 1;
        else row *= shape[d];
    }
    if (ans_element_format(e) != ANS_FORMAT_DENSE) row = 16; /* bounded by the stored values */
    if (!too_big && n > 0 && n <= FUZZ_MAX_AXIS) {
        uint64_t take = n < 8 ? n : 8;
        if (row * take <= FUZZ_MAX_READ_BYTES) {
            ans_rows *r = NULL;
            if (ans_element_read_range(e, 0, take, &r) == ANS_OK) fuzz_check_rows(r, take, e);
            ans_rows_free(r);
            int64_t rows[5] = {(int64_t)(n - 1), 0, (int64_t)(n / 2), 0, (int64_t)(n - 1)};
            r = NULL;
            if (ans_element_read_rows(e, rows, 5, &r) == ANS_OK) fuzz_check_rows(r, 5, e);
            ans_rows_free(r);
            /* the whole element when it is small */
            if (row * n <= ((uint64_t)1 << 20)) {
                r = NULL;
                if (ans_element_read_range(e, 0, n, &r) == ANS_OK) fuzz_check_rows(r, n, e);
                ans_rows_free(r);
                /* again in part, now that the chunks' blosc heads are known: only the blocks
                 * needed are read (zarr_array.c, run_trim) */
                uint64_t mid = n / 3, cnt = n - mid < take ? n - mid : take;
                r = NULL;
                if (cnt && ans_element_read_range(e, mid, mid + cnt, &r) == ANS_OK)
                    fuzz_check_rows(r, cnt, e);
                ans_rows_free(r);
            }
        }
        /* out of range: must fail cleanly */
        ans_rows *r = NULL;
        int64_t bad = (int64_t)n;
        FUZZ_CHECK(ans_element_read_rows(e, &bad, 1, &r) != ANS_OK);
        ans_rows_free(r);
    }
    ans_element_free(e);
}

static inline void fuzz_check_strings(const uint64_t *off, const char *data, uint64_t n)
{
    if (n == 0) return;
    FUZZ_CHECK(off != NULL);
    for (uint64_t i = 0; i < n; i++) FUZZ_CHECK(off[i] <= off[i + 1]);
    if (off[n] > off[0]) fuzz_touch(data + off[0], (size_t)(off[n] - off[0]));
}

static inline void fuzz_check_column(const ans_column *c)
{
    FUZZ_CHECK(c->name != NULL);
    uint64_t n = c->length;
    if (c->kind == ANS_COLUMN_STRING || c->kind == ANS_COLUMN_NULLABLE_STRING)
        fuzz_check_strings(c->str_offsets, c->str_data, n);
    else if (n)
        fuzz_touch(c->values, (size_t)(n * ans_dtype_size(c->dtype)));
    if (c->mask && n) fuzz_touch(c->mask, (size_t)n);
    if (c->kind == ANS_COLUMN_CATEGORICAL && c->n_categories) {
        if (c->cat_dtype == ANS_DTYPE_STRING)
            fuzz_check_strings(c->cat_offsets, c->cat_data, c->n_categories);
        else
            fuzz_touch(c->cat_values, (size_t)(c->n_categories * ans_dtype_size(c->cat_dtype)));
        /* codes index the categories */
        for (uint64_t i = 0; i < n; i++) {
            int64_t code;
            switch (c->dtype) {
            case ANS_DTYPE_INT8: code = ((const int8_t *)c->values)[i]; break;
            case ANS_DTYPE_INT16: code = ((const int16_t *)c->values)[i]; break;
            case ANS_DTYPE_INT32: code = ((const int32_t *)c->values)[i]; break;
            case ANS_DTYPE_INT64: code = ((const int64_t *)c->values)[i]; break;
            default: code = -1; break;
            }
            (void)code; /* the library passes codes through; pandas checks them */
        }
    }
}

static inline void fuzz_read_frame(ans_store *s, const char *which)
{
    ans_frame *f = NULL;
    if (ans_store_read_frame(s, which, NULL, 0, &f) == ANS_OK) {
        ans_column c;
        if (ans_frame_index(f, &c) == ANS_OK) fuzz_check_column(&c);
        for (size_t i = 0; i < ans_frame_n_columns(f); i++) {
            memset(&c, 0, sizeof c);
            if (ans_frame_column(f, i, &c) == ANS_OK) fuzz_check_column(&c);
        }
        (void)ans_frame_n_rows(f);
        FUZZ_CHECK(ans_frame_column(f, ans_frame_n_columns(f), &c) != ANS_OK);
    }
    ans_frame_free(f);
    /* one named column that does not exist */
    const char *cols[1] = {"no such column"};
    f = NULL;
    FUZZ_CHECK(ans_store_read_frame(s, which, cols, 1, &f) != ANS_OK);
    ans_frame_free(f);
}

/* Open the store at `path` and read everything a user would: describe, every element, the
 * frames. Only clean failures are allowed. */
static inline void fuzz_exercise_store(const char *path)
{
    ans_store_options o = ANS_STORE_OPTIONS_INIT;
    o.threads = 1;
    ans_store *s = NULL;
    if (ans_store_open(&s, path, &o) != ANS_OK) {
        FUZZ_CHECK(ans_error_last()[0] != 0);
        if (getenv("ANS_FUZZ_VERBOSE")) fprintf(stderr, "  open: %s\n", ans_error_last());
        return;
    }
    if (getenv("ANS_FUZZ_VERBOSE"))
        fprintf(stderr, "  opened: %s, %llu x %llu, %zu keys\n", ans_store_container(s),
                (unsigned long long)ans_store_n_obs(s), (unsigned long long)ans_store_n_vars(s),
                ans_store_n_keys(s));
    (void)ans_store_container(s);
    char *desc = NULL;
    if (ans_store_describe(s, 1, &desc) == ANS_OK) FUZZ_CHECK(desc != NULL);
    ans_free(desc);
    desc = NULL;
    if (ans_store_describe(s, 0, &desc) == ANS_OK) FUZZ_CHECK(desc != NULL);
    ans_free(desc);
    if (ans_store_n_obs(s) <= FUZZ_MAX_AXIS && ans_store_n_vars(s) <= FUZZ_MAX_AXIS) {
        for (size_t i = 0; i < ans_store_n_keys(s); i++) fuzz_read_element(s, ans_store_key(s, i));
        fuzz_read_frame(s, "obs");
        fuzz_read_frame(s, "var");
        fuzz_read_frame(s, "raw/var");
    }
    ans_element *e = NULL;
    FUZZ_CHECK(ans_store_element(&e, s, "no/such/key") != ANS_OK);
    ans_store_free(s);
}

#endif
