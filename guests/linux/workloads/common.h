/*
 * Shared helpers for the cosim guest workloads (header-only, static builds).
 *
 * Every workload prints, on stdout, line-buffered:
 *   SETUP <name> key=value ...   before it allocates/initialises memory
 *   BEGIN <name>                 after setup, right before the measured loop
 *   RESULT <name> key=value ...  after the measured loop (work count + checksum)
 * so a host watching the console can attribute cost to the loop alone.
 *
 * Determinism: fixed seeds, no pid is read, no address is printed. Timed
 * loops read CLOCK_MONOTONIC (now_ns()): under cosim the guest's clock is
 * deterministic too (instruction time in fast mode, simulated time under
 * --timing), so the figures repeat run for run.
 */
#ifndef COSIM_WORKLOAD_COMMON_H
#define COSIM_WORKLOAD_COMMON_H

#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static const char *prog = "workload";

/* The guest's own clock, ns (CLOCK_MONOTONIC). */
static inline uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* One-line error naming the bad value and what is accepted; exit 2. */
#define bad_arg(...)                                                                \
    do {                                                                            \
        fprintf(stderr, "%s: ", prog);                                              \
        fprintf(stderr, __VA_ARGS__);                                               \
        fputc('\n', stderr);                                                        \
        exit(2);                                                                    \
    } while (0)

/*
 * Parse an unsigned number with an optional suffix.  binary=1: K/M/G are
 * 1024-based (sizes in bytes); binary=0: k/M/G are 1000-based (counts).
 */
static inline uint64_t parse_num(char opt, const char *s, int binary, uint64_t min, uint64_t max)
{
    const char *what = binary ? "a size like 4096, 64K, 16M or 1G" : "a count like 1000, 100k or 2M";
    if (!s || !*s || *s == '-' || *s == '+')
        bad_arg("bad -%c value '%s': expected %s", opt, s ? s : "", what);
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    uint64_t mul = 1, k = binary ? 1024 : 1000;
    if (*end) {
        switch (*end) {
        case 'k': case 'K': mul = k; break;
        case 'm': case 'M': mul = k * k; break;
        case 'g': case 'G': mul = k * k * k; break;
        default: bad_arg("bad -%c value '%s': expected %s", opt, s, what);
        }
        if (end[1] && !(binary && (end[1] == 'B' || end[1] == 'b') && !end[2]) &&
            !(binary && end[1] == 'i' && end[2] == 'B' && !end[3]))
            bad_arg("bad -%c value '%s': expected %s", opt, s, what);
    }
    if (end == s || (mul > 1 && v > UINT64_MAX / mul))
        bad_arg("bad -%c value '%s': expected %s", opt, s, what);
    uint64_t r = (uint64_t)v * mul;
    if (r < min || r > max)
        bad_arg("bad -%c value '%s': expected %llu..%llu", opt, s, (unsigned long long)min,
                (unsigned long long)max);
    return r;
}

/* Reject stray positional arguments (getopt leaves them at optind). */
static inline void no_operands(int argc, char **argv, int optind_)
{
    if (optind_ < argc)
        bad_arg("unexpected argument '%s' (try -h)", argv[optind_]);
}

static inline void unknown_option(int opt)
{
    bad_arg("unknown option -%c (try -h)", opt);
}

/* Anonymous memory, never shared with the page cache; exits on failure. */
static inline void *alloc_bytes(uint64_t bytes)
{
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        fprintf(stderr, "%s: cannot allocate %llu bytes (try a smaller -s)\n", prog,
                (unsigned long long)bytes);
        exit(1);
    }
    return p;
}

/*
 * Fault in every page of a fresh mapping with one store per 4 KiB, so the
 * measured loop takes no page faults. The kernel zero-fills each page, so
 * this is as cheap as initialisation gets; the contents are zero apart
 * from the stored words (which hold their own index).
 */
static inline void touch_pages(uint64_t *p, uint64_t bytes)
{
    for (uint64_t i = 0; i < bytes / sizeof(uint64_t); i += 4096 / sizeof(uint64_t))
        p[i] = i;
}

/*
 * Print where [p, p + bytes) lies in physical memory, as runs of pages:
 *   <TAG> pages=N ranges=0xSTART+0xLEN,...
 * from /proc/self/pagemap (PFNs need root, which the guest's init is). A
 * host comparing guest-physical hotness (a CHMU's hot list) with what the
 * program touched needs this; it is printed only when asked for, since
 * physical addresses are the kernel's choice.
 */
static inline void print_phys_ranges(const char *tag, const void *p, uint64_t bytes)
{
    FILE *f = fopen("/proc/self/pagemap", "rb");
    if (!f) {
        fprintf(stderr, "%s: cannot open /proc/self/pagemap\n", prog);
        exit(1);
    }
    uint64_t pages = 0, run_start = 0, run_len = 0;
    printf("%s ranges=", tag);
    int first = 1;
    for (uint64_t off = 0; off < bytes; off += 4096) {
        uint64_t vpn = ((uintptr_t)p + off) / 4096, entry = 0;
        if (fseeko(f, (off_t)(vpn * 8), SEEK_SET) != 0 || fread(&entry, 8, 1, f) != 1)
            entry = 0;
        if (!(entry >> 63))
            continue;                           /* not present */
        uint64_t phys = (entry & ((1ULL << 55) - 1)) * 4096;
        pages++;
        if (run_len && phys == run_start + run_len) {
            run_len += 4096;
            continue;
        }
        if (run_len)
            printf("%s0x%llx+0x%llx", first ? "" : ",", (unsigned long long)run_start,
                   (unsigned long long)run_len), first = 0;
        run_start = phys;
        run_len = 4096;
    }
    if (run_len)
        printf("%s0x%llx+0x%llx", first ? "" : ",", (unsigned long long)run_start,
               (unsigned long long)run_len);
    printf(" pages=%llu\n", (unsigned long long)pages);
    fclose(f);
}

/* splitmix64: a fixed-seed generator good enough for access patterns. */
static inline uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Largest power of two <= x (x >= 1). */
static inline uint64_t pow2_floor(uint64_t x)
{
    uint64_t p = 1;
    while (p <= x / 2)
        p *= 2;
    return p;
}

static void line_buffered(const char *name)
{
    prog = name;
    setvbuf(stdout, NULL, _IOLBF, 0);
}

#endif
