"""The one exception type the CLI turns into a one-line error."""


class CosimError(Exception):
    """A user-facing failure: bad input, a missing build, QEMU dying.

    The message is a single line that names the bad value and what would be
    accepted; the CLI prints it as ``cosim: error: <message>`` and exits 2.
    """


class Terminated(BaseException):
    """SIGTERM arrived: raised in the main thread so every ``with`` and ``finally``
    on the way out runs (QEMU stopped, run directory and sockets removed), as
    KeyboardInterrupt does for SIGINT. A BaseException, like KeyboardInterrupt,
    so ``except Exception`` does not swallow it."""
