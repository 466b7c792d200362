# -*- test-case-name: tests.test_media_engine -*-
"""
A quick CPU figure for the media engine's forwarding: server CPU µs per
forwarded RTP packet at P publishers x S subscribers (default 1 x 10).

Two processes, all on 127.0.0.1:

 - the server (this file with C{--serve}): the asyncio reactor and an
   L{AiortcMediaEngine}, driven by JSON lines on stdin (publish, answer,
   subscribe, stats); nothing else runs in it, so its CPU time
   (C{utime+stime} from C{/proc/<pid>/stat}, all threads) is the engine's;
 - the load (this file without C{--serve}): aiortc peers.  Each publisher
   sends synthetic SRTP at the rate of the Janus baseline
   (../shared/janus-bench: 50 audio packets/s of ~100 bytes with the audio
   level extension, and 30 video frames/s of 3 or 4 packets, ~111 packets/s
   of ~1.1 KB), written straight to its ICE socket so that no encoder runs;
   each subscriber decrypts and counts what arrives (no decoding).

The figure is charged like Janus's: server CPU seconds x 10^6 divided by the
packets all subscribers received in the window.  It includes everything the
server process does: ICE receive, SRTP both ways, RTCP, timers, the kernel's
loopback delivery on sendto.

Usage: python bench/quick_forward.py [-P 1] [-S 10] [-T 15] [--warmup 5] [--micro]
       [--udp off|one|one-mmsg]

Over 400 lines on purpose: one self-contained script (server under test,
load, counting and the report) that a newcomer runs without the rest of bench/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import struct
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpuSeconds(pid: int) -> float:
    """utime + stime of a process, all threads, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


# -- the server process -----------------------------------------------------------


def serve() -> None:
    """Run the engine, obeying JSON lines on stdin."""
    from twisted.internet import asyncioreactor

    asyncioreactor.install()
    from twisted.internet import reactor, stdio
    from twisted.protocols.basic import LineReceiver
    from zope.interface import implementer

    from ahoyconference.config import IceSettings
    from ahoyconference.interfaces import IMediaListener
    from ahoyconference.media.engine import AiortcMediaEngine, installAsyncioExceptionHandler

    @implementer(IMediaListener)
    class Listener:
        def mediaAvailable(self, memberID, kind, available):
            pass

        def speakingChanged(self, memberID, speaking):
            pass

    installAsyncioExceptionHandler()
    mode = os.environ.get("AHOY_QF_UDP", "off")  # --udp: off, one, one-mmsg
    udpPort = 0
    if mode != "off":
        import socket

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            udpPort = s.getsockname()[1]
    engine = AiortcMediaEngine(Listener(), IceSettings(host_addresses=("127.0.0.1",),
                                                       udp_port=udpPort), reactor,
                               batching=mode == "one-mmsg")

    class Commands(LineReceiver):
        delimiter = b"\n"
        MAX_LENGTH = 1 << 20

        def lineReceived(self, line):
            command = json.loads(line)
            op = command["op"]
            if op == "publish":
                d = engine.publish(command["id"], True, True, command.get("cap", 2500))
            elif op == "answer":
                d = engine.acceptPublishAnswer(command["id"], command["sdp"])
            elif op == "subscribe":
                d = engine.subscribe(command["sub"], command["pub"], True, True)
            elif op == "subanswer":
                d = engine.acceptSubscribeAnswer(command["sub"], command["pub"], command["sdp"])
            elif op == "stats":
                self.reply(command, engine.stats())
                return
            elif op == "quit":
                engine.close().addBoth(lambda _: reactor.stop())
                return
            else:
                self.reply(command, None, f"unknown op {op}")
                return
            d.addCallbacks(lambda result: self.reply(command, result),
                           lambda f: self.reply(command, None, repr(f.value)))

        def reply(self, command, result, error=None):
            self.sendLine(json.dumps({"n": command["n"], "result": result,
                                      "error": error}).encode())

    stdio.StandardIO(Commands())
    reactor.run()


# -- the load -------------------------------------------------------------------


class ServerProcess:
    """The server child and a request/response channel to it."""

    async def start(self):
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, os.path.abspath(__file__), "--serve",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=1 << 22)
        self.n = 0
        self.waiting: dict[int, asyncio.Future] = {}
        self.reader = asyncio.ensure_future(self._read())
        return self

    async def _read(self):
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                return
            message = json.loads(line)
            future = self.waiting.pop(message["n"], None)
            if future is not None:
                future.set_result(message)

    async def call(self, op, **params):
        self.n += 1
        future = asyncio.get_running_loop().create_future()
        self.waiting[self.n] = future
        self.proc.stdin.write(json.dumps({"op": op, "n": self.n, **params}).encode() + b"\n")
        message = await asyncio.wait_for(future, 60)
        if message["error"]:
            raise RuntimeError(f"{op}: {message['error']}")
        return message["result"]

    async def stop(self):
        self.proc.stdin.write(json.dumps({"op": "quit", "n": 0}).encode() + b"\n")
        await asyncio.wait_for(self.proc.wait(), 30)


def _config():
    from aiortc import RTCConfiguration

    return RTCConfiguration(iceServers=[])


class SyntheticPublisher:
    """Answers the publish offer, then writes SRTP straight to its ICE socket."""

    def __init__(self):
        from aiortc import RTCPeerConnection

        from ahoyconference.media.engine import NeverTrack

        self.pc = RTCPeerConnection(_config())
        self.tracks = [NeverTrack("audio"), NeverTrack("video")]
        self.sent = 0
        self.task = None

    async def answer(self, offer: str) -> str:
        from aiortc import RTCSessionDescription

        for track in self.tracks:
            self.pc.addTrack(track)
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return self.pc.localDescription.sdp

    def start(self):
        self.task = asyncio.ensure_future(self._run())

    async def _run(self):
        senders = {s.kind: s for s in self.pc.getSenders()}
        dtls = senders["audio"].transport
        while dtls.state != "connected":
            await asyncio.sleep(0.01)
        pair = dtls.transport._connection._nominated[1]
        sendto, addr, protect = pair.protocol.transport.sendto, pair.remote_addr, \
            dtls._tx_srtp.protect
        audio = {"ssrc": senders["audio"]._ssrc, "seq": random.randrange(30000), "ts": 0}
        video = {"ssrc": senders["video"]._ssrc, "seq": random.randrange(30000), "ts": 0}
        audioPayload = os.urandom(90)
        videoPayload = os.urandom(1100)
        start = time.monotonic()
        audioNext = videoNext = 0.0
        frame = 0
        while True:
            now = time.monotonic() - start
            if now >= audioNext:
                level = bytes([0x21, 0x80 | 30, 0, 0])  # id 2 (audio level), 1 byte
                ext = struct.pack("!HH", 0xBEDE, 2) + bytes([0x10, ord("0")]) + level[:2] \
                    + b"\0\0"
                header = struct.pack("!BBHII", 0x90, 96, audio["seq"], audio["ts"],
                                     audio["ssrc"])
                sendto(protect(header + ext + audioPayload), addr)
                audio["seq"] = (audio["seq"] + 1) & 0xFFFF
                audio["ts"] = (audio["ts"] + 960) & 0xFFFFFFFF
                self.sent += 1
                audioNext += 0.02
            if now >= videoNext:
                count = 4 if frame % 10 < 7 else 3  # 3.7 packets per frame on average
                for i in range(count):
                    marker = 0x80 if i == count - 1 else 0
                    ext = struct.pack("!HH", 0xBEDE, 1) + bytes([0x10, ord("1")]) + b"\0\0"
                    header = struct.pack("!BBHII", 0x90, marker | 97, video["seq"], video["ts"],
                                         video["ssrc"])
                    sendto(protect(header + ext + videoPayload), addr)
                    video["seq"] = (video["seq"] + 1) & 0xFFFF
                    self.sent += 1
                video["ts"] = (video["ts"] + 3000) & 0xFFFFFFFF
                frame += 1
                videoNext += 1 / 30
            await asyncio.sleep(max(0.0, min(audioNext, videoNext) - (time.monotonic() - start)))

    async def close(self):
        if self.task is not None:
            self.task.cancel()
        await self.pc.close()


class CountingSubscriber:
    """Answers a subscription offer; decrypts and counts RTP, decodes nothing."""

    def __init__(self):
        from aiortc import RTCPeerConnection

        self.pc = RTCPeerConnection(_config())
        self.received = 0
        self.bySsrc: dict[int, int] = {}
        self.lastSeq: dict[int, int] = {}
        self.gaps = 0

    async def answer(self, offer: str) -> str:
        from aiortc import RTCSessionDescription

        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        dtls = self.pc.getTransceivers()[0].receiver.transport

        async def count(data, arrival_time_ms):
            self.received += 1
            ssrc = int.from_bytes(data[8:12], "big")
            seq = int.from_bytes(data[2:4], "big")
            self.bySsrc[ssrc] = self.bySsrc.get(ssrc, 0) + 1
            last = self.lastSeq.get(ssrc)
            if last is not None:
                step = (seq - last) & 0xFFFF
                if 1 < step < 0x8000:
                    self.gaps += step - 1
            self.lastSeq[ssrc] = seq

        dtls._handle_rtp_data = count
        return self.pc.localDescription.sdp

    async def close(self):
        await self.pc.close()


async def load(args) -> dict:
    """Set up P x S on a server child, measure, tear down."""
    import aioice.ice

    aioice.ice.get_host_addresses = lambda use_ipv4=True, use_ipv6=True: ["127.0.0.1"]
    server = await ServerProcess().start()
    publishers, subscribers = [], []
    try:
        for p in range(args.publishers):
            publisher = SyntheticPublisher()
            publishers.append(publisher)
            offer = await server.call("publish", id=f"pub{p}")
            await server.call("answer", id=f"pub{p}", sdp=await publisher.answer(offer))
            publisher.start()
        for p in range(args.publishers):
            for s in range(args.subscribers):
                subscriber = CountingSubscriber()
                subscribers.append(subscriber)
                offer = await server.call("subscribe", sub=f"sub{p}.{s}", pub=f"pub{p}")
                await server.call("subanswer", sub=f"sub{p}.{s}", pub=f"pub{p}",
                                  sdp=await subscriber.answer(offer))
        deadline = time.monotonic() + 30
        while not all(len(s.bySsrc) == 2 for s in subscribers):
            if time.monotonic() > deadline:
                raise RuntimeError("not every subscriber receives audio and video")
            await asyncio.sleep(0.1)
        await asyncio.sleep(args.warmup)
        pid = server.proc.pid
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        cpu0, wall0 = cpuSeconds(pid), time.monotonic()
        own0 = time.process_time()
        recv0 = sum(s.received for s in subscribers)
        gaps0 = sum(s.gaps for s in subscribers)
        sent0 = sum(p.sent for p in publishers)
        stats0 = await server.call("stats")
        await asyncio.sleep(args.seconds)
        cpu1, wall1 = cpuSeconds(pid), time.monotonic()
        own1 = time.process_time()
        recv1 = sum(s.received for s in subscribers)
        gaps1 = sum(s.gaps for s in subscribers)
        sent1 = sum(p.sent for p in publishers)
        stats1 = await server.call("stats")
        elapsed = wall1 - wall0
        received = recv1 - recv0
        sent = sent1 - sent0
        return {
            "udp": args.udp,
            "server_fds": fds,
            "publishers": args.publishers,
            "subscribers_per_publisher": args.subscribers,
            "seconds": round(elapsed, 2),
            "ingress_pps": round(sent / elapsed, 1),
            "fwd_pps": round(received / elapsed, 1),
            "server_cpu_pct": round(100 * (cpu1 - cpu0) / elapsed, 1),
            "server_us_per_fwd_pkt": round((cpu1 - cpu0) * 1e6 / received, 1)
            if received else None,
            "loadgen_cpu_pct": round(100 * (own1 - own0) / elapsed, 1),
            "loss_pct_seq_gaps": round(100 * (gaps1 - gaps0) / max(1, received), 3),
            "shortfall_pct": round(100 * (1 - received / (sent * args.subscribers)), 3)
            if sent else None,
            "engine_forwarded": stats1["forwarded_packets"] - stats0["forwarded_packets"],
            "engine_dropped": stats1["dropped_packets"] - stats0["dropped_packets"],
            "engine_send_errors": stats1["send_errors"] - stats0["send_errors"],
        }
    finally:
        for client in publishers + subscribers:
            await client.close()
        await server.stop()


def micro(outputs: int = 10, packets: int = 20000) -> dict:
    """
    The bare fast path in this process: one InStream, C{outputs} OutStreams
    with real SRTP sessions and a real UDP socket to 127.0.0.1 (discarded).
    """
    import socket

    from pylibsrtp import Policy, Session

    from ahoyconference.media.forward import InStream, OutStream

    key = os.urandom(30)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.setblocking(False)

    def sendto(data, addr):
        try:
            sender.sendto(data, addr)
        except BlockingIOError:
            pass

    stream = InStream("pub", "video", time.time)
    key_ = ("video/vp8", 90000, "", "")
    stream.configure({97: key_}, {97: 90000}, midId=1, levelId=0)
    for i in range(outputs):
        session = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND))
        stream.attach(OutStream("video", 1000 + i, {key_: 97}, {}, None, ord("0"),
                                session.protect, sendto, sink.getsockname()))
    payload = os.urandom(1100)
    ext = struct.pack("!HH", 0xBEDE, 1) + bytes([0x10, ord("1")]) + b"\0\0"
    data = [struct.pack("!BBHII", 0x90, 97, seq & 0xFFFF, seq * 10, 42) + ext + payload
            for seq in range(packets)]
    start = time.process_time()
    for packet in data:
        stream.packet(packet)
    cpu = time.process_time() - start
    sink.close()
    sender.close()
    return {"micro_outputs": outputs,
            "micro_us_per_fwd_pkt": round(cpu * 1e6 / (packets * outputs), 2)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("-P", "--publishers", type=int, default=1)
    parser.add_argument("-S", "--subscribers", type=int, default=10)
    parser.add_argument("-T", "--seconds", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--udp", choices=("off", "one", "one-mmsg"), default="off",
                        help="[ice] udp_port: off (a socket per peer connection), one (one "
                             "port, recvfrom/sendto), one-mmsg (one port, recvmmsg/sendmmsg)")
    parser.add_argument("--micro", action="store_true",
                        help="also time the bare fast path in-process")
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    os.environ["AHOY_QF_UDP"] = args.udp
    result = asyncio.run(load(args))
    if args.micro:
        result.update(micro(args.subscribers))
    print(json.dumps(result))
    print(f"{args.publishers}x{args.subscribers}: {result['server_us_per_fwd_pkt']} µs server "
          f"CPU per forwarded packet ({result['fwd_pps']} packets/s forwarded, server at "
          f"{result['server_cpu_pct']} % of a core)", file=sys.stderr)


if __name__ == "__main__":
    main()
