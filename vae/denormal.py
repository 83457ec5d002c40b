"""Flush subnormal floats to zero on every CPU thread torch computes on.

`with denormals_flushed(): ...` around CPU training (`fit` does it), or `flush_denormal(mode)`.
Why: Adam's moment estimates of weights whose input pixels are (almost) always 0
(MNIST's border) decay by 0.9 per step into the subnormal range, where x86 arithmetic
takes a slow microcode path. `torch.set_flush_denormal` sets the FTZ/DAZ bits of the
calling thread only, while torch's OpenMP pool threads keep the bits they started
with; so the same call is also run once on each pool thread, inside one OpenMP
parallel region entered through the libgomp that torch loaded.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch

_SUBNORMAL = 1e-39  # below float32's smallest normal number, 1.18e-38


def flush_denormal_enabled() -> bool:
    """Whether the calling thread treats subnormal floats as zero (DAZ) right now."""
    return (torch.tensor([_SUBNORMAL]) * 1.0).item() == 0.0


def _loaded_libgomp() -> str | None:
    """Path of the libgomp mapped into this process (torch's own copy in pip wheels), if any."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.rsplit(maxsplit=1)[-1]
                if os.path.basename(path).startswith("libgomp"):
                    return path
    except OSError:
        pass
    return None


def _on_pool_threads(mode: bool, n_threads: int) -> int:
    """Run torch.set_flush_denormal(mode) on each thread of libgomp's team of n; how many ran it."""
    path = _loaded_libgomp()
    if path is None:
        return 0
    gomp = ctypes.CDLL(path)  # the library already loaded: dlopen hands back the same handle
    ran: set[int] = set()
    lock = threading.Lock()

    @ctypes.CFUNCTYPE(None, ctypes.c_void_p)
    def body(_: int | None) -> None:
        torch.set_flush_denormal(mode)
        with lock:
            ran.add(threading.get_ident())

    # GOMP_parallel(fn, data, num_threads, flags): the master runs fn too; ctypes drops the GIL meanwhile
    gomp.GOMP_parallel(body, None, ctypes.c_uint(n_threads), ctypes.c_uint(0))
    return len(ran)


def flush_denormal(mode: bool) -> bool:
    """Set flush-to-zero for subnormals on this thread and torch's intra-op threads.

    Returns True when every thread got the mode: on x86 CPUs with SSE3 where torch's
    intra-op pool is OpenMP (pip wheels on Linux), or where torch runs one thread.
    Elsewhere only the calling thread may change; nothing fails.
    """
    if not torch.set_flush_denormal(mode):
        return False  # the CPU cannot flush (no SSE3, or not x86): nothing changed
    n = torch.get_num_threads()
    if n == 1:
        return True
    if "OpenMP" not in torch.__config__.parallel_info():
        return False
    return _on_pool_threads(mode, n) == n


@contextmanager
def denormal_mode(flush: bool) -> Iterator[None]:
    """Flushing of subnormals set to `flush` on all of torch's CPU threads inside the block; as before after."""
    before = flush_denormal_enabled()
    if before != flush:
        flush_denormal(flush)
    try:
        yield
    finally:
        if before != flush:
            flush_denormal(before)


def denormals_flushed(enabled: bool = True) -> AbstractContextManager[None]:
    """Subnormals flushed to zero inside the block when `enabled`; a caller's own flushing stays on after."""
    return denormal_mode(True) if enabled else nullcontext()
