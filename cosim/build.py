"""Build what cosim runs: patched QEMU (cached), the TCG plugin, the guests.

QEMU comes from Debian trixie's ``qemu`` source package (QEMU 10.0.x), used
as extracted (its ``skip-unpack-edk2-blobs.patch`` lets the blob-stripped
tarball build), with ``qemu_patches/`` applied on top. Every step is skipped
when its product is already there, so ``cosim build`` on a built tree takes
a second.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from . import paths
from .errors import CosimError

CONFIGURE_FLAGS = (
    "--target-list=" + ",".join(paths.QEMU_TARGETS),
    "--enable-plugins",
    "--disable-docs",
    "--disable-werror",
    "--disable-install-blobs",
    "--disable-download",
    # no UI: cosim guests talk through serial files and sockets
    "--disable-sdl", "--disable-gtk", "--disable-vnc", "--disable-opengl",
    "--disable-spice", "--disable-curses", "--disable-dbus-display",
    "--disable-gio",
)


def log(msg: str) -> None:
    print(f"[cosim build] {msg}", flush=True)


def _run(cmd: list[str], cwd: Path | None = None, logfile: Path | None = None) -> None:
    """Run a build step; on failure raise with the tail of its output."""
    if logfile is None:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
        out = proc.stdout + proc.stderr
    else:
        with open(logfile, "w") as f:
            proc = subprocess.run(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, text=True)
        out = logfile.read_text(errors="replace")
    if proc.returncode != 0:
        tail = " | ".join(out.strip().splitlines()[-5:])
        raise CosimError(f"{' '.join(cmd[:3])} failed (exit {proc.returncode}): {tail}")


def _download_source(dest: Path) -> Path:
    """Fetch the Debian source package into ``dest``; return its .dsc."""
    dest.mkdir(parents=True, exist_ok=True)
    want = paths.upstream_version(paths.QEMU_DEBIAN_VERSION)
    for dsc in dest.glob(f"qemu_{want}*.dsc"):
        return dsc
    if not shutil.which("apt-get"):
        raise CosimError("apt-get not found: cosim builds QEMU from Debian's source package")
    log(f"downloading Debian source qemu={paths.QEMU_DEBIAN_VERSION}")
    proc = subprocess.run(
        ["apt-get", "source", "--download-only", f"qemu={paths.QEMU_DEBIAN_VERSION}"],
        cwd=dest, capture_output=True, text=True,
    )
    if proc.returncode != 0:
        raise CosimError(
            f"cannot download the Debian source of qemu={paths.QEMU_DEBIAN_VERSION} "
            f"({proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else 'apt-get failed'}); "
            "run ./setup.sh, which adds the trixie deb-src entry and runs apt-get update"
        )
    found = sorted(dest.glob(f"qemu_{want}*.dsc"))
    if not found:
        raise CosimError(f"apt-get source left no qemu_{want}*.dsc in {dest}")
    return found[0]


def ensure_qemu(jobs: int | None = None) -> paths.QemuBuild:
    """Build patched QEMU into its cache slot unless it is already there."""
    qb = paths.qemu_build()
    if qb.is_built():
        log(f"QEMU up to date: {qb.root}")
        return qb
    patches = sorted(paths.PATCH_DIR.glob("*.patch"))
    dsc = _download_source(paths.cache_root() / "downloads")
    if qb.root.exists():
        shutil.rmtree(qb.root)
    qb.root.mkdir(parents=True)
    log(f"extracting {dsc.name}")
    _run(["dpkg-source", "--no-check", "-x", str(dsc), str(qb.src)])
    for p in patches:
        log(f"applying {p.name}")
        _run(["patch", "-p1", "--forward", "-i", str(p)], cwd=qb.src)
    qb.build.mkdir()
    log("configuring (" + ", ".join(paths.QEMU_TARGETS) + ")")
    venv_bin = str(Path(sys.executable).parent)
    env_path = venv_bin + os.pathsep + os.environ.get("PATH", "")
    os.environ["PATH"] = env_path  # configure looks for meson next to python
    _run([str(qb.src / "configure"), f"--python={sys.executable}", *CONFIGURE_FLAGS],
         cwd=qb.build, logfile=qb.root / "configure.log")
    targets = [qb.binary(t.split("-")[0]).name for t in paths.QEMU_TARGETS]
    _ninja(qb, targets, jobs or os.cpu_count() or 2)
    qb.stamp.write_text(
        f"debian_version={paths.QEMU_DEBIAN_VERSION}\npatch_hash={paths.patch_hash()}\n"
        f"patches={','.join(p.name for p in patches)}\nbuilt={time.strftime('%Y-%m-%dT%H:%M:%S')}\n"
    )
    log(f"QEMU built: {qb.root}")
    return qb


def _ninja(qb: paths.QemuBuild, targets: list[str], jobs: int) -> None:
    """Run ninja, printing a progress line every 30 s rather than every file."""
    logfile = qb.root / "build.log"
    log(f"compiling {' '.join(targets)} with {jobs} jobs (about 15 min on 2 cores; log: {logfile})")
    step = re.compile(r"^\[(\d+)/(\d+)\]")
    last = 0.0
    with open(logfile, "w") as f:
        proc = subprocess.Popen(["ninja", "-j", str(jobs), *targets], cwd=qb.build,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            f.write(line)
            m = step.match(line)
            if m and time.monotonic() - last > 30:
                last = time.monotonic()
                log(f"  {m.group(1)}/{m.group(2)} build steps")
        proc.wait()
    if proc.returncode != 0:
        tail = " | ".join(logfile.read_text(errors="replace").strip().splitlines()[-5:])
        raise CosimError(f"QEMU build failed (exit {proc.returncode}); see {logfile}: {tail}")


def _compile_plugin(qb: paths.QemuBuild, source: Path, out: Path, libs: list[str]) -> None:
    """Compile one TCG plugin against the patched QEMU's plugin header."""
    out.parent.mkdir(parents=True, exist_ok=True)
    glib = subprocess.run(["pkg-config", "--cflags", "glib-2.0"], capture_output=True, text=True)
    if glib.returncode != 0:
        raise CosimError("pkg-config cannot find glib-2.0: install libglib2.0-dev (./setup.sh does)")
    log(f"compiling plugin {out.name}")
    tmp = out.with_name(f".tmp-{os.getpid()}-{out.name}")   # a killed compile leaves no library
    _run(["gcc", "-O2", "-g", "-Wall", "-Wextra", "-Wno-unused-parameter", "-shared", "-fPIC",
          f"-I{qb.plugin_header_dir}", *glib.stdout.split(), "-o", str(tmp), str(source), *libs])
    tmp.replace(out)


def ensure_plugin(qb: paths.QemuBuild) -> Path:
    """The cosim TCG plugin (its file name carries its source's hash)."""
    out = paths.plugin_library()
    if not out.is_file():
        _compile_plugin(qb, paths.PLUGIN_SOURCE, out, ["-lmsgpackc"])
    return out


def ensure_contrib_plugin(qb: paths.QemuBuild, name: str) -> Path:
    """One of QEMU's own contrib plugins (e.g. ``cache``), for side-by-side benchmarks.

    Compiled from the patched source tree into the build's cache slot, so
    it always matches the QEMU it is loaded into.
    """
    source = qb.src / "contrib" / "plugins" / f"{name}.c"
    if not source.is_file():
        raise CosimError(f"QEMU has no contrib plugin {name!r} ({source} is missing)")
    out = qb.root / "contrib" / f"lib{name}.so"
    if not out.is_file():
        _compile_plugin(qb, source, out, [])
    return out


def ensure_guests() -> None:
    """Build the default bare-metal riscv64 guests (make skips what is current)."""
    if not shutil.which("riscv64-unknown-elf-gcc"):
        raise CosimError("riscv64-unknown-elf-gcc not found: apt-get install gcc-riscv64-unknown-elf")
    _run(["make", "-C", str(paths.GUEST_DIR), f"-j{os.cpu_count() or 2}"])


def guest_elf(name: str) -> Path:
    """Path of a guest ELF, (re)built by make when missing or older than its sources."""
    path = paths.GUEST_BUILD / f"{name}.elf"
    _run(["make", "-s", "-C", str(paths.GUEST_DIR), f"build/{name}.elf"])
    return path


#: small detailed runs that together call every kernel with the types real runs use
_KERNEL_WARMUPS = ((1, "round"), (2, "round"), (2, "exact"))


def ensure_kernels() -> None:
    """Compile the timing model's numba kernels once per checkout of their sources.

    Compiled on first use otherwise, which would make a user's first
    ``--timing`` run (or a test) sit silent for minutes: numba inlines the
    whole hierarchy into the per-turn kernel, which is what makes it fast
    and its compile slow. Small real runs compile exactly the signatures
    real runs need; the result lands in ``timing.kernel_cache_dir()``.
    """
    from .timing import kernel_cache_dir, kernels_compiled_marker

    done = kernels_compiled_marker()
    if done.is_file():
        return
    log(f"compiling the timing kernels into {kernel_cache_dir()} "
        "(once per checkout of these sources; about 3 minutes on 2 cores)")
    started = time.monotonic()
    for smp, order in _KERNEL_WARMUPS:
        _run([sys.executable, "-m", "cosim.cli", "run", "--kernel", "spinlock-n200", "--smp",
              str(smp), "--timing", "--order", order, "--max-insns", "200000"], cwd=paths.REPO)
    done.write_text(f"{time.monotonic() - started:.0f} s\n")
    log(f"timing kernels compiled in {time.monotonic() - started:.0f} s")


def build_all() -> None:
    """Everything ``cosim run`` needs, each step cached."""
    qb = ensure_qemu()
    ensure_plugin(qb)
    ensure_guests()
    ensure_kernels()
    log("all built")
