#!/usr/bin/env python3
"""Micro-benchmark of the per-output work of the forwarding loop, in isolation:
CPU time (user + sys, so the kernel's loopback delivery that a sendto pays is
included) per packet for each step and for the whole per-output body, the
current way (bytearray rewrite, bytes(), pylibsrtp Session.protect, asyncio
transport.sendto) and the zero-copy way that ahoyconference/media/forward.py
has used since that A/B (rewrite in pylibsrtp's C buffer, lib.srtp_protect, socket.sendto of a
memoryview).  Packets go to a UDP socket on 127.0.0.1 with a large receive
buffer that is drained between rounds.  Rounds are interleaved; min and median
over rounds are printed as JSON.  Usage: micro_forward.py [--n 20000] [--rounds 7]
"""

import argparse
import asyncio
import json
import os
import socket
import statistics
import struct
import time

from pylibsrtp import Policy, Session
from pylibsrtp._binding import ffi, lib

REWRITE = struct.Struct("!BHII").pack_into


def cpu() -> float:
    t = os.times()
    return t.user + t.system


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    key = os.urandom(30)
    tx = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND))
    tx2 = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND))
    plain = (struct.pack("!BBHII", 0x90, 97, 1, 1000, 1234) + b"\xbe\xde\x00\x01\x10\x31\x00\x00"
             + os.urandom(1150))
    rcv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rcv.bind(("127.0.0.1", 0))
    rcv.setsockopt(socket.SOL_SOCKET, 33, 256 << 20)   # SO_RCVBUFFORCE
    addr = rcv.getsockname()
    loop = asyncio.get_running_loop()
    tr, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
    sock = tr._sock
    cdata = tx2._cdata
    view = memoryview(ffi.buffer(cdata))
    lenp = ffi.new("int *")
    srtp = tx2._srtp[0]
    protected = tx.protect(plain)
    seq = [0]

    def drain():
        while True:
            try:
                rcv.recv(4096, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return

    def current(n):
        for i in range(n):
            b = bytearray(plain)
            REWRITE(b, 1, 97, (seq[0] + i) & 0xFFFF, 5000, 4321)
            b[21] = 0x31
            tr.sendto(tx.protect(bytes(b)), addr)
        seq[0] += n

    def zero_copy(n):
        size = len(plain)
        for i in range(n):
            view[:size] = plain
            REWRITE(view, 1, 97, (seq[0] + i) & 0xFFFF, 5000, 4321)
            view[21] = 0x31
            lenp[0] = size
            if lib.srtp_protect(srtp, cdata, lenp):
                raise RuntimeError("srtp_protect")
            sock.sendto(view[:lenp[0]], addr)
        seq[0] += n

    def protect_only(n):
        for i in range(n):
            b = bytearray(plain)
            REWRITE(b, 1, 97, (seq[0] + i) & 0xFFFF, 5000, 4321)
            tx.protect(bytes(b))
        seq[0] += n

    def raw_protect_only(n):
        size = len(plain)
        for i in range(n):
            view[:size] = plain
            REWRITE(view, 1, 97, (seq[0] + i) & 0xFFFF, 5000, 4321)
            lenp[0] = size
            lib.srtp_protect(srtp, cdata, lenp)
        seq[0] += n

    def asyncio_sendto_only(n):
        for _ in range(n):
            tr.sendto(protected, addr)

    def socket_sendto_only(n):
        for _ in range(n):
            sock.sendto(protected, addr)

    cases = {"current: rewrite+protect+sendto": current, "zero-copy: rewrite+protect+sendto": zero_copy,
             "pylibsrtp protect (with bytearray rewrite)": protect_only,
             "lib.srtp_protect in place": raw_protect_only,
             "asyncio transport.sendto": asyncio_sendto_only, "socket.sendto": socket_sendto_only}
    res = {k: [] for k in cases}
    for _ in range(args.rounds):
        for name, fn in cases.items():
            drain()
            c = cpu()
            fn(args.n)
            res[name].append(1e6 * (cpu() - c) / args.n)
    drain()
    tr.close()
    print(json.dumps({k: {"min_us": round(min(v), 2), "median_us": round(statistics.median(v), 2)}
                      for k, v in res.items()}, indent=1))


if __name__ == "__main__":
    t0 = time.time()
    asyncio.run(main())
