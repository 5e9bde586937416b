/* sparse: CSR / CSC validation and row reads (src/anndata/element.c) on a tiny zarr v2 AnnData
 * store written from the input into a private temporary directory.
 *
 * The store layout is fixed (root, obs and var with empty-string indexes, X as csr_matrix or
 * csc_matrix, uncompressed chunks); the input chooses the geometry and supplies the raw bytes of
 * the indptr, indices and data chunks:
 *   byte 0  bit 0: CSC; bits 1-2: indptr dtype (<i4 <i8 <u8 >i4); bits 3-4: indices dtype
 *           (<i4 <i8 |u1 <u2); bit 5: chunks of 3 values (else one chunk); bit 6: no indptr
 *           chunk files (fill values); bit 7: shape attribute one column wider than var
 *   byte 1  n_obs % 16    byte 2  n_vars % 16    byte 3  nnz % 64
 *   byte 4  data dtype (<f4 <f8 <i4 |b1 >f8 <i2), byte 5: indptr shape adjustment (-1, 0, +1)
 *   then    indptr bytes, indices bytes, data bytes, each as long as the geometry needs (zeros when
 *           the input is shorter).
 * Everything is read through the public API (fuzz_exercise_store) and through the loader's
 * ans_ad_element_size_ranges / ans_ad_element_read_ranges_into, checking the CSR invariants of
 * every result. */
#include "fuzz_common.h"

#include "anndata/anndata.h"

typedef struct {
    const char *name;
    size_t size;
} dt;

static const dt indptr_dts[4] = {{"<i4", 4}, {"<i8", 8}, {"<u8", 8}, {">i4", 4}};
static const dt index_dts[4] = {{"<i4", 4}, {"<i8", 8}, {"|u1", 1}, {"<u2", 2}};
static const dt data_dts[6] = {{"<f4", 4}, {"<f8", 8}, {"<i4", 4}, {"|b1", 1}, {">f8", 8}, {"<i2", 2}};

static void put(const char *dir, const char *name, const void *data, size_t n)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FUZZ_CHECK(fuzz_mkdirs_for(path, strlen(dir)) == 0);
    FUZZ_CHECK(fuzz_write_file(path, data, n) == 0);
}

static void put_str(const char *dir, const char *name, const char *s)
{
    put(dir, name, s, strlen(s));
}

static void put_zarray(const char *dir, const char *arr, uint64_t n, uint64_t chunk, const char *dtype,
                       const char *fill, const char *filters)
{
    char name[256], doc[1024];
    snprintf(name, sizeof name, "%s/.zarray", arr);
    snprintf(doc, sizeof doc,
             "{\"shape\": [%llu], \"chunks\": [%llu], \"dtype\": \"%s\", \"fill_value\": %s, "
             "\"order\": \"C\", \"filters\": %s, \"dimension_separator\": \".\", "
             "\"compressor\": null, \"zarr_format\": 2}",
             (unsigned long long)n, (unsigned long long)chunk, dtype, fill, filters);
    put_str(dir, name, doc);
}

/* The values of one array, from the input (zero padded), as chunk files of `chunk` values. */
static void put_chunks(const char *dir, const char *arr, const uint8_t **p, const uint8_t *end,
                       uint64_t n, size_t isz, uint64_t chunk)
{
    size_t total = (size_t)n * isz;
    uint8_t *buf = calloc(1, total ? total : 1);
    FUZZ_CHECK(buf != NULL);
    size_t have = (size_t)(end - *p) < total ? (size_t)(end - *p) : total;
    memcpy(buf, *p, have);
    *p += have;
    for (uint64_t c = 0; c * chunk < n; c++) {
        char name[256];
        snprintf(name, sizeof name, "%s/%llu", arr, (unsigned long long)c);
        /* every chunk is full size in zarr v2, the last one padded */
        uint8_t *ch = calloc(1, (size_t)chunk * isz);
        FUZZ_CHECK(ch != NULL);
        uint64_t k = n - c * chunk < chunk ? n - c * chunk : chunk;
        memcpy(ch, buf + (size_t)(c * chunk) * isz, (size_t)k * isz);
        put(dir, name, ch, (size_t)chunk * isz);
        free(ch);
    }
    free(buf);
}

static void check_into(ans_store *s, uint64_t n_obs, uint64_t n_vars)
{
    ans_element *e = NULL;
    if (ans_store_element(&e, s, "X") != ANS_OK) return;
    if (n_obs == 0) {
        ans_element_free(e);
        return;
    }
    ans_range ranges[3] = {{0, n_obs}, {n_obs - 1, 1}, {n_obs / 2, n_obs - n_obs / 2}};
    for (int wide = 0; wide <= 1; wide++) {
        ans_dtype it = wide ? ANS_DTYPE_INT64 : ANS_DTYPE_INT32;
        ans_ad_read_size sz;
        if (ans_ad_element_size_ranges(e, ranges, 3, it, &sz) != ANS_OK) break;
        FUZZ_CHECK(sz.rows == n_obs + 1 + (n_obs - n_obs / 2));
        void *data = malloc(sz.data_bytes ? sz.data_bytes : 1);
        void *indices = malloc(sz.indices_bytes ? sz.indices_bytes : 1);
        uint64_t *indptr = malloc((size_t)(sz.rows + 1) * 8);
        ans_range scratch[3];
        FUZZ_CHECK(data && indices && indptr);
        if (ans_ad_element_read_ranges_into(e, ranges, 3, it, 7, data, indices, indptr, scratch) ==
            ANS_OK) {
            FUZZ_CHECK(indptr[0] == 7);
            for (uint64_t i = 0; i < sz.rows; i++) FUZZ_CHECK(indptr[i] <= indptr[i + 1]);
            FUZZ_CHECK(indptr[sz.rows] - 7 == sz.nnz);
            fuzz_touch(data, sz.data_bytes);
            for (uint64_t k = 0; k < sz.nnz; k++) {
                int64_t c = wide ? ((int64_t *)indices)[k] : ((int32_t *)indices)[k];
                FUZZ_CHECK(c >= 0 && (uint64_t)c < n_vars);
            }
        }
        free(data);
        free(indices);
        free(indptr);
    }
    ans_element_free(e);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 6) return 0;
    const uint8_t *p = data + 6, *end = data + size;
    int csc = data[0] & 1;
    const dt *ipd = &indptr_dts[(data[0] >> 1) & 3];
    const dt *ixd = &index_dts[(data[0] >> 3) & 3];
    uint64_t chunk3 = (data[0] >> 5) & 1;
    int no_indptr = (data[0] >> 6) & 1;
    int wider = (data[0] >> 7) & 1;
    uint64_t n_obs = data[1] % 16, n_vars = data[2] % 16, nnz = data[3] % 64;
    const dt *dd = &data_dts[data[4] % 6];
    int adj = (int)(data[5] % 3) - 1;
    uint64_t n_major = csc ? n_vars : n_obs;
    uint64_t nptr = n_major + 1;
    if (adj < 0 && nptr > 0) nptr--;
    else if (adj > 0) nptr++;

    char dir[1024];
    snprintf(dir, sizeof dir, "%s/s", fuzz_tmp_dir());
    fuzz_rm_rf(dir);
    FUZZ_CHECK(mkdir(dir, 0700) == 0);

    put_str(dir, ".zgroup", "{\"zarr_format\": 2}");
    put_str(dir, ".zattrs", "{\"encoding-type\": \"anndata\", \"encoding-version\": \"0.1.0\"}");
    static const char *const frames[2] = {"obs", "var"};
    for (int f = 0; f < 2; f++) {
        char name[64];
        snprintf(name, sizeof name, "%s/.zgroup", frames[f]);
        put_str(dir, name, "{\"zarr_format\": 2}");
        snprintf(name, sizeof name, "%s/.zattrs", frames[f]);
        put_str(dir, name,
                "{\"column-order\": [], \"_index\": \"_index\", \"encoding-type\": \"dataframe\", "
                "\"encoding-version\": \"0.2.0\"}");
        snprintf(name, sizeof name, "%s/_index", frames[f]);
        uint64_t n = f ? n_vars : n_obs;
        put_zarray(dir, name, n, n ? n : 1, "|O", "\"\"", "[{\"id\": \"vlen-utf8\"}]");
        snprintf(name, sizeof name, "%s/_index/.zattrs", frames[f]);
        put_str(dir, name, "{\"encoding-type\": \"string-array\", \"encoding-version\": \"0.2.0\"}");
    }
    char doc[512];
    put_str(dir, "X/.zgroup", "{\"zarr_format\": 2}");
    snprintf(doc, sizeof doc,
             "{\"shape\": [%llu, %llu], \"encoding-type\": \"%s\", \"encoding-version\": \"0.1.0\"}",
             (unsigned long long)n_obs, (unsigned long long)(n_vars + (uint64_t)wider),
             csc ? "csc_matrix" : "csr_matrix");
    put_str(dir, "X/.zattrs", doc);
    uint64_t ch = chunk3 ? 3 : 0;
    put_zarray(dir, "X/indptr", nptr, ch ? ch : (nptr ? nptr : 1), ipd->name, "0", "null");
    put_zarray(dir, "X/indices", nnz, ch ? ch : (nnz ? nnz : 1), ixd->name, "0", "null");
    put_zarray(dir, "X/data", nnz, ch ? ch : (nnz ? nnz : 1), dd->name, "0", "null");
    if (!no_indptr) put_chunks(dir, "X/indptr", &p, end, nptr, ipd->size, ch ? ch : (nptr ? nptr : 1));
    put_chunks(dir, "X/indices", &p, end, nnz, ixd->size, ch ? ch : (nnz ? nnz : 1));
    put_chunks(dir, "X/data", &p, end, nnz, dd->size, ch ? ch : (nnz ? nnz : 1));

    fuzz_exercise_store(dir);
    ans_store_options o = ANS_STORE_OPTIONS_INIT;
    o.threads = 1;
    ans_store *s = NULL;
    if (ans_store_open(&s, dir, &o) == ANS_OK) {
        check_into(s, ans_store_n_obs(s), ans_store_n_vars(s));
        ans_store_free(s);
    }
    fuzz_rm_rf(dir);
    return 0;
}
