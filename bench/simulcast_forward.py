#!/usr/bin/env python3
"""
CPU per forwarded packet with a simulcast publisher against a single-layer
one, in one process and one run (docs/architecture.md, "Simulcast"): the
engine's own packet path (L{InStream} for one stream; L{SimulcastVideo} and
its L{LayerStream}s for three layers) feeds S outputs each with a real
pylibsrtp session (the zero-copy path) sending to a UDP socket on 127.0.0.1.

The single-layer publisher sends one 1,100-byte VP8 packet per call; the
simulcast publisher sends the same packets in three layers (ratio 1:3:9
in packets, as ¼, ½ and full size), of which each output is fed one (a
third of the outputs on each layer, switched in at a keyframe first).  The
figure is CPU seconds (user + sys: the kernel's loopback delivery counts)
divided by the copies sent, so packets of layers nobody gets are charged
to the forwarded ones, as they would be in the server.  Rounds of the two
are interleaved; min and median are printed as JSON.

Usage: bench/simulcast_forward.py [--outputs 9] [--n 20000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import struct
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from pylibsrtp import Policy, Session  # noqa: E402

from ahoyconference.media.forward import InStream  # noqa: E402
from ahoyconference.media.outstream import OutStream  # noqa: E402
from ahoyconference.media.selector import Selector  # noqa: E402
from ahoyconference.media.simulcast import LayerStream, SimulcastVideo  # noqa: E402

VP8 = ("video/vp8", 90000, "", "")
MID, RID = 1, 4


def cpu() -> float:
    """This process's CPU time (user + sys), finely resolved."""
    return time.process_time()


def packet(ssrc: int, seq: int, rid: bytes | None, keyframe=False, size=1100) -> bytes:
    """A VP8 packet with mid (and RID) extensions and a picture ID and TL0PICIDX."""
    ext = bytes([(MID << 4), ord("1")])
    if rid is not None:
        ext += bytes([(RID << 4) | (len(rid) - 1)]) + rid
    ext += b"\0" * (-len(ext) % 4)
    header = struct.pack("!BBHII", 0x90, 96, seq & 0xFFFF, (seq * 3000) & 0xFFFFFFFF, ssrc)
    header += struct.pack("!HH", 0xBEDE, len(ext) // 4) + ext
    descriptor = bytes([0x90, 0xC0, 0x80 | ((seq >> 8) & 0x7F), seq & 0xFF, seq & 0xFF])
    body = bytes([0 if keyframe else 1]) + b"\x55" * (size - len(header) - len(descriptor) - 1)
    return header + descriptor + body


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--outputs", type=int, default=9)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    loop = asyncio.get_running_loop()
    rcv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rcv.bind(("127.0.0.1", 0))
    rcv.setsockopt(socket.SOL_SOCKET, 33, 256 << 20)  # SO_RCVBUFFORCE
    addr = rcv.getsockname()
    transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                       local_addr=("127.0.0.1", 0))
    now = loop.time

    def outputs(count):
        outs = []
        for i in range(count):
            session = Session(Policy(key=os.urandom(30), ssrc_type=Policy.SSRC_ANY_OUTBOUND))
            out = OutStream("video", 1000 + i, {VP8: 100}, {}, None, ord("9"), session.protect,
                            transport.sendto, addr)
            assert out.zeroCopy is not None
            outs.append(out)
        return outs

    single = InStream("pub", "video", now)
    single.configure({96: VP8}, {96: 90000}, MID, 0)
    for out in outputs(args.outputs):
        single.attach(out)

    main = InStream("sim", "video", now)
    main.configure({96: VP8}, {96: 90000}, MID, 0)

    def makeLayer(owner, index, rid):
        layer = LayerStream(owner, index, rid, "sim", "video", now)
        layer.configure({96: VP8}, {96: 90000}, MID, 0)
        return layer

    video = SimulcastVideo(main, ["l", "m", "h"], RID, 5, makeLayer, now, lambda layer: None,
                           lambda reason: None)
    main.useLayers(video)
    ssrcs = {b"l": 11, b"m": 22, b"h": 33}
    seqs = {b"l": 0, b"m": 0, b"h": 0}
    for rid in (b"l", b"m", b"h"):  # learn the SSRCs, make the layers live
        video.packet(packet(ssrcs[rid], 0, rid))
        seqs[rid] = 1
    for i, out in enumerate(outputs(args.outputs)):
        out.sim = Selector(i % 3)
        main.attach(out)
    for rid in (b"l", b"m", b"h"):  # a keyframe of each layer: the outputs switch in
        video.packet(packet(ssrcs[rid], seqs[rid], None, keyframe=True))
        seqs[rid] += 1
    assert all(len(layer.active) == args.outputs // 3 for layer in video.layers), \
        [len(layer.active) for layer in video.layers]

    def drain():
        while True:
            try:
                rcv.recv(4096, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return

    pattern = [b"l"] + [b"m"] * 3 + [b"h"] * 9  # 1:3:9
    singleSeq = [1]

    def runSingle(n):
        # every packet a new sequence number (SRTP refuses to protect one twice)
        packets = [packet(7, singleSeq[0] + i, None) for i in range(n)]
        singleSeq[0] += n
        sent = single.sentPackets
        start = cpu()
        for data in packets:
            single.packet(data)
        return single.sentPackets - sent, cpu() - start

    def runSimulcast(n):
        packets = []
        for i in range(n):
            rid = pattern[i % len(pattern)]
            seqs[rid] += 1
            packets.append(packet(ssrcs[rid], seqs[rid], None))
        sent = sum(layer.sentPackets for layer in video.layers)
        start = cpu()
        for data in packets:
            video.packet(data)
        return sum(layer.sentPackets for layer in video.layers) - sent, cpu() - start

    results = {"single layer": [], "simulcast (3 layers)": []}
    chunk = 100  # packets between drains (drained outside the measurement)
    for _ in range(args.rounds):
        for name, run in (("single layer", runSingle), ("simulcast (3 layers)", runSimulcast)):
            spent = 0.0
            sent = 0
            for _ in range(args.n // chunk):
                drain()
                count, seconds = run(chunk)
                sent += count
                spent += seconds
            results[name].append(1e6 * spent / max(1, sent))
    errors = sum(o.errors for layer in (single, *video.layers) for o in layer.outputs)
    drain()
    transport.close()
    out = {k: {"us_per_forwarded_packet_min": round(min(v), 2),
               "us_per_forwarded_packet_median": round(statistics.median(v), 2)}
           for k, v in results.items()}
    out["ratio_median"] = round(statistics.median(results["simulcast (3 layers)"])
                                / statistics.median(results["single layer"]), 3)
    out["outputs"] = args.outputs
    out["send_errors"] = errors
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
