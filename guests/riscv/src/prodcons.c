/*
 * prodcons: single-producer / single-consumer ring buffers between hart
 * pairs 0->1, 2->3, ...  With an odd hart count the last hart only takes
 * part in the barriers (with one hart there are no pairs at all).
 *
 * Ring: S slots of uint64_t (power of two); head (written by the producer)
 * and tail (written by the consumer) live on separate cache lines; the
 * producer publishes with fence rw,w + store, the consumer reads head, then
 * fence r,rw (and the other way round for tail).  Both sides spin-wait with
 * plain loads when the ring is full / empty (spin-then-yield, see spin_wait()
 * in common/rt.h).  The producer of pair p sends N
 * values of its own LCG stream; the consumer hashes them in order.
 * checksum = mix over pairs (in order) of the consumer hashes -- it does not
 * depend on timing (FIFO order), only on the pair count.
 * Extra fields: pairs, items (total consumed), fullwaits / emptywaits
 * (number of times the producer found the ring full / the consumer found it
 * empty -- these DO depend on the interleaving).
 *
 * Parameters: n<items per pair> (default 50000), s<slots> (power of two,
 * default 64).
 * Cost: ~25 insns per item per pair (both sides) plus spinning; defaults with
 * 4 harts: ~2.5M useful instructions (~20M on stock QEMU, whose huge
 * round-robin slices make every wait end in a spin-then-yield).
 */
#include "rt.h"

#ifndef PARAM_n
#define PARAM_n 50000
#endif
#ifndef PARAM_s
#define PARAM_s 64
#endif
#define N     ((uint64_t)PARAM_n)
#define SLOTS ((uint64_t)PARAM_s)

_Static_assert(SLOTS >= 1 && (SLOTS & (SLOTS - 1)) == 0, "s must be a power of two");

struct ring {
    volatile uint64_t head ALIGNED(CACHE_LINE);   /* producer */
    volatile uint64_t tail ALIGNED(CACHE_LINE);   /* consumer */
    volatile uint64_t slot[SLOTS] ALIGNED(CACHE_LINE);
};

static struct ring *rings;
static uint64_t csum[RT_MAX_HARTS / 2];
static uint64_t waits[RT_MAX_HARTS];

static uint64_t produce(struct ring *r, uint64_t seed)
{
    uint64_t head = 0, tail = 0, nwait = 0;
    for (uint64_t i = 0; i < N; i++) {
        uint64_t v = lcg_next(&seed);
        if (head - tail == SLOTS) {
            tail = r->tail;
            if (head - tail == SLOTS) {
                uint32_t polls = 0;
                nwait++;
                do {
                    spin_wait(&polls);
                    tail = r->tail;
                } while (head - tail == SLOTS);
            }
            fence_r_rw();
        }
        r->slot[head & (SLOTS - 1)] = v;
        fence_rw_w();
        r->head = ++head;
    }
    return nwait;
}

static uint64_t consume(struct ring *r, int pair, uint64_t *nwait_out)
{
    uint64_t head = 0, tail = 0, nwait = 0, h = FNV64_OFFSET ^ (uint64_t)pair;
    for (uint64_t i = 0; i < N; i++) {
        if (tail == head) {
            head = r->head;
            if (tail == head) {
                uint32_t polls = 0;
                nwait++;
                do {
                    spin_wait(&polls);
                    head = r->head;
                } while (tail == head);
            }
            fence_r_rw();
        }
        h = (h ^ r->slot[tail & (SLOTS - 1)]) * FNV64_PRIME;
        fence_rw_w();
        r->tail = ++tail;
    }
    *nwait_out = nwait;
    return h;
}

int main(int hart, int nharts)
{
    int pairs = nharts / 2;
    if (hart == 0 && pairs > 0) {
        rings = rt_alloc((uint64_t)pairs * sizeof(struct ring), 4096);
        for (int p = 0; p < pairs; p++)
            rings[p].head = rings[p].tail = 0;
    }
    barrier();

    int pair = hart / 2;
    if (pair < pairs) {
        if ((hart & 1) == 0)
            waits[hart] = produce(&rings[pair], hart_seed(pair, 0x70726f64636f6e73ull));
        else
            csum[pair] = consume(&rings[pair], pair, &waits[hart]);
    }
    barrier();
    if (hart != 0)
        return 0;

    uint64_t sum = FNV64_OFFSET, fullw = 0, emptyw = 0;
    for (int p = 0; p < pairs; p++) {
        sum = mix64(sum, csum[p]);
        fullw += waits[2 * p];
        emptyw += waits[2 * p + 1];
    }
    result_begin("prodcons", nharts, sum);
    result_dec("pairs", (uint64_t)pairs);
    result_dec("items", N * (uint64_t)pairs);
    result_dec("slots", SLOTS);
    result_dec("fullwaits", fullw);
    result_dec("emptywaits", emptyw);
    result_end();
    return 0;
}
