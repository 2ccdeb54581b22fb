/* cosim riscv64 bare-metal runtime (see rt.h). */
#include "rt.h"

#define UART_BASE   0x10000000ul
#define UART_THR    0
#define UART_LSR    5
#define UART_LSR_THRE 0x20
#define TEST_BASE   0x100000ul

uint32_t rt_nharts;
uint64_t rt_ram_base, rt_ram_size;
uint64_t rt_timebase_hz = 10000000;    /* QEMU virt's; the FDT's /cpus says */
static volatile uint64_t heap_next;
static uint64_t heap_end;

extern char _end[];

/* ------------------------------------------------------------------ */
/* UART                                                               */

static volatile uint32_t uart_lock_word;

void uart_lock(void)
{
    while (amoswap_w_aq(&uart_lock_word, 1) != 0)
        ;
}

void uart_unlock(void)
{
    amoswap_w_rl_zero(&uart_lock_word);
}

void put_char(char c)
{
    volatile uint8_t *u = (volatile uint8_t *)UART_BASE;
    while (!(u[UART_LSR] & UART_LSR_THRE))
        ;
    u[UART_THR] = (uint8_t)c;
}

void put_str(const char *s)
{
    while (*s)
        put_char(*s++);
}

void put_hex(uint64_t v)
{
    for (int i = 60; i >= 0; i -= 4)
        put_char("0123456789abcdef"[(v >> i) & 15]);
}

void put_dec(uint64_t v)
{
    char buf[21];
    int i = 20;
    buf[i] = 0;
    do {
        buf[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    put_str(&buf[i]);
}

void print_line(const char *s)
{
    uart_lock();
    put_str(s);
    put_char('\n');
    uart_unlock();
}

void result_begin(const char *name, int nharts, uint64_t checksum)
{
    uart_lock();
    put_str("RESULT ");
    put_str(name);
    put_str(" harts=");
    put_dec((uint64_t)nharts);
    put_str(" checksum=0x");
    put_hex(checksum);
}

void result_dec(const char *key, uint64_t v)
{
    put_char(' ');
    put_str(key);
    put_char('=');
    put_dec(v);
}

void result_milli(const char *key, uint64_t v)
{
    put_char(' ');
    put_str(key);
    put_char('=');
    put_dec(v / 1000);
    put_char('.');
    put_char((char)('0' + v / 100 % 10));
    put_char((char)('0' + v / 10 % 10));
    put_char((char)('0' + v % 10));
}

uint64_t rt_time_ns(void)
{
    uint64_t t;
    __asm__ volatile("rdtime %0" : "=r"(t));
    return t / rt_timebase_hz * 1000000000ull + t % rt_timebase_hz * 1000000000ull / rt_timebase_hz;
}

void result_hex(const char *key, uint64_t v)
{
    put_char(' ');
    put_str(key);
    put_str("=0x");
    put_hex(v);
}

void result_end(void)
{
    put_char('\n');
    uart_unlock();
}

/* ------------------------------------------------------------------ */
/* exit                                                               */

void exit_ok(void)
{
    *(volatile uint32_t *)TEST_BASE = 0x5555;
    __asm__ volatile("csrw mie, zero");
    for (;;)        /* halt (deterministic) until QEMU acts on the request */
        __asm__ volatile("wfi");
}

void exit_code(int code)
{
    if (code == 0)
        exit_ok();
    *(volatile uint32_t *)TEST_BASE = ((uint32_t)code << 16) | 0x3333;
    __asm__ volatile("csrw mie, zero");
    for (;;)
        __asm__ volatile("wfi");
}

void rt_exit_code(int code);    /* called from start.S */
void rt_exit_code(int code)
{
    exit_code(code);
}

void fail(const char *msg)
{
    uart_lock();
    put_str("FAIL ");
    put_str(msg);
    put_char('\n');
    uart_unlock();
    exit_code(RT_EXIT_VERIFY);
}

void rt_trap(uint64_t mcause, uint64_t mepc, uint64_t mtval);
void rt_trap(uint64_t mcause, uint64_t mepc, uint64_t mtval)
{
    /* do not take the lock: the trap may have happened while holding it */
    put_str("TRAP hart=");
    put_dec((uint64_t)rt_hartid());
    put_str(" mcause=0x");
    put_hex(mcause);
    put_str(" mepc=0x");
    put_hex(mepc);
    put_str(" mtval=0x");
    put_hex(mtval);
    put_char('\n');
    exit_code(RT_EXIT_TRAP);
}

/* ------------------------------------------------------------------ */
/* allocator                                                          */

void *rt_alloc(size_t bytes, size_t align)
{
    if (align < 8)
        align = 8;
    for (;;) {
        uint64_t cur = heap_next;
        uint64_t p = (cur + align - 1) & ~(uint64_t)(align - 1);
        uint64_t nxt = p + bytes;
        if (nxt < p || nxt > heap_end) {
            uart_lock();
            put_str("FAIL out of memory: need ");
            put_dec(bytes);
            put_str(" bytes, ");
            put_dec(heap_end > p ? heap_end - p : 0);
            put_str(" left\n");
            uart_unlock();
            exit_code(RT_EXIT_NOMEM);
        }
        if (__atomic_compare_exchange_n(&heap_next, &cur, nxt, 0,
                                        __ATOMIC_RELAXED, __ATOMIC_RELAXED))
            return (void *)p;
    }
}

/* ------------------------------------------------------------------ */
/* yield (see rt.h)                                                   */

#define CLINT_MSIP(h) ((volatile uint32_t *)(0x2000000ul + 4ul * (uint64_t)(h)))
#define MIE_MSIE 8

__attribute__((weak)) const uint32_t rt_yield_after = 1024;

void rt_yield(void)
{
    volatile uint32_t *msip = CLINT_MSIP(rt_hartid());
    *msip = 1;
    __asm__ volatile("csrs mie, %0\n\twfi\n\tcsrc mie, %0" :: "r"(MIE_MSIE) : "memory");
    *msip = 0;
}

/* ------------------------------------------------------------------ */
/* barrier: generation counter + AMO arrival counter                  */

static volatile uint32_t bar_count ALIGNED(CACHE_LINE);
static volatile uint32_t bar_gen ALIGNED(CACHE_LINE);

void barrier(void)
{
    uint32_t n = rt_nharts;
    uint32_t gen = bar_gen;
    fence_r_rw();
    if (amoadd_w(&bar_count, 1) == n - 1) {
        bar_count = 0;
        fence_rw_w();
        bar_gen = gen + 1;
    } else {
        uint32_t polls = 0;
        while (bar_gen == gen)
            spin_wait(&polls);
    }
    fence_r_rw();
}

/* ------------------------------------------------------------------ */
/* minimal flattened-device-tree walker                               */

#define FDT_MAGIC      0xd00dfeedu
#define FDT_BEGIN_NODE 1
#define FDT_END_NODE   2
#define FDT_PROP       3
#define FDT_NOP        4
#define FDT_END        9

static uint32_t be32(const void *p)
{
    const uint8_t *b = p;
    return ((uint32_t)b[0] << 24) | ((uint32_t)b[1] << 16) | ((uint32_t)b[2] << 8) | b[3];
}

static uint64_t be_cells(const uint8_t *p, uint32_t cells)
{
    uint64_t v = 0;
    for (uint32_t i = 0; i < cells; i++)
        v = (v << 32) | be32(p + 4 * i);
    return v;
}

static int str_eq(const char *a, const char *b)
{
    while (*a && *a == *b)
        a++, b++;
    return *a == *b;
}

static int str_prefix(const char *s, const char *pre)
{
    while (*pre)
        if (*s++ != *pre++)
            return 0;
    return 1;
}

static size_t str_len(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

static NORETURN void fdt_fail(const char *why)
{
    put_str("FAIL fdt: ");
    put_str(why);
    put_char('\n');
    exit_code(RT_EXIT_FDT);
}

/* Counts cpu@N nodes directly under /cpus, finds /memory reg. */
static void fdt_scan(const uint8_t *fdt)
{
    if (!fdt || be32(fdt) != FDT_MAGIC)
        fdt_fail("bad magic");
    const uint8_t *p = fdt + be32(fdt + 8);           /* off_dt_struct */
    const char *strs = (const char *)fdt + be32(fdt + 12);
    int depth = 0, in_cpus = 0, in_mem = 0;
    uint32_t acells = 2, scells = 2, ncpu = 0;

    for (;;) {
        uint32_t tok = be32(p);
        p += 4;
        if (tok == FDT_BEGIN_NODE) {
            const char *name = (const char *)p;
            p += (str_len(name) + 4) & ~(size_t)3;
            depth++;
            if (depth == 2) {
                in_cpus = str_eq(name, "cpus");
                in_mem = str_prefix(name, "memory@") || str_eq(name, "memory");
            } else if (depth == 3 && in_cpus && str_prefix(name, "cpu@")) {
                ncpu++;
            }
        } else if (tok == FDT_END_NODE) {
            if (depth == 2) {
                /* QEMU virt puts /memory before /cpus: stop early, the
                 * rest of the tree is all devices */
                if (in_cpus && rt_ram_size)
                    break;
                in_cpus = in_mem = 0;
            }
            depth--;
        } else if (tok == FDT_PROP) {
            uint32_t len = be32(p), nameoff = be32(p + 4);
            const uint8_t *val = p + 8;
            const char *pname = strs + nameoff;
            p += 8 + ((len + 3) & ~3u);
            if (depth == 2 && in_cpus && str_eq(pname, "timebase-frequency") && len == 4 &&
                be32(val) != 0)
                rt_timebase_hz = be32(val);
            else if (depth == 1 && str_eq(pname, "#address-cells"))
                acells = be32(val);
            else if (depth == 1 && str_eq(pname, "#size-cells"))
                scells = be32(val);
            else if (depth == 2 && in_mem && str_eq(pname, "reg") && rt_ram_size == 0 &&
                     len >= 4 * (acells + scells)) {
                rt_ram_base = be_cells(val, acells);
                rt_ram_size = be_cells(val + 4 * acells, scells);
            }
        } else if (tok == FDT_NOP) {
            continue;
        } else if (tok == FDT_END) {
            break;
        } else {
            fdt_fail("bad token");
        }
    }
    if (ncpu == 0)
        fdt_fail("no cpu@ nodes under /cpus");
    if (ncpu > RT_MAX_HARTS)
        ncpu = RT_MAX_HARTS;
    rt_nharts = ncpu;
}

void rt_init(const uint8_t *fdt);   /* hart 0, from start.S, before release */
void rt_init(const uint8_t *fdt)
{
    fdt_scan(fdt);
    uint64_t start = ((uint64_t)_end + 4095) & ~4095ull;
    uint64_t end = rt_ram_size ? rt_ram_base + rt_ram_size : 0x80000000ull + (128ull << 20);
    /* the FDT sits near the top of RAM; keep it intact */
    if ((uint64_t)fdt > start && (uint64_t)fdt < end)
        end = (uint64_t)fdt & ~4095ull;
    heap_next = start;
    heap_end = end;
}

/* ------------------------------------------------------------------ */
/* GCC may emit calls to these even with -ffreestanding.              */

void *memset(void *d, int c, size_t n);
void *memcpy(void *restrict d, const void *restrict s, size_t n);

void *memset(void *d, int c, size_t n)
{
    volatile uint8_t *p = d;    /* volatile: stop GCC turning this into memset */
    while (n--)
        *p++ = (uint8_t)c;
    return d;
}

void *memcpy(void *restrict d, const void *restrict s, size_t n)
{
    volatile uint8_t *p = d;
    const uint8_t *q = s;
    while (n--)
        *p++ = *q++;
    return d;
}

uint64_t sum_over_harts(int hart, uint64_t mine)
{
    static uint64_t partial[RT_MAX_HARTS];
    uint64_t sum = 0;

    partial[hart] = mine;
    barrier();
    for (int h = 0; h < rt_nharts; h++)
        sum += partial[h];
    return sum;
}

/* ---- region of interest (see rt.h) ------------------------------------ */
/* Initialised, so in .data: the timing model takes any store to them as a
 * marker, and start.S's clear of .bss would otherwise mark a bogus region
 * at start-up (a run stopped before roi_end reported it, even negative). */
volatile uint64_t cosim_roi_begin ALIGNED(CACHE_LINE) = UINT64_MAX;
volatile uint64_t cosim_roi_end ALIGNED(CACHE_LINE) = UINT64_MAX;

void roi_begin(void)
{
    cosim_roi_begin = (uint64_t)rt_hartid();
}

void roi_end(void)
{
    cosim_roi_end = (uint64_t)rt_hartid();
}
