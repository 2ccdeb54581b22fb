/*
 * fill: take memory and keep it, so that a workload started next does not
 * fit where it would be placed (the memory pressure of a tiering experiment,
 * as memhog gives it on a real machine, but held rather than freed).
 *
 * Touches every page of SIZE bytes once (so they are resident, on the node
 * the caller's NUMA policy gives: numactl --membind=0 fill ...), prints its
 * result, and then either exits (freeing it) or, with -d, goes on holding
 * it in the background: the command returns once the memory is taken.
 */
#include <getopt.h>
#include <signal.h>

#include "common.h"

static void usage(void)
{
    printf("usage: fill -s SIZE [-d]\n"
           "  -s SIZE  bytes to take, K/M/G suffix\n"
           "  -d       keep holding them in the background after the command returns\n"
           "prints: RESULT fill bytes=B pages=P\n");
}

int main(int argc, char **argv)
{
    line_buffered("fill");
    uint64_t bytes = 0;
    int hold = 0, opt;
    opterr = 0;
    while ((opt = getopt(argc, argv, ":s:dh")) != -1) {
        switch (opt) {
        case 's': bytes = parse_num('s', optarg, 1, 4096, 1ULL << 40); break;
        case 'd': hold = 1; break;
        case 'h': usage(); return 0;
        case ':': bad_arg("option -%c needs a value (try -h)", optopt);
        default: unknown_option(optopt);
        }
    }
    no_operands(argc, argv, optind);
    if (!bytes)
        bad_arg("give the size to take with -s (try -h)");
    int done[2];
    if (hold && pipe(done) != 0) {
        perror("fill: pipe");
        return 1;
    }
    pid_t pid = hold ? fork() : 0;
    if (pid < 0) {
        perror("fill: fork");
        return 1;
    }
    if (pid > 0) {                  /* the command: returns once the child has it all */
        char c;
        close(done[1]);
        return read(done[0], &c, 1) == 1 ? 0 : 1;
    }
    uint64_t *p = alloc_bytes(bytes);
    touch_pages(p, bytes);
    printf("RESULT fill bytes=%llu pages=%llu\n", (unsigned long long)bytes,
           (unsigned long long)(bytes / 4096));
    if (!hold)
        return 0;
    fflush(stdout);
    if (write(done[1], "y", 1) != 1)
        return 1;
    close(done[1]);
    for (;;)
        pause();
}
