#!/usr/bin/env python3
"""SFU forwarding load generator (aiortc): AhoyConference and Janus VideoRoom.

Adapted from the janus-bench harness (../shared/janus-bench/load.py): same
media, tracks, counting, CPU sampling and summary; added the AhoyConference
signalling class (our WebSocket API, protocol.md), server-offered publishing,
and a dependency-free HTTP client for Janus (no aiohttp).

P publishers each send one VP8 video + one Opus audio track made of packets
that were encoded ONCE (PyAV, cached on disk) and are only re-packetized by
aiortc, so publishing costs no encoder CPU.  S subscribers per publisher receive
the forwarded streams and only COUNT RTP packets (no depacketizing, jitter
buffer or decoding).  After all peers are connected and receiving, the server
process CPU (/proc/<pid>/stat utime+stime), this process's own CPU, the
machine-wide CPU and the packet counters are sampled at the start and the end
of a T-second window.

Only loopback is used: aioice is told the only host address is 127.0.0.1 and
no STUN/TURN server is configured (aiortc would otherwise default to a public
STUN server).

Everything SFU-specific (signalling) lives in one class per SFU:
AhoyConference and JanusVideoRoom (see SfuSignalling).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time

import av
from aiortc import __version__ as _aiortc_version
from clip import LATE, build_media
from peers import Publisher, Subscriber, make_publisher, make_subscriber
from procstats import (
    LoopLag,
    calibrate,
    machine_cpu,
    mlock_self,
    proc_cpu,
    proc_majflt,
    proc_rss_kb,
    proc_threads,
    self_cpu,
    udp_drops,
    udp_rcvbuf_errors,
    udp_rx_queue_bytes,
    vm_reclaim,
)
from rxcount import RX_FAST
from sfu_ahoy import AhoyConference
from sfu_janus import JanusVideoRoom

LOG = logging.getLogger("load")

SIGNALLERS = {"janus": JanusVideoRoom, "ahoy": AhoyConference}
DEFAULT_URL = {"janus": "http://127.0.0.1:8088/janus", "ahoy": "ws://127.0.0.1:8080/"}


def snapshot(pubs, subs, server_pids) -> dict:
    return dict(
        t=time.monotonic(),
        server_cpu=proc_cpu(server_pids),
        server_threads=proc_threads(server_pids),
        self_cpu=self_cpu(),
        machine=machine_cpu(),
        late_resets=LATE["resets"],
        server_majflt=proc_majflt(server_pids),
        self_majflt=proc_majflt([os.getpid()]),
        vm_pgscan=vm_reclaim(),
        udp_drops_server=udp_drops(server_pids),
        udp_drops_loadgen=udp_drops([os.getpid()]),
        udp_rcvbuf_errors=udp_rcvbuf_errors(),
        rxq_loadgen=udp_rx_queue_bytes([os.getpid()]),
        rxq_server=udp_rx_queue_bytes(server_pids),
        sent=[p.sent() for p in pubs],
        recv=[s.counts() for s in subs],
    )


def summarize(a: dict, b: dict, pubs, subs, args) -> dict:
    wall = b["t"] - a["t"]
    server_user = b["server_cpu"][0] - a["server_cpu"][0]
    server_sys = b["server_cpu"][1] - a["server_cpu"][1]
    server_cpu = server_user + server_sys
    sent = {"audio": 0, "video": 0, "bytes": 0}
    sent_by_pub = []
    for pa, pb in zip(a["sent"], b["sent"], strict=False):
        d = {k: pb[k] - pa[k] for k in pb}
        sent_by_pub.append(d)
        for k in d:
            sent[k] += d[k]
    recv = {"audio": 0, "video": 0, "rtx": 0}
    expected = {"audio": 0, "video": 0}
    per_sub = []
    for sub, ra, rb in zip(subs, a["recv"], b["recv"], strict=False):
        got = {"audio": 0, "video": 0, "rtx": 0}
        exp = {"audio": 0, "video": 0}
        for ssrc, (kind, n_b, ext_b) in rb.items():
            kind_a, n_a, ext_a = ra.get(ssrc, (kind, 0, ext_b))
            got[kind] = got.get(kind, 0) + n_b - n_a
            if kind in exp:
                exp[kind] += ext_b - ext_a
        pub_sent = sent_by_pub[sub.pub]
        ratio = {k: (got[k] / pub_sent[k] if pub_sent[k] else 0.0) for k in ("audio", "video")}
        per_sub.append(dict(pub=sub.pub, got=got, seq_expected=exp, recv_over_sent=ratio))
        for k in recv:
            recv[k] += got.get(k, 0)
        for k in expected:
            expected[k] += exp[k]
    fwd = recv["audio"] + recv["video"] + recv["rtx"]
    media_recv = recv["audio"] + recv["video"]
    sent_fanout = sum((sent_by_pub[s.pub]["audio"] + sent_by_pub[s.pub]["video"]) for s in subs)
    exp_total = expected["audio"] + expected["video"]
    mb = (b["machine"][0] - a["machine"][0]) / max(1, b["machine"][1] - a["machine"][1])
    threads = {}
    for name, sec in b["server_threads"].items():
        d = sec - a["server_threads"].get(name, 0.0)
        if d > 0:
            threads[name] = round(100 * d / wall, 1)
    return dict(
        sfu=args.label or args.sfu, signalling=args.sfu, publishers=args.publishers, subs_per_pub=args.subs,
        subscribers=len(subs), seconds=round(wall, 2),
        pub_packets_sent={k: sent[k] for k in ("audio", "video")},
        pub_pps=round((sent["audio"] + sent["video"]) / wall, 1),
        pub_payload_kbps_each=round(8 * sent["bytes"] / wall / 1e3 / max(1, len(pubs)), 1),
        fwd_packets=fwd, fwd_by_kind=recv, fwd_pps=round(fwd / wall, 1),
        server_cpu_s=round(server_cpu, 3),
        server_cpu_pct=round(100 * server_cpu / wall, 2),
        server_user_pct=round(100 * server_user / wall, 2),
        server_sys_pct=round(100 * server_sys / wall, 2),
        server_us_per_fwd_pkt=round(1e6 * server_cpu / fwd, 2) if fwd else None,
        server_threads_cpu_pct=dict(sorted(threads.items(), key=lambda kv: -kv[1])[:8]),
        server_rss_kb=proc_rss_kb(args.server_pids),
        loadgen_cpu_pct=round(100 * (b["self_cpu"] - a["self_cpu"]) / wall, 2),
        machine_cpu_pct_of_all_cores=round(100 * mb, 1),
        machine_steal_pct_of_all_cores=round(100 * (b["machine"][2] - a["machine"][2])
                                             / max(1, b["machine"][1] - a["machine"][1]), 2),
        other_cpu_pct=round(100 * mb * (os.cpu_count() or 1)
                            - 100 * server_cpu / wall
                            - 100 * (b["self_cpu"] - a["self_cpu"]) / wall, 1),
        ncpu=os.cpu_count(),
        loss_pct_vs_fanout=round(100 * (1 - media_recv / sent_fanout), 3) if sent_fanout else None,
        loss_pct_seq_gaps=round(100 * (1 - media_recv / exp_total), 3) if exp_total else None,
        worst_sub_recv_over_sent=round(min((min(p["recv_over_sent"].values()) for p in per_sub),
                                           default=0), 4),
        per_sub=per_sub if args.per_sub else None,
    )


# ==========================================================================
# Orchestration
# ==========================================================================
SHORTFALL_MAX = 1.0
"""Runs whose subscribers received more than this % less (or more) than the
publishers sent (x S) inside the window are invalid: with the load generator's
large receive buffers, a load generator that falls behind shows up as a
backlog (not as loss), and the per-packet CPU would then be divided by too few
packets (or, while it catches up, by too many)."""


async def _safe(fn) -> dict:
    try:
        return await fn()
    except Exception as exc:
        LOG.warning("server counters: %s", exc)
        return {}


async def run(args) -> dict:
    calib = calibrate()
    media = build_media(args.media_cache, args.clip_seconds, 640, 480, 30,
                        args.video_kbps * 1000, args.audio_kbps * 1000)
    sig = SIGNALLERS[args.sfu](args.url, args.room, timeout=args.step_timeout)
    await sig.open()
    lag = LoopLag()
    pubs: list[Publisher] = []
    subs: list[Subscriber] = []
    try:
        t0 = time.monotonic()
        for i in range(args.publishers):
            pubs.append(await make_publisher(sig, i, media, args.step_timeout))
        LOG.info("%d publishers connected in %.1fs", len(pubs), time.monotonic() - t0)
        t1 = time.monotonic()
        jobs = [p for p in pubs for _ in range(args.subs)]
        for k in range(0, len(jobs), args.batch):
            batch = jobs[k:k + args.batch]
            subs += await asyncio.gather(*(make_subscriber(sig, p, args.step_timeout) for p in batch))
        LOG.info("%d subscribers connected in %.1fs", len(subs), time.monotonic() - t1)
        # wait (bounded) until every subscriber gets both audio and video
        deadline = time.monotonic() + args.step_timeout
        while True:
            missing = [s for s in subs
                       if {k for k, n, _ in s.counts().values() if n > 0} < {"audio", "video"}]
            if not missing:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(missing)} subscribers not receiving audio+video")
            await asyncio.sleep(0.2)
        LOG.info("all receiving; warm-up %.0fs, then measuring %.0fs", args.warmup, args.seconds)
        await asyncio.sleep(args.warmup)
        lag.recording = True
        counters = getattr(sig, "server_counters", None)
        ca = await _safe(counters) if counters else {}
        a = snapshot(pubs, subs, args.server_pids)
        if args.ready_file:       # tells a profiler that the window has started
            with open(args.ready_file, "w") as f:
                f.write(str(time.time()))
        await asyncio.sleep(args.seconds)
        b = snapshot(pubs, subs, args.server_pids)
        cb = await _safe(counters) if counters else {}
        res = summarize(a, b, pubs, subs, args)
        res["server_events"] = sig.server_events()
        # the SFU's own counters over the window (AhoyConference's /metrics), if it has any
        res["server_counters"] = {k: cb[k] - ca.get(k, 0) for k in cb}
        lag.recording = False
        res["loadgen_loop_lag_ms"] = lag.stats_ms()
        res["publisher_late_resets"] = b["late_resets"] - a["late_resets"]
        res["major_faults"] = {"server": b["server_majflt"] - a["server_majflt"],
                               "loadgen": b["self_majflt"] - a["self_majflt"]}
        res["vm_pages_scanned_for_reclaim"] = b["vm_pgscan"] - a["vm_pgscan"]
        # kernel drops on full UDP receive buffers: which side lost the packets
        res["udp_drops"] = {"server": b["udp_drops_server"] - a["udp_drops_server"],
                            "loadgen": b["udp_drops_loadgen"] - a["udp_drops_loadgen"],
                            "machine_rcvbuf_errors": b["udp_rcvbuf_errors"] - a["udp_rcvbuf_errors"]}
        # bytes queued in UDP receive buffers at the window's start and end: a
        # load generator that falls behind shows here (and as a shortfall)
        res["udp_rx_backlog_bytes"] = {"loadgen": [a["rxq_loadgen"], b["rxq_loadgen"]],
                                       "server": [a["rxq_server"], b["rxq_server"]]}
        res["loadgen_mlocked"] = args.mlocked
        res["loadgen_rx_path"] = args.rx_path
        res["loadgen_rx_errors"] = {k: v for k, v in RX_FAST.items() if k != "enabled"}
        res["server_mlocked"] = proc_rss_kb(args.server_pids, "VmLck:") > 0
        res["calibration"] = calib
        why = []
        if res["loss_pct_seq_gaps"] is not None and res["loss_pct_seq_gaps"] > 0.5:
            why.append("loss>0.5%")
        if res["publisher_late_resets"]:
            why.append("publisher schedule resets")
        if res["loss_pct_vs_fanout"] is not None and abs(res["loss_pct_vs_fanout"]) > SHORTFALL_MAX:
            why.append(f"|receive shortfall|>{SHORTFALL_MAX}%")
        if (res["loadgen_loop_lag_ms"]["max"] or 0) > 250:
            why.append("event-loop lag>250ms")
        if sum(res["major_faults"].values()) > 100:
            why.append("major page faults>100")
        res["valid"] = not why
        res["invalid_reasons"] = why
        res["started_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        res["versions"] = {"aiortc": _aiortc_version, "av": av.__version__,
                           "python": sys.version.split()[0]}
        res["setup_s"] = round(t1 - t0 + (time.monotonic() - t1) - args.warmup - args.seconds, 1)
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from fields import FORWARDING_FIELDS
        missing = [k for k in FORWARDING_FIELDS if k not in res]
        if missing:
            raise RuntimeError(f"result lacks fields {missing}")
        return res
    finally:
        lag.stop()
        await asyncio.gather(*(x.pc.close() for x in pubs + subs), return_exceptions=True)
        await sig.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sfu", default="janus", choices=sorted(SIGNALLERS))
    ap.add_argument("--label", help="name of the server in the result (default: --sfu)")
    ap.add_argument("--url", help=f"signalling URL (default: {DEFAULT_URL})")
    ap.add_argument("--room", default="1234", help="room / conference id")
    ap.add_argument("-P", "--publishers", type=int, default=1)
    ap.add_argument("-S", "--subs", type=int, default=1, help="subscribers per publisher")
    ap.add_argument("-T", "--seconds", type=float, default=30.0, help="measurement window")
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--server-pid", help="SFU process id(s) to sample, comma-separated "
                    "(default: read --server-pid-file)")
    ap.add_argument("--server-pid-file")
    ap.add_argument("--video-kbps", type=int, default=1000)
    ap.add_argument("--audio-kbps", type=int, default=32)
    ap.add_argument("--clip-seconds", type=int, default=10)
    ap.add_argument("--media-cache", default="/tmp/ahoy_bench/media_cache.pkl")
    ap.add_argument("--batch", type=int, default=5, help="subscribers set up concurrently")
    ap.add_argument("--step-timeout", type=float, default=30.0)
    ap.add_argument("--max-run", type=float, default=300.0, help="hard limit for the whole run, s")
    ap.add_argument("--per-sub", action="store_true", help="include per-subscriber detail")
    ap.add_argument("--no-mlock", action="store_true",
                    help="do not mlockall() the load generator (see mlock_onfault.c)")
    ap.add_argument("--rx-path", choices=("fast", "aiortc"), default="fast",
                    help="subscribers count RTP straight from the socket (fast, default) or "
                    "after aiortc's receive pipeline (aiortc, as janus-bench did)")
    ap.add_argument("--ready-file", help="write this file when the measurement window starts")
    ap.add_argument("--out", help="append the JSON result to this file")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("aioice", "aiortc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.url is None:
        args.url = DEFAULT_URL[args.sfu]
    os.makedirs(os.path.dirname(os.path.abspath(args.media_cache)), exist_ok=True)
    if args.server_pid is None:
        if not args.server_pid_file:
            ap.error("--server-pid or --server-pid-file is required")
        with open(args.server_pid_file) as f:
            args.server_pid = f.read().strip()
    args.server_pids = [int(x) for x in str(args.server_pid).split(",") if x.strip()]
    args.mlocked = False if args.no_mlock else mlock_self()
    RX_FAST["enabled"] = args.rx_path == "fast"
    res = asyncio.run(asyncio.wait_for(run(args), args.max_run))
    line = json.dumps(res)
    print(line)
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
