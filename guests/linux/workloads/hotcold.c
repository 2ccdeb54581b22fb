/*
 * hotcold: read-modify-write updates over a mixed working set.
 *
 * A small hot set (default 1 MiB) sits at the start of a large region
 * (default 256 MiB); a fixed-seed generator sends -p percent of the
 * accesses (default 90) to the hot set and the rest anywhere in the region.
 * This is the pattern memory tiering is for: the hot set should live in
 * fast memory, the cold rest can go to a slower tier.
 *
 * Setup faults in the whole region with one store per page (the kernel
 * zero-fills it), so the measured loop takes no page faults; with 256 MiB
 * that zero-filling is most of the run's instructions.
 */
#include <getopt.h>

#include "common.h"

static void usage(void)
{
    printf("usage: hotcold [-s SIZE] [-H HOT] [-p PERCENT] [-n ACCESSES] [-P]\n"
           "  -s SIZE      whole region in bytes, K/M/G suffix (default 256M)\n"
           "  -H HOT       hot set in bytes, at the start of the region (default 1M)\n"
           "  -p PERCENT   share of accesses that go to the hot set, 0..100 (default 90)\n"
           "  -n ACCESSES  read-modify-write accesses, k/M/G suffix = 1000-based (default 1M)\n"
           "  -P           print the hot set's physical pages after setup (HOTPHYS ranges=...)\n"
           "prints: RESULT hotcold accesses=N hot=H cold=C region_bytes=B hot_bytes=B loop_ns=T checksum=0x...\n"
           "  (loop_ns: the access loop's time on the guest's clock)\n");
}

int main(int argc, char **argv)
{
    line_buffered("hotcold");
    uint64_t bytes = 256ULL << 20, hot_bytes = 1ULL << 20, pct = 90, accesses = 1000000;
    int opt, phys = 0;
    opterr = 0;
    while ((opt = getopt(argc, argv, ":s:H:p:n:Ph")) != -1) {
        switch (opt) {
        case 's': bytes = parse_num('s', optarg, 1, 4096, 1ULL << 40); break;
        case 'H': hot_bytes = parse_num('H', optarg, 1, 64, 1ULL << 40); break;
        case 'p': pct = parse_num('p', optarg, 0, 0, 100); break;
        case 'n': accesses = parse_num('n', optarg, 0, 0, 1ULL << 48); break;
        case 'P': phys = 1; break;
        case 'h': usage(); return 0;
        case ':': bad_arg("option -%c needs a value (try -h)", optopt);
        default: unknown_option(optopt);
        }
    }
    no_operands(argc, argv, optind);
    if (hot_bytes > bytes)
        bad_arg("bad -H value: the hot set (%llu bytes) must fit in the region (-s, %llu bytes)",
                (unsigned long long)hot_bytes, (unsigned long long)bytes);

    uint64_t n = bytes / sizeof(uint64_t), nhot = hot_bytes / sizeof(uint64_t);
    printf("SETUP hotcold region_bytes=%llu hot_bytes=%llu hot_percent=%llu accesses=%llu\n",
           (unsigned long long)(n * sizeof(uint64_t)), (unsigned long long)(nhot * sizeof(uint64_t)),
           (unsigned long long)pct, (unsigned long long)accesses);
    uint64_t *a = alloc_bytes(n * sizeof(uint64_t));
    touch_pages(a, n * sizeof(uint64_t));
    if (phys)
        print_phys_ranges("HOTPHYS", a, nhot * sizeof(uint64_t));

    printf("BEGIN hotcold\n");
    uint64_t t0 = now_ns();
    /* 64-bit fixed-point threshold: r < thresh  <=>  hot with probability pct/100 */
    uint64_t thresh = pct == 100 ? UINT64_MAX : (uint64_t)((unsigned __int128)pct * UINT64_MAX / 100);
    uint64_t seed = 7, hot = 0, cold = 0, sum = 0;
    for (uint64_t k = 0; k < accesses; k++) {
        uint64_t r = splitmix64(&seed);
        uint64_t idx;
        /* the choice uses the whole word (dominated by its high bits), the
           index the low 32 bits, which are independent of that choice */
        uint64_t low = r & 0xffffffffULL;
        if (r < thresh || pct == 100) {
            idx = low % nhot;
            hot++;
        } else {
            idx = (uint64_t)(((unsigned __int128)low * n) >> 32); /* anywhere in the region */
            cold++;
        }
        uint64_t v = a[idx];
        sum += v;
        a[idx] = v + r;
    }
    uint64_t loop_ns = now_ns() - t0;
    printf("RESULT hotcold accesses=%llu hot=%llu cold=%llu region_bytes=%llu hot_bytes=%llu "
           "loop_ns=%llu checksum=0x%016llx\n",
           (unsigned long long)accesses, (unsigned long long)hot, (unsigned long long)cold,
           (unsigned long long)(n * sizeof(uint64_t)), (unsigned long long)(nhot * sizeof(uint64_t)),
           (unsigned long long)loop_ns, (unsigned long long)sum);
    return 0;
}
