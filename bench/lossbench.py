#!/usr/bin/env python3
"""
Loss and delay benchmark in the network test bed (tests/netbed.py; issue 15):
what members see of a publisher's video when one link loses packets.

One aiortc publisher at home A (bench/losspeer.py: live VP8, 30 frames/s,
answers PLI with a keyframe and NACK with RTX) and S aiortc subscribers at
home B, which decode.  The link under test gets 40 ms ± 10 ms of delay both
ways (the bed's user-space cable, tests/cable.py; the kernel has no netem)
and a loss rate in the media's direction: 0, 1, 3, 5 % on the publisher's
uplink, then on the subscribers' downlink.  Each setting runs W seconds
after a settling pause; per subscriber:

 - decoded frames/s;
 - freezes and total freeze time (WebRTC's definition, bench/losspeer.py);
 - packets lost after repair (video sequence numbers never received);

and per setting the PLIs that reached the publisher, and the server's
counters of the repair (NACKs to the publisher, recovered, given up;
retransmissions to subscribers).

Run as root (the bed needs it):  python bench/lossbench.py [-S 2] [-W 20] [--sfu ahoy,janus]
Through our server and (--sfu ahoy,janus, the default) Debian's Janus
VideoRoom started beside it in the data centre, one after the other in the
same bed.  Writes bench/results/loss.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tests import netbed  # noqa: E402
from tests.netbed import NetBed  # noqa: E402

LOSSES = (0.0, 0.01, 0.03, 0.05)
DELAY = {"delay": 0.04, "jitter": 0.01}
CLEAN = {"loss": 0, "delay": 0, "jitter": 0}
SERVER_COUNTERS = ("publisher_nacks_sent", "publisher_nacked_packets",
                   "publisher_packets_recovered", "publisher_packets_given_up",
                   "publisher_packets_reordered", "retransmitted_packets",
                   "nacks_received", "keyframe_requests_sent")


JANUS_PORT = 8088
JANUS_URL = f"http://{netbed.SERVER_IP}:{JANUS_PORT}/janus"


def startJanus(bed: NetBed) -> None:
    """
    Debian's Janus in the data centre beside our server, with
    bench/janus's configuration moved from loopback to the bed's address.
    """
    conf = bed.workdir / "janus"
    conf.mkdir(exist_ok=True)
    ip = netbed.SERVER_IP
    for name in ("janus.jcfg", "janus.transport.http.jcfg", "janus.plugin.videoroom.jcfg"):
        text = (HERE / "janus" / name).read_text()
        for old, new in (('interface = "127.0.0.1"', f'interface = "{ip}"'),
                         ('ice_enforce_list = "lo"', f'ice_enforce_list = "{ip}"'),
                         ('ip = "127.0.0.1"', f'ip = "{ip}"'),
                         ('acl = "127."', 'acl = "203.0.113."')):
            text = text.replace(old, new)
        (conf / name).write_text(text)
    bed.popen("janus", "dc", ["janus", "-C", str(conf / "janus.jcfg"), "-F", str(conf)])
    bed.waitTCP(ip, JANUS_PORT, "janus")


class Peer:
    """A bench/losspeer.py process in a namespace; its latest report."""

    def __init__(self, bed: NetBed, label: str, member: str, role: str, args: list[str]):
        address = netbed.LANS[role][4]
        self.bed = bed
        self.name = label
        self.latest: dict | None = None
        self.process = bed.popen(label, role, [sys.executable, str(HERE / "losspeer.py"), bed.url,
                                               "lossroom", member, "--host-address", address,
                                               *args],
                                 stdout=subprocess.PIPE, stderr=open(bed.workdir / f"{label}.err", "ab"))
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            try:
                self.latest = json.loads(line)
            except ValueError:
                pass

    def stop(self) -> None:
        self.bed.processes.pop(self.name, None)  # the bed's checks: not a crash
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()

    def wait(self, check, what: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.latest is not None and check(self.latest):
                return dict(self.latest)
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.process.returncode})")
            time.sleep(0.2)
        raise RuntimeError(f"{self.name}: not {what} within {timeout}s")


def serverCounters(bed: NetBed) -> dict:
    values = bed.metrics()
    return {k: values.get(f"ahoy_{k}_total", 0) for k in SERVER_COUNTERS}


def measure(bed, publisher, subscribers, seconds: float, ours: bool) -> dict:
    s0 = serverCounters(bed) if ours else {k: 0 for k in SERVER_COUNTERS}
    p0 = dict(publisher.latest)
    subs0 = [dict(s.latest) for s in subscribers]
    t0 = time.time()
    time.sleep(seconds)
    elapsed = time.time() - t0
    s1 = serverCounters(bed) if ours else s0
    p1 = dict(publisher.latest)
    result = {"seconds": round(elapsed, 1),
              "publisher_fps": round((p1["frames"] - p0["frames"]) / elapsed, 1),
              "plis_at_publisher": p1["plis"] - p0["plis"],
              "nacked_at_publisher": p1["nacks"] - p0["nacks"],
              "server": {k: int(s1[k] - s0[k]) for k in SERVER_COUNTERS},
              "subscribers": []}
    for s, a in zip(subscribers, subs0, strict=True):
        b = s.latest
        expected = b["expected"] - a["expected"]
        lost = expected - (b["received"] - a["received"])
        result["subscribers"].append({
            "name": s.name,
            "fps": round((b["frames"] - a["frames"]) / elapsed, 1),
            "freezes": b["freezes"] - a["freezes"],
            "freeze_s": round(b["freeze_s"] - a["freeze_s"], 2),
            "lost_after_repair": lost,
            "expected": expected,
            "nacks_sent": b["nacks"] - a["nacks"],
        })
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-S", "--subscribers", type=int, default=2)
    parser.add_argument("-W", "--window", type=float, default=20.0)
    parser.add_argument("--settle", type=float, default=4.0)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--sfu", default="ahoy,janus", help="ahoy, janus or both")
    parser.add_argument("--losses", default=",".join(f"{x * 100:g}" for x in LOSSES),
                        help="loss rates in %%, comma-separated")
    parser.add_argument("--links", default="publisher,subscriber",
                        help="which links are made lossy: publisher, subscriber or both")
    parser.add_argument("--repeat", type=int, default=1,
                        help="measurement windows per setting, one row each")
    parser.add_argument("--out", default=str(HERE / "results" / "loss.json"))
    args = parser.parse_args()
    args.losses = tuple(float(x) / 100 for x in args.losses.split(",") if x.strip())
    args.links = tuple(x for x in args.links.split(",") if x.strip())
    why = netbed.missing()
    if why:
        raise SystemExit(f"lossbench: {why}")
    workdir = Path(os.environ.get("LOSSBENCH_DIR", "/tmp/lossbench"))
    bed = NetBed(workdir).start(coturn=False, server=True)
    rows = []
    try:
        for sfu in args.sfu.split(","):
            rows += run(bed, sfu, args)
    finally:
        problems = bed.close()
        if problems:
            print(f"lossbench: after tearing the bed down: {problems}", file=sys.stderr)
    Path(args.out).parent.mkdir(exist_ok=True)
    Path(args.out).write_text(json.dumps({"window_s": args.window,
                                          "subscribers": args.subscribers, "fps": args.fps,
                                          "rows": rows}, indent=1) + "\n")
    print(table(rows))


def run(bed: NetBed, sfu: str, args) -> list[dict]:
    """Every setting through one SFU (C{ahoy} or C{janus}): the rows."""
    extra = []
    if sfu == "janus":
        startJanus(bed)
        extra = ["--janus", JANUS_URL]
    elif sfu != "ahoy":
        raise SystemExit(f"lossbench: unknown SFU {sfu!r}")
    rows = []
    publisher = Peer(bed, f"{sfu}-alice", "alice", "homeA",
                     ["--publish", "--fps", str(args.fps), *extra])
    peers = [publisher]
    try:
        publisher.wait(lambda r: r["frames"] > 30, "sending")
        subscribers = [Peer(bed, f"{sfu}-sub{i}", f"sub{i}", "homeB",
                            ["--subscribe-to", "alice", *extra])
                       for i in range(args.subscribers)]
        peers += subscribers
        for s in subscribers:
            s.wait(lambda r: r["frames"] > 30, "decoding", timeout=90)
        for link, role, direction in (("publisher", "homeA", "up"),
                                      ("subscriber", "homeB", "down")):
            if link not in args.links:
                continue
            other = "homeB" if role == "homeA" else "homeA"
            bed.cables[other].set(both=CLEAN)
            for loss in args.losses:
                if link == "subscriber" and loss == 0 and "publisher" in args.links:
                    continue  # the same as the publisher's 0 %
                back = "down" if direction == "up" else "up"
                bed.cables[role].set(**{direction: {**DELAY, "loss": loss},
                                        back: {**DELAY, "loss": 0}})
                time.sleep(args.settle)
                for _ in range(args.repeat):
                    result = measure(bed, publisher, subscribers, args.window, sfu == "ahoy")
                    result.update(sfu=sfu, link=link, loss=loss)
                    rows.append(result)
                    print(json.dumps(result), flush=True)
            bed.cables[role].set(both=CLEAN)
    finally:
        for peer in peers:
            peer.stop()
    return rows


def table(rows: list[dict]) -> str:
    """Markdown: one line per setting, subscribers' figures as min–max."""
    lines = ["| SFU | lossy link | loss | fps decoded | freezes | freeze s | lost after repair "
             "| PLIs to publisher | NACKs to publisher | recovered | given up "
             "| resent to subscribers |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def span(key, subs):
        values = [s[key] for s in subs]
        lo, hi = min(values), max(values)
        return f"{lo}" if lo == hi else f"{lo}–{hi}"

    for r in rows:
        subs, srv = r["subscribers"], r["server"]
        if r["sfu"] != "ahoy":  # only our server's /metrics say what it repaired
            srv = dict.fromkeys(srv, "–")
        lines.append(
            f"| {r['sfu']} | {r['link']} | {r['loss'] * 100:g} % | {span('fps', subs)} "
            f"| {span('freezes', subs)} "
            f"| {span('freeze_s', subs)} | {span('lost_after_repair', subs)} "
            f"| {r['plis_at_publisher']} | {srv['publisher_nacks_sent']} "
            f"| {srv['publisher_packets_recovered']} | {srv['publisher_packets_given_up']} "
            f"| {srv['retransmitted_packets']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
