"""
Kernel drops on our UDP sockets (L{ahoyconference.sockdrops}): a real
socket on 127.0.0.1 that nobody reads.
"""

from __future__ import annotations

import socket

from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from ahoyconference import sockdrops


class UdpDropsTests(unittest.TestCase):

    def test_countsOwnSocket(self):
        """
        Datagrams sent to a socket of ours with a full receive buffer are
        counted; a socket that is not ours is not.
        """
        before = sockdrops.udpDrops()
        if before is None:
            raise unittest.SkipTest("no /proc/self/net/udp here")
        full = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(full.close)
        full.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        full.bind(("127.0.0.1", 0))
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(sender.close)
        for _ in range(500):
            sender.sendto(b"x" * 1000, full.getsockname())
        self.assertGreater(sockdrops.udpDrops(), before)
        dropped = sockdrops.udpDrops()
        full.close()   # its count goes with it
        self.assertLess(sockdrops.udpDrops(), dropped)


class DropWatchTests(unittest.TestCase):

    def test_logsOncePerEpisode(self):
        """One log line when drops start, none while they go on, one when they start again."""
        counts = iter([0, 5, 9, 9, 12, 20])
        watch = sockdrops.DropWatch(read=lambda: next(counts))
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        values = [watch.check() for _ in range(6)]
        self.assertEqual(values, [0, 5, 9, 9, 12, 20])
        warnings = [e for e in events if "dropped" in e.get("log_format", "")]
        self.assertEqual([e["count"] for e in warnings], [5, 3])

    def test_notLinux(self):
        """Without /proc there is nothing to say."""
        self.assertIsNone(sockdrops.DropWatch(read=lambda: None).check())
        self.assertIsNone(sockdrops.udpDrops(proc="/nonexistent"))
