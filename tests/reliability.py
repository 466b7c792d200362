"""
Shared helpers of the reliability tests (C{test_sdp_input}, C{test_rtp_input},
C{test_vanish}, C{test_churn}; docs/reliability.md): a guard that keeps every
datagram of this process on 127.0.0.1, counts of a process's UDP sockets and
file descriptors from C{/proc}, and a capture of errors that would otherwise
only reach asyncio's exception handler or Python's C{logging}.
"""

from __future__ import annotations

import asyncio
import logging
import os
from asyncio import selector_events

from twisted.logger import globalLogPublisher

from ahoyconference.sockdrops import socketInodes

LOOPBACK = "127.0.0.1"


def guardDatagrams(testCase) -> list[tuple[str, int, int]]:
    """
    From now until the test ends, a datagram this process tries to send to
    any address but 127.0.0.1 is not sent but recorded as C{(host, port,
    size)} in the returned list (docs/architecture.md, Tests: media stays on loopback).

    Every UDP socket of aioice (and so of aiortc and of the engine's fast
    path, which keeps the transport's bound C{sendto}) is an asyncio
    C{_SelectorDatagramTransport} on the reactor's loop.
    """
    refused: list[tuple[str, int, int]] = []
    cls = selector_events._SelectorDatagramTransport
    original = cls.sendto

    def sendto(self, data, addr=None):
        target = addr if addr is not None else self.get_extra_info("peername")
        if target is None or target[0] != LOOPBACK:
            refused.append((target[0] if target else "?", target[1] if target else 0, len(data)))
            return None
        return original(self, data, addr)

    testCase.patch(cls, "sendto", sendto)
    return refused


def udpSockets(pid: int | str = "self") -> int:
    """How many UDP sockets (IPv4 and IPv6) the process has open."""
    mine = socketInodes(pid)
    count = 0
    for table in ("udp", "udp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                next(f)
                for line in f:
                    if line.split()[9] in mine:
                        count += 1
        except FileNotFoundError:
            pass
    return count


def openFds(pid: int | str = "self") -> int:
    """How many file descriptors the process has open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def rssKiB(pid: int | str = "self") -> int:
    """The process's resident set size in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class ErrorCapture:
    """
    While installed: every error the process reports anywhere, i.e.
    asyncio's exception handler (an exception escaping a callback such as
    C{datagram_received}, or a task), a C{twisted.logger} event with a
    failure or at error level, and Python C{logging} at WARNING or above
    (aiortc logs a dying DTLS transport's traceback as a warning) except
    the test peers' complaints about undecodable frames (a subscriber that
    starts between keyframes).
    """

    def __init__(self, testCase):
        self.errors: list[str] = []
        loop = asyncio.get_event_loop()
        previous = loop.get_exception_handler()

        def handler(loop, context):
            exception = context.get("exception")
            self.errors.append(f"asyncio: {context.get('message')} {exception!r}")

        loop.set_exception_handler(handler)
        testCase.addCleanup(loop.set_exception_handler, previous)

        def observe(event):
            if event.get("log_failure") is not None:
                self.errors.append(f"twisted: {event['log_failure'].getErrorMessage()}")
            elif getattr(event.get("log_level"), "name", "") in ("error", "critical"):
                self.errors.append(f"twisted: {event.get('log_format')}")

        globalLogPublisher.addObserver(observe)
        testCase.addCleanup(globalLogPublisher.removeObserver, observe)

        capture = self

        class Handler(logging.Handler):
            def emit(self, record):
                message = record.getMessage()
                if "failed to decode" not in message:  # a test peer's decoder, mid-GOP
                    capture.errors.append(f"logging {record.name}: {message[:300]}")

        handler_ = Handler(level=logging.WARNING)
        root = logging.getLogger()
        root.addHandler(handler_)
        testCase.addCleanup(root.removeHandler, handler_)
