#!/usr/bin/env python3
"""
CPU per phone per speaker (docs/sip.md): what one phone in a room costs the
server with 1, 3 and 5 members speaking at once.

Per 20 ms the phone's path does, as in the server: every speaker's Opus
packet (with its RFC 6464 level) into the phone's L{Mixer} (the loudest
C{max_speakers} are decoded with libopus and resampled to 8 kHz, the rest only
have their level read), one mixed frame out encoded as PCMU, and the phone's
own PCMU frame decoded for its level.  The Opus packets are real (a tone per
speaker, encoded once beforehand with libopus by PyAV); no sockets, so the
figure is the mixing work alone, which is what grows per phone and per
speaker (forwarding the phone's G.711 to browsers is the ordinary per-packet
path measured in RESULTS.md).

    .venv/bin/python bench/sip_mix.py [--seconds 20] [--reps 3] [--speakers 1 3 5]
                                      [--phone-codec PCMU|OPUS]

Prints a Markdown table: CPU milliseconds per second of call (= % of one
core ×10) per phone, and per speaker.
"""

from __future__ import annotations

import argparse
import fractions
import math
import os
import platform
import statistics
import struct
import sys
import time
from array import array

import av

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from ahoyconference.sip import g711  # noqa: E402
from ahoyconference.sip.codecs import codecFor  # noqa: E402
from ahoyconference.sip.mixer import Mixer  # noqa: E402


def opusPackets(frequency: float, count: int, level: int) -> list[bytes]:
    """C{count} 20 ms RTP packets of a tone in Opus, each with an audio-level extension (id 1)."""
    encoder = av.CodecContext.create("libopus", "w")
    encoder.sample_rate = 48000
    encoder.layout = "mono"
    encoder.format = "s16"
    encoder.bit_rate = 32000
    encoder.time_base = fractions.Fraction(1, 48000)
    packets, pts, seq = [], 0, 0
    while len(packets) < count:
        samples = array("h", (int(8000 * math.sin(2 * math.pi * frequency * (pts + i) / 48000))
                              for i in range(960)))
        frame = av.AudioFrame(format="s16", layout="mono", samples=960)
        frame.planes[0].update(samples.tobytes())
        frame.sample_rate = 48000
        frame.pts = pts
        frame.time_base = fractions.Fraction(1, 48000)
        pts += 960
        for packet in encoder.encode(frame):
            header = struct.pack("!BBHII", 0x90, 111, seq & 0xFFFF, pts, 1234)
            extension = struct.pack("!HHBBH", 0xBEDE, 1, 0x10, 0x80 | level, 0)
            packets.append(header + extension + bytes(packet))
            seq += 1
    return packets


def run(speakers: int, seconds: float, maxSpeakers: int, phoneCodec: str = "PCMU") -> float:
    """CPU seconds for C{seconds} of one phone's call with C{speakers} talking."""
    frames = int(seconds * 50)
    streams = [opusPackets(300 + 110 * i, frames, 20 + 3 * i) for i in range(speakers)]
    codec = codecFor(phoneCodec)
    if phoneCodec == "OPUS":  # what the phone sends: Opus packets without a level
        phoneIn = [packet[20:] for packet in opusPackets(700, frames, 30)]  # 12 + 8
    else:
        phoneIn = [g711.encode("PCMU", [int(6000 * math.sin(i / 3)) for i in range(160)])] * frames
    clock = [0.0]
    mixer = Mixer(lambda: clock[0], maxSpeakers)
    start = time.process_time()
    for n in range(frames):
        clock[0] = n * 0.02
        for i, stream in enumerate(streams):
            mixer.packet(f"speaker{i}", stream[n], 1)
        codec.encode(mixer.frame())
        g711.levelOf(codec.decode(phoneIn[n]))
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--speakers", type=int, nargs="+", default=[1, 3, 5])
    parser.add_argument("--max-speakers", type=int, default=3)
    parser.add_argument("--phone-codec", choices=["PCMU", "OPUS"], default="PCMU",
                        help="the phone's codec: PCMU (our tables) or OPUS (libopus both ways)")
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, "
          f"PyAV {av.__version__}; {args.seconds:g} s of call per run, {args.reps} runs, "
          f"max_speakers {args.max_speakers}, phone codec {args.phone_codec}\n")
    print("| members speaking | decoded | CPU ms per second of call, per phone "
          "(median [min–max]) | % of one core | ms per second per decoded speaker |")
    print("|---|---|---|---|---|")
    for speakers in args.speakers:
        costs = [run(speakers, args.seconds, args.max_speakers, args.phone_codec) * 1000
                 / args.seconds
                 for _ in range(args.reps)]
        median = statistics.median(costs)
        decoded = min(speakers, args.max_speakers)
        print(f"| {speakers} | {decoded} | {median:.1f} [{min(costs):.1f}–{max(costs):.1f}] | "
              f"{median / 10:.2f} | {median / decoded:.1f} |")


if __name__ == "__main__":
    main()
