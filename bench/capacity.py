#!/usr/bin/env python3
"""Machine capacity on this host: 1 node, 2 nodes (Redis directory) and Janus, interleaved.

The question of issue 17: how much forwarding load does the machine carry at
no loss with (a) one AhoyConference process, (b) two AhoyConference nodes
sharing a Redis directory (docs/cluster.md), (c) Janus VideoRoom?  Load: R
rooms, each one publisher (bench/load.py's cached VP8 + Opus clip) and S
subscribers; R goes up step by step (--rooms), and at each step the three
targets run one after the other (a b c, a b c, ...) so that the machine's
noise hits them alike.  A target leaves the ladder at its first step that it
does not carry; the run ends when every target has left or --budget-min is
used up.

Over 400 lines on purpose: the ladder, the three targets' start and stop, and
the verdict of each step are one run that must stop what it started (by PID)
however it ends; bench/capworker.py holds the load generator's side.

 - Every server is started once, here, on 127.0.0.1 only (bench/servers.py:
   the bench config, Janus with bench/janus/; a local redis-server for (b)),
   and stopped by its own PID at the end, also on Ctrl-C / SIGTERM.
 - (b) creates every room through node 1; the directory places it on the
   least loaded node and the joins follow the 302 (ahoyconference.client).
   Rooms are created --create-gap seconds apart (longer than the nodes'
   heartbeat, [cluster] ttl / 3), because the directory places by the load
   of the last heartbeat: a burst of creates within one heartbeat lands on
   one node (docs/cluster.md, "Limits, honestly").  Which node each room
   ended on is in the result.
 - The load generator is bench/capworker.py, a few processes of a few rooms
   each (bench/load.py's code), whose measurement windows start and stop
   together.  It runs on the same cores as the servers: its CPU and the rest
   of the machine's ("other": processes that are neither a server of this run,
   nor Redis, nor the load generator) are in every result line.

A step is carried when every room came up, the packets lost (sequence gaps
at the subscribers) are at most --loss-tolerance % (default 0.1 %, not 0:
the window's two edges cut a few packets in flight), and the load generator
kept up (no loop lag > 250 ms, no publisher schedule reset, no kernel drop
on its sockets, and the subscribers received what was sent x S, within 2 %,
apart from the sequence gaps).  Loss with kernel drops on the target's own
sockets is the target's.  A step that fails on the load generator's side
says so: the target's figure is then a lower bound.  A step not carried is
run once more (--retries): the machine is shared, and a stall elsewhere can
sink one run; both runs are in the results, and the step counts as carried
when either was.

One JSON line per step and target in results/capacity-TAG.jsonl, the
session in results/capacity-TAG-session.json, the summary tables in
results/capacity-TAG-summary.md (also printed).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import procstats  # noqa: E402
import servers  # noqa: E402

PY = servers.VENV_PY
REDIS = "/usr/bin/redis-server"
LOOP_LAG_MAX_MS = 250.0
SHORTFALL_MAX_PCT = 2.0
NODE_SATURATED_PCT = 90.0
"""An AhoyConference node is one Python thread: at this share of one core it is saturated."""

STARTED: list = []          # servers and redis, stopped by PID in cleanup()
WORKERS: list[subprocess.Popen] = []
ROOM_IDS = itertools.count(7001)


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


class Redis:
    """A redis-server of our own on a free loopback port, nothing saved to disk."""

    def __init__(self, workdir: str):
        self.port = servers.free_port()
        self.logPath = os.path.join(workdir, f"redis-{self.port}.log")
        with open(self.logPath, "w") as f:
            self.popen = subprocess.Popen(
                [REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", workdir, "--protected-mode", "yes"],
                stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        self.pid = self.popen.pid
        deadline = time.monotonic() + 10
        import socket
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not start; see {self.logPath}")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self) -> None:
        if self.popen.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.popen.wait(5)


class Target:
    """One thing under test: its name, signalling, entry URL and processes."""

    def __init__(self, name: str, sfu: str, url: str, procs: list, redis: Redis | None = None,
                 gap: float = 0.3):
        self.name = name
        self.sfu = sfu
        self.url = url
        self.procs = procs          # server processes (pid, url, alive())
        self.redis = redis
        self.gap = gap              # seconds between two room creates

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def metricsURLs(self) -> list[str]:
        if self.sfu != "ahoy":
            return []
        return [p.url.replace("ws://", "http://") + "metrics" for p in self.procs]

    def alive(self) -> bool:
        return all(p.alive() for p in self.procs) and (self.redis is None or self.redis.alive())


def start_targets(args) -> dict[str, Target]:
    shims = servers.build_shims()
    mlock = not args.no_mlock
    targets: dict[str, Target] = {}
    for name in args.targets.split():
        if name in ("1node", "1node+rcvbuf"):
            # +rcvbuf: an A/B with 4 MiB UDP receive buffers (bench/shims/udp_rcvbuf.c)
            p = servers.start_ahoy(shims, mlock=mlock, preload=(shims["udp_rcvbuf"],)
                                   if name.endswith("+rcvbuf") else ())
            STARTED.append(p)
            targets[name] = Target(name, "ahoy", p.url, [p], gap=args.create_gap_single)
        elif name == "2nodes":
            redis = Redis(servers.LAB)
            STARTED.append(redis)
            nodes = []
            for i in (1, 2):
                port = servers.free_port()
                cluster = (f'\n[cluster]\nredis = "redis://127.0.0.1:{redis.port}/0"\n'
                           f'node_id = "cap-{i}"\nnode_url = "ws://127.0.0.1:{port}/"\n'
                           f"ttl = {args.cluster_ttl}\n")
                p = servers.start_ahoy(shims, mlock=mlock, port=port, extra_config=cluster)
                STARTED.append(p)
                nodes.append(p)
            targets[name] = Target(name, "ahoy", nodes[0].url, nodes, redis=redis,
                                   gap=args.create_gap_cluster)
        elif name == "janus":
            p = servers.start_janus(shims, mlock=mlock)
            STARTED.append(p)
            targets[name] = Target(name, "janus", p.url, [p], gap=args.create_gap_single)
        else:
            raise SystemExit(f"unknown target {name!r} (1node, 2nodes, janus, 1node+rcvbuf)")
        t = targets[name]
        log(f"{name}: pids {t.pids}{' + redis ' + str(t.redis.pid) if t.redis else ''}, {t.url}")
    return targets


def cleanup(*_args) -> None:
    """Stop every process this script started, by PID (workers first)."""
    for w in WORKERS:
        if w.poll() is None:
            try:
                os.killpg(w.pid, signal.SIGKILL)     # its own session: only its own
            except OSError:
                pass
    WORKERS.clear()
    for p in reversed(STARTED):
        try:
            p.stop()
        except Exception as e:
            log(f"stopping {p.pid}: {e}"[:300])
    STARTED.clear()


# -- the load generator's processes ----------------------------------------------------

class Workers:
    """The capworker.py processes of one step: commands in, events out."""

    def __init__(self, target: Target, n: int, args, logdir: str):
        self.events: queue.Queue = queue.Queue()
        self.procs: list[subprocess.Popen] = []
        self.stderr = []
        for i in range(n):
            err = open(os.path.join(logdir, f"capworker-{target.name}-{i}.log"), "w")
            self.stderr.append(err)
            cmd = [PY, os.path.join(HERE, "capworker.py"), "--sfu", target.sfu, "--url", target.url,
                   "-S", str(args.subs), "--server-pid", ",".join(map(str, target.pids)),
                   "--step-timeout", str(args.step_timeout)]
            if args.no_mlock:
                cmd.append("--no-mlock")
            p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                 text=True, start_new_session=True, cwd=servers.ROOT)
            self.procs.append(p)
            WORKERS.append(p)
            threading.Thread(target=self._read, args=(i, p), daemon=True).start()

    def _read(self, i: int, p: subprocess.Popen) -> None:
        for line in p.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            ev["worker"] = i
            self.events.put(ev)
        self.events.put({"event": "exit", "worker": i})

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def send(self, i: int, **cmd) -> None:
        self.procs[i].stdin.write(json.dumps(cmd) + "\n")
        self.procs[i].stdin.flush()

    def broadcast(self, **cmd) -> None:
        for i in range(len(self.procs)):
            self.send(i, **cmd)

    def collect(self, kind: str, count: int, timeout: float, into: list | None = None) -> list:
        """Wait for `count` events of this kind; a worker that exits early is an error."""
        got = into if into is not None else []
        deadline = time.monotonic() + timeout
        while sum(1 for e in got if e["event"] == kind) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{sum(1 for e in got if e['event'] == kind)}/{count} "
                                   f"{kind!r} events within {timeout:.0f}s")
            try:
                ev = self.events.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            if ev["event"] == "exit":
                raise RuntimeError(f"load worker {ev['worker']} exited: see its log")
            if ev["event"] == "error":
                raise RuntimeError(f"load worker {ev['worker']}: {ev.get('error')}")
            got.append(ev)
        return got

    def close(self) -> None:
        for i, p in enumerate(self.procs):
            if p.poll() is None:
                try:
                    self.send(i, cmd="quit")
                except OSError:
                    pass
        deadline = time.monotonic() + 30
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
            if p in WORKERS:
                WORKERS.remove(p)
        for f in self.stderr:
            f.close()


# -- sampling --------------------------------------------------------------------------

class StallProbe:
    """How late a thread of this process wakes from 10 ms sleeps: the machine's
    own stalls (scheduling, the hypervisor), whatever the targets do."""

    def __init__(self, period: float = 0.01):
        self.period = period
        self.worst = 0.0
        self.late = 0            # wake-ups later than 100 ms
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            t = time.monotonic()
            time.sleep(self.period)
            lag = time.monotonic() - t - self.period
            self.worst = max(self.worst, lag)
            self.late += lag > 0.1

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join(1)
        return {"max_ms": round(1e3 * self.worst, 1), "over_100ms": self.late}


def metrics(url: str) -> dict:
    """AhoyConference's counters of the packet path (GET /metrics, loopback)."""
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError(f"not loopback: {url}")
    out: dict[str, float] = {}
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    for line in text.splitlines():
        if line.startswith(("ahoy_forwarded_packets", "ahoy_dropped_packets", "ahoy_send_errors",
                            "ahoy_media_errors", "ahoy_retransmitted_packets",
                            "ahoy_keyframe_requests_sent", "ahoy_nacks_received",
                            "ahoy_publisher_")):
            name, _, value = line.rpartition(" ")
            out[name.replace("_total", "")] = float(value)
    return out


def sample(target: Target, everyone: list[int], workers: Workers) -> dict:
    """What is read at each edge of the window."""
    return dict(
        t=time.monotonic(),
        server={pid: sum(procstats.proc_cpu([pid])) for pid in target.pids},
        redis=sum(procstats.proc_cpu([target.redis.pid])) if target.redis else 0.0,
        idle_targets=sum(procstats.proc_cpu([p for p in everyone if p not in target.pids
                                             and not (target.redis and p == target.redis.pid)])),
        workers=[sum(procstats.proc_cpu([pid])) for pid in workers.pids],
        me=procstats.self_cpu(),
        machine=procstats.machine_cpu(),
        udp_drops_server=procstats.udp_drops(target.pids),
        metrics={u: metrics(u) for u in target.metricsURLs()},
    )


# -- one step of one target ------------------------------------------------------------

def run_step(target: Target, R: int, args, everyone: list[int], attempt: int) -> dict:
    """R rooms on this target, measured for args.seconds; one result record."""
    nworkers = min(R, max(args.min_workers, math.ceil(R / args.rooms_per_worker)))
    rec = {"tag": args.tag, "target": target.name, "rooms": R, "subs_per_room": args.subs,
           "attempt": attempt, "workers": nworkers, "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "seconds": None, "carried": False, "limit": None, "notes": []}
    w = Workers(target, nworkers, args, servers.LAB)
    t0 = time.monotonic()
    try:
        w.collect("hello", nworkers, 60)
        rooms = [next(ROOM_IDS) for _ in range(R)]
        for k, rid in enumerate(rooms):
            w.send(k % nworkers, cmd="room", room=rid)
            if k + 1 < R:
                time.sleep(target.gap)
        evs = w.collect("room", R, 3 * args.step_timeout + 30)
        bad = [e for e in evs if not e.get("ok")]
        rec["rooms_ok"] = R - len(bad)
        rec["setup_s"] = round(time.monotonic() - t0, 1)
        rec["room_setup_s_max"] = max(e["setup_s"] for e in evs)
        per_node: dict[str, int] = {}
        for e in evs:
            if e.get("ok"):
                per_node[e["node"]] = per_node.get(e["node"], 0) + 1
        rec["rooms_per_node"] = per_node
        if bad:
            rec["limit"] = "setup"
            rec["notes"].append(f"{len(bad)} rooms did not come up, e.g. {bad[0].get('error')}")
            return rec
        time.sleep(args.warmup)
        a = sample(target, everyone, w)
        probe = StallProbe()
        w.broadcast(cmd="start")
        w.collect("started", nworkers, 20)
        time.sleep(args.seconds)
        w.broadcast(cmd="stop")
        b = sample(target, everyone, w)
        rec["machine_stalls"] = probe.stop()
        results = w.collect("result", nworkers, 60)
    except Exception as e:
        rec["limit"] = rec["limit"] or "setup"
        rec["notes"].append(f"{type(e).__name__}: {e}"[:300])
        return rec
    finally:
        w.close()
    return fill(rec, target, a, b, [r for r in results if r["event"] == "result"], args)


def fill(rec: dict, target: Target, a: dict, b: dict, results: list[dict], args) -> dict:
    """The record of a measured step, and its verdict."""
    wall = b["t"] - a["t"]
    jiffies = max(1, b["machine"][1] - a["machine"][1])
    busy = (b["machine"][0] - a["machine"][0]) / jiffies
    steal = (b["machine"][2] - a["machine"][2]) / jiffies
    ncpu = os.cpu_count() or 1

    def pct(x: float) -> float:
        return round(100 * x / wall, 1)

    by_pid = {str(pid): pct(b["server"][pid] - a["server"][pid]) for pid in target.pids}
    server = sum(b["server"][p] - a["server"][p] for p in target.pids)
    redis = b["redis"] - a["redis"]
    loadgen = [pct(y - x) for x, y in zip(a["workers"], b["workers"], strict=True)]
    me = b["me"] - a["me"]
    idle = b["idle_targets"] - a["idle_targets"]
    total = lambda k: sum(r[k] for r in results)   # noqa: E731
    fwd = total("fwd_packets")
    recv, expected, fanout = total("media_recv"), total("seq_expected"), total("sent_fanout")
    counters = {}
    for url, after in b["metrics"].items():
        before = a["metrics"].get(url, {})
        counters[url] = {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}
    lag = max((r["loop_lag_ms"]["max"] or 0) for r in results)
    rec.update(
        seconds=round(wall, 2),
        pub_pps=round(total("pub_sent") / wall, 1),
        fwd_pps=round(fwd / wall, 1),
        fwd_by_kind={k: sum(r["fwd_by_kind"].get(k, 0) for r in results)
                     for k in ("audio", "video", "rtx")},
        loss_pct_seq_gaps=round(100 * (1 - recv / expected), 3) if expected else None,
        shortfall_pct=round(100 * (1 - recv / fanout), 3) if fanout else None,
        worst_sub_recv_over_sent=min(r["worst_sub_recv_over_sent"] for r in results),
        server_cpu_pct=pct(server),
        server_cpu_pct_by_pid=by_pid,
        redis_cpu_pct=pct(redis),
        server_us_per_fwd_pkt=round(1e6 * (server + redis) / fwd, 2) if fwd else None,
        loadgen_cpu_pct=round(sum(loadgen) + pct(me), 1),
        loadgen_cpu_pct_by_worker=loadgen,
        loadgen_cpu_pct_self_reported=round(sum(r["loadgen_cpu_pct"] for r in results), 1),
        idle_targets_cpu_pct=pct(idle),
        machine_cpu_pct_of_all_cores=round(100 * busy, 1),
        steal_pct=round(100 * ncpu * steal, 1),
        other_cpu_pct=round(100 * (busy - steal) * ncpu - pct(server + redis + me + idle)
                            - sum(loadgen), 1),
        ncpu=ncpu,
        loadgen_loop_lag_ms_max=lag,
        publisher_late_resets=total("publisher_late_resets"),
        udp_drops={"server": b["udp_drops_server"] - a["udp_drops_server"],
                   "loadgen": total("udp_drops_loadgen")},
        loadgen_rx_errors={k: sum(r["rx_errors"].get(k, 0) for r in results)
                           for k in ("srtp_errors", "unknown_pt")},
        server_counters=counters,
    )
    verdict(rec, args)
    return rec


def verdict(rec: dict, args) -> None:
    """carried, and what limited the step (None when carried below every limit).

    Lost packets are the target's when its own sockets dropped datagrams in
    the kernel, or when the load generator kept up; the load generator is
    behind when its loop stalled, its publishers fell off their schedule, its
    sockets dropped, or the subscribers received less (or more) than sent x S
    by more than the sequence gaps explain (a backlog, not loss)."""
    generator = []
    if rec["loadgen_loop_lag_ms_max"] > LOOP_LAG_MAX_MS:
        generator.append(f"load generator loop lag {rec['loadgen_loop_lag_ms_max']:.0f} ms")
    if rec["publisher_late_resets"]:
        generator.append(f"{rec['publisher_late_resets']} publisher schedule resets")
    if rec["udp_drops"]["loadgen"]:
        generator.append(f"{rec['udp_drops']['loadgen']} kernel drops on the load generator's sockets")
    loss = rec["loss_pct_seq_gaps"]
    if (rec["shortfall_pct"] is not None and loss is not None
            and abs(rec["shortfall_pct"] - loss) > SHORTFALL_MAX_PCT):
        short = rec["shortfall_pct"]
        generator.append(f"received {abs(short):.2f} % {'fewer' if short > 0 else 'more'} than "
                         f"sent x S, {loss:.2f} % lost by sequence gaps: a backlog")
    lost = loss is None or loss > args.loss_tolerance
    server_drops = rec["udp_drops"]["server"]
    hot = [pid for pid, p in rec["server_cpu_pct_by_pid"].items() if p >= NODE_SATURATED_PCT]
    if lost:
        rec["notes"].append(f"loss {loss} % > {args.loss_tolerance} %")
    if server_drops:
        rec["notes"].append(f"{server_drops} kernel drops on the target's sockets")
    rec["notes"] += generator
    if hot and rec["target"] != "janus":
        rec["notes"].append(f"node(s) {','.join(hot)} at >= {NODE_SATURATED_PCT:.0f} % of a core")
    if rec["machine_cpu_pct_of_all_cores"] >= 95:
        rec["notes"].append(f"machine {rec['machine_cpu_pct_of_all_cores']} % busy")
    rec["carried"] = not lost and not generator
    if lost and (server_drops or not generator):
        rec["limit"] = "target loss"
    elif generator:
        rec["limit"] = "load generator"
    elif hot and rec["target"] != "janus":
        rec["limit"] = "target CPU"        # carried, but no room for the next step
    else:
        rec["limit"] = None


# -- the ladder ------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rooms", default="4 8 12 16 18 20 22 24 28 32",
                    help="the steps: numbers of rooms, increasing")
    ap.add_argument("-S", "--subs", type=int, default=4, help="subscribers per room")
    ap.add_argument("-T", "--seconds", type=float, default=10.0, help="measurement window")
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--targets", default="1node 2nodes janus",
                    help="in this order at every step; also 1node+rcvbuf (an A/B: the same "
                    "server with 4 MiB UDP receive buffers, bench/shims/udp_rcvbuf.c)")
    ap.add_argument("--loss-tolerance", type=float, default=0.1,
                    help="packets lost (seq gaps) a carried step may have, %%")
    ap.add_argument("--retries", type=int, default=1,
                    help="a step not carried is run again this many times (the machine is "
                    "shared: a stall elsewhere can sink one run); carried if any run carried")
    ap.add_argument("--rooms-per-worker", type=int, default=2,
                    help="rooms per load-generator process")
    ap.add_argument("--min-workers", type=int, default=2)
    ap.add_argument("--cluster-ttl", type=float, default=3.0,
                    help="[cluster] ttl of the two nodes (heartbeat every ttl/3 s)")
    ap.add_argument("--create-gap-cluster", type=float, default=1.2,
                    help="seconds between room creates on the cluster (> one heartbeat)")
    ap.add_argument("--create-gap-single", type=float, default=0.3,
                    help="seconds between room creates on 1 node and on Janus")
    ap.add_argument("--step-timeout", type=float, default=30.0)
    ap.add_argument("--budget-min", type=float, default=25.0, help="deadline for everything")
    ap.add_argument("--nice", type=int, default=0,
                    help="niceness of everything this starts (servers, Redis, load generator "
                    "alike), e.g. -10 on a machine shared with other work (root)")
    ap.add_argument("--no-mlock", action="store_true")
    ap.add_argument("--results", default=os.path.join(HERE, "results"))
    ap.add_argument("--tag", default=time.strftime("%Y%m%d-%H%M"))
    ap.add_argument("--summary", metavar="JSONL",
                    help="only print the summary tables of an earlier run's result lines")
    args = ap.parse_args()
    if args.summary:
        with open(args.summary) as f:
            records = [json.loads(line) for line in f if line.strip()]
        for rec in records:           # judged again by the rules of this version
            if rec.get("seconds") is not None:
                rec["notes"] = []
                verdict(rec, args)
        print(summary(records, args))
        return 0
    t_start = time.monotonic()
    deadline = t_start + 60 * args.budget_min
    os.makedirs(args.results, exist_ok=True)
    out = os.path.join(args.results, f"capacity-{args.tag}.jsonl")
    meta_out = os.path.join(args.results, f"capacity-{args.tag}-session.json")
    steps = [int(x) for x in args.rooms.split()]
    meta = {"tag": args.tag, "argv": sys.argv, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "ncpu": os.cpu_count(), "nice": args.nice, "loss_tolerance_pct": args.loss_tolerance, "notes": [],
            "reduced": False, "calibration": procstats.calibrate()}
    signal.signal(signal.SIGTERM, lambda *a: (cleanup(), sys.exit(143)))
    if args.nice:
        os.nice(args.nice)       # inherited by every process started below, alike
    records: list[dict] = []
    try:
        targets = start_targets(args)
        everyone = [pid for t in targets.values() for pid in t.pids + ([t.redis.pid] if t.redis else [])]
        time.sleep(2)
        active = list(targets)
        for R in steps:
            for name in list(active):
                t = targets[name]
                est = 10 + R * t.gap + args.warmup + args.seconds + 15
                if time.monotonic() + est > deadline:
                    meta["reduced"] = True
                    meta["notes"].append(f"stopped before {name} at R={R}: time budget")
                    raise TimeoutError
                if not t.alive():
                    meta["notes"].append(f"{name} died before R={R}")
                    log(f"{name} is not running any more")
                    active.remove(name)
                    continue
                for attempt in range(1, args.retries + 2):
                    log(f"R={R:3d} {name:6s} (attempt {attempt})")
                    rec = run_step(t, R, args, everyone, attempt)
                    with open(out, "a") as f:
                        f.write(json.dumps(rec) + "\n")
                    records.append(rec)
                    log("   " + oneLine(rec))
                    if rec["carried"] or attempt > args.retries:
                        break
                    log(f"   not carried (other CPU {rec.get('other_cpu_pct')} %): once more")
                    time.sleep(5)
                if not rec["carried"] or rec["limit"]:
                    active.remove(name)
                time.sleep(1)
            if not active:
                break
    except TimeoutError:
        log("time budget reached")
    except KeyboardInterrupt:
        meta["notes"].append("interrupted")
    finally:
        cleanup()
        meta["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        meta["elapsed_s"] = round(time.monotonic() - t_start)
        with open(meta_out, "w") as f:
            json.dump(meta, f, indent=1)
    text = summary(records, args)
    with open(os.path.join(args.results, f"capacity-{args.tag}-summary.md"), "w") as f:
        f.write(text)
    print(text)
    log(f"done in {time.monotonic() - t_start:.0f}s: {out}")
    return 0


def oneLine(r: dict) -> str:
    if r.get("seconds") is None:
        return f"NOT MEASURED ({r['limit']}): {'; '.join(r['notes'])}"
    return (f"{r['fwd_pps']:.0f} fwd pkt/s, loss {r['loss_pct_seq_gaps']} %, server "
            f"{r['server_cpu_pct']} % {r['server_cpu_pct_by_pid']}, loadgen {r['loadgen_cpu_pct']} %, "
            f"other {r['other_cpu_pct']} %, machine {r['machine_cpu_pct_of_all_cores']} %, "
            f"rooms/node {list(r['rooms_per_node'].values())} -> "
            f"{'carried' if r['carried'] else 'NOT carried'}"
            f"{' (' + r['limit'] + ')' if r['limit'] else ''}"
            f"{': ' + '; '.join(r['notes']) if r['notes'] else ''}")


def best(records: list[dict], target: str) -> tuple[dict | None, dict | None]:
    """The largest step the target carried (its last attempt), and the first
    step above it (what stopped it)."""
    last: dict[int, dict] = {}
    for r in records:
        if r["target"] == target:
            last[r["rooms"]] = r
    carried = None
    for R in sorted(last):
        if last[R]["carried"]:
            carried = last[R]
        else:
            return carried, last[R]
    return carried, None


def projections(records: list[dict], args) -> dict:
    """{target: ([µs/pkt per process], extrapolated pkt/s)} at its largest carried step.

    For AhoyConference the cost is per node (its own CPU over the packets its
    /metrics says it forwarded), and each node gets one core; Janus gets both."""
    out = {}
    for name in args.targets.split():
        ok, _ = best(records, name)
        if ok is None or not ok.get("fwd_pps"):
            continue
        if name == "janus":
            cost = ok["server_us_per_fwd_pkt"]
            out[name] = ([cost], 2e6 / cost)
            continue
        costs = []
        for cpu, counters in zip(ok["server_cpu_pct_by_pid"].values(),
                                 ok["server_counters"].values(), strict=False):
            packets = counters.get("ahoy_forwarded_packets", 0)
            if packets:
                costs.append(1e6 * cpu / 100 * ok["seconds"] / packets)
        if costs:
            out[name] = (costs, sum(1e6 / c for c in costs))
    return out


def summary(records: list[dict], args) -> str:
    """The markdown tables of a session."""
    lines = [f"### Every step (S = {args.subs} subscribers per room, T = {args.seconds:g} s)", "",
             "| rooms | target | attempt | fwd pkt/s | loss % | server CPU % (per process) | "
             "redis % | µs/pkt | load gen. CPU % | other CPU % | machine % of 2 cores | "
             "worst machine stall ms | rooms per node | carried | limit / notes |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        if r.get("seconds") is None:
            lines.append(f"| {r['rooms']} | {r['target']} | {r['attempt']} | – | – | – | – | – | – | "
                         f"– | – | – | – | no | {r['limit']}: {'; '.join(r['notes'])} |")
            continue
        lines.append(
            f"| {r['rooms']} | {r['target']} | {r['attempt']} | {r['fwd_pps']:.0f} | "
            f"{r['loss_pct_seq_gaps']} | {r['server_cpu_pct']} "
            f"({' + '.join(str(v) for v in r['server_cpu_pct_by_pid'].values())}) | "
            f"{r['redis_cpu_pct'] if r['target'] == '2nodes' else '–'} | {r['server_us_per_fwd_pkt']} | "
            f"{r['loadgen_cpu_pct']} | {r['other_cpu_pct']} | {r['machine_cpu_pct_of_all_cores']} | "
            f"{r.get('machine_stalls', {}).get('max_ms', '–')} | "
            f"{' / '.join(str(v) for v in r['rooms_per_node'].values())} | "
            f"{'yes' if r['carried'] else 'no'} | "
            f"{(r['limit'] or '') + (': ' if r['limit'] and r['notes'] else '') + '; '.join(r['notes'])} |")
    lines += ["", "### Largest load carried", "",
              f"| target | largest R carried (loss ≤ {args.loss_tolerance} %) | fwd pkt/s | "
              "server CPU % | load gen. CPU % | other CPU % | machine % | next step: what stopped it |",
              "|---|---|---|---|---|---|---|---|"]
    figures = {}
    lower = []          # targets whose figure the load generator bounded
    for name in args.targets.split():
        ok, stop = best(records, name)
        if stop is not None and stop["limit"] == "load generator":
            lower.append(name)
        nxt = "–" if stop is None else (f"R={stop['rooms']}: {stop['limit']}"
                                        + (f" ({'; '.join(stop['notes'])})" if stop["notes"] else ""))
        if ok is not None and ok["limit"]:
            nxt = f"at R={ok['rooms']} itself: {ok['limit']}; " + nxt
        if ok is None:
            lines.append(f"| {name} | none | – | – | – | – | – | {nxt} |")
            continue
        figures[name] = ok["fwd_pps"]
        lines.append(f"| {name} | {ok['rooms']} | {ok['fwd_pps']:.0f} | {ok['server_cpu_pct']} | "
                     f"{ok['loadgen_cpu_pct']} | {ok['other_cpu_pct']} | "
                     f"{ok['machine_cpu_pct_of_all_cores']} | {nxt} |")
    lines.append("")
    proj = projections(records, args)
    if proj:
        lines += ["### Extrapolation (not measured): each target with the machine to itself", "",
                  "Forwarded packets/s = cores it can use × 10⁶ µs / the server's µs of CPU per "
                  "forwarded packet at its largest carried step (an AhoyConference node is one "
                  "thread: 1 core each; Janus: both cores). The cost per packet falls as the load "
                  "grows (fixed costs spread), so these lean low; they assume nothing else on the "
                  "machine, the load generator included.", "",
                  "| target | µs/pkt (per node) | cores | extrapolated fwd pkt/s |", "|---|---|---|---|"]
        for name, (costs, pps) in proj.items():
            cores = 2 if name == "janus" else len(costs)
            lines.append(f"| {name} | {' / '.join(f'{c:.1f}' for c in costs)} | {cores} "
                         f"| {pps:.0f} |")
        if "2nodes" in proj and "1node" in proj:
            lines.append("")
            lines.append(f"Extrapolated 2 nodes / 1 node: {proj['2nodes'][1] / proj['1node'][1]:.2f}")
        if "2nodes" in proj and "janus" in proj:
            lines.append(f"Extrapolated 2 nodes / Janus: {proj['2nodes'][1] / proj['janus'][1]:.2f}")
        lines.append("")
    if "2nodes" in figures and "1node" in figures:
        lines.append(f"2 nodes / 1 node (forwarded packets/s at the largest carried step): "
                     f"**{figures['2nodes'] / figures['1node']:.2f}**")
    if "2nodes" in figures and "janus" in figures:
        lines.append(f"2 nodes / Janus: **{figures['2nodes'] / figures['janus']:.2f}**")
    if lower:
        lines.append(f"Lower bounds (the next step failed on the load generator's side, not "
                     f"the target's): {', '.join(lower)}; a ratio with one of them in the "
                     f"denominator says nothing about the target.")
    lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
