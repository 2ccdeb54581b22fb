"""The x86_64 Linux guest: a Debian kernel plus a small initramfs, built once.

Why this shape:

* **Kernel from Debian, not built here.** bookworm-backports' 6.12 kernel has
  what cosim needs (ACPI HMAT, memory tiers, memory hotplug, CXL regions,
  DAX/kmem) built in or as modules, and building a kernel would cost far more
  than the 15-minute QEMU build. The .deb is unpacked, never installed.
* **Exact package versions are pinned** (``PINNED_PACKAGES``): a new upload
  would change the guest's instruction stream and so every cycle count.
  deb.debian.org keeps only the newest version of each package, so a pin
  goes stale when Debian publishes an update; the downloaded .debs are kept
  in ``cache_root()/downloads/guest-debs`` so a machine that has them keeps
  building, and a fresh machine falls back to the archive's current
  version with a notice (cycle counts may then differ). The image manifest
  and every snapshot's record the versions used; each .deb is checked
  against the SHA256 of the archive's index where it lists the version.
  (The kernel's package name carries its ABI version, so a new kernel ABI
  still needs ``KERNEL_VERSION`` updated by hand.)
* **initramfs only, no disk**: busybox (static) as the shell and tools,
  numactl with its few shared libraries, the CXL/DAX/fw_cfg modules,
  ``/init``, the ``cosim-cmd`` helper and static workloads in
  ``/workloads``.
* **Reproducible archive**: GNU ``cpio -o -H newc --reproducible -R 0:0``
  over a sorted list after every mtime is set to 0, then gzip with mtime 0
  (Python's gzip, no file name in the header). GNU cpio rather than the
  ``libarchive-c`` package because it is one Debian package with no Python
  binding to keep in step, and ``--reproducible`` (renumbered inodes, no
  device numbers) is exactly the property wanted; gzip rather than xz
  because the guest kernel decompresses it under TCG, where gzip costs far
  fewer instructions. Same inputs give the same initrd sha256.
* **Cache slot keyed by the inputs** (``inputs_hash``): pinned packages,
  ``init``, the helper and workload sources, the host gcc and static libc
  versions, the ``--add`` files, ``FORMAT_VERSION`` and this module's own
  source (so a change to the recipe cannot reuse an old image). A slot is built in a
  temporary sibling directory and renamed when complete, so a failed or
  killed build leaves nothing that looks finished; a second call returns the
  existing slot after hashing a few small files (well under a second).

``firmware_dir()`` provides QEMU's ``-L`` directory for q35: the patched
QEMU is built from the blob-stripped Debian source, so SeaBIOS comes from
the ``seabios`` package and the option ROMs that ``-kernel`` boot needs
from a downloaded ``qemu-system-data`` .deb.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable, Sequence

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from . import paths
from .errors import CosimError

Log = Callable[[str], None]

GUEST_SRC = paths.REPO / "guests" / "linux"
INIT_SOURCE = GUEST_SRC / "init"
HELPER_SOURCE = GUEST_SRC / "tools" / "cosim-cmd.c"
WORKLOAD_DIR = GUEST_SRC / "workloads"

#: Bump when the image layout or build recipe changes (it is in the hash).
FORMAT_VERSION = 1

KERNEL_VERSION = "6.12.95+deb12-amd64"
#: Debian packages unpacked into the image, with the exact versions pinned.
PINNED_PACKAGES: tuple[tuple[str, str], ...] = (
    (f"linux-image-{KERNEL_VERSION}", "6.12.95-1~bpo12+1"),   # bookworm-backports
    ("busybox-static", "1:1.35.0-4+deb12u1+b1"),
    ("numactl", "2.0.16-1"),
    ("libnuma1", "2.0.16-1"),
    ("libc6", "2.36-9+deb12u14"),                              # numactl's libc and ld.so
)
#: Modules /init loads (in this order for CXL); none depends on another module.
MODULES = {
    "qemu_fw_cfg": "drivers/firmware/qemu_fw_cfg.ko.xz",  # the command channel in sysfs
    "cxl_acpi": "drivers/cxl/cxl_acpi.ko.xz",
    "cxl_pci": "drivers/cxl/cxl_pci.ko.xz",
    "cxl_mem": "drivers/cxl/cxl_mem.ko.xz",
    "device_dax": "drivers/dax/device_dax.ko.xz",
    "kmem": "drivers/dax/kmem.ko.xz",
    "dax_cxl": "drivers/dax/dax_cxl.ko.xz",
}
#: Interpreters an added script may name in its #! line (busybox provides them).
SCRIPT_INTERPRETERS = ("/bin/sh", "/bin/ash", "/bin/busybox", "/usr/bin/env")

#: qemu-system-data (bookworm) carries the x86 option ROMs for -kernel boot.
QEMU_DATA_PACKAGE = ("qemu-system-data", "1:7.2+dfsg-7+deb12u18")
SEABIOS = Path("/usr/share/seabios/bios-256k.bin")
#: linuxboot_dma.bin: -kernel boot with fw_cfg DMA (q35's default);
#: linuxboot.bin: the same without DMA; kvmvapic.bin: the TPR-access
#: optimisation ROM the APIC loads (without it QEMU prints "rom: file
#: kvmvapic.bin: error ..." on stderr; the guest boots either way).
#: No NIC is configured (-nodefaults, no -nic), so no efi-*/pxe-* ROM is
#: needed and neither is the ipxe-qemu package.
OPTION_ROMS = ("linuxboot_dma.bin", "linuxboot.bin", "kvmvapic.bin")

_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_STALE_TMP_SECONDS = 3600


def _log_default(msg: str) -> None:
    print(f"[cosim guest] {msg}", flush=True)


@dataclass(frozen=True)
class GuestImage:
    """One built guest: ``vmlinuz``, ``initrd.cpio.gz`` and ``manifest.json`` in ``root``."""

    root: Path

    @property
    def kernel(self) -> Path:
        return self.root / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.root / "initrd.cpio.gz"

    @cached_property
    def manifest(self) -> dict:
        """Kernel version, package versions, workloads, added files, inputs hash, created."""
        return json.loads((self.root / "manifest.json").read_text())

    @property
    def workloads(self) -> list[str]:
        """Names runnable as ``/workloads/NAME`` in the guest (built-ins, then added)."""
        return list(self.manifest["workloads"])


# ---------------------------------------------------------------- helpers


def _run(cmd: list[str], cwd: Path | None = None, what: str | None = None,
         stdin: bytes | None = None) -> bytes:
    """Run a tool; on failure raise one line with the tail of its output."""
    try:
        proc = subprocess.run(cmd, cwd=cwd, input=stdin, capture_output=True)
    except FileNotFoundError:
        raise CosimError(f"{cmd[0]} not found: run ./setup.sh (it installs the guest build tools)")
    if proc.returncode != 0:
        out = (proc.stderr or proc.stdout).decode(errors="replace").strip().splitlines()
        tail = " | ".join(out[-5:]) or "no output"
        raise CosimError(f"{what or ' '.join(cmd[:3])} failed (exit {proc.returncode}): {tail}")
    return proc.stdout


def _tool_versions() -> dict[str, str]:
    """The host compiler and static libc that go into the workload binaries."""
    gcc = _run(["gcc", "--version"]).decode().splitlines()[0].strip()
    libc = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "libc6-dev"],
                          capture_output=True, text=True)
    return {"gcc": gcc, "libc6-dev": libc.stdout.strip() if libc.returncode == 0 else "unknown"}


def _sources() -> list[tuple[str, Path]]:
    """Every source file that goes into the image, with a stable name."""
    files = [("init", INIT_SOURCE), ("tools/cosim-cmd.c", HELPER_SOURCE)]
    for p in sorted(WORKLOAD_DIR.iterdir()):
        if p.suffix in (".c", ".h") and p.is_file():
            files.append((f"workloads/{p.name}", p))
    return files


def builtin_workloads() -> list[str]:
    """The workloads built from ``guests/linux/workloads/*.c``."""
    return sorted(p.stem for p in WORKLOAD_DIR.glob("*.c"))


def inputs_hash(add: Sequence[Path] = (), tools: dict[str, str] | None = None,
                packages: Sequence[str] = (),
                resolved: Sequence[tuple[str, str]] = (),
                wheels: Sequence[Path] = ()) -> str:
    """Hash of everything that decides the image's bytes (see the module docstring)."""
    h = hashlib.sha256()

    def put(*parts: str | bytes) -> None:
        for part in parts:
            b = part.encode() if isinstance(part, str) else part
            h.update(len(b).to_bytes(8, "little") + b)

    put("cosim-linux-guest", str(FORMAT_VERSION), Path(__file__).read_bytes())
    for name, version in PINNED_PACKAGES:
        put("pkg", name, version)
    for name, path in _sources():
        put("src", name, path.read_bytes())
    for k, v in sorted((tools or _tool_versions()).items()):
        put("tool", k, v)
    for p in add:
        put("add", p.name, p.read_bytes())
    # the packages asked for and the versions apt chose for them and their dependencies
    for name in sorted(set(packages)):
        put("package", name)
    for name, version in resolved:
        put("dep", name, version)
    for w in wheels:
        put("wheel", w.name, w.read_bytes())
    return h.hexdigest()


def check_added(add: Sequence[Path | str]) -> list[Path]:
    """Validate ``--add`` files: static x86_64 ELF executables or #! scripts."""
    accepted = "a static x86_64 ELF executable or a script starting with #!"
    builtins = set(builtin_workloads())
    seen: dict[str, Path] = {}
    out = []
    for raw in add:
        p = Path(raw)
        if not p.is_file():
            raise CosimError(f"--add {raw}: no such file (expected {accepted})")
        name = p.name
        if not _NAME_OK.match(name):
            raise CosimError(f"--add {raw}: file name {name!r} is not usable as /workloads/{name} "
                             "(letters, digits, '.', '_', '+', '-')")
        if name in builtins:
            raise CosimError(f"--add {raw}: {name!r} is a built-in workload; rename the file")
        if name in seen:
            raise CosimError(f"--add {raw}: a second file named {name!r} (first: {seen[name]})")
        with open(p, "rb") as f:
            head = f.read(256)
            if head.startswith(b"\x7fELF"):
                f.seek(0)
                _check_elf(raw, f, accepted)
            elif head.startswith(b"#!"):
                line = head[2:].split(b"\n", 1)[0].decode(errors="replace").strip()
                interp = line.split()[0] if line.split() else ""
                if interp not in SCRIPT_INTERPRETERS:
                    raise CosimError(f"--add {raw}: script interpreter {interp or '(none)'!r} "
                                     f"is not in the guest (accepted: {', '.join(SCRIPT_INTERPRETERS)})")
            else:
                raise CosimError(f"--add {raw}: not an ELF file or #! script (expected {accepted})")
        seen[name] = p
        out.append(p)
    return out


def _check_elf(raw: Path | str, f, accepted: str) -> None:
    try:
        elf = ELFFile(f)
        cls, machine, etype = elf.elfclass, elf["e_machine"], elf["e_type"]
        interp = any(seg["p_type"] == "PT_INTERP" for seg in elf.iter_segments())
    except ELFError as e:
        raise CosimError(f"--add {raw}: unreadable ELF ({e}); expected {accepted}")
    if cls != 64 or machine != "EM_X86_64":
        raise CosimError(f"--add {raw}: ELF for {machine} ({cls}-bit); expected {accepted}")
    if etype not in ("ET_EXEC", "ET_DYN"):
        raise CosimError(f"--add {raw}: ELF type {etype} is not an executable; expected {accepted}")
    if interp:
        raise CosimError(f"--add {raw}: dynamically linked (has PT_INTERP); expected {accepted} "
                         "(link with gcc -static)")


#: a Debian package name (Debian policy 5.6.1)
_PACKAGE_OK = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
#: what an added package contributes besides its programs and their files: not needed in
#: an initramfs, and a large share of its bytes
_PACKAGE_SKIP = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale",
                 "usr/share/lintian", "usr/share/bug")
#: where an added package's programs are linked from /workloads
_PROGRAM_DIRS = ("usr/bin", "usr/sbin", "bin", "sbin")


#: where the guest's Python 3 finds what --pip adds (Debian's path for packages)
PIP_TARGET = "usr/lib/python3/dist-packages"
#: a requirement --pip takes: a PyPI name, optionally ==VERSION
_PIP_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(==[A-Za-z0-9.+!-]+)?$")
#: the guest's Python (bookworm's python3), for pip's choice of wheels
GUEST_PYTHON = "3.11"


def with_python(packages: Sequence[str], pip: Sequence[str]) -> list[str]:
    """The Debian packages to add: those asked for, and python3 when --pip adds anything."""
    return sorted(set(packages) | ({"python3"} if pip else set()))


def download_wheels(specs: Sequence[str]) -> list[Path]:
    """Pure-Python wheels of ``specs`` and what they need, as pip resolves them for the guest.

    ``pip download`` for Python 3.11 on any platform, wheels only: a package
    with compiled code has no such wheel and is refused (its Debian package,
    with --package, is the way for those). The wheels are kept in the
    download cache; the list is sorted by file name.
    """
    for spec in specs:
        if not _PIP_OK.match(spec):
            raise CosimError(f"--pip {spec!r}: want a PyPI name, optionally ==VERSION "
                             "(e.g. damo or damo==3.4.3)")
    if not specs:
        return []
    dest = paths.cache_root() / "downloads" / "guest-wheels"
    dest.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--disable-pip-version-check",
         "--only-binary=:all:", "--platform", "any", "--python-version", GUEST_PYTHON,
         "--implementation", "py", "-d", str(dest), *sorted(set(specs))],
        capture_output=True, text=True)
    if proc.returncode != 0:
        errs = [ln for ln in proc.stderr.splitlines() if ln.startswith("ERROR:")] \
            or ["pip download failed"]
        raise CosimError(f"--pip {' '.join(specs)}: no pure-Python wheel for the guest's Python "
                         f"{GUEST_PYTHON} ({errs[0][6:].strip()})")
    names = re.findall(r"(?:Saved|File was already downloaded) (\S+\.whl)", proc.stdout)
    return sorted({Path(n) for n in names}, key=lambda w: w.name)


def _add_wheels(root: Path, wheels: list[Path], taken: set[str], log: Log) -> list[str]:
    """Unpack wheels into the guest's Python path; each console script becomes a program
    (``/usr/bin/NAME``, linked as ``/workloads/NAME``). Returns the names linked."""
    if not wheels:
        return []
    log(f"unpacking {', '.join(w.name for w in wheels)}")
    target = root / PIP_TARGET
    target.mkdir(parents=True, exist_ok=True)
    programs = []
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as z:
            z.extractall(target)
            entry = [n for n in z.namelist() if n.endswith(".dist-info/entry_points.txt")]
            text = z.read(entry[0]).decode() if entry else ""
        scripts = text.split("[console_scripts]", 1)[1].split("[", 1)[0] if \
            "[console_scripts]" in text else ""
        for line in scripts.splitlines():
            name, _, ref = (part.strip() for part in line.partition("="))
            module, _, func = ref.partition(":")
            if not (name and module and func) or not _NAME_OK.match(name):
                continue
            script = root / "usr" / "bin" / name
            script.write_text(f"#!/usr/bin/python3\nimport sys\nfrom {module} import {func}\n"
                              f"sys.exit({func}())\n")
            script.chmod(0o755)
            if name not in taken:
                taken.add(name)
                programs.append(name)
                (root / "workloads" / name).symlink_to(f"/usr/bin/{name}")
    return programs


def _byte_compile(root: Path, log: Log) -> None:
    """Compile the guest's Python modules to ``__pycache__`` now, once, on the host.

    Debian compiles them when a package is installed (py3compile); unpacked
    into an initramfs they are not, and every ``python3`` in the guest then
    compiled each module it imported, every time: ``damo`` spent 1.2 G
    instructions per command, which under the timing model is minutes. The
    host's Python is the guest's version (``GUEST_PYTHON``), so its .pyc
    files are the guest's; ``unchecked-hash`` ones carry no time stamp (the
    image stays reproducible) and are used without checking the source.
    """
    libs = sorted(p for p in (root / "usr" / "lib").glob("python3*") if p.is_dir())
    if not libs:
        return
    if f"{sys.version_info[0]}.{sys.version_info[1]}" != GUEST_PYTHON:
        log(f"not byte-compiling the guest's Python: the host's is {sys.version.split()[0]}, "
            f"the guest's {GUEST_PYTHON}")
        return
    log("byte-compiling the guest's Python modules")
    # in a fresh interpreter with a fixed hash seed: set constants are marshalled in hash
    # order, so the .pyc bytes (and the initrd's hash) would otherwise change from build to build
    subprocess.run([sys.executable, "-m", "compileall", "-q", "-q", "-j", "1",
                    "--invalidation-mode", "unchecked-hash", "-s", str(root), "-p", "/",
                    *map(str, libs)],
                   env={**os.environ, "PYTHONHASHSEED": "0"}, capture_output=True)


def resolve_packages(names: Sequence[str]) -> list[tuple[str, str]]:
    """(name, version) of every package ``names`` needs on an empty system, by apt's resolver.

    ``apt-get install --simulate`` against an empty dpkg status, without
    recommends: the dependency closure and the versions apt would install
    from the host's package lists (the same ones the pinned packages come
    from), sorted by name.
    """
    for name in names:
        if not _PACKAGE_OK.match(name):
            raise CosimError(f"--package {name!r}: not a Debian package name (lower-case letters, "
                             "digits, '+', '-', '.')")
    if not names:
        return []
    with tempfile.NamedTemporaryFile(prefix="cosim-empty-status-") as empty:
        proc = subprocess.run(
            ["apt-get", "install", "--simulate", "-o", f"Dir::State::status={empty.name}",
             "-o", "APT::Install-Recommends=false", "-o", "Debug::NoLocking=1", "--",
             *sorted(set(names))], capture_output=True, text=True)
    if proc.returncode != 0:
        missing = re.search(r"Unable to locate package (\S+)", proc.stderr)
        if missing:
            raise CosimError(f"--package {missing.group(1)}: Debian has no such package in the "
                             "host's package lists (apt-cache search NAME finds similar ones; "
                             "./setup.sh runs apt-get update)")
        errs = [ln for ln in proc.stderr.splitlines() if ln.startswith("E:")] or ["apt-get failed"]
        raise CosimError(f"--package {' '.join(names)}: apt cannot resolve it: {errs[-1][3:].strip()}")
    return sorted(set(re.findall(r"^Inst (\S+) \((\S+) ", proc.stdout, re.M)))


def _deb_name(name: str, version: str) -> str:
    """File name apt-get download gives: the epoch colon is URL-quoted."""
    return f"{name}_{version.replace(':', '%3a')}_"


def _downloads_dir() -> Path:
    return paths.cache_root() / "downloads" / "guest-debs"


def _download(pkgs: Sequence[tuple[str, str]], log: Log) -> dict[str, tuple[str, Path]]:
    """Name -> (version, .deb) of each package: the pinned version, else the archive's.

    The pinned version is preferred (cached, or downloaded with apt-get).
    When the archive no longer serves it and no cached copy exists, the
    archive's current version is taken with a notice: the build goes on,
    and the image's manifest (and so every snapshot's) records what was
    used. Every .deb, cached or new, is checked against the SHA256 of the
    archive's index when the index still lists that version.
    """
    dest = _downloads_dir()
    dest.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, pinned in pkgs:
        version = pinned
        deb = _cached_deb(dest, name, pinned) or _apt_download(dest, name, pinned, log)
        if deb is None:
            current = _candidate(name)
            if current is None or current == pinned:
                raise CosimError(f"cannot download guest package {name} {pinned} and the "
                                 "archive offers no other version; run ./setup.sh (it adds "
                                 "bookworm-backports and runs apt-get update)")
            log(f"notice: {name} {pinned} (pinned) is no longer in the archive; using "
                f"{current}: the image, and the cycle counts of Linux runs, may differ from "
                "one built with the pin (update PINNED_PACKAGES in cosim/guest_image.py)")
            version = current
            deb = _cached_deb(dest, name, current) or _apt_download(dest, name, current, log)
            if deb is None:
                raise CosimError(f"cannot download guest package {name} {current} (the "
                                 "archive's current version); run ./setup.sh")
        _verify_deb(name, version, deb)
        out[name] = (version, deb)
    return out


def _cached_deb(dest: Path, name: str, version: str) -> Path | None:
    hits = sorted(dest.glob(_deb_name(name, version) + "*.deb"))
    return hits[0] if hits else None


def _apt_download(dest: Path, name: str, version: str, log: Log) -> Path | None:
    """``apt-get download NAME=VERSION`` into ``dest`` (apt checks the index's hash);
    the .deb, or None when apt cannot (the version is gone, or no network)."""
    log(f"downloading {name}={version}")
    proc = subprocess.run(["apt-get", "download", f"{name}={version}"], cwd=dest,
                          capture_output=True, text=True)
    return _cached_deb(dest, name, version) if proc.returncode == 0 else None


def _candidate(name: str) -> str | None:
    """The version of ``name`` apt would install now (the archive's), or None."""
    pol = subprocess.run(["apt-cache", "policy", name], capture_output=True, text=True)
    m = re.search(r"Candidate:\s*(\S+)", pol.stdout)
    return m.group(1) if m and m.group(1) != "(none)" else None


def _verify_deb(name: str, version: str, deb: Path) -> None:
    """The .deb's SHA256 against the archive index's, where the index lists the version."""
    show = subprocess.run(["apt-cache", "show", f"{name}={version}"], capture_output=True,
                          text=True)
    sums = re.findall(r"^SHA256:\s*([0-9a-f]{64})", show.stdout, re.M)
    if sums and _sha256(deb) not in sums:
        raise CosimError(f"{deb} does not match the SHA256 the archive lists for {name} "
                         f"{version}; delete it and build again")


def _extract(deb: Path, dest: Path, members: Sequence[str] = ()) -> None:
    """Unpack a .deb (all of it, or only ``members``) without installing it."""
    dest.mkdir(parents=True, exist_ok=True)
    if not members:
        _run(["dpkg-deb", "-x", str(deb), str(dest)], what=f"dpkg-deb -x {deb.name}")
        return
    tar = _run(["dpkg-deb", "--fsys-tarfile", str(deb)], what=f"dpkg-deb --fsys-tarfile {deb.name}")
    _run(["tar", "-x", "-C", str(dest), *members], stdin=tar, what=f"tar -x from {deb.name}")


def _needed(elf_path: Path) -> list[str]:
    with open(elf_path, "rb") as f:
        dyn = ELFFile(f).get_section_by_name(".dynamic")
        return [t.needed for t in dyn.iter_tags() if t.entry.d_tag == "DT_NEEDED"] if dyn else []


def _copy_with_libs(x: Path, rel: str, root: Path) -> None:
    """Copy a dynamic executable from the unpacked tree, with its library closure and ld.so."""
    libdirs = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu")
    todo, done = [rel], set()
    while todo:
        cur = todo.pop()
        if cur in done:
            continue
        done.add(cur)
        src = (x / cur).resolve()
        dst = root / cur
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        dst.chmod(0o755)
        for lib in _needed(src):
            for d in libdirs:
                if (x / d / lib).exists():
                    todo.append(f"{d}/{lib}")
                    break
            else:
                raise CosimError(f"{cur} needs {lib}, which no pinned package provides "
                                 "(add its package to PINNED_PACKAGES)")
    ld = "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    if not (root / ld).exists():
        shutil.copyfile((x / ld).resolve(), root / ld)
        (root / ld).chmod(0o755)
    (root / "lib64").mkdir(exist_ok=True)
    link = root / "lib64" / "ld-linux-x86-64.so.2"
    if not link.is_symlink():
        link.symlink_to("../" + ld)


def _compile(jobs: list[tuple[str, Path, Path]], log: Log) -> None:
    """Compile static programs with the host gcc, two at a time.

    gcc runs in the source directory with a relative file name, so no
    checkout path ends up in the binary (it would break reproducibility).
    """
    def one(job: tuple[str, Path, Path]) -> None:
        name, src, out = job
        cmd = ["gcc", "-O2", "-static", "-pthread", "-Wall", "-o", str(out), src.name]
        proc = subprocess.run(cmd, cwd=src.parent, capture_output=True, text=True)
        if proc.returncode != 0:
            err = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
            tail = " | ".join(err[-4:]) or "no output"
            shown = src.relative_to(paths.REPO) if src.is_relative_to(paths.REPO) else src
            raise CosimError(f"compiling {shown} failed "
                             f"(gcc exit {proc.returncode}): {tail}")

    log(f"compiling {', '.join(n for n, _, _ in jobs)}")
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        for fut in [pool.submit(one, j) for j in jobs]:
            fut.result()


def _write_initrd(root: Path, out: Path) -> list[str]:
    """A reproducible gzip'd newc cpio of ``root``; returns the sorted entry list."""
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            entries.append(os.path.relpath(os.path.join(dirpath, n), root))
    entries.sort(key=lambda e: e.encode())
    for e in entries + ["."]:
        os.utime(root / e, (0, 0), follow_symlinks=False)
    listing = ("\n".join(entries) + "\n").encode()
    archive = _run(["cpio", "-o", "-H", "newc", "--reproducible", "-R", "0:0", "--quiet"],
                   cwd=root, stdin=listing, what="cpio -o")
    out.write_bytes(gzip.compress(archive, compresslevel=9, mtime=0))
    return entries


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _clean_stale(parent: Path, prefix: str) -> None:
    """Remove temporary build directories that a killed build left behind."""
    now = time.time()
    for p in parent.glob(prefix + "*"):
        try:
            if now - p.stat().st_mtime > _STALE_TMP_SECONDS:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


def _publish(tmp: Path, dest: Path, marker: str = "manifest.json") -> None:
    """Rename a finished build into place, replacing an old or partial one.

    ``marker`` is the file a complete slot has; when a concurrent build got
    there first, its slot is kept and ours dropped.
    """
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        dest.rename(old)
        tmp.rename(dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        try:
            tmp.rename(dest)
        except OSError:
            if not (dest / marker).is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # a concurrent build finished first


# ---------------------------------------------------------------- public API


def image_dir(add: Sequence[Path | str] = (), packages: Sequence[str] = (),
              pip: Sequence[str] = ()) -> Path:
    """The cache slot an image with these inputs lives in (built or not)."""
    adds = [Path(a) for a in add]
    packages = with_python(packages, pip)
    digest = inputs_hash(adds, packages=packages, resolved=resolve_packages(packages),
                         wheels=download_wheels(pip))
    return paths.cache_root() / "guests" / f"linux-{digest[:12]}"


def build_image(add: Sequence[Path | str] = (), force: bool = False,
                log: Log = _log_default, packages: Sequence[str] = (),
                pip: Sequence[str] = ()) -> GuestImage:
    """Build the Linux guest image (or return the cached one with the same inputs).

    ``add`` lists extra programs to put in ``/workloads`` under their base
    name: static x86_64 ELF executables or ``#!`` scripts for busybox.
    ``packages`` names Debian packages to unpack into the image with their
    dependencies (``resolve_packages``); their programs are linked as
    ``/workloads/NAME``. ``pip`` names PyPI packages (pure Python) for the
    guest's python3, which comes with them; their console scripts are
    programs too. ``force`` rebuilds even when the cache slot exists.
    """
    adds = check_added(add)
    packages = with_python(packages, pip)
    resolved = resolve_packages(packages)
    wheels = download_wheels(pip)
    tools = _tool_versions()
    digest = inputs_hash(adds, tools, packages, resolved, wheels)
    parent = paths.cache_root() / "guests"
    dest = parent / f"linux-{digest[:12]}"
    if (dest / "manifest.json").is_file() and not force:
        return GuestImage(dest)

    started = time.monotonic()
    parent.mkdir(parents=True, exist_ok=True)
    prefix = f".linux-{digest[:12]}.tmp-"
    _clean_stale(parent, prefix)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; QEMU may run as another user
    try:
        _build_into(tmp, adds, tools, digest, log, sorted(set(packages)), resolved, wheels)
        _publish(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    img = GuestImage(dest)
    log(f"guest image {dest} ({img.initrd.stat().st_size >> 10} KiB initrd, "
        f"{time.monotonic() - started:.1f} s)")
    return img


def _build_into(out: Path, adds: list[Path], tools: dict[str, str], digest: str, log: Log,
                packages: list[str], deps: list[tuple[str, str]], wheels: list[Path]) -> None:
    resolved = _download(PINNED_PACKAGES, log)
    debs = {name: deb for name, (_, deb) in resolved.items()}
    work = out / "work"
    x, root, bins = work / "x", work / "root", work / "bin"
    for d in (x, root, bins):
        d.mkdir(parents=True)

    # compile first: a broken workload should fail before the slow unpacking
    workloads = builtin_workloads()
    jobs = [("cosim-cmd", HELPER_SOURCE, bins / "cosim-cmd")]
    jobs += [(w, WORKLOAD_DIR / f"{w}.c", bins / w) for w in workloads]
    _compile(jobs, log)

    log("unpacking packages")
    kdeb = debs[f"linux-image-{KERNEL_VERSION}"]
    mod_base = f"./lib/modules/{KERNEL_VERSION}/kernel/"
    _extract(kdeb, x, [f"./boot/vmlinuz-{KERNEL_VERSION}", f"./boot/config-{KERNEL_VERSION}",
                       *(mod_base + rel for rel in MODULES.values())])
    for name, deb in debs.items():
        if deb is not kdeb:
            _extract(deb, x)

    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "lib/modules", "lib/x86_64-linux-gnu",
              "usr/lib/x86_64-linux-gnu", "lib64", "proc", "sys", "dev", "tmp", "run", "root",
              "etc", "workloads"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(x / "bin" / "busybox", root / "bin" / "busybox")
    (root / "bin" / "sh").symlink_to("busybox")
    shutil.copyfile(INIT_SOURCE, root / "init")
    shutil.copyfile(bins / "cosim-cmd", root / "sbin" / "cosim-cmd")
    _copy_with_libs(x, "usr/bin/numactl", root)
    for mod, rel in MODULES.items():
        data = lzma.decompress((x / mod_base / rel).read_bytes())
        (root / "lib" / "modules" / f"{mod}.ko").write_bytes(data)
    for w in workloads:
        shutil.copyfile(bins / w, root / "workloads" / w)
    for p in adds:
        shutil.copyfile(p, root / "workloads" / p.name)

    # modes are set here, not inherited from the checkout or umask
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames:
            os.chmod(os.path.join(dirpath, n), 0o755)
        for n in filenames:
            p = os.path.join(dirpath, n)
            if not os.path.islink(p):
                lib = (n.endswith((".ko", ".so")) or ".so." in n) and not n.startswith("ld-linux")
                program = os.path.relpath(dirpath, root) == "workloads"
                os.chmod(p, 0o644 if lib and not program else 0o755)
    (root / "tmp").chmod(0o1777)
    taken = set(workloads) | {p.name for p in adds}
    programs = _add_packages(root, work / "pkg", packages, deps, taken, log)
    programs += _add_wheels(root, wheels, taken, log)
    _byte_compile(root, log)

    shutil.copyfile(x / "boot" / f"vmlinuz-{KERNEL_VERSION}", out / "vmlinuz")
    shutil.copyfile(x / "boot" / f"config-{KERNEL_VERSION}", out / "kernel.config")
    log("writing initramfs")
    entries = _write_initrd(root, out / "initrd.cpio.gz")
    (out / "rootfs.txt").write_text("\n".join(entries) + "\n")
    shutil.rmtree(work)

    manifest = {
        "format": FORMAT_VERSION,
        "inputs_hash": digest,
        "kernel": KERNEL_VERSION,
        "kernel_sha256": _sha256(out / "vmlinuz"),
        "initrd_sha256": _sha256(out / "initrd.cpio.gz"),
        "packages": {name: version for name, (version, _) in resolved.items()},
        "pinned": dict(PINNED_PACKAGES),
        "tools": tools,
        "modules": list(MODULES),
        "workloads": workloads + [p.name for p in adds] + programs,
        "added": [{"name": p.name, "source": str(p.resolve()), "sha256": _sha256(p)} for p in adds],
        # --package: what was asked for, and every package apt's resolver put in for it
        "extra_packages": {"requested": packages, "installed": dict(deps)},
        "pip": [{"wheel": w.name, "sha256": _sha256(w)} for w in wheels],
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def _add_packages(root: Path, work: Path, packages: list[str], deps: list[tuple[str, str]],
                  taken: set[str], log: Log) -> list[str]:
    """Unpack the resolved packages over the image; link the requested ones' programs.

    Files the image already has (busybox's shell, the pinned libraries) are
    kept: a package's own copy of the same path is skipped. Documentation
    (``_PACKAGE_SKIP``) is left out. Returns the names linked as
    ``/workloads/NAME`` (a name a workload already has keeps the workload).
    """
    if not deps:
        return []
    debs = _download(deps, log)
    log(f"unpacking {len(deps)} packages for --package {' '.join(packages)}")
    programs: list[str] = []
    for name, (_, deb) in sorted(debs.items()):
        x = work / name
        _extract(deb, x)
        for dirpath, dirnames, filenames in os.walk(x):
            rel = os.path.relpath(dirpath, x)
            dirnames[:] = [d for d in dirnames
                           if os.path.normpath(os.path.join(rel, d)) not in _PACKAGE_SKIP]
            for n in dirnames + filenames:
                src, dst = Path(dirpath) / n, root / rel / n
                if src.is_dir() and not src.is_symlink():
                    dst.mkdir(exist_ok=True)
                elif not os.path.lexists(dst):
                    if src.is_symlink():
                        dst.symlink_to(os.readlink(src))
                    else:
                        shutil.copy2(src, dst)
                # the requested packages' programs, and a program named as one (python3
                # is python3-minimal's)
                if (name in packages or n in packages) and rel in _PROGRAM_DIRS \
                        and n not in taken and not src.is_dir() and _NAME_OK.match(n):
                    taken.add(n)
                    programs.append(n)
                    (root / "workloads" / n).symlink_to(f"/{rel}/{n}")
        shutil.rmtree(x)
    return programs


def firmware_dir(log: Log = _log_default) -> Path:
    """A directory for QEMU's ``-L`` with what a q35 ``-kernel`` boot loads.

    ``bios-256k.bin`` is copied from the installed ``seabios`` package, the
    option ROMs (``OPTION_ROMS``) from the pinned ``qemu-system-data`` .deb
    (downloaded, never installed: that package would pull in nothing we use).
    Cached under ``cache_root()/firmware/x86-<hash>``, the hash covering the
    BIOS bytes and the package version.
    """
    if not SEABIOS.is_file():
        raise CosimError(f"{SEABIOS} is missing: install the seabios package (./setup.sh does)")
    bios = SEABIOS.read_bytes()
    name, version = QEMU_DATA_PACKAGE
    h = hashlib.sha256(bios + b"\0" + f"{name}={version}".encode()).hexdigest()[:12]
    dest = paths.cache_root() / "firmware" / f"x86-{h}"
    wanted = ("bios-256k.bin", *OPTION_ROMS)
    if all((dest / f).is_file() for f in wanted):
        return dest
    _, deb = _download([QEMU_DATA_PACKAGE], log)[name]
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".x86-{h}.tmp-", dir=dest.parent))
    tmp.chmod(0o755)
    try:
        _extract(deb, tmp / "x", [f"./usr/share/qemu/{f}" for f in OPTION_ROMS])
        for f in OPTION_ROMS:
            shutil.copyfile(tmp / "x" / "usr" / "share" / "qemu" / f, tmp / f)
        (tmp / "bios-256k.bin").write_bytes(bios)
        shutil.rmtree(tmp / "x")
        _publish(tmp, dest, marker="bios-256k.bin")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cosim.guest_image [--force] [--add FILE]...``: build and print paths."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m cosim.guest_image", description=main.__doc__)
    ap.add_argument("--add", action="append", default=[], type=Path, metavar="FILE")
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    try:
        img = build_image(args.add, force=args.force)
        fw = firmware_dir()
    except CosimError as e:
        print(f"cosim: error: {e}")
        return 2
    print(f"kernel   {img.kernel}\ninitrd   {img.initrd}\nfirmware {fw}\n"
          f"workloads {' '.join(img.workloads)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
