"""
The send half of the one UDP port's batches in isolation: CPU time per copy
of one 1,200-byte packet to S loopback subscribers, C{sendto} per copy (what
the zero-copy path does on a socket of its own) against the queue and one
C{sendmmsg} (L{ahoyconference.media.mmsg.SendBatch}), interleaved.  The
receivers are drained outside the timed part.

Usage: python bench/mmsg_micro.py [-S 10] [--rounds 5000] [--reps 5]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ahoyconference.media import mmsg  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-S", "--subscribers", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5000)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    if not mmsg.available():
        raise SystemExit("no sendmmsg here")
    from cffi import FFI

    ffi = FFI()
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.1", 0))
    sender.setblocking(False)
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    receivers = []
    for _ in range(args.subscribers):
        r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        r.bind(("127.0.0.1", 0))
        r.setblocking(False)
        r.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        receivers.append(r)
    addrs = [r.getsockname() for r in receivers]
    buffers = [ffi.new("char[]", 1500) for _ in receivers]
    views = [memoryview(ffi.buffer(b)) for b in buffers]
    batch = mmsg.SendBatch(sender, size=256)
    batch.holding = True
    queues = [batch.sender(b) for b in buffers]
    size = 1200

    def drain():
        for r in receivers:
            while True:
                try:
                    r.recv(2048)
                except BlockingIOError:
                    break

    def plain(rounds):
        send = sender.sendto
        for _ in range(rounds):
            for view, addr in zip(views, addrs, strict=True):
                send(view[:size], addr)

    def batched(rounds):
        for _ in range(rounds):
            for queue, view, addr in zip(queues, views, addrs, strict=True):
                queue(view[:size], addr)
            batch.flush()

    results = {"plain": [], "sendmmsg": []}
    chunk = 100
    for _ in range(args.reps):
        for name, run in (("plain", plain), ("sendmmsg", batched)):
            spent = 0.0
            for _ in range(args.rounds // chunk):
                t0 = time.process_time()
                run(chunk)
                spent += time.process_time() - t0
                drain()
            results[name].append(round(spent * 1e6 / (args.rounds // chunk * chunk
                                                       * args.subscribers), 3))
    ratio = [round(b / p, 3) for p, b in zip(results["plain"], results["sendmmsg"], strict=True)]
    print(json.dumps({"subscribers": args.subscribers, "us_per_copy": results,
                      "sendmmsg_over_plain": ratio, "failed": batch.failed}))


if __name__ == "__main__":
    main()
