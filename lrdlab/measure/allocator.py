"""Freed memory kept in the process (glibc's malloc), opt-in, for training large models on a CPU.

PyTorch takes CPU tensors from the C library's ``malloc``. glibc maps every block above its mmap threshold (at most
32 MB) straight from the OS and unmaps it when it is freed, so a training step that makes and drops large
temporaries (a language model's logits over its vocabulary and their gradients) faults every page of them in again
at the next step, and the kernel zeroes each one. :func:`keep_freed_memory` asks glibc (``mallopt``) to serve every
block from its heap and not to give freed memory back: after the first steps, pages are no longer faulted. The
cost is memory: the process keeps its peak until it exits, and the heap fragments (torch's 64-byte-aligned blocks
do not always fit the holes freed ones leave), so it can hold a few times a step's temporaries more. Nothing else
changes (the same arithmetic on the same values). It is opt-in because it is process-wide; what it saved and
cost on a distillation step: ``data/allocator_smollm2_cpu.json``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_MAX = -4
TRIM_NEVER = 2**31 - 1  # mallopt takes a C int: free memory at the heap's top is given back above 2 GiB only

_KEPT = False


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for the process's next allocations (see the module); True where it
    took effect, False where the C library is not glibc (macOS, Windows, musl) and nothing changed."""
    global _KEPT
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # musl has a mallopt that does nothing
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    took = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, TRIM_NEVER) == 1  # 1: done
    _KEPT = _KEPT or took
    return _KEPT


def freed_memory_kept() -> bool:
    """Whether :func:`keep_freed_memory` took effect in this process (what a record says of its allocator)."""
    return _KEPT
