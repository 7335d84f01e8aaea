"""The resident-memory peak of a stretch of steps, read from /proc (Linux): shared by the benchmarks that
compare a recorded step's peak with a plain one's, each in a fresh process."""

from __future__ import annotations

from pathlib import Path


def can_measure() -> bool:
    return Path("/proc/self/clear_refs").exists()


def reset_peak() -> None:
    """VmHWM back to the current resident size: the peak from here on is the steps' own."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def status_bytes(key: str) -> int:
    """A size line of /proc/self/status (VmRSS, VmHWM) in bytes; 0 where there is none."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0
