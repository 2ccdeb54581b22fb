/*
 * stream: the four STREAM kernels (copy, scale, add, triad) over three
 * arrays of doubles.
 *
 * Each kernel runs -n times in a block and prints its own RESULT line, so a
 * host watching the console sees the cost of each kernel separately (the
 * classic per-iteration interleaving would hide that).  Every kernel's inputs
 * are fixed by the one before it, so repeating a kernel changes nothing but
 * the time spent.  The final line's checksum covers all three arrays.
 */
#include <getopt.h>

#include "common.h"

static void usage(void)
{
    printf("usage: stream [-s SIZE] [-n TIMES]\n"
           "  -s SIZE   total size of the three arrays, K/M/G suffix (default 24M)\n"
           "  -n TIMES  repetitions of each kernel, k/M/G suffix = 1000-based (default 1)\n"
           "prints: RESULT stream kernel=copy|scale|add|triad times=N elements=E bytes=B,\n"
           "        then RESULT stream times=N elements=E checksum=0x...\n");
}

static uint64_t bits(double d)
{
    uint64_t u;
    memcpy(&u, &d, sizeof u);
    return u;
}

int main(int argc, char **argv)
{
    line_buffered("stream");
    uint64_t bytes = 24ULL << 20, times = 1;
    int opt;
    opterr = 0;
    while ((opt = getopt(argc, argv, ":s:n:h")) != -1) {
        switch (opt) {
        case 's': bytes = parse_num('s', optarg, 1, 3 * 4096, 1ULL << 40); break;
        case 'n': times = parse_num('n', optarg, 0, 1, 1ULL << 40); break;
        case 'h': usage(); return 0;
        case ':': bad_arg("option -%c needs a value (try -h)", optopt);
        default: unknown_option(optopt);
        }
    }
    no_operands(argc, argv, optind);

    uint64_t n = bytes / 3 / sizeof(double);
    n -= n % 8;
    printf("SETUP stream elements=%llu array_bytes=%llu times=%llu\n", (unsigned long long)n,
           (unsigned long long)(n * sizeof(double)), (unsigned long long)times);
    double *a = alloc_bytes(n * sizeof(double));
    double *b = alloc_bytes(n * sizeof(double));
    double *c = alloc_bytes(n * sizeof(double));
    for (uint64_t i = 0; i < n; i++) {
        a[i] = 1.0 + (double)(i % 7); /* not constant, so the sums see misplaced values */
        b[i] = 2.0;
        c[i] = 0.0;
    }
    const double s = 3.0;

    printf("BEGIN stream\n");
    unsigned long long en = n, t = times, w = sizeof(double);
    for (uint64_t r = 0; r < times; r++)
        for (uint64_t i = 0; i < n; i++)
            c[i] = a[i];
    printf("RESULT stream kernel=copy times=%llu elements=%llu bytes=%llu\n", t, en, 2 * w * en * t);
    for (uint64_t r = 0; r < times; r++)
        for (uint64_t i = 0; i < n; i++)
            b[i] = s * c[i];
    printf("RESULT stream kernel=scale times=%llu elements=%llu bytes=%llu\n", t, en, 2 * w * en * t);
    for (uint64_t r = 0; r < times; r++)
        for (uint64_t i = 0; i < n; i++)
            c[i] = a[i] + b[i];
    printf("RESULT stream kernel=add times=%llu elements=%llu bytes=%llu\n", t, en, 3 * w * en * t);
    for (uint64_t r = 0; r < times; r++)
        for (uint64_t i = 0; i < n; i++)
            a[i] = b[i] + s * c[i];
    printf("RESULT stream kernel=triad times=%llu elements=%llu bytes=%llu\n", t, en, 3 * w * en * t);

    /* STREAM's own validation is the sum of each array; the checksum mixes the
       three sums' bit patterns (exact: same binary, same inputs, same order) */
    double sa = 0, sb = 0, sc = 0;
    for (uint64_t i = 0; i < n; i++) {
        sa += a[i];
        sb += b[i];
        sc += c[i];
    }
    uint64_t sum = bits(sa) ^ (bits(sb) * 0x9e3779b97f4a7c15ULL) ^ (bits(sc) * 0xbf58476d1ce4e5b9ULL);
    printf("RESULT stream times=%llu elements=%llu checksum=0x%016llx\n", t, en,
           (unsigned long long)sum);
    return 0;
}
