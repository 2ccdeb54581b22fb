/*
 * gups: random read-modify-write updates (GUPS / RandomAccess-like).
 *
 * A table of WS bytes (power of two) of uint64_t, initialised t[i] = i in
 * per-hart slices.  Each hart then performs N updates
 *     x = lcg(x); t[(x >> 20) & mask] ^= x
 * with its own LCG stream (plain, non-atomic load/xor/store: a racing
 * update may be lost, which is then visible in the checksum, deterministic
 * for a given interleaving).
 * checksum = wrapping sum over i of t[i] * (2i+1)  (per slice, summed by
 * hart 0).
 *
 * Parameters: ws<table bytes> (power of two, default 4 MiB),
 * n<updates per hart> (default 262144).
 * Cost: ~9 insns per update + ~3 per table entry for init and checksum;
 * defaults with 4 harts: ~17M instructions.
 */
#include "rt.h"

#ifndef PARAM_ws
#define PARAM_ws (4u << 20)
#endif
#ifndef PARAM_n
#define PARAM_n 262144
#endif

#define WS      ((uint64_t)PARAM_ws)
#define ENTRIES (WS / 8)
#define UPDATES ((uint64_t)PARAM_n)

_Static_assert(WS >= 64 && (WS & (WS - 1)) == 0, "ws must be a power of two >= 64");

static volatile uint64_t *T;

int main(int hart, int nharts)
{
    if (hart == 0)
        T = rt_alloc(WS, 4096);
    barrier();

    uint64_t *t = (uint64_t *)T;
    uint64_t chunk = ENTRIES / (uint64_t)nharts;
    uint64_t lo = chunk * (uint64_t)hart;
    uint64_t hi = hart == nharts - 1 ? ENTRIES : lo + chunk;
    for (uint64_t i = lo; i < hi; i++)
        t[i] = i;
    barrier();

    const uint64_t mask = ENTRIES - 1;
    uint64_t x = hart_seed(hart, 0x6775707300000000ull);
    roi_begin();
    for (uint64_t k = 0; k < UPDATES; k++) {
        lcg_next(&x);
        T[(x >> 20) & mask] ^= x;
    }
    roi_end();
    barrier();

    uint64_t sum = 0;
    for (uint64_t i = lo; i < hi; i++)
        sum += t[i] * (2 * i + 1);
    sum = sum_over_harts(hart, sum);
    if (hart != 0)
        return 0;

    result_begin("gups", nharts, sum);
    result_dec("ws", WS);
    result_dec("updates", UPDATES * (uint64_t)nharts);
    result_end();
    return 0;
}
