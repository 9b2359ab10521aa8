"""How long this process has been running: the time-to-first-step figure of a run (run.json's timings)."""

from __future__ import annotations

import os
from typing import Optional


def process_age_s() -> Optional[float]:
    """Seconds since this process started (interpreter start-up and imports included), from /proc on Linux;
    None where /proc is missing. Resolution: one clock tick (10 ms)."""
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read().decode()
        with open("/proc/uptime", "rb") as f:
            uptime = float(f.read().split()[0])
        fields = stat[stat.rindex(")") + 2:].split()  # the command name may hold spaces; fields after it
        start_ticks = int(fields[19])  # field 22 of proc(5), starttime, in clock ticks after boot
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None
