"""Where cosim's inputs and build products live.

The QEMU build is expensive (about 15 minutes on 2 cores), so it lives in a
cache outside the repository, keyed by the Debian QEMU version and a hash of
``qemu_patches/``: changing a patch selects a new cache directory, and a
rerun with the same inputs rebuilds nothing. ``COSIM_CACHE`` moves the cache.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PATCH_DIR = REPO / "qemu_patches"
PLUGIN_SOURCE = REPO / "plugin" / "cosim.c"
GUEST_DIR = REPO / "guests" / "riscv"
GUEST_BUILD = GUEST_DIR / "build"

#: Debian trixie source package we build (QEMU 10.0.x). Pinned so that cycle
#: counts do not drift with a new upload; see cosim.build for the fallback.
QEMU_DEBIAN_VERSION = "1:10.0.13+ds-0+deb13u1"
QEMU_TARGETS = ("riscv64-softmmu", "x86_64-softmmu")


def cache_root() -> Path:
    """Root of the build cache (``$COSIM_CACHE`` or ``~/.cache/cosim``)."""
    env = os.environ.get("COSIM_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "cosim"


def patch_hash() -> str:
    """Short hash over the names and bytes of the patch series, in order."""
    h = hashlib.sha256()
    for p in sorted(PATCH_DIR.glob("*.patch")):
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def upstream_version(debian_version: str) -> str:
    """``1:10.0.13+ds-0+deb13u1`` -> ``10.0.13``."""
    return debian_version.split(":")[-1].split("+")[0].split("-")[0]


@dataclass(frozen=True)
class QemuBuild:
    """Locations inside one cached, patched QEMU build."""

    root: Path

    @property
    def src(self) -> Path:
        return self.root / "src"

    @property
    def build(self) -> Path:
        return self.root / "build"

    @property
    def stamp(self) -> Path:
        """Written last by a successful build; its absence means rebuild."""
        return self.root / "BUILT"

    def binary(self, arch: str) -> Path:
        return self.build / f"qemu-system-{arch}"

    @property
    def plugin_header_dir(self) -> Path:
        return self.src / "include" / "qemu"

    def is_built(self) -> bool:
        return self.stamp.is_file() and all(
            self.binary(t.split("-")[0]).is_file() for t in QEMU_TARGETS
        )


def qemu_build(debian_version: str = QEMU_DEBIAN_VERSION) -> QemuBuild:
    """The cache slot for this QEMU version and the current patch series."""
    name = f"qemu-{upstream_version(debian_version)}-{patch_hash()}"
    return QemuBuild(cache_root() / name)


def plugin_library() -> Path:
    """The cosim plugin, built against the headers of the patched QEMU.

    Named by the patches and by its own source, so a checkout never loads a
    plugin built from other source: the plugin and the bridge share a wire
    format and the trace buffer's layout.
    """
    source = hashlib.sha256(PLUGIN_SOURCE.read_bytes()).hexdigest()[:8]
    return REPO / "build" / "plugin" / f"libcosim-{patch_hash()}-{source}.so"


def qemu_opt(path: Path | str) -> str:
    """``path`` as the value inside a QEMU ``key=value,...`` option: commas doubled.

    Plain arguments (``-kernel FILE``, ``-L DIR``) take a path as it is.
    """
    return str(path).replace(",", ",,")
