"""cosim: deterministic multi-vCPU full-system co-simulation (QEMU + SimPy)."""

__version__ = "0.1.0"
