"""Background work that yields to the foreground: an explorer's move runs alone, then the browser draws it.

:class:`Foreground` marks a move (``with gate.move(): ...``); background threads call :meth:`Foreground.pause`
between units of work and wait there while a move runs and for :attr:`Foreground.grace_s` after it (the browser,
another process, needs the cores to draw the answer). :func:`pausing_modules` puts that pause before every module
forward of the calling thread, so a long torch job (scoring a decomposed model) yields within one layer;
:func:`lower_priority` lowers the calling thread's OS priority (Linux: per thread), for work that rarely holds the GIL.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator

import torch


class Foreground:
    """A gate between the foreground (moves) and background threads (prerender, timing, scoring)."""

    def __init__(self, grace_s: float = 0.5):
        self.grace_s = grace_s
        self._active = 0
        self._last_end = -float("inf")
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def move(self) -> Iterator[None]:
        """The foreground's turn: background threads wait at their next :meth:`pause`."""
        with self._cond:
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._last_end = time.perf_counter()
                self._cond.notify_all()

    def busy(self) -> bool:
        """A move runs, or ended less than :attr:`grace_s` ago."""
        return self._active > 0 or time.perf_counter() - self._last_end < self.grace_s

    def pause(self) -> None:
        """Wait while :meth:`busy` (returns at once when not)."""
        if not self.busy():
            return
        with self._cond:
            while True:
                if self._active:
                    self._cond.wait()
                    continue
                left = self.grace_s - (time.perf_counter() - self._last_end)
                if left <= 0:
                    return
                self._cond.wait(left)


@contextlib.contextmanager
def pausing_modules(gate: Foreground) -> Iterator[None]:
    """While inside, every module forward *in this thread* first waits at ``gate`` (other threads: untouched;
    the global hook is removed on exit)."""
    ident = threading.get_ident()

    def hook(_module, _args):
        if threading.get_ident() == ident:
            gate.pause()

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


BACKGROUND_NICE = 10


def lower_priority(nice: int = BACKGROUND_NICE) -> bool:
    """Lower the calling thread's scheduling priority by ``nice`` (Linux, where niceness is per thread); whether it
    did. Only for threads that spend their time in torch (which releases the GIL): a low-priority thread holding
    the GIL would hold up the foreground."""
    if not hasattr(os, "setpriority") or not hasattr(threading, "get_native_id"):
        return False
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + nice)
    except OSError:
        return False
    return True
