/*
 * gups: random read-modify-write updates of a table (HPCC RandomAccess).
 *
 * The table (default 64 MiB, so it misses any cache) is faulted in page by
 * page (the kernel zero-fills it), then updated at indices from the HPCC polynomial generator:
 *   ran = (ran << 1) ^ (ran < 0 ? POLY : 0);  table[ran & mask] ^= ran
 * The checksum sums the values read before each update, so it depends on
 * every update and on the order they happened in, at no extra pass.
 */
#include <getopt.h>

#include "common.h"

#define POLY 0x0000000000000007ULL

static void usage(void)
{
    printf("usage: gups [-s SIZE] [-n UPDATES]\n"
           "  -s SIZE     table size in bytes, K/M/G suffix (default 64M; rounded down to a power of two)\n"
           "  -n UPDATES  number of updates, k/M/G suffix = 1000-based (default 2M)\n"
           "prints: RESULT gups updates=N table_bytes=B loop_ns=T checksum=0x...\n"
           "  (T: the update loop by the guest's CLOCK_MONOTONIC)\n");
}

int main(int argc, char **argv)
{
    line_buffered("gups");
    uint64_t bytes = 64ULL << 20, updates = 2000000;
    int opt;
    opterr = 0;
    while ((opt = getopt(argc, argv, ":s:n:h")) != -1) {
        switch (opt) {
        case 's': bytes = parse_num('s', optarg, 1, 4096, 1ULL << 40); break;
        case 'n': updates = parse_num('n', optarg, 0, 0, 1ULL << 48); break;
        case 'h': usage(); return 0;
        case ':': bad_arg("option -%c needs a value (try -h)", optopt);
        default: unknown_option(optopt);
        }
    }
    no_operands(argc, argv, optind);

    uint64_t entries = pow2_floor(bytes / sizeof(uint64_t)), mask = entries - 1;
    printf("SETUP gups table_bytes=%llu updates=%llu\n",
           (unsigned long long)(entries * sizeof(uint64_t)), (unsigned long long)updates);
    uint64_t *table = alloc_bytes(entries * sizeof(uint64_t));
    touch_pages(table, entries * sizeof(uint64_t));

    printf("BEGIN gups\n");
    uint64_t t0 = now_ns();
    uint64_t ran = 0x2545f4914f6cdd1dULL, sum = 0; /* any nonzero LFSR state */
    for (uint64_t u = 0; u < updates; u++) {
        ran = (ran << 1) ^ ((int64_t)ran < 0 ? POLY : 0);
        uint64_t *p = &table[ran & mask];
        uint64_t v = *p;
        sum += v;
        *p = v ^ ran;
    }
    uint64_t t1 = now_ns();
    printf("RESULT gups updates=%llu table_bytes=%llu loop_ns=%llu checksum=0x%016llx\n",
           (unsigned long long)updates, (unsigned long long)(entries * sizeof(uint64_t)),
           (unsigned long long)(t1 - t0), (unsigned long long)sum);
    return 0;
}
