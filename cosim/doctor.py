"""``cosim doctor``: what is installed, where, and the command that fixes a gap."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from dataclasses import dataclass

from . import paths
from .timing import kernel_cache_dir, kernels_compiled_marker

SETUP = "./setup.sh"


@dataclass
class Check:
    name: str
    ok: bool
    where: str
    fix: str = ""


def _deb_installed(package: str) -> bool:
    out = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package],
                         capture_output=True, text=True)
    return "install ok installed" in out.stdout


def _tool(name: str, package: str) -> Check:
    path = shutil.which(name)
    return Check(name, path is not None, path or "not on PATH",
                 f"apt-get install {package}  (or {SETUP})")


def checks() -> list[Check]:
    found: list[Check] = [
        _tool("riscv64-unknown-elf-gcc", "gcc-riscv64-unknown-elf"),
        _tool("ninja", "ninja-build"),
        _tool("dpkg-source", "dpkg-dev"),
        _tool("pkg-config", "pkg-config"),
    ]
    for pkg in ("libglib2.0-dev", "libpixman-1-dev", "libfdt-dev", "libmsgpack-dev", "seabios"):
        ok = _deb_installed(pkg)
        found.append(Check(f"deb:{pkg}", ok, "installed" if ok else "missing",
                           f"apt-get install {pkg}  (or {SETUP})"))
    for module in ("simpy", "msgpack", "grpc", "google.protobuf", "numpy", "qemu.qmp",
                   "elftools", "tqdm", "mesonbuild", "platformdirs", "grpc_tools", "numba",
                   "xxhash", "pytest"):
        spec = importlib.util.find_spec(module.split(".")[0])
        found.append(Check(f"python:{module}", spec is not None,
                           (spec.origin or "namespace") if spec else "missing",
                           f".venv/bin/pip install -e '.[test]'  (or {SETUP})"))
    qb = paths.qemu_build()
    found.append(Check("qemu source (deb-src trixie)",
                       any((paths.cache_root() / "downloads").glob("qemu_*.dsc")) or qb.is_built(),
                       str(paths.cache_root() / "downloads"), SETUP))
    for target in paths.QEMU_TARGETS:
        arch = target.split("-")[0]
        binary = qb.binary(arch)
        found.append(Check(f"qemu-system-{arch} (patches {paths.patch_hash()})",
                           qb.is_built() and binary.is_file(), str(binary), ".venv/bin/cosim build"))
    lib = paths.plugin_library()
    found.append(Check("cosim plugin", lib.is_file(), str(lib), ".venv/bin/cosim build"))
    guests = sorted(paths.GUEST_BUILD.glob("*.elf"))
    found.append(Check("riscv64 guests", bool(guests),
                       f"{paths.GUEST_BUILD} ({len(guests)} ELFs)", ".venv/bin/cosim build"))
    kernels = kernel_cache_dir()
    found.append(Check("timing kernels (numba, compiled)", kernels_compiled_marker().is_file(),
                       str(kernels), ".venv/bin/cosim build"))
    return found


def run_checks() -> int:
    results = checks()
    width = max(len(c.name) for c in results)
    for c in results:
        mark = "ok     " if c.ok else "MISSING"
        line = f"{mark} {c.name:<{width}}  {c.where}"
        if not c.ok:
            line += f"\n        fix: {c.fix}"
        print(line)
    missing = [c for c in results if not c.ok]
    print(f"\n{len(results) - len(missing)} ok, {len(missing)} missing"
          + (f"; `{SETUP}` fixes all of them" if missing else ""))
    return 1 if missing else 0
