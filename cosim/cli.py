"""The ``cosim`` command: run, config, regress, build, doctor.

Argument parsing is argparse; progress on a terminal is tqdm; ELF checks
use pyelftools. Every failure a user can cause ends in one line,
``cosim: error: ...``, exit status 2, and no QEMU left running.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import NoReturn, Sequence

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from tqdm import tqdm

from . import __version__, build, paths
from .errors import CosimError
from .libqflex_bridge import Bridge, QemuConfig, Report
from .quantum import Schedule, run_round_robin
from .timing import config as timing_config
from .timing import state as timing_state
from .timing import stats as timing_stats
from .timing.config import PRESET_DOCS
from .timing.engine import TimingRun
from .timing.memory import TICKS_PER_CYCLE

#: riscv64 ``virt``: RAM starts here (QEMU hw/riscv/virt.c)
RAM_BASE = 0x8000_0000

DEFAULT_GUEST = "spinlock"
MAX_SMP = 64
RESULT_LINE = re.compile(r"^RESULT .*$", re.M)


def positive_int(flag: str, what: str):
    """argparse type: an integer > 0, else a one-line error naming the flag."""
    def parse(text: str) -> int:
        try:
            value = int(text.replace("_", ""), 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} {text}: not an integer; expected {what}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{flag} {text}: must be > 0 ({what})")
        return value
    return parse


def smp_count(text: str) -> int:
    value = positive_int("--smp", f"a vCPU count from 1 to {MAX_SMP}")(text)
    if value > MAX_SMP:
        raise argparse.ArgumentTypeError(f"--smp {text}: at most {MAX_SMP} vCPUs")
    return value


def parse_size(text: str) -> int:
    """Bytes of a QEMU-style size (``512M``, ``2G``; a bare number is MiB)."""
    m = re.fullmatch(r"(\d+)([KMG]?)", text.strip().upper())
    if not m:
        raise CosimError(f"--memory {text!r}: want a size such as 512M or 2G")
    scale = {"": 1 << 20, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[m.group(2)]
    return int(m.group(1)) * scale


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
    run.add_argument("--kernel", default=DEFAULT_GUEST, metavar="ELF",
                     help="riscv64 ELF linked at 0x80000000, or a built-in guest name "
                          f"(default: {DEFAULT_GUEST}; see guests/riscv/README.md)")
    run.add_argument("--smp", type=smp_count, default=4, metavar="N",
                     help=f"number of vCPUs (harts), 1..{MAX_SMP} (default: 4)")
    run.add_argument("--quantum", type=positive_int("--quantum", "instructions per vCPU turn, e.g. 1000"),
                     default=1000, metavar="Q", help="instructions per vCPU turn (default: 1000)")
    run.add_argument("--max-insns", type=positive_int("--max-insns", "total instructions over all vCPUs"),
                     metavar="N", help="stop after exactly N instructions in total (default: run until the guest exits)")
    run.add_argument("--mode", choices=("fast", "trace"), default=None, dest="mode_given",
                     help="fast: counts only; trace: also every memory access and instruction-fetch "
                          "line, per turn, into the digest (default: fast; trace with --timing)")
    run.add_argument("--memory", default="512M", metavar="SIZE", help="guest RAM (default: 512M)")
    run.add_argument("--icount-shift", type=int, default=0, choices=range(0, 11), metavar="S",
                     help="virtual ns per instruction = 2**S (default: 0)")
    run.add_argument("--json", action="store_true",
                     help="print the summary as JSON on stdout; the guest console goes to stderr")
    run.add_argument("--timing", action="store_true",
                     help="run under the timing model (trace mode; the vCPU with the smallest "
                          "simulated time runs next) and report cycles")
    run.add_argument("--preset", metavar="NAME",
                     help="timing preset: " + ", ".join(f"{k} ({v})" for k, v in PRESET_DOCS.items()))
    run.add_argument("--config", type=Path, metavar="FILE",
                     help="timing configuration (TOML; fields override the preset)")
    run.add_argument("--plot", type=Path, metavar="DIR",
                     help="with --timing: write PNG charts (CPI stacks, latency, page hotness)")
    run.add_argument("--console", type=Path, metavar="FILE",
                     help="write the guest console to FILE instead of the terminal")

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
    kernel = resolve_kernel(args.kernel)
    if not args.timing and (args.preset or args.config or args.plot):
        raise CosimError("--preset, --config and --plot need --timing")
    if args.timing and args.mode_given == "fast":
        raise CosimError("--mode fast: the timing model needs trace mode (drop --mode)")
    timing_cfg = timing_config.load(args.preset, args.config) if args.timing else None
    mode = "trace" if args.timing else (args.mode_given or "fast")
    config = QemuConfig(kernel=kernel, smp=args.smp, quantum=args.quantum, mode=mode,
                        memory=args.memory, icount_shift=args.icount_shift)
    console = args.console if args.console else (sys.stderr if args.json else sys.stdout)
    started = time.monotonic()
    bar = tqdm(total=args.max_insns, unit="insn", unit_scale=True, file=sys.stderr,
               disable=not sys.stderr.isatty(), leave=False, dynamic_ncols=True)
    with Bridge(config, console=console) as bridge:
        schedule = Schedule(args.smp)

        def progress(report: Report) -> None:
            bar.update(sum(report.insns) + report.partial_insns)

        timing_doc = None
        if timing_cfg is not None:
            model = timing_state.build(timing_cfg, args.smp, [(RAM_BASE, parse_size(args.memory))],
                                       roi=timing_stats.roi_addresses(kernel))
            engine = TimingRun(bridge, schedule, model, args.max_insns, on_report=progress)
            engine.run()
            timing_doc = timing_stats.document(model, engine.cycles, args.preset,
                                               str(args.config) if args.config else None)
            timing_doc["max_time_skew_cycles"] = engine.max_time_skew // TICKS_PER_CYCLE
        else:
            run_round_robin(bridge, schedule, max_insns=args.max_insns, on_report=progress)
        bar.close()
        wall = time.monotonic() - started
        exit_code = bridge.exit_code
        summary = {
            "kernel": str(kernel), "smp": args.smp, "quantum": args.quantum, "mode": mode,
            **schedule.as_dict(),
            "digest": bridge.digest.hexdigest(),
            "stopped_by": "guest-exit" if schedule.exited else "max-insns",
            "guest_exit_code": exit_code,
            "guest_results": RESULT_LINE.findall(bridge.console_text()),
            "wall_seconds": round(wall, 3),
            "mips": round(schedule.total / wall / 1e6, 2),
        }
        if timing_doc is not None:
            summary = {"cycles": timing_doc["cycles"], "cores": timing_doc["cores"],
                       **summary, "timing": timing_doc}
    if args.plot and timing_doc is not None:
        from .timing.plots import write_plots
        write_plots(timing_doc, args.plot)
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_summary(summary)
    return 0 if exit_code in (None, 0) else 1


def print_summary(s: dict) -> None:
    print(f"\n== cosim run: {Path(s['kernel']).name}, {s['smp']} vCPUs, quantum {s['quantum']}, "
          f"{s['mode']} mode ==")
    print(f"{'vcpu':>4} {'instructions':>14} {'turns':>9} {'halted':>8}")
    for v in s["vcpus"]:
        print(f"{v['vcpu']:>4} {v['insns']:>14,} {v['turns']:>9,} {v['halted_turns']:>8,}")
    print(f"total {s['total_insns']:,} instructions (QEMU icount {s['qemu_icount']:,} at the last "
          f"turn boundary), max skew {s['max_skew']:,}, short turns {s['short_turns']}")
    print(f"stopped by {s['stopped_by']}"
          + (f" (guest exit code {s['guest_exit_code']})" if s["guest_exit_code"] is not None else ""))
    print(f"digest {s['digest']}")
    for line in s["guest_results"]:
        print(f"guest: {line}")
    print(f"{s['wall_seconds']:.2f} s wall, {s['mips']:.1f} MIPS")
    if "timing" in s:
        print(timing_stats.table(s["timing"]))


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
    handlers = {"run": cmd_run, "build": cmd_build, "doctor": cmd_doctor,
                "config": cmd_config, "regress": cmd_regress}
    try:
        return handlers[args.command](args)
    except CosimError as e:
        print(f"cosim: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cosim: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
