"""What a measured child reports about itself; stdlib only, so the baseline stays a plain script."""

from __future__ import annotations

import resource


def cpu_s() -> float:
    """CPU seconds used so far by every thread of this process."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_kb() -> int:
    """This process's peak RSS. Linux's VmHWM, because `ru_maxrss` keeps the parent's RSS at the
    fork that started this process (the benchmark's own memory would show up as the child's)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
