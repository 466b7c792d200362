# -*- test-case-name: tests.test_udpmux -*-
"""
C{recvmmsg} and C{sendmmsg} (Linux) for the one UDP port
(L{ahoyconference.media.udpmux}), through cffi in ABI mode: libc is opened
with C{ffi.dlopen(None)}, nothing is compiled.  cffi is already there
(pylibsrtp is built on it).

 - L{Receiver}: every datagram waiting on a socket, up to a batch, in one
   system call.
 - L{SendBatch}: copies queued by the forwarding path (each protected in
   its subscriber's SRTP session's own buffer, L{hooks.zeroCopySender},
   and moved into the batch's) go out in one system call per batch.

L{available} is C{False} where libc has no such functions or the struct
layout is not the one declared here (then the mux uses C{recvfrom} and
C{sendto}).
"""

from __future__ import annotations

import errno
import socket
import struct

try:
    import cffi
except ImportError:  # pragma: no cover
    cffi = None

_DECLARATIONS = """
struct iovec { void *iov_base; size_t iov_len; };
struct msghdr {
    void *msg_name; unsigned int msg_namelen;
    struct iovec *msg_iov; size_t msg_iovlen;
    void *msg_control; size_t msg_controllen;
    int msg_flags;
};
struct mmsghdr { struct msghdr msg_hdr; unsigned int msg_len; };
int recvmmsg(int sockfd, struct mmsghdr *msgvec, unsigned int vlen, int flags, void *timeout);
int sendmmsg(int sockfd, struct mmsghdr *msgvec, unsigned int vlen, int flags);
"""

MSG_DONTWAIT = 0x40
"""Linux's C{MSG_DONTWAIT}."""

DATAGRAM = 2048
"""Bytes of each receive buffer (larger datagrams are truncated, as by C{recvfrom(2048)})."""

NAME = 28
"""Bytes of a C{sockaddr_in6}, the larger of the two address structures."""

_ffi = _libc = None


def _load():
    global _ffi, _libc
    if _ffi is not None or cffi is None:
        return
    try:
        ffi = cffi.FFI()
        ffi.cdef(_DECLARATIONS)
        libc = ffi.dlopen(None)
        libc.recvmmsg, libc.sendmmsg  # noqa: B018 (a missing symbol raises here)
    except (AttributeError, OSError, cffi.CDefError):
        return
    # glibc on 64-bit Linux: 56 and 64 bytes; anything else is not what we declared
    if struct.calcsize("P") != 8 or ffi.sizeof("struct msghdr") != 56 \
            or ffi.sizeof("struct mmsghdr") != 64:
        return
    _ffi, _libc = ffi, libc


def available() -> bool:
    """Can we use C{recvmmsg}/C{sendmmsg} here?"""
    _load()
    return _ffi is not None


def _packName(addr: tuple) -> bytes:
    """A C{sockaddr_in}/C{sockaddr_in6} for C{(host, port)}."""
    host, port = addr[0], addr[1]
    if ":" in host:
        return (struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", port, 0)
                + socket.inet_pton(socket.AF_INET6, host) + b"\0\0\0\0")
    return (struct.pack("=H", socket.AF_INET) + struct.pack("!H", port)
            + socket.inet_pton(socket.AF_INET, host) + b"\0" * 8)


def _unpackName(raw: bytes) -> tuple:
    family = struct.unpack_from("=H", raw)[0]
    port = struct.unpack_from("!H", raw, 2)[0]
    if family == socket.AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port
    return socket.inet_ntop(socket.AF_INET, raw[4:8]), port


class Receiver:
    """Up to C{size} datagrams of one socket per C{recvmmsg}."""

    def __init__(self, sock: socket.socket, size: int = 64):
        _load()
        ffi = _ffi
        self._fd = sock.fileno()
        self.size = self._size = size
        self._vec = ffi.new("struct mmsghdr[]", size)
        self._iov = ffi.new("struct iovec[]", size)
        self._data = ffi.new("char[]", size * DATAGRAM)
        self._names = ffi.new("char[]", size * NAME)
        self._buffer = ffi.buffer(self._data)
        self._nameBuffer = ffi.buffer(self._names)
        self._addresses: dict[bytes, tuple] = {}
        for i in range(size):
            self._iov[i].iov_base = self._data + i * DATAGRAM
            self._iov[i].iov_len = DATAGRAM
            header = self._vec[i].msg_hdr
            header.msg_iov = self._iov + i
            header.msg_iovlen = 1

    def receive(self) -> list[tuple[bytes, tuple]]:
        """
        The datagrams waiting now, with their source addresses (none: an
        empty list).

        @raise OSError: the socket's error (not C{EAGAIN}).
        """
        vec = self._vec
        for i in range(self._size):
            header = vec[i].msg_hdr
            header.msg_name = self._names + i * NAME
            header.msg_namelen = NAME
        count = _libc.recvmmsg(self._fd, vec, self._size, MSG_DONTWAIT, _ffi.NULL)
        if count < 0:
            code = _ffi.errno
            if code in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                return []
            raise OSError(code, errno.errorcode.get(code, str(code)))
        data, names, addresses = self._buffer, self._nameBuffer, self._addresses
        result = []
        for i in range(count):
            start = i * DATAGRAM
            raw = names[i * NAME:i * NAME + vec[i].msg_hdr.msg_namelen]
            addr = addresses.get(raw)
            if addr is None:
                if len(addresses) > 4096:
                    addresses.clear()
                addr = addresses[raw] = _unpackName(raw)
            result.append((data[start:start + vec[i].msg_len], addr))
        return result


class SendBatch:
    """
    Copies waiting to go out on one socket with one C{sendmmsg}.

    Each copy is moved into a slot of the batch's own buffer when it is
    queued (the subscriber's SRTP session's buffer it was protected in is
    written again by the session's next C{protect}, which may come first),
    with its destination.  L{flush} sends them; a full batch flushes itself,
    and so does the next loop turn when a copy was queued outside a read.

    @ivar failed: copies the kernel refused (counted, never forwarded).
    @ivar failedBytes: their bytes.
    @ivar holding: set while the mux hands out what it read (it flushes
        after); otherwise a queued copy is sent on the next loop turn.
    """

    def __init__(self, sock: socket.socket, size: int = 256, loop=None, onRefused=None):
        _load()
        ffi = _ffi
        self._loop = loop
        self._onRefused = onRefused
        self._scheduled = False
        self.holding = False
        self._fd = sock.fileno()
        self._size = size
        self._vec = ffi.new("struct mmsghdr[]", size)
        self._iov = ffi.new("struct iovec[]", size)
        self._data = ffi.new("char[]", size * DATAGRAM)
        self._slots = [self._data + i * DATAGRAM for i in range(size)]
        for i in range(size):
            self._iov[i].iov_base = self._slots[i]
            header = self._vec[i].msg_hdr
            header.msg_iov = self._iov + i
            header.msg_iovlen = 1
        self._count = 0
        self._names: dict[tuple, object] = {}
        self.failed = 0
        self.failedBytes = 0
        self.lastError: OSError | None = None

    def sender(self, cdata):
        """
        A C{sendto(view, addr)} for copies protected in C{cdata}: queues
        C{len(view)} bytes of it (at most L{DATAGRAM}) for C{addr}.
        """
        names = self._names
        iov = self._iov
        vec = self._vec
        slots = self._slots
        memmove = _ffi.memmove

        def send(view, addr):
            if self._count == self._size:
                self.flush()
            name = names.get(addr)
            if name is None:
                if len(names) > 4096:
                    names.clear()
                raw = _packName(addr)
                name = names[addr] = (_ffi.new("char[]", raw), len(raw))
            i = self._count
            size = min(len(view), DATAGRAM)
            memmove(slots[i], cdata, size)
            iov[i].iov_len = size
            header = vec[i].msg_hdr
            header.msg_name = name[0]
            header.msg_namelen = name[1]
            self._count = i + 1
            if not self.holding and not self._scheduled and self._loop is not None:
                self._scheduled = True  # queued outside a read (a phone, a timer)
                self._loop.call_soon(self.flush)

        return send

    def __len__(self) -> int:
        return self._count

    def flush(self) -> int:
        """Send what is queued; return how many copies the kernel refused."""
        count, vec = self._count, self._vec
        self._scheduled = False
        self._count = 0
        sent = refused = 0
        while sent < count:
            done = _libc.sendmmsg(self._fd, vec + sent, count - sent, MSG_DONTWAIT)
            if done <= 0:  # the copy at `sent` failed: count it, go on with the rest
                code = _ffi.errno
                self.lastError = OSError(code, errno.errorcode.get(code, str(code)))
                self.failedBytes += self._iov[sent].iov_len
                refused += 1
                sent += 1
            else:
                sent += done
        if refused:
            self.failed += refused
            if self._onRefused is not None:
                self._onRefused(refused, self.lastError)
        return refused
