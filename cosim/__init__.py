"""cosim: deterministic multi-vCPU full-system co-simulation (QEMU + SimPy)."""

__version__ = "0.1.0"

import os as _os

# numpy's OpenBLAS starts a thread per host core, which spins for a while
# after any use; cosim does no linear algebra, and on a small host those
# threads take time from QEMU and the timing model (seen at 2-3% in perf)
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
    _os.environ.setdefault(_var, "1")
