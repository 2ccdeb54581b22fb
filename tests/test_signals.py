"""SIGINT and SIGTERM in the middle of a run or a boot: a short message, the signal's
exit status, and nothing left behind (QEMU, run directory, control socket, snapshot
temporaries)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, qemu_pids

COMMANDS = {
    "run": ["run", "--kernel", "stream-n1m-r8", "--smp", "4", "--timing", "--save", "s"],
    "boot": ["boot", "--save", "b"],
}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_signal_mid_run_leaves_nothing(tmp_path: Path, command: str, sig: signal.Signals) -> None:
    tmp, runtime, snaps = tmp_path / "tmp", tmp_path / "rt", tmp_path / "snaps"
    tmp.mkdir()
    before = qemu_pids()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cosim.cli", *COMMANDS[command], "--snapshot-dir", str(snaps)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={"PATH": "/usr/bin:/bin", "TMPDIR": str(tmp), "XDG_RUNTIME_DIR": str(runtime),
             "HOME": str(Path.home())})
    # mid-run: QEMU is up (its QMP socket exists), then a little later
    deadline = time.monotonic() + 60
    while not list(tmp.glob("cosim-run-*/qmp.sock")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.05)
    time.sleep(1.0)
    assert proc.poll() is None, "the command ended before the signal"
    proc.send_signal(sig)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 128 + sig, err
    assert err.strip().splitlines()[-1] == \
        ("cosim: interrupted" if sig == signal.SIGINT else "cosim: terminated")
    assert list(tmp.iterdir()) == []
    assert not (runtime / "cosim").exists() or list((runtime / "cosim").iterdir()) == []
    assert not snaps.exists() or [p.name for p in snaps.iterdir()
                                  if not p.name.endswith(".boot.log")] == []
    assert qemu_pids() - before == set()


# A run whose cleanup hangs after the signal (a stand-in for QEMU or a library
# caught mid-call): the watchdog of cosim.interrupts must still end it, kill the
# real QEMU and remove the run directory.
HUNG_CLEANUP = """
import sys, time
from cosim import interrupts
from cosim.libqflex_bridge import Bridge, QemuConfig
from cosim import build
interrupts.CLEANUP_GRACE_S = float(sys.argv[1])
interrupts.install()
bridge = Bridge(QemuConfig(kernel=build.guest_elf("spinlock"), smp=2, mode="fast")).start()
print(bridge.pid, flush=True)
try:
    while True:
        bridge.rr(1000)
finally:
    time.sleep(3600)        # the cleanup that never finishes
"""


@pytest.mark.parametrize("second_signal", [False, True], ids=["grace", "second-signal"])
def test_a_hung_cleanup_is_cut_short(tmp_path: Path, second_signal: bool) -> None:
    before = qemu_pids()
    grace = 3600.0 if second_signal else 2.0
    proc = subprocess.Popen([sys.executable, "-c", HUNG_CLEANUP, str(grace)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={"PATH": "/usr/bin:/bin", "TMPDIR": str(tmp_path),
                                 "HOME": str(Path.home())})
    qemu = int(proc.stdout.readline())
    assert qemu in qemu_pids() - before
    proc.send_signal(signal.SIGTERM)
    if second_signal:
        time.sleep(1.0)
        assert proc.poll() is None, "the cleanup was meant to hang"
        proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 128 + signal.SIGTERM, err
    why = "a second signal arrived" if second_signal else "cleanup did not finish within 2 s"
    assert f"cosim: {why}; stacks of all threads follow" in err
    assert 'File "<string>", line' in err       # the stack dump shows where it hung
    assert err.strip().splitlines()[-1] == "cosim: terminated"
    assert list(tmp_path.iterdir()) == []       # the run directory went with QEMU
    assert qemu_pids() - before == set()
