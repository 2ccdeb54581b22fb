/*
 * nap: sleep for a while and tell how long the guest's clock says it took.
 *
 * Under cosim --timing the guest's clock is simulated time, and an idle
 * guest does not run: the timing model jumps to the next timer. So
 * `nap 1` takes one second of simulated time (plus the kernel's timer
 * slack, 50 us by default) and, on an idle machine, little wall time.
 */
#include <errno.h>
#include <getopt.h>

#include "common.h"

static void usage(void)
{
    printf("usage: nap [SECONDS]\n"
           "  SECONDS   how long to sleep, a decimal number of seconds (default 1, at most 3600)\n"
           "prints: RESULT nap requested_ns=N slept_ns=M (M: CLOCK_MONOTONIC before and after)\n");
}

/* "1", "0.5", "2.000001": seconds with up to 9 decimals, as ns. */
static uint64_t parse_seconds(const char *s)
{
    uint64_t sec = 0, frac = 0, scale = 100000000ull;
    const char *p = s;
    int digits = 0;
    while (*p >= '0' && *p <= '9' && sec <= 3600) {
        sec = sec * 10 + (uint64_t)(*p++ - '0');
        digits++;
    }
    if (*p == '.') {
        for (p++; *p >= '0' && *p <= '9'; p++, digits++) {
            frac += (uint64_t)(*p - '0') * scale;
            scale /= 10;
        }
    }
    if (*p || !digits || sec > 3600 || (sec == 3600 && frac))
        bad_arg("bad SECONDS %s: expected a decimal number of seconds from 0 to 3600", s);
    return sec * 1000000000ull + frac;
}

int main(int argc, char **argv)
{
    line_buffered("nap");
    int opt;
    opterr = 0;
    while ((opt = getopt(argc, argv, "h")) != -1) {
        if (opt == 'h') {
            usage();
            return 0;
        }
        unknown_option(optopt);
    }
    if (argc - optind > 1)
        bad_arg("unexpected argument %s (try -h)", argv[optind + 1]);
    uint64_t want = optind < argc ? parse_seconds(argv[optind]) : 1000000000ull;

    printf("BEGIN nap\n");
    struct timespec ts = { .tv_sec = (time_t)(want / 1000000000ull),
                           .tv_nsec = (long)(want % 1000000000ull) };
    uint64_t t0 = now_ns();
    while (clock_nanosleep(CLOCK_MONOTONIC, 0, &ts, &ts) == EINTR)
        ;
    uint64_t slept = now_ns() - t0;
    printf("RESULT nap requested_ns=%llu slept_ns=%llu\n",
           (unsigned long long)want, (unsigned long long)slept);
    return 0;
}
