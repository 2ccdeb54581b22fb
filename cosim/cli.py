"""The ``cosim`` command: run, config, regress, build, doctor.

Argument parsing is argparse; progress on a terminal is tqdm; ELF checks
use pyelftools. Every failure a user can cause ends in one line,
``cosim: error: ...``, exit status 2, and no QEMU left running.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shlex
import signal
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, Sequence

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from . import __version__, build, interrupts, paths
from . import snapshot as snap
from .errors import CosimError, Terminated
from . import linux_machine
from .libqflex_bridge import QemuConfig, printable, qemu_binary
from .boards import DEFAULT_MEMORY, DEFAULT_QUANTUM, DEFAULT_SMP, parse_size
from .limits import MAX_QUANTUM, MAX_SMP
from .progress import SweepProgress
from .session import RunSpec, Session
from . import tiering as tiering_mod
from .timing import chmu_spec
from .timing import config as timing_config
from .timing import stats as timing_stats
from .timing.config import PRESET_DOCS

if TYPE_CHECKING:
    from .linux_flow import BootRequest

DEFAULT_GUEST = "spinlock"


def positive_int(flag: str, what: str, most: int | None = None):
    """argparse type: an integer > 0 (and <= ``most``), else a one-line error naming the flag."""
    def parse(text: str) -> int:
        try:
            value = int(text.replace("_", ""), 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} {text}: not an integer; expected {what}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{flag} {text}: must be > 0 ({what})")
        if most is not None and value > most:
            raise argparse.ArgumentTypeError(f"{flag} {text}: at most {most} ({what})")
        return value
    return parse


def listen_address(text: str) -> str:
    """argparse type: HOST:PORT for --listen (IPv6 hosts in brackets), checked before the run."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535 \
            or (":" in host and not (host.startswith("[") and host.endswith("]"))):
        raise argparse.ArgumentTypeError(
            f"--listen {text}: want HOST:PORT with a port 0-65535 (0: any free one), "
            "e.g. 127.0.0.1:50051 or [::1]:50051")
    return text


def smp_count(text: str) -> int:
    value = positive_int("--smp", f"a vCPU count from 1 to {MAX_SMP}")(text)
    if value > MAX_SMP:
        raise argparse.ArgumentTypeError(f"--smp {text}: at most {MAX_SMP} vCPUs")
    return value


def builtin_guests() -> list[str]:
    return sorted(p.stem for p in paths.GUEST_DIR.glob("src/*.c"))


def resolve_kernel(arg: str) -> Path:
    """A path to a riscv64 ELF, or the name of a built-in guest."""
    path = Path(arg)
    if not path.exists() and "/" not in arg and not arg.endswith(".elf"):
        if arg in builtin_guests() or re.fullmatch(r"[a-z_]+(-[a-z]+\d+[kmg]?)+", arg):
            path = build.guest_elf(arg)
    if not path.is_file():
        raise CosimError(
            f"--kernel {arg}: no such file; give a riscv64 ELF or a built-in guest "
            f"({', '.join(builtin_guests())})"
        )
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            machine, elfclass = elf["e_machine"], elf.elfclass
    except ELFError:
        raise CosimError(f"--kernel {arg}: not an ELF file; expected a riscv64 ELF") from None
    if machine != "EM_RISCV" or elfclass != 64:
        raise CosimError(f"--kernel {arg}: ELF is {machine} {elfclass}-bit; expected riscv64 (EM_RISCV, 64-bit)")
    return path


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the usage is in --help)."""

    def error(self, message: str) -> NoReturn:
        print(f"cosim: error: {message}", file=sys.stderr)
        sys.exit(2)


def add_snapshot_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--snapshot-dir", type=Path, metavar="DIR",
                   help=f"where snapshots live (default: {snap.default_root()})")


def add_image_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--add", action="append", type=Path, default=[], metavar="PATH",
                   help="also put this static x86_64 binary or script into the guest as "
                        "/workloads/NAME (repeatable)")
    p.add_argument("--package", action="append", default=[], metavar="NAME",
                   help="also unpack this Debian package into the guest, with the packages it "
                        "depends on (apt's resolver); its programs run as --workload NAME "
                        "(repeatable)")
    p.add_argument("--pip", action="append", default=[], metavar="NAME[==VERSION]",
                   help="also put this pure-Python PyPI package (and what it needs, pip's "
                        "resolver) into the guest's python3, which comes with it; its commands "
                        "run as --workload NAME (repeatable; e.g. damo)")


def add_client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sim", metavar="ID", help="which run (id or pid; default: the only one going)")
    p.add_argument("--connect", metavar="HOST:PORT", help="a run serving TCP (cosim run --listen)")
    p.add_argument("--token-file", type=Path, metavar="FILE",
                   help="with --connect: a file (mode 0600) holding the token that run printed; "
                        "or set COSIM_TOKEN (a run of yours on this machine needs neither)")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="cosim", description="Deterministic multi-vCPU co-simulation on a patched QEMU.")
    parser.add_argument("--version", action="version", version=f"cosim {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run", help="run a guest in exact instruction quanta",
        description="Launch patched QEMU on a bare-metal riscv64 guest and step its vCPUs "
                    "round-robin in turns of exactly QUANTUM instructions. Prints a summary: "
                    "per-vCPU instruction and turn counts, the maximum instruction skew, "
                    "a digest of the run and the guest's RESULT lines.")
    run.add_argument("--kernel", default=None, metavar="ELF",
                     help="riscv64 ELF linked at 0x80000000, or a built-in guest name "
                          f"(default: {DEFAULT_GUEST}, or the snapshot's; see guests/riscv/README.md)")
    run.add_argument("--smp", type=smp_count, default=None, metavar="N",
                     help=f"number of vCPUs (harts), 1..{MAX_SMP} (default: {DEFAULT_SMP}, or the snapshot's)")
    run.add_argument("--quantum", type=positive_int("--quantum", "instructions per vCPU turn, e.g. 1000",
                                                    MAX_QUANTUM),
                     default=None, metavar="Q",
                     help=f"instructions per vCPU turn (default: {DEFAULT_QUANTUM}, or the snapshot's; a "
                          "restored run may use another)")
    run.add_argument("--max-insns", type=positive_int("--max-insns", "total instructions over all vCPUs"),
                     metavar="N", help="stop after exactly N instructions in total, counted from the "
                                       "start of this run (after a restored snapshot's); "
                                       "default: run until the guest exits")
    run.add_argument("--mode", choices=("fast", "trace"), default=None, dest="mode_given",
                     help="fast: counts only; trace: also every memory access and instruction-fetch "
                          "line, per turn, into the digest (default: fast; trace with --timing)")
    run.add_argument("--memory", default=None, metavar="SIZE",
                     help=f"guest RAM (default: {DEFAULT_MEMORY}, or the snapshot's)")
    run.add_argument("--icount-shift", type=int, default=None, choices=range(0, 11), metavar="S",
                     help="virtual ns per instruction = 2**S (default: 0, or the snapshot's)")
    run.add_argument("--json", action="store_true",
                     help="print the summary as JSON on stdout; the guest console goes to stderr")
    run.add_argument("--timing", action="store_true",
                     help="run under the timing model (trace mode; the vCPU with the smallest "
                          "simulated time runs next) and report cycles")
    run.add_argument("--preset", metavar="NAME",
                     help="timing preset: " + ", ".join(f"{k} ({v})" for k, v in PRESET_DOCS.items()))
    run.add_argument("--config", type=Path, metavar="FILE",
                     help="timing configuration (TOML; fields override the preset)")
    run.add_argument("--chmu", nargs="?", const="", default=None, metavar="SPEC",
                     help="with --timing: a CXL hotness monitoring unit per CXL memory device; "
                          "SPEC is key=value,... over the [chmu] configuration, e.g. "
                          "tracker=space-saving,counters=1024,unit=4K,epoch=1ms "
                          "(`cosim config show` lists the fields)")
    run.add_argument("--plot", type=Path, metavar="DIR",
                     help="with --timing: write PNG charts (CPI stacks, latency, page hotness)")
    run.add_argument("--console", type=Path, metavar="FILE",
                     help="write the guest console to FILE instead of the terminal")
    run.add_argument("--snapshot", metavar="NAME",
                     help="restore snapshot NAME in this fresh process and continue from it")
    run.add_argument("--save", metavar="NAME",
                     help="save snapshot NAME at the end (with --max-insns: at the first round "
                          "boundary, or under --timing turn boundary, at or after the limit)")
    run.add_argument("--force", action="store_true", help="let --save replace an existing snapshot")
    run.add_argument("--warmup", type=positive_int("--warmup", "instructions to warm the caches"),
                     default=0, metavar="N",
                     help="restoring a snapshot without timing state under --timing: run N "
                          "instructions to warm the caches first, not counted")
    run.add_argument("--order", choices=("exact", "round"), default=None,
                     help="with --timing: 'round' (default; a restored snapshot keeps the order "
                          "it was saved in) runs every vCPU due within a turn's window in one "
                          "bridge round trip, and QEMU runs the next round while the model "
                          "feeds the last (the interleaving differs from exact by at most the "
                          "window); 'exact' steps one vCPU per round trip, always the one "
                          "furthest behind in simulated time (for coherence studies at a small "
                          "quantum)")
    run.add_argument("--paused", action="store_true",
                     help="start paused; continue with `cosim resume` (or drive it with Step)")
    run.add_argument("--listen", metavar="HOST:PORT", type=listen_address,
                     help="also serve the control plane on TCP (a token is printed; clients pass it)")
    run.add_argument("--workload", metavar="NAME",
                     help="with a Linux snapshot (cosim boot): run /workloads/NAME in the guest "
                          "until it exits (gups, stream, pchase, threads, hotcold, or one added "
                          "with cosim guest build --add)")
    run.add_argument("--args", default="", metavar="'ARGS'",
                     help="arguments for --workload, one shell-quoted string")
    run.add_argument("--numa", metavar="POLICY",
                     help="with --workload: numactl policy membind=N[,M], interleave=N,M or "
                          "preferred=N (node 0: DRAM with the CPUs, 1: CXL, 2: the cxl-type3 "
                          "region if booted with --cxl)")
    add_snapshot_dir(run)

    guest = sub.add_parser("guest", help="build the Linux guest image",
                           description="The x86_64 Linux guest: a Debian kernel, a busybox "
                                       "initramfs with numactl and static workloads.")
    guest_sub = guest.add_subparsers(dest="guest_command", required=True, metavar="ACTION")
    g_build = guest_sub.add_parser("build", help="build (or reuse) the guest image")
    add_image_args(g_build)
    g_build.add_argument("--force", action="store_true", help="rebuild even if cached")

    boot = sub.add_parser(
        "boot", help="boot the Linux guest and save a snapshot at its ready marker",
        description="Build the guest image if needed, boot the q35 machine (node 0: DRAM and "
                    "the vCPUs; node 1: CPU-less CXL memory announced through HMAT) in fast "
                    "mode until the guest's init prints COSIM-READY, and save a snapshot there.")
    boot.add_argument("--save", default="boot_done", metavar="NAME",
                      help="snapshot name (default: boot_done)")
    boot.add_argument("--force", action="store_true", help="replace an existing snapshot NAME")
    boot.add_argument("--smp", type=smp_count, default=2, metavar="N", help="vCPUs, 2..8 (default 2)")
    boot.add_argument("--quantum", type=positive_int("--quantum", "instructions per vCPU turn",
                                                     MAX_QUANTUM),
                      default=DEFAULT_QUANTUM, metavar="Q",
                      help=f"instructions per vCPU turn (default {DEFAULT_QUANTUM})")
    boot.add_argument("--node-memory", default="1G", metavar="SIZE",
                      help="RAM of each of the two nodes (default 1G)")
    boot.add_argument("--cxl", nargs="?", const="256M", default=None, metavar="SIZE",
                      help="also attach a QEMU cxl-type3 device (volatile, default 256M) that the "
                           "guest's init onlines as NUMA node 2")
    add_image_args(boot)
    boot.add_argument("--timing", action="store_true",
                      help="boot under the timing model, so the snapshot has warm caches (slow)")
    boot.add_argument("--preset", metavar="NAME", help="timing preset (also sets the HMAT figures)")
    boot.add_argument("--config", type=Path, metavar="FILE",
                      help="timing configuration (TOML; also sets the HMAT figures)")
    boot.add_argument("--console", type=Path, metavar="FILE",
                      help="the boot console (default: FILE next to the snapshots, NAME.boot.log)")
    add_snapshot_dir(boot)

    tiers = sub.add_parser(
        "tiers", help="run a workload bound to each memory node and compare (the main job)",
        description="Restore the boot snapshot (booting and saving it first if it is missing), "
                    "run the workload under the timing model once per NUMA node with "
                    "numactl --membind, and print cycles, traffic and latency side by side.")
    tiers.add_argument("--snapshot", default="boot_done", metavar="NAME",
                       help="boot snapshot (default boot_done; made with cosim boot if missing)")
    tiers.add_argument("--workload", default="gups", metavar="NAME", help="default: gups")
    tiers.add_argument("--args", default="-s 32M -n 100000", metavar="'ARGS'",
                       help="workload arguments (default: '-s 32M -n 100000')")
    tiers.add_argument("--nodes", default=None, metavar="N,M",
                       help="nodes to bind to in turn (default: every node of the machine)")
    tiers.add_argument("--work-key", default="updates", metavar="KEY",
                       help="RESULT key that counts the work, for cycles per unit (default updates)")
    tiers.add_argument("--preset", metavar="NAME", help="timing preset")
    tiers.add_argument("--config", type=Path, metavar="FILE", help="timing configuration (TOML)")
    tiers.add_argument("--json", action="store_true", help="print the runs' summaries as JSON")
    add_snapshot_dir(tiers)

    tiering = sub.add_parser(
        "tiering", help="run a workload under several page-placement policies and compare",
        description="Restore the boot snapshot, fill node 0 so the workload spills to the CXL "
                    "node, and run it under each policy (none: static placement; "
                    "numa-balancing: Linux's tiering mode; damon: DAMON's migrate_hot and "
                    "migrate_cold schemes started with damo as HMSDK does; chmu: the "
                    "CHMU-driven promoter) with the timing model; print the workload's own "
                    "figure, traffic and the kernel's migration counters side by side.")
    tiering.add_argument("--snapshot", default="boot_done", metavar="NAME",
                         help="boot snapshot (default boot_done; made if missing, with "
                              f"{tiering_mod.DAMO} in the guest for the damon policy: "
                              f"cosim boot {tiering_mod.boot_options()})")
    tiering.add_argument("--workload", default="gups", metavar="NAME", help="default: gups")
    tiering.add_argument("--args", default="-s 256M -n 8M", metavar="'ARGS'",
                         help="workload arguments (default: '-s 256M -n 8M')")
    tiering.add_argument("--policies", default="none,numa-balancing,damon,chmu", metavar="P,Q",
                         help="policies to compare (default: none,numa-balancing,damon,chmu; "
                              "damon needs a snapshot whose guest has damo, see --snapshot)")
    tiering.add_argument("--pressure", default="0.9", metavar="FRACTION",
                         help="share of node 0's free memory taken before the workload starts "
                              "(default 0.9)")
    tiering.add_argument("--set", dest="knobs", action="append", default=[], metavar="KNOB=N",
                         help="a NUMA balancing knob for the numa-balancing policy (scan_delay_ms, "
                              "scan_period_min_ms, scan_period_max_ms, scan_size_mb, "
                              "hot_threshold_ms, promote_rate_limit_MBps; default: the kernel's)")
    tiering.add_argument("--damon-intervals", default="5ms,100ms,1s", metavar="S,A,U",
                         help="DAMON's sampling, aggregation and update intervals for the damon "
                              "policy (default 5ms,100ms,1s; HMSDK's ages and quotas scale "
                              "with the aggregation interval)")
    tiering.add_argument("--interval", default="5ms", metavar="TIME",
                         help="interval of the timelines: migration counters sampled in the "
                              "guest, the model's traffic per interval (default 5ms)")
    tiering.add_argument("--plot", type=Path, metavar="DIR",
                         help="write PNG charts per policy: CXL share and migrations over time, "
                              "page hotness heatmap")
    tiering.add_argument("--chmu", default=TIERING_CHMU, metavar="SPEC",
                         help=f"the CHMU for the chmu policy (default {TIERING_CHMU})")
    tiering.add_argument("--work-key", default=None, metavar="KEY",
                         help="RESULT key that counts the work (default: updates for gups, "
                              "accesses for hotcold)")
    tiering.add_argument("--preset", metavar="NAME", help="timing preset")
    tiering.add_argument("--config", type=Path, metavar="FILE", help="timing configuration (TOML)")
    tiering.add_argument("--json", action="store_true", help="print every policy's row as JSON")
    add_snapshot_dir(tiering)

    snp = sub.add_parser("snapshot", help="save, list, show and remove snapshots",
                         description="Snapshots hold QEMU's machine state, the plugin and run "
                                     "state and, if taken under --timing, the timing model.")
    snp_sub = snp.add_subparsers(dest="snapshot_command", required=True, metavar="ACTION")
    s_save = snp_sub.add_parser("save", help="save the running simulation (from another terminal)")
    s_save.add_argument("name", metavar="NAME")
    s_save.add_argument("--force", action="store_true", help="replace an existing snapshot NAME")
    add_client_args(s_save)
    s_list = snp_sub.add_parser("list", help="a table of the snapshots")
    add_snapshot_dir(s_list)
    s_show = snp_sub.add_parser("show", help="a snapshot's manifest, with its files checked")
    s_show.add_argument("name", metavar="NAME")
    add_snapshot_dir(s_show)
    s_rm = snp_sub.add_parser("rm", help="remove a snapshot")
    s_rm.add_argument("name", metavar="NAME")
    add_snapshot_dir(s_rm)

    for name, text in (("status", "show where a running simulation is"),
                       ("pause", "pause a running simulation at the next turn boundary"),
                       ("resume", "resume a paused simulation"),
                       ("stop", "end a running simulation (it prints its summary)")):
        c = sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        add_client_args(c)
        if name == "status":
            c.add_argument("--json", action="store_true", help="print the status as JSON")

    sweep = sub.add_parser(
        "sweep", help="run many points from one spec on Dask, into one table",
        description="Run the points of SPEC.toml ([base] and [axes] or [[points]]) as cosim "
                    "runs on a Dask cluster (a LocalCluster sized to the machine by default), "
                    "into one table with a row per point; a rerun skips the points done.")
    sweep.add_argument("spec", type=Path, metavar="SPEC.toml", help="the sweep's spec, or 'plot'")
    sweep.add_argument("table", nargs="?", type=Path, metavar="TABLE",
                       help="with 'plot': the table a sweep wrote")
    sweep.add_argument("--out", type=Path, metavar="DIR",
                       help="results (default: SPEC's name next to it, SPEC.d/); every worker "
                            "must see it")
    sweep.add_argument("--csv", action="store_true", help="write the table as CSV, not Parquet")
    sweep.add_argument("--scheduler", metavar="ADDRESS",
                       help="a running Dask scheduler (tcp://HOST:PORT) instead of a local cluster")
    sweep.add_argument("--slurm", action="store_true",
                       help="start the workers as Slurm jobs (dask-jobqueue)")
    sweep.add_argument("--workers", type=positive_int("--workers", "workers"), metavar="N",
                       help="local or Slurm workers (default: the machine's cores, 2 for Slurm)")
    sweep.add_argument("--x", metavar="FIELD", help="with plot: the x axis (a column)")
    sweep.add_argument("--y", metavar="STAT", help="with plot: the y axis (a column, or A/B: the ratio of two)")
    sweep.add_argument("--hue", metavar="FIELD", help="with plot: one line per value of FIELD")
    add_snapshot_dir(sweep)

    cfg = sub.add_parser("config", help="timing-model configuration",
                         description="Show the effective timing configuration.")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = cfg_sub.add_parser("show", help="print the effective configuration as TOML")
    show.add_argument("--preset", metavar="NAME", help="one of " + ", ".join(PRESET_DOCS))
    show.add_argument("--config", type=Path, metavar="FILE", help="TOML file applied on top")

    regress = sub.add_parser("regress", help="compare cycle counts with tests/regression goldens",
                             description="Run every guest x preset of tests/regression and "
                                         "compare the cycle counts exactly.")
    regress.add_argument("--update", action="store_true", help="rewrite the golden files")

    sub.add_parser("build", help="build patched QEMU (cached), the plugin and the guests",
                   description="Build everything cosim runs; each step is skipped when up to date.")
    sub.add_parser("doctor", help="report what is installed, where, and what is missing",
                   description="Check the toolchain, the Python packages, the cached QEMU build, "
                               "the plugin and the guests; print the command that fixes each gap.")
    return parser


def cmd_run(args: argparse.Namespace) -> int:
    from .control import ControlServer, is_loopback
    store = snap.Store(args.snapshot_dir)
    if args.save:
        snap.check_name(args.save)
        store.check_can_save(args.save, args.force)
    if not args.timing and (args.preset or args.config or args.plot or args.chmu is not None):
        raise CosimError("--preset, --config, --chmu and --plot need --timing")
    if args.timing and args.mode_given == "fast":
        raise CosimError("--mode fast: the timing model needs trace mode (drop --mode)")
    if args.warmup and not (args.snapshot and args.timing):
        raise CosimError(f"--warmup {args.warmup}: only for restoring a snapshot under --timing")
    if args.order is not None and not args.timing:
        raise CosimError(f"--order {args.order}: only under --timing (without it every vCPU "
                         "runs round-robin)")
    if args.args and not args.workload:
        # without a workload the guest would idle until --max-insns
        raise CosimError(f"--args {args.args!r}: give the --workload they are for "
                         "(cosim guest build lists them)")
    if args.plot:
        writable_dir(args.plot, "--plot")
    timing_cfg = timing_config.load(args.preset, args.config) if args.timing else None
    if timing_cfg is not None and args.chmu is not None:
        timing_cfg = chmu_spec.apply(timing_cfg, args.chmu)
    snapshot = restorable(store, args) if args.snapshot else None
    board = None
    if (args.workload or args.numa or args.args) and not (
            snapshot is not None and "board" in snapshot.manifest["guest"]):
        raise CosimError("--workload, --args and --numa need --snapshot NAME of a Linux boot "
                         "(make one with: cosim boot --save boot_done)")
    if args.numa and not args.workload:
        raise CosimError(f"--numa {args.numa}: give the --workload it applies to")
    if snapshot is not None and "board" in snapshot.manifest["guest"]:
        from . import linux_flow
        board = linux_flow.board_of(snapshot, linux_machine.IDLE_COMMAND)
        if args.workload:
            board.command = linux_flow.workload_command(
                linux_flow.workloads_of(board), args.workload, args.args, args.numa, board.nodes)
    if snapshot is not None:
        m = snapshot.manifest
        kernel = Path(m["guest"]["kernel"])
        smp, memory, shift = m["machine"]["smp"], m["machine"]["memory"], m["icount_shift"]
        quantum = args.quantum or m["quantum"]
        if args.warmup and snapshot.has_timing:
            raise CosimError(f"--warmup {args.warmup}: snapshot {snapshot.name} has timing "
                             "state already (its caches are warm)")
    else:
        kernel = resolve_kernel(args.kernel or DEFAULT_GUEST)
        smp, memory = args.smp or DEFAULT_SMP, args.memory or DEFAULT_MEMORY
        shift = args.icount_shift or 0
        quantum = args.quantum or DEFAULT_QUANTUM
        parse_size(memory)
    machine = QemuConfig(kernel=kernel, smp=smp, quantum=quantum, memory=memory,
                         mode="trace" if args.timing else (args.mode_given or "fast"),
                         icount_shift=shift, board=board)
    spec = RunSpec(
        machine=machine, max_insns=args.max_insns, timing=timing_cfg,
        preset=args.preset, config_file=args.config, warmup=args.warmup, order=args.order,
        save=args.save,
        force=args.force, store=store, snapshot=snapshot,
        console=args.console if args.console else (sys.stderr if args.json else sys.stdout),
        paused=args.paused)
    session = Session(spec)
    with ControlServer(session, args.listen) as server:
        if server.token:
            print(f"cosim: control plane on {args.listen} (port {server.port}), "
                  f"token {server.token}", file=sys.stderr, flush=True)
            if not is_loopback(args.listen):
                print(f"cosim: warning: --listen {args.listen} is reachable from other machines; "
                      "calls need the token but travel unencrypted", file=sys.stderr, flush=True)
        if args.paused:
            print(f"cosim: {server.sim_id} is paused; `cosim resume --sim {server.sim_id}` "
                  "starts it", file=sys.stderr, flush=True)
        summary = session.run()
    # the summary first: a plot that cannot be written must not lose it
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_summary(summary)
    sys.stdout.flush()
    if args.plot and "timing" in summary:
        from .timing.plots import write_plots
        write_plots(summary["timing"], args.plot)
    return 0 if summary["guest_exit_code"] in (None, 0) and \
        summary.get("workload_exit_code") in (None, 0) else 1


def writable_dir(path: Path, flag: str) -> None:
    """Create ``path`` and prove a file can be written there, before a long run needs it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise CosimError(f"{flag} {path}: cannot write there ({e.strerror}); "
                         "give a writable directory") from None


def restorable(store: snap.Store, args: argparse.Namespace) -> snap.Snapshot:
    """The snapshot of ``--snapshot``, refused (one line) if this QEMU or guest differs."""
    s = store.load(args.snapshot)
    m = s.manifest
    binary = qemu_binary(m["guest"].get("arch", "riscv64"))
    have = (paths.patch_hash(), snap.build_id(binary))
    want = (m["qemu"]["patch_hash"], m["qemu"]["build_id"])
    if have != want:
        raise CosimError(f"snapshot {s.name} was taken with QEMU patches {want[0]} (build id "
                         f"{want[1][:12]}); this cosim runs patches {have[0]} (build id "
                         f"{have[1][:12]}); restore it with that build or take it again")
    kernel = Path(m["guest"]["kernel"])
    if args.kernel is not None:
        kernel = resolve_kernel(args.kernel)
    if not kernel.is_file():
        raise CosimError(f"snapshot {s.name}: its guest {kernel} is gone; pass --kernel ELF")
    if snap.file_digest(kernel) != m["guest"]["kernel_blake2b"]:
        raise CosimError(f"snapshot {s.name}: guest {kernel} is not the ELF it was taken with "
                         "(BLAKE2b differs); restoring into another guest is refused")
    m["guest"]["kernel"] = str(kernel)
    for flag, given, saved in (("--smp", args.smp, m["machine"]["smp"]),
                               ("--memory", args.memory, m["machine"]["memory"]),
                               ("--icount-shift", args.icount_shift, m["icount_shift"])):
        if given is not None and given != saved:
            raise CosimError(f"{flag} {given}: snapshot {s.name} has {saved}; a restored "
                             "machine keeps its shape (drop the flag)")
    return s


def print_summary(s: dict) -> None:
    print(f"\n== cosim run: {Path(s['kernel']).name}, {s['smp']} vCPUs, quantum {s['quantum']}, "
          f"{s['mode']} mode ==")
    print(f"{'vcpu':>4} {'instructions':>14} {'turns':>9} {'halted':>8} {'yielded':>8}")
    for v in s["vcpus"]:
        print(f"{v['vcpu']:>4} {v['insns']:>14,} {v['turns']:>9,} {v['halted_turns']:>8,} "
              f"{v['yielded_turns']:>8,}")
    print(f"total {s['total_insns']:,} instructions (QEMU icount {s['qemu_icount']:,} at the last "
          f"turn boundary), max skew {s['max_skew']:,}, short turns {s['short_turns']}, "
          f"restarted {s['restarted_insns']:,}")
    print(f"stopped by {s['stopped_by']}"
          + (f" (guest exit code {s['guest_exit_code']})" if s["guest_exit_code"] is not None else "")
          + (f", workload exit code {s['workload_exit_code']}"
             if s.get("workload_exit_code") is not None else ""))
    print(f"digest {s['digest']}")
    for line in s["guest_results"]:
        print(f"guest: {printable(line)}")
    print(f"{s['wall_seconds']:.2f} s wall, {s['mips']:.1f} MIPS")
    if "restored_from" in s:
        print(f"restored from snapshot {s['restored_from']}; {s['session_insns']:,} instructions "
              "in this run")
    for note in s.get("notes", []):
        print(f"note: {note}")
    for saved in s.get("saved", []):
        print(f"saved snapshot {saved['name']} ({saved['path']})")
    if "timing" in s:
        print(timing_stats.table(s["timing"]))


def cmd_snapshot(args: argparse.Namespace) -> int:
    action = args.snapshot_command
    if action == "save":
        from .control import pb
        with client_of(args) as (c, meta):
            info = c.stub.SaveSnapshot(pb.SaveSnapshotRequest(name=args.name, force=args.force),
                                       metadata=meta)
        print(f"saved snapshot {info.name} at {info.total_insns:,} instructions ({info.path}, "
              f"{info.bytes_on_disk / 2**20:.1f} MiB on disk)")
        return 0
    store = snap.Store(args.snapshot_dir)
    if action == "list":
        rows = store.list()
        if not rows:
            print(f"no snapshots in {store.root}")
            return 0
        print(f"snapshots in {store.root}")
        print(f"{'name':<24} {'created':<25} {'guest':<22} {'vcpus':>5} {'quantum':>8} "
              f"{'instructions':>14} {'cycles':>14} {'MiB':>8}")
        for r in rows:
            if isinstance(r, tuple):
                print(f"{r[0]:<24} (unreadable: {r[1]})")
                continue
            m = r.manifest
            cycles = f"{m['cycles']:,}" if m.get("cycles") is not None else "-"
            print(f"{r.name:<24} {m['created']:<25} {Path(m['guest']['kernel']).stem:<22} "
                  f"{m['machine']['smp']:>5} {m['quantum']:>8} {m['total_insns']:>14,} "
                  f"{cycles:>14} {snap.size_on_disk(r.path) / 2**20:>8.1f}")
        return 0
    if action == "show":
        s = store.load(args.name)
        print(json.dumps(dict(s.manifest, path=str(s.path), verified=True,
                              bytes_on_disk=snap.size_on_disk(s.path)), indent=2))
        return 0
    store.remove(args.name)
    print(f"removed snapshot {args.name} from {store.root}")
    return 0


class client_of:
    """``with client_of(args) as (client, metadata)``: gRPC errors become one-line CosimErrors."""

    def __init__(self, args: argparse.Namespace) -> None:
        from .control import connect
        self.client = connect(args.sim, args.connect, args.token_file)

    def __enter__(self):
        return self.client, self.client.metadata

    def __exit__(self, kind, exc, tb) -> None:
        import grpc
        self.client.close()
        if isinstance(exc, grpc.RpcError):
            raise CosimError(f"{exc.code().name.lower()}: {exc.details()}") from None


def cmd_client(args: argparse.Namespace) -> int:
    from google.protobuf.json_format import MessageToDict

    from .control import pb
    with client_of(args) as (c, meta):
        rpc = {"status": (c.stub.GetStatus, pb.GetStatusRequest),
               "pause": (c.stub.Pause, pb.PauseRequest),
               "resume": (c.stub.Resume, pb.ResumeRequest),
               "stop": (c.stub.Stop, pb.StopRequest)}[args.command]
        st = rpc[0](rpc[1](), metadata=meta)
    if getattr(args, "json", False):
        print(json.dumps(MessageToDict(st, always_print_fields_with_no_presence=True), indent=2))
        return 0
    state = pb.Status.State.Name(st.state).lower()
    limit = f" of {st.max_insns:,}" if st.max_insns else ""
    print(f"{st.sim_id}: {state}, {st.total_insns:,}{limit} instructions, {st.mips:.1f} MIPS, "
          f"{st.wall_seconds:.1f} s" + (f", {st.cycles:,} cycles" if st.timing else "")
          + (f", from snapshot {st.snapshot}" if st.snapshot else ""))
    print("  per vCPU: " + " ".join(f"{n:,}" for n in st.insns))
    return 0


def cmd_guest(args: argparse.Namespace) -> int:
    from . import guest_image
    image = guest_image.build_image(args.add, force=args.force, packages=args.package,
                                    pip=args.pip)
    print(f"guest image {image.root}")
    print(f"  kernel {image.kernel.name}, initrd {image.initrd.stat().st_size / 2**20:.1f} MiB")
    print(f"  workloads: {', '.join(image.workloads)}")
    extra = image.manifest.get("extra_packages", {}).get("installed", {})
    if extra:
        print(f"  packages: {', '.join(f'{n} {v}' for n, v in extra.items())}")
    if image.manifest.get("pip"):
        print(f"  pip: {', '.join(w['wheel'] for w in image.manifest['pip'])}")
    return 0


def boot_request(args: argparse.Namespace, save: str, force: bool, console: Path | None,
                 store: snap.Store) -> "BootRequest":
    from . import linux_flow
    node = parse_size(args.node_memory, "--node-memory")
    if node % (1 << 20):
        raise CosimError(f"--node-memory {args.node_memory}: NUMA nodes are whole MiB "
                         "(e.g. 512M, 1G)")
    cxl = parse_size(args.cxl, "--cxl") if getattr(args, "cxl", None) else 0
    hmat = timing_config.load(args.preset, args.config)
    return linux_flow.BootRequest(
        save=save, force=force, smp=getattr(args, "smp", 2), quantum=getattr(args, "quantum", DEFAULT_QUANTUM),
        node_bytes=(node, node), cxl_bytes=cxl, add=getattr(args, "add", []),
        packages=getattr(args, "package", []), pip=getattr(args, "pip", []),
        timing=hmat if getattr(args, "timing", False) else None, hmat_from=hmat,
        console=console or store.log_path(f"{save}.boot.log"))


def cmd_boot(args: argparse.Namespace) -> int:
    from . import linux_flow
    store = snap.Store(args.snapshot_dir)
    req = boot_request(args, args.save, args.force, args.console, store)
    linux_flow.check_boot(req, store)
    print(f"cosim boot: {req.smp} vCPUs, nodes {args.node_memory} + {args.node_memory}"
          + (f", cxl-type3 {args.cxl}" if req.cxl_bytes else "")
          + f"; console: {req.console}", file=sys.stderr, flush=True)
    session = linux_flow.boot(req, store, log=linux_flow.stderr_log)
    summary = session.final_summary or {}
    saved = session.saved[-1]
    print(f"saved snapshot {saved.name} at {summary.get('total_insns', 0):,} instructions "
          f"after {summary.get('wall_seconds', 0):.1f} s ({saved.path})")
    print(printable(linux_machine.init_report(Path(req.console).read_text(errors="replace"))))
    return 0


def boot_snapshot(args: argparse.Namespace, command: str, pip: Sequence[str] = (),
                  packages: Sequence[str] = ()
                  ) -> tuple[snap.Store, snap.Snapshot, "linux_machine.LinuxBoard"]:
    """The Linux snapshot of ``--snapshot`` (booted and saved first if it is missing, with
    ``pip``'s and ``packages``' packages in the guest) and its machine, for a command that
    runs workloads from it (``tiers``, ``tiering``)."""
    from . import linux_flow
    store = snap.Store(args.snapshot_dir)
    if not store.exists(args.snapshot):
        print(f"cosim {command}: no snapshot {args.snapshot} yet: booting the guest to make it "
              "(once)", file=sys.stderr, flush=True)
        args.node_memory, args.cxl = "1G", None
        args.pip, args.package = list(pip), list(packages)
        req = boot_request(args, args.snapshot, False, None, store)
        linux_flow.boot(req, store, log=linux_flow.stderr_log)
    ns = argparse.Namespace(snapshot=args.snapshot, kernel=None, smp=None, memory=None,
                            icount_shift=None)
    s = restorable(store, ns)
    return store, s, linux_flow.board_of(s, linux_machine.IDLE_COMMAND)


def run_from(args: argparse.Namespace, store: snap.Store, s: snap.Snapshot,
             board: "linux_machine.LinuxBoard", timing: timing_config.Config, what: str,
             timeline_ns: int = 0) -> dict:
    """One timing run of ``board.command`` from snapshot ``s``; its summary, or one line if the
    workload failed (``what`` says which run). ``timeline_ns``: keep the model's traffic per
    interval of that many ns."""
    machine = QemuConfig(kernel=Path(s.manifest["guest"]["kernel"]),
                         smp=s.manifest["machine"]["smp"], quantum=s.manifest["quantum"],
                         memory=s.manifest["machine"]["memory"], mode="trace",
                         icount_shift=s.manifest["icount_shift"],
                         board=dataclasses.replace(board))
    spec = RunSpec(machine=machine, timing=timing, preset=args.preset, config_file=args.config,
                   store=store, snapshot=s, console=sys.stderr if args.json else sys.stdout,
                   timeline_ns=timeline_ns)
    summary = Session(spec).run()
    if summary.get("workload_exit_code") != 0:
        raise CosimError(f"{what} ended with exit code {summary.get('workload_exit_code')}; "
                         "see its output above")
    return summary


def cmd_tiers(args: argparse.Namespace) -> int:
    from . import linux_flow
    store, s, board = boot_snapshot(args, "tiers")
    nodes = board.nodes
    if args.nodes:
        nodes = [int(n) for n in args.nodes.split(",") if n.strip().isdigit()]
        bad = [n for n in args.nodes.split(",") if not n.strip().isdigit() or int(n) not in board.nodes]
        if bad or not nodes:
            raise CosimError(f"--nodes {args.nodes}: want node ids from "
                             f"{','.join(map(str, board.nodes))}, comma-separated")
    workloads = linux_flow.workloads_of(board)
    timing_cfg = timing_config.load(args.preset, args.config)
    rows = []
    for node in nodes:
        numa = f"membind={node}"
        board.command = linux_flow.workload_command(workloads, args.workload, args.args, numa,
                                                    board.nodes)
        print(f"cosim tiers: {args.workload} {args.args} bound to node {node} "
              f"(timing model)", file=sys.stderr, flush=True)
        summary = run_from(args, store, s, board, timing_cfg,
                           f"{args.workload} bound to node {node}")
        rows.append(dict(summary, numa=numa))
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(f"\n== cosim tiers: {args.workload} {args.args}, snapshot {args.snapshot}, "
          f"{s.manifest['machine']['smp']} vCPUs, quantum {s.manifest['quantum']} ==")
    print(linux_flow.tier_table(rows, args.work_key))
    for r in rows:
        hot = r["timing"]["hot_pages"]["cxl"][:3]
        if hot:
            print(f"{r['numa']}: hottest CXL pages " + ", ".join(
                f"{p['page']} ({p['reads'] + p['writes']:,} lines)" for p in hot))
    return 0


#: the chmu policy's CHMU: 64 KiB units, 1 ms epochs (the live-promotion test's)
TIERING_CHMU = "tracker=space-saving,counters=1024,unit=64K,epoch=1ms,threshold=32"
#: RESULT key that counts each built-in workload's work
WORK_KEYS = {"gups": "updates", "hotcold": "accesses"}


def cmd_tiering(args: argparse.Namespace) -> int:
    from . import guest_image, linux_flow, tiering
    policies = tiering.parse_policies(args.policies)
    exp = tiering.Experiment(
        workload=args.workload, args=args.args, policies=policies,
        pressure=tiering.parse_pressure(args.pressure),
        knobs=dict(tiering.parse_knob(k) for k in args.knobs),
        damon_us=tiering.parse_damon_intervals(args.damon_intervals),
        interval_us=tiering.parse_duration_us(args.interval, "--interval", 100, 10_000_000))
    if args.plot is not None:
        writable_dir(args.plot, "--plot")
    base_cfg = timing_config.load(args.preset, args.config)
    chmu_cfg = chmu_spec.apply(base_cfg, args.chmu) if "chmu" in policies else None
    damon = "damon" in policies
    store, s, board = boot_snapshot(args, "tiering", [tiering.DAMO] if damon else [],
                                    tiering.DAMON_PACKAGES if damon else [])
    image = guest_image.GuestImage(board.initrd.parent)
    if damon:
        tiering.check_damo(image.manifest, args.snapshot)
    workloads = image.workloads
    exp.vmlog = "vmlog" in workloads
    if not exp.vmlog:
        print(f"cosim tiering: snapshot {args.snapshot}'s guest predates vmlog: no migration "
              "timeline (boot a new snapshot for it)", file=sys.stderr)
    argv = shlex.split(linux_flow.workload_command(workloads, args.workload, args.args, None,
                                                   board.nodes))
    work_key = args.work_key or WORK_KEYS.get(args.workload)
    if work_key is None:
        raise CosimError(f"--workload {args.workload}: say which RESULT key counts its work "
                         "with --work-key")
    rows = []
    for policy in policies:
        board.command = tiering.guest_script(exp, policy, argv)
        print(f"cosim tiering: {args.workload} {args.args} under {policy}, node 0 "
              f"{exp.pressure:.0%} taken (timing model)", file=sys.stderr, flush=True)
        summary = run_from(args, store, s, board, chmu_cfg if policy == "chmu" else base_cfg,
                           f"{args.workload} under {policy}", timeline_ns=exp.interval_us * 1000)
        rows.append(tiering.row(policy, summary, args.workload, work_key))
    written = []
    if args.plot is not None:
        from . import tiering_plots
        written = tiering_plots.write_plots(rows, args.plot, f"{args.workload} {args.args}")
    if args.json:
        json.dump({"workload": args.workload, "args": args.args, "pressure": exp.pressure,
                   "knobs": exp.knobs, "chmu": args.chmu, "damon_intervals_us": exp.damon_us,
                   "interval_us": exp.interval_us, "snapshot": args.snapshot,
                   "smp": s.manifest["machine"]["smp"], "policies": rows,
                   "plots": [str(p) for p in written]}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(f"\n== cosim tiering: {args.workload} {args.args}, snapshot {args.snapshot}, "
          f"node 0 {exp.pressure:.0%} taken, {s.manifest['machine']['smp']} vCPUs ==")
    print(tiering.table(rows, work_key))
    damon_stats = tiering.damon_table(rows)
    if damon_stats:
        print(f"\nDAMON's schemes (damo start {tiering.DAMON_FILE}):\n{damon_stats}")
    for p in written:
        print(f"wrote {p}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from . import sweep_run, sweep_spec
    if str(args.spec) == "plot":
        from . import sweep_plot
        if args.table is None or not (args.x and args.y):
            raise CosimError("cosim sweep plot TABLE --x FIELD --y STAT [--hue FIELD]: "
                             "give the table and both axes")
        print(f"wrote {sweep_plot.plot(args.table, args.x, args.y, args.hue)}")
        return 0
    spec = sweep_spec.load(args.spec)
    out = args.out or args.spec.with_suffix(".d")
    store = snap.Store(args.snapshot_dir)
    names = sorted({p.flags["snapshot"] for p in spec.points if "snapshot" in p.flags})
    for name in names:
        if not store.exists(name):
            raise CosimError(f"sweep spec {args.spec}: snapshot {name!r} is not in "
                             f"{store.root} (cosim snapshot list)")
    kernels: dict[str, str] = {}
    for kernel in sorted({p.flags["kernel"] for p in spec.points if "kernel" in p.flags}):
        try:
            # a built-in guest is built here, once; a path is made absolute for every worker
            kernels[kernel] = str(resolve_kernel(kernel).resolve())
        except CosimError as e:
            raise CosimError(f"sweep spec {args.spec}: {e}") from None
    spec = spec.with_kernels(kernels).salted(sweep_run.inputs_digest(
        [store.path(n) / snap.MANIFEST for n in names], [Path(k) for k in kernels.values()]))
    with sweep_run.client(args.scheduler, args.slurm, args.workers) as client:
        bar = SweepProgress(len(spec.points),
                            sum(1 for p in spec.points if sweep_run.done_row(p, out) is not None))
        try:
            rows, earlier = sweep_run.run(spec, out, store.root, client, bar.update)
        finally:
            bar.close()
    table = sweep_run.write_table(rows, out / ("results.csv" if args.csv else "results.parquet"))
    failed = [r for r in rows if r["status"] != "done"]
    print(f"cosim sweep: {len(rows)} points, {earlier} from an earlier run, "
          f"{len(rows) - earlier - len(failed)} run now, {len(failed)} failed; {table}")
    params = {p.digest: p.params for p in spec.points}
    for r in failed:
        where = ", ".join(f"{k}={v}" for k, v in params[r["digest"]].items())
        print(f"  failed {r['digest']} ({where}): {r['error']}")
    return 1 if failed else 0


def cmd_config(args: argparse.Namespace) -> int:
    cfg = timing_config.load(args.preset, args.config)
    title = f"cosim timing configuration: preset {args.preset or '(defaults)'}" + (
        f" + {args.config}" if args.config else "")
    sys.stdout.write(timing_config.show(cfg, title))
    return 0


def cmd_regress(args: argparse.Namespace) -> int:
    from .regress import run_regress
    return run_regress(update=args.update)


def cmd_build(args: argparse.Namespace) -> int:
    build.build_all()
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import run_checks
    return run_checks()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    interrupts.install()
    handlers = {"run": cmd_run, "build": cmd_build, "doctor": cmd_doctor,
                "config": cmd_config, "regress": cmd_regress, "snapshot": cmd_snapshot,
                "status": cmd_client, "pause": cmd_client, "resume": cmd_client,
                "stop": cmd_client, "guest": cmd_guest, "boot": cmd_boot, "tiers": cmd_tiers,
                "tiering": cmd_tiering, "sweep": cmd_sweep}
    try:
        return handlers[args.command](args)
    except CosimError as e:
        print(f"cosim: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cosim: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    except Terminated:
        print("cosim: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except BrokenPipeError:
        # the reader went away (`cosim ... | head`): end quietly, as other
        # command-line tools do, with the status of a SIGPIPE death; stdout
        # goes to /dev/null so the interpreter's final flush cannot fail too
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
