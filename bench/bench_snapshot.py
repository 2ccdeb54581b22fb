"""Snapshot save/restore time and size, and the cost of a Step over gRPC.

    .venv/bin/python bench/bench_snapshot.py

1. For guests with 256 MiB and 2 GiB of RAM (gups touching a 16 MiB table,
   4 harts, fast mode): time of ``Session.save`` (pause, QEMU savevm-ext,
   plugin/run state, manifest with hashes, rename), the snapshot's size on
   disk against the guest's RAM, and the time from launching QEMU to the
   first command for a restore (-loadext) next to a plain boot.
2. One Step(vcpu, 1000) in trace mode, over gRPC on the unix socket from
   another process, next to the same step on the in-process bridge and to
   an empty call (GetStatus), which is gRPC's own round trip.

Targets (issue 4): save and restore under 1 s, size close to what the guest
touched rather than its RAM.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402
import msgpack  # noqa: E402

from cosim import build, control  # noqa: E402
from cosim import snapshot as snap  # noqa: E402
from cosim.libqflex_bridge import Bridge, QemuConfig  # noqa: E402
from cosim.session import RunSpec, Session  # noqa: E402
from cosim.v1 import control_pb2 as pb  # noqa: E402
from cosim.v1 import control_pb2_grpc as pb_grpc  # noqa: E402

GUEST = "gups-ws16m-n2m"
INSNS = 40_000_000
STEPS = 300


def timed_start(config: QemuConfig, state: dict | None = None) -> float:
    """Seconds from launching QEMU until the plugin waits for its first command."""
    t0 = time.perf_counter()
    with Bridge(config, console=Path(tempfile.mktemp())) as bridge:
        if state is not None:
            bridge.load_plugin_state(state)
        bridge.step(0, 1)
        return time.perf_counter() - t0


def save_restore(memory: str, root: Path) -> dict:
    elf = build.guest_elf(GUEST)
    spec = RunSpec(QemuConfig(kernel=elf, smp=4, memory=memory), max_insns=INSNS,
                   store=snap.Store(root),
                   console=root / f"console-{memory}.txt")
    session = Session(spec)
    seconds: list[float] = []
    real = session.save

    def timed(name: str, force: bool = False) -> snap.Snapshot:
        t0 = time.perf_counter()
        s = real(name, force)
        seconds.append(time.perf_counter() - t0)
        return s

    session.save = timed  # type: ignore[method-assign]
    spec.save = f"bench-{memory}"
    session.run()
    path = root / spec.save
    state = (path / snap.MACHINE_STATE).stat().st_size
    plugin_state = msgpack.unpackb((path / snap.PLUGIN_STATE).read_bytes())
    base = QemuConfig(kernel=elf, smp=4, memory=memory)
    restore = [timed_start(QemuConfig(kernel=elf, smp=4, memory=memory, loadext=path),
                           plugin_state) for _ in range(3)]
    boot = [timed_start(base) for _ in range(3)]
    return {"memory": memory, "save_s": seconds[0], "state_mib": state / 2**20,
            "disk_mib": snap.size_on_disk(path) / 2**20,
            "restore_s": min(restore), "boot_s": min(boot)}


def grpc_step_cost(root: Path) -> tuple[float, float, float]:
    elf = build.guest_elf("spinlock-n100000")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cosim.cli", "run", "--kernel", str(elf), "--smp", "2",
         "--mode", "trace", "--paused", "--snapshot-dir", str(root), "--console",
         str(root / "console-grpc.txt")],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        sim = re.search(r"cosim: (\S+) is paused", line)
        assert sim, line
        info = next(s for s in control.running_sims() if s["id"] == sim.group(1))
        with grpc.insecure_channel(f"unix:{info['socket']}") as ch:
            stub = pb_grpc.ControlStub(ch)
            while stub.GetStatus(pb.GetStatusRequest()).state != pb.Status.PAUSED:
                time.sleep(0.05)
            t0 = time.perf_counter()
            for _ in range(STEPS):
                stub.GetStatus(pb.GetStatusRequest())
            empty = (time.perf_counter() - t0) / STEPS
            t0 = time.perf_counter()
            for k in range(STEPS):
                stub.Step(pb.StepRequest(vcpu=k % 2, n=1000))
            remote = (time.perf_counter() - t0) / STEPS
            stub.Stop(pb.StopRequest())
    finally:
        proc.wait(timeout=60)
    with Bridge(QemuConfig(kernel=elf, smp=2, mode="trace"), console=root / "c2.txt") as bridge:
        t0 = time.perf_counter()
        for k in range(STEPS):
            bridge.step(k % 2, 1000)
        local = (time.perf_counter() - t0) / STEPS
    return remote, local, empty


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="cosim-bench-snap-") as tmp:
        root = Path(tmp)
        rows = [save_restore(m, root) for m in ("256M", "2G")]
        print(f"\nsnapshots of {GUEST}, 4 harts, after {INSNS:,} instructions (fast mode)")
        print(f"{'RAM':>6} {'save s':>8} {'restore s':>10} {'plain boot s':>13} "
              f"{'machine.state MiB':>18} {'on disk MiB':>12} {'disk / RAM':>11}")
        for r in rows:
            ram = int(r["memory"][:-1]) * (1024 if r["memory"].endswith("G") else 1)
            print(f"{r['memory']:>6} {r['save_s']:>8.3f} {r['restore_s']:>10.3f} "
                  f"{r['boot_s']:>13.3f} {r['state_mib']:>18.1f} {r['disk_mib']:>12.1f} "
                  f"{r['disk_mib'] / ram:>11.3f}")
        remote, local, empty = grpc_step_cost(root)
        print(f"\nStep(vcpu, 1000) in trace mode, {STEPS} steps: gRPC {remote * 1e6:.0f} us, "
              f"in-process bridge {local * 1e6:.0f} us, ratio {remote / local:.2f}x; "
              f"an empty GetStatus over gRPC {empty * 1e6:.0f} us")


if __name__ == "__main__":
    main()
