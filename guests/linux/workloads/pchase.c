/*
 * pchase: dependent pointer chase through a random cyclic permutation.
 *
 * The working set is cut into 64-byte lines; Sattolo's algorithm (fixed
 * seed) links them into one cycle visiting every line, so each load's
 * address depends on the previous load and hardware (or a model's)
 * prefetching cannot help: the time per step is the load-to-use latency of
 * the level the working set lives in. The loop is timed with the guest's
 * own clock (loop_ns, ns_per_load): under cosim --timing that is simulated
 * time, so it shows the modelled latency.
 */
#include <getopt.h>

#include "common.h"

#define LINE 64

static void usage(void)
{
    printf("usage: pchase [-s SIZE] [-n STEPS]\n"
           "  -s SIZE   working set in bytes, K/M/G suffix (default 16M; 64-byte lines)\n"
           "  -n STEPS  dependent loads, k/M/G suffix = 1000-based (default 2M)\n"
           "prints: RESULT pchase steps=N working_set=B lines=L checksum=0x... loop_ns=T\n"
           "        ns_per_load=X (T, X: the loop timed with CLOCK_MONOTONIC)\n");
}

int main(int argc, char **argv)
{
    line_buffered("pchase");
    uint64_t bytes = 16ULL << 20, steps = 2000000;
    int opt;
    opterr = 0;
    while ((opt = getopt(argc, argv, ":s:n:h")) != -1) {
        switch (opt) {
        case 's': bytes = parse_num('s', optarg, 1, 2 * LINE, 1ULL << 40); break;
        case 'n': steps = parse_num('n', optarg, 0, 0, 1ULL << 48); break;
        case 'h': usage(); return 0;
        case ':': bad_arg("option -%c needs a value (try -h)", optopt);
        default: unknown_option(optopt);
        }
    }
    no_operands(argc, argv, optind);
    if (bytes / LINE > UINT32_MAX)
        bad_arg("bad -s value: expected at most %llu bytes", (unsigned long long)UINT32_MAX * LINE);

    uint64_t lines = bytes / LINE;
    printf("SETUP pchase working_set=%llu lines=%llu steps=%llu\n",
           (unsigned long long)(lines * LINE), (unsigned long long)lines, (unsigned long long)steps);
    char *mem = alloc_bytes(lines * LINE);
    uint32_t *perm = alloc_bytes(lines * sizeof(uint32_t));
    for (uint64_t i = 0; i < lines; i++)
        perm[i] = (uint32_t)i;
    /* Sattolo: a uniformly random single cycle over all lines */
    uint64_t seed = 42;
    for (uint64_t i = lines - 1; i > 0; i--) {
        uint64_t j = splitmix64(&seed) % i;
        uint32_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    /* line perm[k] points to line perm[k+1] */
    for (uint64_t k = 0; k < lines; k++)
        *(char **)(mem + (uint64_t)perm[k] * LINE) = mem + (uint64_t)perm[(k + 1) % lines] * LINE;
    munmap(perm, lines * sizeof(uint32_t));

    printf("BEGIN pchase\n");
    char *p = mem;
    uint64_t sum = 0;
    uint64_t t0 = now_ns();
    for (uint64_t s = 0; s < steps; s++) {
        p = *(char **)p;
        sum += (uint64_t)(p - mem);
    }
    uint64_t loop_ns = now_ns() - t0;
    printf("RESULT pchase steps=%llu working_set=%llu lines=%llu checksum=0x%016llx "
           "loop_ns=%llu ns_per_load=%.3f\n",
           (unsigned long long)steps, (unsigned long long)(lines * LINE),
           (unsigned long long)lines, (unsigned long long)sum, (unsigned long long)loop_ns,
           steps ? (double)loop_ns / (double)steps : 0.0);
    return 0;
}
