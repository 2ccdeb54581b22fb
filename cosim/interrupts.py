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
_armed: list[int] = []          # the signal that armed the watchdog, once armed


def register(action: Callable[[], None]) -> int:
    """Keep ``action`` to run if cleanup is cut short; returns a token for ``unregister``."""
    token = next(_tokens)
    _actions[token] = action
    return token


def unregister(token: int) -> None:
    """The normal cleanup did the work: forget the emergency action."""
    _actions.pop(token, None)


def install() -> None:
    """Route SIGINT and SIGTERM through the watchdog (call once, in the main thread)."""
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)


def _on_signal(signum: int, frame: object) -> None:
    if _armed:
        _force_exit(_armed[0], "a second signal arrived")
    _armed.append(signum)
    timer = threading.Timer(CLEANUP_GRACE_S, _force_exit,
                            args=(signum, f"cleanup did not finish within {CLEANUP_GRACE_S:.0f} s"))
    timer.daemon = True
    timer.start()
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
