# -*- test-case-name: tests.test_writes -*-
"""
How fan-out frames reach the sockets (docs/architecture.md, "Signalling
fan-out"): gathered per connection for one turn of the reactor
(L{Coalescer}), then written straight to the socket when the connection
has nothing buffered (L{writeThrough}).

Twisted's C{transport.write} buffers, registers the socket with the
reactor as a writer (one C{epoll_ctl}), sends on the next wake-up and
unregisters it again (another C{epoll_ctl}): three system calls and a trip
through the event loop for every frame.  A room's indication goes to every
member at once, so for a 1,000-member room that is 3,000 system calls where
1,000 sends would do.  L{writeThrough} sends at once when the connection's
buffer is empty (a reader that keeps up: nearly always), and hands
whatever the kernel did not take to C{transport.write}, which keeps the
order and the back-pressure (the producer is paused as before).

A burst of requests read in one wake-up (twenty members joining at once)
makes many frames for the same connections; L{Coalescer} holds them until
the reactor's next turn and writes each connection's frames as one
C{send}.

Only plain TCP transports (Twisted's C{tcp.Server}) are written through;
TLS and anything else take the ordinary path.  The buffer test reads two
attributes of Twisted's C{FileDescriptor} that are not public API, so
L{checkWriteThrough} (run when the factory is made) confirms they are
still there and turns write-through off, with one log line, when an
upgrade moved them.
"""

from __future__ import annotations

import socket

from twisted.internet import tcp

from ahoyconference.logs import logger

_log = logger(__name__)

_enabled = True


def checkWriteThrough() -> bool:
    """
    Whether the installed Twisted still has what L{writeThrough} relies on
    (C{dataBuffer}, C{offset}, C{_tempDataLen} and C{socket} on
    C{tcp.Connection}); when not, write-through is off (logged once).
    """
    global _enabled
    one, other = socket.socketpair()
    try:
        fresh = tcp.Connection(one, None)
        _enabled = (isinstance(getattr(fresh, "dataBuffer", None), bytes)
                    and isinstance(getattr(fresh, "offset", None), int)
                    and isinstance(getattr(fresh, "_tempDataLen", None), int)
                    and fresh.socket is one)
    except Exception:  # pragma: no cover - depends on the Twisted version
        _enabled = False
    finally:
        one.close()
        other.close()
    if not _enabled:
        _log.warn("this Twisted's TCP transport has no dataBuffer/_tempDataLen: "
                  "fan-out frames take the reactor's write path")
    return _enabled


def writeThrough(transport, data: bytes) -> int:
    """
    Write C{data} to C{transport}, straight to the socket when nothing is
    buffered there; return how many bytes went out at once (0 when the
    frame took the ordinary, buffered path).
    """
    if (_enabled and type(transport) is tcp.Server and transport.connected
            and not transport.disconnecting and not transport._tempDataLen
            and transport.offset == len(transport.dataBuffer)):
        try:
            sent = transport.socket.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            # the connection is gone: the ordinary path notices and closes it
            transport.write(data)
            return 0
        if sent < len(data):
            transport.write(data[sent:])
        return sent
    transport.write(data)
    return 0


def _joined(frames: list[bytes]) -> bytes:
    return frames[0] if len(frames) == 1 else b"".join(frames)


class Coalescer:
    """
    Frames for each connection, held until the reactor's next turn and then
    written together (one L{writeThrough} per connection).

    @param callLater: schedules the flush (the reactor's C{callLater}; a
        delay of 0 runs it after what the current wake-up read).
    @param onError: called once per connection whose held frames could not
        be written (counted in C{/metrics}); the first such error is logged
        with its traceback, the rest only counted.
    @ivar errors: such failed writes so far.
    """

    def __init__(self, callLater, onError=None):
        self._callLater = callLater
        self._onError = onError
        self.errors = 0
        self._pending: dict[object, list[bytes]] = {}
        self._call = None

    def write(self, transport, data: bytes) -> None:
        """Queue C{data} for C{transport}; it goes out on the next turn."""
        frames = self._pending.get(transport)
        if frames is None:
            self._pending[transport] = [data]
            if self._call is None:
                self._call = self._callLater(0, self.flush)
        else:
            frames.append(data)

    def flushOne(self, transport) -> None:
        """
        Write what is held for C{transport} now (before a frame that
        bypasses the coalescer, such as a close frame, or when it goes).
        """
        frames = self._pending.pop(transport, None)
        if frames:
            writeThrough(transport, _joined(frames))

    def flush(self) -> None:
        """Write everything held, one write per connection."""
        self._call = None
        pending, self._pending = self._pending, {}
        for transport, frames in pending.items():
            try:
                writeThrough(transport, _joined(frames))
            except Exception:
                self.errors += 1
                if self.errors == 1:
                    _log.failure("error writing to a connection (the first; the rest are "
                                 "counted in ahoy_websocket_write_errors_total)")
                if self._onError is not None:
                    self._onError()
