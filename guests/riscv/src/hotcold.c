/*
 * hotcold: read-modify-write updates, most of them to a small hot set.
 *
 * A table of WS bytes (power of two) of uint64_t; its first HOT bytes
 * (power of two) are the hot set. Each hart performs N updates; PCT percent
 * of them (by a fixed-seed LCG) go to the hot set, the rest anywhere in the
 * table. The pattern memory tiering and hotness monitors (CXL CHMU) are
 * judged on: the hot set's units should top the hot list.
 * checksum = wrapping sum over i of t[i] * (2i+1), as gups.
 *
 * Parameters: ws<table bytes> (default 16 MiB), hot<hot bytes> (default
 * 1 MiB), pct<percent hot> (default 90), n<updates per hart> (default 262144).
 */
#include "rt.h"

#ifndef PARAM_ws
#define PARAM_ws (16u << 20)
#endif
#ifndef PARAM_hot
#define PARAM_hot (1u << 20)
#endif
#ifndef PARAM_pct
#define PARAM_pct 90
#endif
#ifndef PARAM_n
#define PARAM_n 262144
#endif

#define WS      ((uint64_t)PARAM_ws)
#define HOT     ((uint64_t)PARAM_hot)
#define ENTRIES (WS / 8)
#define UPDATES ((uint64_t)PARAM_n)

_Static_assert(WS >= 64 && (WS & (WS - 1)) == 0, "ws must be a power of two >= 64");
_Static_assert(HOT >= 8 && HOT <= WS && (HOT & (HOT - 1)) == 0,
               "hot must be a power of two, 8 .. ws");
_Static_assert(PARAM_pct <= 100, "pct is a percentage");

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

    const uint64_t mask = ENTRIES - 1, hot_mask = HOT / 8 - 1;
    /* the choice from the high bits of one draw, the index from its middle bits */
    const uint64_t thresh = (uint64_t)PARAM_pct * ((1ull << 32) / 100);
    uint64_t x = hart_seed(hart, 0x686f74636f6c6400ull);
    roi_begin();
    for (uint64_t k = 0; k < UPDATES; k++) {
        lcg_next(&x);
        uint64_t idx = (x >> 20) & ((x >> 32) < thresh ? hot_mask : mask);
        T[idx] ^= x;
    }
    roi_end();
    barrier();

    uint64_t sum = 0;
    for (uint64_t i = lo; i < hi; i++)
        sum += t[i] * (2 * i + 1);
    sum = sum_over_harts(hart, sum);
    if (hart != 0)
        return 0;

    result_begin("hotcold", nharts, sum);
    result_dec("ws", WS);
    result_dec("hot", HOT);
    result_dec("updates", UPDATES * (uint64_t)nharts);
    result_end();
    return 0;
}
