"""Ctrl-C and SIGTERM that stop a loop between two steps, never inside one.

    with StopOnSignal() as stop:
        while not done and not stop.requested:
            one_step()
    if stop.requested: save, report, exit 130

The first SIGINT (Ctrl-C), SIGTERM (`kill`, `timeout`, a container stop) or SIGHUP (a closed terminal) only sets
`stop.requested` to the signal's name; the loop finishes the step it is in and stops, so what it
saves is a whole step and resuming from it gives the uninterrupted run's bytes. A second signal
raises KeyboardInterrupt at once (for a step that hangs). Handlers are installed only in the main
thread (Python's rule); elsewhere the context does nothing and signals keep their usual meaning.
SIGINT is set explicitly too: a job started with `&` from a script inherits SIGINT ignored.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any, Optional

# SIGHUP: a closed terminal or a dropped ssh session stops a run like Ctrl-C (it used to end it at once, unsaved)
_NAMES = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}
if hasattr(signal, "SIGHUP"):
    _NAMES[signal.SIGHUP] = "SIGHUP"
STOP_SIGNALS = tuple(_NAMES)


class StopOnSignal:
    def __init__(self, message: Optional[str] = "stopping after this step (Ctrl-C again to stop at once)") -> None:
        self.message = message  # written to stderr on the first signal (None: silent)
        self.requested: Optional[str] = None  # "SIGINT" / "SIGTERM" once a stop was asked for
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested is not None:
            raise KeyboardInterrupt
        self.requested = _NAMES.get(signum, str(signum))
        if self.message:
            try:  # os.write: safe inside a signal handler, unlike a console's buffered print
                os.write(2, f"\n{self.requested}: {self.message}\n".encode())
            except OSError:
                pass

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handler) for sig in _NAMES}
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def terminate_as_interrupt() -> dict[int, Any]:
    """Make SIGTERM and SIGHUP raise KeyboardInterrupt like Ctrl-C (main thread only); returns the
    previous handlers for `restore`. For stretches with no step boundary to wait for (loading, a
    batch's bookkeeping between prompts, an export): the KeyboardInterrupt unwinds through every
    atomic write under way, which removes its temporary file (a plain SIGTERM would leave it)."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    return {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS if sig != signal.SIGINT}


def restore(previous: dict[int, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)
