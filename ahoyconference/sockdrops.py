# -*- test-case-name: tests.test_sockdrops -*-
"""
Datagrams the kernel dropped on this process's UDP sockets.

When the one thread does not read a socket fast enough its receive buffer
fills and the kernel drops what arrives next: the packets never reach the
engine, so the engine cannot count them.  The kernel does, per socket, in
the last column of C{/proc/net/udp} and C{/proc/net/udp6}.  L{udpDrops} sums
that column over the sockets this process holds (matched by inode through
C{/proc/self/fd}); C{/metrics} exports it as C{ahoy_udp_receive_drops}, and
L{DropWatch} logs once when drops first appear and once more each time they
start again after a quiet check.

A closed socket takes its count with it, so the sum may go down when peer
connections end (one socket each when C{[ice] udp_port = 0}); on one UDP
port it only grows.
"""

from __future__ import annotations

import os

from ahoyconference.logs import logger

_log = logger(__name__)

PROC = "/proc"


def socketInodes(pid: int | str = "self", proc: str = PROC) -> set[str]:
    """The inodes of the sockets process C{pid} holds (from its C{fd} links)."""
    inodes = set()
    fdDir = os.path.join(proc, str(pid), "fd")
    try:
        names = os.listdir(fdDir)
    except OSError:
        return inodes
    for name in names:
        try:
            target = os.readlink(os.path.join(fdDir, name))
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def udpDrops(proc: str = PROC) -> int | None:
    """
    The kernel's drop counts summed over this process's UDP sockets, or
    C{None} where C{/proc} does not say (not Linux).
    """
    inodes = socketInodes("self", proc)
    total = 0
    found = False
    for table in ("udp", "udp6"):
        try:
            with open(os.path.join(proc, "self", "net", table)) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        found = True
        for line in lines:
            fields = line.split()
            # sl local rem st tx:rx tr:tm retrnsmt uid timeout inode ref pointer drops
            if len(fields) >= 13 and fields[9] in inodes:
                total += int(fields[12])
    return total if found else None


class DropWatch:
    """
    Logs when the kernel starts dropping datagrams on our sockets (once per
    episode: an episode ends at a check that found no new drops).
    """

    def __init__(self, read=udpDrops):
        self._read = read
        self._last: int | None = None
        self._dropping = False

    def check(self) -> int | None:
        """Read the count now; log the start of an episode.  @return: the count."""
        now = self._read()
        if now is None:
            return None
        grew = self._last is not None and now > self._last
        if grew and not self._dropping:
            _log.warn("the kernel dropped {count} datagrams on our UDP sockets: the server "
                      "does not read them fast enough (too much load for one process?)",
                      count=now - self._last)
        self._dropping = grew
        self._last = now
        return now
