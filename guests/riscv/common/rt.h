/* cosim riscv64 bare-metal runtime: tiny freestanding helpers shared by all guests. */
#ifndef COSIM_RT_H
#define COSIM_RT_H

#define RT_MAX_HARTS   32      /* keep in sync with common/link.ld */
#define RT_STACK_SHIFT 14      /* 16 KiB per hart */

/* exit statuses used by the runtime / workloads */
#define RT_EXIT_VERIFY 1       /* workload self-check failed */
#define RT_EXIT_NOMEM  2       /* rt_alloc out of memory */
#define RT_EXIT_TRAP   3       /* unexpected trap */
#define RT_EXIT_FDT    4       /* FDT unusable */

#ifndef __ASSEMBLER__
#include <stdint.h>
#include <stddef.h>

#define CACHE_LINE 64
#define ALIGNED(n) __attribute__((aligned(n)))
#define NORETURN   __attribute__((noreturn))
#define barrier_compiler() __asm__ volatile("" ::: "memory")

/* filled by hart 0 before the other harts are released */
extern uint32_t rt_nharts;       /* number of cpu@N nodes under /cpus */
extern uint64_t rt_ram_base, rt_ram_size;
extern uint64_t rt_timebase_hz;  /* of the time CSR, from the FDT */

int main(int hartid, int nharts);

static inline int rt_hartid(void)
{
    int h;
    __asm__ volatile("mv %0, tp" : "=r"(h));
    return h;
}

/* ---- output (ns16550a @ 0x10000000) --------------------------------- */
/* Raw output: call only while holding the UART lock (or single hart). */
void uart_lock(void);
void uart_unlock(void);
void put_char(char c);
void put_str(const char *s);
void put_hex(uint64_t v);         /* 16 hex digits, no prefix */
void put_dec(uint64_t v);
/* one whole line under the lock */
void print_line(const char *s);

/* RESULT line: "RESULT <name> harts=<n> checksum=0x<16 hex> [key=value ...]"
 * result_begin takes the UART lock, result_end prints '\n' and releases it. */
void result_begin(const char *name, int nharts, uint64_t checksum);
void result_dec(const char *key, uint64_t v);
void result_hex(const char *key, uint64_t v);
void result_milli(const char *key, uint64_t v);   /* v / 1000 with 3 decimals */
void result_end(void);

/* ---- time ------------------------------------------------------------ */
/* The guest's own clock (rdtime), in ns. Under --timing it is simulated
 * time; otherwise it follows instructions (icount). */
uint64_t rt_time_ns(void);

/* ---- exit (sifive_test @ 0x100000) ----------------------------------- */
NORETURN void exit_ok(void);
NORETURN void exit_code(int code);
NORETURN void fail(const char *msg);   /* prints "FAIL <msg>", exit 1 */

/* ---- memory: bump allocator from _end to the FDT / end of RAM --------- */
/* Not zeroed.  Thread safe (AMO), but call it from hart 0 before a barrier
 * if the layout must not depend on the interleaving. */
void *rt_alloc(size_t bytes, size_t align);

/* ---- region of interest ----------------------------------------------- */
/* Each hart marks where its measured work starts and ends, like gem5's
 * m5 work_begin/work_end: the timing model sees the store to the ELF
 * symbol cosim_roi_begin / cosim_roi_end and reports the cycles between. */
void roi_begin(void);
void roi_end(void);

/* ---- synchronisation -------------------------------------------------- */
void barrier(void);               /* all rt_nharts harts */
/* Every hart passes its value; after a barrier, returns the sum of all
 * harts' values (every hart gets it).  Used for checksums. */
uint64_t sum_over_harts(int hart, uint64_t mine);

static inline uint32_t amoswap_w_aq(volatile uint32_t *p, uint32_t v)
{
    uint32_t old;
    __asm__ volatile("amoswap.w.aq %0, %2, %1" : "=r"(old), "+A"(*p) : "r"(v) : "memory");
    return old;
}
static inline void amoswap_w_rl_zero(volatile uint32_t *p)
{
    __asm__ volatile("amoswap.w.rl zero, zero, %0" : "+A"(*p) :: "memory");
}
static inline uint64_t amoadd_d(volatile uint64_t *p, uint64_t v)
{
    uint64_t old;
    __asm__ volatile("amoadd.d %0, %2, %1" : "=r"(old), "+A"(*p) : "r"(v) : "memory");
    return old;
}
static inline uint32_t amoadd_w(volatile uint32_t *p, uint32_t v)
{
    uint32_t old;
    __asm__ volatile("amoadd.w %0, %2, %1" : "=r"(old), "+A"(*p) : "r"(v) : "memory");
    return old;
}
static inline void fence_rw_rw(void) { __asm__ volatile("fence rw, rw" ::: "memory"); }
static inline void fence_r_rw(void)  { __asm__ volatile("fence r, rw" ::: "memory"); }
static inline void fence_rw_w(void)  { __asm__ volatile("fence rw, w" ::: "memory"); }

/*
 * Spin-then-yield for wait loops (barrier, prodcons full/empty waits; NOT
 * the TAS lock of the spinlock workload, which is a pure amoswap loop).
 * After rt_yield_after consecutive failed polls a waiter executes one
 * rt_yield(): wfi with its own CLINT MSIP pending and mie.MSIE set (and
 * mstatus.MIE clear, so no trap is taken).  Architecturally a no-op, but in
 * QEMU the vCPU halts and its turn ends at once; it is runnable again on its
 * next turn.  Without this, stock QEMU's round-robin slices (~10^8/nharts
 * instructions under -icount) make every unsatisfied wait burn a whole
 * slice.  With small scheduling quanta (< ~4000 insns/turn) the threshold
 * is rarely reached, so waits are plain spins.
 * Default 1024 polls; per-ELF override with the file-name key y<n>
 * (y0 = never yield: pure spinning).
 */
extern const uint32_t rt_yield_after;
#ifdef PARAM_y
const uint32_t rt_yield_after = PARAM_y;     /* overrides the weak default in rt.c */
#endif
void rt_yield(void);

/* Call once per failed poll; *n is the caller's poll counter (start at 0). */
static inline void spin_wait(uint32_t *n)
{
    barrier_compiler();
    if (rt_yield_after && ++*n >= rt_yield_after) {
        *n = 0;
        rt_yield();
    }
}

/* Short busy-wait that the compiler cannot remove (~2 insns / iteration). */
static inline void delay(uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        __asm__ volatile("");
}

/* ---- deterministic pseudo-random numbers and hashing ------------------ */
static inline uint64_t lcg_next(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return *s;
}
static inline uint64_t hart_seed(int hartid, uint64_t salt)
{
    return (uint64_t)(hartid + 1) * 0x9E3779B97F4A7C15ull ^ salt;
}
#define FNV64_OFFSET 0xcbf29ce484222325ull
#define FNV64_PRIME  0x100000001b3ull
static inline uint64_t mix64(uint64_t h, uint64_t v)    /* order-sensitive */
{
    h ^= v;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 32;
    return h;
}

#endif /* __ASSEMBLER__ */
#endif
