#!/usr/bin/env python3
"""Signalling load on AhoyConference: joins, memory per member, chat fan-out.

Scenarios (each against a fresh ``twistd ahoyconference`` on 127.0.0.1,
started and stopped by PID here, mlocked like the forwarding runs):

  room-N      N WebSocket clients join ONE conference (N = 100, 500, 1000);
  rooms-RxM   R conferences of M members each (default 100 x 10).

Per scenario: connect all clients (concurrency --concurrency), then join
(same concurrency) and measure joins/s, the server's CPU per join (each
join also sends a CONFERENCE_JOIN_indication to every member already in the
room, so the cost grows with the room), and the server's RSS per member
(RSS after the joins minus before, over N; connections included).  Then chat
fan-out: one member per room sends --chat-msgs messages, one at a time, and
every other member of the room timestamps the CHAT_MESSAGE_indication:
latency p50/p99/max from send to receipt, and server CPU per delivered
indication.  All clients live in this one asyncio process, so a receipt's
latency includes this process working through the frames before it: an
upper bound for the server's own fan-out latency.

One JSON line per scenario (--out).  Everything is bounded by --budget.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import procstats  # noqa: E402
import servers  # noqa: E402
from wslight import LightMember  # noqa: E402

sys.path.insert(0, os.path.dirname(HERE))
from ahoyconference.client import ProtocolClient  # noqa: E402


def proc_cpu(pid: int) -> tuple[float, float]:
    return procstats.proc_cpu([pid])


def proc_rss_kb(pid: int) -> int:
    return procstats.proc_rss_kb([pid])


def machine_busy() -> tuple[int, int]:
    busy, total, _ = procstats.machine_cpu()
    return busy, total


class CpuWindow:
    """Server CPU (user, sys) and machine busy share between start() and stop()."""

    def __init__(self, pid: int):
        self.pid = pid

    def start(self):
        self.t = time.monotonic()
        self.c = proc_cpu(self.pid)
        self.m = machine_busy()
        self.self_cpu = time.process_time()
        return self

    def stop(self) -> dict:
        wall = time.monotonic() - self.t
        c = proc_cpu(self.pid)
        m = machine_busy()
        user, sys_ = c[0] - self.c[0], c[1] - self.c[1]
        busy = (m[0] - self.m[0]) / max(1, m[1] - self.m[1]) * 100 * (os.cpu_count() or 1)
        client = time.process_time() - self.self_cpu
        return {"wall_s": round(wall, 3), "server_cpu_s": round(user + sys_, 3),
                "server_user_s": round(user, 3), "server_sys_s": round(sys_, 3),
                "server_cpu_pct": round(100 * (user + sys_) / wall, 1) if wall else None,
                "client_cpu_pct": round(100 * client / wall, 1) if wall else None,
                "other_cpu_pct": round(busy - 100 * (user + sys_ + client) / wall, 1) if wall else None}


async def connect(url: str, on_chat, timeout: float, light: bool = True):
    """
    A member that keeps no message: chat indications go to
    C{on_chat(receipt time, message)}, the others are only counted
    (C{frames()}).  C{light}: L{wslight.LightMember} (decodes only responses
    and chats); otherwise the package's protocol client.
    """
    if light:
        return await LightMember.connect(url, timeout, onChat=on_chat)
    client = await ProtocolClient.connect(url, timeout=timeout, keep=lambda m: False,
                                          ping_interval=None, compression=None, max_queue=None)
    client.on("CHAT_MESSAGE_indication", lambda m: on_chat(time.perf_counter(), m))
    return client


def closed(client) -> bool:
    """Has the server closed this member's connection?"""
    done = getattr(client, "closed", None)
    return done.done() if isinstance(done, asyncio.Future) else False


def frames(client) -> int:
    """Messages the client received."""
    return sum(client.counts.values())


async def bounded_gather(coros, limit: int):
    sem = asyncio.Semaphore(limit)

    async def one(c):
        async with sem:
            return await c

    return await asyncio.gather(*(one(c) for c in coros), return_exceptions=True)


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * (len(xs) - 1) + 0.5))]


async def scenario(url: str, pid: int, rooms: int, per_room: int, args) -> dict:
    n = rooms * per_room
    res = {"scenario": f"room-{per_room}" if rooms == 1 else f"rooms-{rooms}x{per_room}",
           "rooms": rooms, "members_per_room": per_room, "members": n, "errors": 0,
           "client": args.client, "concurrency": args.concurrency,
           "listeners": args.listeners, "code_root": args.code_root}
    chats: dict[tuple, list] = {}

    def on_chat(t, m):
        text = m.get("message", {}).get("text", "")
        key, _, sent = text.partition("@")
        chats.setdefault(key, []).append(t - float(sent))

    await asyncio.sleep(0.5)
    rss0 = proc_rss_kb(pid)
    # connect
    w = CpuWindow(pid).start()
    conns = await bounded_gather([connect(url, on_chat, args.timeout, args.client == "light")
                                  for _ in range(n)], args.concurrency)
    clients = [c for c in conns if not isinstance(c, BaseException)]
    res["errors"] += n - len(clients)
    res["connect"] = w.stop()
    res["connect"]["per_s"] = round(len(clients) / res["connect"]["wall_s"], 1)
    if len(clients) < n:
        res["connect_error"] = repr(next(c for c in conns if isinstance(c, BaseException)))
    try:
        room_of = [f"bench-{i // per_room}" for i in range(len(clients))]
        # each room is created by its first member (not part of the join timing)
        firsts = list(range(0, len(clients), per_room))
        # --listeners: a speaker and a moderator password make "" a listener (protocol.md 4.2)
        roles = {"password": "bench-speaker", "moderatorPassword": "bench-moderator"} \
            if args.listeners else {}
        await bounded_gather([clients[i].request("CONFERENCE_CREATE_request", args.timeout,
                                                 conferenceID=room_of[i], **roles)
                              for i in firsts],
                             args.concurrency)
        rss1 = proc_rss_kb(pid)
        # join: rooms fill in parallel, in member order
        order = sorted(range(len(clients)), key=lambda i: (i % per_room, i // per_room))

        async def join(i):
            r = await clients[i].request("CONFERENCE_JOIN_request", args.timeout,
                                         conferenceID=room_of[i], name=f"m{i}")
            if r.get("status") != 200:
                raise RuntimeError(f"join {r.get('status')} {r.get('reason')}")
            clients[i].memberID = r.get("memberID")

        w = CpuWindow(pid).start()
        joined = await bounded_gather([join(i) for i in order], args.concurrency)
        # let the last CONFERENCE_JOIN_indications go out (bounded)
        expect = sum(k for k in range(per_room)) * rooms
        frames_expected = expect + len(clients) + len(firsts)    # + join and create responses
        limit = time.monotonic() + min(args.timeout, 15)
        while sum(frames(c) for c in clients) < frames_expected and time.monotonic() < limit:
            await asyncio.sleep(0.02)
        res["join_frames_missing"] = frames_expected - sum(frames(c) for c in clients)
        res["join"] = w.stop()
        bad = [j for j in joined if isinstance(j, Exception)]
        res["errors"] += len(bad)
        if bad:
            res["join_error"] = repr(bad[0])
        ok = len(joined) - len(bad)
        res["joined"] = ok
        res["join"]["joins_per_s"] = round(ok / res["join"]["wall_s"], 1)
        res["join"]["cpu_us_per_join"] = round(1e6 * res["join"]["server_cpu_s"] / max(1, ok), 1)
        res["join"]["join_indications_expected"] = expect
        await asyncio.sleep(1.0)
        rss2 = proc_rss_kb(pid)
        res["rss_kb"] = {"idle_server": rss0, "after_connect": rss1, "after_join": rss2}
        res["rss_per_member_kb"] = round((rss2 - rss0) / max(1, ok), 2)
        res["rss_per_member_joined_kb"] = round((rss2 - rss1) / max(1, ok), 2)
        # chat fan-out: message k from the first member of every room, all rooms at once
        senders = [clients[i] for i in firsts]
        latencies: list[float] = []
        w = CpuWindow(pid).start()
        for k in range(args.chat_msgs):
            t0 = time.perf_counter()
            keys = [f"r{r}m{k}" for r in range(len(senders))]
            await asyncio.gather(*(s.request("CHAT_MESSAGE_request", args.timeout,
                                             message={"text": f"{key}@{time.perf_counter()!r}"})
                                   for key, s in zip(keys, senders, strict=True)),
                                 return_exceptions=True)
            limit = time.monotonic() + args.timeout
            # members the server dropped (a ping unanswered behind a backlog) are not waited for
            live = sum(1 for c in clients if not closed(c))
            while (sum(len(chats.get(key, ())) for key in keys) < len(keys) * (live // len(keys) - 1)
                   and time.monotonic() < limit):
                await asyncio.sleep(0.002)
            for key in keys:
                latencies += chats.get(key, [])
            await asyncio.sleep(max(0.0, args.chat_gap - (time.perf_counter() - t0)))
        cw = w.stop()
        deliveries = len(latencies)
        live = sum(1 for c in clients if not closed(c))
        res["dropped_by_server"] = len(clients) - live
        expected = args.chat_msgs * len(senders) * (live // len(senders) - 1)
        res["chat"] = {
            "messages": args.chat_msgs * len(senders), "deliveries": deliveries,
            "deliveries_expected": expected,
            "p50_ms": round(1e3 * pct(latencies, 0.5), 2) if latencies else None,
            "p99_ms": round(1e3 * pct(latencies, 0.99), 2) if latencies else None,
            "max_ms": round(1e3 * max(latencies), 2) if latencies else None,
            "mean_ms": round(1e3 * statistics.fmean(latencies), 2) if latencies else None,
            "server_cpu_s": cw["server_cpu_s"],
            "server_cpu_us_per_delivery": round(1e6 * cw["server_cpu_s"] / max(1, deliveries), 2),
            "server_user_us_per_delivery":
                round(1e6 * cw["server_user_s"] / max(1, deliveries), 2),
            "server_sys_us_per_delivery": round(1e6 * cw["server_sys_s"] / max(1, deliveries), 2),
            "other_cpu_pct": cw["other_cpu_pct"],
        }
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    res["valid"] = res["errors"] == 0 and res.get("chat", {}).get("deliveries") == \
        res.get("chat", {}).get("deliveries_expected")
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="100,500,1000", help="members in one room")
    ap.add_argument("--rooms", default="100x10", help="RxM: R rooms of M members ('' to skip)")
    ap.add_argument("--concurrency", type=int, default=20, help="requests in flight")
    ap.add_argument("--client", choices=("light", "full"), default="light",
                    help="light: bench/wslight.py members; full: the package's protocol client")
    ap.add_argument("--chat-msgs", type=int, default=20)
    ap.add_argument("--listeners", action="store_true",
                    help="members join as listeners (the room has speaker and moderator passwords)")
    ap.add_argument("--chat-gap", type=float, default=0.2, help="seconds between chat messages")
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--budget", type=float, default=600.0, help="seconds for everything")
    ap.add_argument("--no-mlock", action="store_true")
    ap.add_argument("--out", help="append JSON lines here")
    ap.add_argument("--code-root", help="run the ahoyconference/ found in this directory (e.g. a "
                    "checkout of an earlier commit: A/B runs)")
    ap.add_argument("--pyspy", help="path of py-spy: profile the server during each scenario")
    ap.add_argument("--pyspy-prefix", default="/tmp/ahoy_bench/sig-profile",
                    help="py-spy output: PREFIX-RxM.txt")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    plan = [(1, int(x)) for x in args.sizes.split(",") if x.strip()]
    if args.rooms:
        r, m = (int(x) for x in args.rooms.lower().split("x"))
        plan.append((r, m))
    deadline = time.monotonic() + args.budget
    shims = servers.build_shims()
    for rooms, per_room in plan:
        left = deadline - time.monotonic()
        if left < 30:
            print(f"skipping {rooms}x{per_room}: time budget", file=sys.stderr)
            continue
        proc = servers.start_ahoy(shims, mlock=not args.no_mlock, code_root=args.code_root)
        spy = None
        if args.pyspy:
            import subprocess
            spy = subprocess.Popen([args.pyspy, "record", "--nonblocking", "--rate", "200", "--pid",
                                    str(proc.pid), "--format", "raw", "--output",
                                    f"{args.pyspy_prefix}-{rooms}x{per_room}.txt"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            t0 = time.monotonic()
            res = asyncio.run(asyncio.wait_for(scenario(proc.url, proc.pid, rooms, per_room, args),
                                               left - 10))
            res["elapsed_s"] = round(time.monotonic() - t0, 1)
        except Exception as e:   # record the failure, go on with the next scenario
            res = {"scenario": f"{rooms}x{per_room}", "rooms": rooms, "members_per_room": per_room,
                   "members": rooms * per_room, "valid": False, "failed": repr(e)[:300]}
        finally:
            if spy is not None:
                import signal as _signal
                spy.send_signal(_signal.SIGINT)     # py-spy writes its output on SIGINT
                try:
                    spy.wait(30)
                except Exception:
                    spy.kill()
            try:
                proc.stop(timeout=60)
            except Exception as e:   # killed: say so in the result
                res["server_stop"] = repr(e)[:200]
        res["started_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        line = json.dumps(res)
        print(line, flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
