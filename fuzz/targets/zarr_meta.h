/* zarr_meta.h - the body of the zarr_meta_v2 and zarr_meta_v3 targets.
 *
 * The input is one array's metadata document (.zarray or zarr.json). It is parsed in memory and
 * handed to ans_zarray_open on a container opened once on an empty group in a private temporary
 * directory (so the whole metadata path runs: dtype, shape, chunk grid, key encoding, fill value,
 * codec chain, sharding). An array that opens is then described, its chunk keys built for the first
 * and last chunk, and up to a few rows read: every chunk is missing, so this checks the fill-value
 * path and the read planning for the parsed geometry. */
#include "fuzz_common.h"

#include "common/json.h"
#include "zarr/zarr.h"

static ans_container *meta_container(int v3)
{
    static ans_container *c;
    if (c) return c;
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/meta-v%d", fuzz_tmp_dir(), v3 ? 3 : 2);
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) abort();
    char file[1100];
    snprintf(file, sizeof file, "%s/%s", dir, v3 ? "zarr.json" : ".zgroup");
    const char *doc = v3 ? "{\"zarr_format\": 3, \"node_type\": \"group\", \"attributes\": {}}"
                         : "{\"zarr_format\": 2}";
    if (fuzz_write_file(file, doc, strlen(doc)) != 0) abort();
    if (ans_zarr_open(&c, dir, NULL) != ANS_OK) {
        fprintf(stderr, "zarr_meta: %s\n", ans_error_last());
        abort();
    }
    return c;
}

static void meta_try_array(ans_array *a)
{
    ans_zarray *za = (ans_zarray *)a;
    FUZZ_CHECK(za->nd >= 1 && za->nd <= ANS_MAX_NDIM);
    FUZZ_CHECK(za->uchain != NULL);
    ans_json *obj = ans_json_new_object();
    FUZZ_CHECK(obj != NULL);
    if (a->ops->describe(a, obj) == ANS_OK) {
        ans_buf b = {0};
        FUZZ_CHECK(ans_json_write(obj, -1, &b) == ANS_OK);
        ans_buf_free(&b);
    }
    ans_json_free(obj);

    /* chunk keys of the first and last chunk */
    uint64_t coord[ANS_MAX_NDIM];
    char key[ANS_ZKEY_MAX];
    for (int d = 0; d < za->nd; d++) coord[d] = 0;
    (void)ans_zkey(za, coord, key, sizeof key);
    for (int d = 0; d < za->nd; d++) {
        uint64_t g = za->shp[d] / za->chunk[d] + (za->shp[d] % za->chunk[d] != 0);
        coord[d] = g ? g - 1 : 0;
    }
    if (ans_zkey(za, coord, key, sizeof key) == ANS_OK) FUZZ_CHECK(strlen(key) < sizeof key);

    if (a->ndim >= 1 && a->shape[0] == 0) return;
    uint64_t rows = a->ndim == 0 ? 1 : (a->shape[0] < 3 ? a->shape[0] : 3);
    if (a->dtype == ANS_DTYPE_STRING) {
        uint64_t offs[4];
        ans_buf data = {0};
        if (a->ops->read_strings(a, 0, rows, offs, &data) == ANS_OK) {
            FUZZ_CHECK(offs[0] == 0);
            for (uint64_t i = 0; i < rows; i++) FUZZ_CHECK(offs[i] <= offs[i + 1]);
            FUZZ_CHECK(offs[rows] == data.len);
        }
        ans_buf_free(&data);
        return;
    }
    /* Chunk geometry bounds the work of a fill read: skip arrays whose units are huge. */
    uint64_t unit_elems = 1;
    for (int d = 0; d < za->nd; d++)
        if (ans_mul_overflow(unit_elems, za->unit[d], &unit_elems)) return;
    if (unit_elems > ((uint64_t)1 << 20)) return;
    if (a->row_bytes == 0 || a->row_bytes > ((uint64_t)1 << 20)) return;
    size_t nr = a->ndim == 0 ? 1 : 2; /* rows [0, rows) then row 0 again */
    uint64_t total = a->ndim == 0 ? 1 : rows + 1;
    uint8_t *out = malloc((size_t)(a->row_bytes * total));
    FUZZ_CHECK(out != NULL);
    ans_range r[2] = {{0, rows}, {0, 1}};
    if (a->ops->read(a, r, nr, out) == ANS_OK) fuzz_touch(out, (size_t)(a->row_bytes * total));
    free(out);
}

static int meta_one_input(const uint8_t *data, size_t size, int v3)
{
    ans_container *c = meta_container(v3);
    ans_json *meta = NULL;
    if (ans_json_parse((const char *)data, size, &meta) != ANS_OK) return 0;
    ans_array *a = NULL;
    int rc = ans_zarray_open((ans_zstore *)c, "a", meta, &a);
    ans_json_free(meta); /* the array keeps copies of what it needs */
    if (rc == ANS_OK) {
        FUZZ_CHECK(a != NULL);
        meta_try_array(a);
        ans_array_free(a);
    } else {
        FUZZ_CHECK(a == NULL);
        FUZZ_CHECK(ans_error_last()[0] != 0);
    }
    return 0;
}
