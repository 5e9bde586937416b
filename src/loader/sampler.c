/* sampler.c - load plans: keyed chunk permutation, partition stretches, per-load shuffles.
 * See sampler.h for the semantics; this file only implements them. */
#include "loader/sampler.h"

#include "common/error.h"
#include "common/mem.h"

#include <assert.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------------------------------------- */
/* Hashing and counter-based random numbers */

#define GOLDEN64 UINT64_C(0x9e3779b97f4a7c15)

/* Domain-separation tags for the keys derived from (seed, epoch, ...). */
#define TAG_CHUNKS UINT64_C(0x63686e6b5f706572) /* chunk permutation */
#define TAG_ROWS UINT64_C(0x726f77735f706572)   /* within-load row permutation */
#define TAG_REPL UINT64_C(0x7265706c5f647277)   /* chunk starts with replacement */
#define TAG_ROUND UINT64_C(0x666569737465726b)  /* Feistel round keys */

uint64_t ans_mix64(uint64_t z)
{
    z += GOLDEN64;
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

/* Absorb one word into a running hash. */
static uint64_t hash_absorb(uint64_t h, uint64_t v)
{
    return ans_mix64(h ^ ans_mix64(v));
}

static uint64_t hash_key(uint64_t tag, uint64_t seed, uint64_t epoch, uint64_t partition,
                         uint64_t load)
{
    uint64_t h = ans_mix64(tag);
    h = hash_absorb(h, seed);
    h = hash_absorb(h, epoch);
    h = hash_absorb(h, partition);
    h = hash_absorb(h, load);
    return h;
}

/* splitmix64 stream: state advances by the golden gamma, output is the finaliser of the state. */
typedef struct rng {
    uint64_t state;
} rng;

static uint64_t rng_next(rng *r)
{
    r->state += GOLDEN64;
    return ans_mix64(r->state);
}

/* Full 64x64 -> 128-bit product, portable. */
static void mul128(uint64_t a, uint64_t b, uint64_t *hi, uint64_t *lo)
{
    uint64_t a0 = (uint32_t)a, a1 = a >> 32, b0 = (uint32_t)b, b1 = b >> 32;
    uint64_t p00 = a0 * b0, p01 = a0 * b1, p10 = a1 * b0, p11 = a1 * b1;
    uint64_t mid = (p00 >> 32) + (uint32_t)p01 + (uint32_t)p10;
    *lo = (mid << 32) | (uint32_t)p00;
    *hi = p11 + (p01 >> 32) + (p10 >> 32) + (mid >> 32);
}

/* Unbiased draw from [0, range), range >= 1 (Lemire, "Fast random integer generation in an
 * interval", 2019: multiply-shift with a rejection step on the low word). */
static uint64_t rng_below(rng *r, uint64_t range)
{
    uint64_t hi, lo;
    mul128(rng_next(r), range, &hi, &lo);
    if (lo < range) {
        uint64_t threshold = (0 - range) % range; /* 2^64 mod range */
        while (lo < threshold)
            mul128(rng_next(r), range, &hi, &lo);
    }
    return hi;
}

/* ---------------------------------------------------------------------------------------------- */
/* Feistel permutation */

static uint64_t low_mask(unsigned bits)
{
    return bits >= 64 ? UINT64_MAX : (((uint64_t)1 << bits) - 1);
}

/* Round r splits x (k bits) into a = top `hi` bits and b = low `lo` bits and returns
 * (b << hi) | ((a ^ F_r(b)) mod 2^hi): b moves up, the modified half comes down. The next round
 * swaps the widths, so each half is modified in turn. Every round is a bijection of [0, 2^k). */
static void round_widths(const ans_perm *p, int r, unsigned *hi, unsigned *lo)
{
    unsigned h = p->bits / 2, l = p->bits - h;
    if (r & 1) {
        *hi = l;
        *lo = h;
    } else {
        *hi = h;
        *lo = l;
    }
}

static uint64_t feistel_encrypt(const ans_perm *p, uint64_t x)
{
    for (int r = 0; r < ANS_PERM_ROUNDS; r++) {
        unsigned hi, lo;
        round_widths(p, r, &hi, &lo);
        uint64_t a = lo >= 64 ? 0 : x >> lo;
        uint64_t b = x & low_mask(lo);
        uint64_t f = ans_mix64(p->keys[r] ^ b);
        x = (hi >= 64 ? 0 : b << hi) | ((a ^ f) & low_mask(hi));
    }
    return x;
}

static uint64_t feistel_decrypt(const ans_perm *p, uint64_t y)
{
    for (int r = ANS_PERM_ROUNDS - 1; r >= 0; r--) {
        unsigned hi, lo;
        round_widths(p, r, &hi, &lo);
        uint64_t b = hi >= 64 ? 0 : y >> hi;
        uint64_t c = y & low_mask(hi);
        uint64_t a = (c ^ ans_mix64(p->keys[r] ^ b)) & low_mask(hi);
        y = (lo >= 64 ? 0 : a << lo) | b;
    }
    return y;
}

void ans_perm_init(ans_perm *perm, uint64_t n, uint64_t key)
{
    memset(perm, 0, sizeof *perm);
    perm->n = n;
    unsigned bits = 0;
    while (bits < 64 && n > 1 && ((n - 1) >> bits) != 0)
        bits++;
    perm->bits = bits;
    uint64_t h = hash_absorb(ans_mix64(TAG_ROUND), key);
    for (int r = 0; r < ANS_PERM_ROUNDS; r++) {
        h = hash_absorb(h, (uint64_t)r);
        perm->keys[r] = h;
    }
}

uint64_t ans_perm_apply(const ans_perm *perm, uint64_t i)
{
    assert(i < perm->n);
    if (perm->n <= 1) return i;
    /* Cycle walking: the cycle of i under the 2^k-permutation returns to i, so it meets [0, n). */
    do
        i = feistel_encrypt(perm, i);
    while (i >= perm->n);
    return i;
}

uint64_t ans_perm_invert(const ans_perm *perm, uint64_t y)
{
    assert(y < perm->n);
    if (perm->n <= 1) return y;
    do
        y = feistel_decrypt(perm, y);
    while (y >= perm->n);
    return y;
}

/* ---------------------------------------------------------------------------------------------- */
/* Sampler */

struct ans_sampler {
    ans_sampler_params p; /* mask_stop resolved */
    uint64_t total;       /* T: mask rows */
    uint64_t load_rows;   /* L */
    uint64_t n_chunks;    /* C */
    uint64_t last_len;    /* length of mask chunk C-1 (== chunk_size unless short) */
    uint64_t last_pos;    /* position of mask chunk C-1 in the epoch's chunk order */
    uint64_t per;         /* rows per partition before drop_last */
    uint64_t rows;        /* rows yielded by this partition */
    uint64_t part_off;    /* start of this partition's stretch of S (no replacement) */
    uint64_t n_loads;
    uint64_t n_batches;
    /* chunk order (shuffle, no replacement): an explicit table for small C, else the Feistel */
    uint32_t *table;
    ans_perm perm;
};

static uint64_t ceil_div(uint64_t a, uint64_t b)
{
    return a / b + (a % b != 0);
}

/* Small C: a uniformly random permutation by Fisher-Yates (exact, at most 16 KiB). */
static int init_table(ans_sampler *s, uint64_t key)
{
    uint64_t n = s->n_chunks;
    s->table = ans_malloc(n * sizeof *s->table);
    if (!s->table) return ANS_ENOMEM;
    for (uint64_t i = 0; i < n; i++)
        s->table[i] = (uint32_t)i;
    rng r = {key};
    for (uint64_t i = n; i > 1; i--) {
        uint64_t j = rng_below(&r, i);
        uint32_t t = s->table[i - 1];
        s->table[i - 1] = s->table[j];
        s->table[j] = t;
    }
    for (uint64_t k = 0; k < n; k++)
        if (s->table[k] == n - 1) s->last_pos = k;
    return ANS_OK;
}

static int check_params(const ans_sampler_params *p, uint64_t *mask_stop)
{
    if (p->version < 1 || p->version > ANS_SAMPLER_PARAMS_VERSION)
        return ans_err(ANS_EINVAL, "sampler: params version %u unsupported (expected %u)",
                       p->version, ANS_SAMPLER_PARAMS_VERSION);
    if (p->chunk_size < 1) return ans_err(ANS_EINVAL, "sampler: chunk_size must be >= 1");
    if (p->preload_nchunks < 1) return ans_err(ANS_EINVAL, "sampler: preload_nchunks must be >= 1");
    if (p->batch_size < 1) return ans_err(ANS_EINVAL, "sampler: batch_size must be >= 1");
    uint64_t load_rows;
    if (ans_mul_overflow(p->chunk_size, p->preload_nchunks, &load_rows) ||
        load_rows > ANS_SAMPLER_MAX_LOAD_ROWS)
        return ans_err(ANS_EINVAL,
                       "sampler: rows per load (chunk_size %" PRIu64 " * preload_nchunks %" PRIu64
                       ") exceeds %" PRIu64,
                       p->chunk_size, p->preload_nchunks, ANS_SAMPLER_MAX_LOAD_ROWS);
    if (load_rows % p->batch_size != 0)
        return ans_err(ANS_EINVAL,
                       "sampler: rows per load (chunk_size %" PRIu64 " * preload_nchunks %" PRIu64
                       " = %" PRIu64 ") must be a multiple of batch_size %" PRIu64,
                       p->chunk_size, p->preload_nchunks, load_rows, p->batch_size);
    uint64_t stop = p->mask_stop == ANS_SAMPLER_MASK_END ? p->n_rows : p->mask_stop;
    if (stop > p->n_rows || p->mask_start > stop)
        return ans_err(ANS_EINVAL,
                       "sampler: mask [%" PRIu64 ", %" PRIu64 ") is not a range within the %" PRIu64
                       " rows",
                       p->mask_start, stop, p->n_rows);
    if (p->n_partitions < 1) return ans_err(ANS_EINVAL, "sampler: n_partitions must be >= 1");
    if (p->partition >= p->n_partitions)
        return ans_err(ANS_EINVAL,
                       "sampler: partition %" PRIu64 " out of range (n_partitions %" PRIu64 ")",
                       p->partition, p->n_partitions);
    if (p->replacement && !p->shuffle)
        return ans_err(ANS_EINVAL, "sampler: replacement requires shuffle");
    if (!p->replacement && p->num_samples != 0)
        return ans_err(ANS_EINVAL, "sampler: num_samples requires replacement");
    if (p->replacement && stop == p->mask_start)
        return ans_err(ANS_EINVAL, "sampler: replacement needs a non-empty mask");
    *mask_stop = stop;
    return ANS_OK;
}

int ans_sampler_new(ans_sampler **out, const ans_sampler_params *params)
{
    *out = NULL;
    uint64_t stop = 0;
    ANS_TRY(check_params(params, &stop));
    ans_sampler *s = ans_calloc(1, sizeof *s);
    if (!s) return ANS_ENOMEM;
    s->p = *params;
    s->p.mask_stop = stop;
    s->p.shuffle = params->shuffle != 0;
    s->p.drop_last = params->drop_last != 0;
    s->p.replacement = params->replacement != 0;
    s->total = stop - params->mask_start;
    s->load_rows = params->chunk_size * params->preload_nchunks;
    uint64_t bs = params->batch_size;

    if (s->p.replacement) {
        uint64_t n = params->num_samples ? params->num_samples : s->total;
        s->per = n / params->n_partitions;
    } else {
        s->n_chunks = s->total ? ceil_div(s->total, params->chunk_size) : 0;
        if (s->n_chunks) {
            s->last_len = s->total - (s->n_chunks - 1) * params->chunk_size;
            s->last_pos = s->n_chunks - 1;
            uint64_t key = hash_key(TAG_CHUNKS, params->seed, params->epoch, 0, 0);
            if (s->p.shuffle && s->n_chunks <= ANS_SAMPLER_TABLE_CHUNKS) {
                if (init_table(s, key) < 0) {
                    ans_sampler_free(s);
                    return ANS_ENOMEM;
                }
            } else if (s->p.shuffle) {
                ans_perm_init(&s->perm, s->n_chunks, key);
                s->last_pos = ans_perm_invert(&s->perm, s->n_chunks - 1);
            }
        }
        s->per = s->total / params->n_partitions;
        s->part_off = params->partition * s->per;
    }
    s->rows = s->p.drop_last ? s->per - s->per % bs : s->per;
    s->n_loads = ceil_div(s->rows, s->load_rows);
    s->n_batches = ceil_div(s->rows, bs);
    *out = s;
    return ANS_OK;
}

void ans_sampler_free(ans_sampler *sampler)
{
    if (!sampler) return;
    free(sampler->table);
    free(sampler);
}

const ans_sampler_params *ans_sampler_get_params(const ans_sampler *s)
{
    return &s->p;
}

uint64_t ans_sampler_n_loads(const ans_sampler *s)
{
    return s->n_loads;
}

uint64_t ans_sampler_n_batches(const ans_sampler *s)
{
    return s->n_batches;
}

uint64_t ans_sampler_rows_per_partition(const ans_sampler *s)
{
    return s->rows;
}

uint64_t ans_sampler_rows_per_load(const ans_sampler *s)
{
    return s->load_rows;
}

uint64_t ans_sampler_batches_per_load(const ans_sampler *s)
{
    return s->load_rows / s->p.batch_size;
}

uint64_t ans_sampler_n_chunks(const ans_sampler *s)
{
    return s->n_chunks;
}

uint64_t ans_sampler_chunk_at(const ans_sampler *s, uint64_t k)
{
    if (s->p.replacement || k >= s->n_chunks) return UINT64_MAX;
    if (!s->p.shuffle) return k;
    return s->table ? s->table[k] : ans_perm_apply(&s->perm, k);
}

/* Length of the chunk at position k of the chunk order. */
static uint64_t chunk_len_at(const ans_sampler *s, uint64_t k)
{
    return k == s->last_pos ? s->last_len : s->p.chunk_size;
}

/* Position pos of S -> (position k in the chunk order, offset within that chunk). All chunks before
 * last_pos are full, the one at last_pos has last_len rows, the ones after are full again. */
static void locate(const ans_sampler *s, uint64_t pos, uint64_t *k, uint64_t *within)
{
    uint64_t cs = s->p.chunk_size;
    uint64_t base = s->last_pos * cs;
    if (pos < base) {
        *k = pos / cs;
        *within = pos % cs;
    } else if (pos - base < s->last_len) {
        *k = s->last_pos;
        *within = pos - base;
    } else {
        uint64_t d = pos - base - s->last_len;
        *k = s->last_pos + 1 + d / cs;
        *within = d % cs;
    }
}

uint64_t ans_sampler_row_at(const ans_sampler *s, uint64_t pos)
{
    if (s->p.replacement || pos >= s->total) return UINT64_MAX;
    uint64_t k, within;
    locate(s, pos, &k, &within);
    return s->p.mask_start + ans_sampler_chunk_at(s, k) * s->p.chunk_size + within;
}

/* ---------------------------------------------------------------------------------------------- */
/* Load plans */

static int grow(void **arr, size_t *cap, size_t want, size_t elem)
{
    if (want <= *cap) return ANS_OK;
    size_t n = *cap ? *cap : 16;
    while (n < want)
        n = n > SIZE_MAX / 2 ? want : n * 2;
    if (n > SIZE_MAX / elem)
        return ans_err(ANS_ENOMEM, "load plan: %zu entries do not fit in memory", want);
    void *p = ans_realloc(*arr, n * elem);
    if (!p) return ANS_ENOMEM;
    *arr = p;
    *cap = n;
    return ANS_OK;
}

int ans_load_plan_reserve(ans_load_plan *plan, size_t n_ranges, size_t n_order, size_t n_batches)
{
    if (n_batches == SIZE_MAX) return ans_err(ANS_ENOMEM, "load plan: too many batches");
    ANS_TRY(grow((void **)&plan->ranges, &plan->ranges_cap, n_ranges, sizeof *plan->ranges));
    ANS_TRY(grow((void **)&plan->order, &plan->order_cap, n_order, sizeof *plan->order));
    ANS_TRY(grow((void **)&plan->batch_bounds, &plan->bounds_cap, n_batches + 1,
                 sizeof *plan->batch_bounds));
    return ANS_OK;
}

void ans_load_plan_free(ans_load_plan *plan)
{
    if (!plan) return;
    free(plan->ranges);
    free(plan->order);
    free(plan->batch_bounds);
    memset(plan, 0, sizeof *plan);
}

/* Append a range, merging it into the previous one when they are adjacent in row space. */
static void push_range(ans_load_plan *plan, uint64_t start, uint64_t count)
{
    if (plan->n_ranges) {
        ans_row_range *prev = &plan->ranges[plan->n_ranges - 1];
        if (prev->start + prev->count == start) {
            prev->count += count;
            return;
        }
    }
    assert(plan->n_ranges < plan->ranges_cap);
    plan->ranges[plan->n_ranges].start = start;
    plan->ranges[plan->n_ranges].count = count;
    plan->n_ranges++;
}

/* Ranges of S[a, a + n) in S order. */
static void ranges_sequence(const ans_sampler *s, uint64_t a, uint64_t n, ans_load_plan *plan)
{
    uint64_t k, within;
    locate(s, a, &k, &within);
    while (n) {
        uint64_t take = chunk_len_at(s, k) - within;
        if (take > n) take = n;
        uint64_t c = ans_sampler_chunk_at(s, k);
        push_range(plan, s->p.mask_start + c * s->p.chunk_size + within, take);
        n -= take;
        k++;
        within = 0;
    }
}

/* n rows of chunks drawn with replacement for load `load`. */
static void ranges_replacement(const ans_sampler *s, uint64_t load, uint64_t n, ans_load_plan *plan)
{
    const ans_sampler_params *p = &s->p;
    uint64_t cl = p->chunk_size < s->total ? p->chunk_size : s->total;
    rng r = {hash_key(TAG_REPL, p->seed, p->epoch, p->partition, load)};
    while (n) {
        uint64_t start = p->mask_start + rng_below(&r, s->total - cl + 1);
        uint64_t take = cl < n ? cl : n;
        push_range(plan, start, take);
        n -= take;
    }
}

int ans_sampler_plan(const ans_sampler *s, uint64_t load, ans_load_plan *plan)
{
    if (load >= s->n_loads)
        return ans_err(ANS_ITEROVER, "sampler: load %" PRIu64 " out of range (%" PRIu64 " loads)",
                       load, s->n_loads);
    const ans_sampler_params *p = &s->p;
    uint64_t L = s->load_rows, bs = p->batch_size;
    uint64_t first = load * L;
    uint64_t n = s->rows - first < L ? s->rows - first : L; /* <= 2^32 */
    uint64_t nb = ceil_div(n, bs);
    if (n > SIZE_MAX / sizeof(uint64_t) - 1)
        return ans_err(ANS_ENOMEM, "sampler: a load of %" PRIu64 " rows does not fit in memory", n);
    uint64_t max_ranges;
    if (p->replacement) {
        uint64_t cl = p->chunk_size < s->total ? p->chunk_size : s->total;
        max_ranges = ceil_div(n, cl);
    } else {
        /* A window of n rows meets at most ceil(n / cs) + 1 full chunks plus the short one. */
        max_ranges = ceil_div(n, p->chunk_size) + 2;
    }
    ANS_TRY(ans_load_plan_reserve(plan, (size_t)max_ranges, (size_t)n, (size_t)nb));

    plan->n_ranges = 0;
    if (p->replacement)
        ranges_replacement(s, load, n, plan);
    else
        ranges_sequence(s, s->part_off + first, n, plan);
    plan->n_rows = n;

    plan->n_order = (size_t)n;
    for (uint64_t i = 0; i < n; i++)
        plan->order[i] = i;
    if (p->shuffle) {
        rng r = {hash_key(TAG_ROWS, p->seed, p->epoch, p->partition, load)};
        for (uint64_t i = n; i > 1; i--) { /* Fisher-Yates */
            uint64_t j = rng_below(&r, i);
            uint64_t t = plan->order[i - 1];
            plan->order[i - 1] = plan->order[j];
            plan->order[j] = t;
        }
    }

    plan->n_batches = (size_t)nb;
    for (uint64_t b = 0; b < nb; b++)
        plan->batch_bounds[b] = b * bs;
    plan->batch_bounds[nb] = n;
    plan->load = load;
    plan->first_batch = load * (L / bs);
    return ANS_OK;
}

int ans_sampler_locate_batch(const ans_sampler *s, uint64_t batch, uint64_t *load,
                             uint64_t *batch_in_load)
{
    if (batch >= s->n_batches)
        return ans_err(ANS_ITEROVER,
                       "sampler: batch %" PRIu64 " out of range (%" PRIu64 " batches)", batch,
                       s->n_batches);
    uint64_t bpl = s->load_rows / s->p.batch_size;
    if (load) *load = batch / bpl;
    if (batch_in_load) *batch_in_load = batch % bpl;
    return ANS_OK;
}

/* ---------------------------------------------------------------------------------------------- */
/* Validation of custom plans */

int ans_load_plan_validate(const ans_load_plan *plan, uint64_t n_rows_total)
{
    if (plan->n_ranges && !plan->ranges) return ans_err(ANS_EINVAL, "load plan: ranges is NULL");
    uint64_t sum = 0;
    for (size_t i = 0; i < plan->n_ranges; i++) {
        const ans_row_range *r = &plan->ranges[i];
        uint64_t end;
        if (r->count == 0) return ans_err(ANS_EINVAL, "load plan: range %zu is empty", i);
        if (ans_add_overflow(r->start, r->count, &end) || end > n_rows_total)
            return ans_err(ANS_EINVAL,
                           "load plan: range %zu [%" PRIu64 ", +%" PRIu64 ") exceeds the %" PRIu64
                           " rows",
                           i, r->start, r->count, n_rows_total);
        if (ans_add_overflow(sum, r->count, &sum))
            return ans_err(ANS_EINVAL, "load plan: range counts overflow");
    }
    if (sum != plan->n_rows)
        return ans_err(ANS_EINVAL,
                       "load plan: n_rows %" PRIu64 " differs from the %" PRIu64
                       " rows of the ranges",
                       plan->n_rows, sum);
    if (plan->n_order && !plan->order) return ans_err(ANS_EINVAL, "load plan: order is NULL");
    for (size_t j = 0; j < plan->n_order; j++)
        if (plan->order[j] >= plan->n_rows)
            return ans_err(ANS_EINVAL,
                           "load plan: order[%zu] = %" PRIu64 " is not below n_rows %" PRIu64, j,
                           plan->order[j], plan->n_rows);
    if (plan->n_batches == 0) {
        if (plan->n_order != 0)
            return ans_err(ANS_EINVAL, "load plan: %zu order entries but no batch", plan->n_order);
        if (plan->batch_bounds && plan->batch_bounds[0] != 0)
            return ans_err(ANS_EINVAL, "load plan: batch_bounds[0] must be 0");
        return ANS_OK;
    }
    if (!plan->batch_bounds) return ans_err(ANS_EINVAL, "load plan: batch_bounds is NULL");
    if (plan->batch_bounds[0] != 0)
        return ans_err(ANS_EINVAL, "load plan: batch_bounds[0] = %" PRIu64 ", must be 0",
                       plan->batch_bounds[0]);
    for (size_t i = 0; i < plan->n_batches; i++)
        if (plan->batch_bounds[i + 1] <= plan->batch_bounds[i])
            return ans_err(ANS_EINVAL,
                           "load plan: batch %zu is empty or reversed (bounds %" PRIu64 ", %" PRIu64
                           ")",
                           i, plan->batch_bounds[i], plan->batch_bounds[i + 1]);
    if (plan->batch_bounds[plan->n_batches] != plan->n_order)
        return ans_err(ANS_EINVAL,
                       "load plan: batch_bounds[%zu] = %" PRIu64 " must equal n_order %zu",
                       plan->n_batches, plan->batch_bounds[plan->n_batches], plan->n_order);
    return ANS_OK;
}
