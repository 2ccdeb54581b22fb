/*
 * threads: GUPS-style updates from several pthreads, meeting at barriers.
 *
 * Mode "shared" (default): every thread updates the whole table with
 * atomic XOR (lock xor), so threads contend for lines.  Mode "private":
 * each thread updates only its own slice with plain loads and stores.
 * XOR commutes, so the final table, and the checksum computed over it after
 * the last barrier, does not depend on how the threads interleaved: runs are
 * comparable on any scheduler, and identical under the deterministic
 * simulator.
 */
#include <getopt.h>
#include <pthread.h>

#include "common.h"

#define MAX_THREADS 256

static uint64_t *table;
static uint64_t entries, updates_per_thread;
static int nthreads, private_mode;
static pthread_barrier_t barrier;

static void usage(void)
{
    printf("usage: threads [-t THREADS] [-s SIZE] [-n UPDATES] [-m shared|private]\n"
           "  -t THREADS  worker threads (default 2)\n"
           "  -s SIZE     table size in bytes, K/M/G suffix (default 32M; rounded down to a power of two)\n"
           "  -n UPDATES  updates per thread, k/M/G suffix = 1000-based (default 1M)\n"
           "  -m MODE     shared: atomic updates anywhere (default); private: own slice, no atomics\n"
           "prints: RESULT threads threads=T mode=M updates=N table_bytes=B checksum=0x...\n");
}

static void *worker(void *arg)
{
    uint64_t id = (uint64_t)(uintptr_t)arg;
    uint64_t seed = 0x5eed0000ULL + id;
    uint64_t slice = private_mode ? entries / (uint64_t)nthreads : entries;
    uint64_t base = private_mode ? id * slice : 0, mask = slice - 1;
    pthread_barrier_wait(&barrier);
    if (private_mode) {
        for (uint64_t u = 0; u < updates_per_thread; u++) {
            uint64_t r = splitmix64(&seed);
            table[base + (r & mask)] ^= r;
        }
    } else {
        for (uint64_t u = 0; u < updates_per_thread; u++) {
            uint64_t r = splitmix64(&seed);
            __atomic_fetch_xor(&table[r & mask], r, __ATOMIC_RELAXED);
        }
    }
    pthread_barrier_wait(&barrier);
    return NULL;
}

int main(int argc, char **argv)
{
    line_buffered("threads");
    uint64_t bytes = 32ULL << 20, updates = 1000000, t = 2;
    int opt;
    opterr = 0;
    while ((opt = getopt(argc, argv, ":t:s:n:m:h")) != -1) {
        switch (opt) {
        case 't': t = parse_num('t', optarg, 0, 1, MAX_THREADS); break;
        case 's': bytes = parse_num('s', optarg, 1, 4096, 1ULL << 40); break;
        case 'n': updates = parse_num('n', optarg, 0, 0, 1ULL << 48); break;
        case 'm':
            if (strcmp(optarg, "shared") == 0)
                private_mode = 0;
            else if (strcmp(optarg, "private") == 0)
                private_mode = 1;
            else
                bad_arg("bad -m value '%s': expected shared or private", optarg);
            break;
        case 'h': usage(); return 0;
        case ':': bad_arg("option -%c needs a value (try -h)", optopt);
        default: unknown_option(optopt);
        }
    }
    no_operands(argc, argv, optind);
    nthreads = (int)t;
    updates_per_thread = updates;
    entries = pow2_floor(bytes / sizeof(uint64_t));
    /* private slices are powers of two too, so masks work */
    if (private_mode && entries / pow2_floor((uint64_t)nthreads) < 1)
        bad_arg("bad -s value: table too small for %d private slices", nthreads);
    if (private_mode)
        entries = pow2_floor(entries / (uint64_t)nthreads) * (uint64_t)nthreads;
    const char *mode = private_mode ? "private" : "shared";

    printf("SETUP threads threads=%d mode=%s table_bytes=%llu updates_per_thread=%llu\n", nthreads,
           mode, (unsigned long long)(entries * sizeof(uint64_t)), (unsigned long long)updates);
    table = alloc_bytes(entries * sizeof(uint64_t));
    touch_pages(table, entries * sizeof(uint64_t));
    pthread_barrier_init(&barrier, NULL, (unsigned)nthreads + 1);
    pthread_t tid[MAX_THREADS];
    for (int i = 0; i < nthreads; i++) {
        if (pthread_create(&tid[i], NULL, worker, (void *)(uintptr_t)i) != 0) {
            fprintf(stderr, "threads: cannot create thread %d\n", i);
            return 1;
        }
    }

    printf("BEGIN threads\n");
    pthread_barrier_wait(&barrier); /* start */
    pthread_barrier_wait(&barrier); /* all done */
    for (int i = 0; i < nthreads; i++)
        pthread_join(tid[i], NULL);

    uint64_t sum = 0;
    for (uint64_t i = 0; i < entries; i++)
        sum = sum * 31 + table[i];
    printf("RESULT threads threads=%d mode=%s updates=%llu table_bytes=%llu checksum=0x%016llx\n",
           nthreads, mode, (unsigned long long)(updates * (uint64_t)nthreads),
           (unsigned long long)(entries * sizeof(uint64_t)), (unsigned long long)sum);
    return 0;
}
