#!/bin/sh
# The whole comparison in ONE command: AhoyConference against Debian's Janus
# 1.1.2 VideoRoom (forwarding CPU, interleaved, 3 reps), a py-spy profile and
# the signalling load; writes bench/RESULTS.md and bench/results/*-TAG.*.
# Loopback only; bounded (--budget-min, default 30); stops what it started by PID.
#   bench/run.sh                       # as root, from anywhere
#   bench/run.sh --reps 1 -T 10        # quicker, labelled as such in RESULTS.md
# Options: bench/run_bench.py --help.
set -eu
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
# Debian: janus (the baseline) and gcc (the LD_PRELOAD shims in bench/shims/)
need=""
for p in janus gcc; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need="$need $p"
done
if [ -n "$need" ]; then
    apt-get update -q
    apt-get install -y -q $need
fi
# A host with systemd starts janus.service from /etc/janus (all interfaces): the
# bench runs its own loopback-only instance instead.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet janus 2>/dev/null; then
    systemctl disable --now janus
fi
# The project's venv, plus numpy and py-spy
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -c "import ahoyconference, aiortc, av, websockets" 2>/dev/null \
    || .venv/bin/pip install -q -e ".[test]"
.venv/bin/pip install -q -r bench/requirements.txt
exec .venv/bin/python bench/run_bench.py "$@"
