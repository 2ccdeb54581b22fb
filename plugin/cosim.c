/*
 * cosim TCG plugin: exact per-vCPU instruction counts and per-turn traces,
 * handed to the cosim bridge at the end of quantum turns.
 *
 * Needs the patched QEMU of qemu_patches/ (plugin API 5): it runs under
 * -accel tcg,thread=single,quantum=Q and uses the vCPU turn events, the
 * per-turn budget and the end-of-round pause request.
 *
 * Arguments: socket=PATH (the bridge listens there), mode=fast|trace,
 * shm=PATH and shm_records=N (trace mode: a file of 2 * N records the
 * bridge created and maps too; records of a turn are written there, not
 * sent on the socket; the two halves of N alternate by report, so the
 * bridge can still read one report's records while QEMU writes the next),
 * clock=model (the bridge's timing model sets the guest's virtual clock,
 * plugin API 6: the guest lives in simulated time).
 *
 * Wire format on the socket: frames of a 4-byte little-endian length and a
 * msgpack map. The plugin sends "hello" at load, "ready" when it needs a
 * command (first turn, after a pause), "report" after the turns a command
 * asked for, "chunk" when the trace buffer fills mid-turn, "exit" when QEMU
 * exits. The bridge answers "ready"/"report" with a command:
 *   {"c": "rr", "turns": K}     K turns round-robin with the quantum budget
 *   {"c": "step", "vcpu": v, "n": n}  skip to vCPU v, run it for n insns
 *       optional: "turns": K   turns of v in a row (others skipped) until
 *                              v has run K * n instructions (a turn that
 *                              ends early at a spin-wait hint does not
 *                              use up a turn's worth; with K > 1, PAUSE
 *                              does not end turns); the report comes
 *                              early when v halts or a vCPU in "parked"
 *                              is no longer idle
 *                 "parked": M  bit mask of vCPUs the bridge keeps asleep
 *                 "clock": ns, "rate": r, "cap": ns (clock=model only)
 *                              set the virtual clock as v's first turn
 *                              starts (qemu_plugin_set_virtual_clock)
 *   {"c": "round", "n": [n per vCPU], "turns": [K per vCPU]}
 *                              several vCPUs in one command: vCPU v runs
 *                              K[v] turns of n[v] instructions (K = 0:
 *                              it skips), interleaved in QEMU's vCPU
 *                              order from vCPU 0 on (the rest of a
 *                              round already begun is skipped); a vCPU's turns stop early when it
 *                              halts or ends a turn at a spin-wait hint;
 *                              the report comes when no vCPU has turns
 *                              left, or early when a vCPU in "parked" has
 *                              work again
 *                 optional: "parked": M as for step; "clock", "rate",
 *                              "cap": arrays per vCPU (clock=model): as
 *                              each of v's turns starts, the clock is set
 *                              to clock[v] plus rate[v] times what v ran
 *                              so far in the round (never back)
 *   {"c": "pause"}              skip the rest of the round; VM stops; the
 *                               plugin answers "paused" with its state
 *   {"c": "load", "dep": [[v0..v3] per vCPU], "head": [h per vCPU]}
 *                               adopt the state a "paused" carried (a
 *                               restored snapshot), then wait for the next
 *                               command
 *   {"c": "detach"}             stop reporting; the bridge is shutting down
 * and "chunk" with {"c": "ack"}. In trace mode "report" and "chunk" also
 * carry "ends": one [vcpu, budget, executed, halted, counted, icount,
 * rec_end] per turn completed since the previous message, where rec_end is
 * the end of that turn's records in the buffer; records after the last
 * rec_end belong to the turn still running. So many turns travel in one
 * round trip and each turn's records stay separable. With clock=model,
 * "ready", "report" and "exit" carry "vclock" (the virtual clock, ns) and
 * a report's last turn also "deadline" (next virtual timer, absolute ns,
 * -1 none), "idle" and "sidle" (masks of vCPUs halted with nothing to do
 * at the end, and at the start once due timers fired).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <errno.h>
#include <inttypes.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <glib.h>
#include <msgpack.h>
#include <qemu-plugin.h>

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

#define LINE_BYTES 64
#define MAX_FRAME (1u << 20)

/* One trace record; layout mirrored by cosim/trace.py (RECORD_DTYPE). */
typedef struct {
    uint64_t addr;      /* guest physical (virtual only with REC_VIRT) */
    uint32_t idx;       /* instruction index within the turn */
    uint8_t kind;       /* REC_IFETCH, REC_LOAD, REC_STORE */
    uint8_t size;       /* bytes; LINE_BYTES for instruction fetch */
    uint8_t flags;      /* REC_IO, REC_VIRT, dependence distance << REC_DEP_SHIFT */
    uint8_t pad;
} TraceRec;
_Static_assert(sizeof(TraceRec) == 16, "trace record is 16 bytes");

enum { REC_IFETCH = 0, REC_LOAD = 1, REC_STORE = 2 };
enum { REC_IO = 1, REC_VIRT = 2 };
/* in an instruction callback's line (low bits are free): the line is virtual */
#define FETCH_VIRT 1u

/*
 * Load-to-load address dependence (pointer chasing). A load whose virtual
 * address lies within DEP_WINDOW bytes above the value returned by one of
 * the vCPU's last DEP_LOADS 8-byte loads is marked with that load's
 * distance (1 = the previous load) in flags bits 2-4. The timing model
 * makes such a load wait for its producer; without values it could not
 * tell a pointer chase (serial) from random independent loads (GUPS).
 */
#define REC_DEP_SHIFT 2
#define DEP_LOADS 4
#define DEP_WINDOW 256

typedef enum { MODE_FAST, MODE_TRACE } Mode;

/* A completed turn in trace mode, reported in "ends". */
typedef struct {
    unsigned int vcpu;
    qemu_plugin_turn_info info;
    uint64_t counted;
    uint64_t rec_end;
} TurnEnd;
typedef enum {
    CMD_NONE,       /* need a command before the next turn */
    CMD_RR,
    CMD_STEP,
    CMD_ROUND,
    CMD_PAUSE,
    CMD_DETACHED,
} Cmd;

static struct {
    int fd;
    Mode mode;
    unsigned int nvcpus;
    uint64_t quantum;

    TraceRec *buf;              /* two halves of rec_cap records */
    TraceRec *recs;             /* the half this report's records go to */
    size_t rec_cap;
    size_t nrec;
    GArray *ends;               /* TurnEnd, trace mode */

    struct qemu_plugin_scoreboard *sb;
    qemu_plugin_u64 count;      /* instructions per vCPU (inline add) */
    uint64_t *turn_base;        /* count at the start of the vCPU's turn */
    uint64_t (*dep_vals)[DEP_LOADS]; /* per vCPU: last 8-byte load values */
    unsigned int *dep_head;     /* per vCPU: slot of the newest value */
    int cur_vcpu;               /* vCPU in a turn, -1 between turns */

    /* deltas since the last report */
    uint64_t *d_insns, *d_turns, *d_halted, *d_yielded;
    uint64_t d_short, d_mismatch, d_restarted, d_nturns;

    Cmd cmd;
    uint64_t rr_left;
    unsigned int step_vcpu;
    uint64_t step_n;
    uint64_t step_left;         /* instructions of step_vcpu left in the command */
    uint64_t parked;            /* vCPUs the bridge keeps asleep */

    /* CMD_ROUND, per vCPU (see read_round) */
    uint64_t *round_n;          /* budget of each of its turns */
    uint64_t *round_turns;      /* its turns left in the round */
    uint64_t *round_done;       /* instructions it ran in the round */
    int64_t *round_clock, *round_cap;
    uint32_t *round_rate;
    unsigned int round_members; /* vCPUs with turns left */
    bool round_wait;            /* the round starts at vCPU 0's next turn */

    bool model_clock;           /* clock=model */
    bool clock_pending;         /* set the clock as step_vcpu's turn starts */
    int64_t clock_ns, clock_cap;
    uint32_t clock_rate;
} S = { .fd = -1, .cur_vcpu = -1 };

static void die(const char *fmt, ...) G_GNUC_PRINTF(1, 2);

/* Fatal protocol or I/O errors: the bridge is gone or confused. */
static void die(const char *fmt, ...)
{
    va_list ap;

    fputs("cosim plugin: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    S.cmd = CMD_DETACHED;
    _exit(3);
}

static void write_all(const void *buf, size_t len)
{
    const char *p = buf;

    while (len) {
        ssize_t n = send(S.fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            die("lost the bridge while sending (%s)", strerror(errno));
        }
        p += n;
        len -= n;
    }
}

/*
 * Spin this long for the bridge's answer before blocking: it usually comes
 * within tens of microseconds, and waking a blocked thread costs about as
 * much again on a virtual machine (measured: ~90 us per round trip).
 */
#define SPIN_NS 200000

static int64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void read_all(void *buf, size_t len)
{
    char *p = buf;
    int64_t spin_until = now_ns() + SPIN_NS;

    while (len) {
        bool spin = now_ns() < spin_until;
        ssize_t n = recv(S.fd, p, len, spin ? MSG_DONTWAIT : 0);
        if (n < 0 && (errno == EINTR || (spin && (errno == EAGAIN ||
                                                  errno == EWOULDBLOCK)))) {
            continue;
        }
        if (n <= 0) {
            die("lost the bridge while waiting for a command (%s)",
                n == 0 ? "connection closed" : strerror(errno));
        }
        p += n;
        len -= n;
    }
}

static void send_frame(msgpack_sbuffer *sb)
{
    uint32_t len = GUINT32_TO_LE((uint32_t)sb->size);

    write_all(&len, sizeof(len));
    write_all(sb->data, sb->size);
}

static void pack_str(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);

    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

/* "ends" of the turns completed since the last message, then forget them. */
static void pack_ends(msgpack_packer *pk)
{
    pack_str(pk, "ends");
    msgpack_pack_array(pk, S.ends->len);
    for (guint i = 0; i < S.ends->len; i++) {
        const TurnEnd *e = &g_array_index(S.ends, TurnEnd, i);
        msgpack_pack_array(pk, 7);
        msgpack_pack_uint32(pk, e->vcpu);
        msgpack_pack_uint64(pk, e->info.budget);
        msgpack_pack_uint64(pk, e->info.executed);
        if (e->info.halted) {
            msgpack_pack_true(pk);
        } else {
            msgpack_pack_false(pk);
        }
        msgpack_pack_uint64(pk, e->counted);
        msgpack_pack_uint64(pk, e->info.icount);
        msgpack_pack_uint64(pk, e->rec_end);
    }
    g_array_set_size(S.ends, 0);
}

static void pack_kv_u64(msgpack_packer *pk, const char *key, uint64_t v)
{
    pack_str(pk, key);
    msgpack_pack_uint64(pk, v);
}

static void pack_u64_array(msgpack_packer *pk, const uint64_t *v)
{
    msgpack_pack_array(pk, S.nvcpus);
    for (unsigned int i = 0; i < S.nvcpus; i++) {
        msgpack_pack_uint64(pk, v[i]);
    }
}

/*
 * A report carries the deltas since the previous one and the last turn.
 * @type: "report" or "exit"; @vcpu < 0 when there is no last turn.
 */
static void send_report(const char *type, int vcpu,
                        const qemu_plugin_turn_info *info, uint64_t counted)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;

    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, (info ? 16 : 12) + (S.ends ? 1 : 0) +
                     (S.model_clock ? 1 + (info ? 3 : 0) : 0));
    pack_str(&pk, "t");
    pack_str(&pk, type);
    pack_str(&pk, "vcpu");
    msgpack_pack_int(&pk, vcpu);
    pack_kv_u64(&pk, "counted", counted);
    pack_kv_u64(&pk, "nrec", S.nrec);
    pack_kv_u64(&pk, "turns", S.d_nturns);
    pack_str(&pk, "d_insns");
    pack_u64_array(&pk, S.d_insns);
    pack_str(&pk, "d_turns");
    pack_u64_array(&pk, S.d_turns);
    pack_str(&pk, "d_halted");
    pack_u64_array(&pk, S.d_halted);
    pack_str(&pk, "d_yielded");
    pack_u64_array(&pk, S.d_yielded);
    pack_kv_u64(&pk, "short", S.d_short);
    pack_kv_u64(&pk, "mismatch", S.d_mismatch);
    pack_kv_u64(&pk, "restarted", S.d_restarted);
    if (info) {
        pack_kv_u64(&pk, "budget", info->budget);
        pack_kv_u64(&pk, "executed", info->executed);
        pack_str(&pk, "halted");
        if (info->halted) {
            msgpack_pack_true(&pk);
        } else {
            msgpack_pack_false(&pk);
        }
        pack_kv_u64(&pk, "icount", info->icount);
    }
    if (S.model_clock) {
        pack_str(&pk, "vclock");
        msgpack_pack_int64(&pk, info ? info->vclock : qemu_plugin_virtual_clock());
        if (info) {
            pack_str(&pk, "deadline");
            msgpack_pack_int64(&pk, info->next_deadline);
            pack_kv_u64(&pk, "idle", info->idle_mask);
            pack_kv_u64(&pk, "sidle", info->start_idle_mask);
        }
    }
    if (S.ends) {
        pack_ends(&pk);
    }
    send_frame(&sb);
    msgpack_sbuffer_destroy(&sb);

    memset(S.d_insns, 0, S.nvcpus * sizeof(uint64_t));
    memset(S.d_turns, 0, S.nvcpus * sizeof(uint64_t));
    memset(S.d_halted, 0, S.nvcpus * sizeof(uint64_t));
    memset(S.d_yielded, 0, S.nvcpus * sizeof(uint64_t));
    S.d_short = S.d_mismatch = S.d_restarted = S.d_nturns = 0;
    S.nrec = 0;
    if (S.buf) {
        /* the bridge may hold these records while the next command runs */
        S.recs = S.recs == S.buf ? S.buf + S.rec_cap : S.buf;
    }
}

static void send_simple(const char *type)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;

    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 2 + (S.ends ? 1 : 0) + (S.model_clock ? 1 : 0));
    pack_str(&pk, "t");
    pack_str(&pk, type);
    pack_str(&pk, "nrec");
    msgpack_pack_uint64(&pk, S.nrec);
    if (S.model_clock) {
        pack_str(&pk, "vclock");
        msgpack_pack_int64(&pk, qemu_plugin_virtual_clock());
    }
    if (S.ends) {
        pack_ends(&pk);
    }
    send_frame(&sb);
    msgpack_sbuffer_destroy(&sb);
}

/*
 * The plugin state a snapshot must carry: the dependence rings. The
 * instruction counters need not travel, as reports carry deltas only.
 */
static void send_paused(void)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;

    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 3);
    pack_str(&pk, "t");
    pack_str(&pk, "paused");
    pack_str(&pk, "dep");
    msgpack_pack_array(&pk, S.nvcpus);
    for (unsigned int i = 0; i < S.nvcpus; i++) {
        msgpack_pack_array(&pk, DEP_LOADS);
        for (unsigned int d = 0; d < DEP_LOADS; d++) {
            msgpack_pack_uint64(&pk, S.dep_vals[i][d]);
        }
    }
    pack_str(&pk, "head");
    msgpack_pack_array(&pk, S.nvcpus);
    for (unsigned int i = 0; i < S.nvcpus; i++) {
        msgpack_pack_uint32(&pk, S.dep_head[i]);
    }
    send_frame(&sb);
    msgpack_sbuffer_destroy(&sb);
}

static const msgpack_object *map_get(const msgpack_object *map,
                                     const char *key)
{
    size_t klen = strlen(key);

    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object_kv *kv = &map->via.map.ptr[i];
        if (kv->key.type == MSGPACK_OBJECT_STR &&
            kv->key.via.str.size == klen &&
            memcmp(kv->key.via.str.ptr, key, klen) == 0) {
            return &kv->val;
        }
    }
    return NULL;
}

static uint64_t map_u64(const msgpack_object *map, const char *key)
{
    const msgpack_object *v = map_get(map, key);

    if (!v || v->type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
        die("command lacks a non-negative integer \"%s\"", key);
    }
    return v->via.u64;
}

/* An optional non-negative integer under @key, else @dflt. */
static uint64_t map_u64_or(const msgpack_object *map, const char *key,
                           uint64_t dflt)
{
    return map_get(map, key) ? map_u64(map, key) : dflt;
}

/* An optional integer (of either sign) under @key, else @dflt. */
static int64_t map_i64_or(const msgpack_object *map, const char *key,
                          int64_t dflt)
{
    const msgpack_object *v = map_get(map, key);

    if (!v) {
        return dflt;
    }
    if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        return v->via.i64;
    }
    if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER || v->via.u64 > INT64_MAX) {
        die("command has a bad integer \"%s\"", key);
    }
    return (int64_t)v->via.u64;
}

/* An array of exactly @n non-negative integers under @key, or die. */
static const msgpack_object *map_u64_array(const msgpack_object *map,
                                           const char *key, uint32_t n)
{
    const msgpack_object *v = map_get(map, key);

    if (!v || v->type != MSGPACK_OBJECT_ARRAY || v->via.array.size != n) {
        die("command lacks an array \"%s\" of %u entries", key, n);
    }
    for (uint32_t i = 0; i < n; i++) {
        if (v->via.array.ptr[i].type != MSGPACK_OBJECT_POSITIVE_INTEGER &&
            v->via.array.ptr[i].type != MSGPACK_OBJECT_ARRAY) {
            die("\"%s\" holds a value of the wrong type", key);
        }
    }
    return v;
}

/* An array of exactly @n integers (of either sign) under @key into @out. */
static void map_i64_array(const msgpack_object *map, const char *key,
                          uint32_t n, int64_t *out)
{
    const msgpack_object *v = map_get(map, key);

    if (!v || v->type != MSGPACK_OBJECT_ARRAY || v->via.array.size != n) {
        die("command lacks an array \"%s\" of %u entries", key, n);
    }
    for (uint32_t i = 0; i < n; i++) {
        const msgpack_object *e = &v->via.array.ptr[i];
        if (e->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
            out[i] = e->via.i64;
        } else if (e->type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
                   e->via.u64 <= INT64_MAX) {
            out[i] = (int64_t)e->via.u64;
        } else {
            die("\"%s\" holds a value of the wrong type", key);
        }
    }
}

/* "round": budgets, turns and clocks of several vCPUs at once. */
static void read_round(const msgpack_object *map)
{
    g_autofree int64_t *tmp = g_new(int64_t, S.nvcpus);

    S.round_members = 0;
    map_i64_array(map, "n", S.nvcpus, tmp);
    for (unsigned int v = 0; v < S.nvcpus; v++) {
        S.round_n[v] = tmp[v] > 0 ? tmp[v] : 0;
    }
    map_i64_array(map, "turns", S.nvcpus, tmp);
    for (unsigned int v = 0; v < S.nvcpus; v++) {
        S.round_turns[v] = S.round_n[v] && tmp[v] > 0 ? tmp[v] : 0;
        S.round_done[v] = 0;
        S.round_members += S.round_turns[v] > 0;
    }
    if (S.round_members == 0) {
        die("round needs a vCPU with n > 0 and turns > 0");
    }
    S.parked = map_u64_or(map, "parked", 0);
    S.clock_pending = map_get(map, "clock") != NULL;
    if (S.clock_pending) {
        if (!S.model_clock) {
            die("round: \"clock\" needs clock=model");
        }
        map_i64_array(map, "clock", S.nvcpus, S.round_clock);
        map_i64_array(map, "cap", S.nvcpus, S.round_cap);
        map_i64_array(map, "rate", S.nvcpus, tmp);
        for (unsigned int v = 0; v < S.nvcpus; v++) {
            if (tmp[v] < 0 || tmp[v] > UINT32_MAX) {
                die("round: rate %" PRId64 " is not in 0..2^32-1", tmp[v]);
            }
            S.round_rate[v] = tmp[v];
        }
    }
    /*
     * QEMU's round-robin may be mid-round (the last command ended at some
     * vCPU's turn): the round begins at vCPU 0, so that its interleaving
     * is the same wherever the run was paused or restored.
     */
    S.round_wait = true;
    /* several vCPUs: a spinning one yields to the others */
    qemu_plugin_set_spin_yield(true);
}

/* "load": the state of a restored snapshot (see send_paused). */
static void load_state(const msgpack_object *map)
{
    const msgpack_object *dep = map_u64_array(map, "dep", S.nvcpus);
    const msgpack_object *head = map_u64_array(map, "head", S.nvcpus);

    for (unsigned int i = 0; i < S.nvcpus; i++) {
        const msgpack_object *ring = &dep->via.array.ptr[i];
        if (ring->type != MSGPACK_OBJECT_ARRAY ||
            ring->via.array.size != DEP_LOADS ||
            head->via.array.ptr[i].type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
            head->via.array.ptr[i].via.u64 >= DEP_LOADS) {
            die("load: bad state for vCPU %u", i);
        }
        for (unsigned int d = 0; d < DEP_LOADS; d++) {
            if (ring->via.array.ptr[d].type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
                die("load: bad dependence value for vCPU %u", i);
            }
            S.dep_vals[i][d] = ring->via.array.ptr[d].via.u64;
        }
        S.dep_head[i] = head->via.array.ptr[i].via.u64;
    }
}

static bool read_command(void);

/* Block until the bridge sends a command, and adopt it. */
static void wait_command(void)
{
    bool again;

    do {
        again = read_command();
    } while (again);
}

/* Read one command; true when another must follow (after "load"). */
static bool read_command(void)
{
    bool again = false;
    uint32_t len;
    char *buf;
    msgpack_unpacked msg;
    const msgpack_object *c;
    char name[16];

    read_all(&len, sizeof(len));
    len = GUINT32_FROM_LE(len);
    if (len == 0 || len > MAX_FRAME) {
        die("bad frame length %u", len);
    }
    buf = g_malloc(len);
    read_all(buf, len);
    msgpack_unpacked_init(&msg);
    if (msgpack_unpack_next(&msg, buf, len, NULL) != MSGPACK_UNPACK_SUCCESS ||
        msg.data.type != MSGPACK_OBJECT_MAP) {
        die("command is not a msgpack map");
    }
    c = map_get(&msg.data, "c");
    if (!c || c->type != MSGPACK_OBJECT_STR || c->via.str.size >= sizeof(name)) {
        die("command lacks \"c\"");
    }
    memcpy(name, c->via.str.ptr, c->via.str.size);
    name[c->via.str.size] = '\0';

    if (strcmp(name, "rr") == 0) {
        S.cmd = CMD_RR;
        S.rr_left = map_u64(&msg.data, "turns");
        if (S.rr_left == 0) {
            die("rr needs turns > 0");
        }
        qemu_plugin_set_spin_yield(true);
    } else if (strcmp(name, "step") == 0) {
        S.cmd = CMD_STEP;
        S.step_vcpu = map_u64(&msg.data, "vcpu");
        S.step_n = map_u64(&msg.data, "n");
        S.step_left = map_u64_or(&msg.data, "turns", 1);
        S.parked = map_u64_or(&msg.data, "parked", 0);
        if (S.step_vcpu >= S.nvcpus || S.step_n == 0 || S.step_left == 0 ||
            S.step_left > UINT64_MAX / S.step_n) {
            die("step needs vcpu < %u, n > 0 and turns > 0", S.nvcpus);
        }
        /* a batch of one vCPU's turns has nobody to yield to */
        qemu_plugin_set_spin_yield(S.step_left == 1);
        S.step_left *= S.step_n;
        S.clock_pending = map_get(&msg.data, "clock") != NULL;
        if (S.clock_pending) {
            uint64_t rate = map_u64_or(&msg.data, "rate", 0);
            if (!S.model_clock || rate > UINT32_MAX) {
                die("step: \"clock\" needs clock=model and a rate < 2^32");
            }
            S.clock_ns = map_i64_or(&msg.data, "clock", 0);
            S.clock_rate = rate;
            S.clock_cap = map_i64_or(&msg.data, "cap", -1);
        }
    } else if (strcmp(name, "round") == 0) {
        S.cmd = CMD_ROUND;
        read_round(&msg.data);
    } else if (strcmp(name, "pause") == 0) {
        S.cmd = CMD_PAUSE;
        qemu_plugin_request_pause();
        send_paused();
    } else if (strcmp(name, "load") == 0) {
        load_state(&msg.data);
        again = true;
    } else if (strcmp(name, "detach") == 0) {
        S.cmd = CMD_DETACHED;
    } else if (strcmp(name, "ack") != 0) {
        die("unknown command \"%s\"", name);
    }
    msgpack_unpacked_destroy(&msg);
    g_free(buf);
    return again;
}

static void vcpu_turn_start(qemu_plugin_id_t id, unsigned int vcpu)
{
    if (S.cmd == CMD_PAUSE && vcpu == 0) {
        /* the round gate has paused and resumed the VM */
        S.cmd = CMD_NONE;
    }
    if (S.cmd == CMD_NONE) {
        send_simple("ready");
        wait_command();
    }
    switch (S.cmd) {
    case CMD_STEP:
        qemu_plugin_set_vcpu_budget(vcpu, vcpu == S.step_vcpu ? S.step_n : 0);
        if (vcpu == S.step_vcpu && S.clock_pending) {
            qemu_plugin_set_virtual_clock(S.clock_ns, S.clock_rate, S.clock_cap);
            S.clock_pending = false;
        }
        break;
    case CMD_ROUND:
        S.round_wait = S.round_wait && vcpu != 0;
        qemu_plugin_set_vcpu_budget(vcpu, S.round_turns[vcpu] && !S.round_wait ?
                                    S.round_n[vcpu] : 0);
        if (S.round_turns[vcpu] && !S.round_wait && S.clock_pending) {
            int64_t ns = S.round_clock[vcpu] +
                (int64_t)((S.round_done[vcpu] * S.round_rate[vcpu]) >> 16);
            qemu_plugin_set_virtual_clock(ns, S.round_rate[vcpu], S.round_cap[vcpu]);
        }
        break;
    case CMD_PAUSE:
        qemu_plugin_set_vcpu_budget(vcpu, 0);
        break;
    default:
        break;
    }
    S.turn_base[vcpu] = qemu_plugin_u64_get(S.count, vcpu);
    S.cur_vcpu = vcpu;
}

static void vcpu_turn_end(qemu_plugin_id_t id, unsigned int vcpu,
                          const qemu_plugin_turn_info *info)
{
    uint64_t counted = qemu_plugin_u64_get(S.count, vcpu) - S.turn_base[vcpu];
    bool report;

    S.cur_vcpu = -1;
    if (S.cmd == CMD_DETACHED) {
        return;
    }
    S.d_insns[vcpu] += info->executed;
    S.d_turns[vcpu]++;
    S.d_halted[vcpu] += info->halted;
    S.d_yielded[vcpu] += info->yielded;
    /* a turn may end early only by halting or at a spin-wait hint */
    S.d_short += !info->halted && !info->yielded && info->executed != info->budget;
    /*
     * A halting instruction (riscv wfi) leaves its TB without restoring
     * icount, so QEMU charges the rest of that TB too; the cross-check
     * only holds for turns that did not halt. The inline count runs
     * before its instruction, so an instruction that raises an exception
     * (a page fault) or is restarted (x86 port I/O under icount) is
     * counted again when it reruns: counted > executed is expected there
     * and reported as restarted; counting fewer would be a lost instruction.
     */
    if (!info->halted) {
        S.d_mismatch += counted < info->executed;
        S.d_restarted += counted > info->executed ? counted - info->executed : 0;
    }
    S.d_nturns++;
    if (S.ends) {
        TurnEnd e = { .vcpu = vcpu, .info = *info, .counted = counted,
                      .rec_end = S.nrec };
        g_array_append_val(S.ends, e);
    }

    switch (S.cmd) {
    case CMD_RR:
        report = --S.rr_left == 0;
        break;
    case CMD_STEP:
        /*
         * A parked vCPU that has work again (an interrupt from this turn,
         * or from a timer the clock made due) ends the command: the
         * bridge must schedule it.
         */
        S.step_left -= MIN(S.step_left, info->executed);
        report = S.step_left == 0 || info->halted ||
                 (S.parked & ~info->idle_mask) != 0 ||
                 (S.model_clock && (S.parked & ~info->start_idle_mask) != 0);
        break;
    case CMD_ROUND:
        S.round_done[vcpu] += info->executed;
        if (S.round_turns[vcpu] &&
            (--S.round_turns[vcpu] == 0 || info->halted || info->yielded)) {
            S.round_turns[vcpu] = 0;
            S.round_members--;
        }
        report = S.round_members == 0 ||
                 (S.parked & ~info->idle_mask) != 0 ||
                 (S.model_clock && (S.parked & ~info->start_idle_mask) != 0);
        break;
    default:
        report = false;
        break;
    }
    if (report) {
        send_report("report", vcpu, info, counted);
        wait_command();
    }
}

static inline TraceRec *next_rec(void)
{
    if (S.nrec == S.rec_cap) {
        send_simple("chunk");
        wait_command();
        S.nrec = 0;
    }
    return &S.recs[S.nrec++];
}

static inline uint32_t turn_index(unsigned int vcpu)
{
    /* the inline add of the current instruction has already run */
    return qemu_plugin_u64_get(S.count, vcpu) - S.turn_base[vcpu] - 1;
}

static void vcpu_ifetch(unsigned int vcpu, void *udata)
{
    TraceRec *r;

    if (S.cur_vcpu < 0) {
        return;
    }
    r = next_rec();
    r->addr = (uintptr_t)udata & ~(uint64_t)(LINE_BYTES - 1);
    r->idx = turn_index(vcpu);
    r->kind = REC_IFETCH;
    r->size = LINE_BYTES;
    r->flags = ((uintptr_t)udata & FETCH_VIRT) ? REC_VIRT : 0;
    r->pad = 0;
}

/* Distance (1..DEP_LOADS) of the load that produced this load's address, or 0. */
static unsigned int load_dependence(unsigned int vcpu, qemu_plugin_meminfo_t info,
                                    uint64_t vaddr)
{
    uint64_t *vals = S.dep_vals[vcpu];
    unsigned int head = S.dep_head[vcpu], dist = 0;
    qemu_plugin_mem_value v;

    for (unsigned int d = 0; d < DEP_LOADS; d++) {
        if (vaddr - vals[(head - d) % DEP_LOADS] < DEP_WINDOW) {
            dist = d + 1;
            break;
        }
    }
    v = qemu_plugin_mem_get_value(info);
    if (v.type == QEMU_PLUGIN_MEM_VALUE_U64) {
        head = (head + 1) % DEP_LOADS;
        vals[head] = v.data.u64;
        S.dep_head[vcpu] = head;
    }
    return dist;
}

static void vcpu_mem(unsigned int vcpu, qemu_plugin_meminfo_t info,
                     uint64_t vaddr, void *udata)
{
    struct qemu_plugin_hwaddr *hw;
    TraceRec *r;

    if (S.cur_vcpu < 0) {
        return;
    }
    hw = qemu_plugin_get_hwaddr(info, vaddr);
    r = next_rec();
    r->idx = turn_index(vcpu);
    r->kind = qemu_plugin_mem_is_store(info) ? REC_STORE : REC_LOAD;
    r->size = 1u << qemu_plugin_mem_size_shift(info);
    r->pad = 0;
    if (hw) {
        r->addr = qemu_plugin_hwaddr_phys_addr(hw);
        r->flags = qemu_plugin_hwaddr_is_io(hw) ? REC_IO : 0;
    } else {
        r->addr = vaddr;
        r->flags = REC_VIRT;
    }
    if (r->kind == REC_LOAD) {
        r->flags |= load_dependence(vcpu, info, vaddr) << REC_DEP_SHIFT;
    }
}

/*
 * The fetch record's line: guest-physical, as data addresses are, so that
 * text shared by processes is one line and a fetch reaches the memory tier
 * its page lives in. The page walk runs once per translation, not per
 * execution (a TB is only reused for the same physical pages). An unmapped
 * page (cannot happen for code that was just translated, but the walker may
 * say so) falls back to the virtual line, marked with FETCH_VIRT.
 */
static uint64_t fetch_line(struct qemu_plugin_insn *insn)
{
    uint64_t pa = qemu_plugin_insn_phys_addr(insn);

    if (pa == UINT64_MAX) {
        return (qemu_plugin_insn_vaddr(insn) & ~(uint64_t)(LINE_BYTES - 1)) | FETCH_VIRT;
    }
    return pa & ~(uint64_t)(LINE_BYTES - 1);
}

static void vcpu_tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    size_t n = qemu_plugin_tb_n_insns(tb);
    uint64_t prev_vline = UINT64_MAX;

    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        uint64_t vline;

        qemu_plugin_register_vcpu_insn_exec_inline_per_vcpu(
            insn, QEMU_PLUGIN_INLINE_ADD_U64, S.count, 1);
        if (S.mode != MODE_TRACE) {
            continue;
        }
        vline = qemu_plugin_insn_vaddr(insn) & ~(uint64_t)(LINE_BYTES - 1);
        if (vline != prev_vline) {
            qemu_plugin_register_vcpu_insn_exec_cb(
                insn, vcpu_ifetch, QEMU_PLUGIN_CB_NO_REGS,
                (void *)(uintptr_t)fetch_line(insn));
            prev_vline = vline;
        }
        qemu_plugin_register_vcpu_mem_cb(insn, vcpu_mem, QEMU_PLUGIN_CB_NO_REGS,
                                         QEMU_PLUGIN_MEM_RW, NULL);
    }
}

/* QEMU is exiting (the guest wrote the test device, or a fatal error). */
static void plugin_exit(qemu_plugin_id_t id, void *udata)
{
    int v = S.cur_vcpu;
    uint64_t counted = 0;

    if (S.cmd == CMD_DETACHED || S.fd < 0) {
        return;
    }
    if (v >= 0) {
        counted = qemu_plugin_u64_get(S.count, v) - S.turn_base[v];
    }
    send_report("exit", v, NULL, counted);
    S.cmd = CMD_DETACHED;
}

static int connect_bridge(const char *path)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    int fd;

    if (strlen(path) >= sizeof(sa.sun_path)) {
        fprintf(stderr, "cosim plugin: socket path too long: %s\n", path);
        return -1;
    }
    strcpy(sa.sun_path, path);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        fprintf(stderr, "cosim plugin: cannot connect to %s: %s\n", path,
                strerror(errno));
        if (fd >= 0) {
            close(fd);
        }
        return -1;
    }
    return fd;
}

static int map_trace_buffer(const char *path, size_t records)
{
    size_t bytes = 2 * records * sizeof(TraceRec);
    int fd = open(path, O_RDWR | O_CLOEXEC);
    void *p;

    if (fd < 0) {
        fprintf(stderr, "cosim plugin: cannot open %s: %s\n", path,
                strerror(errno));
        return -1;
    }
    p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED) {
        fprintf(stderr, "cosim plugin: cannot map %s: %s\n", path,
                strerror(errno));
        return -1;
    }
    S.buf = S.recs = p;
    S.rec_cap = records;
    return 0;
}

static void send_hello(void)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;

    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 5);
    pack_str(&pk, "t");
    pack_str(&pk, "hello");
    pack_str(&pk, "vcpus");
    msgpack_pack_uint32(&pk, S.nvcpus);
    pack_str(&pk, "quantum");
    msgpack_pack_uint64(&pk, S.quantum);
    pack_str(&pk, "mode");
    pack_str(&pk, S.mode == MODE_TRACE ? "trace" : "fast");
    pack_str(&pk, "api");
    msgpack_pack_int(&pk, QEMU_PLUGIN_VERSION);
    send_frame(&sb);
    msgpack_sbuffer_destroy(&sb);
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id,
                                           const qemu_info_t *info,
                                           int argc, char **argv)
{
    const char *sock = NULL, *shm = NULL;
    size_t shm_records = 0;

    S.mode = MODE_FAST;
    for (int i = 0; i < argc; i++) {
        g_auto(GStrv) kv = g_strsplit(argv[i], "=", 2);
        if (!kv[1]) {
            fprintf(stderr, "cosim plugin: argument %s is not key=value\n",
                    argv[i]);
            return -1;
        }
        if (g_strcmp0(kv[0], "socket") == 0) {
            sock = argv[i] + strlen("socket=");
        } else if (g_strcmp0(kv[0], "shm") == 0) {
            shm = argv[i] + strlen("shm=");
        } else if (g_strcmp0(kv[0], "shm_records") == 0) {
            shm_records = g_ascii_strtoull(kv[1], NULL, 10);
        } else if (g_strcmp0(kv[0], "clock") == 0 &&
                   g_strcmp0(kv[1], "model") == 0) {
            S.model_clock = true;
        } else if (g_strcmp0(kv[0], "mode") == 0 &&
                   (g_strcmp0(kv[1], "fast") == 0 ||
                    g_strcmp0(kv[1], "trace") == 0)) {
            S.mode = g_strcmp0(kv[1], "trace") == 0 ? MODE_TRACE : MODE_FAST;
        } else {
            fprintf(stderr, "cosim plugin: unknown argument %s (accepted: "
                    "socket=PATH, mode=fast|trace, shm=PATH, "
                    "shm_records=N, clock=model)\n", argv[i]);
            return -1;
        }
    }
    if (!info->system_emulation) {
        fprintf(stderr, "cosim plugin: needs system emulation\n");
        return -1;
    }
    S.quantum = qemu_plugin_quantum();
    if (!S.quantum) {
        fprintf(stderr, "cosim plugin: needs -accel tcg,quantum=Q\n");
        return -1;
    }
    if (!sock) {
        fprintf(stderr, "cosim plugin: needs socket=PATH\n");
        return -1;
    }
    if (S.model_clock && !qemu_plugin_own_virtual_clock()) {
        fprintf(stderr, "cosim plugin: clock=model needs -accel tcg,quantum=Q\n");
        return -1;
    }
    if (S.mode == MODE_TRACE &&
        (!shm || shm_records == 0 || map_trace_buffer(shm, shm_records))) {
        fprintf(stderr, "cosim plugin: trace mode needs shm=PATH and "
                "shm_records=N > 0\n");
        return -1;
    }
    S.nvcpus = info->system.max_vcpus;
    S.turn_base = g_new0(uint64_t, S.nvcpus);
    S.dep_vals = g_malloc0(sizeof(*S.dep_vals) * S.nvcpus);
    S.dep_head = g_new0(unsigned int, S.nvcpus);
    S.d_insns = g_new0(uint64_t, S.nvcpus);
    S.d_turns = g_new0(uint64_t, S.nvcpus);
    S.d_halted = g_new0(uint64_t, S.nvcpus);
    S.d_yielded = g_new0(uint64_t, S.nvcpus);
    S.round_n = g_new0(uint64_t, S.nvcpus);
    S.round_turns = g_new0(uint64_t, S.nvcpus);
    S.round_done = g_new0(uint64_t, S.nvcpus);
    S.round_clock = g_new0(int64_t, S.nvcpus);
    S.round_cap = g_new0(int64_t, S.nvcpus);
    S.round_rate = g_new0(uint32_t, S.nvcpus);
    if (S.mode == MODE_TRACE) {
        S.ends = g_array_new(false, false, sizeof(TurnEnd));
    }
    S.sb = qemu_plugin_scoreboard_new(sizeof(uint64_t));
    S.count = qemu_plugin_scoreboard_u64(S.sb);
    S.fd = connect_bridge(sock);
    if (S.fd < 0) {
        return -1;
    }
    S.cmd = CMD_NONE;
    send_hello();

    qemu_plugin_register_vcpu_tb_trans_cb(id, vcpu_tb_trans);
    qemu_plugin_register_vcpu_turn_start_cb(id, vcpu_turn_start);
    qemu_plugin_register_vcpu_turn_end_cb(id, vcpu_turn_end);
    qemu_plugin_register_atexit_cb(id, plugin_exit, NULL);
    return 0;
}
