"""The machine shapes cosim accepts, shared by the command line and the snapshot loader."""

#: vCPUs of a bare-metal machine (a Linux one has fewer: linux_flow.MAX_SMP)
MAX_SMP = 64

#: QEMU keeps a turn's instruction budget in a signed 64-bit count
#: (icount_prepare_for_run); 2^62 leaves room for the sums the bridge forms
MAX_QUANTUM = 1 << 62
