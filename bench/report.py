#!/usr/bin/env python3
"""bench/RESULTS.md from one session's files in bench/results/:

  forwarding-TAG.jsonl   load.py lines (both SFUs, interleaved) + idle samples
  session-TAG.json       what run_bench.py planned and did
  profile-TAG-summary.md profile_summary.py's tables (py-spy on AhoyConference)
  signalling-TAG.jsonl   signalling.py lines
  bench/NOTES.md         the hand-written analysis, included as it is

Medians over the VALID runs with [min-max]; invalid runs (load.py's `valid`:
loss > 0.5 %, publisher schedule resets, loop lag > 250 ms, major faults)
are counted and left out.  Ratios AhoyConference / Janus are taken per
repetition (the two runs of a config in the same round, minutes apart) and
then summarised.  Usage: report.py --tag TAG [--results DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from collections import defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
PKT_PER_STREAM = 161.0   # one subscriber stream: ~111 video (1 Mbit/s VP8) + 50 Opus packets/s


def fmt(vals, nd=1):
    vals = [v for v in vals if v is not None]
    if not vals:
        return "-"
    med = statistics.median(vals)
    if len(vals) == 1 or min(vals) == max(vals):
        return f"{med:.{nd}f}"
    return f"{med:.{nd}f} [{min(vals):.{nd}f}–{max(vals):.{nd}f}]"


SHORTFALL_MAX = 1.0   # as load.py: older result lines get the rule here


def read_jsonl(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    for r in rows:
        short = r.get("loss_pct_vs_fanout")
        if r.get("valid") and short is not None and abs(short) > SHORTFALL_MAX:
            r["valid"] = False
            r.setdefault("invalid_reasons", []).append(f"|receive shortfall|>{SHORTFALL_MAX}%")
    return rows


def sh(cmd) -> str:
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception:
        return ""


def machine() -> list[str]:
    model = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip()
    mem = sh("awk '/MemTotal/ {printf \"%.0f GiB\", $2/1048576}' /proc/meminfo")
    deb = sh("cat /etc/debian_version")
    py = os.path.join(os.path.dirname(HERE), ".venv", "bin", "python")
    vers = sh(f"{py} -c \"import importlib.metadata as m; print(', '.join(p + ' ' + m.version(p) for p in "
              "('aiortc','aioice','pylibsrtp','av','Twisted','autobahn','websockets')))\"")
    janus = sh("dpkg-query -W -f='${Version}' janus")
    libs = sh("dpkg-query -W -f='${Package} ${Version}, ' libnice10 libsrtp2-1 libssl3 2>/dev/null")
    return [
        f"- **Machine:** {os.cpu_count()} vCPUs ({model}), {mem} RAM, kernel {platform.release()}, "
        f"Debian {deb}; shared with other engineers' test runs (see the background CPU column).",
        f"- **AhoyConference:** Python {platform.python_version()}, {vers}; "
        "`twistd -n --pidfile= ahoyconference --port=tcp:PORT:interface=127.0.0.1 --config=…` "
        "(config: `bench/servers.py` AHOY_CONFIG; ICE host 127.0.0.1 only), one process, one thread.",
        f"- **Janus:** Debian `janus` {janus} ({libs.rstrip(', ')}), config `bench/janus/` "
        "(janus-bench's; HTTP port filled in), `lo_ifaddrs.so` preloaded.",
        "- **Both servers** run with `LD_PRELOAD=mlock_onfault.so` (janus-bench, \"Why mlock\").",
    ]


def own_counter_us(r) -> float | None:
    """Server CPU per packet the server itself counted as sent (AhoyConference's
    /metrics), which does not depend on the load generator keeping up."""
    n = (r.get("server_counters") or {}).get("ahoy_forwarded_packets_total")
    return 1e6 * r["server_cpu_s"] / n if n else None


def forwarding(rows, meta) -> list[str]:
    out = []
    idle = [r for r in rows if r.get("idle")]
    runs = [r for r in rows if not r.get("idle")]
    groups = defaultdict(list)
    seen = defaultdict(int)
    for r in runs:
        key = (r["sfu"], r["publishers"], r["subs_per_pub"])
        seen[key] += 1
        r["_rep"] = seen[key]
        groups[key].append(r)
    configs = sorted({(P, S) for _, P, S in groups}, key=lambda c: (c[0] * c[1], c[0]))
    order = ("ahoy", "ahoy-oneport", "ahoy+patch", "janus")
    sfus = sorted({k[0] for k in groups}, key=lambda x: (order.index(x) if x in order else 9, x))
    out.append("| config | SFU | valid runs | forwarded pkt/s | server CPU % (100 = 1 core) "
               "| user / sys % | **server µs CPU per fwd pkt** | loss % (seq gaps) "
               "| recv vs sent×S shortfall % | server RSS MB | loadgen CPU % | background CPU % "
               "| µs per pkt the server sent (its own counter) |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for P, S in configs:
        for sfu in sfus:
            allrs = groups.get((sfu, P, S), [])
            rs = [r for r in allrs if r.get("valid") and not r.get("failed")]
            ok = [r for r in allrs if not r.get("failed")]
            show = rs
            note = ""
            if not rs and ok:
                show, note = ok, " (all invalid; shown anyway)"
            out.append(
                f"| {P}×{S} | {sfu} | {len(rs)}/{len(allrs)}{note} | {fmt([r['fwd_pps'] for r in show], 0)} "
                f"| {fmt([r['server_cpu_pct'] for r in show])} "
                f"| {fmt([r['server_user_pct'] for r in show])} / {fmt([r['server_sys_pct'] for r in show])} "
                f"| **{fmt([r['server_us_per_fwd_pkt'] for r in show])}** "
                f"| {fmt([r['loss_pct_seq_gaps'] for r in show], 3)} "
                f"| {fmt([r['loss_pct_vs_fanout'] for r in show], 2)} "
                f"| {fmt([r['server_rss_kb'] / 1024 for r in show], 0)} "
                f"| {fmt([r['loadgen_cpu_pct'] for r in show], 0)} "
                f"| {fmt([r['other_cpu_pct'] for r in show], 0)} "
                f"| {fmt([own_counter_us(r) for r in show])} |")
    for sfu in sfus:
        ir = [r for r in idle if r["sfu"] == sfu]
        if ir:
            cpu = fmt([r["server_cpu_pct"] for r in ir], 2)
            rss = fmt([r["server_rss_kb"] / 1024 for r in ir], 0)
            out.append(f"| idle (no peers) | {sfu} | {len(ir)} | 0 | {cpu} | | - | - | - | {rss} "
                       "| - | - | - |")
    out.append("")
    # ratios per repetition
    pairs_to_show = [(x, "janus") for x in sfus if x != "janus" and "janus" in sfus]
    if "ahoy" in sfus and "ahoy+patch" in sfus:
        pairs_to_show.append(("ahoy+patch", "ahoy"))
    if "ahoy" in sfus and "ahoy-oneport" in sfus:
        pairs_to_show.append(("ahoy-oneport", "ahoy"))
    for num, den in pairs_to_show:
        out += ratio_table(groups, configs, num, den)
    return out, groups


def ratio_table(groups, configs, num: str, den: str) -> list[str]:
    """num / den per repetition: the two runs of a config in the same round."""
    out = [f"### Ratio {num} / {den}, per repetition (same round, interleaved)\n",
           f"| config | µs/pkt {num} | µs/pkt {den} | **ratio µs/pkt** (median [min–max] over pairs) "
           "| pairs (both valid) | ratio over all pairs, incl. invalid | ratio of server CPU % |",
           "|---|---|---|---|---|---|---|"]
    for P, S in configs:
        a = {r["_rep"]: r for r in groups.get((num, P, S), []) if not r.get("failed")}
        j = {r["_rep"]: r for r in groups.get((den, P, S), []) if not r.get("failed")}
        pairs = [(a[k], j[k]) for k in sorted(set(a) & set(j))]
        if not pairs:
            continue
        good = [(x, y) for x, y in pairs if x.get("valid") and y.get("valid")]
        ratio = [x["server_us_per_fwd_pkt"] / y["server_us_per_fwd_pkt"] for x, y in good
                 if x["server_us_per_fwd_pkt"] and y["server_us_per_fwd_pkt"]]
        ratio_all = [x["server_us_per_fwd_pkt"] / y["server_us_per_fwd_pkt"] for x, y in pairs
                     if x.get("server_us_per_fwd_pkt") and y.get("server_us_per_fwd_pkt")]
        cpu_ratio = [x["server_cpu_pct"] / y["server_cpu_pct"] for x, y in good if y["server_cpu_pct"]]
        out.append(f"| {P}×{S} | {fmt([x['server_us_per_fwd_pkt'] for x, _ in good])} "
                   f"| {fmt([y['server_us_per_fwd_pkt'] for _, y in good])} "
                   f"| **{fmt(ratio, 2)}** | {len(good)}/{len(pairs)} | {fmt(ratio_all, 2)} "
                   f"| {fmt(cpu_ratio, 2)} |")
    out.append("")
    return out


def fit(groups) -> list[str]:
    import numpy as np
    out = ["| SFU | runs | fit: server CPU [µs/s] = fixed + b × forwarded pkt/s | R² "
           "| 3-term fit: fixed + a × ingress pkt/s + b × forwarded pkt/s | R² "
           "| **1-Mbit/s subscriber streams per core** (from b) | same from the mean cost at the "
           "largest valid config |",
           "|---|---|---|---|---|---|---|---|"]
    caps = {}
    order = ("ahoy", "ahoy+patch", "janus")
    labels = sorted({k[0] for k in groups}, key=lambda x: (order.index(x) if x in order else 9, x))
    for sfu in labels:
        rs = [r for (s, _, _), v in groups.items() if s == sfu for r in v
              if r.get("valid") and not r.get("failed") and r.get("fwd_pps")]
        if len(rs) < 3:
            out.append(f"| {sfu} | {len(rs)} | too few valid runs | | | | | |")
            continue
        y = np.array([r["server_cpu_pct"] * 1e4 for r in rs])
        X2 = np.array([[1.0, r["fwd_pps"]] for r in rs])
        X3 = np.array([[1.0, r["pub_pps"], r["fwd_pps"]] for r in rs])

        def lsq(X, y=y):
            coef, *_ = np.linalg.lstsq(X, y, rcond=None)
            pred = X @ coef
            r2 = 1 - ((y - pred) ** 2).sum() / max(1e-9, ((y - y.mean()) ** 2).sum())
            return coef, r2

        (c, b), r2 = lsq(X2)
        (c3, a3, b3), r23 = lsq(X3)
        streams = (1e6 - max(0.0, c)) / (b * PKT_PER_STREAM) if b > 0 else float("nan")
        big = max(rs, key=lambda r: r["fwd_pps"])
        big_rs = [r for r in rs if r["publishers"] == big["publishers"]
                  and r["subs_per_pub"] == big["subs_per_pub"]]
        mean_us = statistics.median(r["server_us_per_fwd_pkt"] for r in big_rs)
        streams2 = 1e6 / (mean_us * PKT_PER_STREAM)
        caps[sfu] = (streams, streams2, b)
        out.append(f"| {sfu} | {len(rs)} | {c:.0f} + **{b:.1f} µs** × fwd | {r2:.3f} "
                   f"| {c3:.0f} + {a3:.1f} × in + {b3:.1f} × fwd | {r23:.3f} | **{streams:.0f}** "
                   f"| {streams2:.0f} ({big['publishers']}×{big['subs_per_pub']}: {mean_us:.1f} µs/pkt) |")
    out.append("")
    if "ahoy" in caps and "janus" in caps:
        out.append(f"Marginal cost ratio AhoyConference / Janus (slope b): "
                   f"**{caps['ahoy'][2] / caps['janus'][2]:.2f}**.")
    out.append(f"\nA stream is {PKT_PER_STREAM:.0f} packets/s (VP8 ~1 Mbit/s at ~111 pkt/s + Opus 50 pkt/s). "
               "\"Per core\" = 10⁶ µs of CPU per second. The slope is an extrapolation from at most "
               "~13k pkt/s; AhoyConference is one Python thread, so one core is also its ceiling, "
               "while Janus spreads over all cores (one thread per handle).\n")
    return out


def signalling(rows) -> list[str]:
    if not rows:
        return ["(not run in this session)\n"]
    out = ["| scenario | members | valid | connect /s | **joins/s** | server CPU per join (µs) "
           "| server CPU % while joining | **RSS per member KiB** (joined; incl. connection) "
           "| chat deliveries | **chat fan-out latency p50 / p99 / max ms** | server µs per delivered "
           "chat indication | background CPU % (join) |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("failed"):
            out.append(f"| {r['scenario']} | {r['members']} | failed: `{r['failed'][:120]}` "
                       "| | | | | | | | | |")
            continue
        j, c, ch = r.get("join", {}), r.get("connect", {}), r.get("chat", {})
        out.append(
            f"| {r['scenario']} | {r['members']} | {'yes' if r.get('valid') else 'no'} "
            f"| {c.get('per_s')} | **{j.get('joins_per_s')}** | {j.get('cpu_us_per_join')} "
            f"| {j.get('server_cpu_pct')} | **{r.get('rss_per_member_kb')}** "
            f"| {ch.get('deliveries')}/{ch.get('deliveries_expected')} "
            f"| **{ch.get('p50_ms')} / {ch.get('p99_ms')} / {ch.get('max_ms')}** "
            f"| {ch.get('server_cpu_us_per_delivery')} | {j.get('other_cpu_pct')} |")
    out.append("")
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tag", required=True)
    ap.add_argument("--results", default=os.path.join(HERE, "results"))
    ap.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    ap.add_argument("--signalling-tag", help="take signalling-TAG.jsonl from another session")
    ap.add_argument("--extra", action="append", help="TAG:TITLE of another forwarding session "
                    "(e.g. an A/B of a proposed patch) to add as its own section")
    args = ap.parse_args()
    R = args.results
    rows = read_jsonl(os.path.join(R, f"forwarding-{args.tag}.jsonl"))
    sig = read_jsonl(os.path.join(R, f"signalling-{args.signalling_tag or args.tag}.jsonl"))
    meta = {}
    if os.path.exists(os.path.join(R, f"session-{args.tag}.json")):
        meta = json.load(open(os.path.join(R, f"session-{args.tag}.json")))
    runs = [r for r in rows if not r.get("idle") and not r.get("failed")]
    L = ["# AhoyConference vs Janus VideoRoom: forwarding CPU and signalling load", ""]
    L.append(f"Session `{args.tag}` (started {meta.get('started', '?')}, finished "
             f"{meta.get('finished', '?')}, {meta.get('elapsed_s', '?')} s). Generated by "
             f"`bench/report.py` from `bench/results/*-{args.tag}*`.")
    L.append("")
    L.append("**The one command** (root, from the project root; installs what it needs, "
             "runs everything within 30 min, writes this file):")
    L.append("")
    L.append("```sh\nbench/run.sh        # = setup + bench/run_bench.py --reps 3 -T 20 --budget-min 30\n```")
    L.append("")
    L.append(f"This session ran: `{' '.join(meta.get('argv', ['?']))}`"
             + (f", signalling from session `{args.signalling_tag}`" if args.signalling_tag else "") + ".")
    reduced = meta.get("reduced") or meta.get("runs_done", 0) < meta.get("runs_planned", 0)
    L.append(f"Forwarding runs done: {meta.get('runs_done', len(runs))} of {meta.get('runs_planned', '?')} "
             f"planned ({meta.get('reps_planned', '?')} reps × configs × 2 SFUs, T = {meta.get('seconds')} s "
             f"after a {meta.get('warmup')} s warm-up){' — **REDUCED MATRIX**' if reduced else ''}. "
             f"Niceness of servers and load generator alike: {meta.get('nice', 0)}."
             + (" Notes: " + "; ".join(meta.get("notes", [])) if meta.get("notes") else ""))
    L.append("")
    summary = os.path.join(HERE, "SUMMARY.md")
    if os.path.exists(summary):
        L.append(open(summary).read())
    L += machine()
    L.append("- **Load:** janus-bench's traffic model: per publisher one aiortc peer connection replaying "
             "pre-encoded VP8 640x480 30 fps (~1 Mbit/s, keyframe every 3 s) + Opus 32 kbit/s "
             "(~161 RTP pkt/s); S subscribers per publisher, each its own peer connection (and its own "
             "WebSocket member / Janus session), counting packets and sending RTCP RRs. Publishers ignore "
             "PLI/REMB. One load generator (`bench/load.py`) drives both SFUs; only the signalling "
             "class differs.")
    cal = [r.get("calibration", {}).get("py_loop_1M_ms") for r in runs]
    oth = [r.get("other_cpu_pct") for r in runs]
    L.append(f"- **Background during the runs:** other processes' CPU {fmt(oth, 0)} % (of 200); "
             f"calibration loop {fmt(cal, 0)} ms (janus-bench's quiet day: ~30 ms).")
    L.append("")
    L.append("## 1. Forwarding cost\n")
    if rows:
        f_lines, groups = forwarding(rows, meta)
        L += f_lines
        pooled = defaultdict(list)
        for k, v in groups.items():
            pooled[k] += v
        for extra in args.extra or []:
            for r in read_jsonl(os.path.join(R, f"forwarding-{extra.partition(':')[0]}.jsonl")):
                if not r.get("idle") and not r.get("failed"):
                    pooled[(r["sfu"], r["publishers"], r["subs_per_pub"])].append(r)
        L.append("## 2. Capacity (fit of server CPU against forwarded packets)\n")
        L.append("Least squares over every valid run of the sessions on this page (section 1 and the "
                 "extra sections at the end).\n")
        L += fit(pooled)
    else:
        L.append("(no forwarding runs in this session)\n")
    L.append("## 3. Where AhoyConference's time goes (py-spy)\n")
    prof = os.path.join(R, f"profile-{args.tag}-summary.md")
    prun = read_jsonl(os.path.join(R, f"profile-{args.tag}-run.jsonl"))
    if prun:
        p = prun[-1]
        L.append(f"Sampled with `py-spy record --nonblocking --rate 250` during a {p['publishers']}×"
                 f"{p['subs_per_pub']} run ({p['fwd_pps']:.0f} pkt/s, server {p['server_cpu_pct']:.1f} % = "
                 f"{p['server_us_per_fwd_pkt']} µs/pkt, user {p['server_user_pct']} % / sys "
                 f"{p['server_sys_pct']} %). Raw stacks: `results/profile-{args.tag}.txt`.\n")
    if os.path.exists(prof):
        L.append(open(prof).read())
    else:
        L.append("(no profile in this session)\n")
    X: list[str] = []
    for extra in args.extra or []:
        tag, _, title = extra.partition(":")
        xrows = read_jsonl(os.path.join(R, f"forwarding-{tag}.jsonl"))
        if not xrows:
            continue
        xmeta = {}
        if os.path.exists(os.path.join(R, f"session-{tag}.json")):
            xmeta = json.load(open(os.path.join(R, f"session-{tag}.json")))
        X.append(f"## {title or tag}\n")
        X.append(f"Session `{tag}`: `{' '.join(xmeta.get('argv', ['?']))}` "
                 f"({xmeta.get('started', '?')} to {xmeta.get('finished', '?')}); "
                 f"{xmeta.get('runs_done', '?')} of {xmeta.get('runs_planned', '?')} runs; "
                 f"background CPU "
                 f"{fmt([r.get('other_cpu_pct') for r in xrows if not r.get('idle')], 0)} %.\n")
        x_lines, _ = forwarding(xrows, xmeta)
        X += x_lines
        xprof = os.path.join(R, f"profile-{tag}-summary.md")
        if os.path.exists(xprof):
            prun = read_jsonl(os.path.join(R, f"profile-{tag}-run.jsonl"))
            if prun:
                p = prun[-1]
                X.append(f"Profile of `{p['sfu']}` during {p['publishers']}×{p['subs_per_pub']} "
                         f"({p['fwd_pps']:.0f} pkt/s, {p['server_us_per_fwd_pkt']} µs/pkt):\n")
            X.append(open(xprof).read())
    L.append("## 4. Signalling load (AhoyConference only)\n")
    L.append("Each scenario against a fresh server; one client process holds every WebSocket "
             "(`bench/signalling.py`). CPU figures come from /proc in 10 ms ticks.\n")
    L += signalling(sig)
    sprof = os.path.join(R, f"profile-signalling-{args.tag}-1x500-summary.md")
    if os.path.exists(sprof):
        L.append("Profile of the server during the 1 × 500 scenario (joins + chat), py-spy:\n")
        text = open(sprof).read()
        L.append(text.split("| top 30 functions by inclusive time")[0])
    L += X
    notes = os.path.join(HERE, "NOTES.md")
    if os.path.exists(notes):
        L.append(open(notes).read())
    with open(args.out, "w") as f:
        f.write("\n".join(L).rstrip() + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
