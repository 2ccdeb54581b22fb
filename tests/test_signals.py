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
