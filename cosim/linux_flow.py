"""The Linux-guest flow: boot once and save, then run workloads from the snapshot.

``cosim boot`` builds (or reuses) the guest image, boots the q35 machine in
fast mode until the guest's init prints ``COSIM-READY`` and saves a snapshot
at that round boundary. ``cosim run --snapshot NAME --workload W`` restores
it with a command on the fw_cfg channel (see ``linux_machine``); the guest's
init runs it, prints ``COSIM-EXIT rc`` and powers off. ``cosim tiers`` runs
one workload bound to each memory node under the timing model and compares.
"""

from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, TextIO

from . import guest_image
from . import snapshot as snap
from .boards import DEFAULT_QUANTUM
from .errors import CosimError
from .libqflex_bridge import QemuConfig
from .linux_machine import Hmat, LinuxBoard
from .session import RunSpec, Session
from .timing.config import Config

NUMA_POLICY = re.compile(r"(membind|interleave|preferred)=(\d{1,4}(?:,\d{1,4})*)")
MIN_SMP, MAX_SMP = 2, 8


@dataclass
class BootRequest:
    """What ``cosim boot`` was asked for."""

    save: str
    force: bool = False
    smp: int = 2
    quantum: int = DEFAULT_QUANTUM
    node_bytes: tuple[int, int] = (1 << 30, 1 << 30)
    cxl_bytes: int = 0
    add: Sequence[Path] = ()
    packages: Sequence[str] = ()        # Debian packages for the image (cosim guest build --package)
    pip: Sequence[str] = ()             # PyPI packages for the image's python3 (--pip)
    timing: Config | None = None        # boot under the timing model (slow)
    hmat_from: Config | None = None     # the figures HMAT announces (the timing config)
    console: TextIO | Path | None = None


def hmat_of(cfg: Config) -> Hmat:
    """What HMAT announces: the timing model's idle latencies and peak read bandwidths."""
    dram_bw = cfg.dram.bandwidth_gbps * cfg.dram.channels
    cxl_bw = cfg.cxl_read_gbps * cfg.cxl.devices
    return Hmat(latency_ns=(round(cfg.dram.latency_ns), round(cfg.cxl_latency_ns)),
                bandwidth_mbps=(round(dram_bw * 1000), round(cxl_bw * 1000)))


def check_smp(smp: int) -> None:
    if not MIN_SMP <= smp <= MAX_SMP:
        raise CosimError(f"--smp {smp}: a Linux machine has {MIN_SMP} to {MAX_SMP} vCPUs")


def check_boot(req: BootRequest, store: snap.Store) -> None:
    """The one-line errors a boot request can meet before anything runs."""
    check_smp(req.smp)
    snap.check_name(req.save)
    store.check_can_save(req.save, req.force)
    guest_image.check_added(req.add)
    guest_image.resolve_packages(guest_image.with_python(req.packages, req.pip))
    guest_image.download_wheels(req.pip)


def boot(req: BootRequest, store: snap.Store, log=print) -> Session:
    """Boot to the ready marker and save ``req.save``; an existing snapshot is kept on failure."""
    check_boot(req, store)
    image = guest_image.build_image(req.add, log=log, packages=req.packages, pip=req.pip)
    board = LinuxBoard(kernel=image.kernel, initrd=image.initrd,
                       firmware=guest_image.firmware_dir(), node_bytes=req.node_bytes,
                       cxl_bytes=req.cxl_bytes, hmat=hmat_of(req.hmat_from or Config()))
    machine = QemuConfig(kernel=image.kernel, smp=req.smp, quantum=req.quantum,
                         mode="trace" if req.timing is not None else "fast",
                         memory=f"{board.memory_bytes >> 20}M", board=board)
    session = Session(RunSpec(machine=machine, timing=req.timing, save=req.save,
                              force=req.force, store=store, console=req.console,
                              until_marker=board.ready_marker))
    session.run()
    return session


def workload_command(workloads: Sequence[str], name: str, args: str, numa: str | None,
                     nodes: Sequence[int]) -> str:
    """The shell command the guest's init runs for ``--workload``, checked here first."""
    if name not in workloads:
        raise CosimError(f"--workload {name}: not in the guest image; it has "
                         f"{', '.join(workloads)} (add your own with cosim guest build --add)")
    try:
        argv = shlex.split(args)
    except ValueError as e:
        raise CosimError(f"--args {args!r}: {e}") from None
    cmd = [f"/workloads/{name}", *argv]
    if numa:
        m = NUMA_POLICY.fullmatch(numa)
        if not m:
            raise CosimError(f"--numa {numa}: want membind=N[,M], interleave=N,M or preferred=N")
        policy, wanted = m.group(1), [int(n) for n in m.group(2).split(",")]
        for n in wanted:
            if n not in nodes:
                raise CosimError(f"--numa {numa}: node {n} does not exist; this machine has "
                                 f"nodes {','.join(map(str, nodes))}")
        if policy == "preferred" and len(wanted) != 1:
            raise CosimError(f"--numa {numa}: preferred takes one node")
        cmd = ["numactl", f"--{policy}={m.group(2)}", "--", *cmd]
    return shlex.join(cmd)


def board_of(s: snap.Snapshot, command: str) -> LinuxBoard:
    """The snapshot's machine with this run's command; refused if the guest image changed."""
    desc = s.manifest["guest"].get("board")
    if desc is None:
        raise CosimError(f"snapshot {s.name}: not a Linux boot (its guest is "
                         f"{Path(s.manifest['guest'].get('kernel', '?')).name}); "
                         "make one with: cosim boot --save NAME")
    board = LinuxBoard.from_description(desc, command, nonce_seed=str(s.manifest.get("digest", s.name)))
    for path, key in ((board.initrd, "initrd_blake2b"),):
        if not path.is_file():
            raise CosimError(f"snapshot {s.name}: its guest image file {path} is gone; "
                             "boot again (cosim boot --force)")
        if key in desc and snap.file_digest(path) != desc[key]:
            raise CosimError(f"snapshot {s.name}: {path} is not the image it booted "
                             "(BLAKE2b differs); boot again (cosim boot --force)")
    return board


def workloads_of(board: LinuxBoard) -> list[str]:
    """Workload names of the image the board boots (from its manifest)."""
    return guest_image.GuestImage(board.initrd.parent).workloads


def result_value(results: Sequence[str], key: str) -> int | None:
    """``key=N`` from the guest's RESULT lines (the last one that has it)."""
    for line in reversed(results):
        m = re.search(rf"\b{re.escape(key)}=(\d{{1,19}})\b", line)  # bounded: guest output
        if m:
            return int(m.group(1))
    return None


def tier_table(rows: list[dict], work_key: str) -> str:
    """The side-by-side comparison ``cosim tiers`` prints."""
    out = [f"{'numa':<14} {'cycles':>14} {'insns':>13} {work_key:>10} {'cyc/' + work_key:>12} "
           f"{'DRAM rd':>10} {'CXL rd':>10} {'DRAM ns':>8} {'CXL ns':>8} {'vs first':>9}"]
    base = None
    for r in rows:
        mem = r["timing"]["memory"]
        work = result_value(r["guest_results"], work_key)
        per = r["cycles"] / work if work else None
        if base is None:
            base = per
        ratio = f"{per / base:.2f}x" if per and base else "-"
        out.append(f"{r['numa']:<14} {r['cycles']:>14,} {r['session_insns']:>13,} "
                   f"{work if work is not None else '-':>10} "
                   f"{f'{per:,.1f}' if per else '-':>12} {mem['dram']['reads']:>10,} "
                   f"{mem['cxl']['reads']:>10,} {mem['dram']['mean_latency_ns']:>8} "
                   f"{mem['cxl']['mean_latency_ns']:>8} {ratio:>9}")
    return "\n".join(out)


def stderr_log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
