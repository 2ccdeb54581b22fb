/*
 * cosim-cmd: wait for the host's command on the fw_cfg file opt/cosim/cmd.
 *
 * The host passes  -fw_cfg name=opt/cosim/cmd,file=PATH  with PATH exactly
 * 4096 bytes: text padded with NUL bytes.  The text's first line is the
 * launch's nonce (16 hex digits, derived by the host from the launch), which /init
 * puts in its COSIM-READY and COSIM-EXIT lines so that the host can tell
 * them from workload output; the rest (up to the first NUL, whitespace-
 * stripped) is the command.  While the command is "idle", we sleep and read
 * it again; anything else is printed to stdout as NONCE:COMMAND (no
 * newline) for /init to split and run.  A text without a newline is all
 * command (an empty nonce).
 *
 * Why a C helper rather than `cat` in a shell loop: a poll costs a few
 * thousand guest instructions instead of two fork+execs, and the loop below
 * can insist on two identical reads.  That matters for snapshots: a machine
 * saved while we poll is restored with *different* file content, and if the
 * save fell in the middle of a read, QEMU's restored fw_cfg read offset
 * continues in the new content, so that one read mixes old and new bytes.
 * Two consecutive identical reads cannot both be torn by one restore.
 *
 * Every read goes to the device (the sysfs "raw" file re-selects the fw_cfg
 * entry and reads the data port on each read(); nothing is cached), so new
 * content is seen on the next poll.  Reads go through
 *   /sys/firmware/qemu_fw_cfg/by_name/opt/cosim/cmd/raw   (qemu_fw_cfg.ko)
 * and, if that is missing, through the x86 fw_cfg I/O ports 0x510/0x511.
 *
 * Deterministic: no clocks are read; the poll interval is a fixed nanosleep
 * (guest time, which is instruction-driven under -icount).
 *
 * usage: cosim-cmd [-i MS] [-1 | -n]
 *   -i MS   poll interval in milliseconds (default 10)
 *   -1      read once, print the current command (even "idle") and exit
 *   -n      read once, print the launch's nonce and exit
 * exit: 0 command printed; 3 no command channel; 2 bad arguments
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/io.h>
#include <time.h>
#include <unistd.h>

#define FILE_NAME "opt/cosim/cmd"
#define SYSFS_RAW "/sys/firmware/qemu_fw_cfg/by_name/" FILE_NAME "/raw"
#define MAX_CMD 4096
/* -n reads only this much (16 hex digits and the newline): the instructions it
 * takes must not depend on the command after it, which a restored machine's
 * launch may give differently (cycle counts of a continuation must not move) */
#define NONCE_LINE 17
#define CHUNK 256

#define FW_CFG_PORT_SEL 0x510
#define FW_CFG_PORT_DATA 0x511
#define FW_CFG_SIGNATURE 0x0000
#define FW_CFG_FILE_DIR 0x0019

static int sysfs_fd = -1;
static unsigned port_select;  /* fw_cfg key of our file when using ports */
static unsigned port_size;

/* Read the file's text up to the first NUL, at most limit bytes, into buf (NUL-terminated). */
static int read_sysfs(char *buf, size_t limit)
{
    size_t len = 0;
    while (len < limit) {
        size_t want = limit - len < CHUNK ? limit - len : CHUNK;
        ssize_t n = pread(sysfs_fd, buf + len, want, (off_t)len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (n == 0)
            break;
        void *nul = memchr(buf + len, 0, (size_t)n);
        if (nul) {
            len = (size_t)((char *)nul - buf);
            buf[len] = 0;
            return 0;
        }
        len += (size_t)n;
    }
    buf[len < limit ? len : limit] = 0;
    return 0;
}

static void port_select_key(unsigned key) { outw((unsigned short)key, FW_CFG_PORT_SEL); }
static unsigned char port_byte(void) { return inb(FW_CFG_PORT_DATA); }
static unsigned port_be(int bytes)
{
    unsigned v = 0;
    for (int i = 0; i < bytes; i++)
        v = (v << 8) | port_byte();
    return v;
}

/* Find our file in the fw_cfg directory through the I/O ports. */
static int open_ports(void)
{
    if (ioperm(FW_CFG_PORT_SEL, 2, 1) != 0)
        return -1;
    port_select_key(FW_CFG_SIGNATURE);
    char sig[4];
    for (int i = 0; i < 4; i++)
        sig[i] = (char)port_byte();
    if (memcmp(sig, "QEMU", 4) != 0)
        return -1;
    port_select_key(FW_CFG_FILE_DIR);
    unsigned count = port_be(4);
    for (unsigned i = 0; i < count; i++) {
        unsigned size = port_be(4);
        unsigned select = port_be(2);
        port_be(2); /* reserved */
        char name[57];
        for (int j = 0; j < 56; j++)
            name[j] = (char)port_byte();
        name[56] = 0;
        if (strcmp(name, FILE_NAME) == 0) {
            port_select = select;
            port_size = size < MAX_CMD ? size : MAX_CMD;
            return 0;
        }
    }
    return -1;
}

static int read_ports(char *buf, size_t limit)
{
    port_select_key(port_select);
    size_t len = 0;
    while (len < port_size && len < limit) {
        unsigned char c = port_byte();
        if (c == 0)
            break;
        buf[len++] = (char)c;
    }
    buf[len] = 0;
    return 0;
}

static int read_text(char *buf, size_t limit)
{
    return sysfs_fd >= 0 ? read_sysfs(buf, limit) : read_ports(buf, limit);
}

/* Strip leading and trailing whitespace in place; return the start. */
static char *strip(char *s)
{
    while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r')
        s++;
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\n' || s[n - 1] == '\r'))
        s[--n] = 0;
    return s;
}

/* Split the text at its first newline: the nonce (returned) and the command (*cmd). */
static char *split_nonce(char *text, char **cmd)
{
    char *nl = strchr(text, '\n');
    if (!nl) {
        *cmd = text;
        return text + strlen(text);
    }
    *nl = 0;
    *cmd = nl + 1;
    return text;
}

int main(int argc, char **argv)
{
    long interval_ms = 10;
    int once = 0, nonce_only = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-1") == 0) {
            once = 1;
        } else if (strcmp(argv[i], "-n") == 0) {
            once = nonce_only = 1;
        } else if (strcmp(argv[i], "-i") == 0 && i + 1 < argc) {
            char *end;
            interval_ms = strtol(argv[++i], &end, 10);
            if (*end || interval_ms < 1 || interval_ms > 10000) {
                fprintf(stderr, "cosim-cmd: bad -i value '%s': expected 1..10000 (ms)\n", argv[i]);
                return 2;
            }
        } else {
            fprintf(stderr, "cosim-cmd: unknown argument '%s': usage: cosim-cmd [-i MS] [-1 | -n]\n", argv[i]);
            return 2;
        }
    }

    sysfs_fd = open(SYSFS_RAW, O_RDONLY | O_CLOEXEC);
    if (sysfs_fd < 0 && open_ports() != 0) {
        fprintf(stderr, "COSIM-NOCMD no fw_cfg file " FILE_NAME " (pass -fw_cfg name=" FILE_NAME ",file=PATH)\n");
        return 3;
    }

    static char a[MAX_CMD + 1], b[MAX_CMD + 1];
    struct timespec ts = {interval_ms / 1000, (interval_ms % 1000) * 1000000L};
    for (;;) {
        size_t limit = nonce_only ? NONCE_LINE : MAX_CMD;
        if (read_text(a, limit) != 0 || read_text(b, limit) != 0) {
            fprintf(stderr, "COSIM-NOCMD reading fw_cfg file " FILE_NAME " failed: %s\n", strerror(errno));
            return 3;
        }
        if (strcmp(a, b) != 0)
            continue; /* torn by a snapshot restore: read again */
        char *cmd;
        char *nonce = split_nonce(a, &cmd);
        if (nonce_only) {
            fputs(nonce, stdout);
            return fflush(stdout) == 0 ? 0 : 1;
        }
        char *text = strip(cmd);
        if (!once && strcmp(text, "idle") == 0) {
            while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
                ;
            ts.tv_sec = interval_ms / 1000;
            ts.tv_nsec = (interval_ms % 1000) * 1000000L;
            continue;
        }
        if (!once) {
            fputs(nonce, stdout);   /* NONCE:COMMAND, for /init to split */
            fputc(':', stdout);
        }
        fputs(text, stdout);
        return fflush(stdout) == 0 ? 0 : 1;
    }
}
