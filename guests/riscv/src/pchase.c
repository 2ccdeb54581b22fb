/*
 * pchase: dependent-load pointer chase (memory latency).
 *
 * Every chasing hart builds its own ring: WS bytes of 64-byte nodes (one
 * cache line each, only the first 8 bytes -- the next pointer -- are
 * written), linked as a single random cycle (Sattolo's algorithm driven by
 * a per-hart LCG), then follows ITERS next pointers starting at node 0.
 * By default all harts chase private rings (so every vCPU is busy and the
 * harts compete for the memory system); with solo=1 only hart 0 chases and
 * the other harts park in wfi immediately.
 * checksum = mix over chasing harts (in hart order) of the final node index
 * and of the sum of the node offsets visited at every 8th load.  It depends
 * only on WS, ITERS and the number of chasers, not on timing.
 * Hart 0 also times its chase with the guest's clock (rdtime) and prints
 * loop_ns= and ns_per_load=: under --timing that is simulated time, so it
 * shows the modelled load latency.
 *
 * Parameters (file name keys): ws<bytes> (default 1 MiB), it<loads per
 * chaser> (default 1000000), solo<0|1>.
 * Cost: ~22 insns per node for set-up + ~1.2 insns per load, per chaser;
 * defaults with 4 harts: ~7M instructions.
 */
#include "rt.h"

#ifndef PARAM_ws
#define PARAM_ws (1u << 20)
#endif
#ifndef PARAM_it
#define PARAM_it 1000000
#endif
#ifndef PARAM_solo
#define PARAM_solo 0
#endif

#define WS    ((uint64_t)PARAM_ws)
#define ITERS ((uint64_t)PARAM_it)
#define NODES (WS / CACHE_LINE)

_Static_assert(NODES >= 2, "ws must be at least 128 bytes");

struct node {
    struct node *next;
    uint64_t pad[7];
};
_Static_assert(sizeof(struct node) == CACHE_LINE, "node size");

static struct node *rings[RT_MAX_HARTS];
static uint64_t final_idx[RT_MAX_HARTS], path_sum[RT_MAX_HARTS];
static uint64_t loop_ns;

static void build_ring(struct node *n, uint64_t seed)
{
    uint64_t *idx = (uint64_t *)n;     /* n[i].next holds an index for now */
    for (uint64_t i = 0; i < NODES; i++)
        idx[i * 8] = i;
    /* Sattolo: uniformly random single cycle */
    for (uint64_t i = NODES - 1; i > 0; i--) {
        uint64_t j = ((lcg_next(&seed) >> 32) * i) >> 32;   /* 0 <= j < i */
        uint64_t t = idx[i * 8];
        idx[i * 8] = idx[j * 8];
        idx[j * 8] = t;
    }
    for (uint64_t i = 0; i < NODES; i++)
        n[i].next = &n[idx[i * 8]];
}

/* Follows iters next pointers from p; *acc collects the sum of the node
 * offsets seen every 8th load (off the dependency chain, ~1 add / 8 loads). */
static struct node *chase(struct node *ring, uint64_t iters, uint64_t *acc)
{
    struct node *p = ring;
    uint64_t sum = 0, samples = 0;
    for (uint64_t i = iters / 8; i; i--) {
        p = p->next; p = p->next; p = p->next; p = p->next;
        p = p->next; p = p->next; p = p->next; p = p->next;
        sum += (uint64_t)p;
        samples++;
    }
    for (uint64_t i = iters % 8; i; i--)
        p = p->next;
    *acc = sum - samples * (uint64_t)ring;     /* independent of the address */
    return p;
}

int main(int hart, int nharts)
{
    int chasers = PARAM_solo ? 1 : nharts;

    if (hart == 0)
        for (int h = 0; h < chasers; h++)
            rings[h] = rt_alloc(WS, 4096);
    if (chasers > 1)
        barrier();
    else if (hart != 0)
        return 0;                       /* solo: park in wfi */

    struct node *ring = rings[hart];
    build_ring(ring, hart_seed(hart, 0x7063686173650000ull));
    roi_begin();
    uint64_t t0 = rt_time_ns();
    struct node *p = chase(ring, ITERS, &path_sum[hart]);
    uint64_t t1 = rt_time_ns();
    roi_end();
    if (hart == 0)
        loop_ns = t1 - t0;
    final_idx[hart] = (uint64_t)(p - ring);

    if (chasers > 1)
        barrier();
    if (hart != 0)
        return 0;

    uint64_t sum = FNV64_OFFSET;
    for (int h = 0; h < chasers; h++)
        sum = mix64(mix64(sum, final_idx[h]), path_sum[h]);
    result_begin("pchase", nharts, sum);
    result_dec("ws", WS);
    result_dec("loads", ITERS);
    result_dec("chasers", (uint64_t)chasers);
    result_dec("loop_ns", loop_ns);
    result_milli("ns_per_load", ITERS ? loop_ns * 1000 / ITERS : 0);
    result_end();
    return 0;
}
