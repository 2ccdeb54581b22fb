"""Timing model: from the functional trace, how many cycles each core spent.

Layout follows the data path: ``config`` (what machine), ``state`` (its
numpy arrays), ``caches`` / ``hierarchy`` / ``memory`` / ``core`` (numba
kernels over those arrays: one call per vCPU turn), ``engine`` (SimPy:
simulated time picks the next vCPU), ``stats`` and ``plots`` (reports).
"""

import hashlib
import os
from pathlib import Path

from .. import paths


def _kernel_sources() -> list[Path]:
    """The modules that hold numba kernels (each compiles the others' into itself)."""
    here = Path(__file__).parent
    return [here / name for name in ("caches.py", "hierarchy.py", "memory.py", "chmu.py", "core.py")]


def kernels_compiled_marker() -> Path:
    """The file ``cosim build`` leaves once the kernels of this checkout are compiled.

    Numba also checks each source's path and modification time, so a fresh
    clone of the same sources compiles again: the marker is named by them.
    """
    h = hashlib.sha256()
    for path in _kernel_sources():
        st = path.stat()
        h.update(f"{path}\0{st.st_mtime_ns}\0{st.st_size}\0".encode())
    return kernel_cache_dir() / f"compiled-{h.hexdigest()[:12]}"


def kernel_cache_dir() -> Path:
    """Where numba keeps the compiled kernels: a directory per version of their sources.

    Numba's own cache checks only the file that defines a cached function,
    but the kernels inline each other across modules (``core.run_turn``
    compiles ``hierarchy``, ``caches`` and ``memory`` into itself), so an
    edit of one of those would leave stale machine code in use, and stale
    code computes other cycle counts. Keying the directory by every
    kernel source makes any change compile afresh.
    """
    h = hashlib.sha256()
    for path in _kernel_sources():
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return paths.cache_root() / "numba" / h.hexdigest()[:12]


# numba reads this when it is first imported, which the kernel modules do
os.environ.setdefault("NUMBA_CACHE_DIR", str(kernel_cache_dir()))
