/*
 * spinlock: test-and-set lock contention; the checksum records the ORDER in
 * which the harts obtained the lock.
 *
 * Lock: amoswap.w.aq loop (pure TAS, no test-and-test-and-set), release
 * with amoswap.w.rl.  Each hart acquires the lock N times; inside the
 * critical section it appends its hartid to a shared byte log and does a
 * short hart-dependent delay; outside it does an irregular delay drawn from
 * its own LCG (5..20 + 3*hartid iterations).  So the acquisition order, and
 * hence the checksum, depends on the interleaving (e.g. on the scheduling
 * quantum).
 * checksum = FNV-1a 64 over the log bytes.  Hart 0 checks that every hart
 * appears exactly N times (else FAIL, exit 1).
 * Extra fields: acq = total acquisitions, handoffs = number of log
 * positions whose hart differs from the previous one.
 *
 * Parameters: n<acquisitions per hart> (default 20000).
 * Cost: ~70 useful insns per acquisition (plus whatever the waiters spin);
 * defaults with 4 harts: ~6.5M insns on stock QEMU, more with small quanta
 * (waiters spin).
 * n200 gives a ~100k-instruction run.
 */
#include "rt.h"

#ifndef PARAM_n
#define PARAM_n 20000
#endif
#define N ((uint64_t)PARAM_n)

static volatile uint32_t lock_word ALIGNED(CACHE_LINE);
static volatile uint64_t log_pos ALIGNED(CACHE_LINE);
static volatile uint8_t *log_buf;

static inline void lock(void)
{
    while (amoswap_w_aq(&lock_word, 1) != 0)
        ;
}

static inline void unlock(void)
{
    amoswap_w_rl_zero(&lock_word);
}

int main(int hart, int nharts)
{
    if (hart == 0)
        log_buf = rt_alloc(N * (uint64_t)nharts, 64);
    barrier();

    uint64_t x = hart_seed(hart, 0x73706e6c6f636bull);
    for (uint64_t k = 0; k < N; k++) {
        lock();
        uint64_t pos = log_pos;
        log_buf[pos] = (uint8_t)hart;
        log_pos = pos + 1;
        delay((uint32_t)hart + 1);
        unlock();
        delay(5 + (uint32_t)(lcg_next(&x) >> 60) + 3 * (uint32_t)hart);
    }
    barrier();
    if (hart != 0)
        return 0;

    uint64_t total = log_pos, handoffs = 0;
    uint64_t count[RT_MAX_HARTS] = {0};
    uint64_t h = FNV64_OFFSET;
    for (uint64_t i = 0; i < total; i++) {
        uint8_t b = log_buf[i];
        h = (h ^ b) * FNV64_PRIME;
        if (b < RT_MAX_HARTS)
            count[b]++;
        if (i && b != log_buf[i - 1])
            handoffs++;
    }
    if (total != N * (uint64_t)nharts)
        fail("spinlock: wrong number of log entries");
    for (int k = 0; k < nharts; k++)
        if (count[k] != N)
            fail("spinlock: per-hart acquisition count mismatch");

    result_begin("spinlock", nharts, h);
    result_dec("acq", total);
    result_dec("handoffs", handoffs);
    result_end();
    return 0;
}
