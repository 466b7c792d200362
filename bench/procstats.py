"""What the bench reads of processes and of the machine: CPU (/proc/PID/stat,
per thread too), RSS, page faults, UDP drops and queues (/proc/net/udp),
reclaim, mlockall, a calibration loop and the event loop's lag."""
from __future__ import annotations

import asyncio
import logging
import os
import resource
import time

LOG = logging.getLogger("load")


CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pids: list[int]) -> tuple[float, float]:
    """(utime, stime) of whole processes (all threads), summed over pids, seconds."""
    user = system = 0.0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        user += int(rest[11]) / CLK_TCK
        system += int(rest[12]) / CLK_TCK
    return user, system


def proc_threads(pids: list[int]) -> dict:
    """CPU seconds per thread name (summed over threads of the same name)."""
    out: dict[str, float] = {}
    tids = []
    for pid in pids:
        try:
            tids += [(pid, t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            pass
    for pid, tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                s = f.read()
        except OSError:
            continue
        name = s[s.index("(") + 1:s.rindex(")")]
        rest = s.rsplit(")", 1)[1].split()
        out[name] = out.get(name, 0.0) + (int(rest[11]) + int(rest[12])) / CLK_TCK
    return out


def proc_rss_kb(pids: list[int], field: str = "VmRSS:") -> int:
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field):
                    total += int(line.split()[1])
    return total


def proc_majflt(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            total += int(f.read().rsplit(")", 1)[1].split()[9])
    return total


def _socket_inodes(pids: list[int]) -> set[str]:
    """The inodes of the sockets these processes have open."""
    inodes = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        except OSError:
            pass
    return inodes


def _udp_rows(pids: list[int]):
    """The split rows of /proc/net/udp[6] for these processes' sockets."""
    inodes = _socket_inodes(pids)
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    if len(cols) > 12 and cols[9] in inodes:
                        yield cols
        except OSError:
            pass


def udp_drops(pids: list[int]) -> int:
    """Datagrams the kernel dropped on the UDP sockets of these processes
    (receive buffer full), from the `drops` column of /proc/net/udp[6]."""
    return sum(int(cols[12]) for cols in _udp_rows(pids))


def udp_rx_queue_bytes(pids: list[int]) -> int:
    """Bytes waiting in the receive queues of these processes' UDP sockets
    (rx_queue of /proc/net/udp): a growing value means the process is behind."""
    return sum(int(cols[4].split(":")[1], 16) for cols in _udp_rows(pids))


def udp_rcvbuf_errors() -> int:
    """Machine-wide UDP RcvbufErrors (/proc/net/snmp)."""
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Udp:")]
    return int(rows[1][rows[0].index("RcvbufErrors")])


def vm_reclaim() -> int:
    """Pages scanned for reclaim, machine-wide (kswapd + direct)."""
    n = 0
    with open("/proc/vmstat") as f:
        for line in f:
            if line.startswith(("pgscan_kswapd ", "pgscan_direct ")):
                n += int(line.split()[1])
    return n


def mlock_self() -> bool:
    """mlockall(MCL_CURRENT|MCL_FUTURE|MCL_ONFAULT): keep our pages resident
    during page-reclaim storms (see mlock_onfault.c)."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mlockall(1 | 2 | 4) != 0:
        LOG.warning("mlockall failed: %s", os.strerror(ctypes.get_errno()))
        return False
    return True


def calibrate() -> dict:
    """A fixed amount of CPU work, timed, to see machine speed drift between
    runs (C: sha256 of 16 MiB; Python: a 1M-iteration loop).  Best of 3."""
    import hashlib
    buf = b"\x5a" * (16 << 20)
    c = py = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        hashlib.sha256(buf).digest()
        c = min(c, time.perf_counter() - t)
        t = time.perf_counter()
        x = 0
        for i in range(1_000_000):
            x += i & 7
        py = min(py, time.perf_counter() - t)
    return {"sha256_16MiB_ms": round(1e3 * c, 1), "py_loop_1M_ms": round(1e3 * py, 1)}


def self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def machine_cpu() -> tuple[float, float, float]:
    """(busy, total, steal) jiffies over all cores from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    total = sum(v[:8])
    return total - idle, total, v[7]


class LoopLag:
    """Measures how late the event loop wakes up (load-generator overload)."""

    def __init__(self, period: float = 0.02):
        self.period = period
        self.samples: list[float] = []
        self.recording = False
        self._task = asyncio.create_task(self._run())

    async def _run(self):
        while True:
            t = time.monotonic()
            await asyncio.sleep(self.period)
            if self.recording:
                self.samples.append(time.monotonic() - t - self.period)

    def stats_ms(self) -> dict:
        if not self.samples:
            return {"max": None, "p99": None}
        xs = sorted(self.samples)
        return {"max": round(1e3 * xs[-1], 1), "p99": round(1e3 * xs[int(0.99 * (len(xs) - 1))], 1)}

    def stop(self):
        self._task.cancel()
