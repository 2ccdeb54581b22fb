"""Timing model: from the functional trace, how many cycles each core spent.

Layout follows the data path: ``config`` (what machine), ``state`` (its
numpy arrays), ``caches`` / ``hierarchy`` / ``memory`` / ``core`` (numba
kernels over those arrays: one call per vCPU turn), ``engine`` (SimPy:
simulated time picks the next vCPU), ``stats`` and ``plots`` (reports).
"""
