/* sampler.h - load plans for the loader: which rows to read, in which order to emit them
 * (internal). Layer 4 (loader): depends on common/ only.
 *
 * Overview
 * --------
 * A sampler is a PURE FUNCTION of its parameters (ans_sampler_params). It computes "load plans": a
 * load is a group of up to `chunk_size * preload_nchunks` rows that the loader reads together (as a
 * few contiguous row ranges), permutes, and cuts into batches. A threaded engine executes the plans
 * later. `ans_sampler_plan(s, load, &plan)` may be called for any load, in any order, from any
 * thread, and always gives the same plan for the same parameters: nothing depends on call order,
 * threads or earlier calls. A new epoch is a new sampler made from the same parameters with another
 * `epoch` (creating one costs O(1): under 17 KiB, no per-row tables, nothing that grows past
 * ANS_SAMPLER_TABLE_CHUNKS chunks).
 *
 * Memory: O(1) in the number of rows and chunks. With more than ANS_SAMPLER_TABLE_CHUNKS chunks the
 * epoch's chunk order is a keyed bijection on [0, n_chunks) (ans_perm: a Feistel network with cycle
 * walking) evaluated on demand; with at most that many it is an explicit Fisher-Yates table (at
 * most 16 KiB, exactly uniform, where a Feistel network on a few bits is measurably not). Either
 * way forked DataLoader workers share nothing large. The only per-load memory is the plan itself
 * (at most rows-per-load entries), owned by the caller and reused across calls.
 *
 * Vocabulary
 * ----------
 * - Global rows: [0, n_rows), the concatenation of all sources; the engine maps them to sources.
 * - Mask: the rows [mask_start, mask_stop) the sampler draws from; T = mask_stop - mask_start.
 * - Chunks: the mask cut into C = ceil(T / chunk_size) chunks aligned to mask_start; chunk c covers
 *   [mask_start + c*chunk_size, min(mask_start + (c+1)*chunk_size, mask_stop)). Only the last chunk
 *   (c = C-1) can be short.
 * - L = chunk_size * preload_nchunks: rows per load. L must be a multiple of batch_size, so a batch
 *   never spans two loads and every load but a partition's last holds exactly L / batch_size
 * batches.
 * - Partitions: P = n_partitions disjoint shares of an epoch, one per consumer. The Python side
 *   composes DDP ranks and DataLoader workers: partition = rank * num_workers + worker_id,
 *   n_partitions = world_size * num_workers. All numbers below (loads, batches, rows) are for the
 *   sampler's own partition.
 *
 * Semantics without replacement (replacement = 0)
 * ------------------------------------------------
 * 1. The epoch's row sequence S (length T) is the concatenation of the chunks in the order
 *    chunk_at(0), chunk_at(1), ..., chunk_at(C-1), each chunk's rows in ascending order.
 *    shuffle = 0: chunk_at(k) = k, so S is the mask in order.
 *    shuffle = 1: chunk_at(k) = pi(k) for a pseudo-random permutation pi of [0, C) determined by
 *    (seed, epoch) only - not by the partition, so all partitions agree on S: Fisher-Yates for
 *    C <= ANS_SAMPLER_TABLE_CHUNKS, else ans_perm. The short last chunk is permuted like any other
 *    chunk (it is NOT kept at the end, unlike annbatch).
 * 2. Equal shares: per = floor(T / P). Partition p takes the contiguous stretch S[p*per,
 * (p+1)*per). Stretches are disjoint; a chunk may be split between two partitions (each then reads
 * a part). REMAINDER: the last T - P*per (< P) positions of S, S[P*per, T), are not yielded by
 * anyone in this epoch. With shuffle = 1 they belong to the chunk(s) pi puts last, so which rows
 * are skipped changes from epoch to epoch; with shuffle = 0 they are always the last rows of the
 * mask. With P = 1 nothing is skipped: every masked row is yielded exactly once per epoch.
 * 3. drop_last: the partition yields rows = per - per % batch_size rows, i.e. the last per %
 * batch_size positions of its stretch are skipped too (again epoch-dependent when shuffling), and
 * every batch is full. Without drop_last it yields rows = per and its last batch may be short.
 * 4. Loads: load l of the partition is the stretch positions [l*L, min((l+1)*L, rows)), i.e.
 * S[p*per
 *    + l*L, ...). Its plan lists them as contiguous global ranges in S order (pieces of at most
 *    preload_nchunks + 2 chunks, so at most that many ranges; consecutive pieces adjacent in row
 *    space are merged), and n_loads = ceil(rows / L).
 * 5. Emission order: shuffle = 0: the load's rows in S order. shuffle = 1: a uniformly random
 *    permutation of the load's rows (Fisher-Yates with unbiased bounded draws), determined by
 *    (seed, epoch, partition, load). The permuted rows are cut into batches of batch_size rows;
 * only the partition's very last batch can be short (never with drop_last). n_batches = ceil(rows /
 * batch_size) (= rows / batch_size with drop_last), the same on every partition, which is what DDP
 * needs.
 *
 * Semantics with replacement (replacement = 1; requires shuffle = 1)
 * ------------------------------------------------------------------
 * An epoch draws N = num_samples rows (0 means N = T). Each partition gets per = floor(N / P) of
 * them (the N % P remainder is not drawn); drop_last, loads, n_loads and n_batches follow from
 * `per` exactly as above. A load of n rows is filled by chunks of cl = min(chunk_size, T)
 * consecutive rows whose starts are drawn uniformly and independently from [mask_start, mask_stop -
 * cl] (not aligned; when the mask is shorter than chunk_size every chunk is the whole mask); the
 * last chunk of a load is cut to the rows still needed. Consecutive draws that happen to be
 * adjacent in row space are merged into one range, so a range can exceed chunk_size. Ranges may
 * overlap and rows may repeat. The draws and the emission permutation are determined by (seed,
 * epoch, partition, load). ans_sampler_row_at / ans_sampler_chunk_at do not apply.
 *
 * Resuming: global batch b of the partition (0 <= b < n_batches) is batch b % B of load b / B,
 * where B = ans_sampler_batches_per_load(); ans_sampler_locate_batch does the arithmetic.
 *
 * Thread safety: a sampler is immutable after ans_sampler_new; any number of threads may call the
 * const functions at once. A load plan must not be filled by two threads at once.
 */
#ifndef ANS_LOADER_SAMPLER_H
#define ANS_LOADER_SAMPLER_H

#include "annstream.h"

#include <stddef.h>
#include <stdint.h>

/* ---------------------------------------------------------------------------------------------- */
/* Keyed permutation of [0, n) */

/* A pseudo-random bijection of [0, n) chosen by a 64-bit key, evaluated in O(1) memory: an
 * ANS_PERM_ROUNDS-round alternating (unbalanced when the bit count is odd) Feistel network on
 * [0, 2^k), 2^k the smallest power of two >= n, whose round functions are splitmix64 finalisers of
 * (round key ^ half); values that land in [n, 2^k) are re-encrypted until they fall in [n) (cycle
 * walking, < 2 passes expected). 8 rounds rather than 4: with 4, pair statistics (where two given
 * elements land, 4*10^5 keys) are visibly non-uniform for domains of 2^8 to 2^10 elements; with 8
 * no bias shows from ~32 elements up. Below that (a few bits per half) no round count gives a
 * uniform permutation, which is why the sampler uses a table for small chunk counts. A plain value:
 * copy it freely. */
#define ANS_PERM_ROUNDS 8
typedef struct ans_perm {
    uint64_t n;                     /* domain size */
    unsigned bits;                  /* k */
    uint64_t keys[ANS_PERM_ROUNDS]; /* round keys */
} ans_perm;

/* Set up the permutation of [0, n) for `key`. n = 0 gives an empty domain. */
void ans_perm_init(ans_perm *perm, uint64_t n, uint64_t key);
/* The image of i (i < n). */
uint64_t ans_perm_apply(const ans_perm *perm, uint64_t i);
/* The inverse: the i with ans_perm_apply(perm, i) == y (y < n). */
uint64_t ans_perm_invert(const ans_perm *perm, uint64_t y);

/* splitmix64's output function (add the golden gamma, then the finaliser): a bijective, well-mixed
 * 64-bit hash. Exposed for tests and other samplers. */
uint64_t ans_mix64(uint64_t x);

/* ---------------------------------------------------------------------------------------------- */
/* Parameters */

/* mask_stop value meaning "up to n_rows". */
#define ANS_SAMPLER_MASK_END UINT64_MAX

typedef struct ans_sampler_params {
    unsigned version;         /* ANS_SAMPLER_PARAMS_VERSION */
    uint64_t n_rows;          /* total rows across all sources */
    uint64_t mask_start;      /* rows [mask_start, mask_stop) are sampled; default: all rows */
    uint64_t mask_stop;       /* ANS_SAMPLER_MASK_END = n_rows; start <= stop <= n_rows */
    uint64_t chunk_size;      /* >= 1; default 512 */
    uint64_t preload_nchunks; /* >= 1; default 32 */
    uint64_t batch_size;      /* >= 1, divides chunk_size * preload_nchunks; default 1 */
    int shuffle;              /* nonzero: random chunk order and random order within loads */
    int drop_last;            /* nonzero: no short batch (see semantics 3) */
    int replacement;          /* nonzero: draw chunks with replacement (needs shuffle) */
    uint64_t num_samples; /* with replacement: rows per epoch (all partitions); 0 = mask length */
    uint64_t seed;
    uint64_t epoch;
    uint64_t partition;    /* this consumer, < n_partitions */
    uint64_t n_partitions; /* >= 1 */
} ans_sampler_params;

#define ANS_SAMPLER_PARAMS_VERSION 1
#define ANS_SAMPLER_PARAMS_INIT                                                                    \
    {ANS_SAMPLER_PARAMS_VERSION, 0, 0, ANS_SAMPLER_MASK_END, 512, 32, 1, 0, 0, 0, 0, 0, 0, 0, 1}

/* Chunk counts up to this use an explicit (Fisher-Yates) chunk order, larger ones ans_perm. */
#define ANS_SAMPLER_TABLE_CHUNKS 4096

/* Largest allowed chunk_size * preload_nchunks (rows per load). */
#define ANS_SAMPLER_MAX_LOAD_ROWS ((uint64_t)1 << 32)

/* ---------------------------------------------------------------------------------------------- */
/* Load plans */

/* `count` consecutive global rows starting at `start`. */
typedef struct ans_row_range {
    uint64_t start;
    uint64_t count;
} ans_row_range;

/* One load: what to read and how to emit it. Caller-owned and reused: start from
 * ANS_LOAD_PLAN_INIT, pass it to ans_sampler_plan as often as wanted (arrays grow only when a load
 * needs more room), release the arrays with ans_load_plan_free.
 *
 * The loader reads ranges[0..n_ranges) and concatenates them (n_rows rows, "load positions"
 * 0..n_rows-1). Output position j (0 <= j < n_order) is load position order[j]. Batch i is output
 * positions [batch_bounds[i], batch_bounds[i+1]); batch_bounds has n_batches + 1 entries, starting
 * at 0 and ending at n_order.
 * Plans from ans_sampler_plan have n_order == n_rows and `order` a permutation of [0, n_rows).
 * Custom (Python) samplers may repeat rows: see ans_load_plan_validate. */
typedef struct ans_load_plan {
    ans_row_range *ranges;
    size_t n_ranges;
    uint64_t n_rows; /* sum of ranges[].count */
    uint64_t *order;
    size_t n_order;
    uint64_t *batch_bounds; /* n_batches + 1 entries */
    size_t n_batches;
    uint64_t load;        /* index of this load in its partition (ans_sampler_plan) */
    uint64_t first_batch; /* partition-global index of batch 0 of this load (ans_sampler_plan) */
    /* capacities of the arrays above, managed by ans_load_plan_reserve */
    size_t ranges_cap;
    size_t order_cap;
    size_t bounds_cap;
} ans_load_plan;

#define ANS_LOAD_PLAN_INIT {NULL, 0, 0, NULL, 0, NULL, 0, 0, 0, 0, 0, 0}

/* Grow the arrays of `plan` to hold at least n_ranges ranges, n_order order entries and
 * n_batches + 1 batch bounds (contents kept; counts untouched). The arrays must have come from the
 * library (ANS_LOAD_PLAN_INIT, then this function or ans_sampler_plan) - a plan pointing at caller
 * memory (e.g. numpy arrays) may only be given to ans_load_plan_validate.
 * @return ANS_OK; ANS_ENOMEM (the plan keeps its old arrays). */
int ans_load_plan_reserve(ans_load_plan *plan, size_t n_ranges, size_t n_order, size_t n_batches);

/* Free the arrays and reset `plan` to ANS_LOAD_PLAN_INIT. NULL-tolerant. */
void ans_load_plan_free(ans_load_plan *plan);

/* Check a plan made elsewhere (a custom Python sampler) before executing it:
 * - every range has count >= 1 and start + count <= n_rows_total (no overflow); ranges may overlap;
 * - n_rows equals the sum of the counts;
 * - every order entry is < n_rows (repeats allowed; rows nobody emits are allowed);
 * - batch_bounds[0] == 0, strictly increasing (no empty batch), batch_bounds[n_batches] == n_order.
 *   A plan with n_batches == 0 must have n_order == 0; its batch_bounds may then be NULL.
 * Only reads the plan.
 * @return ANS_OK; ANS_EINVAL with a message naming the first offending entry. */
int ans_load_plan_validate(const ans_load_plan *plan, uint64_t n_rows_total);

/* ---------------------------------------------------------------------------------------------- */
/* Samplers */

typedef struct ans_sampler ans_sampler;

/* Validate `params` and make a sampler. O(1) time and memory.
 * @return ANS_OK; ANS_EINVAL with a message naming the parameter (unknown version, chunk_size,
 *         preload_nchunks or batch_size 0, rows per load not a multiple of batch_size or above
 *         ANS_SAMPLER_MAX_LOAD_ROWS, mask out of range, partition >= n_partitions, n_partitions 0,
 *         replacement without shuffle, num_samples without replacement, replacement from an empty
 *         mask); ANS_ENOMEM. */
int ans_sampler_new(ans_sampler **out, const ans_sampler_params *params);
/* NULL-tolerant. */
void ans_sampler_free(ans_sampler *sampler);

/* The parameters, with mask_stop resolved (never ANS_SAMPLER_MASK_END). Borrowed from the sampler.
 */
const ans_sampler_params *ans_sampler_get_params(const ans_sampler *sampler);

/* Loads of this partition in the epoch. */
uint64_t ans_sampler_n_loads(const ans_sampler *sampler);
/* Batches of this partition in the epoch (after drop_last); equal on all partitions. */
uint64_t ans_sampler_n_batches(const ans_sampler *sampler);
/* Rows this partition yields in the epoch (after the partition remainder and drop_last). */
uint64_t ans_sampler_rows_per_partition(const ans_sampler *sampler);
/* chunk_size * preload_nchunks. */
uint64_t ans_sampler_rows_per_load(const ans_sampler *sampler);
/* rows_per_load / batch_size: batches in every load except possibly the partition's last. */
uint64_t ans_sampler_batches_per_load(const ans_sampler *sampler);
/* C, the number of mask chunks (0 for an empty mask). */
uint64_t ans_sampler_n_chunks(const ans_sampler *sampler);

/* Without replacement: the mask chunk (0 <= c < C) at position k of the epoch's chunk order, or
 * UINT64_MAX when k >= C or the sampler draws with replacement. */
uint64_t ans_sampler_chunk_at(const ans_sampler *sampler, uint64_t k);
/* Without replacement: the global row at position pos of the epoch's row sequence S (all
 * partitions, 0 <= pos < T), or UINT64_MAX when out of range or with replacement. */
uint64_t ans_sampler_row_at(const ans_sampler *sampler, uint64_t pos);

/* Compute the plan of load `load` (0 <= load < n_loads) of this partition into `plan`, reusing its
 * arrays. Pure: the result depends only on the parameters and `load`.
 * @return ANS_OK; ANS_ITEROVER when load >= n_loads (plan untouched); ANS_ENOMEM. */
int ans_sampler_plan(const ans_sampler *sampler, uint64_t load, ans_load_plan *plan);

/* Map the partition-global batch index `batch` to its load and its index within that load (for
 * resuming an epoch at a batch). Either output may be NULL.
 * @return ANS_OK; ANS_ITEROVER when batch >= n_batches. */
int ans_sampler_locate_batch(const ans_sampler *sampler, uint64_t batch, uint64_t *load,
                             uint64_t *batch_in_load);

#endif
