/*
 * vmlog: the kernel's page-migration counters every INTERVAL of the guest's
 * clock, for the timeline of a tiering experiment (promotions and demotions
 * per interval), until it is killed.
 *
 * Each line is one write(2), so that lines of a workload printing at the
 * same time are not cut into.  t_us counts from vmlog's start.  Counters are
 * cumulative; the host takes the differences.  Besides /proc/vmstat's
 * migration events, when DAMON runs (its sysfs has kdamonds) it sums the
 * bytes its migrate_hot and migrate_cold schemes moved (sz_applied), since
 * DAMON's migrations are not promotions or demotions in vmstat's sense.
 * Those statistics are refreshed by writing update_schemes_stats to a
 * kdamond's state file, which waits for the kdamond (up to an aggregation
 * interval and more while it migrates): a child process does that every
 * interval, so that the samples keep their pace.
 */
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <sys/prctl.h>

#include "common.h"

#define DAMON "/sys/kernel/mm/damon/admin/kdamonds"

static const char *const counters[] = {
    "pgpromote_success", "pgdemote_kswapd", "pgdemote_direct", "pgdemote_khugepaged",
    "pgmigrate_success", "numa_hint_faults",
};
#define NCOUNTERS (sizeof(counters) / sizeof(counters[0]))

static void usage(void)
{
    printf("usage: vmlog [-i INTERVAL_US]\n"
           "  -i US    microseconds between samples (default 10000)\n"
           "prints: RESULT vmlog t_us=T pgpromote_success=N ... damon_hot_bytes=B "
           "damon_cold_bytes=B\n");
}

/* Read a sysfs/procfs file into buf (procfs gives a page per read); returns its length or -1. */
static ssize_t slurp(const char *path, char *buf, size_t size)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return -1;
    size_t n = 0;
    ssize_t got;
    while (n < size - 1 && (got = read(fd, buf + n, size - 1 - n)) > 0)
        n += (size_t)got;
    close(fd);
    buf[n] = 0;
    return (ssize_t)n;
}

static void put(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY);
    if (fd >= 0) {
        if (write(fd, text, strlen(text)) < 0) {
            /* a kdamond that stopped meanwhile: nothing to update */
        }
        close(fd);
    }
}

static int kdamonds(void)
{
    char buf[32];
    return slurp(DAMON "/nr_kdamonds", buf, sizeof buf) > 0 ? atoi(buf) : 0;
}

/* The child: ask every kdamond to refresh its schemes' statistics, every interval. */
static void refresh_damon_stats(uint64_t interval_us)
{
    char path[256];
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    struct timespec ts = {(time_t)(interval_us / 1000000), (long)(interval_us % 1000000) * 1000};
    for (;;) {
        int nk = kdamonds();
        for (int k = 0; k < nk; k++) {
            snprintf(path, sizeof path, DAMON "/%d/state", k);
            put(path, "update_schemes_stats");
        }
        nanosleep(&ts, NULL);
    }
}

/* Bytes DAMON's migrate_hot and migrate_cold schemes had applied at the last refresh. */
static void damon_bytes(unsigned long long *hot, unsigned long long *cold)
{
    char buf[256], path[256];
    *hot = *cold = 0;
    int nk = kdamonds();
    for (int k = 0; k < nk; k++) {
        for (int s = 0;; s++) {
            snprintf(path, sizeof path, DAMON "/%d/contexts/0/schemes/%d/action", k, s);
            if (slurp(path, buf, sizeof buf) < 0)
                break;
            int is_hot = strncmp(buf, "migrate_hot", 11) == 0;
            int is_cold = strncmp(buf, "migrate_cold", 12) == 0;
            snprintf(path, sizeof path, DAMON "/%d/contexts/0/schemes/%d/stats/sz_applied", k, s);
            if ((is_hot || is_cold) && slurp(path, buf, sizeof buf) > 0)
                *(is_hot ? hot : cold) += strtoull(buf, NULL, 10);
        }
    }
}

int main(int argc, char **argv)
{
    line_buffered("vmlog");
    uint64_t interval_us = 10000;
    int opt;
    opterr = 0;
    while ((opt = getopt(argc, argv, ":i:h")) != -1) {
        switch (opt) {
        case 'i': interval_us = parse_num('i', optarg, 0, 100, 10000000); break;
        case 'h': usage(); return 0;
        case ':': bad_arg("option -%c needs a value (try -h)", optopt);
        default: unknown_option(optopt);
        }
    }
    no_operands(argc, argv, optind);
    pid_t child = fork();
    if (child == 0) {
        refresh_damon_stats(interval_us);
        return 0;
    }
    static char vmstat[16384];
    char line[1024];
    uint64_t start = now_ns(), next = start;
    for (;;) {
        unsigned long long values[NCOUNTERS] = {0};
        if (slurp("/proc/vmstat", vmstat, sizeof vmstat) > 0) {
            for (char *p = vmstat; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL) {
                for (size_t c = 0; c < NCOUNTERS; c++) {
                    size_t len = strlen(counters[c]);
                    if (!strncmp(p, counters[c], len) && p[len] == ' ')
                        values[c] = strtoull(p + len + 1, NULL, 10);
                }
            }
        }
        unsigned long long hot, cold;
        damon_bytes(&hot, &cold);
        int n = snprintf(line, sizeof line, "RESULT vmlog t_us=%llu",
                         (unsigned long long)((now_ns() - start) / 1000));
        for (size_t c = 0; c < NCOUNTERS; c++)
            n += snprintf(line + n, sizeof line - n, " %s=%llu", counters[c], values[c]);
        n += snprintf(line + n, sizeof line - n, " damon_hot_bytes=%llu damon_cold_bytes=%llu\n",
                      hot, cold);
        if (write(1, line, n) != n)
            return 1;
        next += interval_us * 1000;
        uint64_t now = now_ns();
        if (next > now) {
            struct timespec ts = {(time_t)((next - now) / 1000000000ull),
                                  (long)((next - now) % 1000000000ull)};
            nanosleep(&ts, NULL);
        } else {
            next = now;
        }
    }
}
