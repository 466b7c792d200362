"""
A WebSocket client that never reads while its room chats: the server bounds
what it buffers for it, then disconnects it; the others see no delay.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket

from twisted.trial import unittest

from ahoyconference.config import Limits
from tests.helpers import Server, asyncTest, createAndJoin, testConfig


async def stalledClient(port: int) -> socket.socket:
    """Handshake and join by hand on a socket with a tiny receive buffer; then never read."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_event_loop()
    await loop.sock_connect(sock, ("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    await loop.sock_sendall(sock, (
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Protocol: conference-protocol\r\n\r\n").encode())
    response = b""
    while b"\r\n\r\n" not in response:
        response += await loop.sock_recv(sock, 4096)
    assert b" 101 " in response.split(b"\r\n")[0], response
    payload = json.dumps({"messageType": "CONFERENCE_JOIN_request", "conferenceID": "room",
                          "name": "sloth", "transactionID": "j"}).encode()
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    await loop.sock_sendall(sock, bytes([0x81, 0x80 | len(payload)]) + mask + masked)
    return sock


class SlowReaderTests(unittest.TestCase):
    """The send buffer bound."""

    @asyncTest
    async def test_slowReaderDisconnected(self):
        limit = 256 * 1024
        s = await Server(config=testConfig(limits=Limits(
            max_send_buffer_bytes=limit, join_rate=0, chat_rate=0, max_conferences_per_client=0,
        ))).start()
        sock = None
        try:
            talker, _ = await createAndJoin(s.url)
            sock = await stalledClient(s.port.getHost().port)
            await talker.expect("CONFERENCE_JOIN_indication")
            text = "x" * 60000
            gone = False
            for _ in range(400):  # 24 MB in all, far beyond any socket buffer
                r = await talker.request("CHAT_MESSAGE_request", message={"text": text})
                self.assertEqual(r["status"], 200)
                if len(s.service.members) == 1:
                    gone = True
                    break
            self.assertTrue(gone, "the slow reader was never disconnected")
            ind = await talker.expect("CONFERENCE_LEAVE_indication")
            self.assertEqual(ind["member"]["name"], "sloth")
            self.assertEqual(len(s.service.sessions), 1)
            await talker.close()
        finally:
            if sock is not None:
                sock.close()
            await s.stop()
