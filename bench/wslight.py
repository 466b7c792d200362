"""
A light WebSocket member for the signalling bench: thousands of them in one
asyncio process.

The package's protocol client (L{ahoyconference.client.ProtocolClient}, on
the C{websockets} library) parses and decodes every frame; a member of a
5,000-member room receives 2,500 join indications on average, 12.5 M in
all, which keeps one Python process busy for many minutes.  This member
finds frame boundaries itself (server frames are unmasked), decodes only
responses and chat indications, and only counts the rest by their
C{messageType}.  Its own frames carry an all-zero mask (RFC 6455 wants a
mask on every client frame; its value is not checked by servers), so the
payload goes out as it is.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
import time
from collections import Counter
from urllib.parse import urlsplit

SUBPROTOCOL = "conference-protocol"


class LightMember(asyncio.Protocol):
    """One WebSocket connection speaking the conference protocol, cheaply."""

    def __init__(self, onChat=None):
        self.onChat = onChat
        self.counts: Counter = Counter()
        self.memberID = None
        self._transport = None
        self._buffer = bytearray()
        self._open = False
        self._opened = asyncio.get_running_loop().create_future()
        self._waiting: dict[str, asyncio.Future] = {}
        self._serial = 0
        self.closed = asyncio.get_running_loop().create_future()

    @classmethod
    async def connect(cls, url: str, timeout: float = 30.0, onChat=None) -> LightMember:
        """Connect and finish the handshake."""
        parts = urlsplit(url)
        loop = asyncio.get_running_loop()
        _, member = await asyncio.wait_for(
            loop.create_connection(lambda: cls(onChat), parts.hostname, parts.port or 80),
            timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        member._transport.write((
            f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {parts.hostname}:{parts.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Protocol: {SUBPROTOCOL}\r\n\r\n").encode())
        await asyncio.wait_for(member._opened, timeout)
        return member

    # -- asyncio.Protocol ---------------------------------------------------

    def connection_made(self, transport):
        self._transport = transport

    def connection_lost(self, exc):
        if not self._opened.done():
            self._opened.set_exception(ConnectionError("closed during the handshake"))
        for f in self._waiting.values():
            if not f.done():
                f.set_exception(ConnectionError("connection closed"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data):
        buf = self._buffer
        buf += data
        if not self._open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end])
            del buf[:end + 4]
            if not head.startswith(b"HTTP/1.1 101"):
                self._opened.set_exception(ConnectionError(head.split(b"\r\n")[0].decode()))
                self._transport.close()
                return
            self._open = True
            self._opened.set_result(None)
        pos = 0
        size = len(buf)
        while size - pos >= 2:
            opcode = buf[pos] & 0x0F
            length = buf[pos + 1] & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length = struct.unpack_from("!H", buf, pos + 2)[0]
                head = 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = struct.unpack_from("!Q", buf, pos + 2)[0]
                head = 10
            if size - pos < head + length:
                break
            start = pos + head
            pos = start + length
            if opcode == 1:
                self._message(buf, start, pos)
            elif opcode == 9:      # ping: answer with a pong
                self._send(bytes(buf[start:pos]), 0xA)
            elif opcode == 8:
                self._transport.close()
        if pos:
            del buf[:pos]

    # -- messages -------------------------------------------------------------

    def _message(self, buf, start, end):
        head = bytes(buf[start:start + 64])
        quote = head.find(b'"', 16)
        kind = head[16:quote] if head.startswith(b'{"messageType":"') else head
        self.counts[kind] += 1
        if kind.endswith(b"_response"):
            message = json.loads(bytes(buf[start:end]))
            f = self._waiting.pop(message.get("transactionID"), None)
            if f is not None and not f.done():
                f.set_result(message)
        elif kind == b"CHAT_MESSAGE_indication" and self.onChat is not None:
            self.onChat(time.perf_counter(), json.loads(bytes(buf[start:end])))

    def _send(self, payload: bytes, opcode: int = 1) -> None:
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        self._transport.write(head + b"\0\0\0\0" + payload)

    async def request(self, messageType: str, timeout: float = 30.0, **fields) -> dict:
        """Send one request and wait for its response."""
        self._serial += 1
        tid = f"t{self._serial}"
        f = asyncio.get_running_loop().create_future()
        self._waiting[tid] = f
        self._send(json.dumps({"messageType": messageType, "transactionID": tid,
                               **fields}).encode())
        try:
            return await asyncio.wait_for(f, timeout)
        finally:
            self._waiting.pop(tid, None)

    def frames(self) -> int:
        """Text messages received so far."""
        return sum(self.counts.values())

    async def close(self) -> None:
        """Close the connection (a close frame, then the socket)."""
        if self._transport is not None and not self._transport.is_closing():
            self._send(struct.pack("!H", 1000), 0x8)
            self._transport.close()
