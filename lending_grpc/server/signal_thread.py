"""Signals acted on by a thread of their own, not inside a signal handler.

A Python signal handler runs in the main thread between two bytecodes, and
may interrupt that thread while it holds a lock: `threading.Event.wait` holds
its condition's lock for a moment before it sleeps. A handler that then calls
`Event.set()` (or logs, or stops the gRPC server) waits for that lock forever,
and the process no longer stops on SIGTERM. Two signals close together, say
the SIGTERM a process group receives and the one `make` forwards, make this
likely. So the handlers do nothing: `signal.set_wakeup_fd` has the
interpreter write each signal's number to a pipe, and a thread reads it and
calls ``on_signal``, one signal at a time, holding no lock of the main thread.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Iterable

log = logging.getLogger(__name__)


def _nothing(_signum, _frame) -> None:
    """The handler: the interpreter has already written the signal's number to the wake-up pipe."""


def handle_signals_on_a_thread(
    signums: Iterable[signal.Signals], on_signal: Callable[[signal.Signals], None]
) -> None:
    """From now on, each of ``signums`` calls ``on_signal(signum)`` on the thread 'signals'.

    Call from the main thread (a Python rule for signal handlers); the thread
    lives as long as the process.
    """
    wanted = set(signums)
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)  # the interpreter's write must never block a signal handler
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    for signum in wanted:
        signal.signal(signum, _nothing)

    def listen() -> None:
        while data := os.read(read_end, 64):
            for number in data:
                if number in wanted:
                    try:
                        on_signal(signal.Signals(number))
                    except Exception:  # one failed reaction must not end the thread
                        log.exception("handling %s failed", signal.Signals(number).name)

    threading.Thread(target=listen, name="signals", daemon=True).start()
