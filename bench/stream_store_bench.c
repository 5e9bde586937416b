/* stream_store_bench.c - how fast can this machine write batch rows? A loader's last step puts each
 * decoded row (a few KiB) at its place in a batch buffer far larger than the caches; this times
 * that one step alone, from a hot 400 KiB source (a decoded chunk) into a destination of --dest MiB
 * per thread, rows in a shuffled order, with four kinds of stores:
 *
 *   sse2-stream   annstream's ans_stream_copy with 16-byte non-temporal stores
 *   avx2-stream   the same with 32-byte ones (only where the CPU has AVX2)
 *   avx512-stream the same with 64-byte ones, one per cache line (only with AVX-512)
 *   memcpy       glibc's memcpy (plain stores at this size)
 *   rep-movsb    the string instruction
 *
 *   cc -O2 -pthread -Isrc bench/stream_store_bench.c -o /tmp/stream_store_bench
 *   /tmp/stream_store_bench [THREADS [ROW_BYTES [DEST_MIB [ROUNDS [KIND]]]]]
 *
 * (defaults 1 6256 512 3, every kind; each kind in a fresh process gives steadier figures).
 *
 * Prints GB/s per kind: bytes written by all threads / the slowest thread's copy time (set-up,
 * page faults included, is not timed). x86-64 only. */
#include "common/stream.c" /* the copies measured are the library's own */

#include <immintrin.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SRC_BYTES (400 * 1024)

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* annstream's own copies (src/common/stream.c, compiled in), at each instruction set */
static void sse2_stream(void *d, const void *s, size_t n)
{
    ans_stream_copy_isa(ANS_ISA_SSE2, d, s, n);
}

static void avx2_stream(void *d, const void *s, size_t n)
{
    ans_stream_copy_isa(ANS_ISA_AVX2, d, s, n);
}

static void avx512_stream(void *d, const void *s, size_t n)
{
    ans_stream_copy_isa(ANS_ISA_AVX512, d, s, n);
}

static void libc_memcpy(void *d, const void *s, size_t n)
{
    memcpy(d, s, n);
}

static void rep_movsb(void *d, const void *s, size_t n)
{
    __asm__ volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
}

typedef void (*copy_fn)(void *, const void *, size_t);

typedef struct job {
    copy_fn fn;
    size_t row, dest, rounds;
    pthread_barrier_t *start;
    double seconds; /* the copies alone */
} job;

static void *run(void *arg)
{
    job *j = arg;
    unsigned char *src = aligned_alloc(64, SRC_BYTES), *dst = aligned_alloc(4096, j->dest);
    size_t nrows = j->dest / j->row, *order = malloc(nrows * sizeof *order);
    if (!src || !dst || !order) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    memset(src, 1, SRC_BYTES);
    memset(dst, 0, j->dest); /* fault the pages in before timing */
    for (size_t i = 0; i < nrows; i++)
        order[i] = i;
    uint64_t r = 88172645463325252ull;
    for (size_t i = nrows - 1; i > 0; i--) {
        r ^= r << 13, r ^= r >> 7, r ^= r << 17;
        size_t k = (size_t)(r % (i + 1)), t = order[i];
        order[i] = order[k], order[k] = t;
    }
    size_t per_src = (SRC_BYTES - 64) / j->row;
    pthread_barrier_wait(j->start); /* every thread's set-up done: the copies run together */
    double t0 = now();
    for (size_t round = 0; round < j->rounds; round++)
        for (size_t i = 0; i < nrows; i++) /* source rows at odd offsets, as in a chunk */
            j->fn(dst + order[i] * j->row, src + (i % per_src) * j->row + (i & 7) * 4, j->row);
    _mm_sfence();
    j->seconds = now() - t0;
    free(src);
    free(dst);
    free(order);
    return NULL;
}

int main(int argc, char **argv)
{
    size_t threads = argc > 1 ? strtoul(argv[1], NULL, 10) : 1;
    size_t row = argc > 2 ? strtoul(argv[2], NULL, 10) : 6256;
    size_t dest = (argc > 3 ? strtoul(argv[3], NULL, 10) : 512) << 20;
    size_t rounds = argc > 4 ? strtoul(argv[4], NULL, 10) : 3;
    const char *only = argc > 5 ? argv[5] : NULL;
    if (threads < 1 || threads > 64 || row < 64 || row > SRC_BYTES / 2 || dest < 2 * row) {
        fprintf(stderr, "usage: %s [THREADS 1..64 [ROW_BYTES 64..%d [DEST_MIB [ROUNDS]]]]\n",
                argv[0], SRC_BYTES / 2);
        return 2;
    }
    static const struct {
        const char *name;
        copy_fn fn;
    } kinds[] = {{"sse2-stream", sse2_stream},
                 {"avx2-stream", avx2_stream},
                 {"avx512-stream", avx512_stream},
                 {"memcpy", libc_memcpy},
                 {"rep-movsb", rep_movsb}};
    __builtin_cpu_init();
    printf("%zu thread(s), rows of %zu bytes, %zu MiB per thread, %zu rounds\n", threads, row,
           dest >> 20, rounds);
    for (size_t k = 0; k < sizeof kinds / sizeof *kinds; k++) {
        if (only && strcmp(only, kinds[k].name) != 0) continue;
        if (kinds[k].fn == avx2_stream && ans_stream_isa() < ANS_ISA_AVX2) {
            printf("%-13s (no AVX2)\n", kinds[k].name);
            continue;
        }
        if (kinds[k].fn == avx512_stream && ans_stream_isa() < ANS_ISA_AVX512) {
            printf("%-13s (no AVX-512)\n", kinds[k].name);
            continue;
        }
        pthread_t th[64];
        job jobs[64];
        pthread_barrier_t start;
        pthread_barrier_init(&start, NULL, (unsigned)threads);
        for (size_t i = 0; i < threads; i++) {
            jobs[i] = (job){kinds[k].fn, row, dest, rounds, &start, 0};
            pthread_create(&th[i], NULL, run, &jobs[i]);
        }
        double dt = 0;
        for (size_t i = 0; i < threads; i++) {
            pthread_join(th[i], NULL);
            if (jobs[i].seconds > dt) dt = jobs[i].seconds;
        }
        pthread_barrier_destroy(&start);
        double bytes = (double)threads * (double)rounds * (double)(dest / row * row);
        printf("%-13s %6.1f GB/s\n", kinds[k].name, bytes / dt / 1e9);
    }
    return 0;
}
