"""What this machine's CPU is, read without torch or any runtime: its model name and feature
flags, from the kernel's ``/proc/cpuinfo``. Every measured figure names the CPU beside it, and
training picks bf16 from these flags, so both read them in one place."""

from __future__ import annotations

import functools
import platform
from pathlib import Path


@functools.cache
def cpuinfo_text() -> str:
    """``/proc/cpuinfo``, or '' where there is none (not Linux)."""
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""


def model_name_in(cpuinfo: str) -> str | None:
    """The first ``model name`` of ``/proc/cpuinfo`` text (x86); None when it has none (e.g.
    aarch64 kernels, which list ``CPU part`` numbers instead)."""
    for line in cpuinfo.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return None


def cpu_name() -> str:
    """This CPU's model name (e.g. 'AMD EPYC'), else what :mod:`platform` knows."""
    return model_name_in(cpuinfo_text()) or platform.processor() or platform.machine()


def cpu_flags() -> frozenset[str]:
    """The words of ``/proc/cpuinfo`` (its ``flags`` lines among them): empty off Linux."""
    return frozenset(cpuinfo_text().split())
