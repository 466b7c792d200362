"""
Write-through for fan-outs (L{ahoyconference.writes}), over real TCP
connections on 127.0.0.1.
"""

from __future__ import annotations

from twisted.internet import defer, protocol, reactor
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from ahoyconference import writes


class _Collect(protocol.Protocol):
    """The reading side: keeps everything it receives."""

    def connectionMade(self):
        self.received = bytearray()
        self.factory.connected.callback(self)

    def dataReceived(self, data):
        self.received += data


class _Hold(protocol.Protocol):
    """The writing side (a C{tcp.Server}): handed to the test."""

    def connectionMade(self):
        self.factory.made.callback(self)


def _until(predicate, timeout: float = 10.0):
    """Poll the reactor until C{predicate()} holds."""
    d = defer.Deferred()
    deadline = reactor.seconds() + timeout

    def check():
        if predicate():
            d.callback(None)
        elif reactor.seconds() > deadline:
            d.errback(AssertionError("timed out"))
        else:
            reactor.callLater(0.01, check)

    check()
    return d


class WriteThroughTests(unittest.TestCase):
    """A frame goes to the socket at once when nothing is buffered."""

    @defer.inlineCallbacks
    def setUp(self):
        server = protocol.ServerFactory.forProtocol(_Hold)
        server.made = defer.Deferred()
        port = reactor.listenTCP(0, server, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = protocol.ClientFactory.forProtocol(_Collect)
        client.connected = defer.Deferred()
        connector = reactor.connectTCP("127.0.0.1", port.getHost().port, client)
        self.addCleanup(connector.disconnect)
        self.writer = yield server.made
        self.reader = yield client.connected
        self.addCleanup(self.writer.transport.loseConnection)

    def test_checked(self):
        """The installed Twisted has what write-through relies on."""
        self.assertTrue(writes.checkWriteThrough())

    @defer.inlineCallbacks
    def test_straightToTheSocket(self):
        """
        With nothing buffered the whole frame is sent at once: the transport
        keeps nothing and is not registered as a writer.
        """
        transport = self.writer.transport
        self.assertEqual(writes.writeThrough(transport, b"hello"), 5)
        self.assertEqual(transport._tempDataLen, 0)
        self.assertNotIn(transport, reactor.getWriters())
        yield _until(lambda: bytes(self.reader.received) == b"hello")

    @defer.inlineCallbacks
    def test_behindBufferedData(self):
        """
        When something is buffered, the frame is queued behind it (order
        kept) and nothing is written through.
        """
        transport = self.writer.transport
        transport.write(b"first ")
        self.assertEqual(writes.writeThrough(transport, b"second"), 0)
        yield _until(lambda: bytes(self.reader.received) == b"first second")

    @defer.inlineCallbacks
    def test_partial(self):
        """
        A frame larger than the kernel takes at once: the rest is buffered
        by the transport and arrives complete and in order.
        """
        transport = self.writer.transport
        self.reader.transport.pauseProducing()   # the reader stops reading
        big = bytes(range(256)) * 40000           # 10 MB: more than the socket buffers
        sent = writes.writeThrough(transport, big)
        self.assertGreater(sent, 0)
        self.assertLess(sent, len(big))
        self.assertEqual(transport._tempDataLen, len(big) - sent)
        self.assertEqual(writes.writeThrough(transport, b"tail"), 0)
        self.reader.transport.resumeProducing()
        yield _until(lambda: len(self.reader.received) == len(big) + 4, timeout=30)
        self.assertEqual(bytes(self.reader.received), big + b"tail")

    def test_otherTransports(self):
        """Anything but plain TCP (TLS, a test transport) takes C{write}."""
        transport = StringTransport()
        self.assertEqual(writes.writeThrough(transport, b"frame"), 0)
        self.assertEqual(transport.value(), b"frame")

    @defer.inlineCallbacks
    def test_closed(self):
        """A connection that is closing is not written through."""
        transport = self.writer.transport
        transport.loseConnection()
        self.assertEqual(writes.writeThrough(transport, b"late"), 0)
        yield _until(lambda: not transport.connected)


class CoalescerTests(unittest.TestCase):
    """Frames held for one turn, then one write per connection, in order."""

    def test_oneWritePerConnection(self):
        clock = Clock()
        coalescer = writes.Coalescer(clock.callLater)
        one, two = StringTransport(), StringTransport()
        calls = []
        self.patch(one, "write", lambda data, w=one.write: (calls.append(data), w(data)))
        for frame in (b"a", b"b", b"c"):
            coalescer.write(one, frame)
        coalescer.write(two, b"x")
        self.assertEqual((one.value(), two.value()), (b"", b""))
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        clock.advance(0)
        self.assertEqual((one.value(), two.value()), (b"abc", b"x"))
        self.assertEqual(calls, [b"abc"])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_flushOne(self):
        """What is held for a connection goes out at once (before a close frame)."""
        clock = Clock()
        coalescer = writes.Coalescer(clock.callLater)
        one, two = StringTransport(), StringTransport()
        coalescer.write(one, b"held")
        coalescer.write(two, b"other")
        coalescer.flushOne(one)
        self.assertEqual((one.value(), two.value()), (b"held", b""))
        clock.advance(0)
        self.assertEqual((one.value(), two.value()), (b"held", b"other"))

    def test_errorCounted(self):
        """
        A connection whose write fails is counted (each time) and the first
        failure logged; the others still get their frames.
        """
        clock = Clock()
        failed = []
        coalescer = writes.Coalescer(clock.callLater, lambda: failed.append(1))
        bad, good = StringTransport(), StringTransport()

        def boom(data):
            raise OSError("gone")

        self.patch(bad, "write", boom)
        for _ in range(2):
            coalescer.write(bad, b"x")
            coalescer.write(good, b"y")
            clock.advance(0)
        self.assertEqual((coalescer.errors, len(failed)), (2, 2))
        self.assertEqual(good.value(), b"yy")
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
