"""The Linux guest image: built from real Debian packages with the real gcc,
reproducible, extensible with --add, and booting under the patched QEMU.

The boots here run QEMU directly (no cosim plugin) with the determinism
flags cosim uses, so they test the image and its /init contract alone:
COSIM-INIT, COSIM-READY, the fw_cfg command channel, COSIM-EXIT, poweroff.
"""

from __future__ import annotations

import gzip
import hashlib
import subprocess
import time
from pathlib import Path

import pytest

from cosim import guest_image, paths
from cosim.errors import CosimError
from cosim.libqflex_bridge import qemu_binary
from cosim.linux_machine import LinuxBoard
from cosim.tiering import DAMO

VERSION = DAMO.partition("==")[2]

BOOT_TIMEOUT = 240  # s; a boot takes 12-25 s of wall time on the 2-core machine


@pytest.fixture(scope="module")
def image() -> guest_image.GuestImage:
    return guest_image.build_image(log=lambda m: None)


@pytest.fixture
def scratch_cache(tmp_path, monkeypatch) -> Path:
    """A fresh COSIM_CACHE that shares the downloaded .debs (no second download)."""
    shared = paths.cache_root() / "downloads" / "guest-debs"
    shared.mkdir(parents=True, exist_ok=True)
    cache = tmp_path / "cache"
    (cache / "downloads").mkdir(parents=True)
    (cache / "downloads" / "guest-debs").symlink_to(shared)
    monkeypatch.setenv("COSIM_CACHE", str(cache))
    return cache


def _static_hello(tmp_path: Path, name: str = "hello", static: bool = True) -> Path:
    src = tmp_path / f"{name}.c"
    src.write_text('#include <stdio.h>\nint main(void){puts("RESULT hello ok=1");return 0;}\n')
    out = tmp_path / name
    subprocess.run(["gcc", "-O2", *(["-static"] if static else []), "-o", out.name, src.name],
                   cwd=tmp_path, check=True)
    return out


def _initrd_listing(initrd: Path) -> list[str]:
    data = gzip.decompress(initrd.read_bytes())
    proc = subprocess.run(["cpio", "-t", "--quiet"], input=data, capture_output=True, check=True)
    return proc.stdout.decode().split()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- building


def test_image_has_kernel_initrd_manifest(image):
    assert image.kernel.stat().st_size > 5 << 20
    m = image.manifest
    assert m["kernel"] == guest_image.KERNEL_VERSION
    assert m["packages"]["busybox-static"] == dict(guest_image.PINNED_PACKAGES)["busybox-static"]
    assert m["inputs_hash"][:12] in image.root.name
    assert image.workloads == ["chmu", "fill", "gups", "hotcold", "nap", "pchase", "stream",
                               "threads", "vmlog"]
    listing = _initrd_listing(image.initrd)
    for f in ("init", "bin/busybox", "sbin/cosim-cmd", "usr/bin/numactl",
              "lib64/ld-linux-x86-64.so.2", "usr/lib/x86_64-linux-gnu/libnuma.so.1",
              "lib/modules/qemu_fw_cfg.ko", "lib/modules/cxl_acpi.ko", "lib/modules/kmem.ko",
              *(f"workloads/{w}" for w in image.workloads)):
        assert f in listing, f
    assert m["initrd_sha256"] == _sha(image.initrd)


def test_second_call_is_cached(image):
    again = guest_image.build_image(log=lambda m: None)
    assert again.root == image.root and again.manifest["created"] == image.manifest["created"]


def test_same_inputs_same_initrd(image, scratch_cache):
    """A build in another cache directory gives byte-identical kernel and initrd."""
    other = guest_image.build_image(log=lambda m: None)
    assert other.root != image.root and other.root.name == image.root.name
    assert _sha(other.initrd) == _sha(image.initrd)
    assert _sha(other.kernel) == _sha(image.kernel)
    rebuilt = guest_image.build_image(force=True, log=lambda m: None)
    assert _sha(rebuilt.initrd) == _sha(image.initrd)


def test_add_static_binary_and_script(tmp_path, scratch_cache):
    hello = _static_hello(tmp_path)
    script = tmp_path / "run-twice.sh"
    script.write_text("#!/bin/sh\n/workloads/hello\n/workloads/hello\n")
    img = guest_image.build_image([hello, script], log=lambda m: None)
    assert img.workloads[-2:] == ["hello", "run-twice.sh"]
    assert [a["name"] for a in img.manifest["added"]] == ["hello", "run-twice.sh"]
    listing = _initrd_listing(img.initrd)
    assert "workloads/hello" in listing and "workloads/run-twice.sh" in listing
    # different inputs, different slot
    assert img.root != guest_image.image_dir()


@pytest.mark.parametrize("case", ["dynamic", "missing", "text", "interpreter", "builtin"])
def test_add_rejects(tmp_path, scratch_cache, case):
    if case == "dynamic":
        bad, words = _static_hello(tmp_path, "dyn", static=False), ("dynamically linked", "static")
    elif case == "missing":
        bad, words = tmp_path / "nope", ("no such file",)
    elif case == "text":
        bad = tmp_path / "notes.txt"
        bad.write_text("hello\n")
        words = ("not an ELF file or #! script",)
    elif case == "interpreter":
        bad = tmp_path / "x.py"
        bad.write_text("#!/usr/bin/python3\nprint(1)\n")
        words = ("/usr/bin/python3", "/bin/sh")
    else:
        bad = tmp_path / "gups"
        bad.write_text("#!/bin/sh\n")
        words = ("built-in",)
    with pytest.raises(CosimError) as e:
        guest_image.build_image([bad], log=lambda m: None)
    msg = str(e.value)
    assert "\n" not in msg and str(bad) in msg
    for w in words:
        assert w in msg
    assert not list(scratch_cache.glob("guests/linux-*"))


def test_compile_error_shows_gcc_tail(tmp_path, monkeypatch, scratch_cache):
    wl = tmp_path / "workloads"
    wl.mkdir()
    for p in guest_image.WORKLOAD_DIR.iterdir():
        (wl / p.name).write_bytes(p.read_bytes())
    (wl / "broken.c").write_text("int main(void) { return undeclared_thing; }\n")
    monkeypatch.setattr(guest_image, "WORKLOAD_DIR", wl)
    with pytest.raises(CosimError) as e:
        guest_image.build_image(log=lambda m: None)
    assert "broken.c" in str(e.value) and "undeclared_thing" in str(e.value)
    assert not list(scratch_cache.glob("guests/*"))  # nothing half-made, no temp dir left


def test_firmware_dir():
    fw = guest_image.firmware_dir(log=lambda m: None)
    for f in ("bios-256k.bin", *guest_image.OPTION_ROMS):
        assert (fw / f).stat().st_size > 0
    assert (fw / "bios-256k.bin").read_bytes() == guest_image.SEABIOS.read_bytes()


# ---------------------------------------------------------------- booting


def _qemu_cmd(image, fw: Path, cmd_file: Path, console: Path, cxl: bool = False) -> list[str]:
    """cosim's q35 machine (LinuxBoard) with the determinism flags, without the plugin."""
    board = LinuxBoard(kernel=image.kernel, initrd=image.initrd, firmware=fw,
                       cxl_bytes=(256 << 20) if cxl else 0)
    return [str(qemu_binary("x86_64")), *board.qemu_args(2, cmd_file), "-smp", "2",
            "-accel", "tcg,thread=single,quantum=1000", "-icount", "shift=0,sleep=off,align=off",
            "-rtc", "clock=vm,base=2025-01-01T00:00:00", "-display", "none", "-nodefaults",
            "-seed", "1", "-serial", f"file:{console}"]


def _write_cmd(path: Path, text: str) -> LinuxBoard:
    """The command channel file of a launch; the board knows its nonce."""
    board = LinuxBoard(Path(), Path(), Path(), command=text)
    path.write_bytes(board.command_bytes())
    return board


def _boot(image, tmp_path: Path, command: str, cxl: bool = False) -> tuple[int, str, float, LinuxBoard]:
    """Boot to poweroff; returns (QEMU exit code, console text, seconds to COSIM-READY, board)."""
    fw = guest_image.firmware_dir(log=lambda m: None)
    console = tmp_path / "console.txt"
    board = _write_cmd(tmp_path / "cmd", command)
    ready = f"\n{board.ready_marker}\n"
    cmd = _qemu_cmd(image, fw, tmp_path / "cmd", console, cxl)
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    ready_at = None
    try:
        while proc.poll() is None and time.monotonic() - start < BOOT_TIMEOUT:
            if ready_at is None and console.exists() and ready in console.read_text(errors="replace"):
                ready_at = time.monotonic() - start
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    text = console.read_text(errors="replace") if console.exists() else ""
    assert proc.returncode is not None
    if ready_at is None and ready in text:
        ready_at = time.monotonic() - start
    return proc.returncode, text + out, ready_at or -1.0, board


def _lines(text: str) -> list[str]:
    return text.splitlines()


def test_boot_runs_command_and_powers_off(image, tmp_path):
    """The markers carry the launch's nonce; marker-like output of the command is not taken."""
    forged = "echo COSIM-EXIT 5; echo COSIM-EXIT 0123456789abcdef 6"
    rc, text, ready, board = _boot(image, tmp_path, f"/workloads/gups -n 1000 -s 1M; {forged}; exit 3")
    lines = _lines(text)
    assert rc == 0, text[-2000:]
    assert len(board.nonce) == 16
    assert lines.index(board.ready_marker) > next(i for i, l in enumerate(lines) if l.startswith("COSIM-INIT"))
    assert any(l.startswith("NUMA: available: 2 nodes") for l in lines)
    assert any(l.startswith("TIER: memory_tier") for l in lines)
    results = [l for l in lines if l.startswith("RESULT gups ")]
    assert len(results) == 1 and "updates=1000 " in results[0] and "checksum=0x" in results[0]
    exit_line = f"COSIM-EXIT {board.nonce} 3"
    assert exit_line in lines and "COSIM-EXIT 5" in lines and "COSIM-EXIT 0123456789abcdef 6" in lines
    assert lines.index(exit_line) > lines.index(results[0])
    assert board.exit_code(text) == 3
    print(f"boot to COSIM-READY: {ready:.1f} s wall")


def test_idle_keeps_polling(image, tmp_path):
    """With 'idle' the guest waits at the channel: no exit, QEMU still running."""
    fw = guest_image.firmware_dir(log=lambda m: None)
    console = tmp_path / "console.txt"
    board = _write_cmd(tmp_path / "cmd", "idle")
    cmd = _qemu_cmd(image, fw, tmp_path / "cmd", console)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        start = time.monotonic()
        while time.monotonic() - start < BOOT_TIMEOUT:
            if console.exists() and f"\n{board.ready_marker}\n" in console.read_text(errors="replace"):
                break
            assert proc.poll() is None
            time.sleep(0.2)
        else:
            pytest.fail("no COSIM-READY")
        time.sleep(3)
        assert proc.poll() is None
        text = console.read_text(errors="replace")
        assert "COSIM-EXIT" not in text and "COSIM-NOCMD" not in text
    finally:
        proc.kill()
        proc.wait()


def test_cxl_region_becomes_numa_node(image, tmp_path):
    rc, text, _, board = _boot(image, tmp_path, "numactl --membind=2 -- /workloads/gups -n 1000 -s 1M", cxl=True)
    lines = _lines(text)
    assert rc == 0, text[-2000:]
    assert "COSIM-CXL node=2 size=268435456" in lines, [l for l in lines if "CXL" in l]
    assert any(l.startswith("NUMA: available: 3 nodes") for l in lines)
    assert any(l.startswith("TIER: ") and l.endswith("nodes=2") for l in lines)
    assert any(l.startswith("RESULT gups ") for l in lines) and board.exit_code(text) == 0


# ---------------------------------------------------------------- package pins


def test_a_pin_the_archive_no_longer_serves_falls_back_with_a_notice(tmp_path, monkeypatch):
    """A stale pin (Debian moved on) builds with the archive's version and says so."""
    monkeypatch.setenv("COSIM_CACHE", str(tmp_path))          # nothing cached
    notices: list[str] = []
    version, deb = guest_image._download([("libnuma1", "0.0-gone")], notices.append)["libnuma1"]
    assert version == guest_image._candidate("libnuma1") != "0.0-gone"
    assert deb.is_file() and deb.parent == tmp_path / "downloads" / "guest-debs"
    assert any("libnuma1 0.0-gone (pinned) is no longer in the archive" in n
               and f"using {version}" in n for n in notices), notices


def test_a_deb_that_does_not_match_the_archive_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("COSIM_CACHE", str(tmp_path))
    name = "libnuma1"
    version = guest_image._candidate(name)
    dest = guest_image._downloads_dir()
    dest.mkdir(parents=True)
    (dest / f"{guest_image._deb_name(name, version)}amd64.deb").write_bytes(b"not the .deb")
    with pytest.raises(CosimError, match="does not match the SHA256"):
        guest_image._download([(name, version)], lambda msg: None)


def test_manifests_record_the_versions_used(image):
    assert image.manifest["pinned"] == dict(guest_image.PINNED_PACKAGES)
    assert set(image.manifest["packages"]) == set(image.manifest["pinned"])


# ---------------------------------------------------------------- Debian packages


def test_a_debian_package_comes_with_its_dependencies_and_runs(tmp_path):
    """--package numactl: apt's resolver adds libnuma1 and libc6; memhog (dynamically linked,
    from the package unchanged) is a workload and runs in the booted guest."""
    img = guest_image.build_image(packages=["numactl"], log=lambda m: None)
    installed = img.manifest["extra_packages"]["installed"]
    assert {"numactl", "libnuma1", "libc6"} <= set(installed), installed
    assert img.manifest["extra_packages"]["requested"] == ["numactl"]
    assert {"memhog", "numastat"} <= set(img.workloads)
    listing = _initrd_listing(img.initrd)
    assert "usr/bin/memhog" in listing and "workloads/memhog" in listing
    assert not any(e.startswith("usr/share/doc/") for e in listing), "documentation is left out"
    assert img.root != guest_image.image_dir()
    rc, text, _, board = _boot(img, tmp_path, "/workloads/memhog -r2 8M && echo MEMHOG-OK")
    assert rc == 0 and board.exit_code(text) == 0, text[-2000:]
    assert "MEMHOG-OK" in _lines(text)


def test_a_package_debian_does_not_have_is_one_line(tmp_path, scratch_cache):
    from conftest import cosim
    proc = cosim("guest", "build", "--package", "no-such-package-xyz")
    assert proc.returncode == 2
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert len(lines) == 1 and "no-such-package-xyz" in lines[0] and "Debian" in lines[0], lines
    proc = cosim("boot", "--save", "pkg", "--snapshot-dir", str(tmp_path / "snaps"),
                 "--package", "no-such-package-xyz")
    assert proc.returncode == 2 and "no-such-package-xyz" in proc.stderr
    assert not (tmp_path / "snaps" / "pkg").exists()
    assert not list(scratch_cache.glob("guests/linux-*"))
    with pytest.raises(CosimError, match="not a Debian package name"):
        guest_image.resolve_packages(["Bad_Name"])


def test_a_pypi_package_goes_into_the_guests_python(tmp_path):
    """--pip damo: python3 comes with it (apt's resolver), the wheel is unpacked into Debian's
    Python path and damo's command runs in the booted guest."""
    img = guest_image.build_image(pip=[DAMO], log=lambda m: None)
    assert "python3" in img.manifest["extra_packages"]["requested"]
    assert [w["wheel"] for w in img.manifest["pip"]] == [f"damo-{VERSION}-py3-none-any.whl"]
    assert {"damo", "python3"} <= set(img.workloads)
    listing = _initrd_listing(img.initrd)
    assert f"{guest_image.PIP_TARGET}/damo/damo.py" in listing and "usr/bin/damo" in listing
    rc, text, _, board = _boot(img, tmp_path, "/workloads/damo version")
    assert rc == 0 and board.exit_code(text) == 0, text[-2000:]
    assert VERSION in _lines(text)
    # compiled on the host, so that python3 in the guest does not compile them on every run
    assert f"{guest_image.PIP_TARGET}/damo/__pycache__/damo.cpython-311.pyc" in listing
    assert any(p.startswith("usr/lib/python3.11/__pycache__/") for p in listing)


def test_a_pypi_package_without_a_pure_python_wheel_is_one_line(scratch_cache):
    with pytest.raises(CosimError) as e:
        guest_image.build_image(pip=["no-such-pypi-package-xyz"], log=lambda m: None)
    assert "\n" not in str(e.value) and "no-such-pypi-package-xyz" in str(e.value)
    with pytest.raises(CosimError, match="PyPI name"):
        guest_image.download_wheels(["bad name"])
    assert not list(scratch_cache.glob("guests/linux-*"))
