/* test_sampler.c - the sampler layer: keyed permutation, load plans, partitions, replacement,
 * determinism, validation of custom plans. */
#include "harness.h"

#include "loader/sampler.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------------------------------------- */
/* Helpers */

static ans_sampler_params params_for(uint64_t n_rows, uint64_t cs, uint64_t pn, uint64_t bs,
                                     int shuffle)
{
    ans_sampler_params p = ANS_SAMPLER_PARAMS_INIT;
    p.n_rows = n_rows;
    p.chunk_size = cs;
    p.preload_nchunks = pn;
    p.batch_size = bs;
    p.shuffle = shuffle;
    return p;
}

/* Global row of every load position of `plan` (the concatenation of its ranges), into rows[]. */
static void expand_ranges(const ans_load_plan *plan, uint64_t *rows)
{
    uint64_t k = 0;
    for (size_t i = 0; i < plan->n_ranges; i++)
        for (uint64_t j = 0; j < plan->ranges[i].count; j++)
            rows[k++] = plan->ranges[i].start + j;
}

/* Rows emitted by `plan`, in emission order, appended to out[*n]. */
static void emitted_rows(const ans_load_plan *plan, uint64_t *out, uint64_t *n)
{
    uint64_t *rows = malloc((plan->n_rows ? plan->n_rows : 1) * sizeof *rows);
    expand_ranges(plan, rows);
    for (size_t j = 0; j < plan->n_order; j++)
        out[(*n)++] = rows[plan->order[j]];
    free(rows);
}

/* Is order[] a permutation of [0, n)? */
static int is_permutation(const uint64_t *order, uint64_t n)
{
    uint8_t *seen = calloc(n ? n : 1, 1);
    int ok = 1;
    for (uint64_t i = 0; i < n && ok; i++) {
        if (order[i] >= n || seen[order[i]])
            ok = 0;
        else
            seen[order[i]] = 1;
    }
    free(seen);
    return ok;
}

/* Every row emitted over one epoch by every partition, in order: partition by partition, load by
 * load. Returns the count; out must hold n_partitions * T entries. */
static uint64_t epoch_rows(ans_sampler_params p, uint64_t *out)
{
    uint64_t n = 0;
    ans_load_plan plan = ANS_LOAD_PLAN_INIT;
    for (uint64_t part = 0; part < p.n_partitions; part++) {
        p.partition = part;
        ans_sampler *s = NULL;
        CHECK_OK(ans_sampler_new(&s, &p));
        if (!s) break;
        for (uint64_t l = 0; l < ans_sampler_n_loads(s); l++) {
            CHECK_OK(ans_sampler_plan(s, l, &plan));
            emitted_rows(&plan, out, &n);
        }
        ans_sampler_free(s);
    }
    ans_load_plan_free(&plan);
    return n;
}

/* The full check of one parameter set (all partitions): plan invariants, exact coverage with the
 * documented remainder, the S-stretch layout, equal batch counts. Returns the number of failures.
 */
static int check_epoch(ans_sampler_params p)
{
    int before = ans_t_failed_checks;
    uint64_t stop = p.mask_stop == ANS_SAMPLER_MASK_END ? p.n_rows : p.mask_stop;
    uint64_t T = stop - p.mask_start;
    uint64_t P = p.n_partitions, per = T / P;
    uint64_t bs = p.batch_size;
    uint64_t rows_pp = p.drop_last ? per - per % bs : per;
    uint64_t L = p.chunk_size * p.preload_nchunks;
    uint8_t *count = calloc(p.n_rows ? p.n_rows : 1, 1);
    uint64_t *rows = malloc((L + 1) * sizeof *rows);
    uint64_t *expect_skip = calloc(T ? T : 1, sizeof *expect_skip);
    ans_load_plan plan = ANS_LOAD_PLAN_INIT;
    uint64_t batches0 = UINT64_MAX;

    for (uint64_t part = 0; part < P; part++) {
        p.partition = part;
        ans_sampler *s = NULL;
        CHECK_OK(ans_sampler_new(&s, &p));
        if (!s) break;
        CHECK_EQ_U64(ans_sampler_rows_per_partition(s), rows_pp);
        CHECK_EQ_U64(ans_sampler_n_batches(s), (rows_pp + bs - 1) / bs);
        CHECK_EQ_U64(ans_sampler_n_loads(s), (rows_pp + L - 1) / L);
        CHECK_EQ_U64(ans_sampler_n_chunks(s), (T + p.chunk_size - 1) / p.chunk_size);
        if (batches0 == UINT64_MAX) batches0 = ans_sampler_n_batches(s);
        CHECK_EQ_U64(ans_sampler_n_batches(s), batches0);
        uint64_t pos = part * per; /* position in S */
        uint64_t nbatches = 0, nrows = 0;
        for (uint64_t l = 0; l < ans_sampler_n_loads(s); l++) {
            CHECK_OK(ans_sampler_plan(s, l, &plan));
            CHECK_OK(ans_load_plan_validate(&plan, p.n_rows));
            CHECK_EQ_U64(plan.load, l);
            CHECK_EQ_U64(plan.first_batch, nbatches);
            CHECK_EQ_U64(plan.n_order, plan.n_rows);
            CHECK(plan.n_rows <= L);
            CHECK(plan.n_rows == L || l + 1 == ans_sampler_n_loads(s));
            CHECK(is_permutation(plan.order, plan.n_rows));
            if (!p.shuffle)
                for (uint64_t j = 0; j < plan.n_order; j++)
                    CHECK_EQ_U64(plan.order[j], j);
            for (size_t b = 0; b < plan.n_batches; b++) {
                uint64_t size = plan.batch_bounds[b + 1] - plan.batch_bounds[b];
                CHECK(size == bs || (l + 1 == ans_sampler_n_loads(s) && b + 1 == plan.n_batches &&
                                     !p.drop_last && size < bs));
            }
            /* ranges: merged (no two consecutive adjacent), the load's stretch of S in S order */
            for (size_t i = 1; i < plan.n_ranges; i++)
                CHECK(plan.ranges[i - 1].start + plan.ranges[i - 1].count != plan.ranges[i].start);
            CHECK(plan.n_ranges <= p.preload_nchunks + 2);
            expand_ranges(&plan, rows);
            for (uint64_t j = 0; j < plan.n_rows; j++) {
                CHECK_EQ_U64(rows[j], ans_sampler_row_at(s, pos + j));
                CHECK(rows[j] >= p.mask_start && rows[j] < stop);
                count[rows[j]]++;
            }
            pos += plan.n_rows;
            nbatches += plan.n_batches;
            nrows += plan.n_rows;
        }
        CHECK_EQ_U64(nbatches, ans_sampler_n_batches(s));
        CHECK_EQ_U64(nrows, rows_pp);
        CHECK_RC(ans_sampler_plan(s, ans_sampler_n_loads(s), &plan), ANS_ITEROVER);
        /* documented skips: the drop_last tail of this partition's stretch */
        for (uint64_t q = part * per + rows_pp; q < (part + 1) * per; q++)
            expect_skip[q] = 1;
        if (part + 1 == P)
            for (uint64_t q = P * per; q < T; q++)
                expect_skip[q] = 1;
        /* coverage, checked once with the last sampler (row_at is the same for all partitions) */
        if (part + 1 == P) {
            for (uint64_t q = 0; q < T; q++) {
                uint64_t r = ans_sampler_row_at(s, q);
                CHECK(r >= p.mask_start && r < stop);
                if (r >= p.mask_start && r < stop) CHECK_EQ_U64(count[r], expect_skip[q] ? 0 : 1);
            }
            CHECK_EQ_U64(ans_sampler_row_at(s, T), UINT64_MAX);
            for (uint64_t r = 0; r < p.mask_start; r++)
                CHECK_EQ_U64(count[r], 0);
            for (uint64_t r = stop; r < p.n_rows; r++)
                CHECK_EQ_U64(count[r], 0);
            if (P == 1 && !p.drop_last)
                for (uint64_t r = p.mask_start; r < stop; r++)
                    CHECK_EQ_U64(count[r], 1);
        }
        ans_sampler_free(s);
    }
    ans_load_plan_free(&plan);
    free(count);
    free(rows);
    free(expect_skip);
    return ans_t_failed_checks - before;
}

/* ---------------------------------------------------------------------------------------------- */
/* Keyed permutation */

static void check_bijection(uint64_t n, uint64_t key)
{
    ans_perm perm;
    ans_perm_init(&perm, n, key);
    uint8_t *seen = calloc(n, 1);
    uint64_t fixed = 0;
    int bad = 0;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t y = ans_perm_apply(&perm, i);
        if (y >= n || seen[y]) {
            bad++;
            continue;
        }
        seen[y] = 1;
        if (ans_perm_invert(&perm, y) != i) bad++;
        fixed += y == i;
    }
    if (bad) fprintf(stderr, "perm n=%" PRIu64 " key=%" PRIu64 ": %d bad entries\n", n, key, bad);
    CHECK(bad == 0);
    if (n >= 1000) CHECK(fixed < n / 100); /* expected ~1 fixed point, not the identity */
    free(seen);
}

static void test_perm_bijection(void)
{
    static const uint64_t sizes[] = {1,  2,  3,  4,    5,    7,    8,    9,
                                     31, 32, 33, 1000, 1023, 1024, 1025, 4097};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        for (uint64_t key = 0; key < 8; key++)
            check_bijection(sizes[i], key * 0x1234567ULL + 1);
    check_bijection(((uint64_t)1 << 20) + 7, 42);
    check_bijection((uint64_t)1 << 20, 7);
}

static void test_perm_keys(void)
{
    /* different keys give different permutations; both small and huge domains evaluate */
    ans_perm a, b;
    ans_perm_init(&a, 1000, 1);
    ans_perm_init(&b, 1000, 2);
    int differ = 0;
    for (uint64_t i = 0; i < 1000; i++)
        differ += ans_perm_apply(&a, i) != ans_perm_apply(&b, i);
    CHECK(differ > 900);
    ans_perm big;
    ans_perm_init(&big, UINT64_MAX, 3);
    CHECK_EQ_U64(big.bits, 64);
    for (uint64_t i = 0; i < 1000; i++) {
        uint64_t x = i * 0x9e3779b97f4a7c15ULL % UINT64_MAX;
        uint64_t y = ans_perm_apply(&big, x);
        CHECK(y < UINT64_MAX);
        CHECK_EQ_U64(ans_perm_invert(&big, y), x);
    }
    ans_perm odd;
    ans_perm_init(&odd, ((uint64_t)1 << 41) + 5, 9);
    CHECK_EQ_U64(odd.bits, 42);
    for (uint64_t i = 0; i < 1000; i++) {
        uint64_t x = (i * 0x9e3779b97f4a7c15ULL) % odd.n;
        CHECK_EQ_U64(ans_perm_invert(&odd, ans_perm_apply(&odd, x)), x);
    }
}

/* Chi-square statistic of counts against a uniform expectation. */
static double chi_square(const uint64_t *counts, size_t k, uint64_t total)
{
    double e = (double)total / (double)k, x = 0;
    for (size_t i = 0; i < k; i++)
        x += ((double)counts[i] - e) * ((double)counts[i] - e) / e;
    return x;
}

static void test_perm_stats(void)
{
    /* The Feistel path (domains above the table threshold): where element 0 goes, and where a pair
     * of neighbours goes jointly, over 2000 fixed keys (10 bins: df 9; 4x4 cells: df 15). */
    uint64_t n = 5003;
    uint64_t one[10] = {0}, pair[16] = {0}, pre[10] = {0};
    for (uint64_t key = 0; key < 2000; key++) {
        ans_perm perm;
        ans_perm_init(&perm, n, key);
        one[ans_perm_apply(&perm, 0) * 10 / n]++;
        pre[ans_perm_invert(&perm, 0) * 10 / n]++;
        pair[ans_perm_apply(&perm, 1) * 4 / n * 4 + ans_perm_apply(&perm, 2) * 4 / n]++;
    }
    double x1 = chi_square(one, 10, 2000), x2 = chi_square(pre, 10, 2000);
    double x3 = chi_square(pair, 16, 2000);
    if (x1 >= 45 || x2 >= 45 || x3 >= 60) fprintf(stderr, "perm chi2 %.1f %.1f %.1f\n", x1, x2, x3);
    CHECK(x1 < 45);
    CHECK(x2 < 45);
    CHECK(x3 < 60);
    /* the sampler takes this path above ANS_SAMPLER_TABLE_CHUNKS chunks and agrees with ans_perm's
     * bijection: coverage stays exact */
    ans_sampler_params p = params_for(ANS_SAMPLER_TABLE_CHUNKS * 2 + 3, 1, 64, 16, 1);
    p.n_partitions = 3;
    p.seed = 8;
    CHECK(check_epoch(p) == 0);
    p.n_partitions = 1;
    p.mask_start = 5;
    p.drop_last = 1;
    CHECK(check_epoch(p) == 0);
    /* both sides of the threshold */
    for (uint64_t c = ANS_SAMPLER_TABLE_CHUNKS - 1; c <= ANS_SAMPLER_TABLE_CHUNKS + 1; c++) {
        ans_sampler_params q = params_for(c * 3 - 1, 3, 4, 4, 1);
        q.n_partitions = 2;
        q.epoch = c;
        CHECK(check_epoch(q) == 0);
    }
}

static void test_shuffle_stats(void)
{
    /* Position of mask chunk 0 in the chunk order over 2000 seeds (10 chunks: df = 9, mean 9,
     * p(chi2 > 45) ~ 1e-6). The inputs are fixed, so the outcome is fixed too: this guards against
     * a gross bias (e.g. chunk 0 never moving), not against bad luck. */
    uint64_t counts[10] = {0}, counts_epoch[10] = {0};
    for (uint64_t seed = 0; seed < 2000; seed++) {
        ans_sampler_params p = params_for(100, 10, 1, 1, 1);
        p.seed = seed;
        ans_sampler *s = NULL;
        CHECK_OK(ans_sampler_new(&s, &p));
        for (uint64_t k = 0; k < 10; k++)
            if (ans_sampler_chunk_at(s, k) == 0) counts[k]++;
        ans_sampler_free(s);
        p.seed = 12345;
        p.epoch = seed;
        CHECK_OK(ans_sampler_new(&s, &p));
        for (uint64_t k = 0; k < 10; k++)
            if (ans_sampler_chunk_at(s, k) == 0) counts_epoch[k]++;
        ans_sampler_free(s);
    }
    double x = chi_square(counts, 10, 2000), xe = chi_square(counts_epoch, 10, 2000);
    if (x >= 45 || xe >= 45)
        fprintf(stderr, "chunk-0 chi2 over seeds %.1f, over epochs %.1f\n", x, xe);
    CHECK(x < 45);
    CHECK(xe < 45);

    /* Output position of load row 0 within one load of 8 rows over 2000 seeds (df = 7). */
    uint64_t pos[8] = {0};
    ans_load_plan plan = ANS_LOAD_PLAN_INIT;
    for (uint64_t seed = 0; seed < 2000; seed++) {
        ans_sampler_params p = params_for(8, 4, 2, 2, 1);
        p.seed = seed;
        ans_sampler *s = NULL;
        CHECK_OK(ans_sampler_new(&s, &p));
        CHECK_OK(ans_sampler_plan(s, 0, &plan));
        for (uint64_t j = 0; j < 8; j++)
            if (plan.order[j] == 0) pos[j]++;
        ans_sampler_free(s);
    }
    double xr = chi_square(pos, 8, 2000);
    if (xr >= 40) fprintf(stderr, "row-0 chi2 %.1f\n", xr);
    CHECK(xr < 40);
    ans_load_plan_free(&plan);
}

/* ---------------------------------------------------------------------------------------------- */
/* Coverage */

static void test_exactly_once_grid(void)
{
    /* Every combination of: rows, mask (none / cutting both ends), chunk size, preload, batch size
     * (1, L, L/2), shuffle, drop_last, partitions. Short last chunks occur throughout. */
    static const uint64_t n_rows[] = {1, 7, 64, 100, 1237};
    static const uint64_t chunk[] = {1, 3, 16, 64};
    static const uint64_t preload[] = {1, 2, 5};
    static const uint64_t parts[] = {1, 2, 3, 7};
    const unsigned n_combos = 5 * 2 * 4 * 3 * 3 * 2 * 2 * 4;
    int combos = 0, failures = 0;
    for (unsigned idx = 0; idx < n_combos && failures <= 5; idx++) {
        unsigned x = idx;
        unsigned a = x % 5, masked = (x /= 5) % 2, c = (x /= 2) % 4, d = (x /= 4) % 3;
        unsigned bsi = (x /= 3) % 3, sh = (x /= 3) % 2, dl = (x /= 2) % 2, e = (x /= 2) % 4;
        uint64_t L = chunk[c] * preload[d];
        uint64_t bs = bsi == 0 ? 1 : bsi == 1 ? L : (L % 2 ? L : L / 2);
        ans_sampler_params p = params_for(n_rows[a], chunk[c], preload[d], bs, (int)sh);
        if (masked) {
            if (n_rows[a] < 10) continue;
            p.mask_start = 3;
            p.mask_stop = n_rows[a] - 4;
        }
        p.drop_last = (int)dl;
        p.n_partitions = parts[e];
        p.seed = 77 + a;
        p.epoch = c;
        combos++;
        if (check_epoch(p)) {
            failures++;
            fprintf(stderr,
                    "  params: n_rows %" PRIu64 " masked %u cs %" PRIu64 " pn %" PRIu64
                    " bs %" PRIu64 " shuffle %u drop %u P %" PRIu64 "\n",
                    p.n_rows, masked, p.chunk_size, p.preload_nchunks, bs, sh, dl, p.n_partitions);
        }
    }
    CHECK(combos > 3000);
}

static void test_short_chunk_positions(void)
{
    /* The short last chunk lands everywhere in the chunk order across epochs, including the middle
     * of a load and the boundary between partitions; coverage stays exact each time. */
    uint64_t seen_pos[8] = {0};
    for (uint64_t epoch = 0; epoch < 64; epoch++) {
        ans_sampler_params p = params_for(75, 10, 3, 5, 1); /* 8 chunks, last one has 5 rows */
        p.epoch = epoch;
        p.n_partitions = 2;
        ans_sampler *s = NULL;
        CHECK_OK(ans_sampler_new(&s, &p));
        for (uint64_t k = 0; k < 8; k++)
            if (ans_sampler_chunk_at(s, k) == 7) seen_pos[k]++;
        ans_sampler_free(s);
        CHECK(check_epoch(p) == 0);
        p.drop_last = 1;
        p.n_partitions = 3;
        CHECK(check_epoch(p) == 0);
    }
    for (int k = 0; k < 8; k++)
        CHECK(seen_pos[k] > 0);
}

static void test_sequential_order(void)
{
    ans_sampler_params p = params_for(1000, 7, 3, 3, 0);
    p.mask_start = 11;
    p.mask_stop = 990;
    uint64_t *rows = malloc(1000 * sizeof *rows);
    uint64_t n = epoch_rows(p, rows);
    CHECK_EQ_U64(n, 979);
    for (uint64_t i = 0; i < n; i++)
        CHECK_EQ_U64(rows[i], 11 + i);
    /* one merged range per load */
    ans_sampler *s = NULL;
    CHECK_OK(ans_sampler_new(&s, &p));
    ans_load_plan plan = ANS_LOAD_PLAN_INIT;
    for (uint64_t l = 0; l < ans_sampler_n_loads(s); l++) {
        CHECK_OK(ans_sampler_plan(s, l, &plan));
        CHECK_EQ_U64(plan.n_ranges, 1);
        CHECK_EQ_U64(plan.ranges[0].start, 11 + 21 * l);
    }
    CHECK_EQ_U64(ans_sampler_chunk_at(s, 5), 5);
    ans_sampler_free(s);
    /* partitions of a sequential sampler: contiguous shares of the mask, remainder at the end */
    p.n_partitions = 4;
    n = epoch_rows(p, rows);
    CHECK_EQ_U64(n, 4 * (979 / 4));
    for (uint64_t i = 0; i < n; i++)
        CHECK_EQ_U64(rows[i], 11 + i);
    ans_load_plan_free(&plan);
    free(rows);
}

static void test_drop_last_counts(void)
{
    /* T = 103, chunk 10, preload 2 (L = 20), batch 4 */
    ans_sampler_params p = params_for(103, 10, 2, 4, 1);
    ans_sampler *s = NULL;
    CHECK_OK(ans_sampler_new(&s, &p));
    CHECK_EQ_U64(ans_sampler_n_chunks(s), 11);
    CHECK_EQ_U64(ans_sampler_rows_per_load(s), 20);
    CHECK_EQ_U64(ans_sampler_batches_per_load(s), 5);
    CHECK_EQ_U64(ans_sampler_rows_per_partition(s), 103);
    CHECK_EQ_U64(ans_sampler_n_loads(s), 6);
    CHECK_EQ_U64(ans_sampler_n_batches(s), 26);
    ans_load_plan plan = ANS_LOAD_PLAN_INIT;
    CHECK_OK(ans_sampler_plan(s, 5, &plan));
    CHECK_EQ_U64(plan.n_rows, 3);
    CHECK_EQ_U64(plan.n_batches, 1);
    CHECK_EQ_U64(plan.first_batch, 25);
    ans_sampler_free(s);

    p.drop_last = 1;
    CHECK_OK(ans_sampler_new(&s, &p));
    CHECK_EQ_U64(ans_sampler_rows_per_partition(s), 100);
    CHECK_EQ_U64(ans_sampler_n_loads(s), 5);
    CHECK_EQ_U64(ans_sampler_n_batches(s), 25);
    CHECK_OK(ans_sampler_plan(s, 4, &plan));
    CHECK_EQ_U64(plan.n_rows, 20);
    CHECK_EQ_U64(plan.n_batches, 5);
    CHECK_RC(ans_sampler_plan(s, 5, &plan), ANS_ITEROVER);
    ans_sampler_free(s);

    /* 3 partitions: per = 34; drop_last -> 32 rows (8 batches) each */
    p.n_partitions = 3;
    for (uint64_t part = 0; part < 3; part++) {
        p.partition = part;
        CHECK_OK(ans_sampler_new(&s, &p));
        CHECK_EQ_U64(ans_sampler_rows_per_partition(s), 32);
        CHECK_EQ_U64(ans_sampler_n_batches(s), 8);
        CHECK_EQ_U64(ans_sampler_n_loads(s), 2);
        ans_sampler_free(s);
    }
    p.drop_last = 0;
    p.partition = 2;
    CHECK_OK(ans_sampler_new(&s, &p));
    CHECK_EQ_U64(ans_sampler_rows_per_partition(s), 34);
    CHECK_EQ_U64(ans_sampler_n_batches(s), 9);
    ans_sampler_free(s);
    ans_load_plan_free(&plan);
}

static void test_equal_batches_across_partitions(void)
{
    for (uint64_t P = 1; P <= 9; P++)
        for (uint64_t bs = 1; bs <= 16; bs *= 2)
            for (int dl = 0; dl < 2; dl++) {
                uint64_t first = UINT64_MAX;
                for (uint64_t part = 0; part < P; part++) {
                    ans_sampler_params p = params_for(1001, 8, 2, bs, 1);
                    p.n_partitions = P;
                    p.partition = part;
                    p.drop_last = dl;
                    ans_sampler *s = NULL;
                    CHECK_OK(ans_sampler_new(&s, &p));
                    if (!s) continue;
                    uint64_t per = 1001 / P;
                    CHECK_EQ_U64(ans_sampler_n_batches(s), dl ? per / bs : (per + bs - 1) / bs);
                    if (first == UINT64_MAX) first = ans_sampler_n_batches(s);
                    CHECK_EQ_U64(ans_sampler_n_batches(s), first);
                    ans_sampler_free(s);
                }
            }
}

static void test_partitions_disjoint_large(void)
{
    /* 8 partitions of 100003 rows with chunk 100: partitions share no row, and together they skip
     * exactly the 3 remainder rows, which differ between epochs. */
    ans_sampler_params p = params_for(100003, 10, 40, 50, 1); /* 10001 chunks: the Feistel path */
    p.n_partitions = 8;
    p.seed = 5;
    uint64_t skipped[2][8];
    for (uint64_t epoch = 0; epoch < 2; epoch++) {
        p.epoch = epoch;
        uint64_t *rows = malloc(100003 * sizeof *rows);
        uint64_t n = epoch_rows(p, rows);
        CHECK_EQ_U64(n, 100000);
        uint8_t *seen = calloc(100003, 1);
        for (uint64_t i = 0; i < n; i++) {
            CHECK(!seen[rows[i]]);
            seen[rows[i]] = 1;
        }
        uint64_t k = 0;
        for (uint64_t r = 0; r < 100003; r++)
            if (!seen[r] && k < 8) skipped[epoch][k++] = r;
        CHECK_EQ_U64(k, 3);
        free(seen);
        free(rows);
    }
    CHECK(memcmp(skipped[0], skipped[1], 3 * sizeof(uint64_t)) != 0);
}

/* ---------------------------------------------------------------------------------------------- */
/* Determinism */

static int plans_equal(const ans_load_plan *a, const ans_load_plan *b)
{
    if (a->n_ranges != b->n_ranges || a->n_rows != b->n_rows || a->n_order != b->n_order ||
        a->n_batches != b->n_batches || a->load != b->load || a->first_batch != b->first_batch)
        return 0;
    if (a->n_ranges && memcmp(a->ranges, b->ranges, a->n_ranges * sizeof *a->ranges)) return 0;
    if (a->n_order && memcmp(a->order, b->order, a->n_order * sizeof *a->order)) return 0;
    return memcmp(a->batch_bounds, b->batch_bounds, (a->n_batches + 1) * sizeof *a->batch_bounds) ==
           0;
}

static void copy_plan(ans_load_plan *dst, const ans_load_plan *src)
{
    CHECK_OK(ans_load_plan_reserve(dst, src->n_ranges, src->n_order, src->n_batches));
    memcpy(dst->ranges, src->ranges, src->n_ranges * sizeof *src->ranges);
    memcpy(dst->order, src->order, src->n_order * sizeof *src->order);
    memcpy(dst->batch_bounds, src->batch_bounds, (src->n_batches + 1) * sizeof *src->batch_bounds);
    dst->n_ranges = src->n_ranges;
    dst->n_rows = src->n_rows;
    dst->n_order = src->n_order;
    dst->n_batches = src->n_batches;
    dst->load = src->load;
    dst->first_batch = src->first_batch;
}

static void check_determinism(ans_sampler_params p)
{
    ans_sampler *s1 = NULL, *s2 = NULL;
    CHECK_OK(ans_sampler_new(&s1, &p));
    CHECK_OK(ans_sampler_new(&s2, &p));
    if (!s1 || !s2) goto done;
    uint64_t nl = ans_sampler_n_loads(s1);
    CHECK(nl > 2);
    ans_load_plan *fwd = calloc(nl, sizeof *fwd);
    ans_load_plan plan = ANS_LOAD_PLAN_INIT;
    for (uint64_t l = 0; l < nl; l++) {
        CHECK_OK(ans_sampler_plan(s1, l, &plan));
        copy_plan(&fwd[l], &plan);
    }
    /* another sampler, reverse order, with one reused plan */
    for (uint64_t l = nl; l-- > 0;) {
        CHECK_OK(ans_sampler_plan(s2, l, &plan));
        CHECK(plans_equal(&plan, &fwd[l]));
    }
    /* interleaved, and the same load twice in a row */
    for (uint64_t l = 0; l < nl; l += 2) {
        CHECK_OK(ans_sampler_plan(s1, l, &plan));
        CHECK_OK(ans_sampler_plan(s1, l, &plan));
        CHECK(plans_equal(&plan, &fwd[l]));
    }
    for (uint64_t l = 0; l < nl; l++)
        ans_load_plan_free(&fwd[l]);
    free(fwd);
    ans_load_plan_free(&plan);
done:
    ans_sampler_free(s1);
    ans_sampler_free(s2);
}

static void test_determinism(void)
{
    ans_sampler_params p = params_for(5003, 16, 4, 8, 1);
    p.seed = 99;
    p.epoch = 3;
    check_determinism(p);
    p.n_partitions = 3;
    p.partition = 1;
    check_determinism(p);
    p.replacement = 1;
    p.num_samples = 4000;
    check_determinism(p);
    p.shuffle = 0;
    p.replacement = 0;
    p.num_samples = 0;
    check_determinism(p);
}

static void test_epochs_and_seeds_differ(void)
{
    ans_sampler_params p = params_for(2000, 16, 4, 8, 1);
    uint64_t *a = malloc(2000 * sizeof *a), *b = malloc(2000 * sizeof *b);
    p.seed = 1;
    p.epoch = 0;
    uint64_t na = epoch_rows(p, a);
    p.epoch = 1;
    uint64_t nb = epoch_rows(p, b);
    CHECK_EQ_U64(na, 2000);
    CHECK_EQ_U64(nb, 2000);
    uint64_t same = 0;
    for (uint64_t i = 0; i < 2000; i++)
        same += a[i] == b[i];
    CHECK(same < 100);
    p.seed = 2;
    p.epoch = 0;
    nb = epoch_rows(p, b);
    same = 0;
    for (uint64_t i = 0; i < 2000; i++)
        same += a[i] == b[i];
    CHECK(same < 100);
    /* shuffled at all: far from the identity, and the chunk order is not the identity */
    same = 0;
    for (uint64_t i = 0; i < 2000; i++)
        same += a[i] == i;
    CHECK(same < 100);
    /* the within-load order alone also changes with the epoch (single load, single chunk) */
    ans_sampler_params q = params_for(64, 64, 1, 8, 1);
    ans_load_plan pl0 = ANS_LOAD_PLAN_INIT, pl1 = ANS_LOAD_PLAN_INIT;
    ans_sampler *s = NULL;
    CHECK_OK(ans_sampler_new(&s, &q));
    CHECK_OK(ans_sampler_plan(s, 0, &pl0));
    ans_sampler_free(s);
    q.epoch = 1;
    CHECK_OK(ans_sampler_new(&s, &q));
    CHECK_OK(ans_sampler_plan(s, 0, &pl1));
    ans_sampler_free(s);
    CHECK(memcmp(pl0.order, pl1.order, 64 * sizeof(uint64_t)) != 0);
    ans_load_plan_free(&pl0);
    ans_load_plan_free(&pl1);
    free(a);
    free(b);
}

/* ---------------------------------------------------------------------------------------------- */
/* Replacement */

static void test_replacement(void)
{
    ans_load_plan plan = ANS_LOAD_PLAN_INIT;
    /* mask [100, 400), chunk 16, 1000 samples over 3 partitions (333 each, 1 not drawn) */
    ans_sampler_params p = params_for(500, 16, 4, 8, 1);
    p.replacement = 1;
    p.num_samples = 1000;
    p.mask_start = 100;
    p.mask_stop = 400;
    p.n_partitions = 3;
    p.seed = 4;
    uint64_t start_seen[300] = {0};
    for (uint64_t part = 0; part < 3; part++) {
        p.partition = part;
        ans_sampler *s = NULL;
        CHECK_OK(ans_sampler_new(&s, &p));
        if (!s) continue;
        CHECK_EQ_U64(ans_sampler_rows_per_partition(s), 333);
        CHECK_EQ_U64(ans_sampler_n_batches(s), 42);
        CHECK_EQ_U64(ans_sampler_n_loads(s), 6);
        CHECK_EQ_U64(ans_sampler_chunk_at(s, 0), UINT64_MAX);
        CHECK_EQ_U64(ans_sampler_row_at(s, 0), UINT64_MAX);
        uint64_t total = 0;
        for (uint64_t l = 0; l < ans_sampler_n_loads(s); l++) {
            CHECK_OK(ans_sampler_plan(s, l, &plan));
            CHECK_OK(ans_load_plan_validate(&plan, 500));
            CHECK(is_permutation(plan.order, plan.n_rows));
            for (size_t i = 0; i < plan.n_ranges; i++) {
                const ans_row_range *r = &plan.ranges[i];
                CHECK(r->start >= 100 && r->start + r->count <= 400);
                /* merged neighbours can exceed the chunk size, each draw is at most 16 rows */
                if (r->count <= 16) start_seen[r->start - 100]++;
            }
            total += plan.n_rows;
        }
        CHECK_EQ_U64(total, 333);
        ans_sampler_free(s);
    }
    /* most of the 285 possible starts [100, 384] occur; none beyond 384 */
    uint64_t distinct = 0;
    for (int i = 0; i < 300; i++)
        distinct += start_seen[i] > 0;
    CHECK(distinct > 40);
    for (int i = 285; i < 300; i++)
        CHECK_EQ_U64(start_seen[i], 0);

    /* num_samples = 0 -> the mask length; repeats allowed; drop_last */
    p.num_samples = 0;
    p.n_partitions = 1;
    p.partition = 0;
    p.drop_last = 1;
    ans_sampler *s = NULL;
    CHECK_OK(ans_sampler_new(&s, &p));
    CHECK_EQ_U64(ans_sampler_rows_per_partition(s), 296);
    CHECK_EQ_U64(ans_sampler_n_batches(s), 37);
    ans_sampler_free(s);

    /* a mask shorter than chunk_size: every chunk is the whole mask */
    ans_sampler_params q = params_for(50, 16, 2, 4, 1);
    q.replacement = 1;
    q.num_samples = 40;
    q.mask_start = 20;
    q.mask_stop = 25;
    CHECK_OK(ans_sampler_new(&s, &q));
    CHECK_EQ_U64(ans_sampler_n_loads(s), 2);
    CHECK_OK(ans_sampler_plan(s, 1, &plan));
    CHECK_EQ_U64(plan.n_rows, 8);
    CHECK_EQ_U64(plan.n_ranges, 2);
    CHECK_EQ_U64(plan.ranges[0].start, 20);
    CHECK_EQ_U64(plan.ranges[0].count, 5);
    CHECK_EQ_U64(plan.ranges[1].start, 20);
    CHECK_EQ_U64(plan.ranges[1].count, 3);
    ans_sampler_free(s);

    /* different partitions and epochs draw differently */
    ans_sampler_params r = params_for(100000, 16, 4, 8, 1);
    r.replacement = 1;
    r.num_samples = 6400;
    r.n_partitions = 2;
    ans_load_plan other = ANS_LOAD_PLAN_INIT;
    CHECK_OK(ans_sampler_new(&s, &r));
    CHECK_OK(ans_sampler_plan(s, 0, &plan));
    ans_sampler_free(s);
    r.partition = 1;
    CHECK_OK(ans_sampler_new(&s, &r));
    CHECK_OK(ans_sampler_plan(s, 0, &other));
    ans_sampler_free(s);
    CHECK(plan.ranges[0].start != other.ranges[0].start ||
          plan.ranges[1].start != other.ranges[1].start);
    r.partition = 0;
    r.epoch = 1;
    CHECK_OK(ans_sampler_new(&s, &r));
    CHECK_OK(ans_sampler_plan(s, 0, &other));
    ans_sampler_free(s);
    CHECK(plan.ranges[0].start != other.ranges[0].start ||
          plan.ranges[1].start != other.ranges[1].start);
    ans_load_plan_free(&other);
    ans_load_plan_free(&plan);
}

/* ---------------------------------------------------------------------------------------------- */
/* Resuming, edge cases, scale */

static void test_locate_batch(void)
{
    ans_sampler_params p = params_for(1000, 10, 3, 6, 1);
    p.n_partitions = 2;
    p.partition = 1;
    ans_sampler *s = NULL;
    CHECK_OK(ans_sampler_new(&s, &p));
    ans_load_plan plan = ANS_LOAD_PLAN_INIT;
    uint64_t b = 0;
    for (uint64_t l = 0; l < ans_sampler_n_loads(s); l++) {
        CHECK_OK(ans_sampler_plan(s, l, &plan));
        for (size_t k = 0; k < plan.n_batches; k++, b++) {
            uint64_t load = 99, in_load = 99;
            CHECK_OK(ans_sampler_locate_batch(s, b, &load, &in_load));
            CHECK_EQ_U64(load, l);
            CHECK_EQ_U64(in_load, k);
            CHECK_EQ_U64(plan.first_batch + k, b);
        }
    }
    CHECK_EQ_U64(b, ans_sampler_n_batches(s));
    CHECK_RC(ans_sampler_locate_batch(s, b, NULL, NULL), ANS_ITEROVER);
    ans_sampler_free(s);
    ans_load_plan_free(&plan);
}

static void test_empty_and_tiny(void)
{
    ans_load_plan plan = ANS_LOAD_PLAN_INIT;
    ans_sampler *s = NULL;
    /* no rows at all */
    ans_sampler_params p = params_for(0, 4, 2, 2, 1);
    CHECK_OK(ans_sampler_new(&s, &p));
    CHECK_EQ_U64(ans_sampler_n_loads(s), 0);
    CHECK_EQ_U64(ans_sampler_n_batches(s), 0);
    CHECK_EQ_U64(ans_sampler_n_chunks(s), 0);
    CHECK_RC(ans_sampler_plan(s, 0, &plan), ANS_ITEROVER);
    CHECK(plan.ranges == NULL);
    ans_sampler_free(s);
    /* an empty mask */
    p = params_for(10, 4, 2, 2, 0);
    p.mask_start = p.mask_stop = 5;
    CHECK_OK(ans_sampler_new(&s, &p));
    CHECK_EQ_U64(ans_sampler_n_loads(s), 0);
    ans_sampler_free(s);
    /* fewer rows than partitions: every partition is empty */
    p = params_for(3, 4, 2, 2, 1);
    p.n_partitions = 4;
    p.partition = 3;
    CHECK_OK(ans_sampler_new(&s, &p));
    CHECK_EQ_U64(ans_sampler_rows_per_partition(s), 0);
    CHECK_EQ_U64(ans_sampler_n_batches(s), 0);
    ans_sampler_free(s);
    /* one row */
    p = params_for(1, 4, 2, 2, 1);
    CHECK_OK(ans_sampler_new(&s, &p));
    CHECK_OK(ans_sampler_plan(s, 0, &plan));
    CHECK_EQ_U64(plan.n_rows, 1);
    CHECK_EQ_U64(plan.n_ranges, 1);
    CHECK_EQ_U64(plan.ranges[0].start, 0);
    CHECK_EQ_U64(plan.n_batches, 1);
    ans_sampler_free(s);
    /* defaults: whole range, 512 x 32, batch 1, sequential */
    ans_sampler_params d = ANS_SAMPLER_PARAMS_INIT;
    d.n_rows = 20000;
    CHECK_OK(ans_sampler_new(&s, &d));
    CHECK_EQ_U64(ans_sampler_get_params(s)->mask_stop, 20000);
    CHECK_EQ_U64(ans_sampler_rows_per_load(s), 16384);
    CHECK_EQ_U64(ans_sampler_n_loads(s), 2);
    CHECK_EQ_U64(ans_sampler_n_batches(s), 20000);
    /* the plan grows when a bigger load comes */
    CHECK_OK(ans_sampler_plan(s, 1, &plan));
    CHECK_EQ_U64(plan.n_rows, 20000 - 16384);
    CHECK_OK(ans_sampler_plan(s, 0, &plan));
    CHECK_EQ_U64(plan.n_rows, 16384);
    CHECK(plan.order_cap >= 16384);
    ans_sampler_free(s);
    ans_load_plan_free(&plan);
    ans_load_plan_free(&plan); /* idempotent */
    ans_load_plan_free(NULL);
    ans_sampler_free(NULL);
}

static void test_huge_dataset(void)
{
    /* 10^12 rows in 2^31 chunks: creating the sampler and planning any load is O(1) in the row
     * count; planned rows agree with row_at and stay in the mask. */
    ans_sampler_params p = params_for(1000000000000ULL, 512, 32, 4096, 1);
    p.mask_start = 12345;
    p.n_partitions = 64;
    p.partition = 17;
    p.seed = 2024;
    ans_sampler *s = NULL;
    CHECK_OK(ans_sampler_new(&s, &p));
    uint64_t T = 1000000000000ULL - 12345, per = T / 64;
    CHECK_EQ_U64(ans_sampler_rows_per_partition(s), per);
    CHECK_EQ_U64(ans_sampler_n_loads(s), (per + 16383) / 16384);
    ans_load_plan plan = ANS_LOAD_PLAN_INIT;
    uint64_t *rows = malloc(16384 * sizeof *rows);
    uint64_t loads[] = {0, 1, 77777, ans_sampler_n_loads(s) - 1};
    for (int i = 0; i < 4; i++) {
        CHECK_OK(ans_sampler_plan(s, loads[i], &plan));
        CHECK_OK(ans_load_plan_validate(&plan, p.n_rows));
        CHECK(plan.n_ranges <= 34);
        expand_ranges(&plan, rows);
        uint64_t base = 17 * per + loads[i] * 16384;
        for (uint64_t j = 0; j < plan.n_rows; j += 97) {
            CHECK(rows[j] >= 12345);
            CHECK_EQ_U64(rows[j], ans_sampler_row_at(s, base + j));
        }
    }
    ans_sampler_free(s);
    free(rows);
    ans_load_plan_free(&plan);
}

/* ---------------------------------------------------------------------------------------------- */
/* Invalid parameters, custom plans */

static void expect_einval(ans_sampler_params p, const char *needle)
{
    ans_sampler *s = (ans_sampler *)&p; /* must be reset to NULL */
    CHECK_RC(ans_sampler_new(&s, &p), ANS_EINVAL);
    CHECK(s == NULL);
    CHECK_STR_CONTAINS(ans_error_last(), needle);
}

static void test_invalid_params(void)
{
    ans_sampler_params base = params_for(100, 10, 4, 8, 1);
    ans_sampler_params p;
    p = base, p.version = 0, expect_einval(p, "version");
    p = base, p.version = 99, expect_einval(p, "version");
    p = base, p.chunk_size = 0, expect_einval(p, "chunk_size");
    p = base, p.preload_nchunks = 0, expect_einval(p, "preload_nchunks");
    p = base, p.batch_size = 0, expect_einval(p, "batch_size");
    p = base, p.batch_size = 7, expect_einval(p, "multiple of batch_size");
    p = base, p.batch_size = 80, p.preload_nchunks = 4, expect_einval(p, "multiple of batch_size");
    p = base, p.batch_size = 41, p.preload_nchunks = 4, expect_einval(p, "multiple of batch_size");
    p = base, p.chunk_size = UINT64_MAX / 2, expect_einval(p, "rows per load");
    p = base, p.chunk_size = 1 << 20, p.preload_nchunks = 1 << 13,
    expect_einval(p, "rows per load");
    p = base, p.mask_start = 50, p.mask_stop = 40, expect_einval(p, "mask");
    p = base, p.mask_stop = 101, expect_einval(p, "mask");
    p = base, p.mask_start = 101, expect_einval(p, "mask");
    p = base, p.n_partitions = 0, expect_einval(p, "n_partitions");
    p = base, p.n_partitions = 4, p.partition = 4, expect_einval(p, "partition");
    p = base, p.shuffle = 0, p.replacement = 1, expect_einval(p, "replacement requires shuffle");
    p = base, p.num_samples = 10, expect_einval(p, "num_samples");
    p = base, p.replacement = 1, p.mask_start = 30, p.mask_stop = 30, expect_einval(p, "non-empty");
    /* the boundary cases that are valid */
    ans_sampler *s = NULL;
    p = base, p.batch_size = 40;
    CHECK_OK(ans_sampler_new(&s, &p));
    ans_sampler_free(s);
    p = base, p.mask_start = 100, p.mask_stop = 100;
    CHECK_OK(ans_sampler_new(&s, &p));
    ans_sampler_free(s);
    p = base, p.chunk_size = 1 << 16, p.preload_nchunks = 1 << 16, p.batch_size = 1;
    CHECK_OK(ans_sampler_new(&s, &p));
    ans_sampler_free(s);
}

static void test_validate_custom(void)
{
    ans_row_range ranges[2] = {{10, 3}, {50, 2}};
    uint64_t order[6] = {4, 0, 0, 2, 1, 3}; /* row 0 repeated: allowed */
    uint64_t bounds[3] = {0, 4, 6};
    ans_load_plan p = ANS_LOAD_PLAN_INIT;
    p.ranges = ranges;
    p.n_ranges = 2;
    p.n_rows = 5;
    p.order = order;
    p.n_order = 6;
    p.batch_bounds = bounds;
    p.n_batches = 2;
    CHECK_OK(ans_load_plan_validate(&p, 52));
    CHECK_RC(ans_load_plan_validate(&p, 51), ANS_EINVAL); /* range 1 ends at 52 */
    CHECK_STR_CONTAINS(ans_error_last(), "range 1");

    ans_load_plan q = p;
    q.n_rows = 6;
    CHECK_RC(ans_load_plan_validate(&q, 100), ANS_EINVAL);
    CHECK_STR_CONTAINS(ans_error_last(), "n_rows");
    q = p;
    order[5] = 5;
    CHECK_RC(ans_load_plan_validate(&q, 100), ANS_EINVAL);
    CHECK_STR_CONTAINS(ans_error_last(), "order[5]");
    order[5] = 3;
    bounds[1] = 6;
    CHECK_RC(ans_load_plan_validate(&q, 100), ANS_EINVAL);
    CHECK_STR_CONTAINS(ans_error_last(), "batch 1");
    bounds[1] = 4;
    bounds[2] = 5;
    CHECK_RC(ans_load_plan_validate(&q, 100), ANS_EINVAL);
    CHECK_STR_CONTAINS(ans_error_last(), "n_order");
    bounds[2] = 6;
    bounds[0] = 1;
    CHECK_RC(ans_load_plan_validate(&q, 100), ANS_EINVAL);
    bounds[0] = 0;
    ranges[0].count = 0;
    q.n_rows = 2;
    CHECK_RC(ans_load_plan_validate(&q, 100), ANS_EINVAL);
    CHECK_STR_CONTAINS(ans_error_last(), "empty");
    ranges[0].count = 3;
    ranges[1].start = UINT64_MAX - 1;
    q.n_rows = 5;
    CHECK_RC(ans_load_plan_validate(&q, UINT64_MAX), ANS_EINVAL);
    ranges[1].start = 50;
    CHECK_OK(ans_load_plan_validate(&q, 100));
    q.batch_bounds = NULL;
    CHECK_RC(ans_load_plan_validate(&q, 100), ANS_EINVAL);
    q.order = NULL;
    CHECK_RC(ans_load_plan_validate(&q, 100), ANS_EINVAL);
    /* an empty plan */
    ans_load_plan e = ANS_LOAD_PLAN_INIT;
    CHECK_OK(ans_load_plan_validate(&e, 0));
    e.n_order = 1;
    e.order = order;
    e.n_rows = 0;
    CHECK_RC(ans_load_plan_validate(&e, 0), ANS_EINVAL);
    /* a plan built through ans_load_plan_reserve */
    ans_load_plan r = ANS_LOAD_PLAN_INIT;
    CHECK_OK(ans_load_plan_reserve(&r, 1, 4, 2));
    r.ranges[0] = (ans_row_range){7, 4};
    r.n_ranges = 1;
    r.n_rows = 4;
    for (int i = 0; i < 4; i++)
        r.order[i] = (uint64_t)(3 - i);
    r.n_order = 4;
    r.batch_bounds[0] = 0, r.batch_bounds[1] = 3, r.batch_bounds[2] = 4;
    r.n_batches = 2;
    CHECK_OK(ans_load_plan_validate(&r, 11));
    ans_load_plan_free(&r);
    CHECK(r.order == NULL && r.order_cap == 0);
}

ANS_TEST_MAIN({"sampler__perm_bijection", test_perm_bijection},
              {"sampler__perm_keys", test_perm_keys}, {"sampler__perm_stats", test_perm_stats},
              {"sampler__shuffle_stats", test_shuffle_stats},
              {"sampler__exactly_once_grid", test_exactly_once_grid},
              {"sampler__short_chunk_positions", test_short_chunk_positions},
              {"sampler__sequential_order", test_sequential_order},
              {"sampler__drop_last_counts", test_drop_last_counts},
              {"sampler__equal_batches_across_partitions", test_equal_batches_across_partitions},
              {"sampler__partitions_disjoint_large", test_partitions_disjoint_large},
              {"sampler__determinism", test_determinism},
              {"sampler__epochs_and_seeds_differ", test_epochs_and_seeds_differ},
              {"sampler__replacement", test_replacement},
              {"sampler__locate_batch", test_locate_batch},
              {"sampler__empty_and_tiny", test_empty_and_tiny},
              {"sampler__huge_dataset", test_huge_dataset},
              {"sampler__invalid_params", test_invalid_params},
              {"sampler__validate_custom", test_validate_custom})
