"""Shared fixtures: every test here runs the real patched QEMU and plugin.

The build must exist (./setup.sh or `cosim build`); a missing build fails
the session with the command that fixes it rather than skipping silently.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from cosim import build, paths
from cosim.libqflex_bridge import Bridge, QemuConfig, plugin_path, qemu_binary

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def built() -> None:
    """Fail early, and clearly, if QEMU, the plugin or the guests are missing."""
    qemu_binary()
    plugin_path()
    build.ensure_guests()


def guest(name: str) -> Path:
    """A built-in guest ELF (parameterised names are built on demand)."""
    return build.guest_elf(name)


def cosim(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the cosim CLI as a user would."""
    return subprocess.run([sys.executable, "-m", "cosim.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, **(env or {})})


def cosim_json(*args: str) -> dict:
    proc = cosim("run", "--json", *args)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def open_bridge(kernel: str, smp: int = 4, quantum: int = 1000, mode: str = "trace") -> Bridge:
    return Bridge(QemuConfig(kernel=guest(kernel), smp=smp, quantum=quantum, mode=mode))


def qemu_pids() -> set[int]:
    """PIDs of running patched-QEMU processes (to prove none is left behind)."""
    pattern = f"^{paths.cache_root()}/[^ ]*/build/qemu-system-"
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
    return {int(p) for p in out.stdout.split()}


#: a Linux boot to COSIM-READY takes 20-40 s here; workloads under --timing a few each
LINUX_TIMEOUT = 900


def linux_boot(root: Path, name: str, *extra: str) -> str:
    """``cosim boot --save NAME`` into ``root``; returns what it printed."""
    proc = cosim("boot", "--save", name, "--snapshot-dir", str(root), *extra,
                 timeout=LINUX_TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.fixture(scope="session")
def linux_plain(tmp_path_factory) -> tuple[Path, str]:
    """One plain two-node Linux boot (``boot_done``) shared by every test module."""
    root = tmp_path_factory.mktemp("linux-snapshots")
    return root, linux_boot(root, "boot_done")


@pytest.fixture(scope="session")
def linux_cxl(tmp_path_factory) -> tuple[Path, str]:
    """One Linux boot with a cxl-type3 device (``boot_cxl``, ``cosim boot --cxl``)."""
    root = tmp_path_factory.mktemp("linux-cxl-snapshots")
    return root, linux_boot(root, "boot_cxl", "--cxl")


@pytest.fixture(scope="session")
def linux_damo(tmp_path_factory) -> tuple[Path, str]:
    """One Linux boot with damo in the guest's Python (``boot_done``, ``cosim boot --pip``),
    as ``cosim tiering`` boots it for the damon policy."""
    from cosim.tiering import boot_options
    root = tmp_path_factory.mktemp("linux-damo-snapshots")
    return root, linux_boot(root, "boot_done", *boot_options().split())


def linux_run(root: Path, name: str, *args: str) -> dict:
    """``cosim run --snapshot NAME --json ...``: the summary."""
    proc = cosim("run", "--snapshot", name, "--snapshot-dir", str(root), "--json", *args,
                 timeout=LINUX_TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


@contextlib.contextmanager
def busy_other_core() -> Iterator[None]:
    """A process that keeps the second core busy while the block runs."""
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        hog.kill()
        hog.wait()


@pytest.fixture
def other_core_busy():
    """The second core busy for the test's duration."""
    with busy_other_core():
        yield


@pytest.fixture
def tmpfs(tmp_path: Path):
    """``tmpfs(size)``: a fresh tmpfs of ``size`` (say "1M") that a snapshot can overfill
    (mounting needs root, as CI has; skipped otherwise)."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        mnt = tmp_path / f"tmpfs-{len(mounted)}"
        mnt.mkdir()
        if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}",
                                                "tmpfs", str(mnt)]).returncode != 0:
            pytest.skip("mounting a tmpfs needs root")
        mounted.append(mnt)
        return mnt
    yield mount
    for mnt in mounted:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


@pytest.fixture
def tiny_disk(tmpfs) -> Path:
    """A 1 MiB tmpfs: smaller than any snapshot."""
    return tmpfs("1M")
