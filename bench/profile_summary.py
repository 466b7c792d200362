#!/usr/bin/env python3
"""Summarise a py-spy ``--format raw`` profile (collapsed stacks, one
``frame;frame;... count`` per line) as markdown: where the samples go by
own time (the innermost frame) and by inclusive time, and by area of code
(our forwarding path, aiortc, aioice, Twisted/asyncio loop, ...).

Usage: profile_summary.py profile.txt [--top 25]"""

from __future__ import annotations

import re
import sys
from collections import Counter

AREAS = [
    ("socket sendto (syscall + kernel loopback delivery)", r"^_SelectorDatagramTransport\.sendto "),
    ("socket recvfrom (_read_ready)", r"^_SelectorDatagramTransport\._read_ready "),
    ("SRTP protect/unprotect (pylibsrtp)", r"pylibsrtp/"),
    ("ahoyconference forward.py (rewrite+protect+sendto)", r"ahoyconference/media/forward\.py"),
    ("ahoyconference publisher rx (hooks.py, peers.py)",
     r"ahoyconference/media/(hooks|peers)\.py"),
    ("ahoyconference RTCP and lifecycle (rtcp.py, engine.py)",
     r"ahoyconference/media/(rtcp|engine)\.py"),
    ("ahoyconference other (signalling, speaking)", r"ahoyconference/"),
    ("aiortc (RTCP timers, DTLS, senders)", r"aiortc/"),
    ("aioice (STUN, consent, sockets)", r"aioice/"),
    ("Twisted", r"twisted/"),
    ("autobahn / txaio", r"autobahn/|txaio/"),
    ("asyncio event loop", r"asyncio/"),
]


def frame_name(frame: str) -> str:
    # py-spy raw frames look like "function (path/to/file.py:123)"
    m = re.match(r"(.*) \((.*?):(\d+)\)$", frame.strip())
    if not m:
        return frame.strip()
    func, path, _line = m.groups()
    path = re.sub(r".*/site-packages/", "", path)
    path = re.sub(r".*/(ahoyconference/)", r"\1", path)
    path = re.sub(r".*/lib/python3\.\d+/", "", path)
    return f"{func} ({path})"


def main(argv: list[str]) -> int:
    path = argv[1]
    top = int(argv[argv.index("--top") + 1]) if "--top" in argv else 25
    own: Counter = Counter()
    incl: Counter = Counter()
    area: Counter = Counter()
    total = 0
    idle = 0
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            stack, _, n = line.rpartition(" ")
            try:
                n = int(n)
            except ValueError:
                continue
            frames = [frame_name(x) for x in stack.split(";") if x]
            if not frames:
                continue
            if frames[-1].startswith(("EpollSelector.select ", "select (")):
                idle += n          # waiting in epoll: not CPU
                continue
            total += n
            own[frames[-1]] += n
            for fr in set(frames):
                incl[fr] += n
            # area = the innermost frame's area (own time)
            leaf = frames[-1]
            for name, rx in AREAS:
                if re.search(rx, leaf):
                    area[name] += n
                    break
            else:
                area["other (C calls attributed to their Python caller, stdlib)"] += n
    if not total:
        print("no busy samples")
        return 0
    print(f"{total} busy samples (plus {idle} waiting in epoll, left out); py-spy samples "
          "Python stacks, so time in C calls (SRTP, sendto and its kernel loopback delivery) "
          "shows as own time of the calling Python frame.\n")
    print("| area (own time of innermost frame) | % of samples |\n|---|---|")
    for name, n in area.most_common():
        print(f"| {name} | {100 * n / total:.1f} |")
    print(f"\n| top {top} functions by own time | % |\n|---|---|")
    for name, n in own.most_common(top):
        print(f"| `{name}` | {100 * n / total:.1f} |")
    print(f"\n| top {top} functions by inclusive time | % |\n|---|---|")
    for name, n in incl.most_common(top):
        print(f"| `{name}` | {100 * n / total:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
