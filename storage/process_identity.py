"""Which machine and process hold a claim, precisely enough to prove on that machine that the process is gone.

A claim names its process by `machine` (hostname, boot id and pid namespace: two containers with one hostname, or
one host before and after a reboot, differ) and by the pid's start time (pids are reused). A writer that shares
both the machine and the pid namespace can look the process up in /proc: if no process with that pid and start
time runs, the holder was killed (e.g. SIGKILL) and its claims can be taken over at once instead of after its
lease. Anywhere else (another host, no /proc) nothing is proven and the lease decides, as before.
"""

from __future__ import annotations

import functools
import os
import socket
from pathlib import Path

__all__ = ["this_machine", "process_start", "process_gone"]


@functools.cache
def this_machine() -> str:
    """'<hostname>/<boot id>/<pid namespace>', or '' where the kernel does not say (then nothing is provable)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")  # 'pid:[4026531836]'
    except OSError:
        return ""
    return f"{socket.gethostname()}/{boot}/{namespace}"


def process_start(pid: int) -> int | None:
    """Start time of the running process `pid` in clock ticks since boot; None when none runs (or a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after 'pid (comm) ': state is field 3 of stat(5), start 22
    if fields[0] in ("Z", "X"):  # killed, not yet reaped by its parent
        return None
    return int(fields[19])


def process_gone(machine: str, pid: int, started: int) -> bool:
    """Whether the process (`pid`, started at `started`) on `machine` provably no longer runs: only decidable on
    that same machine and pid namespace; False whenever it is not."""
    if not machine or not started or machine != this_machine():
        return False
    return process_start(pid) != started
