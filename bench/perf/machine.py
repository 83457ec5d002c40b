"""What the machine is and how busy it was: CPU kind and features, and a stopwatch that measures contention.

Every speed benchmark states the machine beside its times and flags a time other processes disturbed.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import torch

CONTENDED_SHARE = 0.05  # an epoch during which other processes used more of the CPUs than this is flagged


def _machine_busy_s() -> float | None:
    """CPU seconds all processes on the machine have spent busy since boot (Linux /proc/stat), else None."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[1:9])
    except (OSError, ValueError):
        return None
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    """CPU seconds of this process, all its threads."""
    t = os.times()
    return t.user + t.system


class Stopwatch:
    """Wall seconds of an interval, and the share of the machine's CPUs that other processes used meanwhile.

    On a shared machine the second number says whether the first can be trusted:
    with two threads on two cores, any other busy process stalls every parallel op.
    """

    def __init__(self) -> None:
        self._wall, self._busy, self._own = time.perf_counter(), _machine_busy_s(), _own_cpu_s()

    def stop(self) -> tuple[float, float | None]:
        wall = time.perf_counter() - self._wall
        busy = _machine_busy_s()
        if busy is None or self._busy is None or wall <= 0:
            return wall, None
        others = (busy - self._busy) - (_own_cpu_s() - self._own)  # CPU seconds; /proc/stat ticks are 10 ms
        return wall, min(1.0, max(0.0, others / (wall * (os.cpu_count() or 1))))


def contended(run: dict[str, object]) -> bool:
    """Whether other processes used more than CONTENDED_SHARE of the CPUs during a timed epoch (or it is unknown)."""
    share = run.get("max_others_cpu_share")
    return share is None or share > CONTENDED_SHARE


def bf16_supported() -> bool:
    """Whether this CPU has native bf16 matmul (avx512_bf16 or AMX) that oneDNN uses."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check()) if check is not None else False


def machine_info() -> dict[str, object]:
    """CPU model and features, thread counts, library versions and the load average now."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    flags = set(fields.get("flags", "").split())
    return {
        "cpu_vendor": fields.get("vendor_id", "unknown"),
        "cpu_model": fields.get("model name", platform.processor() or "unknown"),
        "cpu_family_model": f"{fields.get('cpu family', '?')}/{fields.get('model', '?')}",
        "cpu_flags": sorted(flags & {"avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile"}),
        "bf16_matmul": bf16_supported(),  # oneDNN's native bf16 (avx512_bf16 or AMX); else bf16 is emulated, slower
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
