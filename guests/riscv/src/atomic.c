/*
 * atomic: shared-counter contention with amoadd.d.
 *
 * Each hart performs N fetch-and-add(1) on one shared 64-bit counter with a
 * short irregular delay between them, hashing the sequence of values it
 * fetched (so which values each hart got -- the interleaving -- shows in the
 * checksum).  checksum = mix over harts (in hart order) of the per-hart
 * hashes.  Hart 0 checks the final counter == N * harts (else FAIL).
 * Extra field: counter = final counter value.
 *
 * Parameters: n<increments per hart> (default 150000).
 * Cost: ~15 insns per increment; defaults with 4 harts: ~6M instructions.
 */
#include "rt.h"

#ifndef PARAM_n
#define PARAM_n 150000
#endif
#define N ((uint64_t)PARAM_n)

static volatile uint64_t counter ALIGNED(CACHE_LINE);
static uint64_t hashes[RT_MAX_HARTS];

int main(int hart, int nharts)
{
    barrier();
    uint64_t h = FNV64_OFFSET ^ (uint64_t)hart;
    for (uint64_t k = 0; k < N; k++) {
        uint64_t v = amoadd_d(&counter, 1);
        h = (h ^ v) * FNV64_PRIME;
        delay((uint32_t)((v ^ (uint64_t)hart) & 3));
    }
    hashes[hart] = h;
    barrier();
    if (hart != 0)
        return 0;

    uint64_t final = counter;
    if (final != N * (uint64_t)nharts)
        fail("atomic: final counter mismatch");
    uint64_t sum = FNV64_OFFSET;
    for (int k = 0; k < nharts; k++)
        sum = mix64(sum, hashes[k]);
    result_begin("atomic", nharts, sum);
    result_dec("counter", final);
    result_end();
    return 0;
}
