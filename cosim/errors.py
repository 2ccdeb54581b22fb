"""The one exception type the CLI turns into a one-line error."""


class CosimError(Exception):
    """A user-facing failure: bad input, a missing build, QEMU dying.

    The message is a single line that names the bad value and what would be
    accepted; the CLI prints it as ``cosim: error: <message>`` and exits 2.
    """
