"""
A server that gathers on loopback only ignores connectivity checks from
other addresses, so it never learns (and sends media to) a peer-reflexive
address elsewhere on the machine.
"""

from __future__ import annotations

import asyncio

from aioice import stun
from twisted.trial.unittest import TestCase

from ahoyconference.config import IceSettings
from ahoyconference.media import ice
from ahoyconference.media.engine import AiortcMediaEngine
from tests.helpers import asyncTest
from tests.test_media_engine import RecordingListener, loopbackOnly


class RecordingProtocol:
    """Stands where aioice's StunProtocol stands; records what is sent."""

    def __init__(self):
        self.sent = []

    def send_stun(self, message, addr):
        self.sent.append((message, addr))


class LoopbackGuardTests(TestCase):
    """L{hooks.guardChecks} with L{ice.isLoopback}, through the engine."""

    def test_onlyLoopback(self):
        self.assertTrue(ice.onlyLoopback(("127.0.0.1", "::1")))
        self.assertFalse(ice.onlyLoopback(("127.0.0.1", "192.0.2.1")))
        self.assertFalse(ice.onlyLoopback(()))

    @asyncTest
    async def test_checksFromElsewhereIgnored(self):
        from twisted.internet import reactor

        loopbackOnly(self)
        engine = AiortcMediaEngine(RecordingListener(), IceSettings(host_addresses=("127.0.0.1",)),
                                   reactor)
        try:
            await engine.publish("m1", True, False, 500).asFuture(asyncio.get_event_loop())
            conn = engine._publishers["m1"].pending
            connection = conn.pc.getTransceivers()[0].receiver.transport.transport._connection
            self.assertTrue(connection._ahoyGuarded)
            protocol = RecordingProtocol()
            request = stun.Message(message_method=stun.Method.ALLOCATE,
                                   message_class=stun.Class.REQUEST)
            connection.request_received(request, ("192.0.2.2", 40000), protocol)
            connection.request_received(request, ("not-an-ip", 40000), protocol)
            self.assertEqual(protocol.sent, [])
            connection.request_received(request, ("127.0.0.1", 40000), protocol)
            self.assertEqual([addr for _, addr in protocol.sent], [("127.0.0.1", 40000)])
        finally:
            await engine.close().asFuture(asyncio.get_event_loop())

    @asyncTest
    async def test_productionGuardedByNetworks(self):
        """
        Production (gathering on real interfaces) answers checks from the
        allowed remote networks only ([ice] allowed_remote_networks): not
        from a private network the server is not on.
        """
        from twisted.internet import reactor

        loopbackOnly(self)
        engine = AiortcMediaEngine(RecordingListener(), IceSettings(), reactor)
        try:
            await engine.publish("m1", True, False, 500).asFuture(asyncio.get_event_loop())
            conn = engine._publishers["m1"].pending
            connection = conn.pc.getTransceivers()[0].receiver.transport.transport._connection
            self.assertTrue(connection._ahoyGuarded)
            protocol = RecordingProtocol()
            request = stun.Message(message_method=stun.Method.ALLOCATE,
                                   message_class=stun.Class.REQUEST)
            connection.request_received(request, ("10.250.0.9", 40000), protocol)
            self.assertEqual(protocol.sent, [])
            self.assertEqual(engine.stats()["refused_ice_checks"], 1)
        finally:
            await engine.close().asFuture(asyncio.get_event_loop())
