/*
 * false_sharing / false_sharing_padded: per-hart counters, plain
 * load/add/store (volatile) increments.
 *
 * false_sharing:        counter k at base + 8*k  (all harts share one
 *                       64-byte line for up to 8 harts)
 * false_sharing_padded: counter k at base + 64*k (one line per hart)
 * (built from this file with PADDED=0/1).  No hart touches another hart's
 * counter, so the result is the same for both variants:
 * checksum = sum of the counters (= N * harts); hart 0 checks every
 * counter == N (else FAIL).
 *
 * Parameters: n<increments per hart> (default 500000).
 * Cost: ~5 insns per increment; defaults with 4 harts: ~10M instructions.
 */
#include "rt.h"

#ifndef PARAM_n
#define PARAM_n 500000
#endif
#ifndef PADDED
#define PADDED 0
#endif
#define N ((uint64_t)PARAM_n)
#define STRIDE (PADDED ? CACHE_LINE : 8)     /* bytes between counters */

static uint8_t *base;

static inline volatile uint64_t *ctr(int k)
{
    return (volatile uint64_t *)(base + (uint64_t)k * STRIDE);
}

int main(int hart, int nharts)
{
    if (hart == 0) {
        base = rt_alloc((uint64_t)nharts * STRIDE, CACHE_LINE);
        for (int k = 0; k < nharts; k++)
            *ctr(k) = 0;
    }
    barrier();

    volatile uint64_t *c = ctr(hart);
    roi_begin();
    for (uint64_t i = 0; i < N; i++)
        *c = *c + 1;
    roi_end();
    barrier();
    if (hart != 0)
        return 0;

    uint64_t sum = 0;
    for (int k = 0; k < nharts; k++) {
        if (*ctr(k) != N)
            fail("false_sharing: counter mismatch");
        sum += *ctr(k);
    }
    result_begin(PADDED ? "false_sharing_padded" : "false_sharing", nharts, sum);
    result_dec("n", N);
    result_dec("stride", STRIDE);
    result_end();
    return 0;
}
