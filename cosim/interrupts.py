"""SIGINT and SIGTERM end a command promptly, cleanup included, and never hang it.

The signal raises in the main thread (KeyboardInterrupt for SIGINT,
``Terminated`` for SIGTERM), so every ``with`` and ``finally`` on the way out
runs: QEMU stopped, run directory, sockets and snapshot temporaries removed.
That cleanup talks to QEMU, which an interruption may catch in any state,
and the interruption may land inside a library's half-done call; a cleanup
that waits on either would hold the user's terminal (or a CI job) forever.
So the first signal also arms a watchdog: if the command has not ended
``CLEANUP_GRACE_S`` later, or a second signal arrives, the stacks of all
threads go to stderr (so the hang can be found), every registered emergency
action runs (QEMU's process group killed, its run directory removed), and
the process exits with the first signal's status.
"""

from __future__ import annotations

import faulthandler
import itertools
import os
import signal
import sys
import threading
from typing import Callable

from .errors import Terminated

#: seconds the normal cleanup may take after a signal before the watchdog ends it
CLEANUP_GRACE_S = 20.0

_actions: dict[int, Callable[[], None]] = {}
_tokens = itertools.count()
_seen: list[int] = []           # signals the watcher has read, in order
_raised: list[int] = []         # signals the main thread has raised as exceptions
_installed: list[bool] = []


def register(action: Callable[[], None]) -> int:
    """Keep ``action`` to run if cleanup is cut short; returns a token for ``unregister``."""
    token = next(_tokens)
    _actions[token] = action
    return token


def unregister(token: int) -> None:
    """The normal cleanup did the work: forget the emergency action."""
    _actions.pop(token, None)


def install() -> None:
    """Route SIGINT and SIGTERM through the watchdog (call once, in the main thread).

    Python runs a signal handler only when the main thread is back in the
    interpreter; a main thread blocked in a C call would never arm a
    watchdog there. So the C-level handler's wakeup byte (the signal number,
    ``signal.set_wakeup_fd``) is read by a thread of its own, which arms the
    watchdog however stuck the main thread is.
    """
    if _installed:
        return
    _installed.append(True)
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    os.set_blocking(write_end, False)
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    threading.Thread(target=_watch, args=(read_end,), name="cosim-signal-watch",
                     daemon=True).start()
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)


def _watch(read_end: int) -> None:
    """Arm the watchdog at the first signal; force the exit at the second."""
    while True:
        for signum in os.read(read_end, 64):
            if signum not in (signal.SIGINT, signal.SIGTERM):
                continue
            _seen.append(signum)
            if len(_seen) > 1:
                _force_exit(_seen[0], "a second signal arrived")
            timer = threading.Timer(CLEANUP_GRACE_S, _force_exit, args=(
                signum, f"cleanup did not finish within {CLEANUP_GRACE_S:.0f} s"))
            timer.daemon = True
            timer.start()


def _on_signal(signum: int, frame: object) -> None:
    """In the main thread: the first signal unwinds the command through its cleanup."""
    if _raised:
        return              # the watcher ends it if cleanup is stuck
    _raised.append(signum)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated()


def _force_exit(signum: int, why: str) -> None:
    """Dump the stacks, run the emergency actions, exit with the signal's status."""
    try:
        print(f"cosim: {why}; stacks of all threads follow, then QEMU is killed",
              file=sys.stderr, flush=True)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        for action in list(_actions.values()):
            try:
                action()
            except Exception as e:
                print(f"cosim: emergency cleanup: {e}", file=sys.stderr)
        print("cosim: interrupted" if signum == signal.SIGINT else "cosim: terminated",
              file=sys.stderr, flush=True)
    finally:
        os._exit(128 + signum)
