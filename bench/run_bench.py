#!/usr/bin/env python3
"""The whole comparison, bounded in time: AhoyConference against Janus 1.1.2.

  1. forwarding: load.py (one load generator, one signalling class per SFU)
     against both servers, configs interleaved and the SFU order alternated
     per repetition; one JSON line per run in results/forwarding-TAG.jsonl;
     plus an idle sample of both servers;
  2. a py-spy profile of AhoyConference at one config (results/profile-TAG.*);
  3. signalling: signalling.py against a fresh AhoyConference per scenario
     (results/signalling-TAG.jsonl);
  4. report.py: bench/RESULTS.md from those files.

Every server and load generator is started here, on 127.0.0.1 only, and
stopped by its own PID at the end (also on Ctrl-C / SIGTERM).  Each run has a
timeout, and the whole thing a deadline (--budget-min): when the remaining
time is too short for the next run, the matrix stops early and the report
says it is reduced.  Usage: see --help, or bench/run.sh.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import servers  # noqa: E402

PY = servers.VENV_PY
STARTED: list[servers.Running] = []
CHILDREN: list[subprocess.Popen] = []


class OutOfTime(Exception):
    """The time budget cannot fit the next run."""


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def cleanup(*_args) -> None:
    """Stop every process this script started, by PID."""
    for p in CHILDREN:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)     # its own session: only its own children
            except OSError:
                pass
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except OSError:
                    pass
    for proc in STARTED:
        try:
            proc.stop()
        except Exception as e:  # killed after the grace period: said, and the others still stop
            log(f"stopping {proc.pid}: {e}"[:300])


def run_child(cmd: list[str], timeout: float, stdout=None, nice: int = 0) -> int:
    """Run a command in its own session, bounded; kill its group on timeout."""
    def pre():
        if nice:
            os.nice(nice)
    p = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.PIPE, text=True,
                         start_new_session=True, preexec_fn=pre if nice else None, cwd=servers.ROOT)
    CHILDREN.append(p)
    try:
        _, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        log(f"  TIMEOUT after {timeout:.0f}s: {' '.join(cmd[:6])}...")
        return -1
    finally:
        CHILDREN.remove(p)
    if p.returncode:
        tail = "\n".join((err or "").strip().splitlines()[-4:])
        log(f"  exit {p.returncode}: {tail}")
    return p.returncode


def renice(pid: int, nice: int) -> None:
    if nice:
        try:
            os.setpriority(os.PRIO_PROCESS, pid, nice)
            for tid in os.listdir(f"/proc/{pid}/task"):
                os.setpriority(os.PRIO_PROCESS, int(tid), nice)
        except OSError as e:
            log(f"  renice {pid}: {e}")


def idle_sample(procs: dict, seconds: float, out: str) -> None:
    """Each server's CPU with no peers at all (its fixed cost)."""
    import procstats
    pids = {k: [p.pid] for k, p in procs.items()}
    a = {k: procstats.proc_cpu(v) for k, v in pids.items()}
    t0 = time.monotonic()
    time.sleep(seconds)
    wall = time.monotonic() - t0
    with open(out, "a") as f:
        for k, v in pids.items():
            b = procstats.proc_cpu(v)
            f.write(json.dumps({
                "sfu": k, "publishers": 0, "subs_per_pub": 0, "idle": True, "seconds": round(wall, 2),
                "server_cpu_pct": round(100 * (b[0] + b[1] - a[k][0] - a[k][1]) / wall, 2),
                "server_rss_kb": procstats.proc_rss_kb(v), "valid": True,
                "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n")


def load_cmd(label: str, proc: servers.Running, P: int, S: int, args, out: str) -> list[str]:
    sfu = "janus" if label == "janus" else "ahoy"
    return [PY, os.path.join(HERE, "load.py"), "--sfu", sfu, "--label", label, "--url", proc.url,
            "--room", "1234", "-P", str(P), "-S", str(S), "-T", str(args.seconds),
            "--warmup", str(args.warmup), "--max-run", str(args.seconds + 170),
            "--server-pid", str(proc.pid), "--out", out]


def profile(procs: dict, args, tag: str) -> None:
    """py-spy (sampling, non-blocking) on AhoyConference during one load run."""
    pyspy = find_pyspy()
    if pyspy is None:
        log("profile: py-spy not found (bench/run.sh installs it); skipped")
        return
    P, S = (int(x) for x in args.profile_config.split(":"))
    base = os.path.join(args.results, f"profile-{tag}")
    proc = procs[args.profile_sfu]
    dur = int(args.seconds)
    log(f"profile: py-spy on {args.profile_sfu} (pid {proc.pid}) during P={P} S={S}")
    ready = base + ".ready"
    if os.path.exists(ready):
        os.unlink(ready)
    lp = subprocess.Popen(load_cmd(args.profile_sfu, proc, P, S, args, base + "-run.jsonl")
                          + ["--ready-file", ready],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          start_new_session=True, cwd=servers.ROOT)
    CHILDREN.append(lp)
    try:
        limit = time.monotonic() + 120
        while not os.path.exists(ready) and lp.poll() is None and time.monotonic() < limit:
            time.sleep(0.2)
        if os.path.exists(ready):
            # --native needs py-spy to pause the process for each sample (more overhead,
            # so a lower rate); the plain profile samples without stopping it
            mode = (["--native", "--rate", "100"] if args.profile_native
                    else ["--nonblocking", "--rate", "250"])
            run_child([pyspy, "record", "--pid", str(proc.pid)] + mode + [
                       "--duration", str(max(3, dur - 2)), "--format", "raw",
                       "--output", base + ".txt"], timeout=dur + 60, stdout=subprocess.DEVNULL)
        else:
            log("profile: the load run never started measuring")
        lp.communicate(timeout=args.seconds + 200)
        if os.path.exists(ready):
            os.unlink(ready)
    except subprocess.TimeoutExpired:
        os.killpg(lp.pid, signal.SIGKILL)
    finally:
        CHILDREN.remove(lp)
    if os.path.exists(base + ".txt"):
        subprocess.run([PY, os.path.join(HERE, "profile_summary.py"), base + ".txt"],
                       stdout=open(base + "-summary.md", "w"), check=False)
        log(f"profile: {base}.txt, {base}-summary.md")


def find_pyspy() -> str | None:
    for cand in (shutil.which("py-spy"), os.path.join(servers.ROOT, ".venv", "bin", "py-spy"),
                 os.path.join(servers.LAB, "tools", "bin", "py-spy")):
        if cand and os.path.exists(cand):
            return cand
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("-T", "--seconds", type=float, default=20.0, help="measurement window per run")
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--configs", default="1:1 1:10 2:10 4:10 8:10 4:20", help="P:S list")
    ap.add_argument("--sfus", default="ahoy janus",
                    help="servers to compare: ahoy, ahoy-oneport ([ice] udp_port), janus, "
                         "ahoy+patch (needs --patched-root)")
    ap.add_argument("--base-root", help="run 'ahoy' from this snapshot of ahoyconference/ and "
                    "twisted/ instead of the work tree (a stable baseline for an A/B)")
    ap.add_argument("--patched-root", help="a copy of the project's ahoyconference/ and "
                    "twisted/ with a patch under test applied (for ahoy+patch)")
    ap.add_argument("--budget-min", type=float, default=30.0, help="deadline for everything")
    ap.add_argument("--results", default=os.path.join(HERE, "results"))
    ap.add_argument("--tag", default=time.strftime("%Y%m%d-%H%M%S"))
    ap.add_argument("--nice", type=int, default=0,
                    help="niceness for both servers and the load generator alike (e.g. -10)")
    ap.add_argument("--no-mlock", action="store_true")
    ap.add_argument("--skip-forwarding", action="store_true")
    ap.add_argument("--skip-profile", action="store_true")
    ap.add_argument("--skip-signalling", action="store_true")
    ap.add_argument("--profile-config", default="4:10")
    ap.add_argument("--profile-sfu", default="ahoy", help="which server py-spy samples")
    ap.add_argument("--profile-native", action="store_true",
                    help="py-spy --native: C frames (libsrtp, libc sendto) as their own rows")
    ap.add_argument("--signalling-args", default="", help="extra arguments for signalling.py")
    ap.add_argument("--no-report", action="store_true")
    args = ap.parse_args()
    t_start = time.monotonic()
    deadline = t_start + 60 * args.budget_min
    os.makedirs(args.results, exist_ok=True)
    fwd_out = os.path.join(args.results, f"forwarding-{args.tag}.jsonl")
    sig_out = os.path.join(args.results, f"signalling-{args.tag}.jsonl")
    meta_out = os.path.join(args.results, f"session-{args.tag}.json")
    signal.signal(signal.SIGTERM, lambda *a: (cleanup(), sys.exit(143)))
    meta = {"tag": args.tag, "argv": sys.argv, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "reps_planned": args.reps, "configs": args.configs, "seconds": args.seconds,
            "warmup": args.warmup, "nice": args.nice, "runs_done": 0, "runs_planned": 0,
            "reduced": False, "notes": []}
    try:
        shims = servers.build_shims()
        sfus = args.sfus.split()
        procs: dict[str, servers.Running] = {}
        if not args.skip_forwarding or not args.skip_profile:
            for sfu in sfus:
                try:
                    if sfu == "janus":
                        p = servers.start_janus(shims, mlock=not args.no_mlock)
                    elif sfu == "ahoy":
                        p = servers.start_ahoy(shims, mlock=not args.no_mlock,
                                               code_root=args.base_root and os.path.abspath(args.base_root))
                    elif sfu == "ahoy-oneport":  # [ice] udp_port (issue 16)
                        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                            u.bind(("127.0.0.1", 0))
                            udpPort = u.getsockname()[1]
                        p = servers.start_ahoy(shims, mlock=not args.no_mlock, udp_port=udpPort)
                    elif sfu == "ahoy+patch" and args.patched_root:
                        p = servers.start_ahoy(shims, mlock=not args.no_mlock,
                                               code_root=os.path.abspath(args.patched_root))
                    else:
                        raise ValueError(f"unknown server {sfu!r} (ahoy, ahoy-oneport, janus, "
                                         "ahoy+patch with --patched-root)")
                except Exception as e:
                    log(f"could not start {sfu}: {e}")
                    meta["notes"].append(f"{sfu} not started: {str(e).splitlines()[0]}")
                    continue
                STARTED.append(p)
                renice(p.pid, args.nice)
                procs[sfu] = p
                log(f"{sfu}: pid {p.pid}, {p.url}, log {p.logPath}")
        if not args.skip_forwarding and procs:
            time.sleep(2)
            idle_sample(procs, 5.0, fwd_out)
            configs = [tuple(int(x) for x in c.split(":")) for c in args.configs.split()]
            plan = [(rep, P, S) for rep in range(1, args.reps + 1) for P, S in configs]
            meta["runs_planned"] = len(plan) * len(procs)
            reserve = 0 if args.skip_signalling else 240
            reserve += 0 if args.skip_profile else 90
            for rep, P, S in plan:
                order = list(procs) if rep % 2 else list(reversed(procs))
                for sfu in order:
                    est = args.seconds + args.warmup + 15 + 0.25 * P * S
                    if time.monotonic() + est + reserve > deadline:
                        meta["reduced"] = True
                        meta["notes"].append(f"matrix stopped at rep {rep} P={P} S={S}: time budget")
                        raise OutOfTime
                    if not procs[sfu].alive():
                        meta["notes"].append(f"{sfu} died before rep {rep} P={P} S={S}")
                        log(f"{sfu} is not running any more; see {procs[sfu].logPath}")
                        continue
                    log(f"rep {rep}/{args.reps}  {sfu:5s} P={P} S={S}")
                    before = sum(1 for _ in open(fwd_out))
                    rc = run_child(load_cmd(sfu, procs[sfu], P, S, args, fwd_out),
                                   timeout=args.seconds + 200, stdout=subprocess.DEVNULL,
                                   nice=args.nice)
                    lines = open(fwd_out).read().splitlines()
                    if len(lines) > before:
                        r = json.loads(lines[-1])
                        meta["runs_done"] += 1
                        log(f"  {r['fwd_pps']:.0f} pkt/s, server {r['server_cpu_pct']:.1f}% "
                            f"= {r['server_us_per_fwd_pkt']} us/pkt, loss {r['loss_pct_seq_gaps']}%, "
                            f"loadgen {r['loadgen_cpu_pct']:.0f}%, other {r['other_cpu_pct']:.0f}%"
                            f"{'' if r['valid'] else '  INVALID ' + ','.join(r['invalid_reasons'])}")
                    else:
                        with open(fwd_out, "a") as f:
                            f.write(json.dumps({"sfu": sfu, "publishers": P, "subs_per_pub": S,
                                                "failed": True, "rc": rc, "valid": False,
                                                "invalid_reasons": ["run failed"]}) + "\n")
                    time.sleep(2)
    except OutOfTime:
        log("time budget reached: matrix reduced")
    except KeyboardInterrupt:
        meta["notes"].append("interrupted")
    try:
        if not args.skip_profile and args.profile_sfu in procs and time.monotonic() + 90 < deadline:
            profile(procs, args, args.tag)
    except Exception as e:
        log(f"profile failed: {e}")
    finally:
        cleanup()
        STARTED.clear()
    try:
        left = deadline - time.monotonic()
        if not args.skip_signalling:
            if left > 60:
                log(f"signalling: {left:.0f}s left")
                run_child([PY, os.path.join(HERE, "signalling.py"), "--out", sig_out,
                           "--budget", str(int(left - 20))] + args.signalling_args.split(),
                          timeout=left, stdout=None, nice=args.nice)
            else:
                meta["notes"].append("signalling skipped: time budget")
    finally:
        cleanup()
        meta["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        meta["elapsed_s"] = round(time.monotonic() - t_start)
        with open(meta_out, "w") as f:
            json.dump(meta, f, indent=1)
    if not args.no_report:
        subprocess.run([PY, os.path.join(HERE, "report.py"), "--tag", args.tag,
                        "--results", args.results], check=False)
    log(f"done in {time.monotonic() - t_start:.0f}s: {fwd_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
