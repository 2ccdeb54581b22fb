/*
 * chmu: the CXL Hotness Monitoring Unit cosim models, from inside the guest.
 *
 *   chmu info                        capabilities, configuration, status
 *   chmu config [enable|disable] [threshold=N] [epoch=TIME] [unit=SIZE]
 *                                    (TIME: 100us .. 100s; SIZE: one of the unit sizes
 *                                    info lists; takes effect at the next epoch, and a new
 *                                    unit restarts the counters); with -- CMD ARGS...,
 *                                    then runs CMD in its place
 *   chmu dump                        the hot units published since the last dump, as
 *                                    host physical addresses, and consumes them
 *   chmu promote [--rate MB/s] [--node N] [--min-epochs K] [--rescan B] [--thp]
 *                [--dry-run] -- CMD ARGS...
 *                                    runs CMD; at every epoch moves CMD's pages that the
 *                                    hot lists named K times in a row (default 2: a page
 *                                    written once, as while a program fills its memory,
 *                                    stays) from the CXL node to node N (default 0) with
 *                                    move_pages(2), and prints what it moved. CMD runs
 *                                    without transparent huge pages (a hot 4 KiB unit
 *                                    would move its whole 2 MiB page) unless --thp;
 *                                    --dry-run finds the pages but moves none (the same
 *                                    run without promotion, for comparison)
 *
 * The CHMU registers (layout: cosim/chmu_device.py, after the CXL 3.2 CHMU
 * register interface) are in register blocks, mapped through sysfs: BAR 2 of a
 * PCI device (ivshmem-plain, 1af4:1110; the CPU-less CXL node's instances), and
 * in each cxl-type3 device (class 0x050210) the block its Register Locator DVSEC
 * lists with identifier 5 (its window's instance). Instances are numbered across
 * blocks in that order (type3 devices by PCI address). Hot-list entries are the
 * unit's index within the device above the counter width and its count below.
 *
 * promote maps hot physical units to CMD's virtual pages through
 * /proc/PID/maps and /proc/PID/pagemap (root reads PFNs), read again every B
 * looks at the hot list (default 4; reading pagemap costs the kernel a page-table
 * walk per page). Its lines:
 *   PROMOTE epoch=E hot=U ripe=R candidates=C moved=M failed=F bytes=B digest=0x...
 * (hot: units listed since the last look, ripe: of those, listed K times in a row,
 * candidates: CMD's pages in them not on node N yet, moved/failed: move_pages's verdicts)
 *   PROMOTE done epochs=E moved=M bytes=B digest=0x...
 *   RESULT chmu promote_epochs=E moved=M bytes=B digest=0x...   (the same, as a result line)
 * The digest is FNV-1a over the moved pages' virtual addresses in order: two
 * runs that moved the same pages print the same digest.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include "common.h"

#define BLOCK_BYTES (1u << 20)
#define COMMON_CAP1 0x00
#define COMMON_CAP2 0x08
#define INSTANCE_BASE 0x10
#define CAP1 0x00
#define CAP2 0x08
#define CAP4 0x18
#define CFG1 0x40
#define CFG2 0x48
#define STAT 0x60
#define HEAD_TAIL 0x68
#define X_EPOCH 0x70
#define X_BASE 0x78
#define X_SIZE 0x80
#define X_DROPPED 0x88
#define X_UNIT 0x90
#define CTRL_ENABLE 1ULL
#define MPOL_MF_MOVE (1 << 1)
#define PAGE 4096ULL

/* every instance of every register block: where its registers start */
#define MAX_INST 16
static struct inst {
    volatile uint8_t *block;
    uint64_t base;
    char where[64];
} inst[MAX_INST];
static unsigned ninst;

static uint64_t rd(unsigned i, uint64_t off)
{
    return *(volatile uint64_t *)(inst[i].block + inst[i].base + off);
}
static void wr(unsigned i, uint64_t off, uint64_t v)
{
    *(volatile uint64_t *)(inst[i].block + inst[i].base + off) = v;
}

static void usage(void)
{
    printf("usage: chmu info | config [enable|disable] [threshold=N] [epoch=TIME] [unit=SIZE]"
           " [-- CMD ARGS...] | dump\n"
           "       chmu promote [--rate MB/s] [--node N] [--min-epochs K] [--rescan B] [--thp] [--dry-run] "
           "-- CMD ARGS...\n");
}

static int read_hex_file(const char *path, unsigned *out)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    int ok = fscanf(f, "%x", out) == 1;
    fclose(f);
    return ok ? 0 : -1;
}

/* Map BAR `bar` of PCI device `dev` from `offset`; NULL when it cannot. */
static volatile uint8_t *map_bar(const char *dev, int bar, uint64_t offset)
{
    char path[512];
    snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/enable", dev);
    int en = open(path, O_WRONLY);
    if (en >= 0) {
        if (write(en, "1", 1) < 0) { /* already enabled, or not needed */ }
        close(en);
    }
    snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/resource%d", dev, bar);
    int fd = open(path, O_RDWR | O_SYNC);
    if (fd < 0)
        return NULL;
    void *p = mmap(NULL, BLOCK_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)offset);
    close(fd);
    return p == MAP_FAILED ? NULL : p;
}

/* Add the instances of the register block at p; returns 0 if it has no registers yet. */
static int add_block(volatile uint8_t *p, const char *where)
{
    uint64_t cap1 = *(volatile uint64_t *)(p + COMMON_CAP1);
    uint64_t len = *(volatile uint64_t *)(p + COMMON_CAP2) & 0xffff;
    if ((cap1 & 0xf) == 0)
        return 0;
    for (unsigned k = 0; k < (cap1 >> 8 & 0xff) && ninst < MAX_INST; k++, ninst++) {
        inst[ninst].block = p;
        inst[ninst].base = INSTANCE_BASE + k * len;
        snprintf(inst[ninst].where, sizeof inst[ninst].where, "%s", where);
    }
    return 1;
}

/* The CHMU block of a CXL device: a Register Locator DVSEC entry with identifier 5. */
static int cxl_block(const char *dev, int *bar, uint64_t *offset)
{
    char path[512];
    uint8_t cfg[4096];
    snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/config", dev);
    int fd = open(path, O_RDONLY);
    ssize_t n = fd >= 0 ? pread(fd, cfg, sizeof cfg, 0) : -1;
    if (fd >= 0)
        close(fd);
    for (unsigned at = 0x100, hops = 0; n == (ssize_t)sizeof cfg && at && at + 12 <= sizeof cfg
             && hops < 64; hops++) {
        uint32_t hdr, hdr1, hdr2;
        memcpy(&hdr, cfg + at, 4);
        memcpy(&hdr1, cfg + at + 4, 4);
        memcpy(&hdr2, cfg + at + 8, 4);
        /* DVSEC (0x23) of the CXL consortium (0x1e98), Register Locator (8) */
        if ((hdr & 0xffff) == 0x23 && (hdr1 & 0xffff) == 0x1e98 && (hdr2 & 0xffff) == 8) {
            unsigned len = hdr1 >> 20;
            for (unsigned e = at + 12; e + 8 <= at + len && e + 8 <= sizeof cfg; e += 8) {
                uint32_t lo, hi;
                memcpy(&lo, cfg + e, 4);
                memcpy(&hi, cfg + e + 4, 4);
                if ((lo >> 8 & 0xff) == 5) {
                    *bar = (int)(lo & 7);
                    *offset = (uint64_t)hi << 32 | (lo & 0xffff0000u);
                    return 1;
                }
            }
        }
        at = hdr >> 20;
    }
    return 0;
}

/* Find every CHMU register block: the cosim PCI device's, then each CXL type-3 device's. */
static void map_devices(void)
{
    struct dirent **names;
    int n = scandir("/sys/bus/pci/devices", &names, NULL, alphasort);
    int blocks = 0, empty = 0;
    char path[512], where[64];
    for (int pass = 0; pass < 2; pass++)
        for (int k = 0; k < n; k++) {
            const char *dev = names[k]->d_name;
            unsigned vendor, device, class;
            if (dev[0] == '.')
                continue;
            snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/vendor", dev);
            if (read_hex_file(path, &vendor))
                continue;
            snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/device", dev);
            if (read_hex_file(path, &device))
                continue;
            snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/class", dev);
            if (read_hex_file(path, &class))
                continue;
            volatile uint8_t *p = NULL;
            if (pass == 0 && vendor == 0x1af4 && device == 0x1110) {
                p = map_bar(dev, 2, 0);
                snprintf(where, sizeof where, "pci %s BAR2", dev);
            } else if (pass == 1 && class == 0x050210) {
                int bar;
                uint64_t offset;
                if (!cxl_block(dev, &bar, &offset))
                    continue;
                p = map_bar(dev, bar, offset);
                snprintf(where, sizeof where, "cxl-type3 %s BAR%d+0x%llx", dev, bar,
                         (unsigned long long)offset);
            }
            if (!p)
                continue;
            blocks++;
            empty += !add_block(p, where);
        }
    for (int k = 0; k < n; k++)
        free(names[k]);
    if (n >= 0)
        free(names);
    if (blocks && !ninst && empty) {
        fprintf(stderr, "chmu: the device has no CHMU registers yet (run under "
                        "cosim run --timing --chmu)\n");
        exit(1);
    }
    if (!ninst) {
        fprintf(stderr, "chmu: no CHMU device (PCI 1af4:1110, or a cxl-type3 device with a "
                        "CHMU block) in this guest (boot it with a current cosim boot)\n");
        exit(1);
    }
}

static const uint64_t scale_us[6] = {0, 100, 1000, 10000, 100000, 1000000};

static uint64_t epoch_us(uint64_t field)
{
    unsigned scale = field & 0xf;
    return scale >= 1 && scale <= 5 ? (field >> 4) * scale_us[scale] : 0;
}

/* TIME with a unit (us, ms, s) -> the 16-bit epoch length field; exits when out of range. */
static uint64_t parse_epoch(const char *text)
{
    char *end;
    unsigned long long v = strtoull(text, &end, 10);
    uint64_t us = !strcmp(end, "us") ? v : !strcmp(end, "ms") ? v * 1000
                : !strcmp(end, "s") ? v * 1000000 : 0;
    if (end == text || us < 100 || us > 100000000)
        bad_arg("bad epoch=%s: want a time from 100us to 100s, e.g. 1ms", text);
    for (int s = 5; s >= 1; s--)
        if (us % scale_us[s] == 0 && us / scale_us[s] < 4096)
            return (us / scale_us[s]) << 4 | (uint64_t)s;
    bad_arg("bad epoch=%s: not a multiple of 100us below 409.6ms, of 1ms below 4.096s, ...",
            text);
    return 0;
}

static int info(void)
{
    printf("CHMU instances=%u\n", ninst);
    for (unsigned i = 0; i < ninst; i++) {
        volatile uint8_t *blk = inst[i].block;
        uint64_t cap1 = rd(i, CAP1), cap2 = rd(i, CAP2);
        uint64_t cfg1 = rd(i, CFG1), cfg2 = rd(i, CFG2), stat = rd(i, STAT);
        uint64_t ht = rd(i, HEAD_TAIL);
        printf("instance %u: in=%s version=%llu instance_bytes=%llu base=0x%llx size=0x%llx "
               "hotlist_entries=%llu epoch_us=%llu..%llu unit_sizes=0x%llx\n", i, inst[i].where,
               (unsigned long long)(*(volatile uint64_t *)(blk + COMMON_CAP1) & 0xf),
               (unsigned long long)(*(volatile uint64_t *)(blk + COMMON_CAP2) & 0xffff),
               (unsigned long long)rd(i, X_BASE), (unsigned long long)rd(i, X_SIZE),
               (unsigned long long)(cap1 >> 48), (unsigned long long)epoch_us(cap1 >> 32 & 0xffff),
               (unsigned long long)epoch_us(cap1 >> 16 & 0xffff),
               (unsigned long long)((cap2 & 0xffffffff) << 8));
        printf("  config: %s threshold=%llu unit=%llu epoch_us=%llu mode=%s\n",
               (cfg1 >> 16 & CTRL_ENABLE) ? "enabled" : "disabled",
               (unsigned long long)(cfg1 >> 32), (unsigned long long)(cfg2 & 0xffffffff),
               (unsigned long long)epoch_us(cfg2 >> 48),
               (cfg2 >> 40 & 0xff) ? "always-on" : "epoch");
        printf("  status: %s counter_bits=%llu overflow=%llu epochs=%llu head=%llu tail=%llu "
               "dropped=%llu\n", (stat & 1) ? "enabled" : "disabled",
               (unsigned long long)(stat >> 32 & 0xff), (unsigned long long)(stat >> 40 & 0xff),
               (unsigned long long)rd(i, X_EPOCH), (unsigned long long)(ht & 0xffff),
               (unsigned long long)(ht >> 16 & 0xffff), (unsigned long long)rd(i, X_DROPPED));
    }
    return 0;
}

static int config(int argc, char **argv)
{
    int nset = 0;
    while (nset < argc && strcmp(argv[nset], "--"))
        nset++;
    if (nset < argc && nset + 1 == argc)
        bad_arg("config ... --: give the command to run after it");
    for (unsigned i = 0; i < ninst; i++) {
        uint64_t cfg1 = rd(i, CFG1), cfg2 = rd(i, CFG2);
        for (int k = 0; k < nset; k++) {
            const char *a = argv[k];
            if (!strcmp(a, "enable"))
                cfg1 |= CTRL_ENABLE << 16;
            else if (!strcmp(a, "disable"))
                cfg1 &= ~(CTRL_ENABLE << 16);
            else if (!strncmp(a, "threshold=", 10)) {
                uint64_t t = parse_num('t', a + 10, 0, 1, 0xffffffffULL);
                cfg1 = (cfg1 & 0xffffffffULL) | t << 32;
            } else if (!strncmp(a, "epoch=", 6))
                cfg2 = (cfg2 & 0x0000ffffffffffffULL) | parse_epoch(a + 6) << 48;
            else if (!strncmp(a, "unit=", 5)) {
                uint64_t u = parse_num('u', a + 5, 1, 256, 1ULL << 31);
                uint64_t sizes = (rd(i, CAP2) & 0xffffffffULL) << 8;
                if (u & (u - 1) || !(sizes & u))
                    bad_arg("bad unit=%s: want one of the unit sizes info lists (0x%llx: "
                            "each set bit a size in bytes)", a + 5, (unsigned long long)sizes);
                cfg2 = (cfg2 & ~0xffffffffULL) | u;
            } else
                bad_arg("unknown setting %s: want enable, disable, threshold=N, epoch=TIME or "
                        "unit=SIZE", a);
        }
        wr(i, CFG1, cfg1);
        wr(i, CFG2, cfg2);
    }
    printf("CONFIG written; it takes effect at the next epoch\n");
    if (nset < argc) {
        fflush(stdout);
        execvp(argv[nset + 1], argv + nset + 1);
        bad_arg("config -- %s: cannot run it (%s)", argv[nset + 1], strerror(errno));
    }
    return 0;
}

/* Pop instance i's published entries into out (at most cap); returns how many. */
static size_t pop(unsigned i, uint64_t *out, size_t cap)
{
    uint64_t ring = rd(i, CAP1) >> 48, ht = rd(i, HEAD_TAIL);
    uint64_t head = ht & 0xffff, tail = ht >> 16 & 0xffff, list = rd(i, CAP4);
    size_t n = 0;
    while (head != tail && ring) {
        if (n < cap)
            out[n++] = rd(i, list + 8 * head);
        head = (head + 1) % ring;
    }
    *(volatile uint16_t *)(inst[i].block + inst[i].base + HEAD_TAIL) = (uint16_t)head;
    return n;
}

static void unit_of(unsigned i, uint64_t entry, uint64_t *addr, uint64_t *count, uint64_t *unit)
{
    uint64_t width = rd(i, STAT) >> 32 & 0xff;
    /* the unit the list was counted in (the configured one may have changed since) */
    *unit = rd(i, X_UNIT) ? rd(i, X_UNIT) : rd(i, CFG2) & 0xffffffff;
    *addr = rd(i, X_BASE) + (entry >> width) * *unit;
    *count = entry & ((1ULL << width) - 1);
}

static int dump(void)
{
    static uint64_t e[1 << 16];
    for (unsigned i = 0; i < ninst; i++) {
        size_t n = pop(i, e, 1 << 16);
        printf("DUMP instance=%u epochs=%llu units=%zu\n", i,
               (unsigned long long)rd(i, X_EPOCH), n);
        for (size_t k = 0; k < n; k++) {
            uint64_t addr, count, unit;
            unit_of(i, e[k], &addr, &count, &unit);
            printf("HOT 0x%llx+0x%llx count=%llu\n", (unsigned long long)addr,
                   (unsigned long long)unit, (unsigned long long)count);
        }
    }
    return 0;
}

/* ---- promote --------------------------------------------------------------- */

struct range { uint64_t lo, hi; };

static int by_lo(const void *a, const void *b)
{
    const struct range *x = a, *y = b;
    return x->lo < y->lo ? -1 : x->lo > y->lo;
}

/* CMD's present pages: frame -> virtual address, sorted by frame (rebuilt now and then) */
struct frame { uint64_t phys, va; };
static struct frame *frames;
static size_t nframes, frames_cap;

static int by_phys(const void *a, const void *b)
{
    const struct frame *x = a, *y = b;
    return x->phys < y->phys ? -1 : x->phys > y->phys;
}

/* Read /proc/PID/maps and /proc/PID/pagemap: every present page's frame and address. */
static void scan(pid_t pid)
{
    char path[64], line[512];
    static uint64_t ent[4096];
    nframes = 0;
    snprintf(path, sizeof path, "/proc/%d/maps", (int)pid);
    FILE *maps = fopen(path, "r");
    snprintf(path, sizeof path, "/proc/%d/pagemap", (int)pid);
    int pm = open(path, O_RDONLY);
    while (maps && pm >= 0 && fgets(line, sizeof line, maps)) {
        unsigned long long lo, hi;
        if (sscanf(line, "%llx-%llx", &lo, &hi) != 2 || strstr(line, "[vsyscall]"))
            continue;
        for (uint64_t v = lo; v < hi; v += 4096 * PAGE) {
            uint64_t pages = (hi - v) / PAGE < 4096 ? (hi - v) / PAGE : 4096;
            ssize_t got = pread(pm, ent, pages * 8, (off_t)(v / PAGE * 8));
            for (ssize_t k = 0; k < got / 8; k++) {
                uint64_t phys = (ent[k] & ((1ULL << 55) - 1)) * PAGE;
                if (!(ent[k] >> 63) || !phys)
                    continue;
                if (nframes == frames_cap) {
                    frames_cap = frames_cap ? 2 * frames_cap : 1 << 16;
                    frames = realloc(frames, frames_cap * sizeof *frames);
                    if (!frames)
                        bad_arg("promote: out of memory for %zu pages", frames_cap);
                }
                frames[nframes].phys = phys;
                frames[nframes].va = v + (uint64_t)k * PAGE;
                nframes++;
            }
        }
    }
    if (maps)
        fclose(maps);
    if (pm >= 0)
        close(pm);
    qsort(frames, nframes, sizeof *frames, by_phys);
}

/* The scanned pages whose frames lie in the ranges (sorted): their addresses into va. */
static size_t candidates(const struct range *r, size_t nr, void **va, size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; i < nr && n < cap; i++) {
        size_t lo = 0, hi = nframes;
        while (lo < hi) {               /* first frame at or above the range */
            size_t mid = (lo + hi) / 2;
            if (frames[mid].phys < r[i].lo)
                lo = mid + 1;
            else
                hi = mid;
        }
        for (; lo < nframes && frames[lo].phys < r[i].hi && n < cap; lo++)
            va[n++] = (void *)(uintptr_t)frames[lo].va;
    }
    return n;
}

static int promote(int argc, char **argv)
{
    uint64_t rate = 0, node = 0, min_epochs = 2, rescan = 4, scanned = 0;
    int k = 0, thp = 0, dry = 0;
    for (; k < argc && strcmp(argv[k], "--"); k++) {
        if (!strcmp(argv[k], "--rate") && k + 1 < argc)
            rate = parse_num('r', argv[++k], 0, 1, 1ULL << 20);
        else if (!strcmp(argv[k], "--node") && k + 1 < argc)
            node = parse_num('n', argv[++k], 0, 0, 63);
        else if (!strcmp(argv[k], "--min-epochs") && k + 1 < argc)
            min_epochs = parse_num('m', argv[++k], 0, 1, 1000);
        else if (!strcmp(argv[k], "--rescan") && k + 1 < argc)
            rescan = parse_num('s', argv[++k], 0, 1, 1000);
        else if (!strcmp(argv[k], "--thp"))
            thp = 1;
        else if (!strcmp(argv[k], "--dry-run"))
            dry = 1;
        else
            bad_arg("promote: unknown option %s (usage: chmu promote [--rate MB/s] "
                    "[--node N] [--min-epochs K] [--rescan B] [--thp] [--dry-run] -- CMD ARGS...)",
                    argv[k]);
    }
    if (k + 1 >= argc)
        bad_arg("promote: give the command after --");
    char **cmd = argv + k + 1;

    /* a fresh start: enabled, nothing left over from before */
    static uint64_t e[1 << 16];
    for (unsigned i = 0; i < ninst; i++) {
        wr(i, CFG1, rd(i, CFG1) | CTRL_ENABLE << 16);
        pop(i, e, 0);
    }
    uint64_t ep_us = epoch_us(rd(0, CFG2) >> 48);
    if (!ep_us)
        ep_us = 1000;
    uint64_t budget = rate ? rate * ep_us : UINT64_MAX;     /* MB/s x us = bytes */

    /* per unit of each instance: the batch that last named it and how many in a row */
    uint64_t units[MAX_INST];
    uint32_t *last[MAX_INST], *streak[MAX_INST];
    for (unsigned i = 0; i < ninst; i++) {
        units[i] = rd(i, X_SIZE) / (rd(i, CFG2) & 0xffffffff);
        last[i] = calloc(units[i], sizeof *last[i]);
        streak[i] = calloc(units[i], sizeof *streak[i]);
        if (!last[i] || !streak[i])
            bad_arg("promote: cannot track %llu units", (unsigned long long)units[i]);
    }

    pid_t pid = fork();
    if (pid < 0) {
        perror("chmu: fork");
        return 1;
    }
    if (pid == 0) {
        if (!thp && prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) != 0)
            perror("chmu: PR_SET_THP_DISABLE");
        execv(cmd[0], cmd);
        fprintf(stderr, "chmu: cannot run %s: %s\n", cmd[0], strerror(errno));
        _exit(127);
    }

    static struct range r[1 << 16];
    static void *va[1 << 16];
    static int nodes[1 << 16], status[1 << 16];
    uint64_t seen_epoch = rd(0, X_EPOCH), epochs = 0, moved_total = 0, digest = 0xcbf29ce484222325ULL;
    struct timespec nap = {(time_t)(ep_us / 4 / 1000000), (long)(ep_us / 4 % 1000000 * 1000)};
    int wstatus = 0;
    for (;;) {
        pid_t done = waitpid(pid, &wstatus, WNOHANG);
        if (done == pid)
            break;
        nanosleep(&nap, NULL);
        uint64_t now = rd(0, X_EPOCH);
        if (now == seen_epoch)
            continue;
        seen_epoch = now;
        size_t nr = 0, named = 0;
        epochs++;
        for (unsigned i = 0; i < ninst; i++) {
            size_t n = pop(i, e, 1 << 16);
            for (size_t j = 0; j < n && nr < (1 << 16); j++) {
                uint64_t addr, count, unit;
                unit_of(i, e[j], &addr, &count, &unit);
                named++;
                uint64_t u = e[j] >> (rd(i, STAT) >> 32 & 0xff);
                if (u >= units[i] || last[i][u] == epochs)
                    continue;       /* named twice in one batch: once */
                streak[i][u] = last[i][u] == epochs - 1 ? streak[i][u] + 1 : 1;
                last[i][u] = (uint32_t)epochs;
                if (streak[i][u] < min_epochs)
                    continue;
                r[nr].lo = addr;
                r[nr].hi = addr + unit;
                nr++;
            }
        }
        if (!named) {
            epochs--;
            continue;
        }
        qsort(r, nr, sizeof r[0], by_lo);
        size_t cap = budget / PAGE < (1 << 16) ? (size_t)(budget / PAGE) : (1 << 16);
        size_t nc = 0;
        if (nr) {
            /* pages moved since keep stale frames (harmless: they are on the node
               already); new pages of CMD wait for the next scan */
            if (!nframes || epochs - scanned >= rescan) {
                scan(pid);
                scanned = epochs;
            }
            nc = candidates(r, nr, va, cap);
        }
        size_t moved = 0, failed = 0;
        uint64_t epoch_digest = 0xcbf29ce484222325ULL;
        /* only pages not on the target node yet (a cached frame may name a page
           moved before) */
        if (nc && syscall(SYS_move_pages, pid, nc, va, NULL, status, 0) == 0) {
            size_t keep = 0;
            for (size_t j = 0; j < nc; j++)
                if (status[j] >= 0 && status[j] != (int)node)
                    va[keep++] = va[j];
            nc = keep;
        }
        if (nc && !dry) {
            for (size_t j = 0; j < nc; j++)
                nodes[j] = (int)node;
            if (syscall(SYS_move_pages, pid, nc, va, nodes, status, MPOL_MF_MOVE) < 0)
                failed = nc;
            else
                for (size_t j = 0; j < nc; j++) {
                    if (status[j] == (int)node) {
                        moved++;
                        uint64_t a = (uint64_t)(uintptr_t)va[j];
                        for (int b = 0; b < 8; b++) {
                            epoch_digest = (epoch_digest ^ (a >> (8 * b) & 0xff)) * 0x100000001b3ULL;
                            digest = (digest ^ (a >> (8 * b) & 0xff)) * 0x100000001b3ULL;
                        }
                    } else
                        failed++;
                }
        }
        moved_total += moved;
        printf("PROMOTE epoch=%llu hot=%zu ripe=%zu candidates=%zu moved=%zu failed=%zu "
               "bytes=%llu digest=0x%016llx\n", (unsigned long long)now, named, nr, nc, moved, failed,
               (unsigned long long)(moved * PAGE), (unsigned long long)epoch_digest);
    }
    printf("PROMOTE done epochs=%llu moved=%llu bytes=%llu digest=0x%016llx\n",
           (unsigned long long)epochs, (unsigned long long)moved_total,
           (unsigned long long)(moved_total * PAGE), (unsigned long long)digest);
    /* the same as a workload's result line, for hosts that read those (cosim tiering) */
    printf("RESULT chmu promote_epochs=%llu moved=%llu bytes=%llu digest=0x%016llx\n",
           (unsigned long long)epochs, (unsigned long long)moved_total,
           (unsigned long long)(moved_total * PAGE), (unsigned long long)digest);
    if (WIFEXITED(wstatus))
        return WEXITSTATUS(wstatus);
    return 128 + (WIFSIGNALED(wstatus) ? WTERMSIG(wstatus) : 0);
}

int main(int argc, char **argv)
{
    line_buffered("chmu");
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        usage();
        return argc < 2 ? 2 : 0;
    }
    const char *what = argv[1];
    if (strcmp(what, "info") && strcmp(what, "config") && strcmp(what, "dump")
        && strcmp(what, "promote"))
        bad_arg("unknown command %s: want info, config, dump or promote", what);
    map_devices();
    if (!strcmp(what, "info"))
        return info();
    if (!strcmp(what, "config"))
        return config(argc - 2, argv + 2);
    if (!strcmp(what, "dump"))
        return dump();
    return promote(argc - 2, argv + 2);
}
