"""Keep glibc's allocator from handing blob buffers back to the kernel after every read.

A blob streams through as short-lived buffers of 256 KiB to 1 MiB; with glibc's defaults each
is its own ``mmap`` and the next one faults its pages in afresh. Buffers up to 4 MiB now come
from the heap, which keeps 8 MiB spare at its top (docs/design.md, "Process tuning"). Only the
``serve`` process tunes itself, only on glibc, and an operator's own ``GLIBC_TUNABLES`` or
``MALLOC_*_`` settings are kept.
"""

from __future__ import annotations

import ctypes
import os
import platform

# mallopt(3) parameters, from glibc's <malloc.h>.
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

HEAP_BUFFERS_UP_TO = 4 << 20
"""Allocations up to this size come from the heap, where freed ones are reused, not from mmap."""
HEAP_SPARE = 8 << 20
"""What the heap keeps at its top when it grows or trims, instead of glibc's 128 KiB."""


def tune_for_streaming() -> bool:
    """Set the two allocator parameters; returns whether they were set."""
    if platform.libc_ver()[0] != "glibc" or _set_by_operator():
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, HEAP_BUFFERS_UP_TO)) and bool(mallopt(M_TOP_PAD, HEAP_SPARE))


_OPERATOR_KNOBS = ("top_pad", "mmap_threshold", "trim_threshold")


def _set_by_operator() -> bool:
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    return any(
        f"glibc.malloc.{knob}=" in tunables or f"MALLOC_{knob.upper()}_" in os.environ for knob in _OPERATOR_KNOBS
    )
